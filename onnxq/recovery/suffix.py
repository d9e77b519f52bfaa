"""Re-run only the part of the gated model downstream of a change: the shared upstream prefix is reused.

Flipping the gate of node ``n`` changes nothing upstream of ``n``'s first gate: for "only n quantized" every tensor
before it equals the FP32 run, for "only n float" the fully quantized run, and in a greedy search the run of the
current configuration. So a configuration that differs from a cached one (a :class:`Snapshot`) only in nodes at or
after a cut point is computed by a *suffix model*: the gated model's nodes from the cut on, whose inputs are the
tensors live across the cut, fed from the snapshot. Graph outputs produced before the cut are taken from the snapshot
as they are. The values are those of a full run (the same nodes on the same inputs; tested against full runs).

Cuts are placed at the first gate of every k-th gated node (``cuts`` suffix sessions, built lazily on first use, with
the input element types of the tensors the snapshot holds). On the ddddocr detector the 110 per-node runs then
evaluate on average about half the graph.

A suffix model is built as a step of the level runner is (:func:`onnxq.recovery.level_runner.part_model`); the
scheduling differs: a suffix serves any configuration from a cached snapshot, the level runner a fixed order of steps
that each run once per batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxq.graph import node_reads
from onnxq.recovery.level_runner import fed_input, part_model
from onnxq.runtime import make_session

log = logging.getLogger(__name__)


@dataclass
class Snapshot:
    """One configuration's full runs over the kept batches: per batch the outputs and the tensors at every cut."""

    quantized: frozenset[str]
    outputs: list[list[np.ndarray]]
    cut_values: list[dict[str, np.ndarray]]


@dataclass
class Cut:
    """A suffix of the gated model from node position ``position`` on."""

    position: int
    inputs: list[str]  # tensors produced before the cut (or graph inputs) read from the cut on; gates excluded
    gates: list[str]  # gate inputs read from the cut on
    outputs: list[str]  # graph outputs produced from the cut on
    session: object | None = None


@dataclass
class SuffixPlan:
    """Where the gated model can be cut, and where each gated node's first gate sits."""

    model: onnx.ModelProto
    first_gate: dict[str, int]  # unit -> node position of its first If
    cuts: list[Cut] = field(default_factory=list)  # every planned cut, in graph order
    active: list[Cut] = field(default_factory=list)  # the cuts in use (:meth:`use`)

    def use(self, count: int) -> int:
        """Use ``count`` of the planned cuts, evenly spread (all of them when ``count`` reaches their number)."""
        count = min(count, len(self.cuts))
        self.active = [self.cuts[(i + 1) * len(self.cuts) // (count + 1)] for i in range(count)] if count else []
        if count == len(self.cuts):
            self.active = list(self.cuts)
        return len(self.active)

    @property
    def cut_tensors(self) -> list[str]:
        return sorted({t for c in self.cuts for t in c.inputs})

    def cut_for(self, changed: set[str]) -> Cut | None:
        """The latest cut at or before the first gate of every unit in ``changed`` (None: run the whole model)."""
        if not changed:
            return None
        start = min(self.first_gate[u] for u in changed)
        usable = [c for c in self.active if c.position <= start]
        return usable[-1] if usable else None


def plan_cuts(model: onnx.ModelProto, gates: dict[str, str], count: int) -> SuffixPlan:
    """Up to ``count`` cut points of the gated ``model`` (``gates``: unit -> gate input name), evenly spread over the
    gated nodes in graph order; the first gated node gets none (its suffix is the whole model)."""
    graph = model.graph
    unit_of_gate = {g: u for u, g in gates.items()}
    first_gate: dict[str, int] = {}
    for position, node in enumerate(graph.node):
        if node.op_type == "If" and node.input[0] in unit_of_gate:
            first_gate.setdefault(unit_of_gate[node.input[0]], position)
    plan = SuffixPlan(model, first_gate)
    ordered = sorted(first_gate.values())
    if count < 1 or len(ordered) < 2:
        return plan
    step = max(1, len(ordered) // (count + 1))
    positions = sorted({ordered[i] for i in range(step, len(ordered), step)})[:count]
    reads = [node_reads(node) for node in graph.node]
    initializers = {i.name for i in graph.initializer}
    graph_inputs = [i.name for i in graph.input if i.name not in initializers]
    gate_names = set(gates.values())
    outputs = [o.name for o in graph.output]
    for position in positions:
        produced_before = set(graph_inputs)
        for node in graph.node[:position]:
            produced_before.update(o for o in node.output if o)
        read_after = set().union(*reads[position:])
        produced_after = {o for node in graph.node[position:] for o in node.output if o}
        live = sorted((read_after & produced_before) - initializers)
        plan.cuts.append(Cut(position, [t for t in live if t not in gate_names], [t for t in live if t in gate_names],
                             [o for o in outputs if o in produced_after]))
    plan.active = list(plan.cuts)
    return plan


def suffix_model(plan: SuffixPlan, cut: Cut, dtypes: dict[str, np.dtype]) -> onnx.ModelProto:
    """The gated model from ``cut`` on: its live tensors and gates are graph inputs, its outputs those it produces."""
    source = plan.model.graph
    inputs = [fed_input(t, dtypes[t]) for t in cut.inputs] + [v for v in source.input if v.name in cut.gates]
    return part_model(plan.model, source.node[cut.position:], inputs,
                      [o for o in source.output if o.name in cut.outputs], f"from_{cut.position}")


def suffix_session(plan: SuffixPlan, cut: Cut, snapshot: Snapshot, threads: int = 0):
    """The session of ``cut`` (built on first use, with the element types of ``snapshot``'s cut values)."""
    if cut.session is None:
        dtypes = {t: snapshot.cut_values[0][t].dtype for t in cut.inputs}
        cut.session = make_session(suffix_model(plan, cut, dtypes), threads=threads)
        log.debug("suffix session from node %d: %d input tensor(s)", cut.position, len(cut.inputs))
    return cut.session
