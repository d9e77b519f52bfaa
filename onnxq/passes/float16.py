"""Convert what stays float to FP16, with Casts at the borders (``--float-rest fp16``).

TensorRT 10+ networks built from ONNX are strongly typed (the ``STRONGLY_TYPED`` network flag; TensorRT 11's
Python bindings have no FP16/INT8 builder flags), so the INT8 + FP16 mix that TensorRT deployments used to get from
``--int8 --fp16`` must be in the graph itself. This pass does that on a float or Q/DQ model:

- Model inputs and outputs stay FP32: a Cast follows each input that feeds FP16 nodes and precedes each output an
  FP16 node produces.
- Every node whose float tensors may be FP16 (by its ONNX schema type constraints) runs in FP16, except the op
  types of :data:`KEEP_FP32`, nodes of other domains, nodes holding subgraphs, and Q/DQ nodes whose scales FP16
  cannot hold to 10 bits (outside FP16's normal range ``[2**-14, 65504]``). Inputs under a fixed ``tensor(float)``
  constraint (Resize's ``scales``) stay FP32.
- Float initializers read in FP16 get an FP16 copy (Q/DQ scales too: DequantizeLinear's output type is its
  scale's type since opset 19, QuantizeLinear's input shares its type with the scale).
- One Cast per tensor and direction, shared by all its readers.

:data:`KEEP_FP32` -- ops whose FP16 form loses accuracy or range: normalisations and softmax (sums of many terms
and exponentials; TensorRT's own guidance is to run LayerNorm in FP32 to avoid overflow, see the TensorRT
developer guide "Reduced Precision" / trtexec ``--layerPrecisions``), reductions, exp/log/pow/sqrt/reciprocal
(range), and index/geometry ops whose FP16 coordinates lose whole pixels (Range, CumSum, TopK, NonMaxSuppression,
RoiAlign). The list is data: extend it rather than branching on op types.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, defs, helper, numpy_helper

from onnxq.graph import all_names, default_opset, unique_name
from onnxq.passes.base import InPlacePass, PassResult

log = logging.getLogger(__name__)

KEEP_FP32: frozenset[str] = frozenset({
    # normalisations and their statistics
    "Softmax", "LogSoftmax", "LayerNormalization", "GroupNormalization", "InstanceNormalization",
    "BatchNormalization", "LpNormalization", "MeanVarianceNormalization", "RMSNormalization",
    # reductions
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
    "ReduceProd",
    # range-sensitive elementwise
    "Exp", "Log", "Pow", "Sqrt", "Reciprocal",
    # indices and geometry
    "Range", "CumSum", "TopK", "NonMaxSuppression", "RoiAlign",
})

# ops that read a tensor of any type: their inputs never need a Cast
ANY_TYPE_INPUT_OPS: frozenset[str] = frozenset({"Shape", "Size", "Cast", "CastLike"})

FP16_MIN_NORMAL = 2.0 ** -14
FP16_MAX = 65504.0
QDQ = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class _NodeTypes:
    """Which input and output positions of a node are converted to FP16."""

    inputs: frozenset[int]
    outputs: frozenset[int]


def _float_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.output, *g.value_info]
             if v.type.HasField("tensor_type")}
    types.update({i.name: i.data_type for i in g.initializer})
    return types


def _formal(params: list, index: int):
    if index < len(params):
        return params[index]
    last = params[-1] if params else None
    return last if last is not None and last.option == defs.OpSchema.FormalParameterOption.Variadic else None


class ConvertFloatToFP16(InPlacePass):
    name = "float-rest-fp16"

    def __init__(self, keep_fp32: frozenset[str] = KEEP_FP32) -> None:
        self.keep_fp32 = keep_fp32

    def call(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        types = _float_types(model)
        opset = default_opset(model)
        inits = {i.name: i for i in graph.initializer}
        plans: dict[int, _NodeTypes] = {}
        for k, node in enumerate(graph.node):
            plan = self._node_types(node, types, opset, inits)
            if plan is not None:
                plans[k] = plan
        half_outputs = {graph.node[k].output[i] for k, p in plans.items() for i in p.outputs}
        types.update({t: TensorProto.FLOAT for t in half_outputs})  # float by their constraint, even if not inferred
        taken = all_names(graph)
        # FP16 tensors that are graph outputs: the producer writes a new name, a Cast restores the FP32 output
        renamed = {t: unique_name(taken, f"{t}_fp16") for t in sorted(half_outputs & {o.name for o in graph.output})}
        casts: dict[tuple[str, int], str] = {}
        half_inits: dict[str, str] = {}
        new_nodes: list[onnx.NodeProto] = []

        def read_as(tensor: str, to: int, before: list[onnx.NodeProto]) -> str:
            """The name under which ``tensor`` is available in type ``to`` (FLOAT or FLOAT16)."""
            is_half = tensor in half_outputs
            if (to == TensorProto.FLOAT16) == is_half:
                return renamed.get(tensor, tensor)
            if is_half and tensor in renamed:
                return tensor  # the FP32 graph output, cast back right after its producer
            if to == TensorProto.FLOAT16 and tensor in inits:
                if tensor not in half_inits:
                    half_inits[tensor] = unique_name(taken, f"{tensor}_fp16")
                return half_inits[tensor]
            key = (tensor, to)
            if key not in casts:
                casts[key] = unique_name(taken, f"{tensor}_{'fp16' if to == TensorProto.FLOAT16 else 'fp32'}")
                before.append(helper.make_node("Cast", [tensor], [casts[key]], to=to,
                                               name=unique_name(taken, f"{casts[key]}_Cast")))
            return casts[key]

        for k, node in enumerate(graph.node):
            pre: list[onnx.NodeProto] = []
            plan = plans.get(k)
            for i, name in enumerate(node.input):
                if not name or types.get(name) != TensorProto.FLOAT:
                    continue
                if node.op_type in ANY_TYPE_INPUT_OPS:
                    node.input[i] = renamed.get(name, name)
                    continue
                want = TensorProto.FLOAT16 if plan is not None and i in plan.inputs else TensorProto.FLOAT
                node.input[i] = read_as(name, want, pre)
            new_nodes.extend(pre)
            new_nodes.append(node)
            for idx, out in enumerate(node.output):
                if out in renamed:
                    node.output[idx] = renamed[out]
                    new_nodes.append(helper.make_node("Cast", [renamed[out]], [out], to=TensorProto.FLOAT,
                                                      name=unique_name(taken, f"{out}_Cast")))
        del graph.node[:]
        graph.node.extend(new_nodes)
        for source, name in half_inits.items():
            array = numpy_helper.to_array(inits[source]).astype(np.float16)
            graph.initializer.append(numpy_helper.from_array(array, name))
        _drop_unread_initializers(graph, set(half_inits))
        changed_types = half_outputs | set(renamed.values())
        kept = [v for v in graph.value_info if v.name not in changed_types]
        del graph.value_info[:]
        graph.value_info.extend(kept)
        notes = [f"{len(plans)} node(s) in FP16, {len(casts) + len(renamed)} Cast(s), "
                 f"{len(half_inits)} FP16 initializer(s)"]
        return PassResult(model, bool(plans), notes)

    def _node_types(self, node: onnx.NodeProto, types: dict[str, int], opset: int,
                    inits: dict[str, onnx.TensorProto]) -> _NodeTypes | None:
        """Which inputs and outputs of ``node`` turn FP16, or None when it stays as it is."""
        if node.op_type in self.keep_fp32 or node.domain not in ("", "ai.onnx") or node.op_type in ANY_TYPE_INPUT_OPS:
            return None
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            return None
        if node.op_type in QDQ and not _scale_fits_fp16(node, inits):
            return None
        if node.op_type == "DequantizeLinear" and types.get(node.input[0]) == TensorProto.INT32:
            return None  # int32 biases (ort-cpu integer kernels) keep their FP32 dequantization
        try:
            schema = defs.get_schema(node.op_type, opset, node.domain)
        except defs.SchemaError:
            return None
        constraints = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
        members: dict[str, list[tuple[str, int]]] = {}
        for kind, names, params in (("in", node.input, schema.inputs), ("out", node.output, schema.outputs)):
            for i, name in enumerate(names):
                formal = _formal(list(params), i)
                if name and formal is not None:
                    members.setdefault(formal.type_str, []).append((kind, i))
        inputs: set[int] = set()
        outputs: set[int] = set()
        for type_str, slots in members.items():
            allowed = constraints.get(type_str)
            if not allowed or "tensor(float16)" not in allowed:
                continue  # a fixed type (e.g. Resize scales: tensor(float)) stays as it is
            names = [(node.input if kind == "in" else node.output)[i] for kind, i in slots]
            if not any(types.get(n) == TensorProto.FLOAT for n in names):
                continue
            if any(types.get(n) not in (TensorProto.FLOAT, None) for n in names):
                return None  # mixed types under one constraint: leave the node alone
            for kind, i in slots:
                (inputs if kind == "in" else outputs).add(i)
        if not inputs and not outputs:
            return None
        return _NodeTypes(frozenset(inputs), frozenset(outputs))


def _scale_fits_fp16(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> bool:
    scale = inits.get(node.input[1]) if len(node.input) > 1 else None
    if scale is None:
        return False
    values = np.abs(numpy_helper.to_array(scale).astype(np.float64))
    return bool(values.size) and bool(np.all((values >= FP16_MIN_NORMAL) & (values <= FP16_MAX)))


def _drop_unread_initializers(graph: onnx.GraphProto, candidates: set[str]) -> None:
    read = {n for node in graph.node for n in node.input} | {o.name for o in graph.output}
    kept = [i for i in graph.initializer if i.name not in candidates or i.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept)
