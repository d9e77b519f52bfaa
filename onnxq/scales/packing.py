"""Quantized arrays <-> ONNX TensorProtos, with the 4-bit packing of INT4/UINT4.

ONNX stores 4-bit tensors two elements per byte, the first element in the low nibble, the element count rounded up
to a whole byte (ONNX IR spec, "4 bit integer types"; ``onnx.helper.pack_float32_to_4bit``). Float8 tensors are one
byte per element in ``raw_data``.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxq.dtypes import BY_ONNX_TYPE
from onnxq.dtypes import quant_dtype as qdtype
from onnxq.errors import OnnxqError


def pack_4bit(values: np.ndarray, signed: bool) -> bytes:
    """Flat int4 (-8..7) or uint4 (0..15) values -> packed bytes, first element in the low nibble."""
    flat = np.asarray(values).ravel().astype(np.int16)
    lo, hi = (-8, 7) if signed else (0, 15)
    if flat.size and (flat.min() < lo or flat.max() > hi):
        raise OnnxqError(f"4-bit values must be in [{lo}, {hi}], got [{flat.min()}, {flat.max()}]")
    nibbles = (flat & 0x0F).astype(np.uint8)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8).tobytes()


def unpack_4bit(data: bytes, count: int, signed: bool) -> np.ndarray:
    """Packed bytes -> ``count`` int4 values (as int8) or uint4 values (as uint8)."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size != (count + 1) // 2:
        raise OnnxqError(f"{count} 4-bit values need {(count + 1) // 2} bytes, got {raw.size}")
    nibbles = np.empty(raw.size * 2, dtype=np.uint8)
    nibbles[0::2], nibbles[1::2] = raw & 0x0F, raw >> 4
    nibbles = nibbles[:count]
    if signed:
        return np.where(nibbles >= 8, nibbles.astype(np.int16) - 16, nibbles).astype(np.int8)
    return nibbles


def to_tensor_proto(values: np.ndarray, dtype: str, name: str) -> onnx.TensorProto:
    """A quantized array (in the dtype's numpy storage) as an initializer of the dtype's ONNX type."""
    d = qdtype(dtype)
    values = np.asarray(values)
    tensor = onnx.TensorProto(name=name, data_type=d.onnx_type, dims=list(values.shape))
    if d.bits == 4:
        tensor.raw_data = pack_4bit(values, d.signed)
    else:
        tensor.raw_data = np.ascontiguousarray(values.astype(d.numpy_dtype)).tobytes()
    return tensor


def from_tensor_proto(tensor: onnx.TensorProto) -> np.ndarray:
    """The inverse of :func:`to_tensor_proto` for raw_data tensors of the quantized types."""
    d = BY_ONNX_TYPE.get(tensor.data_type)
    if d is None or not tensor.HasField("raw_data"):
        raise OnnxqError(f"tensor {tensor.name!r} is not a raw quantized tensor onnxq writes")
    shape = tuple(tensor.dims)
    count = int(np.prod(shape)) if shape else 1
    if d.bits == 4:
        return unpack_4bit(tensor.raw_data, count, d.signed).reshape(shape)
    return np.frombuffer(tensor.raw_data, dtype=d.numpy_dtype).reshape(shape).copy()
