"""Automatic mixed precision: keep the fewest, cheapest nodes in float until an accuracy target holds.

The target is either a worst-output SQNR against FP32 (``--target-sqnr DB``) or a user metric of a session, higher
is better, allowed to drop at most ``tolerable_loss`` below its FP32 value (Intel Neural Compressor's accuracy-aware
tuning: "tolerable_loss" and fallback to float; NNCF's ``quantize_with_accuracy_control`` reverts the most harmful
quantizers until a metric holds). The search runs in one gated session (:mod:`onnxq.recovery.gated`):

1. all nodes quantized; if the target holds, nothing stays float;
2. greedy with re-ranking (:func:`search`): each round measures every candidate (a node, or the group of nodes that
   read one shared tensor) on top of the float nodes chosen so far, on a quarter of the batches, and leaves float the
   one with the largest gain per MAC share (plus a floor, so free nodes do not all come first), until the target
   holds on all the batches or nothing within ``max_float_share`` helps;
3. prune: put each float node back to quantized (least useful first) where the target still holds.

Each step is a run over the validation batches. The pipeline then rebuilds the plan with the float nodes skipped,
inserts Q/DQ and verifies the final model on the same data by actually running it. On the tensorrt target a float
node means a TensorRT layer left to FP16/FP32 (build the engine with FP16 enabled); the lint reports it as the
``float-weighted-op`` warning, never an error.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from itertools import islice

import numpy as np
import onnx
import onnxruntime as ort

from onnxq import progress
from onnxq.config import NodeSetting, Overrides
from onnxq.errors import OnnxqError
from onnxq.insert import InsertQDQ
from onnxq.plan import build_plan
from onnxq.recovery.gated import GatedSession, noise_ratios, worst
from onnxq.recovery.macs import node_macs
from onnxq.runtime import make_session
from onnxq.validate.compare import compare_models

log = logging.getLogger(__name__)

Metric = Callable[[object], float]
COST_FLOOR = 1e-3  # added to each node's MAC share when ranking by gain per cost
LAZY_TOP = 12  # a greedy round re-measures only this many candidates, the best by their last measured value ...
FULL_RERANK_EVERY = 4  # ... except every 4th round (and when none of them helps any more), which measures them all
MIN_GAIN_DB = 0.02  # a candidate must gain at least this much (dB, or metric units) ...
MIN_GAIN_SHARE = 0.02  # ... and at least this share of the remaining gap to the target SQNR
ACCEPT_TRIES = 3  # a round accepts the first of this many best-ranked candidates that raises the score on all batches
REPLAN_ATTEMPTS = 2  # searches on when the re-planned model falls short of the gated estimate
REPLAN_MARGIN_DB = 0.1  # raise the target by the shortfall plus this


@dataclass(frozen=True)
class AccuracyTarget:
    """What the mixed-precision search must reach. Give ``sqnr_db`` or ``metric`` (with ``tolerable_loss``)."""

    sqnr_db: float | None = None
    metric: Metric | None = None
    tolerable_loss: float = 0.01  # absolute drop of ``metric`` below its FP32 value that is acceptable
    max_float_share: float = 0.1  # at most this share of the weighted nodes' MACs may stay float
    val_batches: int | None = None  # validation batches used by the search (None: all)

    def __post_init__(self) -> None:
        if (self.sqnr_db is None) == (self.metric is None):
            raise OnnxqError("give exactly one accuracy target: a target SQNR (--target-sqnr) or a metric callable")
        if not 0.0 <= self.max_float_share <= 1.0:
            raise OnnxqError(f"--max-float-share must be between 0 and 1, got {self.max_float_share}")
        if self.tolerable_loss < 0:
            raise OnnxqError(f"tolerable_loss must be >= 0, got {self.tolerable_loss}")


class GatedView:
    """A read-only onnxruntime-session look-alike of the gated model with a fixed set of nodes quantized, for user
    metrics: ``get_inputs()``, ``get_outputs()`` and ``run(output_names, feeds)`` hide the gate inputs."""

    def __init__(self, gated: GatedSession, quantized: Iterable[str]) -> None:
        self._gated, self._quantized = gated, frozenset(quantized)
        gates = set(gated.gates.values())
        self._inputs = [i for i in gated.session.get_inputs() if i.name not in gates]
        self._outputs = gated.session.get_outputs()[:len(gated.output_names)]

    def get_inputs(self) -> list:
        return list(self._inputs)

    def get_outputs(self) -> list:
        return list(self._outputs)

    def run(self, output_names, input_feed, run_options: ort.RunOptions | None = None) -> list[np.ndarray]:
        outputs = self._gated.run(input_feed, self._quantized)
        if output_names is None:
            return outputs
        position = {o.name: i for i, o in enumerate(self._outputs)}
        return [outputs[position[n]] for n in output_names]


@dataclass(frozen=True)
class FloatNode:
    node: str
    op_type: str
    mac_share: float
    gain: float  # measured: the goal's score with only this node float minus the fully quantized score


@dataclass
class MixedPrecisionResult:
    goal: str
    threshold: float
    reached: bool
    all_quantized_score: float
    searched_score: float  # the score of the chosen configuration in the gated session
    float_nodes: list[FloatNode]
    max_float_share: float
    evaluations: int
    seconds: float
    verified_score: float | None = None  # the final, really quantized model's score (set by the pipeline)
    rounds: int = 0  # greedy rounds (each measures every candidate on the ranking batches)
    gated_runs: int = 0  # forward runs of the gated model during the search (full and from a cut)
    notes: list[str] = field(default_factory=list)

    @property
    def float_mac_share(self) -> float:
        return sum(n.mac_share for n in self.float_nodes)

    @property
    def ok(self) -> bool:
        """The target holds: on the final model when it was measured (it decides), else in the search."""
        if self.verified_score is not None:
            return self.verified_score >= self.threshold
        return self.reached and self.searched_score >= self.threshold

    def summary_lines(self) -> list[str]:
        state = "reached" if self.ok else "NOT reached"
        lines = [f"mixed precision: target {self.goal} >= {self.threshold:.4g} {state}; fully quantized "
                 f"{self.all_quantized_score:.4g}, with {len(self.float_nodes)} node(s) float "
                 f"({100 * self.float_mac_share:.2f}% of MACs, limit {100 * self.max_float_share:.1f}%): "
                 f"{self.searched_score:.4g}"
                 + (f", final model {self.verified_score:.4g}" if self.verified_score is not None else "")
                 + f" ({self.evaluations} evaluations, {self.rounds} greedy round(s), {self.gated_runs} gated runs, "
                   f"{self.seconds:.1f}s)"]
        for n in self.float_nodes:
            lines.append(f"  float: {n.node} ({n.op_type}, {100 * n.mac_share:.2f}% of MACs, gain alone "
                         f"{n.gain:+.4g})")
        lines += [f"  {note}" for note in self.notes]
        return lines

    def as_dict(self) -> dict:
        def num(x):
            return x if x is None or math.isfinite(x) else ("inf" if x > 0 else "-inf")
        return {"goal": self.goal, "threshold": self.threshold, "reached": self.ok,
                "all_quantized_score": num(self.all_quantized_score), "searched_score": num(self.searched_score),
                "verified_score": num(self.verified_score), "float_mac_share": self.float_mac_share,
                "max_float_share": self.max_float_share, "evaluations": self.evaluations, "rounds": self.rounds,
                "gated_runs": self.gated_runs, "seconds": self.seconds,
                "float_nodes": [{"node": n.node, "op_type": n.op_type, "mac_share": n.mac_share, "gain": num(n.gain)}
                                for n in self.float_nodes], "notes": self.notes}


class _Scorer:
    """The goal's score of a set of float nodes, memoised, with an evaluation count."""

    def __init__(self, gated: GatedSession, target: AccuracyTarget) -> None:
        self.gated, self.target = gated, target
        self.units = list(gated.units)
        self.cache: dict[frozenset[str], float] = {}
        self.noise: dict[frozenset[str], float] = {}
        if target.metric is not None:
            self.goal = "metric"
            reference = float(target.metric(GatedView(gated, ())))
            self.threshold = reference - target.tolerable_loss
        else:
            self.goal = "worst-output SQNR dB"
            self.threshold = float(target.sqnr_db if target.sqnr_db is not None else 0.0)

    def score(self, floats: Iterable[str]) -> float:
        key = frozenset(floats)
        if key not in self.cache:
            quantized = [u for u in self.units if u not in key]
            accs = self.gated.error(quantized)
            self.noise[key] = max(noise_ratios(accs))
            if self.target.metric is not None:
                self.cache[key] = float(self.target.metric(GatedView(self.gated, quantized)))
            else:
                self.cache[key] = worst(accs)[0]
        return self.cache[key]

    def holds(self, floats: Iterable[str]) -> bool:
        return self.score(floats) >= self.threshold


