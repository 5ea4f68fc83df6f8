"""Train a built-in CNN on the synthetic world (``python -m dissect.zoo.train --out FILE``).

The recipe (see ``data/README.md``): images of ``synthetic:IMAGES:SEED`` rendered once into
memory, random horizontal flips, AdamW with a one-cycle learning rate, batch normalisation during
training folded into the convolutions before saving. Validation uses ``synthetic:VAL:SEED+1``,
images the network never saw. Deterministic for a seed (fixed thread count, seeded generators).
The weights are saved after every epoch, so an interruption loses at most the epoch in flight.

Two tasks share the recipe: ``scenes`` (``scene-cnn``: the scene, one of 8, cross-entropy,
scored by top-1 accuracy) and ``objects`` (``object-cnn``: which of the 11 object classes are
present, one logit each, binary cross-entropy, scored by mean average precision).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..datasets.synthetic import SyntheticWorld
from ..datasets.synthetic.scenes import OBJECTS, SCENES
from ..evaluate import average_precision
from ..io import atomic_path
from .scene_cnn import SceneCNN, fold_batch_norm
from .training import add_recipe_arguments, to_input

#: Training task -> number of network outputs.
TASKS = {"scenes": len(SCENES), "objects": len(OBJECTS)}


def render_world(
    world: SyntheticWorld, progress: bool = True, task: str = "scenes"
) -> tuple[np.ndarray, np.ndarray]:
    """All images of ``world`` and their targets for ``task``.

    Parameters
    ----------
    world : SyntheticWorld
        The images to render.
    progress : bool
        Show a tqdm bar.
    task : {"scenes", "objects"}
        Which targets to return.

    Returns
    -------
    images : ndarray
        (N, S, S, 3) uint8.
    targets : ndarray
        ``scenes``: (N,) int64 scene labels. ``objects``: (N, 11) float32 presence, 1 where at
        least one pixel of the object class is visible (the object mask holds it).
    """
    _check_task(task)
    first = world.read_rgb(0)
    images = np.empty((len(world), *first.shape), dtype=np.uint8)
    if task == "scenes":
        targets = np.empty(len(world), dtype=np.int64)
    else:
        targets = np.empty((len(world), len(OBJECTS)), dtype=np.float32)
    for i in tqdm(range(len(world)), desc=f"render {world.spec}", disable=not progress):
        rendered = world.render(i)
        images[i] = rendered.rgb
        if task == "scenes":
            targets[i] = rendered.scene
        else:
            visible = np.bincount(rendered.object[rendered.object >= 0], minlength=len(OBJECTS))
            targets[i] = visible > 0
    return images, targets


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")


@torch.inference_mode()
def predict(model: torch.nn.Module, images: np.ndarray, batch_size: int = 200) -> torch.Tensor:
    """Outputs (N, classes) of ``model`` (put in eval mode) on (N, S, S, 3) uint8 images."""
    model.eval()
    return torch.cat(
        [
            model(to_input(images[start : start + batch_size]))
            for start in range(0, len(images), batch_size)
        ]
    )


def accuracy(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of ``model`` on uint8 images with (N,) class labels."""
    correct = int((predict(model, images).argmax(1) == torch.as_tensor(labels)).sum())
    return correct / len(images)


def mean_average_precision(
    model: torch.nn.Module, images: np.ndarray, presence: np.ndarray
) -> float:
    """Mean over classes of the average precision of ``model``'s logits for (N, C) presence."""
    return float(np.nanmean(average_precision(predict(model, images).numpy(), presence)))


def score(model: torch.nn.Module, images: np.ndarray, targets: np.ndarray, task: str) -> float:
    """The task's figure of merit: top-1 accuracy (``scenes``) or mAP (``objects``)."""
    _check_task(task)
    if task == "scenes":
        return accuracy(model, images, targets)
    return mean_average_precision(model, images, targets)


@dataclass(frozen=True)
class Recipe:
    """How to train a built-in CNN (``data/README.md``, "Training recipes").

    Parameters
    ----------
    task : {"scenes", "objects"}
        Classify the scene (cross-entropy) or predict which objects are present (binary
        cross-entropy on one logit per object class).
    seed : int
        Seeds the training world (``synthetic:IMAGES:SEED``), the initial weights, the shuffling
        and the augmentation. Validation uses world seed ``SEED + 1``.
    images, epochs, batch_size, lr
        Training images, passes over them, images per step, peak learning rate (one-cycle
        schedule, 20 % warm-up, cosine annealing).
    translate : int
        Largest random shift, in pixels, of each training image (edge pixels repeated); 0 for
        none. Every image is also flipped left-right with probability 1/2.
    val_images : int
        Validation images.
    threads : int
        torch CPU threads (fixed, so that results repeat).
    """

    task: str = "scenes"
    seed: int = 0
    images: int = 16000
    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-3
    translate: int = 4
    val_images: int = 1000
    threads: int = 2

    def __post_init__(self) -> None:
        _check_task(self.task)
        if self.translate < 0:
            raise ValueError(f"translate must be >= 0, got {self.translate}")


