"""Insert QuantizeLinear/DequantizeLinear pairs for every tensor of a QuantPlan, from a ScaleTable.

- An activation gets Q -> DQ right after its producer; the DQ output feeds exactly the planned consumers (every
  other reader, subgraphs included, still reads the float tensor).
- A weight is stored quantized (an int8 initializer, a quarter of the float bytes) and read through a DQ, per
  channel on the plan's axis. TensorRT accepts pre-quantized weights behind an IDequantizeLayer ("Quantized Weights",
  TensorRT developer guide, Explicit Quantization). Symmetric int8 weights use [-127, 127].
- Other formats (onnxq.formats): float8e4m3fn (opset 19) and int4/uint4 block-wise weights (opset 21
  DequantizeLinear ``block_size``, the scale of the weight's rank); 4-bit initializers are packed two per byte
  (onnxq.scales.packing). The caller raises the opset beforehand (prepare) and :func:`required_versions` says
  which opset and IR version the inserted types need.
- Bias stays float. Node order stays topological and deterministic.
- A planned consumer that reads only the tensor's shape (``Shape``, ``Size``; the ort-cpu integer region lists every
  reader of a tensor its producer writes in integer, rule 3.4) reads the QuantizeLinear's output, which has the same
  shape: through a DQ onnxruntime would dequantize the whole tensor on every run just to take its shape (rule 3.26).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxq.dtypes import quant_dtype
from onnxq.errors import OnnxqError
from onnxq.graph import GraphIndex, all_names, default_opset, node_name, remove_initializers, unique_name
from onnxq.passes.base import InPlacePass, PassResult
from onnxq.plan import QuantPlan, TensorPlan
from onnxq.scales.packing import to_tensor_proto
from onnxq.scales.types import QuantParams, ScaleTable

#: ops whose output depends on their input's shape alone
SHAPE_READERS = ("Shape", "Size")


def broadcast_params(params: QuantParams, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point (float32) broadcastable against a tensor of ``shape``: per tensor, per channel along
    ``axis``, or block-wise (each scale repeated ``block_size`` times along ``axis``, cut to the length)."""
    scale, zp = params.scale.astype(np.float32), params.zero_point.astype(np.float32)
    if params.block_size is not None and params.axis is not None:
        axis, block, n = params.axis, params.block_size, shape[params.axis]
        scale = np.repeat(scale, block, axis=axis).take(range(n), axis=axis)
        zp = np.repeat(zp, block, axis=axis).take(range(n), axis=axis)
    elif params.axis is not None:
        view = [1] * len(shape)
        view[params.axis] = -1
        scale, zp = scale.reshape(view), zp.reshape(view)
    return scale, zp


def quantize_array(x: np.ndarray, params: QuantParams) -> np.ndarray:
    """x -> the quantized dtype's values with round-half-to-even and saturation, as QuantizeLinear does.

    Symmetric signed integer weights stay on the symmetric grid ([-127, 127] for int8, [-7, 7] for int4); float8
    values are rounded to the nearest representable value (ml_dtypes' cast, ties to even), saturating at 448.
    """
    d = quant_dtype(params.dtype)
    scale, zp = broadcast_params(params, x.shape)
    scaled = x.astype(np.float32) / scale
    if d.is_float:
        return np.clip(scaled + zp, d.qmin, d.qmax).astype(d.numpy_dtype)
    lo, hi = d.clip_range(params.symmetric)
    return np.clip(np.rint(scaled) + zp, lo, hi).astype(d.numpy_dtype)


def dequantize_array(q: np.ndarray, params: QuantParams) -> np.ndarray:
    """The float values a DequantizeLinear of ``params`` gives for ``q``."""
    scale, zp = broadcast_params(params, q.shape)
    return ((q.astype(np.float32) - zp) * scale).astype(np.float32)


def required_versions(plan: QuantPlan) -> tuple[int, int]:
    """The (opset, IR version) the plan's Q/DQ types need: 13/7 for int8 per channel, 19/9 for float8, 21/10 for
    4-bit and block-wise."""
    opset, ir = 13, 7
    for t in plan.tensors.values():
        d = quant_dtype(t.dtype)
        opset, ir = max(opset, d.min_opset, 21 if t.block_size else 0), max(ir, d.min_ir_version)
    return opset, ir