def search(gated: GatedSession, target: AccuracyTarget, op_types: dict[str, str],
           groups: Iterable[tuple[str, ...]] = (), start: Iterable[str] = ()) -> MixedPrecisionResult:
    """The fewest, cheapest float nodes for which ``target`` holds on the gated session's batches.

    Greedy with re-ranking: each round measures, for every candidate (a node, or a group of nodes that read the same
    tensor), the worst-output SQNR with it float *on top of the float nodes chosen so far*, and keeps the candidate
    with the largest gain per unit of MAC share. Gains are re-measured after every choice because they do not add
    up: on the ddddocr detector several Convs make the output worse when left float alone (their quantization errors
    cancel others'), so a ranking measured once, from the fully quantized model, misses the sets that reach the
    target. A round costs one run per candidate on the ranking batches (half of them), each re-computing only the
    model downstream of the candidate (:mod:`onnxq.recovery.suffix`). Rounds are lazy: they re-measure the
    ``LAZY_TOP`` candidates with the best last-measured value, every ``FULL_RERANK_EVERY``-th round (and any round
    where those no longer help) all of them. A candidate must gain at least ``MIN_GAIN_DB`` and a share of the
    remaining gap, so noise-level gains do not spend the float budget, and is taken only if it also raises the score
    on all the batches (the first of the ``ACCEPT_TRIES`` best that does). Finally each float node is put back to
    quantized where the target still holds. ``start``: nodes float from the outset (the search continues from them).
    """
    started = time.perf_counter()
    scorer = _Scorer(gated, target)
    macs = node_macs(gated.prepared, gated.batches[0])
    total = sum(macs.values()) or 1
    share = {u: macs.get(u, 0) / total for u in scorer.units}
    base = scorer.score(())
    if base >= scorer.threshold:
        return _result(scorer, (), share, op_types, True, started)
    ranker = gated.with_data(gated.batches[:max(1, len(gated.batches) // 2)])
    candidates = _candidates(scorer.units, groups)
    floats: list[str] = [u for u in start if u in share]
    gains: dict[str, float] = {}
    values: dict[tuple[str, ...], float] = {}  # each candidate's last measured gain per cost
    rounds = 0
    with progress.stage("mixed-precision search", total=None, unit="round") as advance:
        while not scorer.holds(floats):
            used = sum(share[u] for u in floats)
            fitting = [c for c in candidates if not set(c) <= set(floats)
                       and used + sum(share[u] for u in c if u not in floats) <= target.max_float_share + 1e-12]
            fitting.sort(key=lambda c: -values.get(c, math.inf))
            full = rounds % FULL_RERANK_EVERY == 0
            min_gain = MIN_GAIN_DB if target.sqnr_db is None else max(
                MIN_GAIN_DB, MIN_GAIN_SHARE * (scorer.threshold - scorer.score(floats)))
            measure = _Ranking(ranker, scorer.units, floats, share, values, min_gain)
            ranked = measure.ranked(fitting if full else fitting[:LAZY_TOP])
            if not ranked and not full:  # the stale leaders no longer help: re-measure everything before giving up
                ranked = measure.ranked(fitting[LAZY_TOP:])
            rounds += 1
            advance()
            # the ranking batches only order the candidates: take the first that also raises the score on all
            now = scorer.score(floats)
            picked = next(((c, g) for c, g in ranked[:ACCEPT_TRIES]
                           if scorer.score(floats + [u for u in c if u not in floats]) > now), None)
            if picked is None:
                break
            for unit in picked[0]:
                if unit not in floats:
                    floats.append(unit)
                    gains.setdefault(unit, picked[1])
    if not scorer.holds(floats):
        failed = _result(scorer, floats, share, op_types, False, started,
                         [f"the target needs more than {100 * target.max_float_share:.1f}% of MACs in float "
                          f"(best within the limit: {scorer.score(floats):.4g} after {rounds} greedy round(s)); raise "
                          "--max-float-share, lower the target, or try another --method"])
        return replace(failed, rounds=rounds, gated_runs=sum(ranker.runs.values()))
    chosen = _prune(scorer, floats, gains, share)
    return replace(_result(scorer, chosen, share, op_types, True, started), rounds=rounds,
                   gated_runs=sum(ranker.runs.values()))


def _candidates(units: list[str], groups: Iterable[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Every unit alone, then every group of two or more units (those reading one shared tensor), without repeats."""
    known = set(units)
    out: list[tuple[str, ...]] = [(u,) for u in units]
    seen = {frozenset(c) for c in out}
    for group in groups:
        members = tuple(u for u in dict.fromkeys(group) if u in known)
        if len(members) >= 2 and frozenset(members) not in seen:
            seen.add(frozenset(members))
            out.append(members)
    return out


def _worst_noise_db(accs) -> float:
    ratio = max(noise_ratios(accs))
    return math.inf if ratio == 0 else (-math.inf if not math.isfinite(ratio) else -10.0 * math.log10(ratio))


class _Ranking:
    """One greedy round: gains of candidates left float on top of ``floats``, on ``ranker``'s batches, each run from
    the current configuration's snapshot (only the model downstream of the candidate re-runs)."""

    def __init__(self, ranker: GatedSession, units: list[str], floats: list[str], share: dict[str, float],
                 values: dict[tuple[str, ...], float], min_gain: float) -> None:
        self.ranker, self.floats, self.share, self.values, self.min_gain = ranker, floats, share, values, min_gain
        self.current = [u for u in units if u not in floats]
        self.snapshot = ranker.snapshot(self.current)
        self.now = _worst_noise_db(ranker.error(self.current, base=self.snapshot))

    def ranked(self, candidates: list[tuple[str, ...]]) -> list[tuple[tuple[str, ...], float]]:
        """The candidates gaining at least ``min_gain`` dB, best gain per MAC share first, with their gains;
        records every candidate's value for the next round's order."""
        found = []
        for candidate in candidates:
            trial = [u for u in self.current if u not in candidate]
            gain = _worst_noise_db(self.ranker.error(trial, base=self.snapshot)) - self.now
            cost = sum(self.share[u] for u in candidate if u not in self.floats) + COST_FLOOR * len(candidate)
            value = gain / cost if math.isfinite(gain) else (math.inf if gain > 0 else -math.inf)
            self.values[candidate] = value
            if gain >= self.min_gain:
                found.append((value, candidate, gain))
        found.sort(key=lambda f: -f[0])
        return [(c, g) for _, c, g in found]


def _prune(scorer: _Scorer, floats: list[str], gains: dict[str, float], share: dict[str, float]) -> list[str]:
    """Quantize again every float node the target does not need (least gain per cost first)."""
    kept = list(floats)
    for unit in sorted(floats, key=lambda u: gains.get(u, 0.0) / (share[u] + COST_FLOOR)):
        trial = [u for u in kept if u != unit]
        if trial and scorer.holds(trial):
            kept = trial
    return kept


def _result(scorer: _Scorer, floats, share, op_types, reached: bool, start: float,
            notes: list[str] | None = None) -> MixedPrecisionResult:
    base = scorer.score(())
    nodes = [FloatNode(u, op_types.get(u, "?"), share[u], scorer.score((u,)) - base) for u in floats]
    return MixedPrecisionResult(scorer.goal, scorer.threshold, reached, base, scorer.score(floats), nodes,
                                scorer.target.max_float_share, len(scorer.cache), time.perf_counter() - start,
                                notes=notes or [])


def shared_input_groups(plan) -> list[tuple[str, ...]]:
    """The quantized nodes that read each planned activation, where two or more do (e.g. the two 1x1 Convs of a CSP
    block): leaving such a group float together removes errors that cancel each other."""
    out = []
    for tensor in plan.tensors.values():
        if tensor.role == "activation":
            nodes = tuple(dict.fromkeys(c.node for c in tensor.consumers))
            if len(nodes) >= 2:
                out.append(nodes)
    return out


def accuracy_target(target: AccuracyTarget | Metric | float | int, tolerable_loss: float | None = None,
                    max_float_share: float | None = None) -> AccuracyTarget:
    """An :class:`AccuracyTarget` from what ``onnxq.quantize(target=...)`` accepts: a target, a target SQNR in dB,
    or a metric ``callable(session) -> float`` (higher is better) with ``tolerable_loss``."""
    if isinstance(target, AccuracyTarget):
        return target
    share = AccuracyTarget.max_float_share if max_float_share is None else max_float_share
    if isinstance(target, (int, float)) and not isinstance(target, bool):
        return AccuracyTarget(sqnr_db=float(target), max_float_share=share)
    if callable(target):
        loss = AccuracyTarget.tolerable_loss if tolerable_loss is None else tolerable_loss
        return AccuracyTarget(metric=target, tolerable_loss=loss, max_float_share=share)
    raise OnnxqError(f"target must be a target SQNR in dB or a callable(session) -> float, got {type(target).__name__}")


def keep_float_for_target(prepared, plan, scales, config, val: Iterable, target: AccuracyTarget):
    """The pipeline stage: search, then the plan rebuilt with the float nodes skipped and its scales.

    The re-planned model can score a little differently from the gated estimate (measured on the ddddocr recognizer:
    30.03 dB gated, 29.41 dB re-planned), so for an SQNR target it is quantized and measured here; when it falls
    short, the greedy search continues from the chosen nodes with the target raised by the shortfall (at most
    ``REPLAN_ATTEMPTS`` times). Returns ``(plan, scales, result, batches)``; ``batches`` are the validation batches
    the search used (the pipeline verifies the final model on them).
    """
    batches = list(islice(iter(val), target.val_batches)) if target.val_batches else list(val)
    if not batches:
        raise OnnxqError("the validation data for the accuracy target holds no batches")
    gated = GatedSession(prepared, plan, scales)
    gated.set_data(batches)
    op_types, groups = {d.node: d.op_type for d in plan.nodes}, shared_input_groups(plan)
    result = search(gated, target, op_types, groups)
    new_plan, new_scales = _replanned(prepared, plan, scales, config, result)
    goal = target.sqnr_db
    raised = goal
    actual = _replanned_sqnr(prepared, new_plan, new_scales, batches) if goal is not None and result.ok else None
    for _ in range(REPLAN_ATTEMPTS):
        if goal is None or raised is None or actual is None or actual >= goal or not result.float_nodes:
            break
        log.info("re-planned model %.2f dB < gated %.2f dB: searching on", actual, result.searched_score)
        raised += result.searched_score - actual + REPLAN_MARGIN_DB
        again = search(gated, replace(target, sqnr_db=raised), op_types, groups,
                       start=[n.node for n in result.float_nodes])
        again_plan, again_scales = _replanned(prepared, plan, scales, config, again)
        again_actual = _replanned_sqnr(prepared, again_plan, again_scales, batches)
        note = (f"the re-planned model measured {actual:.4g} against the gated {result.searched_score:.4g}: searched "
                f"on (target {raised:.4g}) to {again.searched_score:.4g} gated, {again_actual:.4g} re-planned")
        if again_actual <= actual:  # keep the better answer (its final model is measured by the pipeline)
            result.notes.append(note)
            break
        result = replace(again, threshold=goal, reached=again_actual >= goal,
                         notes=[n for n in again.notes if not n.startswith("the target")] + [note])
        new_plan, new_scales, actual = again_plan, again_scales, again_actual
    if result.float_nodes and config.target == "tensorrt":
        result.notes.append("the float nodes run in FP16 on TensorRT 10 with `onnxq build-engine --fp16` (else FP32)")
    return new_plan, new_scales, result, batches


def _replanned_sqnr(prepared, plan, scales, batches: list) -> float:
    """Worst-output SQNR of the model quantized with ``plan`` (Q/DQ inserted as the pipeline does) on ``batches``;
    the biases of shifted layers carry the shift's compensation for their quantized weights, as in the gated session
    and the recover stage (bias correction, when on, runs after the search)."""
    from onnxq.recovery.activation_shift import compensate_shifts
    from onnxq.recovery.stage import recorded_shifts

    model = prepared
    if shifts := recorded_shifts(prepared):
        model = onnx.ModelProto()
        model.CopyFrom(prepared)
        compensate_shifts(model, scales, shifts)
    quantized = InsertQDQ(plan, scales).run(model, keep_input=model is prepared).model
    return compare_models(prepared, quantized, batches).min_sqnr_db


def _replanned(prepared, plan, scales, config, result: MixedPrecisionResult):
    """The plan with the result's float nodes skipped, and its scales (the given ones when nothing stays float)."""
    if not result.float_nodes:
        return plan, scales
    skip = Overrides(by_name={n.node: NodeSetting(skip=True) for n in result.float_nodes})
    new_plan = build_plan(prepared, replace(config, overrides=config.overrides.merged(skip)))
    missing = [t for t in new_plan.tensors if t not in scales]
    if missing:
        raise OnnxqError(f"mixed precision: the plan with float nodes needs a range for {missing[0]!r} that "
                         "calibration did not produce; report this model")
    return new_plan, {t: scales[t] for t in new_plan.tensors}


def verify_final(result: MixedPrecisionResult, reference, quantized, batches: list, target: AccuracyTarget) -> None:
    """Measure the goal on the really quantized model (a plain onnxruntime session) and record it."""
    if target.metric is not None:
        result.verified_score = float(target.metric(make_session(quantized)))
    else:
        result.verified_score = compare_models(reference, quantized, batches).min_sqnr_db
    if result.ok and not result.reached:  # the final plan (re-planned without the float nodes) does better
        result.notes = [f"the search's gated estimate was {result.searched_score:.4g}; the final model reaches "
                        f"{result.verified_score:.4g}"] + [n for n in result.notes if not n.startswith("the target")]
