"""Quantization parameters (scales and zero points) and their interchange formats."""

from onnxq.scales.types import QuantParams, ScaleTable

__all__ = ["QuantParams", "ScaleTable"]
