"""What each deployment target quantizes by default, and how: one :class:`TargetRules` entry per target.

Pure data (no onnx import, so the command line lists the targets without loading the library). How each op type is
quantized (which inputs, the per-channel weight axis, whether it passes a scale through) is in
:mod:`onnxq.ops`; a target says which of those op types it quantizes and where it departs from the op's default.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TargetRules:
    name: str
    #: integer type of activations (a key of onnxq.dtypes.QUANT_DTYPES; its entry says whether it is symmetric)
    activation_dtype: str
    #: op types whose inputs get Q/DQ (the inputs are listed by the op's handler in onnxq.ops); None: every op with
    #: a weight (onnxq.ops.WEIGHTED_OPS)
    quantized_ops: tuple[str, ...] | None = None
    #: op types quantizable but kept float unless the user includes them, with the reason
    default_skip: dict[str, str] = field(default_factory=dict)
    #: per-channel weight axis where the target departs from the op's default (onnxq.ops), by op type
    weight_axis: dict[str, int] = field(default_factory=dict)
    #: quantize the skip input of an Add whose other input comes from a Conv, so Conv+Add fuse in INT8
    residual_add: bool = False
    #: give the inputs of Concat and data-movement ops (onnxq.ops: ``shares_scale``) feeding a quantized tensor
    #: that tensor's scale
    share_scales: bool = False

    def default_skip_reason(self, op_type: str) -> str | None:
        """Why the target keeps ``op_type`` float by default, or None when it quantizes it."""
        return self.default_skip.get(op_type)


_CONVTRANSPOSE_REASON = (
    "ConvTranspose stays float by default: TensorRT lacks INT8 kernels for many ConvTranspose configurations "
    "(\"Could not find any implementation for node ... ConvTranspose\"); use --include-op ConvTranspose to quantize it"
)

TENSORRT = TargetRules(
    name="tensorrt",
    activation_dtype="int8",
    default_skip={"ConvTranspose": _CONVTRANSPOSE_REASON},
    # TensorRT's deconvolution kernels take per-INPUT-channel weight scales: "We don't support per-output-channel
    # quant for ConvTranspose" (NVIDIA/TensorRT#2380); axis 1 gave wrong results (NVIDIA/TensorRT#1694).
    weight_axis={"ConvTranspose": 0},
    residual_add=True,
    share_scales=True,
)

ORT_CPU = TargetRules(
    name="ort-cpu",
    activation_dtype="uint8",
    default_skip={"ConvTranspose": _CONVTRANSPOSE_REASON.replace("TensorRT lacks", "some runtimes lack")},
)

#: every target by name (the command line's --target choices)
TARGET_RULES: dict[str, TargetRules] = {r.name: r for r in (TENSORRT, ORT_CPU)}
