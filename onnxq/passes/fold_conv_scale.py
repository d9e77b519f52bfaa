"""Fold a constant ``Mul`` after a Conv (one factor per output channel, or one scalar) into the Conv's weight and
bias: ``Conv(x, W, b) * s == Conv(x, W * s, b * s)`` (a convolution is linear in its weight and bias).

paddle2onnx writes the learnable affine blocks of PP-LCNetV3 (the backbone of PP-OCRv4 det and rec) as
``Conv -> Mul(scale) -> Add(bias)`` with scalar constants (28 such Muls in each model). On onnxruntime's CPU provider
each one is an integer kernel and one more rounding to uint8 between the Conv and its activation
(docs/ort_cpu_rules.md 3.13); the ``Add`` that follows is folded next by
:class:`onnxq.passes.fold_bias_add.FoldBiasAdd` (``any_reader``).

Matched through graph edges: the Conv's weight (and bias, if any) are initializers, its output is read by the Mul
alone and is no graph output, and the Mul's other input is an initializer that broadcasts per output channel. The
scaled weight and bias are new initializers; the old ones are dropped when nothing else reads them.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxq.graph import GraphIndex, all_names, remove_initializers, remove_nodes, unique_name
from onnxq.passes.base import InPlacePass, PassResult
from onnxq.passes.fold_bias_add import per_channel_vector


class FoldConvScale(InPlacePass):
    name = "fold-conv-scale"

    def call(self, model: onnx.ModelProto) -> PassResult:
        index = GraphIndex.build(model.graph)
        taken = all_names(model.graph)
        removed: set[int] = set()
        replaced: set[str] = set()
        for mul in model.graph.node:
            if mul.op_type != "Mul" or mul.domain not in ("", "ai.onnx") or len(mul.input) != 2:
                continue
            for data_i in (0, 1):
                conv, factors = self._match(index, mul, data_i)
                if conv is None or factors is None:
                    continue
                self._scale(model, index, conv, factors, taken, replaced)
                conv.output[0] = mul.output[0]
                removed.add(id(mul))
                break
        if not removed:
            return PassResult(model, False)
        remove_nodes(model.graph, removed)
        read = set(GraphIndex.build(model.graph).consumers) | {v.name for v in model.graph.input}
        remove_initializers(model.graph, replaced - read)
        return PassResult(model, True, [f"folded {len(removed)} constant Mul(s) into the Conv before them"])

    @staticmethod
    def _match(index: GraphIndex, mul: onnx.NodeProto,
               data_i: int) -> tuple[onnx.NodeProto | None, np.ndarray | None]:
        data, const = mul.input[data_i], mul.input[1 - data_i]
        conv = index.producer.get(data)
        if conv is None or conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx") or len(conv.input) < 2:
            return None, None
        if not index.is_initializer(const) or const in index.graph_inputs or index.only_consumer(data) is not mul:
            return None, None
        params = [t for t in conv.input[1:3] if t]
        if any(not index.is_initializer(t) or t in index.graph_inputs for t in params):
            return None, None
        w = index.array(conv.input[1])
        factors = per_channel_vector(index.array(const), w.shape[0], w.ndim)
        if factors is None or not np.all(np.isfinite(factors)):
            return None, None
        return conv, factors

    @staticmethod
    def _scale(model: onnx.ModelProto, index: GraphIndex, conv: onnx.NodeProto, factors: np.ndarray,
               taken: set[str], replaced: set[str]) -> None:
        base = conv.name or conv.output[0]
        for i, suffix in ((1, "weight"), (2, "bias")):
            if i >= len(conv.input) or not conv.input[i]:
                continue
            value = index.array(conv.input[i])
            shape = (-1,) + (1,) * (value.ndim - 1)
            scaled = (value.astype(np.float64) * factors.reshape(shape)).astype(value.dtype)
            name = unique_name(taken, f"{base}_{suffix}_scaled")
            model.graph.initializer.append(numpy_helper.from_array(scaled, name))
            replaced.add(conv.input[i])
            conv.input[i] = name
