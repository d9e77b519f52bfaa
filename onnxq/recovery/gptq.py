"""GPTQ weight rounding (``--weight-rounding gptq``): per layer, round the weights so that the layer's OUTPUT on the
calibration data changes least, in NumPy, on the plan's own scales.

Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers" (OPTQ,
building on Optimal Brain Quantization, Frantar & Alistarh 2022): for a linear map ``y = W x`` with inputs ``X``
(rows = samples), the output error of a rounded ``W_q`` is ``tr((W - W_q) H (W - W_q)^T) / 2`` with the Hessian
``H = 2 X^T X``. Columns (input features) are rounded one at a time in order; the rounding error of column ``i``
is pushed onto the columns not yet rounded through the inverse Hessian,
``W[:, i:] -= (w_i - q_i) / U[i, i] * U[i, i:]`` where ``U`` is the upper Cholesky factor of ``H^-1`` (the paper's
Algorithm 1, with its lazy batch updates of 128 columns and its dampening of 1% of the mean diagonal). Read from
the authors' reference implementation (github.com/IST-DASLab/gptq, ``gptq.py``: ``add_batch`` and
``fasterquant``) and Intel Neural Compressor's ONNX weight-only GPTQ (``neural_compressor/adaptor/ox_utils/
weight_only.py``, MatMul weights ``[K, N]`` taken transposed); re-written here, no code copied.

What differs from the paper, on purpose:

* the scales (and zero points) are exactly those of the plan (min-max / mse per channel, or the int4 blocks), so
  the Q/DQ graph, the TensorRT engine and the scale files are unchanged: only which integer each weight becomes
  changes, and the stored float weights are put on that grid (QuantizeLinear then reproduces the integers);
* convolutions are handled as the matrix product of their im2col patches, one Hessian per group: a depthwise
  channel has its own ``k*k`` Hessian (grouped layers are rounded as a batch of independent problems);
* ``X`` is the float model's input of the layer (whole, not cropped) on the first ``gptq_batches`` calibration
  batches, streamed: each batch adds at most ``MAX_ROWS / batches`` patch rows sampled at random (seeded; ``2 *
  columns`` in all at least) to the layer's ``H`` and is dropped, so memory holds Hessians, never activations;
  ``H`` costs ``rows * columns**2``. Layers with the same input and patch geometry share one ``H``. Where the
  layer's input is quantized too, ``X`` is its fake-quantized value ``Q(x)``, the input the deployed layer reads
  (measured on full INT8: det 13.3 dB with float ``X``, 16.4 dB with ``Q(x)``; ori 22.1 / 21.4 dB).

Where it helps (docs/accuracy_recovery.md): weight-only formats, where the weights are the whole error (PP-OCRv4
rec ``--format w8``: 15.4 -> 26-29 dB). With quantized activations it is opt-in: there a layer's error is
dominated by its input's quantization (ori: GPTQ changes the layer's total error by a median -0.13 dB), yet
swapping single layers' GPTQ weights into the nearest-rounded INT8 model moves ori's output SQNR by -5 to +5 dB
each, and all of them together cost 4-5 dB on ori and det: the layer-local objective does not predict the whole
model there.

Layers whose input is exactly constant along a column (``H[i, i] == 0``) round that column to nearest: it has no
effect on the output. A weight shared by several layers, ConvTranspose, Conv with ``auto_pad`` and float8 weights
keep nearest rounding (noted).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx

from onnxq.data import Batch
from onnxq.dtypes import quant_dtype
from onnxq.graph import GraphIndex, attr, node_name
from onnxq.insert.qdq import broadcast_params
from onnxq.plan import QuantPlan
from onnxq.recovery.layers import fake_quantize, is_layer, replace_initializer
from onnxq.runtime import make_session, run_batch
from onnxq.scales.types import QuantParams, ScaleTable

log = logging.getLogger(__name__)

DAMPENING = 0.01  # of the mean Hessian diagonal, as the paper
BLOCK = 128  # columns per lazy batch update (the paper's B)
MAX_ROWS = 8192  # input rows (patches) per layer Hessian, at least 2x its columns


@dataclass(frozen=True)
class LinearView:
    """How a weighted node is a batch of matrix products ``y_g = W_g x_g``: ``groups`` x ``rows`` x ``columns``."""

    node: onnx.NodeProto
    groups: int
    kernel: tuple[int, ...] = ()  # Conv: (kh, kw)
    strides: tuple[int, ...] = (1, 1)
    dilations: tuple[int, ...] = (1, 1)
    pads: tuple[int, ...] = (0, 0, 0, 0)  # top, left, bottom, right
    transposed: bool = False  # weight stored [in, out] (MatMul, Gemm transB=0)

    def to_matrix(self, w: np.ndarray) -> np.ndarray:
        """Weight -> ``[groups, rows, columns]`` (Conv columns ordered (channel, kh, kw), as the patches)."""
        if self.node.op_type == "Conv":
            return w.reshape(self.groups, w.shape[0] // self.groups, -1)
        return (w.T if self.transposed else w)[None]

    def from_matrix(self, m: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        if self.node.op_type == "Conv":
            return m.reshape(shape)
        return m[0].T if self.transposed else m[0]

    def patches(self, x: np.ndarray, rows: int, rng: np.random.Generator) -> np.ndarray:
        """At most ``rows`` input rows of the layer, ``[groups, rows, columns]`` (float32), sampled at random."""
        return self.gather(x, self.sample(x.shape, rows, rng))

    def sample(self, shape: tuple[int, ...], rows: int, rng: np.random.Generator) -> np.ndarray:
        """Which rows (flattened output positions ``(n, oh, ow)``, or tokens) :meth:`gather` takes, sorted."""
        if self.node.op_type != "Conv":
            count = int(np.prod(shape[:-1]))
        else:
            (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.strides, self.dilations
            top, left, bottom, right = self.pads
            oh = (shape[2] + top + bottom - (kh - 1) * dh - 1) // sh + 1
            ow = (shape[3] + left + right - (kw - 1) * dw - 1) // sw + 1
            count = shape[0] * oh * ow
        if count > rows:
            return np.sort(rng.choice(count, rows, replace=False))
        return np.arange(count)

    def gather(self, x: np.ndarray, picked: np.ndarray) -> np.ndarray:
        """The rows ``picked`` of :meth:`sample` as ``[groups, rows, columns]`` (float32); Conv columns ordered
        (channel, kh, kw), zero where a window reaches into the padding. One fancy-indexed gather per kernel
        offset: no padded copy or window view of the whole input is made."""
        if self.node.op_type != "Conv":
            return x.reshape(-1, x.shape[-1])[picked].astype(np.float32)[None]
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.strides, self.dilations
        top, left, bottom, right = self.pads
        ow = (w + left + right - (kw - 1) * dw - 1) // sw + 1
        oh = (h + top + bottom - (kh - 1) * dh - 1) // sh + 1
        b, rest = np.divmod(picked, oh * ow)
        i, j = np.divmod(rest, ow)
        cols = np.zeros((len(picked), c, kh, kw), np.float32)
        for di in range(kh):
            rows_in = i * sh - top + di * dh
            for dj in range(kw):
                cols_in = j * sw - left + dj * dw
                inside = (rows_in >= 0) & (rows_in < h) & (cols_in >= 0) & (cols_in < w)
                if inside.all():
                    cols[:, :, di, dj] = x[b, :, rows_in, cols_in]
                elif inside.any():
                    cols[inside, :, di, dj] = x[b[inside], :, rows_in[inside], cols_in[inside]]
        if self.groups == 1:
            return cols.reshape(1, len(picked), -1)
        grouped = cols.reshape(len(picked), self.groups, c // self.groups * kh * kw)
        return np.ascontiguousarray(grouped.transpose(1, 0, 2))


    def column_sums(self, x: np.ndarray) -> tuple[np.ndarray, int]:
        """The sums over ALL rows (every output position, or token) of each column, ``[groups, columns]`` (float64),
        and the row count: one strided slice sum per kernel offset, no patches."""
        if self.node.op_type != "Conv":
            flat = x.reshape(-1, x.shape[-1])
            return flat.sum(axis=0, dtype=np.float64)[None], len(flat)
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.strides, self.dilations
        top, left, bottom, right = self.pads
        oh = (h + top + bottom - (kh - 1) * dh - 1) // sh + 1
        ow = (w + left + right - (kw - 1) * dw - 1) // sw + 1
        sums = np.zeros((c, kh, kw))
        for di in range(kh):
            rows = np.arange(oh) * sh - top + di * dh
            rows = rows[(rows >= 0) & (rows < h)]
            for dj in range(kw):
                cols = np.arange(ow) * sw - left + dj * dw
                cols = cols[(cols >= 0) & (cols < w)]
                if len(rows) and len(cols):
                    part = x[:, :, rows[0] : rows[-1] + 1 : sh, cols[0] : cols[-1] + 1 : sw]
                    sums[:, di, dj] = part.sum(axis=(0, 2, 3), dtype=np.float64)
        return sums.reshape(self.groups, -1), n * oh * ow


def linear_view(node: onnx.NodeProto, weight_shape: tuple[int, ...]) -> LinearView | None:
    """The node as a (grouped) matrix product, or None where this module does not round it."""
    if node.op_type == "Conv":
        if len(weight_shape) != 4 or attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID",
                                                                                 "VALID"):
            return None
        pads = tuple(attr(node, "pads", [0, 0, 0, 0]))
        return LinearView(node, int(attr(node, "group", 1)), tuple(weight_shape[2:]),
                          tuple(attr(node, "strides", [1, 1])), tuple(attr(node, "dilations", [1, 1])),
                          (pads[0], pads[1], pads[2], pads[3]))
    if len(weight_shape) != 2:
        return None
    if node.op_type == "Gemm":
        if attr(node, "transA", 0):
            return None
        return LinearView(node, 1, transposed=not attr(node, "transB", 0))
    return LinearView(node, 1, transposed=True)  # MatMul: x @ W, W [in, out]


def round_to_grid(w: np.ndarray, scale: np.ndarray, zp: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Nearest rounding on the grid (round half to even, saturated), returned dequantized."""
    return (np.clip(np.rint(w / scale) + zp, lo, hi) - zp) * scale


