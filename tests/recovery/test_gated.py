"""The gated session: any set of nodes quantized in one session, equal to separately quantized models."""

import numpy as np
import pytest
from onnx import numpy_helper

from onnxq import Overrides, QuantConfig, quantize
from onnxq.config import NodeSetting, RecoveryOptions
from onnxq.recovery.gated import GatedSession
from onnxq.recovery.sensitivity import calibrate_model
from onnxq.runtime import make_session
from onnxq.validate.metrics import ErrorAccumulator
from tests.recovery.nets import NODES, batches, fragile_chain
from tests.recovery.nets_recovery import image_batches, mobilenet_hardswish

# bit-exact comparisons on the unshifted graph: the activation shift (tensorrt's default) computes ``W (x - c)`` plus
# a bias holding ``W c``, whose float rounding depends on the Conv kernel onnxruntime picks (test below)
UNSHIFTED = RecoveryOptions(activation_shift=False)


@pytest.fixture(scope="module")
def setup():
    model = fragile_chain()
    calib = batches(4, seed=1)
    calibrated = calibrate_model(model, calib, QuantConfig(recovery=UNSHIFTED))
    return model, calib, calibrated, GatedSession(calibrated.prepared, calibrated.plan, calibrated.scales)


@pytest.mark.parametrize("quantized", [NODES, ("conv_frag",), ("conv_a", "conv_c"), ()])
def test_gated_equals_separately_quantized_model(setup, quantized):
    model, calib, _, gated = setup
    skip = Overrides(by_name={n: NodeSetting(skip=True) for n in NODES if n not in quantized})
    batch = batches(1, seed=7)[0]
    if quantized:
        # the gated session is the plan as calibrated, before the recover stage's bias correction (on for tensorrt)
        separate = quantize(model, calib=calib, config=QuantConfig(
            overrides=skip, recovery=RecoveryOptions(bias_correction=False, activation_shift=False))).model
        expected = make_session(separate).run(None, batch)
    else:
        expected = make_session(model).run(None, batch)
    got = gated.run(batch, quantized)
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5 * float(np.abs(e).max()))
        if quantized:  # the If branches compute the very tensors the Q/DQ model computes
            assert np.array_equal(g, e)


def test_gates_are_inputs_and_one_per_quantized_node(setup):
    _, _, calibrated, gated = setup
    assert gated.units == list(NODES)
    names = {i.name for i in gated.session.get_inputs()}
    assert set(gated.gates.values()) <= names and "x" in names
    assert len([n for n in gated.model.graph.node if n.op_type == "If"]) == 2 * len(NODES)  # data + weight


def test_error_against_cached_reference(setup):
    _, _, _, gated = setup
    gated.set_data(batches(2, seed=3))
    assert all(acc.noise == 0 for acc in gated.error(()))
    assert all(acc.noise > 0 for acc in gated.error(NODES))


def test_runs_from_a_cut_equal_full_runs():
    """Re-running only the part downstream of a changed node, from a snapshot's tensors, gives the full run's
    outputs bit for bit (only-quantized from the FP32 run, only-float from the fully quantized run)."""
    model = fragile_chain()
    calibrated = calibrate_model(model, batches(4, seed=1), QuantConfig(recovery=UNSHIFTED))
    gated = GatedSession(calibrated.prepared, calibrated.plan, calibrated.scales, cuts=3)
    assert [c.position for c in gated.cuts.cuts] == [gated.cuts.first_gate[u] for u in NODES[1:]]
    gated.set_data(batches(2, seed=2))
    everything = gated.snapshot(NODES)
    for unit in NODES:
        rest = [u for u in NODES if u != unit]
        for quantized, base in (([unit], gated.reference), (rest, everything)):
            full = gated.outputs(quantized)
            for got, expected in zip(gated.outputs(quantized, base=base), full, strict=True):
                assert all(np.array_equal(g, e) for g, e in zip(got, expected, strict=True))
    assert gated.runs["suffix"] > 0
    assert gated.cuts.use(1) == 1 and gated.cuts.use(0) == 0 and gated.cuts.cut_for({"conv_c"}) is None


def test_a_shifted_layer_switches_to_its_compensated_bias() -> None:
    """With the activation shift, a quantized pointwise layer's gate also selects the bias ``recover`` gives it with
    bias correction off (``b + W c + (W_q - W) c``): the gated model is the separately quantized one, up to the
    float rounding of Convs whose weights are now If outputs."""
    model, calib = mobilenet_hardswish(), image_batches(4, size=32, seed=2)
    calibrated = calibrate_model(model, calib, QuantConfig())
    gated = GatedSession(calibrated.prepared, calibrated.plan, calibrated.scales)
    separate = quantize(model, calib=calib, config=QuantConfig(recovery=RecoveryOptions(bias_correction=False)))
    inits = {i.name: numpy_helper.to_array(i) for i in separate.model.graph.initializer}
    want = {n.name: inits[n.input[2]] for n in separate.model.graph.node if n.input[0].endswith("_shifted_dequantized")}
    assert len(want) >= 2  # the pointwise Convs read shifted inputs
    ifs = {n.name: n for n in gated.model.graph.node if n.op_type == "If"}
    got = {i.name: numpy_helper.to_array(i) for i in gated.model.graph.initializer}
    for layer, bias in want.items():
        branch = next(a.g for a in ifs[f"{layer}_gate2"].attribute if a.name == "then_branch")
        np.testing.assert_array_equal(got[branch.node[0].input[0]], bias)
    acc = ErrorAccumulator()
    for batch in image_batches(2, size=32, seed=9):
        acc.add(make_session(separate.model).run(None, batch)[0], gated.run(batch, gated.units)[0])
    assert acc.sqnr_db > 60, acc.sqnr_db
