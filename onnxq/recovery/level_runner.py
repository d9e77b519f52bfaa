"""Run a model step by step between sequential layer updates, each needed node once per batch, from cached cut
tensors: the one runner of the level-by-level recovery algorithms (bias correction, ``--weight-rounding gptaq``).

Both algorithms change the layers of level ``L`` (1 + the deepest changed layer upstream, :func:`node_levels`) and
then need values of the model with that change: GPTAQ the inputs of level ``L + 1``, bias correction the outputs of
level ``L + 1`` (its channel means). Re-running the model from its inputs for every level costs ``levels`` (GPTAQ)
or about ``levels / 2`` (bias correction: each level's ancestors) full passes. Here the caller lists, per step, the
tensors it reads (:class:`Step`); step ``i`` runs, in a session of its own, only the nodes the step's tensors depend
on that no earlier step ran, fed with what the earlier steps left (kept per batch, and only while a later step
reads it). Every needed node then runs once per kept batch (plus a session per step), the values being those of a
full run (the same nodes on the same inputs; tested against one).

When the values of a step are measured, relative to the update that follows, is the one difference between the two
callers, and it is explicit in how a step is finished:

* :meth:`LevelRunner.finish`: the step's tensors are final as computed -- they depend only on layers already
  updated (GPTAQ: the inputs of level ``L + 1`` are computed after level ``L`` is rounded);
* :meth:`LevelRunner.finish_shifted`: the step computed some layers' outputs BEFORE their update, which then moved
  each of them by a known per-channel constant (bias correction: a bias only adds to its own layer's output). The
  kept values get that shift instead of a re-run, so the later steps see the updated layers. The nodes that read
  those outputs are not in the step (they would be downstream of a layer of that level, so of a later level).

A step may run several times before it is finished (:meth:`LevelRunner.run` with other parameter feeds, e.g.
bias correction with several levels per session); the values of the last run are the ones kept.

Memory: per kept batch, the tensors alive across the current step boundary (skip connections included); a tensor
is dropped as soon as no later step reads it (during a run marked ``last``, batch by batch), the tensors a step
computed for the caller when the next step starts.

:mod:`onnxq.recovery.suffix` builds its models of a part of the graph with :func:`part_model` too; it serves any
gate configuration from a cached snapshot rather than a fixed order of steps.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from onnxq.data import Batch
from onnxq.graph import node_name, node_reads
from onnxq.runtime import make_session, output_names, run_batch

log = logging.getLogger(__name__)


def node_levels(model: onnx.ModelProto, layers: Iterable[str]) -> list[int]:
    """Per node of ``model`` (graph order): the count of ``layers`` (node names) on its deepest upstream path,
    itself included; a layer's own value is its level (1 for a layer with no layer upstream)."""
    names = set(layers)
    level_of: dict[str, int] = {}
    levels = []
    for node in model.graph.node:
        level = max((level_of.get(name, 0) for name in node_reads(node)), default=0)
        if node_name(node) in names:
            level += 1
        levels.append(level)
        for name in node.output:
            level_of[name] = level
    return levels


def fed_input(name: str, dtype: np.dtype) -> onnx.ValueInfoProto:
    """A graph input for a tensor fed from a cache: its element type, any shape."""
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), None)


def part_model(model: onnx.ModelProto, nodes: Sequence[onnx.NodeProto], inputs: Sequence[onnx.ValueInfoProto],
               outputs: Sequence[onnx.ValueInfoProto], name: str,
               initializers: Sequence[onnx.TensorProto] = ()) -> onnx.ModelProto:
    """``nodes`` of ``model`` (in graph order) as a model of their own: ``inputs`` fed (cached tensors, graph
    inputs), ``outputs`` exposed, the initializers they read and ``initializers`` (those of added nodes) included;
    opsets, IR version and local functions of ``model``."""
    reads = set().union(*(node_reads(n) for n in nodes)) if nodes else set()
    kept = [i for i in model.graph.initializer if i.name in reads] + list(initializers)
    graph = helper.make_graph(list(nodes), f"{model.graph.name}_{name}", list(inputs), list(outputs), kept)
    part = helper.make_model(graph, opset_imports=list(model.opset_import))
    part.ir_version = model.ir_version
    part.functions.extend(model.functions)
    return part