def inverse_hessian_factor(h: np.ndarray, dampening: float = DAMPENING) -> np.ndarray:
    """Upper Cholesky factor of ``(H + damp I)^-1`` per group (dead columns get a unit diagonal first), float32 (the
    dampening keeps it well conditioned; a failure dampens more)."""
    h = h.astype(np.float32)
    k = h.shape[-1]
    diag = np.einsum("gii->gi", h)
    diag[diag <= 0] = 1.0  # an input that is always zero: its column cannot change the output
    damp = dampening * diag.mean(axis=1, keepdims=True)
    idx = np.arange(k)
    h[:, idx, idx] = diag + damp
    for attempt in range(4):
        try:
            inverse = np.linalg.inv(h)
            return np.swapaxes(np.linalg.cholesky(inverse), 1, 2)
        except np.linalg.LinAlgError:
            h[:, idx, idx] += damp * (10.0 ** attempt)  # not positive definite in float: dampen more
    raise np.linalg.LinAlgError("the layer Hessian is not positive definite even after dampening")


def gptq_round(w: np.ndarray, h: np.ndarray, scale: np.ndarray, zp: np.ndarray, lo: float, hi: float,
               dampening: float = DAMPENING, block: int = BLOCK) -> np.ndarray:
    """GPTQ of ``w`` ``[groups, rows, columns]`` with Hessians ``h`` ``[groups, columns, columns]`` on the fixed grid
    ``scale``/``zp`` (broadcast to ``w``'s shape): the dequantized rounded weights (float32)."""
    return round_with_factor(w, inverse_hessian_factor(h, dampening), scale, zp, lo, hi, block)


