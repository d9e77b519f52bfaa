"""The ort-cpu target's Q/DQ placement fuses into onnxruntime's integer kernels.

Each test quantizes a small graph with ``--target ort-cpu``, lets onnxruntime optimize it exactly as a deployment
would (every optimization on) and reads the optimized graph it writes (``SessionOptions.optimized_model_filepath``):
which node units became QLinear kernels and which float ops and Q/DQ conversions remain. Speed is not asserted.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxq.config import Overrides, QuantConfig
from onnxq.pipeline import quantize
from onnxq.validate.latency import op_counts, optimized_model
from tests.helpers import make_model, run

MS = "com.microsoft."


def _weights(rng: np.random.Generator, name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)


def _calib(shape: tuple[int, ...], n: int = 4, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def _fused(model: onnx.ModelProto, **overrides) -> tuple[dict[str, int], onnx.ModelProto]:
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    config = QuantConfig(target="ort-cpu", **overrides)
    quantized = quantize(model, calib=_calib(shape), config=config).model
    return op_counts(optimized_model(quantized)), quantized


def conv_relu_add_conv() -> onnx.ModelProto:
    """x -> Conv -> Relu -> Conv -> Add(skip = the Relu output) -> Relu -> Conv -> Sigmoid -> Flatten -> Gemm."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1] * 4),
        helper.make_node("Add", ["c2", "r1"], ["sum"], name="add"),
        helper.make_node("Relu", ["sum"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="conv3", pads=[1] * 4, strides=[2, 2]),
        helper.make_node("Sigmoid", ["c3"], ["s"], name="sig"),
        helper.make_node("Flatten", ["s"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    inits = [_weights(rng, "w1", 8, 4, 3, 3), _weights(rng, "b1", 8), _weights(rng, "w2", 8, 8, 3, 3),
             _weights(rng, "b2", 8), _weights(rng, "w3", 4, 8, 3, 3), _weights(rng, "b3", 4),
             _weights(rng, "wf", 5, 4 * 6 * 6), _weights(rng, "bf", 5)]
    graph = helper.make_graph(nodes, "conv_relu_add_conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                          [1, 4, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return make_model(graph)


def test_conv_relu_add_conv_runs_as_one_integer_chain():
    counts, quantized = _fused(conv_relu_add_conv())
    assert counts.get(MS + "QLinearConv") == 3
    assert counts.get(MS + "QLinearAdd") == 1
    assert counts.get(MS + "QLinearSigmoid") == 1
    assert counts.get(MS + "QGemm") == 1  # float output (it writes the graph output): QGemm needs no Q after it
    # the Relus vanished into their producers' node units (Q with zero point 0); nothing runs in float but the
    # Flatten, which moves uint8 data
    for float_op in ("Conv", "Relu", "Add", "Sigmoid", "Gemm", "FusedConv"):
        assert float_op not in counts and MS + float_op not in counts, counts
    # one conversion, at the model input
    assert counts.get("QuantizeLinear") == 1 and "DequantizeLinear" not in counts
    relu_q = [n for n in quantized.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in ("r1", "r2")]
    zero_points = {i.name: numpy_helper.to_array(i) for i in quantized.graph.initializer}
    assert len(relu_q) == 2 and all(int(zero_points[q.input[2]]) == 0 for q in relu_q)


def test_tensorrt_target_keeps_its_placement():
    """The tensorrt target still quantizes only the inputs of weighted ops and the residual Add (no outputs)."""
    model = conv_relu_add_conv()
    plan = quantize(model, calib=_calib((1, 4, 12, 12)), config=QuantConfig(target="tensorrt")).plan
    assert sorted(t.name for t in plan.activations()) == ["f", "r1", "r2", "s", "x"]


def test_concat_and_pool_fuse():
    """Two Conv branches -> Concat -> MaxPool -> GlobalAveragePool -> Conv -> Flatten -> MatMul: QLinearConcat, an
    integer MaxPool and QLinearGlobalAveragePool between QLinearConvs."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="conv_a", pads=[1] * 4),
        helper.make_node("Conv", ["x", "wb"], ["b"], name="conv_b"),
        helper.make_node("Concat", ["a", "b"], ["cat"], name="cat", axis=1),
        helper.make_node("MaxPool", ["cat"], ["mp"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["mp"], ["gap"], name="gap"),
        helper.make_node("Conv", ["gap", "wc"], ["fc"], name="fc"),
        helper.make_node("Flatten", ["fc"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "wd"], ["y"], name="head"),
    ]
    inits = [_weights(rng, "wa", 6, 4, 3, 3), _weights(rng, "wb", 2, 4, 1, 1), _weights(rng, "wc", 3, 8, 1, 1),
             _weights(rng, "wd", 3, 5)]
    graph = helper.make_graph(nodes, "concat", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = make_model(graph)
    counts, quantized = _fused(model)
    assert counts.get(MS + "QLinearConv") == 3
    assert counts.get(MS + "QLinearConcat") == 1
    assert counts.get(MS + "QLinearGlobalAveragePool") == 1
    # an integer MaxPool (in NCHW or, after onnxruntime's layout transform, NHWC), no float MaxPool between DQ/Q
    assert counts.get("MaxPool", 0) + counts.get(MS + "NhwcMaxPool", 0) == 1
    # MaxPool keeps its input's scale: its Q/DQ pair is dropped, not requantized
    q_of = {n.input[0]: n for n in quantized.graph.node if n.op_type == "QuantizeLinear"}
    values = {i.name: numpy_helper.to_array(i) for i in quantized.graph.initializer}
    assert values[q_of["mp"].input[1]] == values[q_of["cat"].input[1]]
    assert values[q_of["mp"].input[2]] == values[q_of["cat"].input[2]]
    # the MatMul writing the graph output fuses without a Q after it; nothing is dequantized at run time
    assert counts.get(MS + "MatMulIntegerToFloat") == 1
    assert "DequantizeLinear" not in counts and not any(k.endswith("Conv") and "QLinear" not in k for k in counts)


def test_matmul_fuses_into_integer_kernel():
    """x -> MatMul(W1) -> Relu -> MatMul(W2) (graph output): QLinearMatMul then MatMulIntegerToFloat."""
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [_weights(rng, "w1", 16, 32), _weights(rng, "w2", 32, 8)])
    counts, quantized = _fused(make_model(graph))
    assert counts.get("QLinearMatMul", 0) + counts.get(MS + "QLinearMatMul", 0) == 1
    assert counts.get(MS + "MatMulIntegerToFloat") == 1
    assert "MatMul" not in counts and "Relu" not in counts
    feeds = {"x": np.random.default_rng(3).standard_normal((4, 16)).astype(np.float32)}
    ref, got = run(make_model(graph), feeds)[0], run(quantized, feeds)[0]
    assert 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2)) > 25


def test_excluded_op_is_not_planned():
    """An excluded Add gets no Q/DQ of its own: its output is not quantized and the Relu after it stays."""
    config = QuantConfig(target="ort-cpu", overrides=Overrides.from_flags(exclude_ops=["Add"]))
    plan = quantize(conv_relu_add_conv(), calib=_calib((1, 4, 12, 12)), config=config).plan
    decided = {d.node: d.quantized for d in plan.nodes}
    assert not decided.get("add") and "relu2" not in decided
    assert "sum" not in plan.tensors and "r2" in plan.tensors  # r2 feeds conv3, which still needs it quantized


def test_gemm_with_bias_fuses_into_qgemm():
    """Flatten -> Gemm(bias) -> Relu -> Gemm(bias) (graph output): the biases are stored int32 behind a DQ, so both
    Gemms become QGemm (the last one with a float output) and no weight is dequantized at run time."""
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2", transB=1)]
    graph = helper.make_graph(nodes, "fc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [_weights(rng, "w1", 32, 16), _weights(rng, "b1", 32), _weights(rng, "w2", 8, 32),
                               _weights(rng, "b2", 8)])
    model = make_model(graph)
    counts, quantized = _fused(model)
    assert counts.get(MS + "QGemm") == 2 and "Gemm" not in counts and "Relu" not in counts
    assert "DequantizeLinear" not in counts
    bias_dq = [n for n in quantized.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("b")]
    assert len(bias_dq) == 2
    feeds = {"x": np.random.default_rng(5).standard_normal((1, 4, 2, 2)).astype(np.float32)}
    ref, got = run(model, feeds)[0], run(quantized, feeds)[0]
    assert 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2)) > 20


def test_head_after_the_last_weighted_op_stays_float():
    """Conv trunk -> [box Conv, cls Conv -> Sigmoid] -> Concat = graph output: the head Convs feed only the float tail
    (QLinearConcat would put box coordinates and probabilities on one scale), so they, the Sigmoid and the Concat
    stay float with float weights; the trunk Conv still fuses."""
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("Conv", ["x", "w0"], ["t"], name="trunk"),
             helper.make_node("Relu", ["t"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "wa"], ["box"], name="box"),
             helper.make_node("Conv", ["r", "wb"], ["logit"], name="cls"),
             helper.make_node("Sigmoid", ["logit"], ["score"], name="sig"),
             helper.make_node("Concat", ["box", "score"], ["y"], name="cat", axis=1)]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [_weights(rng, "w0", 8, 4, 1, 1), _weights(rng, "wa", 4, 8, 1, 1),
                               _weights(rng, "wb", 2, 8, 1, 1)])
    counts, quantized = _fused(make_model(graph))
    # one DQ of the trunk output per float head Conv (onnxruntime gives each node unit its own DQ)
    assert counts.get(MS + "QLinearConv") == 1 and counts.get("DequantizeLinear") == 2
    assert {i.name for i in quantized.graph.initializer} >= {"wa", "wb"}  # head weights stay float
