"""``quantize --scales FILE``: take the ranges from a file instead of calibrating.

The file's scales are matched to the plan by ONNX tensor name. Mismatches are reported (``--strict`` makes every
one an error): names the plan does not quantize are ignored; planned weights the file does not cover get per-channel
min-max scales from their values; planned activations it does not cover are dropped from the plan, so their
consumers read float (a warning names them). A file's integer type wins over the target's default for a tensor.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import onnx

from onnxq.dtypes import quant_dtype
from onnxq.errors import OnnxqError
from onnxq.graph import GraphIndex, fingerprint
from onnxq.plan import QuantPlan
from onnxq.scales.compute import weight_params
from onnxq.scales.io import check_scales, load_scales
from onnxq.scales.json_format import model_fingerprint
from onnxq.scales.types import ScaleTable

log = logging.getLogger(__name__)


def scale_importer(path: str, *, strict: bool = False,
                   fmt: str | None = None) -> Callable[[QuantPlan, onnx.ModelProto], ScaleTable]:
    def import_scales(plan: QuantPlan, prepared: onnx.ModelProto) -> ScaleTable:
        axes = {t.name: t.axis for t in plan.weights() if t.axis is not None}
        table = load_scales(path, fmt, channel_axes=axes)
        check_fingerprint(path, fingerprint(prepared), strict=strict)
        return match_to_plan(table, plan, prepared, strict=strict, source=path)

    return import_scales


def check_fingerprint(path: str, expected: str, *, strict: bool) -> None:
    """An onnxq JSON file that names its model (QAT exports do) must name this one: a warning, an error if strict."""
    try:
        recorded = model_fingerprint(Path(path).read_text())
    except (ValueError, UnicodeDecodeError):
        return  # not JSON: the TensorRT cache and AIMET formats carry no fingerprint
    if recorded is None or recorded == expected:
        return
    message = (f"{path} was written for another model (fingerprint {recorded}, this model {expected}); its scales "
               "are matched by tensor name only")
    if strict:
        raise OnnxqError(message)
    log.warning("%s", message)


def match_to_plan(table: ScaleTable, plan: QuantPlan, prepared: onnx.ModelProto, *, strict: bool,
                  source: str) -> ScaleTable:
    findings = check_scales(table, {t.name: t.channels for t in plan.tensors.values()}, strict)
    errors = [f for f in findings if f.severity == "error"]
    weights = {t.name for t in plan.weights()}
    for f in findings:
        if f.severity == "error":
            continue
        if f.rule == "missing-tensor" and f.subject in weights:  # e.g. a TensorRT cache never holds weights
            log.info("%s has no scale for weight %r: per-channel min-max from its values", source, f.subject)
        else:
            log.warning("%s: %s", source, f)
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise OnnxqError(f"{source}: {errors[0]}{more}")
    index = GraphIndex.build(prepared.graph)
    matched: ScaleTable = {}
    for tensor in list(plan.tensors.values()):
        params = table.get(tensor.name)
        if params is None and tensor.role == "weight":
            matched[tensor.name] = weight_params(tensor, index.array(tensor.name))
            continue
        if params is None:
            log.warning("%s has no scale for activation %r: its consumers stay float", source, tensor.name)
            del plan.tensors[tensor.name]
            continue
        if params.dtype != tensor.dtype:
            tensor.dtype, tensor.symmetric = params.dtype, quant_dtype(params.dtype).symmetric
        if tensor.role == "weight" and params.axis is None and tensor.axis is not None:
            tensor.axis = None
        matched[tensor.name] = params
    if not plan.tensors:
        raise OnnxqError(f"{source} covers none of the tensors the plan quantizes")
    _drop_orphan_weights(plan)
    return {name: matched[name] for name in plan.tensors}


def _drop_orphan_weights(plan: QuantPlan) -> None:
    """A weight whose every consumer lost its activation scale stays float with them."""
    quantized_nodes = {c.node for t in plan.activations() for c in t.consumers}
    for tensor in plan.weights():
        if not any(c.node in quantized_nodes for c in tensor.consumers):
            del plan.tensors[tensor.name]


