"""The float rewrites a quantization made to its float model (equalization, SmoothQuant, bias correction), as data.

Cross-layer / depthwise-input equalization and SmoothQuant (:mod:`onnxq.recovery.equalization`,
:mod:`onnxq.recovery.smoothquant`) rescale activation channels of the float model, exactly in float: the consumer
reads ``x / s`` and its weights absorb ``s``. The scales calibrated afterwards belong to that rewritten graph, not
to the original float model. So every rewrite is recorded as a :class:`ChannelRewrite` (which consumer, which
input, the per-channel factors ``s`` as float64), and the whole list as :class:`FloatRewrites` with a digest of the
float weights before and after. The record travels

* in the quantized model, as the ONNX model metadata entry ``onnxq.float_rewrites`` (``ModelProto.metadata_props``,
  a string map runtimes ignore), and
* in the onnxq JSON scales file (version 3, key ``"float_rewrites"``), written by ``onnxq export-scales``,

so ``onnxq quantize ORIGINAL.onnx --scales scales.json`` replays exactly the same rewrites before inserting Q/DQ
(:mod:`onnxq.recovery.replay`). JSON document of the record::

    {"weights_before": "<sha256>", "weights_after": "<sha256>",
     "rewrites": [{"kind": "depthwise", "node": "Conv_12", "tensor": "x", "axis": 1, "rank": 4,
                   "weight_axis": 0, "scale": [0.51, 1.0, ...]}, ...]}

``kind`` is ``"cle-pair"`` | ``"depthwise"`` | ``"smoothquant"`` (informational); ``axis`` is the activation's
channel axis (negative: from the end), ``rank`` the rank the inserted ``Mul`` broadcasts to, ``weight_axis`` the
axis of the consumer's weight (input 1) multiplied by ``scale``. Factors are JSON numbers in Python's shortest
round-trip form, so they read back bit-exactly.

The activation shift (:mod:`onnxq.recovery.activation_shift`) runs after them, still before the ranges: the
readers of ``tensor`` read ``tensor - shift`` through one inserted ``Add`` and their biases absorb ``W shift``. It is
recorded as a :class:`ShiftRewrite`::

    {"kind": "shift", "tensor": "x", "axis": 1, "rank": 4, "nodes": ["Conv_9"], "shift": [0.8, 1.9, ...]}

Bias correction (:mod:`onnxq.recovery.bias_correction`) runs after the ranges, on the Q/DQ model; the scales do not
depend on it, but the deployed model does (the corrected biases are float, outside any Q/DQ). Each corrected layer
is recorded as a :class:`BiasRewrite`, after the channel rewrites, with the layer's final bias values (float32, so
the replay is exact rather than re-adding a float64 delta)::

    {"kind": "bias-correction", "node": "Conv_7", "bias": [0.013, -0.2, ...]}

A run whose weights were re-rounded (GPTQ, AdaRound) records no bias rewrites: a replay on the original float
weights could not reproduce those weights, so the record stops at the rewrites it can replay.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxq.errors import OnnxqError

#: key of the record in ``ModelProto.metadata_props``
METADATA_KEY = "onnxq.float_rewrites"
CHANNEL_KINDS = ("cle-pair", "depthwise", "smoothquant")
BIAS_KIND = "bias-correction"
SHIFT_KIND = "shift"
KINDS = (*CHANNEL_KINDS, SHIFT_KIND, BIAS_KIND)
#: the quantize flag that leaves out each kind of rewrite
FLAG_OF_KIND = {"cle-pair": "--no-equalize", "depthwise": "--no-equalize", "smoothquant": "--smoothquant off",
                SHIFT_KIND: "--no-shift-activations", BIAS_KIND: "--no-bias-correction"}


@dataclass(frozen=True)
class ChannelRewrite:
    """``node`` reads ``tensor / scale`` (channels on ``axis``); its weight is multiplied by ``scale`` on
    ``weight_axis``."""

    kind: str
    node: str
    tensor: str
    axis: int
    rank: int
    weight_axis: int
    scale: np.ndarray  # float64, one factor per channel, all > 0

    def to_document(self) -> dict[str, Any]:
        return {"kind": self.kind, "node": self.node, "tensor": self.tensor, "axis": self.axis, "rank": self.rank,
                "weight_axis": self.weight_axis, "scale": [float(v) for v in self.scale]}


@dataclass(frozen=True)
class BiasRewrite:
    """``node`` (a Conv/Gemm) gets ``bias`` (float32, its final values) as its bias input."""

    node: str
    bias: np.ndarray  # float32, one value per output channel
    kind: str = BIAS_KIND

    def to_document(self) -> dict[str, Any]:
        return {"kind": self.kind, "node": self.node, "bias": [float(v) for v in self.bias]}


@dataclass(frozen=True)
class ShiftRewrite:
    """The layers ``nodes`` (1x1 Conv / Gemm, every reader of ``tensor``) read ``tensor - shift`` (channels on
    ``axis`` of a ``rank``-d tensor) and their biases absorb ``W shift`` (:mod:`onnxq.recovery.activation_shift`)."""

    tensor: str
    axis: int
    rank: int
    nodes: tuple[str, ...]
    shift: np.ndarray  # float64, one value per channel
    kind: str = SHIFT_KIND

    def to_document(self) -> dict[str, Any]:
        return {"kind": self.kind, "tensor": self.tensor, "axis": self.axis, "rank": self.rank,
                "nodes": list(self.nodes), "shift": [float(v) for v in self.shift]}


Rewrite = ChannelRewrite | ShiftRewrite | BiasRewrite


@dataclass(frozen=True)
class FloatRewrites:
    """Every rewrite of one run, in the order applied, with the float weights' digest before and after."""

    rewrites: tuple[Rewrite, ...]
    weights_before: str
    weights_after: str

    def to_document(self) -> dict[str, Any]:
        return {"weights_before": self.weights_before, "weights_after": self.weights_after,
                "rewrites": [r.to_document() for r in self.rewrites]}

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for r in self.rewrites:
            counts[r.kind] = counts.get(r.kind, 0) + 1
        return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())) or "none"

    def disabling_flags(self) -> str:
        """The quantize flags of a run without these rewrites, e.g. ``--no-equalize --no-bias-correction``."""
        return " ".join(dict.fromkeys(FLAG_OF_KIND[r.kind] for r in self.rewrites))


