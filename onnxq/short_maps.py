"""Depthwise Convs the ort-cpu target keeps float because, at the shape the model is deployed at, most of their
kernel rows fall into the vertical zero padding (docs/ort_cpu_rules.md 3.17).

onnxruntime's two depthwise kernels treat padding differently. The float one (MLAS NCHWc direct convolution) trims
the kernel rows that would read padding rows (``ComputeEffectiveKernel`` in MLAS ``snchwc.cpp``), so on a feature
map only 2 or 3 rows high a 5x5 kernel costs 2/5 or 3/5 of its taps. The uint8 one (``QLinearConv``, MLAS
``MlasConvSymDepthwise``) pays for every tap of the kernel wherever it stands. Measured per node
(``benchmarks/op_profile.py --top``, both near 25 GMAC/s counting the taps each one computes): PP-OCR's classifier,
5x5 kernels on 2x96 and 3x96 maps, 200-208 channels: 13 us float against 38 us uint8; MobileNetV3-Small's 5x5 kernels
on 14x14 maps (9% of the rows padded): 50 us float against 49 us uint8.

Text-line models (OCR classifiers and recognisers) downsample the height to 2-3 rows and keep the width: there the
float depthwise Conv, with its activation left whole so MLAS fuses it into the Conv, beats the integer one by more
than the DequantizeLinear/QuantizeLinear and layout conversions around it cost.

The shape comes from the deployment: graph inputs with symbolic dimensions (``[-1, 3, ?, ?]`` in PP-OCR's models) are
pinned to ``QuantConfig.input_shapes`` (``quantize`` takes them from the first calibration batch) and the shapes
inferred with ONNX shape inference on a copy of the graph; nothing of the model itself changes.
"""

from __future__ import annotations

import logging

import onnx

from onnxq.float_nodes import PREFIX_ACTIVATIONS, is_depthwise_conv
from onnxq.graph import GraphIndex, attr, node_name, skeleton

log = logging.getLogger(__name__)

#: a depthwise Conv whose kernel rows fall into the vertical padding at least this often (over its output rows) stays
#: float: 5x5 kernels on maps 2 or 3 rows high (3/5, 2/5 of the rows padded) measured faster float, 5x5 kernels on 14x14
#: and 7x7 maps (9% and 17%) and 3x3 kernels on 6-row maps (11%) did not (docs/ort_cpu_rules.md 3.17)
MIN_PADDED_ROW_SHARE = 1 / 3

InputShapes = tuple[tuple[str, tuple[int, ...]], ...]


