"""Edge cases of the pipeline: constant and all-zero activations, Python API inputs."""

import numpy as np
from onnx import TensorProto, helper

import onnxq
from onnxq.calib.base import CalibOptions
from onnxq.config import QuantConfig
from tests.conftest import small_cnn
from tests.helpers import init, make_model


def zero_branch_model():
    """Relu(-|x|) is all zeros; a Conv reads it."""
    w = np.ones((2, 2, 1, 1), np.float32)
    nodes = [helper.make_node("Abs", ["x"], ["a"], name="abs"), helper.make_node("Neg", ["a"], ["n"], name="neg"),
             helper.make_node("Relu", ["n"], ["z"], name="relu"),
             helper.make_node("Conv", ["z", "w"], ["y"], name="conv")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [init("w", w)])
    return make_model(graph)


def test_all_zero_activation_gets_a_finite_positive_scale():
    rng = np.random.default_rng(0)
    batches = [{"x": rng.standard_normal((2, 2, 4, 4)).astype(np.float32)} for _ in range(3)]
    for method in ("minmax", "percentile", "entropy", "mse"):
        result = onnxq.quantize(zero_branch_model(), calib=batches,
                                config=QuantConfig(calib=CalibOptions(method=method)))
        scale = result.scales["z"].scale
        assert np.isfinite(scale) and scale > 0, method


def test_python_api_accepts_a_model_proto_and_batches_without_touching_them():
    model = small_cnn()
    before = model.SerializeToString()
    rng = np.random.default_rng(1)
    batches = [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(2)]
    result = onnxq.quantize(model, calib=batches, val=batches)
    assert model.SerializeToString() == before
    assert result.output_path is None and result.report.calib_batches == 2
    assert result.report.validation.outputs[0].sqnr_db > 20
