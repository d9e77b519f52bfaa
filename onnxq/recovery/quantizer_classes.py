"""The quantizers of a plan sorted by op pattern, and Q/DQ models that keep only some of them: where does the error
of a real model come from (``benchmarks/activation_culprits.py``)?

A quantizer is an activation *range* (a tensor and the data-movement inputs that share its scale, one Q/DQ scale in
the engine) or a weight. The classes are named for what reads or writes the tensor, so the same table means the same
thing on any CNN, CNN+transformer or transformer model:

=====================================  ====================================================================
class                                  tensors
=====================================  ====================================================================
``act: model input``                   a graph input (the image)
``act: MatMul/Gemm input``             read by a MatMul or Gemm (transformer projections, attention Q/K/V and
                                       Softmax outputs, classifier heads)
``act: squeeze-excitation Conv input`` read by a Conv, at most two nodes past a GlobalAveragePool/ReduceMean
                                       (the two small Convs of a squeeze-and-excitation block)
``act: depthwise Conv input``          read by a Conv with ``group > 1``
``act: dense Conv input``              read by any other Conv (pointwise and full convolutions)
``act: other (OPS)``                   anything else (residual Add skip inputs, ...)
``weight: depthwise Conv``,            the weight of such a node
``weight: dense Conv``,
``weight: MatMul/Gemm``
=====================================  ====================================================================
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx

from onnxq.graph import GraphIndex, attr, node_name
from onnxq.insert.qdq import InsertQDQ
from onnxq.plan import QuantPlan
from onnxq.scales.types import QuantParams

#: ops whose output is a pooled per-channel vector (the squeeze of a squeeze-and-excitation block)
POOLED_VECTOR_OPS = ("GlobalAveragePool", "ReduceMean")


def scale_groups(plan: QuantPlan) -> dict[str, list[str]]:
    """Activation ranges: the tensor holding each range (its root) -> every activation that uses that scale."""
    groups: dict[str, list[str]] = {}
    for tensor in plan.activations():
        root = tensor.name
        while (shared := plan.tensors[root].shares_scale_with) is not None:
            root = shared
        groups.setdefault(root, []).append(tensor.name)
    return groups


def _near_pooled_vector(index: GraphIndex, tensor: str, hops: int = 3) -> bool:
    node = index.producer.get(tensor)
    for _ in range(hops):
        if node is None:
            return False
        if node.op_type in POOLED_VECTOR_OPS:
            return True
        node = index.producer.get(node.input[0]) if node.input else None
    return False


def _activation_class(index: GraphIndex, root: str, readers: list[onnx.NodeProto]) -> str:
    ops = {r.op_type for r in readers}
    if root in index.graph_inputs:
        return "act: model input"
    if ops & {"MatMul", "Gemm"}:
        return "act: MatMul/Gemm input"
    convs = [r for r in readers if r.op_type == "Conv"]
    if convs and _near_pooled_vector(index, root):
        return "act: squeeze-excitation Conv input"
    if any(attr(r, "group", 1) > 1 for r in convs):
        return "act: depthwise Conv input"
    if convs:
        return "act: dense Conv input"
    return "act: other (" + ",".join(sorted(ops)) + ")"


def _weight_class(reader: onnx.NodeProto | None) -> str:
    if reader is not None and reader.op_type == "Conv" and attr(reader, "group", 1) > 1:
        return "weight: depthwise Conv"
    if reader is not None and reader.op_type in ("Conv", "ConvTranspose"):
        return "weight: dense Conv"
    return "weight: MatMul/Gemm"


def classify(model: onnx.ModelProto, plan: QuantPlan) -> dict[str, set[str]]:
    """Every planned tensor of ``model`` (the prepared model the plan was built on) under its class (module
    docstring); a range's members go with its root."""
    index = GraphIndex.build(model.graph)
    by_name = {node_name(n): n for n in model.graph.node}
    classes: dict[str, set[str]] = {}
    for root, members in scale_groups(plan).items():
        readers = [by_name[c.node] for m in members for c in plan.tensors[m].consumers]
        classes.setdefault(_activation_class(index, root, readers), set()).update(members)
    for tensor in plan.weights():
        reader = next((by_name.get(c.node) for c in tensor.consumers), None)
        classes.setdefault(_weight_class(reader), set()).add(tensor.name)
    return classes


def restrict(plan: QuantPlan, keep: set[str]) -> QuantPlan:
    """The plan with only the tensors in ``keep`` (the others stay float); node decisions are not carried."""
    unknown = keep - set(plan.tensors)
    if unknown:
        raise KeyError(f"not planned: {sorted(unknown)[:3]}")
    sub = QuantPlan(target=plan.target)
    for name in plan.tensors:
        if name in keep:
            sub.tensors[name] = plan.tensors[name]
    return sub.freeze()


def ablation_model(prepared: onnx.ModelProto, plan: QuantPlan, table: Mapping[str, QuantParams],
                   keep: set[str]) -> onnx.ModelProto:
    """A copy of ``prepared`` with Q/DQ for the planned tensors in ``keep`` only, at the scales of ``table``: the
    model ``onnxq quantize`` writes (before recovery) with every other quantizer left out."""
    sub = restrict(plan, keep)
    return InsertQDQ(sub, {name: table[name] for name in sub.tensors}).run(prepared, keep_input=True).model