def augment(batch: torch.Tensor, translate: int, generator: torch.Generator) -> torch.Tensor:
    """Random left-right flips and shifts of up to ``translate`` px of an (N, C, S, S) batch."""
    flip = torch.rand(len(batch), generator=generator) < 0.5
    batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(3), batch)
    if translate == 0:
        return batch
    size = batch.shape[-1]
    padded = F.pad(batch, (translate,) * 4, mode="replicate")
    starts = torch.randint(0, 2 * translate + 1, (len(batch), 2), generator=generator).tolist()
    return torch.stack(
        [image[:, y : y + size, x : x + size] for image, (y, x) in zip(padded, starts, strict=True)]
    )


def train(out: str, recipe: Recipe = Recipe(), progress: bool = True) -> float:
    """Train a :class:`SceneCNN` by ``recipe``; save the best epoch's folded weights to ``out``.

    Parameters
    ----------
    out : str
        Where to write the state dict (``torch.save``; load with ``weights_only=True``). After
        every epoch the network is scored on the validation world; the file holds the epoch with
        the best score so far (ties keep the earlier one).
    recipe : Recipe
        The data, schedule, augmentation and seed.
    progress : bool
        Show tqdm bars.

    Returns
    -------
    float
        The best validation score: top-1 accuracy (``scenes``) or mean average precision over
        the object classes (``objects``).
    """
    torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    task = recipe.task
    train_x, train_y = render_world(SyntheticWorld(recipe.images, recipe.seed), progress, task)
    val_x, val_y = render_world(SyntheticWorld(recipe.val_images, recipe.seed + 1), progress, task)
    train_x, train_y = torch.from_numpy(train_x), torch.from_numpy(train_y)
    loss_of = F.cross_entropy if task == "scenes" else F.binary_cross_entropy_with_logits
    metric = "accuracy" if task == "scenes" else "mAP"
    model = SceneCNN(TASKS[task], batch_norm=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=5e-4)
    per_epoch = len(train_x) // recipe.batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, recipe.lr, total_steps=recipe.epochs * per_epoch, pct_start=0.2
    )
    best = -1.0
    for epoch in range(recipe.epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        desc = f"epoch {epoch + 1}/{recipe.epochs}"
        bar = tqdm(range(per_epoch), desc=desc, disable=not progress)
        losses = []
        for step in bar:
            chosen = order[step * recipe.batch_size : (step + 1) * recipe.batch_size]
            batch = augment(to_input(train_x[chosen]), recipe.translate, generator)
            loss = loss_of(model(batch), train_y[chosen])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.3f}")
        model.eval()
        plain = fold_batch_norm(model)
        val_score = score(plain, val_x, val_y, task)
        kept = val_score > best
        if kept:
            best = val_score
            with atomic_path(out) as tmp:
                torch.save(plain.state_dict(), tmp)
        print(
            f"epoch {epoch + 1}: training loss {np.mean(losses):.4f}, validation {metric} "
            f"{val_score:.4f}" + (f" -> {out}" if kept else ""),
            flush=True,
        )
    return best


def main(argv: Sequence[str] | None = None) -> int:
    task = argparse.ArgumentParser(add_help=False)
    task.add_argument("--task")
    if task.parse_known_args(argv)[0].task == "segment":
        from .segment_train import main as train_segmenter

        return train_segmenter(argv)
    default = Recipe()
    parser = argparse.ArgumentParser(
        prog="python -m dissect.zoo.train",
        description="Train a built-in CNN (scene-cnn, or object-cnn with --task objects).",
    )
    parser.add_argument("--out", required=True, help="state-dict file to write")
    add_recipe_arguments(parser, default)
    parser.add_argument(
        "--task",
        choices=[*TASKS, "segment"],
        default="scenes",
        help="scenes: classify the scene (scene-cnn, default); objects: which objects are "
        "present (object-cnn); segment: world-fcn (see --task segment --help)",
    )
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    result = train(out, Recipe(**args))
    print(f"best {'accuracy' if args['task'] == 'scenes' else 'mAP'}: {result:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
