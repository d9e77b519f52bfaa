"""The prepare/export consistency check compares structure, not values, and says what changed."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxq.qat.structure import GraphStructure, structure_difference, unshare_initializers


def _model(bias_a, bias_b, kernel: int = 1, shared: bool = False) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((2, 2, kernel, kernel), np.float32), "w")
    inits = [w, numpy_helper.from_array(np.asarray(bias_a, np.float32), "b1")]
    nodes = []
    if shared:  # what the TorchScript exporter writes for two equal bias tensors
        nodes.append(helper.make_node("Identity", ["b1"], ["b2"]))
    else:
        inits.append(numpy_helper.from_array(np.asarray(bias_b, np.float32), "b2"))
    nodes += [helper.make_node("Conv", ["x", "w", "b1"], ["h"], kernel_shape=[kernel, kernel]),
              helper.make_node("Conv", ["h", "w", "b2"], ["y"], kernel_shape=[kernel, kernel])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2, 4, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_shared_equal_initializers_and_trained_ones_have_one_structure():
    shared = _model([0, 0], [0, 0], shared=True)
    assert unshare_initializers(shared) == 1
    trained = _model([0.1, -0.2], [0.3, 0.0])
    assert structure_difference(GraphStructure.of(shared), GraphStructure.of(trained)) is None
    assert {i.name for i in shared.graph.initializer} == {"w", "b1", "b2"}
    onnx.checker.check_model(shared)


def test_values_do_not_matter():
    a, b = GraphStructure.of(_model([0, 0], [0, 0])), GraphStructure.of(_model([1, 2], [3, 4]))
    assert structure_difference(a, b) is None


def test_a_change_of_structure_says_what_changed():
    before = GraphStructure.of(_model([0, 0], [0, 0]))
    after = GraphStructure.of(_model([0, 0], [0, 0], kernel=3))
    message = structure_difference(before, after)
    assert message is not None and "node 0 was Conv(x, w, b1)" in message and "kernel_shape=[3, 3]" in message
    fewer = _model([0, 0], [0, 0])
    del fewer.graph.node[1]
    fewer.graph.output[0].name = "h"
    assert "graph outputs were" in structure_difference(before, GraphStructure.of(fewer))
