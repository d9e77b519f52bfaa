"""One onnxruntime session in which every planned node's quantization can be switched on or off per run.

The gated model is the prepared float model with the plan's Q/DQ inserted exactly as :class:`InsertQDQ` inserts
them, except that every consumer reads ``Where(gate, dequantized, float)`` instead of the dequantized tensor. Each
quantized node (a plan :class:`NodeDecision`) gets one boolean scalar graph input, its gate, shared by all of its
quantized inputs (data and weight). Gates on: the outputs equal the quantized model's bit for bit (``Where`` selects,
it does not compute); gates off: the FP32 model's. So "only node n quantized" or "all but node n" are one run each,
with no new session: this is what makes per-node sensitivity and mixed-precision search affordable (AIMET's
QuantAnalyzer and NNCF's accuracy control need one model per configuration).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxq.data import Batch
from onnxq.graph import all_names, unique_name
from onnxq.insert import InsertQDQ
from onnxq.plan import QuantPlan
from onnxq.runtime import make_session, run_batch
from onnxq.scales.types import ScaleTable
from onnxq.validate.metrics import ErrorAccumulator

log = logging.getLogger(__name__)

GATE_PREFIX = "onnxq_gate"


def gated_units(plan: QuantPlan) -> list[str]:
    """The plan's quantized nodes, in graph order: the units a gate switches."""
    return [d.node for d in plan.nodes if d.quantized]


def build_gated_model(prepared: onnx.ModelProto, plan: QuantPlan, scales: ScaleTable) -> tuple[onnx.ModelProto,
                                                                                                  dict[str, str]]:
    """The gated model and, per quantized node, the name of its gate input."""
    model = InsertQDQ(plan, scales).run(prepared).model
    graph = model.graph
    original = {n.name or n.output[0]: n for n in prepared.graph.node}
    taken = all_names(graph)
    gates: dict[str, str] = {}
    for unit in gated_units(plan):
        gates[unit] = unique_name(taken, f"{GATE_PREFIX}_{len(gates)}")
        graph.input.append(helper.make_tensor_value_info(gates[unit], TensorProto.BOOL, []))
    consumers = {(c.node, c.input_index) for t in plan.tensors.values() for c in t.consumers}
    kept_inits = {i.name for i in graph.initializer}
    restored = [init for init in prepared.graph.initializer
                if init.name not in kept_inits and init.name in plan.tensors]  # float weights the Where reads
    graph.initializer.extend(copy.deepcopy(restored))
    ordered: list[onnx.NodeProto] = []
    for node in graph.node:
        name = node.name or (node.output[0] if node.output else "")
        source = original.get(name)
        if source is not None and name in gates:
            for i, tensor in enumerate(node.input):
                if (name, i) in consumers and tensor != source.input[i]:
                    selected = unique_name(taken, f"{tensor}_gated")
                    ordered.append(helper.make_node("Where", [gates[name], tensor, source.input[i]], [selected],
                                                    name=unique_name(taken, f"{name}_gate{i}")))
                    node.input[i] = selected
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    return model, gates


class GatedSession:
    """Run the gated model with any set of nodes quantized; FP32 reference outputs of the data are cached."""

    def __init__(self, prepared: onnx.ModelProto, plan: QuantPlan, scales: ScaleTable, threads: int = 0) -> None:
        self.prepared = prepared
        self.model, self.gates = build_gated_model(prepared, plan, scales)
        self.session = make_session(self.model, threads=threads)
        self.units = list(self.gates)
        self.output_names = [o.name for o in prepared.graph.output]
        self._true, self._false = np.array(True), np.array(False)
        self._reference: list[list[np.ndarray]] | None = None
        self._batches: list[Batch] = []

    def run(self, batch: Batch, quantized: Iterable[str]) -> list[np.ndarray]:
        """The model's outputs on ``batch`` with exactly the nodes in ``quantized`` quantized."""
        on = set(quantized)
        feeds = dict(batch)
        feeds.update({gate: self._true if unit in on else self._false for unit, gate in self.gates.items()})
        return run_batch(self.session, feeds, "a batch (gated model)")[:len(self.output_names)]

    def set_data(self, batches: Iterable[Batch]) -> None:
        """Keep the evaluation batches and their FP32 outputs (one run each, all gates off)."""
        self._batches = list(batches)
        self._reference = [self.run(b, ()) for b in self._batches]

    @property
    def batches(self) -> list[Batch]:
        return self._batches

    def error(self, quantized: Iterable[str], batches: int | None = None) -> list[ErrorAccumulator]:
        """Per-output error against FP32 over the kept batches (the first ``batches`` of them when given) with
        ``quantized`` nodes quantized."""
        if self._reference is None:
            raise RuntimeError("call set_data() first")
        quantized = list(quantized)
        accs = [ErrorAccumulator() for _ in self.output_names]
        for batch, reference in zip(self._batches[:batches], self._reference[:batches]):
            for acc, ref, got in zip(accs, reference, self.run(batch, quantized)):
                acc.add(ref, got)
        return accs


def worst(accs: list[ErrorAccumulator]) -> tuple[float, float]:
    """(SQNR dB of the worst output, cosine of that output)."""
    acc = min(accs, key=lambda a: a.sqnr_db)
    return acc.sqnr_db, acc.cosine


def noise_ratios(accs: list[ErrorAccumulator]) -> list[float]:
    """Noise / signal power per output (SQNR = -10 log10 of it)."""
    return [a.noise / a.signal if a.signal else (0.0 if a.noise == 0 else float("inf")) for a in accs]
