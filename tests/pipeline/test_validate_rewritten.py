"""``onnxq validate --per-layer`` leaves out the tensor names whose values onnxq's float rewrites changed by design
(the ort-cpu HardSwish 1/6 fold, padded depthwise channels), instead of listing them as huge errors or failing."""

from __future__ import annotations

import json

import numpy as np
import onnx

from onnxq.config import QuantConfig, RecoveryOptions
from onnxq.pipeline import quantize
from onnxq.rewritten_tensors import rewritten_tensors
from onnxq.validate.compare import compare_models, shared_layer_tensors
from tests.helpers import run_cli
from tests.pipeline.test_ort_cpu_mobile import _quantize, mobile_model


def _batch(seed: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((1, 4, 12, 12)).astype(np.float32)}


def test_rescaled_and_reshaped_names_are_found_and_left_out(tmp_path):
    model = mobile_model(4)
    quantized = _quantize(model).model
    shared = shared_layer_tensors(model, quantized)
    rewritten = rewritten_tensors(model, quantized, _batch(1))
    # the HardSwish/HardSigmoid outputs whose constant factor moved into their readers, and the tensors of the
    # depthwise groups padded to 16 channels
    assert {"h0", "h1", "h2", "gate", "se"} <= rewritten and {"p1", "p2", "flat"}.isdisjoint(rewritten)
    # without the list a padded tensor no longer crashes the comparison: it is counted as left out
    plain = compare_models(model, quantized, [_batch(2)], per_layer=True)
    assert plain.layers_left_out > 0 and len(plain.layers) + plain.layers_left_out == len(shared)

    onnx.save(model, tmp_path / "fp32.onnx")
    onnx.save(quantized, tmp_path / "int8.onnx")
    (tmp_path / "data").mkdir()
    for i in range(2):
        np.savez(tmp_path / "data" / f"{i}.npz", **_batch(3 + i))
    r = run_cli("validate", tmp_path / "fp32.onnx", tmp_path / "int8.onnx", "--data", tmp_path / "data", "--per-layer")
    assert r.returncode == 0, r.stderr
    assert "shared tensor name(s) left out of the per-layer list" in r.stdout
    r = run_cli("validate", tmp_path / "fp32.onnx", tmp_path / "int8.onnx", "--data", tmp_path / "data", "--per-layer",
                "--json")
    payload = json.loads(r.stdout)
    listed = {m["name"]: m["sqnr_db"] for m in payload["layers"]}
    assert listed and rewritten.isdisjoint(listed) and min(listed.values()) > 0  # no rescaled name read as error
    assert payload["layers_left_out"] == len(shared) - len(listed)


def test_a_graph_without_float_rewrites_keeps_every_name():
    model = mobile_model(4)
    plain = QuantConfig(target="tensorrt",
                        recovery=RecoveryOptions(equalize=False, bias_correction=False, smoothquant_alpha="off"))
    quantized = quantize(model, calib=[_batch(i) for i in range(4)], config=plain).model
    shared = shared_layer_tensors(model, quantized)
    assert shared and rewritten_tensors(model, quantized, _batch(1)) == set()


def test_quantize_val_per_layer_leaves_them_out_too():
    model = mobile_model(4)
    result = quantize(model, calib=[_batch(i) for i in range(4)], config=QuantConfig(target="ort-cpu"),
                      val=[_batch(10), _batch(11)], per_layer=True)
    validation = result.report.validation
    listed = {m.name for m in validation.layers}
    assert validation.layers_left_out > 0 and listed and {"h0", "h1", "h2", "gate", "se"}.isdisjoint(listed)
    assert min(m.sqnr_db for m in validation.layers) > 0
