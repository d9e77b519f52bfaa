"""SmoothQuant (Xiao et al. 2023): migrate per-channel activation outliers into MatMul/Gemm weights; exact in float.

For ``Y = X W`` with ``X`` (..., K) and ``W`` (K, N), ``Y = (X / s) (diag(s) W)``. With ``a_j`` the largest
``|X[..., j]|`` over a few calibration batches and ``w_j`` the largest ``|W[j, :]|``, SmoothQuant's
``s_j = a_j**alpha / w_j**(1 - alpha)`` (eq. 4) balances the two: activation channels with outliers are shrunk and
the weights, quantized per output channel, absorb them. ``alpha`` (default 0.5 in the paper) sets how much moves.
Gemm is handled for ``transA = 0`` (``transB = 1`` stores W as (N, K): its columns are scaled). The division by
``s`` is folded into a producing Conv when exact, otherwise a ``Mul`` is inserted before the consumer
(:mod:`onnxq.recovery.channel_scale`); transformer exporters put a LayerNormalization there, which TensorRT fuses
with the Mul.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import partial

import numpy as np
import onnx
from onnx import helper

from onnxq.data import Batch
from onnxq.graph import GraphIndex
from onnxq.recovery.channel_scale import ChannelTarget, apply_rewrite, channel_statistics
from onnxq.recovery.smoothquant_search import choose_alpha
from onnxq.scales.rewrites import ChannelRewrite

log = logging.getLogger(__name__)

#: ``--smoothquant auto``: alpha chosen per tensor by its consumers' output error
AUTO = "auto"

#: the scale factors are clipped to [1 / MAX_SCALE, MAX_SCALE] (all-zero channels keep 1)
MAX_SCALE = 1e4
#: ``auto`` searches only tensors with outlier channels: the largest channel maximum at least this many times the
#: median one. Below it there is nothing to migrate, and no search is run (measured: every tensor of the vit reference
#: model (1.6-2.9), of ori's and rec's classifiers (2.1, 1.2) and of pprec (2.0-8.8) stayed unsmoothed with the
#: search; minilm's smoothed tensors are its LayerNorm and GELU outputs, 5.1-24.9)
OUTLIER_RATIO = 4.0


def has_outlier_channels(act_range: np.ndarray) -> bool:
    """Whether the per-channel maxima ``act_range`` hold an outlier channel (:data:`OUTLIER_RATIO`)."""
    median = float(np.median(act_range))
    return bool(act_range.size) and float(act_range.max()) >= OUTLIER_RATIO * max(median, 1e-12)


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def smoothquant_targets(model: onnx.ModelProto) -> list[ChannelTarget]:
    """Activation inputs (channels on the last axis) of MatMul/Gemm nodes with a 2-D initializer weight."""
    index = GraphIndex.build(model.graph)
    targets = []
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        if not index.is_initializer(node.input[1]) or index.is_initializer(node.input[0]):
            continue
        if len(index.initializers[node.input[1]].dims) != 2 or (node.op_type == "Gemm" and _attr(node, "transA", 0)):
            continue
        targets.append(ChannelTarget(node.name or node.output[0], node.input[0], -1))
    return targets


def smooth_scales(act_range: np.ndarray, weight_range: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant eq. 4, ``s = a**alpha / w**(1 - alpha)``, 1 where either range is zero, clipped."""
    ok = (act_range > 0) & (weight_range > 0)
    a = np.where(ok, act_range, 1.0)
    w = np.where(ok, weight_range, 1.0)
    return np.where(ok, np.clip(a**alpha / w ** (1.0 - alpha), 1.0 / MAX_SCALE, MAX_SCALE), 1.0)


def consumer_rows(model: onnx.ModelProto, target: ChannelTarget, index: GraphIndex) -> tuple[np.ndarray, bool]:
    """The consumer's weight as (K, N) float32 (a ``transB`` Gemm's (N, K) transposed) and whether it was."""
    node = next(n for n in model.graph.node if (n.name or n.output[0]) == target.node)
    w = index.array(node.input[1]).astype(np.float32)
    transposed = bool(node.op_type == "Gemm" and _attr(node, "transB", 0))
    return (w.T if transposed else w), transposed


