"""Padding tokens (rows the attention mask hides) are left out of the calibration statistics (onnxq/padding_rows.py).

The attention model of test_attention_mask.py, with a padding-token embedding far larger than the real tokens' (on
all-MiniLM-L6-v2 the padding rows hold the widest LayerNorm outliers): calibrating on them spends the range on values
nothing reads.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxq.calib.base import CalibOptions
from onnxq.calib.collect import CollectSettings, collect_statistics
from onnxq.cli import build_parser
from onnxq.commands.common import config_from_args
from onnxq.config import QuantConfig
from onnxq.padding_rows import ActivationReader, PaddingMask, find_padding_mask, token_rows
from onnxq.pipeline import quantize
from onnxq.recovery.gated import GatedSession
from onnxq.recovery.sensitivity import calibrate_model
from onnxq.report import validation_lines
from onnxq.validate.compare import compare_models
from onnxq.validate.metrics import sqnr_from_powers
from tests.pipeline.test_attention_mask import D, L, attention_model, real_token_sqnr, token_batches

PAD_SCALE = 40.0


def padded_model() -> onnx.ModelProto:
    """The attention model whose padding token (id 0) embeds to a vector PAD_SCALE times a real token's."""
    model = attention_model()
    table = next(i for i in model.graph.initializer if i.name == "table")
    values = numpy_helper.to_array(table).copy()
    values[0] *= PAD_SCALE
    table.CopyFrom(numpy_helper.from_array(values, "table"))
    return model


def where_model(polarity: str) -> onnx.ModelProto:
    """``masked_fill`` forms: ``Where(attention_mask == 0, min, scores)`` (keep_false) or ``Where(attention_mask !=
    0, scores, min)`` (keep_true)."""
    model = padded_model()
    graph = model.graph
    kept = [n for n in graph.node if n.name not in {"cast", "unsqueeze", "invert", "mask_bias"}]
    del graph.node[:]
    graph.initializer.append(numpy_helper.from_array(np.array(0, np.int64), "zero"))
    graph.node.append(helper.make_node("Equal", ["attention_mask", "zero"], ["pad"], name="is_pad"))
    if polarity == "keep_true":
        graph.node.append(helper.make_node("Not", ["pad"], ["real"], name="is_real"))
    graph.node.append(helper.make_node("Unsqueeze", ["real" if polarity == "keep_true" else "pad", "axis1"], ["c1"],
                                       name="unsqueeze"))
    for node in kept:
        if node.name == "apply_mask":
            ins = ["c1", "s2", "float_min"] if polarity == "keep_true" else ["c1", "float_min", "s2"]
            node = helper.make_node("Where", ins, ["s3"], name="apply_mask")
        graph.node.append(node)
    return model


def test_the_additive_mask_marks_the_padding_rows():
    mask = find_padding_mask(padded_model())
    assert mask == PaddingMask("bias", "additive")
    batch = token_batches(1, seed=3)[0]
    reader = ActivationReader(padded_model(), ["x"])
    x = reader.read(batch, "batch")["x"]
    real = batch["attention_mask"].astype(bool)
    assert x.shape == (int(real.sum()), D)
    assert reader.rows.seen == real.size and reader.rows.kept == int(real.sum())


def test_the_mask_arithmetic_on_a_constant_node_is_not_the_mask():
    """``1 - mask`` with the 1 in a Constant node (a model as exported, before prepare moves constants to
    initializers) is arithmetic on the mask, not a mask applied to data."""
    model = padded_model()
    graph = model.graph
    one = next(i for i in graph.initializer if i.name == "one")
    graph.node.insert(0, helper.make_node("Constant", [], ["one"], name="one_node", value=one))
    graph.initializer.remove(one)
    assert find_padding_mask(model) == PaddingMask("bias", "additive")


@pytest.mark.parametrize("polarity", ["keep_true", "keep_false"])
def test_where_conditions_mark_the_padding_rows(polarity):
    model = where_model(polarity)
    mask = find_padding_mask(model)
    assert mask == PaddingMask("c1", polarity)
    batch = token_batches(1, seed=3)[0]
    x = ActivationReader(model, ["x"]).read(batch, "batch")["x"]
    assert x.shape == (int(batch["attention_mask"].sum()), D)


def test_a_model_without_an_attention_mask_has_no_padding_rows():
    model = padded_model()
    bias_add = next(n for n in model.graph.node if n.name == "apply_mask")
    bias_add.input[1] = "s2"  # scores + scores: no mask reaches the data
    assert find_padding_mask(model) is None


