"""Per-channel activation shift: a symmetric INT8 quantizer centred on each channel's range, exact in float.

TensorRT quantizes activations symmetrically (zero point 0). An activation that is almost one-sided (after ReLU,
SiLU, HardSwish or an affine ``Mul``/``Add`` behind one: ``[-0.3, 4.3]``) then uses about half of the 256 codes, and
channels whose ranges sit at different places share one grid centred at zero. A linear layer ``y = W x + b`` gives
the same float output for ``x' = x - c`` and the bias ``b + W c``, for any per-channel ``c`` (the channel-wise
shifting of Outlier Suppression+, Wei et al. 2023, https://arxiv.org/abs/2304.09145). With ``c`` the centre of each
channel's range (clipped to the tensor's error-optimal asymmetric window) the quantized ``x'`` uses the whole grid:
on the calibration samples the symmetric error of the shifted tensor is what a per-channel zero point would give.

Where it is exact, checked on graph edges: a Conv with all kernel dims 1 and no padding (a padded border would read
``-c`` where the model reads 0) and ``group == 1``, or a Gemm (``transA == 0``, ``alpha == beta == 1``), reading the
tensor as its input 0 with a constant weight. Every reader of the tensor must be such a layer, so no other node sees
the shifted values; a tensor written by a data-movement op (Concat, Split, Resize, pooling, Softmax, reshaping),
whose quantization the plan ties to the tensors around it, is left alone. The subtraction is one inserted ``Add``
(TensorRT fuses it into the pointwise epilogue before the QuantizeLinear).

The bias ``b + W c`` keeps the FLOAT model exact, but the quantized layer computes ``W_q x' + b + W c``: its weight
error ``(W_q - W)`` now multiplies ``x - c`` instead of ``x``, and the constant ``(W - W_q) c`` is a mean output shift
as large as ``c`` is. Bias correction removes it with the rest of the layer's mean error (it measures the exact float
model, so the compensation must not be in that model yet); a layer it leaves alone (a score head's branch, an
output layer, bias correction off) gets :func:`compensate_shifts`, which adds ``(W_q - W) c`` to the bias once the
weight scales are known, so the layer's weight error is the unshifted one again. Learned weight rounding (GPTQ,
AdaRound) changes ``W_q`` after that, so the shift is not combined with it.

Each shift is recorded with the float rewrites (:class:`onnxq.scales.rewrites.ShiftRewrite`), so exported scales
replay it; the compensation is a bias change, recorded like bias correction's.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxq.data import Batch
from onnxq.dtypes import quant_dtype
from onnxq.errors import OnnxqError
from onnxq.graph import GraphIndex, all_names, attr, node_name, recorded_ranks, unique_name
from onnxq.padding_rows import ActivationReader
from onnxq.recovery.channel_scale import row_step, set_input_initializer
from onnxq.recovery.layers import fake_quantize
from onnxq.scales.rewrites import ChannelRewrite, Rewrite, ShiftRewrite
from onnxq.scales.types import ScaleTable

log = logging.getLogger(__name__)

#: producers whose output's quantization the plan ties to other tensors (shared scales, pass-through ops)
TIED_PRODUCERS = frozenset({"Concat", "Split", "Softmax", "Resize", "MaxPool", "AveragePool", "GlobalAveragePool",
                            "GlobalMaxPool", "Reshape", "Transpose", "Slice", "Flatten", "Squeeze", "Unsqueeze",
                            "Gather", "Upsample"})
#: a shift is kept where it lowers the tensor's best symmetric INT8 error by at least this much
MIN_GAIN_DB = 1.0
#: a larger gain means the shifted samples are constant up to rounding: every channel seen once (an SE block's
#: squeezed vector on one-image batches) or constant, which leaves nothing to centre
DEGENERATE_GAIN_DB = 120.0
#: sample values per tensor the window and the gate are computed on
SAMPLE_VALUES = 16384
QMAX = 127


@dataclass(frozen=True)
class ShiftTarget:
    """A tensor every reader of which is a shiftable layer; channels on ``axis`` of a ``rank``-d tensor."""

    tensor: str
    axis: int
    rank: int
    channels: int
    readers: tuple[str, ...]


@dataclass
class ChannelSpread:
    """Per-channel minimum and maximum of a tensor, and sampled rows (channels last)."""

    lo: np.ndarray
    hi: np.ndarray
    rows: list[np.ndarray]


def _reader_channels(index: GraphIndex, node: onnx.NodeProto, tensor: str) -> tuple[int, int] | None:
    """(channel axis, channel count) of ``tensor`` when ``node`` is a layer a shift of it folds into exactly."""
    if node.domain not in ("", "ai.onnx") or len(node.input) < 2 or node.input[0] != tensor or tensor in node.input[1:]:
        return None
    if not index.is_initializer(node.input[1]):
        return None
    w = index.array(node.input[1])
    bias_ok = len(node.input) < 3 or not node.input[2] or index.is_initializer(node.input[2])
    if node.op_type == "Conv":
        kernel = w.shape[2:]
        pads = attr(node, "pads", [])
        auto_pad = attr(node, "auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if (w.ndim < 3 or any(k != 1 for k in kernel) or any(pads) or auto_pad not in ("NOTSET", "VALID")
                or attr(node, "group", 1) != 1 or not bias_ok):
            return None
        return 1, int(w.shape[1])
    if node.op_type == "Gemm":
        if (w.ndim != 2 or attr(node, "transA", 0) or attr(node, "alpha", 1.0) != 1.0
                or attr(node, "beta", 1.0) != 1.0 or not bias_ok):
            return None
        if len(node.input) > 2 and node.input[2] and index.array(node.input[2]).size not in (1, _gemm_n(node, w)):
            return None
        return -1, int(w.shape[1] if attr(node, "transB", 0) else w.shape[0])
    return None


def _gemm_n(node: onnx.NodeProto, w: np.ndarray) -> int:
    return int(w.shape[0] if attr(node, "transB", 0) else w.shape[1])


def shift_targets(model: onnx.ModelProto) -> list[ShiftTarget]:
    """The tensors a shift applies to exactly (module docstring), with known rank, in graph order."""
    index = GraphIndex.build(model.graph)
    ranks = recorded_ranks(model.graph)
    targets: list[ShiftTarget] = []
    seen: set[str] = set()
    for node in model.graph.node:
        if not node.input or node.input[0] in seen or node.op_type not in ("Conv", "Gemm"):
            continue
        tensor = node.input[0]
        seen.add(tensor)
        producer = index.producer.get(tensor)
        if producer is not None and producer.op_type in TIED_PRODUCERS:
            continue
        if index.is_initializer(tensor) or tensor in index.graph_outputs or tensor not in ranks:
            continue
        readers = index.consumers.get(tensor, [])
        found = [_reader_channels(index, reader, tensor) if i == 0 else None for reader, i in readers]
        if not found or any(f is None for f in found) or len(set(found)) != 1:
            continue
        axis, channels = found[0]  # type: ignore[misc]
        rank = ranks[tensor]
        if rank < 2 or (axis == 1 and rank < 3):
            continue
        targets.append(ShiftTarget(tensor, axis, rank, channels, tuple(node_name(r) for r, _ in readers)))
    return targets


class SpreadSampler:
    """Per-channel minima, maxima and sampled rows of the tensors of ``axes`` (name -> channel axis), from the values
    of a float pass over ``batches`` batches, one tensor value at a time (:meth:`add`)."""

    def __init__(self, axes: Mapping[str, int], batches: int) -> None:
        self.axes = dict(axes)
        self.batches = batches
        self.spreads: dict[str, ChannelSpread] = {}

    def add(self, name: str, value: np.ndarray) -> None:
        value = np.asarray(value, np.float32)
        axis = self.axes[name] % value.ndim
        others = tuple(a for a in range(value.ndim) if a != axis)
        lo, hi = value.min(axis=others).astype(np.float64), value.max(axis=others).astype(np.float64)
        # every step-th row of the channels-last rows, gathered without copying the whole tensor channels-last
        rows = np.moveaxis(value, axis, -1)
        count = rows.size // max(rows.shape[-1], 1)
        step = row_step(count, SAMPLE_VALUES // (rows.shape[-1] * self.batches))
        sample = rows[np.unravel_index(np.arange(0, count, step), rows.shape[:-1])]
        spread = self.spreads.get(name)
        if spread is None:
            self.spreads[name] = ChannelSpread(lo, hi, [sample])
        else:
            spread.lo, spread.hi = np.minimum(spread.lo, lo), np.maximum(spread.hi, hi)
            spread.rows.append(sample)


def shift_statistics(model: onnx.ModelProto, targets: list[ShiftTarget], data: Iterable[Batch], batches: int, *,
                     skip_padding: bool = True) -> dict[str, ChannelSpread]:
    """One float pass over ``batches`` batches: per target, its channels' minima and maxima and sampled rows."""
    sampler = SpreadSampler({t.tensor: t.axis for t in targets}, batches)
    reader = ActivationReader(model, list(sampler.axes), skip_padding=skip_padding,
                              whole=frozenset(t for t, axis in sampler.axes.items() if axis >= 0))
    for count, batch in enumerate(data, start=1):
        for name, value in reader.read(batch, f"batch {count} (activation shift pass)").items():
            sampler.add(name, value)
        if count >= batches:
            break
    return sampler.spreads


