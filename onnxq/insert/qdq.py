"""Insert QuantizeLinear/DequantizeLinear pairs for every tensor of a QuantPlan, from a ScaleTable.

- An activation gets Q -> DQ right after its producer; the DQ output feeds exactly the planned consumers (every
  other reader, subgraphs included, still reads the float tensor).
- A weight is stored quantized (an int8 initializer, a quarter of the float bytes) and read through a DQ, per
  channel on the plan's axis. TensorRT accepts pre-quantized weights behind an IDequantizeLayer ("Quantized Weights",
  TensorRT developer guide, Explicit Quantization). Symmetric int8 weights use [-127, 127].
- Bias stays float. Node order stays topological and deterministic.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxq.dtypes import quant_dtype
from onnxq.errors import OnnxqError
from onnxq.graph import GraphIndex, all_names, node_name, remove_initializers, unique_name
from onnxq.passes.base import InPlacePass, PassResult
from onnxq.plan import QuantPlan, TensorPlan
from onnxq.scales.types import QuantParams, ScaleTable


def quantize_array(x: np.ndarray, params: QuantParams) -> np.ndarray:
    """x -> integers with round-half-to-even and saturation, as QuantizeLinear does."""
    scale, zp = params.scale.astype(np.float32), params.zero_point.astype(np.float32)
    if params.axis is not None:
        shape = [1] * x.ndim
        shape[params.axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    lo, hi = quant_dtype(params.dtype).clip_range()
    q = x.astype(np.float32, copy=True)  # one float working copy, updated in place (weights can be GBs)
    q /= scale
    np.rint(q, out=q)
    q += zp
    np.clip(q, lo, hi, out=q)
    return q.astype(np.dtype(params.dtype))


class InsertQDQ(InPlacePass):
    name = "insert-qdq"

    def __init__(self, plan: QuantPlan, scales: ScaleTable) -> None:
        self.plan = plan
        self.scales = scales

    def call(self, model: onnx.ModelProto) -> PassResult:
        missing = [t for t in self.plan.tensors if t not in self.scales]
        if missing:
            raise OnnxqError(f"no scale for {len(missing)} planned tensor(s), e.g. {missing[:3]}")
        graph = model.graph
        index = GraphIndex.build(graph)
        taken = all_names(graph)
        by_name = {node_name(n): n for n in graph.node}
        after: dict[str, list[onnx.NodeProto]] = {}  # producer output -> Q/DQ nodes to place after it
        first: list[onnx.NodeProto] = []  # Q/DQ of graph inputs and weights, placed before every node
        new_inits: list[onnx.TensorProto] = []
        for tensor in self.plan.tensors.values():
            params = self.scales[tensor.name]
            _check_params(tensor, params, index)
            base = tensor.name
            scale = unique_name(taken, f"{base}_scale")
            zp = unique_name(taken, f"{base}_zero_point")
            new_inits += [numpy_helper.from_array(params.scale, scale), numpy_helper.from_array(params.zero_point, zp)]
            axis: dict[str, Any] = {} if params.axis is None else {"axis": params.axis}
            dq_out = unique_name(taken, f"{base}_dequantized")
            if tensor.role == "weight":
                q_init = unique_name(taken, f"{base}_quantized")
                w = index.array(tensor.name)
                new_inits.append(numpy_helper.from_array(quantize_array(w, params), q_init))
                nodes = [helper.make_node("DequantizeLinear", [q_init, scale, zp], [dq_out],
                                          name=unique_name(taken, f"{base}_DequantizeLinear"), **axis)]
                first.extend(nodes)
            else:
                q_out = unique_name(taken, f"{base}_quantized")
                nodes = [
                    helper.make_node("QuantizeLinear", [tensor.name, scale, zp], [q_out],
                                     name=unique_name(taken, f"{base}_QuantizeLinear"), **axis),
                    helper.make_node("DequantizeLinear", [q_out, scale, zp], [dq_out],
                                     name=unique_name(taken, f"{base}_DequantizeLinear"), **axis),
                ]
                if tensor.name in index.producer:
                    after.setdefault(tensor.name, []).extend(nodes)
                else:
                    first.extend(nodes)
            for consumer in tensor.consumers:
                node = by_name[consumer.node]
                if node.input[consumer.input_index] != tensor.name:
                    raise OnnxqError(f"plan is stale: input {consumer.input_index} of {consumer.node!r} is "
                                     f"{node.input[consumer.input_index]!r}, not {tensor.name!r}")
                node.input[consumer.input_index] = dq_out
        ordered = list(first)
        for node in graph.node:
            ordered.append(node)
            for out in node.output:
                ordered.extend(after.get(out, []))
        del graph.node[:]
        graph.node.extend(ordered)
        graph.initializer.extend(new_inits)
        _drop_replaced_weights(graph, self.plan)
        count = len(self.plan.tensors)
        return PassResult(model, count > 0, [f"inserted Q/DQ for {count} tensor(s)"])


def _check_params(tensor: TensorPlan, params: QuantParams, index: GraphIndex) -> None:
    if params.dtype != tensor.dtype:
        raise OnnxqError(f"tensor {tensor.name!r}: scale dtype {params.dtype} but the plan wants {tensor.dtype}")
    if tensor.role == "weight" and params.axis is not None:
        dims = tuple(index.initializers[tensor.name].dims)
        if params.axis >= len(dims) or dims[params.axis] != params.channels:
            raise OnnxqError(f"weight {tensor.name!r} of shape {dims}: {params.channels} per-channel scales on "
                             f"axis {params.axis} do not match")
    if tensor.role == "activation" and params.axis is not None:
        raise OnnxqError(f"activation {tensor.name!r}: per-channel activation scales are not supported")


def _drop_replaced_weights(graph: onnx.GraphProto, plan: QuantPlan) -> None:
    """Remove float weights that nothing reads any more (their int8 copies replace them)."""
    index = GraphIndex.build(graph)
    graph_inputs = {v.name for v in graph.input}
    dead = {t.name for t in plan.weights()
            if t.name not in index.consumers and t.name not in graph_inputs and t.name not in index.graph_outputs}
    remove_initializers(graph, dead)
