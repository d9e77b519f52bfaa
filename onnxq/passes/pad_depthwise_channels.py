"""Pad the channel count of depthwise Conv chains up to a multiple of 16 with zero channels (ort-cpu target).

onnxruntime's ``QLinearConv`` takes MLAS's symmetric depthwise kernel (``MlasConvSymDepthwise``) on x86 only when the
channel count is a multiple of 16 (``GroupAlign = 16`` in MLAS ``convsym.cpp``); other counts fall back to the
generic ``MlasConvDepthwise`` (docs/ort_cpu_rules.md 3.9 and 3.14).

A *channel group* is the closure of tensors that carry the same channels: starting from a depthwise Conv's input it
grows through depthwise Convs (input and output), per-channel elementwise ops (activations, ``Add``/``Mul``/``Sub`` of
two group tensors or of a scalar/per-channel constant, ``Div`` by a constant) and ``GlobalAveragePool`` (the
squeeze-and-excitation branch), and ends at ungrouped Convs: a Conv writing a group tensor (the *producer*) gets
extra output channels with zero weight and zero bias, a Conv reading one (the *consumer*) gets extra input channels
with zero weight, and each depthwise Conv gets extra groups with zero weight and bias. Whatever the padded channels
hold (zero after the producer, a finite constant after an activation such as HardSigmoid), every consumer multiplies
them by zero, so the float outputs are unchanged. A group that reaches anything else -- a graph input or output, a
``Concat``, a ``Reshape``, a residual ``Add`` with a tensor from outside, an op that could turn a zero into an
infinity -- is left as it is.

The padded channels do enter the per-tensor calibration statistics of the group's activations (their values are the
activations of zero: 0, or 0.5 after a HardSigmoid), which moves the chosen ranges a little: PP-OCR classifier on
the real-model benchmark's inputs 24.91 -> 24.75 dB, on smooth random images 24.1 -> 26.2 dB (docs/ort_cpu_rules.md
3.14). Padding with copies of real channels instead (no artificial zeros in the statistics) measured worse with
equalization on, 21.9 dB: cross-layer equalization divides by the consuming Conv's input-channel weight range, which
is zero for an added channel (docs/ort_cpu_rules.md, the paragraph after 3.16).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from onnxq.graph import GraphIndex, all_names, attr, node_name, remove_initializers, unique_name
from onnxq.passes.base import InPlacePass, PassResult

log = logging.getLogger(__name__)

#: MLAS's ``GroupAlign`` for the symmetric depthwise kernel on x86 (convsym.cpp)
CHANNEL_ALIGN = 16
#: one-input ops that act on each channel separately and map finite values to finite values
PER_CHANNEL_UNARY = frozenset({"Relu", "Clip", "HardSigmoid", "HardSwish", "Sigmoid", "LeakyRelu", "Tanh",
                               "Identity", "GlobalAveragePool"})
#: two-input elementwise ops; for a constant operand the value its padded channels get
BINARY_PAD_VALUE = {"Add": 0.0, "Sub": 0.0, "Mul": 0.0, "Div": 1.0}


@dataclass
class ChannelGroup:
    """Tensors carrying the same ``channels`` channels, and the nodes around them."""

    channels: int
    tensors: set[str] = field(default_factory=set)
    producers: list[onnx.NodeProto] = field(default_factory=list)
    consumers: list[onnx.NodeProto] = field(default_factory=list)
    depthwise: list[onnx.NodeProto] = field(default_factory=list)
    elementwise: list[onnx.NodeProto] = field(default_factory=list)


def _is_standard(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx")


def _conv_weight(node: onnx.NodeProto, index: GraphIndex) -> np.ndarray | None:
    if node.op_type != "Conv" or not _is_standard(node) or len(node.input) < 2:
        return None
    if any(t and (not index.is_initializer(t) or t in index.graph_inputs) for t in node.input[1:3]):
        return None
    return index.array(node.input[1])


def _is_depthwise(node: onnx.NodeProto, index: GraphIndex, channels: int) -> bool:
    w = _conv_weight(node, index)
    return w is not None and w.shape[0] == channels and w.shape[1] == 1 and attr(node, "group", 1) == channels


def _is_dense(node: onnx.NodeProto, index: GraphIndex) -> bool:
    return _conv_weight(node, index) is not None and attr(node, "group", 1) == 1


class _GroupBuilder:
    """Grows one :class:`ChannelGroup` from a depthwise Conv's input; ``None`` when the group is unsafe to pad."""

    def __init__(self, index: GraphIndex, channels: int) -> None:
        self.index = index
        self.group = ChannelGroup(channels)
        self.seen: set[int] = set()
        self.queue: list[str] = []

    def build(self, start: str) -> ChannelGroup | None:
        self._add(start)
        while self.queue:
            tensor = self.queue.pop()
            if tensor in self.index.graph_inputs or tensor in self.index.graph_outputs:
                return None
            producer = self.index.producer.get(tensor)
            if producer is None or not self._visit(producer, tensor, as_reader=False):
                return None
            for reader, slot in self.index.consumers.get(tensor, []):
                if slot < 0 or not self._visit(reader, tensor, as_reader=True, slot=slot):
                    return None
        return self.group

    def _add(self, tensor: str) -> None:
        if tensor not in self.group.tensors:
            self.group.tensors.add(tensor)
            self.queue.append(tensor)

    def _visit(self, node: onnx.NodeProto, tensor: str, *, as_reader: bool, slot: int = 0) -> bool:
        index, channels = self.index, self.group.channels
        if _is_depthwise(node, index, channels):
            if as_reader and slot != 0:
                return False
            self._record(node, self.group.depthwise)
            self._add(node.input[0])
            self._add(node.output[0])
            return True
        if _is_dense(node, index):
            w = index.array(node.input[1])
            if as_reader:  # consumer: the tensor is its data input
                if slot != 0 or w.shape[1] != channels:
                    return False
                self._record(node, self.group.consumers)
            else:
                if w.shape[0] != channels:
                    return False
                self._record(node, self.group.producers)
            return True
        return self._visit_elementwise(node)

    def _visit_elementwise(self, node: onnx.NodeProto) -> bool:
        if not _is_standard(node) or len(node.output) != 1:
            return False
        if node.op_type in PER_CHANNEL_UNARY:
            if node.op_type == "Clip" and any(t and not self.index.is_initializer(t) for t in node.input[1:]):
                return False
            self._record(node, self.group.elementwise)
            self._add(node.input[0])
            self._add(node.output[0])
            return True
        if node.op_type not in BINARY_PAD_VALUE or len(node.input) != 2:
            return False
        for i, name in enumerate(node.input):
            if self.index.is_initializer(name):
                if self._constant_channels(name) is None:
                    return False
            elif node.op_type == "Div" and i == 1:
                return False  # a zero channel could become an infinity, and 0 * inf is NaN in the consumer
            else:
                self._add(name)
        self._record(node, self.group.elementwise)
        self._add(node.output[0])
        return True

    def _constant_channels(self, name: str) -> int | None:
        """1 for a scalar-like constant, ``channels`` for a per-channel one ([C,1,1] or [1,C,1,1]), else None."""
        value = self.index.array(name)
        if value.size == 1:
            return 1
        if value.ndim in (3, 4) and value.size == self.group.channels and value.shape[value.ndim - 3] == value.size:
            return self.group.channels
        return None

    def _record(self, node: onnx.NodeProto, into: list[onnx.NodeProto]) -> None:
        if id(node) not in self.seen:
            self.seen.add(id(node))
            into.append(node)


