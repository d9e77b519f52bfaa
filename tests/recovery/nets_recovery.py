"""Small graphs built in code for the recovery tests: a Gemm layer, a depthwise-separable HardSwish block with a
Relu-joined Conv pair, a MatMul with outlier channels, and a MobileNet-style depthwise + HardSwish network."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from tests.helpers import init, make_model


def gemm_model(k: int = 16, n: int = 8, seed: int = 0, input_relu: bool = False):
    """Gemm ``x -> fc``; with ``input_relu`` the graph input is ``x0`` and ``x = Relu(x0)`` (an activation that is
    not a graph input, so it follows ``--method``)."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n, k)) * rng.uniform(0.05, 1.0, (n, 1))).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)]
    if input_relu:
        nodes.insert(0, helper.make_node("Relu", ["x0"], ["x"], name="act"))
    graph = helper.make_graph(
        nodes, "gemm", [helper.make_tensor_value_info("x0" if input_relu else "x", TensorProto.FLOAT, ["n", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [init("w", w), init("b", b)])
    return make_model(graph)


def gemm_batches(k: int = 16, count: int = 4, seed: int = 1) -> list[dict[str, np.ndarray]]:
    """Inputs with a large positive mean (as raw pixels) and one outlier channel."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        x = rng.uniform(0.0, 4.0, (32, k)).astype(np.float32) + 2.0
        x[:, 3] *= 6.0
        batches.append({"x": x})
    return batches


def separable_block(seed: int = 0):
    """Conv -> HardSwish -> depthwise Conv -> Conv -> Relu -> Conv -> PRelu -> Conv, channel gains spread 100x."""
    rng = np.random.default_rng(seed)
    c = 8
    gains = np.geomspace(0.02, 2.0, c).astype(np.float32)
    w1 = (rng.standard_normal((c, 3, 3, 3)) * 0.3 * gains[:, None, None, None]).astype(np.float32)
    inits = [
        init("w1", w1), init("b1", (rng.standard_normal(c) * 0.1 * gains).astype(np.float32)),
        init("wd", (rng.standard_normal((c, 1, 3, 3)) * 0.5).astype(np.float32)),
        init("bd", (rng.standard_normal(c) * 0.1).astype(np.float32)),
        init("w3", (rng.standard_normal((c, c, 1, 1)) * gains[:, None, None, None]).astype(np.float32)),
        init("b3", (rng.standard_normal(c) * 0.1).astype(np.float32)),
        init("w4", (rng.standard_normal((c, c, 1, 1)) / gains[None, :, None, None] * 0.05).astype(np.float32)),
        init("slope", np.full((c, 1, 1), 0.1, np.float32)),
        init("w5", (rng.standard_normal((4, c, 1, 1)) * 0.3).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("HardSwish", ["c1"], ["h1"], name="hs1"),
        helper.make_node("Conv", ["h1", "wd", "bd"], ["d1"], name="dw", pads=[1, 1, 1, 1], group=c),
        helper.make_node("Conv", ["d1", "w3", "b3"], ["c3"], name="conv3"),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("Conv", ["r3", "w4"], ["c4"], name="conv4"),
        helper.make_node("PRelu", ["c4", "slope"], ["p4"], name="prelu4"),
        helper.make_node("Conv", ["p4", "w5"], ["y"], name="conv5"),
    ]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return make_model(graph)


def image_batches(count: int = 4, size: int = 12, channels: int = 3, seed: int = 2) -> list[dict[str, np.ndarray]]:
    """Smooth structured images (sums of random low-frequency waves and a bright square), not white noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    batches = []
    for _ in range(count):
        imgs = np.zeros((4, channels, size, size), np.float32)
        for i in range(4):
            for ch in range(channels):
                fx, fy, phase = rng.uniform(0.5, 3, 2).tolist() + [rng.uniform(0, 6.3)]
                imgs[i, ch] = np.sin(2 * np.pi * (fx * xx + fy * yy) + phase)
            top, left = rng.integers(0, size // 2, 2)
            imgs[i, :, top : top + size // 3, left : left + size // 3] += 1.5
        batches.append({"x": imgs})
    return batches


def matmul_model(k: int = 16, n: int = 8, seed: int = 0, gemm: bool = False):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n, k) if gemm else (k, n)) * 0.2).astype(np.float32)
    node = (helper.make_node("Gemm", ["x", "w"], ["y"], name="mm", transB=1) if gemm
            else helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"))
    shape = ["n", k] if gemm else ["n", 5, k]
    graph = helper.make_graph([helper.make_node("Relu", ["x0"], ["x"], name="act"), node], "mm",
                              [helper.make_tensor_value_info("x0", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [init("w", w)])
    return make_model(graph)


def outlier_batches(k: int = 16, gemm: bool = False, count: int = 3, seed: int = 3) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        x = rng.standard_normal((6, k) if gemm else (6, 5, k)).astype(np.float32)
        x[..., [2, 9]] *= 40.0  # outlier channels, as in transformer activations
        out.append({"x0": x})
    return out


def mobilenet_hardswish(seed: int = 0, width: int = 16, blocks: int = 3):
    """A MobileNetV3-style stack: stem Conv+HardSwish, then ``blocks`` x (depthwise 3x3 + HardSwish, pointwise 1x1 +
    HardSwish), GlobalAveragePool and a Gemm classifier. Structured weights as training leaves them: per-channel
    gains of the pointwise outputs spread over two decades (what BN folding produces), a few dead channels."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def gains(c):
        g = np.geomspace(0.03, 3.0, c)
        rng.shuffle(g)
        g[rng.choice(c, 2, replace=False)] = 1e-3
        return g.astype(np.float32)

    def conv(name, x, w, b, **attrs):
        inits.extend([init(f"{name}_w", w.astype(np.float32)), init(f"{name}_b", b.astype(np.float32))])
        nodes.append(helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [f"{name}_y"], name=name, **attrs))
        nodes.append(helper.make_node("HardSwish", [f"{name}_y"], [f"{name}_a"], name=f"{name}_hs"))
        return f"{name}_a"

    g = gains(width)
    x = conv("stem", "x", rng.standard_normal((width, 3, 3, 3)) * 0.4 * g[:, None, None, None],
             rng.standard_normal(width) * 0.2 * g, pads=[1, 1, 1, 1], strides=[2, 2])
    for i in range(blocks):
        x = conv(f"dw{i}", x, rng.standard_normal((width, 1, 3, 3)) * 0.6, rng.standard_normal(width) * 0.1,
                 pads=[1, 1, 1, 1], group=width)
        g = gains(width)
        x = conv(f"pw{i}", x, rng.standard_normal((width, width, 1, 1)) * 0.5 / np.sqrt(width) * g[:, None, None, None],
                 rng.standard_normal(width) * 0.2 * g)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flat"))
    inits.extend([init("fc_w", (rng.standard_normal((10, width)) * 0.5).astype(np.float32)),
                  init("fc_b", np.zeros(10, np.float32))])
    nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(nodes, "mobilenet_hs",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], inits)
    return make_model(graph)