def weights_digest(model: onnx.ModelProto) -> str:
    """sha256 of every initializer's name, type, shape and values, in graph order."""
    digest = hashlib.sha256()
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        digest.update(f"{init.name}|{array.dtype}|{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _int(doc: Mapping, key: str, where: str) -> int:
    value = doc.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise OnnxqError(f"{where}: {key!r} must be an integer, got {value!r}")
    return value


def _str(doc: Mapping, key: str, where: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise OnnxqError(f"{where}: {key!r} must be a non-empty string, got {value!r}")
    return value


def _numbers(doc: Mapping, key: str, where: str) -> list[float]:
    values = doc.get(key)
    if (not isinstance(values, list) or not values
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            or not all(math.isfinite(v) for v in values)):
        raise OnnxqError(f"{where}: {key} must be a non-empty list of finite numbers")
    return values


def _bias_rewrite(doc: Mapping, where: str) -> BiasRewrite:
    values = _numbers(doc, "bias", where)
    bias = np.asarray(values, dtype=np.float64)
    if np.any(np.abs(bias) > np.finfo(np.float32).max):
        raise OnnxqError(f"{where}: bias values must fit float32")
    return BiasRewrite(_str(doc, "node", where), bias.astype(np.float32))


def _shift_rewrite(doc: Mapping, where: str) -> ShiftRewrite:
    nodes = doc.get("nodes")
    if not isinstance(nodes, list) or not nodes or not all(isinstance(n, str) and n for n in nodes):
        raise OnnxqError(f"{where}: nodes must be a non-empty list of node names")
    rank = _int(doc, "rank", where)
    if rank < 2:
        raise OnnxqError(f"{where}: rank must be at least 2, got {rank}")
    return ShiftRewrite(_str(doc, "tensor", where), _int(doc, "axis", where), rank, tuple(nodes),
                        np.asarray(_numbers(doc, "shift", where), dtype=np.float64))


def _rewrite(doc: Any, where: str) -> Rewrite:
    if not isinstance(doc, Mapping):
        raise OnnxqError(f"{where}: expected an object with kind, node, tensor, axis, rank, weight_axis, scale")
    kind = _str(doc, "kind", where)
    if kind not in KINDS:
        raise OnnxqError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == BIAS_KIND:
        return _bias_rewrite(doc, where)
    if kind == SHIFT_KIND:
        return _shift_rewrite(doc, where)
    scale = doc.get("scale")
    if (not isinstance(scale, list) or not scale
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scale)):
        raise OnnxqError(f"{where}: scale must be a non-empty list of finite, positive numbers")
    if not all(math.isfinite(v) and v > 0 for v in scale):
        raise OnnxqError(f"{where}: scale factors must be finite and positive")
    rank = _int(doc, "rank", where)
    if rank < 1:
        raise OnnxqError(f"{where}: rank must be at least 1, got {rank}")
    return ChannelRewrite(kind, _str(doc, "node", where), _str(doc, "tensor", where), _int(doc, "axis", where),
                          rank, _int(doc, "weight_axis", where), np.asarray(scale, dtype=np.float64))


def from_document(doc: Any, source: str) -> FloatRewrites:
    """A record read back from its JSON document; one-line errors name ``source``."""
    where = f"{source}: float_rewrites"
    if not isinstance(doc, Mapping):
        raise OnnxqError(f"{where} must be an object with weights_before, weights_after and rewrites")
    items = doc.get("rewrites")
    if not isinstance(items, list):
        raise OnnxqError(f"{where}: \"rewrites\" must be a list")
    rewrites = tuple(_rewrite(item, f"{where}[{i}]") for i, item in enumerate(items))
    return FloatRewrites(rewrites, _str(doc, "weights_before", where), _str(doc, "weights_after", where))


def record_in_model(model: onnx.ModelProto, record: FloatRewrites) -> None:
    """Store ``record`` in the model's metadata (replacing an earlier one)."""
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(record.to_document(), separators=(",", ":"))


def read_from_model(model: onnx.ModelProto, source: str = "model") -> FloatRewrites | None:
    """The record a quantized model carries, or None (not equalized, or quantized by another tool)."""
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            try:
                doc = json.loads(prop.value)
            except (json.JSONDecodeError, RecursionError) as exc:
                raise OnnxqError(f"{source}: metadata {METADATA_KEY!r} is not valid JSON: {exc}") from exc
            return from_document(doc, f"{source} metadata {METADATA_KEY}")
    return None
