"""Item 5 of issue 9: a BN behind a constant bias Add folds; a BN that cannot fold becomes Mul+Add."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from onnxq.config import QuantConfig
from onnxq.pipeline import prepare
from tests.helpers import assert_equivalent, init, make_model, op_types, rng_feeds


def _bn_inits(rng: np.random.Generator, prefix: str, c: int) -> list:
    return [init(f"{prefix}_g", rng.uniform(0.5, 1.5, c).astype(np.float32)),
            init(f"{prefix}_b", rng.standard_normal(c).astype(np.float32)),
            init(f"{prefix}_m", rng.standard_normal(c).astype(np.float32)),
            init(f"{prefix}_v", rng.uniform(0.5, 2.0, c).astype(np.float32))]


def _model(bias_shape: tuple[int, ...], transpose: bool = False):
    rng = np.random.default_rng(0)
    c = 6
    w = rng.standard_normal((4, c, 3, 3) if transpose else (c, 4, 3, 3)).astype(np.float32)
    op = "ConvTranspose" if transpose else "Conv"
    nodes = [
        helper.make_node(op, ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["y", "bias"], ["ya"], name="bias_add"),
        helper.make_node("BatchNormalization", ["ya", "bn1_g", "bn1_b", "bn1_m", "bn1_v"], ["z"], name="bn1"),
        helper.make_node("Relu", ["z"], ["r"], name="relu"),
        # behind a Relu: cannot fold into anything
        helper.make_node("BatchNormalization", ["r", "bn2_g", "bn2_b", "bn2_m", "bn2_v"], ["out"], name="bn2"),
    ]
    inits = [init("w", w), init("bias", rng.standard_normal(bias_shape).astype(np.float32))]
    inits += _bn_inits(rng, "bn1", c) + _bn_inits(rng, "bn2", c)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    return make_model(graph)


def test_bn_behind_bias_add_folds_and_the_rest_becomes_mul_add() -> None:
    for bias_shape, transpose in [((6, 1, 1), False), ((1, 6, 1, 1), False), ((1,), False), ((6, 1, 1), True)]:
        model = _model(bias_shape, transpose)
        prepared, notes = prepare(model, QuantConfig())
        ops = op_types(prepared)
        assert "BatchNormalization" not in ops, (bias_shape, ops)
        assert ops == ["ConvTranspose" if transpose else "Conv", "Relu", "Mul", "Add"], ops
        assert any("bias Add" in n for n in notes) and any("Mul+Add" in n for n in notes)
        assert_equivalent(model, prepared, rng_feeds(model, {"x": (2, 4, 8, 8)}), rtol=1e-5)


def test_add_that_is_not_per_channel_is_left_alone() -> None:
    model = _model((8, 8), False)  # a spatial bias: not a per-channel constant
    prepared, _ = prepare(model, QuantConfig())
    ops = op_types(prepared)
    assert ops == ["Conv", "Add", "Mul", "Add", "Relu", "Mul", "Add"], ops  # the Add stays; both BNs -> Mul+Add
    assert_equivalent(model, prepared, rng_feeds(model, {"x": (2, 4, 8, 8)}), rtol=1e-5)