def deployment_shapes(model: onnx.ModelProto, input_shapes: InputShapes) -> dict[str, tuple[int, ...]]:
    """The static shape of every tensor ONNX shape inference can tell, with the graph inputs named in
    ``input_shapes`` pinned to those dimensions (a copy of the graph is inferred; ``model`` is not changed)."""
    pinned = skeleton(model)  # a copy without the large weights (typed inputs instead): enough for shapes
    given = dict(input_shapes)
    for value in pinned.graph.input:
        dims = given.get(value.name)
        shape = value.type.tensor_type.shape
        if dims is None or len(shape.dim) != len(dims):
            continue
        for dim, size in zip(shape.dim, dims, strict=True):
            dim.Clear()
            dim.dim_value = int(size)
    del pinned.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(pinned, strict_mode=False, data_prop=True)
    except Exception as exc:  # advisory, like onnxq.passes.infer_shapes: no shapes, no float short-map Convs
        log.info("shape inference at the deployment shape failed: %s", str(exc).splitlines()[0])
        return {}
    shapes: dict[str, tuple[int, ...]] = {}
    for value in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        dims = value.type.tensor_type.shape.dim
        if value.type.HasField("tensor_type") and dims and all(d.HasField("dim_value") and d.dim_value > 0
                                                                for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    return shapes


def padded_row_share(kernel: int, stride: int, dilation: int, pad_top: int, pad_bottom: int, height: int) -> float:
    """Share of (output row, kernel row) pairs of a convolution over ``height`` input rows whose kernel row reads a
    padding row."""
    span = dilation * (kernel - 1) + 1
    out_rows = (height + pad_top + pad_bottom - span) // stride + 1
    if out_rows <= 0:
        return 0.0
    padded = sum(1 for y in range(out_rows) for r in range(kernel)
                 if not 0 <= y * stride - pad_top + r * dilation < height)
    return padded / (out_rows * kernel)


def conv_padded_row_share(node: onnx.NodeProto, input_shape: tuple[int, ...]) -> float:
    """:func:`padded_row_share` of a 2-D Conv node reading an NCHW tensor of ``input_shape`` (0 for other Convs
    and for ``auto_pad`` other than NOTSET)."""
    kernel = attr(node, "kernel_shape")
    if len(input_shape) != 4 or kernel is None or len(kernel) != 2:
        return 0.0
    auto_pad = attr(node, "auto_pad", b"NOTSET")
    if (auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad) != "NOTSET":
        return 0.0
    pads = attr(node, "pads", [0, 0, 0, 0])
    return padded_row_share(int(kernel[0]), int(attr(node, "strides", [1, 1])[0]),
                            int(attr(node, "dilations", [1, 1])[0]), int(pads[0]), int(pads[2]), input_shape[2])


def short_map_depthwise(model: onnx.ModelProto, input_shapes: InputShapes,
                        min_share: float = MIN_PADDED_ROW_SHARE) -> set[str]:
    """Names of the depthwise Convs whose kernel rows read vertical padding at least ``min_share`` of the time at
    the deployment shape, and of the one-input activations that follow each of them (a chain of single readers):
    and the squeeze-and-excitation gate after them (:func:`squeeze_excitation`): the nodes that stay float together,
    with the activations left whole for MLAS to fuse into the Convs."""
    graph = model.graph
    index = GraphIndex.build(graph)
    depthwise = [n for n in graph.node if is_depthwise_conv(n, index)]
    if not depthwise:
        return set()
    shapes = deployment_shapes(model, input_shapes)
    chosen: set[str] = set()
    for node in depthwise:
        shape = shapes.get(node.input[0])
        if shape is None or conv_padded_row_share(node, shape) < min_share:
            continue
        chosen.add(node_name(node))
        tensor = node.output[0]
        while (reader := index.only_consumer(tensor)) is not None and _is_activation(reader):
            chosen.add(node_name(reader))
            tensor = reader.output[0]
        chosen.update(squeeze_excitation(tensor, index))
    return chosen


def _is_activation(node: onnx.NodeProto) -> bool:
    return node.op_type in PREFIX_ACTIVATIONS and node.domain in ("", "ai.onnx")


def squeeze_excitation(tensor: str, index: GraphIndex) -> list[str]:
    """The nodes of a squeeze-and-excitation gate on ``tensor`` -- ``GlobalAveragePool(tensor)``, then 1x1 Convs and
    one-input activations one after the other, then ``Mul(tensor, gate)`` -- when ``tensor`` has no other reader;
    else none. Float after a float depthwise Conv, the gate adds no conversion (the Q moves past the Mul) and runs
    its activations fused into its Convs."""
    readers = index.consumers.get(tensor, [])
    if len(readers) != 2 or tensor in index.graph_outputs:
        return []
    pools = [n for n, _ in readers if n.op_type == "GlobalAveragePool"]
    muls = [n for n, _ in readers if n.op_type == "Mul"]
    if len(pools) != 1 or len(muls) != 1:
        return []
    gate = [pools[0]]
    current = pools[0].output[0]
    while (reader := index.only_consumer(current)) is not None and reader is not muls[0]:
        if not (_is_activation(reader) or (reader.op_type == "Conv" and len(reader.input) > 1
                                           and index.is_initializer(reader.input[1]))):
            return []
        gate.append(reader)
        current = reader.output[0]
    if reader is not muls[0] or len(gate) < 2:
        return []
    return [node_name(n) for n in (*gate, muls[0])]
