"""Q/DQ insertion: exactly which tensors, which axis, which scale; weights stored as int8."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq.config import QuantConfig
from onnxq.errors import OnnxqError
from onnxq.graph import GraphIndex
from onnxq.insert.qdq import InsertQDQ, quantize_array
from onnxq.plan import build_plan
from onnxq.scales.types import QuantParams, symmetric_params
from tests.helpers import init, make_model, op_types, rng_feeds, run

RNG = np.random.default_rng(3)


def two_branch_model():
    """x feeds two Convs (one shared activation scale); a Relu in between stays float."""
    inits = [init("w1", RNG.standard_normal((4, 3, 1, 1)).astype(np.float32)),
             init("w2", RNG.standard_normal((4, 3, 1, 1)).astype(np.float32)),
             init("b2", np.zeros(4, np.float32))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1"),
             helper.make_node("Conv", ["x", "w2", "b2"], ["b"], name="conv2"),
             helper.make_node("Add", ["a", "b"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return make_model(graph)


def scales_for(plan, model):
    index = GraphIndex.build(model.graph)
    table = {"x": symmetric_params(4.0)}
    for t in plan.weights():
        w = index.array(t.name)
        table[t.name] = symmetric_params(np.abs(w).reshape(w.shape[0], -1).max(1), 0)
    return table


def test_exact_placement_and_values():
    model = two_branch_model()
    plan = build_plan(model, QuantConfig())
    table = scales_for(plan, model)
    out = InsertQDQ(plan, table).call(model).model
    assert op_types(out) == ["QuantizeLinear", "DequantizeLinear", "DequantizeLinear", "DequantizeLinear",
                             "Conv", "Conv", "Add"]
    index = GraphIndex.build(out.graph)
    conv1, conv2 = (n for n in out.graph.node if n.op_type == "Conv")
    assert conv1.input[0] == conv2.input[0] == "x_dequantized"  # one shared Q/DQ pair
    assert conv2.input[2] == "b2"  # bias stays float
    w_dq = index.producer[conv1.input[1]]
    assert w_dq.op_type == "DequantizeLinear" and helper.get_attribute_value(w_dq.attribute[0]) == 0
    q_w = index.array(w_dq.input[0])
    assert q_w.dtype == np.int8 and np.abs(q_w).max() == 127
    np.testing.assert_array_equal(index.array(w_dq.input[1]), table["w1"].scale)
    assert index.array("x_scale") == np.float32(4.0 / 127) and index.array("x_zero_point").dtype == np.int8
    assert "w1" not in index.initializers  # float weight replaced by its int8 copy


def test_quantized_model_runs_close_to_float():
    model = two_branch_model()
    plan = build_plan(model, QuantConfig())
    out = InsertQDQ(plan, scales_for(plan, model)).call(make_model(model.graph)).model
    feeds = rng_feeds(model, {"x": (2, 3, 4, 4)})
    (ref,), (got,) = run(model, feeds), run(out, feeds)
    assert np.abs(ref - got).max() < 0.15 * np.abs(ref).max()


def test_quantize_array_rounds_half_to_even_and_saturates_weights_at_127():
    p = QuantParams(np.float32(1.0), np.int8(0))
    np.testing.assert_array_equal(quantize_array(np.array([0.5, 1.5, -2.5, 300, -300], np.float32), p),
                                  [0, 2, -2, 127, -127])


def test_missing_scale_is_an_error():
    model = two_branch_model()
    plan = build_plan(model, QuantConfig())
    with pytest.raises(OnnxqError, match="no scale for 1 planned tensor"):
        InsertQDQ(plan, {k: v for k, v in scales_for(plan, model).items() if k != "x"}).call(model)


def test_channel_count_mismatch_is_an_error():
    model = two_branch_model()
    plan = build_plan(model, QuantConfig())
    table = scales_for(plan, model)
    table["w1"] = symmetric_params(np.ones(3), 0)
    with pytest.raises(OnnxqError, match="3 per-channel scales on axis 0 do not match"):
        InsertQDQ(plan, table).call(model)


def test_uint8_activation_for_ort_cpu():
    from onnxq.scales.compute import weight_params
    from onnxq.scales.types import asymmetric_params
    from tests.pipeline.test_ort_cpu_fusion import conv_relu_add_conv

    model = conv_relu_add_conv()
    plan = build_plan(model, QuantConfig(target="ort-cpu"))
    index = GraphIndex.build(model.graph)
    table = {t.name: weight_params(t, index.array(t.name)) for t in plan.weights()}
    for t in plan.activations():
        table[t.name] = asymmetric_params(-1.0, 3.0)
    out = InsertQDQ(plan, table).call(model).model
    zp = numpy_helper.to_array(next(i for i in out.graph.initializer if i.name == "x_zero_point"))
    assert zp.dtype == np.uint8 and int(zp) == 64
