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
import math
import sys
import time
from collections.abc import Callable
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
from onnxq.qat.progress import StepReport
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


def imbalanced_weights(name: str, path: Path, spread: float, seed: int = 0) -> Path:
    """Write a function-preserving variant of a reference model's weights whose channels have unequal ranges, the
    situation of Nagel et al. 2019 ("Data-Free Quantization", sec. 4.1: depthwise-separable nets trained without
    care, where per-tensor INT8 loses most of the accuracy): in every Conv-BN-ReLU followed by a Conv in the same
    ``nn.Sequential``, output channel c of the BN is scaled by ``k_c`` (log-uniform in ``[1/spread, spread]``) and
    input channel c of the next Conv by ``1 / k_c``. ReLU commutes with positive scaling, so the float model computes
    the same function; the activation between them (one scale per tensor) now spans channels of very different
    ranges. Returns ``path``."""
    torch.manual_seed(seed)
    net = registry.load_network(name)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for seq in net.modules():
            if not isinstance(seq, torch.nn.Sequential):
                continue
            items = list(seq)
            for a, b in zip(items, items[1:]):
                first = list(a) if isinstance(a, torch.nn.Sequential) else []
                nxt = b[0] if isinstance(b, torch.nn.Sequential) else b
                if (len(first) == 3 and isinstance(first[1], torch.nn.BatchNorm2d)
                        and isinstance(first[2], torch.nn.ReLU) and isinstance(nxt, torch.nn.Conv2d)
                        and nxt.groups == 1):
                    bn = first[1]
                    k = torch.exp((torch.rand(bn.num_features, generator=g) * 2 - 1) * math.log(spread))
                    bn.weight.mul_(k)
                    bn.bias.mul_(k)
                    nxt.weight.div_(k.view(1, -1, 1, 1))
    torch.save(net.state_dict(), path)
    return path


def _better(info, a: float, b: float) -> bool:
    return a > b if info.higher_is_better else a < b


def recovered(fp32: float, ptq: float, qat: float, higher_is_better: bool = True) -> float | None:
    """Share of the PTQ loss that QAT won back; None when PTQ lost nothing (there is nothing to recover)."""
    sign = 1.0 if higher_is_better else -1.0
    loss = sign * (fp32 - ptq)
    return None if loss <= 1e-9 else sign * (qat - ptq) / loss


Stage = Callable[[str], None]


def _silent(message: str) -> None:
    log.info("%s", message)


