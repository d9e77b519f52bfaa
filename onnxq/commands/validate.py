"""``onnxq validate FP32 QUANT --data DIR``: both models in onnxruntime, the error of every output."""

from __future__ import annotations

import argparse
import sys

from onnxq.commands.common import add_json_flag, print_result
from onnxq.commands.latency_flags import add_latency_flags, latency_settings


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("validate", help="compare a quantized model with its FP32 original",
                              description="Run both models in onnxruntime on the same batches; print SQNR (dB), "
                              "cosine similarity, MAE and max abs error per output.")
    p.add_argument("reference", help="FP32 ONNX model")
    p.add_argument("quantized", help="quantized ONNX model")
    p.add_argument("--data", required=True, help="data folder of .npy/.npz batches, or an .npz stack")
    p.add_argument("--batches", type=int, metavar="N", help="use at most N batches")
    p.add_argument("--per-layer", action="store_true", help="also compare every shared intermediate tensor")
    p.add_argument("--min-sqnr", type=float, metavar="DB", help="exit 1 when an output's SQNR is lower")
    p.add_argument("--plot", metavar="FILE.png", help='with --per-layer: write a PNG of per-layer SQNR along the '
                   'network (needs matplotlib: pip install "onnxq[plots]")')
    add_json_flag(p, "the metrics")
    add_latency_flags(p.add_argument_group("latency"), default_on=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from onnxq.commands.common import guard
    from onnxq.data import BatchSource
    from onnxq.errors import OnnxqError
    from onnxq.graph import load_model
    from onnxq.outputs import Output
    from onnxq.report import validation_lines
    from onnxq.validate import compare_models

    if args.plot is not None and not args.per_layer:
        raise OnnxqError("--plot draws the per-layer SQNR: add --per-layer")
    guard([Output("--plot", args.plot) if args.plot is not None else None], model=[args.reference, args.quantized],
          data=args.data)
    settings = latency_settings(args)
    reference = load_model(args.reference)
    quantized = load_model(args.quantized)
    data = BatchSource(reference, args.data, max_batches=args.batches)
    skip: set[str] = set()
    if args.per_layer:
        from onnxq.rewritten_tensors import rewritten_tensors

        skip = rewritten_tensors(reference, quantized, next(iter(data)))
    report = compare_models(reference, quantized, data, per_layer=args.per_layer, skip_layers=skip)
    lines, payload = validation_lines(report, worst=10), report.as_dict()
    if settings is not None:
        from onnxq.validate.latency import measure_latency

        latency = measure_latency(reference, quantized, next(iter(data)), settings)
        lines, payload = lines + latency.lines(), {**payload, "latency": latency.as_dict()}
    print_result(args, "\n".join(lines), payload)
    if args.plot is not None:
        write_plot(report, args.plot)
    if args.min_sqnr is not None and report.min_sqnr_db < args.min_sqnr:
        print(f"SQNR {report.min_sqnr_db:.2f} dB is below --min-sqnr {args.min_sqnr}", file=sys.stderr)
        return 1
    return 0


def write_plot(report, path: str) -> None:
    """The per-layer SQNR picture, or one line saying how to get plots (the rest of the run is unaffected)."""
    from onnxq.validate.plot import HOW_TO_GET_PLOTS, plots_available, write_layer_sqnr_plot

    if not plots_available():
        print(f"note: no {path}: {HOW_TO_GET_PLOTS}", file=sys.stderr)
        return
    write_layer_sqnr_plot(report, path)
    print(f"wrote {path}", file=sys.stderr)
