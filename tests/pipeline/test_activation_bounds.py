"""Pre-activation ranges clamped where the activation reading them saturates (onnxq/activation_bounds.py)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq.activation_bounds import HARDSWISH_FLOOR, SILU_FLOOR, tensor_bounds
from onnxq.graph import GraphIndex


def _index(nodes, consts=()):
    inits = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in consts]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return GraphIndex.build(graph)


@pytest.mark.parametrize(("nodes", "consts", "expected"), [
    ([helper.make_node("HardSwish", ["x"], ["y"])], (), (HARDSWISH_FLOOR, None)),
    ([helper.make_node("HardSigmoid", ["x"], ["y"], alpha=0.2, beta=0.5)], (), (-2.5, 2.5)),
    ([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])], (), (SILU_FLOOR, None)),
    # the rewritten HardSwish: x * Clip(x + 3, 0, 6)
    ([helper.make_node("Add", ["x", "three"], ["a"]), helper.make_node("Clip", ["a", "zero", "six"], ["c"]),
      helper.make_node("Mul", ["x", "c"], ["y"])], (("three", 3.0), ("zero", 0.0), ("six", 6.0)), (-3.0, None)),
    # Clip(x + 2.5, 0, 5): both ends
    ([helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Clip", ["a", "zero", "five"], ["y"])],
     (("b", 2.5), ("zero", 0.0), ("five", 5.0)), (-2.5, 2.5)),
])
def test_bounds_of_saturating_activations(nodes, consts, expected):
    assert tensor_bounds(_index(nodes, consts), "x") == pytest.approx(expected)


def test_no_bound_when_another_reader_needs_the_whole_range():
    nodes = [helper.make_node("HardSwish", ["x"], ["h"]), helper.make_node("Add", ["x", "h"], ["y"])]
    assert tensor_bounds(_index(nodes), "x") is None
    silu_of_other = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["s", "s"], ["y"])]
    assert tensor_bounds(_index(silu_of_other), "x") is None
