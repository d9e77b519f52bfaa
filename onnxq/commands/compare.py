"""``onnxq compare MODEL --calib DATA --val DATA``: one calibration, every format, one table (and plots)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from onnxq.commands.common import add_calib_flags, add_selection_flags, config_from_args
from onnxq.errors import OnnxqError

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    from onnxq.compare.defaults import DEFAULT_FORMATS

    p = subparsers.add_parser(
        "compare", help="quantize a model in several precision formats and compare accuracy, size and speed",
        description="Calibrate once, quantize once per format (int8, int8-asym, uint8, fp8, w8, int4[-gN], "
                    "int4-asym[-gN]), validate every format against FP32 in one pass over the data, and write "
                    "DIR/compare.json, DIR/compare.md and PNG plots (with matplotlib: pip install 'onnxq[plots]').")
    p.add_argument("model", help="FP32 ONNX model")
    p.add_argument("--calib", required=True, metavar="DATA", help="calibration data (folder, .npz or 'random')")
    p.add_argument("--val", required=True, metavar="DATA", help="validation data (folder, .npz or 'random')")
    p.add_argument("--formats", default=",".join(DEFAULT_FORMATS),
                   help=f"comma-separated formats (default {','.join(DEFAULT_FORMATS)}); int4-g64 is int4 with "
                        "block size 64")
    p.add_argument("-o", "--output", metavar="DIR", help="output folder (default: MODEL.compare/ beside the model)")
    p.add_argument("--no-per-layer", action="store_true", help="skip the per-layer SQNR (faster)")
    p.add_argument("--latency-runs", type=int, default=5, metavar="N",
                   help="onnxruntime CPU runs per model for the median latency (0: skip)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads for latency (0: default)")
    p.add_argument("--no-plots", action="store_true", help="write JSON and Markdown only")
    add_calib_flags(p)
    add_selection_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from onnxq.atomic import write_json_atomic, write_text_atomic
    from onnxq.compare.plots import matplotlib_available, write_plots
    from onnxq.compare.report import payload, render_markdown
    from onnxq.compare.run import CompareOptions, compare_formats

    if args.format:
        raise OnnxqError("compare takes its formats from --formats, not --format")
    if args.latency_runs < 0:
        raise OnnxqError(f"--latency-runs must be >= 0, got {args.latency_runs}")
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    if not formats:
        raise OnnxqError("--formats is empty; name at least one format, e.g. --formats int8,fp8")
    model = Path(args.model)
    folder = Path(args.output) if args.output else model.with_name(f"{model.stem}.compare")
    if folder.exists() and not folder.is_dir():
        raise OnnxqError(f"output {folder} exists and is not a folder")
    if not folder.parent.exists():
        raise OnnxqError(f"output folder's parent does not exist: {folder.parent}")
    config = config_from_args(args)
    options = CompareOptions(formats=formats, per_layer=not args.no_per_layer, latency_runs=args.latency_runs,
                             threads=args.threads)
    result = compare_formats(args.model, args.calib, args.val, config, options)
    folder.mkdir(exist_ok=True)
    write_json_atomic(folder / "compare.json", payload(result))
    markdown = render_markdown(result)
    write_text_atomic(folder / "compare.md", markdown)
    print(markdown)
    if args.no_plots:
        pass
    elif matplotlib_available():
        for path in write_plots(result, folder):
            print(f"wrote {path}")
    else:
        print("plots skipped: matplotlib is not installed (pip install 'onnxq[plots]')")
    print(f"wrote {folder / 'compare.json'} and {folder / 'compare.md'}")
    return 0
