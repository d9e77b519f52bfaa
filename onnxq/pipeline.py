"""``quantize()``: the whole post-training quantization, as named stages in order.

load -> prepare (strip Q/DQ?, opset, constants, fold BN, shapes) -> equalize (cross-layer, SmoothQuant) -> plan ->
ranges (calibrate | statistics | imported scales) -> scales -> recover (auto ranges, AdaRound, bias correction) ->
insert Q/DQ -> verify (checker + onnxruntime) -> validate? -> save
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from onnxq import progress
from onnxq.activation_bounds import narrow_to_activation_bounds
from onnxq.calib.base import CalibOptions, Calibrator
from onnxq.calib.collect import CollectSettings, collect_statistics
from onnxq.calib.stats import expand_stats_paths, merge_stats, rechoose_methods
from onnxq.config import QuantConfig, RecoveryOptions
from onnxq.data import Batch, BatchSource, DataSource, RandomSource
from onnxq.empty_plan import explain_empty_plan
from onnxq.errors import OnnxqError
from onnxq.float_nodes import float_prefix
from onnxq.graph import (
    GraphIndex,
    check_model,
    count_qdq,
    estimated_size,
    fingerprint,
    load_model,
    model_files,
    model_outputs,
    needs_external_data,
    save_model,
)
from onnxq.insert import InsertQDQ
from onnxq.insert.quantize_bias import QuantizeBias
from onnxq.outputs import check_outputs
from onnxq.padding_rows import find_padding_mask
from onnxq.passes import PassManager, prepare_passes
from onnxq.passes.decompose_hard_activations import DecomposeHardActivations
from onnxq.passes.float16 import ConvertFloatToFP16
from onnxq.passes.fold_bias_add import FoldBiasAdd
from onnxq.passes.fold_conv_scale import FoldConvScale
from onnxq.passes.fuse_gelu import FuseGelu
from onnxq.passes.matmul_bias_to_gemm import MatMulBiasToGemm
from onnxq.passes.pad_depthwise_channels import PadDepthwiseChannels
from onnxq.passes.recognize_hardswish import RecognizeHardSwish
from onnxq.passes.reduce_mean_to_pool import ReduceMeanToPool
from onnxq.passes.remove_identity import RemoveIdentity
from onnxq.plan import QuantPlan, build_plan
from onnxq.recovery.mixed_precision import accuracy_target, keep_float_for_target, verify_final
from onnxq.recovery.replay import replay_rewrites
from onnxq.recovery.stage import equalize, recover, shift_activations, shift_sampler, uses_gptq
from onnxq.report import CLIP_WARNING_FRACTION, QuantReport
from onnxq.rewritten_tensors import rewritten_tensors
from onnxq.rules import TARGET_RULES
from onnxq.runtime import make_session, run_batch
from onnxq.scales.compute import clipped_fractions, compute_scales
from onnxq.scales.importer import ScaleFileImporter
from onnxq.scales.rewrites import read_from_model
from onnxq.scales.types import ScaleTable
from onnxq.short_maps import short_map_depthwise
from onnxq.validate.compare import compare_models
from onnxq.validate.latency import LatencySettings, measure_latency

log = logging.getLogger(__name__)

ONE_SOURCE = ("give exactly one source of ranges: calibration data (--calib), statistics (--stats) or scales "
              "(--scales)")
ModelLike = str | os.PathLike | onnx.ModelProto
DataLike = str | os.PathLike | DataSource | Iterable[Batch]
ScaleImporter = Callable[[QuantPlan, onnx.ModelProto], ScaleTable]
#: Computes the statistics of ``calib``: :func:`calibrate` in this process, or e.g.
#: :class:`onnxq.distributed.ray_calibrate.RayCalibration` on a cluster; same arguments, same result.
Collector = Callable[[onnx.ModelProto, QuantPlan, DataLike, QuantConfig, Callable[[int], None] | None],
                     tuple[dict[str, Calibrator], int]]


@dataclass
class QuantizeResult:
    """What :func:`quantize` produced: the Q/DQ model, its plan and scales, the report, and where it was saved."""

    model: onnx.ModelProto
    plan: QuantPlan
    scales: ScaleTable
    report: QuantReport
    output_path: Path | None = None


def default_output_path(model_path: str | os.PathLike) -> Path:
    """``MODEL.int8.onnx`` beside ``MODEL.onnx``."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}.int8.onnx")


