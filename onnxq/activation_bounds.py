"""Activation ranges narrowed to what the activation function reading them can tell apart (``--target ort-cpu``).

On onnxruntime's CPU provider a Conv fuses into ``QLinearConv`` only with a Q on its output, so the tensor rounded
to uint8 is the Conv's *pre-activation* output (docs/ort_cpu_rules.md 4); a calibrated range covers its whole
negative tail although the activation after it maps that tail to (almost) one value:

- ``HardSwish(x)`` is 0 for every x <= -3, written out or rewritten as ``x * Clip(x + 3, 0, 6)`` too;
- ``HardSigmoid(x; alpha, beta)`` and ``Clip(x + c, lo, hi)`` saturate outside ``[-beta/alpha, (1-beta)/alpha]``
  and ``[lo - c, hi - c]``: both ends;
- ``SiLU(x) = x * Sigmoid(x)`` lies in (-0.0148, 0) for x < -6, so clamping there changes it by < 0.015.

Saturating the quantized tensor at those bounds loses nothing (HardSwish, HardSigmoid, Clip) or less than 0.015
(SiLU), and every code of the uint8 grid goes to values that matter. The bound applies only when every reader of the
tensor is part of the activation (one Q/DQ serves all readers). The narrowed range is the calibrated one, clamped.
"""

from __future__ import annotations

import onnx

from onnxq.graph import GraphIndex, attr
from onnxq.plan import QuantPlan
from onnxq.scales.compute import representable_range
from onnxq.scales.types import ScaleTable, asymmetric_params

#: below this, SiLU(x) = x * Sigmoid(x) is within 0.0148 of its value at the bound (and of 0)
SILU_FLOOR = -6.0
HARDSWISH_FLOOR = -3.0

Bounds = tuple[float | None, float | None]


def _scalar(index: GraphIndex, name: str) -> float | None:
    if not name or not index.is_initializer(name):
        return None
    value = index.array(name)
    return float(value.reshape(())) if value.size == 1 else None


def _clip_bounds(index: GraphIndex, clip: onnx.NodeProto) -> Bounds:
    if clip.op_type == "Relu":
        return 0.0, None
    if len(clip.input) > 1:
        return _scalar(index, clip.input[1]), (_scalar(index, clip.input[2]) if len(clip.input) > 2 else None)
    low, high = attr(clip, "min"), attr(clip, "max")
    return (None if low is None else float(low)), (None if high is None else float(high))


def _only_reader(index: GraphIndex, tensor: str) -> onnx.NodeProto | None:
    readers = index.consumers.get(tensor, [])
    return readers[0][0] if len(readers) == 1 and tensor not in index.graph_outputs else None


def tensor_bounds(index: GraphIndex, tensor: str) -> Bounds | None:
    """The interval outside which the readers of ``tensor`` cannot tell its values apart, or None."""
    readers = index.consumers.get(tensor, [])
    if not readers or tensor in index.graph_outputs or any(r.domain not in ("", "ai.onnx") for r, _ in readers):
        return None
    ops = sorted(r.op_type for r, _ in readers)
    if ops == ["HardSwish"]:
        return HARDSWISH_FLOOR, None
    if ops == ["HardSigmoid"]:
        alpha, beta = float(attr(readers[0][0], "alpha", 0.2)), float(attr(readers[0][0], "beta", 0.5))
        return (-beta / alpha, (1 - beta) / alpha) if alpha > 0 else None
    if ops == ["Mul", "Sigmoid"]:  # SiLU: Mul(x, Sigmoid(x))
        sigmoid = next(r for r, _ in readers if r.op_type == "Sigmoid")
        mul = next(r for r, _ in readers if r.op_type == "Mul")
        return (SILU_FLOOR, None) if sorted(mul.input) == sorted([tensor, sigmoid.output[0]]) else None
    if ops in (["Add"], ["Add", "Mul"]):  # Clip(x + c, lo, hi), and x * Clip(x + 3, 0, 6) (rewritten HardSwish)
        add = next(r for r, _ in readers if r.op_type == "Add")
        shift = _scalar(index, next((t for t in add.input if t != tensor), ""))
        clip = _only_reader(index, add.output[0])
        if shift is None or clip is None or clip.op_type not in ("Clip", "Relu"):
            return None
        low, high = _clip_bounds(index, clip)
        if len(ops) == 1:
            return (None if low is None else low - shift), (None if high is None else high - shift)
        mul = next(r for r, _ in readers if r.op_type == "Mul")
        if low == 0.0 and sorted(mul.input) == sorted([tensor, clip.output[0]]):
            return -shift, None  # x * 0 below -shift
    return None


def narrow_to_activation_bounds(table: ScaleTable, plan: QuantPlan, graph: onnx.GraphProto) -> ScaleTable:
    """``table`` with the per-tensor asymmetric activations clamped to :func:`tensor_bounds` (tensors whose scale
    another tensor shares are left alone); the other entries unchanged."""
    index = GraphIndex.build(graph)
    shared = {t.shares_scale_with for t in plan.tensors.values() if t.shares_scale_with is not None}
    narrowed = dict(table)
    for tensor in plan.activations():
        params = table.get(tensor.name)
        if params is None or tensor.symmetric or tensor.shares_scale_with is not None or tensor.name in shared \
                or params.axis is not None or params.scale.ndim:
            continue
        bounds = tensor_bounds(index, tensor.name)
        if bounds is None:
            continue
        lo, hi = representable_range(params)
        new_lo = lo if bounds[0] is None else max(lo, bounds[0])
        new_hi = hi if bounds[1] is None else min(hi, bounds[1])
        if (new_lo, new_hi) != (lo, hi) and new_hi > new_lo:
            narrowed[tensor.name] = asymmetric_params(new_lo, new_hi, dtype=params.dtype)
    return narrowed
