"""BatchNormalization folding: exact numerical equivalence and the cases that must not fold."""

import numpy as np
import pytest
from onnx import TensorProto, helper

from onnxq.passes.fold_batchnorm import FoldBatchNorm
from tests.helpers import assert_equivalent, init, make_model, op_types, rng_feeds

RNG = np.random.default_rng(0)


def bn_params(prefix: str, c: int) -> list:
    return [init(f"{prefix}_gamma", RNG.uniform(0.5, 2, c).astype(np.float32)),
            init(f"{prefix}_beta", RNG.standard_normal(c).astype(np.float32)),
            init(f"{prefix}_mean", RNG.standard_normal(c).astype(np.float32)),
            init(f"{prefix}_var", RNG.uniform(0.1, 3, c).astype(np.float32))]


def bn_node(prefix: str, x: str, y: str, eps: float = 1e-3):
    return helper.make_node("BatchNormalization", [x, f"{prefix}_gamma", f"{prefix}_beta", f"{prefix}_mean",
                                                   f"{prefix}_var"], [y], name=f"{prefix}_bn", epsilon=eps)


def conv_bn_model(op: str, cin: int, cout: int, group: int, bias: bool):
    if op == "Conv":
        w = RNG.standard_normal((cout, cin // group, 3, 3)).astype(np.float32)
    else:
        w = RNG.standard_normal((cin, cout // group, 3, 3)).astype(np.float32)
    inputs = ["x", "w"] + (["b"] if bias else [])
    inits = [init("w", w)] + ([init("b", RNG.standard_normal(cout).astype(np.float32))] if bias else [])
    attrs = {"group": group, "pads": [1, 1, 1, 1]}
    if op == "ConvTranspose":
        attrs = {"group": group, "strides": [2, 2]}
    nodes = [helper.make_node(op, inputs, ["y"], name="op", **attrs), bn_node("n", "y", "z"),
             helper.make_node("Relu", ["z"], ["out"], name="relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", cin, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              inits + bn_params("n", cout))
    return make_model(graph)


@pytest.mark.parametrize("op", ["Conv", "ConvTranspose"])
@pytest.mark.parametrize("group,bias", [(1, True), (1, False), (2, True), (4, False)])
def test_conv_and_convtranspose_fold_exactly(op, group, bias):
    model = conv_bn_model(op, cin=8, cout=12, group=group, bias=bias)
    reference = make_model(model.graph)
    result = FoldBatchNorm().call(model)
    assert result.changed
    assert op_types(result.model) == [op, "Relu"]
    assert_equivalent(reference, result.model, rng_feeds(reference, {"x": (2, 8, 8, 8)}))


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("with_c", [True, False])
def test_gemm_fold_with_alpha_beta(trans_b, with_c):
    k, m = 6, 5
    w = RNG.standard_normal((m, k) if trans_b else (k, m)).astype(np.float32)
    inits = [init("w", w)] + ([init("c", RNG.standard_normal(m).astype(np.float32))] if with_c else [])
    gemm = helper.make_node("Gemm", ["x", "w"] + (["c"] if with_c else []), ["y"], name="gemm", transB=trans_b,
                            alpha=0.7, beta=1.3)
    graph = helper.make_graph([gemm, bn_node("n", "y", "out")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              inits + bn_params("n", m))
    model = make_model(graph)
    reference = make_model(model.graph)
    folded = FoldBatchNorm().call(model).model
    assert op_types(folded) == ["Gemm"]
    assert_equivalent(reference, folded, rng_feeds(reference, {"x": (4, k)}))


def test_output_with_two_consumers_is_not_folded():
    model = conv_bn_model("Conv", 4, 4, 1, True)
    model.graph.node.append(helper.make_node("Identity", ["y"], ["y2"], name="tap"))
    model.graph.output.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, None))
    result = FoldBatchNorm().call(model)
    assert not result.changed
    assert "BatchNormalization" in op_types(result.model)
    assert any("other consumers" in n for n in result.notes)


def test_channel_mismatch_is_reported_not_folded():
    # a BN whose channel count differs from the Conv's output channels (broadcasting makes the graph valid for c=1)
    model = conv_bn_model("Conv", 4, 4, 1, True)
    for t in model.graph.initializer:
        if t.name.startswith("n_"):
            t.CopyFrom(init(t.name, np.ones(1, np.float32)))
    result = FoldBatchNorm().call(model)
    assert not result.changed
    assert any("BN has 1 channels but the Conv has 4" in n for n in result.notes)


def test_bn_after_non_weighted_op_stays():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"], name="relu"), bn_node("n", "r", "out")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], bn_params("n", 3))
    result = FoldBatchNorm().call(make_model(graph))
    assert not result.changed and "produced by Relu" in result.notes[0]
