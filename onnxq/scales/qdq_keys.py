"""Scales of a Q/DQ model exported from a torch fake-quant model, re-keyed to the tensor names of the FP32 export.

No torch here (``onnxq import-qdq`` runs without it).

``read_qdq`` keys a scale by the float tensor its QuantizeLinear reads (see :mod:`onnxq.scales.qdq_reader`). In a
torch fake-quant export those names are the fake-quant model's: activations are often the same as in the FP32
export of the same model (the legacy exporter names values by module scope), weights are not (the FP32 export in
eval mode fuses Conv+BN into an ``onnx::Conv_N`` initializer and transposes ``nn.Linear`` weights of 3-d inputs
into ``onnx::MatMul_N``, while the fake-quant export keeps ``conv.weight`` and the BatchNormalization). So keys are
matched to the FP32 model's plan like this:

1. Both models go through onnxq's prepare (the Q/DQ one with its Q/DQ stripped), so BN is folded in both.
2. A planned activation takes the scale of the key with the same name when that key's values (both graphs run in
   onnxruntime on the same seeded random input) equal it; otherwise the key whose values are equal.
3. A planned weight takes the scale of the key whose (stripped, folded) weight array equals it. When onnxq folded
   a BN into that weight after import (``<key>_bnfolded``), a per-output-channel scale is multiplied by
   ``|gamma / sqrt(var + eps)|`` per channel (the ratio of the folded and raw channel maxima): quantizing ``W`` with
   ``scale`` then scaling by ``s`` is exactly quantizing ``W * s`` with ``scale * |s|`` on a symmetric grid. Scales
   on another axis (ConvTranspose weights per input channel) or per tensor cannot be carried through a fold: they
   are dropped, and onnxq computes min-max scales from the weight values.

Keys that match nothing and planned tensors left without a scale are reported.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxq.config import QuantConfig
from onnxq.data import RandomSource
from onnxq.errors import OnnxqError
from onnxq.graph import GraphIndex, count_qdq
from onnxq.passes.strip_qdq import StripQDQ
from onnxq.pipeline import prepare
from onnxq.plan import QuantPlan, build_plan
from onnxq.runtime import make_session, run_named
from onnxq.scales.qdq_reader import QDQEntry, read_qdq
from onnxq.scales.types import QuantParams, ScaleTable

log = logging.getLogger(__name__)

EXACT_TOL = 1e-4
LOOSE_TOL = 5e-2  # pre-quantized (int8-stored) weights make the stripped graph differ by the quantization error
FOLD_SUFFIX = "_bnfolded"


@dataclass
class KeyMatch:
    table: ScaleTable = field(default_factory=dict)  # FP32 plan tensor -> params
    renamed: dict[str, str] = field(default_factory=dict)  # FP32 tensor -> Q/DQ key, where they differ
    unused_keys: list[str] = field(default_factory=list)
    uncovered: list[str] = field(default_factory=list)  # planned tensors without a scale
    notes: list[str] = field(default_factory=list)


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    return float(np.abs(a.astype(np.float64) - b).max()) / max(float(np.abs(b).max()), 1e-12)


def _best(target: np.ndarray, candidates: dict[str, np.ndarray], prefer: str | None) -> tuple[str | None, float]:
    if prefer is not None and prefer in candidates and _rel_err(candidates[prefer], target) <= EXACT_TOL:
        return prefer, 0.0
    scored = sorted((_rel_err(v, target), k) for k, v in candidates.items())
    if not scored or scored[0][0] > LOOSE_TOL:
        return None, float("inf")
    if scored[0][0] > EXACT_TOL and len(scored) > 1 and scored[1][0] < 2 * scored[0][0]:
        return None, scored[0][0]  # loose and not clearly better than the next: ambiguous
    return scored[0][1], scored[0][0]


def _values(model: onnx.ModelProto, names: list[str], batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    got = run_named(make_session(model, outputs=names), batch, "a random input")
    return {n: got[n] for n in names if n in got}


def match_to_fp32(qdq: onnx.ModelProto, fp32: onnx.ModelProto, config: QuantConfig | None = None,
                  seed: int = 0) -> KeyMatch:
    config = config or QuantConfig()
    if not count_qdq(qdq):
        raise OnnxqError("the Q/DQ model has no QuantizeLinear/DequantizeLinear nodes")
    if count_qdq(fp32):
        raise OnnxqError("--fp32 must be the float export (it holds Q/DQ nodes)")
    entries = read_qdq(qdq)
    if not entries:
        raise OnnxqError("the Q/DQ model has no int8/uint8 Q/DQ to read")
    q_index = GraphIndex.build(StripQDQ().run(qdq).model.graph)  # float weights by key, before any BN folding
    stripped, _ = prepare(qdq, QuantConfig(target=config.target, requantize=True))
    prepared, _ = prepare(fp32, config)
    plan = build_plan(prepared, config)
    s_index, f_index = GraphIndex.build(stripped.graph), GraphIndex.build(prepared.graph)
    in_f = [v.name for v in prepared.graph.input if v.name not in f_index.initializers]
    in_s = [v.name for v in stripped.graph.input if v.name not in s_index.initializers]
    if sorted(in_f) != sorted(in_s):
        raise OnnxqError(f"the models have different inputs: Q/DQ {sorted(in_s)}, FP32 {sorted(in_f)}; give the FP32 "
                         "export of the same torch model")
    batch = next(iter(RandomSource(prepared, batches=1, batch_size=2, seed=seed)))
    result = KeyMatch()
    _match_activations(entries, plan, stripped, prepared, s_index, batch, result)
    _match_weights(entries, plan, s_index, f_index, q_index, result)
    used = set(result.renamed.values()) | {n for n in result.table if n in entries}
    result.unused_keys = sorted(k for k in entries if k not in used)
    result.uncovered = [t.name for t in plan.tensors.values() if t.name not in result.table]
    result.table = {t.name: result.table[t.name] for t in plan.tensors.values() if t.name in result.table}
    return result


def _match_activations(entries: dict[str, QDQEntry], plan: QuantPlan, stripped: onnx.ModelProto,
                       prepared: onnx.ModelProto, s_index: GraphIndex, batch, result: KeyMatch) -> None:
    keys = [k for k, e in entries.items() if e.role == "activation" and not s_index.is_initializer(k)]
    graph_inputs = {v.name for v in stripped.graph.input}
    s_vals = _values(stripped, [k for k in keys if k not in graph_inputs], batch)
    s_vals.update({k: batch[k] for k in keys if k in graph_inputs and k in batch})
    targets = [t.name for t in plan.activations()]
    f_vals = _values(prepared, [n for n in targets if n not in batch], batch)
    f_vals.update({n: batch[n] for n in targets if n in batch})
    for name in targets:
        if name not in f_vals:
            continue
        key, err = _best(f_vals[name], s_vals, name)
        if key is None:
            continue
        result.table[name] = entries[key].params
        if key != name:
            result.renamed[name] = key
        if err > EXACT_TOL:
            result.notes.append(f"activation {name!r} matched {key!r} only approximately (rel. error {err:.2g})")


def _match_weights(entries: dict[str, QDQEntry], plan: QuantPlan, s_index: GraphIndex, f_index: GraphIndex,
                   q_index: GraphIndex, result: KeyMatch) -> None:
    # stripped-and-prepared weight arrays, each traced back to the key it came from
    candidates: dict[str, np.ndarray] = {}
    origin: dict[str, tuple[str, bool]] = {}  # candidate name -> (key, folded by onnxq)
    for key, entry in entries.items():
        if entry.role != "weight":
            continue
        for name, folded in ((key, False), (key + FOLD_SUFFIX, True)):
            if s_index.is_initializer(name):
                candidates[name] = s_index.array(name)
                origin[name] = (key, folded)
    for t in plan.weights():
        cand, err = _best(f_index.array(t.name), candidates, t.name)
        if cand is None:
            continue
        key, folded = origin[cand]
        params = entries[key].params
        if folded:
            through = _through_fold(t.name, key, params, q_index, candidates[cand], result)
            if through is None:
                continue
            params = through
        if params.per_channel and (params.axis != t.axis or params.channels != t.channels):
            result.notes.append(f"weight {t.name!r}: scales of {key!r} are on axis {params.axis}, the plan wants "
                                f"axis {t.axis}; left to onnxq's min-max")
            continue
        result.table[t.name] = params
        if key != t.name:
            result.renamed[t.name] = key
        if err > EXACT_TOL:
            result.notes.append(f"weight {t.name!r} matched {key!r} only approximately (rel. error {err:.2g})")


def _raw_weight(q_index: GraphIndex, key: str) -> np.ndarray | None:
    if q_index.is_initializer(key):
        return q_index.array(key)
    return None


def _through_fold(name: str, key: str, params: QuantParams, q_index: GraphIndex, folded: np.ndarray,
                  result: KeyMatch) -> QuantParams | None:
    raw = _raw_weight(q_index, key)
    if raw is None or not params.per_channel or params.axis != 0 or raw.shape != folded.shape:
        result.notes.append(f"weight {name!r}: onnxq folded a BatchNormalization into {key!r} after its scales were "
                            "set, and they are not per output channel on axis 0; left to onnxq's min-max")
        return None
    r = np.abs(raw.reshape(raw.shape[0], -1).astype(np.float64)).max(axis=1)
    f = np.abs(folded.reshape(folded.shape[0], -1).astype(np.float64)).max(axis=1)
    factor = np.where(r > 0, f / np.where(r > 0, r, 1.0), 1.0)
    scale = (params.scale.astype(np.float64) * factor).astype(np.float32)
    scale = np.where(scale > 0, scale, params.scale)
    return QuantParams(scale, params.zero_point, params.dtype, params.axis)