def channel_groups(graph: onnx.GraphProto, keep_float: frozenset[str] = frozenset()) -> list[ChannelGroup]:
    """The channel groups of ``graph`` whose depthwise Convs are not a multiple of :data:`CHANNEL_ALIGN` and that
    are safe to pad; groups touching a node named in ``keep_float`` (the float stem) are skipped."""
    index = GraphIndex.build(graph)
    groups: list[ChannelGroup] = []
    covered: set[str] = set()
    for node in graph.node:
        w = _conv_weight(node, index)
        if w is None or w.shape[1] != 1 or node.input[0] in covered:
            continue
        channels = w.shape[0]
        if channels % CHANNEL_ALIGN == 0 or attr(node, "group", 1) != channels or channels == 1:
            continue
        group = _GroupBuilder(index, channels).build(node.input[0])
        if group is None:
            log.debug("depthwise Conv %s: its channels reach an op that cannot be padded", node_name(node))
            continue
        covered |= group.tensors
        nodes = group.producers + group.consumers + group.depthwise + group.elementwise
        if any(node_name(n) in keep_float for n in nodes):
            continue
        groups.append(group)
    return groups


def _padded(value: np.ndarray, axis: int, target: int, fill: float = 0.0) -> np.ndarray:
    widths = [(0, 0)] * value.ndim
    widths[axis] = (0, target - value.shape[axis])
    return np.pad(value, widths, constant_values=np.asarray(fill, dtype=value.dtype))


