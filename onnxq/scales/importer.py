"""``quantize --scales FILE``: take the ranges from a file instead of calibrating.

The file's scales are matched to the plan by ONNX tensor name. Mismatches are reported (``--strict`` makes every
one an error; a TensorRT cache, which carries no weights, is asked for the activations only): names the plan does
not quantize are ignored; planned weights the file does not cover get per-channel min-max scales from their values;
planned activations it does not cover are dropped from the plan, so their consumers read float (a warning names
them). A file's integer type wins over the target's default for a tensor.

An onnxq JSON file of version 3 also records the float rewrites (equalization, SmoothQuant) of the run that
calibrated the scales (:mod:`onnxq.scales.rewrites`); the pipeline replays them on the float model before the plan
(:mod:`onnxq.recovery.replay`), so the scales meet the graph they were calibrated on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import onnx

from onnxq.errors import OnnxqError
from onnxq.findings import Finding
from onnxq.graph import GraphIndex, fingerprint, printable
from onnxq.plan import QuantPlan
from onnxq.scales.compute import weight_params
from onnxq.scales.formats import WEIGHTLESS_FORMATS
from onnxq.scales.io import check_scales, load_scales, scales_format
from onnxq.scales.io import read_text as read_scales_text
from onnxq.scales.json_format import float_rewrites as json_float_rewrites
from onnxq.scales.json_format import model_fingerprint
from onnxq.scales.rewrites import FloatRewrites
from onnxq.scales.types import ScaleTable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScaleFileImporter:
    """``quantize --scales FILE``: the file's scales for a plan (a :data:`onnxq.pipeline.ScaleImporter`), and the
    float rewrites it records (a version-3 onnxq JSON file), which the pipeline replays before the plan."""

    path: str
    strict: bool = False
    fmt: str | None = None

    def __call__(self, plan: QuantPlan, prepared: onnx.ModelProto) -> ScaleTable:
        """The file's scales for the plan's tensors (planned weights it misses: from their values). Planned
        activations it misses are absent: ``plan.for_scales(table, path)`` derives the plan that is inserted."""
        axes = {t.name: t.axis for t in plan.weights() if t.axis is not None}
        found_format = scales_format(self.path, self.fmt)
        table = load_scales(self.path, found_format, channel_axes=axes)
        check_fingerprint(self.path, fingerprint(prepared), strict=self.strict)
        return match_to_plan(table, plan, prepared, strict=self.strict, source=self.path,
                             weights_in_file=found_format not in WEIGHTLESS_FORMATS)

    def float_rewrites(self) -> FloatRewrites | None:
        """The float rewrites the file records (only onnxq JSON can), or None."""
        if scales_format(self.path, self.fmt) != "json":
            return None
        return json_float_rewrites(read_scales_text(Path(self.path)), source=self.path)


def scale_importer(path: str, *, strict: bool = False, fmt: str | None = None) -> ScaleFileImporter:
    return ScaleFileImporter(path, strict, fmt)


def check_fingerprint(path: str, expected: str, *, strict: bool) -> None:
    """An onnxq JSON file that names its model (QAT exports do) must name this one: a warning, an error if strict."""
    try:
        recorded = model_fingerprint(read_scales_text(Path(path)))
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
                  source: str, weights_in_file: bool = True) -> ScaleTable:
    """``table`` fitted to ``plan``. ``strict``: every mismatch is an error -- a planned tensor the file should hold
    but does not, a name the plan does not quantize, a channel count that differs. What "should hold" means per
    format: every planned tensor for json / AIMET; every planned activation for a TensorRT cache
    (``weights_in_file`` False), whose weights always come from their values."""
    expected = {t.name: t.channels for t in plan.tensors.values() if weights_in_file or t.role != "weight"}
    findings = check_scales(table, expected, strict)
    findings += axis_findings(table, plan)
    errors = [f for f in findings if f.severity == "error"]
    weights = {t.name for t in plan.weights()}
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise OnnxqError(f"{source}: {printable(str(errors[0]))}{more}")
    index = GraphIndex.build(prepared.graph)
    matched: ScaleTable = {}
    for tensor in plan.tensors.values():
        params = table.get(tensor.name)
        if params is None and tensor.role == "weight":
            matched[tensor.name] = weight_params(tensor, index.array(tensor.name))
        elif params is not None:
            matched[tensor.name] = params
    if not any(t.role == "activation" for t in plan.tensors.values() if t.name in matched):
        raise OnnxqError(f"{source} covers none of the activations the plan quantizes (its names: "
                         f"{_examples(table)}); was it written for another model or with other node names?")
    by_rule: dict[str, list[str]] = {}
    for f in findings:
        if f.rule == "missing-tensor" and f.subject in weights:  # e.g. a TensorRT cache never holds weights
            log.info("%s has no scale for weight %r: per-channel min-max from its values", source, f.subject)
        else:
            by_rule.setdefault(f.rule, []).append(f.subject)
    for rule, names in by_rule.items():  # one line per kind of mismatch, however many names
        shown = ", ".join(repr(printable(n)) for n in names[:3])
        consequence = "; their consumers stay float" if rule == "missing-tensor" else ""
        log.warning("%s: %d tensor(s) [%s], e.g. %s%s", source, len(names), rule, shown, consequence)
    return matched


def axis_findings(table: ScaleTable, plan: QuantPlan) -> list[Finding]:
    """Per-channel scales on another axis than the plan's: an error (the output would fail onnxq's own lint)."""
    found = []
    for tensor in plan.tensors.values():
        params = table.get(tensor.name)
        if params is not None and params.axis is not None and tensor.axis is not None and params.axis != tensor.axis:
            found.append(Finding("error", "axis-mismatch", tensor.name, f"per-channel scales on axis "
                                      f"{params.axis}, but the plan quantizes it on axis {tensor.axis}"))
    return found


def _examples(table: ScaleTable) -> str:
    names = [repr(printable(n)) for n in list(table)[:3]]
    if not names:
        return "none"
    return ", ".join(names) + (f" and {len(table) - 3} more" if len(table) > 3 else "")
