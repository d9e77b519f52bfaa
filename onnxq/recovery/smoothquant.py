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

import numpy as np
import onnx
from onnx import helper

from onnxq.graph import GraphIndex
from onnxq.recovery.channel_scale import ChannelTarget, apply_rewrite
from onnxq.scales.rewrites import ChannelRewrite

#: the scale factors are clipped to [1 / MAX_SCALE, MAX_SCALE] (all-zero channels keep 1)
MAX_SCALE = 1e4


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


def smooth_one(model: onnx.ModelProto, target: ChannelTarget, act_range: np.ndarray,
               alpha: float) -> tuple[str, ChannelRewrite]:
    node = next(n for n in model.graph.node if (n.name or n.output[0]) == target.node)
    w = GraphIndex.build(model.graph).array(node.input[1])
    transposed = node.op_type == "Gemm" and _attr(node, "transB", 0)
    rows = w.T if transposed else w  # (K, N)
    scale = smooth_scales(act_range, np.abs(rows).max(axis=1).astype(np.float64), alpha)
    # the Mul broadcasts a (K,) vector over the last axis whatever the activation's rank (rank 2); W's K axis
    # absorbs the factors: axis 0 of (K, N), axis 1 of a transB (N, K)
    rewrite = ChannelRewrite("smoothquant", target.node, target.tensor, target.axis, 2, 1 if transposed else 0, scale)
    return apply_rewrite(model, rewrite), rewrite


def smoothquant_model(model: onnx.ModelProto, ranges: dict[str, np.ndarray],
                      alpha: float) -> tuple[str, list[ChannelRewrite]]:
    """Every MatMul/Gemm input smoothed in place; a note and the records (unused initializers are left for the
    caller to drop)."""
    done: list[ChannelRewrite] = []
    for target in smoothquant_targets(model):
        act = ranges.get(target.tensor)
        node = next(n for n in model.graph.node if (n.name or n.output[0]) == target.node)
        dims = GraphIndex.build(model.graph).initializers[node.input[1]].dims
        k = dims[1] if node.op_type == "Gemm" and _attr(node, "transB", 0) else dims[0]
        if act is None or act.size != k:
            continue
        done.append(smooth_one(model, target, act, alpha)[1])
    return f"SmoothQuant (alpha {alpha}): {len(done)} MatMul/Gemm input(s)", done
