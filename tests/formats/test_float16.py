"""--float-rest fp16: FP16 inside, FP32 at the model's borders and for the ops of KEEP_FP32."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxq.passes.float16 import KEEP_FP32, ConvertFloatToFP16
from onnxq.validate.metrics import sqnr_db
from tests.helpers import init, make_model, run


def attention_like() -> onnx.ModelProto:
    """x -> MatMul(Wq) -> Softmax -> MatMul(Wv) -> LayerNormalization -> Add(x) -> y; also y2 = Relu(x)."""
    rng = np.random.default_rng(0)
    d = 16
    inits = [init("wq", (rng.standard_normal((d, d)) * 0.2).astype(np.float32)),
             init("wv", (rng.standard_normal((d, d)) * 0.2).astype(np.float32)),
             init("g", np.ones(d, np.float32)), init("b", np.zeros(d, np.float32))]
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"], name="mm1"),
             helper.make_node("Softmax", ["q"], ["p"], name="softmax", axis=-1),
             helper.make_node("MatMul", ["p", "wv"], ["v"], name="mm2"),
             helper.make_node("LayerNormalization", ["v", "g", "b"], ["n"], name="ln", axis=-1),
             helper.make_node("Add", ["n", "x"], ["y"], name="add"),
             helper.make_node("Relu", ["x"], ["y2"], name="relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("y2", TensorProto.FLOAT, None)], inits)
    return make_model(graph, opset=19)


def input_type(model: onnx.ModelProto, node: str, index: int) -> int:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.input,
                                                             *inferred.graph.output]}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    n = next(n for n in model.graph.node if n.name == node)
    return types[n.input[index]]


def test_keeps_borders_and_sensitive_ops_fp32():
    model = ConvertFloatToFP16().call(attention_like()).model
    onnx.checker.check_model(model, full_check=True)
    assert {"Softmax", "LayerNormalization"} <= KEEP_FP32
    assert input_type(model, "mm1", 0) == TensorProto.FLOAT16 and input_type(model, "mm1", 1) == TensorProto.FLOAT16
    assert input_type(model, "softmax", 0) == TensorProto.FLOAT
    assert input_type(model, "ln", 0) == TensorProto.FLOAT
    assert input_type(model, "mm2", 0) == TensorProto.FLOAT16
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [TensorProto.FLOAT] * 2
    # the input is cast once to FP16 for all its FP16 readers
    casts_of_x = [n for n in model.graph.node if n.op_type == "Cast" and n.input[0] == "x"]
    assert len(casts_of_x) == 1
    feeds = {"x": np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32)}
    for ref, got in zip(run(attention_like(), feeds), run(model, feeds), strict=True):
        assert got.dtype == np.float32 and sqnr_db(ref, got) > 40
