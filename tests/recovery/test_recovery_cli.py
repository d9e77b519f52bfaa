"""Every recovery stage runs from the command line and is named in the summary; a bad alpha is one user error."""

from __future__ import annotations

import pytest

from tests.helpers import run_cli


def test_all_recovery_flags_run_and_are_reported(cnn_dir) -> None:
    pytest.importorskip("torch")
    r = run_cli("quantize", cnn_dir / "model.onnx", "--calib", cnn_dir / "calib", "--method", "auto",
                "--equalize", "--bias-correction", "--smoothquant", "0.5", "--adaround", "--adaround-iterations", "20",
                "-o", cnn_dir / "r.onnx", "--val", cnn_dir / "val")
    assert r.returncode == 0, r.stderr
    for name in ("equalization:", "SmoothQuant (alpha 0.5): 1", "auto ranges:", "AdaRound:", "bias correction:"):
        assert name in r.stdout, (name, r.stdout)


def test_smoothquant_alpha_out_of_range_is_a_user_error(cnn_dir) -> None:
    r = run_cli("quantize", cnn_dir / "model.onnx", "--calib", cnn_dir / "calib", "--smoothquant", "1.5",
                "-o", cnn_dir / "r.onnx")
    assert r.returncode == 2 and "smoothquant" in r.stderr and not (cnn_dir / "r.onnx").exists()
