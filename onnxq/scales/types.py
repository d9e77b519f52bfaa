"""In-memory quantization parameters, keyed by ONNX tensor name.

A :class:`QuantParams` is what a QuantizeLinear/DequantizeLinear pair needs: scale, zero point, the quantized
dtype (see :mod:`onnxq.dtypes`), for per-channel parameters the axis and, for block-wise ones (opset 21),
the block size along that axis. A :class:`ScaleTable` maps tensor names to them; every
import/export format (onnxq JSON, TensorRT calibration cache, AIMET encodings, QAT) reads or writes one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxq.dtypes import INT8, UINT8, quant_dtype
from onnxq.errors import OnnxqError


@dataclass(frozen=True)
class QuantParams:
    """Scale and zero point of one tensor.

    ``scale`` and ``zero_point`` are 0-d arrays for per-tensor parameters, 1-d arrays (one entry per
    channel along ``axis``) for per-channel parameters, and arrays of the weight's rank (the ``axis`` dimension
    divided by ``block_size``, rounded up) for block-wise parameters.
    """

    scale: np.ndarray
    zero_point: np.ndarray
    dtype: str = INT8.name  # a key of onnxq.dtypes.QUANT_DTYPES
    axis: int | None = None
    block_size: int | None = None

    def __post_init__(self) -> None:
        quant_dtype(self.dtype)
        scale = np.asarray(self.scale, dtype=np.float32)
        zp = np.asarray(self.zero_point).astype(quant_dtype(self.dtype).numpy_dtype)
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "zero_point", zp)
        if scale.shape != zp.shape:
            raise OnnxqError(f"scale shape {scale.shape} and zero point shape {zp.shape} differ")
        if self.block_size is not None:
            if self.axis is None or scale.ndim < 1 or self.block_size < 1:
                raise OnnxqError("block-wise parameters need an axis, a positive block size and a scale per block")
        elif scale.ndim > 1:
            raise OnnxqError(f"scale must be a scalar or a 1-d per-channel vector, got shape {scale.shape}")
        if (self.axis is None) != (scale.ndim == 0):
            raise OnnxqError("per-channel parameters need an axis and per-tensor parameters must not have one")
        if not np.all(np.isfinite(scale)) or not np.all(scale > 0):
            raise OnnxqError(f"scales must be finite and positive, got {scale.ravel()[:8]}")

    @property
    def per_channel(self) -> bool:
        return self.axis is not None and self.block_size is None

    @property
    def blockwise(self) -> bool:
        return self.block_size is not None

    @property
    def channels(self) -> int:
        return int(self.scale.size) if self.per_channel else 1

    @property
    def symmetric(self) -> bool:
        return quant_dtype(self.dtype).signed and bool(np.all(self.zero_point.astype(np.float32) == 0))

    def amax(self) -> np.ndarray:
        """The largest magnitude representable, for symmetric parameters: scale * qmax (127 for int8)."""
        return self.scale.astype(np.float64) * quant_dtype(self.dtype).qmax

    def equals(self, other: QuantParams) -> bool:
        return (
            self.dtype == other.dtype
            and self.axis == other.axis
            and self.block_size == other.block_size
            and np.array_equal(self.scale, other.scale)
            and np.array_equal(self.zero_point, other.zero_point)
        )


ScaleTable = dict[str, QuantParams]


def symmetric_params(amax: np.ndarray | float, axis: int | None = None, dtype: str = INT8.name,
                     block_size: int | None = None) -> QuantParams:
    """Symmetric parameters for a range [-amax, amax] (scale = amax / the dtype's symmetric qmax: 127 for int8,
    7 for int4, 448 for float8e4m3fn); a zero or tiny range keeps a finite positive scale."""
    qmax = quant_dtype(dtype).qmax
    amax = np.asarray(amax, dtype=np.float64)
    scale = np.maximum(amax, np.finfo(np.float32).tiny * qmax) / qmax
    scale = np.where(amax > 0, scale, 1.0)
    return QuantParams(scale.astype(np.float32), np.zeros(scale.shape), dtype, axis, block_size)


def asymmetric_params(lo: np.ndarray | float, hi: np.ndarray | float, axis: int | None = None,
                      dtype: str = UINT8.name, block_size: int | None = None) -> QuantParams:
    """Asymmetric integer parameters for a range [lo, hi] over the dtype's full grid (uint8 [0, 255], int8
    [-128, 127], uint4 [0, 15]); the range is widened to include 0, which stays exactly representable."""
    d = quant_dtype(dtype)
    if d.is_float:
        raise OnnxqError(f"{dtype} has no asymmetric form")
    lo = np.minimum(np.asarray(lo, dtype=np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, dtype=np.float64), 0.0)
    width = hi - lo
    scale = np.where(width > 0, width / (d.qmax - d.qmin), 1.0)
    zero_point = np.clip(np.round(d.qmin - lo / scale), d.qmin, d.qmax)
    return QuantParams(scale.astype(np.float32), zero_point, dtype, axis, block_size)
