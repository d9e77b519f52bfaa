"""Learned scales round-trip exactly: qat.export -> JSON -> onnxq quantize --scales -> the Q/DQ model's scales."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from onnxq import qat
from onnxq.graph import fingerprint, load_model
from onnxq.pipeline import prepare as onnx_prepare
from onnxq.scales.io import load_scales
from onnxq.scales.qdq_reader import read_qdq_scales
from tests.helpers import run_cli
from tests.qat.conftest import WITH_CONVTRANSPOSE, prepared, train_steps
from tests.qat.nets import Tiny


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("qat")
    _, _, qmodel = prepared(Tiny, learn_scales=True, weight_scales="learned")
    train_steps(qmodel)
    qat.export(qmodel, out / "model.onnx", out / "qat_scales.json")
    return out, qmodel


def test_json_holds_the_learned_scales_exactly(exported):
    out, qmodel = exported
    learned = qmodel.scale_table()
    loaded = load_scales(out / "qat_scales.json")
    assert list(loaded) == list(learned)  # plan order, every planned tensor
    for name, params in learned.items():
        assert loaded[name].equals(params), name
    ptq = qmodel.state.ptq_scales
    assert any(not learned[n].equals(ptq[n]) for n in learned)  # training moved them


def test_json_records_the_prepared_model_fingerprint(exported):
    out, _ = exported
    doc = json.loads((out / "qat_scales.json").read_text())
    prepared_model, _ = onnx_prepare(load_model(out / "model.onnx"), WITH_CONVTRANSPOSE)
    assert doc["model"]["fingerprint"] == fingerprint(prepared_model)


def test_onnxq_quantize_with_the_scales_inserts_exactly_them(exported):
    out, qmodel = exported
    result = run_cli("quantize", out / "model.onnx", "--scales", out / "qat_scales.json", "--strict",
                     "--include-op", "ConvTranspose", "-o", out / "model.int8.onnx")
    assert result.returncode == 0, result.stderr
    inserted = read_qdq_scales(onnx.load(out / "model.int8.onnx"))
    learned = qmodel.scale_table()
    assert set(inserted) == set(learned)
    for name, params in learned.items():
        assert inserted[name].scale.dtype == np.float32
        assert np.array_equal(inserted[name].scale, params.scale), name  # float32-exact
        assert inserted[name].axis == params.axis


def test_exported_fp32_model_holds_the_fine_tuned_weights(exported):
    out, qmodel = exported
    import onnxruntime as ort

    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = qmodel.model(x).numpy()
    got = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_finetune_runs_with_warmup_kd_and_bn_freeze():
    _, _, qmodel = prepared(Tiny)
    g = torch.Generator().manual_seed(3)
    data = [(torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 5, (4,), generator=g)) for _ in range(3)]
    config = qat.FinetuneConfig(epochs=2, lr=1e-3, warmup_epochs=1, kd_alpha=0.5, freeze_bn_epoch=1)
    bn = qmodel.model.stem[1]
    history = qat.finetune(qmodel, data, torch.nn.functional.cross_entropy, config)
    assert history["steps"] == 6 and all(np.isfinite(history["epoch_loss"]))
    assert qmodel.quant_enabled and not bn.training
    qmodel.train()
    assert not bn.training  # stays frozen after train()


def test_finetune_reports_progress_per_step():
    import io

    _, _, qmodel = prepared(Tiny)
    g = torch.Generator().manual_seed(3)
    data = [(torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 5, (4,), generator=g)) for _ in range(3)]
    reports = []
    qat.finetune(qmodel, data, torch.nn.functional.cross_entropy, qat.FinetuneConfig(epochs=2, lr=1e-3),
                 progress=reports.append)
    assert [r.step for r in reports] == [1, 2, 3, 4, 5, 6] and {r.total for r in reports} == {6}
    assert reports[-1].eta == 0 and reports[0].eta > 0 and all(np.isfinite(r.loss) for r in reports)
    stream = io.StringIO()  # not a terminal: plain lines, the last one always
    console = qat.ConsoleProgress(stream, interval=3600)
    for r in reports:
        console(r)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("QAT step 1/6 (epoch 0), loss") and lines[-1].startswith("QAT step 6/6 (epoch 1)")
    assert len(lines) == 2
