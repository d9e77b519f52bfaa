"""Each public real model's own decoding, and how well a quantized model's decoded result agrees with FP32's.

- ``det``: YOLOX decoding as in ddddocr's ``DetectionEngine`` (grid offsets and strides 8/16/32, ``exp`` of w/h,
  score = objectness x class score, class-agnostic NMS at IoU 0.45, score > 0.1). Agreement: detections matched
  one-to-one at IoU >= 0.5 between FP32 and quantized, F1 = 2 * matched / (n_fp32 + n_quant) over the set.
  Detections scored just above the threshold flip with tiny score changes (on the det evaluation set 30% of FP32's
  detections score below 0.2 and most disagreements are among them), so a second figure, ``confident_f1``, asks
  only that each detection scoring at least twice the threshold in one model is found (IoU >= 0.5, any score above
  the threshold) by the other. Given the inputs, the SQNR of the raw output over the anchors whose cell centre lies in
  the letterbox padding and over the others (``padding_anchors``; ``benchmarks/padding_error.py`` for more).
- ``rec``: greedy CTC (argmax per step, collapse repeats, drop blank 0). Agreement: share of lines whose decoded
  string equals FP32's; also the per-step argmax agreement, the share equal up to letter case (most disagreements
  are case flips of glyphs whose cases look alike -- w/W, z/Z, o/O -- where FP32 itself is near a tie, see
  ``benchmarks/rec_agreement.py``) and the number of lines.
- ``ori``, ``ppcls``: top-1 class. Agreement: share of images with the same class as FP32.
- ``ppdet``: DB text boxes (``realdata_ppocr.db_boxes``) matched one-to-one at IoU >= 0.5 between FP32 and quantized,
  F1 as for ``det``; also the IoU of the two binarised maps (probability > 0.3).
- ``pprec``: greedy CTC over (N, T, C) scores, string agreement as for ``rec``.
- ``picodet``: PicoDet decoding of all eight outputs (``realdata_picodet.decode``: per-class score > 0.4, NMS 0.5),
  detections matched one-to-one at IoU >= 0.5 within a class; no ground truth (its CDLA classes are not the pages').
- ``yolodoc``: YOLOv8 decoding (``realdata_yolodoc.decode``: score > 0.3, NMS 0.45), detections matched one-to-one at
  IoU >= 0.5 with the same class, F1 as for ``det``.
- ``minilm``: semantic search over the evaluation sentences: each sentence's nearest other sentence by cosine of the
  ``sentence_embedding`` output; agreement is the share with the same neighbour under FP32 and quantized. Also the
  mean and minimum cosine between the FP32 and quantized embeddings, and the Spearman rank correlation of all pairwise
  sentence similarities (FP32 against quantized: the ranking a semantic search or an STS benchmark reads; stable where
  the nearest neighbour of a near-duplicate flips). No ground truth (accuracy n/a).
Ground-truth accuracy (from the generated labels; text compared case-insensitively, detections at IoU >= 0.5 with
the drawn glyph boxes) is reported too, as a check that the inputs are realistic.
"""

from __future__ import annotations

import numpy as np

# ------------------------------------------------------------------ det


def yolox_decode(output: np.ndarray, size: int = 416, score_thr: float = 0.1, nms_thr: float = 0.45) -> np.ndarray:
    """Boxes (x1, y1, x2, y2, score) of one image's output (N, 6), in letterboxed input pixels."""
    pred = np.array(output, dtype=np.float64, copy=True)
    grids, strides = [], []
    for stride in (8, 16, 32):
        n = size // stride
        xv, yv = np.meshgrid(np.arange(n), np.arange(n))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        strides.append(np.full((n * n, 1), stride))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    pred[:, :2] = (pred[:, :2] + grid) * stride
    pred[:, 2:4] = np.exp(np.minimum(pred[:, 2:4], 20.0)) * stride
    scores = pred[:, 4] * pred[:, 5]
    keep = scores > score_thr
    if not keep.any():
        return np.zeros((0, 5))
    cx, cy, w, h = pred[keep, 0], pred[keep, 1], pred[keep, 2], pred[keep, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, scores[keep]], 1)
    return boxes[_nms(boxes, nms_thr)]


