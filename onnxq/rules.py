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

# Ops that only move or select data: they commute with a per-tensor scale, so TensorRT moves DQ forward and Q
# backward through them (developer guide, "DQ forward-propagation and Q backward-propagation"); Concat needs every
# input to share the scale for that (docs/tensorrt_rules.md, 3.4). Input 0 is the data input of each.
DATA_MOVEMENT_OPS = frozenset({"MaxPool", "Resize", "Reshape", "Transpose", "Slice", "Flatten", "Squeeze",
                               "Unsqueeze", "Identity", "Gather", "Pad", "Split", "DepthToSpace", "SpaceToDepth"})


@dataclass(frozen=True)
class TargetRules:
    name: str
    activation_dtype: str
    activation_symmetric: bool
    # op type -> indices of inputs that get Q/DQ (activations or weights, decided by whether they are initializers)
    quantized_inputs: dict[str, tuple[int, ...]]
    # op types quantizable but kept float unless the user includes them, with the reason
    default_skip: dict[str, str] = field(default_factory=dict)
    # per-channel axis of ConvTranspose weights (W is (C_in, C_out/group, k...))
    convtranspose_axis: int = 1
    # quantize the skip input of an Add whose other input comes from a Conv, so Conv+Add fuse in INT8
    residual_add: bool = False
    # give the inputs of Concat and data-movement ops feeding a quantized tensor that tensor's scale
    share_scales_through: frozenset[str] = frozenset()

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
    # TensorRT's deconvolution kernels take per-INPUT-channel weight scales: "We don't support per-output-channel
    # quant for ConvTranspose" (NVIDIA/TensorRT#2380); axis 1 gave wrong results (NVIDIA/TensorRT#1694).
    convtranspose_axis=0,
    residual_add=True,
    share_scales_through=DATA_MOVEMENT_OPS | {"Concat"},
)

ORT_CPU = TargetRules(
    name="ort-cpu",
    activation_dtype="uint8",
    activation_symmetric=False,
    quantized_inputs={"Conv": (0, 1), "ConvTranspose": (0, 1), "Gemm": (0, 1), "MatMul": (0, 1)},
    default_skip={"ConvTranspose": _CONVTRANSPOSE_REASON.replace("TensorRT lacks", "some runtimes lack")},
)

TARGET_RULES = {r.name: r for r in (TENSORRT, ORT_CPU)}


def weight_axis(node: onnx.NodeProto, input_index: int, rank: int, convtranspose_axis: int = 1) -> int | None:
    """The per-channel axis of a weight input (output channels, except ConvTranspose on TensorRT), or None when
    it should be quantized per tensor."""
    if rank < 2:
        return None
    if node.op_type == "Conv" and input_index == 1:
        return 0
    if node.op_type == "ConvTranspose" and input_index == 1:
        return convtranspose_axis
    if node.op_type == "Gemm" and input_index == 1:
        trans_b = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "MatMul" and input_index == 1:
        return rank - 1
    return None


def reduction_axis(node: onnx.NodeProto, input_index: int, rank: int) -> int | None:
    """The axis of a weight input that the op sums over (where block-wise scales run), or None: MatMul's K
    (weight ``(K, N)``: axis ``rank - 2``), Gemm's K (axis 0, or 1 with ``transB``), Conv's input channels (1)."""
    if input_index != 1 or rank < 2:
        return None
    if node.op_type == "MatMul":
        return rank - 2
    if node.op_type == "Gemm":
        trans_b = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "transB"), 0)
        return 1 if trans_b else 0
    if node.op_type == "Conv":
        return 1
    return None
