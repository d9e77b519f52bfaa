"""AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization"), per layer, with
torch (the ``torch`` extra); opt-in (``--adaround``) because it costs far more time than the other stages.

No labels and no training code: each quantized Conv/Gemm/MatMul is run alone in torch on the cached float inputs of
the calibration data (fake-quantized by the input's planned parameters) and its rounding is learned by distillation
from the FP32 layer's own output (the layer-wise objective of the paper, eq. 20-21). Only the layer's own op is
re-implemented in torch (``conv2d`` / ``matmul`` with the node's attributes), so no ONNX-to-torch converter is needed
and nothing else of the model has to convert.

Per weight element: ``W_soft = s * clip(floor(W / s) + h(V), qmin, qmax)`` with the rectified sigmoid
``h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1)``, ``zeta = 1.1``, ``gamma = -0.1``; ``V`` starts where
``h(V)`` equals the fractional part of ``W / s`` (so W_soft = W), and Adam minimises
``||f(x_q, W_soft) - f(x, W)||^2 + lambda * sum(1 - |2 h(V) - 1|**beta)`` with ``beta`` annealed from 20 to 2
after a 20% warm-up without the regulariser. The result is ``s * (floor(W / s) + [h(V) >= 0.5])``: values already on
the integer grid of the planned scale, so the Q/DQ pair reproduces exactly the learned integers.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper

from onnxq.dtypes import quant_dtype
from onnxq.errors import OnnxqError
from onnxq.recovery.layers import Layer, fake_quantize
from onnxq.scales.types import QuantParams, ScaleTable

log = logging.getLogger(__name__)

ZETA, GAMMA = 1.1, -0.1
REGULARISATION = 0.01
WARMUP = 0.2
BETA_START, BETA_END = 20.0, 2.0
LEARNING_RATE = 1e-2


def _torch():
    try:
        import torch
    except ImportError as exc:
        raise OnnxqError("--adaround needs torch: pip install 'onnxq[torch]'") from exc
    return torch


def _attr(node: onnx.NodeProto, name: str, default):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def layer_function(node: onnx.NodeProto):
    """The node's op in torch: ``f(x, w, b)``; None for attributes this does not cover (e.g. Conv auto_pad)."""
    torch = _torch()
    functional = torch.nn.functional
    if node.op_type == "Conv":
        if _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            return None
        kernel_rank = len(_attr(node, "kernel_shape", [0, 0]))
        if kernel_rank != 2:
            return None
        pads = list(_attr(node, "pads", [0, 0, 0, 0]))
        strides, dilations = list(_attr(node, "strides", [1, 1])), list(_attr(node, "dilations", [1, 1]))
        group = _attr(node, "group", 1)

        def conv(x, w, b):
            x = functional.pad(x, (pads[1], pads[3], pads[0], pads[2]))
            return functional.conv2d(x, w, b, strides, 0, dilations, group)

        return conv
    if node.op_type == "Gemm":
        if _attr(node, "transA", 0):
            return None
        trans_b, alpha, beta = _attr(node, "transB", 0), _attr(node, "alpha", 1.0), _attr(node, "beta", 1.0)

        def gemm(x, w, b):
            y = alpha * (x @ (w.T if trans_b else w))
            return y if b is None else y + beta * b

        return gemm
    return lambda x, w, b: x @ w


def learn_rounding(layer: Layer, x_quantized: np.ndarray, target: np.ndarray, params: QuantParams,
                   iterations: int, seed: int = 0) -> np.ndarray:
    """The layer's weight with learned rounding, on the grid of ``params`` (float32)."""
    torch = _torch()
    function = layer_function(layer.node)
    if function is None:
        return fake_quantize(layer.weight, params)
    torch.manual_seed(seed)
    w = torch.from_numpy(layer.weight.astype(np.float32))
    scale = torch.from_numpy(params.scale.astype(np.float32))
    if params.axis is not None:
        shape = [1] * w.ndim
        shape[params.axis] = -1
        scale = scale.reshape(shape)
    qmin, qmax = quant_dtype(params.dtype).clip_range()
    floor = torch.floor(w / scale)
    rest = (w / scale - floor).clamp(0.01, 0.99)
    v = torch.nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))
    x = torch.from_numpy(np.ascontiguousarray(x_quantized, np.float32))
    y = torch.from_numpy(np.ascontiguousarray(target, np.float32))
    b = torch.from_numpy(layer.bias) if layer.bias is not None else None
    optimizer = torch.optim.Adam([v], lr=LEARNING_RATE)
    warmup = int(WARMUP * iterations)

    def soft():
        return (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)

    for step in range(iterations):
        h = soft()
        w_soft = scale * torch.clamp(floor + h, qmin, qmax)
        loss = torch.mean((function(x, w_soft, b) - y) ** 2)
        if step >= warmup:
            progress = (step - warmup) / max(1, iterations - warmup)
            beta = BETA_END + 0.5 * (BETA_START - BETA_END) * (1 + np.cos(progress * np.pi))
            loss = loss + REGULARISATION * torch.sum(1 - torch.abs(2 * h - 1) ** beta) / h.numel()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        integers = torch.clamp(floor + (soft() >= 0.5).float(), qmin, qmax)
        return (integers * scale).numpy().astype(np.float32)


def adaround_model(model: onnx.ModelProto, table: ScaleTable, layers: dict[str, Layer],
                   inputs: dict[str, np.ndarray], reference: dict[str, np.ndarray], iterations: int) -> str:
    """Learned rounding of every quantized layer weight, written into ``model`` (fresh initializers)."""
    from onnxq.recovery.layers import replace_initializer

    users: dict[str, int] = {}
    for node in model.graph.node:
        for used in node.input:
            users[used] = users.get(used, 0) + 1
    done = 0
    for name, layer in layers.items():
        x_name, w_name = layer.node.input[0], layer.node.input[1]
        if x_name not in table or w_name not in table or x_name not in inputs or users.get(w_name) != 1:
            continue  # a weight shared by several layers keeps nearest rounding
        x_q = fake_quantize(inputs[x_name], table[x_name])
        rounded = learn_rounding(layer, x_q, reference[name], table[w_name], iterations)
        replace_initializer(model, w_name, rounded)  # same name: the plan and its Q/DQ still apply
        layer.weight = rounded
        done += 1
    log.info("AdaRound: %d layer(s)", done)
    return f"AdaRound: {done} layer(s), {iterations} iterations each"
