"""Golden Q/DQ graphs -> exactly which TensorRT lint rules fire on which nodes."""

from __future__ import annotations

import numpy as np
import onnx

from onnxq.trt.lint import LintOptions, has_errors, lint_model
from tests.trt.trt_golden import Graph, clean_model, conv_block


def found(model: onnx.ModelProto, **options) -> list[tuple[str, str, str]]:
    return [(f.severity, f.rule, f.subject) for f in lint_model(model, LintOptions(**options))]


def test_clean_model_has_no_findings():
    assert found(clean_model()) == []


def test_float_model_is_one_no_qdq_warning():
    g = Graph()
    w = g.init("w", np.zeros((4, 4, 1, 1), np.float32))
    g.output(g.node("Conv", [g.input("x"), w], "conv"))
    assert found(g.model()) == [("warning", "no-qdq", "<model>")]


def test_nonzero_int8_zero_point_is_an_error_on_the_q_node():
    g = Graph()
    x = g.qdq(g.input("x"), "in", scale=0.1, zp=3)
    g.output(g.node("Conv", [x, g.weight("w", (4, 4, 1, 1))], "conv"))
    assert found(g.model()) == [("error", "zero-point", "in_Q")]


def test_uint8_activation_is_an_error():
    g = Graph()
    x = g.qdq(g.input("x"), "in", scale=0.1, zp=128, dtype="uint8")
    g.output(g.node("Conv", [x, g.weight("w", (4, 4, 1, 1))], "conv"))
    assert found(g.model()) == [("error", "uint8", "in_Q")]


def test_q_without_zero_point_is_uint8():
    g = Graph()
    q = g.q(g.input("x"), "in_Q", 0.1, with_zp=False)
    x = g.dq(q, "in_DQ", 0.1, with_zp=False)
    g.output(g.node("Conv", [x, g.weight("w", (4, 4, 1, 1))], "conv"))
    assert found(g.model()) == [("error", "uint8", "in_Q")]


def test_bad_scale():
    g = Graph()
    x = g.qdq(g.input("x"), "in", scale=-0.5)
    g.output(g.node("Conv", [x, g.weight("w", (4, 4, 1, 1))], "conv"))
    assert found(g.model()) == [("error", "scale", "in_Q")]


def test_conv_weight_on_wrong_axis_and_wrong_channel_count():
    g = Graph()
    x = g.qdq(g.input("x"), "in")
    w = g.weight("w", (8, 4, 3, 3), axis=1)
    y = g.node("Conv", [x, w], "conv_axis")
    y = g.qdq(y, "mid")
    w2 = g.init("w2", np.zeros((4, 8, 1, 1), np.float32))
    w2 = g.qdq(w2, "w2", scale=np.full(3, 0.01, np.float32), axis=0)
    g.output(g.node("Conv", [y, w2], "conv_count"))
    assert found(g.model(check=False)) == [
        ("error", "per-channel-axis", "conv_axis"),
        ("error", "per-channel-axis", "conv_count"),
    ]


def test_per_channel_needs_opset_13():
    g = Graph(opset=10)
    x = g.qdq(g.input("x"), "in")
    w = g.init("w", np.zeros((4, 4, 1, 1), np.float32))
    w = g.dq(g.q(w, "w_Q", np.full(4, 0.01, np.float32)), "w_DQ", np.full(4, 0.01, np.float32))
    g.output(g.node("Conv", [x, w], "conv"))
    assert found(g.model(check=False)) == [("error", "qdq-opset", "w_Q")]


def test_per_channel_activation_is_an_error():
    g = Graph()
    x = g.qdq(g.input("x"), "in", scale=np.full(4, 0.1, np.float32), axis=1)
    g.output(g.node("Conv", [x, g.weight("w", (4, 4, 1, 1))], "conv"))
    assert found(g.model()) == [("error", "per-channel-activation", "in_Q")]


def test_quantized_convtranspose_is_a_warning_and_needs_axis_0():
    def model(axis):
        g = Graph()
        x = g.qdq(g.input("x"), "in")
        w = g.weight("w", (4, 6, 2, 2), axis=axis)  # (C_in, C_out, kH, kW)
        g.output(g.node("ConvTranspose", [x, w], "deconv", strides=[2, 2]))
        return g.model()

    # axis 0 is what TensorRT's deconvolution kernels take: a warning (older TensorRT lacks kernels), exit status 0
    assert found(model(0)) == [("warning", "int8-convtranspose", "deconv")]
    assert found(model(0), allow_int8_convtranspose=True) == []
    assert found(model(1), allow_int8_convtranspose=True) == [("error", "per-channel-axis", "deconv")]
    assert found(model(1)) == [("warning", "int8-convtranspose", "deconv"), ("error", "per-channel-axis", "deconv")]


def test_float_convtranspose_is_fine_without_the_flag():
    g = Graph()
    x = conv_block(g, g.input("x"), "conv")
    w = g.init("w", np.zeros((4, 4, 2, 2), np.float32))
    g.output(g.node("ConvTranspose", [x, w], "deconv"))
    assert found(g.model()) == []


