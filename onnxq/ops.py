"""Per-op quantization behaviour as data: op type -> :class:`OpHandler` (as onnxruntime's
``quantization/registry.py`` maps op types to quantizer classes). Supporting a new op is an entry, not a branch.

A handler says which inputs get Q/DQ when the op is quantized (an input is a weight when it is an initializer, an
activation otherwise), the per-channel axis of its weight, and whether the op only moves or selects data (then it
commutes with a per-tensor scale: TensorRT moves DQ forward and Q backward through it, developer guide "DQ
forward-propagation and Q backward-propagation"; Concat needs every input to share the scale for that,
docs/tensorrt_rules.md 3.4). Which ops a target quantizes, and where its weight axis departs from the default, is the
target's (:mod:`onnxq.rules`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx

from onnxq.graph import attr
from onnxq.rules import TargetRules

AxisRule = Callable[[onnx.NodeProto, int], int | None]  # (node, weight rank) -> per-channel axis


@dataclass(frozen=True)
class OpHandler:
    """How onnxq quantizes one op type (see the module docstring)."""

    op_type: str
    #: inputs that get Q/DQ when the op is quantized
    quantized_inputs: tuple[int, ...] = ()
    #: the input holding the weight (per-channel candidate), and the rule giving its per-channel axis
    weight_input: int | None = None
    weight_axis: AxisRule | None = None
    #: which inputs carry the data of a data-movement op ("first" | "all"); None: not a data-movement op
    shares_scale: str | None = None
    #: the output holds only part of the data input (Slice, Gather, Split): a range calibrated on the output says
    #: nothing of the rest, so the plan gives it to the input only where the output is all that is read of it
    selects: bool = False
    #: the axis of the weight the op sums over, where block-wise (int4) scales run; None: no block-wise weights
    reduction_axis: AxisRule | None = None

    def scale_sharing_inputs(self, node: onnx.NodeProto) -> range:
        """The inputs of ``node`` that take the scale of its output (none unless a data-movement op)."""
        if self.shares_scale == "all":
            return range(len(node.input))
        return range(1) if self.shares_scale == "first" else range(0)


def _gemm_axis(node: onnx.NodeProto, rank: int) -> int:
    return 0 if attr(node, "transB", 0) else 1  # B is (N, K) with transB, else (K, N): N is the output channel


def _gemm_reduction_axis(node: onnx.NodeProto, rank: int) -> int:
    return 1 if attr(node, "transB", 0) else 0  # the K of B: (N, K) with transB, else (K, N)


def _weighted(op_type: str, axis: AxisRule, reduction: AxisRule | None = None) -> OpHandler:
    return OpHandler(op_type, quantized_inputs=(0, 1), weight_input=1, weight_axis=axis, reduction_axis=reduction)


def _data_movement(op_type: str, inputs: str = "first", selects: bool = False) -> OpHandler:
    return OpHandler(op_type, shares_scale=inputs, selects=selects)


OP_HANDLERS: dict[str, OpHandler] = {h.op_type: h for h in (
    _weighted("Conv", lambda node, rank: 0, lambda node, rank: 1),  # W is (C_out, C_in/group, k...)
    _weighted("ConvTranspose", lambda node, rank: 1),  # W is (C_in, C_out/group, k...)
    _weighted("Gemm", _gemm_axis, _gemm_reduction_axis),
    _weighted("MatMul", lambda node, rank: rank - 1, lambda node, rank: rank - 2),  # W is (..., K, N)
    _data_movement("Concat", "all"),
    *(_data_movement(op) for op in ("MaxPool", "Resize", "Reshape", "Transpose", "Flatten", "Squeeze",
                                    "Unsqueeze", "Identity", "Pad", "DepthToSpace", "SpaceToDepth")),
    *(_data_movement(op, selects=True) for op in ("Slice", "Gather", "Split")),
)}

#: op types with a per-channel weight
WEIGHTED_OPS: tuple[str, ...] = tuple(op for op, h in OP_HANDLERS.items() if h.weight_input is not None)


def handler(node: onnx.NodeProto) -> OpHandler | None:
    """The handler of a default-domain node, None for other ops and domains."""
    if node.domain not in ("", "ai.onnx"):
        return None
    return OP_HANDLERS.get(node.op_type)


def quantized_ops(rules: TargetRules) -> tuple[str, ...]:
    """The op types ``rules`` quantizes."""
    return rules.quantized_ops if rules.quantized_ops is not None else WEIGHTED_OPS


def weight_axis(node: onnx.NodeProto, input_index: int, rank: int, rules: TargetRules) -> int | None:
    """The per-channel axis of input ``input_index`` of ``node`` on the target ``rules`` (output channels, except
    where the target departs), or None when it is quantized per tensor."""
    h = handler(node)
    if h is None or h.weight_axis is None or input_index != h.weight_input or rank < 2:
        return None
    override = rules.weight_axis.get(node.op_type)
    return override if override is not None else h.weight_axis(node, rank)


def reduction_axis(node: onnx.NodeProto, input_index: int, rank: int) -> int | None:
    """The axis of weight input ``input_index`` that ``node`` sums over (where block-wise scales run: MatMul's and
    Gemm's K, Conv's input channels), or None when the op has no block-wise weights."""
    h = handler(node)
    if h is None or h.reduction_axis is None or input_index != h.weight_input or rank < 2:
        return None
    return h.reduction_axis(node, rank)
