"""Bad input: clear OnnxqError messages, nothing half-written."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
from torch import nn

from onnxq import qat
from onnxq.errors import OnnxqError
from tests.helpers import run_cli
from tests.qat.conftest import prepared
from tests.qat.nets import Tiny, TinyAttention


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("bad")
    _, _, qmodel = prepared(Tiny)
    qat.export(qmodel, out / "model.onnx", out / "scales.json")
    return out, qmodel


class NotExportable(nn.Module):
    def forward(self, x):
        return torch.linalg.svd(x).S  # no ONNX symbolic in the legacy exporter


def test_export_failure_is_an_onnxq_error(tmp_path):
    with pytest.raises(OnnxqError, match="torch.onnx.export failed for NotExportable"):
        qat.prepare(NotExportable(), torch.randn(1, 3, 4, 4))
    assert list(tmp_path.iterdir()) == []


def test_calibration_batches_of_the_wrong_arity():
    torch.manual_seed(0)
    with pytest.raises(OnnxqError, match="calibration batch has 2 value"):
        qat.prepare(Tiny().eval(), torch.randn(2, 3, 16, 16), calib=[(torch.randn(2, 3, 16, 16), torch.zeros(2))])


def test_export_into_a_missing_folder_writes_nothing(tiny_export, tmp_path):
    _, qmodel = tiny_export
    with pytest.raises(OnnxqError, match="output folder does not exist"):
        qat.export(qmodel, tmp_path / "model.onnx", tmp_path / "nope" / "scales.json")
    assert list(tmp_path.iterdir()) == []


def test_export_after_the_structure_changed(tiny_export, tmp_path):
    _, qmodel = tiny_export
    saved = qmodel.model.fc2
    qmodel.model.fc2 = nn.Linear(32, 6)
    try:
        with pytest.raises(OnnxqError, match=r"differs from the one planned at qat.prepare \(graph outputs were"):
            qat.export(qmodel, tmp_path / "model.onnx", tmp_path / "scales.json")
    finally:
        qmodel.model.fc2 = saved
    assert list(tmp_path.iterdir()) == []


def test_scales_of_another_model(tiny_export, tmp_path):
    """A Tiny scale file on the attention model: only the input name 'x' coincides, the rest is reported."""
    out, _ = tiny_export
    _, _, other = prepared(TinyAttention)
    qat.export(other, tmp_path / "other.onnx", tmp_path / "other.json")
    r = run_cli("quantize", tmp_path / "other.onnx", "--scales", out / "scales.json", "--strict",
                "-o", tmp_path / "q.onnx")
    assert r.returncode == 2 and "onnxq: error:" in r.stderr
    assert not (tmp_path / "q.onnx").exists()
    # the recorded fingerprints differ, which is what a fingerprint check in the importer would compare
    assert json.loads((out / "scales.json").read_text())["model"]["fingerprint"] != \
        json.loads((tmp_path / "other.json").read_text())["model"]["fingerprint"]


def test_channel_count_mismatch(tiny_export, tmp_path):
    out, _ = tiny_export
    doc = json.loads((out / "scales.json").read_text())
    weight = next(n for n, e in doc["tensors"].items() if e["axis"] is not None)
    doc["tensors"][weight]["scale"] = doc["tensors"][weight]["scale"][:-1]
    doc["tensors"][weight]["zero_point"] = doc["tensors"][weight]["zero_point"][:-1]
    (tmp_path / "s.json").write_text(json.dumps(doc))
    r = run_cli("quantize", out / "model.onnx", "--scales", tmp_path / "s.json", "--include-op", "ConvTranspose",
                "-o", tmp_path / "q.onnx")
    assert r.returncode == 2 and "channel" in r.stderr
    assert not (tmp_path / "q.onnx").exists()


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_missing_and_extra_tensors_with_strict(tiny_export, tmp_path, change):
    out, _ = tiny_export
    doc = json.loads((out / "scales.json").read_text())
    if change == "missing":
        doc["tensors"].pop(next(n for n, e in doc["tensors"].items() if e["axis"] is None))
    else:
        doc["tensors"]["not_in_the_model"] = {"dtype": "int8", "axis": None, "scale": 0.1, "zero_point": 0}
    (tmp_path / "s.json").write_text(json.dumps(doc))
    args = ("quantize", out / "model.onnx", "--scales", tmp_path / "s.json", "--include-op", "ConvTranspose",
            "-o", tmp_path / "q.onnx")
    r = run_cli(*args, "--strict")
    assert r.returncode == 2 and ("missing-tensor" in r.stderr or "unknown-tensor" in r.stderr)
    assert not (tmp_path / "q.onnx").exists()
    assert run_cli(*args).returncode == 0  # without --strict: a warning, the tensor stays float / is ignored


def test_control_flow_change_is_detected():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)

        def forward(self, x):
            y = self.a(x) @ self.b(x).transpose(0, 1)
            if x.shape[0] > 2:
                y = y + y @ y
            return y

    torch.manual_seed(0)
    qmodel = qat.prepare(Branchy().eval(), torch.randn(2, 4), calib=[torch.randn(2, 4)])
    assert qmodel(torch.randn(2, 4)).shape == (2, 2)
    with pytest.raises(OnnxqError, match="control flow changed"):
        qmodel(torch.randn(3, 4))


def test_qat_wants_a_prepared_model(tmp_path):
    with pytest.raises(OnnxqError, match="qat.prepare"):
        qat.export(Tiny(), tmp_path / "m.onnx", tmp_path / "s.json")
    with pytest.raises(OnnxqError, match="qat.prepare"):
        qat.finetune(Tiny(), [], nn.functional.mse_loss)