def _load(model: ModelLike) -> tuple[onnx.ModelProto, Path | None]:
    if isinstance(model, onnx.ModelProto):
        return model, None
    return load_model(model), Path(model)


def prepare(model: onnx.ModelProto, config: QuantConfig, *, in_place: bool = False,
            min_opset: int | None = None) -> tuple[onnx.ModelProto, list[str]]:
    """Float-to-float passes (``model`` itself is left unchanged); refuses a model that already holds Q/DQ unless
    ``config.requantize``. The opset is raised to what ``config``'s formats need, or to ``min_opset``."""
    has_qdq = count_qdq(model) > 0
    if has_qdq and not config.requantize:
        raise OnnxqError("the model already holds QuantizeLinear/DequantizeLinear nodes; pass --requantize to "
                         "strip them and quantize again")
    manager = PassManager(prepare_passes(per_channel=config.per_channel_weights, strip_qdq=has_qdq,
                                         min_opset=max(config.min_opset(), min_opset or 0)),
                          debug=config.debug_passes)
    prepared, results = manager.run(model, keep_input=not in_place)  # in_place: a model the caller owns
    notes = [note for r in results for note in r.notes]
    rules = TARGET_RULES[config.target]
    if rules.remove_identity:
        removed = RemoveIdentity().run(prepared, keep_input=False)  # prepared is a copy already
        prepared, notes = removed.model, notes + removed.notes
    if rules.reduce_mean_to_pool:
        pooled = ReduceMeanToPool().run(prepared, keep_input=False)
        prepared, notes = pooled.model, notes + pooled.notes
    if rules.fold_conv_affine:
        prepared, folded = fold_conv_affine(prepared)
        notes += folded
    if rules.decompose_activations:
        recognized = RecognizeHardSwish().run(prepared)
        prepared, notes = recognized.model, notes + recognized.notes
        # the activations of float Convs stay whole: MLAS fuses them into the float Conv (onnxq.float_nodes.py,
        # onnxq.short_maps.py)
        keep = float_convs(prepared, config)
        result = DecomposeHardActivations(rules.decompose_activations, frozenset(keep)).run(prepared)
        prepared, notes = result.model, notes + result.notes
    if rules.matmul_bias_to_gemm:
        gemms = MatMulBiasToGemm(config.input_shapes).run(prepared, keep_input=False)
        prepared, notes = gemms.model, notes + gemms.notes
    if rules.pad_depthwise_channels:
        padded = PadDepthwiseChannels(frozenset(float_convs(prepared, config))).run(prepared)
        prepared, notes = padded.model, notes + padded.notes
    return prepared, notes


def float_convs(prepared: onnx.ModelProto, config: QuantConfig) -> set[str]:
    """The Convs the target keeps float by the shape of the graph (a float stem, depthwise Convs on short feature
    maps) and the activations that run fused into them."""
    rules = TARGET_RULES[config.target]
    names = float_prefix(prepared.graph, GraphIndex.build(prepared.graph), rules.float_stem_channels)
    if rules.float_short_map_depthwise:
        names |= short_map_depthwise(prepared, config.input_shapes)
    return names