@dataclass(frozen=True)
class Probe:
    """Nodes appended to one step's part of the graph, reading its tensors (bias correction's per-channel sums of
    the layer outputs): their outputs, in order, are what :meth:`LevelRunner.run` returns per batch."""

    nodes: tuple[onnx.NodeProto, ...] = ()
    initializers: tuple[onnx.TensorProto, ...] = ()
    outputs: tuple[onnx.ValueInfoProto, ...] = ()

    def reads(self) -> set[str]:
        """The tensors of the model the probe reads."""
        own = {out for node in self.nodes for out in node.output} | {i.name for i in self.initializers}
        return set().union(*(node_reads(n) for n in self.nodes)) - own


@dataclass(frozen=True)
class Step:
    """What the caller reads after one step: ``wanted`` tensors (by :meth:`LevelRunner.value`, until the next step
    starts) and the outputs of ``probe``."""

    wanted: frozenset[str] = frozenset()
    probe: Probe = field(default_factory=Probe)


@dataclass(frozen=True)
class ChannelShift:
    """A per-channel constant added to a tensor along ``axis`` (a bias change of the layer producing it)."""

    shift: np.ndarray
    axis: int

    def apply(self, value: np.ndarray) -> None:
        """Add the shift to ``value`` in place (an onnxruntime output array, ours to change)."""
        shape = [1] * value.ndim
        shape[self.axis] = -1
        value += self.shift.astype(value.dtype).reshape(shape)


