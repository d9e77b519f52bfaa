"""The activation shift: exact in float, applied only where it is exact, its bias compensated for the quantized
weights (its definition), recorded and replayed bit-exactly, and a measured gain on a one-sided input."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq.config import QuantConfig, RecoveryOptions
from onnxq.errors import OnnxqError
from onnxq.graph import GraphIndex
from onnxq.pipeline import quantize, recovery_options
from onnxq.recovery.activation_shift import SortedSample, apply_shifts, shift_model, shift_targets
from onnxq.runtime import make_session
from onnxq.scales.rewrites import ShiftRewrite, from_document, read_from_model
from onnxq.validate.metrics import ErrorAccumulator
from tests.helpers import init, make_model, run_cli
from tests.recovery.nets_recovery import gemm_batches, gemm_model, image_batches, mobilenet_hardswish

SHIFTED = RecoveryOptions(bias_correction=False, activation_shift=True)


def relu_gemm_batches() -> list[dict[str, np.ndarray]]:
    """The Gemm's inputs through a Relu: one-sided (all above 2), one channel six times wider."""
    return [{"x0": b["x"]} for b in gemm_batches()]


def sqnr(model: onnx.ModelProto, quantized: onnx.ModelProto, batches) -> float:
    reference, got = make_session(model), make_session(quantized)
    acc = ErrorAccumulator()
    for batch in batches:
        acc.add(reference.run(None, batch)[0], got.run(None, batch)[0])
    return acc.sqnr_db


def test_the_shift_leaves_the_float_model_exact_and_touches_only_the_pointwise_convs() -> None:
    model = mobilenet_hardswish()
    shifted = onnx.shape_inference.infer_shapes(model)  # as prepared: the targets need their ranks
    note, rewrites = shift_model(shifted, image_batches(count=2, size=32, seed=10), 1)
    # the depthwise Convs are padded (a border would read -shift) and the classifier reads a Flatten: left alone
    assert {n for r in rewrites for n in r.nodes} == {"pw0", "pw1", "pw2"}
    assert note.startswith("activation shift: 3 of 3 1x1 Conv/Gemm input(s) centred per channel")
    assert [n.op_type for n in shifted.graph.node].count("Add") == 3
    for batch in image_batches(count=2, size=32, seed=20):
        want, got = make_session(model).run(None, batch)[0], make_session(shifted).run(None, batch)[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def branching_model() -> onnx.ModelProto:
    """Relu outputs read by: a padded 3x3 Conv; a 1x1 Conv and an Add; a Concat then a 1x1 Conv; a 1x1 Conv alone."""
    rng = np.random.default_rng(0)
    c = 4
    w = {k: init(k, (rng.standard_normal(s) * 0.3).astype(np.float32))
         for k, s in [("w3", (c, c, 3, 3)), ("wa", (c, c, 1, 1)), ("wc", (c, 2 * c, 1, 1)), ("wp", (c, c, 1, 1))]}
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w3"], ["padded"], name="conv3x3", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["padded"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "wa"], ["a1"], name="conv_shared"),
        helper.make_node("Add", ["r2", "a1"], ["res"], name="residual"),
        helper.make_node("Concat", ["res", "r2"], ["cat"], name="cat", axis=1),
        helper.make_node("Conv", ["cat", "wc"], ["c1"], name="conv_cat"),
        helper.make_node("Relu", ["c1"], ["r3"], name="relu3"),
        helper.make_node("Conv", ["r3", "wp"], ["y"], name="conv_alone"),
    ]
    graph = helper.make_graph(nodes, "branches", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, c, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], list(w.values()))
    return make_model(graph)


def test_targets_are_the_inputs_read_only_by_unpadded_pointwise_layers() -> None:
    targets = shift_targets(onnx.shape_inference.infer_shapes(branching_model()))
    assert [(t.tensor, t.readers) for t in targets] == [("r3", ("conv_alone",))]


