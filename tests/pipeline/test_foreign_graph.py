"""A tf2onnx/paddle2onnx-style graph: opset 11, Constant-node weights, unnamed dynamic dims, an If node whose
branches read an outer tensor. Quantizes without crashing; the If insides stay float."""

import numpy as np
import onnx
from onnx import TensorProto, helper

import onnxq
from onnxq.validate import compare_models
from tests.helpers import make_model

RNG = np.random.default_rng(4)


def const(name, array):
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(
        name, TensorProto.FLOAT, array.shape, array.astype(np.float32).ravel()))


def foreign_model() -> onnx.ModelProto:
    w1 = RNG.standard_normal((8, 3, 3, 3)) * 0.3
    w2 = RNG.standard_normal((8, 16)) * 0.3
    then_g = helper.make_graph([helper.make_node("Relu", ["feat"], ["t_out"])], "then", [],
                               [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, None)])
    else_g = helper.make_graph([helper.make_node("Neg", ["feat"], ["e_out"])], "else", [],
                               [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, None)])
    nodes = [
        const("w1", w1), const("w2", w2), const("zero", np.zeros(())),
        helper.make_node("Conv", ["x", "w1"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["feat"], name="flatten"),
        helper.make_node("ReduceSum", ["feat"], ["s"], name="sum", keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"], name="gt"),
        helper.make_node("If", ["cond"], ["branch"], name="if", then_branch=then_g, else_branch=else_g),
        helper.make_node("MatMul", ["branch", "w2"], ["y"], name="matmul"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, None, None])  # unnamed dynamic dims
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 16])
    return make_model(helper.make_graph(nodes, "foreign", [x], [y]), opset=11)


def test_foreign_graph_quantizes_and_if_stays_float(tmp_path):
    model = foreign_model()
    path = tmp_path / "foreign.onnx"
    onnx.save(model, path)
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, hw in enumerate([(12, 12), (16, 10), (9, 9)]):  # spatial dims vary between batches
        np.save(calib / f"{i}.npy", RNG.standard_normal((2, 3, *hw)).astype(np.float32))
    result = onnxq.quantize(str(path), calib=str(calib))
    quantized = {d.node for d in result.plan.nodes if d.quantized}
    assert quantized == {"conv", "matmul"}
    if_node = next(n for n in result.model.graph.node if n.op_type == "If")
    for attr in if_node.attribute:
        assert all(n.op_type not in ("QuantizeLinear", "DequantizeLinear") for n in attr.g.node)
    # the If branches read 'feat', which must still exist as a float tensor
    assert any("feat" in n.output for n in result.model.graph.node)
    report = compare_models(str(path), result.model, str(calib))
    assert report.outputs[0].sqnr_db > 25


def test_histogram_methods_take_batches_of_different_spatial_sizes(tmp_path):
    from onnxq.calib.base import CalibOptions
    from onnxq.config import QuantConfig

    model = foreign_model()  # one model: every call draws new weights
    batches = [{"x": RNG.standard_normal((8, 3, *hw)).astype(np.float32)} for hw in [(12, 12), (20, 8), (7, 9)]]
    for method in ("percentile", "mse"):
        result = onnxq.quantize(model, calib=batches, config=QuantConfig(calib=CalibOptions(method=method)))
        assert result.report.calib_batches == 3
        assert compare_models(model, result.model, batches).outputs[0].sqnr_db > 20, method
        assert max(result.report.clipping.values()) < 0.01


def test_entropy_clipping_on_a_distribution_far_from_zero_is_reported():
    """TensorRT's KL search (reproduced faithfully; the reference loop in tests/calib agrees) cuts a tensor whose
    values sit far from zero ('branch': pooled ReLU features, all in about 0.4..0.9) at a fraction of its range.
    onnxq cannot know that is wrong, but it says how much each range clips."""
    from onnxq.calib.base import CalibOptions
    from onnxq.config import QuantConfig

    model = foreign_model()
    batches = [{"x": RNG.standard_normal((8, 3, 9, 9)).astype(np.float32)} for _ in range(4)]
    result = onnxq.quantize(model, calib=batches, config=QuantConfig(calib=CalibOptions(method="entropy")))
    assert result.report.clipping["branch"] > 0.5
    lines = "\n".join(result.report.summary_lines())
    assert "saturate more than 1% of their calibration values" in lines and "branch:" in lines
