"""Where an INT8 model's time goes on onnxruntime's CPU provider: kernel time per op type, FP32 next to INT8.

onnxruntime's own profiler (``SessionOptions.enable_profiling``) records every kernel's duration; this sums them per
op type over many runs of one intra-op thread, for the FP32 model and its ``--target ort-cpu`` quantization (made
here, or given with ``--int8``), and prints the op types side by side with the node counts of the optimized graph.
``--top N`` also lists the N slowest nodes of each model (op, output shape, median us) and every node of the INT8
model's optimized graph that is not an integer kernel (float ops, DQ/Q, Transposes, reorders): where a placement rule
could still save time.

    PYTHONPATH=$PWD python benchmarks/op_profile.py --models ppcls,mobilenet_v3_small [--runs 300] \
        [--work /tmp/op_profile] [--int8 PATH] [--top 15]

Models and inputs are those of benchmarks/cpu_latency.py (smooth random images).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_latency import build_cases, latency_batch

from onnxq.config import QuantConfig
from onnxq.pipeline import quantize


@dataclass
class NodeTime:
    """One node's median kernel time over the runs."""

    name: str
    op: str
    shape: str  # the first output's type and shape, as the profiler records it
    us: float


@dataclass
class Profile:
    total_us: float  # kernel time per run: the sum of every node's median
    per_op: Counter  # op type -> us per run
    counts: Counter  # op type -> node count
    nodes: list[NodeTime]  # slowest first


def _shape(args: dict) -> str:
    outputs = args.get("output_type_shape") or [{}]
    return " ".join(f"{dtype}{dims}" for dtype, dims in outputs[0].items())


def profile(model: str, batch: dict, runs: int, prefix: str) -> Profile:
    """Kernel time per run and node, summed per op type."""
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
    shapes: dict[str, str] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            durations[(event["args"]["op_name"], event["name"])].append(event["dur"])
            shapes[event["name"]] = _shape(event["args"])
    # each node's median over the runs (the first runs, warm-up included in the profile, do not count)
    per_run: Counter = Counter()
    counts: Counter = Counter()
    nodes = []
    for (op, name), values in durations.items():
        us = float(np.median(values))
        per_run[op] += us
        counts[op] += 1
        nodes.append(NodeTime(name.removesuffix("_kernel_time"), op, shapes[name], us))
    nodes.sort(key=lambda n: -n.us)
    return Profile(sum(per_run.values()), per_run, counts, nodes)


# what onnxruntime fuses Q/DQ node units into, and uint8 ops whose Q/DQ pair it dropped: nodes of the optimized graph
# that are not listed by --top's "not integer" list
_INTEGER_OPS = ("QLinear", "QGemm", "MatMulInteger", "DynamicQuantize", "NhwcMaxPool")


def non_integer_nodes(int8_model: str) -> list[str]:
    """Every node of onnxruntime's optimized graph of ``int8_model`` that is not an integer kernel, one line each
    (op, name, inputs -> outputs): the float islands, Q/DQ conversions, Transposes and NCHWc reorders left."""
    from onnxq.validate.latency import optimized_model

    lines = []
    for node in optimized_model(int8_model).graph.node:
        if node.op_type.startswith(_INTEGER_OPS):
            continue
        lines.append(f"{node.op_type:24s} {node.name[:40]:40s} {list(node.input)[:3]} -> {list(node.output)}")
    return lines


def print_top(label: str, result: Profile, top: int) -> None:
    print(f"  {label}: the {top} slowest nodes")
    for node in result.nodes[:top]:
        print(f"    {node.us:7.1f} us  {node.op:26s} {node.shape:28s} {node.name[:48]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="ppcls,mobilenet_v3_small")
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--work", default="/tmp/op_profile")
    p.add_argument("--int8", help="profile this INT8 model instead of quantizing (one model only)")
    p.add_argument("--top", type=int, default=0,
                   help="also list the N slowest nodes of each model and the INT8 graph's non-integer nodes")
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
        fp32 = profile(str(case.model), batch, args.runs, prefix)
        int8 = profile(str(out), batch, args.runs, prefix)
        print(f"\n{case.name}: FP32 {fp32.total_us:.0f} us, INT8 {int8.total_us:.0f} us of kernel time per run "
              f"({fp32.total_us / int8.total_us:.2f}x, 1 thread, {args.runs} runs)")
        rows = sorted(set(fp32.per_op) | set(int8.per_op), key=lambda op: -max(fp32.per_op[op], int8.per_op[op]))
        print(f"  {'op':28s} {'FP32 us':>9s} {'n':>4s}   {'INT8 us':>9s} {'n':>4s}")
        for op in rows:
            print(f"  {op:28s} {fp32.per_op[op]:9.1f} {fp32.counts[op]:4d}   "
                  f"{int8.per_op[op]:9.1f} {int8.counts[op]:4d}")
        if args.top:
            print_top("FP32", fp32, args.top)
            print_top("INT8", int8, args.top)
            lines = non_integer_nodes(str(out))
            print(f"  INT8 optimized graph: {len(lines)} nodes that are not integer kernels")
            for line in lines:
                print(f"    {line}")


if __name__ == "__main__":
    main()
