"""The default activation method on a point-cloud kNN block: coordinates keep their min-max range.

PointNet++/PointNeXt-style networks compute neighbourhoods as TopK over ``p @ p^T``; the coordinates are flat and
bounded, so MSE clipping saves almost nothing in rounding error while it moves the outermost points (README
"Accuracy recovery", pointnext). With ``min_clip_gain`` (default 0.05) their range stays the min-max range; the
plain MSE optimum (``min_clip_gain=0``) clips them.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import onnxq
from onnxq.calib.base import CalibOptions
from onnxq.config import QuantConfig

POINTS, NEIGHBOURS = 64, 8


def knn_block():
    """points -> Mul (a scale, so the coordinates are not a graph input) -> MatMul(p, p^T) -> TopK, and a
    point-wise MatMul feature layer on the same coordinates."""
    inits = [numpy_helper.from_array(np.array(1.5, np.float32), "s"),
             numpy_helper.from_array(np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([NEIGHBOURS], np.int64), "k")]
    nodes = [helper.make_node("Mul", ["points", "s"], ["p"]),
             helper.make_node("Transpose", ["p"], ["pt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["p", "pt"], ["inner"]),
             helper.make_node("TopK", ["inner", "k"], ["vals", "idx"], axis=-1),
             helper.make_node("MatMul", ["p", "w"], ["feat"])]
    graph = helper.make_graph(nodes, "knn", [helper.make_tensor_value_info("points", TensorProto.FLOAT,
                                                                           [None, POINTS, 3])],
                              [helper.make_tensor_value_info("idx", TensorProto.INT64, None),
                               helper.make_tensor_value_info("feat", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_point_coordinates_keep_their_min_max_range():
    rng = np.random.default_rng(0)
    calib = [{"points": rng.uniform(-1, 1, (8, POINTS, 3)).astype(np.float32)} for _ in range(4)]
    amax = 1.5 * max(float(np.abs(b["points"]).max()) for b in calib)
    model = knn_block()
    default = onnxq.quantize(model, calib=calib).scales["p"]
    plain = onnxq.quantize(model, calib=calib,
                           config=QuantConfig(calib=CalibOptions(method="mse", min_clip_gain=0.0))).scales["p"]
    assert QuantConfig().calib.method == "mse"
    np.testing.assert_allclose(default.scale, amax / 127, rtol=1e-6)
    assert float(plain.scale) < 0.998 * amax / 127
