"""Exact per-channel rescaling of an activation, shared by equalization and SmoothQuant.

A consumer ``y = W x`` (Conv, MatMul, Gemm) gives the same float output for ``x' = x / s`` and weights whose INPUT
channels are multiplied by ``s`` (``s > 0``). The division is put where it costs nothing when the graph allows it
(:func:`fold_into_producer`): into the rows and bias of the Conv that produced ``x``, directly or through a
positive-homogeneous activation (``f(x / s) = f(x) / s`` for ``s > 0``: Relu, LeakyRelu, PRelu with a scalar or
per-channel slope, Identity), checked on graph edges: every tensor on the way has that one consumer and is no graph
output. Otherwise (HardSwish, Clip/ReLU6, Sigmoid-weighted SiLU, several consumers, a graph input) a ``Mul`` by
``1 / s`` is inserted in front of the consumer alone -- exact for any producer, and fused by TensorRT into the
pointwise epilogue that precedes the QuantizeLinear.

A third way serves a runtime that quantizes every tensor between integer kernels (ort-cpu, where that Mul would read
an already quantized tensor): a HardSwish written as ``x * Clip(x + c, 0, 6)`` (the ort-cpu rewrite of
``passes/decompose_hard_activations.py``) after a Conv. The Conv's rows are divided by ``s`` (its output ``x' =
x / s``) and the ``Add(x, c)`` becomes a depthwise 1x1 ``Conv(x', weight s, bias c)`` that gives back ``x + c``: the
product ``x' * Clip(x + c, 0, 6)`` is the HardSwish output divided by ``s``, and every tensor on the way is either
equalized (``x'``, the product) or in a fixed range (the Clip). ``hardswish_producer`` checks it on graph edges.

The per-channel ranges that choose ``s`` come from one float pass over a few calibration batches
(:func:`channel_statistics`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxq.data import Batch
from onnxq.errors import OnnxqError
from onnxq.graph import GraphIndex, all_names, node_name, unique_name
from onnxq.padding_rows import ActivationReader
from onnxq.scales.rewrites import ChannelRewrite

HOMOGENEOUS_OPS = ("Relu", "LeakyRelu", "PRelu", "Identity")
#: the activation rows (tokens) :func:`channel_statistics` keeps per tensor, evenly spaced over its batches
MAX_ROWS = 1024


@dataclass(frozen=True)
class ChannelTarget:
    """The activation input of ``node`` (input 0), whose channels lie on ``axis`` (negative: from the end)."""

    node: str
    tensor: str
    axis: int


class PassObserver(Protocol):
    """What else a float pass of :func:`channel_statistics` reads: the tensors of ``axes`` (name -> channel axis) on
    its first ``batches`` batches, handed to :meth:`add` one value at a time."""

    @property
    def axes(self) -> Mapping[str, int]: ...

    @property
    def batches(self) -> int: ...

    def add(self, name: str, value: np.ndarray) -> None: ...


def channel_statistics(model: onnx.ModelProto, targets: list[ChannelTarget], data: Iterable[Batch], batches: int, *,
                       rows: Collection[str] = (), row_batches: int = 0, skip_padding: bool = True,
                       keep_rows: Callable[[np.ndarray], bool] | None = None, also: PassObserver | None = None,
                       ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One float pass: the largest |value| per channel of every target tensor over ``batches`` batches (channels on the
    last axis read at real tokens only when ``skip_padding``, :mod:`onnxq.padding_rows`), and the values of
    each tensor of ``rows`` as (rows, last axis), at most :data:`MAX_ROWS` evenly spaced rows over ``row_batches``
    batches (each batch's own share), for searches that simulate a layer on real inputs. ``keep_rows``: once the
    maxima are complete, a tensor of both whose maxima it rejects is no longer sampled (and the pass ends early when
    none is left). ``also`` gets its tensors' values from the same pass (the activation shift's samples)."""
    axes = {t.tensor: t.axis for t in targets}
    observed = dict(also.axes) if also is not None else {}
    whole = {**observed, **axes}
    reader = ActivationReader(model, list(dict.fromkeys([*axes, *rows, *observed])), skip_padding=skip_padding,
                              whole=frozenset(t for t, axis in whole.items() if axis >= 0))
    found: dict[str, np.ndarray] = {}
    kept: dict[str, list[np.ndarray]] = {n: [] for n in rows}
    last = max(batches, also.batches if also is not None else 0)
    for count, batch in enumerate(data, start=1):
        for name, value in reader.read(batch, f"batch {count} (equalization/SmoothQuant pass)").items():
            if name in axes and count <= batches:
                peak = _channel_peak(value, axes[name])
                found[name] = np.maximum(found[name], peak) if name in found else peak
            if name in kept and count <= row_batches:
                kept[name].append(sample_rows(value, max(1, MAX_ROWS // row_batches)))
            if name in observed and also is not None and count <= also.batches:
                also.add(name, value)
        if keep_rows is not None and count == batches:
            kept = {n: v for n, v in kept.items() if n not in found or keep_rows(found[n])}
        if count >= max(last, row_batches if kept else 0):
            break
    return found, {n: np.concatenate(v, axis=0) for n, v in kept.items() if v}


def _channel_peak(value: np.ndarray, axis: int) -> np.ndarray:
    value = np.abs(np.asarray(value, np.float32))
    axis %= value.ndim
    return value.max(axis=tuple(a for a in range(value.ndim) if a != axis)).astype(np.float64)


def sample_rows(x: np.ndarray, limit: int = MAX_ROWS) -> np.ndarray:
    """``x`` as (rows, last axis) float32, at most ``limit`` evenly spaced rows."""
    rows = np.asarray(x, np.float32).reshape(-1, np.shape(x)[-1])
    return rows[::row_step(rows.shape[0], limit)]


def row_step(rows: int, limit: int) -> int:
    """The stride that keeps at most ``limit`` of ``rows`` evenly spaced rows (:func:`sample_rows`)."""
    return max(1, -(-rows // max(1, limit)))


def set_input_initializer(model: onnx.ModelProto, node: onnx.NodeProto, i: int, value: np.ndarray, suffix: str,
                          index: GraphIndex | None = None) -> None:
    """Make input ``i`` of ``node`` hold ``value``: in place (same name) when ``node`` is the initializer's only
    user, else on a fresh initializer (a shared one is never edited)."""
    index = index or GraphIndex.build(model.graph)
    name = node.input[i]
    if len(index.consumers.get(name, [])) == 1 and name not in index.graph_outputs:
        index.initializers[name].CopyFrom(numpy_helper.from_array(value, name))
        return
    fresh = unique_name(all_names(model.graph), f"{name}_{suffix}")
    model.graph.initializer.append(numpy_helper.from_array(value, fresh))
    node.input[i] = fresh


def _scale_conv_rows(model: onnx.ModelProto, index: GraphIndex, conv: onnx.NodeProto, inv: np.ndarray) -> None:
    """Multiply output channel c of ``conv`` (weights and bias) by ``inv[c]``."""
    w = index.array(conv.input[1])
    set_input_initializer(model, conv, 1, (w.astype(np.float64) * inv.reshape((-1,) + (1,) * (w.ndim - 1)))
                          .astype(w.dtype), "eq", index)
    if len(conv.input) > 2 and conv.input[2]:
        b = index.array(conv.input[2])
        set_input_initializer(model, conv, 2, (b.astype(np.float64) * inv).astype(b.dtype), "eq", index)


def foldable_producer(index: GraphIndex, tensor: str, channels: int) -> onnx.NodeProto | None:
    """The Conv whose output rows can absorb a per-channel scale of ``tensor`` exactly, or None."""
    seen = tensor
    for _ in range(4):  # at most a short chain of homogeneous activations
        node = index.producer.get(seen)
        if node is None or index.only_consumer(seen) is None or node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type == "Conv":
            return _constant_conv(index, node, channels)
        if node.op_type not in HOMOGENEOUS_OPS:
            return None
        if node.op_type == "PRelu":
            slope = node.input[1]
            if not index.is_initializer(slope) or index.array(slope).size not in (1, channels):
                return None
        seen = node.input[0]
    return None


def hardswish_producer(index: GraphIndex, tensor: str, channels: int) -> tuple[onnx.NodeProto, onnx.NodeProto] | None:
    """The (Conv, Add) of ``tensor = x * Clip(Add(x, c), 0, hi)`` with ``x`` written by a Conv of ``channels`` output
    channels and read by the Add and the Mul alone, each intermediate (``tensor`` too) read once, ``c`` a constant
    scalar; or None."""
    mul = index.producer.get(tensor)
    if index.only_consumer(tensor) is None or mul is None or mul.op_type != "Mul" \
            or mul.domain not in ("", "ai.onnx") or len(mul.input) != 2:
        return None
    for x, gate in ((mul.input[0], mul.input[1]), (mul.input[1], mul.input[0])):
        clip = index.producer.get(gate)
        if clip is None or clip.op_type != "Clip" or index.only_consumer(gate) is not mul:
            continue
        add = index.producer.get(clip.input[0])
        if add is None or add.op_type != "Add" or x not in add.input or index.only_consumer(clip.input[0]) is not clip:
            continue
        shift = add.input[1] if add.input[0] == x else add.input[0]
        producer = index.producer.get(x)
        readers = {node_name(n) for n, _ in index.consumers.get(x, [])}
        if producer is None or producer.op_type != "Conv" or producer.domain not in ("", "ai.onnx") \
                or readers != {node_name(add), node_name(mul)} or x in index.graph_outputs:
            continue
        conv = _constant_conv(index, producer, channels)
        if conv is not None and index.is_initializer(shift) and index.array(shift).size == 1:
            return conv, add
    return None


def _constant_conv(index: GraphIndex, node: onnx.NodeProto, channels: int) -> onnx.NodeProto | None:
    """``node``, a Conv whose constant weight has ``channels`` output rows (and a constant bias, if any), or None."""
    ok = (index.is_initializer(node.input[1]) and index.array(node.input[1]).shape[0] == channels
          and (len(node.input) < 3 or not node.input[2] or index.is_initializer(node.input[2])))
    return node if ok else None


def _rescale_through_hardswish(model: onnx.ModelProto, index: GraphIndex, conv: onnx.NodeProto, add: onnx.NodeProto,
                               scale: np.ndarray, rank: int) -> None:
    """Divide ``conv``'s rows by ``scale`` and make ``add`` a depthwise 1x1 Conv(x', scale, c) = x + c."""
    _scale_conv_rows(model, index, conv, 1.0 / scale)
    x = conv.output[0]
    shift = add.input[1] if add.input[0] == x else add.input[0]
    taken = all_names(model.graph)
    base = node_name(add)
    weight, bias = unique_name(taken, f"{base}_scale"), unique_name(taken, f"{base}_shift")
    model.graph.initializer.extend([
        numpy_helper.from_array(scale.astype(np.float32).reshape((scale.size,) + (1,) * (rank - 1)), weight),
        numpy_helper.from_array(np.full(scale.size, float(index.array(shift).reshape(-1)[0]), np.float32), bias)])
    replacement = helper.make_node("Conv", [x, weight, bias], list(add.output), name=unique_name(taken, base),
                                   group=int(scale.size), kernel_shape=[1] * (rank - 2))
    position = list(model.graph.node).index(add)
    model.graph.node.remove(add)
    model.graph.node.insert(position, replacement)


def rescale_input(model: onnx.ModelProto, target: ChannelTarget, scale: np.ndarray, rank: int,
                  index: GraphIndex | None = None) -> str:
    """Make the consumer read ``tensor / scale`` (its weights must be multiplied by ``scale`` by the caller);
    returns how: ``"folded"`` into the producing Conv, or ``"mul"`` for an inserted Mul. ``index``: of ``model``
    as it is now (built when not given)."""
    index = index or GraphIndex.build(model.graph)
    taken = all_names(model.graph)
    inv = 1.0 / scale
    # a Conv's output channels are axis 1 (NCHW): only a channel-axis-1 target can fold into one
    producer = foldable_producer(index, target.tensor, scale.size) if target.axis == 1 else None
    if producer is not None:
        _scale_conv_rows(model, index, producer, inv)
        return "folded"
    through = hardswish_producer(index, target.tensor, scale.size) if target.axis == 1 else None
    if through is not None:
        _rescale_through_hardswish(model, index, through[0], through[1], scale, rank)
        return "hardswish"
    consumer = next(n for n in model.graph.node if (n.name or n.output[0]) == target.node)
    shape = [scale.size] + [1] * (rank - 1 - (target.axis % rank)) if target.axis >= 0 else [scale.size]
    factors = inv.astype(np.float32).reshape(shape)
    shared = _same_mul(model, index, target.tensor, factors)
    if shared is not None:  # another consumer of the tensor already reads it divided by the same factors
        consumer.input[0] = shared.output[0]
        nodes = list(model.graph.node)
        if nodes.index(shared) > nodes.index(consumer):  # keep the graph topologically sorted
            moved = onnx.NodeProto()
            moved.CopyFrom(shared)
            model.graph.node.remove(shared)
            model.graph.node.insert(list(model.graph.node).index(consumer), moved)
        return "mul"
    inv_name = unique_name(taken, f"{target.tensor}_inv_scale")
    out_name = unique_name(taken, f"{target.tensor}_scaled")
    model.graph.initializer.append(numpy_helper.from_array(factors, inv_name))
    mul = helper.make_node("Mul", [target.tensor, inv_name], [out_name], name=unique_name(taken, f"{out_name}_mul"))
    consumer.input[0] = out_name
    position = list(model.graph.node).index(consumer)
    model.graph.node.insert(position, mul)
    return "mul"


def _same_mul(model: onnx.ModelProto, index: GraphIndex, tensor: str, factors: np.ndarray) -> onnx.NodeProto | None:
    """An inserted Mul of ``tensor`` by exactly ``factors`` (SmoothQuant's consumers of one tensor share one), or
    None."""
    for node in model.graph.node:
        if (node.op_type == "Mul" and node.domain in ("", "ai.onnx") and list(node.input[:1]) == [tensor]
                and len(node.input) == 2 and node.input[1].startswith(f"{tensor}_inv_scale")
                and index.is_initializer(node.input[1])):
            value = index.array(node.input[1])
            if value.shape == factors.shape and np.array_equal(value, factors):
                return node
    return None


def apply_rewrite(model: onnx.ModelProto, rewrite: ChannelRewrite) -> str:
    """Apply one recorded rewrite: the consumer reads ``tensor / scale``, its weight is multiplied by ``scale`` on
    ``weight_axis``. The one code path of both the calibrated run and a replay from a scales file, so both give the
    same bits. Returns how the division was placed (``"folded"`` | ``"mul"``)."""
    consumer = next((n for n in model.graph.node if node_name(n) == rewrite.node), None)
    index = GraphIndex.build(model.graph)  # one index per rewrite: building it dominates the cost on real models
    if consumer is None or len(consumer.input) < 2 or consumer.input[0] != rewrite.tensor:
        raise OnnxqError(f"float rewrite of {rewrite.node!r}: the model has no node of that name reading "
                         f"{rewrite.tensor!r}; the rewrites were recorded on another model")
    if not index.is_initializer(consumer.input[1]):
        raise OnnxqError(f"float rewrite of {rewrite.node!r}: its weight {consumer.input[1]!r} is not a constant")
    dims = list(index.initializers[consumer.input[1]].dims)
    axis = rewrite.weight_axis % max(len(dims), 1)
    if not dims or dims[axis] != rewrite.scale.size:
        raise OnnxqError(f"float rewrite of {rewrite.node!r}: {rewrite.scale.size} factors, but its weight has "
                         f"shape {dims}; the rewrites were recorded on another model")
    how = rescale_input(model, ChannelTarget(rewrite.node, rewrite.tensor, rewrite.axis), rewrite.scale,
                        rewrite.rank, index)
    # the index is now stale only around the activation (an inserted Mul) and the producer's rows: the consumer's
    # weight, its initializer and its users are as they were
    consumer = next(n for n in model.graph.node if node_name(n) == rewrite.node)
    w = index.array(consumer.input[1])
    shape = [1] * w.ndim
    shape[axis] = -1
    value = (w.astype(np.float64) * rewrite.scale.reshape(shape)).astype(w.dtype)
    set_input_initializer(model, consumer, 1, value, "smooth" if rewrite.kind == "smoothquant" else "eq", index)
    return how


def drop_unused_initializers(model: onnx.ModelProto) -> None:
    index = GraphIndex.build(model.graph)
    used = set(index.consumers) | index.graph_outputs | {v.name for v in model.graph.input}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
