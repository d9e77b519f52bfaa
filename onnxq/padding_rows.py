"""Padding tokens of a masked transformer: their rows are left out of the statistics every range is chosen from.

A batch of token sequences is padded to one length, and the model's attention mask hides the padding keys from
every query. The padding *rows* (the hidden states at padding positions) still flow through every layer, but nothing
the model is used for reads them: mean pooling weighs them by the mask, a classifier reads the first token. Their
values are unlike real tokens' (on all-MiniLM-L6-v2 they hold the widest LayerNorm outliers), so calibrating on them
spends the INT8 range on values no one uses: on that model's 16 x 64-token batches, 62% of the rows are padding, and
leaving them out of the activation statistics took the tensorrt target's sentence-embedding agreement from 0.754 to
0.832 (docs/real_models.md).

Which rows are padding is read from the model itself, not from an input name: the first additive attention mask
(:mod:`onnxq.mask_tensors`: a float tensor built only from integer inputs and constants, added to data) or the
condition of a ``masked_fill`` ``Where`` that selects a sentinel. Evaluated on each batch, squeezed to (N, L),
its positions holding a sentinel (<= -1e4, -inf; or the condition's masked polarity) are padding. A value that is
neither ~0 nor a sentinel means the tensor is not a padding mask and nothing is skipped.

A tensor's rows are token rows when its shape starts with (N, L) (hidden states (N, L, H), heads (N, L, h, d)) or,
flattened, is (N * L, H); attention score matrices (N, h, L, L) are left whole, and so is every tensor of a batch with
N == L, where a sequence-first (L, N, H) layout could not be told apart. Statistics see ``x[valid]``, a
(tokens, ...) array, so per-tensor calibrators and per-channel maxima over the last axis read only real tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx

from onnxq.data import Batch
from onnxq.graph import GraphIndex
from onnxq.mask_tensors import APPLIES_MASK, SENTINEL, is_constant, mask_images, sentinel_constant
from onnxq.runtime import SessionSettings, make_session, output_names, run_batch

#: a real (kept) key's additive mask value is 0; allow rounding and small additive biases up to this magnitude
KEEP_TOLERANCE = 1.0

Polarity = Literal["additive", "keep_true", "keep_false"]


@dataclass(frozen=True)
class PaddingMask:
    """The model tensor that marks padding keys, and how: an additive mask (sentinel = padding) or a ``Where``
    condition (``keep_true``: True keeps the score, ``keep_false``: True selects the sentinel)."""

    tensor: str
    polarity: Polarity

    def valid_rows(self, value: np.ndarray) -> np.ndarray | None:
        """(N, L) booleans, True for real tokens, from the mask's value on one batch; None when the value does not
        reduce to (N, L) or is not a padding mask."""
        v = np.asarray(value)
        if v.ndim < 2:
            return None
        shape = (v.shape[0], *(d for d in v.shape[1:] if d != 1))
        if len(shape) != 2:
            return None
        v = v.reshape(shape)
        if self.polarity == "additive":
            masked = ~(v > -SENTINEL)  # -inf, NaN and the sentinel itself
            if not np.all(np.abs(v[~masked]) <= KEEP_TOLERANCE):
                return None
            return ~masked
        keep = v.astype(bool)
        return keep if self.polarity == "keep_true" else ~keep


def find_padding_mask(model: onnx.ModelProto) -> PaddingMask | None:
    """The first additive attention mask or sentinel-selecting ``Where`` condition of ``model``, if any."""
    graph = model.graph
    index = GraphIndex.build(graph)
    images = mask_images(graph, index)
    if not images:
        return None
    inputs = {i.name for i in graph.input}
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        ins = list(node.input)
        if node.op_type in APPLIES_MASK and len(ins) == 2 and (ins[0] in images) != (ins[1] in images):
            mask = ins[0] if ins[0] in images else ins[1]
            data = ins[1] if mask == ins[0] else ins[0]
            if mask not in inputs and not is_constant(index, data):  # (1 - mask) is the mask's own arithmetic
                return PaddingMask(mask, "additive")
        if node.op_type == "Where" and len(ins) == 3 and ins[0] in images:
            if sentinel_constant(index, ins[2]) and not sentinel_constant(index, ins[1]):
                return PaddingMask(ins[0], "keep_true")
            if sentinel_constant(index, ins[1]) and not sentinel_constant(index, ins[2]):
                return PaddingMask(ins[0], "keep_false")
    return None


def token_rows(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The rows of ``x`` at real tokens: ``x[valid]`` when ``x`` starts with the mask's (N, L) (or is a flattened
    (N * L, H)), ``x`` itself otherwise (and for (N, h, L, L) score matrices). A batch with as many sequences as
    tokens is read whole: a sequence-first (L, N, H) tensor would look the same; so is a batch of padding only."""
    n, length = valid.shape
    if n == length or not valid.any():
        return x
    if x.ndim >= 3 and x.shape[:2] == (n, length):
        if x.ndim == 4 and x.shape[2] == x.shape[3] == length:
            return x
        return x[valid]
    if x.ndim == 2 and length > 1 and x.shape[0] == n * length:
        return x[valid.reshape(-1)]
    return x


