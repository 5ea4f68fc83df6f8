"""Do the labels' p-values and q-values mean something? Three controls on the built-in world.

``python benchmarks/bench_fdr.py [--images N] [--layers L] [--permutations P]``

Dissects ``scene-cnn`` over ``synthetic:N:SEED`` and labels every unit by IoU with the
permutation null (``dissect autolabel``), three ways:

- ``trained``: the shipped weights;
- ``random``: the same network re-initialised (PyTorch's default initialisation, seeded), which
  may still detect colours (NetDissect saw this);
- ``mispaired``: the trained network, with every image's concept masks taken from the next image
  (``i + 1 mod N``): there is no true association, so every unit called significant is a false
  discovery, and Benjamini-Hochberg at ``--fdr`` Q should call any unit in at most a share Q of
  such layers.

Prints per condition and layer: units, labels with IoU >= 0.04 (the paper's rule), units with
p <= 0.05, units with q <= Q, detectors by both rules (IoU >= 0.04 and q <= Q), the smallest
p-value, and the CPU seconds of the condition; torch's thread count first.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from dissect.datasets.synthetic import SyntheticWorld
from dissect.iou import autolabel
from dissect.models import load_model
from dissect.streaming import run_dissection


class MispairedWorld(SyntheticWorld):
    """The synthetic world with image ``i``'s concept masks taken from image ``i + 1``."""

    def segmentation(self, index: int):
        return super().segmentation((self._check(index) + 1) % len(self))


def reinitialised(seed: int):
    """scene-cnn with freshly initialised weights (its preprocessing kept)."""
    loaded = load_model("scene-cnn")
    torch.manual_seed(seed)
    for module in loaded.module.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return loaded


def measure(name: str, model, world, out: Path, args: argparse.Namespace) -> None:
    start = time.process_time()
    layers = args.layers.split(",")
    run_dissection(
        model, SyntheticWorld(args.images, args.seed), out, layers, topk=10,
        batch_size=args.batch_size, progress=False, seed=args.seed,
    )
    labels = autolabel(
        out, layers, model=model, source=world, batch_size=args.batch_size, progress=False,
        permutations=args.permutations, device="cpu",
    )
    seconds = time.process_time() - start
    for layer, rows in labels.groupby("layer", sort=False):
        detector = rows["iou"] >= 0.04
        significant = rows["q_value"] <= args.fdr
        print(
            f"{name:9s} {layer:6s} units {len(rows):3d}  IoU>=0.04 {int(detector.sum()):3d}  "
            f"p<=0.05 {int((rows['p_value'] <= 0.05).sum()):3d}  q<={args.fdr:g} "
            f"{int(significant.sum()):3d}  both {int((detector & significant).sum()):3d}  "
            f"min p {rows['p_value'].min():.2g}",
            flush=True,
        )
    print(f"{name:9s} cpu_seconds {seconds:.0f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="images of the world (200)")
    parser.add_argument("--seed", type=int, default=7, help="world seed (7)")
    parser.add_argument("--layers", default="conv1,conv3,conv5", help="(conv1,conv3,conv5)")
    parser.add_argument("--permutations", type=int, default=19, help="null re-pairings (19)")
    parser.add_argument("--fdr", type=float, default=0.05, help="false discovery rate (0.05)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch (32)")
    parser.add_argument("--conditions", default="mispaired,random,trained")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}", flush=True)
    worlds = {
        "trained": ("scene-cnn", SyntheticWorld(args.images, args.seed)),
        "random": (reinitialised(args.seed), SyntheticWorld(args.images, args.seed)),
        "mispaired": ("scene-cnn", MispairedWorld(args.images, args.seed)),
    }
    with tempfile.TemporaryDirectory() as folder:
        for name in args.conditions.split(","):
            model, world = worlds[name]
            measure(name, model, world, Path(folder) / name, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