def _nms(boxes: np.ndarray, thr: float) -> list[int]:
    order = boxes[:, 4].argsort()[::-1]
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        iw = np.maximum(0, np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]) + 1)
        ih = np.maximum(0, np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]) + 1)
        inter = iw * ih
        order = rest[inter / (areas[i] + areas[rest] - inter) <= thr]
    return keep


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64).reshape(-1, 4 if np.size(a) and np.shape(a)[-1] == 4 else 5)[:, :4], \
        np.asarray(b, np.float64).reshape(-1, 4 if np.size(b) and np.shape(b)[-1] == 4 else 5)[:, :4]
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def matched(a: np.ndarray, b: np.ndarray, thr: float = 0.5) -> int:
    """Greedy one-to-one matches at IoU >= thr (highest IoU first)."""
    iou = iou_matrix(a, b)
    count = 0
    while iou.size and iou.max() >= thr:
        i, j = np.unravel_index(int(iou.argmax()), iou.shape)
        iou[i, :], iou[:, j] = -1, -1
        count += 1
    return count


# ------------------------------------------------------------------ rec


def ctc_greedy(logits: np.ndarray) -> list[int]:
    """Greedy CTC of one line's (T, C) scores: argmax, collapse repeats, drop blank 0."""
    best = logits.argmax(-1)
    out, prev = [], -1
    for idx in best.tolist():
        if idx != prev and idx != 0:
            out.append(idx)
        prev = idx
    return out


# ------------------------------------------------------------------ agreement over a set


# det: the letterbox of ddddocr's preprocessing (benchmarks/realdata.py det_preprocess): the picture top-left in a
# 416x416 square of 114
PAD_VALUE = 114.0
DET_SIZE = 416
DET_STRIDES = (8, 16, 32)


def image_extent(image: np.ndarray, pad: float = PAD_VALUE) -> tuple[int, int]:
    """(height, width) of the picture pasted at the top-left of a (C, H, W) or (1, C, H, W) letterboxed input: up to
    the last row and column holding a value other than the padding constant."""
    content = (np.asarray(image).reshape(-1, *np.shape(image)[-2:]) != pad).any(axis=0)
    rows, cols = np.flatnonzero(content.any(axis=1)), np.flatnonzero(content.any(axis=0))
    return (int(rows[-1]) + 1 if rows.size else 0), (int(cols[-1]) + 1 if cols.size else 0)


