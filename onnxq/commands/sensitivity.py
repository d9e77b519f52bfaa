"""``onnxq sensitivity MODEL --calib DATA --val DATA [-o DIR]``: which nodes cost the most when quantized."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from onnxq.commands.common import (
    add_calib_flags,
    add_ray_flags,
    add_selection_flags,
    config_from_args,
    guard,
    ray_collector,
    shard_progress,
)
from onnxq.errors import OnnxqError
from onnxq.outputs import Output


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "sensitivity", help="per-node quantization sensitivity (only one node quantized / only one node float)",
        description="Calibrate once, then measure on the validation data the worst-output SQNR and cosine with only "
        "each node quantized and with only each node left float, all in one onnxruntime session whose Q/DQ are "
        "switched by run-time gates. Prints a ranked table; with -o also writes sensitivity.json and "
        "sensitivity.png (the plot needs matplotlib: pip install 'onnxq[plots]').")
    p.add_argument("model", help="FP32 ONNX model")
    p.add_argument("--calib", required=True, metavar="DATA", help="calibration data (folder or .npz stack)")
    p.add_argument("--val", required=True, metavar="DATA", help="validation data (folder or .npz stack)")
    p.add_argument("--val-batches", type=int, default=2, metavar="N",
                   help="validation batches per measurement (default 2; the cost is about 2 x nodes x N runs)")
    p.add_argument("-o", "--output-dir", metavar="DIR", help="write sensitivity.json and sensitivity.png here")
    p.add_argument("--top", type=int, metavar="N", help="print only the N most harmful nodes")
    p.add_argument("--equalize", action=argparse.BooleanOptionalAction, default=None,
                   help="analyse the model after quantize's equalization (default on, as in quantize)")
    add_calib_flags(p)
    add_selection_flags(p)
    add_ray_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from onnxq.atomic import write_json_atomic
    from onnxq.data import BatchSource
    from onnxq.graph import load_model
    from onnxq.recovery.sensitivity import analyze, calibrate_model, plot, table_lines

    if args.val_batches < 1:
        raise OnnxqError(f"--val-batches must be at least 1, got {args.val_batches}")
    out_dir = Path(args.output_dir) if args.output_dir else None
    guard([Output("-o", out_dir, folder=True)] if out_dir is not None else [], model=args.model, calib=args.calib,
          val=args.val, config=args.config)
    config = config_from_args(args)
    with shard_progress() as shards:
        collector = ray_collector(args, shards)  # the calibration runs on Ray; the per-node sweep stays local
        model = load_model(args.model)
        val = BatchSource(model, args.val, max_batches=args.val_batches, batch_size=config.batch_size)
        calibrated = calibrate_model(model, args.calib, config, collector)
    report, _ = analyze(calibrated, val)
    for line in table_lines(report, args.top):
        print(line)
    print("time (wall / CPU): " + ", ".join(f"{k} {v:.1f}s / {report.cpu_seconds.get(k, 0):.1f}s"
                                            for k, v in report.seconds.items()))
    if out_dir is not None:
        out_dir.mkdir(exist_ok=True)
        write_json_atomic(out_dir / "sensitivity.json", report.as_dict())
        print(f"wrote {out_dir / 'sensitivity.json'}")
        png = out_dir / "sensitivity.png"
        if plot(report, png):
            print(f"wrote {png}")
        else:
            print("no plot: matplotlib is not installed (pip install 'onnxq[plots]')", file=sys.stderr)
    return 0
