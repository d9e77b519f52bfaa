"""Everyday use: progress with a known total, -q/-v anywhere, --version, defaults in help, one warning per cause,
distinguishable names, and errors that say how to mend them."""

from __future__ import annotations

import io

import numpy as np
import onnx

import onnxq
from onnxq import progress
from onnxq.commands.console import ConsoleListener
from onnxq.report import short_names
from onnxq.version import __version__
from tests.conftest import small_cnn
from tests.helpers import run_cli


class Recorder:
    """A progress listener that keeps every stage with its total and how far it got."""

    def __init__(self) -> None:
        self.stages: list[dict] = []

    def begin(self, name: str, total: int | None, unit: str):
        record = {"name": name, "total": total, "unit": unit, "done": 0, "closed": False}
        self.stages.append(record)
        recorder = self

        class View:
            def advance(self, n: int = 1) -> None:
                record["done"] += n

            def close(self) -> None:
                record["closed"] = True

        del recorder
        return View()

    def stage(self, name: str) -> dict:
        return next(s for s in self.stages if s["name"] == name)


def test_quantize_reports_every_stage_with_known_totals(cnn_dir):
    recorder = Recorder()
    with progress.listening(recorder):
        onnxq.quantize(str(cnn_dir / "model.onnx"), calib=str(cnn_dir / "calib"), val=str(cnn_dir / "val"))
    stages = [s["name"] for s in recorder.stages if s["total"] is None]
    assert [s for s in stages if s in ("prepare", "ranges", "insert+verify", "validate")] == \
        ["prepare", "ranges", "insert+verify", "validate"]
    calibration = recorder.stage("calibration")
    assert (calibration["total"], calibration["done"], calibration["unit"]) == (6, 6, "batch")
    validation = recorder.stage("validation")
    assert (validation["total"], validation["done"]) == (2, 2)
    assert all(s["closed"] for s in recorder.stages)


def test_nobody_listening_costs_nothing_and_prints_nothing(capsys):
    with progress.stage("work", total=3) as advance:
        for _ in range(3):
            advance()
    assert capsys.readouterr() == ("", "")


def test_plain_lines_when_stderr_is_not_a_terminal():
    stream = io.StringIO()
    listener = ConsoleListener(stream, interval=0.0, delay=0.0)
    with progress.listening(listener), progress.stage("calibration", total=4, unit="batch") as advance:
        for _ in range(4):
            advance()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("onnxq: calibration: 1/4 batches (25%)") and "ETA" in lines[0]
    assert lines[-1].startswith("onnxq: calibration: done, 4 batches in")


def test_quick_stages_print_nothing_and_quiet_prints_nothing():
    for listener in (ConsoleListener(io.StringIO()), ConsoleListener(io.StringIO(), quiet=True, delay=0.0)):
        with progress.listening(listener), progress.stage("prepare") as advance:
            advance()
        assert listener.stream.getvalue() == ""


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"onnxq {__version__}"


def test_quiet_and_verbose_after_the_subcommand(cnn_dir):
    out = cnn_dir / "q.onnx"
    quiet = run_cli("quantize", cnn_dir / "model.onnx", "--calib", cnn_dir / "calib", "-o", out, "-q")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.strip().splitlines() == [f"wrote {out}"] and quiet.stderr == ""
    loud = run_cli("quantize", cnn_dir / "model.onnx", "--calib", cnn_dir / "calib", "-o", out, "-v")
    assert loud.returncode == 0 and "quantized tensors" in loud.stdout and "INFO" in loud.stderr


def test_help_shows_defaults():
    text = " ".join(run_cli("quantize", "--help").stdout.split())
    assert "(default 2048)" in text and "(default: 4096)" in text and "default: None" not in text


def test_random_calibration_warns_once(cnn_dir):
    result = run_cli("quantize", cnn_dir / "model.onnx", "--calib", "random", "-o", cnn_dir / "r.onnx")
    assert result.returncode == 0 and result.stderr.count("RANDOM") == 1


def test_short_names_stay_distinct():
    names = [f"/backbone/stage{i}/block{j}/conv/Conv_output_0" for i in range(3) for j in range(3)]
    short = short_names(names, 30)
    assert all(len(s) <= 30 for s in short) and len(set(short)) == len(names)
    assert short_names(["a", "b"], 30) == ["a", "b"]
    clash = ["/x/" + "a" * 40 + "/end", "/x/" + "b" * 40 + "/end"]
    assert len(set(short_names(clash, 12))) == 2


def test_static_batch_stack_suggests_batch_size(tmp_path):
    model = small_cnn()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, tmp_path / "model.onnx")
    np.savez(tmp_path / "stack.npz", x=np.zeros((5, 3, 16, 16), np.float32))
    result = run_cli("quantize", tmp_path / "model.onnx", "--calib", tmp_path / "stack.npz", "-o", tmp_path / "q.onnx")
    assert result.returncode == 2 and "--batch-size 1" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "q.onnx").exists()


def test_qat_steps_are_a_progress_stage_like_every_other():
    """`onnxq models qat` reports fine-tuning through onnxq.progress: a stage with the planned steps as total."""
    from onnxq.qat.progress import StageProgress, StepReport

    recorder = Recorder()
    with progress.listening(recorder):
        steps = StageProgress()
        for _run in range(2):  # two fine-tuning runs: two stages
            for step in range(1, 4):
                steps(StepReport(step, 3, 0, 1.0 / step, 0.5, 0.1 * step))
        steps.close()
    assert [(s["name"], s["total"], s["done"], s["closed"]) for s in recorder.stages] == [
        ("QAT fine-tuning", 3, 3, True)] * 2
