"""What a model holds: op histogram, Q/DQ coverage per op type, and the scales of a quantized model."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxq.graph import QDQ_OPS, GraphIndex, default_opset, tensor_nbytes
from onnxq.ops import WEIGHTED_OPS
from onnxq.scales.qdq_reader import read_qdq


@dataclass
class ScaleInfo:
    tensor: str
    dtype: str
    axis: int | None
    channels: int
    scale_min: float
    scale_max: float
    zero_point_min: int
    zero_point_max: int
    block_size: int | None = None  # block-wise (int4) parameters: elements per scale along ``axis``


@dataclass
class ModelInspection:
    opset: int
    ops: Counter
    coverage: dict[str, tuple[int, int]]  # op type -> (nodes fed through DQ on every quantizable input, nodes)
    scales: list[ScaleInfo] = field(default_factory=list)
    initializer_bytes: int = 0


def _dq_fed(index: GraphIndex, node: onnx.NodeProto) -> bool:
    inputs = [n for n in node.input[:2] if n]
    return bool(inputs) and all((p := index.producer.get(n)) is not None and p.op_type == "DequantizeLinear"
                                for n in inputs)


def inspect_model(model: onnx.ModelProto) -> ModelInspection:
    graph = model.graph
    index = GraphIndex.build(graph)
    ops = Counter(n.op_type for n in graph.node)
    coverage: dict[str, tuple[int, int]] = {}
    for node in graph.node:
        if node.op_type in QDQ_OPS:
            continue
        covered, total = coverage.get(node.op_type, (0, 0))
        fed = _dq_fed(index, node) if node.op_type in WEIGHTED_OPS else any(
            (p := index.producer.get(n)) is not None and p.op_type == "DequantizeLinear" for n in node.input if n)
        coverage[node.op_type] = (covered + fed, total + 1)
    scales = []
    for name, entry in read_qdq(model).items():
        scale = entry.params.scale.astype(np.float64).ravel()
        zp = entry.params.zero_point.ravel()
        scales.append(ScaleInfo(name, entry.params.dtype, entry.params.axis, scale.size, float(scale.min()),
                                float(scale.max()), int(zp.min()), int(zp.max()), entry.params.block_size))
    size = sum(tensor_nbytes(i) for i in graph.initializer)
    return ModelInspection(default_opset(model), ops, coverage, scales, size)
