"""Repeated node names are made unique before anything keys on them: the model quantizes (it used to fail an
assertion in equalization) and the result loads in onnxruntime, which refuses the repeated names."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxq.passes import UniqueNodeNames
from onnxq.pipeline import quantize
from onnxq.validate.metrics import ErrorAccumulator
from tests.helpers import init, make_model, run


def chain(names: list[str]) -> onnx.ModelProto:
    """Conv 3x3 -> Relu -> 1x1 Conv -> Relu -> 1x1 Conv, the five nodes named ``names`` ("" leaves one unnamed)."""
    rng = np.random.default_rng(0)
    inits = [init("w1", (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32)),
             init("w2", (rng.standard_normal((8, 8, 1, 1)) * 0.3).astype(np.float32)),
             init("b2", (rng.standard_normal(8) * 0.5).astype(np.float32)),
             init("w3", (rng.standard_normal((4, 8, 1, 1)) * 0.3).astype(np.float32))]
    ops = [("Conv", ["x", "w1"], "c1", {"pads": [1, 1, 1, 1]}), ("Relu", ["c1"], "r1", {}),
           ("Conv", ["r1", "w2", "b2"], "c2", {}), ("Relu", ["c2"], "r2", {}), ("Conv", ["r2", "w3"], "y", {})]
    nodes = [helper.make_node(op, inputs, [out], name=name, **attrs)
             for (op, inputs, out, attrs), name in zip(ops, names, strict=True)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 16, 16])], inits)
    return make_model(graph)


def test_later_repeats_are_renamed_and_the_first_keeps_its_name() -> None:
    model = chain(["conv", "act", "conv", "act", "conv"])
    result = UniqueNodeNames().run(model)
    assert [n.name for n in result.model.graph.node] == ["conv", "act", "conv_1", "act_1", "conv_2"]
    assert result.notes == ["renamed 3 node(s) whose names repeated an earlier node's (onnxq knows nodes by name)"]
    assert [n.name for n in model.graph.node] == ["conv", "act", "conv", "act", "conv"]  # the input is unchanged
    # an unnamed node is known by its first output: a node named like that output is a repeat too
    clash = UniqueNodeNames().run(chain(["c2", "a", "", "b", "c"])).model
    assert [n.name for n in clash.graph.node] == ["c2", "a", "c2_1", "b", "c"]
    assert not UniqueNodeNames().run(chain(["a", "b", "c", "d", "e"])).changed


def test_a_model_with_repeated_names_quantizes_to_one_onnxruntime_loads() -> None:
    rng = np.random.default_rng(1)
    batches = [{"x": rng.uniform(0, 1, (2, 3, 16, 16)).astype(np.float32)} for _ in range(4)]
    result = quantize(chain(["conv", "act", "conv", "act", "conv"]), calib=batches)
    assert any(n.startswith("renamed 3 node(s)") for n in result.report.prepare_notes)
    reference = chain(["conv1", "act1", "conv2", "act2", "conv3"])  # the same network, loadable as it is
    acc = ErrorAccumulator()
    for batch in batches:
        acc.add(run(reference, batch)[0], run(result.model, batch)[0])
    assert acc.sqnr_db > 30, acc.sqnr_db
