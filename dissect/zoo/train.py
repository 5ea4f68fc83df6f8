"""Train the built-in scene CNN on the synthetic world (``python -m dissect.zoo.train --out FILE``).

The recipe (see ``data/README.md``): images of ``synthetic:IMAGES:SEED`` rendered once into
memory, random horizontal flips, AdamW with a one-cycle learning rate, batch normalisation during
training folded into the convolutions before saving. Validation uses ``synthetic:VAL:SEED+1``,
images the network never saw. Deterministic for a seed (fixed thread count, seeded generators).
The weights are saved after every epoch, so an interruption loses at most the epoch in flight.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..datasets.synthetic import SyntheticWorld
from ..io import atomic_path
from .scene_cnn import MEAN, STD, SceneCNN, fold_batch_norm


def render_world(world: SyntheticWorld, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """All images of ``world`` as (N, S, S, 3) uint8 and their scene labels as (N,) int64."""
    first = world.read_rgb(0)
    images = np.empty((len(world), *first.shape), dtype=np.uint8)
    labels = np.empty(len(world), dtype=np.int64)
    for i in tqdm(range(len(world)), desc=f"render {world.spec}", disable=not progress):
        images[i] = world.read_rgb(i)
        labels[i] = world.label(i)
    return images, labels


def to_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, S, S, 3) uint8 -> normalised (N, 3, S, S) float32, as the model's Preprocess does."""
    batch = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (batch - mean) / std


@torch.inference_mode()
def accuracy(
    model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, batch_size: int = 200
) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on uint8 images."""
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model(to_input(images[start : start + batch_size]))
        correct += int(
            (logits.argmax(1) == torch.as_tensor(labels[start : start + batch_size])).sum()
        )
    return correct / len(images)


def train(
    out: str,
    seed: int = 0,
    images: int = 10000,
    epochs: int = 8,
    batch_size: int = 64,
    lr: float = 3e-3,
    val_images: int = 1000,
    threads: int = 2,
    progress: bool = True,
) -> float:
    """Train a :class:`SceneCNN`, save its folded state dict to ``out``; return val accuracy.

    Parameters
    ----------
    out : str
        Where to write the state dict (``torch.save``; load with ``weights_only=True``).
    seed : int
        Seeds the training world (``synthetic:IMAGES:SEED``), the initial weights, the shuffling
        and the flips. Validation uses world seed ``SEED + 1``.
    images, epochs, batch_size, lr
        Training images, passes over them, images per step, peak learning rate.
    val_images : int
        Validation images.
    threads : int
        torch CPU threads (fixed, so that results repeat).
    progress : bool
        Show tqdm bars.

    Returns
    -------
    float
        Top-1 accuracy on the validation world after the last epoch.
    """
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train_x, train_y = render_world(SyntheticWorld(images, seed), progress)
    val_x, val_y = render_world(SyntheticWorld(val_images, seed + 1), progress)
    train_x, train_y = torch.from_numpy(train_x), torch.from_numpy(train_y)
    model = SceneCNN(batch_norm=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps = epochs * (len(train_x) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.2)
    val_accuracy = 0.0
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        bar = tqdm(
            range(len(train_x) // batch_size),
            desc=f"epoch {epoch + 1}/{epochs}",
            disable=not progress,
        )
        for step in bar:
            chosen = order[step * batch_size : (step + 1) * batch_size]
            batch = to_input(train_x[chosen])
            flip = torch.rand(len(chosen), generator=generator) < 0.5
            batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(3), batch)
            loss = F.cross_entropy(model(batch), train_y[chosen])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        model.eval()
        plain = fold_batch_norm(model)
        val_accuracy = accuracy(plain, val_x, val_y)
        with atomic_path(out) as tmp:
            torch.save(plain.state_dict(), tmp)
        print(f"epoch {epoch + 1}: validation accuracy {val_accuracy:.4f} -> {out}", flush=True)
    return val_accuracy


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dissect.zoo.train", description="Train the built-in scene CNN."
    )
    parser.add_argument("--out", required=True, help="state-dict file to write")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument("--images", type=int, default=10000, help="training images (10000)")
    parser.add_argument("--epochs", type=int, default=8, help="passes over them (8)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step (64)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (0.003)")
    parser.add_argument("--val-images", type=int, default=1000, help="validation images (1000)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (2)")
    args = parser.parse_args(argv)
    accuracy_ = train(
        args.out,
        args.seed,
        args.images,
        args.epochs,
        args.batch_size,
        args.lr,
        args.val_images,
        args.threads,
    )
    print(f"accuracy: {accuracy_:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
