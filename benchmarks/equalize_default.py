"""Equalization on or off by default: the reference models' task metrics and the quantize wall time, side by side.

    python benchmarks/equalize_default.py [--models pointnext centerpoint bevfusion vit] [--repeats 3]
                                          [--workdir /tmp/onnxq-eq-ref]
    python benchmarks/equalize_default.py --models ori rec det ppcls pprec ppdet --repeats 3   # time only

Each reference model (``onnxq models export``: shipped weights, seeded synthetic calib/ 16x8 and val/ 16x16) is
quantized with three configurations, one ``onnxq.quantize`` call after another in this process, ``--repeats`` times
in alternating order:

* ``minmax``: ``--method minmax --no-equalize`` (the default before the recovery work; the time reference);
* ``mse``: ``--no-equalize`` (MSE ranges, equalization off: the default before this change);
* ``mse+eq``: MSE ranges with equalization (``--equalize``).

Prints, per model and configuration, the task metric on val/ (FP32 alongside), the median wall time, its ratio to
min-max, and the median seconds of the ``equalize`` stage. The public real models of ``real_models.py`` (names of
``benchmarks/realdata.py``) are timed the same way on their calib/ set; their error and task agreement come from
``real_models.py --extra-args=--equalize --extra-args=--no-equalize``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

import onnx  # noqa: E402

from onnxq.calib.base import CalibOptions  # noqa: E402
from onnxq.config import QuantConfig  # noqa: E402
from onnxq.pipeline import quantize  # noqa: E402

BASE = QuantConfig()
CONFIGS = {
    "minmax": replace(BASE, calib=CalibOptions(method="minmax"), recovery=replace(BASE.recovery, equalize=False)),
    "mse": replace(BASE, recovery=replace(BASE.recovery, equalize=False)),
    "mse+eq": replace(BASE, recovery=replace(BASE.recovery, equalize=True)),
}


def exported(name: str, workdir: Path) -> Path:
    from onnxq.models.export import export_onnx, write_data

    folder = workdir / name
    if not (folder / "model.onnx").exists():
        folder.mkdir(parents=True, exist_ok=True)
        write_data(name, folder / "calib", split="calib", batches=16, batch_size=8, seed=0, labels=False)
        write_data(name, folder / "val", split="val", batches=16, batch_size=16, seed=0, labels=True)
        export_onnx(name, folder / "model.onnx")
    return folder


def main(argv: list[str] | None = None) -> int:
    from onnxq.models.evaluate import evaluate_onnx

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["pointnext", "centerpoint", "bevfusion", "vit"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/onnxq-eq-ref"))
    args = parser.parse_args(argv)
    from realdata import MODELS as REAL_MODELS
    from realdata import ensure_dataset, model_path

    for name in args.models:
        real = name in REAL_MODELS
        if real:
            source, calib = model_path(name), ensure_dataset(name)[0]
        else:
            folder = exported(name, args.workdir)
            source, calib = folder / "model.onnx", folder / "calib"
        fp32 = float("nan") if real else evaluate_onnx(name, source, folder / "val").value
        times: dict[str, list[float]] = {k: [] for k in CONFIGS}
        stage: dict[str, list[float]] = {k: [] for k in CONFIGS}
        metric: dict[str, float] = {}
        notes: dict[str, str] = {}
        for repeat in range(args.repeats):
            order = list(CONFIGS) if repeat % 2 == 0 else list(reversed(CONFIGS))
            for key in order:
                start = time.perf_counter()
                result = quantize(source, calib=str(calib), config=CONFIGS[key])
                times[key].append(time.perf_counter() - start)
                stage[key].append(result.report.seconds.get("equalize", 0.0))
                if key not in metric:
                    if real:
                        metric[key] = float("nan")
                    else:
                        out = folder / f"model.{key}.onnx"
                        onnx.save(result.model, out)
                        metric[key] = evaluate_onnx(name, out, folder / "val").value
                    notes[key] = "; ".join(n for n in result.report.prepare_notes if n.startswith("equalization"))
        base = statistics.median(times["minmax"])
        print(f"{name}: FP32 {fp32:.4f}", flush=True)
        for key in CONFIGS:
            median = statistics.median(times[key])
            print(f"  {key:7s} metric {metric[key]:.4f}  quantize median {median:.1f}s ({median / base:.2f}x "
                  f"min-max)  equalize stage {statistics.median(stage[key]):.2f}s  {notes[key]}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
