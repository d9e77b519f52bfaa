"""Why bias correction helps or hurts a real model: per-layer generalization of the correction, and gating rules.

    python benchmarks/bias_correction_diagnose.py --model rec [--fit 4] [--rules plain gate2 shrink] [--layers]

Starts from the default quantization (QuantConfig(): mse ranges, equalization, tensorrt target). The calibration
batches are split into a FIT set (the first ``--fit``, what ``--bias-correction`` uses) and a HELD-OUT set (the rest
of the calibration batches plus the ``val`` split). For each rule the sequential correction (one level at a time,
upstream corrections in effect) is estimated on FIT only, then:

* per layer (``--layers``): the correction ``d`` (RMS over channels), the per-channel t statistic of ``d`` against
  its standard error across the FIT batches, and the held-out gain: ``|u|^2 - |u - d|^2`` over ``|u|^2``, where ``u``
  is the layer's held-out mean shift with every upstream correction in effect but not its own (negative: the
  correction moves the held-out channel means away from FP32);
* the whole model: worst-output SQNR and task agreement on the evaluation set (``real_models.evaluate``).

Rules: ``plain`` (the mean shift, as ``--bias-correction``), ``gateK`` (a channel is corrected only where
``|d| > K * SE``), ``shrink`` (``d * max(0, 1 - SE^2/d^2)``), ``none``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from real_models import evaluate  # noqa: E402
from realdata import ensure_dataset, ensure_split, model_path  # noqa: E402

from onnxq.config import QuantConfig  # noqa: E402
from onnxq.graph import GraphIndex, load_model, save_model  # noqa: E402
from onnxq.insert import InsertQDQ  # noqa: E402
from onnxq.pipeline import data_source, float_rewrites, prepare, ranges  # noqa: E402
from onnxq.plan import build_plan  # noqa: E402
from onnxq.recovery.bias_correction import (  # noqa: E402
    ancestors_only,
    find_targets,
    with_bias_inputs,
    with_channel_sums,
    write_biases,
)
from onnxq.runtime import make_session  # noqa: E402


class PerBatchMeans:
    """Per-batch per-channel means of the targets' outputs (one session)."""

    def __init__(self, model, targets, batches) -> None:
        self.session = make_session(ancestors_only(with_channel_sums(model, targets)))
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.targets, self.batches = targets, batches

    def run(self, extra=None) -> dict[str, np.ndarray]:
        """target -> (batches, channels) means."""
        n = len(self.targets)
        out = {t.node: [] for t in self.targets}
        for batch in self.batches:
            feed = {k: v for k, v in {**batch, **(extra or {})}.items() if k in self.inputs}
            values = self.session.run(None, feed)
            for t, total, shape in zip(self.targets, values[:n], values[n:]):
                out[t.node].append(total.astype(np.float64).reshape(-1, t.channels).sum(axis=0)
                                   / (int(np.prod(shape)) // t.channels))
        return {k: np.array(v) for k, v in out.items()}


def worst_sqnr(reference, quantized, batches) -> float:
    """Worst-output SQNR of ``quantized`` against ``reference`` on ``batches``."""
    from onnxq.validate.metrics import ErrorAccumulator

    ref_s, q_s = make_session(reference), make_session(quantized)
    accs = [ErrorAccumulator() for _ in ref_s.get_outputs()]
    for batch in batches:
        for acc, r, g in zip(accs, ref_s.run(None, batch), q_s.run(None, batch)):
            acc.add(r, g)
    return min(a.sqnr_db for a in accs)


def rule_delta(rule: str, shifts: np.ndarray) -> np.ndarray:
    """The correction of one layer from its per-batch mean shifts (batches, channels)."""
    mean = shifts.mean(axis=0)
    if rule == "plain" or len(shifts) < 2:
        return mean
    se = shifts.std(axis=0, ddof=1) / np.sqrt(len(shifts))
    if rule.startswith("lgate"):  # the whole layer, when the median channel's |t| passes
        return mean if np.median(np.abs(mean) / np.maximum(se, 1e-30)) >= float(rule[5:]) else 0.0 * mean
    if rule.startswith("gate"):
        return np.where(np.abs(mean) > float(rule[4:]) * se, mean, 0.0)
    if rule == "shrink":
        return mean * np.clip(1.0 - se**2 / np.maximum(mean**2, 1e-30), 0.0, 1.0)
    raise SystemExit(f"unknown rule {rule!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="rec")
    parser.add_argument("--fit", type=int, default=4)
    parser.add_argument("--holdout", type=int, default=16, help="at most this many held-out batches")
    parser.add_argument("--rules", nargs="+", default=["none", "plain", "gate2", "shrink"])
    parser.add_argument("--layers", action="store_true", help="print the per-layer table of the first rule")
    args = parser.parse_args(argv)
    source = model_path(args.model)
    calib, evaluation = ensure_dataset(args.model)
    config = QuantConfig()
    start = time.perf_counter()
    prepared, _ = prepare(load_model(source), config)
    float_rewrites(prepared, data_source(prepared, str(calib), config, warn=False), config, owned=False)
    plan = build_plan(prepared, config)
    table = ranges(prepared, plan, config, calib=str(calib), stats=None, scales=None, progress=None).table
    batches = list(data_source(prepared, str(calib), config, warn=False))
    batches += list(data_source(prepared, str(ensure_split(args.model, "val")), config, warn=False))
    fit, held = batches[:args.fit], batches[args.fit:args.fit + args.holdout]
    targets, biases = find_targets(prepared, plan)
    top = max(t.level for t in targets)
    print(f"{args.model}: {len(targets)} targets, {top} levels, fit {len(fit)} held-out {len(held)} batches "
          f"(setup {time.perf_counter() - start:.1f} s)", flush=True)
    index = GraphIndex.build(prepared.graph)
    ref_fit = PerBatchMeans(prepared, targets, fit).run()
    ref_held = PerBatchMeans(prepared, targets, held).run()
    qmodel = with_bias_inputs(InsertQDQ(plan, table).run(prepared, keep_input=True).model, targets)
    q_fit, q_held = PerBatchMeans(qmodel, targets, fit), PerBatchMeans(qmodel, targets, held)
    for rule in args.rules:
        start = time.perf_counter()
        current = {k: v.astype(np.float64) for k, v in biases.items()}
        stats = {}
        name, _, span = rule.partition("@")  # rule@A-B: only levels A..B corrected
        low, high = (int(x) for x in span.split("-")) if span else (1, top)
        for level in range(low, min(high, top) + 1) if name != "none" else []:
            got = q_fit.run({t.bias_input: current[t.node].astype(np.float32) for t in targets})
            for t in targets:
                if t.level == level:
                    shifts = ref_fit[t.node] - got[t.node]
                    d = rule_delta(name, shifts)
                    se = shifts.std(axis=0, ddof=1) / np.sqrt(len(shifts)) if len(shifts) > 1 else np.zeros_like(d)
                    stats[t.node] = (d, np.abs(shifts.mean(0)) / np.maximum(se, 1e-30))
                    current[t.node] = current[t.node] + d / t.beta
        seconds = time.perf_counter() - start
        if args.layers and stats:
            got = q_held.run({t.bias_input: current[t.node].astype(np.float32) for t in targets})
            print(f"{'layer':40s} lvl next-op        ch  rms(d)/rms(mean) median|t|  held-out gain")
            for t in targets:
                d, tstat = stats[t.node]
                u = (ref_held[t.node] - got[t.node]).mean(0) + d  # held-out shift without its own correction
                gain = (np.sum(u**2) - np.sum((u - d)**2)) / max(np.sum(u**2), 1e-30)
                nxt = ",".join(sorted({c.op_type for c, _ in index.consumers.get(t.output, [])}))
                scale = np.sqrt(np.mean(ref_fit[t.node].mean(0)**2)) or 1.0
                print(f"{t.node[-40:]:40s} {t.level:3d} {nxt[:12]:12s} {t.channels:4d}  "
                      f"{np.sqrt(np.mean(d**2)) / scale:14.4f} {np.median(tstat):9.2f}  {gain:+.3f}")
            args.layers = False
        corrected = copy.deepcopy(prepared)
        write_biases(corrected, {k: v.astype(np.float32) for k, v in current.items()})
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "q.onnx"
            save_model(InsertQDQ(plan, table).run(corrected, keep_input=False).model, path)
            result = evaluate(args.model, source, path, evaluation)
            on_fit = worst_sqnr(load_model(source), load_model(path), fit)
            on_held = worst_sqnr(load_model(source), load_model(path), held)
        print(f"{args.model} {rule:8s} fit {len(fit):3d}  fit SQNR {on_fit:6.2f}  held-out SQNR {on_held:6.2f}  "
              f"SQNR {result['sqnr_db']:6.2f} dB  "
              f"agreement {result['agreement']:.3f}  ({seconds:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
