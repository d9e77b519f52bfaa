"""Every planned tensor maps to a place in the torch model, and the fake-quant forward is the Q/DQ model's."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from onnxq.calib.base import CalibOptions
from onnxq.config import QuantConfig
from onnxq.insert.qdq import InsertQDQ
from onnxq.qat.api import replan
from onnxq.runtime import make_session
from tests.qat.conftest import WITH_CONVTRANSPOSE, prepared, train_steps
from tests.qat.nets import Tiny, TinyAttention


def _qdq_outputs(qmodel, x: torch.Tensor) -> np.ndarray:
    """onnxruntime on onnxq's Q/DQ model built from the re-exported weights and the model's current scales."""
    _, prepared_model, plan = replan(qmodel)
    q = InsertQDQ(plan, qmodel.scale_table()).run(prepared_model).model
    return make_session(q).run(None, {"x": x.numpy()})[0]  # basic optimisations: reference Q/DQ arithmetic


@pytest.mark.parametrize("net_cls", [Tiny, TinyAttention])
def test_every_planned_tensor_is_mapped(net_cls):
    _, _, qmodel = prepared(net_cls)
    plan, mapping = qmodel.state.plan, qmodel.mapping
    assert mapping.unmapped == {}
    assert set(mapping.weights) == {t.name for t in plan.weights()}
    assert set(mapping.activations) == {t.name for t in plan.calibrated_activations()}
    assert set(mapping.shared) == {t.name for t in plan.activations() if t.shares_scale_with}


def test_tiny_mapping_details():
    _, _, qmodel = prepared(Tiny)
    sites = {w.param: w for w in qmodel.mapping.weights.values()}
    # Conv+BN fused by the exporter, ConvTranspose+BN and Gemm+BN folded by onnxq: all BN-folded in torch
    assert sites["stem.0.weight"].bn == "stem.1"
    assert sites["up.0.weight"].bn == "up.1" and sites["up.0.weight"].torch_axis == 0  # TensorRT: ConvT axis 0
    assert sites["fc1.weight"].bn == "bn1"
    assert sites["fc2.weight"].bn is None
    kinds = {s.kind for v in qmodel.mapping.activations.values() for s in v}
    assert {"module", "add"} <= kinds  # the residual Add's skip input is an argument of the torch add


def test_attention_mapping_uses_function_sites():
    _, _, qmodel = prepared(TinyAttention, QuantConfig())
    kinds = [s.kind for v in qmodel.mapping.activations.values() for s in v]
    assert kinds.count("matmul") == 4  # q @ k^T and attn @ v, both inputs
    assert "move" in kinds  # outputs of reshape/transpose/chunk that read a shared-scale Q/DQ
    transposed = [w for w in qmodel.mapping.weights.values() if w.transposed]
    assert {w.param for w in transposed} == {"qkv.weight", "proj.weight"}  # Linear on 3-d input -> MatMul(x, W^T)


# min-max initial ranges: with the default mse ranges one activation of Tiny sits on a rounding boundary, where
# float noise flips one quantization step between torch and onnxruntime (see onnxq/qat/README.md, "verify")
MINMAX = CalibOptions(method="minmax")


@pytest.mark.parametrize("net_cls,config", [(Tiny, replace(WITH_CONVTRANSPOSE, calib=MINMAX)),
                                            (TinyAttention, QuantConfig(calib=MINMAX)),
                                            (Tiny, QuantConfig(target="ort-cpu", calib=MINMAX))])
def test_fake_quant_forward_equals_onnxruntime_qdq(net_cls, config):
    _, _, qmodel = prepared(net_cls, config, learn_scales=True)
    train_steps(qmodel)  # BN in training mode, learned scales moved
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch_out = qmodel(x).numpy()
        float_out = qmodel.model(x).numpy()
    ort_out = _qdq_outputs(qmodel, x)
    scale = np.abs(ort_out).max()
    assert np.abs(torch_out - ort_out).max() <= 1e-5 * scale
    assert np.abs(torch_out - float_out).max() > 1e-4 * scale  # the fake quant does something


def test_verify_reports_the_fake_quant_error():
    from onnxq import qat

    _, _, qmodel = prepared(Tiny)
    assert qat.verify(qmodel) < 1e-5


def test_ptq_initialisation_equals_onnxq_ptq():
    """Before any training the fake-quant model is onnxq's PTQ model (same scales, same outputs)."""
    _, _, qmodel = prepared(Tiny)
    table = qmodel.scale_table()
    ptq = qmodel.state.ptq_scales
    for name, params in table.items():
        if qmodel.state.plan.tensors[name].role == "activation":
            assert params.equals(ptq[name]), name
        else:  # dynamic per-channel min-max of the same (folded) weights, computed in float32 by torch
            np.testing.assert_allclose(params.scale, ptq[name].scale, rtol=1e-6)


def test_quant_off_is_the_float_model():
    net, x, qmodel = prepared(Tiny)
    with torch.no_grad(), qmodel.float_mode():
        assert torch.equal(qmodel(x), net(x))
    with torch.no_grad():
        assert torch.equal(qmodel.model(x), net(x))  # the wrapped model itself stays float


def test_per_tensor_weights_follow_the_plan():
    from onnxq import qat

    _, _, qmodel = prepared(Tiny, QuantConfig(per_channel_weights=False))
    assert all(w.torch_axis is None for w in qmodel.mapping.weights.values())
    train_steps(qmodel)
    assert all(qmodel.scale_table()[n].scale.shape == () for n in qmodel.mapping.weights)
    assert qat.verify(qmodel) <= 1e-6
