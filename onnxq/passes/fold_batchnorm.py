"""Fold inference-mode BatchNormalization into the Conv, ConvTranspose or Gemm that feeds it.

Matched through graph edges, never by module order: the BN's input must be produced by the weighted op, that output
must have no other consumer and not be a graph output, the weights and BN parameters must be initializers, and the
BN channel count must equal the op's output channels. A BN that cannot be folded stays, with the reason in the
pass notes (and so in the quantization report).

With s = gamma / sqrt(var + eps), BN(y) = s * (y - mean) + beta, so the folded op has weights scaled by s along its
output-channel axis and bias ``s * (b - mean) + beta``:
- Conv: W (M, C/g, k...), output channels on axis 0;
- ConvTranspose: W (C, M/g, k...), output channel ``g_i * M/g + j`` on axis 1 within group ``g_i``;
- Gemm: Y = alpha * A @ B' + beta * C; output channels are B' columns (B rows when transB=1).
Arithmetic is done in float64 and stored in the weights' dtype.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxq.graph import GraphIndex, all_names, attr, node_name, remove_initializers, tensor_array, unique_name
from onnxq.passes.base import InPlacePass, PassResult

FOLDABLE_PRODUCERS = ("Conv", "ConvTranspose", "Gemm")


class _Skip(Exception):
    """This BN cannot be folded; the message says why."""


def _bn_scale_shift(index: GraphIndex, bn: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray]:
    names = list(bn.input[1:5])
    if len(names) != 4 or not all(index.is_initializer(n) for n in names):
        raise _Skip("BN parameters are not all initializers")
    gamma, beta, mean, var = (index.array(n).astype(np.float64) for n in names)
    eps = float(attr(bn, "epsilon", 1e-5))
    s = gamma / np.sqrt(var + eps)
    return s, beta - s * mean


def _scaled_weight(op: onnx.NodeProto, w: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, int]:
    """``w`` with output channel c multiplied by s[c], and the number of output channels."""
    if op.op_type == "Conv":
        channels = w.shape[0]
        if s.size != channels:
            raise _Skip(f"BN has {s.size} channels but the Conv has {channels} output channels")
        return w * s.reshape((-1,) + (1,) * (w.ndim - 1)), channels
    if op.op_type == "ConvTranspose":
        group = int(attr(op, "group", 1))
        cin, per_group = w.shape[0], w.shape[1]
        channels = per_group * group
        if s.size != channels:
            raise _Skip(f"BN has {s.size} channels but the ConvTranspose has {channels} output channels")
        grouped = w.reshape((group, cin // group, per_group) + w.shape[2:])
        factor = s.reshape((group, 1, per_group) + (1,) * (w.ndim - 2))
        return (grouped * factor).reshape(w.shape), channels
    trans_b = int(attr(op, "transB", 0))
    channels = w.shape[0] if trans_b else w.shape[1]
    if s.size != channels:
        raise _Skip(f"BN has {s.size} channels but the Gemm has {channels} outputs")
    return (w * s[:, None]) if trans_b else (w * s[None, :]), channels


def _gemm_bias(index: GraphIndex, op: onnx.NodeProto, channels: int) -> np.ndarray:
    """beta * C as a per-output-channel vector (0 when Gemm has no C)."""
    if len(op.input) < 3 or not op.input[2]:
        return np.zeros(channels)
    if not index.is_initializer(op.input[2]):
        raise _Skip("Gemm bias C is not an initializer")
    c = index.array(op.input[2]).astype(np.float64) * float(attr(op, "beta", 1.0))
    if c.size == 1:
        return np.full(channels, c.item())
    if c.size == channels and c.shape[-1] == channels:
        return c.reshape(channels)
    raise _Skip(f"Gemm bias C of shape {c.shape} is not per output channel")


def _fold_one(index: GraphIndex, bn: onnx.NodeProto, taken: set[str]) -> tuple[onnx.NodeProto, list]:
    """Returns the producer node rewritten, and the new initializers; raises _Skip when it cannot fold."""
    if len([o for o in bn.output if o]) != 1 or int(attr(bn, "training_mode", 0)):
        raise _Skip("BN is in training mode (it has running-statistics outputs)")
    op = index.producer.get(bn.input[0])
    if op is None or op.op_type not in FOLDABLE_PRODUCERS or op.domain not in ("", "ai.onnx"):
        raise _Skip(f"its input is produced by {op.op_type if op is not None else 'a graph input'}, not "
                    f"{'/'.join(FOLDABLE_PRODUCERS)}")
    if index.only_consumer(bn.input[0]) is not bn:
        raise _Skip(f"the output of {op.op_type} {op.name!r} has other consumers")
    if len(op.input) < 2 or not index.is_initializer(op.input[1]):
        raise _Skip(f"the weights of {op.op_type} {op.name!r} are not an initializer")
    s, shift = _bn_scale_shift(index, bn)
    w_proto = index.initializers[op.input[1]]
    w = tensor_array(w_proto)
    if not np.issubdtype(w.dtype, np.floating):
        raise _Skip(f"the weights of {op.op_type} {op.name!r} are not floating point")
    new_w, channels = _scaled_weight(op, w.astype(np.float64), s)
    if op.op_type == "Gemm":
        alpha = float(attr(op, "alpha", 1.0))
        bias = _gemm_bias(index, op, channels)
        new_b = s * bias + shift
        new_w = new_w * alpha
    else:
        has_bias = len(op.input) > 2 and op.input[2]
        if has_bias and not index.is_initializer(op.input[2]):
            raise _Skip(f"the bias of {op.op_type} {op.name!r} is not an initializer")
        bias = index.array(op.input[2]).astype(np.float64) if has_bias else np.zeros(channels)
        new_b = s * bias + shift
    w_name = unique_name(taken, f"{op.input[1]}_bnfolded")
    b_name = unique_name(taken, f"{node_name(op)}_bias_bnfolded")
    inits = [numpy_helper.from_array(new_w.astype(w.dtype), w_name),
             numpy_helper.from_array(new_b.astype(w.dtype), b_name)]
    folded = onnx.NodeProto()
    folded.CopyFrom(op)
    del folded.input[:]
    folded.input.extend([op.input[0], w_name, b_name])
    if op.op_type == "Gemm":  # alpha went into the weights, beta into the bias
        for a in [a for a in folded.attribute if a.name in ("alpha", "beta")]:
            folded.attribute.remove(a)
    folded.output[0] = bn.output[0]
    return folded, inits


class FoldBatchNorm(InPlacePass):
    name = "fold-batchnorm"

    def call(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        index = GraphIndex.build(graph)
        taken = all_names(graph)
        replaced: dict[int, onnx.NodeProto] = {}  # id(producer) -> folded node
        removed: set[int] = set()
        new_inits: list[onnx.TensorProto] = []
        vanished: set[str] = set()
        notes: list[str] = []
        for bn in graph.node:
            if bn.op_type != "BatchNormalization":
                continue
            try:
                folded, inits = _fold_one(index, bn, taken)
            except _Skip as why:
                notes.append(f"BatchNormalization {node_name(bn)!r} not folded: {why}")
                continue
            producer = index.producer[bn.input[0]]
            replaced[id(producer)] = folded
            removed.add(id(bn))
            vanished.add(producer.output[0])
            new_inits.extend(inits)
        if not replaced:
            return PassResult(model, False, notes)
        nodes = [replaced.get(id(n), n) for n in graph.node if id(n) not in removed]
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend(new_inits)
        _drop_unused_initializers(graph)
        kept_info = [v for v in graph.value_info if v.name not in vanished]
        del graph.value_info[:]
        graph.value_info.extend(kept_info)
        notes.insert(0, f"folded {len(removed)} BatchNormalization node(s)")
        return PassResult(model, True, notes)


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    index = GraphIndex.build(graph)
    inputs = {v.name for v in graph.input}
    unused = {i.name for i in graph.initializer if i.name not in index.consumers and i.name not in inputs
              and i.name not in index.graph_outputs}
    remove_initializers(graph, unused)
