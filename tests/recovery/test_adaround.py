"""AdaRound learns a rounding on the planned grid whose layer output error is below nearest rounding's."""

from __future__ import annotations

import numpy as np
import pytest

from onnxq.graph import GraphIndex
from onnxq.recovery.adaround import learn_rounding
from onnxq.recovery.layers import build_layer, fake_quantize, relative_error
from onnxq.scales.types import symmetric_params
from tests.recovery.nets_recovery import gemm_batches, gemm_model

pytest.importorskip("torch")


def test_learned_rounding_beats_nearest_and_stays_on_the_grid() -> None:
    model = gemm_model(k=32, n=8)
    index = GraphIndex.build(model.graph)
    layer = build_layer(model, model.graph.node[0], index)
    x = np.concatenate([b["x"] for b in gemm_batches(k=32)])
    w = index.array("w")
    w_params = symmetric_params(np.abs(w).max(axis=1) * 8, axis=0)  # a coarse grid: rounding matters
    x_q = fake_quantize(x, symmetric_params(np.abs(x).max()))
    reference = layer.run(x)
    nearest = relative_error(reference, layer.run(x_q, fake_quantize(w, w_params)))
    learned_w = learn_rounding(layer, x_q, reference, w_params, iterations=300)
    learned = relative_error(reference, layer.run(x_q, learned_w))
    assert learned < 0.7 * nearest, (learned, nearest)
    integers = learned_w / w_params.scale[:, None]
    np.testing.assert_allclose(integers, np.rint(integers), atol=1e-3)  # on the grid: Q/DQ keeps it exactly
    np.testing.assert_array_equal(fake_quantize(learned_w, w_params), learned_w)
    # each weight was rounded up or down, never further
    assert np.all(np.abs(integers - w / w_params.scale[:, None]) < 1.0 + 1e-4)
