"""Per-op behaviour and per-target rules are tables: every entry is consistent and each fact has one home."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from onnxq.dtypes import BY_ONNX_TYPE, INT8, QUANT_DTYPES, UINT8
from onnxq.ops import OP_HANDLERS, WEIGHTED_OPS, quantized_ops, weight_axis
from onnxq.rules import ORT_CPU, TARGET_RULES, TENSORRT
from onnxq.scales.types import asymmetric_params, symmetric_params
from onnxq.trt.lint import expected_weight_axis


def _node(op: str, **attrs) -> object:
    return helper.make_node(op, ["x", "w"], ["y"], name=op.lower(), **attrs)


@pytest.mark.parametrize(("op", "attrs", "rank", "tensorrt", "ort_cpu"), [
    ("Conv", {}, 4, 0, 0),
    ("ConvTranspose", {}, 4, 0, 1),  # TensorRT: per input channel (NVIDIA/TensorRT#2380)
    ("Gemm", {"transB": 1}, 2, 0, 0),
    ("Gemm", {}, 2, 1, 1),
    ("MatMul", {}, 2, 1, 1),
    ("MatMul", {}, 3, 2, 2),
    ("MatMul", {}, 1, None, None),
])
def test_weight_axis_per_op_and_target(op, attrs, rank, tensorrt, ort_cpu):
    node = _node(op, **attrs)
    assert weight_axis(node, 1, rank, TENSORRT) == tensorrt
    assert weight_axis(node, 1, rank, ORT_CPU) == ort_cpu
    assert weight_axis(node, 0, rank, TENSORRT) is None  # the activation input has no channel axis
    assert expected_weight_axis(node, rank) == tensorrt  # the lint checks exactly what the plan produces


def test_every_target_op_has_a_handler_with_inputs():
    for rules in TARGET_RULES.values():
        assert rules.activation_dtype in QUANT_DTYPES
        for op in quantized_ops(rules):
            assert OP_HANDLERS[op].quantized_inputs, (rules.name, op)
        assert set(rules.default_skip) <= set(quantized_ops(rules))
        assert set(rules.weight_axis) <= set(WEIGHTED_OPS)
    assert set(WEIGHTED_OPS) == {"Conv", "ConvTranspose", "Gemm", "MatMul"}
    assert OP_HANDLERS["Concat"].scale_sharing_inputs(helper.make_node("Concat", ["a", "b", "c"], ["y"])) == range(3)
    assert OP_HANDLERS["Reshape"].scale_sharing_inputs(helper.make_node("Reshape", ["a", "s"], ["y"])) == range(1)


def test_dtype_table_drives_the_scale_maths():
    assert (INT8.qmin, INT8.qmax, INT8.clip_range()) == (-128, 127, (-127, 127))
    assert (UINT8.qmin, UINT8.qmax, UINT8.clip_range()) == (0, 255, (0, 255))
    assert BY_ONNX_TYPE[INT8.onnx_type] is INT8
    sym = symmetric_params(np.array([1.27, 2.54]), axis=0)
    np.testing.assert_allclose(sym.scale, [0.01, 0.02], rtol=1e-6)
    asym = asymmetric_params(-1.0, 1.55)
    assert asym.dtype == "uint8" and float(asym.scale) == pytest.approx(2.55 / 255) and int(asym.zero_point) == 100
