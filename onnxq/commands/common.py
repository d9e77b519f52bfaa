"""Pieces shared by sub-commands: config from flags, JSON output, Ray flags and their progress."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from onnxq import progress
from onnxq.rules import TARGET_RULES, TENSORRT


def add_model_and_output(parser: argparse.ArgumentParser, model: str, output: str, *, required: bool = True) -> None:
    """The input model (positional) and ``-o/--output``: the same two arguments in every command that writes a file."""
    parser.add_argument("model", help=model)
    parser.add_argument("-o", "--output", required=required, help=output)


def add_json_flag(parser: argparse.ArgumentParser, what: str) -> None:
    """``--json``: the same flag in every command that has it -- print ``what`` as JSON on stdout instead of text."""
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON on stdout instead of text")


def print_result(args: argparse.Namespace, text: str, payload: dict) -> None:
    """``payload`` as JSON when ``--json`` was given, else ``text``."""
    print(json.dumps(payload, indent=2) if args.json else text)


def add_selection_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("what to quantize")
    g.add_argument("--target", choices=tuple(TARGET_RULES),
                   help=f"deployment target whose rules the plan follows (default: {TENSORRT.name})")
    g.add_argument("--include-op", action="append", default=[], metavar="OP",
                   help="quantize this op type even if the target skips it by default (repeatable)")
    g.add_argument("--exclude-op", action="append", default=[], metavar="OP",
                   help="keep every node of this op type in float (repeatable)")
    g.add_argument("--exclude-node", action="append", default=[], metavar="REGEX",
                   help="keep nodes whose name matches REGEX in float (repeatable)")
    g.add_argument("--include-node", action="append", default=[], metavar="REGEX",
                   help="quantize nodes whose name matches REGEX even if skipped by op type (repeatable)")
    g.add_argument("--per-tensor-weights", action="store_true", help="one scale per weight tensor, not per channel")
    g.add_argument("--format", "--dtype", dest="format", metavar="FORMAT",
                   help="precision format of every quantized node: int8 | int8-asym | uint8 | fp8 | w8 | int4 | "
                        "int4-asym (per op type / node: dtype in --config); default: the target's (int8 on "
                        "tensorrt, uint8 on ort-cpu)")
    g.add_argument("--block-size", type=int, metavar="N",
                   help="block size of block-wise formats (int4): 16 | 32 | 64 | 128 | 256 (default 128)")
    g.add_argument("--float-rest", choices=("fp32", "fp16"), default=None,
                   help="what stays float: fp32 (default) or fp16 with Casts at its borders (model inputs and "
                        "outputs and precision-sensitive ops stay fp32)")
    g.add_argument("--input-shape", action="append", default=[], metavar="NAME=DIMS",
                   help="shape the model runs at, e.g. x=1x3x48x192 (repeatable), for placements that depend on "
                        "feature-map sizes (ort-cpu: depthwise Convs on short maps stay float); default: the first "
                        "calibration batch's shapes")
    g.add_argument("--config", metavar="TOML", help="per-node configuration file (see README)")


def add_calib_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("calibration")
    # Defaults are None here (filled in by config_from_args) so that a flag the user gave can be told from one they
    # did not: with --stats, a given flag re-chooses the method from the statistics (or is refused).
    g.add_argument("--method", help="activation calibration: minmax | percentile | entropy | mse | auto (default mse; "
                   "auto: per activation, the candidate range that minimises the consuming layer's output error; "
                   "with --stats: the method the statistics were collected with)")
    g.add_argument("--percentile", type=float, help="for --method percentile (default 99.99)")
    g.add_argument("--num-bins", type=int, help="histogram bins of the histogram methods (default 2048)")
    g.add_argument("--min-clip-gain", type=float, metavar="SHARE",
                   help="mse: clip only when that lowers the expected squared error by this share of min-max's "
                   "(default 0.05; 0: the plain MSE optimum)")
    g.add_argument("--moving-average", type=float, metavar="MOMENTUM",
                   help="minmax: average per-batch min/max with this momentum (e.g. 0.9) instead of the extremes")
    g.add_argument("--input-method",
                   help="calibration of the model's inputs (default minmax; 'same' follows --method)")
    g.add_argument("--weight-method",
                   help="per-channel weight range: minmax (default), or mse clip search")
    g.add_argument("--calib-batches", type=int, metavar="N", help="use at most N calibration batches")
    g.add_argument("--batch-size", type=int, default=8, help="batch size when cutting an .npz stack of samples")
    g.add_argument("--memory-budget-mb", type=int, default=4096,
                   help="activations exposed per pass; more tensors are calibrated in several passes")
    g.add_argument("--seed", type=int, default=0, help="seed for --calib random")
    g.add_argument("--skip-padding-tokens", action=argparse.BooleanOptionalAction, default=True,
                   help="leave the padding tokens that a transformer's attention mask hides out of the calibration "
                   "statistics (default: on; found from the model's mask, not from input names)")


def add_recovery_flags(parser: argparse.ArgumentParser) -> None:
    """Accuracy-recovery algorithms (onnxq.recovery); unset flags keep the defaults of RecoveryOptions."""
    g = parser.add_argument_group("accuracy recovery (see README 'Accuracy recovery')")
    g.add_argument("--equalize", action=argparse.BooleanOptionalAction, default=None,
                   help="equalize depthwise-conv input channels and Relu-joined Conv pairs (exact in float)")
    g.add_argument("--bias-correction", action=argparse.BooleanOptionalAction, default=None,
                   help="fold each quantized Conv/Gemm's significant mean output shift, measured on the Q/DQ model "
                   "with the upstream corrections in effect, into its bias (one pass per layer level; default: on; on "
                   "ort-cpu where the constant-region correction is not kept, which --bias-correction replaces)")
    g.add_argument("--shift-activations", action=argparse.BooleanOptionalAction, default=None,
                   help="centre each channel of the INT8 inputs of 1x1 Convs and Gemms on its range, the shift folded "
                   "into the bias (exact in float) and compensated for the quantized weights: a symmetric grid then "
                   "covers a one-sided activation (default: on for tensorrt; only for symmetric int8 activations)")
    g.add_argument("--constant-region-correction", action=argparse.BooleanOptionalAction, default=None,
                   help="when the calibration images hold a padding constant (a letterbox), correct the quantized "
                   "Conv biases so the padding runs as in FP32 (default: on for --target ort-cpu, off otherwise)")
    g.add_argument("--bias-correction-batches", type=int, metavar="N",
                   help="calibration batches whose channel means bias correction matches (default 4, fewer when "
                   "they hold 8 samples)")
    g.add_argument("--bias-correction-min-t", type=float, metavar="T",
                   help="bias correction changes a channel only where its mean shift is at least T standard errors "
                   "across the calibration samples (default 2; 0: every channel)")
    g.add_argument("--smoothquant", type=smoothquant_alpha, metavar="ALPHA",
                   help="migrate MatMul/Gemm activation outliers into the weights with this strength (e.g. 0.5); "
                   "auto: per tensor, the strength (or none) with the least simulated INT8 error of its MatMuls; "
                   "off (default: auto)")
    g.add_argument("--adaround", action="store_true",
                   help="learn the rounding of every weight on the calibration data (needs torch; slow)")
    g.add_argument("--adaround-iterations", type=int, metavar="N", help="AdaRound optimizer steps per layer")
    g.add_argument("--weight-rounding", choices=("auto", "nearest", "gptq", "gptaq"),
                   help="round weights to nearest or by GPTQ, which minimises each layer's output error on the "
                   "calibration data on the same scales (NumPy, no torch); gptaq: GPTQ fitted to the FP32 layer "
                   "outputs from the quantized model's own inputs, with a float bias, level by level (compensates "
                   "the error arriving from upstream quantizers; GPTAQ/Qronos); auto (default): GPTQ when only "
                   "weights are quantized (w8, int4) and --calib is given, nearest otherwise")
    g.add_argument("--recovery-batches", type=int, metavar="N",
                   help="calibration batches the layer-local algorithms cache (default 2)")


def smoothquant_alpha(text: str) -> float | str:
    """``--smoothquant``'s value: ``auto`` or a number (its range is checked by RecoveryOptions)."""
    if text in ("auto", "off"):
        return text
    if text == "none":
        return "off"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), auto or off, got {text!r}") from None