def shift_candidates(model: onnx.ModelProto) -> dict[str, int]:
    """Every tensor some layer could read shifted (input 0 of a 1x1 Conv or Gemm a shift folds into), with its
    channel axis: what a float pass BEFORE equalization and SmoothQuant samples for the shift, to be mapped through
    their rewrites (:func:`spreads_after_rewrites`) instead of a second pass after them."""
    index = GraphIndex.build(model.graph)
    ranks = recorded_ranks(model.graph)
    found: dict[str, int] = {}
    for node in model.graph.node:
        tensor = node.input[0] if node.op_type in ("Conv", "Gemm") and node.input else ""
        if not tensor or tensor in found or tensor not in ranks or index.is_initializer(tensor):
            continue
        producer = index.producer.get(tensor)
        if producer is not None and producer.op_type in TIED_PRODUCERS:
            continue
        channels = _reader_channels(index, node, tensor)
        if channels is not None:
            found[tensor] = channels[0]
    return found


def _divided(spread: ChannelSpread, scale: np.ndarray) -> ChannelSpread:
    """The spread of ``x / scale`` (per channel, ``scale > 0``) from that of ``x``."""
    inverse = (1.0 / scale).astype(np.float32)
    return ChannelSpread(spread.lo / scale, spread.hi / scale, [rows * inverse for rows in spread.rows])