def smooth_one(model: onnx.ModelProto, target: ChannelTarget, scale: np.ndarray, transposed: bool) -> ChannelRewrite:
    """``target``'s consumer reads ``tensor / scale`` and its weight's K axis is multiplied by ``scale``."""
    # the Mul broadcasts a (K,) vector over the last axis whatever the activation's rank (rank 2); W's K axis
    # absorbs the factors: axis 0 of (K, N), axis 1 of a transB (N, K)
    rewrite = ChannelRewrite("smoothquant", target.node, target.tensor, target.axis, 2, 1 if transposed else 0, scale)
    apply_rewrite(model, rewrite)
    return rewrite


def _auto_alpha(tensor: str, group: list, act: np.ndarray, weight_range: np.ndarray, rows: np.ndarray | None) -> float:
    """``auto``'s alpha for one tensor (0: none): searched on its sampled ``rows``, none without (no outlier)."""
    if rows is None:
        log.info("SmoothQuant auto: %s left alone: no outlier channel (largest maximum %.3g, median %.3g)",
                 tensor, float(act.max()), float(np.median(act)))
        return 0.0
    choice = choose_alpha(rows, [w for _, w, _ in group], partial(smooth_scales, act, weight_range))
    log.info("SmoothQuant auto: %s (%d consumer(s)) alpha %s; summed relative output error %s", tensor,
             len(group), choice.alpha or "none", ", ".join(f"{a}: {e:.3g}" for a, e in choice.errors.items()))
    return choice.alpha


def smoothquant_model(model: onnx.ModelProto, ranges: dict[str, np.ndarray], alpha: float | str,
                      data: Iterable[Batch] | None = None, batches: int = 2, skip_padding: bool = True,
                      samples: dict[str, np.ndarray] | None = None) -> tuple[str, list[ChannelRewrite]]:
    """Every MatMul/Gemm input smoothed in place; a note and the records (unused initializers are left for the
    caller to drop). The consumers of one tensor share its factors (eq. 4 on the largest weight row over all of
    them, as SmoothQuant does for the query/key/value projections) and one Mul. ``alpha`` ``"auto"``: chosen per
    tensor on ``batches`` batches of ``data`` (:mod:`onnxq.recovery.smoothquant_search`), or on ``samples`` (tensor ->
    its sampled (rows, channels) values) when the caller read them in its own float pass; 0 leaves it alone."""
    index = GraphIndex.build(model.graph)
    groups: dict[str, list[tuple[ChannelTarget, np.ndarray, bool]]] = {}
    for target in smoothquant_targets(model):
        rows, transposed = consumer_rows(model, target, index)
        act = ranges.get(target.tensor)
        if act is not None and act.size == rows.shape[0]:
            groups.setdefault(target.tensor, []).append((target, rows, transposed))
    if not groups:
        return "SmoothQuant: nothing to smooth (no MatMul/Gemm input with a constant 2-D weight)", []
    searched = [t for t in groups if has_outlier_channels(ranges[t])] if alpha == AUTO else []
    inputs: dict[str, np.ndarray] = samples if samples is not None else {}
    if searched and data is not None and samples is None:
        inputs = channel_statistics(model, [], data, 0, rows=searched, row_batches=batches,
                                    skip_padding=skip_padding)[1]
    done: list[ChannelRewrite] = []
    chosen: dict[float, int] = {}
    for tensor, group in groups.items():
        act = ranges[tensor]
        weight_range = np.max([np.abs(rows).max(axis=1) for _, rows, _ in group], axis=0).astype(np.float64)
        if alpha != AUTO:
            picked = float(alpha)
        elif tensor in searched and tensor not in inputs:
            continue
        else:
            picked = _auto_alpha(tensor, group, act, weight_range, inputs.get(tensor) if tensor in searched else None)
            chosen[picked] = chosen.get(picked, 0) + 1
        if picked <= 0:
            continue
        scale = smooth_scales(act, weight_range, picked)
        done += [smooth_one(model, target, scale, transposed) for target, _, transposed in group]
    if alpha != AUTO:
        return f"SmoothQuant (alpha {alpha}): {len(done)} MatMul/Gemm input(s)", done
    spread = ", ".join(f"{a if a else 'none'} x{n}" for a, n in sorted(chosen.items()))
    return (f"SmoothQuant (alpha auto): {len(done)} MatMul/Gemm input(s) of {sum(chosen.values())} tensor(s); "
            f"alphas {spread or '-'}"), done