def padding_anchors(height: int, width: int, size: int = DET_SIZE) -> np.ndarray:
    """Boolean per anchor of the YOLOX output (stride 8, 16, 32 grids, row-major): its cell centre lies in the
    padding."""
    masks = []
    for stride in DET_STRIDES:
        centre = (np.arange(size // stride) + 0.5) * stride
        masks.append(((centre[:, None] >= height) | (centre[None, :] >= width)).ravel())
    return np.concatenate(masks)


# det: anchors whose FP32 objectness reaches this are candidates (the decoder multiplies objectness by the class score
# and keeps > 0.1). On the evaluation sets 99.7% of the quantization noise of the raw (1, 3549, 6) output sits on the
# other anchors -- background, mostly the letterbox padding -- whose box regressions the decoder never reads.
CANDIDATE_OBJECTNESS = 0.01


class TaskAgreement:
    """Accumulates, batch by batch, the task agreement of a quantized model with FP32 (and both against labels)."""

    score_thr = 0.1  # det: ddddocr's score threshold (realtasks.yolox_decode); ppdet: not used (DB boxes)

    def __init__(self, model: str, labels: list, charset: list[str] | None = None) -> None:
        self.model, self.labels, self.charset = model, labels, charset
        self.seen = 0
        self.agree = 0.0  # rec: equal strings; ori: equal class
        self.agree_casefold = 0  # rec: strings equal up to letter case
        self.steps = self.steps_agree = 0
        self.n_ref = self.n_quant = self.n_matched = 0
        self.ref_correct = self.quant_correct = 0.0
        self.gt_total = 0
        self.map_inter = self.map_union = 0
        self.confident = [0, 0, 0, 0]  # FP32 confident, of them found; quantized confident, of them found
        self.candidate_power = [0.0, 0.0]  # det: signal and noise power over candidate anchors (FP32 objectness)
        self.embeddings: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])  # minilm: FP32, quantized
        self.token_power = np.zeros((3, 2))  # minilm: (signal, noise): sentence embedding, real and padding tokens
        self.region_power = np.zeros((2, 2))  # det: [padding, image] anchors x [signal, noise] (inputs given)

    def _add_boxes(self, boxes_r: np.ndarray, boxes_q: np.ndarray) -> None:
        """One image's detections of FP32 and quantized, matched with each other and with the drawn boxes."""
        truth = np.asarray(self.labels[self.seen], np.float64).reshape(-1, 4)
        self.n_ref += len(boxes_r)
        self.n_quant += len(boxes_q)
        self.n_matched += matched(boxes_r, boxes_q)
        for k, (mine, other) in enumerate(((boxes_r, boxes_q), (boxes_q, boxes_r))):
            sure = mine[mine[:, 4] >= 2 * self.score_thr] if len(mine) else mine
            self.confident[2 * k] += len(sure)
            if len(sure) and len(other):
                self.confident[2 * k + 1] += int((iou_matrix(sure, other) >= 0.5).any(axis=1).sum())
        self.ref_correct += matched(truth, boxes_r)
        self.quant_correct += matched(truth, boxes_q)
        self.gt_total += len(truth)
        self.seen += 1

    def add_outputs(self, ref: list[np.ndarray], quant: list[np.ndarray]) -> None:
        """One batch of a model whose task needs every output (``picodet``: eight per-stride heads, a batch of one)."""
        from realdata_picodet import decode

        self._add_boxes(decode(ref), decode(quant))

    def add(self, ref: np.ndarray, quant: np.ndarray, images: np.ndarray | None = None) -> None:
        """One batch of the model's first output, FP32 and quantized; ``images``: the batch's input (det: splits the
        error between padding and image anchors)."""
        if self.model == "pprec":  # (N, T, C) -> the (T, N, C) layout of ddddocr's recogniser
            ref, quant = ref.transpose(1, 0, 2), quant.transpose(1, 0, 2)
        if self.model == "ppdet":
            from realdata_ppocr import db_boxes

            for r, q in zip(ref, quant):
                mask_r, mask_q = r[0] > 0.3, q[0] > 0.3
                self.map_inter += int((mask_r & mask_q).sum())
                self.map_union += int((mask_r | mask_q).sum())
                self._add_boxes(db_boxes(r[0]), db_boxes(q[0]))
        elif self.model == "yolodoc":
            from realdata_yolodoc import decode

            for r, q in zip(ref, quant):
                self._add_boxes(decode(r), decode(q))
        elif self.model == "minilm":
            self.embeddings[0].append(np.asarray(ref, np.float64))
            self.embeddings[1].append(np.asarray(quant, np.float64))
        elif self.model == "det":
            for k, (r, q) in enumerate(zip(ref, quant)):
                if images is not None:
                    pad = padding_anchors(*image_extent(images[k]))
                    for row, mask in enumerate((pad, ~pad)):
                        self.region_power[row] += [np.square(r[mask].astype(np.float64)).sum(),
                                                   np.square((q[mask] - r[mask]).astype(np.float64)).sum()]
                self._add_boxes(yolox_decode(r), yolox_decode(q))
                candidate = r[:, 4] >= CANDIDATE_OBJECTNESS
                self.candidate_power[0] += float(np.square(r[candidate].astype(np.float64)).sum())
                self.candidate_power[1] += float(np.square((q[candidate] - r[candidate]).astype(np.float64)).sum())
        elif self.model in ("rec", "pprec"):
            for b in range(ref.shape[1]):
                r, q = ref[:, b], quant[:, b]
                self.steps += r.shape[0]
                self.steps_agree += int((r.argmax(-1) == q.argmax(-1)).sum())
                text_r, text_q = self._text(ctc_greedy(r)), self._text(ctc_greedy(q))
                self.agree += text_r == text_q
                self.agree_casefold += text_r.lower() == text_q.lower()
                truth = self.labels[self.seen].lower()  # case-insensitive: some glyphs (o/O, s/S, ...) look alike
                self.ref_correct += text_r.lower() == truth
                self.quant_correct += text_q.lower() == truth
                self.gt_total += 1
                self.seen += 1
        else:
            for r, q in zip(ref, quant):
                self.agree += int(r.argmax()) == int(q.argmax())
                self.ref_correct += int(r.argmax()) == self.labels[self.seen]
                self.quant_correct += int(q.argmax()) == self.labels[self.seen]
                self.gt_total += 1
                self.seen += 1

    def add_tokens(self, ref: list[np.ndarray], quant: list[np.ndarray], attention_mask: np.ndarray) -> None:
        """minilm: one batch of both outputs (sentence embedding, token embeddings); the token error is split by the
        attention mask into real and padding tokens (the padding rows are masked out of the pooled embedding)."""
        real = np.asarray(attention_mask).astype(bool)
        pairs = [(ref[0], quant[0]), (ref[1][real], quant[1][real]), (ref[1][~real], quant[1][~real])]
        for row, (r, q) in zip(self.token_power, pairs):
            r, q = np.asarray(r, np.float64), np.asarray(q, np.float64)
            row += ((r**2).sum(), ((r - q) ** 2).sum())

    def _search_result(self) -> dict:
        """minilm: nearest-neighbour agreement among the evaluation sentences and FP32/quantized cosine."""
        ref, quant = (np.concatenate(e) for e in self.embeddings)
        ref, quant = (e / np.linalg.norm(e, axis=1, keepdims=True) for e in (ref, quant))
        neighbours = []
        for e in (ref, quant):
            sim = e @ e.T
            np.fill_diagonal(sim, -np.inf)
            neighbours.append(sim.argmax(1))
        cosine = (ref * quant).sum(1)
        upper = np.triu_indices(len(ref), 1)
        pairs = [(e @ e.T)[upper] for e in (ref, quant)]  # every pair's similarity, FP32 and quantized
        ranks = [np.argsort(np.argsort(p)).astype(np.float64) for p in pairs]
        return {"agreement": float((neighbours[0] == neighbours[1]).mean()),
                "pair_spearman": float(np.corrcoef(ranks[0], ranks[1])[0, 1]),
                "agreement_name": "nearest-sentence agreement", "embedding_cosine": float(cosine.mean()),
                "embedding_cosine_min": float(cosine.min()), "sentences": len(ref),
                "fp32_accuracy": None, "quant_accuracy": None,
                **{key: float("inf") if noise == 0 else float(10 * np.log10(signal / noise))
                   for key, (signal, noise) in zip(("sentence_sqnr_db", "real_token_sqnr_db", "padding_token_sqnr_db"),
                                                   self.token_power) if signal > 0}}

    def _text(self, indices: list[int]) -> str:
        return "".join(self.charset[i] for i in indices) if self.charset else ",".join(map(str, indices))

    def result(self) -> dict:
        """``agreement`` (the headline figure), its name, extra figures, and FP32/quantized accuracy vs labels."""
        gt = max(self.gt_total, 1)
        out = {"fp32_accuracy": self.ref_correct / gt, "quant_accuracy": self.quant_correct / gt}
        if self.model == "minilm":
            return self._search_result()
        if self.model == "picodet":  # no labels in CDLA's classes: agreement with FP32 only
            out = {"fp32_accuracy": None, "quant_accuracy": None}
        if self.model in ("det", "ppdet", "yolodoc", "picodet"):
            out["agreement"] = 2 * self.n_matched / max(self.n_ref + self.n_quant, 1)
            out["agreement_name"] = "det F1 vs FP32"
            if self.model == "ppdet":
                out["map_iou"] = self.map_inter / max(self.map_union, 1)
            out["detections_fp32"], out["detections_quant"] = self.n_ref, self.n_quant
            if self.model == "det":
                recall = self.confident[1] / max(self.confident[0], 1)
                precision = self.confident[3] / max(self.confident[2], 1)
                out["confident_f1"] = 2 * precision * recall / max(precision + recall, 1e-12)
                signal, noise = self.candidate_power
                out["candidate_sqnr_db"] = float("inf") if noise == 0 else 10 * np.log10(signal / noise)
                if self.region_power[:, 0].all():
                    for key, (signal, noise) in zip(("padding_sqnr_db", "image_sqnr_db"), self.region_power):
                        out[key] = float("inf") if noise == 0 else float(10 * np.log10(signal / noise))
        elif self.model in ("rec", "pprec"):
            out["agreement"] = self.agree / max(self.seen, 1)
            out["agreement_name"] = "CTC string agreement"
            out["step_agreement"] = self.steps_agree / max(self.steps, 1)
            out["casefold_agreement"] = self.agree_casefold / max(self.seen, 1)
            out["lines"] = self.seen
        else:
            out["agreement"] = self.agree / max(self.seen, 1)
            out["agreement_name"] = "top-1 agreement"
        return out