def round_with_factor(w: np.ndarray, u: np.ndarray, scale: np.ndarray, zp: np.ndarray, lo: float, hi: float,
                      block: int = BLOCK, float_from: int | None = None) -> np.ndarray:
    """GPTQ's column loop on ``w`` ``[groups, rows, columns]`` given ``u``, the upper Cholesky factor of the
    (dampened) inverse Hessian per group. Columns from ``float_from`` on are not rounded: they only receive the
    error feedback of the rounded ones, so they end at their optimal float values given those (onnxq.recovery.gptaq
    puts the bias there)."""
    w = w.astype(np.float32).copy()
    u = u.astype(np.float32, copy=False)
    scale, zp = np.broadcast_to(scale, w.shape), np.broadcast_to(zp, w.shape)
    out = np.empty_like(w)
    columns = w.shape[2]
    rounded = columns if float_from is None else float_from
    for i1 in range(0, columns, block):
        i2 = min(i1 + block, columns)
        w1 = w[:, :, i1:i2].copy()
        err = np.zeros_like(w1)
        for i in range(i2 - i1):
            col = i1 + i
            if col >= rounded:
                out[:, :, col] = w1[:, :, i]
                continue
            q = round_to_grid(w1[:, :, i], scale[:, :, col], zp[:, :, col], lo, hi)
            out[:, :, col] = q
            e = (w1[:, :, i] - q) / u[:, i1 + i, col][:, None]
            w1[:, :, i:] -= e[:, :, None] * u[:, None, col, col:i2]
            err[:, :, i] = e
        if i2 < columns:
            w[:, :, i2:] -= np.matmul(err, u[:, i1:i2, i2:])
    return out