class PadDepthwiseChannels(InPlacePass):
    """Pads every safe channel group (:func:`channel_groups`) to a multiple of :data:`CHANNEL_ALIGN`."""

    name = "pad-depthwise-channels"

    def __init__(self, keep_float: frozenset[str] = frozenset()) -> None:
        self.keep_float = keep_float

    def call(self, model: onnx.ModelProto) -> PassResult:
        groups = channel_groups(model.graph, self.keep_float)
        if not groups:
            return PassResult(model, False)
        taken = all_names(model.graph)
        replaced: set[str] = set()
        for group in groups:
            replaced |= self._pad(model.graph, group, taken)
        self._drop_shapes(model.graph, set().union(*(g.tensors for g in groups)))
        read = set(GraphIndex.build(model.graph).consumers) | {v.name for v in model.graph.input}
        remove_initializers(model.graph, replaced - read)
        padded = ", ".join(f"{g.channels}->{-(-g.channels // CHANNEL_ALIGN) * CHANNEL_ALIGN}" for g in groups)
        return PassResult(model, True, [f"padded {len(groups)} depthwise channel group(s) to a multiple of "
                                        f"{CHANNEL_ALIGN} ({padded})"])

    def _pad(self, graph: onnx.GraphProto, group: ChannelGroup, taken: set[str]) -> set[str]:
        """Pads ``group``'s weights, biases and constants (as new initializers); the names of those replaced."""
        target = -(-group.channels // CHANNEL_ALIGN) * CHANNEL_ALIGN
        arrays = {t.name: t for t in graph.initializer}

        replaced: set[str] = set()

        def replace(node: onnx.NodeProto, slot: int, value: np.ndarray) -> None:
            replaced.add(node.input[slot])
            name = unique_name(taken, f"{node.input[slot]}_pad{target}")
            graph.initializer.append(numpy_helper.from_array(value, name))
            arrays[name] = graph.initializer[-1]
            node.input[slot] = name

        def value(name: str) -> np.ndarray:
            return numpy_helper.to_array(arrays[name])

        for node in group.producers + group.depthwise:
            replace(node, 1, _padded(value(node.input[1]), 0, target))
            if len(node.input) > 2 and node.input[2]:
                replace(node, 2, _padded(value(node.input[2]), 0, target))
        for node in group.depthwise:
            for a in node.attribute:
                if a.name == "group":
                    a.i = target
        for node in group.consumers:
            replace(node, 1, _padded(value(node.input[1]), 1, target))
        for node in group.elementwise:
            for slot, name in enumerate(node.input):
                if name in arrays and node.op_type in BINARY_PAD_VALUE:
                    const = value(name)
                    if const.size == group.channels and const.size > 1:
                        axis = const.ndim - 3
                        replace(node, slot, _padded(const, axis, target, BINARY_PAD_VALUE[node.op_type]))
        return replaced

    @staticmethod
    def _drop_shapes(graph: onnx.GraphProto, tensors: set[str]) -> None:
        """Recorded shapes of padded tensors are stale: drop them (shape inference writes them again)."""
        for i in reversed([i for i, v in enumerate(graph.value_info) if v.name in tensors]):
            del graph.value_info[i]