def spreads_after_rewrites(targets: Iterable[ShiftTarget], before: Mapping[str, ChannelSpread],
                           rewrites: Iterable[Rewrite]) -> dict[str, ChannelSpread]:
    """The spreads of the ``targets`` of the rewritten model from ``before`` (sampled on the model before the channel
    rewrites): a reader a rewrite names reads ``rewrite.tensor / scale`` (:class:`ChannelRewrite`), any other reads
    its input as it was. A target whose readers disagree, that two rewrites of one reader rescale, or whose source
    was not sampled is left out (the caller samples it on the rewritten model)."""
    by_node: dict[str, list[ChannelRewrite]] = {}
    for rewrite in rewrites:
        if isinstance(rewrite, ChannelRewrite):
            by_node.setdefault(rewrite.node, []).append(rewrite)
    mapped: dict[str, ChannelSpread] = {}
    for target in targets:
        found = [by_node.get(reader, []) for reader in target.readers]
        sources = {(f[0].tensor, f[0].scale.tobytes()) if f else (target.tensor, b"") for f in found}
        if any(len(f) > 1 for f in found) or len(sources) != 1:
            continue
        rescaled = found[0][0] if found[0] else None
        spread = before.get(rescaled.tensor if rescaled else target.tensor)
        if spread is not None:
            mapped[target.tensor] = _divided(spread, rescaled.scale) if rescaled else spread
    return mapped