def recovery_from_args(args: argparse.Namespace):
    from onnxq.config import RecoveryOptions

    base = RecoveryOptions()
    picked: dict[str, Any] = {
        "equalize": getattr(args, "equalize", None),
        "bias_correction": getattr(args, "bias_correction", None),
        "activation_shift": getattr(args, "shift_activations", None),
        "bias_correction_batches": getattr(args, "bias_correction_batches", None),
        "bias_correction_min_t": getattr(args, "bias_correction_min_t", None),
        "constant_region_correction": getattr(args, "constant_region_correction", None),
        "smoothquant_alpha": getattr(args, "smoothquant", None),
        "adaround": getattr(args, "adaround", False) or None,
        "adaround_iterations": getattr(args, "adaround_iterations", None),
        "weight_rounding": getattr(args, "weight_rounding", None),
        "batches": getattr(args, "recovery_batches", None),
    }
    return replace(base, **{k: v for k, v in picked.items() if v is not None})


def config_from_args(args: argparse.Namespace):
    """QuantConfig from the flags laid over the --config file (flags win)."""
    from onnxq.calib.base import CalibOptions
    from onnxq.config import DEFAULT_ACTIVATION_METHOD, NodeSetting, Overrides, QuantConfig
    from onnxq.config_file import load_config_file

    overrides, run = Overrides(), dict[str, Any]()
    if getattr(args, "config", None):
        overrides, run = load_config_file(args.config)
    flags = Overrides.from_flags(args.include_op, args.exclude_op, args.exclude_node, args.include_node)
    if getattr(args, "format", None) or getattr(args, "block_size", None):
        flags = replace(flags, global_setting=NodeSetting(dtype=args.format, block_size=args.block_size))
    target = args.target or run.get("target", TENSORRT.name)
    return QuantConfig(
        target=target,
        calib=CalibOptions(method=args.method or DEFAULT_ACTIVATION_METHOD,
                           percentile=CalibOptions.percentile if args.percentile is None else args.percentile,
                           num_bins=args.num_bins or CalibOptions.num_bins, momentum=args.moving_average,
                           min_clip_gain=CalibOptions.min_clip_gain if getattr(args, "min_clip_gain", None) is None
                           else args.min_clip_gain),
        weight_method=args.weight_method or run.get("weight_method", QuantConfig.weight_method),
        input_method=None if args.input_method == "same" else (args.input_method or QuantConfig.input_method),
        per_channel_weights=not args.per_tensor_weights and run.get("per_channel_weights", True),
        overrides=overrides.merged(flags),
        calib_batches=args.calib_batches,
        batch_size=args.batch_size,
        requantize=getattr(args, "requantize", False),
        seed=args.seed,
        memory_budget_mb=args.memory_budget_mb,
        debug_passes=getattr(args, "debug_passes", False),
        recovery=recovery_from_args(args),
        rechoose_stats_method=bool(getattr(args, "stats", None)) and bool(calib_flags_given(args)),
        float_rest=getattr(args, "float_rest", None) or run.get("float_rest", "fp32"),
        input_shapes=parse_input_shapes(getattr(args, "input_shape", None) or []),
        skip_padding_tokens=getattr(args, "skip_padding_tokens", True),
    )


