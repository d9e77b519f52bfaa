"""Reading Q/DQ models into scale tables: the key rule, per-channel axes, pre-quantized weights."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxq.errors import OnnxqError
from onnxq.scales.qdq_reader import read_qdq, read_qdq_scales

MODEL = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] y) <
  float s_x = {0.05}, int8 z_x = {0},
  float[4, 3, 3, 3] w = {SEE_INITIALIZERS},
  float[4] s_w = {0.01, 0.02, 0.03, 0.04}, int8[4] z_w = {0, 0, 0, 0},
  int8[4, 4, 1, 1] w2_int8 = {SEE_INITIALIZERS}, float s_w2 = {0.5}, int8 z_w2 = {0}
> {
  xq = QuantizeLinear(x, s_x, z_x)
  xd = DequantizeLinear(xq, s_x, z_x)
  wq = QuantizeLinear <axis = 0> (w, s_w, z_w)
  wd = DequantizeLinear <axis = 0> (wq, s_w, z_w)
  h = Conv <pads = [1, 1, 1, 1]> (xd, wd)
  w2d = DequantizeLinear(w2_int8, s_w2, z_w2)
  y = Conv (h, w2d)
}
"""


def model() -> onnx.ModelProto:
    text = MODEL.replace("float[4, 3, 3, 3] w = {SEE_INITIALIZERS},", "").replace(
        "int8[4, 4, 1, 1] w2_int8 = {SEE_INITIALIZERS}, ", "")
    m = onnx.parser.parse_model(text)
    m.graph.initializer.extend([
        numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w"),
        numpy_helper.from_array(np.ones((4, 4, 1, 1), np.int8), "w2_int8"),
    ])
    onnx.checker.check_model(m)
    return m


def test_key_rule_and_roles():
    entries = read_qdq(model())
    assert list(entries) == ["x", "w", "w2d"]  # Q input; weight initializer; DQ output for a stored-int8 weight
    assert [e.role for e in entries.values()] == ["activation", "weight", "weight"]
    assert entries["x"].params.axis is None and entries["x"].params.scale == np.float32(0.05)
    w = entries["w"].params
    assert w.axis == 0 and w.channels == 4 and np.array_equal(w.scale, np.float32([0.01, 0.02, 0.03, 0.04]))
    assert entries["w2d"].params.scale == np.float32(0.5) and entries["w2d"].params.symmetric


def test_onnxruntime_quantized_suffix_maps_back_to_the_float_name():
    m = model()
    for init in m.graph.initializer:
        if init.name == "w2_int8":
            init.name = "conv2.weight_quantized"
    for node in m.graph.node:
        node.input[:] = ["conv2.weight_quantized" if i == "w2_int8" else i for i in node.input]
    assert "conv2.weight" in read_qdq_scales(m)


def test_negative_axis_is_normalised_and_missing_zero_point_is_uint8():
    m = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[1, 4] x) => (float[1, 2] y) <float[2] s = {0.1, 0.2}, float sx = {0.5}> {
      xq = QuantizeLinear(x, sx)
      xd = DequantizeLinear(xq, sx)
      wq = QuantizeLinear <axis = -1> (w, s)
      wd = DequantizeLinear <axis = -1> (wq, s)
      y = MatMul(xd, wd)
    }""")
    m.graph.initializer.append(numpy_helper.from_array(np.ones((4, 2), np.float32), "w"))
    table = read_qdq_scales(m)
    assert table["w"].axis == 1 and table["w"].dtype == "uint8"
    assert table["x"].dtype == "uint8" and int(table["x"].zero_point) == 0


def test_non_positive_scale_names_the_tensor():
    m = model()
    for init in m.graph.initializer:
        if init.name == "s_x":
            init.CopyFrom(numpy_helper.from_array(np.float32(0.0), "s_x"))
    with pytest.raises(OnnxqError, match="tensor 'x'.*finite and positive"):
        read_qdq(m)


def test_constant_node_scales_are_read():
    m = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[2] x) => (float[2] y) {
      s = Constant <value = float {0.25}> ()
      z = Constant <value = int8 {0}> ()
      q = QuantizeLinear(x, s, z)
      y = DequantizeLinear(q, s, z)
    }""")
    assert read_qdq_scales(m)["x"].scale == np.float32(0.25)


def test_model_without_qdq_gives_empty_table():
    m = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]))
    assert read_qdq_scales(m) == {}
