"""Which nodes run in integer arithmetic on a runtime that fuses ``DQ -> op -> Q`` node units (onnxruntime CPU).

A node unit fuses only when *every* data input of the op comes through a DequantizeLinear and *every* consumer of
its output is a QuantizeLinear (onnxruntime qdq_selectors.cc, ``NodeGroupSelector::CheckQDQNodes``). So quantizing
the inputs of weighted ops alone leaves every Conv in float between a DQ and a float consumer; the region computed
here says which ops to wrap in Q/DQ on both sides.

Growth rules, applied until nothing changes (docs/ort_cpu_rules.md, section 3):

- seeds: the weighted ops the plan quantizes (Conv, MatMul, Gemm);
- downstream: an op with an integer kernel whose float data inputs are all produced inside the region (or quantized
  by the plan already) joins it: its inputs have a Q anyway, so the op runs in integer for free; so does a
  two-input op with one float input whose output only region members read (the Q moves from its output to that
  input, and the other input stays integer);
- upstream: a one-input op with an integer kernel whose outputs are read only by region members joins it (the Q
  its consumers need moves before it at no extra cost);
- a Relu/Clip that is the only reader of a region member's output is absorbed into that member's node unit: the
  quantized tensor is the Relu's output, with zero point 0;
- a ``Mul`` of a tensor by itself up to constant factors (``x * x``, the x**3 of a written-out tanh GELU) never
  joins: a per-tensor range over a power rounds its small values to zero (``power_base``; rule 3.21);
- a ``Mul`` by a constant per-channel vector read only by MatMul/Gemm (SmoothQuant's ``X / s``) never joins: its
  input would be quantized per tensor before the scaling that is there to fix the range (rule 3.22);
- no node of a written-out erf GELU joins: onnxruntime fuses the five into one float ``Gelu`` only when all are
  there (``onnxq/gelu_pattern.py``; rule 3.24);
- the tail after the last weighted op (no seed downstream of it) stays float, and so does a Conv that feeds only
  that tail (a detection head; the planner takes it out of the seeds).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import onnx

from onnxq.gelu_pattern import erf_gelu_nodes
from onnxq.graph import GraphIndex, node_name
from onnxq.rules import IntegerKernel, TargetRules


@dataclass
class IntegerRegion:
    members: set[str] = field(default_factory=set)  # node names whose node units fuse
    # region member -> the tensor its node unit outputs in integer (its output, or the output of an absorbed Relu)
    outputs: dict[str, list[str]] = field(default_factory=dict)
    absorbed: set[str] = field(default_factory=set)  # names of absorbed Relu/Clip nodes


def data_inputs(node: onnx.NodeProto, kernel: IntegerKernel) -> list[tuple[int, str]]:
    indices = range(len(node.input)) if kernel.data_inputs is None else kernel.data_inputs
    return [(i, node.input[i]) for i in indices if i < len(node.input) and node.input[i]]


class _RegionBuilder:
    def __init__(self, graph: onnx.GraphProto, index: GraphIndex, rules: TargetRules,
                 is_float_activation: Callable[[str], bool], allowed: Callable[[onnx.NodeProto], bool],
                 quantized: set[str]) -> None:
        self.graph = graph
        self.quantized = quantized
        self.index = index
        self.rules = rules
        self.is_float_activation = is_float_activation
        self.allowed = allowed
        self.region = IntegerRegion()
        self.graph_outputs = {o.name for o in graph.output}
        self.gelu = erf_gelu_nodes(graph, index)  # fused whole by onnxruntime, so never split by the region

    def kernel(self, node: onnx.NodeProto) -> IntegerKernel | None:
        if node.domain not in ("", "ai.onnx"):
            return None
        return self.rules.integer_kernels.get(node.op_type)

    def eligible(self, node: onnx.NodeProto) -> bool:
        """An op with an integer kernel whose data inputs are all float activations (a constant input would need
        a quantized constant of the activations' type) and whose outputs are all used as data.
        """
        kernel = self.kernel(node)
        if kernel is None or not self.allowed(node) or node_name(node) in self.gelu:
            return False
        inputs = data_inputs(node, kernel)
        if self.rules.float_powers and node.op_type == "Mul" \
                and len({power_base(self.index, t) for _, t in inputs}) == 1:
            return False  # x * x or x * (c * x): a power, whose per-tensor range rounds the small values away
        activations = [t for _, t in inputs if self.is_float_activation(t)]
        constants = [t for _, t in inputs if kernel.constant_inputs and self.is_float_constant(t)]
        if not activations or len(activations) + len(constants) != len(inputs):
            return False
        used_outputs = [o for o in node.output if o and (o in self.index.consumers or o in self.graph_outputs)]
        if any(i < 0 for o in used_outputs for _, i in self.index.consumers.get(o, [])):
            return False  # read inside a subgraph: that reader would keep the float tensor
        if not kernel.output_optional and any(o in self.graph_outputs for o in used_outputs):
            return False  # a node unit writing a graph output has no Q after it, so it would not fuse
        return node.op_type == "Split" or used_outputs == [node.output[0]]

    def integer_outputs(self, node: onnx.NodeProto) -> list[str]:
        """The tensors a member's node unit produces in integer (a sole Relu/Clip reader is absorbed)."""
        outputs = [o for o in node.output if o]
        kernel = self.kernel(node)
        if len(outputs) == 1 and kernel is not None and not kernel.same_scale:
            readers = self.index.consumers.get(outputs[0], [])
            if len(readers) == 1 and outputs[0] not in self.graph_outputs:
                reader = readers[0][0]
                if reader.op_type in self.rules.absorbed_activations and reader.domain in ("", "ai.onnx") \
                        and self.allowed(reader):
                    self.region.absorbed.add(node_name(reader))
                    return [reader.output[0]]
        return outputs

    def is_float_constant(self, tensor: str) -> bool:
        init = self.index.initializers.get(tensor)
        return init is not None and tensor not in self.index.graph_inputs and \
            init.data_type == onnx.TensorProto.FLOAT

    def produced_inside(self, tensor: str) -> bool:
        """The tensor has a Q anyway: a region member writes or reads it, or the plan quantizes it already (say a
        graph input feeding a Conv), so one more integer reader costs nothing.
        """
        if tensor in self.quantized:
            return True
        if any(tensor in outs for outs in self.region.outputs.values()):
            return not self.optional_output(tensor)
        if self.is_float_constant(tensor):
            return True  # stored quantized, no run-time conversion
        return any(node_name(r) in self.region.members and self._reads_as_data(r, i)
                   for r, i in self.index.consumers.get(tensor, []))

    def add(self, node: onnx.NodeProto) -> None:
        name = node_name(node)
        self.region.members.add(name)
        self.region.outputs[name] = self.integer_outputs(node)

    def grows_downstream(self, node: onnx.NodeProto) -> bool:
        kernel = self.kernel(node)
        if kernel is None or self.channel_scale_before_matmul(node):
            return False
        inputs = [t for _, t in data_inputs(node, kernel)]
        # a MatMul/Gemm output stays float unless an integer op reads it (MatMulIntegerToFloat, QGemm): joining
        # after it (the bias Add of a transformer) only pays when the joining op's output is read inside too
        if any(self.optional_output(t) for t in inputs) and not self.read_inside(node):
            return False
        outside = [t for t in inputs if not self.produced_inside(t)]
        if not outside:
            return True
        # Mul(x, HardSigmoid(...)) of a squeeze-and-excitation block: one Q on the float input replaces the Q its
        # output needs for the integer readers anyway, and the other (large) input is no longer dequantized
        return len(outside) == 1 and len(set(outside)) < len(data_inputs(node, kernel)) and self.read_inside(node)

    def optional_output(self, tensor: str) -> bool:
        """The tensor is written by a member whose node unit fuses without a Q (MatMul, Gemm), and nothing else
        quantizes it."""
        producer = self.index.producer.get(tensor)
        if producer is None:
            return False
        kernel = self.kernel(producer)
        return kernel is not None and kernel.output_optional and node_name(producer) in self.region.members \
            and tensor not in self.quantized

    def read_inside(self, node: onnx.NodeProto) -> bool:
        outputs = [o for o in node.output if o]
        if any(o in self.graph_outputs for o in outputs):
            return False
        readers = [(r, i) for o in outputs for r, i in self.index.consumers.get(o, [])]
        return bool(readers) and all(node_name(r) in self.region.members and self._reads_as_data(r, i)
                                     for r, i in readers)

    def grows_upstream(self, node: onnx.NodeProto) -> bool:
        kernel = self.kernel(node)
        if kernel is None or kernel.selects_part or len(data_inputs(node, kernel)) != 1:
            return False
        if self.channel_scale_before_matmul(node):
            return False
        # not back into a MatMul/Gemm output: a QKV projection read through Gather/Split/Reshape would put q, k
        # and v on one scale (measured on the vit reference model: -4 dB), where their own Q/DQ give each its range
        return not self.optional_output(data_inputs(node, kernel)[0][1]) and self.read_inside(node)

    def channel_scale_before_matmul(self, node: onnx.NodeProto) -> bool:
        """A ``Mul`` by a constant per-channel vector read only by MatMul/Gemm (SmoothQuant's ``X / s``): in the
        region its input would be quantized per tensor *before* the scaling, which is what the scaling is there to
        undo (rule 3.22); it stays float and the MatMul's input Q follows it."""
        if node.op_type != "Mul":
            return False
        constants = [t for t in node.input if self.is_float_constant(t)]
        if len(constants) != 1 or self.index.array(constants[0]).size < 2:
            return False
        readers = [r for o in node.output if o for r, _ in self.index.consumers.get(o, [])]
        return bool(readers) and all(r.op_type in ("MatMul", "Gemm") for r in readers)

    def _reads_as_data(self, node: onnx.NodeProto, input_index: int) -> bool:
        kernel = self.kernel(node)
        return kernel is not None and any(i == input_index for i, _ in data_inputs(node, kernel))

    def build(self, seeds: list[onnx.NodeProto]) -> IntegerRegion:
        for node in seeds:
            self.add(node)
        # the tail after the last weighted op (detection heads: Sigmoid, Concat of boxes and scores, Reshape) stays
        # float: integer there saves little and QLinearConcat would put box coordinates and probabilities on one
        # scale (measured: -3.5 dB on the ddddocr detector's output with the tail in integer)
        upstream = feeding_nodes(self.index, seeds)
        candidates = [n for n in self.graph.node if node_name(n) not in self.region.members and self.eligible(n)
                      and node_name(n) in upstream]
        changed = True
        while changed:
            changed = False
            for node in candidates:
                name = node_name(node)
                if name in self.region.members or name in self.region.absorbed:
                    continue
                if self.grows_downstream(node) or self.grows_upstream(node):
                    self.add(node)
                    changed = True
        return self.region


def channels_first_in_onnxruntime(index: GraphIndex, node: onnx.NodeProto, absorbed: set[str]) -> bool:
    """onnxruntime would run ``node``'s uint8 kernel (MaxPool) channels-first: it reads no integer Conv's output
    directly (through an absorbed Relu/Clip at most) and no Conv lies downstream of it.

    The NHWC transformer moves only QLinearConv to channels-last and leaves a Transpose back to channels-first
    after it; the transpose optimizer then always pushes that Transpose into a MaxPool (``OrtEPCostCheck``), where a
    uint8 MaxPool becomes ``com.microsoft.NhwcMaxPool`` (``HandleMaxPool``), but through other ops (the QLinearAdd and
    QLinearMul of a HardSwish) only when a later channels-last op cancels it (onnxruntime 1.32,
    ``ort_transpose_optimization.cc``, ``nhwc_transformer.cc``; docs/ort_cpu_rules.md 3.15).
    """
    source = index.producer.get(node.input[0])
    while source is not None and node_name(source) in absorbed:
        source = index.producer.get(source.input[0])
    if source is not None and source.op_type == "Conv":
        return False
    seen: set[str] = set()
    pending = [o for o in node.output if o]
    while pending:
        for reader, _ in index.consumers.get(pending.pop(), []):
            if reader.op_type == "Conv":
                return False
            if node_name(reader) not in seen:
                seen.add(node_name(reader))
                pending.extend(o for o in reader.output if o)
    return True


def power_base(index: GraphIndex, tensor: str) -> str:
    """The tensor ``tensor`` is a constant multiple or a power of: followed back through ``Mul`` nodes whose other
    input is a constant, and through ``Mul`` nodes whose two inputs have one base (``x * x``, ``x * (c * x)``)."""
    for _ in range(16):  # written-out polynomials are a few nodes deep
        producer = index.producer.get(tensor)
        if producer is None or producer.op_type != "Mul" or producer.domain not in ("", "ai.onnx") \
                or len(producer.input) != 2:
            return tensor
        variable = [t for t in producer.input if not index.is_initializer(t)]
        if len(variable) == 1:
            tensor = variable[0]
            continue
        bases = {power_base(index, t) for t in variable}
        if len(bases) != 1:
            return tensor
        tensor = bases.pop()
    return tensor


def feeding_nodes(index: GraphIndex, targets: list[onnx.NodeProto]) -> set[str]:
    """Names of the nodes from which one of ``targets`` is reachable (walking producers back from them)."""
    found: set[str] = set()
    stack = list(targets)
    while stack:
        node = stack.pop()
        for tensor in node.input:
            producer = index.producer.get(tensor)
            if producer is not None and node_name(producer) not in found:
                found.add(node_name(producer))
                stack.append(producer)
    return found


def integer_region(graph: onnx.GraphProto, index: GraphIndex, rules: TargetRules, seeds: list[onnx.NodeProto],
                   is_float_activation: Callable[[str], bool], allowed: Callable[[onnx.NodeProto], bool],
                   quantized: set[str]) -> IntegerRegion:
    """The nodes to run in integer, grown from the quantized weighted ops ``seeds`` by the rules above;
    ``allowed`` says whether the user's overrides let a node be quantized, ``quantized`` names the activations the
    plan quantizes already.
    """
    return _RegionBuilder(graph, index, rules, is_float_activation, allowed, quantized).build(seeds)