def test_the_compensated_bias_is_the_float_bias_plus_the_quantized_weights_times_the_shift() -> None:
    model, batches = gemm_model(input_relu=True), relu_gemm_batches()
    result = quantize(model, calib=batches, config=QuantConfig(recovery=SHIFTED))
    record = read_from_model(result.model)
    assert record is not None
    (shift,) = [r for r in record.rewrites if isinstance(r, ShiftRewrite)]
    assert shift.nodes == ("fc",) and shift.tensor == "x"
    index = GraphIndex.build(result.model.graph)
    fc = next(n for n in result.model.graph.node if n.name == "fc")
    dq = index.producer[fc.input[1]]
    w_q = index.array(dq.input[0]).astype(np.float64) * index.array(dq.input[1]).astype(np.float64)[:, None]
    b = GraphIndex.build(model.graph).array("b").astype(np.float64)
    # the quantized layer computes W_q (x - c) + b + W_q c: its weight error is the unshifted layer's
    np.testing.assert_allclose(index.array(fc.input[2]), b + w_q @ shift.shift, rtol=1e-5, atol=1e-6)
    assert ("activation shift: 1 layer bias(es) compensated for the quantized weights"
            in result.report.prepare_notes)


def test_a_layer_bias_correction_corrects_gets_no_compensation_on_top() -> None:
    """Bias correction measures the exact float model; the mean shift it removes includes the shift's constant."""
    model, batches = gemm_model(input_relu=True), relu_gemm_batches()
    corrected = quantize(model, calib=batches, config=QuantConfig(recovery=RecoveryOptions(
        activation_shift=True, bias_correction=True, bias_correction_min_t=0.0,
        bias_correction_output_heads=True)))  # fc writes the graph output
    notes = corrected.report.prepare_notes
    assert any(n.startswith("bias correction: 1 layer(s)") for n in notes)
    assert not any("compensated for the quantized weights" in n for n in notes)


def test_a_one_sided_gemm_input_gains_a_measured_margin() -> None:
    model, batches = gemm_model(input_relu=True), relu_gemm_batches()
    plain = quantize(model, calib=batches, config=QuantConfig(recovery=RecoveryOptions(
        bias_correction=False, activation_shift=False)))
    shifted = quantize(model, calib=batches, config=QuantConfig(recovery=SHIFTED))
    before, after = sqnr(model, plain.model, batches), sqnr(model, shifted.model, batches)
    assert after > before + 4.0, (before, after)  # measured 39.2 -> 45.9 dB: half the grid was unused


def test_the_shift_is_a_tensorrt_default_for_symmetric_int8_and_never_runs_with_learned_rounding() -> None:
    assert recovery_options(QuantConfig()).activation_shift is True
    assert recovery_options(QuantConfig(recovery=RecoveryOptions(activation_shift=False))).activation_shift is False
    assert recovery_options(QuantConfig(target="ort-cpu")).activation_shift is False
    assert recovery_options(QuantConfig(target="ort-cpu", recovery=RecoveryOptions(activation_shift=True))
                            ).activation_shift is True  # asked for: kept
    for rounding in ("gptq", "gptaq"):
        options = RecoveryOptions(weight_rounding=rounding, activation_shift=True)  # type: ignore[arg-type]
        assert recovery_options(QuantConfig(recovery=options)).activation_shift is False


def test_a_shift_record_reads_back_and_a_bad_one_is_one_clear_error() -> None:
    rewrite = ShiftRewrite("x", 1, 4, ("pw0", "pw1"), np.array([0.5, 1.0 / 3.0]))
    doc = {"weights_before": "a", "weights_after": "b", "rewrites": [rewrite.to_document()]}
    (back,) = from_document(json.loads(json.dumps(doc)), "s.json").rewrites
    assert isinstance(back, ShiftRewrite) and back.nodes == rewrite.nodes
    np.testing.assert_array_equal(back.shift, rewrite.shift)
    for broken, message in [({"nodes": []}, "nodes must be a non-empty list"),
                            ({"shift": [float("nan")]}, "shift must be a non-empty list of finite numbers"),
                            ({"rank": 1}, "rank must be at least 2")]:
        bad = {**rewrite.to_document(), **broken}
        with pytest.raises(OnnxqError, match=message):
            from_document({**doc, "rewrites": [bad]}, "s.json")


