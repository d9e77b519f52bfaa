"""The shape of a task metric that is a mean over samples (or pixels): a sum and a count, accumulated per batch."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np


class MeanMetric(ABC):
    """``sum / count`` over every batch given to :meth:`update`; subclasses say what one batch adds."""

    name: ClassVar[str]
    higher_is_better: ClassVar[bool]

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0

    @abstractmethod
    def batch(self, outputs: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> tuple[float, int]:
        """The sum and the count one batch adds."""

    def update(self, outputs: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> None:
        total, count = self.batch(outputs, labels)
        self.total += total
        self.count += count

    def compute(self) -> float:
        return self.total / self.count if self.count else float("nan")
