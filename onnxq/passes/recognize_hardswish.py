"""Recognise HardSwish written out as ``x * Clip(x + 3, 0, 6) / 6`` (paddle2onnx, some torch exports) and put one
``HardSwish`` node in its place.

PP-OCR's exports (benchmarks/realdata_ppocr.py) write every HardSwish as ``Add -> Clip -> Mul -> Div``. The
``Div`` has no integer kernel on onnxruntime's CPU provider, so between two integer Convs it costs a DQ, a float
Div and a Q over the whole tensor; as one ``HardSwish`` node the ort-cpu target rewrites it into integer ops with the
``1/6`` folded into the next Conv (passes/decompose_hard_activations.py), and in a float stem MLAS fuses it into
the float Conv. Matched through graph edges: ``Add(x, 3)`` (either operand order), ``Clip(., 0, 6)`` (bounds as
inputs or, before opset 11, attributes), ``Mul(x, .)`` and ``Div(., 6)`` or ``Mul(., 1/6)``, each intermediate
read by the next node only and no graph output. ONNX defines ``HardSwish(x) = x * max(0, min(1, x / 6 + 1/2))``,
equal to the written form up to float rounding. HardSwish needs opset 14: an older model holding the pattern is
upgraded first (the ONNX version converter, as for per-channel Q/DQ), and left alone if that fails.
"""

from __future__ import annotations

import logging

import onnx
from onnx import helper

from onnxq.errors import OnnxqError
from onnxq.graph import GraphIndex, attr, default_opset, node_name
from onnxq.passes.base import InPlacePass, PassResult
from onnxq.passes.rewrite import drop_unread_initializers
from onnxq.passes.upgrade_opset import UpgradeOpset

log = logging.getLogger(__name__)
HARDSWISH_OPSET = 14


def _scalar(index: GraphIndex, name: str) -> float | None:
    if not name or not index.is_initializer(name):
        return None
    value = index.array(name)
    return float(value.reshape(())) if value.size == 1 else None


def _close(value: float | None, expected: float) -> bool:
    return value is not None and abs(value - expected) <= 1e-6 * max(1.0, abs(expected))


class _Matcher:
    def __init__(self, graph: onnx.GraphProto) -> None:
        self.index = GraphIndex.build(graph)

    def only_reader(self, tensor: str) -> onnx.NodeProto | None:
        readers = self.index.consumers.get(tensor, [])
        if len(readers) != 1 or tensor in self.index.graph_outputs:
            return None
        return readers[0][0]

    def clip_bounds(self, clip: onnx.NodeProto) -> tuple[float | None, float | None]:
        if len(clip.input) > 1:
            low = _scalar(self.index, clip.input[1])
            high = _scalar(self.index, clip.input[2]) if len(clip.input) > 2 else None
            return low, high
        return attr(clip, "min"), attr(clip, "max")

    def match(self, add: onnx.NodeProto) -> tuple[str, list[onnx.NodeProto]] | None:
        """(x, [Add, Clip, Mul, Div]) when ``add`` starts the written-out HardSwish of x."""
        if add.op_type != "Add" or len(add.input) != 2:
            return None
        x = next((add.input[i] for i in (0, 1) if _close(_scalar(self.index, add.input[1 - i]), 3.0)), None)
        if x is None or self.index.is_initializer(x):
            return None
        clip = self.only_reader(add.output[0])
        if clip is None or clip.op_type != "Clip":
            return None
        low, high = self.clip_bounds(clip)
        if not (_close(low, 0.0) and _close(high, 6.0)):
            return None
        mul = self.only_reader(clip.output[0])
        if mul is None or mul.op_type != "Mul" or sorted(mul.input) != sorted([x, clip.output[0]]):
            return None
        scale = self.only_reader(mul.output[0])
        if scale is None or len(scale.input) != 2 or mul.output[0] not in scale.input or \
                (scale.op_type == "Div" and scale.input[0] != mul.output[0]):
            return None
        divisor = _scalar(self.index, next(t for t in scale.input if t != mul.output[0]))
        if not ((scale.op_type == "Div" and _close(divisor, 6.0)) or
                (scale.op_type == "Mul" and _close(divisor, 1 / 6))):
            return None
        nodes = [add, clip, mul, scale]
        if any(n.domain not in ("", "ai.onnx") for n in nodes):
            return None
        return x, nodes


class RecognizeHardSwish(InPlacePass):
    name = "recognize-hardswish"

    def call(self, model: onnx.ModelProto) -> PassResult:
        notes: list[str] = []
        if not any(_Matcher(model.graph).match(n) for n in model.graph.node):
            return PassResult(model, False)
        if default_opset(model) < HARDSWISH_OPSET:
            try:
                upgraded = UpgradeOpset(HARDSWISH_OPSET).call(model)
            except OnnxqError as exc:
                log.info("written-out HardSwish left as it is: %s", exc)
                return PassResult(model, False)
            model.CopyFrom(upgraded.model)
            notes += upgraded.notes
        matcher = _Matcher(model.graph)
        replaced: dict[int, onnx.NodeProto | None] = {}  # id(node) -> the HardSwish standing in for it, or None
        constants: set[str] = set()
        for node in model.graph.node:
            if id(node) in replaced:
                continue
            found = matcher.match(node)
            if found is None:
                continue
            x, nodes = found
            hardswish = helper.make_node("HardSwish", [x], [nodes[-1].output[0]],
                                         name=f"{node_name(nodes[0])}_HardSwish")
            constants |= {t for n in nodes for t in n.input if matcher.index.is_initializer(t)}
            for n in nodes[:-1]:
                replaced[id(n)] = None
            replaced[id(nodes[-1])] = hardswish
        if not replaced:
            return PassResult(model, False)
        kept = [replaced.get(id(n), n) for n in model.graph.node]
        count = sum(1 for n in replaced.values() if n is not None)
        del model.graph.node[:]
        model.graph.node.extend(n for n in kept if n is not None)
        drop_unread_initializers(model.graph, constants)
        return PassResult(model, True,
                          [*notes, f"recognised {count} written-out HardSwish (x * Clip(x + 3, 0, 6) / 6)"])
