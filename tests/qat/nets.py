"""Small torch models for the QAT tests (built at test time, no files)."""

from __future__ import annotations

import torch
from torch import nn


class Tiny(nn.Module):
    """Conv-BN-ReLU, a residual Conv-BN + skip Add, ConvTranspose-BN-ReLU, pooling, Linear-BN1d-ReLU, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.res = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.down = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.up = nn.Sequential(nn.ConvTranspose2d(16, 8, 2, 2, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.fc1 = nn.Linear(8, 32)
        self.bn1 = nn.BatchNorm1d(32)
        self.fc2 = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.res(x))
        x = self.up(self.down(x))
        x = x.mean(dim=(2, 3))
        return self.fc2(torch.relu(self.bn1(self.fc1(x))))


class TinyAttention(nn.Module):
    """Patch Conv, tokens, one attention block (Linear on 3-d input = MatMul, q @ k^T, softmax @ v), Linear head."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 4)
        self.scale = dim ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        q, k, v = self.qkv(t).chunk(3, dim=-1)
        attn = torch.softmax((q * self.scale) @ k.transpose(1, 2), dim=-1)
        t = t + self.proj(attn @ v)
        return self.head(t.mean(dim=1))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so that BN folding is visible."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model


class InPlaceForms(nn.Module):
    """The ways models write residual adds, activations and reshapes: ``+=``, ``torch.add``, ``operator.iadd``,
    ``x.add_()``, ``F.relu(inplace=True)``, ``torch.cat``, ``flatten``/``view``/``reshape``,
    ``F.adaptive_avg_pool2d``, an SE-style multiply, hardswish."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Hardswish())
        self.a = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.c = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8))
        self.d = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8))
        self.se1 = nn.Conv2d(8, 4, 1)
        self.se2 = nn.Conv2d(4, 8, 1)
        self.merge = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import operator

        import torch.nn.functional as F

        x = self.stem(x)
        y = self.a(x)
        y += x
        x = F.relu(y, inplace=True)
        x = F.relu(torch.add(self.b(x), x))
        z = self.c(x)
        z = operator.iadd(z, x)
        w = self.d(z)
        w.add_(z)
        w = F.hardswish(w)
        s = F.hardsigmoid(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(w, 1)))))
        w = w * s
        x = self.merge(torch.cat([w, x], dim=1))
        x = F.adaptive_avg_pool2d(x, 4)
        x = x.flatten(1).view(x.shape[0], -1).reshape(x.shape[0], -1)
        return self.fc(x)


class DispatcherAdd(nn.Module):
    """A residual add written as a raw ATen call, which no torch-function hook sees: stays unmapped."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.head = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.ops.aten.add.Tensor(self.conv(x), x))
