"""The integer types onnxq quantizes to: one table, read by the plan, the scale maths, Q/DQ insertion, the scale
file formats, the lint and QAT.

A new format is one entry in :data:`QUANT_DTYPES`. ``symmetric`` is onnxq's convention for the type: a symmetric type
has zero point 0 and uses the restricted range ``[-qmax, qmax]`` so that ``-amax`` and ``+amax`` are both
representable (TensorRT's convention, ``scale = amax / 127`` for int8); an asymmetric type uses ``[qmin, qmax]`` with a
zero point (onnxruntime's uint8 convention, ``scale = (hi - lo) / 255``).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from onnxq.errors import OnnxqError


@dataclass(frozen=True)
class QuantDType:
    """One integer type: its name (also the numpy dtype), ONNX type, range and onnxq's symmetry convention."""

    name: str  # also the numpy dtype name of the integer values
    onnx_type: int  # onnx.TensorProto data type of the integer side of QuantizeLinear/DequantizeLinear
    qmin: int
    qmax: int
    symmetric: bool

    @property
    def steps(self) -> int:
        """Quantization steps across the range: ``2 * qmax`` when symmetric (restricted), else ``qmax - qmin``."""
        return 2 * self.qmax if self.symmetric else self.qmax - self.qmin

    def clip_range(self) -> tuple[int, int]:
        """The integers values are rounded into: ``[-qmax, qmax]`` when symmetric, else ``[qmin, qmax]``."""
        return (-self.qmax, self.qmax) if self.symmetric else (self.qmin, self.qmax)


INT8 = QuantDType("int8", onnx.TensorProto.INT8, -128, 127, symmetric=True)
UINT8 = QuantDType("uint8", onnx.TensorProto.UINT8, 0, 255, symmetric=False)

QUANT_DTYPES: dict[str, QuantDType] = {t.name: t for t in (INT8, UINT8)}
BY_ONNX_TYPE: dict[int, QuantDType] = {t.onnx_type: t for t in QUANT_DTYPES.values()}


def quant_dtype(name: str) -> QuantDType:
    """The table entry of ``name``; a user error naming the known types otherwise."""
    if name not in QUANT_DTYPES:
        raise OnnxqError(f"unknown quantized type {name!r}; choose one of {', '.join(QUANT_DTYPES)}")
    return QUANT_DTYPES[name]
