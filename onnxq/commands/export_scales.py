"""``onnxq export-scales``: read a Q/DQ model's scales and write them for another toolchain."""

from __future__ import annotations

import argparse
import sys

from onnxq.commands.common import add_model_and_output, guard
from onnxq.outputs import Output
from onnxq.scales.formats import FORMATS, TRT_CACHE_ALGORITHMS, TRT_CACHE_DEFAULT_ALGORITHM, TRT_CACHE_DEFAULT_VERSION


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export-scales", help="write a Q/DQ model's scales as JSON, TensorRT cache or AIMET",
                              description="Read the scales of a Q/DQ ONNX model (keyed by the quantized tensor's "
                              "name) and write them in another toolchain's format.")
    add_model_and_output(p, "Q/DQ ONNX model", "file to write")
    p.add_argument("--format", choices=FORMATS, required=True,
                   help="json (onnxq), trt-cache (TensorRT calibration cache, per-tensor only), aimet (0.6.1)")
    p.add_argument("--trt-version", default=TRT_CACHE_DEFAULT_VERSION,
                   help=f"version number in the calibration cache header (default {TRT_CACHE_DEFAULT_VERSION})")
    p.add_argument("--algorithm", choices=TRT_CACHE_ALGORITHMS, default=TRT_CACHE_DEFAULT_ALGORITHM,
                   help="calibrator name in the calibration cache header")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    guard([Output("-o", args.output)], model=args.model)
    from onnxq.graph import load_model
    from onnxq.scales.io import save_scales
    from onnxq.scales.qdq_reader import read_qdq
    from onnxq.scales.trt_cache import skipped_on_export

    model = load_model(args.model)
    entries = read_qdq(model)
    table = {name: entry.params for name, entry in entries.items()}
    params = sorted(name for name, entry in entries.items() if entry.role == "weight")
    # no fingerprint: it identifies the float model the scales are for, which a Q/DQ model cannot name
    meta = {"json": {"param_names": params},
            "aimet": {"param_names": params},
            "trt-cache": {"trt_version": args.trt_version, "algorithm": args.algorithm, "param_names": params},
            }[args.format]
    if not table:
        print(f"warning: {args.model} has no Q/DQ nodes onnxq reads; writing an empty scales file", file=sys.stderr)
    save_scales(table, args.output, args.format, **meta)
    skipped = set(skipped_on_export(table)) | set(params)
    left_out = {"trt-cache": sum(1 for name in table if name in skipped),
                "aimet": sum(1 for p in table.values() if p.dtype not in ("int8", "uint8") or p.blockwise)}
    written = len(table) - left_out.get(args.format, 0)
    print(f"wrote {written} tensor scale(s) to {args.output} ({args.format})")
    return 0
