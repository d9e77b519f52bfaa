"""``onnxq inspect MODEL``: op histogram, Q/DQ coverage per op type, scales."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("inspect", help="op histogram, Q/DQ coverage and scales of a model")
    p.add_argument("model", help="ONNX model (float or quantized)")
    p.add_argument("--scales", type=int, default=20, metavar="N", help="list at most N scales (default 20; 0: all)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from onnxq.graph import load_model
    from onnxq.inspect_model import inspect_model

    info = inspect_model(load_model(args.model))
    print(f"opset {info.opset}; {sum(info.ops.values())} nodes; weights {info.initializer_bytes / 1e6:.2f} MB")
    print(f"{'op type':<24} {'nodes':>6} {'Q/DQ-fed':>9}")
    for op, n in sorted(info.ops.items(), key=lambda kv: (-kv[1], kv[0])):
        covered = info.coverage.get(op)
        cov = f"{covered[0]}/{covered[1]}" if covered else "-"
        print(f"{op:<24} {n:>6} {cov:>9}")
    if info.scales:
        shown = info.scales if args.scales == 0 else info.scales[: args.scales]
        print(f"scales ({len(info.scales)} quantized tensors):")
        for s in shown:
            where = (f"block-wise axis {s.axis} block {s.block_size} x{s.channels}" if s.block_size
                     else f"per-channel axis {s.axis} x{s.channels}" if s.axis is not None else "per-tensor")
            rng = f"{s.scale_min:.4g}" if s.scale_min == s.scale_max else f"{s.scale_min:.4g}..{s.scale_max:.4g}"
            zp = f"{s.zero_point_min}" if s.zero_point_min == s.zero_point_max else \
                f"{s.zero_point_min}..{s.zero_point_max}"
            print(f"  {s.tensor[:48]:<48} {s.dtype:<5} {where:<24} scale {rng} zp {zp}")
        if len(shown) < len(info.scales):
            print(f"  ... {len(info.scales) - len(shown)} more (--scales 0 lists all)")
    else:
        print("no Q/DQ scales: a float model")
    return 0
