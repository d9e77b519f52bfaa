"""``onnxq lint``: check a Q/DQ model against a target's quantization rules (TensorRT: docs/tensorrt_rules.md)."""

from __future__ import annotations

import argparse

from onnxq.commands.common import add_json_flag, print_result


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("lint", help="check a Q/DQ model against TensorRT's explicit-quantization rules",
                              description="Check a Q/DQ ONNX model against TensorRT's explicit-quantization rules. "
                              "Exit status 1 when there is an error finding, 0 otherwise.")
    p.add_argument("model", help="Q/DQ ONNX model")
    p.add_argument("--target", choices=["tensorrt"], default="tensorrt", help="rules to check (default tensorrt)")
    p.add_argument("--allow-int8-convtranspose", action="store_true",
                   help="accept quantized ConvTranspose (TensorRT lacks INT8 kernels for many configurations)")
    add_json_flag(p, "the findings")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from onnxq.graph import load_model
    from onnxq.trt.lint import LintOptions, findings_payload, format_findings, has_errors, lint_model

    model = load_model(args.model)
    findings = lint_model(model, LintOptions(allow_int8_convtranspose=args.allow_int8_convtranspose))
    print_result(args, format_findings(findings), findings_payload(findings))
    return 1 if has_errors(findings) else 0
