"""Build a TensorRT engine from a Q/DQ ONNX model through the ``tensorrt`` Python API (optional dependency).

Explicit quantization only: the Q/DQ nodes carry the scales, no INT8 calibrator is set. What is configured depends on
the installed TensorRT (:func:`precision_mode`):

* TensorRT 8.x: weakly-typed explicit-batch network, ``BuilderFlag.INT8`` set (Q/DQ layers are only honoured with
  it; NVIDIA/TensorRT#4021), ``BuilderFlag.FP16`` too with ``--fp16`` so unquantized layers may run in FP16.
* TensorRT 10.x without ``--fp16``: strongly-typed network (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``), no
  precision flags -- the developer guide's "Explicit Quantization" section: "Use explicit quantization with Strong
  Typing. Precision-control build flags are not required and should not be specified."
* TensorRT 10.x with ``--fp16``: weakly-typed network with ``INT8`` and ``FP16`` flags (strong typing would keep the
  float layers in FP32; the FP16 fallback needs the weakly-typed mode).
* TensorRT 11+: strongly typed always; ``BuilderFlag.INT8``/``FP16`` were removed ("Removed Python APIs and
  Replacements", TensorRT 10.x -> 11.x migration guide), so ``--fp16`` is refused with a hint.

Dynamic inputs get one optimization profile (min/opt/max); ``--workspace`` sets the workspace memory pool limit.
After the build the engine inspector (``ProfilingVerbosity.DETAILED``) tells which layers run in INT8.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from onnxq import progress
from onnxq.atomic import write_bytes_atomic
from onnxq.errors import OnnxqError
from onnxq.trt.build_progress import progress_monitor
from onnxq.trt.shapes import Profile

log = logging.getLogger(__name__)

NOT_INSTALLED = ("tensorrt is not installed; pip install 'onnxq[trt]' on a machine with an NVIDIA GPU, "
                 "or use --print-trtexec")


def installed_trt_major() -> int | None:
    """The installed TensorRT's major version, or None when it cannot be imported."""
    try:
        import tensorrt
    except ImportError:
        return None
    return version_tuple(tensorrt.__version__)[0]


def version_tuple(version: str) -> tuple[int, int, int]:
    parts = [int(p) if p.isdigit() else 0 for p in version.split(".")[:3]]
    return tuple(parts + [0] * (3 - len(parts)))  # type: ignore[return-value]


def precision_mode(trt_major: int, fp16: bool, graph_has_fp16: bool | None = None) -> str:
    """``strongly-typed`` or ``weakly-typed`` (INT8 flag, plus FP16 with ``fp16``) for this TensorRT version.

    TensorRT 11 networks are always strongly typed (its Python bindings have no FP16/INT8 builder flags), so there
    ``fp16`` means "the FP16 layers of this graph": the model must hold them (``onnxq quantize --float-rest fp16``),
    and the build is the strongly-typed one. ``graph_has_fp16`` None means unknown (not checked).
    """
    if trt_major < 8:
        raise OnnxqError(f"TensorRT {trt_major}.x cannot build explicitly quantized (Q/DQ) networks; use 8.0 or newer")
    if trt_major >= 11:
        if fp16 and graph_has_fp16 is not True:
            raise OnnxqError("TensorRT 11 removed the FP16 builder flag (networks are strongly typed): --fp16 means "
                             "the graph's own FP16 layers, and this model has none; quantize it with "
                             "'onnxq quantize --float-rest fp16' (or drop --fp16)")
        return "strongly-typed"
    if trt_major >= 10 and not fp16:
        return "strongly-typed"
    return "weakly-typed"


@dataclass(frozen=True)
class BuildOptions:
    fp16: bool = False
    workspace_mib: int | None = None
    verbose: bool = False


@dataclass(frozen=True)
class LayerPrecision:
    name: str
    layer_type: str
    precision: str  # int8 | fp16 | fp32 | other | unknown


