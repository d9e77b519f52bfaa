"""The nodes of an exact (erf) GELU written out as exporters write it, found on graph edges.

torch's ``nn.GELU()`` (and BERT-style exports) write ``GELU(x) = x * 0.5 * (1 + erf(x / sqrt(2)))`` as five nodes:
``Div(x, sqrt 2)`` (or ``Mul(x, 1 / sqrt 2)``) -> ``Erf`` -> ``Add(1)`` -> ``Mul(x, .)`` -> ``Mul(0.5)``, the half
either last or first (``Mul(x, 0.5)`` read by the product). onnxruntime fuses the whole pattern into one ``Gelu``
kernel (its ``GeluFusion``), but only when every node of it is there in float: one node taken into the integer
region (the trailing ``Mul(0.5)`` has a ``QLinearMul`` kernel) leaves ``Div``, ``Erf``, ``Add`` and ``Mul`` as four
float kernels over the widest tensor of an MLP (docs/ort_cpu_rules.md 3.24).
"""

from __future__ import annotations

import math

import onnx

from onnxq.graph import GraphIndex, node_name

#: how close a constant must be to sqrt(2), 1/sqrt(2), 1 or 0.5 to be read as one
TOLERANCE = 1e-3


def _scalar(index: GraphIndex, tensor: str) -> float | None:
    if not index.is_initializer(tensor):
        return None
    value = index.array(tensor)
    return float(value.reshape(-1)[0]) if value.size == 1 else None


def _constant_operand(index: GraphIndex, node: onnx.NodeProto | None, op: str,
                      value: float) -> tuple[onnx.NodeProto, str] | None:
    """``node`` is ``op(t, c)`` (either order for Mul/Add) with the scalar ``c`` close to ``value``: (node, t)."""
    if node is None or node.op_type != op or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
        return None
    for k in ((1,) if op == "Div" else (1, 0)):
        c = _scalar(index, node.input[k])
        if c is not None and math.isclose(c, value, rel_tol=TOLERANCE):
            return node, node.input[1 - k]
    return None


def _only_reader(index: GraphIndex, tensor: str) -> onnx.NodeProto | None:
    return None if tensor in index.graph_outputs else index.only_consumer(tensor)


def erf_gelu(index: GraphIndex, erf: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    """The five nodes of the GELU around ``erf``, or None when ``erf`` is not the heart of one."""
    scaled = (_constant_operand(index, index.producer.get(erf.input[0]), "Div", math.sqrt(2.0))
              or _constant_operand(index, index.producer.get(erf.input[0]), "Mul", 1.0 / math.sqrt(2.0)))
    if scaled is None:
        return None
    scale, x = scaled
    plus_one = _constant_operand(index, _only_reader(index, erf.output[0]), "Add", 1.0)
    if plus_one is None:
        return None
    product = _only_reader(index, plus_one[0].output[0])
    if product is None or product.op_type != "Mul" or product.domain not in ("", "ai.onnx") or len(product.input) != 2:
        return None
    other = product.input[1] if product.input[0] == plus_one[0].output[0] else product.input[0]
    if other == x:  # x * (1 + erf) then * 0.5
        half = _constant_operand(index, _only_reader(index, product.output[0]), "Mul", 0.5)
    else:  # (0.5 * x) * (1 + erf)
        half = _constant_operand(index, index.producer.get(other), "Mul", 0.5)
        half = half if half is not None and half[1] == x and _only_reader(index, other) is product else None
    if half is None:
        return None
    return [scale, erf, plus_one[0], product, half[0]]


def gelu_input(index: GraphIndex, nodes: list[onnx.NodeProto]) -> str:
    """The tensor ``x`` of the GELU whose nodes :func:`erf_gelu` found (the scaling node's non-constant input)."""
    scale = nodes[0]
    return scale.input[1] if index.is_initializer(scale.input[0]) else scale.input[0]


def gelu_output(nodes: list[onnx.NodeProto]) -> onnx.NodeProto:
    """The node of ``nodes`` that writes the GELU's result: the one whose output no other node of the five reads."""
    read = {name for node in nodes for name in node.input}
    return next(node for node in nodes if node.output[0] not in read)


def erf_gelu_nodes(graph: onnx.GraphProto, index: GraphIndex) -> set[str]:
    """Names of every node that belongs to a written-out erf GELU of ``graph``."""
    found: set[str] = set()
    for node in graph.node:
        if node.op_type == "Erf" and node.domain in ("", "ai.onnx"):
            nodes = erf_gelu(index, node)
            if nodes is not None:
                found.update(node_name(n) for n in nodes)
    return found
