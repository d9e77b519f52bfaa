"""QAT evidence on the reference models: FP32, PTQ (each onnxq calibration method) and QAT task metrics, all
measured with onnxruntime on exported graphs.

    python -m onnxq.qat.reference pointnext centerpoint bevfusion vit -o qat_results/

For each model: export the FP32 ONNX and the calib/val data (``onnxq.models.export``), quantize it with each method
and keep the best on the validation metric, then ``qat.prepare`` (initialised from that method's ranges), a short
``qat.finetune`` on the model's training split (KD from the FP32 model, BN frozen), ``qat.export`` and
``onnxq quantize --scales`` of the result. ``recovered`` is (QAT - PTQ) / (FP32 - PTQ) in the metric's better
direction: 1 means QAT is as good as FP32, 0 no better than PTQ.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from onnxq.atomic import write_json_atomic, write_text_atomic
from onnxq.calib.base import CalibOptions
from onnxq.config import QuantConfig
from onnxq.models import registry
from onnxq.models.evaluate import evaluate_onnx
from onnxq.models.export import export_onnx, write_data
from onnxq.models.registry import get_model
from onnxq.models.train import task_loss
from onnxq.pipeline import quantize
from onnxq.qat.api import export, prepare
from onnxq.qat.model import ExportSpec
from onnxq.qat.train import FinetuneConfig, finetune
from onnxq.scales.importer import scale_importer

log = logging.getLogger(__name__)

METHODS = ("minmax", "percentile", "entropy", "mse")
CALIB_BATCHES, CALIB_BATCH_SIZE = 16, 8
VAL_BATCHES, VAL_BATCH_SIZE = 16, 16


@dataclass(frozen=True)
class QATRecipe:
    steps: int
    batch: int
    lr: float  # about a tenth of the float training's peak learning rate
    kd_alpha: float | None = 0.5


# the float training used: pointnext lr 3e-3, 260 steps; centerpoint/bevfusion 3e-3, 360; vit 1e-3, 700
RECIPES = {
    "pointnext": QATRecipe(steps=60, batch=32, lr=3e-4),
    "centerpoint": QATRecipe(steps=60, batch=16, lr=3e-4),
    "bevfusion": QATRecipe(steps=60, batch=16, lr=3e-4),
    "vit": QATRecipe(steps=60, batch=32, lr=1e-4),
}


def _task_loss(name: str):
    # the loss the reference model was trained with
    return lambda outputs, labels: task_loss(torch, name, outputs, labels)


class _TrainBatches:
    def __init__(self, name: str, steps: int, batch: int, seed: int) -> None:
        self.info, self.steps, self.batch = get_model(name), steps, batch
        self.rng = registry.data_rng(name, "train", seed)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            inputs, labels = self.info.make_batch(self.rng, self.batch)
            yield tuple(torch.from_numpy(inputs[k]) for k in self.info.inputs), labels


def _better(info, a: float, b: float) -> bool:
    return a > b if info.higher_is_better else a < b


def recovered(fp32: float, ptq: float, qat: float, higher_is_better: bool = True) -> float | None:
    """Share of the PTQ loss that QAT won back; None when PTQ lost nothing (there is nothing to recover)."""
    sign = 1.0 if higher_is_better else -1.0
    loss = sign * (fp32 - ptq)
    return None if loss <= 1e-9 else sign * (qat - ptq) / loss


def run_models_qat(name: str, out_dir: Path, *, seed: int = 0, recipe: QATRecipe | None = None,
                   methods: tuple[str, ...] = METHODS, inits: tuple[str, ...] = ("best", "worst"),
                   weights: str | Path | None = None) -> dict[str, Any]:
    """FP32, PTQ (every method) and QAT metrics of one reference model; writes ``out_dir/qat_<name>.md`` and
    ``.json`` besides the models and data, and returns the record. ``inits``: which PTQ ranges QAT starts from,
    ``best`` (the issue's comparison), ``worst`` (the method that lost most: does QAT repair bad ranges?) or a
    method name."""
    info = get_model(name)
    recipe = recipe or RECIPES[name]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    fp32_path = export_onnx(name, out_dir / "model.onnx", weights=weights)
    calib_dir = write_data(name, out_dir / "calib", split="calib", batches=CALIB_BATCHES,
                           batch_size=CALIB_BATCH_SIZE, seed=seed, labels=False)
    val_dir = write_data(name, out_dir / "val", split="val", batches=VAL_BATCHES, batch_size=VAL_BATCH_SIZE,
                         seed=seed, labels=True)
    fp32 = evaluate_onnx(name, fp32_path, val_dir).value

    ptq: dict[str, float] = {}
    for method in methods:
        config = QuantConfig(calib=CalibOptions(method=method))
        path = out_dir / f"model.ptq-{method}.onnx"
        quantize(fp32_path, calib=str(calib_dir), config=config, output=path)
        ptq[method] = evaluate_onnx(name, path, val_dir).value
        log.info("%s PTQ %s: %.4f", name, method, ptq[method])
    order = sorted(methods, key=lambda m: ptq[m], reverse=info.higher_is_better)  # best first
    t_ptq = time.perf_counter() - t0
    runs = []
    for init in inits:
        method = order[0] if init == "best" else order[-1] if init == "worst" else init
        if init == "worst" and method == order[0]:
            continue
        run = _qat_run(name, out_dir, method, recipe, calib_dir, val_dir, weights, seed)
        run |= {"init": init, "init_method": method, "ptq": ptq[method],
                "recovered": recovered(fp32, ptq[method], run["qat"], info.higher_is_better)}
        runs.append(run)
        log.info("%s QAT from %s (%s): %.4f", name, init, method, run["qat"])
    record = {
        "model": name, "metric": info.metric_name, "higher_is_better": info.higher_is_better,
        "fp32": fp32, "ptq": ptq, "ptq_best_method": order[0], "ptq_best": ptq[order[0]], "runs": runs,
        "ptq_seconds": round(t_ptq, 1), "torch_threads": torch.get_num_threads(),
        "val_samples": VAL_BATCHES * VAL_BATCH_SIZE,
    }
    write_json_atomic(out_dir / f"qat_{name}.json", record)
    write_text_atomic(out_dir / f"qat_{name}.md", render_table([record]))
    return record


def _qat_run(name: str, out_dir: Path, method: str, recipe: QATRecipe, calib_dir: Path, val_dir: Path,
             weights: str | Path | None, seed: int) -> dict[str, Any]:
    """prepare (PTQ ranges of ``method``) -> finetune -> export -> onnxq quantize --scales -> evaluate."""
    info = get_model(name)
    torch.manual_seed(seed)
    t1 = time.perf_counter()
    config = QuantConfig(calib=CalibOptions(method=method))
    net = registry.load_network(name, weights)
    calib = []
    for f in sorted(calib_dir.glob("*.npz")):
        with np.load(f) as z:
            calib.append({k: z[k] for k in info.inputs})
    example = tuple(torch.from_numpy(calib[0][k][:2]) for k in info.inputs)
    qmodel = prepare(net, example, calib=calib, config=config, spec=ExportSpec(info.inputs, info.outputs))
    history = finetune(qmodel, _TrainBatches(name, recipe.steps, recipe.batch, seed), _task_loss(name),
                       FinetuneConfig(epochs=1, lr=recipe.lr, kd_alpha=recipe.kd_alpha, freeze_bn_epoch=0))
    t_train = time.perf_counter() - t1
    qat_fp32, qat_scales = out_dir / f"model.qat-{method}-fp32.onnx", out_dir / f"qat_scales-{method}.json"
    export(qmodel, qat_fp32, qat_scales)
    qat_path = out_dir / f"model.qat-{method}.onnx"
    quantize(qat_fp32, config=config, scales=scale_importer(str(qat_scales), strict=True), output=qat_path)
    return {
        "qat": evaluate_onnx(name, qat_path, val_dir).value,
        "qat_fp32_weights": evaluate_onnx(name, qat_fp32, val_dir).value,
        "mapping": qmodel.mapping.summary(), "unmapped": dict(qmodel.mapping.unmapped),
        "qat_steps": history["steps"], "qat_batch": recipe.batch, "qat_lr": recipe.lr,
        "kd_alpha": recipe.kd_alpha, "qat_seconds": round(t_train, 1),
    }


def _fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def render_table(records: list[dict[str, Any]]) -> str:
    lines = ["| model | metric | FP32 | " + " | ".join(f"PTQ {m}" for m in METHODS)
             + " | QAT from | its PTQ | QAT (INT8) | QAT weights in FP32 | recovered | QAT steps | QAT s |",
             "|---" * (10 + len(METHODS)) + "|"]
    for r in records:
        arrow = "↑" if r["higher_is_better"] else "↓"
        ptq = " | ".join(_fmt(r["ptq"].get(m)) for m in METHODS)
        for run in r["runs"]:
            rec = run["recovered"]
            lines.append(f"| {r['model']} | {r['metric']} {arrow} | {_fmt(r['fp32'])} | {ptq} | "
                         f"{run['init']} ({run['init_method']}) | {_fmt(run['ptq'])} | {_fmt(run['qat'])} | "
                         f"{_fmt(run['qat_fp32_weights'])} | "
                         f"{'no PTQ loss' if rec is None else f'{rec:.0%}'} | {run['qat_steps']} | {run['qat_seconds']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="QAT vs PTQ on the reference models (measured in onnxruntime)")
    parser.add_argument("models", nargs="*", default=list(registry.MODELS))
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    records = []
    for name in args.models:
        records.append(run_models_qat(name, args.out / name, seed=args.seed))
        print(render_table(records[-1:]), flush=True)
    write_text_atomic(args.out / "qat_results.md", render_table(records))
    write_json_atomic(args.out / "qat_results.json", {r["model"]: r for r in records})
    print(render_table(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
