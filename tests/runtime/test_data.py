"""Calibration data layouts and checks."""

import numpy as np
import pytest
from onnx import TensorProto, helper

from onnxq.data import BatchSource, RandomSource, model_inputs
from onnxq.errors import OnnxqError
from tests.conftest import small_cnn
from tests.helpers import make_model


def two_input_model():
    nodes = [helper.make_node("Add", ["a", "b"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4]),
                                           helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    return make_model(graph)


def test_stack_of_batches_and_stack_of_samples(tmp_path):
    model = small_cnn()
    np.savez(tmp_path / "stack.npz", x=np.zeros((5, 2, 3, 16, 16), np.float32))
    src = BatchSource(model, tmp_path / "stack.npz")
    assert len(src) == 5 and [b["x"].shape for b in src] == [(2, 3, 16, 16)] * 5
    np.savez(tmp_path / "samples.npz", x=np.zeros((10, 3, 16, 16), np.float32))
    src = BatchSource(model, tmp_path / "samples.npz", batch_size=4)
    assert len(src) == 3 and [b["x"].shape[0] for b in src] == [4, 4, 2]


def test_npz_folder_ignores_subfolders_and_limits_batches(tmp_path):
    model = two_input_model()
    for i in range(4):
        np.savez(tmp_path / f"{i}.npz", a=np.ones((2, 4), np.float32), b=np.ones((2, 4), np.float32))
    (tmp_path / "labels").mkdir()
    np.savez(tmp_path / "labels" / "0.npz", y=np.zeros(3))
    src = BatchSource(model, tmp_path, max_batches=3)
    assert len(src) == 3 and len(list(src)) == 3


def test_npy_for_a_two_input_model_is_refused(tmp_path):
    np.save(tmp_path / "0.npy", np.ones((2, 4), np.float32))
    with pytest.raises(OnnxqError, match="model has 2 inputs"):
        BatchSource(two_input_model(), tmp_path)


def test_unreadable_file_is_a_clear_error(tmp_path):
    (tmp_path / "0.npy").write_bytes(b"garbage")
    with pytest.raises(OnnxqError, match="cannot read"):
        list(BatchSource(small_cnn(), tmp_path))


def test_random_source_needs_static_non_batch_dims():
    specs = model_inputs(small_cnn())
    assert specs[0].shape == ("N", 3, 16, 16)
    batches = list(RandomSource(small_cnn(), batches=2, seed=3))
    assert batches[0]["x"].shape == (1, 3, 16, 16)
    again = list(RandomSource(small_cnn(), batches=2, seed=3))
    np.testing.assert_array_equal(batches[1]["x"], again[1]["x"])
    model = small_cnn()
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    with pytest.raises(OnnxqError, match="random data needs a fixed shape"):
        RandomSource(model)
