"""An FP16 model is quantized from its FP32 form, its float16 inputs and outputs kept: the widened model computes the
FP32 network exactly, and the default quantization of the FP16 model loads, runs on float16 data and stays close."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq.config import QuantConfig, RecoveryOptions
from onnxq.graph import default_opset
from onnxq.passes import WidenFloat16
from onnxq.pipeline import quantize
from onnxq.validate.metrics import ErrorAccumulator
from tests.helpers import make_model, run, run_cli


def half_cnn(dtype: int = TensorProto.FLOAT16, seed: int = 0) -> onnx.ModelProto:
    """Conv 3x3 -> Relu -> Cast(to the model's type) -> 1x1 Conv + bias -> Add of a Constant, input and output of
    ``dtype``; weights rounded to float16 values whatever the type, so the FP32 and FP16 builds hold equal weights."""
    rng = np.random.default_rng(seed)
    np_type = np.float16 if dtype == TensorProto.FLOAT16 else np.float32

    def weight(name: str, shape: tuple[int, ...], scale: float) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float16).astype(np_type), name)

    constant = numpy_helper.from_array(np.full((1, 4, 1, 1), 0.25, np_type), "offset")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Cast", ["r1"], ["r1c"], name="cast", to=dtype),
             helper.make_node("Conv", ["r1c", "w2", "b2"], ["c2"], name="conv2"),
             helper.make_node("Constant", [], ["k"], name="k", value=constant),
             helper.make_node("Add", ["c2", "k"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "half_cnn", [helper.make_tensor_value_info("x", dtype, ["n", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", dtype, ["n", 4, 16, 16])],
                              [weight("w1", (8, 3, 3, 3), 0.3), weight("w2", (4, 8, 1, 1), 0.3),
                               weight("b2", (4,), 0.2)])
    return make_model(graph)


def half_batches(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:16, 0:16] / 16
    return [{"x": np.stack([np.stack([np.sin(6 * xx * rng.uniform(0.5, 2) + c) * yy for c in range(3)])
                            for _ in range(2)]).astype(np.float16)} for _ in range(count)]


def test_the_widened_model_is_the_fp32_network_with_the_fp16_signature() -> None:
    half = half_cnn()
    widened = WidenFloat16().run(half).model
    assert half.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16  # the input model is unchanged
    assert [v.type.tensor_type.elem_type for v in (*widened.graph.input, *widened.graph.output)] == \
        [TensorProto.FLOAT16] * 2
    assert all(t.data_type == TensorProto.FLOAT for t in widened.graph.initializer)
    assert next(n for n in widened.graph.node if n.name == "cast").attribute[0].i == TensorProto.FLOAT
    onnx.checker.check_model(widened, full_check=True)
    full = half_cnn(TensorProto.FLOAT)
    for batch in half_batches(2, seed=1):
        got = run(widened, batch)[0]
        want = run(full, {"x": batch["x"].astype(np.float32)})[0]
        assert got.dtype == np.float16
        # float32 all the way through, rounded to float16 once at the output: FP16's own intermediate roundings gone
        np.testing.assert_array_equal(got, want.astype(np.float16))
        assert np.abs(run(half, batch)[0].astype(np.float32) - want).max() > 0  # which the FP16 model does have


def test_a_model_without_float16_is_left_alone() -> None:
    result = WidenFloat16().run(half_cnn(TensorProto.FLOAT))
    assert not result.changed and not result.notes


def test_an_initializer_listed_as_an_input_and_a_constant_output_keep_their_names() -> None:
    """IR < 4 lists initializers among the inputs; an output may be a constant: both are widened where they are."""
    model = half_cnn()
    model.ir_version = 3
    model.graph.input.append(helper.make_tensor_value_info("b2", TensorProto.FLOAT16, [4]))
    model.graph.output.append(helper.make_tensor_value_info("w2", TensorProto.FLOAT16, [4, 8, 1, 1]))
    widened = WidenFloat16().run(model).model
    assert next(v for v in widened.graph.input if v.name == "b2").type.tensor_type.elem_type == TensorProto.FLOAT
    assert not any(n.op_type == "Cast" and n.input[0] == "b2" for n in widened.graph.node)
    batch = half_batches(1, seed=2)[0]
    y, w2 = run(widened, batch)
    assert w2.dtype == np.float16 and np.array_equal(w2, numpy_helper.to_array(
        next(t for t in model.graph.initializer if t.name == "w2")))


@pytest.mark.parametrize("shift", [True, False])
def test_an_fp16_model_quantizes_by_default_and_runs_on_float16_data(shift: bool) -> None:
    half, calib, val = half_cnn(), half_batches(4, seed=3), half_batches(2, seed=4)
    result = quantize(half, calib=calib, config=QuantConfig(recovery=RecoveryOptions(activation_shift=shift)))
    assert any(n.startswith("FP16 model computed in FP32") for n in result.report.prepare_notes)
    assert [v.type.tensor_type.elem_type for v in (*result.model.graph.input, *result.model.graph.output)] == \
        [TensorProto.FLOAT16] * 2
    assert default_opset(result.model) < 19  # no float16 QuantizeLinear needed
    acc = ErrorAccumulator()
    for batch in val:
        acc.add(run(half, batch)[0].astype(np.float32), run(result.model, batch)[0].astype(np.float32))
    assert acc.sqnr_db > 30, acc.sqnr_db


def test_the_command_quantizes_an_fp16_model_from_float16_batches(tmp_path) -> None:
    onnx.save(half_cnn(), tmp_path / "half.onnx")
    (tmp_path / "calib").mkdir()
    for i, batch in enumerate(half_batches(3, seed=5)):
        np.savez(tmp_path / "calib" / f"{i}.npz", **batch)
    result = run_cli("quantize", tmp_path / "half.onnx", "--calib", tmp_path / "calib", "-o", tmp_path / "q.onnx")
    assert result.returncode == 0, result.stderr
    assert "FP16 model computed in FP32" in result.stdout
    linted = run_cli("lint", tmp_path / "q.onnx")
    assert linted.returncode == 0, linted.stdout + linted.stderr
