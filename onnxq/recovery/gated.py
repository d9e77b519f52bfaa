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

import copy
import logging
import math
import time
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxq.data import Batch
from onnxq.errors import OnnxqError
from onnxq.graph import GraphIndex, all_names, node_name, unique_name
from onnxq.insert import quantize_array
from onnxq.padding_rows import padding_rows_of, token_rows
from onnxq.plan import QuantPlan
from onnxq.recovery.suffix import Snapshot, plan_cuts, suffix_session
from onnxq.runtime import make_session, run_batch
from onnxq.scales.types import ScaleTable
from onnxq.validate.metrics import ErrorAccumulator

log = logging.getLogger(__name__)

GATE_PREFIX = "onnxq_gate"


def gated_units(plan: QuantPlan) -> list[str]:
    """The plan's quantized nodes that read a planned tensor, in plan order: the units a gate switches. A node
    quantized only as part of its producer's node unit (an ort-cpu Relu/Clip absorbed into a Conv, whose Q sits on
    its output and is switched with the readers of that output) has no input of its own to gate."""
    readers = {c.node for tensor in plan.tensors.values() for c in tensor.consumers}
    return [d.node for d in plan.nodes if d.quantized and d.node in readers]


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
    biases = _compensated_biases(prepared, index, scales, set(gates), graph, taken)
    ordered: list[onnx.NodeProto] = []
    for node in graph.node:
        name = node_name(node)
        if name in biases:  # a shifted layer: its quantized form carries the shift's weight compensation
            selected = unique_name(taken, f"{node.input[2]}_gated")
            ordered.append(helper.make_node("If", [gates[name]], [selected], name=unique_name(taken, f"{name}_gate2"),
                                            then_branch=_float_branch(biases[name], selected, taken),
                                            else_branch=_float_branch(node.input[2], selected, taken)))
            node.input[2] = selected
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


