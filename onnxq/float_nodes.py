"""Nodes the ort-cpu target keeps float by the shape of the graph (docs/ort_cpu_rules.md 3.10): the float stem of a
CNN, the first Conv over the image and what follows it up to the first dense Conv.

A Conv over an image has 1-3 input channels, so its GEMM reduces over only ``channels x kh x kw`` (27 for RGB 3x3)
values: onnxruntime's ``QLinearConv`` gains nothing from its u8s8 kernels there, and quantizing the image costs a
full QuantizeLinear pass plus an NCHW->NHWC Transpose, while the float Conv runs in MLAS's NCHWc kernels with its
activation (Relu, HardSwish) fused. Measured on this machine (2 threads, one process, interleaved): RGB 3x3 stride-2
stem at 224x224, INT8 0.34x the float Conv; grey 1-channel stem at 64x256, 0.50x. Four input channels already gain
(1.35x at 112x112, 32 output channels), so the rule stops at three.

After a float stem, a depthwise Conv is no cheaper in integer either (onnxruntime's uint8 depthwise kernel is
slower than its float one; docs/ort_cpu_rules.md 3.9), and quantizing there would add a Q on the large early
feature map: the stem, the depthwise Convs and the one-input activations reading only float-prefix tensors stay
float together. The prefix ends at the first dense Conv, pooling or multi-input op.

A stem whose output a MaxPool pools (through its Relu/Clip; ShuffleNet's 3x3 stem to 24 channels) stays integer
(rule 3.25): after a ``QLinearConv`` onnxruntime runs the uint8 MaxPool channels-last (``NhwcMaxPool``), but after a
float Conv its QDQ propagation moves the Q in front of the MaxPool, which then runs uint8 channels-first (1351 us
against 81 us float on the ShuffleNetV2 layout's 112x112 map; the whole model 1.22x -> 1.81x FP32 with the stem
integer).

Graph-only (no plan): the planner keeps these Convs float by default, and the HardSwish rewrite
(passes/decompose_hard_activations.py) leaves the prefix's activations alone so MLAS fuses them into the Conv.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxq.graph import GraphIndex, attr, node_name

#: one-input activations that continue a float prefix (onnxruntime fuses them into a float Conv, or they are cheap)
PREFIX_ACTIVATIONS = frozenset({"Relu", "Clip", "HardSwish", "HardSigmoid", "LeakyRelu", "Sigmoid"})


def conv_weight_dims(node: onnx.NodeProto, index: GraphIndex) -> list[int] | None:
    """The weight shape of a Conv whose weight is an initializer, else None."""
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
        return None
    init = index.initializers.get(node.input[1])
    return list(init.dims) if init is not None else None


def is_depthwise_conv(node: onnx.NodeProto, index: GraphIndex) -> bool:
    """A grouped Conv with one input channel per group (MobileNet's depthwise 3x3/5x5)."""
    dims = conv_weight_dims(node, index)
    return dims is not None and len(dims) > 1 and dims[1] == 1 and int(attr(node, "group", 1)) > 1


#: a float stem moves the first Q from the image to the stem's output: only when that output holds at most this many
#: times the image's values (MobileNet 3x3 stride-2 stems to 16 channels: 1.33; ResNet's 7x7 stem to 64: 5.3, and
#: there the int8 stem measured faster, 5.2x vs 3.9x FP32 for the whole model)
MAX_STEM_GROWTH = 2.0


def is_stem_conv(node: onnx.NodeProto, index: GraphIndex, max_channels: int) -> bool:
    """An ungrouped Conv with at most ``max_channels`` input channels that reads a graph input (a Conv over an RGB
    or grey image; not the narrow second Conv of a squeeze-and-excitation block) and whose output holds at most
    ``MAX_STEM_GROWTH`` times the values of its input."""
    dims = conv_weight_dims(node, index)
    if dims is None or len(dims) <= 2 or int(attr(node, "group", 1)) != 1 or dims[1] > max_channels:
        return False
    strides = attr(node, "strides", [1] * (len(dims) - 2))
    growth = dims[0] / (dims[1] * float(np.prod(strides)))
    return (growth <= MAX_STEM_GROWTH and _reads_graph_input(node.input[0], index)
            and not _pooled_by_maxpool(node, index))


def _pooled_by_maxpool(node: onnx.NodeProto, index: GraphIndex) -> bool:
    """A MaxPool reads ``node``'s output, directly or through single-reader Relu/Clip/LeakyRelu nodes; other readers
    beside it (the Conv branch of a PP-HGNet stem, which concatenates the pooled and the convolved stem) do not
    matter: the pool runs on whatever the stem's output is."""
    tensor = node.output[0]
    for _ in range(4):
        readers = [reader for reader, _ in index.consumers.get(tensor, [])]
        if any(reader.op_type == "MaxPool" for reader in readers):
            return True
        reader = index.only_consumer(tensor)
        if reader is None or reader.op_type not in ("Relu", "Clip", "LeakyRelu") or not reader.output:
            return False
        tensor = reader.output[0]
    return False


def _reads_graph_input(tensor: str, index: GraphIndex, max_depth: int = 8) -> bool:
    """``tensor`` is a graph input, or is computed from one by ops with one non-constant input and no weight of
    their own (a normalisation ``(x - mean) / std``, a Cast)."""
    for _ in range(max_depth):
        if tensor in index.graph_inputs:
            return True
        producer = index.producer.get(tensor)
        if producer is None or producer.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm"):
            return False
        data = [t for t in producer.input if t and not index.is_initializer(t)]
        if len(data) != 1:
            return False
        tensor = data[0]
    return False


def float_prefix(graph: onnx.GraphProto, index: GraphIndex, max_channels: int) -> set[str]:
    """Names of the stem Convs (``is_stem_conv``) and of the depthwise Convs and one-input activations whose data
    input is written by a prefix node; empty when ``max_channels`` is 0."""
    if max_channels <= 0:
        return set()
    prefix: set[str] = set()
    for node in graph.node:  # topological order (ONNX requires it)
        if is_stem_conv(node, index, max_channels):
            prefix.add(node_name(node))
            continue
        if not node.input or not (is_depthwise_conv(node, index) or
                                  (node.op_type in PREFIX_ACTIVATIONS and node.domain in ("", "ai.onnx"))):
            continue
        producer = index.producer.get(node.input[0])
        if producer is not None and node_name(producer) in prefix:
            prefix.add(node_name(node))
    return prefix

