"""Loading any exporter's model: external data, opsets 11 to 21, -1 dims; saving atomically."""

import numpy as np
import onnx
import pytest
from onnx import helper

import onnxq
from onnxq.errors import OnnxqError
from onnxq.graph import load_model, save_model
from tests.conftest import small_cnn
from tests.helpers import make_model


def batches(n=2):
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal((2, 3, 16, 16)).astype(np.float32)} for _ in range(n)]


def test_model_with_external_data(tmp_path):
    onnx.save(small_cnn(), tmp_path / "ext.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.onnx.data", size_threshold=0)
    assert (tmp_path / "ext.onnx.data").exists()
    result = onnxq.quantize(str(tmp_path / "ext.onnx"), calib=batches(), output=tmp_path / "q.onnx")
    assert result.report.plan.tensors and (tmp_path / "q.onnx").exists()
    (tmp_path / "ext.onnx.data").unlink()
    with pytest.raises(OnnxqError, match="ext.onnx"):
        load_model(tmp_path / "ext.onnx")


@pytest.mark.parametrize("opset", [11, 13, 15, 19, 21])
def test_opsets(opset):
    model = small_cnn()
    model.opset_import[0].version = opset
    model.ir_version = 10 if opset >= 21 else 8
    result = onnxq.quantize(model, calib=batches(), val=batches(1))
    assert result.model.opset_import[0].version == max(opset, 13)
    assert result.report.validation.outputs[0].sqnr_db > 20


def test_minus_one_dims():
    model = small_cnn()
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_value = -1
    result = onnxq.quantize(model, calib=batches())
    assert set(result.plan.tensors) == {"x", "w1_bnfolded", "r1", "w2", "f", "p", "fc_w"}


def test_save_refuses_the_input_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(small_cnn(), path)
    with pytest.raises(OnnxqError, match="refusing to overwrite the input model"):
        save_model(small_cnn(), path, input_path=path)
    save_model(make_model(helper.make_graph([], "empty", [], [])), tmp_path / "out.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "out.onnx"]


def test_large_models_are_saved_with_external_data(tmp_path, monkeypatch):
    """Past the threshold (2 GB in real use; lowered here) the weights go to <name>.data beside the model."""
    import onnxq.graph as graph

    monkeypatch.setattr(graph, "EXTERNAL_DATA_THRESHOLD", 1000)
    model = small_cnn()
    save_model(model, tmp_path / "big.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert (tmp_path / "big.onnx").stat().st_size < (tmp_path / "big.onnx.data").stat().st_size
    reloaded = load_model(tmp_path / "big.onnx")
    assert [i.name for i in reloaded.graph.initializer] == [i.name for i in model.graph.initializer]
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(reloaded.graph.initializer[0]),
                                  onnx.numpy_helper.to_array(model.graph.initializer[0]))
