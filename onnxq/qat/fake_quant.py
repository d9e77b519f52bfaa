"""Fake quantization in torch that computes what onnxruntime's QuantizeLinear -> DequantizeLinear computes.

``q = clamp(round_half_even(x / scale) + zero_point, qmin, qmax); y = (q - zero_point) * scale`` — division (not
multiplication by 1/scale) and round-half-to-even, as onnxruntime does, so a fake-quant forward and the deployed
Q/DQ graph agree to float rounding. Gradients: straight-through for ``x`` inside the range (zero outside, through
the clamp); for a learnable scale the LSQ gradient (Esser et al., 2020), scaled by ``1 / sqrt(numel * qmax)``.

Ranges follow onnxq's scale conventions (:mod:`onnxq.scales.types`): activations int8 symmetric ``[-128, 127]``
(or uint8 asymmetric ``[0, 255]`` with a zero point for the ort-cpu target), weights int8 symmetric ``[-127, 127]``
per channel, ``scale = amax / 127``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from onnxq.dtypes import INT8, quant_dtype
from onnxq.scales.types import QuantParams

TINY = float(np.finfo(np.float32).tiny)


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def _grad_scale(s: torch.Tensor, factor: float) -> torch.Tensor:
    return (s - s * factor).detach() + s * factor


class _FixedScaleFakeQuant(torch.autograd.Function):
    """Quantize-dequantize with a scale that gets no gradient: one buffer, in-place steps, a saved boolean mask, and
    the straight-through gradient ``grad * (qmin <= x / scale + zero_point <= qmax)`` (what the composite
    ``clamp(round_ste(x / s) + z)`` gives, at a fraction of its memory traffic)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | float, qmin: int,
                qmax: int) -> torch.Tensor:
        shifted = not isinstance(zero_point, float) or zero_point != 0.0
        q = torch.div(x, scale)
        q.round_()  # half to even, as onnxruntime's QuantizeLinear
        if shifted:
            q.add_(zero_point)
        if ctx.needs_input_grad[0]:
            clamped = q.clamp(qmin, qmax)
            ctx.save_for_backward(torch.eq(clamped, q))  # inside the range: where clamping changed nothing
            q = clamped
        else:
            q.clamp_(qmin, qmax)
        if shifted:
            q.sub_(zero_point)
        return q.mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | float, qmin: float, qmax: float,
                  axis: int | None = None, grad_factor: float | None = None) -> torch.Tensor:
    """Quantize-dequantize ``x``; ``scale``/``zero_point`` are 0-d, or 1-d along ``axis`` (per channel)."""
    if axis is not None:
        shape = [1] * x.dim()
        shape[axis] = -1
        scale = scale.reshape(shape)
        if isinstance(zero_point, torch.Tensor):
            zero_point = zero_point.reshape(shape)
    if not scale.requires_grad and not (isinstance(zero_point, torch.Tensor) and zero_point.requires_grad):
        return _FixedScaleFakeQuant.apply(x, scale, zero_point, qmin, qmax)
    if grad_factor is not None:
        scale = _grad_scale(scale, grad_factor)
    q = torch.clamp(_round_ste(x / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


class ActQuantizer(nn.Module):
    """Per-tensor fake quant of one planned activation; every consumer of the tensor uses this one module."""

    zero_point: torch.Tensor  # a buffer (registered in __init__)

    def __init__(self, tensor: str, params: QuantParams, learn_scale: bool = False) -> None:
        super().__init__()
        if params.per_channel:
            raise ValueError(f"activation {tensor!r}: per-channel activation scales are not supported")
        self.tensor = tensor
        self.dtype = params.dtype
        self.qmin, self.qmax = quant_dtype(params.dtype).qmin, quant_dtype(params.dtype).qmax
        scale = torch.tensor(float(params.scale), dtype=torch.float32)
        self.scale = nn.Parameter(scale, requires_grad=learn_scale) if learn_scale else nn.Parameter(
            scale, requires_grad=False)
        self.register_buffer("zero_point", torch.tensor(float(params.zero_point), dtype=torch.float32))
        self._zero_point = float(params.zero_point)  # the same, as a number (no tensor op per call when it is 0)
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        scale = self.scale.abs().clamp_min(TINY)
        factor = 1.0 / math.sqrt(max(x.numel(), 1) * self.qmax) if self.scale.requires_grad else None
        zero_point = self._zero_point if factor is None else self.zero_point.to(x.dtype)
        return fake_quantize(x, scale.to(x.dtype), zero_point, self.qmin, self.qmax, None, factor)

    def params(self) -> QuantParams:
        scale = np.asarray(self.scale.detach().abs().clamp_min(TINY).cpu().numpy(), dtype=np.float32)
        zp = np.asarray(self.zero_point.detach().cpu().numpy()).astype(self.dtype)
        return QuantParams(scale.reshape(()), zp.reshape(()), self.dtype, None)

    def extra_repr(self) -> str:
        return f"{self.tensor!r}, {self.dtype}, scale={float(self.scale):.6g}"


class WeightQuantizer(nn.Module):
    """Per-channel (or per-tensor) symmetric int8 fake quant of one planned weight.

    ``mode`` ``dynamic``: scale = per-channel max|w| / 127 of the current weights at every step (what onnxq's min-max
    weight calibration gives for the exported weights); ``fixed``: the PTQ scale, never updated; ``learned``: LSQ,
    initialised from the PTQ scale.
    """

    MODES = ("dynamic", "fixed", "learned")

    def __init__(self, tensor: str, params: QuantParams, torch_axis: int | None, mode: str = "dynamic") -> None:
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"weight scale mode must be one of {self.MODES}, got {mode!r}")
        self.tensor = tensor
        self.torch_axis = torch_axis
        self.onnx_axis = params.axis
        self.mode = mode
        self.scale = nn.Parameter(torch.as_tensor(params.scale.copy(), dtype=torch.float32),
                                  requires_grad=mode == "learned")
        self.enabled = True

    def current_scale(self, w: torch.Tensor) -> torch.Tensor:
        if self.mode != "dynamic":
            return self.scale.abs().clamp_min(TINY)
        w = w.detach()
        if self.torch_axis is None:
            amax = w.abs().amax()
        else:
            amax = w.abs().amax(dim=[d for d in range(w.dim()) if d != self.torch_axis])
        return torch.where(amax > 0, amax.clamp_min(TINY * INT8.qmax) / INT8.qmax,
                           torch.ones_like(amax))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return w
        scale = self.current_scale(w).to(w.dtype)
        factor = 1.0 / math.sqrt(max(w.numel(), 1) * INT8.qmax) if self.mode == "learned" else None
        return fake_quantize(w, scale, 0.0, -INT8.qmax, INT8.qmax, self.torch_axis, factor)

    def params(self, w: torch.Tensor) -> QuantParams:
        scale = self.current_scale(w).detach().cpu().numpy().astype(np.float32)
        if self.onnx_axis is None:
            scale = scale.reshape(())
        return QuantParams(scale, np.zeros(scale.shape, np.int8), "int8", self.onnx_axis)

    def extra_repr(self) -> str:
        return f"{self.tensor!r}, axis={self.torch_axis}, mode={self.mode}"
