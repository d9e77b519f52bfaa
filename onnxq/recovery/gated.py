"""One onnxruntime session in which every planned node's quantization can be switched on or off per run.

The gated model is the prepared float model in which every planned consumer input reads ``If(gate, Q/DQ of the
tensor, the tensor)``, the Q/DQ being exactly what the insert pass puts there. Each quantized node (a plan
:class:`NodeDecision`) gets one boolean scalar graph input, its gate, shared by all of its quantized inputs (data and
weight). Gates on: the outputs equal the quantized model's bit for bit; gates off: the FP32 model's. So "only node n
quantized" or "all but node n" are one run each, with no new session: this is what makes per-node sensitivity and
mixed-precision search affordable (AIMET's QuantAnalyzer and NNCF's accuracy control build one model per
configuration).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxq.data import Batch
from onnxq.errors import OnnxqError
from onnxq.graph import GraphIndex, all_names, unique_name
from onnxq.insert import quantize_array
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
    """The gated model and, per quantized node, the name of its gate input.

    Every planned consumer input ``(node, i)`` of tensor ``t`` reads ``If(gate_node)``: the then-branch is exactly
    the Q/DQ the insert pass would put there (``QuantizeLinear -> DequantizeLinear`` of ``t`` with its scale and zero
    point, or ``DequantizeLinear`` of the int8 weight from :func:`quantize_array`), the else-branch is ``t``. ``If``
    runs only the branch taken, so a node switched off costs nothing (``Where`` computed both sides: 1.6-1.8x
    slower on the ddddocr detector).
    """
    missing = [t for t in plan.tensors if t not in scales]
    if missing:
        raise OnnxqError(f"no scale for {len(missing)} planned tensor(s), e.g. {missing[:3]}")
    model = onnx.ModelProto()
    model.CopyFrom(prepared)
    graph = model.graph
    index = GraphIndex.build(prepared.graph)
    taken = all_names(graph)
    gates: dict[str, str] = {}
    for unit in gated_units(plan):
        gates[unit] = unique_name(taken, f"{GATE_PREFIX}_{len(gates)}")
        graph.input.append(helper.make_tensor_value_info(gates[unit], TensorProto.BOOL, []))
    branches: dict[tuple[str, int], list] = {}  # (consumer, input index) -> the then-branch nodes' recipe
    for tensor in plan.tensors.values():
        params = scales[tensor.name]
        scale, zero_point = unique_name(taken, f"{tensor.name}_scale"), unique_name(taken, f"{tensor.name}_zero_point")
        graph.initializer.extend([numpy_helper.from_array(params.scale, scale),
                                  numpy_helper.from_array(params.zero_point, zero_point)])
        quantized_weight = None
        if tensor.role == "weight":
            quantized_weight = unique_name(taken, f"{tensor.name}_quantized")
            graph.initializer.append(numpy_helper.from_array(quantize_array(index.array(tensor.name), params),
                                                             quantized_weight))
        axis = {} if params.axis is None else {"axis": params.axis}
        for consumer in tensor.consumers:
            branches[(consumer.node, consumer.input_index)] = [scale, zero_point, quantized_weight, axis]
    ordered: list[onnx.NodeProto] = []
    for node in graph.node:
        name = node.name or (node.output[0] if node.output else "")
        for i, tensor in enumerate(node.input):
            recipe = branches.get((name, i))
            if recipe is None or name not in gates:
                continue
            selected = unique_name(taken, f"{tensor}_gated")
            ordered.append(helper.make_node("If", [gates[name]], [selected], name=unique_name(taken, f"{name}_gate{i}"),
                                            then_branch=_quantized_branch(tensor, recipe, selected, taken),
                                            else_branch=_float_branch(tensor, selected, taken)))
            node.input[i] = selected
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    return model, gates


def _quantized_branch(tensor: str, recipe: list, selected: str, taken: set[str]) -> onnx.GraphProto:
    scale, zero_point, quantized_weight, axis = recipe
    out = unique_name(taken, f"{selected}_dequantized")
    if quantized_weight is not None:
        nodes = [helper.make_node("DequantizeLinear", [quantized_weight, scale, zero_point], [out], **axis)]
    else:
        q = unique_name(taken, f"{selected}_quantized")
        nodes = [helper.make_node("QuantizeLinear", [tensor, scale, zero_point], [q], **axis),
                 helper.make_node("DequantizeLinear", [q, scale, zero_point], [out], **axis)]
    return helper.make_graph(nodes, f"{selected}_quantized_branch", [],
                             [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])


def _float_branch(tensor: str, selected: str, taken: set[str]) -> onnx.GraphProto:
    out = unique_name(taken, f"{selected}_float")
    return helper.make_graph([helper.make_node("Identity", [tensor], [out])], f"{selected}_float_branch", [],
                             [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])


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
