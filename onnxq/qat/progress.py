"""Progress of a QAT fine-tuning run: what :func:`onnxq.qat.finetune` reports after each step, and a console view.

``finetune(..., progress=ConsoleProgress())`` draws a tqdm bar (steps done / total, loss, ETA) on stderr when stderr
is a terminal, and otherwise writes a plain line every ``interval`` seconds (and after the last step), so that logs
of batch jobs show where a long run is. Without a ``progress`` callback, ``finetune`` logs the same lines at INFO.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any


@dataclass(frozen=True)
class StepReport:
    step: int  # optimizer steps done
    total: int | None  # steps planned (None: unknown length)
    epoch: int
    loss: float  # this step's loss
    mean_loss: float  # mean over the epoch so far
    elapsed: float  # seconds since fine-tuning started

    @property
    def eta(self) -> float | None:
        if not self.total or not self.step:
            return None
        return self.elapsed / self.step * max(self.total - self.step, 0)

    def format(self) -> str:
        done = f"{self.step}/{self.total}" if self.total else f"{self.step}"
        eta = self.eta
        return (f"QAT step {done} (epoch {self.epoch}), loss {self.loss:.4f} (epoch mean {self.mean_loss:.4f}), "
                f"{self.elapsed:.0f} s" + (f", ETA {eta:.0f} s" if eta is not None else ""))


class ConsoleProgress:
    """A callable for ``finetune(progress=...)``: a tqdm bar on a terminal, plain periodic lines otherwise."""

    def __init__(self, stream: IO[str] | None = None, interval: float = 10.0, desc: str = "QAT") -> None:
        self.stream = stream or sys.stderr
        self.interval = interval
        self.desc = desc
        self._bar: Any = None  # a tqdm bar once drawn
        self._last = float("-inf")
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def __call__(self, report: StepReport) -> None:
        if self._tty:
            self._draw(report)
            return
        now = time.monotonic()
        if now - self._last >= self.interval or (report.total and report.step >= report.total):
            self._last = now
            print(report.format(), file=self.stream, flush=True)

    def _draw(self, report: StepReport) -> None:
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=report.total, desc=self.desc, unit="step", file=self.stream, leave=False)
        self._bar.update(report.step - self._bar.n)
        self._bar.set_postfix(loss=f"{report.loss:.4f}", refresh=False)
        if report.total and report.step >= report.total:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class StageProgress:
    """A callable for ``finetune(progress=...)`` that reports the steps as the :mod:`onnxq.progress` stage
    ``"QAT fine-tuning"`` (total = planned steps), so ``onnxq models qat`` draws it like every other long stage (a tqdm
    bar with ETA on a terminal, plain lines with ETA in logs); the loss goes to the log (INFO, ``-v``) every
    ``interval`` seconds and after the last step."""

    def __init__(self, name: str = "QAT fine-tuning", interval: float = 10.0) -> None:
        import contextlib

        self.name = name
        self.interval = interval
        self._stack = contextlib.ExitStack()
        self._advance: Callable[..., None] | None = None
        self._shown = 0
        self._last = float("-inf")

    def __call__(self, report: StepReport) -> None:
        import logging

        from onnxq import progress

        advance = self._advance
        if advance is None:
            advance = self._advance = self._stack.enter_context(progress.stage(self.name, total=report.total,
                                                                                unit="step"))
        advance(report.step - self._shown)
        self._shown = report.step
        now = time.monotonic()
        last = bool(report.total and report.step >= report.total)
        if now - self._last >= self.interval or last:
            self._last = now
            logging.getLogger(__name__).info("%s", report.format())
        if last:
            self.close()

    def close(self) -> None:
        self._stack.close()
        self._advance = None
        self._shown = 0
