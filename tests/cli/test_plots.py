"""Per-layer SQNR pictures: `validate --per-layer --plot`, and the Markdown report of `quantize --per-layer` embeds
one; without matplotlib, one line says how to get them."""

from __future__ import annotations

import pytest

from tests.helpers import run_cli

PNG = b"\x89PNG\r\n\x1a\n"


def test_validate_plot_writes_a_png(cnn_dir):
    pytest.importorskip("matplotlib")
    assert run_cli("quantize", cnn_dir / "model.onnx", "--calib", cnn_dir / "calib", "-o", cnn_dir / "q.onnx")\
        .returncode == 0
    result = run_cli("validate", cnn_dir / "model.onnx", cnn_dir / "q.onnx", "--data", cnn_dir / "val",
                     "--per-layer", "--plot", cnn_dir / "sqnr.png")
    assert result.returncode == 0, result.stderr
    assert (cnn_dir / "sqnr.png").read_bytes().startswith(PNG) and (cnn_dir / "sqnr.png").stat().st_size > 5000


def test_plot_needs_per_layer(cnn_dir):
    result = run_cli("validate", cnn_dir / "model.onnx", cnn_dir / "model.onnx", "--data", cnn_dir / "val",
                     "--plot", cnn_dir / "sqnr.png")
    assert result.returncode == 2 and "--per-layer" in result.stderr and not (cnn_dir / "sqnr.png").exists()


def test_markdown_report_embeds_the_plot(cnn_dir):
    pytest.importorskip("matplotlib")
    result = run_cli("quantize", cnn_dir / "model.onnx", "--calib", cnn_dir / "calib", "--val", cnn_dir / "val",
                     "--per-layer", "--no-latency", "--report", cnn_dir / "r.md", "-o", cnn_dir / "q.onnx")
    assert result.returncode == 0, result.stderr
    assert "![per-layer SQNR along the network](r-sqnr.png)" in (cnn_dir / "r.md").read_text()
    assert (cnn_dir / "r-sqnr.png").read_bytes().startswith(PNG)


def test_without_matplotlib_one_line_says_how(cnn_dir, monkeypatch):
    import onnxq.validate.plot as plot

    monkeypatch.setattr(plot, "plots_available", lambda: False)
    assert run_cli("quantize", cnn_dir / "model.onnx", "--calib", cnn_dir / "calib", "-o", cnn_dir / "q.onnx")\
        .returncode == 0
    result = run_cli("validate", cnn_dir / "model.onnx", cnn_dir / "q.onnx", "--data", cnn_dir / "val",
                     "--per-layer", "--plot", cnn_dir / "sqnr.png")
    assert result.returncode == 0 and not (cnn_dir / "sqnr.png").exists()
    assert [line for line in result.stderr.splitlines() if "onnxq[plots]" in line] != []
    result = run_cli("quantize", cnn_dir / "model.onnx", "--calib", cnn_dir / "calib", "--val", cnn_dir / "val",
                     "--per-layer", "--no-latency", "--report", cnn_dir / "r.md", "-o", cnn_dir / "q2.onnx")
    assert result.returncode == 0 and 'pip install "onnxq[plots]"' in (cnn_dir / "r.md").read_text()
    assert not (cnn_dir / "r-sqnr.png").exists()
