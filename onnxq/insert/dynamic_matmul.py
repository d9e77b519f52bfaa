"""Dynamic quantization of MatMul: INT8 weights stored ahead of time, activations quantized at run time.

Every main-graph ``MatMul(A, W)`` whose ``W`` is a float 2-D initializer becomes, in standard ONNX operators::

    DynamicQuantizeLinear(A) -> A_u8, A_scale, A_zero_point
    MatMulInteger(A_u8, W_s8, A_zero_point, W_zero_point) -> int32
    Cast(float) * (A_scale * W_scale)                      -> the MatMul's output

``DynamicQuantizeLinear`` computes a uint8 scale and zero point from each input's own min/max (ONNX operator spec),
so no calibration data is needed. ``W`` is int8, symmetric ([-127, 127]), per output column (``W_scale`` and
``W_zero_point`` of length N) or per tensor. onnxruntime's CPU provider fuses the chain into
``com.microsoft.DynamicQuantizeMatMul`` (MatMulIntegerToFloat fusion, then DynamicQuantizeMatMul fusion; checked
in tests/core/test_dynamic_matmul.py by reading the optimized graph). This is the form onnxruntime's own
``quantize_dynamic`` writes for transformers (docs/ort_cpu_rules.md, section 5).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxq.graph import GraphIndex, node_name, unique_name
from onnxq.passes.rewrite import NodeRewritePass, Rewrite
from onnxq.scales.types import symmetric_params


class DynamicQuantizeMatMul(NodeRewritePass):
    name = "dynamic-quantize-matmul"

    def __init__(self, per_channel: bool = True, skip_nodes: frozenset[str] = frozenset()) -> None:
        self.per_channel = per_channel
        self.skip_nodes = skip_nodes

    def unchanged(self) -> list[str]:
        return ["no MatMul with a constant 2-D float weight to quantize dynamically"]

    def summary(self, count: int) -> str:
        return f"dynamically quantized {count} MatMul node(s)"

    def rewrite(self, node: onnx.NodeProto, ctx: Rewrite) -> list[onnx.NodeProto] | None:
        weight = self._weight(node, ctx.index)
        if weight is None:
            return None
        ctx.replaced.add(weight)
        return self._nodes(node, ctx.index.array(weight), ctx)

    def _weight(self, node: onnx.NodeProto, index: GraphIndex) -> str | None:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            return None
        if node_name(node) in self.skip_nodes:
            return None
        w = node.input[1]
        if not index.is_initializer(w) or w in index.graph_inputs:
            return None
        init = index.initializers[w]
        if len(init.dims) != 2 or init.data_type != TensorProto.FLOAT:
            return None
        return w

    def _nodes(self, node: onnx.NodeProto, w: np.ndarray, ctx: Rewrite) -> list[onnx.NodeProto]:
        base = node_name(node)
        taken = ctx.taken
        amax = np.abs(w).max(axis=0) if self.per_channel else np.abs(w).max()
        params = symmetric_params(amax, 1 if self.per_channel else None)
        scale = params.scale.astype(np.float32)
        w_q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        names = {k: unique_name(taken, f"{base}_{k}") for k in
                 ("A_quantized", "A_scale", "A_zero_point", "W_quantized", "W_scale", "W_zero_point", "int32",
                  "float", "scale")}
        ctx.initializers += [numpy_helper.from_array(w_q, names["W_quantized"]),
                 numpy_helper.from_array(scale, names["W_scale"]),
                 numpy_helper.from_array(np.zeros(scale.shape, np.int8), names["W_zero_point"])]
        nodes = [
            helper.make_node("DynamicQuantizeLinear", [node.input[0]],
                             [names["A_quantized"], names["A_scale"], names["A_zero_point"]],
                             name=unique_name(taken, f"{base}_DynamicQuantizeLinear")),
            helper.make_node("MatMulInteger", [names["A_quantized"], names["W_quantized"], names["A_zero_point"],
                                               names["W_zero_point"]], [names["int32"]],
                             name=unique_name(taken, f"{base}_MatMulInteger")),
            helper.make_node("Cast", [names["int32"]], [names["float"]], to=TensorProto.FLOAT,
                             name=unique_name(taken, f"{base}_Cast")),
            helper.make_node("Mul", [names["A_scale"], names["W_scale"]], [names["scale"]],
                             name=unique_name(taken, f"{base}_scale_Mul")),
            helper.make_node("Mul", [names["float"], names["scale"]], [node.output[0]],
                             name=unique_name(taken, f"{base}_output_Mul")),
        ]
        return nodes
