"""Run onnxruntime on the prepared float model with the planned activations exposed, streaming batches into one
calibrator per tensor.

Memory stays bounded however many batches run: a batch's activations are handed to the calibrators and dropped
before the next batch is read. When one batch's exposed activations would not fit ``memory_budget_mb``, the tensors
are split into groups and the data is read once per group.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import numpy as np
import onnx
import onnxruntime as ort

import onnxq.calib.methods  # noqa: F401  (fills the calibrator registry)
from onnxq.calib.base import CalibOptions, Calibrator, make_calibrator
from onnxq.calib.data import Batch, InputSpec, model_inputs
from onnxq.errors import OnnxqError
from onnxq.graph import model_on_disk, needs_external_data, printable
from onnxq.plan import TensorPlan

log = logging.getLogger(__name__)

Progress = Callable[[int], None]


@dataclass(frozen=True)
class CollectSettings:
    options: CalibOptions
    memory_budget_mb: int = 4096
    threads: int = 0  # 0: onnxruntime's default


def session_options(threads: int = 0) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    # 4 = FATAL: onnxruntime would otherwise print its own coloured error line before onnxq's one-line message
    so.log_severity_level = 4
    if threads:
        so.intra_op_num_threads = threads
    return so


def make_session(model: onnx.ModelProto, threads: int = 0) -> ort.InferenceSession:
    """An onnxruntime CPU session of ``model``: from bytes, or past the protobuf limit from a temporary file with
    external data (removed once the session holds the weights; onnxruntime reads them at session creation)."""
    ort.set_default_logger_severity(4)
    try:
        if needs_external_data(model):
            with model_on_disk(model) as path:
                return ort.InferenceSession(path, session_options(threads), providers=["CPUExecutionProvider"])
        return ort.InferenceSession(model.SerializeToString(), session_options(threads),
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for invalid models
        raise OnnxqError(f"onnxruntime cannot load the model: {printable(_first_line(exc))}") from exc


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def expose(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs also include ``names``."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output}
    for name in names:
        if name not in present:
            exposed.graph.output.append(onnx.ValueInfoProto(name=name))
    return exposed


def exposed_session(model: onnx.ModelProto, names: Iterable[str], threads: int = 0) -> ort.InferenceSession:
    """A session of ``model`` with ``names`` also as outputs, without copying the model: the outputs are appended
    for the time the session is built and removed again (the caller's model ends as it began)."""
    present = {o.name for o in model.graph.output}
    added = [n for n in dict.fromkeys(names) if n not in present]
    count = len(model.graph.output)
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in added)
    try:
        return make_session(model, threads)
    finally:
        del model.graph.output[count:]


def calibrator_options(tensor: TensorPlan, base: CalibOptions) -> CalibOptions:
    """The run's options with the tensor's own method and percentile (from per-node settings) laid over them."""
    return replace(base, method=tensor.method or base.method,
                   percentile=tensor.percentile if tensor.percentile is not None else base.percentile)


def run_batch(session: ort.InferenceSession, batch: Batch, label: str) -> list[np.ndarray]:
    try:
        return session.run(None, batch)
    except Exception as exc:
        raise OnnxqError(f"onnxruntime failed on {label}: {printable(_first_line(exc))}") from exc


def collect_statistics(model: onnx.ModelProto, activations: list[TensorPlan], data: Iterable[Batch],
                       settings: CollectSettings,
                       progress: Progress | None = None) -> tuple[dict[str, Calibrator], int]:
    """One calibrator per planned activation, fed every batch of ``data``; also returns the number of batches."""
    calibrators = {t.name: make_calibrator(calibrator_options(t, settings.options)) for t in activations}
    if not calibrators:
        return calibrators, 0
    groups = plan_groups(model, [t.name for t in activations], settings.memory_budget_mb, data)
    if len(groups) > 1:
        log.info("calibrating in %d groups of tensors to stay within %d MB", len(groups), settings.memory_budget_mb)
    batches_seen = 0
    for group in groups:
        session = exposed_session(model, group, settings.threads)
        out_names = [o.name for o in session.get_outputs()]
        wanted = [(i, n) for i, n in enumerate(out_names) if n in calibrators and n in group]
        count = 0
        for count, batch in enumerate(data, start=1):
            outputs = run_batch(session, batch, f"batch {count}")
            for i, name in wanted:
                calibrators[name].collect(outputs[i])
            del outputs
            if progress is not None:
                progress(1)
        batches_seen = max(batches_seen, count)
    if batches_seen == 0:
        raise OnnxqError("the calibration data holds no batches")
    log.info("calibrated %d activation(s) over %d batch(es)", len(calibrators), batches_seen)
    return calibrators, batches_seen


def plan_groups(model: onnx.ModelProto, names: list[str], budget_mb: int, data: Iterable[Batch]) -> list[list[str]]:
    """Split ``names`` into groups whose activations for one batch fit the budget (estimated from shapes)."""
    sizes = estimate_bytes(model, names, data)
    budget = budget_mb * 1024**2
    groups: list[list[str]] = [[]]
    used = 0
    for name in names:
        size = sizes[name]
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += size
    return groups


def estimate_bytes(model: onnx.ModelProto, names: list[str], data: Iterable[Batch]) -> dict[str, int]:
    """Bytes of each tensor for the first batch: inferred shapes with dynamic dims bound from that batch's inputs.

    A tensor of unknown shape is assumed as large as the largest known one.
    """
    first = next(iter(data), None)
    bindings: dict[str, int] = {}
    specs: list[InputSpec] = model_inputs(model)
    if first is not None:
        for spec in specs:
            if spec.name in first:
                for dim, got in zip(spec.shape, first[spec.name].shape):
                    if isinstance(dim, str):
                        bindings[dim] = got
    shapes: dict[str, list] = {}
    for v in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input):
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
            shapes[v.name] = list(v.type.tensor_type.shape.dim)
    first_batch = max((s.shape[0] for s in (first or {}).values() if s.ndim), default=1)
    sizes: dict[str, int | None] = {}
    for name in names:
        dims = shapes.get(name)
        if dims is None:
            sizes[name] = None
            continue
        n = 1
        for i, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value > 0:
                n *= d.dim_value
            elif d.dim_param in bindings:
                n *= bindings[d.dim_param]
            elif i == 0:
                n *= first_batch
            else:
                n = None
                break
        sizes[name] = None if n is None else 4 * n
    known = [s for s in sizes.values() if s is not None]
    fallback = max(known) if known else 0
    return {k: (v if v is not None else fallback) for k, v in sizes.items()}
