"""Prepare passes: each leaves the model numerically equal; the sequence runs on awkward exporter output."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxq.errors import OnnxqError
from onnxq.passes import PassManager, prepare_passes
from onnxq.passes.base import Pass, PassResult
from onnxq.passes.constants_to_initializers import ConstantsToInitializers
from onnxq.passes.infer_shapes import InferShapes
from onnxq.passes.upgrade_opset import UpgradeOpset
from tests.helpers import assert_equivalent, init, make_model, op_types, rng_feeds

RNG = np.random.default_rng(1)


def opset11_model() -> onnx.ModelProto:
    """Constant-node weights, Squeeze/Unsqueeze with axes attributes (changed in 13), unnamed dynamic dims."""
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w"], value=helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())),
        helper.make_node("Constant", [], ["b"],
                         value=helper.make_tensor("b", TensorProto.FLOAT, [4], [.1, -.2, .3, 0])),
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Unsqueeze", ["r"], ["u"], name="unsq", axes=[0]),
        helper.make_node("Squeeze", ["u"], ["out"], name="sq", axes=[0]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, None, None])
    graph = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    return make_model(graph, opset=11)


def test_constants_become_initializers():
    model = opset11_model()
    reference = make_model(model.graph, opset=11)
    result = ConstantsToInitializers().call(model)
    assert result.changed and "Constant" not in op_types(result.model)
    assert {i.name for i in result.model.graph.initializer} == {"w", "b"}
    assert_equivalent(reference, result.model, rng_feeds(reference, {"x": (2, 3, 5, 7)}))


def test_scalar_list_constants_become_initializers():
    nodes = [helper.make_node("Constant", [], ["k"], value_floats=[2.0, -1.0]),
             helper.make_node("Mul", ["x", "k"], ["y"], name="mul")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = make_model(graph, opset=13)
    reference = make_model(model.graph, opset=13)
    result = ConstantsToInitializers().call(model)
    assert op_types(result.model) == ["Mul"]
    assert_equivalent(reference, result.model, rng_feeds(reference, {"x": (3, 2)}))


def test_transposed_initializers_become_initializers():
    """torch with ``do_constant_folding=False`` reads each Linear weight as ``Transpose(W)``: folded exactly (default
    and explicit ``perm``), the (out, in) original dropped; an invalid ``perm`` is left for onnxruntime to report."""
    w1, w2 = RNG.standard_normal((6, 4)).astype(np.float32), RNG.standard_normal((3, 6)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["w1_t"], ["w1"], name="t1"),
             helper.make_node("Transpose", ["w2_t"], ["w2"], perm=[1, 0], name="t2"),
             helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("MatMul", ["h", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [init("w1_t", w1), init("w2_t", w2)])
    model = make_model(graph, opset=13)
    reference = make_model(model.graph, opset=13)
    result = ConstantsToInitializers().call(model)
    assert op_types(result.model) == ["MatMul", "MatMul"]
    assert {i.name for i in result.model.graph.initializer} == {"w1", "w2"}
    assert_equivalent(reference, result.model, rng_feeds(reference, {"x": (3, 4)}))
    bad_graph = helper.make_graph([helper.make_node("Transpose", ["w1_t"], ["w1"], perm=[0, 0], name="t"),
                                   helper.make_node("MatMul", ["x", "w1"], ["y"], name="fc")], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [init("w1_t", w1)])
    bad = helper.make_model(bad_graph, opset_imports=[helper.make_opsetid("", 13)])
    assert not ConstantsToInitializers().call(bad).changed
    assert op_types(bad) == ["Transpose", "MatMul"]


def test_upgrade_opset_11_to_13_is_equivalent():
    model = opset11_model()
    reference = make_model(model.graph, opset=11)
    result = UpgradeOpset().call(model)
    assert result.changed
    assert result.model.opset_import[0].version == 13
    assert_equivalent(reference, result.model, rng_feeds(reference, {"x": (1, 3, 4, 4)}))


def test_upgrade_is_a_no_op_at_17():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    assert not UpgradeOpset().call(make_model(graph, opset=17)).changed


def test_shape_inference_skips_unknown_ops_and_never_fails(monkeypatch):
    node = helper.make_node("MysteryOp", ["x"], ["y"], domain="com.vendor", name="m")
    relu = helper.make_node("Relu", ["y"], ["z"], name="relu")
    graph = helper.make_graph([node, relu], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.vendor", 1)])
    result = InferShapes().call(model)  # an op it does not know: inference goes on around it
    assert result.model.graph.node[1].op_type == "Relu"

    def broken(*args, **kwargs):
        raise onnx.shape_inference.InferenceError("[ShapeInferenceError] Incomplete symbolic shape inference")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", broken)
    result = InferShapes().call(model)
    assert result.model is model and not result.changed
    assert result.notes == ["shape inference failed; continuing without it"]


def test_full_prepare_sequence_on_foreign_style_model():
    model = opset11_model()
    reference = make_model(model.graph, opset=11)
    prepared, results = PassManager(prepare_passes()).run(model)
    assert [type(r) for r in results] == [PassResult] * len(prepare_passes())
    assert "Constant" not in op_types(prepared)
    assert_equivalent(reference, prepared, rng_feeds(reference, {"x": (3, 3, 6, 6)}))


class _Broken(Pass):
    name = "broken"

    def call(self, model):
        raise OnnxqError("boom")


def test_pass_error_names_the_pass_and_its_predecessors():
    with pytest.raises(OnnxqError, match=r"pass 'broken' \(after \['constants-to-initializers'\]\): boom"):
        PassManager([ConstantsToInitializers(), _Broken()]).run(opset11_model())


def test_weights_shared_by_two_convs_fold_separately():
    """Two Conv-BN pairs reading one weight initializer: each gets its own folded copy."""
    w = RNG.standard_normal((3, 3, 1, 1)).astype(np.float32)
    inits = [init("w", w)]
    nodes = []
    for i in range(2):
        p = f"bn{i}"
        inits += [init(f"{p}_g", RNG.uniform(0.5, 2, 3).astype(np.float32)),
                  init(f"{p}_b", RNG.standard_normal(3).astype(np.float32)),
                  init(f"{p}_m", RNG.standard_normal(3).astype(np.float32)),
                  init(f"{p}_v", RNG.uniform(0.5, 2, 3).astype(np.float32))]
        nodes += [helper.make_node("Conv", ["x", "w"], [f"c{i}"], name=f"conv{i}"),
                  helper.make_node("BatchNormalization", [f"c{i}", f"{p}_g", f"{p}_b", f"{p}_m", f"{p}_v"],
                                   [f"y{i}"], name=p)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None) for i in range(2)],
                              inits)
    model = make_model(graph)
    reference = make_model(model.graph)
    prepared, _ = PassManager(prepare_passes()).run(model)
    assert op_types(prepared) == ["Conv", "Conv"]
    assert_equivalent(reference, prepared, rng_feeds(reference, {"x": (1, 3, 4, 4)}))


def test_identity_of_shared_parameter_becomes_an_initializer_and_bn_folds():
    """torch de-duplicates equal BatchNorm parameters into Identity(initializer); they still fold."""
    rng = np.random.default_rng(0)
    inits = [init("w", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
             init("gamma", rng.uniform(0.5, 1.5, 4).astype(np.float32)), init("zeros", np.zeros(4, np.float32)),
             init("var", rng.uniform(0.5, 1.5, 4).astype(np.float32))]
    nodes = [helper.make_node("Identity", ["zeros"], ["beta"]), helper.make_node("Identity", ["zeros"], ["mean"]),
             helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["y"], name="bn")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = make_model(graph)
    prepared, _ = PassManager(prepare_passes(per_channel=True)).run(onnx.ModelProto.FromString(
        model.SerializeToString()))
    assert op_types(prepared) == ["Conv"]
    assert_equivalent(model, prepared, rng_feeds(model, {"x": (1, 3, 6, 6)}))


def test_stripping_drops_the_record_of_float_rewrites_an_earlier_run_wrote() -> None:
    """--requantize: the stripped graph holds the earlier run's rewrites (shifts, corrected biases) already; their
    record goes, so the new run neither lists them again nor compensates the old shifts a second time."""
    from onnxq.config import QuantConfig
    from onnxq.passes import StripQDQ
    from onnxq.pipeline import quantize
    from onnxq.scales.rewrites import read_from_model
    from tests.recovery.nets_recovery import image_batches, mobilenet_hardswish

    calib = image_batches(4, size=32, seed=2)
    first = quantize(mobilenet_hardswish(), calib=calib).model
    assert any(r.kind == "shift" for r in read_from_model(first).rewrites)
    stripped = StripQDQ().run(first)
    assert read_from_model(stripped.model) is None and read_from_model(first) is not None
    assert any("record of float rewrites dropped" in n for n in stripped.notes)
    # its biases were moved for its own quantization error: the stripped graph is not FP32, and the user is told
    assert any("the stripped graph is not the FP32 model" in n for n in stripped.notes)
    again = quantize(first, calib=calib, config=QuantConfig(requantize=True)).model
    assert not any(r.kind == "shift" for r in read_from_model(again).rewrites)  # centred already: nothing new
