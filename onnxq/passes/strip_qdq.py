"""Remove existing QuantizeLinear/DequantizeLinear nodes, restoring a float graph (for ``--requantize``).

A Q -> DQ pair on an activation is bypassed; a DQ reading a constant (pre-quantized weights) becomes a float
initializer holding the dequantized values. Numerically the result equals the float model the Q/DQ graph was made
from, up to the quantization error already baked into pre-quantized weights.

The record of float rewrites an earlier onnxq run wrote into the model (``onnxq.float_rewrites``: equalization,
activation shifts, corrected biases) is dropped: the stripped graph already holds those rewrites, it is the float
model now, and a new run records its own. Kept, the old activation shifts would be compensated a second time.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxq.errors import OnnxqError
from onnxq.graph import QDQ_OPS, GraphIndex, attr
from onnxq.passes.base import InPlacePass, PassResult
from onnxq.scales.rewrites import BIAS_KIND, METADATA_KEY, SHIFT_KIND, read_from_model

log = logging.getLogger(__name__)


def _dequantize(index: GraphIndex, dq: onnx.NodeProto) -> np.ndarray:
    q = index.array(dq.input[0]).astype(np.float64)
    scale = index.array(dq.input[1]).astype(np.float64)
    zp = index.array(dq.input[2]).astype(np.float64) if len(dq.input) > 2 and dq.input[2] else np.zeros_like(scale)
    axis = attr(dq, "axis", 1)
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return ((q - zp) * scale).astype(np.float32)


class StripQDQ(InPlacePass):
    name = "strip-qdq"

    def call(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        index = GraphIndex.build(graph)
        rename: dict[str, str] = {}
        new_inits: list[onnx.TensorProto] = []
        for node in graph.node:
            if node.op_type != "DequantizeLinear":
                continue
            src = node.input[0]
            producer = index.producer.get(src)
            if producer is not None and producer.op_type == "QuantizeLinear":
                rename[node.output[0]] = producer.input[0]
            elif index.is_initializer(src) and all(index.is_initializer(n) for n in node.input[1:] if n):
                new_inits.append(numpy_helper.from_array(_dequantize(index, node), node.output[0]))
            else:
                raise OnnxqError(f"cannot strip DequantizeLinear {node.name!r}: its input is neither a "
                                 "QuantizeLinear nor a constant")
        # a Shape/Size that reads a QuantizeLinear's output directly (onnxq's ort-cpu models) reads the float tensor
        graph_outputs = {o.name for o in graph.output}
        rename.update({n.output[0]: n.input[0] for n in graph.node
                       if n.op_type == "QuantizeLinear" and n.output[0] not in graph_outputs})
        while any(v in rename for v in rename.values()):  # chains of Q/DQ pairs
            rename = {k: rename.get(v, v) for k, v in rename.items()}
        kept = [n for n in graph.node if n.op_type not in QDQ_OPS]
        for node in kept:
            for i, name in enumerate(node.input):
                if name in rename:
                    node.input[i] = rename[name]
        # a DQ that produced a graph output keeps the name through an Identity
        kept += [helper.make_node("Identity", [src], [out], name=f"{out}_identity")
                 for out, src in rename.items() if out in graph_outputs]
        del graph.node[:]
        graph.node.extend(kept)
        graph.initializer.extend(new_inits)
        used = GraphIndex.build(graph).consumers.keys() | graph_outputs
        inits = [i for i in graph.initializer if i.name in used]
        del graph.initializer[:]
        graph.initializer.extend(inits)
        notes = [f"stripped {len(rename) + len(new_inits)} Q/DQ pair(s)"]
        recorded = any(p.key == METADATA_KEY for p in model.metadata_props)
        try:
            record = read_from_model(model)
        except OnnxqError:  # a broken record is dropped all the same: nothing reads it any more
            record = None
        if recorded:
            kept_props = [p for p in model.metadata_props if p.key != METADATA_KEY]
            del model.metadata_props[:]
            model.metadata_props.extend(kept_props)
            notes.append("the earlier run's record of float rewrites dropped: the stripped graph holds them already")
        biased = sum(r.kind in (BIAS_KIND, SHIFT_KIND) for r in record.rewrites) if record else 0
        if biased:
            warning = (f"the earlier quantization moved biases for its own quantization error ({biased} "
                       "bias-correction or activation-shift record(s)): the stripped graph is not the FP32 model, and "
                       "requantizing it adds that run's error to this one's; quantize the original float model when "
                       "you have it")
            log.warning(warning)
            notes.append(warning)
        return PassResult(model, bool(rename or new_inits or recorded), notes)
