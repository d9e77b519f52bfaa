"""Store the float bias of Q/DQ-wrapped ops as int32 behind a DequantizeLinear.

onnxruntime's CPU provider fuses a ``DQ(A), DQ(B), C -> Gemm`` node unit into ``QGemm`` only when every input of
the Gemm, the bias C included, comes through a DQ, and the bias DQ reads int32 (onnxruntime qdq_selectors.cc,
``GemmNodeGroupSelector::Check``: "dt_bias == INT32"). The bias scale is the input scale times the weight scale
(per output channel when the weight is per channel) and its zero point 0, so the integer accumulator adds it
directly; rounding the bias to that grid is the only numerical change (at most half a step of the accumulator).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnxq.graph import GraphIndex, attr
from onnxq.passes.rewrite import NodeRewritePass, Rewrite

INT32_MAX = np.iinfo(np.int32).max


class QuantizeBias(NodeRewritePass):
    name = "quantize-bias"

    def __init__(self, op_types: frozenset[str]) -> None:
        self.op_types = op_types

    def summary(self, count: int) -> str:
        return f"stored {count} bias(es) as int32"

    def rewrite(self, node: onnx.NodeProto, ctx: Rewrite) -> list[onnx.NodeProto] | None:
        """A DequantizeLinear of the int32 bias (it reads initializers only), then ``node`` reading it."""
        if node.op_type not in self.op_types or node.domain not in ("", "ai.onnx") or len(node.input) < 3:
            return None
        if attr(node, "beta", 1.0) != 1.0:
            return None
        index = ctx.index
        scales = [self._dq_scale(node.input[i], index) for i in (0, 1)]
        bias = node.input[2]
        if scales[0] is None or scales[1] is None or not index.is_initializer(bias) or bias in index.graph_inputs:
            return None
        b = index.array(bias).astype(np.float64)
        if b.ndim != 1:
            return None
        scale = (np.float64(scales[0]) * np.broadcast_to(scales[1], b.shape)).astype(np.float32)
        if np.any(scale <= 0) or np.any(np.abs(np.rint(b / scale)) > INT32_MAX):
            return None
        names = [ctx.constant(bias, "int32", np.rint(b / scale).astype(np.int32)),
                 ctx.constant(bias, "int32_scale", scale),
                 ctx.constant(bias, "int32_zero_point", np.zeros(b.shape, np.int32))]
        dequantized = ctx.name(bias, "int32_dequantized")
        dq = helper.make_node("DequantizeLinear", names, [dequantized], axis=0,
                              name=ctx.name(bias, "DequantizeLinear"))
        node.input[2] = dequantized
        ctx.replaced.add(bias)
        return [dq, node]

    @staticmethod
    def _dq_scale(tensor: str, index: GraphIndex) -> np.ndarray | None:
        """The constant scale of the DequantizeLinear producing ``tensor``, or None."""
        producer = index.producer.get(tensor)
        if producer is None or producer.op_type != "DequantizeLinear" or not index.is_initializer(producer.input[1]):
            return None
        return index.array(producer.input[1]).astype(np.float64)