def layer_error(view: LinearView, x: np.ndarray, w: np.ndarray, w_q: np.ndarray) -> float:
    """``sum(((W - W_q) X)^2) / sum((W X)^2)`` on all of ``x`` (no bias): the objective, for tests and logs."""
    cols = view.patches(x, 1 << 62, np.random.default_rng(0)).astype(np.float64)
    a, d = view.to_matrix(w).astype(np.float64), view.to_matrix(w - w_q).astype(np.float64)
    ref = np.matmul(cols, np.swapaxes(a, 1, 2))
    diff = np.matmul(cols, np.swapaxes(d, 1, 2))
    return float((diff ** 2).sum() / max(float((ref ** 2).sum()), 1e-30))


@dataclass
class HessianSum:
    """``2 X^T X`` summed over the batches seen, and the number of rows, for one (input, patch geometry)."""

    view: LinearView
    rows_per_batch: int
    total: np.ndarray | None = None
    rows: int = 0

    def add(self, x: np.ndarray, rng: np.random.Generator) -> None:
        cols = self.view.patches(x, self.rows_per_batch, rng)
        h = np.matmul(cols.transpose(0, 2, 1), cols)
        self.total = h if self.total is None else self.total + h
        self.rows += cols.shape[1]

    def mean(self) -> np.ndarray:
        assert self.total is not None
        return self.total * np.float32(2.0 / max(1, self.rows))


def round_layer(view: LinearView, w: np.ndarray, h: np.ndarray, params: QuantParams) -> np.ndarray:
    """GPTQ-rounded (dequantized, float32) weights of one layer with Hessian ``h``, in the weight's own layout."""
    scale, zp = broadcast_params(params, w.shape)
    lo, hi = quant_dtype(params.dtype).clip_range(params.symmetric)
    full = (np.broadcast_to(scale, w.shape), np.broadcast_to(zp, w.shape))
    q = gptq_round(view.to_matrix(w.astype(np.float32)), h, view.to_matrix(full[0]), view.to_matrix(full[1]),
                   lo, hi)
    return view.from_matrix(q, w.shape).astype(np.float32)


def hessian_key(view: LinearView) -> tuple:
    """Layers with the same input and patch geometry share one Hessian (e.g. the Q, K, V MatMuls of attention)."""
    return (view.node.input[0], view.node.op_type == "Conv", view.groups, view.kernel, view.strides,
            view.dilations, view.pads)


