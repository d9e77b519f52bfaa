"""Which quantizers cost a real model its INT8 accuracy: by op-pattern class, or one range at a time, both ways.

    python benchmarks/activation_culprits.py pprec [--extra-args="--method percentile"]            # classes
    python benchmarks/activation_culprits.py pprec --per-range [--weights] [--top 25]              # one at a time

Quantizes the benchmark model (``benchmarks/real_models.py``'s names) in-process as ``onnxq quantize`` would (prepare,
equalize, plan, calibrate on the model's calibration split), then inserts Q/DQ for subsets of the plan and runs FP32
and each variant on the evaluation split:

- ``weights`` : every weight quantized, every activation float;
- ``full``    : the whole plan (what ``onnxq quantize`` writes, before recovery);
- by class (default): the plan's quantizers sorted into op-pattern classes (``onnxq.recovery.quantizer_classes``:
  the image input, MatMul/Gemm inputs, squeeze-excitation Conv inputs, depthwise and dense Conv inputs, other
  activations; depthwise Conv, dense Conv and MatMul/Gemm weights); ``only`` = only that class quantized, everything
  else float; ``all-but`` = the whole plan except that class;
- ``--per-range``: the same per activation range (a tensor and the data-movement inputs sharing its scale), or per
  weight with ``--weights``.

Each row: worst-output SQNR dB, CTC string / top-1 agreement where the model has one (``realtasks.TaskAgreement``),
the op types that read the tensor and the one that writes it, the calibrated range and the tensor's min/max over the
calibration data (``min/max`` shows asymmetric ranges on TensorRT's symmetric grid: a [0, m] tensor wastes half the
codes). Ranked by the ``all-but`` gain over ``full``.

The Q/DQ variants are built with onnxq's own insert pass from one calibration (``quantizer_classes.ablation_model``),
so a variant
differs from ``onnxq quantize``'s output only in the quantizers it leaves out.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from realdata import MODELS, charset_of, ensure_dataset, model_path, read_labels  # noqa: E402
from realtasks import TaskAgreement  # noqa: E402

from onnxq.recovery.quantizer_classes import ablation_model as subset_model  # noqa: E402
from onnxq.recovery.quantizer_classes import classify  # noqa: E402
from onnxq.recovery.quantizer_classes import scale_groups as groups  # noqa: E402


def build(model_file: Path, calib: Path, extra: list[str]):
    """Prepared float model, plan, scale table and calibrators, as ``onnxq quantize MODEL --calib CALIB EXTRA``
    computes them before its recovery stage."""
    from onnxq.cli import build_parser
    from onnxq.commands.common import config_from_args
    from onnxq.graph import load_model
    from onnxq.pipeline import data_source, float_rewrites, prepare, ranges
    from onnxq.plan import build_plan

    args = build_parser().parse_args(["quantize", str(model_file), "--calib", str(calib), *extra])
    config = config_from_args(args)
    prepared, _ = prepare(load_model(model_file), config)
    float_rewrites(prepared, data_source(prepared, str(calib), config, warn=False), config, owned=False)
    plan = build_plan(prepared, config)
    found = ranges(prepared, plan, config, calib=str(calib), stats=None, scales=None, progress=None)
    return prepared, plan, found


class Evaluator:
    """Worst-output SQNR against the prepared float model on the evaluation data, and the benchmark's task agreement
    (``model`` one of its names) or None."""

    def __init__(self, model: str | None, prepared, evaluation: Path) -> None:
        from onnxq.data import BatchSource
        from onnxq.runtime import make_session

        self.model = model
        self.labels = read_labels(evaluation) if model else []
        self.charset = charset_of(model, model_path(model)) if model else None
        self.batches = list(BatchSource(prepared, evaluation))
        session = make_session(prepared)
        self.reference = [session.run(None, b) for b in self.batches]

    def __call__(self, quantized) -> tuple[float, float | None]:
        from onnxq.runtime import make_session
        from onnxq.validate.metrics import ErrorAccumulator

        session = make_session(quantized)
        accs = [ErrorAccumulator() for _ in session.get_outputs()]
        task = TaskAgreement(self.model, self.labels, self.charset) if self.model else None
        for batch, ref in zip(self.batches, self.reference, strict=True):
            got = session.run(None, batch)
            for acc, r, g in zip(accs, ref, got, strict=True):
                acc.add(r, g)
            if task is not None:
                task.add(ref[0], got[0])
        return min(a.sqnr_db for a in accs), task.result().get("agreement") if task is not None else None


def describe(prepared, plan, found, root: str, members: list[str]) -> str:
    from onnxq.graph import GraphIndex

    index = GraphIndex.build(prepared.graph)
    if root in index.initializers:
        w = index.array(root)
        readers = [f"{r.op_type} {list(w.shape)}" for r, _ in index.consumers.get(root, [])]
        return f"weight -> {','.join(readers)} | | {w.min():.3g}..{w.max():.3g}"
    producer = index.producer.get(root)
    readers = sorted({r.op_type for m in members for r, _ in index.consumers.get(m, [])})
    params = found.table[root]
    scale = float(np.asarray(params.scale).ravel()[0])
    cal = found.calibrators.get(root)
    stats = getattr(cal, "hist", cal)
    lo_hi = f"{float(stats.lo):.3g}..{float(stats.hi):.3g}" if hasattr(stats, "lo") else ""
    return (f"{producer.op_type if producer is not None else 'input'} -> {','.join(readers)} | "
            f"+-{127 * scale:.3g} | {lo_hi}")


def channel_extremes(prepared, tensors: list[str], calib: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-channel (axis 1) min and max of each tensor over the calibration data, one float pass."""
    import onnx

    from onnxq.data import BatchSource
    from onnxq.runtime import make_session

    model = onnx.ModelProto.FromString(prepared.SerializeToString())
    exposed = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in tensors if t not in exposed)
    session = make_session(model)
    names = [o.name for o in session.get_outputs()]
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for batch in BatchSource(prepared, calib):
        for name, value in zip(names, session.run(None, batch), strict=True):
            if name not in tensors:
                continue
            axes = tuple(a for a in range(value.ndim) if a != 1)
            lo, hi = value.min(axis=axes), value.max(axis=axes)
            if name in found:
                lo, hi = np.minimum(found[name][0], lo), np.maximum(found[name][1], hi)
            found[name] = (lo, hi)
    return found


