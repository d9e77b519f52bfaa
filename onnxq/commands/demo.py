"""``onnxq demo``: export -> quantize -> validate -> evaluate each reference model; print FP32 vs INT8."""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from onnxq import progress
from onnxq.errors import OnnxqError

log = logging.getLogger(__name__)


@dataclass
class DemoRow:
    name: str
    metric: str
    higher_is_better: bool
    baseline: float
    fp32: float
    int8: float
    min_sqnr_db: float
    worst_output: str
    min_cosine: float
    seconds: float

    @property
    def delta(self) -> float:
        return self.int8 - self.fp32


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="export, quantize, validate and evaluate the reference models; print FP32 vs INT8",
        description="For each reference model: export (FP32 ONNX + synthetic data), quantize with calibration, "
        "compare FP32 and INT8 outputs (SQNR), and evaluate both on the task metric.",
    )
    p.add_argument("--models", default=None, help="comma-separated subset (default: all; see onnxq models list)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="keep the exported and quantized files here (default: a temporary folder)")
    p.add_argument("--calib-batches", type=int, default=16, help="calibration batches of 8 samples (default 16)")
    p.add_argument("--val-batches", type=int, default=16, help="validation batches of 16 samples (default 16)")
    p.add_argument("--fast", action="store_true",
                   help="4 calibration and 4 validation batches (a smoke test; noisy metrics)")
    p.set_defaults(func=run)


def run_model(name: str, workdir: Path, calib_batches: int, val_batches: int) -> DemoRow:
    import onnxq
    from onnxq.models.evaluate import evaluate_onnx
    from onnxq.models.export import export_model
    from onnxq.validate import compare_models

    start = time.perf_counter()
    with progress.stage(f"demo {name}", total=5, unit="step") as advance:
        exp = export_model(name, workdir / name, calib_batches=calib_batches, val_batches=val_batches)
        advance()
        int8_path = exp.model_path.with_name("model.int8.onnx")
        result = onnxq.quantize(str(exp.model_path), calib=str(exp.calib_dir), output=str(int8_path))
        int8_path = result.output_path or int8_path
        advance()
        report = compare_models(str(exp.model_path), str(int8_path), data=str(exp.val_dir))
        advance()
        fp32 = evaluate_onnx(name, exp.model_path, exp.val_dir)
        advance()
        int8 = evaluate_onnx(name, int8_path, exp.val_dir)
        advance()
    worst = min(report.outputs, key=lambda o: o.sqnr_db)
    for o in report.outputs:
        log.info("%s output %s: SQNR %.1f dB, cosine %.5f, MAE %.4g, max error %.4g", name, o.name, o.sqnr_db,
                 o.cosine, o.mae, o.max_abs_error)
    return DemoRow(
        name, fp32.metric, fp32.higher_is_better, fp32.baseline, fp32.value, int8.value, worst.sqnr_db, worst.name,
        min(o.cosine for o in report.outputs), time.perf_counter() - start,
    )


def format_table(rows: list[DemoRow]) -> str:
    header = ("model", "metric", "baseline", "FP32", "INT8", "INT8-FP32", "min SQNR dB (output)", "min cosine",
              "time s")
    lines = [header]
    for r in rows:
        arrow = "↑" if r.higher_is_better else "↓"
        lines.append((
            r.name, f"{r.metric} {arrow}", f"{r.baseline:.4f}", f"{r.fp32:.4f}", f"{r.int8:.4f}", f"{r.delta:+.4f}",
            f"{r.min_sqnr_db:.1f} ({r.worst_output})", f"{r.min_cosine:.4f}", f"{r.seconds:.0f}",
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    from onnxq.models.registry import MODELS, get_model, import_torch

    names = list(MODELS) if not args.models else [n.strip() for n in args.models.split(",") if n.strip()]
    for n in names:
        get_model(n)
    if not names:
        raise OnnxqError("--models is empty; give comma-separated names from onnxq models list")
    import_torch()
    calib_batches, val_batches = (4, 4) if args.fast else (args.calib_batches, args.val_batches)
    if calib_batches < 1 or val_batches < 1:
        raise OnnxqError("--calib-batches and --val-batches must be at least 1")
    with tempfile.TemporaryDirectory(prefix="onnxq-demo-") as tmp:
        workdir = args.workdir if args.workdir is not None else Path(tmp)
        if workdir.exists() and not workdir.is_dir():
            raise OnnxqError(f"--workdir {workdir} exists and is not a folder")
        rows = []
        for n in names:
            log.info("demo: %s", n)
            rows.append(run_model(n, workdir, calib_batches, val_batches))
    print(format_table(rows))
    return 0
