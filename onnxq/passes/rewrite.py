"""Node-by-node graph rewrites: a pass says what replaces one node; walking the graph and committing is shared.

A :class:`NodeRewritePass` visits the main graph's nodes in order; :meth:`NodeRewritePass.rewrite` returns the nodes
that stand in for a node (which may include the node itself, changed), or None to keep it as it is. New
initializers and names go through the :class:`Rewrite` context; initializers a rewrite replaced are dropped once no
node reads them.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from onnxq.graph import GraphIndex, all_names, unique_name
from onnxq.passes.base import InPlacePass, PassResult


@dataclass
class Rewrite:
    """What the rewrites of one pass share: the graph's index (as it was before the pass), the names in use, the
    initializers added and the initializers replaced."""

    index: GraphIndex
    taken: set[str]
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    replaced: set[str] = field(default_factory=set)

    def name(self, base: str, suffix: str) -> str:
        """A fresh name ``base_suffix`` (numbered when taken)."""
        return unique_name(self.taken, f"{base}_{suffix}")

    def constant(self, base: str, suffix: str, value: np.ndarray) -> str:
        """A new initializer holding ``value``, under a fresh name; returns the name."""
        name = self.name(base, suffix)
        self.initializers.append(numpy_helper.from_array(value, name))
        return name


class NodeRewritePass(InPlacePass):
    """A pass made of independent per-node rewrites (see the module docstring)."""

    @abstractmethod
    def rewrite(self, node: onnx.NodeProto, ctx: Rewrite) -> list[onnx.NodeProto] | None:
        """The nodes replacing ``node`` (in order), or None to keep it unchanged."""

    def summary(self, count: int) -> str:
        return f"{self.name}: rewrote {count} node(s)"

    def unchanged(self) -> list[str]:
        """Notes when no node was rewritten."""
        return []

    def call(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        ctx = Rewrite(GraphIndex.build(graph), all_names(graph))
        nodes: list[onnx.NodeProto] = []
        count = 0
        for node in graph.node:
            replacement = self.rewrite(node, ctx)
            nodes += [node] if replacement is None else replacement
            count += replacement is not None
        if not count:
            return PassResult(model, False, self.unchanged())
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend(ctx.initializers)
        drop_unread_initializers(graph, ctx.replaced)
        return PassResult(model, True, [self.summary(count)])


def drop_unread_initializers(graph: onnx.GraphProto, names: set[str]) -> None:
    """Remove the initializers among ``names`` that nothing reads any more (graph inputs and outputs stay)."""
    if not names:
        return
    index = GraphIndex.build(graph)
    listed = {v.name for v in graph.input} | index.graph_outputs
    dead = {n for n in names if n not in index.consumers and n not in listed}
    kept = [i for i in graph.initializer if i.name not in dead]
    del graph.initializer[:]
    graph.initializer.extend(kept)
