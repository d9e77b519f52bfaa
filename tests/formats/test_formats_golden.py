"""Golden graphs per precision format: the exact Q/DQ each format writes, and that onnxruntime runs it."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxq.config import NodeSetting, Overrides, QuantConfig
from onnxq.errors import OnnxqError
from onnxq.formats import parse_format
from onnxq.graph import default_opset
from onnxq.pipeline import quantize
from onnxq.validate.metrics import sqnr_db
from tests.helpers import init, make_model, run

K, N, C = 256, 16, 64


def golden_model() -> onnx.ModelProto:
    """x (B, K) -> MatMul(W: K x N) -> Relu -> Gemm(transB, G: 8 x N); img (B, C, 6, 6) -> Conv(C -> 8, 3x3)."""
    RNG = np.random.default_rng(11)
    inits = [init("W", (RNG.standard_normal((K, N)) * 0.1).astype(np.float32)),
             init("G", (RNG.standard_normal((8, N)) * 0.2).astype(np.float32)),
             init("Gb", np.zeros(8, np.float32)),
             init("Cw", (RNG.standard_normal((8, C, 3, 3)) * 0.05).astype(np.float32))]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul"),
             helper.make_node("Relu", ["h"], ["hr"], name="relu"),
             helper.make_node("Gemm", ["hr", "G", "Gb"], ["y"], name="gemm", transB=1),
             helper.make_node("Conv", ["img", "Cw"], ["z"], name="conv")]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", K]),
         helper.make_tensor_value_info("img", TensorProto.FLOAT, ["B", C, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], inits)
    return make_model(graph)


def batches(n: int = 3, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((4, K)).astype(np.float32),
             "img": rng.standard_normal((2, C, 6, 6)).astype(np.float32)} for _ in range(n)]


def quantized(fmt: str, target: str = "tensorrt", block_size: int | None = None, **config) -> onnx.ModelProto:
    overrides = Overrides(global_setting=NodeSetting(dtype=fmt, block_size=block_size))
    result = quantize(golden_model(), calib=batches(), config=QuantConfig(target=target, overrides=overrides,
                                                                           **config))
    return result.model


def dq_of(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node
                if n.op_type == "DequantizeLinear" and n.output[0] == f"{tensor}_dequantized")


def attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def init_of(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(i for i in model.graph.initializer if i.name == name)


def q_inputs(model: onnx.ModelProto) -> list[str]:
    return sorted(n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear")


def close_to_float(model: onnx.ModelProto, min_db: float) -> None:
    feeds = batches(1, seed=5)[0]
    ref, got = run(golden_model(), feeds), run(model, feeds)
    for r, g in zip(ref, got, strict=True):
        assert sqnr_db(r, g) > min_db


# format -> (activation Q dtype or None, weight dtype, zero-point dtype of weights, minimum SQNR dB)
CASES = {
    "int8": (TensorProto.INT8, TensorProto.INT8, 25),
    "int8-asym": (TensorProto.INT8, TensorProto.INT8, 25),
    "uint8": (TensorProto.UINT8, TensorProto.INT8, 25),
    "fp8": (TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E4M3FN, 20),
    "w8": (None, TensorProto.INT8, 35),
}


@pytest.mark.parametrize("fmt", sorted(CASES))
def test_per_channel_formats_write_exact_qdq(fmt):
    act_type, w_type, min_db = CASES[fmt]
    model = quantized(fmt)  # the format decides the Q/DQ, whatever the target (tensorrt warns on asymmetric ones)
    assert default_opset(model) >= parse_format(fmt).format.min_opset
    for weight, axis in (("W", 1), ("G", 0), ("Cw", 0)):
        dq = dq_of(model, weight)
        assert attrs(dq) == {"axis": axis}
        assert init_of(model, dq.input[0]).data_type == w_type
        assert init_of(model, dq.input[2]).data_type == w_type  # zero point has the weight's type
        assert not np.any(onnx.numpy_helper.to_array(init_of(model, dq.input[2])).astype(np.float32))
    if act_type is None:
        assert q_inputs(model) == []  # weight-only: no activation Q/DQ at all
    else:
        # symmetric int8 activations (tensorrt's default): the Relu output is read as centred per channel by the 1x1
        # layer's input shift (onnxq/recovery/activation_shift.py); the other formats have a zero point instead
        assert q_inputs(model) == ["hr_shifted" if fmt == "int8" else "hr", "img", "x"]
        for q in (n for n in model.graph.node if n.op_type == "QuantizeLinear"):
            zp = init_of(model, q.input[2])
            assert zp.data_type == act_type and "axis" not in attrs(q)
            zp_value = float(onnx.numpy_helper.to_array(zp).astype(np.float32))
            if fmt in ("int8", "fp8"):
                assert zp_value == 0  # symmetric
            elif q.input[0] == "hr":  # Relu output >= 0: an asymmetric range starts at the grid's minimum
                assert zp_value == {"uint8": 0, "int8-asym": -128}[fmt]
    close_to_float(model, min_db)


@pytest.mark.parametrize("fmt,w_type", [("int4", TensorProto.INT4), ("int4-asym", TensorProto.UINT4)])
@pytest.mark.parametrize("block", [32, 64, 128])
def test_int4_blockwise_along_the_reduction_axis(fmt, w_type, block):
    model = quantized(fmt, block_size=block)
    assert default_opset(model) >= 21 and model.ir_version >= 10
    assert q_inputs(model) == []
    # MatMul W (K, N): blocks along K (axis 0); scale (K / block, N)
    dq = dq_of(model, "W")
    assert attrs(dq) == {"axis": 0, "block_size": block}
    assert init_of(model, dq.input[0]).data_type == w_type
    assert tuple(init_of(model, dq.input[1]).dims) == (K // block, N)
    zp = init_of(model, dq.input[2])
    assert zp.data_type == w_type and tuple(zp.dims) == (K // block, N)
    # Conv (8, 64, 3, 3): blocks along input channels when 64 > block, else per output channel
    dq = dq_of(model, "Cw")
    if C > block:
        assert attrs(dq) == {"axis": 1, "block_size": block}
        assert tuple(init_of(model, dq.input[1]).dims) == (8, C // block, 3, 3)
    else:
        assert attrs(dq) == {"axis": 0}
        assert tuple(init_of(model, dq.input[1]).dims) == (8,)
    # Gemm transB (8, 16): K = 16 <= block: per output channel (axis 0)
    assert attrs(dq_of(model, "G")) == {"axis": 0}
    close_to_float(model, 15)


def test_int4_weights_are_packed_and_smaller():
    model = quantized("int4", block_size=128)
    w = init_of(model, dq_of(model, "W").input[0])
    assert len(w.raw_data) == K * N // 2


def test_mixed_formats_in_one_model():
    overrides = Overrides(by_op={"MatMul": NodeSetting(dtype="int4", block_size=64),
                                 "Conv": NodeSetting(dtype="fp8")})
    model = quantize(golden_model(), calib=batches(), config=QuantConfig(overrides=overrides)).model
    assert attrs(dq_of(model, "W")) == {"axis": 0, "block_size": 64}
    assert init_of(model, dq_of(model, "Cw").input[0]).data_type == TensorProto.FLOAT8E4M3FN
    assert init_of(model, dq_of(model, "G").input[0]).data_type == TensorProto.INT8
    assert q_inputs(model) == ["hr", "img"]  # the MatMul's input stays float (weight-only), the rest quantized
    assert default_opset(model) >= 21
    onnx.checker.check_model(model, full_check=True)
    close_to_float(model, 15)


@pytest.mark.parametrize("fmt", ["int8", "fp8", "int4", "int4-asym"])
def test_float_rest_fp16_runs_with_every_format(fmt):
    """FP16 scales on FP8 and block-wise INT4 DequantizeLinear (FP16 output) run in onnxruntime's CPU provider."""
    model = quantized(fmt, float_rest="fp16")
    assert init_of(model, dq_of(model, "W").input[1]).data_type == TensorProto.FLOAT16
    close_to_float(model, 15)


