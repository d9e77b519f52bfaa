"""Compute an FP16 model in FP32 for quantization, its float16 inputs and outputs kept.

A model exported in half precision (``model.half()`` before ``torch.onnx.export``, or an FP16 conversion for
deployment) holds float16 weights and float16 activations. QuantizeLinear reads float16 only from opset 19, every
recovery stage computes in float32, and the planner's weight and bias arithmetic assumes float32, so onnxq quantizes
its FP32 form: the quantized model is then FP32 where it stays float (``--float-rest fp16`` turns that back to FP16
for TensorRT).

- float16 initializers, and float16 tensors of ``Constant``/``ConstantOfShape`` attributes, become float32;
- a ``Cast`` to float16 inside the graph casts to float32, and so does a ``dtype`` attribute of float16
  (``RandomNormal``, ``EyeLike``...); subgraphs (If/Loop/Scan bodies) are widened the same way;
- each float16 graph input keeps its type and is read through one ``Cast`` to float32; each float16 graph output keeps
  its name and type, written by a ``Cast`` back to float16 from the float32 tensor that computed it;
- recorded value types (``value_info``) of float16 become float32.

The widened model computes what the FP16 one computes without its intermediate FP16 roundings, so it is at least as
close to the trained FP32 network; the quantized model is compared with the FP16 model the user gave.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxq.graph import all_names, unique_name
from onnxq.passes.base import InPlacePass, PassResult

HALF, FULL = TensorProto.FLOAT16, TensorProto.FLOAT


class WidenFloat16(InPlacePass):
    name = "widen-float16"

    def call(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        widened = _widen_graph(graph)
        taken = all_names(graph)
        inputs = _cast_inputs(graph, taken)
        outputs = _cast_outputs(graph, taken)
        if not (widened or inputs or outputs):
            return PassResult(model, False)
        notes = [f"FP16 model computed in FP32 for quantization ({widened} float16 tensor(s), type(s) and "
                 f"attribute(s) widened; Casts keep its {inputs} float16 input(s) and {outputs} output(s))"]
        return PassResult(model, True, notes)


def _widen_tensor(tensor: onnx.TensorProto) -> bool:
    if tensor.data_type != HALF:
        return False
    tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name))
    return True


def _widen_graph(graph: onnx.GraphProto, subgraph: bool = False) -> int:
    """Widen ``graph``'s initializers, attributes, value types (and a subgraph's own inputs and outputs) in place;
    returns how many of them changed (0: nothing of it was float16)."""
    count = sum(_widen_tensor(t) for t in graph.initializer)
    values = [*graph.value_info, *((*graph.input, *graph.output) if subgraph else ())]
    for value in values:
        if value.type.tensor_type.elem_type == HALF:
            value.type.tensor_type.elem_type = FULL
            count += 1
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                count += _widen_tensor(a.t)
            elif a.type == onnx.AttributeProto.INT and a.name in ("to", "dtype") and a.i == HALF:
                a.i = FULL
                count += 1
            elif a.type == onnx.AttributeProto.GRAPH:
                count += _widen_graph(a.g, subgraph=True)
            elif a.type == onnx.AttributeProto.GRAPHS:
                count += sum(_widen_graph(g, subgraph=True) for g in a.graphs)
    return count


def _rename_reads(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Make every node of ``graph`` (and of its subgraphs, which read outer names) read ``new`` where it read
    ``old``."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for a in node.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                _rename_reads(sub, old, new)


def _cast_inputs(graph: onnx.GraphProto, taken: set[str]) -> int:
    """One Cast to float32 after each float16 graph input, read by all of its readers; returns how many (an
    initializer listed as an input is float32 now, and so is its declared type)."""
    casts = []
    constants = {t.name for t in graph.initializer}
    for value in graph.input:
        if value.type.tensor_type.elem_type != HALF:
            continue
        if value.name in constants:  # an initializer listed as an input (IR < 4): widened with the initializers
            value.type.tensor_type.elem_type = FULL
            continue
        wide = unique_name(taken, f"{value.name}_fp32")
        taken.add(wide)
        _rename_reads(graph, value.name, wide)
        casts.append(helper.make_node("Cast", [value.name], [wide], name=unique_name(taken, f"{wide}_cast"), to=FULL))
        taken.add(casts[-1].name)
    if casts:
        nodes = [*casts, *graph.node]
        del graph.node[:]
        graph.node.extend(nodes)
    return len(casts)


def _cast_outputs(graph: onnx.GraphProto, taken: set[str]) -> int:
    """Each float16 graph output computed in float32 under a new name, then cast back to float16 under its own;
    returns how many."""
    inputs = {v.name for v in graph.input}
    constants = {t.name: t for t in graph.initializer}
    count = 0
    for value in graph.output:
        if value.type.tensor_type.elem_type != HALF:
            continue
        if value.name in inputs:  # a graph input passed through: still float16
            continue
        wide = unique_name(taken, f"{value.name}_fp32")
        taken.add(wide)
        if value.name in constants:  # a constant output: the widened initializer under the new name
            constants[value.name].name = wide
        for node in graph.node:
            for i, name in enumerate(node.output):
                if name == value.name:
                    node.output[i] = wide
        _rename_reads(graph, value.name, wide)
        graph.node.append(helper.make_node("Cast", [wide], [value.name], name=unique_name(taken, f"{wide}_cast"),
                                           to=HALF))
        taken.add(graph.node[-1].name)
        count += 1
    return count
