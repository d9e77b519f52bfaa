"""Float tensors that carry an additive mask built from an integer model input: they stay float on every target.

Transformer exporters turn an integer or boolean ``attention_mask`` input into an *additive* mask: ``Cast`` to float,
``Unsqueeze``, then ``(1 - mask) * torch.finfo(float32).min`` (Hugging Face ``get_extended_attention_mask``) or
``* -10000.0`` (the original BERT), added to the attention scores before the Softmax. The mask holds two values, one
of them a sentinel of magnitude 1e4 to 3.4e38, and the masked scores hold the sentinel too. A linear quantizer's
range over such a tensor spans the sentinel, so every real score falls into one code: on all-MiniLM-L6-v2 with
``--target ort-cpu`` the masked-score Add and the Softmax after it joined the integer region with a scale of 1.3e36,
and the sentence embeddings lost all agreement with FP32 (worst SQNR -0.3 dB; docs/real_models.md).

What counts (graph structure only, no data): a *mask image* is a float tensor computed from integer/boolean graph
inputs and constants alone through elementwise and shape ops (no table lookup: ``Gather`` of a float embedding table
by token ids is data, not a mask). A *masked* tensor is the output of an ``Add``/``Sub`` that reads a mask image or a
masked tensor, of a ``Where`` that selects by a mask image between the data and a sentinel constant (``masked_fill``:
``Where(mask, scores, -inf)``, any constant of magnitude at least :data:`SENTINEL`), and what data-movement ops pass
on from them, up to the first other op (the Softmax, whose output is ordinary probabilities). Multiplicative 0/1 masks
(``x * mask``) have an ordinary range and are not listed.
"""

from __future__ import annotations

import onnx
from onnx import numpy_helper

from onnxq.graph import GraphIndex

INTEGER_TYPES = frozenset({
    onnx.TensorProto.BOOL, onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32,
    onnx.TensorProto.INT64, onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32,
    onnx.TensorProto.UINT64,
})
#: ops through which an integer input stays a mask image (elementwise arithmetic, comparisons, shape changes)
MASK_IMAGE_OPS = frozenset({
    "Cast", "Unsqueeze", "Squeeze", "Reshape", "Expand", "Tile", "Transpose", "Flatten", "Identity", "Sub", "Mul",
    "Add", "Div", "Neg", "Not", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Where",
    "Min", "Max", "Clip", "CastLike",
})
#: ops that apply an additive mask to data, and data-movement ops that carry the masked values on
APPLIES_MASK = frozenset({"Add", "Sub"})
CARRIES_MASK = frozenset({"Reshape", "Transpose", "Unsqueeze", "Squeeze", "Expand", "Flatten", "Identity"})
#: a constant this large (or infinite) selected by a mask is a sentinel, not data (BERT's mask value is -10000)
SENTINEL = 1e4


def is_constant(index: GraphIndex, name: str) -> bool:
    if index.is_initializer(name) and name not in index.graph_inputs:
        return True
    producer = index.producer.get(name)
    return producer is not None and producer.op_type == "Constant"


def mask_images(graph: onnx.GraphProto, index: GraphIndex) -> set[str]:
    """Tensors computed only from integer/boolean graph inputs and constants by :data:`MASK_IMAGE_OPS` (any
    dtype; the planner cares about the float ones)."""
    found = {i.name for i in graph.input
             if i.type.HasField("tensor_type") and i.type.tensor_type.elem_type in INTEGER_TYPES}
    if not found:
        return set()
    for node in graph.node:  # topological order
        if node.op_type not in MASK_IMAGE_OPS or node.domain not in ("", "ai.onnx"):
            continue
        inputs = [t for t in node.input if t]
        if any(t in found for t in inputs) and all(t in found or is_constant(index, t) for t in inputs):
            found.update(o for o in node.output if o)
    return found


def sentinel_constant(index: GraphIndex, name: str) -> bool:
    """A constant (an initializer, or a ``Constant`` node as exporters write them before onnxq's prepare moves them)
    holding a value of magnitude at least :data:`SENTINEL` (or an infinity)."""
    if name in index.graph_inputs:
        return False
    producer = index.producer.get(name)
    if index.is_initializer(name):
        values = index.array(name)
    elif producer is not None and producer.op_type == "Constant" and producer.attribute and \
            producer.attribute[0].name == "value":
        values = numpy_helper.to_array(producer.attribute[0].t)
    else:
        return False
    return values.size > 0 and values.dtype.kind == "f" and bool((abs(values) >= SENTINEL).any())


def masked_tensors(graph: onnx.GraphProto, index: GraphIndex) -> set[str]:
    """Mask images built from the model's integer inputs and the tensors an additive mask lands in (see the module
    docstring): none of them is quantized."""
    images = mask_images(graph, index)
    if not images:
        return set()
    integer_inputs = {i.name for i in graph.input}
    masked = {t for t in images if t not in integer_inputs}
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        selects_sentinel = node.op_type == "Where" and len(node.input) == 3 and node.input[0] in images and \
            any(t in masked or sentinel_constant(index, t) for t in node.input[1:])
        if selects_sentinel or (any(t in masked for t in node.input) and node.op_type in APPLIES_MASK | CARRIES_MASK):
            masked.update(o for o in node.output if o)
    return masked