def _compensated_biases(prepared: onnx.ModelProto, index: GraphIndex, scales: ScaleTable, gated: set[str],
                        graph: onnx.GraphProto, taken: set[str]) -> dict[str, str]:
    """Per gated layer of a recorded activation shift, the name of an added initializer holding its bias with the
    shift's compensation for the quantized weight (what ``recover`` gives it when bias correction is off)."""
    from onnxq.recovery.activation_shift import compensated_bias, compensation_deltas
    from onnxq.recovery.stage import recorded_shifts

    shifts = recorded_shifts(prepared)
    if not shifts:
        return {}
    names: dict[str, str] = {}
    by_name = {node_name(n): n for n in prepared.graph.node}
    for layer, delta in compensation_deltas(prepared, scales, shifts).items():
        node = by_name[layer]
        if layer not in gated or len(node.input) < 3 or not node.input[2]:
            continue
        names[layer] = unique_name(taken, f"{node.input[2]}_compensated")
        graph.initializer.append(numpy_helper.from_array(compensated_bias(index.array(node.input[2]), delta),
                                                         names[layer]))
    return names


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
    """Run the gated model with any set of nodes quantized; FP32 reference outputs of the data are cached.

    ``cuts`` suffix sessions (:mod:`onnxq.recovery.suffix`) let :meth:`error` re-run only the part of the model
    downstream of the nodes whose gates differ from a cached :class:`Snapshot` (0: always the whole model).
    """

    def __init__(self, prepared: onnx.ModelProto, plan: QuantPlan, scales: ScaleTable, threads: int = 0,
                 cuts: int = 8) -> None:
        self.prepared = prepared
        self.model, self.gates = build_gated_model(prepared, plan, scales)
        self.cuts = plan_cuts(self.model, self.gates, cuts)
        self.threads = threads
        self._graph_inputs = {i.name for i in prepared.graph.input}
        self._exposed = [t for t in self.cuts.cut_tensors if t not in self._graph_inputs]
        started = time.perf_counter()
        self.session = make_session(self.model, outputs=self._exposed, threads=threads)
        self.build_seconds = time.perf_counter() - started
        self._run_seconds: list[float] = []  # wall time of each full run on this session's batches
        self.units = list(self.gates)
        self.output_names = [o.name for o in prepared.graph.output]
        self._true, self._false = np.array(True), np.array(False)
        self.reference: Snapshot | None = None
        self._batches: list[Batch] = []
        self._token_rows: list[np.ndarray | None] = []  # per kept batch: real tokens of a masked transformer
        self.runs = {"full": 0, "suffix": 0}  # forward runs made, by kind

    def _gate_feeds(self, quantized: set[str], names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        wanted = set(self.gates.values()) if names is None else set(names)
        return {gate: self._true if unit in quantized else self._false for unit, gate in self.gates.items()
                if gate in wanted}

    def _run_full(self, batch: Batch, quantized: set[str]) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
        feeds = dict(batch)
        feeds.update(self._gate_feeds(quantized))
        started = time.perf_counter()
        got = run_batch(self.session, feeds, "a batch (gated model)")
        self._run_seconds.append(time.perf_counter() - started)
        self.runs["full"] += 1
        count = len(self.output_names)
        cut = dict(zip(self._exposed, got[count:]))
        cut.update({t: batch[t] for t in self.cuts.cut_tensors if t in self._graph_inputs})
        return got[:count], cut

    def run(self, batch: Batch, quantized: Iterable[str]) -> list[np.ndarray]:
        """The model's outputs on ``batch`` with exactly the nodes in ``quantized`` quantized."""
        return self._run_full(batch, set(quantized))[0]

    def snapshot(self, quantized: Iterable[str], batches: int | None = None) -> Snapshot:
        """Full runs of a configuration over the first ``batches`` kept batches, with the tensors at every cut."""
        on = frozenset(quantized)
        runs = [self._run_full(b, set(on)) for b in self._batches[:batches]]
        return Snapshot(on, [r[0] for r in runs], [r[1] for r in runs])

    def set_data(self, batches: Iterable[Batch]) -> None:
        """Keep the evaluation batches and their FP32 outputs (one run each, all gates off); a masked transformer's
        outputs are compared at its real tokens (:mod:`onnxq.padding_rows`), as validation does."""
        self._batches = list(batches)
        self._token_rows = padding_rows_of(self.prepared, self._batches)
        self.reference = self.snapshot(())

    @property
    def batches(self) -> list[Batch]:
        return self._batches

    def with_data(self, batches: Iterable[Batch]) -> GatedSession:
        """The same sessions over other evaluation batches (their own FP32 reference)."""
        other = copy.copy(self)
        other._run_seconds = []
        other.set_data(batches)
        return other

    def budget_cuts(self, unit_runs: int) -> int:
        """Use as many cuts as pay for their sessions over ``unit_runs`` coming per-node runs on these batches.

        A run from a cut skips on average half the model (saving ``S = unit_runs x t_run / 2`` in all) and ``k``
        evenly spread cuts save about ``S k / (k + 1)`` while building them costs about ``k t_build / 2`` (half the
        model each): the best ``k`` is ``sqrt(2 S / t_build) - 1``. A small model with large weights (the ddddocr
        recognizer: 0.5 s to build, 30 ms to run) gets none, the detector about 7.
        """
        if not self._run_seconds:
            return len(self.cuts.active)
        saved = unit_runs * float(np.median(self._run_seconds)) / 2
        best = int(math.sqrt(2 * saved / max(self.build_seconds, 1e-3))) - 1
        return self.cuts.use(max(0, best))

    def outputs(self, quantized: Iterable[str], batches: int | None = None,
                base: Snapshot | None = None) -> list[list[np.ndarray]]:
        """Per batch, the outputs with ``quantized`` nodes quantized; with ``base``, only the part of the model
        downstream of the nodes whose gates differ from ``base`` runs, on ``base``'s tensors at the cut."""
        on = set(quantized)
        chosen = self._batches[:batches]
        cut = None if base is None else self.cuts.cut_for(on.symmetric_difference(base.quantized))
        if base is not None and not on.symmetric_difference(base.quantized) and len(base.outputs) >= len(chosen):
            return base.outputs[:len(chosen)]
        if cut is None or base is None or len(base.cut_values) < len(chosen):
            return [self._run_full(b, on)[0] for b in chosen]
        session = suffix_session(self.cuts, cut, base, self.threads)
        gates = self._gate_feeds(on, cut.gates)
        position = {name: i for i, name in enumerate(cut.outputs)}
        result = []
        for i in range(len(chosen)):
            feeds = {t: base.cut_values[i][t] for t in cut.inputs}
            feeds.update(gates)
            got = run_batch(session, feeds, "a batch (gated model suffix)")
            self.runs["suffix"] += 1
            result.append([got[position[n]] if n in position else base.outputs[i][k]
                           for k, n in enumerate(self.output_names)])
        return result

    def error(self, quantized: Iterable[str], batches: int | None = None,
              base: Snapshot | None = None) -> list[ErrorAccumulator]:
        """Per-output error against FP32 over the kept batches (the first ``batches`` of them when given) with
        ``quantized`` nodes quantized (``base``: see :meth:`outputs`)."""
        if self.reference is None:
            raise RuntimeError("call set_data() first")
        accs = [ErrorAccumulator() for _ in self.output_names]
        for reference, got, rows in zip(self.reference.outputs, self.outputs(quantized, batches, base),
                                        self._token_rows):
            for acc, ref, out in zip(accs, reference, got):
                if rows is not None:
                    ref, out = token_rows(ref, rows), token_rows(out, rows)
                acc.add(ref, out)
        return accs


def worst(accs: list[ErrorAccumulator]) -> tuple[float, float]:
    """(SQNR dB of the worst output, cosine of that output)."""
    acc = min(accs, key=lambda a: a.sqnr_db)
    return acc.sqnr_db, acc.cosine


def noise_ratios(accs: list[ErrorAccumulator]) -> list[float]:
    """Noise / signal power per output (SQNR = -10 log10 of it)."""
    return [a.noise / a.signal if a.signal else (0.0 if a.noise == 0 else float("inf")) for a in accs]
