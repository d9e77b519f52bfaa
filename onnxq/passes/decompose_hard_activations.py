"""Rewrite HardSwish and HardSigmoid into Add, Clip and Mul, ops that onnxruntime's CPU provider runs in integer.

onnxruntime has no integer kernel for HardSwish or HardSigmoid (neither is in its QDQ selector table, see
docs/ort_cpu_rules.md); between two QLinearConvs such an op costs a DequantizeLinear, the float op and a
QuantizeLinear over the whole tensor. The same functions in ops that do fuse (ONNX operator definitions):

    HardSigmoid(x; alpha, beta) = max(0, min(1, alpha * x + beta)) = alpha * Clip(x + beta / alpha, 0, 1 / alpha)
    HardSwish(x) = x * HardSigmoid(x; 1/6, 1/2) = (x * Clip(x + 3, 0, 6)) * (1/6)

so ``Add`` (QLinearAdd, with the Clip absorbed into its node unit) and two ``Mul`` (QLinearMul). When every path
from a HardSwish or HardSigmoid ends in a Conv, Gemm or MatMul whose weight nothing else reads, through ops linear
in it (pooling, reshapes, the squeeze-and-excitation ``Mul``), the final ``* alpha`` goes into those weights instead
(a convolution is linear in its input and the bias is added after it), saving one integer op and one rounding per
activation.
Float in, float out, equal up to float rounding. Only for alpha > 0.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxq.graph import GraphIndex, attr, node_name
from onnxq.passes.rewrite import NodeRewritePass, Rewrite


class DecomposeHardActivations(NodeRewritePass):
    name = "decompose-hard-activations"

    def __init__(self, op_types: frozenset[str] = frozenset({"HardSwish", "HardSigmoid"}),
                 keep: frozenset[str] = frozenset()) -> None:
        self.op_types = op_types
        self.keep = keep  # names of nodes left as they are (a float stem's activations, fused into its float Conv)

    def summary(self, count: int) -> str:
        return f"rewrote {count} HardSwish/HardSigmoid node(s) as Add, Clip and Mul"

    def rewrite(self, node: onnx.NodeProto, ctx: Rewrite) -> list[onnx.NodeProto] | None:
        if node.op_type not in self.op_types or node.domain not in ("", "ai.onnx") or node_name(node) in self.keep:
            return None
        alpha, beta = (1 / 6, 0.5) if node.op_type == "HardSwish" else (float(attr(node, "alpha", 0.2)),
                                                                        float(attr(node, "beta", 0.5)))
        if alpha <= 0:
            return None
        return _Rewriter(node, ctx).rewrite(alpha, beta)


class _Rewriter:
    """The Add/Clip/Mul nodes replacing one HardSwish or HardSigmoid, with names derived from it."""

    def __init__(self, node: onnx.NodeProto, ctx: Rewrite) -> None:
        self.node = node
        self.base = node_name(node)
        self.ctx = ctx

    def const(self, suffix: str, value: float) -> str:
        return self.ctx.constant(self.base, suffix, np.array(value, np.float32))

    def out(self, suffix: str) -> str:
        return self.ctx.name(self.base, suffix)

    def rewrite(self, alpha: float, beta: float) -> list[onnx.NodeProto]:
        index = self.ctx.index
        x, y = self.node.input[0], self.node.output[0]
        shifted, clipped = self.out("shifted"), self.out("clipped")
        nodes = [helper.make_node("Add", [x, self.const("offset", beta / alpha)], [shifted], name=self.out("Add")),
                 helper.make_node("Clip", [shifted, self.const("min", 0.0), self.const("max", 1 / alpha)],
                                  [clipped], name=self.out("Clip"))]
        folded = _scale_reader_weights(index, y, alpha)
        if self.node.op_type == "HardSwish" and folded:
            nodes.append(helper.make_node("Mul", [x, clipped], [y], name=self.out("Mul")))
        elif self.node.op_type == "HardSwish":
            product = self.out("product")
            nodes += [helper.make_node("Mul", [x, clipped], [product], name=self.out("Mul")),
                      helper.make_node("Mul", [product, self.const("alpha", alpha)], [y], name=self.out("Scale"))]
        elif folded:  # HardSigmoid(x) / alpha = Clip(x + beta / alpha, 0, 1 / alpha)
            nodes[-1].output[0] = y
        else:
            nodes.append(helper.make_node("Mul", [clipped, self.const("alpha", alpha)], [y], name=self.out("Scale")))
        return nodes


# ops linear in input 0 whose input 1 is a weight: Conv (bias added after the convolution), Gemm (alpha * A * B +
# beta * C: scaling A scales the A * B term only), MatMul
_LINEAR_WEIGHTED = frozenset({"Conv", "Gemm", "MatMul"})
# ops that pass a positive factor on their data input through to their output (f(a * x) = a * f(x), a > 0)
# ops that read only the shape of their input, which a positive factor leaves as it is
_SHAPE_ONLY = frozenset({"Shape", "Size"})
_SCALE_PASSING = frozenset({"GlobalAveragePool", "AveragePool", "MaxPool", "Flatten", "Reshape", "Squeeze", "Identity",
                            "Unsqueeze", "Transpose"})


def _scale_reader_weights(index: GraphIndex, tensor: str, alpha: float) -> bool:
    """Multiply by ``alpha`` the weights of the Conv/Gemm/MatMul nodes that ``tensor`` reaches through ops linear in
    it (pooling, reshapes, a ``Mul`` by another tensor: the squeeze-and-excitation product; ``Shape`` readers are
    passed over), when every path ends in
    such a node with a weight of its own (an initializer no other node reads); False (and nothing changed) otherwise."""
    weights: list[str] = []
    visited: set[str] = set()
    pending = [tensor]
    while pending:
        current = pending.pop()
        readers = index.consumers.get(current, [])
        if not readers or current in index.graph_outputs:
            return False
        for reader, i in readers:
            name = node_name(reader)
            if reader.domain not in ("", "ai.onnx") or name in visited:
                return False  # a node reached twice would be scaled twice (Mul of two scaled tensors)
            visited.add(name)
            if reader.op_type in _LINEAR_WEIGHTED and i == 0 and len(reader.input) > 1:
                w = reader.input[1]
                if not index.is_initializer(w) or len(index.consumers.get(w, [])) != 1 or w in index.graph_inputs:
                    return False
                weights.append(w)
            elif reader.op_type in _SHAPE_ONLY:
                continue  # reads the shape alone (paddle2onnx's Flatten: Reshape(x, Concat(Shape(x)[:1], -1)))
            elif (reader.op_type in _SCALE_PASSING and i == 0) or \
                    (reader.op_type == "Mul" and reader.input[0] != reader.input[1]):
                pending.append(reader.output[0])
            else:
                return False
    for w in weights:
        init = index.initializers[w]
        init.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(init) * np.float32(alpha)).astype(
            numpy_helper.to_array(init).dtype), w))
    return True
