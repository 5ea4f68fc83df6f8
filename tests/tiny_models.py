"""Tiny networks for the tests, loadable as MODEL spec ``tests/tiny_models.py:tiny_net``."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """conv1 -> relu1 -> pool1 -> conv2 -> relu2 -> pool2 -> fc, with an in-place ReLU."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.relu2 = nn.ReLU(inplace=True)
        self.pool2 = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc(x.flatten(1))


def tiny_net() -> TinyNet:
    """A seeded TinyNet (the same weights every call)."""
    torch.manual_seed(0)
    return TinyNet()


def not_a_module() -> str:
    """A factory that returns the wrong thing, for error tests."""
    return "not a module"


def tiny_sequential() -> nn.Sequential:
    """A seeded nn.Sequential: its layers are named "0", "1", ... (numbers, read back as text)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3, stride=2))


class GreedyNet(TinyNet):
    """A TinyNet that runs out of (pretend) device memory after conv1 for a batch of more than
    4 images, raising torch's own error as a GPU does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        if len(x) > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc(x.flatten(1))


def greedy_net() -> GreedyNet:
    """A seeded GreedyNet (TinyNet's weights)."""
    torch.manual_seed(0)
    return GreedyNet()


def tiny_strided() -> nn.Sequential:
    """Two unpadded stride-2 convolutions: their cell centres are not where a plain resize of
    the map puts them (layer "2" at 32 px: 7 cells, stride 4, offset 3; a resize: 4.57, 1.79)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Conv2d(4, 3, 3, stride=2), nn.ReLU()
    )
