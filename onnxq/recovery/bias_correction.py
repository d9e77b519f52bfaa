"""Bias correction: fold the expected per-channel output shift of quantization into the layer's bias.

Nagel et al. 2019 ("Data-Free Quantization", section 4.2): quantizing a layer's weights (and inputs) shifts the
mean of each output channel, ``E[y_q] - E[y] = E[(W_q - W) x] + ...``, and the shift is biased, not random -- most
visibly when the input has a large mean (a first convolution on raw 0..255 pixels). Subtracting the expected shift
from the bias removes it. This is the empirical variant, as OpenVINO NNCF's *fast bias correction*: the layer is run
alone on cached float inputs, once in float and once with its input and weight fake-quantized by their planned
parameters, and ``bias += mean(y - y_q)`` over every axis except the output channel (Conv: axis 1; Gemm and
MatMul: the last axis).

A Conv or Gemm without a bias gets one. A MatMul has no bias input and is left alone (an Add would have to be
inserted; noted in the result). Biases stay float in the Q/DQ model (TensorRT and onnxruntime quantize them
internally), so the correction reaches the deployed engine unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from onnxq.graph import all_names, unique_name
from onnxq.recovery.layers import Layer, fake_quantize
from onnxq.scales.types import ScaleTable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BiasShift:
    layer: str
    mean_abs_shift: float  # mean |correction| over the output channels
    relative_shift: float  # that over the RMS of the layer's float output


def channel_mean(y: np.ndarray, op_type: str) -> np.ndarray:
    """Mean over every axis except the output channel (Conv: 1, Gemm/MatMul: last)."""
    axis = 1 if op_type == "Conv" else y.ndim - 1
    return y.astype(np.float64).mean(axis=tuple(a for a in range(y.ndim) if a != axis))


def expected_shift(layer: Layer, x: np.ndarray, table: ScaleTable, reference: np.ndarray) -> np.ndarray | None:
    """``mean(y - y_q)`` per output channel, or None when the layer's input or weight is not quantized."""
    x_name, w_name = layer.node.input[0], layer.node.input[1]
    if x_name not in table or w_name not in table:
        return None
    quantized = layer.run(fake_quantize(x, table[x_name]), fake_quantize(layer.weight, table[w_name]))
    return channel_mean(reference, layer.node.op_type) - channel_mean(quantized, layer.node.op_type)


def correct_biases(model: onnx.ModelProto, table: ScaleTable, layers: dict[str, Layer],
                   inputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> list[BiasShift]:
    """Add each quantized layer's expected output shift to its bias, in ``model`` (changed in place)."""
    taken = all_names(model.graph)
    users: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    inits = {i.name: i for i in model.graph.initializer}
    done: list[BiasShift] = []
    for node in model.graph.node:
        layer = layers.get(node.name or node.output[0])
        if layer is None or layer.node.op_type == "MatMul" or node.input[0] not in inputs:
            continue
        shift = expected_shift(layer, inputs[node.input[0]], table, reference[layer.name])
        if shift is None:
            continue
        old = layer.bias.astype(np.float64) if layer.bias is not None else np.zeros(shift.size)
        if old.size != shift.size:
            continue  # a broadcast Gemm bias: not per channel
        beta = next((a.f for a in node.attribute if a.name == "beta"), 1.0) if node.op_type == "Gemm" else 1.0
        new = (old.reshape(-1) + shift / beta).reshape(old.shape)
        has_bias = len(node.input) > 2 and node.input[2] in inits
        dtype = numpy_helper.to_array(inits[node.input[2]]).dtype if has_bias else layer.weight.dtype
        if has_bias and users.get(node.input[2], 0) == 1:
            inits[node.input[2]].CopyFrom(numpy_helper.from_array(new.astype(dtype), node.input[2]))
        else:  # no bias yet, or a bias shared with other nodes: give this node its own
            name = unique_name(taken, f"{node.name or node.output[0]}_bias_corrected")
            model.graph.initializer.append(numpy_helper.from_array(new.astype(dtype), name))
            while len(node.input) < 3:
                node.input.append("")
            node.input[2] = name
        rms = float(np.sqrt(np.mean(reference[layer.name].astype(np.float64) ** 2))) or 1.0
        done.append(BiasShift(layer.name, float(np.abs(shift).mean()), float(np.abs(shift).mean()) / rms))
        log.debug("bias correction of %r: mean |shift| %.3g = %.3g of the output RMS", layer.name,
                  done[-1].mean_abs_shift, done[-1].relative_shift)
    log.info("bias correction: %d layer(s) corrected", len(done))
    return done
