"""Per-node quantization sensitivity: the output error with only one node quantized, and with only one node float.

Calibrate once, build one gated session (:mod:`onnxq.recovery.gated`), cache the FP32 outputs of the validation
batches, then per quantized node two runs: gates {n} (only n quantized) and all-but-n (only n float), with no per-node
model copy or session build (AIMET's QuantAnalyzer "per-layer quantizer enable/disable" analysis, done with run-time
switches instead of one simulation model per layer). Two things keep the cost a small multiple of one calibration
pass (measured in the README, section "Sensitivity"):

- *prefix reuse* (:mod:`onnxq.recovery.suffix`): a per-node run re-computes only the model downstream of the node,
  from the FP32 run's tensors (only-quantized) or the fully quantized run's (only-float); exact, about 2x fewer
  operations on the ddddocr detector;
- *screen, then refine* (:class:`SensitivityOptions`): every node is measured end to end on the first validation
  sample(s), then the most harmful nodes by each figure again on all the validation batches. Each row says how many
  samples its figures come from; the report gives the rank agreement of the refined nodes' screening figures with
  their all-data figures. ``exhaustive`` measures every node on all the batches.

A cheaper screen was tried and rejected: each node's *local* output error (the node's own output with its inputs
quantized, all nodes in one run) ranks end-to-end only-quantized SQNR with Spearman 0.45 and the only-float gain with
-0.15 on the ddddocr detector, so it cannot stand in for either figure.

Ranking: the lowest SQNR with only the node quantized first (the node that alone costs most). ``gain_db`` is what
leaving the node alone in float buys over the fully quantized model (negative when the node's error cancels others').
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxq import progress
from onnxq.config import QuantConfig
from onnxq.data import Batch
from onnxq.errors import OnnxqError
from onnxq.pipeline import data_source, float_rewrites, prepare, ranges, with_deployment_shapes
from onnxq.plan import QuantPlan, build_plan
from onnxq.recovery.gated import GatedSession, noise_ratios, worst
from onnxq.recovery.macs import node_macs
from onnxq.scales.types import ScaleTable
from onnxq.validate.metrics import ErrorAccumulator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeSensitivity:
    node: str
    op_type: str
    macs: int
    sqnr_only_quantized: float  # worst-output SQNR (dB) with only this node quantized
    cosine_only_quantized: float
    sqnr_only_float: float  # worst-output SQNR (dB) with every other node quantized
    cosine_only_float: float
    gain_db: float  # sqnr_only_float - SQNR of the fully quantized model
    noise_only_quantized: tuple[float, ...] = ()  # per output: noise / signal power with only this node quantized
    samples: int = 0  # validation samples these figures were measured on

    def as_dict(self) -> dict:
        return {k: _json(v) for k, v in vars(self).items()}


@dataclass
class SensitivityReport:
    nodes: list[NodeSensitivity]
    all_quantized_sqnr: float
    all_quantized_cosine: float
    batches: int
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage
    output_names: list[str] = field(default_factory=list)
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # process CPU time per stage (robust to busy cores)
    samples: int = 0  # validation samples in ``batches``
    screen_samples: int = 0  # samples every node was measured on (== samples when exhaustive)
    agreement: ScreenAgreement | None = None  # screening vs all-data figures of the refined nodes
    runs: dict[str, int] = field(default_factory=dict)  # gated-model forward runs: full and suffix

    def ranked(self) -> list[NodeSensitivity]:
        return sorted(self.nodes, key=lambda n: (n.sqnr_only_quantized, -n.gain_db))

    @property
    def total_macs(self) -> int:
        return sum(n.macs for n in self.nodes)

    def as_dict(self) -> dict:
        return {"all_quantized": {"sqnr_db": _json(self.all_quantized_sqnr), "cosine": self.all_quantized_cosine},
                "batches": self.batches, "seconds": self.seconds, "cpu_seconds": self.cpu_seconds,
                "outputs": self.output_names, "samples": self.samples, "screen_samples": self.screen_samples,
                "agreement": None if self.agreement is None else {k: _json(v) for k, v in vars(self.agreement).items()},
                "runs": self.runs,
                "nodes": [n.as_dict() for n in self.ranked()]}


def _json(v):
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, float) and not math.isfinite(v):
        return "inf" if v > 0 else "-inf"
    if isinstance(v, tuple):
        return [_json(x) for x in v]
    return v


@dataclass
class Calibrated:
    """A prepared model with its plan and scales: what every recovery analysis starts from."""

    prepared: onnx.ModelProto
    plan: QuantPlan
    scales: ScaleTable
    seconds: dict[str, float]
    cpu_seconds: dict[str, float] = field(default_factory=dict)


def calibrate_model(model: onnx.ModelProto, calib, config: QuantConfig, collector=None) -> Calibrated:
    """Prepare, plan and calibrate once (the pipeline's own stages); ``collector`` computes the statistics elsewhere
    (e.g. :class:`onnxq.distributed.ray_calibrate.RayCalibration`), default in this process."""
    clock = _Clock()
    with clock("prepare"):
        config = with_deployment_shapes(config, model, calib)  # quantize's placement, shapes from the data
        prepared, _ = prepare(model, config)
        # the float rewrites quantize makes (equalization, on by default), so the nodes analysed are its nodes
        float_rewrites(prepared, data_source(prepared, calib, config, warn=False), config, owned=False)
        plan = build_plan(prepared, config)
    if not plan.tensors:
        raise OnnxqError("nothing to quantize: no node is planned for quantization")
    with clock("calibrate"):
        table = ranges(prepared, plan, config, calib=calib, stats=None, scales=None, progress=None,
                       collector=collector).table
    return Calibrated(prepared, plan, table, clock.wall, clock.cpu)


class _Clock:
    """Wall and process-CPU seconds of named stages: ``with clock("stage"): ...``."""

    def __init__(self, wall: dict[str, float] | None = None, cpu: dict[str, float] | None = None) -> None:
        self.wall, self.cpu = dict(wall or {}), dict(cpu or {})

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.wall[stage] = time.perf_counter() - wall
        self.cpu[stage] = time.process_time() - cpu


@dataclass(frozen=True)
class SensitivityOptions:
    """How much of the validation data each per-node figure is measured on.

    Default (screened): every node on the first ``screen_samples`` validation samples, then the ``refine_top``
    most harmful nodes by each figure (lowest only-quantized SQNR, largest absolute gain) again on all the validation
    batches. ``exhaustive``: every node on all of them (the cost grows with nodes x batches).
    """

    exhaustive: bool = False
    screen_samples: int = 1
    refine_top: int = 5

    def __post_init__(self) -> None:
        if self.screen_samples < 1:
            raise OnnxqError(f"--screen-samples must be at least 1, got {self.screen_samples}")
        if self.refine_top < 0:
            raise OnnxqError(f"--refine-top must be >= 0, got {self.refine_top}")


def analyze(calibrated: Calibrated, val: Iterable[Batch], session: GatedSession | None = None,
            options: SensitivityOptions | None = None) -> tuple[SensitivityReport, GatedSession]:
    """Sensitivity of every quantized node of ``calibrated`` on the validation batches ``val``."""
    options = options or SensitivityOptions()
    clock = _Clock(calibrated.seconds, calibrated.cpu_seconds)
    with clock("gated session + FP32 reference"):
        if session is None:
            session = GatedSession(calibrated.prepared, calibrated.plan, calibrated.scales)
            session.set_data(val)
    if not session.batches:
        raise OnnxqError("the validation data holds no batches")
    with clock("per-node runs"):
        macs = node_macs(calibrated.prepared, session.batches[0])
        ops = {d.node: d.op_type for d in calibrated.plan.nodes}
        units = session.units
        count = math.inf if options.exhaustive else options.screen_samples
        first, rest = split_samples(calibrated.prepared, session.batches, count)
        screen = session if not rest else session.with_data(first)
        errors = _measure(screen, units, "sensitivity")
        baseline = {u: errors[None] for u in units}  # each row's fully quantized errors, on the row's own samples
        agreement = None
        if rest:
            screened = {u: _row(u, ops, macs, errors[u], errors[None]) for u in units}
            refine = _most_harmful(list(screened.values()), options.refine_top)
            more = _measure(session.with_data(rest), refine, "sensitivity (refine)")
            for key, (alone, rest_float, n) in more.items():  # screening sums + the other samples' = all samples
                old = errors[key]
                errors[key] = ([_merged(a, b) for a, b in zip(old[0], alone)],
                               [_merged(a, b) for a, b in zip(old[1], rest_float)], old[2] + n)
            # a refined row is measured on all samples, so its gain is against the fully quantized model on all of
            # them; a screened-only row keeps the screening samples' baseline (comparing its one-sample only-float
            # SQNR with the all-sample figure mixed two data sets: on the ddddocr detector every such row read -4 dB)
            baseline.update({u: errors[None] for u in refine})
            agreement = ScreenAgreement.of([screened[u] for u in refine],
                                           [_row(u, ops, macs, errors[u], errors[None]) for u in refine])
        rows = [_row(u, ops, macs, errors[u], baseline[u]) for u in units]
        everything = worst(errors[None][0])
    log.info("sensitivity of %d node(s) in %.1fs (%s)", len(rows), clock.wall["per-node runs"], session.runs)
    samples = sum(batch_samples(b) for b in session.batches)
    report = SensitivityReport(rows, everything[0], everything[1], len(session.batches), clock.wall,
                               session.output_names, clock.cpu, samples=samples,
                               screen_samples=sum(batch_samples(b) for b in first), agreement=agreement,
                               runs=dict(session.runs))
    return report, session


Errors = tuple[list[ErrorAccumulator], list[ErrorAccumulator], int]  # only-quantized, only-float, samples


def _measure(session: GatedSession, units: list[str], label: str) -> dict[str | None, Errors]:
    """Per unit, the output errors with only it quantized and with only it float on ``session``'s batches; under
    ``None`` the fully quantized errors (twice). Each run re-computes only the model downstream of the node, from the
    FP32 run's tensors (only-quantized) or the fully quantized run's (only-float)."""
    everything_q = session.snapshot(session.units)
    samples = sum(batch_samples(b) for b in session.batches)
    everything = session.error(session.units, base=everything_q)
    out: dict[str | None, Errors] = {None: (everything, everything, samples)}
    cuts = session.budget_cuts(2 * len(units) * len(session.batches))
    log.debug("%s: %d cut(s) in use", label, cuts)
    with progress.stage(label, total=len(units), unit="node") as advance:
        for unit in units:
            out[unit] = (session.error([unit], base=session.reference),
                         session.error([u for u in session.units if u != unit], base=everything_q), samples)
            advance()
    return out


def _row(unit: str, ops: dict[str, str], macs: dict[str, int], errors: Errors, everything: Errors) -> NodeSensitivity:
    alone, rest, samples = errors
    only_q, only_f = worst(alone), worst(rest)
    return NodeSensitivity(unit, ops[unit], macs.get(unit, 0), only_q[0], only_q[1], only_f[0], only_f[1],
                           only_f[0] - worst(everything[0])[0], tuple(noise_ratios(alone)), samples)


def _merged(a: ErrorAccumulator, b: ErrorAccumulator) -> ErrorAccumulator:
    """The accumulator of both sample sets (every field is a sum, a count or a maximum)."""
    return ErrorAccumulator(a.signal + b.signal, a.noise + b.noise, a.approx + b.approx, a.dot + b.dot,
                            a.abs_err + b.abs_err, max(a.max_err, b.max_err), a.count + b.count,
                            a.nonfinite + b.nonfinite)


def _most_harmful(rows: list[NodeSensitivity], top: int) -> list[str]:
    """The ``top`` nodes with the lowest only-quantized SQNR and the ``top`` with the largest absolute gain."""
    by_alone = sorted(rows, key=lambda n: n.sqnr_only_quantized)[:top]
    by_gain = sorted(rows, key=lambda n: -abs(n.gain_db) if math.isfinite(n.gain_db) else -math.inf)[:top]
    chosen = {n.node for n in by_alone + by_gain}
    return [n.node for n in rows if n.node in chosen]


@dataclass(frozen=True)
class ScreenAgreement:
    """How the screening figures of the refined nodes compare with their figures on all the validation data."""

    nodes: int
    spearman_only_quantized: float  # rank correlation of the only-quantized SQNRs (nan when fewer than 3 nodes)
    max_abs_diff_db: float  # largest |screen - refined| over both figures (finite values only)

    @classmethod
    def of(cls, screen: list[NodeSensitivity], refined: list[NodeSensitivity]) -> ScreenAgreement:
        diffs = [abs(a - b) for s, r in zip(screen, refined)
                 for a, b in ((s.sqnr_only_quantized, r.sqnr_only_quantized), (s.sqnr_only_float, r.sqnr_only_float))
                 if math.isfinite(a) and math.isfinite(b)]
        return cls(len(screen), spearman([s.sqnr_only_quantized for s in screen],
                                          [r.sqnr_only_quantized for r in refined]), max(diffs, default=0.0))


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (ties by order; nan for fewer than 3 values or a constant side)."""
    if len(a) < 3:
        return math.nan
    ra, rb = (np.argsort(np.argsort(np.nan_to_num(np.asarray(v, dtype=np.float64), posinf=1e9, neginf=-1e9),
                                    kind="stable")) for v in (a, b))
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def batch_samples(batch: Batch) -> int:
    """Samples in a batch: the leading dim of its first input (1 for a scalar)."""
    first = next(iter(batch.values()))
    return int(first.shape[0]) if np.ndim(first) else 1


def split_samples(model: onnx.ModelProto, batches: list[Batch], count: float) -> tuple[list[Batch], list[Batch]]:
    """The first ``count`` samples of ``batches`` and the others: whole batches, one batch cut in two along axis 0
    where every input's leading dim is dynamic (with a fixed batch size the whole batch goes first)."""
    fixed = {i.name for i in model.graph.input if i.type.tensor_type.shape.dim
             and i.type.tensor_type.shape.dim[0].dim_value > 1}
    first: list[Batch] = []
    rest: list[Batch] = []
    taken = 0
    for batch in batches:
        size = batch_samples(batch)
        if taken >= count:
            rest.append(batch)
        elif taken + size > count and not fixed.intersection(batch):
            cut = int(count - taken)
            first.append({k: v[:cut] for k, v in batch.items()})
            rest.append({k: v[cut:] for k, v in batch.items()})
        else:
            first.append(batch)
        taken += size
    return first, rest


def table_lines(report: SensitivityReport, top: int | None = None) -> list[str]:
    """A ranked plain-text table (most harmful node first)."""
    total = report.total_macs or 1
    lines = [f"fully quantized: worst-output SQNR {report.all_quantized_sqnr:.2f} dB, cosine "
             f"{report.all_quantized_cosine:.6f} ({report.batches} validation batch(es))",
             f"{'rank':>4}  {'node':<40} {'op':<14} {'MACs %':>7} {'only-Q dB':>9} {'only-Q cos':>10} "
             f"{'only-F dB':>9} {'gain dB':>8} {'samples':>7}"]
    for rank, n in enumerate(report.ranked()[:top], start=1):
        lines.append(f"{rank:>4}  {n.node[:40]:<40} {n.op_type[:14]:<14} {100 * n.macs / total:7.2f} "
                     f"{n.sqnr_only_quantized:9.2f} {n.cosine_only_quantized:10.6f} {n.sqnr_only_float:9.2f} "
                     f"{n.gain_db:8.2f} {n.samples:7d}")
    if report.screen_samples < report.samples:
        a = report.agreement
        lines.append(f"screened: every node on {report.screen_samples} of {report.samples} validation sample(s), the "
                     f"{a.nodes if a else 0} most harmful on all of them (screen vs all: Spearman of only-Q "
                     f"{a.spearman_only_quantized if a else math.nan:.2f}, largest difference "
                     f"{a.max_abs_diff_db if a else 0:.2f} dB); --exhaustive measures every node on all")
    return lines


def plot(report: SensitivityReport, path) -> bool:
    """A PNG of both SQNRs per node (plan order); False when matplotlib is missing (``pip install onnxq[plots]``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    nodes = report.nodes
    finite = [v for n in nodes for v in (n.sqnr_only_quantized, n.sqnr_only_float) if math.isfinite(v)]
    cap = max(finite, default=0.0) + 5
    fig, ax = plt.subplots(figsize=(max(6.0, 0.18 * len(nodes) + 2), 4.5))
    xs = range(len(nodes))
    ax.plot(xs, [min(n.sqnr_only_quantized, cap) for n in nodes], "o-", ms=3, label="only this node quantized")
    ax.plot(xs, [min(n.sqnr_only_float, cap) for n in nodes], "s-", ms=3, label="only this node float")
    ax.axhline(report.all_quantized_sqnr, color="grey", ls="--", lw=1, label="all quantized")
    ax.set_xlabel("quantized node (plan order)")
    ax.set_ylabel("worst-output SQNR (dB)")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([n.node[:24] for n in nodes], rotation=90, fontsize=5)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
