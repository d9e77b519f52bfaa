"""HardSwish written out as x * Clip(x + 3, 0, 6) / 6 (paddle2onnx) becomes one HardSwish node, numerically equal."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq.graph import default_opset
from onnxq.passes.recognize_hardswish import RecognizeHardSwish
from tests.helpers import assert_equivalent, op_types, rng_feeds


def written_out(opset: int, last: str = "Div") -> onnx.ModelProto:
    """Conv -> Add(3) -> Clip(0, 6) -> Mul(x, .) -> Div(6) or Mul(1/6) -> Conv, plus an Add(3) that is no HardSwish."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), n) for n in ("w1", "w2")]
    inits += [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in
              (("three", 3.0), ("zero", 0.0), ("six", 6.0), ("sixth", 1 / 6))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1"),
             helper.make_node("Add", ["three", "c"], ["a"], name="add"),
             helper.make_node("Clip", ["a", "zero", "six"], ["k"], name="clip"),
             helper.make_node("Mul", ["c", "k"], ["m"], name="mul"),
             helper.make_node(last, ["m", "six" if last == "Div" else "sixth"], ["h"], name="scale"),
             helper.make_node("Conv", ["h", "w2"], ["y"], name="conv2"),
             helper.make_node("Add", ["y", "three"], ["z"], name="not_hardswish")]
    graph = helper.make_graph(nodes, "hs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


@pytest.mark.parametrize(("opset", "last"), [(14, "Div"), (17, "Mul"), (12, "Div")])
def test_written_out_hardswish_becomes_one_node(opset: int, last: str) -> None:
    model = written_out(opset, last)
    result = RecognizeHardSwish().run(model)
    ops = op_types(result.model)
    assert ops == ["Conv", "HardSwish", "Conv", "Add"], ops
    assert default_opset(result.model) >= 14
    names = {i.name for i in result.model.graph.initializer}
    assert {"w1", "w2", "three"} <= names and not names & {"zero", "six"}  # "three" is still read
    assert_equivalent(model, result.model, rng_feeds(model, {"x": (1, 4, 5, 5)}), rtol=1e-5, atol=1e-5)
    assert op_types(model).count("Clip") == 1  # the input model is untouched


def test_other_constants_are_not_a_hardswish() -> None:
    model = written_out(14)
    model.graph.initializer[-2].CopyFrom(numpy_helper.from_array(np.array(5.0, np.float32), "six"))  # Clip(0, 5)
    assert not RecognizeHardSwish().run(model).changed
