"""What each deployment target quantizes by default, and how.

A target's rules say which op types get Q/DQ on which inputs, which op types stay float by default and why, the
integer types of activations and weights, and the per-channel axis of each weighted op's weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx
from onnx import helper

from onnxq.config import NodeSetting

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class TargetRules:
    name: str
    activation_dtype: str
    activation_symmetric: bool
    # op type -> indices of inputs that get Q/DQ (activations or weights, decided by whether they are initializers)
    quantized_inputs: dict[str, tuple[int, ...]]
    # op types quantizable but kept float unless the user includes them, with the reason
    default_skip: dict[str, str] = field(default_factory=dict)

    def default_setting(self, op_type: str) -> tuple[NodeSetting, str]:
        if op_type in self.default_skip:
            return NodeSetting(skip=True), self.default_skip[op_type]
        return NodeSetting(skip=False, dtype=self.activation_dtype), ""


_CONVTRANSPOSE_REASON = (
    "ConvTranspose stays float by default: TensorRT lacks INT8 kernels for many ConvTranspose configurations "
    "(\"Could not find any implementation for node ... ConvTranspose\"); use --include-op ConvTranspose to quantize it"
)

TENSORRT = TargetRules(
    name="tensorrt",
    activation_dtype="int8",
    activation_symmetric=True,
    quantized_inputs={"Conv": (0, 1), "ConvTranspose": (0, 1), "Gemm": (0, 1), "MatMul": (0, 1)},
    default_skip={"ConvTranspose": _CONVTRANSPOSE_REASON},
)

ORT_CPU = TargetRules(
    name="ort-cpu",
    activation_dtype="uint8",
    activation_symmetric=False,
    quantized_inputs={"Conv": (0, 1), "ConvTranspose": (0, 1), "Gemm": (0, 1), "MatMul": (0, 1)},
    default_skip={"ConvTranspose": _CONVTRANSPOSE_REASON.replace("TensorRT lacks", "some runtimes lack")},
)

TARGET_RULES = {r.name: r for r in (TENSORRT, ORT_CPU)}


def weight_axis(node: onnx.NodeProto, input_index: int, rank: int) -> int | None:
    """The output-channel axis of a weight input, or None when it should be quantized per tensor."""
    if rank < 2:
        return None
    if node.op_type == "Conv" and input_index == 1:
        return 0
    if node.op_type == "ConvTranspose" and input_index == 1:
        return 1
    if node.op_type == "Gemm" and input_index == 1:
        trans_b = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "MatMul" and input_index == 1:
        return rank - 1
    return None
