"""The calibration algorithms by name: a table built when this module is imported.

A new algorithm is a :class:`~onnxq.calib.base.Calibrator` subclass in its own module plus one entry here.
"""

from __future__ import annotations

from onnxq.calib.auto import AutoCalibrator
from onnxq.calib.base import CalibOptions, Calibrator
from onnxq.calib.entropy import EntropyCalibrator
from onnxq.calib.minmax import MinMaxCalibrator
from onnxq.calib.mse import MseCalibrator
from onnxq.calib.percentile import PercentileCalibrator
from onnxq.errors import OnnxqError

CALIBRATORS: dict[str, type[Calibrator]] = {
    cls.method: cls for cls in (MinMaxCalibrator, PercentileCalibrator, EntropyCalibrator, MseCalibrator,
                                      AutoCalibrator)
}


def check_method(method: str) -> None:
    """Raise a user error naming the known methods when ``method`` is not one."""
    if method not in CALIBRATORS:
        raise OnnxqError(f"unknown calibration method {method!r}; choose one of {', '.join(sorted(CALIBRATORS))}")


def make_calibrator(options: CalibOptions) -> Calibrator:
    """A fresh calibrator of ``options.method``."""
    check_method(options.method)
    return CALIBRATORS[options.method](options)

