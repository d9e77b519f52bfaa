"""A small VGGT-style vision transformer with a dense depth head (Wang et al., 2025).

Patch embedding (strided Conv), a camera token and register tokens prepended to the patch tokens, learned
position embeddings, pre-norm transformer blocks (LayerNorm, multi-head attention written out as
MatMul-Softmax-MatMul, MLP with GELU, LayerScale, residual adds), and a DPT-style head: tokens of several
blocks are reshaped to feature maps, projected, brought to a common resolution with ConvTranspose2d,
fused by 3x3 convolutions and upsampled to the input size; depth = exp(output), as VGGT's depth head.
Single frame only: VGGT's alternating frame / global attention are the same thing for one frame.
Input ``image`` (B, 3, 64, 64); output ``depth`` (B, 1, 64, 64), metres.
"""

from __future__ import annotations

import torch
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.ls1 = nn.Parameter(torch.full((dim,), 0.1))
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))
        self.ls2 = nn.Parameter(torch.full((dim,), 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1 * self.attn(self.norm1(x))
        return x + self.ls2 * self.mlp(self.norm2(x))


class DPTHead(nn.Module):
    def __init__(self, dim: int, grid: int, taps: int, features: int = 32) -> None:
        super().__init__()
        self.grid = grid
        self.norm = nn.LayerNorm(dim)
        self.project = nn.ModuleList(nn.Conv2d(dim, features, 1) for _ in range(taps))
        self.fuse = nn.Sequential(nn.Conv2d(features * taps, features, 3, padding=1), nn.ReLU())
        self.up1 = nn.Sequential(nn.ConvTranspose2d(features, features, 2, 2), nn.ReLU(),
                                 nn.Conv2d(features, features, 3, padding=1), nn.ReLU())
        self.up2 = nn.Sequential(nn.ConvTranspose2d(features, 16, 2, 2), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                                 nn.ReLU())
        self.up3 = nn.Sequential(nn.ConvTranspose2d(16, 16, 2, 2), nn.ReLU(), nn.Conv2d(16, 1, 3, padding=1))

    def forward(self, tokens: list[torch.Tensor]) -> torch.Tensor:
        maps = []
        for t, proj in zip(tokens, self.project):
            b, _, c = t.shape
            fmap = self.norm(t).transpose(1, 2).reshape(b, c, self.grid, self.grid)
            maps.append(proj(fmap))
        x = self.fuse(torch.cat(maps, dim=1))
        return self.up3(self.up2(self.up1(x)))


class DepthViT(nn.Module):
    def __init__(self, image_size: int = 64, patch: int = 8, dim: int = 80, depth: int = 4, heads: int = 4,
                 registers: int = 2) -> None:
        super().__init__()
        self.grid = image_size // patch
        self.special = 1 + registers
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.camera_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.register_tokens = nn.Parameter(torch.randn(1, registers, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, self.grid * self.grid, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.taps = (1, depth - 1)
        self.head = DPTHead(dim, self.grid, len(self.taps))
        self.log_depth_bias = nn.Parameter(torch.tensor(2.0))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(image).flatten(2).transpose(1, 2) + self.pos_embed
        b = x.shape[0]
        x = torch.cat([self.camera_token.expand(b, -1, -1), self.register_tokens.expand(b, -1, -1), x], dim=1)
        tapped = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                tapped.append(x[:, self.special :])
        return torch.exp(self.head(tapped) + self.log_depth_bias)
