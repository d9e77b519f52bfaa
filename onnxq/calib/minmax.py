"""Min-max calibration: the range is the smallest and largest value seen."""

from __future__ import annotations

import numpy as np

from onnxq.calib.base import CalibOptions, Calibrator, finite_values, register
from onnxq.errors import OnnxqError


@register
class MinMaxCalibrator(Calibrator):
    method = "minmax"

    def __init__(self, options: CalibOptions) -> None:
        super().__init__(options)
        self.lo = np.inf
        self.hi = -np.inf

    def collect(self, x: np.ndarray) -> None:
        values = finite_values(x)
        if values.size:
            self.lo = min(self.lo, float(values.min()))
            self.hi = max(self.hi, float(values.max()))

    def compute_range(self, symmetric: bool) -> tuple[float, float]:
        if self.lo > self.hi:
            raise OnnxqError("no finite values were collected for this tensor")
        if symmetric:
            amax = max(abs(self.lo), abs(self.hi))
            return -amax, amax
        return self.lo, self.hi

    def merge(self, other: Calibrator) -> None:
        self._check_mergeable(other)
        assert isinstance(other, MinMaxCalibrator)
        self.lo = min(self.lo, other.lo)
        self.hi = max(self.hi, other.hi)

    def state(self) -> dict[str, np.ndarray]:
        return {"lo": np.float64(self.lo), "hi": np.float64(self.hi)}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], options: CalibOptions) -> MinMaxCalibrator:
        calibrator = cls(options)
        calibrator.lo = float(state["lo"])
        calibrator.hi = float(state["hi"])
        return calibrator
