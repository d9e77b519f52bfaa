"""What a QAT training step costs against a float training step of the same model on the same batch.

Both steps are forward, loss, backward and an AdamW update, BN in training mode (the float training's setting; QAT's
default freezes BN, which is cheaper), timed alternately so that load on a shared machine hits both alike; medians
are reported. The float model is a copy of the wrapped model without QAT's hooks (:func:`onnxq.qat.teacher_copy`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from onnxq.qat.model import QATModel


@dataclass(frozen=True)
class StepCost:
    float_ms: float  # median float step
    qat_ms: float  # median QAT step
    steps: int  # timed steps of each kind

    @property
    def ratio(self) -> float:
        return self.qat_ms / self.float_ms


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, inputs: tuple, targets: Any,
          loss_fn: Callable[[Any, Any], torch.Tensor]) -> float:
    t0 = time.perf_counter()
    loss = loss_fn(model(*inputs), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return (time.perf_counter() - t0) * 1e3


def measure_step_cost(qmodel: QATModel, inputs: tuple[torch.Tensor, ...], targets: Any,
                      loss_fn: Callable[[Any, Any], torch.Tensor], steps: int = 10, warmup: int = 2,
                      lr: float = 1e-6) -> StepCost:
    """Median wall time of ``steps`` QAT steps and ``steps`` float steps, interleaved, after ``warmup`` of each.
    The learning rate is tiny so the timed steps do not change the models' behaviour much."""
    from onnxq.qat.api import teacher_copy

    fmodel = teacher_copy(qmodel)
    for p in fmodel.parameters():
        p.requires_grad_(True)
    fmodel.train()
    qmodel.train()
    f_opt = torch.optim.AdamW(fmodel.parameters(), lr=lr)
    q_opt = torch.optim.AdamW([p for p in qmodel.parameters() if p.requires_grad], lr=lr)
    f_times, q_times = [], []
    for i in range(warmup + steps):
        f = _step(fmodel, f_opt, inputs, targets, loss_fn)
        q = _step(qmodel, q_opt, inputs, targets, loss_fn)
        if i >= warmup:
            f_times.append(f)
            q_times.append(q)
    qmodel.eval()
    return StepCost(statistics.median(f_times), statistics.median(q_times), steps)
