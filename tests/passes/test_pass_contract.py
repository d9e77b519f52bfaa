"""Passes say what they do to their input (onnx-ir's in_place / changes_input), and callers copy only when needed."""

from __future__ import annotations

import pytest

from onnxq.config import QuantConfig
from onnxq.insert import InsertQDQ
from onnxq.passes import ConstantsToInitializers, FoldBatchNorm, InferShapes, PassManager, StripQDQ, UpgradeOpset
from onnxq.passes.base import Pass
from onnxq.pipeline import prepare
from onnxq.plan import build_plan
from onnxq.scales.types import symmetric_params
from tests.conftest import small_cnn

FLOAT_PASSES = [StripQDQ, UpgradeOpset, ConstantsToInitializers, FoldBatchNorm, InferShapes]


@pytest.mark.parametrize("cls", FLOAT_PASSES)
def test_declared_contract_holds(cls):
    model = small_cnn()
    before = model.SerializeToString()
    p: Pass = cls()
    result = p.call(model)
    if p.in_place:
        assert result.model is model and p.changes_input
    if not p.changes_input:
        assert model.SerializeToString() == before
    # run() never changes the caller's model, whatever the pass
    again = small_cnn()
    p.run(again)
    assert again.SerializeToString() == before


def test_manager_copies_once_and_keeps_the_input():
    model = small_cnn()
    before = model.SerializeToString()
    copies = []

    class Spy(ConstantsToInitializers):
        def call(self, m):
            copies.append(m)
            return super().call(m)

    out, _ = PassManager([Spy(), FoldBatchNorm(), Spy()]).run(model)
    assert model.SerializeToString() == before
    assert copies[0] is not model and copies[1] is copies[0] and out is copies[0]  # one copy, then in place
    out, _ = PassManager([Spy()]).run(model, keep_input=False)
    assert out is model


def test_prepare_and_insert_leave_their_inputs_alone():
    model = small_cnn()
    before = model.SerializeToString()
    prepared, _ = prepare(model, QuantConfig())
    assert model.SerializeToString() == before
    prepared_bytes = prepared.SerializeToString()
    plan = build_plan(prepared, QuantConfig())
    table = {name: symmetric_params(1.0) if t.axis is None else
             symmetric_params([1.0] * t.channels, axis=t.axis) for name, t in plan.tensors.items()}
    InsertQDQ(plan, table).run(prepared)
    assert prepared.SerializeToString() == prepared_bytes
