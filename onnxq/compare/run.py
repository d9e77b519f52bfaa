"""``compare_formats()``: quantize one model in several precision formats from ONE calibration and measure each.

    load -> prepare once (opset high enough for every format) -> plan per format -> calibrate the union of the
    plans' activations once -> per format: scales, insert Q/DQ (FP16 rest?), verify -> one pass over the
    validation data running FP32 and every format side by side (outputs and, optionally, every shared layer)
    -> sizes and onnxruntime CPU latency

Sharing the statistics is exact, not an approximation: a calibrator's statistics do not depend on the format, only
the range derived from them does (``compute_range(symmetric)``; fp8 uses the symmetric range with scale
``amax / 448``). Histogram methods search their range for an 8-bit integer grid.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import numpy as np
import onnx

from onnxq import progress as stages
from onnxq.compare.defaults import DEFAULT_FORMATS
from onnxq.compare.metrics import LayerAccumulator, OutputAccumulator, OutputResult
from onnxq.config import NodeSetting, QuantConfig
from onnxq.data import Batch
from onnxq.dtypes import quant_dtype as qdtype
from onnxq.errors import OnnxqError
from onnxq.formats import NOT_ON_TENSORRT, FormatChoice, parse_format
from onnxq.graph import check_model
from onnxq.insert import InsertQDQ
from onnxq.padding_rows import ActivationReader
from onnxq.passes.float16 import ConvertFloatToFP16
from onnxq.pipeline import (
    DataLike,
    ModelLike,
    _load,
    calibrate,
    constant_region_correction,
    data_source,
    float_rewrites,
    prepare,
    recovery_options,
    weight_arrays,
    with_deployment_shapes,
)
from onnxq.plan import QuantPlan, build_plan
from onnxq.recovery.stage import recover, uses_gptq
from onnxq.runtime import SessionSettings, make_session, output_names, run_batch
from onnxq.scales.compute import compute_scales
from onnxq.scales.types import QuantParams
from onnxq.validate.compare import shared_layer_tensors

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class CompareOptions:
    formats: tuple[str, ...] = DEFAULT_FORMATS
    per_layer: bool = True
    latency_runs: int = 5
    threads: int = 0  # onnxruntime intra-op threads for the latency runs (0: its default)


@dataclass
class FormatResult:
    label: str
    description: str
    model: onnx.ModelProto
    plan: QuantPlan
    outputs: list[OutputResult] = field(default_factory=list)
    layers: list[tuple[str, float]] = field(default_factory=list)  # (tensor, SQNR dB) in network order
    error_samples: dict[str, np.ndarray] = field(default_factory=dict)
    model_bytes: int = 0
    weight_fp32_bytes: int = 0  # the quantized weights, in FP32
    weight_bytes: int = 0  # the same weights as stored: values + scales + zero points
    latency_ms: float | None = None
    tensorrt_ok: bool = True
    quantize_seconds: float = 0.0

    @property
    def min_sqnr_db(self) -> float:
        return min((o.sqnr_db for o in self.outputs), default=float("inf"))

    @property
    def weight_ratio(self) -> float | None:
        return self.weight_fp32_bytes / self.weight_bytes if self.weight_bytes else None


@dataclass
class CompareResult:
    model_name: str
    fp32_bytes: int
    fp32_latency_ms: float | None
    formats: list[FormatResult]
    calib_batches: int
    val_batches: int
    float_rest: str
    target: str
    seconds: dict[str, float] = field(default_factory=dict)
    layer_order: list[str] = field(default_factory=list)
    #: which rows were compared when a masked transformer's padding tokens were left out (None: every row)
    token_rows: str | None = None


def format_config(config: QuantConfig, choice: FormatChoice) -> QuantConfig:
    """``config`` with ``choice`` as the global format (per-op and per-node settings still win)."""
    setting = NodeSetting(dtype=choice.format.name, block_size=choice.block_size).over(config.overrides.global_setting)
    return replace(config, overrides=replace(config.overrides, global_setting=setting))


def stored_weight_bytes(params: QuantParams, numel: int) -> int:
    """Bytes of a quantized weight as stored: packed values, float32 scales, zero points."""
    bits = qdtype(params.dtype).bits
    return (numel * bits + 7) // 8 + params.scale.size * 4 + (params.zero_point.size * bits + 7) // 8


def latency_ms(model: onnx.ModelProto, batch: dict[str, np.ndarray], runs: int, threads: int) -> float:
    """Median wall time of ``runs`` onnxruntime CPU runs of one batch (after one warm-up), full optimisation."""
    session = make_session(model, settings=SessionSettings(threads=threads, optimization="all"))
    session.run(None, batch)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, batch)
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def _quantize_one(prepared: onnx.ModelProto, plan: QuantPlan, calibrators: dict, config: QuantConfig,
                  first_batch: dict | None,
                  calib_data: Iterable[Batch] | None) -> tuple[onnx.ModelProto, dict[str, QuantParams]]:
    table = compute_scales(plan, calibrators, weight_arrays(prepared, plan))
    # quantize's recovery after the ranges (GPTQ rounding, --method auto, bias or constant-region correction) on
    # this format's plan, in a copy: the prepared model is shared by the formats
    recovery, constant_region = recovery_options(config), constant_region_correction(config)
    if recovery.edits_weights or uses_gptq(plan, recovery, calib_data) or constant_region or any(
            t.method == "auto" for t in plan.calibrated_activations()):
        prepared = copy.deepcopy(prepared)
        table, _ = recover(prepared, plan, table, calibrators, calib_data, recovery, constant_region)
    model = InsertQDQ(plan, table).run(prepared).model
    if config.float_rest == "fp16":
        model = ConvertFloatToFP16().run(model, keep_input=False).model
    check_model(model, what="quantized model", full=True)
    if first_batch is not None:
        run_batch(make_session(model), first_batch, "the first batch (quantized model)")
    return model, table


def compare_formats(model: ModelLike, calib: DataLike, val: DataLike, config: QuantConfig | None = None,
                    options: CompareOptions = CompareOptions(),
                    progress: Callable[[int], None] | None = None) -> CompareResult:
    config = config or QuantConfig()
    choices = [parse_format(f) for f in options.formats]
    labels = [c.label for c in choices]
    if len(set(labels)) != len(labels):
        raise OnnxqError(f"--formats names a format twice: {', '.join(labels)}")
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    original, path = _load(model)
    config = with_deployment_shapes(config, original, calib)  # quantize's placement, shapes from the data
    configs = [format_config(config, c) for c in choices]
    # the formats share one float model: the activation shift (tensorrt's default, symmetric int8 activations only)
    # is in it when every format compared would get it, else no format is shifted
    shifts = [recovery_options(c).activation_shift for c in configs]
    if not all(shifts):
        config = replace(config, recovery=replace(config.recovery, activation_shift=False))
        configs = [replace(c, recovery=replace(c.recovery, activation_shift=False)) for c in configs]
        if any(shifts):
            log.info("compare: the activation shift is left out, not every format compared has symmetric int8 "
                     "activations (the formats share one float model)")
    prepared, _ = prepare(original, config, min_opset=max(c.min_opset() for c in configs))
    # quantize's float rewrites (equalization, on by default): every format is compared on the model it would get
    calib_data = data_source(prepared, calib, config, warn=False)
    float_rewrites(prepared, calib_data, config, owned=False)
    plans = [build_plan(prepared, c) for c in configs]
    seconds["prepare"] = time.perf_counter() - start

    start = time.perf_counter()
    union = QuantPlan(target=config.target)
    for plan in plans:
        for t in plan.calibrated_activations():
            union.tensors.setdefault(t.name, t)
    calibrators, calib_batches = calibrate(prepared, union, calib, config, progress) if union.tensors else ({}, 0)
    seconds["calibrate"] = time.perf_counter() - start

    val_source = data_source(prepared, val, replace(config, calib_batches=None))
    first_batch = next(iter(val_source), None)
    if first_batch is None:
        raise OnnxqError("the validation data holds no batches")
    results: list[FormatResult] = []
    start = time.perf_counter()
    for choice, plan, cfg in zip(choices, plans, configs, strict=True):
        t0 = time.perf_counter()
        if not plan.tensors:
            raise OnnxqError(f"format {choice.label}: nothing to quantize in this model")
        quantized, table = _quantize_one(prepared, plan, calibrators, cfg, first_batch, calib_data)
        result = FormatResult(choice.label, choice.format.description, quantized, plan,
                              model_bytes=quantized.ByteSize(),
                              tensorrt_ok=choice.format.name not in NOT_ON_TENSORRT)
        weights = weight_arrays(prepared, plan)
        for t in plan.weights():
            result.weight_fp32_bytes += weights[t.name].size * 4
            result.weight_bytes += stored_weight_bytes(table[t.name], weights[t.name].size)
        result.quantize_seconds = time.perf_counter() - t0
        results.append(result)
    seconds["quantize"] = time.perf_counter() - start

    start = time.perf_counter()
    layer_order, val_batches, token_rows = _evaluate(prepared, results, val_source, options.per_layer)
    seconds["validate"] = time.perf_counter() - start

    start = time.perf_counter()
    fp32_latency = None
    if options.latency_runs > 0:
        fp32_latency = latency_ms(prepared, first_batch, options.latency_runs, options.threads)
        for r in results:
            r.latency_ms = latency_ms(r.model, first_batch, options.latency_runs, options.threads)
    seconds["latency"] = time.perf_counter() - start
    name = f"{path.parent.name}/{path.name}" if path is not None else "model"
    return CompareResult(model_name=name, fp32_bytes=prepared.ByteSize(),
                         fp32_latency_ms=fp32_latency, formats=results, calib_batches=calib_batches,
                         val_batches=val_batches, float_rest=config.float_rest, target=config.target,
                         seconds=seconds, layer_order=layer_order, token_rows=token_rows)


def _evaluate(reference: onnx.ModelProto, results: list[FormatResult], data,
              per_layer: bool) -> tuple[list[str], int, str | None]:
    """One pass over ``data``: FP32 once per batch, every format beside it; fills outputs and layers. A masked
    transformer's outputs and layers are compared at its real tokens (:mod:`onnxq.padding_rows`), as validation does;
    also returns what was left out."""
    out_names = [o.name for o in reference.graph.output]
    layer_sets = [shared_layer_tensors(reference, r.model) if per_layer else [] for r in results]
    all_layers = sorted(set().union(*layer_sets), key=_order_of(reference)) if per_layer else []
    reader = ActivationReader(reference, out_names + all_layers)
    sessions = [make_session(r.model, outputs=layers) for r, layers in zip(results, layer_sets, strict=True)]
    accs = [{n: OutputAccumulator() for n in out_names} for _ in results]
    layer_accs = [{n: LayerAccumulator() for n in layers} for layers in layer_sets]
    batches = 0
    with stages.stage("validation (every format)", unit="batch") as advance:
        for batches, batch in enumerate(data, start=1):
            _evaluate_batch(batches, batch, reader, sessions, results, out_names, accs, layer_accs)
            advance()
    if batches == 0:
        raise OnnxqError("the validation data holds no batches")
    order = _order_of(reference)
    for k, r in enumerate(results):
        r.outputs = [accs[k][n].result(n) for n in out_names]
        r.error_samples = {n: accs[k][n].error_sample() for n in out_names}
        r.layers = [(n, layer_accs[k][n].sqnr_db) for n in sorted(layer_accs[k], key=order)]
    return all_layers, batches, reader.note("the comparison")


def _evaluate_batch(index: int, batch: dict, reader: ActivationReader, sessions: list,
                    results: list[FormatResult], out_names: list[str], accs: list[dict],
                    layer_accs: list[dict]) -> None:
    ref, valid = reader.read_rows(batch, f"batch {index} (FP32)")
    ref = {name: reader.select(name, value, valid) for name, value in ref.items()}
    for k, session in enumerate(sessions):
        got = dict(zip(output_names(session), run_batch(session, batch, f"batch {index} ({results[k].label})"),
                       strict=True))
        for name in out_names:
            accs[k][name].add(ref[name], reader.select(name, got[name], valid))
        for name, acc in layer_accs[k].items():
            acc.add(ref[name], reader.select(name, got[name], valid))


def _order_of(model: onnx.ModelProto) -> Callable[[str], int]:
    position = {o: i for i, n in enumerate(model.graph.node) for o in n.output}
    return lambda name: position.get(name, len(position))
