"""The quantized element types onnxq writes, as one table: ONNX type, numpy storage, range, minimum opset.

Every place that needs a fact about a quantized type (the clip range of QuantizeLinear, the largest magnitude of a
symmetric grid, which opset and IR version a type needs, how a value is stored in numpy) reads it here; a new type
is a table entry.

Sources: ONNX operator docs for QuantizeLinear/DequantizeLinear (int8/uint8 since opset 10, ``axis`` since 13,
float8 types since 19, int4/uint4 and ``block_size`` since 21); ONNX IR versions (float8 in IR 9, int4 in IR 10).
FLOAT8E4M3FN (OCP 8-bit floating point, E4M3 "FN": no infinities, one NaN pattern) has largest finite value 448.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx

from onnxq.errors import OnnxqError


@dataclass(frozen=True)
class QDType:
    """One quantized element type."""

    name: str
    onnx_type: int
    numpy_dtype: np.dtype  # how onnxq holds values in memory (int4 as int8 values, fp8 as ml_dtypes)
    qmin: float
    qmax: float
    # the largest magnitude of the symmetric grid: scale = amax / symmetric_qmax (int8 uses [-127, 127], TensorRT's
    # convention, so -amax and +amax are both representable)
    symmetric_qmax: float
    is_float: bool
    bits: int
    min_opset: int
    min_ir_version: int

    @property
    def signed(self) -> bool:
        return self.qmin < 0


DTYPES: dict[str, QDType] = {d.name: d for d in (
    QDType("int8", onnx.TensorProto.INT8, np.dtype(np.int8), -128, 127, 127, False, 8, 13, 7),
    QDType("uint8", onnx.TensorProto.UINT8, np.dtype(np.uint8), 0, 255, 127, False, 8, 13, 7),
    QDType("int4", onnx.TensorProto.INT4, np.dtype(np.int8), -8, 7, 7, False, 4, 21, 10),
    QDType("uint4", onnx.TensorProto.UINT4, np.dtype(np.uint8), 0, 15, 7, False, 4, 21, 10),
    QDType("float8e4m3fn", onnx.TensorProto.FLOAT8E4M3FN, np.dtype(ml_dtypes.float8_e4m3fn), -448.0, 448.0, 448.0,
           True, 8, 19, 9),
)}

BY_ONNX_TYPE: dict[int, QDType] = {d.onnx_type: d for d in DTYPES.values()}


def qdtype(name: str) -> QDType:
    try:
        return DTYPES[name]
    except KeyError:
        raise OnnxqError(f"unknown quantized dtype {name!r}; known: {', '.join(DTYPES)}") from None


def to_storage(values: np.ndarray, name: str) -> np.ndarray:
    """Float values already on the grid (or integers) -> the dtype's numpy storage, saturating to its range.

    Float8 values are rounded to nearest even by ml_dtypes' cast, as QuantizeLinear with ``saturate=1`` does.
    """
    d = qdtype(name)
    clipped = np.clip(np.asarray(values, dtype=np.float32), d.qmin, d.qmax)
    if d.is_float:
        return clipped.astype(d.numpy_dtype)
    return np.rint(clipped).astype(d.numpy_dtype)
