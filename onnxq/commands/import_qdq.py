"""``onnxq import-qdq QDQ.onnx -o scales.json [--fp32 MODEL.onnx]``: the scales of a Q/DQ model exported from a torch
fake-quant model (torch.fake_quantize_* through the legacy exporter, pytorch-quantization, ModelOpt), as onnxq JSON.

Without ``--fp32`` the keys are the Q/DQ model's tensor names (see :mod:`onnxq.scales.qdq_reader`). With ``--fp32``
(the float export of the same model, the one to quantize) they are re-keyed to that model's planned tensors by
value (:mod:`onnxq.scales.qdq_keys`), so that ``onnxq quantize MODEL.onnx --scales scales.json`` finds them.
"""

from __future__ import annotations

import argparse
import logging

from onnxq.commands.common import add_model_and_output
from onnxq.errors import OnnxqError
from onnxq.rules import TARGET_RULES, TENSORRT

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("import-qdq", help="read a torch fake-quant Q/DQ export's scales into onnxq JSON",
                              description="Read the QuantizeLinear/DequantizeLinear scales of a Q/DQ ONNX model "
                              "exported from torch fake quant and write them as an onnxq scales file.")
    add_model_and_output(p, "Q/DQ ONNX model (torch fake-quant export, opset >= 13)",
                         "scales file to write (onnxq JSON)")
    p.add_argument("--fp32", metavar="MODEL", help="the FP32 export of the same model: key the scales by its "
                   "planned tensor names (matched by value) and record its fingerprint")
    p.add_argument("--target", choices=tuple(TARGET_RULES), default=TENSORRT.name,
                   help="with --fp32: the target whose plan the scales are matched to (default: tensorrt)")
    p.add_argument("--strict", action="store_true", help="with --fp32: fail unless every planned tensor gets a scale")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from onnxq.atomic import write_text_atomic
    from onnxq.commands.common import guard
    from onnxq.config import QuantConfig
    from onnxq.graph import fingerprint, load_model
    from onnxq.outputs import Output
    from onnxq.pipeline import prepare
    from onnxq.scales.io import dumps_scales
    from onnxq.scales.qdq_reader import read_qdq

    guard([Output("-o", args.output)], model=[args.model, args.fp32] if args.fp32 else args.model)
    qdq = load_model(args.model)
    if args.fp32 is None:
        entries = read_qdq(qdq)
        if not entries:
            raise OnnxqError(f"{args.model} has no int8/uint8 QuantizeLinear/DequantizeLinear nodes to read")
        table = {name: e.params for name, e in entries.items()}
        weights = sorted(n for n, e in entries.items() if e.role == "weight")
        text = dumps_scales(table, "json", param_names=weights)
        write_text_atomic(args.output, text)
        print(f"wrote {len(table)} tensor scale(s) to {args.output}, keyed by the Q/DQ model's tensor names")
        return 0

    from onnxq.scales.qdq_keys import match_to_fp32

    config = QuantConfig(target=args.target)
    fp32 = load_model(args.fp32)
    result = match_to_fp32(qdq, fp32, config)
    for note in result.notes:
        log.warning("%s", note)
    if not result.table:
        raise OnnxqError(f"no scale of {args.model} matches a tensor of {args.fp32}'s plan; are they exports of the "
                         "same model with the same weights?")
    if result.uncovered:
        msg = (f"{len(result.uncovered)} planned tensor(s) of {args.fp32} get no scale from {args.model}, e.g. "
               f"{result.uncovered[:3]}")
        if args.strict:
            raise OnnxqError(msg + " (--strict)")
        print(f"warning: {msg}; onnxq quantize keeps those activations float and computes weight scales")
    if result.unused_keys:
        print(f"note: {len(result.unused_keys)} Q/DQ tensor(s) match no planned tensor, e.g. {result.unused_keys[:3]}")
    prepared, _ = prepare(fp32, config)
    weights = [n for n in result.table if n in {i.name for i in prepared.graph.initializer}]
    text = dumps_scales(result.table, "json", fingerprint=fingerprint(prepared), param_names=weights)
    write_text_atomic(args.output, text)
    print(f"wrote {len(result.table)} tensor scale(s) to {args.output}, keyed by {args.fp32}'s tensor names "
          f"({len(result.renamed)} renamed)")
    return 0
