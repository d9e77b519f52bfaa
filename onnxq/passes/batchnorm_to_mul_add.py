"""Rewrite every inference-mode BatchNormalization left after folding as ``Mul`` + ``Add``.

``BN(x) = s * x + (beta - s * mean)`` with ``s = gamma / sqrt(var + eps)``, per channel on axis 1. TensorRT fuses
a constant Mul+Add into a scale layer (or into the preceding op), so no BatchNormalization is left in the quantized
model. The constants are shaped ``(C, 1, ..., 1)`` for the input's rank, which must be known (from the graph's
shape information or onnx shape inference); a BN of unknown input rank, in training mode, or with non-constant
parameters is left as it is, with the reason in the pass notes. Computed in float64, stored in the parameters'
dtype.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxq.graph import GraphIndex, all_names, recorded_ranks, unique_name
from onnxq.passes.base import InPlacePass, PassResult


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference is best effort (custom ops, dynamic shapes)
        inferred = model
    return recorded_ranks(inferred.graph)


class BatchNormToMulAdd(InPlacePass):
    name = "batchnorm-to-mul-add"

    def call(self, model: onnx.ModelProto) -> PassResult:
        bns = [n for n in model.graph.node if n.op_type == "BatchNormalization" and n.domain in ("", "ai.onnx")]
        if not bns:
            return PassResult(model, False)
        index = GraphIndex.build(model.graph)
        ranks = _ranks(model)
        taken = all_names(model.graph)
        replaced: dict[int, list[onnx.NodeProto]] = {}
        notes: list[str] = []
        for bn in bns:
            label = bn.name or bn.output[0]
            training = next((a.i for a in bn.attribute if a.name == "training_mode"), 0)
            if training or len([o for o in bn.output if o]) != 1:
                notes.append(f"BatchNormalization {label!r} kept: training mode")
                continue
            if not all(index.is_initializer(n) for n in bn.input[1:5]):
                notes.append(f"BatchNormalization {label!r} kept: its parameters are not constants")
                continue
            rank = ranks.get(bn.input[0])
            if rank is None or rank < 2:
                notes.append(f"BatchNormalization {label!r} kept: the rank of its input is unknown")
                continue
            gamma, beta, mean, var = (index.array(n).astype(np.float64) for n in bn.input[1:5])
            eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
            scale = gamma / np.sqrt(var + eps)
            shift = beta - scale * mean
            dtype = index.array(bn.input[1]).dtype
            shape = (-1,) + (1,) * (rank - 2)
            s_name, b_name = unique_name(taken, f"{label}_scale"), unique_name(taken, f"{label}_shift")
            mid = unique_name(taken, f"{label}_scaled")
            model.graph.initializer.extend([numpy_helper.from_array(scale.reshape(shape).astype(dtype), s_name),
                                            numpy_helper.from_array(shift.reshape(shape).astype(dtype), b_name)])
            replaced[id(bn)] = [
                helper.make_node("Mul", [bn.input[0], s_name], [mid], name=unique_name(taken, f"{label}_mul")),
                helper.make_node("Add", [mid, b_name], [bn.output[0]], name=unique_name(taken, f"{label}_add")),
            ]
        if not replaced:
            return PassResult(model, False, notes)
        nodes = [m for n in model.graph.node for m in replaced.get(id(n), [n])]
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        notes.insert(0, f"rewrote {len(replaced)} BatchNormalization node(s) that cannot fold as Mul+Add")
        return PassResult(model, True, notes)