def accumulate_hessians(model: onnx.ModelProto, views: list[LinearView], data: Iterable[Batch], batches: int,
                        table: ScaleTable | None = None, max_rows: int = MAX_ROWS,
                        seed: int = 0) -> dict[tuple, HessianSum]:
    """One float pass over the first ``batches`` batches exposing the layers' inputs (whole, not cropped); each
    batch adds at most ``max_rows / batches`` sampled rows (``2 * columns / batches`` at least) to each Hessian,
    and is then dropped: memory holds the Hessians, not the activations. An input with parameters in ``table``
    enters fake-quantized, as the deployed layer reads it."""
    sums: dict[tuple, HessianSum] = {}
    for view in views:
        sums.setdefault(hessian_key(view), HessianSum(view, 0))
    session = make_session(model, outputs=sorted({v.node.input[0] for v in views}))
    out_names = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(seed)
    for count, batch in enumerate(data, start=1):
        outputs = dict(zip(out_names, run_batch(session, batch, f"GPTQ batch {count}"), strict=True))
        for key, acc in sums.items():
            x = np.asarray(outputs[key[0]])
            if x.dtype.kind != "f" or (acc.view.node.op_type == "Conv" and x.ndim != 4):
                continue
            if acc.rows_per_batch == 0:
                acc.rows_per_batch = -(-max(max_rows, 2 * _columns(acc.view, x)) // batches)
            if table is not None and key[0] in table:
                x = fake_quantize(x, table[key[0]])
            acc.add(x.astype(np.float32, copy=False), rng)
        del outputs
        if count >= batches:
            break
    return {k: v for k, v in sums.items() if v.total is not None}


def _columns(view: LinearView, x: np.ndarray) -> int:
    if view.node.op_type == "Conv":
        return x.shape[1] // view.groups * int(np.prod(view.kernel))
    return int(x.shape[-1])


def rounding_views(model: onnx.ModelProto, plan: QuantPlan, table: ScaleTable) -> tuple[list[LinearView], int]:
    """The planned integer-weight Conv/Gemm/MatMul layers of ``model`` that can be rounded (as matrix products, in
    graph order), and how many planned layers keep nearest rounding (shared weight, float8, no view)."""
    index = GraphIndex.build(model.graph)
    users: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    planned = {c.node for t in plan.weights() for c in t.consumers}
    todo: list[LinearView] = []
    kept = 0
    for node in model.graph.node:
        if not is_layer(node, index) or node_name(node) not in planned:
            continue
        w_name = node.input[1]
        params = table.get(w_name)
        view = linear_view(node, tuple(index.array(w_name).shape))
        if params is None or quant_dtype(params.dtype).is_float or view is None or users.get(w_name) != 1:
            kept += 1
            continue
        todo.append(view)
    return todo, kept


def gptq_model(model: onnx.ModelProto, plan: QuantPlan, table: ScaleTable, data: Iterable[Batch],
               batches: int) -> str:
    """GPTQ rounding of every planned integer weight of a Conv/Gemm/MatMul in ``model`` (changed in place: the
    weights are replaced by their dequantized rounded values, same names); returns a note for the report."""
    index = GraphIndex.build(model.graph)
    todo, kept = rounding_views(model, plan, table)
    if not todo:
        return "GPTQ weight rounding: no layer to round"
    hessians = accumulate_hessians(model, todo, data, batches, table)
    done = 0
    for view in todo:
        acc = hessians.get(hessian_key(view))
        w = index.array(view.node.input[1])
        if acc is None or acc.mean().shape[-1] != view.to_matrix(w).shape[-1]:
            kept += 1
            continue
        rounded = round_layer(view, w, acc.mean(), table[view.node.input[1]])
        replace_initializer(model, view.node.input[1], rounded)  # same name: the plan and its Q/DQ still apply
        done += 1
    log.info("GPTQ: %d layer(s) rounded, %d kept nearest rounding", done, kept)
    return f"GPTQ weight rounding: {done} layer(s)" + (f", {kept} kept nearest rounding" if kept else "")
