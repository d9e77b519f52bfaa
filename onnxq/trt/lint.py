"""Check a Q/DQ ONNX model against TensorRT's explicit-quantization constraints (see docs/tensorrt_rules.md).

Needs no TensorRT: it reads the ONNX graph. Works on Q/DQ models from any tool (onnxq, onnxruntime's QDQ format,
torch fake-quant exports). Each :class:`Finding` names a rule id, the node it is about and what to do.

Parameters of a Q -> DQ pair are checked once, on the QuantizeLinear; a DequantizeLinear is checked itself only when
it reads a constant (weights stored quantized). Rule ids (severity):

* ``qdq-opset`` (error): Q/DQ below opset 10, or per-channel Q/DQ below opset 13 (no ``axis`` attribute before 13).
* ``zero-point`` (error): an int8 zero point that is not 0; TensorRT quantization is symmetric only.
* ``uint8`` (error): uint8 Q/DQ; TensorRT's INT8 is signed.
* ``qdq-dtype`` (warning): a Q/DQ type this lint does not check (int4, int16, fp8...).
* ``scale`` (error): a scale that is not finite and positive; (warning) a scale that is not a constant.
* ``per-channel-axis`` (error): per-channel weight scales on the wrong axis for the op consuming the weight, or a
  channel count that does not match the weight.
* ``per-channel-activation`` (error): per-channel scales on an activation (TensorRT: activations per tensor).
* ``int8-convtranspose`` (warning): a quantized ConvTranspose (TensorRT before 8.5 lacks kernels for some), unless
  allowed; its weight axis is checked by ``per-channel-axis`` like any weighted op.
* ``qdq-mismatch`` (warning): a DequantizeLinear whose scale or type differs from its QuantizeLinear's.
* ``dangling-q`` / ``dangling-dq`` (error): a QuantizeLinear not followed by DequantizeLinear, or a DequantizeLinear
  whose input is neither a QuantizeLinear output nor a constant.
* ``float-weighted-op`` (warning): Conv/ConvTranspose/Gemm/MatMul with an unquantized activation or weight input;
  it runs in floating point.
* ``qdq-blocks-fusion`` (warning): Q/DQ between Conv (or its BatchNormalization) and a BatchNormalization / Relu.
* ``concat-scales`` (warning): Concat of dequantized inputs with different scales (requantization).
* ``residual-add`` (warning): Add with one dequantized and one float activation input, unless the float one is the
  output of a Conv/Gemm/MatMul that TensorRT fuses with the Add (the recommended pattern); or an Add of two
  dequantized inputs one of which is a Conv output (the extra Q/DQ blocks the Conv+Add fusion).
* ``no-qdq`` (warning): the model has no Q/DQ nodes at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeGuard

import numpy as np
import onnx

from onnxq.findings import Finding, findings_payload, has_errors
from onnxq.graph import GraphIndex, attr, default_opset
from onnxq.ops import WEIGHTED_OPS, weight_axis
from onnxq.rules import TENSORRT
from onnxq.scales.qdq_reader import QDQParams, constant_array, is_constant, node_params, tensor_rank

__all__ = ["Finding", "LintOptions", "findings_payload", "format_findings", "has_errors", "lint_model"]
# Single-input data-movement ops a DequantizeLinear may reach a weighted op through (TensorRT moves DQ past them).
PASS_THROUGH_OPS = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity"})
FUSABLE_AFTER_CONV = frozenset({"BatchNormalization", "Relu"})
_DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class LintOptions:
    allow_int8_convtranspose: bool = False


def node_label(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type}({node.output[0] if node.output else '?'})"


def expected_weight_axis(node: onnx.NodeProto, rank: int) -> int | None:
    """TensorRT's per-channel axis for input 1 of a weighted op (None: per-tensor only): the tensorrt target's rule
    (:func:`onnxq.ops.weight_axis`; ConvTranspose per *input* channel, NVIDIA/TensorRT#2380)."""
    return weight_axis(node, 1, rank, TENSORRT)


class _Linter:
    def __init__(self, model: onnx.ModelProto, options: LintOptions) -> None:
        self.model = model
        self.options = options
        self.opset = default_opset(model)
        self.index = GraphIndex.build(model.graph)
        self.findings: list[Finding] = []
        self._params: dict[str, QDQParams] = {}

    def add(self, severity: str, rule: str, node: onnx.NodeProto, message: str) -> None:
        self.findings.append(Finding(severity, rule, node_label(node), message))

    def params(self, node: onnx.NodeProto) -> QDQParams:
        key = node_label(node)
        if key not in self._params:
            self._params[key] = node_params(self.index, node)
        return self._params[key]

    def is_qdq(self, node: onnx.NodeProto | None, op: str) -> TypeGuard[onnx.NodeProto]:
        return node is not None and node.op_type == op and node.domain in _DEFAULT_DOMAINS

    def dq_path(self, tensor: str) -> tuple[onnx.NodeProto | None, list[onnx.NodeProto]]:
        """The DequantizeLinear feeding ``tensor`` (directly or through single-input data-movement ops) and the
        data-movement ops in between, nearest the DQ first."""
        between: list[onnx.NodeProto] = []
        node = self.index.producer.get(tensor)
        while node is not None and len(between) < 16:
            if self.is_qdq(node, "DequantizeLinear"):
                return node, between[::-1]
            if node.op_type not in PASS_THROUGH_OPS or not node.input:
                return None, []
            between.append(node)
            node = self.index.producer.get(node.input[0])
        return None, []

    def dq_source(self, tensor: str) -> onnx.NodeProto | None:
        return self.dq_path(tensor)[0]

    # -- rules -------------------------------------------------------------------------------------------------
    def run(self) -> list[Finding]:
        nodes = list(self.model.graph.node)
        qdq_nodes = [n for n in nodes if self.is_qdq(n, "QuantizeLinear") or self.is_qdq(n, "DequantizeLinear")]
        if not qdq_nodes:
            self.findings.append(Finding("warning", "no-qdq", "<model>",
                                         "no QuantizeLinear/DequantizeLinear nodes: TensorRT builds it in float"))
            return self.findings
        qdq_ids = {id(n) for n in qdq_nodes}
        for node in nodes:
            if id(node) in qdq_ids:
                self.check_qdq_node(node)
            if node.op_type in WEIGHTED_OPS:
                self.check_weighted_op(node)
            if self.is_qdq(node, "QuantizeLinear"):
                self.check_fusion_block(node)
            if node.op_type == "Concat":
                self.check_concat(node)
            if node.op_type == "Add":
                self.check_residual_add(node)
        return self.findings

    def check_qdq_node(self, node: onnx.NodeProto) -> None:
        p = self.params(node)
        if self.is_qdq(node, "QuantizeLinear"):
            self.check_quantize_links(node, p)
        else:
            self.check_dequantize_links(node)
            producer = self.index.producer.get(node.input[0])
            if self.is_qdq(producer, "QuantizeLinear"):
                # parameters of a Q/DQ pair are checked once, on the Q; the DQ must agree with it
                q = self.params(producer)
                same = (q.scale is not None and p.scale is not None and q.scale.shape == p.scale.shape
                        and np.array_equal(q.scale, p.scale) and q.elem_type == p.elem_type)
                if not same:
                    self.add("warning", "qdq-mismatch", node, f"scale or type differs from its QuantizeLinear "
                             f"{node_label(producer)!r}; TensorRT cannot fold the pair into one quantization")
                return
        if self.opset < 10:
            self.add("error", "qdq-opset", node, f"Q/DQ needs opset >= 10 (model has {self.opset})")
        if p.per_channel and self.opset < 13:
            self.add("error", "qdq-opset", node,
                     f"per-channel Q/DQ needs opset >= 13 for the axis attribute (model has {self.opset}); "
                     "upgrade the opset")
        if p.scale is None:
            self.add("warning", "scale", node, "the scale is not a constant; TensorRT needs constant scales to fuse")
        elif not np.all(np.isfinite(p.scale)) or not np.all(p.scale > 0):
            self.add("error", "scale", node, f"scales must be finite and positive, found {p.scale.ravel()[:4]}")
        dtype = p.dtype_name
        if dtype == "uint8":
            self.add("error", "uint8", node, "uint8 quantization; TensorRT supports signed int8 only "
                     "(re-quantize with int8, symmetric)")
        elif dtype is None:
            self.add("warning", "qdq-dtype", node,
                     f"{onnx.TensorProto.DataType.Name(p.elem_type)} Q/DQ is not checked by this lint")
        elif p.zero_point is not None and np.any(p.zero_point != 0):
            self.add("error", "zero-point", node, f"{dtype} zero point must be 0: TensorRT supports symmetric "
                     "quantization only (formats int8-asym and int4-asym are for onnxruntime)")
        elif p.zero_point is None and p.zero_point_given:
            self.add("warning", "zero-point", node, "the zero point is not a constant; TensorRT needs it to be 0")

    def check_quantize_links(self, node: onnx.NodeProto, p: QDQParams) -> None:
        out = node.output[0]
        users = [n for n, _ in self.index.consumers.get(out, [])]
        not_dq = [n for n in users if not self.is_qdq(n, "DequantizeLinear")]
        if not users or out in self.index.graph_outputs or not_dq:
            what = "is a graph output" if out in self.index.graph_outputs else (
                f"feeds {', '.join(sorted({n.op_type for n in not_dq}))}" if not_dq else "is not used")
            self.add("error", "dangling-q", node, f"QuantizeLinear output {what}; TensorRT needs every Q followed by "
                     "a DequantizeLinear")
        if p.per_channel and not is_constant(self.index, node.input[0]):
            self.add("error", "per-channel-activation", node, "per-channel scales on an activation; TensorRT "
                     "quantizes activations per tensor")

    def check_dequantize_links(self, node: onnx.NodeProto) -> None:
        source = node.input[0]
        producer = self.index.producer.get(source)
        if self.is_qdq(producer, "QuantizeLinear") or is_constant(self.index, source):
            return
        origin = f"the output of {producer.op_type} {node_label(producer)!r}" if producer else f"graph input {source!r}"
        self.add("error", "dangling-dq", node, f"DequantizeLinear reads {origin}, not a QuantizeLinear or a "
                 "quantized constant")

    def check_weighted_op(self, node: onnx.NodeProto) -> None:
        if node.op_type == "ConvTranspose" and not self.options.allow_int8_convtranspose:
            quantized = [i for i in (0, 1) if len(node.input) > i and self.dq_source(node.input[i]) is not None]
            if quantized:
                # A warning, not an error: with per-input-channel (axis 0) or per-tensor weight scales, which the
                # per-channel-axis rule checks, TensorRT >= 8.5 builds it (NVIDIA/TensorRT#2280); older versions and
                # some configurations lack kernels (NVIDIA/TensorRT#1519). docs/tensorrt_rules.md 3.5.
                self.add("warning", "int8-convtranspose", node,
                         "ConvTranspose is quantized; TensorRT before 8.5 lacks INT8 kernels for some ConvTranspose "
                         "configurations -- build the engine to confirm, leave it float, or pass "
                         "--allow-int8-convtranspose to accept it")
        if node.op_type == "ConvTranspose" and not any(
                len(node.input) > i and self.dq_source(node.input[i]) is not None for i in (0, 1)):
            return
        missing = []
        for i, role in ((0, "activation input"), (1, "weight")):
            if len(node.input) <= i or not node.input[i]:
                continue
            tensor = node.input[i]
            role = "weight" if i == 1 and self.is_weight(tensor) else ("input B" if i == 1 else role)
            dq, between = self.dq_path(tensor)
            if dq is None:
                missing.append(role)
            elif i == 1:
                self.check_weight_axis(node, dq, between)
        if missing:
            self.add("warning", "float-weighted-op", node,
                     f"{' and '.join(missing)} not quantized (no Q/DQ); {node.op_type} runs in floating point")

    def is_weight(self, tensor: str) -> bool:
        dq = self.dq_source(tensor)
        if dq is not None:
            src = dq.input[0]
            q = self.index.producer.get(src)
            if self.is_qdq(q, "QuantizeLinear"):
                src = q.input[0]
            return is_constant(self.index, src)
        return is_constant(self.index, tensor)

    def check_weight_axis(self, node: onnx.NodeProto, dq: onnx.NodeProto, between: list[onnx.NodeProto]) -> None:
        p = self.params(dq)
        if not p.per_channel or p.block_size:
            return  # block-wise (INT4 weight-only) scales run along the reduction axis by design
        if self.opset < 13:
            return  # no axis attribute before opset 13 (reported as qdq-opset)
        if any(n.op_type not in ("Transpose", "Identity") for n in between):
            return  # a reshape between the DQ and the op: the axis cannot be followed reliably
        source = dq.input[0]
        q = self.index.producer.get(source)
        weight_name = q.input[0] if self.is_qdq(q, "QuantizeLinear") else source
        weight = constant_array(self.index, weight_name)
        rank = weight.ndim if weight is not None else tensor_rank(self.index, weight_name)
        if rank is None:
            return
        axis = p.axis + rank if p.axis < 0 else p.axis
        channels = weight.shape[axis] if weight is not None and axis < weight.ndim else None
        for t in between:  # follow the channel axis through Transposes: output axis j reads input axis perm[j]
            perm = list(attr(t, "perm", list(range(rank - 1, -1, -1))))
            axis = perm.index(axis) if axis in perm else axis
        expected = expected_weight_axis(node, rank)
        if expected is None:
            self.add("error", "per-channel-axis", node, f"per-channel weight scales on a rank-{rank} weight; "
                     "TensorRT expects per-tensor here")
            return
        if axis != expected:
            hint = " (TensorRT quantizes ConvTranspose weights per input channel, axis 0)" \
                if node.op_type == "ConvTranspose" else ""
            self.add("error", "per-channel-axis", node,
                     f"weight {weight_name!r} is quantized along axis {axis}, TensorRT expects axis {expected} for "
                     f"{node.op_type}{hint}")
            return
        if channels is not None and p.scale is not None and channels != p.scale.size:
            self.add("error", "per-channel-axis", node,
                     f"weight {weight_name!r} has {channels} channels on axis {axis} but {p.scale.size} scales")

    def check_fusion_block(self, q: onnx.NodeProto) -> None:
        producer = self.index.producer.get(q.input[0])
        if producer is None:
            return
        conv_like = producer.op_type in ("Conv", "ConvTranspose")
        bn_after_conv = producer.op_type == "BatchNormalization" and (
            (p := self.index.producer.get(producer.input[0])) is not None and p.op_type in ("Conv", "ConvTranspose"))
        if not (conv_like or bn_after_conv):
            return
        for dq, _ in self.index.consumers.get(q.output[0], []):
            if not self.is_qdq(dq, "DequantizeLinear"):
                continue
            blocked = sorted({n.op_type for n, _ in self.index.consumers.get(dq.output[0], [])} & FUSABLE_AFTER_CONV)
            if blocked:
                self.add("warning", "qdq-blocks-fusion", q,
                         f"Q/DQ between {producer.op_type} {node_label(producer)!r} and {'/'.join(blocked)} blocks "
                         "TensorRT's Conv-BatchNorm-ReLU fusion; quantize after the activation instead")
                return

    def check_concat(self, node: onnx.NodeProto) -> None:
        scales = []
        for name in node.input:
            producer = self.index.producer.get(name)
            if not self.is_qdq(producer, "DequantizeLinear"):
                return
            p = self.params(producer)
            if p.scale is None:
                return
            scales.append(np.asarray(p.scale, dtype=np.float32).ravel())
        if len(scales) > 1 and any(s.shape != scales[0].shape or not np.array_equal(s, scales[0]) for s in scales[1:]):
            values = ", ".join(f"{float(s[0]):.4g}" for s in scales[:4])
            self.add("warning", "concat-scales", node,
                     f"Concat inputs are dequantized with different scales ({values}); TensorRT requantizes "
                     "them -- give the inputs one shared scale")

    def fusable_producer(self, tensor: str) -> onnx.NodeProto | None:
        """The Conv/ConvTranspose/Gemm/MatMul (possibly followed by BatchNormalization) producing ``tensor`` when
        ``tensor`` has no other consumer, i.e. when TensorRT can fuse the following Add into it."""
        node = self.index.producer.get(tensor)
        if node is not None and node.op_type == "BatchNormalization":
            if self.index.only_consumer(node.input[0]) is None:
                return None
            node = self.index.producer.get(node.input[0])
        if node is None or node.op_type not in WEIGHTED_OPS or self.index.only_consumer(tensor) is None:
            return None
        return node

    def check_residual_add(self, node: onnx.NodeProto) -> None:
        inputs = [n for n in node.input if n]
        if len(inputs) != 2 or any(is_constant(self.index, n) for n in inputs):
            return
        dqs = [self.index.producer.get(n) for n in inputs]
        from_dq = [self.is_qdq(d, "DequantizeLinear") for d in dqs]
        if from_dq[0] != from_dq[1]:
            float_input = inputs[from_dq.index(False)]
            if self.fusable_producer(float_input) is not None:
                return  # the recommended pattern: Conv output straight into the Add, skip branch quantized
            self.add("warning", "residual-add", node,
                     f"one input is dequantized, the other ({float_input!r}) is float; quantize the skip branch "
                     "too so TensorRT fuses the Add into the Conv in INT8")
        elif all(from_dq):
            for dq in dqs:
                if dq is None:
                    continue
                q = self.index.producer.get(dq.input[0])
                if not self.is_qdq(q, "QuantizeLinear") or self.index.only_consumer(dq.output[0]) is None:
                    continue
                if self.index.only_consumer(q.output[0]) is None:
                    continue
                conv = self.fusable_producer(q.input[0])
                if conv is not None and conv.op_type in ("Conv", "ConvTranspose"):
                    self.add("warning", "residual-add", node,
                             f"Q/DQ between {conv.op_type} {node_label(conv)!r} and the Add blocks TensorRT's "
                             "Conv+Add fusion; quantize only the skip input")
                    return


def lint_model(model: onnx.ModelProto, options: LintOptions | None = None) -> list[Finding]:
    """All findings for ``model``, in graph order."""
    return _Linter(model, options or LintOptions()).run()


def format_findings(findings: list[Finding]) -> str:
    if not findings:
        return "no findings: the model follows TensorRT's Q/DQ rules"
    errors = sum(f.severity == "error" for f in findings)
    lines = [str(f) for f in findings]
    lines.append(f"{errors} error(s), {len(findings) - errors} warning(s)")
    return "\n".join(lines)