def run_models_qat(name: str, out_dir: Path, *, seed: int = 0, recipe: QATRecipe | None = None,
                   methods: tuple[str, ...] = METHODS, inits: tuple[str, ...] = ("best", "worst"),
                   weights: str | Path | None = None, stage: Stage | None = None,
                   progress: Callable[[StepReport], None] | None = None,
                   per_channel_weights: bool = True) -> dict[str, Any]:
    """FP32, PTQ (every method) and QAT metrics of one reference model; writes ``out_dir/qat_<name>.md`` and
    ``.json`` besides the models and data, and returns the record. ``inits``: which PTQ ranges QAT starts from,
    ``best`` (the issue's comparison), ``worst`` (the method that lost most: does QAT repair bad ranges?) or a
    method name. ``stage`` is told each stage as it starts and what it measured; ``progress`` sees every QAT step.
    ``per_channel_weights=False``: PTQ and QAT both with one scale per weight tensor (runtimes without per-channel
    weight scales; BN-folded weights then span very different ranges per channel)."""
    stage = stage or _silent
    info = get_model(name)
    recipe = recipe or RECIPES[name]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    stage(f"{name}: exporting the FP32 model and the calib/val data")
    fp32_path = export_onnx(name, out_dir / "model.onnx", weights=weights)
    calib_dir = write_data(name, out_dir / "calib", split="calib", batches=CALIB_BATCHES,
                           batch_size=CALIB_BATCH_SIZE, seed=seed, labels=False)
    val_dir = write_data(name, out_dir / "val", split="val", batches=VAL_BATCHES, batch_size=VAL_BATCH_SIZE,
                         seed=seed, labels=True)
    fp32 = evaluate_onnx(name, fp32_path, val_dir).value
    stage(f"{name}: FP32 {info.metric_name} {fp32:.4f}")

    ptq: dict[str, float] = {}
    for method in methods:
        stage(f"{name}: PTQ {method}: quantize and evaluate")
        config = QuantConfig(calib=CalibOptions(method=method), per_channel_weights=per_channel_weights)
        path = out_dir / f"model.ptq-{method}.onnx"
        quantize(fp32_path, calib=str(calib_dir), config=config, output=path)
        ptq[method] = evaluate_onnx(name, path, val_dir).value
        stage(f"{name}: PTQ {method}: {info.metric_name} {ptq[method]:.4f}")
    order = sorted(methods, key=lambda m: ptq[m], reverse=info.higher_is_better)  # best first
    t_ptq = time.perf_counter() - t0
    runs = []
    for init in inits:
        method = order[0] if init == "best" else order[-1] if init == "worst" else init
        if init == "worst" and method == order[0]:
            continue
        run = _qat_run(name, out_dir, method, recipe, calib_dir, val_dir, weights, seed, stage, progress,
                       per_channel_weights)
        run |= {"init": init, "init_method": method, "ptq": ptq[method],
                "recovered": recovered(fp32, ptq[method], run["qat"], info.higher_is_better)}
        runs.append(run)
        stage(f"{name}: QAT from {init} ({method}): {info.metric_name} {run['qat']:.4f} "
              f"(its PTQ {ptq[method]:.4f}, FP32 {fp32:.4f})")
    record = {
        "model": name, "metric": info.metric_name, "higher_is_better": info.higher_is_better,
        "weight_scales": "per-channel" if per_channel_weights else "per-tensor",
        "fp32": fp32, "ptq": ptq, "ptq_best_method": order[0], "ptq_best": ptq[order[0]], "runs": runs,
        "ptq_seconds": round(t_ptq, 1), "torch_threads": torch.get_num_threads(),
        "val_samples": VAL_BATCHES * VAL_BATCH_SIZE,
    }
    write_json_atomic(out_dir / f"qat_{name}.json", record)
    write_text_atomic(out_dir / f"qat_{name}.md", render_table([record]))
    return record


def _qat_run(name: str, out_dir: Path, method: str, recipe: QATRecipe, calib_dir: Path, val_dir: Path,
             weights: str | Path | None, seed: int, stage: Stage,
             progress: Callable[[StepReport], None] | None, per_channel_weights: bool = True) -> dict[str, Any]:
    """prepare (PTQ ranges of ``method``) -> finetune -> export -> onnxq quantize --scales -> evaluate."""
    info = get_model(name)
    stage(f"{name}: QAT from {method}: prepare (export, plan, map, PTQ initialisation)")
    torch.manual_seed(seed)
    t1 = time.perf_counter()
    config = QuantConfig(calib=CalibOptions(method=method), per_channel_weights=per_channel_weights)
    net = registry.load_network(name, weights)
    calib = []
    for f in sorted(calib_dir.glob("*.npz")):
        with np.load(f) as z:
            calib.append({k: z[k] for k in info.inputs})
    example = tuple(torch.from_numpy(calib[0][k][:2]) for k in info.inputs)
    qmodel = prepare(net, example, calib=calib, config=config, spec=ExportSpec(info.inputs, info.outputs))
    stage(f"{name}: QAT from {method}: mapping {qmodel.mapping.summary()}; fine-tuning {recipe.steps} steps")
    history = finetune(qmodel, _TrainBatches(name, recipe.steps, recipe.batch, seed), _task_loss(name),
                       FinetuneConfig(epochs=1, lr=recipe.lr, kd_alpha=recipe.kd_alpha, freeze_bn_epoch=0),
                       progress=progress)
    t_train = time.perf_counter() - t1
    stage(f"{name}: QAT from {method}: export, onnxq quantize --scales, evaluate")
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
            model = r["model"] + (" (per-tensor weights)" if r.get("weight_scales") == "per-tensor" else "") + (
                f" ({r['variant']})" if r.get("variant") else "")
            lines.append(f"| {model} | {r['metric']} {arrow} | {_fmt(r['fp32'])} | {ptq} | "
                         f"{run['init']} ({run['init_method']}) | {_fmt(run['ptq'])} | {_fmt(run['qat'])} | "
                         f"{_fmt(run['qat_fp32_weights'])} | "
                         f"{'no PTQ loss' if rec is None else f'{rec:.0%}'} | {run['qat_steps']} | "
                         f"{run['qat_seconds']} |")
    return "\n".join(lines) + "\n"


