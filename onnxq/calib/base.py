"""The calibrator interface (the algorithms by name: :mod:`onnxq.calib.methods`).

A calibrator watches one tensor. Collecting statistics (:meth:`Calibrator.collect`) is separate from turning them into
a range (:meth:`Calibrator.compute_range`), as in torch.ao's observers. Statistics are bounded in memory, mergeable
(:meth:`Calibrator.merge`) and serialisable (:meth:`Calibrator.state` / :meth:`Calibrator.from_state`), so shards
calibrated on different machines combine into exactly the ranges of one run over all the data.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from onnxq.errors import OnnxqError


@dataclass(frozen=True)
class CalibOptions:
    """Typed options of the calibration algorithms (not every algorithm reads every field)."""

    #: the algorithm, a key of :data:`onnxq.calib.methods.CALIBRATORS` (checked by
    #: :func:`~onnxq.calib.methods.make_calibrator` and by QuantConfig)
    method: str = "minmax"
    #: percentile of |x| kept inside the range (method ``percentile``), in (0, 100].
    percentile: float = 99.99
    #: Bins of the search histogram over [0, max|x|] (``entropy`` as TensorRT: 2048; ``mse`` candidates).
    #: The streaming histogram behind ``percentile``/``entropy``/``mse`` keeps ``fine_bins(num_bins)``
    #: (the power of two >= 8 * num_bins) bins per sign; see :mod:`onnxq.calib.histogram`.
    num_bins: int = 2048
    #: Moving average for ``minmax``: after each batch ``value = momentum * value + (1 - momentum) * batch
    #: value`` (torch's ``averaging_constant`` is ``1 - momentum``). ``None`` keeps the true min and max.
    momentum: float | None = None
    #: Integer width the range is searched for (``entropy``: 2**(num_bits-1) levels; ``mse``: symmetric
    #: qmax 2**(num_bits-1)-1 or asymmetric 2**num_bits-1 steps).
    num_bits: int = 8
    #: Histogram methods bin at most this many values of each batch of a tensor (an even stride through the batch;
    #: min and max still come from every value), ``None``: all. Binning dominates the cost of histogram calibration on
    #: large feature maps (ddddocr's detector: 23 of 38 s); 2**18 values per batch keep every percentile the methods
    #: read well sampled while making the default ``mse`` cost close to ``minmax`` (docs/accuracy_recovery.md).
    sample_per_batch: int | None = 1 << 18
    #: ``mse`` clips only when that lowers the expected squared error by at least this share of min-max's error;
    #: otherwise the range stays the min-max range (see :mod:`onnxq.calib.mse`, "Clip only when it pays"). 0: the
    #: plain MSE optimum.
    min_clip_gain: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 < self.percentile <= 100.0:
            raise OnnxqError(f"--percentile must be in (0, 100], got {self.percentile}")
        if not 256 <= self.num_bins <= 65536:
            raise OnnxqError(f"--num-bins must be in [256, 65536], got {self.num_bins}")
        if self.momentum is not None and not 0.0 <= self.momentum < 1.0:
            raise OnnxqError(f"moving-average momentum must be in [0, 1), got {self.momentum}")
        if self.sample_per_batch is not None and self.sample_per_batch < 1:
            raise OnnxqError(f"sample_per_batch must be at least 1 or None, got {self.sample_per_batch}")
        if not 0.0 <= self.min_clip_gain < 1.0:
            raise OnnxqError(f"--min-clip-gain must be in [0, 1), got {self.min_clip_gain}")
        if not 2 <= self.num_bits <= 8:
            raise OnnxqError(f"num_bits must be in [2, 8], got {self.num_bits}")


class Calibrator(ABC):
    """Statistics of one tensor over any number of batches."""

    method: ClassVar[str]

    def __init__(self, options: CalibOptions) -> None:
        self.options = options

    @abstractmethod
    def collect(self, x: np.ndarray) -> None:
        """Add one batch of the tensor's values. Non-finite values are ignored."""

    @abstractmethod
    def compute_range(self, symmetric: bool) -> tuple[float, float]:
        """The range to quantize to: ``(-amax, amax)`` when ``symmetric``, else ``(lo, hi)``."""

    def clipped_fraction(self, lo: float, hi: float) -> float | None:
        """Share of the collected values outside ``[lo, hi]``, where the statistics tell (None otherwise)."""
        return None

    @abstractmethod
    def merge(self, other: Calibrator) -> None:
        """Fold another calibrator's statistics (same method and options) into this one."""

    @abstractmethod
    def state(self) -> dict[str, np.ndarray]:
        """The statistics as named arrays, for saving to an ``.npz`` file."""

    @classmethod
    @abstractmethod
    def from_state(cls, state: dict[str, np.ndarray], options: CalibOptions) -> Calibrator:
        """Rebuild a calibrator from :meth:`state`."""

    def _check_mergeable(self, other: Calibrator) -> None:
        if type(other) is not type(self) or other.options != self.options:
            raise OnnxqError(
                f"cannot merge {other.method} statistics ({other.options}) into {self.method} ({self.options})"
            )


def finite_values_and_range(x: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The finite values of ``x`` (flat float32) with their min and max (``inf, -inf`` when there are none).

    NaN and inf propagate into ``min``/``max``, so one finite min and max proves every value finite and saves
    a pass over the data in the common case.
    """
    flat = np.asarray(x, dtype=np.float32).ravel()
    if flat.size == 0:
        return flat, np.inf, -np.inf
    lo, hi = flat.min(), flat.max()
    if not (np.isfinite(lo) and np.isfinite(hi)):
        flat = flat[np.isfinite(flat)]
        if flat.size == 0:
            return flat, np.inf, -np.inf
        lo, hi = flat.min(), flat.max()
    return flat, float(lo), float(hi)
