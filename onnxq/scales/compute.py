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


def weight_params(tensor: TensorPlan, w: np.ndarray) -> QuantParams:
    if tensor.dtype == "uint8":  # a constant operand of an integer Add/Mul on ort-cpu: asymmetric, per tensor
        if not np.isfinite(w).all():
            raise OnnxqError(f"weight {tensor.name!r} holds NaN or Inf values")
        return asymmetric_params(float(w.min()), float(w.max()))
    try:  # weight_amax refuses NaN/Inf without a full-size temporary
        amax = weight_amax(np.asarray(w, dtype=np.float32), tensor.axis, tensor.method)
    except OnnxqError as exc:
        raise OnnxqError(f"weight {tensor.name!r}: {exc}") from exc
    return symmetric_params(amax, tensor.axis)


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
    scale, zp = float(params.scale), float(params.zero_point)
    t = quant_dtype(params.dtype)
    qmin, qmax = t.qmin, t.qmax
    return (qmin - zp) * scale, (qmax - zp) * scale


def clipped_fractions(plan: QuantPlan, calibrators: dict[str, Calibrator], table: ScaleTable) -> dict[str, float]:
    """For each calibrated activation, the share of its calibration values its Q/DQ range saturates (where the
    calibrator's statistics can tell: the histogram methods)."""
    found: dict[str, float] = {}
    for tensor in plan.calibrated_activations():
        fraction = calibrators[tensor.name].clipped_fraction(*representable_range(table[tensor.name]))
        if fraction is not None:
            found[tensor.name] = fraction
    return found