def with_raw_qdq(model, params: dict[str, tuple[np.ndarray, np.ndarray, int | None]]):
    """``model`` (a copy) with an int8 Q/DQ pair after each tensor of ``params`` (scale, zero point, axis), read by
    every consumer: written here, not by onnxq's insert pass, which refuses per-channel activation scales."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    placed: list = []
    for tensor, (scale, zero_point, axis) in params.items():
        extra = {} if axis is None else {"axis": axis}
        graph.initializer.extend([numpy_helper.from_array(scale.astype(np.float32), f"{tensor}_bound_scale"),
                                  numpy_helper.from_array(zero_point.astype(np.int8), f"{tensor}_bound_zp")])
        args = [f"{tensor}_bound_scale", f"{tensor}_bound_zp"]
        placed += [helper.make_node("QuantizeLinear", [tensor, *args], [f"{tensor}_bound_q"], **extra),
                   helper.make_node("DequantizeLinear", [f"{tensor}_bound_q", *args], [f"{tensor}_bound"], **extra)]
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name == tensor:
                    node.input[i] = f"{tensor}_bound"
    graph.node.extend(placed)
    _toposort(graph)  # each pair after its producer
    return model


def _toposort(graph) -> None:
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(not i or i in known for i in n.input)]
        if not ready:
            raise RuntimeError("cycle while placing Q/DQ")
        for n in ready:
            known.update(n.output)
            ordered.append(n)
        pending = [n for n in pending if all(n is not r for r in ready)]
    del graph.node[:]
    graph.node.extend(ordered)


def range_bounds(prepared, plan, found, calib: Path, evaluate, kind: str) -> None:
    """For one class of activations alone (everything else float): the calibrated ranges against min-max per tensor,
    min-max per tensor with a zero point (asymmetric), and min-max per channel. The last two are what a rule could
    at best recover from asymmetric ranges on a symmetric grid and from per-channel range spread."""
    members = set().union(*[v for k, v in classify(prepared, plan).items() if kind in k and k.startswith("act")])
    if not members:
        raise SystemExit(f"no activation class matches {kind!r}")
    extremes = channel_extremes(prepared, sorted(members), calib)
    variants: dict[str, dict] = {"per tensor, min-max": {}, "per tensor, min-max, asymmetric": {},
                                 "per channel, min-max": {}}
    for name in members:
        lo, hi = extremes[name]
        amax = float(max(-lo.min(), hi.max()))
        variants["per tensor, min-max"][name] = (np.array(amax / 127), np.array(0), None)
        low, high = min(float(lo.min()), 0.0), max(float(hi.max()), 0.0)
        step = (high - low) / 255
        variants["per tensor, min-max, asymmetric"][name] = (np.array(step), np.array(round(-128 - low / step)), None)
        channel = np.maximum(-lo, hi)
        variants["per channel, min-max"][name] = (np.where(channel > 0, channel, 1e-8) / 127,
                                                  np.zeros(channel.shape), 1)
    print(f"| {kind} ({len(members)} tensors) alone, rest float | SQNR dB / agreement |")
    print("|---|---|")
    methods = ", ".join(sorted({plan.tensors[m].method for m in members}))
    print(f"| calibrated ({methods}) | "
          f"{fmt(evaluate(subset_model(prepared, plan, found.table, members)))} |")
    for label, params in variants.items():
        print(f"| {label} | {fmt(evaluate(with_raw_qdq(prepared, params)))} |")


def fmt(result: tuple[float, float | None]) -> str:
    sqnr, agreement = result
    return f"{sqnr:.2f}" + ("" if agreement is None else f" / {agreement:.3f}")


def by_class(prepared, plan, table, evaluate) -> None:
    everything = set(plan.tensors)
    print("| quantizers | count | only these (rest float): SQNR dB / agreement | all but these |")
    print("|---|---:|---|---|")
    for kind, members in sorted(classify(prepared, plan).items()):
        only = evaluate(subset_model(prepared, plan, table, members))
        all_but = evaluate(subset_model(prepared, plan, table, everything - members))
        print(f"| {kind} | {len(members)} | {fmt(only)} | {fmt(all_but)} |")


def per_range(prepared, plan, found, evaluate, weights: bool, top: int, full_sqnr: float) -> None:
    table = found.table
    everything = set(plan.tensors)
    rows = []
    units = {t.name: [t.name] for t in plan.weights()} if weights else groups(plan)
    for root, members in units.items():
        only = evaluate(subset_model(prepared, plan, table, set(members)))
        all_but = evaluate(subset_model(prepared, plan, table, everything - set(members)))
        rows.append((all_but[0] - full_sqnr, root, members, only, all_but))
        print(f"  {root}: only {only[0]:.2f}, all-but {all_but[0]:.2f}", file=sys.stderr)
    rows.sort(key=lambda r: -r[0])
    print("| range (root tensor) | tensors | only: SQNR / agr | all-but: SQNR / agr | producer -> readers | "
          "range | calib min..max |")
    print("|---|---:|---|---|---|---|---|")
    for _, root, members, only, all_but in rows[:top]:
        print(f"| {root} | {len(members)} | {fmt(only)} | {fmt(all_but)} | "
              f"{describe(prepared, plan, found, root, members)} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help=f"a benchmark model ({', '.join(MODELS)}) or an ONNX file (then --calib and "
                        "--eval are required)")
    parser.add_argument("--calib", type=Path, help="calibration data of an ONNX file given as MODEL")
    parser.add_argument("--eval", type=Path, help="evaluation data of an ONNX file given as MODEL")
    parser.add_argument("--extra-args", default="", metavar="ARGS", help="extra `onnxq quantize` flags, quoted")
    parser.add_argument("--per-range", action="store_true", help="one activation range at a time (slow: two "
                        "onnxruntime sessions per range) instead of by class")
    parser.add_argument("--weights", action="store_true", help="with --per-range: one weight at a time")
    parser.add_argument("--bounds", metavar="CLASS", help="for the activation class whose name contains CLASS "
                        "(e.g. 'dense Conv'): the calibrated ranges against per-tensor min-max, asymmetric min-max "
                        "and per-channel min-max")
    parser.add_argument("--top", type=int, default=30, help="with --per-range: rows printed")
    args = parser.parse_args(argv)
    if args.model in MODELS:
        model_file, (calib, evaluation), name = model_path(args.model), ensure_dataset(args.model), args.model
    elif args.calib is None or args.eval is None:
        parser.error("an ONNX file as MODEL needs --calib and --eval")
    else:
        model_file, calib, evaluation, name = Path(args.model), args.calib, args.eval, None
    prepared, plan, found = build(model_file, calib, shlex.split(args.extra_args))
    evaluate = Evaluator(name, prepared, evaluation)
    weights = {t.name for t in plan.weights()}
    activations = {t.name for t in plan.activations()}
    full = evaluate(subset_model(prepared, plan, found.table, set(plan.tensors)))
    print(f"{args.model} {args.extra_args}: full plan {fmt(full)}; weights only "
          f"{fmt(evaluate(subset_model(prepared, plan, found.table, weights)))}; activations only "
          f"{fmt(evaluate(subset_model(prepared, plan, found.table, activations)))}\n")
    if args.bounds:
        range_bounds(prepared, plan, found, calib, evaluate, args.bounds)
    elif args.per_range:
        per_range(prepared, plan, found, evaluate, args.weights, args.top, full[0])
    else:
        by_class(prepared, plan, found.table, evaluate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
