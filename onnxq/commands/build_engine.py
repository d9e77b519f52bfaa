"""``onnxq build-engine``: build a TensorRT engine from a Q/DQ model (explicit quantization), or print trtexec's."""

from __future__ import annotations

import argparse
from pathlib import Path

from onnxq.commands.common import add_model_and_output, guard
from onnxq.errors import OnnxqError
from onnxq.outputs import Output


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("build-engine", help="build a TensorRT engine from a Q/DQ model",
                              description="Build a TensorRT engine with explicit quantization (the model's Q/DQ "
                              "scales; no calibrator). Needs the tensorrt package and an NVIDIA GPU, unless "
                              "--print-trtexec.")
    add_model_and_output(p, "Q/DQ ONNX model", "engine file to write (e.g. model.plan)")
    p.add_argument("--fp16", action="store_true", help="let unquantized layers run in FP16 (TensorRT 11: the "
                   "graph's own FP16 layers, from 'onnxq quantize --float-rest fp16')")
    p.add_argument("--shapes", action="append", metavar="NAME:DxD..",
                   help="input shapes, e.g. x:1x3x640x640 (the opt shape; also min and max unless given)")
    p.add_argument("--min-shapes", action="append", metavar="NAME:DxD..", help="minimum shapes of dynamic inputs")
    p.add_argument("--max-shapes", action="append", metavar="NAME:DxD..", help="maximum shapes of dynamic inputs")
    p.add_argument("--workspace", type=int, metavar="MiB", help="workspace memory pool limit in MiB")
    p.add_argument("--print-trtexec", action="store_true",
                   help="print the equivalent trtexec command instead of building")
    p.add_argument("--trt-version", type=int, metavar="MAJOR",
                   help="TensorRT major version the trtexec command is for (default: installed, else 10)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from onnxq.graph import load_model
    from onnxq.trt.build import BuildOptions, build_engine, has_fp16_tensors, installed_trt_major, precision_mode
    from onnxq.trt.shapes import build_profile, parse_shapes
    from onnxq.trt.trtexec import format_command, trtexec_command

    if args.workspace is not None and args.workspace <= 0:
        raise OnnxqError(f"--workspace must be a positive number of MiB, got {args.workspace}")
    if not args.print_trtexec:
        guard([Output("-o", args.output)], model=args.model)
    model = load_model(args.model)
    profile = build_profile(model, parse_shapes(args.shapes, "--shapes"), parse_shapes(args.min_shapes, "--min-shapes"),
                            parse_shapes(args.max_shapes, "--max-shapes"))
    if args.print_trtexec:
        major = args.trt_version or installed_trt_major() or 10
        mode = precision_mode(major, args.fp16, has_fp16_tensors(model))
        cmd = trtexec_command(args.model, args.output, mode=mode, fp16=args.fp16, profile=profile,
                              workspace_mib=args.workspace, trt_major=major,
                              layer_info=Path(args.output).with_suffix(".layers.json"))
        print(format_command(cmd))
        return 0
    report = build_engine(args.model, args.output, profile, BuildOptions(fp16=args.fp16, workspace_mib=args.workspace,
                                                                         verbose=args.verbose >= 2))
    print(report.summary())
    return 0
