"""Progress of long stages: reported by the library, drawn by whoever listens (the command line).

Library code wraps a long loop in a stage and advances it once per item::

    with progress.stage("calibration", total=len(data), unit="batch") as advance:
        for batch in data:
            ...
            advance()

Nothing is drawn unless a listener is installed with :func:`listening` (the CLI installs one that draws a tqdm bar
with a known total and an ETA on a terminal, and writes plain lines when stderr is a log or a pipe). The listener
lives in a context variable, so runs in other threads or tasks do not mix, and library users who install none pay
one attribute lookup per item. Stages nest (validation inside quantize); each is drawn on its own.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Protocol

Advance = Callable[..., None]


class StageView(Protocol):
    """What a listener returns for one stage: advanced per item, closed once."""

    def advance(self, n: int = 1) -> None: ...

    def close(self) -> None: ...


class Listener(Protocol):
    """Receives every stage the library starts while it is installed."""

    def begin(self, name: str, total: int | None, unit: str) -> StageView: ...


_LISTENER: contextvars.ContextVar[Listener | None] = contextvars.ContextVar("onnxq_progress", default=None)


def _nothing(n: int = 1) -> None:
    """Advance of a stage nobody listens to."""


@contextlib.contextmanager
def stage(name: str, total: int | None = None, unit: str = "step") -> Iterator[Advance]:
    """A named stage of ``total`` items (None when unknown); yields ``advance(n=1)``."""
    listener = _LISTENER.get()
    if listener is None:
        yield _nothing
        return
    view = listener.begin(name, total, unit)
    try:
        yield view.advance
    finally:
        view.close()


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Send every stage started inside this block to ``listener``."""
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)


def total_of(items: object) -> int | None:
    """``len(items)`` where it is known without consuming them, else None."""
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        return None
