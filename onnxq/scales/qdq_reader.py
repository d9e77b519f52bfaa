"""Read the quantization parameters out of a Q/DQ ONNX model into a :class:`ScaleTable`.

Works on models made by onnxq and by other tools (onnxruntime ``quantize_static`` in QDQ format, torch fake-quant
exports, ModelOpt, pytorch-quantization).

Key rule (which tensor name a :class:`QuantParams` is stored under):

1. ``x -> QuantizeLinear -> DequantizeLinear``: the key is ``x``, the float tensor that is quantized. For an
   activation that is the activation's name; for a weight stored in float it is the weight initializer's name
   (e.g. ``conv1.weight``). This is the name a QuantPlan uses, so imported scales line up with planned tensors.
2. ``w_int8 -> DequantizeLinear`` with no QuantizeLinear (weights stored already quantized, as onnxruntime does):
   the float weight no longer exists in the graph. The key is the name of the float weight it replaced when that can
   be recovered from onnxruntime's naming convention (``<name>_quantized`` -> ``<name>``); otherwise it is the
   DequantizeLinear's output name, the float tensor the consumer reads.
3. A tensor quantized by several QuantizeLinear nodes keeps the first one's parameters (in graph order); differing
   parameters are logged as a warning.

Only 8-bit integer Q/DQ (int8, uint8) is read; other types (int4, int16, fp8) are skipped with a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxq.dtypes import BY_ONNX_TYPE
from onnxq.errors import OnnxqError
from onnxq.graph import GraphIndex, default_opset, node_name
from onnxq.scales.types import QuantParams, ScaleTable

log = logging.getLogger(__name__)

ORT_QUANTIZED_SUFFIX = "_quantized"


@dataclass(frozen=True)
class QDQParams:
    """What a QuantizeLinear or DequantizeLinear node says, before any validation."""

    scale: np.ndarray | None  # None when the scale is not a constant
    zero_point: np.ndarray | None  # None when absent (ONNX then means 0) or not a constant
    zero_point_given: bool
    elem_type: int  # onnx.TensorProto data type of the integer side
    axis: int  # as written (default 1), not normalised
    block_size: int
    axis_given: bool = False  # the node has an ``axis`` attribute

    @property
    def dtype_name(self) -> str | None:
        return dt.name if (dt := BY_ONNX_TYPE.get(self.elem_type)) else None

    @property
    def per_channel(self) -> bool:
        """A 1-D scale is per axis (ONNX QuantizeLinear: "a 1-D tensor for per-axis quantization"), also with one
        channel when the node names its axis (onnxq writes a one-channel weight that way); a one-element scale
        without an ``axis`` attribute is read as per tensor, as other exporters mean it."""
        if self.scale is None or self.scale.ndim < 1:
            return False
        return self.scale.size > 1 or (self.scale.ndim == 1 and self.axis_given)


@dataclass(frozen=True)
class QDQEntry:
    """One quantized tensor found in the graph."""

    name: str
    params: QuantParams
    role: str  # "weight" | "activation"
    node: str  # the QuantizeLinear (or, for pre-quantized weights, DequantizeLinear) node name


def constant_array(index: GraphIndex, name: str) -> np.ndarray | None:
    """The value of an initializer or of a ``Constant`` node's output; None for anything computed at run time."""
    if not name:
        return None
    if name in index.initializers:
        return index.array(name)
    node = index.producer.get(name)
    if node is not None and node.op_type == "Constant":
        for attr in node.attribute:
            if attr.name == "value":
                return numpy_helper.to_array(attr.t)
            if attr.name in ("value_float", "value_int"):
                return np.asarray(helper.get_attribute_value(attr))
            if attr.name in ("value_floats", "value_ints"):
                return np.asarray(helper.get_attribute_value(attr))
    return None


def is_constant(index: GraphIndex, name: str) -> bool:
    if name in index.initializers:
        return True
    node = index.producer.get(name)
    return node is not None and node.op_type == "Constant"


def tensor_elem_type(index: GraphIndex, name: str) -> int | None:
    if name in index.initializers:
        return index.initializers[name].data_type
    node = index.producer.get(name)
    if node is not None and node.op_type == "Constant":
        for attr in node.attribute:
            if attr.name == "value":
                return attr.t.data_type
    for value in list(index.graph.input) + list(index.graph.value_info) + list(index.graph.output):
        if value.name == name and value.type.HasField("tensor_type"):
            return value.type.tensor_type.elem_type
    return None


