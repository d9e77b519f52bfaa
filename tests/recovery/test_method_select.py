"""``--method auto`` scores each candidate range by the consuming layer's output error, as its definition says:
the score equals the error of the real Q/DQ model with that range, and the smallest score wins."""

from __future__ import annotations

import numpy as np

from onnxq.calib.base import CalibOptions
from onnxq.calib.collect import collect_statistics
from onnxq.config import QuantConfig
from onnxq.graph import GraphIndex
from onnxq.insert import InsertQDQ
from onnxq.plan import build_plan
from onnxq.recovery.layers import build_layer, relative_error
from onnxq.recovery.method_select import candidate_ranges, select_ranges
from onnxq.scales.compute import compute_scales
from onnxq.scales.types import symmetric_params
from tests.helpers import run
from tests.recovery.nets_recovery import gemm_batches, gemm_model


def test_auto_scores_equal_the_quantized_models_output_error_and_the_best_wins() -> None:
    model = gemm_model(input_relu=True)
    batches = [{"x0": b["x"]} for b in gemm_batches()]
    config = QuantConfig(calib=CalibOptions(method="auto"))
    plan = build_plan(model, config)
    calibrators, _ = collect_statistics(model, {"x": CalibOptions(method="auto")}, batches)
    index = GraphIndex.build(model.graph)
    table = compute_scales(plan, calibrators, {"w": index.array("w")})
    x = np.concatenate([b["x0"] for b in batches])  # Relu(x0) == x0: the inputs are positive
    layer = build_layer(model, model.graph.node[1], index)
    reference = {"fc": layer.run(x)}
    chosen, choices = select_ranges(plan, calibrators, table, {"fc": layer}, {"x": x}, reference)
    [choice] = choices
    assert set(choice.errors) >= {"minmax", "mse"}
    assert choice.errors[choice.method] == min(choice.errors.values())
    # each score is the relative output error of the real Q/DQ model quantized with that candidate
    float_out = run(model, {"x0": x})[0]
    for label, (lo, hi) in candidate_ranges(calibrators["x"], True).items():
        if label not in choice.errors:
            continue  # a duplicate of another candidate's parameters
        trial = dict(table, x=symmetric_params(max(abs(lo), abs(hi))))
        quantized = InsertQDQ(plan, trial).run(model).model
        measured = relative_error(float_out, run(quantized, {"x0": x})[0])
        np.testing.assert_allclose(choice.errors[label], measured, rtol=1e-3)
    best = candidate_ranges(calibrators["x"], True)[choice.method]
    assert chosen["x"].equals(symmetric_params(max(abs(best[0]), abs(best[1]))))


def test_auto_is_a_calibration_method_and_its_standalone_range_is_mse() -> None:
    model = gemm_model()
    batches = gemm_batches()
    cals, _ = collect_statistics(model, {"x": CalibOptions(method="auto")}, batches)
    mses, _ = collect_statistics(model, {"x": CalibOptions(method="mse")}, batches)
    assert cals["x"].compute_range(True) == mses["x"].compute_range(True)
