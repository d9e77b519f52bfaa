"""Run a model in stages between sequential layer updates, each node once per batch: a stage's nodes read the tensors
earlier stages left (kept per batch only while a later stage or the caller still needs them).

Sequential recovery (onnxq.recovery.gptaq) changes the layers of level ``L`` and then needs the inputs of level
``L + 1`` in the model with that change. Re-running the model from its inputs for every level costs ``levels`` full
passes; here node ``n`` belongs to stage ``s(n)`` = the number of changed layers on its deepest upstream path
(itself included), a non-decreasing function along edges, so sorting the nodes by stage keeps them topologically
ordered, and a stage ``s`` node depends only on layers of levels ``<= s``. After level ``s`` is final, stage ``s``
runs once over the kept batches and exposes the inputs of level ``s + 1``: the whole schedule executes each needed
node once per batch (plus a session per stage), instead of ``levels`` times. The values are those of a full run (the
same nodes on the same inputs; tested against one). Memory: the tensors alive across a stage boundary, for each kept
batch (they are dropped as soon as no later stage reads them).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper

from onnxq.data import Batch
from onnxq.graph import node_name, node_reads
from onnxq.runtime import make_session, output_names, run_batch

log = logging.getLogger(__name__)



def node_stages(model: onnx.ModelProto, layers: Iterable[str]) -> list[int]:
    """Per node of ``model`` (graph order): 1 + ... the count of ``layers`` (node names) on its deepest upstream path,
    itself included; a layer's own stage is its level."""
    names = set(layers)
    level_of: dict[str, int] = {}
    stages = []
    for node in model.graph.node:
        stage = max((level_of.get(name, 0) for name in node_reads(node)), default=0)
        if node_name(node) in names:
            stage += 1
        stages.append(stage)
        for name in node.output:
            level_of[name] = stage
    return stages


class StagedRun:
    """The nodes of ``model`` needed for the ``wanted`` tensors, in stages; per kept batch a store of live tensors.

    ``wanted[s]``: tensors the caller reads after stage ``s`` ran. Inputs declared in ``model.graph.input`` (the
    batch's and any fed parameters) are taken from ``feed`` on each run."""

    def __init__(self, model: onnx.ModelProto, stages: list[int], wanted: dict[int, set[str]],
                 batches: list[Batch]) -> None:
        self.model = model
        self.batches = batches
        nodes = list(model.graph.node)
        needed = set().union(*wanted.values()) if wanted else set()
        keep = [False] * len(nodes)
        for i in range(len(nodes) - 1, -1, -1):  # the ancestors of what is wanted
            if any(out in needed for out in nodes[i].output):
                keep[i] = True
                needed |= node_reads(nodes[i])
        self.initializers = {i.name: i for i in model.graph.initializer}
        stages = self._sink_constants(nodes, list(stages), keep)
        self.stage_nodes: dict[int, list[onnx.NodeProto]] = {}
        for node, stage, kept in zip(nodes, stages, keep, strict=True):
            if kept:
                self.stage_nodes.setdefault(stage, []).append(node)
        self.last_use: dict[str, int] = {}
        for stage, group in self.stage_nodes.items():
            for node in group:
                for name in node_reads(node):
                    self.last_use[name] = max(self.last_use.get(name, -1), stage)
        for stage, names in wanted.items():
            for name in names:
                self.last_use[name] = max(self.last_use.get(name, -1), stage)
        self.wanted = wanted
        self.graph_inputs = {v.name: v for v in model.graph.input}
        self.stores: list[dict[str, np.ndarray]] = [{} for _ in batches]

    def _sink_constants(self, nodes: list[onnx.NodeProto], stages: list[int], keep: list[bool]) -> list[int]:
        """Nodes that read only initializers (a weight's DequantizeLinear) move to their first consumer's stage, so
        their outputs are not kept per batch across stages."""
        first_reader: dict[str, int] = {}
        for node, stage, kept in zip(nodes, stages, keep, strict=True):
            if kept:
                for name in node_reads(node):
                    first_reader[name] = min(first_reader.get(name, stage), stage)
        for i in range(len(nodes) - 1, -1, -1):
            if keep[i] and all(name in self.initializers for name in node_reads(nodes[i])):
                readers = [first_reader[out] for out in nodes[i].output if out in first_reader]
                if readers:
                    stages[i] = max(stages[i], min(readers))
                    for name in node_reads(nodes[i]):
                        first_reader[name] = min(first_reader.get(name, stages[i]), stages[i])
        return stages

    def stage_model(self, stage: int, dtypes: dict[str, np.dtype]) -> tuple[onnx.ModelProto, list[str]]:
        """The stage's nodes as a model: inputs are the live tensors they read (element types from ``dtypes``) and
        the declared graph inputs; outputs the tensors it produces that a later stage or the caller needs."""
        group = self.stage_nodes.get(stage, [])
        produced = {out for node in group for out in node.output if out}
        reads = set().union(*(node_reads(n) for n in group)) if group else set()
        outside = sorted(reads - produced - set(self.initializers))
        inputs = [self.graph_inputs[t] if t in self.graph_inputs else
                  helper.make_tensor_value_info(t, helper.np_dtype_to_tensor_dtype(dtypes[t]), None)
                  for t in outside]
        wanted = self.wanted.get(stage, set())
        outputs = sorted(t for t in produced if self.last_use.get(t, -1) > stage or t in wanted)
        graph = helper.make_graph(group, f"{self.model.graph.name}_stage{stage}", inputs,
                                  [helper.make_empty_tensor_value_info(t) for t in outputs],
                                  [self.initializers[t] for t in sorted(reads & set(self.initializers))])
        model = helper.make_model(graph, opset_imports=list(self.model.opset_import))
        model.ir_version = self.model.ir_version
        model.functions.extend(self.model.functions)
        return model, outside

    def value(self, batch: int, name: str) -> np.ndarray:
        """Tensor ``name`` of kept batch ``batch`` (a stored one, or an input of the batch itself)."""
        store = self.stores[batch]
        return store[name] if name in store else np.asarray(self.batches[batch][name])

    def run(self, stage: int, feed: dict[str, np.ndarray] | None = None) -> None:
        """Run stage ``stage`` on every kept batch; afterwards each store holds what later stages and the caller
        need (tensors no stage from ``stage`` on reads are dropped first)."""
        for store in self.stores:
            for name in [t for t in store if self.last_use.get(t, -1) < stage]:
                del store[name]
        if not self.stage_nodes.get(stage):
            return
        extra, wanted = feed or {}, self.wanted.get(stage, set())
        dtypes = {t: v.dtype for t, v in self.stores[0].items()}
        model, inputs = self.stage_model(stage, dtypes)
        session = make_session(model)
        names = output_names(session)
        for number, (batch, store) in enumerate(zip(self.batches, self.stores, strict=True), start=1):
            values = {**store, **batch, **extra}
            outputs = run_batch(session, {t: values[t] for t in inputs}, f"stage {stage} batch {number}")
            store.update(zip(names, outputs, strict=True))
            for name in [t for t in store if self.last_use.get(t, -1) <= stage and t not in wanted]:
                del store[name]
