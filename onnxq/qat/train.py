"""``finetune``: a short QAT fine-tuning loop (AdamW, cosine decay, optional float warm-up, KD, BN freezing).

Loader items are ``(inputs, targets)``: ``inputs`` a tensor or a tuple of tensors (the model's positional inputs),
``targets`` anything ``loss_fn(outputs, targets)`` understands. Give ``split`` to take them apart differently.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from onnxq.errors import OnnxqError, require_at_least
from onnxq.qat.api import teacher_copy
from onnxq.qat.model import QATModel
from onnxq.qat.progress import StepReport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 1
    lr: float = 1e-4  # about a tenth of the float training's learning rate
    warmup_epochs: int = 0  # first epochs with fake quant off (float fine-tuning)
    kd_alpha: float | None = None  # loss = alpha * task + (1 - alpha) * KD(student, FP32 teacher); None: task only
    freeze_bn_epoch: int | None = 0  # BN running statistics frozen from this epoch on (0: from the start); None: never
    weight_decay: float = 0.0
    scale_lr: float | None = None  # learning rate of learnable scales (default: lr)
    max_steps: int | None = None  # stop after this many optimizer steps in all
    grad_clip: float | None = 5.0
    device: str | None = None  # default: cuda when available, else cpu

    def __post_init__(self) -> None:
        require_at_least("epochs", self.epochs, 1)
        if not self.lr > 0:
            raise OnnxqError(f"lr must be positive, got {self.lr}")
        if self.kd_alpha is not None and not 0.0 <= self.kd_alpha <= 1.0:
            raise OnnxqError(f"kd_alpha must be in [0, 1], got {self.kd_alpha}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise OnnxqError(f"warmup_epochs must be in [0, epochs], got {self.warmup_epochs}")


def default_split(item: Any) -> tuple[tuple[torch.Tensor, ...], Any]:
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise OnnxqError("loader items must be (inputs, targets); pass split= to take them apart otherwise")
    inputs, targets = item
    return ((inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)), targets


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [v for k in sorted(out) for v in _tensors(out[k])]
    if isinstance(out, (tuple, list)):
        return [v for o in out for v in _tensors(o)]
    return []


def mse_kd(student: Any, teacher: Any) -> torch.Tensor:
    """Mean squared error between every output tensor of the student and the teacher, each normalised by the
    teacher output's mean square so that outputs of different magnitudes weigh the same."""
    terms = [((s - t) ** 2).mean() / (t.pow(2).mean() + 1e-8) for s, t in zip(_tensors(student), _tensors(teacher))]
    return torch.stack(terms).mean()


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_to(v, device) for v in x)
    return x


def finetune(qmodel: QATModel, loader: Iterable[Any], loss_fn: Callable[[Any, Any], torch.Tensor],
             config: FinetuneConfig | None = None, *, teacher: nn.Module | None = None,
             kd_loss: Callable[[Any, Any], torch.Tensor] | None = None,
             split: Callable[[Any], tuple[tuple[torch.Tensor, ...], Any]] | None = None,
             progress: Callable[[StepReport], None] | None = None) -> dict[str, Any]:
    """Fine-tune ``qmodel`` in place; returns the history (mean loss per epoch, steps). With ``config.kd_alpha`` set
    and no ``teacher``, the teacher is a frozen FP32 copy of the model as it is now. ``progress`` is called after
    every step (e.g. :class:`onnxq.qat.progress.ConsoleProgress`); without it, progress is logged at INFO about
    every tenth of the run. Planned tensors the mapping could not place are listed (WARNING) before the first step."""
    if not isinstance(qmodel, QATModel):
        raise OnnxqError(f"finetune needs the model returned by qat.prepare, got {type(qmodel).__name__}")
    if qmodel.mapping.unmapped:
        log.warning("QAT: %d planned tensor(s) are not fake-quantized in torch (they keep their PTQ scales): %s",
                    len(qmodel.mapping.unmapped),
                    "; ".join(f"{n} ({why})" for n, why in qmodel.mapping.unmapped.items()))
    config = config or FinetuneConfig()
    split = split or default_split
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if config.kd_alpha is not None and config.kd_alpha < 1.0 and teacher is None:
        teacher = teacher_copy(qmodel)
    kd_loss = kd_loss or mse_kd
    qmodel.to(device)
    if teacher is not None:
        teacher.to(device).eval()
    scales = [p for n, p in qmodel.named_parameters() if p.requires_grad and not n.startswith("model.")]
    weights = [p for p in qmodel.model.parameters() if p.requires_grad]
    groups = [{"params": weights, "lr": config.lr, "weight_decay": config.weight_decay}]
    if scales:
        groups.append({"params": scales, "lr": config.scale_lr or config.lr, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups)
    try:
        per_epoch = len(loader)  # type: ignore[arg-type]
    except TypeError:
        per_epoch = None
    total = config.max_steps or (per_epoch * config.epochs if per_epoch else None)
    base = [g["lr"] for g in optimizer.param_groups]
    history: dict[str, Any] = {"epoch_loss": [], "steps": 0}
    step = 0
    started = time.perf_counter()
    every = max(1, (total or 100) // 10)
    quant_was = qmodel.quant_enabled
    try:
        for epoch in range(config.epochs):
            qmodel.enable_quant(epoch >= config.warmup_epochs)
            if config.freeze_bn_epoch is not None and epoch >= config.freeze_bn_epoch:
                qmodel.freeze_bn()
            qmodel.train()
            losses = []
            for item in loader:
                if config.max_steps is not None and step >= config.max_steps:
                    break
                inputs, targets = split(item)
                inputs, targets = _to(inputs, device), _to(targets, device)
                outputs = qmodel(*inputs)
                loss = loss_fn(outputs, targets)
                if teacher is not None and config.kd_alpha is not None:
                    with torch.no_grad():
                        t_out = teacher(*inputs)
                    loss = config.kd_alpha * loss + (1 - config.kd_alpha) * kd_loss(outputs, t_out)
                if not torch.isfinite(loss):
                    raise OnnxqError(f"the QAT loss became {loss.item()} at step {step}; lower the learning rate")
                if total:
                    factor = 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
                    for g, lr in zip(optimizer.param_groups, base):
                        g["lr"] = lr * factor
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(weights + scales, config.grad_clip)
                optimizer.step()
                losses.append(float(loss.detach()))
                step += 1
                report = StepReport(step, total, epoch, losses[-1], sum(losses) / len(losses),
                                    time.perf_counter() - started)
                if progress is not None:
                    progress(report)
                elif step % every == 0 or step == total:
                    log.info("%s", report.format())
            mean = sum(losses) / max(len(losses), 1)
            history["epoch_loss"].append(mean)
            log.info("QAT epoch %d: loss %.4f over %d step(s)%s", epoch, mean, len(losses),
                     "" if qmodel.quant_enabled else " (fake quant off)")
            if config.max_steps is not None and step >= config.max_steps:
                break
    finally:
        qmodel.enable_quant(quant_was)
        qmodel.eval()
    history["steps"] = step
    return history
