"""Imports every calibration algorithm so that :data:`onnxq.calib.base.CALIBRATORS` is complete."""

from onnxq.calib import auto, entropy, minmax, mse, percentile  # noqa: F401

__all__ = ["auto", "entropy", "minmax", "mse", "percentile"]