def test_an_integer_feature_added_to_data_is_not_a_padding_mask():
    """A float image of an integer input whose values are neither 0 nor a sentinel (here the mask times 3) is no
    padding mask: nothing is skipped."""
    mask = PaddingMask("bias", "additive")
    assert mask.valid_rows(np.array([[0.0, 0.0, -1e4]])).tolist() == [[True, True, False]]
    assert mask.valid_rows(np.array([[0.0, -np.inf, float(np.finfo(np.float32).min)]])).tolist() == \
        [[True, False, False]]
    assert mask.valid_rows(np.array([[3.0, 0.0, 3.0]])) is None
    assert mask.valid_rows(np.zeros((2, 3, 4, 5))) is None  # does not squeeze to (N, L)


def test_token_rows_selects_only_token_major_tensors():
    valid = np.array([[True, True, False], [True, False, False]])
    assert token_rows(np.ones((2, 3, 8)), valid).shape == (3, 8)
    assert token_rows(np.ones((2, 3, 4, 2)), valid).shape == (3, 4, 2)  # (N, L, heads, d)
    assert token_rows(np.ones((6, 8)), valid).shape == (3, 8)  # flattened (N * L, H)
    assert token_rows(np.ones((2, 3, 3, 3)), valid).shape == (2, 3, 3, 3)  # (N, h, L, L) scores stay whole
    assert token_rows(np.ones((2, 5, 3)), valid).shape == (2, 5, 3)  # (N, C, T) of another length
    assert token_rows(np.ones((2, 8)), valid).shape == (2, 8)
    square = np.array([[True, False], [True, True]])  # N == L: (L, N, H) would look the same, so read whole
    assert token_rows(np.ones((2, 2, 8)), square).shape == (2, 2, 8)
    assert token_rows(np.ones((2, 3, 8)), np.zeros((2, 3), bool)).shape == (2, 3, 8)  # nothing real: whole


def test_calibrated_range_is_the_real_tokens_range():
    model, batches = padded_model(), token_batches(4, seed=1)
    options = {"x": CalibOptions(method="minmax")}
    skipped, _ = collect_statistics(model, options, batches)
    kept, _ = collect_statistics(model, options, batches, CollectSettings(skip_padding=False))
    table = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "table"))
    real = np.concatenate([table[b["ids"][b["attention_mask"].astype(bool)]] for b in batches])
    assert skipped["x"].compute_range(symmetric=True)[1] == pytest.approx(np.abs(real).max(), rel=1e-6)
    assert kept["x"].compute_range(symmetric=True)[1] == pytest.approx(np.abs(table[0]).max(), rel=1e-6)


def test_quantized_real_tokens_are_closer_to_fp32():
    model = padded_model()
    calib, val = token_batches(4, seed=1), token_batches(3, seed=2)
    skipped = quantize(model, calib=calib, config=QuantConfig())
    kept = quantize(model, calib=calib, config=QuantConfig(skip_padding_tokens=False))
    # the report says how many rows the calibration pass left out (50 of the 4 x 48 token rows are padding)
    assert "padding tokens left out of the statistics: 50 of 192 token rows (26%), marked by bias; " \
        "--no-skip-padding-tokens keeps them" in skipped.report.prepare_notes
    assert not any("padding" in note for note in kept.report.prepare_notes)
    gain = real_token_sqnr(model, skipped.model, val) - real_token_sqnr(model, kept.model, val)
    assert gain > 6.0, gain


def test_the_cli_flag_turns_it_off():
    parse = build_parser().parse_args
    assert config_from_args(parse(["quantize", "m.onnx", "--calib", "d"])).skip_padding_tokens
    assert not config_from_args(parse(["quantize", "m.onnx", "--calib", "d",
                                       "--no-skip-padding-tokens"])).skip_padding_tokens


def test_sequences_without_padding_are_read_whole():
    batch = token_batches(1, seed=3)[0]
    batch = {"ids": np.maximum(batch["ids"], 1), "attention_mask": np.ones_like(batch["attention_mask"])}
    reader = ActivationReader(padded_model(), ["x"])
    assert reader.read(batch, "batch")["x"].shape == (batch["ids"].shape[0], L, D)
    assert reader.note() is None


def test_validation_compares_the_real_tokens():
    model, val = padded_model(), token_batches(3, seed=2)
    quantized = quantize(model, calib=token_batches(4, seed=1), config=QuantConfig()).model
    report = compare_models(model, quantized, val)
    assert report.token_rows is not None and "padding tokens left out of the comparison" in report.token_rows
    assert report.outputs[0].sqnr_db == pytest.approx(real_token_sqnr(model, quantized, val), abs=0.05)
    every_row = compare_models(model, quantized, val, skip_padding=False)
    assert every_row.token_rows is None
    assert every_row.outputs[0].sqnr_db != pytest.approx(report.outputs[0].sqnr_db, abs=0.05)
    assert any("padding tokens left out of the comparison" in line for line in validation_lines(report))