def test_json_scales_replay_the_shift_to_a_bit_identical_model(tmp_path) -> None:
    model = gemm_model(input_relu=True)
    onnx.save(model, tmp_path / "model.onnx")
    (tmp_path / "calib").mkdir()
    for i, batch in enumerate(relu_gemm_batches()):
        np.save(tmp_path / "calib" / f"{i:03d}.npy", batch["x0"])
    for args in [("--calib", tmp_path / "calib"), ("--scales", tmp_path / "s.json")]:
        out = tmp_path / ("b.onnx" if args[0] == "--scales" else "a.onnx")
        shift = ("--shift-activations", "--no-bias-correction") if args[0] == "--calib" else ()
        r = run_cli("quantize", tmp_path / "model.onnx", *args, *shift, "-o", out)
        assert r.returncode == 0, r.stderr
        if args[0] == "--calib":
            assert "activation shift: 1 of 1" in r.stdout
            r = run_cli("export-scales", out, "--format", "json", "-o", tmp_path / "s.json")
            assert r.returncode == 0, r.stderr
            kinds = [w["kind"] for w in json.loads((tmp_path / "s.json").read_text())["float_rewrites"]["rewrites"]]
            assert kinds[0] == "shift" and "bias-correction" in kinds  # the shift, then its compensated bias
        else:
            assert "float rewrites replayed" in r.stdout
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_a_replay_on_another_model_names_the_missing_layer() -> None:
    model = gemm_model(input_relu=True)
    from onnxq.recovery.activation_shift import apply_shift

    with pytest.raises(OnnxqError, match="activation shift of layer 'nowhere' was recorded on another model"):
        apply_shift(model, ShiftRewrite("x", -1, 2, ("nowhere",), np.ones(16)))
    assert numpy_helper.to_array(model.graph.initializer[1]).shape == (8,)  # nothing written


@pytest.mark.parametrize("bias_shape", [(8,), (1, 8), (1,)])
def test_a_gemm_bias_of_any_broadcast_shape_absorbs_the_shift_exactly(bias_shape) -> None:
    model = gemm_model(input_relu=True)
    b = model.graph.initializer[1]
    value = numpy_helper.to_array(b)
    b.CopyFrom(numpy_helper.from_array((value if bias_shape != (1,) else value[:1]).reshape(bias_shape), "b"))
    model = onnx.shape_inference.infer_shapes(model)
    shifted = copy.deepcopy(model)
    _, rewrites = shift_model(shifted, relu_gemm_batches(), 1)
    assert len(rewrites) == 1
    for batch in relu_gemm_batches():
        want, got = make_session(model).run(None, batch)[0], make_session(shifted).run(None, batch)[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("low", [-3.0, -0.2, 0.5])
def test_grid_errors_are_the_mean_squared_error_of_rounding_every_value(low) -> None:
    """The prefix-sum error of a grid equals rounding and clipping each value to it (values below, inside and above
    the grid, and on codes)."""
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.uniform(low - 1, 4.0, 997), [low, low + 0.05, 2.5]])
    lows, steps = np.array([low, low, -1.0]), np.array([0.01, 0.02, 0.003])
    got = SortedSample(values).grid_errors(lows, steps, levels=256)
    for lo, step, error in zip(lows, steps, got, strict=True):
        q = np.clip(np.floor((values - lo) / step + 0.5), 0, 255) * step + lo
        np.testing.assert_allclose(error, ((q - values) ** 2).mean(), rtol=1e-9, atol=1e-15)


