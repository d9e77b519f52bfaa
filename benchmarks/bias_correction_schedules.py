"""Bias-correction schedules on a public real model: exact level-by-level vs cheaper ones (docs/accuracy_recovery.md).

    python benchmarks/bias_correction_schedules.py [--model det] [--batches 4] [--schedules none seq group2 jacobi1]

``seq``: one pass per layer level, each level corrected with every upstream correction in effect (what
``--bias-correction`` does); ``groupK``: K consecutive levels corrected per pass; ``jacobiR``: every layer corrected at
once, R rounds. Each schedule starts from the default quantization (mse ranges, tensorrt target) and is measured
with ``benchmarks/real_models.py``'s evaluation (worst-output SQNR and task agreement on the evaluation set); the
printed residual is the mean |FP32 - Q/DQ| channel mean left on the calibration batches.
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
from realdata import ensure_dataset, model_path  # noqa: E402

from onnxq.config import QuantConfig  # noqa: E402
from onnxq.graph import load_model, save_model  # noqa: E402
from onnxq.insert import InsertQDQ  # noqa: E402
from onnxq.pipeline import data_source, prepare, ranges  # noqa: E402
from onnxq.plan import build_plan  # noqa: E402
from onnxq.recovery.bias_correction import ChannelMeans, find_targets, with_bias_inputs, write_biases  # noqa: E402


def levels_per_pass(schedule: str, top: int) -> list[list[int]]:
    """The levels corrected in each pass."""
    if schedule == "seq":
        return [[level] for level in range(1, top + 1)]
    if schedule.startswith("group"):
        size = int(schedule[5:])
        return [list(range(s, min(s + size, top + 1))) for s in range(1, top + 1, size)]
    if schedule.startswith("jacobi"):
        return [list(range(1, top + 1))] * int(schedule[6:])
    if schedule == "none":
        return []
    raise SystemExit(f"unknown schedule {schedule!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="det", choices=["det", "rec", "ori"])
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--schedules", nargs="+", default=["none", "seq", "group2", "group4", "jacobi1", "jacobi3"])
    args = parser.parse_args(argv)
    source = model_path(args.model)
    calib, evaluation = ensure_dataset(args.model)
    config = QuantConfig()
    prepared, _ = prepare(load_model(source), config)
    plan = build_plan(prepared, config)
    table = ranges(prepared, plan, config, calib=str(calib), stats=None, scales=None, progress=None).table
    batches = [b for _, b in zip(range(args.batches), data_source(prepared, str(calib), config, warn=False))]
    targets, biases = find_targets(prepared, plan)
    reference = ChannelMeans(prepared, targets, batches).run()
    means = ChannelMeans(with_bias_inputs(InsertQDQ(plan, table).run(prepared, keep_input=True).model, targets),
                         targets, batches)
    top = max(t.level for t in targets)
    for schedule in args.schedules:
        start = time.perf_counter()
        current = dict(biases)
        for levels in levels_per_pass(schedule, top):
            got = means.run({t.bias_input: current[t.node] for t in targets})
            for t in targets:
                if t.level in levels:
                    shift = reference[t.node].mean - got[t.node].mean
                    current[t.node] = (current[t.node] + shift / t.beta).astype(np.float32)
        seconds = time.perf_counter() - start
        got = means.run({t.bias_input: current[t.node] for t in targets})
        residual = float(np.mean([np.abs(reference[t.node].mean - got[t.node].mean).mean() for t in targets]))
        corrected = copy.deepcopy(prepared)
        write_biases(corrected, current)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "q.onnx"
            save_model(InsertQDQ(plan, table).run(corrected, keep_input=False).model, path)
            result = evaluate(args.model, source, path, evaluation)
        print(f"{args.model} {schedule:8s} passes {len(levels_per_pass(schedule, top)):3d}  residual {residual:.2e}  "
              f"SQNR {result['sqnr_db']:6.2f} dB  agreement {result['agreement']:.3f}  {seconds:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
