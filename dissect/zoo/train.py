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

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..datasets.synthetic import SyntheticWorld
from ..datasets.synthetic.scenes import OBJECTS, SCENES
from ..evaluate import average_precision
from ..io import atomic_path
from .scene_cnn import MEAN, STD, SceneCNN, fold_batch_norm

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


def to_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, S, S, 3) uint8 -> normalised (N, 3, S, S) float32, as the model's Preprocess does."""
    batch = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (batch - mean) / std


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
    task: str = "scenes",
) -> float:
    """Train a :class:`SceneCNN`, save its folded state dict to ``out``; return its val score.

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
    task : {"scenes", "objects"}
        Classify the scene (cross-entropy) or predict which objects are present (binary
        cross-entropy on one logit per object class).

    Returns
    -------
    float
        On the validation world after the last epoch: top-1 accuracy (``scenes``) or mean
        average precision over the object classes (``objects``).
    """
    _check_task(task)
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train_x, train_y = render_world(SyntheticWorld(images, seed), progress, task)
    val_x, val_y = render_world(SyntheticWorld(val_images, seed + 1), progress, task)
    train_x, train_y = torch.from_numpy(train_x), torch.from_numpy(train_y)
    loss_of = F.cross_entropy if task == "scenes" else F.binary_cross_entropy_with_logits
    metric = "accuracy" if task == "scenes" else "mAP"
    model = SceneCNN(TASKS[task], batch_norm=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps = epochs * (len(train_x) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.2)
    val_score = 0.0
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
            loss = loss_of(model(batch), train_y[chosen])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        model.eval()
        plain = fold_batch_norm(model)
        val_score = score(plain, val_x, val_y, task)
        with atomic_path(out) as tmp:
            torch.save(plain.state_dict(), tmp)
        print(f"epoch {epoch + 1}: validation {metric} {val_score:.4f} -> {out}", flush=True)
    return val_score


def main(argv: Sequence[str] | None = None) -> int:
    task = argparse.ArgumentParser(add_help=False)
    task.add_argument("--task")
    if task.parse_known_args(argv)[0].task == "segment":
        from .segment_train import main as train_segmenter

        return train_segmenter(argv)
    parser = argparse.ArgumentParser(
        prog="python -m dissect.zoo.train",
        description="Train a built-in CNN (scene-cnn, or object-cnn with --task objects).",
    )
    parser.add_argument("--out", required=True, help="state-dict file to write")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument("--images", type=int, default=10000, help="training images (10000)")
    parser.add_argument("--epochs", type=int, default=8, help="passes over them (8)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step (64)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (0.003)")
    parser.add_argument("--val-images", type=int, default=1000, help="validation images (1000)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (2)")
    parser.add_argument(
        "--task",
        choices=[*TASKS, "segment"],
        default="scenes",
        help="scenes: classify the scene (scene-cnn, default); objects: which objects are "
        "present (object-cnn); segment: world-fcn (see --task segment --help)",
    )
    args = parser.parse_args(argv)
    result = train(
        args.out,
        args.seed,
        args.images,
        args.epochs,
        args.batch_size,
        args.lr,
        args.val_images,
        args.threads,
        task=args.task,
    )
    print(f"{'accuracy' if args.task == 'scenes' else 'mAP'}: {result:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