def test_sensitivity_and_mixed_precision_measure_the_real_tokens():
    model, val = padded_model(), token_batches(2, seed=2)
    calibrated = calibrate_model(model, token_batches(4, seed=1), QuantConfig())
    gated = GatedSession(calibrated.prepared, calibrated.plan, calibrated.scales, cuts=0)
    gated.set_data(val)
    units = list(gated.units)
    signal = noise = 0.0
    for batch in val:
        keep = batch["attention_mask"].astype(bool)
        ref, got = gated.run(batch, ())[0][keep], gated.run(batch, units)[0][keep]
        signal += float(np.square(ref.astype(np.float64)).sum())
        noise += float(np.square((ref - got).astype(np.float64)).sum())
    assert gated.error(units)[0].sqnr_db == pytest.approx(sqnr_from_powers(signal, noise), rel=1e-6)


def test_format_comparison_compares_the_real_tokens():
    from onnxq.compare.report import render_markdown
    from onnxq.compare.run import CompareOptions, compare_formats

    model, val = padded_model(), token_batches(2, seed=2)
    result = compare_formats(model, token_batches(4, seed=1), val,
                             options=CompareOptions(formats=("int8",), per_layer=True, latency_runs=1))
    assert result.token_rows is not None and "padding tokens left out of the comparison" in result.token_rows
    assert "Compared at real tokens" in render_markdown(result)
    int8 = result.formats[0]
    # the same figure validation gives for that model
    assert int8.outputs[0].sqnr_db == pytest.approx(compare_models(model, int8.model, val).outputs[0].sqnr_db,
                                                    abs=1e-6)


def test_with_stats_the_flag_says_it_has_no_effect(tmp_path):
    """--stats merges what the shards collected with their own setting; turning it off at quantize time says so."""
    from tests.helpers import run_cli

    onnx.save(padded_model(), tmp_path / "m.onnx")
    (tmp_path / "calib").mkdir()
    for i, batch in enumerate(token_batches(3, seed=1)):
        np.savez(tmp_path / "calib" / f"{i:03d}.npz", **batch)
    assert run_cli("calibrate", tmp_path / "m.onnx", "--calib", tmp_path / "calib", "-o", tmp_path / "s.npz"
                   ).returncode == 0
    off = run_cli("quantize", tmp_path / "m.onnx", "--stats", tmp_path / "s.npz", "--no-skip-padding-tokens",
                  "-o", tmp_path / "q.onnx")
    assert off.returncode == 0, off.stderr
    assert "--no-skip-padding-tokens has no effect with --stats" in off.stdout
    on = run_cli("quantize", tmp_path / "m.onnx", "--stats", tmp_path / "s.npz", "-o", tmp_path / "q2.onnx")
    assert on.returncode == 0 and "no effect" not in on.stdout


def test_bias_correction_is_left_out_where_the_calibration_holds_padding_rows():
    """A layer's channel means over padding rows are not the real tokens' (all-MiniLM-L6-v2 on ort-cpu: correcting
    its Gemms took the sentence embedding from 21.9 to 7.8 dB); on sequences without padding it runs."""
    model = padded_model()
    graph = model.graph
    rng = np.random.default_rng(4)
    graph.initializer.extend([numpy_helper.from_array(np.array([-1, D], np.int64), "rows"),
                              numpy_helper.from_array((rng.standard_normal((D, D)) / np.sqrt(D)).astype(np.float32),
                                                      "w_head"),
                              numpy_helper.from_array(rng.standard_normal(D).astype(np.float32), "b_head")])
    graph.node.extend([helper.make_node("Reshape", ["y", "rows"], ["y2"], name="flatten"),
                       helper.make_node("Gemm", ["y2", "w_head", "b_head"], ["h"], name="head"),
                       helper.make_node("Relu", ["h"], ["r"], name="relu"),
                       helper.make_node("Gemm", ["r", "w_head", "b_head"], ["z"], name="last")])
    graph.output[0].CopyFrom(helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, None))
    padded = token_batches(4, seed=1)
    notes = quantize(model, calib=padded).report.prepare_notes
    # the correction reads the first batches holding 8 samples (RecoveryOptions.bias_correction_samples): two
    share = 1 - np.mean([b["attention_mask"].mean() for b in padded[:2]])
    assert f"bias correction skipped: {share:.0%} of the calibration token rows are padding (onnxq.padding_rows), " \
        "whose channel means nothing downstream reads" in notes, notes
    whole = [{"ids": np.maximum(b["ids"], 1), "attention_mask": np.ones_like(b["attention_mask"])} for b in padded]
    notes = quantize(model, calib=whole).report.prepare_notes
    assert any(n.startswith("bias correction: 1 layer(s)") for n in notes), notes
