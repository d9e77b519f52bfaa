"""End to end on real torch exports: Conv-BN-ReLU, residual Add, ConvTranspose-BN, Gemm, dynamic batch;
opset 11 and 17. The SQNR floor is justified in the comment of ``SQNR_FLOOR_DB``."""

import numpy as np
import onnx
import pytest

import onnxq
from onnxq.config import Overrides, QuantConfig
from onnxq.trt.lint import lint_model
from onnxq.validate import compare_models
from tests.helpers import op_types

torch = pytest.importorskip("torch")
nn = torch.nn

# Measured on this model (8 min-max calibration batches, 4 validation batches, the calls below): 46.5 dB at
# opset 11 and 17, 46.3 dB with the ConvTranspose quantized too. The floor sits ~11 dB (2 bits) below: loose enough
# for BLAS and onnxruntime-version differences, tight enough for gross errors (a scale off by 4x, an activation
# clipped). It cannot catch a per-channel axis mistake on these random-init weights, whose channels have similar
# ranges (a deliberately wrong Conv axis measured 45.9 dB), so test_plan.py asserts every axis exactly.
SQNR_FLOOR_DB = 35.0


class SmallDetector(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.down = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.up = nn.Sequential(nn.ConvTranspose2d(32, 16, 2, stride=2), nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        y = self.stem(x)
        y = torch.relu(self.block(y) + y)
        y = self.up(self.down(y)) + y
        return self.fc(y.mean((2, 3)))


def export(tmp_path, opset: int) -> str:
    torch.manual_seed(0)
    model = SmallDetector().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics, so folding is really exercised
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    path = tmp_path / f"det{opset}.onnx"
    torch.onnx.export(model, (torch.randn(2, 3, 16, 16),), str(path), opset_version=opset, dynamo=False,
                      input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "batch"}})
    return str(path)


def write_batches(folder, n: int, batch: int, seed: int) -> str:
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        np.save(folder / f"{i:03d}.npy", rng.standard_normal((batch, 3, 16, 16)).astype(np.float32))
    return str(folder)


@pytest.mark.parametrize("opset", [11, 17])
def test_torch_export_quantizes_end_to_end(tmp_path, opset):
    path = export(tmp_path, opset)
    original = open(path, "rb").read()
    calib = write_batches(tmp_path / "calib", 8, 4, seed=1)
    val = write_batches(tmp_path / "val", 4, 3, seed=2)  # another batch size: the batch dim is dynamic
    result = onnxq.quantize(path, calib=calib, output=tmp_path / "q.onnx", val=val)
    assert open(path, "rb").read() == original  # the input is never modified
    ops = op_types(result.model)
    assert "BatchNormalization" not in ops  # Conv-BN and ConvTranspose-BN both folded
    assert ops.count("QuantizeLinear") == 4  # x, stem relu, block relu (shared by 2 readers), fc input
    # 3 Convs, the Gemm, and the residual Add whose skip input shares the block Conv's input Q/DQ
    assert sorted(d.op_type for d in result.plan.nodes if d.quantized) == ["Add", "Conv", "Conv", "Conv", "Gemm"]
    assert [d.op_type for d in result.plan.nodes if not d.quantized] == ["ConvTranspose"]
    report = result.report.validation
    assert report.outputs[0].sqnr_db > SQNR_FLOOR_DB
    assert report.outputs[0].cosine > 0.999
    assert result.report.compression > 1.0
    reloaded = onnx.load(str(tmp_path / "q.onnx"))
    assert reloaded.opset_import[0].version >= 13
    findings = lint_model(reloaded)  # what onnxq writes for TensorRT passes its own TensorRT lint
    assert [f for f in findings if f.severity == "error"] == []


@pytest.mark.parametrize("target,axis", [("tensorrt", 0), ("ort-cpu", 1)])
def test_included_convtranspose_quantizes_on_the_targets_axis(tmp_path, target, axis):
    path = export(tmp_path, 17)
    calib = write_batches(tmp_path / "calib", 4, 4, seed=1)
    config = QuantConfig(target=target, overrides=Overrides.from_flags(include_ops=["ConvTranspose"]))
    result = onnxq.quantize(path, calib=calib, config=config)
    deconv_w = [t for t in result.plan.weights() if t.consumers[0].node.endswith("ConvTranspose")]
    assert len(deconv_w) == 1 and deconv_w[0].axis == axis
    report = compare_models(path, result.model, write_batches(tmp_path / "val", 2, 2, seed=3))
    assert report.outputs[0].sqnr_db > SQNR_FLOOR_DB


def test_same_inputs_give_byte_identical_output(tmp_path):
    path = export(tmp_path, 17)
    calib = write_batches(tmp_path / "calib", 3, 2, seed=1)
    a = onnxq.quantize(path, calib=calib, output=tmp_path / "a.onnx")
    b = onnxq.quantize(path, calib=calib, output=tmp_path / "b.onnx")
    assert a.output_path.read_bytes() == b.output_path.read_bytes()
