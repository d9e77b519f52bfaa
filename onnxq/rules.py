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
class IntegerKernel:
    """An op type whose ``DQ -> op -> Q`` node unit onnxruntime's CPU provider fuses into an integer kernel
    (docs/ort_cpu_rules.md, section 2)."""

    fused_as: str  # the kernel the node unit becomes
    # indices of the float data inputs the node unit needs behind a DQ; None: every input (Concat)
    data_inputs: tuple[int, ...] | None = (0,)
    # the Q/DQ pair around the op is dropped, so its output must keep its input's scale and zero point
    same_scale: bool = False
    # the op fuses without a Q on its output too (MatMul -> MatMulIntegerToFloat), so its output is quantized only
    # when an integer consumer reads it
    output_optional: bool = False
    # a float constant (initializer) may be a data input: it is stored quantized like the activations
    constant_inputs: bool = False


# The CPU provider's QDQ selector/action table (onnxruntime qdq_selector_action_transformer.cc, 1.32; what fuses
# was checked on this onnxruntime by reading the optimized graph, tests/core/test_ort_cpu_fusion.py).
ORT_CPU_KERNELS: dict[str, IntegerKernel] = {
    "Conv": IntegerKernel("QLinearConv"),
    "MatMul": IntegerKernel("QLinearMatMul", (0, 1), output_optional=True),
    "Gemm": IntegerKernel("QGemm", (0,), output_optional=True),
    "Add": IntegerKernel("QLinearAdd", (0, 1), constant_inputs=True),
    "Mul": IntegerKernel("QLinearMul", (0, 1), constant_inputs=True),
    "Concat": IntegerKernel("QLinearConcat", None),
    "AveragePool": IntegerKernel("QLinearAveragePool"),
    "GlobalAveragePool": IntegerKernel("QLinearGlobalAveragePool"),
    "Sigmoid": IntegerKernel("QLinearSigmoid"),
    "LeakyRelu": IntegerKernel("QLinearLeakyRelu"),
    "Softmax": IntegerKernel("QLinearSoftmax"),
    "Where": IntegerKernel("QLinearWhere", (1, 2)),
    "MaxPool": IntegerKernel("MaxPool (uint8)", same_scale=True),
    "Resize": IntegerKernel("Resize (uint8)", same_scale=True),
    **{op: IntegerKernel(f"{op} (uint8)", same_scale=True)
       for op in ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Gather", "Expand", "Tile",
                  "Split")},
}

# Relu/Clip between a fused op and its Q vanish into the node unit when the Q's zero point is the integer type's
# minimum (qdq_selectors.cc, GetQDQSelection: "redundant clip node"); the Relu output is then the quantized tensor.
ORT_CPU_ABSORBED = frozenset({"Relu", "Clip"})


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
    # ops with integer kernels: when set, the plan quantizes whole integer regions (inputs AND outputs of these
    # ops) so every node unit fuses, instead of only the inputs of weighted ops
    integer_kernels: dict[str, IntegerKernel] = field(default_factory=dict)
    # activations that disappear into the fused producer when they sit between it and its Q
    absorbed_activations: frozenset[str] = frozenset()
    # weighted ops kept float when they write a graph output or feed only the float tail after the last weighted
    # op (a head): such a node unit cannot fuse or adds error for little gain, and DQ'd weights would be
    # dequantized again on every run
    float_when_writing_graph_output: frozenset[str] = frozenset()
    # store the bias of these ops as int32 (scale = input scale x weight scale) behind a DQ: QGemm fuses only when
    # every input, bias included, comes through a DQ
    int32_bias: frozenset[str] = frozenset()
    # activation functions rewritten into ops with integer kernels before planning (passes/decompose_hard_activations)
    decompose_activations: frozenset[str] = frozenset()

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
    # uint8 activations: on x86 the QDQ selectors fuse Conv/MatMul only with uint8 activations
    # (QDQIsInt8Allowed() is false off ARM; docs/ort_cpu_rules.md 1.1)
    integer_kernels=ORT_CPU_KERNELS,
    absorbed_activations=ORT_CPU_ABSORBED,
    float_when_writing_graph_output=frozenset({"Conv"}),
    int32_bias=frozenset({"Gemm"}),
    # HardSwish/HardSigmoid stay float between integer ops: rewritten into integer Add/Clip/Mul they MEASURED slower
    # on MobileNetV3-Small (0.73x vs 0.91x FP32 at 1 thread, 0.76x vs 0.81x at 2; docs/ort_cpu_rules.md 3.7):
    # three small integer kernels cost more than one DQ + float op + Q
    decompose_activations=frozenset(),
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
