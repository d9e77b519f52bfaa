"""The lint and the scale reader on Q/DQ models made by other tools: onnxruntime quantize_static, torch fake-quant."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxq.scales.qdq_reader import read_qdq
from onnxq.trt.lint import lint_model
from tests.trt.trt_golden import Graph


def float_model(path) -> str:
    g = Graph()
    x = g.input("x")
    rng = np.random.default_rng(0)
    w1 = g.init("conv1.weight", rng.standard_normal((4, 4, 3, 3)).astype(np.float32))
    b1 = g.init("conv1.bias", np.zeros(4, np.float32))
    y = g.node("Relu", [g.node("Conv", [x, w1, b1], "conv1", pads=[1, 1, 1, 1])], "relu1")
    w2 = g.init("conv2.weight", rng.standard_normal((4, 4, 1, 1)).astype(np.float32))
    y = g.node("Add", [g.node("Conv", [y, w2], "conv2"), x], "add")
    g.output(y)
    model = g.model()
    out = model.graph.output[0].type.tensor_type.shape
    out.Clear()
    for d in (1, 4, 8, 8):
        out.dim.add().dim_value = d
    onnx.save(model, str(path))
    return str(path)


def ort_quantize(tmp_path, name: str, **kwargs) -> onnx.ModelProto:
    quantization = pytest.importorskip("onnxruntime.quantization")

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(1)
            self.batches = iter([{"x": rng.standard_normal((1, 4, 8, 8)).astype(np.float32)} for _ in range(3)])

        def get_next(self):
            return next(self.batches, None)

    out = tmp_path / name
    quantization.quantize_static(float_model(tmp_path / "float.onnx"), str(out), Reader(),
                                 quant_format=quantization.QuantFormat.QDQ, **kwargs)
    return onnx.load(str(out))


def test_ort_uint8_activations_are_errors(tmp_path):
    quantization = pytest.importorskip("onnxruntime.quantization")
    model = ort_quantize(tmp_path, "u8.onnx", activation_type=quantization.QuantType.QUInt8)
    found = {(f.rule, f.subject) for f in lint_model(model) if f.severity == "error"}
    assert found == {("uint8", "x_QuantizeLinear"), ("uint8", "relu1_out_QuantizeLinear"),
                     ("uint8", "conv2_out_QuantizeLinear"), ("uint8", "add_out_QuantizeLinear")}
    entries = read_qdq(model)
    # weights stored quantized ("<name>_quantized") are keyed by the float weight's name
    assert {"conv1.weight", "conv2.weight"} <= set(entries)
    assert entries["conv1.weight"].role == "weight" and entries["x"].role == "activation"
    assert entries["x"].params.dtype == "uint8"


def test_ort_asymmetric_int8_activations_are_errors(tmp_path):
    quantization = pytest.importorskip("onnxruntime.quantization")
    model = ort_quantize(tmp_path, "a8.onnx", activation_type=quantization.QuantType.QInt8)
    found = {(f.rule, f.subject) for f in lint_model(model) if f.severity == "error"}
    assert ("zero-point", "x_QuantizeLinear") in found
    assert {rule for rule, _ in found} == {"zero-point"}


def test_ort_symmetric_int8_per_channel_passes(tmp_path):
    quantization = pytest.importorskip("onnxruntime.quantization")
    model = ort_quantize(tmp_path, "s8.onnx", activation_type=quantization.QuantType.QInt8,
                         weight_type=quantization.QuantType.QInt8, per_channel=True,
                         extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    findings = lint_model(model)
    assert [f for f in findings if f.severity == "error"] == []
    # onnxruntime puts Q/DQ between Conv and Relu and between Conv and the residual Add, and stores the bias as an
    # int32 DequantizeLinear
    assert {(f.rule, f.subject) for f in findings} == {("qdq-blocks-fusion", "conv1_out_QuantizeLinear"),
                                                   ("residual-add", "add"),
                                                   ("qdq-dtype", "conv1.bias_DequantizeLinear")}
    entries = read_qdq(model)
    assert entries["conv1.weight"].params.axis == 0 and entries["conv1.weight"].params.channels == 4
    assert entries["x"].params.symmetric


def test_torch_fake_quant_export(tmp_path):
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 8, 3, padding=1)
            self.fc = torch.nn.Linear(8, 5)

        def forward(self, x):
            x = torch.fake_quantize_per_tensor_affine(x, 0.05, 0, -128, 127)
            w = torch.fake_quantize_per_channel_affine(self.conv.weight, torch.full((8,), 0.01),
                                                       torch.zeros(8, dtype=torch.int32), 0, -128, 127)
            y = functional.relu(functional.conv2d(x, w, self.conv.bias, padding=1))
            y = torch.fake_quantize_per_tensor_affine(y, 0.04, 0, -128, 127).mean((2, 3))
            y = torch.fake_quantize_per_tensor_affine(y, 0.03, 0, -128, 127)
            w = torch.fake_quantize_per_channel_affine(self.fc.weight, torch.full((5,), 0.02),
                                                       torch.zeros(5, dtype=torch.int32), 0, -128, 127)
            return functional.linear(y, w, self.fc.bias)

    torch.manual_seed(0)
    path = tmp_path / "fq.onnx"
    torch.onnx.export(Net().eval(), torch.randn(1, 4, 8, 8), str(path), dynamo=False, opset_version=13,
                      input_names=["x"], output_names=["y"])
    model = onnx.load(str(path))
    assert lint_model(model) == []
    entries = read_qdq(model)
    assert entries["x"].params.scale == np.float32(0.05) and entries["x"].role == "activation"
    assert entries["conv.weight"].params.axis == 0 and entries["conv.weight"].params.channels == 8
    assert entries["fc.weight"].params.channels == 5 and entries["fc.weight"].role == "weight"
