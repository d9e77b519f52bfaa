"""The report of a quantization run: what was folded, quantized or skipped and why, sizes, and validation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

from onnxq.plan import QuantPlan
from onnxq.validate.compare import ComparisonReport
from onnxq.validate.latency import LatencyReport

# a calibrated range that saturates more than this share of its calibration values is called out in the summary
CLIP_WARNING_FRACTION = 0.01


class MixedPrecisionSummary(Protocol):
    """What the report reads of a mixed-precision result (onnxq.recovery.mixed_precision.MixedPrecisionResult)."""

    @property
    def ok(self) -> bool: ...

    def summary_lines(self) -> list[str]: ...

    def as_dict(self) -> dict: ...


@dataclass
class QuantReport:
    plan: QuantPlan
    prepare_notes: list[str] = field(default_factory=list)
    size_before: int = 0
    size_after: int = 0
    calib_batches: int = 0
    ranges_from: str = "calibration"
    seconds: dict[str, float] = field(default_factory=dict)
    validation: ComparisonReport | None = None
    clipping: dict[str, float] = field(default_factory=dict)  # activation -> share of calibration values clipped
    # onnxq.recovery.mixed_precision.MixedPrecisionResult when an accuracy target was given (a protocol here: the
    # report sits below recovery in the layers)
    mixed_precision: MixedPrecisionSummary | None = None
    latency: LatencyReport | None = None

    @property
    def compression(self) -> float:
        return self.size_before / self.size_after if self.size_after else math.nan

    def summary_lines(self) -> list[str]:
        lines = [f"target: {self.plan.target}; ranges from {self.ranges_from}"
                 + (f" ({self.calib_batches} batches)" if self.calib_batches else "")]
        lines += [f"prepare: {n}" for n in self.prepare_notes]
        lines.append(f"quantized tensors: {len(self.plan.activations())} activation(s), "
                     f"{len(self.plan.weights())} weight(s)")
        for op_type, counts in sorted(self.plan.summary().items()):
            parts = [f"{n} {why}" for why, n in sorted(counts.items(), key=lambda kv: kv[0] != "quantized")]
            lines.append(f"  {op_type}: " + "; ".join(parts))
        lines.append(f"size: {self.size_before / 1e6:.2f} MB -> {self.size_after / 1e6:.2f} MB "
                     f"({self.compression:.2f}x)")
        lines += self.clipping_lines()
        if self.validation is not None:
            lines += validation_lines(self.validation)
        if self.mixed_precision is not None:
            lines += self.mixed_precision.summary_lines()
        if self.latency is not None:
            lines += self.latency.lines()
        if self.seconds:
            lines.append("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items()))
        return lines

    def clipping_lines(self, most: int = 5) -> list[str]:
        heavy = sorted(((f, n) for n, f in self.clipping.items() if f > CLIP_WARNING_FRACTION), reverse=True)
        if not heavy:
            return []
        lines = [f"clipping: {len(heavy)} activation range(s) saturate more than {CLIP_WARNING_FRACTION:.0%} of their "
                 "calibration values (try --method percentile or mse for them, and check with --val --per-layer):"]
        lines += [f"  {name}: {fraction:.2%} ({self.plan.tensors[name].method})" for fraction, name in heavy[:most]]
        return lines

    def as_dict(self) -> dict:
        return {
            "clipping": self.clipping,
            "target": self.plan.target,
            "ranges_from": self.ranges_from,
            "calib_batches": self.calib_batches,
            "prepare": self.prepare_notes,
            "nodes": [vars(d) for d in self.plan.nodes],
            "size_before": self.size_before,
            "size_after": self.size_after,
            "seconds": self.seconds,
            "validation": self.validation.as_dict() if self.validation else None,
            "mixed_precision": self.mixed_precision.as_dict() if self.mixed_precision is not None else None,
            "latency": self.latency.as_dict() if self.latency else None,
        }


def short_names(names: list[str], width: int) -> list[str]:
    """``names`` cut to ``width`` characters by eliding part of their middle, still pairwise distinct: of the ways
    to keep a head and a tail, the one with the longest tail that tells every name apart (names that cannot be told
    apart within ``width`` are kept whole)."""
    def cut(name: str, head: int) -> str:
        return name if len(name) <= width else name[:head] + "…" + name[len(name) - (width - 1 - head):]

    short = names
    for head in range(width // 3, width - 1):  # a third of the width for the head first, then more
        short = [cut(n, head) for n in names]
        if len(set(short)) == len(set(names)):
            return short
    counts: dict[str, int] = {}
    for s in short:
        counts[s] = counts.get(s, 0) + 1
    return [s if counts[s] == 1 else n for s, n in zip(short, names)]


def validation_lines(report: ComparisonReport, worst: int = 5) -> list[str]:
    outputs = short_names([o.name for o in report.outputs], 40)
    col = max([len("output"), *map(len, outputs)])
    lines = [f"validation on {report.batches} batch(es):",
             f"  {'output':<{col}} {'SQNR dB':>8} {'cosine':>9} {'MAE':>10} {'max err':>10}"]
    for o, name in zip(report.outputs, outputs):
        lines.append(f"  {name:<{col}} {o.sqnr_db:8.2f} {o.cosine:9.6f} {o.mae:10.4g} {o.max_abs_error:10.4g}")
    if report.token_rows:
        lines.append(f"  ({report.token_rows})")
    if report.layers_left_out:
        lines.append(f"  {report.layers_left_out} shared tensor name(s) left out of the per-layer list: the float "
                     "rewrites (equalization, the HardSwish 1/6 fold) changed what they hold")
    if report.layers:
        lines.append(f"  lowest-SQNR layers (of {len(report.layers)}):")
        layers = report.worst_layers(worst)
        names = short_names([m.name for m in layers], 60)
        col = max(map(len, names))
        for m, name in zip(layers, names):
            lines.append(f"    {name:<{col}} {m.sqnr_db:8.2f} dB  cosine {m.cosine:.5f}")
    return lines
