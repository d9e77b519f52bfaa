"""``onnxq demo`` end to end: export -> quantize -> validate -> eval (needs torch and the core API)."""

import pytest

pytest.importorskip("torch")
onnxq = pytest.importorskip("onnxq")
if not hasattr(onnxq, "quantize"):
    pytest.skip("onnxq.quantize is not available", allow_module_level=True)

from onnxq.cli import main

pytestmark = [pytest.mark.torch, pytest.mark.slow]


def test_demo_all_models(tmp_path, capsys):
    # one calibration and one validation batch: the run is the same as --fast (4 and 4) or the default (16 and 16)
    assert main(["demo", "--calib-batches", "1", "--val-batches", "1", "--workdir", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    for name in ("pointnext", "centerpoint", "bevfusion", "vit"):
        assert name in table
        assert (tmp_path / name / "model.int8.onnx").is_file()
