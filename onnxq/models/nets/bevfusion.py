"""A small BEVFusion detector's fusion and decoder part (Liu et al., 2022).

Camera BEV and LiDAR BEV features are concatenated and fused by a ConvFuser (3x3 Conv-BN-ReLU); a SECOND
backbone and SECFPN neck decode the fused map; a CenterPoint-style heatmap head predicts per-class
``heatmap`` (sigmoid) plus ``reg``, ``height``, ``dim``, ``rot``. The image backbone and the lift-splat
view transform are not part of the graph: their output, the camera BEV feature, is the model's input.
"""

from __future__ import annotations

import torch
from torch import nn

from onnxq.models.nets.centerpoint import SECFPN, SECOND, CenterHead


class ConvFuser(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    def forward(self, camera: torch.Tensor, lidar: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(torch.cat([camera, lidar], dim=1))


class BEVFusion(nn.Module):
    OUTPUT_NAMES = ("heatmap", "reg", "height", "dim", "rot")

    def __init__(self, camera_channels: int = 8, lidar_channels: int = 5, num_classes: int = 3,
                 fused: int = 32) -> None:
        super().__init__()
        self.fuser = ConvFuser(camera_channels + lidar_channels, fused)
        self.decoder_backbone = SECOND(fused)
        self.decoder_neck = SECFPN()
        self.head = CenterHead(3 * 32, num_classes)

    def forward(self, camera_bev: torch.Tensor, lidar_bev: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.fuser(camera_bev, lidar_bev)
        return self.head(self.decoder_neck(self.decoder_backbone(x)))
