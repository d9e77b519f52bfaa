"""Bias correction removes the mean output error of a quantized linear layer exactly (on its calibration data)."""

from __future__ import annotations

import numpy as np

from onnxq.graph import GraphIndex
from onnxq.recovery.bias_correction import correct_biases
from onnxq.recovery.layers import build_layer, fake_quantize
from onnxq.scales.types import symmetric_params
from tests.recovery.nets_recovery import gemm_batches, gemm_model


def test_bias_correction_zeroes_the_mean_error_of_a_linear_layer() -> None:
    model = gemm_model()
    index = GraphIndex.build(model.graph)
    x = np.concatenate([b["x"] for b in gemm_batches()])
    w = index.array("w")
    table = {"x": symmetric_params(np.abs(x).max() * 0.5),  # a clipping range: a biased input error too
             "w": symmetric_params(np.abs(w).max(axis=1), axis=0)}
    layer = build_layer(model, model.graph.node[0], index)
    reference = layer.run(x)
    xq, wq = fake_quantize(x, table["x"]), fake_quantize(w, table["w"])
    before = (layer.run(xq, wq) - reference).mean(axis=0)
    assert np.abs(before).max() > 1e-2  # there is a shift to remove

    shifts = correct_biases(model, table, {"fc": layer}, {"x": x}, {"fc": reference})
    assert [s.layer for s in shifts] == ["fc"]
    new_bias = GraphIndex.build(model.graph).array(model.graph.node[0].input[2])
    after = (layer.run(xq, wq, new_bias) - reference).mean(axis=0)
    np.testing.assert_allclose(after, 0.0, atol=1e-5 * np.abs(reference).max())
    np.testing.assert_allclose(new_bias - layer.bias, -before, rtol=1e-4, atol=1e-6)


def test_a_layer_without_bias_gets_one_and_a_matmul_is_left_alone() -> None:
    model = gemm_model()
    node = model.graph.node[0]
    del node.input[2]
    index = GraphIndex.build(model.graph)
    x = np.concatenate([b["x"] for b in gemm_batches()])
    table = {"x": symmetric_params(np.abs(x).max()), "w": symmetric_params(np.abs(index.array("w")).max(axis=1), 0)}
    layer = build_layer(model, node, index)
    correct_biases(model, table, {"fc": layer}, {"x": x}, {"fc": layer.run(x)})
    assert len(node.input) == 3 and node.input[2] == "fc_bias_corrected"