class InsertQDQ(InPlacePass):
    name = "insert-qdq"

    def __init__(self, plan: QuantPlan, scales: ScaleTable) -> None:
        self.plan = plan
        self.scales = scales

    def call(self, model: onnx.ModelProto) -> PassResult:
        missing = [t for t in self.plan.tensors if t not in self.scales]
        if missing:
            raise OnnxqError(f"no scale for {len(missing)} planned tensor(s), e.g. {missing[:3]}")
        opset, ir_version = required_versions(self.plan)
        if self.plan.tensors and default_opset(model) < opset:
            raise OnnxqError(f"the plan's formats need opset {opset} but the model has opset "
                             f"{default_opset(model)}; prepare it with UpgradeOpset({opset})")
        if self.plan.tensors:
            model.ir_version = max(model.ir_version, ir_version)
        graph = model.graph
        index = GraphIndex.build(graph)
        taken = all_names(graph)
        by_name = {node_name(n): n for n in graph.node}
        after: dict[str, list[onnx.NodeProto]] = {}  # producer output -> Q/DQ nodes to place after it
        first: list[onnx.NodeProto] = []  # Q/DQ of graph inputs and weights, placed before every node
        new_inits: list[onnx.TensorProto] = []
        for tensor in self.plan.tensors.values():
            params = self.scales[tensor.name]
            _check_params(tensor, params, index)
            base = tensor.name
            scale = unique_name(taken, f"{base}_scale")
            zp = unique_name(taken, f"{base}_zero_point")
            new_inits += [numpy_helper.from_array(params.scale, scale),
                          to_tensor_proto(params.zero_point, params.dtype, zp)]
            axis: dict[str, Any] = {} if params.axis is None else {"axis": params.axis}
            if params.blockwise:
                axis["block_size"] = params.block_size
            dq_out = unique_name(taken, f"{base}_dequantized")
            q_out = dq_out
            if tensor.role == "weight":
                q_init = unique_name(taken, f"{base}_quantized")
                w = index.array(tensor.name)
                new_inits.append(to_tensor_proto(quantize_array(w, params), params.dtype, q_init))
                nodes = [helper.make_node("DequantizeLinear", [q_init, scale, zp], [dq_out],
                                          name=unique_name(taken, f"{base}_DequantizeLinear"), **axis)]
                first.extend(nodes)
            else:
                q_out = unique_name(taken, f"{base}_quantized")
                nodes = [
                    helper.make_node("QuantizeLinear", [tensor.name, scale, zp], [q_out],
                                     name=unique_name(taken, f"{base}_QuantizeLinear"), **axis),
                    helper.make_node("DequantizeLinear", [q_out, scale, zp], [dq_out],
                                     name=unique_name(taken, f"{base}_DequantizeLinear"), **axis),
                ]
                if tensor.name in index.producer:
                    after.setdefault(tensor.name, []).extend(nodes)
                else:
                    first.extend(nodes)
            for consumer in tensor.consumers:
                node = by_name[consumer.node]
                if node.input[consumer.input_index] != tensor.name:
                    raise OnnxqError(f"plan is stale: input {consumer.input_index} of {consumer.node!r} is "
                                     f"{node.input[consumer.input_index]!r}, not {tensor.name!r}")
                shape_only = node.op_type in SHAPE_READERS and node.domain in ("", "ai.onnx")
                node.input[consumer.input_index] = q_out if shape_only else dq_out
        ordered = list(first)
        for node in graph.node:
            ordered.append(node)
            for out in node.output:
                ordered.extend(after.get(out, []))
        del graph.node[:]
        graph.node.extend(ordered)
        graph.initializer.extend(new_inits)
        _drop_replaced_weights(graph, self.plan)
        count = len(self.plan.tensors)
        return PassResult(model, count > 0, [f"inserted Q/DQ for {count} tensor(s)"])


def _check_params(tensor: TensorPlan, params: QuantParams, index: GraphIndex) -> None:
    if params.dtype != tensor.dtype:
        raise OnnxqError(f"tensor {tensor.name!r}: scale dtype {params.dtype} but the plan wants {tensor.dtype}")
    if params.block_size != tensor.block_size:
        raise OnnxqError(f"tensor {tensor.name!r}: scale block size {params.block_size} but the plan wants "
                         f"{tensor.block_size}")
    if tensor.role == "weight" and params.blockwise:
        dims = tuple(index.initializers[tensor.name].dims)
        expected = tuple(-(-n // params.block_size) if i == params.axis else n for i, n in enumerate(dims))
        if params.scale.shape != expected:
            raise OnnxqError(f"weight {tensor.name!r} of shape {dims}: block-wise scales of shape "
                             f"{params.scale.shape} do not match {expected} (axis {params.axis}, block "
                             f"{params.block_size})")
    elif tensor.role == "weight" and params.axis is not None:
        dims = tuple(index.initializers[tensor.name].dims)
        if params.axis >= len(dims) or dims[params.axis] != params.channels:
            raise OnnxqError(f"weight {tensor.name!r} of shape {dims}: {params.channels} per-channel scales on "
                             f"axis {params.axis} do not match")
    if tensor.role == "activation" and params.axis is not None:
        raise OnnxqError(f"activation {tensor.name!r}: per-channel activation scales are not supported")


def _drop_replaced_weights(graph: onnx.GraphProto, plan: QuantPlan) -> None:
    """Remove float weights that nothing reads any more (their int8 copies replace them)."""
    index = GraphIndex.build(graph)
    graph_inputs = {v.name for v in graph.input}
    dead = {t.name for t in plan.weights()
            if t.name not in index.consumers and t.name not in graph_inputs and t.name not in index.graph_outputs}
    remove_initializers(graph, dead)
