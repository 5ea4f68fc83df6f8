"""What both training scripts (``train.py``, ``segment_train.py``) share: the input
normalisation and the recipe flags."""

from __future__ import annotations

import argparse

import numpy as np
import torch

from .scene_cnn import MEAN, STD


def to_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, S, S, 3) uint8 -> normalised (N, 3, S, S) float32, as the model's Preprocess does."""
    batch = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (batch - mean) / std


def add_recipe_arguments(parser: argparse.ArgumentParser, default: object) -> None:
    """The training flags of a recipe dataclass ``default``, each with its default and help
    (``--translate`` only where the recipe has it)."""
    flags = [
        ("seed", int, "random seed"),
        ("images", int, "training images"),
        ("epochs", int, "passes over them"),
        ("batch-size", int, "images per step"),
        ("lr", float, "peak learning rate"),
        ("val-images", int, "validation images"),
        ("threads", int, "torch CPU threads"),
    ]
    if hasattr(default, "translate"):
        flags.insert(5, ("translate", int, "largest random shift of a training image, px"))
    for flag, kind, text in flags:
        value = getattr(default, flag.replace("-", "_"))
        parser.add_argument(f"--{flag}", type=kind, default=value, help=f"{text} ({value})")
