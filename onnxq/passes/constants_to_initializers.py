"""Move the tensors of ``Constant`` nodes in the main graph into initializers.

Exporters such as tf2onnx and paddle2onnx (and torch for some ops) hold weights in Constant nodes; the planner
recognises weights by their being initializers, so this pass makes them so. Subgraph constants stay as they are.

It also resolves ``Identity(initializer)``: torch's exporter de-duplicates equal parameters (say the zero biases of
two BatchNorms) into one initializer read through Identity nodes, which hides them from BatchNorm folding; and
``Reshape(initializer, initializer)``: paddle2onnx writes a Conv's bias as ``Add(Conv(x, W), Reshape(b, [1, C, 1, 1]))``
(the squeeze-and-excitation Convs of PP-OCR's classifier), which hides the bias from bias folding and makes the
planner take it for an activation; and ``Transpose(initializer)``: torch's exporter with ``do_constant_folding=False``
writes every ``nn.Linear`` as ``MatMul(x, Transpose(W))``, so no MatMul would have a constant weight to quantize.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxq.graph import GraphIndex, remove_initializers
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


def reshaped(data: np.ndarray, shape: np.ndarray, allowzero: bool) -> np.ndarray:
    """``Reshape`` of the ONNX spec on constants: a 0 copies the input's dimension (unless ``allowzero``), one -1 is
    inferred."""
    dims = [int(d) for d in shape.reshape(-1)]
    if not allowzero:
        dims = [data.shape[i] if d == 0 and i < data.ndim else d for i, d in enumerate(dims)]
    return data.reshape(dims)


def _folded_reshape(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto],
                    graph_inputs: set[str]) -> onnx.TensorProto | None:
    if len(node.input) < 2 or any(i not in initializers or i in graph_inputs for i in node.input[:2]):
        return None
    allowzero = any(a.name == "allowzero" and a.i for a in node.attribute)
    data, shape = (numpy_helper.to_array(initializers[i]) for i in node.input[:2])
    try:
        return numpy_helper.from_array(reshaped(data, shape, allowzero))
    except ValueError:
        return None  # an invalid shape: leave the node for onnxruntime to report


def _folded_transpose(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto],
                      graph_inputs: set[str]) -> onnx.TensorProto | None:
    if not node.input or node.input[0] not in initializers or node.input[0] in graph_inputs:
        return None
    data = numpy_helper.to_array(initializers[node.input[0]])
    perm = next((list(helper.get_attribute_value(a)) for a in node.attribute if a.name == "perm"), None)
    if perm is not None and sorted(perm) != list(range(data.ndim)):
        return None  # an invalid permutation: leave the node for onnxruntime to report
    return numpy_helper.from_array(np.ascontiguousarray(np.transpose(data, perm)))


class ConstantsToInitializers(InPlacePass):
    name = "constants-to-initializers"

    def call(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        kept: list[onnx.NodeProto] = []
        moved = 0
        reshaped_sources: set[str] = set()
        initializers = {i.name: i for i in graph.initializer}
        graph_inputs = {v.name for v in graph.input}
        graph_outputs = {v.name for v in graph.output}
        for node in graph.node:
            tensor = constant_tensor(node) if node.op_type == "Constant" and node.domain in ("", "ai.onnx") else None
            if (node.op_type == "Identity" and node.domain in ("", "ai.onnx") and node.input[0] in initializers
                    and node.input[0] not in graph_inputs and node.output[0] not in graph_outputs):
                tensor = initializers[node.input[0]]
            folds = {"Reshape": _folded_reshape, "Transpose": _folded_transpose}
            if node.op_type in folds and node.domain in ("", "ai.onnx") and node.output[0] not in graph_outputs:
                tensor = folds[node.op_type](node, initializers, graph_inputs)
                if tensor is not None:
                    reshaped_sources.update(i for i in node.input if i)
            if tensor is None:
                kept.append(node)
                continue
            init = onnx.TensorProto()
            init.CopyFrom(tensor)
            init.name = node.output[0]
            graph.initializer.append(init)
            initializers[init.name] = init  # a later Reshape/Identity may read it
            moved += 1
        if moved:
            del graph.node[:]
            graph.node.extend(kept)
            read = set(GraphIndex.build(graph).consumers) | graph_outputs | graph_inputs  # subgraph readers too
            remove_initializers(graph, reshaped_sources - read)  # no second copy of a reshaped/transposed weight
        notes = ([f"moved {moved} Constant/Identity/Reshape/Transpose-of-initializer node(s) to initializers"]
                 if moved else [])
        return PassResult(model, bool(moved), notes)