@dataclass
class BuildReport:
    engine_path: Path
    trt_version: str
    mode: str
    layers: list[LayerPrecision] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"engine: {self.engine_path} (TensorRT {self.trt_version}, {self.mode})"]
        if not self.layers:
            lines.append("layer precisions: not available from the engine inspector")
            return "\n".join(lines)
        counts = Counter(layer.precision for layer in self.layers)
        lines.append("layers by precision: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        for layer in self.layers:
            lines.append(f"  {layer.precision:<7} {layer.layer_type:<20} {layer.name}")
        return "\n".join(lines)


def _precision_of(fmt: str) -> str:
    text = fmt.lower().replace(" ", "")
    if "int8" in text:
        return "int8"
    if "fp16" in text or "half" in text:
        return "fp16"
    if "fp32" in text or "float" in text:
        return "fp32"
    return "other"


def summarize_layers(info_json: str) -> list[LayerPrecision]:
    """Layer precisions from the engine inspector's JSON (``get_engine_information(LayerInformationFormat.JSON)``).

    With ``ProfilingVerbosity.DETAILED`` each layer lists ``Inputs`` with a ``Format/Datatype`` string such as
    "Row major linear INT8 format" or "Channel major FP16 format"; a layer's precision is that of its first input
    (a Conv whose input is INT8 runs an INT8 kernel). Without details the layers are just names: ``unknown``.
    """
    try:
        doc = json.loads(info_json)
    except json.JSONDecodeError:
        return []
    layers = doc.get("Layers", []) if isinstance(doc, dict) else doc
    result = []
    for layer in layers if isinstance(layers, list) else []:
        if isinstance(layer, str):
            try:
                layer = json.loads(layer)
            except json.JSONDecodeError:
                result.append(LayerPrecision(layer, "", "unknown"))
                continue
        if not isinstance(layer, dict):
            continue
        inputs = layer.get("Inputs") or []
        fmt = next((i.get("Format/Datatype", "") for i in inputs if isinstance(i, dict)), "")
        result.append(LayerPrecision(str(layer.get("Name", "?")), str(layer.get("LayerType", "")),
                                     _precision_of(fmt) if fmt else "unknown"))
    return result


def build_engine(model_path: str | os.PathLike, engine_path: str | os.PathLike, profile: Profile,
                 options: BuildOptions = BuildOptions()) -> BuildReport:
    """Parse ``model_path``, build an engine with explicit quantization and write it to ``engine_path``.

    Every TensorRT name used here is type-checked against the tensorrt-stubs package (TensorRT 10.x API; mypy,
    scripts/install_trt_stubs.py). Names TensorRT 11 removed ("Removed Python APIs and Replacements", 10.x -> 11.x
    migration guide) are reached only on the versions that have them: ``EXPLICIT_BATCH`` below 10, the ``INT8`` and
    ``FP16`` builder flags below 11 (:func:`precision_mode` never picks ``weakly-typed`` on 11).
    """
    try:
        import tensorrt as trt  # optional dependency, imported on use
    except ImportError as exc:
        raise OnnxqError(NOT_INSTALLED) from exc
    model_path, engine_path = Path(model_path), Path(engine_path)
    major = version_tuple(trt.__version__)[0]
    graph_fp16 = None
    if options.fp16 and major >= 11:
        from onnxq.graph import load_model

        graph_fp16 = has_fp16_tensors(load_model(model_path))
    mode = precision_mode(major, options.fp16, graph_fp16)
    logger = trt.Logger(trt.Logger.VERBOSE if options.verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)

    flags = 0
    if major < 10:  # EXPLICIT_BATCH: needed before 10, implied (deprecated) in 10, removed in 11
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if mode == "strongly-typed" and major < 11:  # always on (and the flag deprecated) from TensorRT 11
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(model_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "no details"
        raise OnnxqError(f"TensorRT's ONNX parser rejected {model_path}: {errors} (run `onnxq lint` on it)")

    config = builder.create_builder_config()
    if mode == "weakly-typed":  # TensorRT < 11 only: 11 has no INT8/FP16 builder flags
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: no calibrator is set
        if options.fp16:
            config.set_flag(trt.BuilderFlag.FP16)
    if options.workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_mib) << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if not profile.empty:
        trt_profile = builder.create_optimization_profile()
        for name in profile.inputs():
            trt_profile.set_shape(name, trt.Dims(list(profile.min[name])), trt.Dims(list(profile.opt[name])),
                                  trt.Dims(list(profile.max[name])))
        config.add_optimization_profile(trt_profile)

    log.info("building a TensorRT %s engine (%s%s)", trt.__version__, mode, ", FP16 fallback" if options.fp16 else "")
    monitor = progress_monitor(trt)
    if monitor is not None:
        config.progress_monitor = monitor  # TensorRT >= 10: its phases become progress stages
    try:
        with progress.stage("engine build"):
            plan = builder.build_serialized_network(network, config)
    finally:
        if monitor is not None:
            monitor.close()
    if plan is None:
        raise OnnxqError("TensorRT could not build the engine; rerun with -v to see TensorRT's log")
    write_bytes_atomic(engine_path, bytes(plan))

    report = BuildReport(engine_path, trt.__version__, mode)
    try:
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(bytes(plan))
        inspector = engine.create_engine_inspector()
        report.layers = summarize_layers(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    except (AttributeError, RuntimeError, TypeError) as exc:  # the inspector is missing on old versions
        log.warning("layer precision report unavailable: %s", exc)
    return report


def has_fp16_tensors(model) -> bool:
    """Whether the graph computes in FP16 anywhere (an FP16 initializer or Cast to FP16)."""
    import onnx

    return (any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
            or any(n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in n.attribute)
                   for n in model.graph.node))
