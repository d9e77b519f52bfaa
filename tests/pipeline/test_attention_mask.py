"""An additive attention mask built from an integer ``attention_mask`` input (Hugging Face's ``(1 - mask) *
finfo(float32).min``) and the scores it is added to stay float on every target (onnxq/mask_tensors.py): on ort-cpu the
masked-score Add and the Softmax used to join the integer region with a range spanning -3.4e38, and the output was lost
(all-MiniLM-L6-v2: worst SQNR -0.3 dB)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq.config import QuantConfig
from onnxq.graph import GraphIndex
from onnxq.mask_tensors import masked_tensors
from onnxq.pipeline import quantize
from onnxq.validate.metrics import sqnr_from_powers
from tests.helpers import make_model, run

D, L = 16, 12
FLOAT_MIN = float(np.finfo(np.float32).min)


def attention_model() -> onnx.ModelProto:
    """One attention head with a token embedding lookup: x = E[ids]; softmax(q k^T / sqrt(D) + mask bias) v W_o."""
    rng = np.random.default_rng(0)
    w = {n: (rng.standard_normal((D, D)) / np.sqrt(D)).astype(np.float32) for n in ("wq", "wk", "wv", "wo")}
    inits = [numpy_helper.from_array(a, n) for n, a in w.items()]
    inits += [numpy_helper.from_array(rng.standard_normal((50, D)).astype(np.float32), "table"),
              numpy_helper.from_array(np.array([1], np.int64), "axis1"),
              numpy_helper.from_array(np.array(1.0, np.float32), "one"),
              numpy_helper.from_array(np.array(FLOAT_MIN, np.float32), "float_min"),
              numpy_helper.from_array(np.array(np.sqrt(D), np.float32), "sqrt_d")]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["x"], name="embed"),
             helper.make_node("Cast", ["attention_mask"], ["m"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["m", "axis1"], ["m1"], name="unsqueeze"),
             helper.make_node("Sub", ["one", "m1"], ["inv"], name="invert"),
             helper.make_node("Mul", ["inv", "float_min"], ["bias"], name="mask_bias"),
             *(helper.make_node("MatMul", ["x", f"w{n}"], [n], name=n) for n in "qkv"),
             helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["s"], name="scores"),
             helper.make_node("Div", ["s", "sqrt_d"], ["s2"], name="scale"),
             helper.make_node("Add", ["s2", "bias"], ["s3"], name="apply_mask"),
             helper.make_node("Softmax", ["s3"], ["p"], name="softmax", axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["c"], name="context"),
             helper.make_node("MatMul", ["c", "wo"], ["y"], name="out")]
    graph = helper.make_graph(nodes, "attention",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", L]),
                               helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["n", L])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return make_model(graph)


def token_batches(count: int, seed: int, batch: int = 4) -> list[dict[str, np.ndarray]]:
    """Token ids with right padding: each row has 3..L real tokens."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        lengths = rng.integers(3, L + 1, batch)
        mask = (np.arange(L)[None] < lengths[:, None]).astype(np.int64)
        out.append({"ids": rng.integers(1, 50, (batch, L)) * mask, "attention_mask": mask})
    return out


def real_token_sqnr(reference: onnx.ModelProto, quantized: onnx.ModelProto, batches) -> float:
    signal = noise = 0.0
    for b in batches:
        keep = b["attention_mask"].astype(bool)
        r, q = run(reference, b)[0][keep], run(quantized, b)[0][keep]
        signal += float(np.square(r).sum())
        noise += float(np.square(r - q).sum())
    return sqnr_from_powers(signal, noise)


def test_masked_tensors_are_the_mask_and_the_masked_scores():
    model = attention_model()
    found = masked_tensors(model.graph, GraphIndex.build(model.graph))
    assert {"m", "m1", "inv", "bias", "s3"} <= found
    # the embedding lookup by token ids is data, and the Softmax output is ordinary probabilities
    assert not found & {"x", "q", "s", "s2", "p", "c", "y"}


@pytest.mark.parametrize("target", ["ort-cpu", "tensorrt"])
def test_attention_mask_stays_float(target):
    model = attention_model()
    result = quantize(model, calib=token_batches(4, seed=1), config=QuantConfig(target=target))
    quantized_inputs = {n.input[0] for n in result.model.graph.node if n.op_type == "QuantizeLinear"}
    assert not quantized_inputs & {"bias", "s3"}
    assert "q" in quantized_inputs or "x" in quantized_inputs  # the attention itself is quantized
    # the masked-score quantizer (scale ~1e36) left the output at about 0 dB
    assert real_token_sqnr(model, result.model, token_batches(3, seed=2)) > 20.0


def test_masked_fill_where_stays_float_on_ort_cpu():
    """``scores.masked_fill(mask == 0, -inf-like)`` exports as ``Where(Equal(mask, 0), -3.4e38, scores)``."""
    model = attention_model()
    graph = model.graph
    bias_nodes = {"cast", "unsqueeze", "invert", "mask_bias"}
    kept = [n for n in graph.node if n.name not in bias_nodes]
    del graph.node[:]
    graph.initializer.append(numpy_helper.from_array(np.array(0, np.int64), "zero"))
    graph.node.extend([helper.make_node("Equal", ["attention_mask", "zero"], ["pad"], name="is_pad"),
                       helper.make_node("Unsqueeze", ["pad", "axis1"], ["pad1"], name="unsqueeze")])
    for node in kept:
        if node.name == "apply_mask":
            node = helper.make_node("Where", ["pad1", "float_min", "s2"], ["s3"], name="apply_mask")
        graph.node.append(node)
    found = masked_tensors(graph, GraphIndex.build(graph))
    assert "s3" in found and not found & {"s2", "p"}
    result = quantize(model, calib=token_batches(4, seed=1), config=QuantConfig(target="ort-cpu"))
    quantized_inputs = {n.input[0] for n in result.model.graph.node if n.op_type == "QuantizeLinear"}
    assert "s3" not in quantized_inputs
    assert real_token_sqnr(model, result.model, token_batches(3, seed=2)) > 20.0