def step_cost(name: str, steps: int = 8, seed: int = 0) -> dict[str, Any]:
    """Median QAT step vs float step of a reference model (its QAT recipe's batch), measured side by side
    (:func:`onnxq.qat.step_cost.measure_step_cost`)."""
    from onnxq.qat.step_cost import measure_step_cost

    info, recipe = get_model(name), RECIPES[name]
    torch.manual_seed(seed)
    net = registry.load_network(name)
    rng = registry.data_rng(name, "calib", seed)
    calib = [info.make_batch(rng, CALIB_BATCH_SIZE)[0] for _ in range(2)]
    example = tuple(torch.from_numpy(calib[0][k][:2]) for k in info.inputs)
    qmodel = prepare(net, example, calib=calib, spec=ExportSpec(info.inputs, info.outputs))
    inputs, labels = info.make_batch(registry.data_rng(name, "train", seed), recipe.batch)
    cost = measure_step_cost(qmodel, tuple(torch.from_numpy(inputs[k]) for k in info.inputs), labels,
                             _task_loss(name), steps=steps)
    return {"model": name, "batch": recipe.batch, "float_ms": round(cost.float_ms, 1),
            "qat_ms": round(cost.qat_ms, 1), "ratio": round(cost.ratio, 2), "steps": steps,
            "torch_threads": torch.get_num_threads()}


def render_step_costs(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | batch | float step (ms, median) | QAT step (ms, median) | QAT / float |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['batch']} | {r['float_ms']} | {r['qat_ms']} | {r['ratio']:.2f} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="QAT vs PTQ on the reference models (measured in onnxruntime)")
    parser.add_argument("models", nargs="*", default=list(registry.MODELS))
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-tensor-weights", action="store_true",
                        help="PTQ and QAT with one scale per weight tensor (default: per output channel)")
    parser.add_argument("--imbalance", type=float, default=None, metavar="SPREAD",
                        help="run a function-preserving variant whose channel ranges differ by up to SPREAD^2 "
                             "between Conv-BN-ReLU and the next Conv (imbalanced_weights)")
    parser.add_argument("--inits", default="best,worst", help="PTQ ranges QAT starts from (default best,worst)")
    parser.add_argument("--step-cost", type=int, default=0, metavar="STEPS",
                        help="only measure QAT step / float step (medians of STEPS interleaved steps)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    if args.step_cost:
        rows = []
        for name in args.models:
            rows.append(step_cost(name, args.step_cost, args.seed))
            print(render_step_costs(rows[-1:]), flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.out / "qat_step_cost.md", render_step_costs(rows))
        write_json_atomic(args.out / "qat_step_cost.json", rows)
        print(render_step_costs(rows))
        return 0
    records = []
    for name in args.models:
        sub = args.out / (name + ("-per-tensor" if args.per_tensor_weights else "")
                          + (f"-imbalanced{args.imbalance:g}" if args.imbalance else ""))
        weights = None
        if args.imbalance:
            sub.mkdir(parents=True, exist_ok=True)
            weights = imbalanced_weights(name, sub / "imbalanced.pt", args.imbalance, args.seed)
        record = run_models_qat(name, sub, seed=args.seed, per_channel_weights=not args.per_tensor_weights,
                                weights=weights, inits=tuple(args.inits.split(",")),
                                stage=lambda m: print(m, file=sys.stderr, flush=True))
        if args.imbalance:
            record["variant"] = f"channel ranges x{args.imbalance:g}^±1"
        records.append(record)
        print(render_table(records[-1:]), flush=True)
    write_text_atomic(args.out / "qat_results.md", render_table(records))
    write_json_atomic(args.out / "qat_results.json", {r["model"]: r for r in records})
    print(render_table(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
