"""The calibrator interface and the registry of algorithms by name.

A calibrator watches one tensor. Collecting statistics (:meth:`Calibrator.collect`) is separate from turning them
into a range (:meth:`Calibrator.compute_range`), as in torch.ao's observers. Statistics are bounded in memory,
mergeable (:meth:`Calibrator.merge`) and serialisable (:meth:`Calibrator.state` / :meth:`Calibrator.from_state`),
so shards calibrated on different machines combine into exactly the ranges of one run over all the data.
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

    method: str = "minmax"
    percentile: float = 99.99
    num_bins: int = 2048

    def __post_init__(self) -> None:
        if not 0.0 < self.percentile <= 100.0:
            raise OnnxqError(f"--percentile must be in (0, 100], got {self.percentile}")
        if self.method not in CALIBRATORS:
            known = ", ".join(sorted(CALIBRATORS))
            raise OnnxqError(f"unknown calibration method {self.method!r}; choose one of {known}")


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


CALIBRATORS: dict[str, type[Calibrator]] = {}


def register(cls: type[Calibrator]) -> type[Calibrator]:
    """Class decorator: make an algorithm available by its ``method`` name."""
    CALIBRATORS[cls.method] = cls
    return cls


def make_calibrator(options: CalibOptions) -> Calibrator:
    return CALIBRATORS[options.method](options)


def finite_values(x: np.ndarray) -> np.ndarray:
    """The finite values of ``x`` as a flat float32 array (a view when nothing needs dropping)."""
    flat = np.asarray(x, dtype=np.float32).ravel()
    finite = np.isfinite(flat)
    return flat if finite.all() else flat[finite]