class LevelRunner:
    """``steps`` of ``model`` over ``batches``, run and finished in order; per kept batch a store of the tensors a
    later step or the caller reads. Graph inputs (the batch's and any fed parameters) come from each run's feed;
    ``label`` names the runner in onnxruntime errors."""

    def __init__(self, model: onnx.ModelProto, batches: list[Batch], steps: Sequence[Step],
                 label: str = "level runner") -> None:
        self.model, self.batches, self.steps, self.label = model, batches, list(steps), label
        nodes = list(model.graph.node)
        producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
        step_of: dict[int, int] = {}
        for number, step in enumerate(self.steps):  # each node in the first step that needs it
            stack = [producer[t] for t in step.wanted | step.probe.reads() if t in producer]
            while stack:
                i = stack.pop()
                if i not in step_of:
                    step_of[i] = number
                    stack.extend(producer[t] for t in node_reads(nodes[i]) if t in producer)
        self.step_nodes: list[list[onnx.NodeProto]] = [[] for _ in self.steps]
        for i in sorted(step_of):
            self.step_nodes[step_of[i]].append(nodes[i])
        self.last_read: dict[str, int] = {}  # tensor -> the last step that reads it (its nodes, probe or caller)
        for number, (group, step) in enumerate(zip(self.step_nodes, self.steps, strict=True)):
            for name in set().union(step.wanted, step.probe.reads(), *(node_reads(n) for n in group)):
                self.last_read[name] = number
        self.graph_inputs = {v.name: v for v in model.graph.input}
        self.initializers = {i.name for i in model.graph.initializer}
        self.stores: list[dict[str, np.ndarray]] = [{} for _ in batches]
        self.current = 0  # the step to run (or run again) and finish next
        self.sessions = 0
        self._session: ort.InferenceSession | None = None
        self._pending: list[dict[str, np.ndarray]] = []

    def step_model(self, number: int) -> onnx.ModelProto:
        """Step ``number``'s nodes and probe as a model: inputs the declared graph inputs and the stored tensors they
        read (element types from the first batch's store), outputs the probe's and then those a later step or the
        caller reads."""
        group, step = self.step_nodes[number], self.steps[number]
        produced = {out for node in group for out in node.output if out}
        reads = set().union(step.probe.reads(), *(node_reads(n) for n in group)) - produced - self.initializers
        inputs = [self.graph_inputs[t] if t in self.graph_inputs else fed_input(t, self.stores[0][t].dtype)
                  for t in sorted(reads)]
        kept = sorted(t for t in produced if self.last_read.get(t, -1) > number or t in step.wanted)
        outputs = list(step.probe.outputs) + [helper.make_empty_tensor_value_info(t) for t in kept]
        return part_model(self.model, group + list(step.probe.nodes), inputs, outputs, f"step{number}",
                          step.probe.initializers)

    def run(self, number: int, feed: Mapping[str, np.ndarray] | None = None,
            last: bool = False) -> list[list[np.ndarray]]:
        """Run step ``number`` on every kept batch with ``feed`` (parameters fed as graph inputs); returns per batch
        the probe's outputs. The computed tensors become the store's when the step is finished. ``last``: no other
        run of this step follows, so each batch's stored tensors that no later step reads are dropped as soon as
        that batch ran (otherwise they stay for another run until the step is finished)."""
        if number != self.current:
            raise ValueError(f"step {number} run out of order: step {self.current} is next")
        if self._session is None:
            for store in self.stores:  # the previous step's tensors for the caller
                self._drop(store, number - 1)
            if not self.step_nodes[number] and not self.steps[number].probe.nodes:
                return [[] for _ in self.batches]
            self._session = make_session(self.step_model(number))
            self.sessions += 1
        names = output_names(self._session)
        inputs = [i.name for i in self._session.get_inputs()]
        probes = len(self.steps[number].probe.outputs)
        extra, wanted = feed or {}, self.steps[number].wanted
        results, self._pending = [], []
        for count, (batch, store) in enumerate(zip(self.batches, self.stores, strict=True), start=1):
            values = {**store, **batch, **extra}
            feeds = {t: values[t] for t in inputs}
            del values
            outputs = run_batch(self._session, feeds, f"{self.label} step {number} batch {count}")
            del feeds
            results.append(outputs[:probes])
            self._pending.append(dict(zip(names[probes:], outputs[probes:], strict=True)))
            if last:
                self._drop(store, number, keep=wanted)
        return results

    def _drop(self, store: dict[str, np.ndarray], through: int, keep: frozenset[str] = frozenset()) -> None:
        """Delete the tensors of ``store`` that no step after ``through`` reads (but those in ``keep``)."""
        for name in [t for t in store if self.last_read.get(t, -1) <= through and t not in keep]:
            del store[name]

    def finish(self, number: int) -> None:
        """End step ``number``: the tensors of its last run are final as computed (they depend only on layers that
        were already updated when it ran); keep those a later step or the caller reads."""
        self.finish_shifted(number, {})

    def finish_shifted(self, number: int, shifts: Mapping[str, ChannelShift]) -> None:
        """End step ``number`` whose last run computed the tensors in ``shifts`` before the update of the layers
        producing them, which then moved each by its :class:`ChannelShift`: the kept values are shifted alike."""
        if number != self.current:
            raise ValueError(f"step {number} finished out of order: step {self.current} is next")
        if self._session is None and (self.step_nodes[number] or self.steps[number].probe.nodes):
            raise ValueError(f"step {number} finished before it ran")
        for store, values in zip(self.stores, self._pending, strict=False):
            for name, value in values.items():
                if name in shifts:
                    shifts[name].apply(value)
                store[name] = value
        for store in self.stores:  # what no later step reads
            self._drop(store, number, keep=self.steps[number].wanted)
        self._pending, self._session = [], None
        self.current += 1

    def value(self, batch: int, name: str) -> np.ndarray:
        """Tensor ``name`` of kept batch ``batch`` after the steps finished so far (a stored one, or an input of the
        batch itself)."""
        store = self.stores[batch]
        return store[name] if name in store else np.asarray(self.batches[batch][name])