def test_float_rest_fp16_keeps_io_fp32_and_runs():
    model = quantized("int8", float_rest="fp16")
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [TensorProto.FLOAT] * 2
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [TensorProto.FLOAT] * 2
    # the Relu between MatMul and Gemm runs in FP16; its neighbouring Q/DQ too (FP16 scales)
    assert init_of(model, dq_of(model, "W").input[1]).data_type == TensorProto.FLOAT16
    close_to_float(model, 25)


def test_unknown_format_and_block_are_user_errors():
    with pytest.raises(OnnxqError, match="unknown format"):
        QuantConfig(overrides=Overrides(global_setting=NodeSetting(dtype="int3")))
    with pytest.raises(OnnxqError, match="block size"):
        parse_format("int4-g48")
    with pytest.raises(OnnxqError, match="not block-wise"):
        parse_format("int8-g64")


def test_fp8_weights_round_like_onnx_reference():
    """The stored FP8 weight equals onnx's reference QuantizeLinear (ml_dtypes rounding, saturation)."""
    from onnx.reference import ReferenceEvaluator

    model = quantized("fp8")
    dq = dq_of(model, "W")
    scale = onnx.numpy_helper.to_array(init_of(model, dq.input[1]))
    stored = onnx.numpy_helper.to_array(init_of(model, dq.input[0]))
    w = onnx.numpy_helper.to_array(init_of(golden_model(), "W"))
    q = helper.make_node("QuantizeLinear", ["w", "s", "z"], ["q"], axis=1)
    graph = helper.make_graph([q], "q", [helper.make_tensor_value_info("w", TensorProto.FLOAT, list(w.shape))],
                              [helper.make_tensor_value_info("q", TensorProto.FLOAT8E4M3FN, list(w.shape))],
                              [init("s", scale), helper.make_tensor("z", TensorProto.FLOAT8E4M3FN, [N], [0.0] * N)])
    reference = ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    expected = reference.run(None, {"w": w})[0]
    np.testing.assert_array_equal(np.asarray(stored).view(np.uint8), np.asarray(expected).view(np.uint8))
    assert stored.dtype == ml_dtypes.float8_e4m3fn


