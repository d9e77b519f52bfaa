"""``prepare`` and ``export``: the two ends of quantization-aware training on onnxq's plan.

    qmodel = qat.prepare(model, example_inputs, calib=batches)  # export, plan, map, fake quant, PTQ init
    ... train qmodel ...
    qat.export(qmodel, "model.onnx", "qat_scales.json")        # FP32 ONNX of the trained weights + scales
    # onnxq quantize model.onnx --scales qat_scales.json  ->  the deployable Q/DQ model

BatchNorm: the legacy exporter in eval mode fuses Conv+BN into the Conv's weights, and onnxq's prepare folds the
BN that is left (after ConvTranspose and Gemm). Either way the plan quantizes the *folded* weight ``W * s``
(``s = gamma / sqrt(running_var + eps)``), so in torch that weight is what is fake-quantized, per channel on the
plan's axis, and the torch BN is kept: the convolution runs with ``fq(W * s) / s``. With the BN frozen (eval) the
pair computes exactly the deployed ``conv(x, fq(W * s)) + bias``; while the BN still trains, it normalises with
batch statistics as usual (the "simulated folding" of torch.ao's ConvBn QAT modules, running-variance variant).
"""

from __future__ import annotations

import copy
import io
import logging
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from onnxq.atomic import write_text_atomic
from onnxq.config import QuantConfig
from onnxq.data import model_inputs
from onnxq.errors import OnnxqError
from onnxq.graph import fingerprint, save_model
from onnxq.insert.qdq import InsertQDQ
from onnxq.pipeline import calibrate, weight_arrays
from onnxq.pipeline import prepare as onnx_prepare
from onnxq.plan import QuantPlan, build_plan
from onnxq.qat.attention import no_mha_fastpath
from onnxq.qat.mapping import build_mapping
from onnxq.qat.model import ExportSpec, QATModel, QATState, as_numpy_batch
from onnxq.qat.structure import GraphStructure, structure_difference, unshare_initializers
from onnxq.qat.trace import record
from onnxq.runtime import SessionSettings, make_session
from onnxq.scales.compute import compute_scales
from onnxq.scales.io import check_scales, dumps_scales

log = logging.getLogger(__name__)


def _as_tuple(inputs: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(inputs, torch.Tensor):
        return (inputs,)
    if isinstance(inputs, (tuple, list)) and all(isinstance(x, torch.Tensor) for x in inputs):
        return tuple(inputs)
    raise OnnxqError("example_inputs must be a tensor or a tuple of tensors (the model's positional inputs)")


def export_onnx(model: nn.Module, inputs: tuple[torch.Tensor, ...], spec: ExportSpec) -> onnx.ModelProto:
    """The FP32 ONNX export of ``model`` in eval mode (legacy exporter, constant folding on), with initializers the
    exporter shared because their values were equal given back one copy each (:mod:`onnxq.qat.structure`)."""
    was_training = model.training
    model.eval()
    buf = io.BytesIO()
    input_names = list(spec.input_names) if spec.input_names else None
    output_names = list(spec.output_names) if spec.output_names else None
    dynamic = None
    if spec.dynamic_batch and input_names:
        dynamic = {n: {0: "batch"} for n in input_names + (output_names or [])}
    try:
        with torch.no_grad(), no_mha_fastpath(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "legacy TorchScript-based exporter": chosen
            torch.onnx.export(model, inputs, buf,  # type: ignore[arg-type]  # any binary file object is accepted
                              dynamo=False, opset_version=spec.opset, input_names=input_names,
                              output_names=output_names, dynamic_axes=dynamic, do_constant_folding=True)
    except Exception as exc:  # the exporter raises many types; all mean the same to the user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxqError(f"torch.onnx.export failed for {type(model).__name__}: {first}; QAT needs a model the "
                         "legacy (TorchScript) exporter can export") from exc
    finally:
        model.train(was_training)
    exported = onnx.load_from_string(buf.getvalue())
    unshared = unshare_initializers(exported)
    if unshared:
        log.debug("export: %d initializer(s) shared by value given their own copy", unshared)
    return exported


class _Batches:
    """Re-iterable view of the calibration data as onnxq batches (dicts of numpy arrays by ONNX input name)."""

    def __init__(self, data: Iterable[Any], names: list[str]) -> None:
        self.data, self.names = data, names

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for item in self.data:
            yield to_batch(item, self.names)


def to_batch(item: Any, names: list[str]) -> dict[str, np.ndarray]:
    def arr(x: Any) -> np.ndarray:
        return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)

    if isinstance(item, dict):
        missing = [n for n in names if n not in item]
        if missing:
            raise OnnxqError(f"calibration batch lacks input(s) {missing}; it has {sorted(item)}")
        return {n: arr(item[n]) for n in names}
    values = (item,) if isinstance(item, (torch.Tensor, np.ndarray)) else tuple(item)
    if len(values) != len(names):
        raise OnnxqError(f"calibration batch has {len(values)} value(s), the model {len(names)} input(s) {names}; "
                         "give the model inputs only (e.g. calib=(x for x, _ in loader))")
    return {n: arr(v) for n, v in zip(names, values)}


