"""The quantize pipeline's recovery stages, in order:

* ``equalize`` (before the plan, float -> float, exact): SmoothQuant migration into MatMul/Gemm weights and
  cross-layer / depthwise-input equalization, from per-channel ranges of one float pass over a few batches; then
  the activation shift of the 1x1 Conv/Gemm inputs (:mod:`onnxq.recovery.activation_shift`), whose bias
  compensation for the quantized weights closes ``recover`` where no correction changed the bias;
* ``recover`` (after the ranges): one float pass caching the inputs of the quantized weighted layers, then
  ``--method auto`` range selection and AdaRound (learned rounding, torch), each layer-local; last, bias correction
  on the whole Q/DQ model (one pass per layer level), so it sees the final ranges and weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import onnx

from onnxq.calib.base import Calibrator
from onnxq.config import RecoveryOptions
from onnxq.data import Batch
from onnxq.errors import OnnxqError
from onnxq.graph import GraphIndex
from onnxq.plan import QuantPlan
from onnxq.recovery.channel_scale import PassObserver
from onnxq.recovery.layers import build_layer, capture_inputs, is_layer
from onnxq.scales.rewrites import ShiftRewrite
from onnxq.scales.types import ScaleTable

if TYPE_CHECKING:
    from onnxq.recovery.activation_shift import SpreadSampler

log = logging.getLogger(__name__)


def equalize(model: onnx.ModelProto, data: Iterable[Batch] | None, options: RecoveryOptions,
             fold_only: bool = False, skip_padding: bool = True, also: PassObserver | None = None) -> list[str]:
    """Float-to-float channel rescaling of ``model`` in place; returns notes for the report. Every rewrite is
    recorded in the model's metadata (:mod:`onnxq.scales.rewrites`), so exported scales can carry it and
    ``--scales`` can replay it (:mod:`onnxq.recovery.replay`). ``skip_padding``: the channel statistics leave out a
    masked transformer's padding tokens (:mod:`onnxq.padding_rows`). ``also`` reads its tensors in the same float
    pass, when there is one (the activation shift's samples, :func:`shift_activations`)."""
    alpha = options.smoothquant(None)
    if not (options.equalize or alpha is not None):
        return []
    if data is None:
        return ["equalization/SmoothQuant skipped: they need calibration data (--calib)"]
    from onnxq.recovery.channel_scale import channel_statistics, drop_unused_initializers
    from onnxq.recovery.equalization import cle_pairs, equalization_targets, equalize_model
    from onnxq.recovery.smoothquant import has_outlier_channels, smoothquant_model, smoothquant_targets
    from onnxq.scales.rewrites import ChannelRewrite, FloatRewrites, record_in_model, weights_digest

    notes: list[str] = []
    done: list[ChannelRewrite] = []
    smoothed = smoothquant_targets(model) if alpha is not None else []
    equalized = equalization_targets(model) if options.equalize else []
    pairs = bool(options.equalize and cle_pairs(model))
    targets = equalized + smoothed
    # the digest of the float weights before, for the record (skipped, with its hashing, when nothing can change)
    before = weights_digest(model) if targets or pairs else ""
    # the Conv pairs of cross-layer equalization need no data: only the per-channel targets cost a float pass.
    # SmoothQuant's search reads its rows (MatMul/Gemm inputs) in that pass too: equalization never changes them. It
    # rescales a Conv's input either through an inserted Mul (the tensor itself stays) or folded into a producing Conv
    # along a chain of single-consumer tensors that ends at that Conv, so no MatMul/Gemm reads a rescaled tensor
    searched = [t.tensor for t in smoothed] if alpha == "auto" else []
    ranges, rows = channel_statistics(model, targets, data, options.equalize_batches, rows=searched,
                                      row_batches=options.batches if searched else 0, skip_padding=skip_padding,
                                      keep_rows=has_outlier_channels, also=also) if targets else ({}, {})
    if options.equalize:
        note, rewrites = equalize_model(model, ranges, fold_only)
        notes.append(note)
        done += rewrites
    if alpha is not None:
        note, rewrites = smoothquant_model(model, ranges, alpha, data, options.batches,
                                           skip_padding=skip_padding, samples=rows if searched else None)
        notes.append(note)
        done += rewrites
    if done:
        drop_unused_initializers(model)
        record_in_model(model, FloatRewrites(tuple(done), before, weights_digest(model)))
        notes.append("float rewrites recorded in the output model: its scales fit the rewritten float graph "
                     "(export-scales --format json carries them; trt-cache/aimet need --float-model)")
    return notes


def shift_sampler(model: onnx.ModelProto, options: RecoveryOptions) -> SpreadSampler | None:
    """What the equalization pass samples for the activation shift (None: no shift): every tensor a shift could
    apply to, before the channel rewrites, which :func:`shift_activations` maps its samples through."""
    if not options.activation_shift:
        return None
    from onnxq.recovery.activation_shift import SpreadSampler, shift_candidates

    return SpreadSampler(shift_candidates(model), options.equalize_batches)


def shift_activations(model: onnx.ModelProto, data: Iterable[Batch] | None, options: RecoveryOptions,
                      skip_padding: bool = True, sampled: SpreadSampler | None = None,
                      rewrites_since: int = 0) -> list[str]:
    """The activation shift of ``model`` in place (after equalization and SmoothQuant, which change the tensors it
    centres), recorded with the float rewrites; returns notes for the report. ``sampled``: the samples
    :func:`shift_sampler` took in the equalization pass, before the recorded rewrites from ``rewrites_since`` on;
    the tensors they do not give are sampled by a pass of the shift's own."""
    if not options.activation_shift or data is None:
        return []
    from onnxq.recovery.activation_shift import shift_model
    from onnxq.scales.rewrites import FloatRewrites, read_from_model, record_in_model, weights_digest

    earlier = read_from_model(model)
    before = earlier.weights_before if earlier else weights_digest(model)  # hashed only when nothing recorded it
    note, rewrites = shift_model(model, data, options.equalize_batches, skip_padding=skip_padding,
                                 sampled=sampled.spreads if sampled is not None else None,
                                 rewrites_since=earlier.rewrites[rewrites_since:] if earlier else ())
    if rewrites:
        record_in_model(model, FloatRewrites((*(earlier.rewrites if earlier else ()), *rewrites), before,
                                             weights_digest(model)))
    return [note]


def recorded_shifts(model: onnx.ModelProto) -> list[ShiftRewrite]:
    """The activation shifts recorded with ``model``'s float rewrites (none: not shifted)."""
    from onnxq.scales.rewrites import read_from_model

    record = read_from_model(model)
    return [r for r in record.rewrites if isinstance(r, ShiftRewrite)] if record else []


def compensated_shifts(prepared: onnx.ModelProto, table: ScaleTable, shifts: list[ShiftRewrite],
                       corrected: set[str]) -> list[str]:
    """The biases of the layers of ``shifts`` but ``corrected`` compensated for their quantized weights
    (``prepared`` in place, recorded like bias correction's)."""
    from onnxq.recovery.activation_shift import compensate_shifts

    def compensate() -> str:
        changed = compensate_shifts(prepared, table, shifts, skip=corrected)
        shifted = {n for r in shifts for n in r.nodes}
        others = f" ({len(shifted & corrected)} other(s) bias-corrected)" if shifted & corrected else ""
        return f"activation shift: {changed} layer bias(es) compensated for the quantized weights{others}" if changed \
            else ""

    return recorded_biases(prepared, True, compensate, "activation-shift compensation")


def recover(prepared: onnx.ModelProto, plan: QuantPlan, table: ScaleTable, calibrators: dict[str, Calibrator],
            data: Iterable[Batch] | None, options: RecoveryOptions,
            constant_region: bool = False) -> tuple[ScaleTable, list[str]]:
    """Layer-local recovery after the ranges: the (possibly changed) table and notes; ``prepared`` is changed in
    place (AdaRound weights, corrected biases). ``constant_region``: correct the biases on the calibration data's
    padding constant (:mod:`onnxq.recovery.constant_region`) first; bias correction, when on, runs where that
    correction was not kept (no padding constant, a model that is not fully convolutional, too little gain). Last,
    the shifted layers that no correction changed get their shift's compensation for the quantized weights (a
    correction measures the exact float model, and the mean shift it removes includes that constant); a --scales
    run replayed the compensated biases already."""
    from onnxq.recovery.bias_record import bias_state, changed_biases

    shifts = recorded_shifts(prepared) if data is not None else []
    before = bias_state(prepared) if shifts else {}
    table, notes = corrections(prepared, plan, table, calibrators, data, options, constant_region)
    if shifts:
        corrected = {r.node for r in changed_biases(prepared, before)}
        # the "corrected biases recorded" note once, when bias correction wrote it already
        notes += [n for n in compensated_shifts(prepared, table, shifts, corrected) if n not in notes]
    return table, notes


def corrections(prepared: onnx.ModelProto, plan: QuantPlan, table: ScaleTable, calibrators: dict[str, Calibrator],
                data: Iterable[Batch] | None, options: RecoveryOptions,
                constant_region: bool) -> tuple[ScaleTable, list[str]]:
    """GPTQ rounding, layer-local recovery, then the constant-region correction or bias correction (:func:`recover`)."""
    rounding = [gptq_rounding(prepared, plan, table, data, options)] if uses_gptq(plan, options, data) else []
    auto = [t for t in plan.calibrated_activations() if t.method == "auto"]
    if data is None and constant_region and not (auto or options.needs_layers or options.bias_correction):
        log.info("constant-region correction skipped: it needs calibration data (--calib)")
        return table, rounding
    if not (auto or options.needs_layers or options.bias_correction or constant_region):
        return table, rounding
    if data is None:
        return table, ["layer-local recovery and bias correction skipped: they need calibration data (--calib); "
                       "auto ranges fall back to mse"]
    notes: list[str] = rounding  # GPTQ first: bias correction then sees the final weights
    if auto or options.needs_layers:
        table, local = layer_local(prepared, plan, table, calibrators, data, options, auto)
        notes += local
    replayable = not (rounding or options.adaround)
    region_notes = constant_region_biases(prepared, plan, table, data, replayable) if constant_region else []
    notes += region_notes
    if options.bias_correction and not region_notes:
        notes += corrected_biases(prepared, plan, table, data, options, replayable)
    return table, notes


def corrected_biases(prepared: onnx.ModelProto, plan: QuantPlan, table: ScaleTable, data: Iterable[Batch],
                     options: RecoveryOptions, replayable: bool) -> list[str]:
    """Bias correction of ``prepared`` in place, recorded with the float rewrites when a replay on the original
    float weights can reproduce it (not after GPTQ/AdaRound re-rounded the weights)."""
    from onnxq.recovery.bias_correction import correct_biases

    return recorded_biases(prepared, replayable, lambda: correct_biases(
        prepared, plan, table, data, options.bias_correction_batches, options.bias_correction_min_t,
        samples=options.bias_correction_samples, output_heads=options.bias_correction_output_heads).note(),
        "bias correction")


def constant_region_biases(prepared: onnx.ModelProto, plan: QuantPlan, table: ScaleTable, data: Iterable[Batch],
                           replayable: bool) -> list[str]:
    """The constant-region correction of ``prepared`` in place (:mod:`onnxq.recovery.constant_region`), recorded
    like bias correction's."""
    from onnxq.recovery.constant_region import correct_constant_region

    return recorded_biases(prepared, replayable, lambda: correct_constant_region(prepared, plan, table, data),
                           "constant-region correction")


def recorded_biases(prepared: onnx.ModelProto, replayable: bool, correct: Callable[[], str], what: str) -> list[str]:
    """Run ``correct`` (which changes the biases of ``prepared`` and returns a note, "" when it changed nothing) and
    record the changed biases with the float rewrites when a replay on the original float weights can reproduce
    them. When onnxruntime cannot run a part of the model the correction needs (an OnnxqError before any bias is
    written), the quantization goes on without it and the report says why: ``what`` names it."""
    from onnxq.recovery.bias_record import bias_state, record_bias_rewrites
    from onnxq.scales.rewrites import read_from_model, weights_digest

    # the weights' digest before is recorded only when no earlier rewrite recorded it (hashing costs per weight byte)
    digest = weights_digest(prepared) if replayable and read_from_model(prepared) is None else ""
    before = bias_state(prepared) if replayable else {}
    try:
        note = correct()
    except OnnxqError as exc:
        log.warning("%s skipped: %s", what, exc)
        return [f"{what} skipped: {exc}"]
    if not note:
        return []
    notes = [note]
    if not replayable:
        notes.append("corrected biases not recorded for --scales replay: the weights were re-rounded (GPTQ/AdaRound), "
                     "which a replay on the original float weights cannot reproduce")
    elif record_bias_rewrites(prepared, before, digest):
        notes.append("corrected biases recorded with the float rewrites (export-scales --format json carries them; "
                     "trt-cache/aimet need --float-model)")
    return notes


def layer_local(prepared: onnx.ModelProto, plan: QuantPlan, table: ScaleTable, calibrators: dict[str, Calibrator],
                data: Iterable[Batch], options: RecoveryOptions, auto: list) -> tuple[ScaleTable, list[str]]:
    """``--method auto`` and AdaRound on the cached float inputs of the quantized weighted layers."""
    index = GraphIndex.build(prepared.graph)
    planned = {c.node for t in plan.weights() for c in t.consumers}
    nodes = [n for n in prepared.graph.node if is_layer(n, index) and (n.name or n.output[0]) in planned
             and n.input[0] in plan.tensors]
    inputs = capture_inputs(prepared, sorted({n.input[0] for n in nodes}), data, options.batches, options.crop)
    layers = {n.name or n.output[0]: build_layer(prepared, n, index) for n in nodes if n.input[0] in inputs}
    reference = {name: layer.run(inputs[layer.node.input[0]]) for name, layer in layers.items()}
    notes: list[str] = []
    if auto:
        from onnxq.recovery.method_select import select_ranges

        table, choices = select_ranges(plan, calibrators, table, layers, inputs, reference)
        counts: dict[str, int] = {}
        for choice in choices:
            counts[choice.method] = counts.get(choice.method, 0) + 1
        notes.append("auto ranges: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) +
                     f" (of {len(auto)} activations; the rest mse)")
    if options.adaround:
        from onnxq.recovery.adaround import adaround_model

        notes.append(adaround_model(prepared, table, layers, inputs, reference, options.adaround_iterations))
    return table, notes


def uses_gptq(plan: QuantPlan, options: RecoveryOptions, data: Iterable[Batch] | None) -> bool:
    """Whether the weights are rounded by GPTQ: asked for, or ``auto`` on a weight-only plan with calibration data
    (AdaRound, when asked for, chooses the rounding instead)."""
    if options.weight_rounding in ("gptq", "gptaq"):
        return True
    return (options.weight_rounding == "auto" and not options.adaround and data is not None
            and bool(plan.weights()) and not plan.calibrated_activations())


def gptq_rounding(prepared: onnx.ModelProto, plan: QuantPlan, table: ScaleTable, data: Iterable[Batch] | None,
                  options: RecoveryOptions) -> str:
    """``--weight-rounding gptq|gptaq``: the planned weights of ``prepared`` rounded by GPTQ (or, ``gptaq``, by its
    activation-aware form with a float bias, level by level on the Q/DQ model) on the plan's scales."""
    if data is None:
        return f"{options.weight_rounding.upper()} weight rounding skipped: it needs calibration data (--calib)"
    if options.weight_rounding == "gptaq":
        from onnxq.recovery.gptaq import gptaq_model

        return gptaq_model(prepared, plan, table, data, options.gptq_batches)
    from onnxq.recovery.gptq import gptq_model

    return gptq_model(prepared, plan, table, data, options.gptq_batches)
