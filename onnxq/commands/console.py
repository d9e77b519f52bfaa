"""How the command line shows the library's progress (:mod:`onnxq.progress`) on stderr.

On a terminal each stage is a tqdm bar with its total and an ETA. When stderr is a log file or a pipe (CI, batch
jobs) each stage writes plain lines instead: the count, the elapsed time and the ETA every ``interval`` seconds, and
one line when it ends. Stages shorter than ``delay`` seconds show nothing either way (a quick command, or a bad input
refused in one line, stays quiet). ``-q`` shows nothing.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO

from onnxq.progress import StageView

#: seconds a stage runs before its progress shows (default 2); the test suite sets it high so that timing on a
#: loaded machine never adds lines to the output it compares
DELAY_VARIABLE = "ONNXQ_PROGRESS_DELAY"


def _units(unit: str) -> str:
    return unit + ("es" if unit.endswith(("ch", "s", "x")) else "s")


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


class _LineStage:
    """A stage written as plain lines (stderr is not a terminal). Stages that end within ``delay`` seconds write
    nothing, so quick commands and one-line errors stay quiet."""

    def __init__(self, stream: IO[str], name: str, total: int | None, unit: str, interval: float,
                 delay: float) -> None:
        self.stream, self.name, self.total, self.unit = stream, name, total, unit
        self.interval, self.delay = interval, delay
        self.done = 0
        self.started = time.monotonic()
        self.last: float | None = None  # when the last line was written

    def _write(self, text: str) -> None:
        print(f"onnxq: {self.name}: {text}", file=self.stream, flush=True)

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        due = now - self.started >= self.delay if self.last is None else now - self.last >= self.interval
        if due and (self.total is None or self.done < self.total):
            self.last = now
            self._write(f"{self._count()}, {self._timing(now)}")

    def _count(self) -> str:
        if self.total:
            return f"{self.done}/{self.total} {_units(self.unit)} ({100 * self.done / self.total:.0f}%)"
        return f"{self.done} {_units(self.unit)}"

    def _timing(self, now: float) -> str:
        elapsed = now - self.started
        text = f"{_seconds(elapsed)} elapsed"
        if self.total and self.done:
            text += f", ETA {_seconds(elapsed / self.done * max(self.total - self.done, 0))}"
        return text

    def close(self) -> None:
        elapsed = time.monotonic() - self.started
        if self.last is not None or elapsed >= self.delay:
            count = f", {self.done} {_units(self.unit)}" if self.done else ""
            self._write(f"done{count} in {_seconds(elapsed)}")


class _BarStage:
    """A stage drawn as a tqdm bar (stderr is a terminal)."""

    def __init__(self, stream: IO[str], name: str, total: int | None, unit: str, delay: float) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=name, unit=unit, leave=False, file=stream, dynamic_ncols=True, delay=delay)

    def advance(self, n: int = 1) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


class ConsoleListener:
    """The CLI's :class:`onnxq.progress.Listener`: bars on a terminal, plain lines elsewhere, nothing with -q."""

    def __init__(self, stream: IO[str] | None = None, *, quiet: bool = False, interval: float = 10.0,
                 delay: float | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.interval = interval
        self.delay = delay if delay is not None else float(os.environ.get(DELAY_VARIABLE, "2"))
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def begin(self, name: str, total: int | None, unit: str) -> StageView:
        if self.quiet:
            return _Silent()
        if self.tty:
            return _BarStage(self.stream, name, total, unit, self.delay)
        return _LineStage(self.stream, name, total, unit, self.interval, self.delay)


class _Silent:
    def advance(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass
