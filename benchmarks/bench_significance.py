"""Cost of the label p-values: the IoU pass with P permutations against the pass without.

Dissects the built-in scene CNN on the synthetic world once, then times
:func:`dissect.iou.compute_iou` with ``permutations=0`` and with ``permutations=P`` on the same
directory (no checkpoints, the faster of two runs each). Prints ``name: value`` lines:
seconds of each pass, their ratio, and the share of units whose (asymptotic) p-value is below
``1 / (P + 1)``, the smallest a permutation count alone can give.

    python benchmarks/bench_significance.py [--images 256] [--layers conv1,conv5]
        [--permutations 19] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from dissect.iou import compute_iou
from dissect.iou.significance import significance
from dissect.streaming import run_dissection


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--layers", default="conv1,conv5")
    parser.add_argument("--permutations", type=int, default=19)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    layers = args.layers.split(",")
    with tempfile.TemporaryDirectory() as out:
        dissection = run_dissection(
            "scene-cnn", f"synthetic:{args.images}:1", out, layers, topk=5, progress=False
        )
        options = {"batch_size": args.batch_size, "progress": False, "checkpoint": False}
        seconds = {}
        for permutations in (0, args.permutations):
            times = []
            for _ in range(2):
                nulls = {}
                began = time.perf_counter()
                stats, _ = compute_iou(
                    dissection, permutations=permutations, nulls=nulls, **options
                )
                times.append(time.perf_counter() - began)
            seconds[permutations] = min(times)
        print(f"images: {args.images}")
        print(f"permutations: {args.permutations}")
        print(f"seconds_without_null: {seconds[0]:.2f}")
        print(f"seconds_with_null: {seconds[args.permutations]:.2f}")
        print(f"ratio: {seconds[args.permutations] / seconds[0]:.2f}")
        for layer in layers:
            p_value, _ = significance(stats[layer].iou().max(1), nulls[layer].best())
            below = np.mean(p_value < 1 / (args.permutations + 1))
            print(f"{layer}_units_below_permutation_floor: {below:.3f}")


if __name__ == "__main__":
    main()
