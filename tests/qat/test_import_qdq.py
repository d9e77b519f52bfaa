"""``onnxq import-qdq`` on a torch fake-quant export (torch.fake_quantize_* at opset 13, amax/127 buffers)."""

from __future__ import annotations

import io
import json

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
from torch import nn
from torch.nn import functional as F

from onnxq.config import QuantConfig
from onnxq.pipeline import build_plan
from onnxq.pipeline import prepare as onnx_prepare
from onnxq.scales.io import load_scales
from tests.helpers import run_cli

ACT_AMAX = {"x": 3.0, "h": 2.0, "p": 1.5}


class FakeQuantNet(nn.Module):
    """Conv-BN-ReLU, Conv-ReLU, mean, Linear; pytorch-quantization style: fixed amax buffers, scale = amax/127."""

    def __init__(self, fake_quant: bool = True) -> None:
        super().__init__()
        self.fake_quant = fake_quant
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def calibrate_weights(self) -> None:
        for m in (self.conv1, self.conv2, self.fc):
            m.register_buffer("w_amax", m.weight.detach().abs().reshape(m.weight.shape[0], -1).amax(1))

    def act(self, x: torch.Tensor, key: str) -> torch.Tensor:
        return torch.fake_quantize_per_tensor_affine(x, ACT_AMAX[key] / 127, 0, -128, 127) if self.fake_quant else x

    def weight(self, m: nn.Module) -> torch.Tensor:
        if not self.fake_quant:
            return m.weight
        zp = torch.zeros(m.weight.shape[0], dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(m.weight, m.w_amax / 127, zp, 0, -128, 127)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(F.conv2d(self.act(x, "x"), self.weight(self.conv1), None, 1, 1)))
        x = torch.relu(F.conv2d(self.act(x, "h"), self.weight(self.conv2), self.conv2.bias, 1, 1))
        return F.linear(self.act(x.mean((2, 3)), "p"), self.weight(self.fc), self.fc.bias)


def _export(net: nn.Module, path, opset: int) -> None:
    buf = io.BytesIO()
    torch.onnx.export(net.eval(), (torch.randn(2, 3, 8, 8),), buf, dynamo=False, opset_version=opset,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    path.write_bytes(buf.getvalue())


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    out = tmp_path_factory.mktemp("fq")
    torch.manual_seed(0)
    net = FakeQuantNet()
    with torch.no_grad():
        net.bn1.running_mean.uniform_(-0.2, 0.2)
        net.bn1.running_var.uniform_(0.5, 2.0)
        net.bn1.weight.uniform_(-1.5, 1.5)  # negative gammas too
    net.calibrate_weights()
    _export(net, out / "qdq.onnx", 13)
    net.fake_quant = False
    _export(net, out / "fp32.onnx", 17)
    return out, net


def test_without_fp32_keys_are_the_qdq_model_names(exports):
    out, net = exports
    r = run_cli("import-qdq", out / "qdq.onnx", "-o", out / "raw.json")
    assert r.returncode == 0, r.stderr
    table = load_scales(out / "raw.json")
    assert table["x"].scale == np.float32(3.0 / 127)
    np.testing.assert_allclose(table["conv1.weight"].scale, (net.conv1.w_amax / 127).numpy(), rtol=1e-6)
    assert table["conv1.weight"].axis == 0


def test_with_fp32_keys_follow_the_fp32_plan(exports):
    out, net = exports
    r = run_cli("import-qdq", out / "qdq.onnx", "-o", out / "mapped.json", "--fp32", out / "fp32.onnx", "--strict")
    assert r.returncode == 0, r.stderr
    table = load_scales(out / "mapped.json")
    prepared_model, _ = onnx_prepare(onnx.load(out / "fp32.onnx"), QuantConfig())
    plan = build_plan(prepared_model, QuantConfig())
    assert list(table) == list(plan.tensors)  # every planned tensor, FP32 names
    acts = sorted(float(table[t.name].scale) for t in plan.activations())
    assert acts == sorted(np.float32(a / 127) for a in ACT_AMAX.values())
    # conv1's weight: the FP32 export fused BN into it, so the raw scale is carried through the fold
    s = (net.bn1.weight / torch.sqrt(net.bn1.running_var + net.bn1.eps)).detach().abs().numpy()
    folded = [t.name for t in plan.weights() if t.channels == 8 and table[t.name].scale.shape == (8,)
              and np.allclose(table[t.name].scale, net.conv1.w_amax.numpy() / 127 * s, rtol=1e-5)]
    assert len(folded) == 1
    assert "fc.weight" in table and np.allclose(table["fc.weight"].scale, net.fc.w_amax.numpy() / 127, rtol=1e-6)
    doc = json.loads((out / "mapped.json").read_text())
    assert doc["model"]["fingerprint"]


def test_quantize_with_imported_scales_matches_the_fake_quant_model(exports):
    out, net = exports
    r = run_cli("quantize", out / "fp32.onnx", "--scales", out / "mapped.json", "--strict", "-o", out / "q.onnx")
    assert r.returncode == 0, r.stderr
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    x = torch.randn(3, 3, 8, 8)
    got = ort.InferenceSession(str(out / "q.onnx"), so, providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy()})[0]
    net.fake_quant = True
    with torch.no_grad():
        expected = net(x).numpy()
    net.fake_quant = False
    # torch quantizes the weights with [-128, 127] and onnxq with [-127, 127]; the grids agree inside
    np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max() + 1e-6, rtol=1e-3)


def test_fp32_with_qdq_is_refused(exports):
    out, _ = exports
    r = run_cli("import-qdq", out / "qdq.onnx", "-o", out / "bad.json", "--fp32", out / "qdq.onnx")
    assert r.returncode == 2 and "float export" in r.stderr
    assert not (out / "bad.json").exists()


def test_model_without_qdq_is_refused(exports):
    out, _ = exports
    r = run_cli("import-qdq", out / "fp32.onnx", "-o", out / "bad.json")
    assert r.returncode == 2 and "no int8/uint8" in r.stderr
    assert not (out / "bad.json").exists()
