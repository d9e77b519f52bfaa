"""``onnxq lint``: check a Q/DQ model against a target's quantization rules (TensorRT: docs/tensorrt_rules.md)."""

from __future__ import annotations

import argparse

from onnxq.graph import load_model
from onnxq.trt.lint import LintOptions, findings_json, format_findings, has_errors, lint_model


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("lint", help="check a Q/DQ model against TensorRT's explicit-quantization rules",
                              description="Check a Q/DQ ONNX model against TensorRT's explicit-quantization rules. "
                              "Exit status 1 when there is an error finding, 0 otherwise.")
    p.add_argument("model", help="Q/DQ ONNX model")
    p.add_argument("--target", choices=["tensorrt"], default="tensorrt", help="rules to check (default tensorrt)")
    p.add_argument("--allow-int8-convtranspose", action="store_true",
                   help="accept quantized ConvTranspose (TensorRT lacks INT8 kernels for many configurations)")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    findings = lint_model(model, LintOptions(allow_int8_convtranspose=args.allow_int8_convtranspose))
    print(findings_json(findings) if args.json else format_findings(findings))
    return 1 if has_errors(findings) else 0
