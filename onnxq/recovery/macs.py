"""Multiply-accumulates of the weighted nodes (Conv, ConvTranspose, Gemm, MatMul), measured on one real batch.

Shapes come from onnxruntime running the batch with the nodes' inputs and outputs exposed, so dynamic dims and
shape-computing subgraphs need no shape inference. Per node (N = batch):

- Conv: ``size(Y) * C_in/group * prod(kernel)`` (W is ``C_out x C_in/group x k...``);
- ConvTranspose: ``size(X) * C_out/group * prod(kernel)`` (W is ``C_in x C_out/group x k...``);
- MatMul: ``size(Y) * K`` with K the last dim of A; Gemm: ``size(Y) * K`` (K from A and ``transA``).

A node counts as quantized when one of its first two inputs is produced by a DequantizeLinear.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper

from onnxq.data import Batch
from onnxq.graph import GraphIndex
from onnxq.runtime import make_session, run_batch

log = logging.getLogger(__name__)

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def node_name(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


def _weighted(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type in WEIGHTED_OPS and n.domain in ("", "ai.onnx")]


def node_macs(model: onnx.ModelProto, batch: Batch) -> dict[str, int]:
    """MACs of every weighted node of ``model`` for ``batch`` (one onnxruntime run)."""
    index = GraphIndex.build(model.graph)
    nodes = _weighted(model)
    wanted = {t for n in nodes for t in (n.input[0], n.input[1], n.output[0]) if not index.is_initializer(t)}
    session = make_session(model, outputs=sorted(wanted))
    names = [o.name for o in session.get_outputs()]
    shapes = {n: a.shape for n, a in zip(names, run_batch(session, batch, "the MAC-count batch"))}
    for name, init in index.initializers.items():
        shapes.setdefault(name, tuple(init.dims))
    macs = {}
    for node in nodes:
        x, w, y = (shapes.get(t) for t in (node.input[0], node.input[1], node.output[0]))
        if x is None or w is None or y is None:
            log.debug("no shapes for %s; counting 0 MACs", node_name(node))
            macs[node_name(node)] = 0
            continue
        macs[node_name(node)] = _macs(node, tuple(x), tuple(w), tuple(y))
    return macs


def _macs(node: onnx.NodeProto, x: tuple, w: tuple, y: tuple) -> int:
    if node.op_type == "Conv":
        return int(np.prod(y)) * int(np.prod(w[1:]))
    if node.op_type == "ConvTranspose":
        return int(np.prod(x)) * int(np.prod(w[1:]))
    if node.op_type == "Gemm":
        trans_a = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "transA"), 0)
        return int(np.prod(y)) * int(x[0] if trans_a else x[-1])
    return int(np.prod(y)) * int(x[-1])  # MatMul


def quantized_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the weighted nodes that read a DequantizeLinear output on their data or weight input."""
    producer = {o: n for n in model.graph.node for o in n.output}
    out = set()
    for node in _weighted(model):
        if any((p := producer.get(t)) is not None and p.op_type == "DequantizeLinear" for t in node.input[:2]):
            out.add(node_name(node))
    return out


def float_mac_share(macs: dict[str, int], float_nodes: set[str] | list[str]) -> float:
    """Share of all weighted-node MACs spent in ``float_nodes``."""
    total = sum(macs.values())
    return sum(macs.get(n, 0) for n in float_nodes) / total if total else 0.0
