"""Small architectures for the reference models (plain PyTorch, export-friendly).

Both networks are fully convolutional up to their heads, use only operators that ONNX opset 17
and TorchScript tracing handle, and keep their weights well under 2 MB.
"""

from __future__ import annotations

import torch
from torch import nn


def _block3d(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, 3, padding=1),
        nn.BatchNorm3d(c_out),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Conv3d(c_out, c_out, 3, padding=1),
        nn.BatchNorm3d(c_out),
        nn.LeakyReLU(0.1, inplace=True),
    )


class SegNet3d(nn.Module):
    """A small 3D U-Net: per-voxel logits ``(N, 1, X, Y, Z)`` for an input ``(N, 1, X, Y, Z)``.

    Each spatial size must be divisible by ``2 ** (len(channels) - 1)``.

    Args:
        channels: Feature channels per resolution level, finest first, e.g. ``(8, 16, 32)``.
    """

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.down = nn.ModuleList()
        c_prev = 1
        for c in channels:
            self.down.append(_block3d(c_prev, c))
            c_prev = c
        self.pool = nn.MaxPool3d(2)
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for c_fine, c_coarse in zip(channels[-2::-1], channels[:0:-1], strict=True):
            self.up.append(nn.ConvTranspose3d(c_coarse, c_fine, 2, stride=2))
            self.merge.append(_block3d(2 * c_fine, c_fine))
        self.head = nn.Conv3d(channels[0], 1, 1)
        # Lesions are rare voxels: start from that prior (~2 %) so training spends its few
        # steps on the lesion, not on pushing every background logit down.
        assert self.head.bias is not None
        nn.init.constant_(self.head.bias, -4.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        for i, block in enumerate(self.down):
            if i > 0:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        for i, (up, merge) in enumerate(zip(self.up, self.merge, strict=True)):
            x = merge(torch.cat([up(x), skips[-2 - i]], dim=1))
        return self.head(x)


class ClassifierNet2d(nn.Module):
    """A small 2D CNN: one logit ``(N, 1)`` per image ``(N, 1, X, Y)``.

    Args:
        channels: Feature channels per stage; each stage halves the resolution.
    """

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_prev = 1
        for c in channels:
            layers += [
                nn.Conv2d(c_prev, c, 3, padding=1),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
                nn.Conv2d(c, c, 3, padding=1),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            c_prev = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2 * c_prev, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return self.head(pooled)


def build_network(task: str, channels: tuple[int, ...]) -> nn.Module:
    """The network for a recipe's task: a classifier for ``classification``, else a U-Net."""
    if task == "classification":
        return ClassifierNet2d(channels)
    return SegNet3d(channels)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
