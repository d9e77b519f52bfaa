"""Calibration: reading data, running onnxruntime, and the per-tensor statistics algorithms."""
