"""Give every node of the main graph a name no other node has.

onnxq knows nodes by name (``onnxq.graph.node_name``: the name, or the first output's when the exporter left it
empty): the plan's consumers, ``--exclude-node``, the float rewrites' records and the per-layer reports all key on
it. ONNX asks for unique node names but its checker does not enforce it, and hand-edited or merged graphs repeat
them (three ``conv`` nodes); two nodes under one key would make one of them take the other's decisions. The first
node keeps its name; each later one gets ``<name>_<n>``, a name the graph does not use, so a user's node regex still
matches it. Subgraph nodes are not planned and keep their names.
"""

from __future__ import annotations

import onnx

from onnxq.graph import all_names, node_name, unique_name
from onnxq.passes.base import InPlacePass, PassResult


class UniqueNodeNames(InPlacePass):
    name = "unique-node-names"

    def call(self, model: onnx.ModelProto) -> PassResult:
        seen: set[str] = set()
        repeated = []
        for node in model.graph.node:
            key = node_name(node)
            if key in seen:
                repeated.append(node)
            seen.add(key)
        if not repeated:
            return PassResult(model, False)
        taken = all_names(model.graph) | seen
        for node in repeated:
            node.name = unique_name(taken, node_name(node))
        return PassResult(model, True, [f"renamed {len(repeated)} node(s) whose names repeated an earlier node's "
                                        "(onnxq knows nodes by name)"])
