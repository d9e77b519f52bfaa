"""Train the reference models on their synthetic tasks (seeded, CPU, a couple of minutes each).

    python -m onnxq.models.train [--models pointnext,vit] [--out onnxq/models/weights]

Writes ``<name>.pt`` (float32 state_dict) and updates ``train_log.json`` (wall time, validation metric and
the trivial baseline on the same validation split that ``onnxq models export`` writes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxq.models import registry
from onnxq.models.registry import get_model
from onnxq.models.tasks import bev


@dataclass(frozen=True)
class TrainConfig:
    """Steps, batch size, training set size and peak learning rate of one reference model."""

    steps: int
    batch: int
    n_train: int
    lr: float


CONFIG = {
    "pointnext": TrainConfig(steps=260, batch=32, n_train=4096, lr=3e-3),
    "centerpoint": TrainConfig(steps=360, batch=16, n_train=2048, lr=3e-3),
    "bevfusion": TrainConfig(steps=360, batch=16, n_train=2048, lr=3e-3),
    "vit": TrainConfig(steps=700, batch=32, n_train=2048, lr=1e-3),
}
VAL_BATCHES, VAL_BATCH_SIZE = 16, 16  # the defaults of `onnxq models export`


def _generate(name: str, split: str, n_batches: int, batch_size: int, seed: int = 0):
    info = get_model(name)
    rng = registry.data_rng(name, split, seed)
    return [info.make_batch(rng, batch_size) for _ in range(n_batches)]


def _cat(batches, idx):
    return {k: np.concatenate([b[idx][k] for b in batches]) for k in batches[0][idx]}


def task_loss(torch, name: str, outputs, labels: dict[str, np.ndarray]):
    """The training loss of reference model ``name`` (also what QAT fine-tunes with)."""
    f = torch.nn.functional
    if name == "pointnext":
        return f.cross_entropy(outputs, torch.from_numpy(labels["label"]), label_smoothing=0.1)
    if name in ("centerpoint", "bevfusion"):
        t = {k: torch.from_numpy(v) for k, v in bev.targets(labels).items()}
        heat = outputs[0].clamp(1e-4, 1 - 1e-4)
        gt = t["heatmap"]
        pos = gt.eq(1).float()
        # CenterNet focal loss
        pos_loss = (torch.log(heat) * (1 - heat) ** 2 * pos).sum()
        neg_loss = (torch.log(1 - heat) * heat**2 * (1 - gt) ** 4 * (1 - pos)).sum()
        focal = -(pos_loss + neg_loss) / pos.sum().clamp(min=1)
        pred = torch.cat(outputs[1:], dim=1)
        mask = t["mask"]
        weights = torch.tensor([1, 1, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25]).view(1, 8, 1, 1)
        l1 = ((pred - t["regression"]).abs() * mask * weights).sum() / mask.sum().clamp(min=1)
        return focal + 2 * l1
    if name == "vit":
        gt = torch.from_numpy(labels["depth"])
        return (torch.log(outputs) - torch.log(gt)).abs().mean()
    raise AssertionError(name)


def _to_numpy_outputs(info, outputs) -> dict[str, np.ndarray]:
    outs = outputs if isinstance(outputs, tuple) else (outputs,)
    return {n: o.detach().numpy() for n, o in zip(info.outputs, outs)}


def evaluate_torch(net, name: str, batches) -> float:
    import torch

    info = get_model(name)
    metric = info.make_metric()
    net.eval()
    with torch.no_grad():
        for inputs, labels in batches:
            outputs = net(*[torch.from_numpy(inputs[k]) for k in info.inputs])
            metric.update(_to_numpy_outputs(info, outputs), labels)
    return metric.compute()


def train(name: str, out_dir: Path, seed: int = 0, log=print) -> dict:
    torch = registry.import_torch()
    info = get_model(name)
    cfg = CONFIG[name]
    torch.manual_seed(seed)
    start = time.perf_counter()
    train_batches = _generate(name, "train", cfg.n_train // 64, 64, seed)
    inputs, labels = _cat(train_batches, 0), _cat(train_batches, 1)
    val = _generate(name, "val", VAL_BATCHES, VAL_BATCH_SIZE)
    t_data = time.perf_counter() - start
    net = registry.build_network(name)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    warmup = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps))
    )
    perm_rng = np.random.default_rng(seed)
    n = cfg.n_train
    order = perm_rng.permutation(n)
    pos = 0
    net.train()
    for step in range(cfg.steps):
        if pos + cfg.batch > n:
            order, pos = perm_rng.permutation(n), 0
        idx = np.sort(order[pos : pos + cfg.batch])
        pos += cfg.batch
        x = [torch.from_numpy(inputs[k][idx]) for k in info.inputs]
        y = {k: v[idx] for k, v in labels.items()}
        loss = task_loss(torch, name, net(*x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == cfg.steps - 1:
            log(f"{name} step {step:4d} loss {loss.item():.4f} ({time.perf_counter() - start:.0f}s)")
    seconds = time.perf_counter() - start
    net.eval()
    state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{name}.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, out_dir / f"{name}.pt")
    reloaded = registry.load_network(name, out_dir / f"{name}.pt")
    metric = evaluate_torch(reloaded, name, val)
    base = registry.baseline_metric(name, [b[1] for b in val])
    record = {
        "metric": info.metric_name,
        "higher_is_better": info.higher_is_better,
        "val_metric": round(float(metric), 4),
        "baseline": round(float(base), 4),
        "baseline_is": info.baseline,
        "train_seconds": round(seconds, 1),
        "data_seconds": round(t_data, 1),
        "steps": cfg.steps,
        "batch": cfg.batch,
        "params": sum(p.numel() for p in net.parameters()),
        "weights_bytes": (out_dir / f"{name}.pt").stat().st_size,
        "torch_threads": torch.get_num_threads(),
    }
    log(f"{name}: {json.dumps(record)}")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(registry.MODELS), help="comma-separated names")
    parser.add_argument("--out", type=Path, default=registry.WEIGHTS_DIR)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch = registry.import_torch()
    torch.set_num_threads(args.threads)
    log_path = args.out / "train_log.json"
    records = json.loads(log_path.read_text()) if log_path.is_file() else {}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        get_model(name)
        records[name] = train(name, args.out, args.seed, log=lambda s: print(s, flush=True))
        args.out.mkdir(parents=True, exist_ok=True)
        log_path.write_text(json.dumps(records, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
