"""Validation: FP32 and quantized models side by side in onnxruntime on the same inputs."""

from onnxq.validate.compare import ComparisonReport, OutputMetrics, compare_models

__all__ = ["ComparisonReport", "OutputMetrics", "compare_models"]
