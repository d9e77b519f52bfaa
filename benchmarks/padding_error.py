"""Where a quantized letterboxed detector's output error lies: over the constant padding or over the image.

    python benchmarks/padding_error.py QUANTIZED.onnx [QUANTIZED2.onnx ...] [--split eval] [--all-pad]
                                       [--scale-jitter 1.001 0.999 1.003]

For the benchmark model ``det`` (ddddocr ``common_det``, ``benchmarks/realdata.py``: each captcha letterboxed
top-left into 416x416 with the constant 114) run FP32 and each quantized model on the split and split the squared
error of the raw ``(1, 3549, 6)`` output by anchor: an anchor of the stride-s grid (8, 16, 32) is a *padding* anchor
when its cell centre ``((i + 0.5) s, (j + 0.5) s)`` lies outside the pasted image. The image extent of each sample is
read from the input itself (the last row and column holding a value other than the padding constant).
Printed per model: SQNR over the whole output (what ``real_models.py`` reports), the padding anchors' share of the
squared error, SQNR over padding anchors and over image anchors, the same on the stride-8 grid only; with
``--all-pad``, also SQNR on an all-114 input (pure padding).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from per_sample_error import samples  # noqa: E402
from realdata import ensure_dataset, ensure_split, model_path  # noqa: E402
from realtasks import DET_SIZE, PAD_VALUE, image_extent, padding_anchors  # noqa: E402

SIZE = DET_SIZE


def db(signal: float, noise: float) -> float:
    return float("inf") if noise == 0 else float(10 * np.log10(signal / noise))


class PaddingError:
    """Signal and squared-error power of one model's output, over padding and image anchors."""

    def __init__(self) -> None:
        self.power: dict[str, list[float]] = {k: [0.0, 0.0] for k in ("all", "pad", "img", "pad8", "img8")}

    def add(self, ref: np.ndarray, got: np.ndarray, pad: np.ndarray) -> None:
        ref, err = ref[0].astype(np.float64), (got[0] - ref[0]).astype(np.float64)
        stride8 = np.zeros_like(pad)
        stride8[:(SIZE // 8) ** 2] = True
        for key, mask in (("all", np.ones_like(pad)), ("pad", pad), ("img", ~pad), ("pad8", pad & stride8),
                          ("img8", ~pad & stride8)):
            self.power[key][0] += float(np.square(ref[mask]).sum())
            self.power[key][1] += float(np.square(err[mask]).sum())

    def row(self) -> dict[str, float]:
        out = {k: db(s, n) for k, (s, n) in self.power.items()}
        out["pad_share"] = self.power["pad"][1] / max(self.power["all"][1], 1e-30)
        return out


def jittered(model, factor: float):
    """A copy of the Q/DQ ``model`` with the scale of every activation QuantizeLinear (and so of its
    DequantizeLinear, which shares the initializer) multiplied by ``factor``."""
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {i.name: i for i in model.graph.initializer}
    for name in {n.input[1] for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits}:
        scaled = (numpy_helper.to_array(inits[name]) * factor).astype(np.float32)
        inits[name].CopyFrom(numpy_helper.from_array(scaled, name))
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("quantized", nargs="+")
    parser.add_argument("--split", default="eval", choices=("calib", "eval", "val"))
    parser.add_argument("--all-pad", action="store_true", help="also the SQNR on one all-114 input")
    parser.add_argument("--scale-jitter", type=float, nargs="+", default=[], metavar="F",
                        help="also each model with every activation scale multiplied by F (e.g. 1.001 0.999): how "
                        "much of the padding error is the luck of the rounding")
    args = parser.parse_args(argv)
    import onnx
    import onnxruntime as ort

    folder = ensure_split("det", args.split) if args.split == "val" else \
        dict(zip(("calib", "eval"), ensure_dataset("det")))[args.split]
    feeds = samples(folder)
    pads = [padding_anchors(*image_extent(f["images"])) for f in feeds]
    reference = ort.InferenceSession(str(model_path("det")), providers=["CPUExecutionProvider"])
    refs = [reference.run(None, f)[0] for f in feeds]
    blank = {"images": np.full((1, 3, SIZE, SIZE), PAD_VALUE, np.float32)}
    blank_ref = reference.run(None, blank)[0]
    print(f"{len(feeds)} {args.split} images, padding anchors {np.mean([p.mean() for p in pads]):.0%} of all")
    print("| model | SQNR dB | padding share of error | SQNR padding | SQNR image | stride 8: padding | image |"
          + (" all-114 input |" if args.all_pad else ""))
    print("|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if args.all_pad else ""))
    variants = [(Path(p).name, onnx.load(p)) for p in args.quantized]
    variants += [(f"{name} x{f}", jittered(model, f)) for name, model in list(variants) for f in args.scale_jitter]
    for name, model in variants:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        acc = PaddingError()
        for feed, ref, pad in zip(feeds, refs, pads, strict=True):
            acc.add(ref, session.run(None, feed)[0], pad)
        r = acc.row()
        line = (f"| {name} | {r['all']:.2f} | {r['pad_share']:.0%} | {r['pad']:.2f} | {r['img']:.2f} | "
                f"{r['pad8']:.2f} | {r['img8']:.2f} |")
        if args.all_pad:
            error = (session.run(None, blank)[0] - blank_ref).astype(np.float64)
            line += f" {db(float(np.square(blank_ref.astype(np.float64)).sum()), float(np.square(error).sum())):.2f} |"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