def test_dangling_q_and_dq():
    g = Graph()
    q = g.q(g.input("x"), "lonely_Q", 0.1)
    g.output(g.node("Cast", [q], "cast", to=onnx.TensorProto.FLOAT))
    xi = g.input("xi", elem=onnx.TensorProto.INT8)
    y = g.dq(xi, "lonely_DQ", 0.1)
    g.output(g.node("Conv", [y, g.weight("w", (4, 4, 1, 1))], "conv"))
    assert found(g.model()) == [("error", "dangling-q", "lonely_Q"), ("error", "dangling-dq", "lonely_DQ")]


def test_weighted_ops_without_qdq_run_in_float():
    g = Graph()
    x = g.input("x")
    w_float = g.init("w", np.zeros((4, 4, 1, 1), np.float32))
    y = g.node("Conv", [g.qdq(x, "in"), w_float], "conv_float_weight")
    y = g.node("Conv", [y, g.weight("w2", (4, 4, 1, 1))], "conv_float_input")
    g.output(y)
    assert found(g.model()) == [
        ("warning", "float-weighted-op", "conv_float_weight"),
        ("warning", "float-weighted-op", "conv_float_input"),
    ]


def test_qdq_between_conv_and_relu_or_bn_blocks_fusion():
    g = Graph()
    y = conv_block(g, g.input("x"), "conv1")
    y = g.node("Relu", [g.qdq(y, "after_conv1")], "relu1")
    y = conv_block(g, y, "conv2")
    scale, bias, mean, var = (g.init(f"bn_{k}", np.full(4, v, np.float32)) for k, v in
                              (("s", 1.0), ("b", 0.0), ("m", 0.0), ("v", 1.0)))
    y = g.node("BatchNormalization", [g.qdq(y, "after_conv2"), scale, bias, mean, var], "bn2")
    g.output(g.node("Relu", [y], "relu2"))
    assert found(g.model()) == [
        ("warning", "qdq-blocks-fusion", "after_conv1_Q"),
        ("warning", "qdq-blocks-fusion", "after_conv2_Q"),
    ]


def test_concat_with_different_scales():
    g = Graph()
    x = g.input("x")
    a, b = g.qdq(x, "a", scale=0.1), g.qdq(x, "b", scale=0.2)
    y = g.node("Concat", [a, b], "concat_diff", axis=1)
    c, d = g.qdq(x, "c", scale=0.1), g.qdq(x, "d", scale=0.1)
    y2 = g.node("Concat", [c, d], "concat_same", axis=1)
    g.output(y)
    g.output(y2)
    assert found(g.model()) == [("warning", "concat-scales", "concat_diff")]


def test_residual_add_with_one_float_input():
    g = Graph()
    x = g.input("x")
    y = conv_block(g, x, "conv1")
    g.output(g.node("Add", [g.qdq(y, "branch"), x], "add_mixed"))
    g.output(g.node("Add", [y, g.init("bias", np.zeros((1, 4, 1, 1), np.float32))], "add_bias"))
    assert found(g.model()) == [("warning", "residual-add", "add_mixed")]


def test_residual_add_recommended_pattern_and_blocked_fusion():
    g = Graph()
    x = g.input("x")
    # recommended: Conv output straight into the Add, the skip branch quantized -> Conv+Add fuse in INT8
    g.output(g.node("Add", [conv_block(g, x, "conv1"), g.qdq(x, "skip1")], "add_fused"))
    # an extra Q/DQ on the Conv side separates the Conv from the Add
    g.output(g.node("Add", [g.qdq(conv_block(g, x, "conv2"), "conv2_out"), g.qdq(x, "skip2")], "add_blocked"))
    assert found(g.model()) == [("warning", "residual-add", "add_blocked")]


def test_gemm_and_matmul_axes():
    g = Graph()
    x = g.qdq(g.input("x", shape=(2, 8)), "in")
    g.output(g.node("Gemm", [x, g.weight("wt", (16, 8), axis=0)], "gemm_transB_ok", transB=1))
    g.output(g.node("Gemm", [x, g.weight("wn", (8, 16), axis=0)], "gemm_bad"))
    g.output(g.node("MatMul", [x, g.weight("wm", (8, 16), axis=1)], "matmul_ok"))
    g.output(g.node("MatMul", [x, g.weight("wm2", (8, 16), axis=0)], "matmul_bad"))
    assert found(g.model()) == [("error", "per-channel-axis", "gemm_bad"), ("error", "per-channel-axis", "matmul_bad")]


def test_matmul_of_two_activations_needs_both_quantized():
    g = Graph()
    a = g.input("a", shape=(2, 8))
    b = g.input("b", shape=(8, 3))
    g.output(g.node("MatMul", [g.qdq(a, "a"), b], "attn"))
    assert found(g.model()) == [("warning", "float-weighted-op", "attn")]
    assert "input B" in lint_model(g.model())[0].message


def test_weight_dq_through_transpose_counts_as_quantized():
    g = Graph()
    x = g.qdq(g.input("x", shape=(2, 8)), "in")
    w = g.weight("w", (16, 8), axis=0)
    wt = g.node("Transpose", [w], "w_T", perm=[1, 0])
    g.output(g.node("MatMul", [x, wt], "matmul"))
    # the DQ quantizes the (N, K) weight along axis 0 (N); after the Transpose that is the MatMul's last axis
    assert found(g.model()) == []


def test_errors_decide_exit_status():
    assert not has_errors(lint_model(clean_model()))
