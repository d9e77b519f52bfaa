"""A model with nothing to quantize gets one line that says why (exit 2, nothing written)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxq.empty_plan import explain_empty_plan
from tests.helpers import init, make_model, run, run_cli, write_batches


def _branch(name: str, seed: int) -> onnx.GraphProto:
    """Conv(x) -> Relu, reading ``x`` from the enclosing graph (as an exported If branch does)."""
    w = np.random.default_rng(seed).standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", f"{name}_w"], [f"{name}_c"], pads=[1, 1, 1, 1], name=f"{name}_conv"),
             helper.make_node("Relu", [f"{name}_c"], [f"{name}_y"], name=f"{name}_relu")]
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, None)],
                             [init(f"{name}_w", w)])


def branching_model() -> onnx.ModelProto:
    """The whole network inside an If on an integer input (silero-vad's sample-rate branch)."""
    rate = helper.make_tensor("v", TensorProto.INT64, [], [16000])
    nodes = [helper.make_node("Constant", [], ["rate16k"], value=rate),
             helper.make_node("Equal", ["sr", "rate16k"], ["is16k"], name="eq"),
             helper.make_node("If", ["is16k"], ["y"], name="by_rate", then_branch=_branch("then", 0),
                              else_branch=_branch("else", 1))]
    graph = helper.make_graph(nodes, "branching",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
                               helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return make_model(graph)


def test_weighted_nodes_inside_an_if_are_named(tmp_path):
    model = branching_model()
    feeds = {"x": np.ones((1, 3, 8, 8), np.float32), "sr": np.array(16000, np.int64)}
    assert run(model, feeds)[0].shape == (1, 4, 8, 8)  # a valid model onnxruntime runs
    message = explain_empty_plan(model)
    assert "(2 Conv) are all inside the subgraphs of If 'by_rate'" in message
    path, out = tmp_path / "branching.onnx", tmp_path / "branching.int8.onnx"
    onnx.save(model, path)
    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(2):
        np.savez(calib / f"{i}.npz", **feeds)
    r = run_cli("quantize", path, "--calib", calib, "-o", out)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"onnxq: error: {message}"
    assert not out.exists()


def test_excluded_weighted_nodes_point_at_the_flags(tmp_path):
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "one",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [init("w", w)])
    path = tmp_path / "one.onnx"
    onnx.save(make_model(graph), path)
    write_batches(tmp_path / "calib", 2, (1, 3, 8, 8), np.random.default_rng(1))
    r = run_cli("quantize", path, "--calib", tmp_path / "calib", "--exclude-op", "Conv", "-o", tmp_path / "q.onnx")
    assert r.returncode == 2
    assert "none of the main graph's weighted nodes (1 Conv) is planned" in r.stderr
    assert "--exclude-op/--exclude-node" in r.stderr
    assert not (tmp_path / "q.onnx").exists()


def test_a_model_without_weighted_nodes():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    assert explain_empty_plan(make_model(graph)) == (
        "nothing to quantize: the model has no Conv, ConvTranspose, Gemm or MatMul node")


def test_an_integer_quantized_model_is_named_so(tmp_path):
    """A dynamically quantized model (ConvInteger behind DynamicQuantizeLinear, as ddddocr's common_old.onnx) has
    nothing float to quantize: the message says it is quantized already, and the command exits 2 writing nothing."""
    w = np.ones((4, 3, 3, 3), np.int8)
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
             helper.make_node("ConvInteger", ["xq", "w", "xz"], ["acc"], name="conv"),
             helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["accf", "xs"], ["y"])]
    graph = helper.make_graph(nodes, "dynamic", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [onnx.numpy_helper.from_array(w, "w")])
    model = make_model(graph)
    assert explain_empty_plan(model) == (
        "nothing to quantize: the model is integer-quantized already (1 ConvInteger, 1 DynamicQuantizeLinear) and has "
        "no float Conv, ConvTranspose, Gemm or MatMul node; quantize its float original")
    path = tmp_path / "dynamic.onnx"
    onnx.save(model, path)
    write_batches(tmp_path / "calib", 2, (1, 3, 8, 8), np.random.default_rng(1))
    r = run_cli("quantize", path, "--calib", tmp_path / "calib", "-o", tmp_path / "q.onnx")
    assert r.returncode == 2 and "integer-quantized already" in r.stderr and not (tmp_path / "q.onnx").exists()