class SortedSample:
    """Sample values sorted, with prefix sums of the values and their squares: the squared error of any uniform grid
    over them is a sum over the grid's codes (binary searches for its rounding edges), not over every value."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = np.sort(np.asarray(values, np.float64).ravel())
        self.sums = np.concatenate(([0.0], np.cumsum(self.values)))
        self.squares = np.concatenate(([0.0], np.cumsum(self.values ** 2)))

    def grid_errors(self, lows: np.ndarray, steps: np.ndarray, levels: int = 256) -> np.ndarray:
        """Mean squared error over the sample of each grid ``lows[i] + k * steps[i]`` (``k`` in ``[0, levels)``),
        every value rounded to its nearest code and clipped to the ends."""
        codes = np.arange(levels, dtype=np.float64)
        edges = lows[:, None] + (codes[1:] - 0.5)[None, :] * steps[:, None]
        bounds = np.concatenate([np.zeros((len(lows), 1), np.int64), np.searchsorted(self.values, edges),
                                 np.full((len(lows), 1), self.values.size, np.int64)], axis=1)
        counts = np.diff(bounds, axis=1)
        sums = np.diff(self.sums[bounds], axis=1)
        squares = np.diff(self.squares[bounds], axis=1)
        q = lows[:, None] + codes[None, :] * steps[:, None]
        errors = (squares - 2 * q * sums + counts * q * q).sum(axis=1)
        return np.maximum(errors, 0.0) / max(self.values.size, 1)


def symmetric_error(values: np.ndarray | SortedSample) -> float:
    """The least mean squared error of a symmetric INT8 grid over ``values``, over clipping fractions of the peak."""
    sample = values if isinstance(values, SortedSample) else SortedSample(values)
    if sample.values.size == 0:
        return 0.0
    peak = float(max(-sample.values[0], sample.values[-1]))
    if peak == 0:
        return 0.0
    steps = peak * np.linspace(0.05, 1.0, 40) / QMAX
    return float(sample.grid_errors(-(QMAX + 1) * steps, steps).min())


def asymmetric_window(values: np.ndarray | SortedSample) -> tuple[float, float]:
    """The ``[lo, hi]`` (lo at the minimum or a fraction of it, hi a fraction of the maximum) whose 256-step grid
    has the least mean squared error over ``values``."""
    sample = values if isinstance(values, SortedSample) else SortedSample(values)
    low, high = float(sample.values[0]), float(sample.values[-1])
    los = np.array([low]) if low >= 0 else low * np.array([1.0, 0.75, 0.5, 0.25])
    his = np.array([high]) if high <= 0 else high * np.linspace(0.05, 1.0, 40)
    lows, highs = np.repeat(los, his.size), np.tile(his, los.size)
    best = int(sample.grid_errors(lows, np.maximum(highs - lows, 1e-30) / 255).argmin())
    return float(lows[best]), float(highs[best])


def choose_shift(spread: ChannelSpread) -> tuple[np.ndarray, float] | None:
    """The per-channel shift of a tensor and its gain in dB (symmetric error before / after, on the samples), or
    None where the gain is below :data:`MIN_GAIN_DB`."""
    rows = np.concatenate(spread.rows).astype(np.float64)
    if rows.size == 0:
        return None
    sample = SortedSample(rows)
    lo, hi = asymmetric_window(sample)
    low, high = np.clip(spread.lo, lo, hi), np.clip(spread.hi, lo, hi)
    shift = (low + high) / 2
    before, after = symmetric_error(sample), symmetric_error(rows - shift)
    if before == 0 or after <= before * 10 ** (-DEGENERATE_GAIN_DB / 10):
        return None
    gain = 10 * np.log10(before / after)
    return (shift, float(gain)) if gain >= MIN_GAIN_DB else None


def apply_shift(model: onnx.ModelProto, rewrite: ShiftRewrite) -> None:
    """Make the readers of ``rewrite.tensor`` read ``tensor - shift`` (one inserted Add) and add ``W shift`` to
    their biases: the float model's outputs are unchanged. Used by the calibrated run and by a replay."""
    apply_shifts(model, [rewrite])


