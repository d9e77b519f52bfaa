"""``quantize_dynamic()``: INT8 weights ahead of time, activations quantized at run time; no calibration data.

    load -> prepare (same float passes as static quantization) -> DynamicQuantizeMatMul -> verify -> validate? ->
    latency? -> save

The usual CPU choice for MatMul-heavy models (transformers), where activation ranges vary from input to input.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from onnxq.config import NodeSetting, QuantConfig
from onnxq.errors import OnnxqError
from onnxq.graph import check_model, load_model, save_model
from onnxq.insert.dynamic_matmul import DynamicQuantizeMatMul
from onnxq.validate.compare import ComparisonReport
from onnxq.validate.latency import LatencyReport, LatencySettings

log = logging.getLogger(__name__)


@dataclass
class DynamicResult:
    model: onnx.ModelProto
    notes: list[str]
    input_bytes: int
    output_bytes: int
    validation: ComparisonReport | None = None
    latency: LatencyReport | None = None
    output_path: Path | None = None
    extra: dict = field(default_factory=dict)

    def summary_lines(self) -> list[str]:
        from onnxq.report import validation_lines

        lines = [*self.notes, f"size: {self.input_bytes / 1e6:.2f} MB -> {self.output_bytes / 1e6:.2f} MB"]
        if self.validation is not None:
            lines += validation_lines(self.validation)
        if self.latency is not None:
            lines += self.latency.lines()
        return lines


def _skipped_matmuls(model: onnx.ModelProto, config: QuantConfig) -> frozenset[str]:
    names = set()
    for node in model.graph.node:
        if node.op_type == "MatMul":
            name = node.name or node.output[0]
            setting, _ = config.overrides.resolve("MatMul", name, NodeSetting(skip=False))
            if setting.skip:
                names.add(name)
    return frozenset(names)


def quantize_dynamic(model: str | os.PathLike | onnx.ModelProto, output: str | os.PathLike | None = None,
                     config: QuantConfig | None = None, *, val=None,
                     latency: LatencySettings | None = None) -> DynamicResult:
    """Dynamically quantize every MatMul with a constant 2-D weight (see onnxq/insert/dynamic_matmul.py); with
    ``val`` compare against FP32, with ``latency`` (needs ``val``) time both models side by side.
    """
    from onnxq.pipeline import check_output_path, data_source, prepare, verify

    config = config or QuantConfig(target="ort-cpu")
    original = model if isinstance(model, onnx.ModelProto) else load_model(model)
    input_path = None if isinstance(model, onnx.ModelProto) else Path(model)
    if output is not None and input_path is not None:
        check_output_path(Path(output), input_path)
    prepared, notes = prepare(original, config)
    result = DynamicQuantizeMatMul(config.per_channel_weights, _skipped_matmuls(prepared, config)).run(prepared)
    if not result.changed:
        raise OnnxqError("nothing to quantize dynamically: no MatMul reads a constant 2-D float weight "
                         "(check --exclude-op/--exclude-node, or use static quantization with --calib)")
    quantized = result.model
    check_model(quantized, what="dynamically quantized model", full=True)
    verify(quantized, None)
    report = DynamicResult(quantized, notes + result.notes, original.ByteSize(), quantized.ByteSize())
    if val is not None:
        from onnxq.validate.compare import compare_models

        val_data = data_source(prepared, val, config)
        report.validation = compare_models(original, quantized, val_data)
        if latency is not None:
            from onnxq.validate.latency import measure_latency

            batch = next(iter(data_source(prepared, val, config)))
            report.latency = measure_latency(original, quantized, batch, latency)
    if output is not None:
        report.output_path = save_model(quantized, output, input_path=input_path)
    return report
