"""Where an INT8 model's time goes on onnxruntime's CPU provider: kernel time per op type, FP32 next to INT8.

onnxruntime's own profiler (``SessionOptions.enable_profiling``) records every kernel's duration; this sums them per
op type over many runs of one intra-op thread, for the FP32 model and its ``--target ort-cpu`` quantization (made
here, or given with ``--int8``), and prints the op types side by side with the node counts of the optimized graph.

    PYTHONPATH=$PWD python benchmarks/op_profile.py --models ppcls,mobilenet_v3_small [--runs 300] \
        [--work /tmp/op_profile] [--int8 PATH]

Models and inputs are those of benchmarks/cpu_latency.py (smooth random images).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_latency import build_cases, latency_batch

from onnxq.config import QuantConfig
from onnxq.pipeline import quantize


def profile(model: str, batch: dict, runs: int, prefix: str) -> tuple[float, Counter, Counter]:
    """Kernel time per run (us; the sum of every node's median), and per op type: that time and the node count."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = prefix
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    feed = {i.name: batch[i.name] for i in session.get_inputs()}
    for _ in range(runs):
        session.run(None, feed)
    path = session.end_profiling()
    with open(path) as f:
        events = json.load(f)
    Path(path).unlink()
    durations: dict[tuple[str, str], list[float]] = defaultdict(list)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            durations[(event["args"]["op_name"], event["name"])].append(event["dur"])
    # each node's median over the runs (the first runs, warm-up included in the profile, do not count)
    per_run: Counter = Counter()
    counts: Counter = Counter()
    for (op, _), values in durations.items():
        per_run[op] += float(np.median(values))
        counts[op] += 1
    return sum(per_run.values()), per_run, counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="ppcls,mobilenet_v3_small")
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--work", default="/tmp/op_profile")
    p.add_argument("--int8", help="profile this INT8 model instead of quantizing (one model only)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    for case in build_cases([m for m in args.models.split(",") if m], work):
        out = Path(args.int8) if args.int8 else work / case.name / "ort-cpu.onnx"
        if not args.int8:
            quantize(case.model, calib=str(case.calib), config=QuantConfig(target="ort-cpu"), output=out)
        batch = latency_batch(case)
        prefix = str(work / case.name / "profile")
        total_f, float_ops, float_nodes = profile(str(case.model), batch, args.runs, prefix)
        total_q, int_ops, int_nodes = profile(str(out), batch, args.runs, prefix)
        print(f"\n{case.name}: FP32 {total_f:.0f} us, INT8 {total_q:.0f} us of kernel time per run "
              f"({total_f / total_q:.2f}x, 1 thread, {args.runs} runs)")
        rows = sorted(set(float_ops) | set(int_ops), key=lambda op: -max(float_ops[op], int_ops[op]))
        print(f"  {'op':28s} {'FP32 us':>9s} {'n':>4s}   {'INT8 us':>9s} {'n':>4s}")
        for op in rows:
            print(f"  {op:28s} {float_ops[op]:9.1f} {float_nodes[op]:4d}   {int_ops[op]:9.1f} {int_nodes[op]:4d}")


if __name__ == "__main__":
    main()