def apply_shifts(model: onnx.ModelProto, rewrites: list[ShiftRewrite]) -> None:
    """:func:`apply_shift` of each of ``rewrites`` (on distinct tensors), with one graph index and one node-list
    rebuild for all of them."""
    if not rewrites:
        return
    index = GraphIndex.build(model.graph)
    names = all_names(model.graph)
    nodes = list(model.graph.node)
    position = {id(n): i for i, n in enumerate(nodes)}
    by_name = {node_name(n): n for n in nodes}
    inserted: dict[int, list[onnx.NodeProto]] = {}
    for rewrite in rewrites:
        readers = nodes_named(model, rewrite.nodes, by_name)
        shape = (-1,) + (1,) * (rewrite.rank - 2) if rewrite.axis == 1 else (-1,)
        constant = unique_name(names, f"{rewrite.tensor}_shift")
        names.add(constant)
        shifted = unique_name(names, f"{rewrite.tensor}_shifted")
        names.add(shifted)
        add_name = unique_name(names, f"{constant}_add")
        names.add(add_name)
        model.graph.initializer.append(numpy_helper.from_array((-rewrite.shift).astype(np.float32).reshape(shape),
                                                               constant))
        first = min(position[id(r)] for r in readers)
        inserted.setdefault(first, []).append(helper.make_node("Add", [rewrite.tensor, constant], [shifted],
                                                               name=add_name))
        for reader in readers:
            w = index.array(reader.input[1]).astype(np.float64)
            add_to_bias(model, index, reader, layer_product(reader, w, rewrite.shift), "shift", names)
            reader.input[0] = shifted
    ordered = [n for i, node in enumerate(nodes) for n in (*inserted.get(i, ()), node)]
    del model.graph.node[:]
    model.graph.node.extend(ordered)


def nodes_named(model: onnx.ModelProto, names: Iterable[str],
                by_name: dict[str, onnx.NodeProto] | None = None) -> list[onnx.NodeProto]:
    """The nodes of ``model`` of these names, in that order (an OnnxqError names a missing one); ``by_name``: the
    model's nodes by name, when the caller holds them."""
    by_name = {node_name(n): n for n in model.graph.node} if by_name is None else by_name
    missing = [n for n in names if n not in by_name]
    if missing:
        raise OnnxqError(f"the activation shift of layer {missing[0]!r} was recorded on another model: this one has "
                         "no such node")
    return [by_name[n] for n in names]


