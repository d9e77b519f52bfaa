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
from onnx import helper, numpy_helper

from onnxq.graph import GraphIndex, all_names, unique_name
from onnxq.passes.base import InPlacePass, PassResult

INT32_MAX = np.iinfo(np.int32).max


class QuantizeBias(InPlacePass):
    name = "quantize-bias"

    def __init__(self, op_types: frozenset[str]) -> None:
        self.op_types = op_types

    def call(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        index = GraphIndex.build(graph)
        taken = all_names(graph)
        added: list[onnx.NodeProto] = []
        inits: list[onnx.TensorProto] = []
        replaced: set[str] = set()
        for node in graph.node:
            if node.op_type not in self.op_types or node.domain not in ("", "ai.onnx") or len(node.input) < 3:
                continue
            if any(a.name == "beta" and helper.get_attribute_value(a) != 1.0 for a in node.attribute):
                continue
            scales = [self._dq_scale(node.input[i], index) for i in (0, 1)]
            bias = node.input[2]
            if any(s is None for s in scales) or not index.is_initializer(bias) or bias in index.graph_inputs:
                continue
            b = index.array(bias).astype(np.float64)
            if b.ndim != 1:
                continue
            scale = (np.float64(scales[0]) * np.broadcast_to(scales[1], b.shape)).astype(np.float32)
            if np.any(scale <= 0) or np.any(np.abs(np.rint(b / scale)) > INT32_MAX):
                continue
            base = unique_name(taken, f"{bias}_int32")
            names = [base, unique_name(taken, f"{bias}_int32_scale"), unique_name(taken, f"{bias}_int32_zero_point"),
                     unique_name(taken, f"{bias}_int32_dequantized")]
            inits += [numpy_helper.from_array(np.rint(b / scale).astype(np.int32), names[0]),
                      numpy_helper.from_array(scale, names[1]),
                      numpy_helper.from_array(np.zeros(b.shape, np.int32), names[2])]
            added.append(helper.make_node("DequantizeLinear", names[:3], [names[3]], axis=0,
                                          name=unique_name(taken, f"{bias}_DequantizeLinear")))
            node.input[2] = names[3]
            replaced.add(bias)
        if not added:
            return PassResult(model, False, [])
        nodes = added + list(graph.node)  # bias DQs read initializers only, so they go first
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend(inits)
        _drop_unread(graph, replaced)
        return PassResult(model, True, [f"stored {len(added)} bias(es) as int32"])

    @staticmethod
    def _dq_scale(tensor: str, index: GraphIndex) -> np.ndarray | None:
        """The constant scale of the DequantizeLinear producing ``tensor``, or None."""
        producer = index.producer.get(tensor)
        if producer is None or producer.op_type != "DequantizeLinear" or not index.is_initializer(producer.input[1]):
            return None
        return index.array(producer.input[1]).astype(np.float64)


def _drop_unread(graph: onnx.GraphProto, biases: set[str]) -> None:
    """Remove the float biases nothing reads any more."""
    index = GraphIndex.build(graph)
    graph_inputs = {v.name for v in graph.input}
    dead = {b for b in biases if b not in index.consumers and b not in graph_inputs and b not in index.graph_outputs}
    kept = [i for i in graph.initializer if i.name not in dead]
    del graph.initializer[:]
    graph.initializer.extend(kept)
