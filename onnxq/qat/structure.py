"""The structure of an exported graph, and what changed between two exports of the same torch model.

QAT exports the model twice: at :func:`onnxq.qat.prepare` (the plan and the torch mapping are built on that graph)
and at :func:`onnxq.qat.export` / :func:`onnxq.qat.verify` (the fine-tuned weights). The two must have the same
*structure* (ops, edges, attributes, shapes, which initializer feeds which input) but not the same values.

One exporter choice depends on values: the TorchScript exporter deduplicates initializers with identical contents
and feeds the duplicates through ``Identity`` nodes (freshly initialised models have many equal bias tensors: every
Conv+BN fused bias is zero when BN's beta and running mean are). After fine-tuning the tensors differ and the
``Identity`` nodes are gone. :func:`unshare_initializers` undoes the sharing (each ``Identity`` of an initializer
becomes a copy of it under the ``Identity``'s output name, which is the name the unshared export gives it), so both
exports have one canonical form; :func:`structure_difference` then compares structure only and says what changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import numpy_helper


def unshare_initializers(model: onnx.ModelProto) -> int:
    """Replace, in place, every ``Identity`` node that reads an initializer by a copy of that initializer named as
    the node's output. Numerically the same graph. Returns the number of nodes replaced."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    keep, copies = [], []
    for node in graph.node:
        if (node.op_type == "Identity" and node.domain in ("", "ai.onnx") and len(node.input) == 1
                and node.input[0] in inits and node.output[0] not in outputs and node.output[0] not in inits):
            copies.append(numpy_helper.from_array(numpy_helper.to_array(inits[node.input[0]]), node.output[0]))
            continue
        keep.append(node)
    if copies:
        del graph.node[:]
        graph.node.extend(keep)
        graph.initializer.extend(copies)
        used = {i for n in graph.node for i in n.input} | outputs
        unused = [i for i in graph.initializer if i.name not in used]
        for init in unused:
            graph.initializer.remove(init)
    return len(copies)


def _attribute(attr: onnx.AttributeProto) -> str:
    if attr.type == onnx.AttributeProto.TENSOR:  # a constant's value may be a trained value: keep its type/shape
        return f"{attr.name}=tensor{onnx.TensorProto.DataType.Name(attr.t.data_type)}{tuple(attr.t.dims)}"
    if attr.type == onnx.AttributeProto.GRAPH:
        return f"{attr.name}=graph({len(attr.g.node)} nodes)"
    value = onnx.helper.get_attribute_value(attr)
    return f"{attr.name}={value!r}"


def _value_info(v: onnx.ValueInfoProto) -> str:
    t = v.type.tensor_type
    dims = tuple(d.dim_param or d.dim_value for d in t.shape.dim) if t.HasField("shape") else None
    return f"{v.name}:{onnx.TensorProto.DataType.Name(t.elem_type)}{dims}"


@dataclass(frozen=True)
class GraphStructure:
    """Everything about a graph except the values of its initializers and tensor attributes."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    nodes: tuple[str, ...]  # op(inputs) -> outputs [attributes], in graph order
    initializers: tuple[str, ...]  # name:dtype(shape), sorted by name

    @classmethod
    def of(cls, model: onnx.ModelProto) -> GraphStructure:
        graph = model.graph
        init_names = {i.name for i in graph.initializer}
        nodes = []
        for n in graph.node:
            attrs = ", ".join(_attribute(a) for a in sorted(n.attribute, key=lambda a: a.name))
            op = f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
            nodes.append(f"{op}({', '.join(n.input)}) -> {', '.join(n.output)}" + (f" [{attrs}]" if attrs else ""))
        inits = sorted(f"{i.name}:{onnx.TensorProto.DataType.Name(i.data_type)}{tuple(i.dims)}"
                       for i in graph.initializer)
        return cls(tuple(_value_info(v) for v in graph.input if v.name not in init_names),
                   tuple(_value_info(v) for v in graph.output), tuple(nodes), tuple(inits))


def structure_difference(before: GraphStructure, after: GraphStructure) -> str | None:
    """None when the structures are equal, else one line saying what changed first."""
    if before.inputs != after.inputs:
        return f"graph inputs were {list(before.inputs)}, now {list(after.inputs)}"
    if before.outputs != after.outputs:
        return f"graph outputs were {list(before.outputs)}, now {list(after.outputs)}"
    for k, (a, b) in enumerate(zip(before.nodes, after.nodes)):
        if a != b:
            return f"node {k} was {a}, now {b}"
    if len(before.nodes) != len(after.nodes):
        extra = (after.nodes if len(after.nodes) > len(before.nodes) else before.nodes)[min(len(before.nodes),
                                                                                            len(after.nodes))]
        return (f"the graph had {len(before.nodes)} node(s), now {len(after.nodes)} (first "
                f"{'new' if len(after.nodes) > len(before.nodes) else 'missing'} one: {extra})")
    old, new = set(before.initializers), set(after.initializers)
    if old != new:
        gone, added = sorted(old - new), sorted(new - old)
        return f"initializers changed: {gone[:3]} -> {added[:3]}"
    return None
