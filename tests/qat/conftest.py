"""Fixtures of the QAT tests: tiny torch models, prepared with onnxq's plan (skipped without torch)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from onnxq.config import NodeSetting, Overrides, QuantConfig

WITH_CONVTRANSPOSE = QuantConfig(overrides=Overrides(by_op={"ConvTranspose": NodeSetting(skip=False)}))


@pytest.fixture(autouse=True)
def _few_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def calib_batches(n: int = 3, shape=(4, 3, 16, 16), seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(n)]


def prepared(net_cls, config=WITH_CONVTRANSPOSE, seed: int = 0, **kwargs):
    from onnxq import qat
    from tests.qat.nets import randomize_bn

    torch.manual_seed(seed)
    net = randomize_bn(net_cls(), seed).eval()
    x = torch.randn(2, 3, 16, 16)
    qmodel = qat.prepare(net, x, calib=calib_batches(), config=config, spec=qat.ExportSpec(("x",), ("y",)),
                         **kwargs)
    return net, x, qmodel


def train_steps(qmodel, steps: int = 4, lr: float = 1e-3, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(qmodel.parameters(), lr)
    qmodel.train()
    for _ in range(steps):
        loss = qmodel(torch.randn(4, 3, 16, 16, generator=g)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    qmodel.eval()