def prepare(model: nn.Module, example_inputs: Any, calib: Iterable[Any] | str | os.PathLike | None = None, *,
            config: QuantConfig | None = None, spec: ExportSpec | None = None, learn_scales: bool = False,
            weight_scales: str = "dynamic", strict: bool = False) -> QATModel:
    """Export ``model`` to ONNX, plan it with onnxq, map the plan onto the torch model, initialise the fake quant from
    onnxq's PTQ ranges on ``calib`` (batches of model inputs, or an onnxq data folder / .npz; None: the example
    inputs only). ``weight_scales``: ``dynamic`` (per-channel max of the current weights), ``fixed`` or ``learned``
    (LSQ); ``learn_scales`` makes activation scales learnable (LSQ). ``strict``: refuse a model with planned
    tensors the mapping cannot place in torch (otherwise they are listed in ``qmodel.mapping.unmapped`` and keep
    their PTQ scales, and the fake-quant model differs from the deployed one there)."""
    config = config or QuantConfig()
    spec = spec or ExportSpec()
    inputs = _as_tuple(example_inputs)
    if weight_scales not in ("dynamic", "fixed", "learned"):
        raise OnnxqError(f"weight_scales must be dynamic, fixed or learned, got {weight_scales!r}")
    exported = export_onnx(model, inputs, spec)
    names = [s.name for s in model_inputs(exported)]
    if len(names) != len(inputs):
        raise OnnxqError(f"the exported graph has {len(names)} input(s) but {len(inputs)} example input(s) were "
                         "given; inputs the model does not use are dropped by the exporter")
    prepared, notes = onnx_prepare(exported, config)
    for note in notes:
        log.info("prepare: %s", note)
    plan = build_plan(prepared, config)
    if not plan.tensors:
        raise OnnxqError("nothing to quantize: the plan of the exported model is empty")
    batch = as_numpy_batch(names, inputs)
    if calib is None:
        log.warning("no calibration data: PTQ ranges from the example inputs only")
        data: Any = [batch]
    elif isinstance(calib, (str, os.PathLike)):
        data = calib
    else:
        data = _Batches(calib, names)
    calibrators, batches = calibrate(prepared, plan, data, config)
    ptq = compute_scales(plan, calibrators, weight_arrays(prepared, plan))
    log.info("PTQ initialisation from %d batch(es)", batches)

    was_training = model.training
    model.eval()
    try:
        rec = record(model, inputs)
    finally:
        model.train(was_training)
    mapping = build_mapping(plan, prepared, model, rec, batch)
    log.info("QAT mapping: %s", mapping.summary())
    if strict and mapping.unmapped:
        listed = "; ".join(f"{name} ({why})" for name, why in mapping.unmapped.items())
        raise OnnxqError(f"{len(mapping.unmapped)} planned tensor(s) have no place in the torch model: {listed}; "
                         "prepare without strict=True to fine-tune anyway (they keep their PTQ scales)")
    state = QATState(config, spec, plan, ptq, GraphStructure.of(prepared), tuple(x.detach().clone() for x in inputs),
                     prepared, {k: len(v) for k, v in rec.calls.items()},
                     {k: len(v) for k, v in rec.module_inputs.items()}
                     | {k: len(v) for k, v in rec.leaf_outputs.items()})
    return QATModel(model, mapping, state, learn_scales=learn_scales, weight_scales=weight_scales)


def replan(qmodel: QATModel) -> tuple[onnx.ModelProto, onnx.ModelProto, QuantPlan]:
    """Export the wrapped model again and plan it; the plan must be the one the fake quant was built for."""
    state = qmodel.state
    device = next((p.device for p in qmodel.model.parameters()), torch.device("cpu"))
    exported = export_onnx(qmodel.model, tuple(x.to(device) for x in state.example_inputs), state.spec)
    prepared, _ = onnx_prepare(exported, state.config)
    plan = build_plan(prepared, state.config)
    changed = structure_difference(state.structure, GraphStructure.of(prepared))
    if changed is None and _plan_key(plan) != _plan_key(state.plan):
        changed = "the plan of the same graph differs (the quantization config changed?)"
    if changed is not None:
        raise OnnxqError(f"the exported graph differs from the one planned at qat.prepare ({changed}); the model's "
                         "structure or export settings changed: prepare the model again")
    return exported, prepared, plan