@dataclass
class RowCount:
    """Token rows seen and kept, over the batches read."""

    seen: int = 0
    kept: int = 0

    @property
    def skipped_share(self) -> float:
        return 1.0 - self.kept / self.seen if self.seen else 0.0


class ActivationReader:
    """Runs the float model with ``outputs`` exposed and returns their values per batch, padding rows left out when
    ``skip_padding`` and the model has a padding mask (the mask tensor is exposed too, and not returned); the tensors
    of ``whole`` (read along a leading axis, such as a Conv's channel axis 1) are always returned whole."""

    def __init__(self, model: onnx.ModelProto, outputs: list[str], *, skip_padding: bool = True,
                 settings: SessionSettings | None = None, whole: frozenset[str] = frozenset()) -> None:
        self.mask = find_padding_mask(model) if skip_padding else None
        wanted = list(outputs)
        extra = [self.mask.tensor] if self.mask is not None and self.mask.tensor not in wanted else []
        self.session = make_session(model, outputs=wanted + extra, settings=settings)
        self.wanted = set(wanted)
        self.whole = whole
        self.rows = RowCount()

    def read(self, batch: Batch, label: str) -> dict[str, np.ndarray]:
        """The exposed tensors (and the graph outputs among ``outputs``) on one batch, by name, at real tokens."""
        values, valid = self.read_rows(batch, label)
        return {name: self.select(name, value, valid) for name, value in values.items()}

    def read_rows(self, batch: Batch, label: str) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """The exposed tensors whole, and the batch's real-token rows (None: no padding in this batch, or no
        padding mask); :meth:`select` applies the rows to a tensor of this model or of its quantized twin."""
        values = dict(zip(output_names(self.session), run_batch(self.session, batch, label)))
        valid = self.mask.valid_rows(values[self.mask.tensor]) if self.mask is not None else None
        if valid is not None:
            self.rows.seen += valid.size
            self.rows.kept += int(valid.sum())
        partial = valid if valid is not None and not valid.all() else None
        return {name: value for name, value in values.items() if name in self.wanted}, partial

    def select(self, name: str, value: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
        """``value`` (tensor ``name``) at the real tokens of ``valid`` (from :meth:`read_rows`)."""
        return value if valid is None or name in self.whole else token_rows(value, valid)

    def note(self, what: str = "the statistics") -> str | None:
        """What was skipped, for the report; None when nothing was."""
        if self.mask is None or self.rows.kept == self.rows.seen:
            return None
        return (f"padding tokens left out of {what}: {self.rows.seen - self.rows.kept} of {self.rows.seen} "
                f"token rows ({100 * self.rows.skipped_share:.0f}%), marked by {self.mask.tensor}")


def padding_rows_of(model: onnx.ModelProto, batches: list[Batch]) -> list[np.ndarray | None]:
    """The real-token rows of each batch (None where nothing is padding), one float run of ``model`` per batch when
    it has a padding mask and none otherwise."""
    if find_padding_mask(model) is None:
        return [None] * len(batches)
    reader = ActivationReader(model, [])
    return [reader.read_rows(batch, f"batch {i} (padding rows)")[1] for i, batch in enumerate(batches, start=1)]
