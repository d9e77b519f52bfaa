"""Export of the reference models: ONNX runs in onnxruntime, matches torch, reproduces the trained metric."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from onnxq.errors import OnnxqError
from onnxq.models import registry
from onnxq.models.evaluate import evaluate_onnx, load_data
from onnxq.models.export import export_model

pytestmark = pytest.mark.torch
NAMES = list(registry.MODELS)
TRAIN_LOG_PATH = registry.WEIGHTS_DIR / "train_log.json"  # written by scripts/train_reference_models.py


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    return {name: export_model(name, root / name, calib_batches=2, calib_batch_size=4) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_weights_are_small(name):
    assert registry.get_model(name).weights_path.stat().st_size < 2_000_000


@pytest.mark.parametrize("name", NAMES)
def test_export_layout(name, exported):
    res = exported[name]
    info = registry.get_model(name)
    assert res.model_path.name == "model.onnx"
    assert [p.name for p in sorted(res.calib_dir.glob("*.npz"))] == ["000.npz", "001.npz"]
    vals = sorted(res.val_dir.glob("*.npz"))
    assert len(vals) == 16
    assert [p.name for p in sorted(res.labels_dir.glob("*.npz"))] == [p.name for p in vals]
    with np.load(res.calib_dir / "000.npz") as z:
        assert sorted(z.files) == sorted(info.inputs)
        assert all(z[k].dtype == np.float32 and z[k].shape[0] == 4 for k in z.files)


@pytest.mark.parametrize("name", NAMES)
def test_onnx_matches_torch_with_dynamic_batch(name, exported):
    info = registry.get_model(name)
    net = registry.load_network(name)
    sess = ort.InferenceSession(str(exported[name].model_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == list(info.inputs)
    assert [o.name for o in sess.get_outputs()] == list(info.outputs)
    for batch in (1, 3):
        inputs, _ = info.make_batch(registry.data_rng(name, "test", 7), batch)
        with torch.no_grad():
            ref = net(*[torch.from_numpy(inputs[k]) for k in info.inputs])
        ref = ref if isinstance(ref, tuple) else (ref,)
        got = sess.run(None, inputs)
        for r, g, n in zip(ref, got, info.outputs):
            r = r.numpy()
            assert g.shape == r.shape, n
            np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(r).max())), err_msg=n)


@pytest.mark.parametrize("name", NAMES)
def test_fp32_onnx_reproduces_trained_metric_and_beats_baseline(name, exported):
    res = evaluate_onnx(name, exported[name].model_path, exported[name].val_dir)
    assert res.samples == 256
    if TRAIN_LOG_PATH.is_file():  # the training log is in the repository, not in the wheel
        log = json.loads(TRAIN_LOG_PATH.read_text())[name]
        assert res.value == pytest.approx(log["val_metric"], abs=2e-3)
        assert res.baseline == pytest.approx(log["baseline"], abs=2e-3)
    if res.higher_is_better:
        assert res.value > res.baseline + 0.3
    else:
        assert res.value < 0.7 * res.baseline


def test_export_is_deterministic(exported, tmp_path):
    again = export_model("vit", tmp_path / "again", calib_batches=2, calib_batch_size=4, val_batches=1)
    assert again.model_path.read_bytes() == exported["vit"].model_path.read_bytes()
    pairs = list(zip(load_data(again.val_dir), load_data(exported["vit"].val_dir)))
    assert pairs
    for a, b in pairs:
        np.testing.assert_array_equal(a[1]["image"], b[1]["image"])
        np.testing.assert_array_equal(a[2]["depth"], b[2]["depth"])


def test_export_refuses_a_file_as_output_dir(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(OnnxqError, match="not a folder"):
        export_model("pointnext", target)
    assert target.read_text() == "x"
