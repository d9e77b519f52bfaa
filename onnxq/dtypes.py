"""The quantized types onnxq writes: one table, read by the plan, the scale maths, Q/DQ insertion, the scale file
formats, the lint and QAT.

A new format is one entry in :data:`QUANT_DTYPES`. ``symmetric`` is onnxq's default convention for the type: a
symmetric type has zero point 0 and uses the restricted range ``[-qmax, qmax]`` so that ``-amax`` and ``+amax`` are
both representable (TensorRT's convention, ``scale = amax / 127`` for int8); an asymmetric type uses ``[qmin, qmax]``
with a zero point (onnxruntime's uint8 convention, ``scale = (hi - lo) / 255``). A plan may still quantize a signed
type asymmetrically (format ``int8-asym``, :mod:`onnxq.formats`): :meth:`QuantDType.clip_range` takes that choice.

Sources: ONNX operator docs for QuantizeLinear/DequantizeLinear (int8/uint8 since opset 10, ``axis`` since 13,
float8 types since 19, int4/uint4 and ``block_size`` since 21); ONNX IR versions (float8 in IR 9, int4 in IR 10).
FLOAT8E4M3FN (OCP 8-bit floating point, E4M3 "FN": no infinities, one NaN pattern) has largest finite value 448;
onnxq holds its values as ``ml_dtypes.float8_e4m3fn`` (what ``onnx.numpy_helper`` returns) and int4/uint4 values
as int8/uint8 arrays (packed two per byte only in the ONNX file, :mod:`onnxq.scales.packing`).
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx

from onnxq.errors import OnnxqError


@dataclass(frozen=True)
class QuantDType:
    """One quantized type: its name, ONNX type, range, onnxq's symmetry convention and storage facts."""

    name: str  # also the name formats and scale files use
    onnx_type: int  # onnx.TensorProto data type of the quantized side of QuantizeLinear/DequantizeLinear
    qmin: float
    qmax: float
    symmetric: bool
    numpy_dtype: np.dtype = np.dtype(np.int8)  # how onnxq holds the values in memory
    bits: int = 8
    is_float: bool = False
    min_opset: int = 13  # per-channel ``axis`` needs 13
    min_ir_version: int = 7

    @property
    def signed(self) -> bool:
        """Whether the type has negative values (int8, int4, float8)."""
        return self.qmin < 0

    @property
    def steps(self) -> float:
        """Quantization steps across the range: ``2 * qmax`` when symmetric (restricted), else ``qmax - qmin``."""
        return 2 * self.qmax if self.symmetric else self.qmax - self.qmin

    def clip_range(self, symmetric: bool | None = None) -> tuple[float, float]:
        """The values are rounded into: ``[-qmax, qmax]`` when symmetric (the type's default unless given), else
        ``[qmin, qmax]``."""
        symmetric = self.symmetric if symmetric is None else symmetric
        return (-self.qmax, self.qmax) if symmetric and self.signed else (self.qmin, self.qmax)


INT8 = QuantDType("int8", onnx.TensorProto.INT8, -128, 127, symmetric=True)
UINT8 = QuantDType("uint8", onnx.TensorProto.UINT8, 0, 255, symmetric=False, numpy_dtype=np.dtype(np.uint8))
INT4 = QuantDType("int4", onnx.TensorProto.INT4, -8, 7, symmetric=True, bits=4, min_opset=21, min_ir_version=10)
UINT4 = QuantDType("uint4", onnx.TensorProto.UINT4, 0, 15, symmetric=False, numpy_dtype=np.dtype(np.uint8), bits=4,
                   min_opset=21, min_ir_version=10)
FLOAT8E4M3FN = QuantDType("float8e4m3fn", onnx.TensorProto.FLOAT8E4M3FN, -448.0, 448.0, symmetric=True,
                          numpy_dtype=np.dtype(ml_dtypes.float8_e4m3fn), is_float=True, min_opset=19,
                          min_ir_version=9)

QUANT_DTYPES: dict[str, QuantDType] = {t.name: t for t in (INT8, UINT8, INT4, UINT4, FLOAT8E4M3FN)}
BY_ONNX_TYPE: dict[int, QuantDType] = {t.onnx_type: t for t in QUANT_DTYPES.values()}


def quant_dtype(name: str) -> QuantDType:
    """The table entry of ``name``; a user error naming the known types otherwise."""
    if name not in QUANT_DTYPES:
        raise OnnxqError(f"unknown quantized type {name!r}; choose one of {', '.join(QUANT_DTYPES)}")
    return QUANT_DTYPES[name]


def to_storage(values: np.ndarray, name: str) -> np.ndarray:
    """Float values already on the grid (or integers) -> the type's numpy storage, saturating to its range.

    Float8 values are rounded to nearest even by ml_dtypes' cast, as QuantizeLinear with ``saturate=1`` does.
    """
    d = quant_dtype(name)
    clipped = np.clip(np.asarray(values, dtype=np.float32), d.qmin, d.qmax)
    if d.is_float:
        return clipped.astype(d.numpy_dtype)
    return np.rint(clipped).astype(d.numpy_dtype)
