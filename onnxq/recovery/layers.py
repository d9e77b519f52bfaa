"""Layer-local evaluation shared by the recovery algorithms: cached float inputs of the weighted nodes, each node run
alone in onnxruntime, and a NumPy fake-quantizer equal to a QuantizeLinear/DequantizeLinear pair.

The recovery algorithms (range selection, bias correction, AdaRound) judge a quantized layer by its OWN output on
the float model's inputs (the layer-wise objective of Nagel et al. 2019/2020 and NNCF's fast bias correction),
so one float pass over a few calibration batches is enough: no quantized model is run.

Cost bounds: only ``batches`` calibration batches are captured, and 4-D (NCHW) inputs are centre-cropped to at most
``crop`` x ``crop`` pixels before they are kept (a convolution's output on a crop equals the full output away from
the crop's border, which is all a layer-local error estimate needs).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxq.data import Batch
from onnxq.dtypes import quant_dtype
from onnxq.graph import GraphIndex
from onnxq.runtime import make_session, run_batch
from onnxq.scales.types import QuantParams

log = logging.getLogger(__name__)

LAYER_OPS = ("Conv", "Gemm", "MatMul")


def fake_quantize(x: np.ndarray, params: QuantParams) -> np.ndarray:
    """``DequantizeLinear(QuantizeLinear(x))`` in float32: round half to even, saturate to the integer type."""
    x = np.asarray(x, dtype=np.float32)
    scale = params.scale.astype(np.float32)
    zp = params.zero_point.astype(np.float32)
    if params.axis is not None:
        shape = [1] * x.ndim
        shape[params.axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    dtype = quant_dtype(params.dtype)
    qmin, qmax = dtype.qmin, dtype.qmax  # QuantizeLinear saturates to the full integer range
    q = np.clip(np.rint(x / scale) + zp, qmin, qmax)
    return ((q - zp) * scale).astype(np.float32)


def centre_crop(x: np.ndarray, crop: int) -> np.ndarray:
    """An NCHW tensor cropped to at most ``crop`` x ``crop`` in its spatial centre; other ranks unchanged."""
    if x.ndim != 4:
        return x
    h, w = x.shape[2:]
    top, left = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
    return np.ascontiguousarray(x[:, :, top : top + crop, left : left + crop])


@dataclass
class Layer:
    """One weighted node (Conv, Gemm, MatMul with an initializer weight) runnable alone, weights fed at run time."""

    node: onnx.NodeProto
    weight: np.ndarray
    bias: np.ndarray | None
    session: object  # onnxruntime.InferenceSession

    @property
    def name(self) -> str:
        return self.node.name or self.node.output[0]

    def run(self, x: np.ndarray, weight: np.ndarray | None = None, bias: np.ndarray | None = None) -> np.ndarray:
        feed = {"x": np.asarray(x, np.float32), "w": np.asarray(self.weight if weight is None else weight, np.float32)}
        if self.bias is not None:
            feed["b"] = np.asarray(self.bias if bias is None else bias, np.float32)
        return run_batch(self.session, feed, f"layer {self.name!r}")[0]


def is_layer(node: onnx.NodeProto, index: GraphIndex) -> bool:
    return (node.op_type in LAYER_OPS and node.domain in ("", "ai.onnx") and len(node.input) > 1
            and index.is_initializer(node.input[1]) and not index.is_initializer(node.input[0]))


def bias_of(node: onnx.NodeProto, index: GraphIndex) -> np.ndarray | None:
    if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and node.input[2] and \
            index.is_initializer(node.input[2]):
        return index.array(node.input[2])
    return None


def build_layer(model: onnx.ModelProto, node: onnx.NodeProto, index: GraphIndex) -> Layer:
    """A one-node model of ``node`` with inputs ``x``, ``w`` (and ``b`` when it has a constant bias)."""
    weight = index.array(node.input[1])
    bias = bias_of(node, index)
    inputs = ["x", "w"] + (["b"] if bias is not None else [])
    single = helper.make_node(node.op_type, inputs, ["y"], name="layer")
    single.attribute.extend(node.attribute)
    value_infos = [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None),
                   helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, weight.shape)]
    if bias is not None:
        value_infos.append(helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, bias.shape))
    graph = helper.make_graph([single], "layer", value_infos,
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    opsets = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    one = helper.make_model(graph, opset_imports=opsets or [helper.make_opsetid("", 13)])
    one.ir_version = model.ir_version
    return Layer(node, weight.astype(np.float32), None if bias is None else bias.astype(np.float32),
                 make_session(one, threads=1))


def capture_inputs(model: onnx.ModelProto, names: list[str], data: Iterable[Batch], batches: int,
                   crop: int) -> dict[str, np.ndarray]:
    """The float values of ``names`` over the first ``batches`` batches of ``data``, concatenated on axis 0 and
    centre-cropped (4-D tensors); one onnxruntime session, one pass over those batches."""
    session = make_session(model, outputs=names)
    out_names = [o.name for o in session.get_outputs()]
    wanted = [(i, n) for i, n in enumerate(out_names) if n in set(names)]
    kept: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for count, batch in enumerate(data, start=1):
        outputs = run_batch(session, batch, f"recovery batch {count}")
        for i, name in wanted:
            kept[name].append(centre_crop(np.asarray(outputs[i]), crop))
        del outputs
        if count >= batches:
            break
    found = {n: _stack(v) for n, v in kept.items() if v}
    log.info("recovery: captured %d tensor(s)", len(found))
    return found


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    """Batches of one tensor on axis 0; NCHW batches of different sizes (dynamic width) are centre-cropped to the
    smallest, other batches whose shape differs from the first one's are dropped."""
    if arrays[0].ndim == 4:
        h = min(a.shape[2] for a in arrays)
        w = min(a.shape[3] for a in arrays)
        arrays = [a[:, :, (a.shape[2] - h) // 2 : (a.shape[2] - h) // 2 + h,
                    (a.shape[3] - w) // 2 : (a.shape[3] - w) // 2 + w] for a in arrays]
    return np.concatenate([a for a in arrays if a.shape[1:] == arrays[0].shape[1:]], axis=0)


def relative_error(reference: np.ndarray, approx: np.ndarray) -> float:
    """``sum((ref - approx)**2) / sum(ref**2)`` in float64 (the inverse of SQNR on a linear scale)."""
    r = reference.astype(np.float64)
    d = r - approx.astype(np.float64)
    return float((d * d).sum() / max(float((r * r).sum()), 1e-30))


def weight_tensor(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    for init in model.graph.initializer:
        if init.name == name:
            return init
    raise KeyError(name)


def replace_initializer(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    """Overwrite initializer ``name`` in place, keeping its dtype."""
    init = weight_tensor(model, name)
    dtype = numpy_helper.to_array(init).dtype
    init.CopyFrom(numpy_helper.from_array(np.asarray(value).astype(dtype), name))
