"""Move the tensors of ``Constant`` nodes in the main graph into initializers.

Exporters such as tf2onnx and paddle2onnx (and torch for some ops) hold weights in Constant nodes; the planner
recognises weights by their being initializers, so this pass makes them so. Subgraph constants stay as they are.

It also resolves ``Identity(initializer)``: torch's exporter de-duplicates equal parameters (say the zero biases of
two BatchNorms) into one initializer read through Identity nodes, which hides them from BatchNorm folding.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxq.passes.base import InPlacePass, PassResult

_SCALAR_ATTRS = {
    "value_float": (np.float32, False),
    "value_floats": (np.float32, True),
    "value_int": (np.int64, False),
    "value_ints": (np.int64, True),
}


def constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a Constant node produces, or None for forms this pass leaves alone (sparse, strings)."""
    for attr in node.attribute:
        if attr.name == "value":
            return attr.t
        if attr.name in _SCALAR_ATTRS:
            dtype, is_list = _SCALAR_ATTRS[attr.name]
            value = helper.get_attribute_value(attr)
            return numpy_helper.from_array(np.array(list(value) if is_list else value, dtype=dtype))
    return None


class ConstantsToInitializers(InPlacePass):
    name = "constants-to-initializers"

    def call(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        kept: list[onnx.NodeProto] = []
        moved = 0
        initializers = {i.name: i for i in graph.initializer}
        graph_inputs = {v.name for v in graph.input}
        graph_outputs = {v.name for v in graph.output}
        for node in graph.node:
            tensor = constant_tensor(node) if node.op_type == "Constant" and node.domain in ("", "ai.onnx") else None
            if (node.op_type == "Identity" and node.domain in ("", "ai.onnx") and node.input[0] in initializers
                    and node.input[0] not in graph_inputs and node.output[0] not in graph_outputs):
                tensor = initializers[node.input[0]]
            if tensor is None:
                kept.append(node)
                continue
            init = onnx.TensorProto()
            init.CopyFrom(tensor)
            init.name = node.output[0]
            graph.initializer.append(init)
            moved += 1
        if moved:
            del graph.node[:]
            graph.node.extend(kept)
        notes = [f"moved {moved} Constant/Identity-of-initializer node(s) to initializers"] if moved else []
        return PassResult(model, bool(moved), notes)