def fold_conv_affine(prepared: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Constant Muls and Adds after Convs folded into the Convs' weights and biases, in place (chains such as
    ``Conv -> Mul -> Add`` in turn, until nothing changes)."""
    notes: list[str] = []
    while True:
        changed = False
        for fold in (FoldConvScale(), FoldBiasAdd(any_reader=True)):
            result = fold.run(prepared, keep_input=False)  # prepared is a copy already
            prepared, notes, changed = result.model, notes + result.notes, changed or result.changed
        if not changed:
            return prepared, notes


def data_source(model: onnx.ModelProto, data: DataLike, config: QuantConfig, *,
                warn: bool = True) -> DataSource | Iterable[Batch]:
    """The batches ``data`` names; ``warn=False`` for a second reading of the same data (no repeated warning)."""
    if isinstance(data, (str, os.PathLike)):
        if str(data) == "random":
            if warn:
                log.warning("calibrating on RANDOM data: the scales mean nothing for real inputs; use it only "
                            "to test the toolchain")
            return RandomSource(model, batches=config.calib_batches or 8, seed=config.seed)
        return BatchSource(model, data, max_batches=config.calib_batches, batch_size=config.batch_size)
    return data


def with_deployment_shapes(config: QuantConfig, model: onnx.ModelProto, calib: DataLike | None) -> QuantConfig:
    """``config`` with ``input_shapes`` read from the first calibration batch, where the target places by feature-map
    size (``TargetRules.float_short_map_depthwise``) and the caller gave none: the data's shapes are the ones the model
    is used at, also where the graph leaves them symbolic."""
    if config.input_shapes or calib is None or not TARGET_RULES[config.target].float_short_map_depthwise:
        return config
    batch = next(iter(data_source(model, calib, config, warn=False)), None)
    if batch is None:
        return config
    inputs = {v.name for v in model.graph.input}
    shapes = tuple(sorted((name, tuple(int(d) for d in np.shape(value))) for name, value in batch.items()
                          if name in inputs))
    return replace(config, input_shapes=shapes)


def calibrate(prepared: onnx.ModelProto, plan: QuantPlan, data: DataLike, config: QuantConfig,
              progress: Callable[[int], None] | None = None,
              notes: list[str] | None = None) -> tuple[dict[str, Calibrator], int]:
    """Statistics of every planned activation over the calibration data; ``notes`` gets the report's line on the
    padding rows left out."""
    source = data_source(prepared, data, config)
    return collect_statistics(prepared, calibration_targets(plan, config), source,
                              CollectSettings(config.memory_budget_mb, skip_padding=config.skip_padding_tokens),
                              progress, notes)


def float_rewrites(prepared: onnx.ModelProto, calib_data: DataSource | Iterable[Batch] | None, config: QuantConfig,
                   *, owned: bool) -> list[str]:
    """The data-dependent float-to-float rewrites (equalization, SmoothQuant, activation shift) of ``prepared``, in
    place; the same call on the same model and data gives the same model (Ray workers repeat it to calibrate the
    driver's model)."""
    if owned:  # float rewrites of a model past 2 GB (weights on disk) are not supported yet
        return []
    options = recovery_options(config)
    # the shift centres tensors of the equalized model; their samples come from equalization's float pass, mapped
    # through its rewrites (one float pass for both when there is one)
    sampler = shift_sampler(prepared, options) if calib_data is not None else None
    recorded = read_from_model(prepared)
    notes = equalize(prepared, calib_data, options,
                     fold_only=not TARGET_RULES[config.target].equalize_through_activations,
                     skip_padding=config.skip_padding_tokens, also=sampler)
    return notes + shift_activations(prepared, calib_data, options, skip_padding=config.skip_padding_tokens,
                                     sampled=sampler, rewrites_since=len(recorded.rewrites) if recorded else 0)


def recovery_options(config: QuantConfig, calibrated: bool = True) -> RecoveryOptions:
    """``config.recovery`` with the target's defaults in place of the choices the user left open (SmoothQuant, bias
    correction). ``calibrated``: the ranges come from calibration data; a run from --stats or --scales has none to
    correct biases on, so the target's default bias correction is off there (a user's --bias-correction is kept,
    and the recover stage says why it did not run)."""
    rules = TARGET_RULES[config.target]
    smoothquant = config.recovery.smoothquant(rules.smoothquant)
    symmetric_int8 = all(f.activation_dtype == "int8" and f.activation_symmetric for f in config.formats_used())
    return replace(config.recovery, smoothquant_alpha="off" if smoothquant is None else smoothquant,
                   bias_correction=config.recovery.corrects_biases(rules.bias_correction and calibrated),
                   activation_shift=config.recovery.shifts_activations(rules.activation_shift and symmetric_int8))


def imported_rewrites(prepared: onnx.ModelProto, scales: ScaleImporter, *, owned: bool) -> list[str]:
    """Replay, in place, the float rewrites a scales file records (an onnxq JSON file of version 3)."""
    record = scales.float_rewrites() if isinstance(scales, ScaleFileImporter) else None
    if record is None or not record.rewrites:
        return []
    assert isinstance(scales, ScaleFileImporter)
    if owned:
        raise OnnxqError(f"{scales.path} records float rewrites ({record.summary()}), which onnxq cannot replay on a "
                         f"model past 2 GB yet; export the scales of a run with {record.disabling_flags()}")
    return [replay_rewrites(prepared, record, source=scales.path, strict=scales.strict)]


def calibration_targets(plan: QuantPlan, config: QuantConfig) -> dict[str, CalibOptions]:
    """Each activation that needs a range of its own, with its calibration options (per-node settings applied)."""
    return {t.name: t.calib_options(config.calib) for t in plan.calibrated_activations()}


def weight_arrays(prepared: onnx.ModelProto, plan: QuantPlan) -> Mapping[str, np.ndarray]:
    """The planned weights' values, each read when it is looked up (one weight in memory at a time, not a second
    copy of every weight: that matters past 2 GB)."""
    return LazyArrays(GraphIndex.build(prepared.graph), [t.name for t in plan.weights()])


class LazyArrays(Mapping):
    """Initializer arrays by name, converted on access."""

    def __init__(self, index: GraphIndex, names: list[str]) -> None:
        self._index, self._names, self._known = index, names, set(names)

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._known:
            raise KeyError(name)
        return self._index.array(name)

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def target_rewrites(quantized: onnx.ModelProto, config: QuantConfig) -> tuple[onnx.ModelProto, list[str]]:
    """The target's rewrites of the Q/DQ model (int32 biases, one Gelu node per written-out GELU) and the FP16 float
    rest, in place; with the report's notes."""
    rules = TARGET_RULES[config.target]
    notes: list[str] = []
    if rules.int32_bias:
        quantized = QuantizeBias(rules.int32_bias).run(quantized, keep_input=False).model
    if rules.fuse_gelu and config.float_rest != "fp16":  # onnxruntime's CPU Gelu kernels are float32 only
        fused = FuseGelu().run(quantized, keep_input=False)
        quantized, notes = fused.model, notes + fused.notes
    if config.float_rest == "fp16":
        quantized = ConvertFloatToFP16().run(quantized, keep_input=False).model
    return quantized, notes


def verify(model: onnx.ModelProto, batch: Batch | None) -> None:
    """The quantized model passes the full ONNX checker and loads (and runs one batch) in onnxruntime."""
    check_model(model, what="quantized model", full=True)
    session = make_session(model)
    if batch is not None:
        run_batch(session, batch, "the first batch (quantized model)")


def check_output_path(output: Path, input_path: Path | None) -> None:
    """Fail before any work when the output model (or the external data beside it) would overwrite the input or
    cannot be written: the output-path guard, :mod:`onnxq.outputs`."""
    check_outputs(model_outputs("output", output),
                  {"the input model": model_files(input_path) if input_path is not None else []})


class _Stopwatch:
    """Seconds spent in each named stage: ``with clock("stage"): ...``; each stage is also reported as progress."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        with progress.stage(stage):
            yield
        self.seconds[stage] = time.perf_counter() - start


@dataclass(frozen=True)
class Ranges:
    """What the ranges stage produced."""

    table: ScaleTable
    #: calibration batches behind the table (0 for imported scales)
    batches: int
    #: "calibration" | "merged statistics" | "imported scales"
    source: str
    #: share of calibration values each calibrated activation's range clips (where the method can tell)
    clipping: dict[str, float] = field(default_factory=dict)
    #: the statistics behind the table, by activation (empty for imported scales); the recover stage reads them
    calibrators: dict[str, Calibrator] = field(default_factory=dict)
    #: report lines of the calibration pass (the padding rows it left out)
    notes: list[str] = field(default_factory=list)


def ranges(prepared: onnx.ModelProto, plan: QuantPlan, config: QuantConfig, *, calib: DataLike | None,
           stats: list[str] | None, scales: ScaleImporter | None,
           progress: Callable[[int], None] | None, collector: Collector | None = None) -> Ranges:
    """The scale table from exactly one source (calibration data, statistics files or imported scales);
    ``collector`` computes the statistics of calibration data (default: :func:`calibrate`, in this process).
    """
    if scales is not None:  # the caller derives the inserted plan: plan.for_scales(table, ...)
        return Ranges(scales(plan, prepared), 0, "imported scales")
    notes: list[str] = []
    if stats is not None:
        calibrators, batches = merge_stats(expand_stats_paths(stats), fingerprint(prepared))
        if config.rechoose_stats_method:
            calibrators = rechoose_methods(calibrators, {t.name: t.calib_options(config.calib)
                                                         for t in plan.calibrated_activations()})
        missing = [t.name for t in plan.calibrated_activations() if t.name not in calibrators]
        if missing:
            raise OnnxqError(f"the statistics cover no activation {missing[0]!r} (and {len(missing) - 1} more); "
                             "calibrate with the same model and settings")
        source = "merged statistics"
        if not config.skip_padding_tokens and find_padding_mask(prepared) is not None:
            notes.append("--no-skip-padding-tokens has no effect with --stats: the shards were calibrated with their "
                         "own setting (onnxq calibrate --no-skip-padding-tokens)")
    elif calib is not None:
        calibrators, batches = (collector(prepared, plan, calib, config, progress) if collector is not None
                                else calibrate(prepared, plan, calib, config, progress, notes))
        source = "calibration"
    else:
        raise OnnxqError(ONE_SOURCE)
    table = compute_scales(plan, calibrators, weight_arrays(prepared, plan))
    # measured on the calibrated ranges: what narrowing to an activation's bounds saturates on top of them, the
    # reading activation saturates itself (a HardSigmoid's input beyond its two kinks, a HardSwish's below -3), so it
    # is no loss to warn about
    clipping = clipped_fractions(plan, calibrators, table)
    if TARGET_RULES[config.target].narrow_activation_ranges:
        table = narrow_to_activation_bounds(table, plan, prepared.graph)
    for name, fraction in sorted(clipping.items(), key=lambda kv: -kv[1]):
        if fraction > CLIP_WARNING_FRACTION:
            log.info("the range of %r clips %.2f%% of its calibration values (method %s)", name,
                        100 * fraction, plan.tensors[name].method)
    return Ranges(table, batches, source, clipping, calibrators, notes)


def constant_region_correction(config: QuantConfig) -> bool:
    """Whether the recover stage corrects the biases on the data's padding constant: the user's choice, else the
    target's default (:mod:`onnxq.recovery.constant_region`) unless the user chose --bias-correction, which then
    replaces it."""
    chosen = config.recovery.constant_region_correction
    if chosen is not None:
        return chosen
    return TARGET_RULES[config.target].correct_constant_regions and not config.recovery.bias_correction


def mixed_precision(prepared: onnx.ModelProto, plan: QuantPlan, table: ScaleTable, config: QuantConfig,
                    val: DataLike | None, target, tolerable_loss: float | None):
    """The mixed-precision stage: which nodes stay float for the accuracy target, and the plan without them."""
    accuracy = accuracy_target(target, tolerable_loss)
    if val is None:
        raise OnnxqError("an accuracy target needs validation data: pass --val DATA (val= in Python)")
    val_data = data_source(prepared, val, replace(config, calib_batches=None))
    plan, table, result, batches = keep_float_for_target(prepared, plan, table, config, val_data, accuracy)
    return plan, table, result, batches, accuracy


def quantize(model: ModelLike, calib: DataLike | None = None, config: QuantConfig | None = None,
             output: str | os.PathLike | None = None, *, stats: list[str] | None = None,
             scales: ScaleImporter | None = None, val: DataLike | None = None, per_layer: bool = False,
             progress: Callable[[int], None] | None = None, collector: Collector | None = None,
             latency: LatencySettings | None = None, target=None,
             tolerable_loss: float | None = None) -> QuantizeResult:
    """Quantize ``model`` to INT8 Q/DQ form and (when ``output`` is given) save it atomically.

    Ranges come from exactly one of: ``calib`` (a data folder, an .npz stack, ``"random"`` or a re-iterable sequence
    of batches), ``stats`` (statistics files of ``onnxq calibrate``, merged) or ``scales`` (an importer giving a
    ScaleTable, see :func:`onnxq.scales.importer.scale_importer`). ``collector`` computes the statistics of ``calib``
    elsewhere (e.g. :class:`onnxq.distributed.ray_calibrate.RayCalibration`); default: in this process. With ``val``
    and ``latency``, the report also holds the latency of both models, timed side by side on the first validation
    batch.

    ``target`` turns on automatic mixed precision on the ``val`` data (:mod:`onnxq.recovery.mixed_precision`): a
    worst-output SQNR in dB, a metric ``callable(session) -> float`` (higher is better) that may drop at most
    ``tolerable_loss`` below FP32, or an :class:`~onnxq.recovery.mixed_precision.AccuracyTarget`. The fewest,
    cheapest nodes stay float until it holds; ``result.report.mixed_precision`` says which and whether it held.
    """
    config = config or QuantConfig()
    if sum(s is not None for s in (calib, stats, scales)) != 1:
        raise OnnxqError(ONE_SOURCE)
    clock = _Stopwatch()
    with clock("prepare"):
        if output is not None:
            check_output_path(Path(output), None if isinstance(model, onnx.ModelProto) else Path(model))
        original, input_path = _load(model)
        size_before = estimated_size(original)
        # a model onnxq loaded itself and that needs external data is prepared and quantized in place: one copy of
        # the weights in memory; validation then compares against the prepared (numerically equal) float model
        owned = input_path is not None and needs_external_data(original)
        config = with_deployment_shapes(config, original, calib)
        prepared, notes = prepare(original, config, in_place=owned)
    calib_data = data_source(prepared, calib, config, warn=False) if calib is not None else None
    with clock("equalize"):
        if stats is not None:
            # `onnxq calibrate` shards collect statistics on the prepared model without these data-dependent
            # rewrites (each shard would rescale by its own data): the ranges must belong to the model they serve
            options = recovery_options(config)
            if config.recovery.equalize or options.smoothquant(None) is not None or options.activation_shift:
                notes.append("equalization/SmoothQuant/activation shift skipped: the statistics come from shards "
                             "calibrated on the model without them")
            if options.bias_correction and config.recovery.bias_correction is None:
                notes.append("bias correction skipped: it needs the calibration data itself (--calib)")
        elif scales is not None:  # the float rewrites the scales were calibrated after, if the file records them
            notes += imported_rewrites(prepared, scales, owned=owned)
        else:
            notes += float_rewrites(prepared, calib_data, config, owned=owned)
    with clock("plan"):
        plan = build_plan(prepared, config)
        if not plan.tensors:
            raise OnnxqError(explain_empty_plan(prepared))
    with clock("ranges"):
        found = ranges(prepared, plan, config, calib=calib, stats=stats, scales=scales, progress=progress,
                       collector=collector)
        notes += found.notes
        if (collector is not None and config.skip_padding_tokens
                and (mask := find_padding_mask(prepared)) is not None):  # the workers' counts stay on the workers
            notes.append(f"calibration skips padding tokens (rows the attention mask {mask.tensor} hides); "
                         "--no-skip-padding-tokens keeps them")
        if scales is not None:  # the plan actually inserted: tensors without a scale dropped, reasons recorded
            plan = plan.for_scales(found.table, "the scales file")
            found = replace(found, table={name: found.table[name] for name in plan.tensors})
    # the float model outputs are compared with (a re-quantized input: its float form); recovery edits ``prepared``
    float_reference = (None if owned and val is None and target is None
                       else prepared if count_qdq(original) or owned else original)
    recovery = recovery_options(config, calibrated=calib_data is not None)
    constant_region = constant_region_correction(config)
    edits = recovery.edits_weights or uses_gptq(plan, recovery, calib_data) or constant_region
    if float_reference is prepared and not owned and calib is not None and edits:
        float_reference = copy.deepcopy(prepared)
    table, mixed = found.table, None
    if target is not None:  # decided on the plain quantization; recovery below only lowers the error further
        with clock("mixed-precision"):
            plan, table, mixed, mixed_batches, accuracy = mixed_precision(prepared, plan, table, config, val, target,
                                                                          tolerable_loss)
    with clock("recover"):
        if not owned:  # layer-local rewrites of a model past 2 GB (weights on disk) are not supported yet
            table, recovery_notes = recover(prepared, plan, table, found.calibrators, calib_data, recovery,
                                            constant_region)
            notes += recovery_notes
    with clock("insert+verify"):
        first_batch = (next(iter(data_source(prepared, calib, config, warn=False)), None)
                       if calib is not None else None)
        quantized = InsertQDQ(plan, table).run(prepared, keep_input=float_reference is prepared).model
        quantized, rewritten = target_rewrites(quantized, config)
        notes += rewritten
        verify(quantized, first_batch)
    if mixed is not None:
        with clock("mixed-precision verify"):
            verify_final(mixed, float_reference, quantized, mixed_batches, accuracy)
    report = QuantReport(plan, notes, size_before, estimated_size(quantized), found.batches, found.source,
                         clipping=found.clipping)
    report.mixed_precision = mixed
    if val is not None:
        with clock("validate"):
            # the float model (a re-quantized input: its float form); never None when val is given
            reference = prepared if float_reference is None else float_reference
            val_data = data_source(reference, val, replace(config, calib_batches=None))
            skip = rewritten_tensors(reference, quantized, next(iter(val_data))) if per_layer else set()
            report.validation = compare_models(reference, quantized, val_data, per_layer=per_layer, skip_layers=skip)
        if latency is not None:
            with clock("latency"):
                batch = next(iter(data_source(reference, val, replace(config, calib_batches=None))))
                report.latency = measure_latency(reference, quantized, batch, latency)
    report.seconds = clock.seconds
    output_path = save_model(quantized, output, input_path=input_path) if output is not None else None
    return QuantizeResult(quantized, plan, table, report, output_path)
