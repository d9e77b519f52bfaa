"""``onnxq calibrate MODEL --calib SHARD -o stats.npz``: statistics of one data shard, to merge later."""

from __future__ import annotations

import argparse

from onnxq.commands.common import add_calibration_flags, add_model_and_output, config_from_args, guard, ray_calibration
from onnxq.errors import OnnxqError
from onnxq.outputs import Output


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("calibrate", help="collect calibration statistics of a data shard (mergeable)",
                              description="Run the calibration of one shard and save its statistics (not its "
                              "ranges); 'onnxq quantize MODEL --stats \"stats_*.npz\"' merges any number of them. "
                              "Shards are calibrated without equalization (each would rescale by its own data): "
                              "quantize --calib DATA [--ray] equalizes.")
    add_model_and_output(p, "FP32 ONNX model", "statistics file to write (.npz)")
    p.add_argument("--calib", required=True, metavar="DATA", help="this shard's data (folder or .npz stack)")
    add_calibration_flags(p)
    p.add_argument("--requantize", action="store_true", help="strip the Q/DQ of an already quantized model first")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from onnxq.calib.stats import save_stats
    from onnxq.graph import fingerprint, load_model
    from onnxq.pipeline import calibrate, prepare
    from onnxq.plan import build_plan

    if not args.output.endswith(".npz"):
        raise OnnxqError(f"statistics files end in .npz, got {args.output}")
    guard([Output("-o", args.output)], model=args.model, calib=args.calib, config=args.config)
    config = config_from_args(args)
    with ray_calibration(args) as collector:
        prepared, _ = prepare(load_model(args.model), config)
        plan = build_plan(prepared, config)
        if collector is not None:
            calibrators, batches = collector(prepared, plan, args.calib, config, None)
        else:
            calibrators, batches = calibrate(prepared, plan, args.calib, config)
    save_stats(args.output, calibrators, fingerprint(prepared), batches)
    print(f"wrote statistics of {len(calibrators)} tensor(s) over {batches} batch(es) to {args.output}")
    return 0
