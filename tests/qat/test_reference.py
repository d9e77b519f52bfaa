"""The reference-model QAT experiments' building blocks: the imbalanced variant and the step-cost measurement."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from onnxq.models import registry
from onnxq.qat.reference import imbalanced_weights
from onnxq.qat.step_cost import measure_step_cost
from tests.qat.conftest import prepared
from tests.qat.nets import Tiny


def test_imbalanced_variant_computes_the_same_function(tmp_path):
    info = registry.get_model("centerpoint")
    path = imbalanced_weights("centerpoint", tmp_path / "w.pt", spread=8.0)
    base, variant = registry.load_network("centerpoint"), registry.load_network("centerpoint", path)
    inputs, _ = info.make_batch(registry.data_rng("centerpoint", "val", 0), 2)
    x = torch.from_numpy(inputs[info.inputs[0]])
    with torch.no_grad():
        for a, b in zip(base(x), variant(x)):
            np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-4 * float(a.abs().max()))
    bn = variant.backbone.stages[1][0][1]  # a BN followed by a Conv in the same stage: its channels rescaled
    ratio = (bn.weight / base.backbone.stages[1][0][1].weight).detach()
    assert ratio.max() / ratio.min() > 8  # channel ranges now differ by more than the spread


def test_step_cost_times_both_steps():
    _, _, qmodel = prepared(Tiny)
    g = torch.Generator().manual_seed(0)
    cost = measure_step_cost(qmodel, (torch.randn(4, 3, 16, 16, generator=g),), torch.randint(0, 5, (4,)),
                             torch.nn.functional.cross_entropy, steps=2, warmup=1)
    assert cost.float_ms > 0 and cost.qat_ms > 0 and cost.steps == 2
    assert not qmodel.training
