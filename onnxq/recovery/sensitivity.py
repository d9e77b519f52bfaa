"""Per-node quantization sensitivity: the output error with only one node quantized, and with only one node float.

Calibrate once, build one gated session (:mod:`onnxq.recovery.gated`), cache the FP32 outputs of the validation
batches, then per quantized node two runs over those batches: gates {n} (only n quantized) and all-but-n (only n
float). The cost is ``1 calibration pass + (2 x nodes + 2) x validation batches`` forward runs of one session, with
no per-node model copy or session build (AIMET's QuantAnalyzer "per-layer quantizer enable/disable" analysis, done
with run-time switches instead of one simulation model per layer).

Ranking: the lowest SQNR with only the node quantized first (the node that alone costs most). ``gain_db`` is what
leaving the node alone in float buys over the fully quantized model.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import onnx

from onnxq import progress
from onnxq.config import QuantConfig
from onnxq.data import Batch
from onnxq.errors import OnnxqError
from onnxq.pipeline import data_source, float_rewrites, prepare, ranges
from onnxq.plan import QuantPlan, build_plan
from onnxq.recovery.gated import GatedSession, noise_ratios, worst
from onnxq.recovery.macs import node_macs
from onnxq.scales.types import ScaleTable

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

    def ranked(self) -> list[NodeSensitivity]:
        return sorted(self.nodes, key=lambda n: (n.sqnr_only_quantized, -n.gain_db))

    @property
    def total_macs(self) -> int:
        return sum(n.macs for n in self.nodes)

    def as_dict(self) -> dict:
        return {"all_quantized": {"sqnr_db": _json(self.all_quantized_sqnr), "cosine": self.all_quantized_cosine},
                "batches": self.batches, "seconds": self.seconds, "cpu_seconds": self.cpu_seconds,
                "outputs": self.output_names,
                "nodes": [n.as_dict() for n in self.ranked()]}


def _json(v):
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


def analyze(calibrated: Calibrated, val: Iterable[Batch],
            session: GatedSession | None = None) -> tuple[SensitivityReport, GatedSession]:
    """Sensitivity of every quantized node of ``calibrated`` on the validation batches ``val``."""
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
        everything = worst(session.error(units))
        nodes = []
        with progress.stage("sensitivity", total=len(units), unit="node") as advance:
            for unit in units:
                alone = session.error([unit])
                rest = worst(session.error([u for u in units if u != unit]))
                only_q = worst(alone)
                nodes.append(NodeSensitivity(unit, ops[unit], macs.get(unit, 0), only_q[0], only_q[1], rest[0],
                                             rest[1], rest[0] - everything[0], tuple(noise_ratios(alone))))
                advance()
    log.info("sensitivity of %d node(s) over %d batch(es) in %.1fs", len(units), len(session.batches),
             clock.wall["per-node runs"])
    return SensitivityReport(nodes, everything[0], everything[1], len(session.batches), clock.wall,
                             session.output_names, clock.cpu), session


def table_lines(report: SensitivityReport, top: int | None = None) -> list[str]:
    """A ranked plain-text table (most harmful node first)."""
    total = report.total_macs or 1
    lines = [f"fully quantized: worst-output SQNR {report.all_quantized_sqnr:.2f} dB, cosine "
             f"{report.all_quantized_cosine:.6f} ({report.batches} validation batch(es))",
             f"{'rank':>4}  {'node':<40} {'op':<14} {'MACs %':>7} {'only-Q dB':>9} {'only-Q cos':>10} "
             f"{'only-F dB':>9} {'gain dB':>8}"]
    for rank, n in enumerate(report.ranked()[:top], start=1):
        lines.append(f"{rank:>4}  {n.node[:40]:<40} {n.op_type[:14]:<14} {100 * n.macs / total:7.2f} "
                     f"{n.sqnr_only_quantized:9.2f} {n.cosine_only_quantized:10.6f} {n.sqnr_only_float:9.2f} "
                     f"{n.gain_db:8.2f}")
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
