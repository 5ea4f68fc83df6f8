"""Train ``world-fcn`` (``python -m dissect.zoo.train --task segment --out FILE``).

The recipe (see ``data/README.md``): images of ``synthetic:IMAGES:SEED`` and their object, part,
material and colour maps rendered once into memory; random horizontal flips (image and maps
together); AdamW with a one-cycle learning rate; the sum over the four heads of the per-pixel
cross-entropy, where the ``none`` class of the object and part heads weighs ``NONE_WEIGHT``
(objects cover about 8 % of the pixels: with equal weights the heads learn to answer ``none``).
Validation on ``synthetic:VAL:SEED+1`` prints each head's mean IoU after every epoch, when the
weights are written (``--keep-epochs`` also keeps ``FILE.epochN.pt``).
Deterministic for a seed and thread count.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..datasets.synthetic import SyntheticWorld
from ..datasets.synthetic.textures import color_names
from ..io import atomic_path
from ..segmenter.metrics import confusion, mean_iou
from .training import add_recipe_arguments, to_input
from .world_fcn import HEADS, WorldFCN


def render_masks(world: SyntheticWorld, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, S, S, 3) uint8 and targets (N, 4, S, S) int64, one map per head of HEADS.

    Object and part maps hold 0 for ``none`` and class + 1 elsewhere; material and colour maps
    the class itself (every pixel has both).
    """
    first = world.render(0).rgb
    size = first.shape[0]
    images = np.empty((len(world), *first.shape), dtype=np.uint8)
    targets = np.empty((len(world), len(HEADS), size, size), dtype=np.int64)
    for i in tqdm(range(len(world)), desc=f"render {world.spec}", disable=not progress):
        rendered = world.render(i)
        images[i] = rendered.rgb
        targets[i] = np.stack(
            [rendered.object + 1, rendered.part + 1, rendered.material, color_names(rendered.rgb)]
        )
    return images, targets


def head_slices() -> list[slice]:
    """The output channels of each head, in the order of HEADS."""
    bounds = np.cumsum([0, *(len(names) for names in HEADS.values())])
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


#: Weight of the ``none`` class in the object and part heads' cross-entropy (others weigh 1).
NONE_WEIGHT = 0.1


def loss_of(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over heads of the per-pixel cross-entropy (``none`` down-weighted)."""
    total = scores.new_zeros(())
    for head, (name, part) in enumerate(zip(HEADS, head_slices(), strict=True)):
        weight = None
        if name in ("object", "part"):
            weight = torch.ones(part.stop - part.start)
            weight[0] = NONE_WEIGHT
        total = total + F.cross_entropy(scores[:, part], targets[:, head], weight=weight)
    return total


@torch.inference_mode()
def head_scores(model: torch.nn.Module, images: np.ndarray, targets: np.ndarray) -> dict:
    """Mean IoU of each head (``none`` left out) on uint8 images with (N, 4, S, S) targets."""
    model.eval()
    matrices = [np.zeros((len(n), len(n)), dtype=np.int64) for n in HEADS.values()]
    for start in range(0, len(images), 100):
        scores = model(to_input(images[start : start + 100]))
        for head, part in enumerate(head_slices()):
            predicted = scores[:, part].argmax(1).numpy()
            matrices[head] += confusion(
                predicted, targets[start : start + 100, head], len(matrices[head])
            )
    return {
        name: mean_iou(matrix, skip=(0,) if name in ("object", "part") else ())
        for name, matrix in zip(HEADS, matrices, strict=True)
    }


@dataclass(frozen=True)
class SegmenterRecipe:
    """How to train ``world-fcn`` (``data/README.md``, "Training recipes").

    Parameters
    ----------
    seed : int
        Seeds the training world, the weights, the shuffling and flips; validation uses
        ``SEED + 1``.
    images, epochs, batch_size, lr
        Training images, passes over them, images per step, peak learning rate.
    val_images : int
        Validation images.
    threads : int
        torch CPU threads.
    """

    seed: int = 0
    images: int = 2400
    epochs: int = 4
    batch_size: int = 16
    lr: float = 3e-3
    val_images: int = 300
    threads: int = 2


def train_segmenter(
    out: str, recipe: SegmenterRecipe = SegmenterRecipe(), keep_epochs: bool = False
) -> dict:
    """Train :class:`WorldFCN` by ``recipe``, save its state dict to ``out``; return the
    validation mIoUs.

    Parameters
    ----------
    out : str
        State-dict file (``torch.save``; load with ``weights_only=True``), written after every
        epoch.
    recipe : SegmenterRecipe
        The data, schedule and seed.
    keep_epochs : bool
        Also write ``<out stem>.epochN.pt`` after every epoch (for the agreement curve).

    Returns
    -------
    dict
        Head -> validation mean IoU after the last epoch.
    """
    torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    world = SyntheticWorld(recipe.images, recipe.seed)
    train_x, train_y = (torch.from_numpy(a) for a in render_masks(world))
    val_x, val_y = render_masks(SyntheticWorld(recipe.val_images, recipe.seed + 1))
    model = WorldFCN()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=1e-4)
    steps = recipe.epochs * (len(train_x) // recipe.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, recipe.lr, total_steps=steps, pct_start=0.2
    )
    result: dict = {}
    for epoch in range(recipe.epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        bar = tqdm(
            range(len(train_x) // recipe.batch_size), desc=f"epoch {epoch + 1}/{recipe.epochs}"
        )
        for step in bar:
            chosen = order[step * recipe.batch_size : (step + 1) * recipe.batch_size]
            batch, target = flipped(train_x[chosen], train_y[chosen], generator)
            loss = loss_of(model(batch), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        result = head_scores(model, val_x, val_y)
        save_epoch(model, out, epoch + 1 if keep_epochs else None)
        shown = ", ".join(f"{name} {value:.3f}" for name, value in result.items())
        print(f"epoch {epoch + 1}: validation mIoU {shown} -> {out}", flush=True)
    return result


def flipped(
    images: torch.Tensor, targets: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch: the images normalised, each flipped left-right (with its maps) with
    probability 1/2."""
    batch = to_input(images)
    flip = torch.rand(len(images), generator=generator) < 0.5
    batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(3), batch)
    return batch, torch.where(flip.view(-1, 1, 1, 1), targets.flip(3), targets)


def save_epoch(model: torch.nn.Module, out: str, epoch: int | None) -> None:
    """Write the weights to ``out`` (and, given an ``epoch``, to ``<out stem>.epochN.pt``)."""
    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    paths = [Path(out)]
    if epoch is not None:
        paths.append(Path(out).with_suffix(f".epoch{epoch}.pt"))
    for path in paths:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)


def main(argv: Sequence[str] | None = None) -> int:
    default = SegmenterRecipe()
    parser = argparse.ArgumentParser(
        prog="python -m dissect.zoo.train --task segment",
        description="Train world-fcn, the built-in segmenter of the synthetic world.",
    )
    parser.add_argument("--task", choices=["segment"], default="segment", help="segment")
    parser.add_argument("--out", required=True, help="state-dict file to write")
    add_recipe_arguments(parser, default)
    parser.add_argument(
        "--keep-epochs", action="store_true", help="also keep OUT's stem .epochN.pt per epoch"
    )
    args = vars(parser.parse_args(argv))
    out, keep_epochs = args.pop("out"), args.pop("keep_epochs")
    del args["task"]
    result = train_segmenter(out, SegmenterRecipe(**args), keep_epochs)
    print("mIoU: " + ", ".join(f"{name} {value:.4f}" for name, value in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
