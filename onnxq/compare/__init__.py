"""Compare precision formats on one model: one calibration, one quantization per format, metrics, reports, plots."""

from onnxq.compare.run import DEFAULT_FORMATS, CompareOptions, CompareResult, FormatResult, compare_formats

__all__ = ["DEFAULT_FORMATS", "CompareOptions", "CompareResult", "FormatResult", "compare_formats"]
