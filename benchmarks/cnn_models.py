"""CPU benchmark CNNs built in torch and exported to ONNX (random weights, BatchNorm left unfused), 3x224x224:

- ``resnet18``: the dense ResNet-18 layout (7x7 stem, max-pool, 4 stages of two BasicBlocks, 64-512 channels,
  global average pool, fully connected).
- ``mobilenet_v3_small``: the MobileNetV3-Small layout (depthwise-separable inverted residuals, HardSwish,
  squeeze-and-excitation with HardSigmoid).
- ``convnext_small_layout``: a reduced ConvNeXt (4x4 patch stem, blocks of 7x7 depthwise Conv -> channels-last
  LayerNorm -> Linear 4x -> GELU (erf) -> Linear -> layer scale -> residual, 2x2 downsampling Convs; widths 48-384,
  depths 2-2-4-2): its MLPs are MatMul + bias Add on (N, H, W, C) tensors, as torch exports ``nn.Linear``.
- ``efficientnet_b0_layout``: the EfficientNet-B0 layout (MBConv blocks with SiLU and squeeze-and-excitation gates,
  3x3 and 5x5 depthwise Convs, 1280-channel head).
- ``shufflenet_v2_layout``: the ShuffleNetV2 1.0x layout (channel split, 3x3 depthwise branches, Concat, channel
  shuffle as Reshape -> Transpose -> Reshape; widths 116-464).

Written from the published architectures (He et al. 2015; Howard et al. 2019; Liu et al. 2022, "A ConvNet for the
2020s"; Tan and Le 2019; Ma et al. 2018), not copied from torchvision.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx


def _torch():
    import torch
    from torch import nn
    return torch, nn


def _resnet18():
    torch, nn = _torch()

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return torch.relu(y + (x if self.down is None else self.down(x)))

    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000)]
    return nn.Sequential(*layers)


def _mobilenet_v3_small():
    torch, nn = _torch()

    class SqueezeExcite(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            mid = max(8, (c // 4 + 4) // 8 * 8)
            self.fc1, self.fc2 = nn.Conv2d(c, mid, 1), nn.Conv2d(mid, c, 1)

        def forward(self, x):
            s = nn.functional.adaptive_avg_pool2d(x, 1)
            return x * nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(s))))

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, k: int, exp: int, cout: int, se: bool, hs: bool, stride: int) -> None:
            super().__init__()
            act = nn.Hardswish if hs else nn.ReLU
            layers = []
            if exp != cin:
                layers += [nn.Conv2d(cin, exp, 1, bias=False), nn.BatchNorm2d(exp), act()]
            layers += [nn.Conv2d(exp, exp, k, stride, k // 2, groups=exp, bias=False), nn.BatchNorm2d(exp), act()]
            if se:
                layers.append(SqueezeExcite(exp))
            layers += [nn.Conv2d(exp, cout, 1, bias=False), nn.BatchNorm2d(cout)]
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            y = self.body(x)
            return x + y if self.residual else y

    # (kernel, expansion, out, SE, HardSwish, stride) of MobileNetV3-Small, table 2 of Howard et al. 2019
    config = [(3, 16, 16, True, False, 2), (3, 72, 24, False, False, 2), (3, 88, 24, False, False, 1),
              (5, 96, 40, True, True, 2), (5, 240, 40, True, True, 1), (5, 240, 40, True, True, 1),
              (5, 120, 48, True, True, 1), (5, 144, 48, True, True, 1), (5, 288, 96, True, True, 2),
              (5, 576, 96, True, True, 1), (5, 576, 96, True, True, 1)]
    layers = [nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish()]
    cin = 16
    for k, exp, cout, se, hs, stride in config:
        layers.append(InvertedResidual(cin, k, exp, cout, se, hs, stride))
        cin = cout
    layers += [nn.Conv2d(cin, 576, 1, bias=False), nn.BatchNorm2d(576), nn.Hardswish(), nn.AdaptiveAvgPool2d(1),
               nn.Flatten(), nn.Linear(576, 1024), nn.Hardswish(), nn.Linear(1024, 1000)]
    return nn.Sequential(*layers)


def _convnext_small_layout():
    torch, nn = _torch()

    class Block(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
            self.norm = nn.LayerNorm(dim)
            self.fc1, self.act, self.fc2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
            self.gamma = nn.Parameter(torch.full((dim,), 0.5))

        def forward(self, x):
            y = self.dw(x).permute(0, 2, 3, 1)  # channels last, as the ConvNeXt reference code does
            y = self.fc2(self.act(self.fc1(self.norm(y)))) * self.gamma
            return x + y.permute(0, 3, 1, 2)

    class Net(nn.Module):
        def __init__(self, dims=(48, 96, 192, 384), depths=(2, 2, 4, 2)) -> None:
            super().__init__()
            layers: list = [nn.Conv2d(3, dims[0], 4, 4)]
            for i, (dim, depth) in enumerate(zip(dims, depths, strict=True)):
                if i:
                    layers.append(nn.Conv2d(dims[i - 1], dim, 2, 2))
                layers += [Block(dim) for _ in range(depth)]
            self.features, self.head = nn.Sequential(*layers), nn.Linear(dims[-1], 1000)

        def forward(self, x):
            return self.head(self.features(x).mean((2, 3)))

    return Net()


def _efficientnet_b0_layout():
    torch, nn = _torch()

    class MBConv(nn.Module):
        def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int) -> None:
            super().__init__()
            hidden, squeezed = cin * expand, max(1, cin // 4)
            layers = [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.SiLU()] if expand > 1 else []
            layers += [nn.Conv2d(hidden, hidden, k, stride, k // 2, groups=hidden, bias=False),
                       nn.BatchNorm2d(hidden), nn.SiLU()]
            self.body = nn.Sequential(*layers)
            self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(hidden, squeezed, 1), nn.SiLU(),
                                      nn.Conv2d(squeezed, hidden, 1), nn.Sigmoid())
            self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            y = self.body(x)
            y = self.project(y * self.gate(y))
            return x + y if self.residual else y

    # (expansion, out, repeats, kernel, stride) of EfficientNet-B0, table 1 of Tan and Le 2019
    config = [(1, 16, 1, 3, 1), (6, 24, 2, 3, 2), (6, 40, 2, 5, 2), (6, 80, 3, 3, 2), (6, 112, 3, 5, 1),
              (6, 192, 4, 5, 2), (6, 320, 1, 3, 1)]
    layers = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.SiLU()]
    cin = 32
    for expand, cout, repeats, k, stride in config:
        for i in range(repeats):
            layers.append(MBConv(cin, cout, expand, k, stride if i == 0 else 1))
            cin = cout
    layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.SiLU(), nn.AdaptiveAvgPool2d(1),
               nn.Flatten(), nn.Linear(1280, 1000)]
    return nn.Sequential(*layers)


def _shufflenet_v2_layout():
    torch, nn = _torch()

    def conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, relu: bool = True) -> list:
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return layers + [nn.ReLU()] if relu else layers

    class Unit(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            half, branch_in = cout // 2, cin if stride == 2 else cout // 2
            self.stride = stride
            self.left = nn.Sequential(*conv_bn(cin, cin, 3, 2, cin, relu=False), *conv_bn(cin, half)) \
                if stride == 2 else None
            self.right = nn.Sequential(*conv_bn(branch_in, half), *conv_bn(half, half, 3, stride, half, relu=False),
                                       *conv_bn(half, half))

        def forward(self, x):
            if self.left is None:
                kept, x = x.chunk(2, 1)
                out = torch.cat([kept, self.right(x)], 1)
            else:
                out = torch.cat([self.left(x), self.right(x)], 1)
            n, c, h, w = out.shape
            return out.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)  # channel shuffle

    layers: list = [*conv_bn(3, 24, 3, 2), nn.MaxPool2d(3, 2, 1)]
    cin = 24
    for cout, repeats in ((116, 4), (232, 8), (464, 4)):  # stage widths of the 1.0x model, table 5 of Ma et al.
        for i in range(repeats):
            layers.append(Unit(cin, cout, 2 if i == 0 else 1))
            cin = cout
    layers += [*conv_bn(cin, 1024), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1024, 1000)]
    return nn.Sequential(*layers)


BUILDERS = {"resnet18": _resnet18, "mobilenet_v3_small": _mobilenet_v3_small,
            "convnext_small_layout": _convnext_small_layout, "efficientnet_b0_layout": _efficientnet_b0_layout,
            "shufflenet_v2_layout": _shufflenet_v2_layout}


def export_cnn(name: str, path: str | Path, seed: int = 0) -> Path:
    """Export the named CNN (random weights from ``seed``, BatchNorm statistics randomised so folding matters)."""
    torch, nn = _torch()
    torch.manual_seed(seed)
    net = BUILDERS[name]().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.randn(1, 3, 224, 224),), buf, dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "batch"}},
                      do_constant_folding=False, training=torch.onnx.TrainingMode.EVAL)
    model = onnx.load_from_string(buf.getvalue())
    path = Path(path)
    onnx.save(model, path)
    return path


def smooth_images(rng: np.random.Generator, n: int, channels: int, height: int, width: int) -> np.ndarray:
    """Low-frequency random images (coarse noise upsampled, plus fine noise): roughly natural-image statistics."""
    ch, cw = max(1, height // 16), max(1, width // 16)
    coarse = rng.standard_normal((n, channels, ch, cw)).astype(np.float32)
    img = np.repeat(np.repeat(coarse, -(-height // ch), axis=2), -(-width // cw), axis=3)[:, :, :height, :width]
    return np.ascontiguousarray(img + 0.3 * rng.standard_normal(img.shape).astype(np.float32))
