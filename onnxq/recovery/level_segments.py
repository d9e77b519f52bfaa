"""Run a model level after level without re-running what is already final: each chunk of levels gets a session of its
own part of the graph, fed with the tensors the earlier chunks left (held per batch in memory).

Bias correction (:mod:`onnxq.recovery.bias_correction`) measures each level's channel means with every upstream
correction in effect. Re-running the model from its inputs for every level costs about ``levels / 2`` full passes
(a 32-level MobileNet: 16 passes for its corrections). But once a chunk's biases are final, nothing upstream of the
next chunk changes any more: its values are those of the last run, except that each output of the chunk's last
level moves by exactly that level's bias change (a bias only adds to its own layer's output, and no node in the
chunk's part of the graph is downstream of a last-level layer: that would put a later level in it). So the tensors
the rest of the graph reads are taken from the last run, the last level's outputs shifted, and the next chunk's
session starts from them: a level costs only its own part of the graph (in total about one full pass, plus a session
per chunk).

Memory: the tensors live across the current cut (skip connections included), for every kept batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from onnxq.data import Batch
from onnxq.graph import node_reads
from onnxq.runtime import make_session, run_batch

log = logging.getLogger(__name__)



@dataclass
class Segment:
    """The nodes of one chunk (positions in the model), the tensors it reads from the cache and those it leaves."""

    positions: list[int]
    cached_inputs: list[str]
    live_outputs: list[str]
    session: ort.InferenceSession
    extra_outputs: int  # the leading session outputs that are not live tensors
    last_values: list[dict[str, np.ndarray]] = field(default_factory=list)


class LevelSegments:
    """The model, the batches, and per batch the cached values of the tensors computed so far that later nodes
    read."""

    def __init__(self, model: onnx.ModelProto, batches: list[Batch]) -> None:
        self.model, self.batches = model, batches
        self.nodes = list(model.graph.node)
        self.producer = {name: i for i, node in enumerate(self.nodes) for name in node.output if name}
        self.readers: dict[str, set[int]] = {}
        for i, node in enumerate(self.nodes):
            for name in node_reads(node):
                self.readers.setdefault(name, set()).add(i)
        self.done: set[int] = set()
        self.cache: list[dict[str, np.ndarray]] = [{} for _ in batches]
        self.sessions = 0

    def ancestors(self, names: list[str]) -> set[int]:
        """Positions of the nodes not yet done that ``names`` depend on."""
        found: set[int] = set()
        stack = [self.producer[n] for n in names if n in self.producer]
        while stack:
            i = stack.pop()
            if i in found or i in self.done:
                continue
            found.add(i)
            stack.extend(self.producer[n] for n in node_reads(self.nodes[i]) if n in self.producer)
        return found

    def segment(self, outputs: list[str], extra: list[onnx.NodeProto], extra_inits: list[onnx.TensorProto],
                extra_outputs: list[onnx.ValueInfoProto]) -> Segment:
        """A session over the not-yet-done nodes ``outputs`` depend on, plus ``extra`` nodes (reductions of those
        outputs) whose outputs ``extra_outputs`` come first, then the live tensors later nodes read."""
        positions = sorted(self.ancestors(outputs))
        inside = set(positions)
        produced = {name for i in positions for name in self.nodes[i].output if name}
        read = set().union(*(node_reads(self.nodes[i]) for i in positions)) if positions else set()
        cached = sorted(n for n in read if n in self.producer and n not in produced)
        live = sorted(n for n in produced
                      if any(r not in inside and r not in self.done for r in self.readers.get(n, ())))
        graph = self.model.graph
        inits = [i for i in graph.initializer if i.name in read] + list(extra_inits)
        sample = self.cache[0] if self.cache else {}
        inputs = [v for v in graph.input if v.name in read and v.name not in {i.name for i in inits}]
        inputs += [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(sample[n].dtype), None)
                   for n in cached]
        outputs_info = list(extra_outputs) + [onnx.ValueInfoProto(name=n) for n in live]
        sub = helper.make_graph([self.nodes[i] for i in positions] + extra, f"{graph.name}_segment", inputs,
                                outputs_info, inits)
        model = helper.make_model(sub, opset_imports=self.model.opset_import, ir_version=self.model.ir_version)
        self.sessions += 1
        return Segment(positions, cached, live, make_session(model), len(extra_outputs))

    def run(self, segment: Segment, feeds: dict[str, np.ndarray], label: str) -> list[list[np.ndarray]]:
        """The leading (non-live) outputs per batch; the live values are kept for :meth:`finish`."""
        names = {i.name for i in segment.session.get_inputs()}
        results, segment.last_values = [], []
        for i, batch in enumerate(self.batches):
            feed = {k: v for k, v in {**batch, **feeds}.items() if k in names}
            feed.update({n: self.cache[i][n] for n in segment.cached_inputs})
            outs = run_batch(segment.session, feed, f"{label} batch {i + 1}")
            results.append(outs[:segment.extra_outputs])
            segment.last_values.append(dict(zip(segment.live_outputs, outs[segment.extra_outputs:])))
        return results

    def finish(self, segment: Segment, shifts: dict[str, tuple[np.ndarray, int]]) -> None:
        """Mark the segment done and cache its live values of the last run, ``shifts[tensor] = (per-channel shift,
        channel axis)`` added to the tensors whose producer changed its bias after that run."""
        self.done.update(segment.positions)
        for cache, values in zip(self.cache, segment.last_values):
            for name, value in values.items():
                if name in shifts:
                    shift, axis = shifts[name]
                    shape = [1] * value.ndim
                    shape[axis] = -1
                    value += shift.astype(value.dtype).reshape(shape)  # onnxruntime's output array, ours
                cache[name] = value
            for name in [n for n in cache if self.readers.get(n, set()) <= self.done]:
                del cache[name]  # no reader left
        segment.last_values = []
