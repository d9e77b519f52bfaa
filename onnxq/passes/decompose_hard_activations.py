"""Rewrite HardSwish and HardSigmoid into Add, Clip and Mul, ops that onnxruntime's CPU provider runs in integer.

onnxruntime has no integer kernel for HardSwish or HardSigmoid (neither is in its QDQ selector table, see
docs/ort_cpu_rules.md); between two QLinearConvs such an op costs a DequantizeLinear, the float op and a
QuantizeLinear over the whole tensor. The same functions in ops that do fuse (ONNX operator definitions):

    HardSigmoid(x; alpha, beta) = max(0, min(1, alpha * x + beta)) = alpha * Clip(x + beta / alpha, 0, 1 / alpha)
    HardSwish(x) = x * HardSigmoid(x; 1/6, 1/2) = (x * Clip(x + 3, 0, 6)) * (1/6)

so ``Add`` (QLinearAdd, with the Clip absorbed into its node unit) and two ``Mul`` (QLinearMul). When every reader
of a HardSwish is a Conv whose weight nothing else reads, the final ``* (1/6)`` goes into those weights instead
(a convolution is linear in its input and the bias is added after it), saving one op per HardSwish. Float in, float
out, equal up to float rounding. Only for alpha > 0.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxq.graph import GraphIndex, attr, node_name
from onnxq.passes.rewrite import NodeRewritePass, Rewrite


class DecomposeHardActivations(NodeRewritePass):
    name = "decompose-hard-activations"

    def __init__(self, op_types: frozenset[str] = frozenset({"HardSwish", "HardSigmoid"})) -> None:
        self.op_types = op_types

    def summary(self, count: int) -> str:
        return f"rewrote {count} HardSwish/HardSigmoid node(s) as Add, Clip and Mul"

    def rewrite(self, node: onnx.NodeProto, ctx: Rewrite) -> list[onnx.NodeProto] | None:
        if node.op_type not in self.op_types or node.domain not in ("", "ai.onnx"):
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
        if self.node.op_type == "HardSwish" and _scale_reader_weights(index, y, alpha):
            nodes.append(helper.make_node("Mul", [x, clipped], [y], name=self.out("Mul")))
        elif self.node.op_type == "HardSwish":
            product = self.out("product")
            nodes += [helper.make_node("Mul", [x, clipped], [product], name=self.out("Mul")),
                      helper.make_node("Mul", [product, self.const("alpha", alpha)], [y], name=self.out("Scale"))]
        else:
            nodes.append(helper.make_node("Mul", [clipped, self.const("alpha", alpha)], [y], name=self.out("Scale")))
        return nodes


def _scale_reader_weights(index: GraphIndex, tensor: str, alpha: float) -> bool:
    """Multiply the weights of every Conv reading ``tensor`` by ``alpha``, when all its readers are such Convs with
    weights of their own (initializers no other node reads); False (and nothing changed) otherwise."""
    readers = index.consumers.get(tensor, [])
    if not readers or tensor in index.graph_outputs:
        return False
    weights = []
    for reader, i in readers:
        if reader.op_type != "Conv" or reader.domain not in ("", "ai.onnx") or i != 0 or len(reader.input) < 2:
            return False
        w = reader.input[1]
        if not index.is_initializer(w) or len(index.consumers.get(w, [])) != 1 or w in index.graph_inputs:
            return False
        weights.append(w)
    for w in weights:
        init = index.initializers[w]
        init.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(init) * np.float32(alpha)).astype(
            numpy_helper.to_array(init).dtype), w))
    return True