def node_params(index: GraphIndex, node: onnx.NodeProto) -> QDQParams:
    """Scale, zero point, integer type and axis of a QuantizeLinear / DequantizeLinear node."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    scale = constant_array(index, node.input[1]) if len(node.input) > 1 else None
    zp_name = node.input[2] if len(node.input) > 2 else ""
    zero_point = constant_array(index, zp_name) if zp_name else None
    if zp_name:
        elem = tensor_elem_type(index, zp_name) or onnx.TensorProto.UINT8
    elif node.op_type == "DequantizeLinear":
        elem = tensor_elem_type(index, node.input[0]) or onnx.TensorProto.UINT8
    else:
        # QuantizeLinear without a zero point produces uint8 unless output_dtype (opset 21) says otherwise.
        elem = int(attrs.get("output_dtype", 0)) or onnx.TensorProto.UINT8
    return QDQParams(
        scale=None if scale is None else np.asarray(scale, dtype=np.float64),
        zero_point=zero_point,
        zero_point_given=bool(zp_name),
        elem_type=elem,
        axis=int(attrs.get("axis", 1)),
        axis_given="axis" in attrs,
        block_size=int(attrs.get("block_size", 0)),
    )


def tensor_rank(index: GraphIndex, name: str) -> int | None:
    value = constant_array(index, name)
    if value is not None:
        return value.ndim
    for info in list(index.graph.input) + list(index.graph.value_info) + list(index.graph.output):
        if info.name == name and info.type.tensor_type.HasField("shape"):
            return len(info.type.tensor_type.shape.dim)
    return None


def to_quant_params(params: QDQParams, rank: int | None, where: str) -> QuantParams:
    """Turn a node's parameters into :class:`QuantParams`; problems become an :class:`OnnxqError` naming ``where``."""
    if params.scale is None:
        raise OnnxqError(f"{where}: the scale is not a constant, so it cannot be read")
    dtype = params.dtype_name
    if dtype is None:
        type_name = onnx.TensorProto.DataType.Name(params.elem_type)
        known = "/".join(t.name for t in BY_ONNX_TYPE.values())
        raise OnnxqError(f"{where}: only {known} Q/DQ is supported, got {type_name}")
    scale = params.scale
    zp = params.zero_point if params.zero_point is not None else np.zeros(scale.shape)
    zp = np.asarray(zp)
    axis: int | None
    if params.block_size:
        axis = params.axis + scale.ndim if params.axis < 0 else params.axis
        try:
            return QuantParams(scale.astype(np.float32), zp, dtype, axis, params.block_size)
        except OnnxqError as exc:
            raise OnnxqError(f"{where}: {exc}") from exc
    if params.per_channel:
        axis = params.axis
        if rank is not None and axis < 0:
            axis += rank
        scale, zp = scale.reshape(-1), np.broadcast_to(zp, scale.shape).reshape(-1)
    else:
        axis = None
        scale, zp = scale.reshape(()), zp.reshape(-1)[:1].reshape(()) if zp.size else np.zeros(())
    try:
        return QuantParams(scale.astype(np.float32), zp, dtype, axis)
    except OnnxqError as exc:
        raise OnnxqError(f"{where}: {exc}") from exc


def read_qdq(model: onnx.ModelProto) -> dict[str, QDQEntry]:
    """Every tensor quantized by the model's Q/DQ nodes, keyed by the rule in this module's docstring."""
    default_opset(model)  # a model without a default-domain opset is not something we can read
    index = GraphIndex.build(model.graph)
    entries: dict[str, QDQEntry] = {}

    def add(name: str, entry_params: QDQParams, role: str, node: onnx.NodeProto, rank_of: str) -> None:
        where = f"{node.op_type} node {node_name(node)!r} (tensor {name!r})"
        if entry_params.dtype_name is None:
            type_name = onnx.TensorProto.DataType.Name(entry_params.elem_type)
            # int32 DequantizeLinear is how onnxruntime stores quantized biases: expected, not worth a warning
            level = logging.DEBUG if entry_params.elem_type == onnx.TensorProto.INT32 else logging.WARNING
            log.log(level, "%s: skipped, %s Q/DQ is not read", where, type_name)
            return
        params = to_quant_params(entry_params, tensor_rank(index, rank_of), where)
        if name in entries:
            if not entries[name].params.equals(params):
                log.warning("tensor %r is quantized twice with different parameters; keeping those of %s",
                            name, entries[name].node)
            return
        entries[name] = QDQEntry(name, params, role, node_name(node))

    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.domain in ("", "ai.onnx"):
            source = node.input[0]
            role = "weight" if is_constant(index, source) else "activation"
            add(source, node_params(index, node), role, node, source)
        elif node.op_type == "DequantizeLinear" and node.domain in ("", "ai.onnx"):
            source = node.input[0]
            producer = index.producer.get(source)
            if producer is not None and producer.op_type == "QuantizeLinear":
                continue  # read from the QuantizeLinear
            if not is_constant(index, source):
                continue  # a DQ of a computed integer tensor: nothing to key it by (lint reports it)
            key = source[: -len(ORT_QUANTIZED_SUFFIX)] if source.endswith(ORT_QUANTIZED_SUFFIX) else node.output[0]
            add(key, node_params(index, node), "weight", node, source)
    return entries


def read_qdq_scales(model: onnx.ModelProto) -> ScaleTable:
    """The :class:`ScaleTable` of a Q/DQ model (see the key rule in the module docstring)."""
    return {name: entry.params for name, entry in read_qdq(model).items()}