def parse_input_shapes(flags: list[str]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """``--input-shape NAME=1x3x48x192`` flags as QuantConfig.input_shapes."""
    from onnxq.errors import OnnxqError

    shapes = []
    for flag in flags:
        name, _, dims = flag.partition("=")
        try:
            sizes = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            sizes = ()
        if not name or not sizes or min(sizes) < 1:
            raise OnnxqError(f"--input-shape {flag!r}: write NAME=DIMS with positive sizes, e.g. x=1x3x48x192")
        shapes.append((name, sizes))
    return tuple(shapes)


CALIB_FLAGS = ("method", "percentile", "num_bins", "min_clip_gain", "moving_average", "input_method")


def calib_flags_given(args: argparse.Namespace) -> list[str]:
    """The calibration flags given on the command line (their defaults are None)."""
    return ["--" + f.replace("_", "-") for f in CALIB_FLAGS if getattr(args, f, None) is not None]


def guard(outputs: list, **inputs) -> None:
    """The output-path guard (:mod:`onnxq.outputs`) for a command, before any work. ``outputs``: Output entries
    (None entries are ignored); ``inputs``: keyword -> path or list of paths; ``model=`` paths are expanded to their
    external-data files."""
    from pathlib import Path

    from onnxq.graph import model_files
    from onnxq.outputs import check_outputs

    read: dict[str, list] = {}
    for key, value in inputs.items():
        paths = value if isinstance(value, (list, tuple)) else [value]
        paths = [p for p in paths if p is not None and str(p) != "random"]
        if key.startswith("model"):
            read[f"the input model ({', '.join(map(str, paths))})" if len(paths) > 1 else "the input model"] = \
                [f for p in paths for f in model_files(p)]
        else:  # a data folder: the files in it are inputs too
            read["--" + key.replace("_", "-")] = [f for p in map(Path, paths)
                                                  for f in ([p, *_files_in(p)] if p.is_dir() else [p])]
    check_outputs([o for o in outputs if o is not None], read)


def _files_in(folder, depth: int = 2) -> list:
    """Regular files in ``folder`` and its subfolders down to ``depth`` (data folders hold labels/ beside batches)."""
    found = []
    try:
        for entry in folder.iterdir():
            if entry.is_dir() and depth > 1:
                found += _files_in(entry, depth - 1)
            elif entry.is_file():
                found.append(entry)
    except OSError:
        pass
    return found


@contextlib.contextmanager
def shard_progress() -> Iterator[Callable[[int, int], None]]:
    """``update(shards_done, shards_total)`` for a Ray calibration, shown as the progress stage "calibration on Ray"
    (its total is known once the data is split into shards)."""
    with contextlib.ExitStack() as stack:
        advance: Callable[..., None] | None = None
        shown = 0

        def update(done: int, total: int) -> None:
            nonlocal advance, shown
            if advance is None:
                advance = stack.enter_context(progress.stage("calibration on Ray", total=total, unit="shard"))
            advance(done - shown)
            shown = done

        yield update


def add_ray_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group('Ray cluster (optional: pip install "onnxq[ray]")')
    g.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="calibrate on Ray: one task per shard of the data files, each reading its files by path, "
                   "merged exactly (same ranges as one local run). ADDRESS: the cluster's (auto, HOST:PORT); "
                   "without it RAY_ADDRESS, else a new local Ray instance")
    g.add_argument("--shards", type=int, metavar="N", help="with --ray: number of shards (default: one per CPU)")
    g.add_argument("--ray-runtime-env", metavar="JSON",
                   help="with --ray: Ray runtime_env of the tasks, e.g. '{\"env_vars\": {\"OMP_NUM_THREADS\": \"1\"}}'")