def layer_product(node: onnx.NodeProto, w: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``W shift`` of a shiftable Conv (weights M x C x 1...) or Gemm, one value per output channel (float64)."""
    if node.op_type == "Conv":
        return w.reshape(w.shape[0], w.shape[1]) @ shift
    return w @ shift if attr(node, "transB", 0) else shift @ w


def add_to_bias(model: onnx.ModelProto, index: GraphIndex, node: onnx.NodeProto, delta: np.ndarray,
                suffix: str, names: set[str] | None = None) -> None:
    """Add ``delta`` (one value per output channel) to ``node``'s bias input, creating it when absent (``names``:
    the graph's names, kept up to date, when the caller holds them)."""
    if len(node.input) > 2 and node.input[2]:
        set_input_initializer(model, node, 2, compensated_bias(index.array(node.input[2]), delta), suffix, index)
        return
    names = all_names(model.graph) if names is None else names
    name = unique_name(names, f"{node_name(node)}_bias_{suffix}")
    names.add(name)
    model.graph.initializer.append(numpy_helper.from_array(delta.astype(np.float32), name))
    while len(node.input) < 2:
        node.input.append("")
    if len(node.input) == 2:
        node.input.append(name)
    else:
        node.input[2] = name


def shift_model(model: onnx.ModelProto, data: Iterable[Batch], batches: int, *, skip_padding: bool = True,
                sampled: Mapping[str, ChannelSpread] | None = None,
                rewrites_since: Iterable[Rewrite] = ()) -> tuple[str, list[ShiftRewrite]]:
    """Shift every target tensor whose symmetric INT8 error the shift lowers by :data:`MIN_GAIN_DB`, in place;
    returns the report's note and the rewrites, in the order applied. ``sampled``: spreads of an earlier float pass
    (:func:`shift_candidates`, before the channel rewrites ``rewrites_since``); only the targets they do not give are
    sampled by a pass of their own."""
    targets = shift_targets(model)
    if not targets:
        return "activation shift: no 1x1 Conv/Gemm input it applies to exactly", []
    spreads = spreads_after_rewrites(targets, sampled, rewrites_since) if sampled else {}
    missing = [t for t in targets if t.tensor not in spreads]
    if missing:
        spreads.update(shift_statistics(model, missing, data, batches, skip_padding=skip_padding))
    rewrites: list[ShiftRewrite] = []
    gains = []
    for target in targets:
        spread = spreads.get(target.tensor)
        chosen = choose_shift(spread) if spread is not None and spread.lo.size == target.channels else None
        if chosen is None:
            continue
        shift, gain = chosen
        rewrites.append(ShiftRewrite(target.tensor, target.axis, target.rank, target.readers, shift))
        gains.append(gain)
    apply_shifts(model, rewrites)
    median = f", median gain {np.median(gains):.1f} dB on the samples" if gains else ""
    return (f"activation shift: {len(rewrites)} of {len(targets)} 1x1 Conv/Gemm input(s) centred per channel"
            f"{median}"), rewrites


def compensation_deltas(model: onnx.ModelProto, table: ScaleTable, rewrites: Iterable[ShiftRewrite],
                        skip: Collection[str] = (), index: GraphIndex | None = None) -> dict[str, np.ndarray]:
    """``(W_q - W) shift`` (one value per output channel, float64) of every shifted layer but those named in
    ``skip`` whose weight ``table`` quantizes on an integer symmetric grid (per tensor or per channel), by node name
    (``index``: the model's, when the caller holds it)."""
    index = index or GraphIndex.build(model.graph)
    by_name = {node_name(n): n for n in model.graph.node}
    deltas: dict[str, np.ndarray] = {}
    for rewrite in rewrites:
        for node in nodes_named(model, [n for n in rewrite.nodes if n not in skip], by_name):
            params = table.get(node.input[1])
            if (params is None or params.blockwise or not params.symmetric
                    or quant_dtype(params.dtype).is_float):
                continue
            w = index.array(node.input[1])
            error = fake_quantize(w, params).astype(np.float64) - w.astype(np.float64)
            deltas[node_name(node)] = layer_product(node, error, rewrite.shift)
    return deltas


def compensated_bias(bias: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """``bias + delta`` in the bias's shape and dtype (a Gemm's C may be (N,), (1, N) or a scalar)."""
    flat = bias.astype(np.float64).reshape(-1)
    return ((flat + delta).reshape(bias.shape) if flat.size == delta.size else flat[0] + delta).astype(bias.dtype)


def compensate_shifts(model: onnx.ModelProto, table: ScaleTable, rewrites: Iterable[ShiftRewrite],
                      skip: Collection[str] = ()) -> int:
    """Add ``(W_q - W) shift`` to the bias of every shifted layer (but those named in ``skip``) whose weight ``table``
    quantizes (per tensor or per channel), in place: the quantized layer then computes ``W_q x' + b + W_q shift``,
    whose weight error is the unshifted one. Returns how many layers changed."""
    index = GraphIndex.build(model.graph)
    deltas = compensation_deltas(model, table, rewrites, skip, index)
    for node in nodes_named(model, list(deltas)):
        add_to_bias(model, index, node, deltas[node_name(node)], "shiftq")
    return len(deltas)
