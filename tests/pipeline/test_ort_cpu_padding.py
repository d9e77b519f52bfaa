"""The ort-cpu target corrects the biases on the calibration data's padding constant (a letterbox), so a
fully convolutional detector's padding runs as in FP32 (onnxq/recovery/constant_region.py, docs/ort_cpu_rules.md
3.19). The network is YOLO-like (Conv/LeakyRelu, MaxPool, Concat, Resize), fed images pasted top-left into a square
filled with 114 as ddddocr's and YOLOX's preprocessing does.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxq.config import QuantConfig, RecoveryOptions
from onnxq.pipeline import quantize
from onnxq.recovery.constant_region import constant_batch, find_constant_region, nonlocal_nodes
from onnxq.validate.latency import op_counts, optimized_model
from onnxq.validate.metrics import sqnr_from_powers
from tests.helpers import make_model, run

SIZE = 64
PAD = 114.0
MS = "com.microsoft."


def _layer(name: str, x: str, w: np.ndarray, b: np.ndarray, stride: int = 1
           ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Conv(w, b) -> LeakyRelu(0.1) reading ``x``, writing ``{name}_a``."""
    k = w.shape[-1]
    nodes = [helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [f"{name}_c"], name=name,
                              kernel_shape=[k, k], strides=[stride] * 2, pads=[k // 2] * 4),
             helper.make_node("LeakyRelu", [f"{name}_c"], [f"{name}_a"], name=f"{name}_act", alpha=0.1)]
    return nodes, [numpy_helper.from_array(w.astype(np.float32), f"{name}_w"),
                   numpy_helper.from_array(b.astype(np.float32), f"{name}_b")]


def _smooth(rng: np.random.Generator, cout: int, cin: int, k: int) -> np.ndarray:
    """He-scaled kernels that are mostly one value per kernel, as trained ones are."""
    w = rng.standard_normal((cout, cin, 1, 1)) * 0.8 + rng.standard_normal((cout, cin, k, k)) * 0.2
    return w * np.sqrt(2.0 / (cin * k * k)) / np.hypot(0.8, 0.2)


def yolo_like(depth: int = 2, seed: int = 2) -> onnx.ModelProto:
    """3x64x64 (0..255) -> edge stem (Conv s2: blurred and centre-pixel colour mixes; Conv s2 of their differences)
    -> ``depth`` Conv 3x3 -> [itself, MaxPool 5x5] Concat -> Conv 1x1 -> Resize x2 -> Concat with the stride-2 map
    -> Conv 3x3 -> head Conv 1x1 (6 channels at stride 2, as a YOLO head). Every Conv but the head is followed by
    LeakyRelu. Like a trained detector's first layers, the stem answers edges and cancels on flat regions, so a
    constant input's large activations meet a small output: there the rounding of those constants dominates."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = [helper.make_node("Mul", ["x", "norm"], ["xn"], name="normalize")]
    inits = [numpy_helper.from_array(np.array(1 / 64, np.float32), "norm")]
    mix = rng.uniform(0.2, 1.0, (8, 3, 1, 1))
    centre = np.zeros((8, 3, 3, 3))
    centre[:, :, 1, 1] = mix[:, :, 0, 0]
    edges = rng.standard_normal((32, 8, 3, 3)) * np.sqrt(2 / 72) * 3
    near = edges * (1 + 0.05 * rng.standard_normal((32, 8, 1, 1)))
    layers = [("c1", "xn", np.concatenate([mix * np.ones((1, 1, 3, 3)) / 9, centre]), np.zeros(16), 2),
              ("c2", "c1_a", np.concatenate([edges, -near], axis=1), rng.standard_normal(32) * 0.1, 2)]
    layers += [(f"d{i}", f"d{i - 1}_a" if i else "c2_a", _smooth(rng, 32, 32, 3), rng.standard_normal(32) * 0.1, 1)
               for i in range(depth)]
    for args in layers:
        more, weights = _layer(*args)
        nodes, inits = nodes + more, inits + weights
    last = f"d{depth - 1}_a" if depth else "c2_a"
    nodes += [helper.make_node("MaxPool", [last], ["pool"], name="spp", kernel_shape=[5, 5], pads=[2] * 4),
              helper.make_node("Concat", [last, "pool"], ["spp_cat"], name="spp_concat", axis=1)]
    more, weights = _layer("c4", "spp_cat", _smooth(rng, 32, 64, 1), rng.standard_normal(32) * 0.1)
    nodes, inits = nodes + more, inits + weights
    nodes += [helper.make_node("Resize", ["c4_a", "", "up_scales"], ["up"], name="upsample", mode="nearest"),
              helper.make_node("Concat", ["up", "c1_a"], ["fpn_cat"], name="fpn_concat", axis=1)]
    inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "up_scales"))
    more, weights = _layer("c5", "fpn_cat", _smooth(rng, 32, 48, 3), rng.standard_normal(32) * 0.1)
    nodes, inits = nodes + more, inits + weights
    nodes.append(helper.make_node("Conv", ["c5_a", "head_w", "head_b"], ["y"], name="head"))
    inits += [numpy_helper.from_array((rng.standard_normal((6, 32, 1, 1)) * 0.3).astype(np.float32), "head_w"),
              numpy_helper.from_array(np.linspace(-1, 1, 6).astype(np.float32), "head_b")]
    graph = helper.make_graph(nodes, "yolo_like", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                 [1, 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return make_model(graph)


def letterboxed(count: int, seed: int) -> list[tuple[dict[str, np.ndarray], tuple[int, int]]]:
    """Smooth random pictures of 24..48 x 24..48 pixels pasted top-left into a 64x64 square of 114, with their
    (height, width)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        h, w = (int(v) for v in rng.integers(24, 49, size=2))
        coarse = rng.uniform(0, 255, size=(3, h // 4 + 2, w // 4 + 2))
        picture = np.kron(coarse, np.ones((1, 4, 4)))[:, :h, :w] + rng.normal(0, 12, size=(3, h, w))
        image = np.full((1, 3, SIZE, SIZE), PAD, np.float32)
        image[0, :, :h, :w] = np.clip(picture, 0, 255)
        out.append(({"x": image}, (h, w)))
    return out


def padding_cells(h: int, w: int, stride: int = 2) -> np.ndarray:
    """(SIZE/stride)^2 booleans: the output cell's centre lies in the padding."""
    centre = (np.arange(SIZE // stride) + 0.5) * stride
    return (centre[:, None] >= h) | (centre[None, :] >= w)


def sqnr_by_region(reference: onnx.ModelProto, quantized: onnx.ModelProto,
                   samples: list[tuple[dict[str, np.ndarray], tuple[int, int]]]) -> tuple[float, float]:
    """SQNR (dB) of the output over the padding cells and over the image cells of ``samples``."""
    power = np.zeros((2, 2))  # [padding, image] x [signal, noise]
    for feed, (h, w) in samples:
        (want,), (got,) = run(reference, feed), run(quantized, feed)
        pad = padding_cells(h, w)
        for k, mask in enumerate((pad, ~pad)):
            power[k] += [np.square(want[0][:, mask]).sum(), np.square((got - want)[0][:, mask]).sum()]
    return tuple(sqnr_from_powers(float(s), float(n)) for s, n in power)  # type: ignore[return-value]


def test_padding_constant_is_found_in_letterboxed_data_only():
    model = yolo_like()
    region = find_constant_region(model, [feed for feed, _ in letterboxed(4, 1)])
    assert region is not None and region.input == "x" and region.share >= 0.25
    np.testing.assert_array_equal(region.value, [PAD] * 3)
    noise = [{"x": np.random.default_rng(i).uniform(0, 255, (1, 3, SIZE, SIZE)).astype(np.float32)} for i in range(2)]
    assert find_constant_region(model, noise) is None
    # a per-channel constant (padding after normalisation), and the batch built from it
    vector = np.array([0.5, -0.25, 1.0], np.float32)
    normalised = [{"x": np.where(feed["x"] == PAD, vector.reshape(1, 3, 1, 1), feed["x"] / 255).astype(np.float32)}
                  for feed, _ in letterboxed(2, 2)]
    region = find_constant_region(model, normalised)
    assert region is not None
    np.testing.assert_array_equal(region.value, vector)
    batch = constant_batch(region, normalised[0])
    assert batch["x"].shape == (1, 3, SIZE, SIZE) and np.all(batch["x"][0, 1] == -0.25)


def test_correction_lifts_the_sqnr_over_the_padding_of_a_letterboxed_yolo_like_net():
    model = yolo_like()
    calib = [feed for feed, _ in letterboxed(8, 10)]
    held_out = letterboxed(12, 20)
    default = quantize(model, calib=calib, config=QuantConfig(target="ort-cpu"))
    off = QuantConfig(target="ort-cpu", recovery=replace(RecoveryOptions(), constant_region_correction=False,
                                                         bias_correction=False))
    plain = quantize(model, calib=calib, config=off)
    assert any(n.startswith("constant-region correction: ") for n in default.report.prepare_notes)
    assert not any("constant-region" in n for n in plain.report.prepare_notes)
    pad_on, image_on = sqnr_by_region(model, default.model, held_out)
    pad_off, image_off = sqnr_by_region(model, plain.model, held_out)
    # measured: padding 17.8 -> 29.1 dB, image 16.0 -> 25.5 dB (worst output on the calibration batches 17.0 ->
    # 28.1 dB; seeds 0, 1, 3 of the weights: padding +8.2, +10.9, +9.7 dB, image +3.5, +4.0, +5.6 dB)
    assert pad_on > pad_off + 8
    assert image_on > image_off
    # the same integer kernels run: the correction changes float biases only
    counts = op_counts(optimized_model(default.model))
    assert counts == op_counts(optimized_model(plain.model))
    # c2, d0, d1, c4 in integer (c1 is the float image stem, rule 3.10; c5 feeds only the float head, rule 3.5)
    assert counts.get(MS + "QLinearConv") == 4 and counts.get(MS + "QLinearLeakyRelu") == 3
    assert counts.get(MS + "QLinearConcat") == 1 and counts.get(MS + "NhwcMaxPool") == 1


def test_tensorrt_target_and_non_convolutional_models_are_left_alone():
    model = yolo_like()
    calib = [feed for feed, _ in letterboxed(4, 10)]
    trt = quantize(model, calib=calib, config=QuantConfig(target="tensorrt"))
    assert not any("constant-region" in n for n in trt.report.prepare_notes)
    # a global average pool before the last Conv: the constant image says nothing about a real input's padding
    pooled = onnx.ModelProto.FromString(model.SerializeToString())
    del pooled.graph.value_info[:]
    pooled.graph.output[0].type.tensor_type.ClearField("shape")
    head = next(n for n in pooled.graph.node if n.name == "head")
    head.input[0] = "gap"
    pooled.graph.node.insert(list(pooled.graph.node).index(head),
                             helper.make_node("GlobalAveragePool", ["c5_a"], ["gap"], name="gap"))
    assert nonlocal_nodes(pooled, "x") == {"head"}
    assert nonlocal_nodes(model, "x") == set()
    result = quantize(pooled, calib=calib, config=QuantConfig(target="ort-cpu"))
    assert not any("constant-region" in n for n in result.report.prepare_notes)


def test_flag_and_full_bias_correction_switch_it():
    from onnxq.cli import build_parser
    from onnxq.commands.common import config_from_args

    def recovery(*flags: str) -> RecoveryOptions:
        return config_from_args(build_parser().parse_args(["quantize", "m.onnx", "--calib", "c", *flags])).recovery

    assert recovery().constant_region_correction is None  # the target decides
    assert recovery("--no-constant-region-correction").constant_region_correction is False
    assert recovery("--target", "tensorrt", "--constant-region-correction").constant_region_correction is True
    model = yolo_like()
    calib = [feed for feed, _ in letterboxed(4, 10)]
    opted_in = quantize(model, calib=calib, config=QuantConfig(
        target="tensorrt", recovery=replace(RecoveryOptions(), constant_region_correction=True)))
    assert any(n.startswith("constant-region correction: ") for n in opted_in.report.prepare_notes)
    full = quantize(model, calib=calib, config=QuantConfig(
        target="ort-cpu", recovery=replace(RecoveryOptions(), bias_correction=True)))
    assert not any("constant-region" in n for n in full.report.prepare_notes)
    assert any(n.startswith("bias correction: ") for n in full.report.prepare_notes)


def test_ort_cpu_corrects_the_biases_on_the_data_where_the_padding_correction_is_not_kept():
    """The ort-cpu default: the constant-region correction where it is kept (a letterboxed, fully convolutional
    model), else bias correction on the calibration data's means; the user's --bias-correction replaces the first,
    --no-bias-correction leaves only the first."""
    model = yolo_like()
    letterbox = [feed for feed, _ in letterboxed(4, 10)]
    default = quantize(model, calib=letterbox, config=QuantConfig(target="ort-cpu")).report.prepare_notes
    assert any(n.startswith("constant-region correction: ") for n in default)
    assert not any(n.startswith("bias correction") for n in default)
    rng = np.random.default_rng(7)  # smooth pictures filling the whole square: no padding constant
    full_frames = [{"x": np.clip(np.kron(rng.uniform(0, 255, (1, 3, SIZE // 4, SIZE // 4)), np.ones((4, 4)))
                                 + rng.normal(0, 12, (1, 3, SIZE, SIZE)), 0, 255).astype(np.float32)}
                   for _ in range(4)]
    unpadded = quantize(model, calib=full_frames, config=QuantConfig(target="ort-cpu")).report.prepare_notes
    assert not any("constant-region" in n for n in unpadded)
    assert any(n.startswith("bias correction: ") for n in unpadded), unpadded
    neither = quantize(model, calib=full_frames, config=QuantConfig(
        target="ort-cpu", recovery=replace(RecoveryOptions(), bias_correction=False))).report.prepare_notes
    assert not any("bias correction" in n or "constant-region" in n for n in neither)
