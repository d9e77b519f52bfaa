"""--dynamic: MatMul weights INT8 ahead of time, activations quantized at run time, no calibration data."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxq.dynamic import quantize_dynamic
from onnxq.insert.dynamic_matmul import DynamicQuantizeMatMul
from onnxq.validate.latency import op_counts, optimized_model
from tests.helpers import make_model, run, run_cli


def mlp() -> onnx.ModelProto:
    """x (B, T, 32) -> MatMul(W1) + b -> Relu -> MatMul(W2) -> y; one MatMul of two activations stays float."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((32, 64)) * 0.2).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal(64) * 0.1).astype(np.float32), "b1"),
             numpy_helper.from_array((rng.standard_normal((64, 32)) * 0.2).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Add", ["h", "b1"], ["hb"], name="bias"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["o"], name="mm2"),
             helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1], name="t"),
             helper.make_node("MatMul", ["x", "xt"], ["gram"], name="gram")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8, 32])],
                              [helper.make_tensor_value_info("o", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("gram", TensorProto.FLOAT, None)], inits)
    return make_model(graph)


def _sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2)))


def test_constant_weight_matmuls_become_integer_and_fuse():
    model = mlp()
    quantized = DynamicQuantizeMatMul().call(onnx.ModelProto.FromString(model.SerializeToString())).model
    ops = [n.op_type for n in quantized.graph.node]
    assert ops.count("DynamicQuantizeLinear") == 2 and ops.count("MatMulInteger") == 2
    assert ops.count("MatMul") == 1  # the activation x activation MatMul has no constant weight
    weights = {i.name: numpy_helper.to_array(i) for i in quantized.graph.initializer}
    assert "w1" not in weights and weights["mm1_W_quantized"].dtype == np.int8
    assert weights["mm1_W_scale"].shape == (64,)  # per output column
    # onnxruntime fuses each chain into one DynamicQuantizeMatMul
    counts = op_counts(optimized_model(quantized))
    assert counts.get("com.microsoft.DynamicQuantizeMatMul") == 2 and "MatMulInteger" not in counts
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 8, 32)).astype(np.float32)}
    ref, got = run(model, feeds), run(quantized, feeds)
    assert _sqnr(ref[0], got[0]) > 30
    np.testing.assert_array_equal(ref[1], got[1])


def test_quantize_dynamic_needs_no_data_and_refuses_models_without_weights(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp(), path)
    result = quantize_dynamic(str(path), tmp_path / "mlp.dyn.onnx")
    assert result.output_path.exists() and result.output_bytes < result.input_bytes
    no_weights = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "g",
                                   [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 2]) for n in "ab"],
                                   [helper.make_tensor_value_info("c", TensorProto.FLOAT, None)])
    onnx.save(make_model(no_weights), tmp_path / "none.onnx")
    r = run_cli("quantize", tmp_path / "none.onnx", "--dynamic", "-o", tmp_path / "none.dyn.onnx")
    assert r.returncode == 2 and "nothing to quantize dynamically" in r.stderr
    assert not (tmp_path / "none.dyn.onnx").exists()


def test_cli_dynamic_with_validation_and_latency(tmp_path):
    onnx.save(mlp(), tmp_path / "mlp.onnx")
    (tmp_path / "val").mkdir()
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "val" / "000.npz", x=rng.standard_normal((2, 8, 32)).astype(np.float32))
    r = run_cli("quantize", tmp_path / "mlp.onnx", "--dynamic", "-o", tmp_path / "out.onnx", "--val",
                tmp_path / "val", "--threads", "1", "--latency-runs", "3", "--latency-seconds", "0")
    assert r.returncode == 0, r.stderr
    assert "dynamically quantized 2 MatMul node(s)" in r.stdout
    assert "SQNR" in r.stdout and "speed" in r.stdout and "FP32" in r.stdout
