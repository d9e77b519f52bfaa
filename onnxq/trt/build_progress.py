"""Progress of a TensorRT engine build, reported through :mod:`onnxq.progress`.

The whole build is the stage "engine build" (parse, optimize, serialize); where the installed TensorRT has the
builder progress interface (``tensorrt.IProgressMonitor``, TensorRT >= 10.0, set with
``IBuilderConfig.progress_monitor``), each top-level phase TensorRT reports (``phase_start(phase_name, parent_phase,
num_steps)``, ``step_complete(phase_name, step) -> bool``, ``phase_finish(phase_name)``: TensorRT Python API,
"ProgressMonitor") becomes its own stage with TensorRT's step count as total, so the bar shows an ETA. Nested phases
are not drawn (their parent's bar moves). TensorRT calls the monitor from several threads: a lock guards the stages.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from onnxq import progress


class PhaseStages:
    """TensorRT's build phases as progress stages: the three IProgressMonitor calls, without the TensorRT base class
    (:func:`progress_monitor` mixes it in), so it runs and is tested without TensorRT."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, tuple[contextlib.ExitStack, progress.Advance]] = {}

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        if parent_phase:
            return
        with self._lock:
            stack = contextlib.ExitStack()
            advance = stack.enter_context(progress.stage(f"engine build: {phase_name}", total=num_steps,
                                                         unit="step"))
            self._open[phase_name] = (stack, advance)

    def step_complete(self, phase_name: str, step: int) -> bool:
        with self._lock:
            entry = self._open.get(phase_name)
            if entry is not None:
                entry[1]()
        return True  # True: go on (False would ask TensorRT to cancel the build)

    def phase_finish(self, phase_name: str) -> None:
        with self._lock:
            entry = self._open.pop(phase_name, None)
        if entry is not None:
            entry[0].close()

    def close(self) -> None:
        """Close phases TensorRT left open (a failed build)."""
        with self._lock:
            entries, self._open = list(self._open.values()), {}
        for stack, _ in entries:
            stack.close()


def progress_monitor(trt: Any) -> Any:
    """A monitor object for ``config.progress_monitor`` (a PhaseStages that is also a ``trt.IProgressMonitor``, a
    class made at run time, hence ``Any``), or None when this TensorRT has no IProgressMonitor."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class Monitor(PhaseStages, base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)  # type: ignore[misc]  # pybind11 bases must be initialised explicitly
            PhaseStages.__init__(self)

    return Monitor()