def test_formats_from_config_file_and_flags(tmp_path):
    """`[op.MatMul] dtype = "int4"` with `block_size`, and `--format`/`--block-size` on the command line."""
    from tests.helpers import run_cli

    model_path = tmp_path / "m.onnx"
    onnx.save(golden_model(), model_path)
    (tmp_path / "q.toml").write_text('[op.MatMul]\ndtype = "int4"\nblock_size = 64\n\n[op.Conv]\ndtype = "fp8"\n')
    out = tmp_path / "q.onnx"
    result = run_cli("quantize", model_path, "--calib", "random", "--config", tmp_path / "q.toml", "-o", out)
    assert result.returncode == 0, result.stderr
    model = onnx.load(out)
    assert attrs(dq_of(model, "W")) == {"axis": 0, "block_size": 64}
    assert init_of(model, dq_of(model, "Cw").input[0]).data_type == TensorProto.FLOAT8E4M3FN
    out2 = tmp_path / "q2.onnx"
    result = run_cli("quantize", model_path, "--calib", "random", "--format", "int4-asym", "--block-size", "32",
                     "-o", out2)
    assert result.returncode == 0, result.stderr
    assert attrs(dq_of(onnx.load(out2), "W")) == {"axis": 0, "block_size": 32}
    bad = run_cli("quantize", model_path, "--calib", "random", "--format", "int4", "--block-size", "48",
                  "-o", tmp_path / "q3.onnx")
    assert bad.returncode == 2 and "block size" in bad.stderr and not (tmp_path / "q3.onnx").exists()


@pytest.mark.parametrize("fmt", ["w8", "int4"])
def test_weight_only_formats_quantize_no_activation_on_ort_cpu(fmt):
    """ort-cpu's integer regions (QLinear node units) start only at nodes whose activations are quantized."""
    model = quantized(fmt, target="ort-cpu")
    assert q_inputs(model) == []
    close_to_float(model, 15)
