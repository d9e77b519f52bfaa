"""The README stays true: the shell commands of its Quick start and Everyday use blocks run as written (in process,
via tests.helpers.run_cli). Environment set-up lines (git, python -m venv, activation, pip) are not run; commands
that need TensorRT and a GPU (build-engine) or Ray (--ray) are skipped when those are not installed.

The fast test runs the Everyday use block on a small generated model standing in for the reference model its first
line exports (same file layout: model.onnx, calib/, val/); the slow tests run the blocks word for word.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.conftest import small_cnn
from tests.helpers import run_cli

README = Path(__file__).resolve().parents[2] / "README.md"
# the reference model's input shape in the README, as the small stand-in model names it
STAND_IN_SHAPES = {"pillars:1x6x64x64": "x:1x3x16x16"}
SETUP = ("git", "python", "python3", ".", "source", "pip", "uv", "pyenv")


def shell_block(section: str) -> list[str]:
    """The commands of the plain ``` blocks under the heading ``## section`` up to the next heading of any level:
    comments cut, && chains split."""
    commands, inside, fence = [], False, None
    for line in README.read_text().splitlines():
        if fence is None and line.startswith("#"):
            if inside:
                break
            inside = line == f"## {section}"
            continue
        if line.startswith("```"):
            fence = None if fence is not None else line[3:].strip() or "shell"
            continue
        if inside and fence == "shell":
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            commands += [part.strip() for part in line.split("&&") if part.strip()]
    return commands


def needs_missing_extra(argv: list[str]) -> str | None:
    if argv[0] == "build-engine" and "--print-trtexec" not in argv and importlib.util.find_spec("tensorrt") is None:
        return "tensorrt"
    if "--ray" in argv and importlib.util.find_spec("ray") is None:
        return "ray"
    return None


def run_block(commands: list[str], cwd: Path, replace_export: bool) -> list[str]:
    """Run every command in order; returns the ones skipped (with why). A failing command fails the test."""
    skipped = []
    for command in commands:
        words = shlex.split(command)
        if words[0] in SETUP:
            continue
        if words[0] == "cd":
            cwd = cwd / words[1]
            cwd.mkdir(exist_ok=True)  # `cd onnxq` after the (skipped) clone: a folder standing in for it
            continue
        assert words[0] == "onnxq", f"README command {command!r} is not an onnxq command or a set-up step"
        argv = words[1:]
        if replace_export and argv[:2] == ["models", "export"]:
            make_reference_stand_in(cwd / argv[argv.index("-o") + 1])
            continue
        if replace_export:
            argv = [STAND_IN_SHAPES.get(a, a) for a in argv]
        missing = needs_missing_extra(argv)
        if missing:
            skipped.append(f"{command} (needs {missing})")
            continue
        result = run_cli(*argv, cwd=cwd)
        assert result.returncode == 0, f"README command failed: {command}\n{result.stderr[-2000:]}"
    return skipped


def make_reference_stand_in(folder: Path) -> None:
    """model.onnx, calib/ and val/ as `onnxq models export` writes them, for a small CNN."""
    folder.mkdir(parents=True)
    onnx.save(small_cnn(), folder / "model.onnx")
    rng = np.random.default_rng(0)
    for name, count in (("calib", 4), ("val", 2)):
        (folder / name).mkdir()
        for i in range(count):
            np.savez(folder / name / f"{i:03d}.npz", x=rng.standard_normal((2, 3, 16, 16)).astype(np.float32))


def test_readme_blocks_are_found():
    everyday = shell_block("Everyday use")
    assert everyday[0].startswith("onnxq models export") and any("--min-sqnr" in c for c in everyday)
    assert any(c.startswith("onnxq demo") for c in shell_block("Quick start"))


def test_everyday_use_runs_as_written(tmp_path):
    pytest.importorskip("matplotlib")
    skipped = run_block(shell_block("Everyday use"), tmp_path, replace_export=True)
    assert (tmp_path / "cp" / "model.int8.onnx").exists() and (tmp_path / "cp" / "report.md").exists()
    assert (tmp_path / "cp" / "sqnr.png").exists()
    assert skipped == []


@pytest.mark.slow
def test_everyday_use_runs_on_the_reference_model(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    run_block(shell_block("Everyday use"), tmp_path, replace_export=False)


@pytest.mark.slow
def test_quick_start_runs_as_written(tmp_path):
    pytest.importorskip("torch")
    run_block(shell_block("Quick start"), tmp_path, replace_export=False)
