"""Fold a constant per-channel Add that sits between a Conv/ConvTranspose and a BatchNormalization into the
op's bias, so :class:`onnxq.passes.fold_batchnorm.FoldBatchNorm` can fold the BN next.

Some exporters write a convolution's bias as a separate ``Add`` (``Conv(x, W) + b`` with ``b`` of shape
``(C, 1, 1)`` or ``(1, C, 1, 1)``); the BN behind it then has an Add, not the Conv, as producer. Matched through
graph edges: the Add's other input is an initializer holding one value per output channel (or one scalar), the
Conv output has the Add as its only consumer, and the Add output feeds a BatchNormalization. Numerically equal:
``Conv(x, W, b0) + b == Conv(x, W, b0 + b)``.

With ``any_reader`` (the ``ort-cpu`` target, ``TargetRules.fold_bias_adds``) the Add is folded whatever reads it: on
onnxruntime's CPU provider a Conv with its bias as a separate Add is a ``QLinearConv`` and then a ``QLinearAdd`` (one
more kernel and one more rounding to uint8) or, when the bias is not an initializer, a float island (DQ, Add, Q)
between two integer kernels (docs/ort_cpu_rules.md 3.13).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxq.graph import GraphIndex, all_names, remove_nodes, unique_name
from onnxq.passes.base import InPlacePass, PassResult

WEIGHTED = ("Conv", "ConvTranspose")


def _channels(op: onnx.NodeProto, w: np.ndarray) -> int:
    if op.op_type == "Conv":
        return w.shape[0]
    group = next((a.i for a in op.attribute if a.name == "group"), 1)
    return w.shape[1] * group


def per_channel_vector(value: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """``value`` as a (channels,) vector when it broadcasts per channel over an NC... tensor of ``rank``."""
    if value.size == 1:
        return np.full(channels, value.reshape(()).item(), dtype=np.float64)
    shape = value.shape
    if value.size != channels or len(shape) > rank:
        return None
    padded = (1,) * (rank - len(shape)) + tuple(shape)
    if padded[1] != channels or any(d != 1 for i, d in enumerate(padded) if i != 1):
        return None
    return value.reshape(channels).astype(np.float64)


class FoldBiasAdd(InPlacePass):
    name = "fold-bias-add"

    def __init__(self, any_reader: bool = False) -> None:
        self.any_reader = any_reader  # fold whatever reads the Add, not only a BatchNormalization

    def call(self, model: onnx.ModelProto) -> PassResult:
        index = GraphIndex.build(model.graph)
        taken = all_names(model.graph)
        removed: set[int] = set()
        for add in model.graph.node:
            if add.op_type != "Add" or len(add.input) != 2:
                continue
            add_output = add.output[0]
            users = index.consumers.get(add_output, [])
            if not users or (not self.any_reader and any(u.op_type != "BatchNormalization" for u, _ in users)):
                continue
            for data_i in (0, 1):
                data, const = add.input[data_i], add.input[1 - data_i]
                op = index.producer.get(data)
                if op is None or op.op_type not in WEIGHTED or not index.is_initializer(const):
                    continue
                if index.only_consumer(data) is not add or len(op.input) < 2 or \
                        not index.is_initializer(op.input[1]):
                    continue
                w = index.array(op.input[1])
                channels = _channels(op, w)
                extra = per_channel_vector(index.array(const), channels, w.ndim)
                has_bias = len(op.input) > 2 and op.input[2]
                if extra is None or (has_bias and not index.is_initializer(op.input[2])):
                    continue
                bias = index.array(op.input[2]).astype(np.float64) if has_bias else np.zeros(channels)
                name = unique_name(taken, f"{op.name or op.output[0]}_bias_from_add")
                model.graph.initializer.append(numpy_helper.from_array((bias + extra).astype(w.dtype), name))
                while len(op.input) < 3:
                    op.input.append("")
                op.input[2] = name
                op.output[0] = add_output
                removed.add(id(add))
                break
        if not removed:
            return PassResult(model, False)
        remove_nodes(model.graph, removed)
        return PassResult(model, True, [f"folded {len(removed)} constant bias Add(s) into Conv/ConvTranspose"])
