"""Min-max calibration: the range is the smallest and largest value seen, or their moving average over batches.

With ``CalibOptions.momentum = None`` (the default) the range is the true min and max; merging is exact and order
free. With a momentum ``m`` each batch updates ``lo = m * lo + (1 - m) * batch_min`` (``hi`` alike; the first batch
sets them), as torch.ao's ``MovingAverageMinMaxObserver`` with ``averaging_constant = 1 - m``.

A moving average depends on the order of the batches, so two shards cannot be merged into exactly the value one
run would give. :meth:`MinMaxCalibrator.merge` takes the batch-count weighted mean of the shards' averages
(``lo = (n1 * lo1 + n2 * lo2) / (n1 + n2)``): symmetric in the shards, and equal to the single-run value when the
per-batch extremes are stationary, but not order-exact -- use the default (``momentum=None``) or a histogram method
when shards must reproduce a single run bit for bit.
"""

from __future__ import annotations

import numpy as np

from onnxq.calib.base import CalibOptions, Calibrator, finite_values_and_range
from onnxq.errors import OnnxqError


class MinMaxCalibrator(Calibrator):
    method = "minmax"

    def __init__(self, options: CalibOptions) -> None:
        super().__init__(options)
        self.lo = np.inf
        self.hi = -np.inf
        self.batches = 0  # batches with at least one finite value

    def collect(self, x: np.ndarray) -> None:
        values, lo, hi = finite_values_and_range(x)
        if values.size == 0:
            return
        momentum = self.options.momentum
        if momentum is None:
            self.lo = min(self.lo, lo)
            self.hi = max(self.hi, hi)
        elif self.batches == 0:
            self.lo, self.hi = lo, hi
        else:
            self.lo = momentum * self.lo + (1.0 - momentum) * lo
            self.hi = momentum * self.hi + (1.0 - momentum) * hi
        self.batches += 1

    def compute_range(self, symmetric: bool) -> tuple[float, float]:
        """``(-amax, amax)`` or ``(lo, hi)``; an all-zero tensor gives ``(0.0, 0.0)`` (scale helpers map it to 1.0)."""
        if self.batches == 0:
            raise OnnxqError("no finite values were collected for this tensor")
        if symmetric:
            amax = max(abs(self.lo), abs(self.hi))
            return -amax, amax
        return self.lo, self.hi

    def merge(self, other: Calibrator) -> None:
        self._check_mergeable(other)
        assert isinstance(other, MinMaxCalibrator)
        if other.batches == 0:
            return
        if self.options.momentum is None or self.batches == 0:
            self.lo = min(self.lo, other.lo)
            self.hi = max(self.hi, other.hi)
        else:
            total = self.batches + other.batches
            self.lo = (self.batches * self.lo + other.batches * other.lo) / total
            self.hi = (self.batches * self.hi + other.batches * other.hi) / total
        self.batches += other.batches

    def state(self) -> dict[str, np.ndarray]:
        return {"lo": np.array(self.lo, np.float64), "hi": np.array(self.hi, np.float64),
                "batches": np.array(self.batches, np.int64)}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], options: CalibOptions) -> MinMaxCalibrator:
        calibrator = cls(options)
        calibrator.lo = float(state["lo"])
        calibrator.hi = float(state["hi"])
        # States written before the batch count existed: any finite range means data was seen.
        default = 1 if calibrator.lo <= calibrator.hi else 0
        calibrator.batches = int(state["batches"]) if "batches" in state else default
        return calibrator
