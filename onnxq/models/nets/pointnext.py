"""A small PointNeXt-S-style point-cloud classifier (Qian et al., 2022).

Stem MLP, then set-abstraction stages (strided sampling of the centres, kNN grouping with TopK + Gather,
relative coordinates concatenated to the grouped features, shared Conv2d-BN-ReLU MLP, max pooling over the
neighbours), each followed by an InvResMLP block (local aggregation, then an inverted-bottleneck pointwise
MLP with a residual add), a global max pool and an MLP head. Input (B, N, 3); output ``logits`` (B, classes).

Sampling is strided rather than farthest-point: the synthetic clouds are in random order, so every s-th point
is a uniform random subsample, and the exported graph stays free of the FPS loop.
"""

from __future__ import annotations

import torch
from torch import nn


def knn_group(xyz: torch.Tensor, centres: torch.Tensor, feats: torch.Tensor, k: int) -> torch.Tensor:
    """Group the ``k`` nearest points of every centre.

    xyz (B, N, 3), centres (B, M, 3), feats (B, C, N) -> (B, 3 + C, M, k): relative coordinates, features.
    """
    b, n, _ = xyz.shape
    m = centres.shape[1]
    dist = ((centres * centres).sum(-1, keepdim=True) - 2 * centres @ xyz.transpose(1, 2)
            + (xyz * xyz).sum(-1).unsqueeze(1))
    idx = dist.topk(k, dim=-1, largest=False).indices  # (B, M, k)
    offset = (torch.arange(b, device=xyz.device) * n).view(b, 1, 1)
    flat = (idx + offset).reshape(-1)
    points = torch.cat([xyz, feats.transpose(1, 2)], dim=-1).reshape(b * n, -1)  # (B*N, 3 + C)
    grouped = points[flat].reshape(b, m, k, -1)
    rel = grouped[..., :3] - centres.unsqueeze(2)
    grouped = torch.cat([rel, grouped[..., 3:]], dim=-1)
    return grouped.permute(0, 3, 1, 2)


def conv_bn(cin: int, cout: int, relu: bool = True, dim: int = 2) -> nn.Sequential:
    conv = nn.Conv2d if dim == 2 else nn.Conv1d
    bn = nn.BatchNorm2d if dim == 2 else nn.BatchNorm1d
    layers: list[nn.Module] = [conv(cin, cout, 1, bias=False), bn(cout)]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class SetAbstraction(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, k: int, radius: float) -> None:
        super().__init__()
        self.stride, self.k, self.radius = stride, k, radius
        self.mlp = nn.Sequential(conv_bn(cin + 3, cout), conv_bn(cout, cout))

    def forward(self, xyz: torch.Tensor, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        centres = xyz[:, :: self.stride]
        grouped = knn_group(xyz, centres, feats, self.k)
        grouped = torch.cat([grouped[:, :3] / self.radius, grouped[:, 3:]], dim=1)
        return centres, self.mlp(grouped).amax(dim=-1)


class InvResMLP(nn.Module):
    def __init__(self, channels: int, k: int, radius: float, expansion: int = 4) -> None:
        super().__init__()
        self.k, self.radius = k, radius
        self.local = conv_bn(channels + 3, channels)
        self.pw = nn.Sequential(conv_bn(channels, channels * expansion, dim=1),
                                conv_bn(channels * expansion, channels, relu=False, dim=1))
        self.act = nn.ReLU()

    def forward(self, xyz: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        grouped = knn_group(xyz, xyz, feats, self.k)
        grouped = torch.cat([grouped[:, :3] / self.radius, grouped[:, 3:]], dim=1)
        local = self.local(grouped).amax(dim=-1)
        return self.act(feats + self.pw(local))


class PointNeXt(nn.Module):
    def __init__(self, num_classes: int = 8, width: int = 32, k: int = 16) -> None:
        super().__init__()
        self.stem = conv_bn(3, width, dim=1)
        widths = [width, width * 2, width * 4]
        radii = [0.15, 0.3, 0.6]
        self.sa = nn.ModuleList()
        self.blocks = nn.ModuleList()
        cin = width
        for w, r in zip(widths, radii):
            self.sa.append(SetAbstraction(cin, w, stride=2, k=k, radius=r))
            self.blocks.append(InvResMLP(w, k=k, radius=r))
            cin = w
        self.head = nn.Sequential(
            nn.Linear(cin, 128, bias=False), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.3),
            nn.Linear(128, num_classes)
        )

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        xyz = points
        feats = self.stem(points.transpose(1, 2))
        for sa, block in zip(self.sa, self.blocks):
            xyz, feats = sa(xyz, feats)
            feats = block(xyz, feats)
        return self.head(feats.amax(dim=-1))
