"""Run onnxruntime on the prepared float model with the planned activations exposed, streaming batches into one
calibrator per tensor.

Memory stays bounded however many batches run: a batch's activations are handed to the calibrators and dropped
before the next batch is read. When one batch's exposed activations would not fit ``memory_budget_mb``, the tensors
are split into groups and the data is read once per group.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import onnx

from onnxq.calib.base import CalibOptions, Calibrator
from onnxq.calib.methods import make_calibrator
from onnxq.data import Batch, InputSpec, model_inputs
from onnxq.errors import OnnxqError
from onnxq.padding_rows import ActivationReader
from onnxq.progress import stage, total_of
from onnxq.runtime import SessionSettings

log = logging.getLogger(__name__)

Progress = Callable[[int], None]


@dataclass(frozen=True)
class CollectSettings:
    """How statistics are collected (what is collected is the per-tensor :class:`CalibOptions`)."""

    memory_budget_mb: int = 4096
    session: SessionSettings = SessionSettings()
    #: leave the padding tokens of a masked transformer out of the statistics (:mod:`onnxq.padding_rows`)
    skip_padding: bool = True


def collect_statistics(model: onnx.ModelProto, tensors: Mapping[str, CalibOptions], data: Iterable[Batch],
                       settings: CollectSettings | None = None, progress: Progress | None = None,
                       notes: list[str] | None = None) -> tuple[dict[str, Calibrator], int]:
    """One calibrator per tensor of ``tensors`` (name -> its algorithm's options), fed every batch of ``data``;
    also returns the number of batches. ``notes``: gets the report's line on the padding rows left out, if any."""
    settings = settings or CollectSettings()
    calibrators = {name: make_calibrator(options) for name, options in tensors.items()}
    if not calibrators:
        return calibrators, 0
    groups = plan_groups(model, list(calibrators), settings.memory_budget_mb, data)
    if len(groups) > 1:
        log.info("calibrating in %d groups of tensors to stay within %d MB", len(groups), settings.memory_budget_mb)
    batches_seen = 0
    per_pass = total_of(data)
    with stage("calibration", total=per_pass * len(groups) if per_pass is not None else None, unit="batch") as advance:
        batches_seen, padding = _collect_groups(model, groups, calibrators, data, settings, progress, advance)
    if batches_seen == 0:
        raise OnnxqError("the calibration data holds no batches")
    log.info("calibrated %d activation(s) over %d batch(es)", len(calibrators), batches_seen)
    if padding is not None and notes is not None:
        notes.append(f"{padding}; --no-skip-padding-tokens keeps them")
    return calibrators, batches_seen


def _collect_groups(model: onnx.ModelProto, groups: list[list[str]], calibrators: dict[str, Calibrator],
                    data: Iterable[Batch], settings: CollectSettings, progress: Progress | None,
                    advance: Callable[..., None]) -> tuple[int, str | None]:
    """Feed every batch of ``data`` to the calibrators, one pass per group of tensors; the batches per pass and what
    the first pass left out as padding (None: nothing)."""
    batches_seen = 0
    padding: str | None = None
    for group in groups:
        reader = ActivationReader(model, group, skip_padding=settings.skip_padding, settings=settings.session)
        count = 0
        for count, batch in enumerate(data, start=1):
            outputs = reader.read(batch, f"batch {count}")
            for name, value in outputs.items():
                calibrators[name].collect(value)
            del outputs
            advance()
            if progress is not None:
                progress(1)
        batches_seen = max(batches_seen, count)
        note = reader.note()
        if note is not None:
            log.info(note)
            padding = padding or note
    return batches_seen, padding


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
    sizes = {name: _numel(shapes.get(name), bindings, first_batch) for name in names}
    known = [4 * s for s in sizes.values() if s is not None]
    fallback = max(known) if known else 0
    return {k: (4 * v if v is not None else fallback) for k, v in sizes.items()}


def _numel(dims: list | None, bindings: dict[str, int], first_batch: int) -> int | None:
    """Elements of a tensor of inferred ``dims``: dynamic dims bound by name or (axis 0) to the first batch's size;
    None when a dim stays unknown."""
    if dims is None:
        return None
    n = 1
    for i, d in enumerate(dims):
        if d.HasField("dim_value") and d.dim_value > 0:
            n *= d.dim_value
        elif d.dim_param in bindings:
            n *= bindings[d.dim_param]
        elif i == 0:
            n *= first_batch
        else:
            return None
    return n