def _plan_key(plan: QuantPlan) -> list[tuple]:
    return [(t.name, t.role, t.dtype, t.axis, t.channels, t.shares_scale_with) for t in plan.tensors.values()]


def export(qmodel: QATModel, model_path: str | os.PathLike, scales_path: str | os.PathLike) -> tuple[Path, Path]:
    """Write the FP32 ONNX of the fine-tuned weights and the learned scales (onnxq JSON, keyed by ONNX tensor names).

    Both files are checked before either is written; a failure leaves no new file behind."""
    if not isinstance(qmodel, QATModel):
        raise OnnxqError(f"qat.export needs the model returned by qat.prepare, got {type(qmodel).__name__}")
    model_path, scales_path = Path(model_path), Path(scales_path)
    for p in (model_path, scales_path):
        if p.is_dir():
            raise OnnxqError(f"output path is a directory: {p}")
        if not (p.parent if str(p.parent) else Path(".")).exists():
            raise OnnxqError(f"output folder does not exist: {p.parent}")
    if model_path.resolve() == scales_path.resolve():
        raise OnnxqError("the model and the scales need two different paths")
    exported, prepared, plan = replan(qmodel)
    table = qmodel.scale_table()
    findings = [f for f in check_scales(table, {t.name: t.channels for t in plan.tensors.values()}, False)
                if f.severity == "error"]
    if findings:
        raise OnnxqError(f"learned scales do not fit the plan: {findings[0]}")
    text = dumps_scales(table, "json", fingerprint=fingerprint(prepared),
                        param_names=[t.name for t in plan.weights()])
    existed = model_path.exists()
    save_model(exported, model_path)
    try:
        write_text_atomic(scales_path, text)
    except BaseException:
        if not existed:
            model_path.unlink(missing_ok=True)
        raise
    return model_path, scales_path


def verify(qmodel: QATModel, example_inputs: Any = None) -> float:
    """Largest difference, relative to the largest output, between the fake-quant forward and onnxruntime running
    onnxq's Q/DQ model built from the current weights and scales (:func:`reference_outputs`). About 1e-7 when every
    planned tensor is mapped; unmapped tensors show up here."""
    inputs = _as_tuple(example_inputs) if example_inputs is not None else qmodel.state.example_inputs
    ort_out = reference_outputs(qmodel, inputs)
    was = qmodel.training
    qmodel.eval()
    device = next((p.device for p in qmodel.model.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            out = qmodel(*[x.to(device) for x in inputs])
    finally:
        qmodel.train(was)
    outs = [out] if isinstance(out, torch.Tensor) else list(out)
    worst = 0.0
    for t, o in zip(outs, ort_out):
        ref = max(float(np.abs(o).max()), 1e-12)
        worst = max(worst, float(np.abs(t.detach().cpu().numpy() - o).max()) / ref)
    return worst


def reference_outputs(qmodel: QATModel, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    """onnxruntime's outputs of onnxq's Q/DQ model built from the re-exported weights and the current scales, with
    graph optimisations off, so every QuantizeLinear/DequantizeLinear runs as the operator specifies.

    Off, not "basic": measured on a ResNet BasicBlock stack (tests/qat), the basic level's rewrites of the Q/DQ
    graph change a Conv output by 2e-5 (7e-6 of its range) against float64, while the same graph unoptimised is
    within 7e-7, as close as torch's own convolution; a difference that size moves values across rounding
    boundaries of the next QuantizeLinear, one quantization step each."""
    _, prepared, plan = replan(qmodel)
    qdq = InsertQDQ(plan, qmodel.scale_table()).run(prepared).model
    names = [s.name for s in model_inputs(prepared)]
    session = make_session(qdq, settings=SessionSettings(optimization="disabled"))
    return session.run(None, as_numpy_batch(names, inputs))


def teacher_copy(qmodel: QATModel) -> nn.Module:
    """A frozen FP32 copy of the wrapped model (without our hooks), e.g. as the KD teacher."""
    teacher = copy.deepcopy(qmodel.model)
    ours = {h.id for h in qmodel._hooks}
    for m in teacher.modules():
        for hooks in (m._forward_pre_hooks, m._forward_hooks):
            for key in ours & set(hooks):
                del hooks[key]
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
