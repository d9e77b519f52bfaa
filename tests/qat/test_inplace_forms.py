"""In-place and functional forms of adds, activations and reshapes map like their plain forms; what cannot be
mapped is listed, and ``strict=True`` refuses it."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from onnxq import qat
from onnxq.errors import OnnxqError
from tests.qat.conftest import calib_batches, prepared, train_steps
from tests.qat.nets import DispatcherAdd, InPlaceForms


def test_inplace_and_functional_forms_are_all_mapped():
    _, _, qmodel = prepared(InPlaceForms, strict=True)
    assert qmodel.mapping.unmapped == {}
    kinds = {s.kind for v in qmodel.mapping.activations.values() for s in v}
    assert "add" in kinds  # the skip inputs of +=, torch.add, operator.iadd, add_
    adds = sorted(s.call for v in qmodel.mapping.activations.values() for s in v if s.kind == "add")
    assert len(set(adds)) == 4
    train_steps(qmodel)  # in-place adds in training mode: autograd must accept the fake quant
    assert qat.verify(qmodel) <= 1e-6


def test_unmapped_tensors_are_listed_and_strict_refuses_them():
    _, _, qmodel = prepared(DispatcherAdd)
    assert len(qmodel.mapping.unmapped) == 1
    (why,) = qmodel.mapping.unmapped.values()
    assert "no torch add call" in why
    torch.manual_seed(0)
    with pytest.raises(OnnxqError, match="1 planned tensor\\(s\\) have no place in the torch model"):
        qat.prepare(DispatcherAdd().eval(), torch.randn(2, 3, 16, 16), calib=calib_batches(), strict=True,
                    spec=qat.ExportSpec(("x",), ("y",)))