def add_calibration_flags(parser: argparse.ArgumentParser) -> None:
    """Calibration, selection and Ray flags: what every command that calibrates takes."""
    add_calib_flags(parser)
    add_selection_flags(parser)
    add_ray_flags(parser)


@contextlib.contextmanager
def ray_calibration(args: argparse.Namespace) -> Iterator[Any | None]:
    """The Ray calibration the flags ask for, or None to calibrate in this process; its progress is the stage
    "calibration on Ray". Enter it before any work, so that a missing ray fails at once."""
    with shard_progress() as shards:
        yield ray_collector(args, shards)


def ray_collector(args: argparse.Namespace, progress: Callable[[int, int], None] | None):
    """The Ray calibration the flags ask for, or None to calibrate in this process."""
    import json

    from onnxq.errors import OnnxqError

    if args.ray is None:
        if args.shards is not None or args.ray_runtime_env is not None:
            raise OnnxqError("--shards and --ray-runtime-env need --ray")
        return None
    from onnxq.distributed.ray_calibrate import RayCalibration, RayOptions

    runtime_env = None
    if args.ray_runtime_env is not None:
        try:
            runtime_env = json.loads(args.ray_runtime_env)
        except json.JSONDecodeError as exc:
            raise OnnxqError(f"--ray-runtime-env is not JSON: {exc}") from exc
        if not isinstance(runtime_env, dict):
            raise OnnxqError("--ray-runtime-env must be a JSON object, e.g. '{\"working_dir\": \".\"}'")
    options = RayOptions(address=args.ray or None, shards=args.shards, runtime_env=runtime_env)
    return RayCalibration(args.model, options, progress=progress)
