"""``onnxq quantize MODEL --calib DIR``: INT8 post-training quantization."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from onnxq.atomic import AtomicGroup, json_text
from onnxq.commands.common import (
    add_calibration_flags,
    add_model_and_output,
    add_recovery_flags,
    calib_flags_given,
    config_from_args,
    guard,
    ray_calibration,
)
from onnxq.commands.latency_flags import add_latency_flags, latency_settings
from onnxq.errors import OnnxqError
from onnxq.outputs import Output

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("quantize", help="quantize an FP32 ONNX model to INT8 Q/DQ form",
                              description="Fold BatchNorm, plan, calibrate, insert Q/DQ, verify and save.")
    add_model_and_output(p, "FP32 ONNX model", "output path (default: MODEL.int8.onnx beside the input)",
                         required=False)
    src = p.add_argument_group("ranges (exactly one)")
    src.add_argument("--calib", metavar="DATA", help="calibration data: folder of .npy/.npz batches, an .npz "
                     "stack, or 'random' (meaningless scales, for toolchain tests only)")
    src.add_argument("--stats", action="append", metavar="GLOB",
                     help="merge statistics files written by 'onnxq calibrate' (repeatable, globs allowed)")
    src.add_argument("--scales", metavar="FILE", help="take the scales from a file (onnxq JSON, TensorRT "
                     "calibration cache or AIMET encodings) instead of calibrating")
    src.add_argument("--strict", action="store_true", help="with --scales: any mismatch with the plan is an error")
    src.add_argument("--dynamic", action="store_true", help="dynamic quantization instead: MatMul weights INT8 "
                     "ahead of time, activations quantized at run time (no calibration data; for transformers on "
                     "CPU)")
    add_calibration_flags(p)
    add_recovery_flags(p)
    v = p.add_argument_group("validation and reports")
    v.add_argument("--val", metavar="DATA", help="validate against FP32 on this data right after quantizing")
    v.add_argument("--per-layer", action="store_true", help="with --val: per-layer SQNR to find the culprits")
    v.add_argument("--min-sqnr", type=float, metavar="DB", help="with --val: exit 1 when an output's SQNR is lower")
    v.add_argument("--report", metavar="PATH", help="write a JSON (.json) or Markdown (.md) report")
    add_latency_flags(v, default_on=True)
    m = p.add_argument_group("mixed precision (keep the fewest, cheapest nodes float until a target holds)")
    m.add_argument("--target-sqnr", type=float, metavar="DB",
                   help="with --val: worst-output SQNR the quantized model must reach against FP32; nodes stay float "
                   "(FP16 in TensorRT) until it holds; exit 1 when it cannot within --max-float-share")
    m.add_argument("--max-float-share", type=float, default=0.1, metavar="SHARE",
                   help="with --target-sqnr: at most this share of the weighted nodes' MACs may stay float "
                   "(default 0.1)")
    m.add_argument("--target-val-batches", type=int, default=4, metavar="N",
                   help="with --target-sqnr: search and verify on the first N validation batches (default 4; the "
                   "search costs about one run over them per quantized node)")
    p.add_argument("--requantize", action="store_true", help="strip the Q/DQ of an already quantized model first")
    p.add_argument("--debug-passes", action="store_true", help="check the model after every pass")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from onnxq.calib.stats import expand_stats_paths
    from onnxq.config_file import unmatched_rules
    from onnxq.graph import model_outputs, printable, save_model
    from onnxq.pipeline import default_output_path, quantize
    from onnxq.scales.importer import scale_importer

    if args.min_sqnr is not None and not args.val:
        raise OnnxqError("--min-sqnr needs --val DATA")
    if args.scales and calib_flags_given(args):
        raise OnnxqError(f"{calib_flags_given(args)[0]} sets calibration; --scales imports ranges: drop it")
    if args.stats and args.method is None and calib_flags_given(args):
        raise OnnxqError(f"{calib_flags_given(args)[0]} with --stats re-reads the statistics with a method: name it "
                         "with --method (percentile, entropy, mse or minmax)")
    if (args.stats or args.scales) and args.calib_batches is not None:
        raise OnnxqError("--calib-batches caps calibration data; with --stats or --scales there is none: drop it")
    if args.target_sqnr is not None and not args.val:
        raise OnnxqError("--target-sqnr needs --val DATA (the data the target is measured on)")
    if args.target_sqnr is not None and args.dynamic:
        raise OnnxqError("--target-sqnr applies to static quantization; drop --dynamic or --target-sqnr")
    if args.target_val_batches < 1:
        raise OnnxqError(f"--target-val-batches must be at least 1, got {args.target_val_batches}")
    guard(model_outputs("-o", args.output) if args.output is not None else [])  # -o "" before it becomes "."
    output = Path(args.output) if args.output is not None else default_output_path(args.model)
    stats = expand_stats_paths(args.stats) if args.stats else None
    report = Output("--report", args.report) if args.report is not None else None
    plot = Output("--report (its plot)", report_plot_path(Path(args.report))) \
        if args.report is not None and args.per_layer and Path(args.report).suffix == ".md" else None
    guard([*model_outputs("-o", output), report, plot], model=args.model, calib=args.calib, val=args.val,
          scales=args.scales, config=args.config, stats=stats)
    config = config_from_args(args)
    latency = latency_settings(args) if args.val else None
    if args.dynamic:
        return run_dynamic(args, config, output, latency)
    importer = scale_importer(args.scales, strict=args.strict) if args.scales else None
    target = None
    if args.target_sqnr is not None:
        from onnxq.recovery.mixed_precision import AccuracyTarget

        target = AccuracyTarget(sqnr_db=args.target_sqnr, max_float_share=args.max_float_share,
                                val_batches=args.target_val_batches)
    if args.ray is not None and not args.calib:
        raise OnnxqError("--ray calibrates --calib DATA; it does not apply to --stats or --scales")
    with ray_calibration(args) as collector:
        result = quantize(args.model, calib=args.calib, config=config, stats=[str(p) for p in stats or []] or None,
                          scales=importer, val=args.val, per_layer=args.per_layer, collector=collector,
                          latency=latency, target=target)
    result.output_path = output
    with AtomicGroup() as group:  # the model and its report appear together or not at all
        save_model(result.model, output, group=group)
        if args.report:
            stage_report(group, Path(args.report), result)
    if not args.quiet:
        for line in result.report.summary_lines():
            print(line)
    for warning in [] if args.quiet else unmatched_rules(config.overrides, result.model):
        print(f"warning: {printable(warning)}", file=sys.stderr)
    print(f"wrote {output}")
    if args.report:
        print(f"wrote {args.report}")
        if plot is not None and report_plot_path(Path(args.report)).exists():
            print(f"wrote {report_plot_path(Path(args.report))}")
    mixed = result.report.mixed_precision
    if mixed is not None and not mixed.ok:
        for line in mixed.summary_lines():
            print(line, file=sys.stderr)
        return 1
    validation = result.report.validation
    if args.min_sqnr is not None and validation is not None and validation.min_sqnr_db < args.min_sqnr:
        print(f"SQNR {validation.min_sqnr_db:.2f} dB is below --min-sqnr {args.min_sqnr}", file=sys.stderr)
        return 1
    return 0


def run_dynamic(args: argparse.Namespace, config, output: Path, latency) -> int:
    from onnxq.dynamic import quantize_dynamic

    if args.calib or args.stats or args.scales:
        raise OnnxqError("--dynamic needs no ranges: drop --calib/--stats/--scales")
    if args.report:
        raise OnnxqError("--report is not available with --dynamic yet; use --val for the comparison")
    result = quantize_dynamic(args.model, output, config, val=args.val, latency=latency)
    if not args.quiet:
        for line in result.summary_lines():
            print(line)
    print(f"wrote {result.output_path}")
    validation = result.validation
    if args.min_sqnr is not None and validation is not None and validation.min_sqnr_db < args.min_sqnr:
        print(f"SQNR {validation.min_sqnr_db:.2f} dB is below --min-sqnr {args.min_sqnr}", file=sys.stderr)
        return 1
    return 0


def report_plot_path(report: Path) -> Path:
    """Where the Markdown report's per-layer SQNR picture goes: beside it, ``<report stem>-sqnr.png``."""
    return report.with_name(report.stem + "-sqnr.png")


def stage_report(group: AtomicGroup, path: Path, result) -> None:
    from onnxq.handoff_report import render_markdown, report_payload

    payload = report_payload(result)
    if path.suffix != ".md":
        group.write_bytes(path, json_text(payload).encode())
        return
    plot, note = None, None
    validation = result.report.validation
    if validation is not None and validation.layers:
        from onnxq.validate.plot import HOW_TO_GET_PLOTS, layer_sqnr_png, plots_available

        if plots_available():
            png = report_plot_path(path)
            group.write_bytes(png, layer_sqnr_png(validation))
            plot = png.name
        else:
            note = f"no per-layer SQNR plot: {HOW_TO_GET_PLOTS}"
    elif validation is not None:
        note = "per-layer SQNR plot: add --per-layer"
    group.write_bytes(path, render_markdown(payload, plot, note).encode())
