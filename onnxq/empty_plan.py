"""Why a plan came out empty, in one line the user can act on.

Four cases read differently: the model has no weighted op at all; it is integer-quantized already (ddddocr 1.6.1's
``common_old.onnx`` holds 21 ``ConvInteger`` behind ``DynamicQuantizeLinear``: onnxq quantizes float models, and
``--requantize`` strips only QuantizeLinear/DequantizeLinear); its weighted ops are all inside the subgraphs of
control-flow nodes (If/Loop/Scan, which onnxq does not quantize: a ``torch.jit.script`` export of a model that
branches on an input, such as silero-vad 6.2's sample-rate ``If``, holds its whole network there); or the main graph
has weighted ops that the user's exclusions or non-constant weights left out.
"""

from __future__ import annotations

from collections import Counter

import onnx

from onnxq.graph import node_name, subgraphs
from onnxq.ops import WEIGHTED_OPS

#: control-flow nodes named in the message (the rest are counted)
SHOWN = 3
#: integer kernels of a model quantized by other means (onnxruntime's dynamic and static QOperator formats)
INTEGER_OPS = frozenset({"ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "DynamicQuantizeLinear",
                         "QGemm", "DynamicQuantizeMatMul", "QAttention", "QLinearAdd", "QLinearMul"})


def _weighted(graph: onnx.GraphProto) -> Counter[str]:
    """Weighted ops of ``graph`` and of every subgraph nested in it, by op type."""
    counts: Counter[str] = Counter()
    for node in graph.node:
        if node.op_type in WEIGHTED_OPS and node.domain in ("", "ai.onnx"):
            counts[node.op_type] += 1
        for sub in subgraphs(node):
            counts += _weighted(sub)
    return counts


def _listed(counts: Counter[str]) -> str:
    return ", ".join(f"{n} {op}" for op, n in sorted(counts.items()))


def explain_empty_plan(model: onnx.ModelProto) -> str:
    """The error message for a plan with no tensor to quantize (``model``: the prepared float model)."""
    main: Counter[str] = Counter(n.op_type for n in model.graph.node
                                 if n.op_type in WEIGHTED_OPS and n.domain in ("", "ai.onnx"))
    holders = [(node, counts) for node in model.graph.node
               if (counts := sum((_weighted(g) for g in subgraphs(node)), Counter()))]
    if main:
        return (f"nothing to quantize: none of the main graph's weighted nodes ({_listed(main)}) is planned for "
                "quantization (check --exclude-op/--exclude-node, and that their weights are constants)")
    if holders:
        inner = sum((c for _, c in holders), Counter())
        names = ", ".join(f"{n.op_type} {node_name(n)!r}" for n, _ in holders[:SHOWN])
        more = f" and {len(holders) - SHOWN} more" if len(holders) > SHOWN else ""
        return (f"nothing to quantize: the model's weighted nodes ({_listed(inner)}) are all inside the subgraphs "
                f"of {names}{more}, and onnxq quantizes the main graph only; export the branch you deploy without "
                "the control flow (e.g. with the input its condition reads fixed)")
    integer = Counter(n.op_type for n in model.graph.node if n.op_type in INTEGER_OPS)
    if integer:
        return (f"nothing to quantize: the model is integer-quantized already ({_listed(integer)}) and has no float "
                "Conv, ConvTranspose, Gemm or MatMul node; quantize its float original")
    return "nothing to quantize: the model has no Conv, ConvTranspose, Gemm or MatMul node"
