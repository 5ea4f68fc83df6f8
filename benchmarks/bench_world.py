"""The synthetic world: generation speed, a colour-histogram baseline, and the scene CNN.

    python benchmarks/bench_world.py [--images 300] [--train 2000] [--test 1000]

Prints ``name: value`` lines:

- ``images_per_second``: images rendered with all their masks (colour included), one core;
- ``color_histogram_accuracy``: softmax regression on 4x4x4-bin RGB histograms plus the named
  colour-bin histogram, trained on world seed 100 and tested on seed 101 (chance 1/8);
- ``color_histogram_centroid_accuracy``: nearest class centroid on the same features;
- ``cnn_accuracy``: the shipped ``scene-cnn`` on ``synthetic:TEST:12345``, a seed it never saw;
- ``object_cnn_map``: the shipped ``object-cnn``'s mean average precision over the 11 object
  classes on the same images (``dissect evaluate``; chance is about 0.3, the mean frequency).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from dissect.datasets.synthetic import SyntheticWorld
from dissect.datasets.synthetic.scenes import SCENES
from dissect.datasets.synthetic.textures import COLORS, color_names
from dissect.evaluate import evaluate


def generation_speed(count: int) -> float:
    """Images per second, rendering image, object/part/material and colour maps."""
    world = SyntheticWorld(count, seed=42)
    world.read_rgb(0)  # build the texture tiles once, outside the timing
    start = time.perf_counter()
    for i in range(1, count):
        world.read_rgb(i)
        world.segmentation(i)
    return (count - 1) / (time.perf_counter() - start)


def histogram_features(world: SyntheticWorld) -> tuple[np.ndarray, np.ndarray]:
    """Per image: normalised RGB (4x4x4) and named-colour histograms; and the scene labels."""
    features, labels = [], []
    for i in range(len(world)):
        rgb = world.read_rgb(i)
        cells = (rgb // 64).reshape(-1, 3).astype(np.int64)
        rgb_hist = np.bincount(cells[:, 0] * 16 + cells[:, 1] * 4 + cells[:, 2], minlength=64)
        named = np.bincount(color_names(rgb).ravel(), minlength=len(COLORS))
        features.append(np.concatenate([rgb_hist, named]) / rgb.shape[0] / rgb.shape[1])
        labels.append(world.label(i))
    return np.array(features), np.array(labels)


def softmax_regression(x: np.ndarray, y: np.ndarray, classes: int, steps: int = 2000):
    """Weights of a multinomial logistic regression fitted by full-batch gradient descent."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    x = np.hstack([(x - mean) / std, np.ones((len(x), 1))])
    weights = np.zeros((x.shape[1], classes))
    onehot = np.eye(classes)[y]
    for _ in range(steps):
        logits = x @ weights
        logits -= logits.max(1, keepdims=True)
        probabilities = np.exp(logits)
        probabilities /= probabilities.sum(1, keepdims=True)
        weights -= 0.5 * (x.T @ (probabilities - onehot) / len(x) + 1e-3 * weights)
    return lambda z: (np.hstack([(z - mean) / std, np.ones((len(z), 1))]) @ weights).argmax(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300, help="images timed (300)")
    parser.add_argument("--train", type=int, default=2000, help="baseline training images")
    parser.add_argument("--test", type=int, default=1000, help="test images (both classifiers)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"images_per_second: {generation_speed(args.images):.1f}")
    train_x, train_y = histogram_features(SyntheticWorld(args.train, seed=100))
    test_x, test_y = histogram_features(SyntheticWorld(args.test, seed=101))
    predict = softmax_regression(train_x, train_y, len(SCENES))
    print(f"color_histogram_accuracy: {(predict(test_x) == test_y).mean():.4f}")
    centroids = np.stack([train_x[train_y == c].mean(0) for c in range(len(SCENES))])
    nearest = ((test_x[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    print(f"color_histogram_centroid_accuracy: {(nearest == test_y).mean():.4f}")
    print(f"chance: {1 / len(SCENES):.4f}")
    torch.set_num_threads(2)
    cnn = evaluate("scene-cnn", f"synthetic:{args.test}:12345", batch_size=100, progress=False)
    print(f"cnn_accuracy: {cnn:.4f}")
    objects = evaluate("object-cnn", f"synthetic:{args.test}:12345", batch_size=100, progress=False)
    print(f"object_cnn_map: {objects:.4f}")


if __name__ == "__main__":
    main()