def test_shifts_applied_together_equal_one_at_a_time() -> None:
    """One index for every shift gives the graph of applying them one by one: same nodes, order and biases."""
    model = onnx.shape_inference.infer_shapes(mobilenet_hardswish())
    rewrites = []
    for target in shift_targets(model):
        channels = np.linspace(-0.5, 0.5, target.channels)
        rewrites.append(ShiftRewrite(target.tensor, target.axis, target.rank, target.readers, channels))
    assert len(rewrites) >= 2
    together, one_by_one = copy.deepcopy(model), copy.deepcopy(model)
    apply_shifts(together, rewrites)
    for rewrite in rewrites:
        apply_shifts(one_by_one, [rewrite])
    assert together.graph == one_by_one.graph


def rewritten_readers_model() -> onnx.ModelProto:
    """A 3x3 Conv + Relu feeding a 1x1 Conv (a cross-layer pair: the shift target's values are rescaled under their
    old name), whose Relu output is pooled and read by a Gemm with an outlier channel (SmoothQuant inserts a Mul)."""
    rng = np.random.default_rng(4)
    c, k, n = 6, 6, 5
    w3 = (rng.standard_normal((c, 3, 3, 3)) * np.linspace(0.1, 3.0, c).reshape(-1, 1, 1, 1)).astype(np.float32)
    w1 = (rng.standard_normal((k, c, 1, 1)) * 0.4).astype(np.float32)
    wg = (rng.standard_normal((n, k)) * 0.3).astype(np.float32)
    scale = np.ones(k, np.float32)
    scale[2] = 30.0  # an outlier channel for SmoothQuant
    nodes = [
        helper.make_node("Conv", ["x", "w3", "b3"], ["c3"], name="conv3x3", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("Conv", ["r3", "w1", "b1"], ["c1"], name="pointwise"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("GlobalAveragePool", ["r1"], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("Mul", ["flat", "outliers"], ["wide"], name="widen"),
        helper.make_node("Relu", ["wide"], ["h"], name="relu_h"),
        helper.make_node("Gemm", ["h", "wg", "bg"], ["y"], name="head", transB=1),
    ]
    inits = [init("w3", w3), init("b3", (rng.standard_normal(c) * 0.5).astype(np.float32)), init("w1", w1),
             init("b1", (rng.standard_normal(k) * 0.5 + 0.5).astype(np.float32)), init("outliers", scale),
             init("wg", wg), init("bg", np.zeros(n, np.float32))]
    graph = helper.make_graph(nodes, "rewritten", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return make_model(graph)


def test_samples_taken_before_the_channel_rewrites_map_to_the_rewritten_tensors() -> None:
    from onnxq.pipeline import prepare
    from onnxq.recovery.activation_shift import shift_statistics, spreads_after_rewrites
    from onnxq.recovery.stage import equalize, shift_sampler

    config = QuantConfig()
    options = replace(recovery_options(config), smoothquant_alpha=0.5)
    prepared, _ = prepare(rewritten_readers_model(), config)
    data = image_batches(count=2, size=8, seed=5)
    sampler = shift_sampler(prepared, options)
    assert sampler is not None
    equalize(prepared, data, options, also=sampler)
    rewrites = read_from_model(prepared).rewrites
    assert {(r.kind, r.node) for r in rewrites} >= {("cle-pair", "pointwise"), ("smoothquant", "head")}
    targets = shift_targets(prepared)
    mapped = spreads_after_rewrites(targets, sampler.spreads, rewrites)
    direct = shift_statistics(prepared, targets, data, options.equalize_batches)
    # the pair's 1x1 Conv reads its rescaled input under the old name; the Mul SmoothQuant inserts has no recorded
    # rank, so the Gemm's input is no target
    assert sorted(mapped) == sorted(direct) == ["r3"]
    for name, want in direct.items():
        got = mapped[name]
        np.testing.assert_allclose(got.lo, want.lo, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got.hi, want.hi, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.concatenate(got.rows), np.concatenate(want.rows), rtol=1e-5, atol=1e-6)
    # and the mapping was needed: the pair's rewrite rescaled what the 1x1 Conv reads
    assert not np.allclose(direct["r3"].hi, sampler.spreads["r3"].hi, rtol=1e-3)


def test_the_shift_takes_its_samples_from_equalizations_pass(monkeypatch) -> None:
    import onnxq.recovery.activation_shift as shift_module

    model, data = mobilenet_hardswish(), image_batches(count=2, size=32, seed=10)
    config = QuantConfig(recovery=RecoveryOptions(bias_correction=False))
    shared = quantize(model, data, config).model

    def second_pass(*args, **kwargs):
        raise AssertionError("a float pass of the shift's own")

    monkeypatch.setattr(shift_module, "shift_statistics", second_pass)
    assert quantize(model, data, config).model.SerializeToString() == shared.SerializeToString()
    monkeypatch.undo()
    import onnxq.pipeline as pipeline

    monkeypatch.setattr(pipeline, "shift_sampler", lambda *args, **kwargs: None)
    separate = quantize(model, data, config).model
    assert [r.nodes for r in read_from_model(separate).rewrites if isinstance(r, ShiftRewrite)] == \
        [r.nodes for r in read_from_model(shared).rewrites if isinstance(r, ShiftRewrite)]
    want = {r.tensor: r.shift for r in read_from_model(separate).rewrites if isinstance(r, ShiftRewrite)}
    for r in read_from_model(shared).rewrites:
        if isinstance(r, ShiftRewrite):
            np.testing.assert_allclose(r.shift, want[r.tensor], rtol=1e-5, atol=1e-7)


def test_a_channel_seen_once_is_not_shifted_even_off_by_rounding() -> None:
    from onnxq.recovery.activation_shift import ChannelSpread, choose_shift

    row = np.array([[0.5, 2.0, 3.0, 0.1]], np.float32)  # one observation per channel: an SE vector, one image
    exact = ChannelSpread(row[0].astype(np.float64), row[0].astype(np.float64), [row])
    assert choose_shift(exact) is None
    scale = np.array([0.3, 1.7, 2.9, 0.11])
    rounded = ChannelSpread(row[0] / scale, row[0] / scale, [row * (1 / scale).astype(np.float32)])
    assert choose_shift(rounded) is None
    rows = np.abs(np.random.default_rng(0).standard_normal((64, 4))).astype(np.float32) + row
    assert choose_shift(ChannelSpread(rows.min(0).astype(np.float64), rows.max(0).astype(np.float64), [rows]))


@pytest.mark.parametrize(("shape", "axis"), [((6, 40, 9, 7), 1), ((2, 5, 30), -1), ((700, 24), -1)])
def test_the_sampler_keeps_every_step_th_channels_last_row_and_each_channels_range(shape, axis) -> None:
    from onnxq.recovery.activation_shift import SAMPLE_VALUES, SpreadSampler
    from onnxq.recovery.channel_scale import sample_rows

    values = [np.random.default_rng(seed).standard_normal(shape).astype(np.float32) for seed in (0, 1)]
    sampler = SpreadSampler({"x": axis}, batches=2)
    for value in values:
        sampler.add("x", value)
    spread = sampler.spreads["x"]
    rows = [np.moveaxis(v, axis, -1).reshape(-1, shape[axis]) for v in values]  # the definition
    every = np.concatenate(rows)
    np.testing.assert_array_equal(spread.lo, every.min(axis=0))
    np.testing.assert_array_equal(spread.hi, every.max(axis=0))
    for got, want in zip(spread.rows, rows):
        np.testing.assert_array_equal(got, sample_rows(want, max(1, SAMPLE_VALUES // (shape[axis] * 2))))
    assert 1 < spread.rows[0].shape[0] < rows[0].shape[0] or rows[0].shape[0] * shape[axis] * 2 <= SAMPLE_VALUES
