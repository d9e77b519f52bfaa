"""QAT end to end on torchvision-architecture models (written in tests/qat/torchvision_nets.py, fresh torchvision
initialisation): prepare -> finetune -> verify -> export -> ``onnxq quantize --scales --strict``."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from onnxq import qat
from onnxq.qat.structure import unshare_initializers
from onnxq.scales.qdq_reader import read_qdq_scales
from tests.helpers import run_cli
from tests.qat import torchvision_nets as tv

MODELS = {"resnet": (tv.ResNet, 32), "mobilenet_v3": (tv.MobileNetV3, 32), "vit": (tv.VisionTransformer, 16)}


def _data(size: int, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, size, size, generator=g) for _ in range(n)]


@pytest.fixture(scope="module", params=sorted(MODELS))
def finetuned(request, tmp_path_factory):
    torch.set_num_threads(1)
    cls, size = MODELS[request.param]
    torch.manual_seed(0)
    net = cls().eval()
    example = torch.randn(2, 3, size, size)
    qmodel = qat.prepare(net, example, calib=_data(size, 2, 1), spec=qat.ExportSpec(("x",), ("y",)), strict=True)
    g = torch.Generator().manual_seed(2)
    loader = [(x, torch.randint(0, 10, (4,), generator=g)) for x in _data(size, 4, 3)]
    qat.finetune(qmodel, loader, torch.nn.functional.cross_entropy, qat.FinetuneConfig(epochs=1, lr=1e-2))
    out = tmp_path_factory.mktemp(request.param)
    qat.export(qmodel, out / "model.onnx", out / "qat_scales.json")
    return request.param, qmodel, out


def test_every_planned_tensor_is_mapped(finetuned):
    _, qmodel, _ = finetuned
    assert qmodel.mapping.unmapped == {}
    plan = qmodel.state.plan
    assert set(qmodel.mapping.activations) == {t.name for t in plan.calibrated_activations()}


def test_verify_after_finetuning(finetuned):
    _, qmodel, _ = finetuned
    assert qat.verify(qmodel) <= 1e-6


def test_onnxq_quantize_strict_takes_the_exported_scales(finetuned):
    _, qmodel, out = finetuned
    result = run_cli("quantize", out / "model.onnx", "--scales", out / "qat_scales.json", "--strict",
                     "-o", out / "model.int8.onnx")
    assert result.returncode == 0, result.stderr
    inserted = read_qdq_scales(onnx.load(out / "model.int8.onnx"))
    learned = qmodel.scale_table()
    assert set(inserted) == set(learned)
    for name, params in learned.items():
        assert np.array_equal(inserted[name].scale, params.scale), name


def test_resnet_shares_equal_biases_before_and_not_after_finetuning():
    """The exporter shares the all-zero fused biases of a fresh ResNet through Identity nodes; fine-tuning makes them
    differ, and the structure check must not mistake that for a change of the model."""
    torch.manual_seed(0)
    net = tv.ResNet().eval()
    x = torch.randn(2, 3, 32, 32)
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(net, (x,), buf, dynamo=False, opset_version=17, do_constant_folding=True)
    raw = onnx.load_from_string(buf.getvalue())
    assert sum(n.op_type == "Identity" for n in raw.graph.node) > 0
    assert unshare_initializers(raw) > 0 and not any(n.op_type == "Identity" for n in raw.graph.node)

    qmodel = qat.prepare(net, x, calib=_data(32, 1, 1), spec=qat.ExportSpec(("x",), ("y",)))
    bn_biases = [m.bias.detach().clone() for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(b, torch.zeros_like(b)) for b in bn_biases)
    loader = [(x, torch.randint(0, 10, (4,))) for x in _data(32, 2, 3)]
    qat.finetune(qmodel, loader, torch.nn.functional.cross_entropy, qat.FinetuneConfig(lr=1e-2))
    assert not any(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in net.modules()
                   if isinstance(m, torch.nn.BatchNorm2d))
    assert qat.verify(qmodel) <= 1e-6  # re-exported without sharing: same structure, same names
