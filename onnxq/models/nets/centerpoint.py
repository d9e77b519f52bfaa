"""A small CenterPoint (PointPillars variant) detector on a BEV pseudo-image (Yin et al., 2021).

SECOND-style backbone (three stages, each a strided 3x3 Conv-BN-ReLU followed by 3x3 Conv-BN-ReLU layers),
SECFPN neck (ConvTranspose2d-BN-ReLU per stage to a common stride, Concat), and a CenterHead: shared
3x3 Conv-BN-ReLU, then one branch per target (3x3 Conv-BN-ReLU, 1x1 Conv): ``heatmap`` (sigmoid, per class),
``reg`` (sub-cell centre offset), ``height``, ``dim`` (log size), ``rot`` (sin, cos of yaw).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class SECOND(nn.Module):
    def __init__(self, cin: int, channels=(24, 48, 96), layers=(1, 2, 2), strides=(2, 2, 2)) -> None:
        super().__init__()
        self.stages = nn.ModuleList()
        for c, n, s in zip(channels, layers, strides):
            self.stages.append(nn.Sequential(conv_bn_relu(cin, c, s), *[conv_bn_relu(c, c) for _ in range(n)]))
            cin = c

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


class SECFPN(nn.Module):
    def __init__(self, channels=(24, 48, 96), out_channels: int = 32, up_strides=(1, 2, 4)) -> None:
        super().__init__()
        self.ups = nn.ModuleList(
            nn.Sequential(nn.ConvTranspose2d(c, out_channels, s, s, bias=False), nn.BatchNorm2d(out_channels),
                          nn.ReLU())
            for c, s in zip(channels, up_strides)
        )

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([up(f) for up, f in zip(self.ups, feats)], dim=1)


class CenterHead(nn.Module):
    HEADS: ClassVar[dict[str, int]] = {"reg": 2, "height": 1, "dim": 3, "rot": 2}

    def __init__(self, cin: int, num_classes: int, channels: int = 32) -> None:
        super().__init__()
        self.shared = conv_bn_relu(cin, channels)
        heatmap = nn.Conv2d(channels, num_classes, 1)
        with torch.no_grad():  # prior probability 0.1, as CenterPoint
            heatmap.bias.fill_(-2.19)  # type: ignore[union-attr]  # bias=True: a Tensor
        self.heatmap = nn.Sequential(conv_bn_relu(channels, channels), heatmap)
        self.branches = nn.ModuleDict(
            {name: nn.Sequential(conv_bn_relu(channels, channels), nn.Conv2d(channels, n, 1))
             for name, n in self.HEADS.items()}
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.shared(x)
        return (torch.sigmoid(self.heatmap(x)), *[self.branches[n](x) for n in self.HEADS])


class CenterPoint(nn.Module):
    OUTPUT_NAMES = ("heatmap", "reg", "height", "dim", "rot")

    def __init__(self, in_channels: int = 6, num_classes: int = 3) -> None:
        super().__init__()
        self.backbone = SECOND(in_channels)
        self.neck = SECFPN()
        self.head = CenterHead(3 * 32, num_classes)

    def forward(self, pillars: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.head(self.neck(self.backbone(pillars)))
