"""Bias correction on the Q/DQ model: after it, each quantized layer's per-channel output mean equals the FP32 one on
the calibration data (its definition), upstream quantization and corrections included."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxq.config import Overrides, QuantConfig, RecoveryOptions
from onnxq.graph import GraphIndex
from onnxq.pipeline import quantize
from onnxq.runtime import make_session
from onnxq.validate.metrics import ErrorAccumulator
from tests.helpers import init, make_model, run
from tests.recovery.nets_recovery import gemm_batches, gemm_model, image_batches

CORRECTED = QuantConfig(recovery=RecoveryOptions(bias_correction=True, bias_correction_batches=4))
PLAIN = QuantConfig(recovery=RecoveryOptions(bias_correction=False))


def channel_means(model: onnx.ModelProto, names: list[str], batches, axis: int = 1) -> dict[str, np.ndarray]:
    """Per-channel means of the tensors ``names`` over the batches, each batch weighted by its values (the
    definition bias correction matches)."""
    session = make_session(model, outputs=names)
    outs = [o.name for o in session.get_outputs()]
    sums: dict[str, np.ndarray] = {}
    counts = dict.fromkeys(names, 0)
    for batch in batches:
        for name, value in zip(outs, session.run(None, batch)):
            if name in counts:
                v = np.moveaxis(value.astype(np.float64), axis, -1).reshape(-1, value.shape[axis])
                sums[name] = sums.get(name, 0) + v.sum(axis=0)
                counts[name] += v.shape[0]
    return {name: sums[name] / counts[name] for name in names}


def test_the_mean_output_error_of_a_linear_layer_is_removed_exactly() -> None:
    model, batches = gemm_model(), gemm_batches(count=4)
    plain = quantize(model, calib=batches, config=PLAIN)
    corrected = quantize(model, calib=batches, config=CORRECTED)
    float_mean = channel_means(model, ["y"], batches)["y"]
    before = channel_means(plain.model, ["y"], batches)["y"] - float_mean
    after = channel_means(corrected.model, ["y"], batches)["y"] - float_mean
    assert np.abs(before).max() > 1e-2  # there was a shift to remove
    np.testing.assert_allclose(after, 0.0, atol=1e-5 * np.abs(float_mean).max())
    bias = GraphIndex.build(corrected.model.graph).array("b")
    np.testing.assert_allclose(bias - GraphIndex.build(model.graph).array("b"), -before, rtol=1e-4, atol=1e-5)
    assert "bias correction: 1 layer(s) in 1 level(s), 2 pass(es) over 4 calibration batch(es)" in \
        corrected.report.prepare_notes
    assert GraphIndex.build(model.graph).array("b") is not None  # the input model is unchanged
    np.testing.assert_array_equal(GraphIndex.build(model.graph).array("b"),
                                  GraphIndex.build(gemm_model().graph).array("b"))


def silu_chain(seed: int = 0, width: int = 8, depth: int = 2, bias: bool = True) -> onnx.ModelProto:
    """``depth`` x (Conv 3x3 -> SiLU as Sigmoid*Mul) then a 1x1 Conv head; one channel of each Conv has a large gain,
    so each symmetric INT8 activation range is set by tens while the SiLU tail [-0.28, 0] falls into a step or two."""
    rng = np.random.default_rng(seed)
    inits, nodes, x, c_in = [], [], "x", 3
    for i in range(depth):
        w = (rng.standard_normal((width, c_in, 3, 3)) * 0.4 + 0.15).astype(np.float32)
        w[0] *= 30.0
        inits.append(init(f"w{i}", w))
        inputs = [x, f"w{i}"]
        if bias:
            inits.append(init(f"b{i}", (rng.standard_normal(width) * 0.2 - 1.0).astype(np.float32)))
            inputs.append(f"b{i}")
        nodes += [helper.make_node("Conv", inputs, [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]),
                  helper.make_node("Sigmoid", [f"c{i}"], [f"s{i}"], name=f"sig{i}"),
                  helper.make_node("Mul", [f"c{i}", f"s{i}"], [f"a{i}"], name=f"silu{i}")]
        x, c_in = f"a{i}", width
    inits.append(init("wh", (rng.standard_normal((4, width, 1, 1)) * 0.3).astype(np.float32)))
    nodes.append(helper.make_node("Conv", [x, "wh"], ["y"], name="head"))
    graph = helper.make_graph(nodes, "silu_chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                  ["n", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return make_model(graph)


def test_a_layer_is_corrected_for_the_quantization_and_correction_upstream() -> None:
    model, batches = silu_chain(depth=1, bias=False), image_batches(count=4, size=16, seed=5)
    corrected = quantize(model, calib=batches, config=CORRECTED)
    # both layers' channel means in the whole Q/DQ model equal FP32's: the head's correction saw conv0 quantized and
    # corrected (a conv without a bias got one)
    want = channel_means(model, ["c0", "y"], batches)
    got = channel_means(corrected.model, ["c0", "y"], batches)
    for name in ("c0", "y"):
        np.testing.assert_allclose(got[name], want[name], atol=2e-5 * np.abs(want[name]).max() + 1e-6)
    # the head alone (conv0 kept float) needs another correction: the sequential one accounts for conv0's shift
    alone = quantize(model, calib=batches, config=replace(CORRECTED, overrides=Overrides.from_flags(
        exclude_nodes=["^conv0$"])))
    with_upstream, local = (head_bias(q.model) for q in (corrected, alone))
    assert np.abs(with_upstream - local).max() > 0.05 * np.abs(local).max(), (with_upstream, local)


def head_bias(model: onnx.ModelProto) -> np.ndarray:
    head = next(n for n in model.graph.node if n.name == "head")
    return GraphIndex.build(model.graph).array(head.input[2])


def sqnr(model: onnx.ModelProto, quantized: onnx.ModelProto, batches) -> float:
    acc = ErrorAccumulator()
    for batch in batches:
        acc.add(run(model, batch)[0], run(quantized, batch)[0])
    return acc.sqnr_db


def test_bias_correction_raises_the_sqnr_of_a_silu_cnn() -> None:
    model = silu_chain(seed=2, depth=4)
    calib, val = image_batches(count=4, size=16, seed=11), image_batches(count=3, size=16, seed=21)
    plain = sqnr(model, quantize(model, calib=calib, config=PLAIN).model, val)
    corrected = sqnr(model, quantize(model, calib=calib, config=CORRECTED).model, val)
    # measured: 24.90 dB without, 26.50 dB with bias correction
    assert corrected > plain + 1.0, (plain, corrected)
