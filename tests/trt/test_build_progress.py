"""Engine-build progress: TensorRT's IProgressMonitor phases become progress stages with TensorRT's step counts
(driven here as TensorRT drives them, from several threads; the real build is tested where tensorrt is installed)."""

from __future__ import annotations

import threading
import types

from onnxq import progress
from onnxq.trt.build_progress import PhaseStages, progress_monitor
from tests.cli.test_everyday import Recorder


def test_top_level_phases_become_stages_with_totals():
    recorder = Recorder()
    with progress.listening(recorder):
        monitor = PhaseStages()
        monitor.phase_start("Building engine", None, 4)
        monitor.phase_start("Tactic selection", "Building engine", 100)  # nested: its parent's bar moves
        threads = [threading.Thread(target=monitor.step_complete, args=("Building engine", i)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert monitor.step_complete("Tactic selection", 0) is True  # never cancels the build
        monitor.phase_finish("Tactic selection")
        monitor.phase_finish("Building engine")
        monitor.phase_start("Serializing", None, 2)
        monitor.close()  # a failed build leaves phases open: closed here
    assert [(s["name"], s["total"], s["done"], s["closed"]) for s in recorder.stages] == [
        ("engine build: Building engine", 4, 4, True), ("engine build: Serializing", 2, 0, True)]


def test_monitor_only_where_tensorrt_has_the_interface():
    assert progress_monitor(types.SimpleNamespace()) is None

    class IProgressMonitor:  # the shape of tensorrt.IProgressMonitor: a base class with an __init__
        def __init__(self) -> None:
            self.base_initialised = True

    monitor = progress_monitor(types.SimpleNamespace(IProgressMonitor=IProgressMonitor))
    assert isinstance(monitor, IProgressMonitor) and isinstance(monitor, PhaseStages) and monitor.base_initialised
