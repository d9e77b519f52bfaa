"""From ranges to quantization parameters: calibrated activations and per-channel weights -> a ScaleTable."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from onnxq.calib import weights as weight_methods
from onnxq.calib.base import Calibrator
from onnxq.dtypes import quant_dtype
from onnxq.errors import OnnxqError
from onnxq.plan import QuantPlan, TensorPlan
from onnxq.scales.types import QuantParams, ScaleTable, asymmetric_params, symmetric_params


def activation_params(tensor: TensorPlan, calibrator: Calibrator) -> QuantParams:
    try:
        lo, hi = calibrator.compute_range(tensor.symmetric)
    except OnnxqError as exc:
        raise OnnxqError(f"activation {tensor.name!r}: {exc}") from exc
    if tensor.symmetric:
        return symmetric_params(max(abs(lo), abs(hi)), dtype=tensor.dtype)
    return asymmetric_params(lo, hi, dtype=tensor.dtype)


def weight_amax(w: np.ndarray, axis: int | None, method: str) -> np.ndarray:
    """Largest magnitude per output channel (``axis``) or of the whole tensor (``axis`` None)."""
    return weight_methods.weight_amax(w, axis, method)


def block_view(w: np.ndarray, axis: int, block_size: int) -> np.ndarray:
    """``w`` with ``axis`` split into (blocks, block_size) at positions (axis, axis + 1); the last block is padded
    by repeating the last element along ``axis`` (which changes no block's min, max or amax)."""
    length = w.shape[axis]
    blocks = -(-length // block_size)
    pad = blocks * block_size - length
    if pad:
        edge = np.take(w, [length - 1] * pad, axis=axis)
        w = np.concatenate([w, edge], axis=axis)
    return w.reshape(w.shape[:axis] + (blocks, block_size) + w.shape[axis + 1:])


def blockwise_params(tensor: TensorPlan, w: np.ndarray) -> QuantParams:
    """Block-wise parameters of a weight: one scale (and zero point) per ``block_size`` elements along the plan's
    axis, laid out as DequantizeLinear (opset 21) wants: the weight's shape with that axis divided, rounded up."""
    assert tensor.axis is not None and tensor.block_size is not None
    blocks = block_view(w.astype(np.float64), tensor.axis, tensor.block_size)
    if tensor.symmetric:
        amax = np.abs(blocks).max(axis=tensor.axis + 1)
        return symmetric_params(amax, tensor.axis, tensor.dtype, tensor.block_size)
    lo, hi = blocks.min(axis=tensor.axis + 1), blocks.max(axis=tensor.axis + 1)
    return asymmetric_params(lo, hi, tensor.axis, tensor.dtype, tensor.block_size)


def weight_params(tensor: TensorPlan, w: np.ndarray) -> QuantParams:
    if not np.isfinite(w).all():
        raise OnnxqError(f"weight {tensor.name!r} holds NaN or Inf values")
    if tensor.block_size is not None:
        return blockwise_params(tensor, w)
    if not tensor.symmetric:
        axes = tuple(i for i in range(w.ndim) if i != tensor.axis)
        lo = w.min(axis=axes) if tensor.axis is not None else w.min()
        hi = w.max(axis=axes) if tensor.axis is not None else w.max()
        return asymmetric_params(lo, hi, tensor.axis, tensor.dtype)
    return symmetric_params(weight_amax(w.astype(np.float32), tensor.axis, tensor.method), tensor.axis, tensor.dtype)


def compute_scales(plan: QuantPlan, calibrators: dict[str, Calibrator],
                   weights: Mapping[str, np.ndarray]) -> ScaleTable:
    """Parameters for every tensor of the plan; activations need a calibrator, weights their values."""
    table: ScaleTable = {}
    for tensor in plan.tensors.values():
        if tensor.role == "weight":
            table[tensor.name] = weight_params(tensor, weights[tensor.name])
        elif tensor.shares_scale_with is None:
            table[tensor.name] = activation_params(tensor, calibrators[tensor.name])
    return fill_shared_scales(plan, table)


def fill_shared_scales(plan: QuantPlan, table: ScaleTable) -> ScaleTable:
    """Give every tensor that shares a scale the parameters of the tensor it shares with; plan order."""
    for tensor in plan.tensors.values():
        if tensor.shares_scale_with is not None:
            table[tensor.name] = table[tensor.shares_scale_with]
    return {name: table[name] for name in plan.tensors}


def representable_range(params: QuantParams) -> tuple[float, float]:
    """The float interval a per-tensor Q/DQ pair represents without saturating."""
    scale, zp = float(params.scale), float(params.zero_point.astype(np.float32))
    d = quant_dtype(params.dtype)
    return (d.qmin - zp) * scale, (d.qmax - zp) * scale


def clipped_fractions(plan: QuantPlan, calibrators: dict[str, Calibrator], table: ScaleTable) -> dict[str, float]:
    """For each calibrated activation, the share of its calibration values its Q/DQ range saturates (where the
    calibrator's statistics can tell: the histogram methods)."""
    found: dict[str, float] = {}
    for tensor in plan.calibrated_activations():
        fraction = calibrators[tensor.name].clipped_fraction(*representable_range(table[tensor.name]))
        if fraction is not None:
            found[tensor.name] = fraction
    return found
