"""``onnxq models`` and ``onnxq demo`` through the command line (in process)."""

import pytest

from tests.helpers import run_cli


def test_models_list():
    out = run_cli("models", "list")
    assert out.returncode == 0, out.stderr
    for name in ("pointnext", "centerpoint", "bevfusion", "vit"):
        assert name in out.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("models", "export", "nope", "-o", "x"),
        ("models", "eval", "nope", "m.onnx", "--data", "d"),
        ("demo", "--models", "pointnext,nope"),
    ],
)
def test_unknown_model_is_one_line_exit_2(args, tmp_path):
    out = run_cli(*args, cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown model 'nope'" in lines[0], out.stderr
    assert list(tmp_path.iterdir()) == []


def test_eval_missing_data_is_a_user_error(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"")
    out = run_cli("models", "eval", "vit", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "none"))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.mark.torch
def test_export_then_eval(tmp_path):
    pytest.importorskip("torch")
    target = tmp_path / "vit"  # the quickest of the reference models to export
    out = run_cli("models", "export", "vit", "-o", str(target), "--calib-batches", "2", "--val-batches", "2")
    assert out.returncode == 0, out.stderr
    assert (target / "model.onnx").is_file()
    assert sorted(p.name for p in (target / "calib").glob("*.npz")) == ["000.npz", "001.npz"]
    assert sorted(p.name for p in (target / "val" / "labels").glob("*.npz")) == ["000.npz", "001.npz"]
    out = run_cli("models", "eval", "vit", str(target / "model.onnx"), "--data", str(target / "val"))
    assert out.returncode == 0, out.stderr
    assert "AbsRel = " in out.stdout and "on 32 samples" in out.stdout


@pytest.mark.torch
def test_export_into_a_file_is_refused(tmp_path):
    pytest.importorskip("torch")
    target = tmp_path / "file"
    target.write_text("x")
    out = run_cli("models", "export", "pointnext", "-o", str(target))
    assert out.returncode == 2 and "not a folder" in out.stderr
    assert target.read_text() == "x"
