"""Where do units really look? IoU labels as a function of the placement of the unit masks.

``python benchmarks/bench_alignment.py [--models scene-cnn,object-cnn] [--layers conv1,...]``

For each model, dissects ``synthetic:N:SEED``, measures the receptive fields of ``--rf-units``
units per layer (``dissect rf``, top ``--rf-top`` images), then labels every unit by IoU (the
counting of ``dissect autolabel --permutations 0``) at each placement ``--align`` offers, and with
the theoretical placement shifted by (dy, dx) on a grid of ``--steps`` x ``--steps`` shifts
spanning -1..+1 stride (only the placement changes: thresholds, maps and concept masks stay).
Prints per layer:

- the theoretical offset (cell i centred at ``offset + stride * i``);
- the IoU-optimal shift on the grid;
- the empirical centroid offset: the mean centroid (dy, dx) of the units' averaged occlusion
  maps, from the theoretical centre of each unit's peak cell (what ``--align empirical`` shifts
  by; measured without IoU, so not tuned to the labels);
- the shift (and stride) of a plain resize of the map (``--align resize``, NetDissect-Lite's);
- for ``--align theoretical``, ``resize``, ``empirical`` and the best shift on the grid: the mean
  best IoU of the units with IoU >= 0.04 and how many there are; then the whole grid.

``--image-size 113`` makes scene-cnn's grid of cell centres symmetric about the image (is the
lean the grid's?); ``--random-weights`` re-initialises the network (is it the architecture's or
the measurement's, or learned?).

CPU seconds and torch's thread count are printed; the defaults take a few minutes on one core.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from dissect.alignment import placements
from dissect.config import ALIGNMENTS
from dissect.dissection import Dissection
from dissect.geometry import LayerGeometry
from dissect.iou import compute_iou
from dissect.models import load_model
from dissect.rf import receptive_fields
from dissect.rf.occlusion import OcclusionConfig
from dissect.streaming import run_dissection


class ShiftedDissection(Dissection):
    """A dissection whose layers' unit maps are placed ``shift`` pixels (dy, dx) away."""

    def __init__(self, directory, shift: tuple[float, float]):
        super().__init__(directory)
        self.shift = shift

    def geometry(self, layer: str) -> LayerGeometry:
        g = super().geometry(layer)
        return replace(g, offset=(g.offset[0] + self.shift[0], g.offset[1] + self.shift[1]))


def labels_at(dissection: Dissection, layers: list[str], align: str, args, model) -> dict:
    """Per layer: (mean best IoU of units with IoU >= 0.04, how many), placed by ``align``."""
    stats, _ = compute_iou(
        dissection, layers, batch_size=args.batch_size, progress=False, checkpoint=False,
        permutations=0, align=align, model=model,
    )
    result = {}
    for layer in layers:
        best = stats[layer].iou().max(1)
        detectors = best >= 0.04
        mean = float(best[detectors].mean()) if detectors.any() else 0.0
        result[layer] = (mean, int(detectors.sum()))
    return result


def grid_table(out: Path, layers: list[str], grids: dict, args, model) -> dict:
    """Per layer and shift (dy, dx) of its grid: labels_at the theoretical placement + shift
    (one IoU pass per shift for every layer whose grid has it)."""
    wants = {layer: {(dy, dx) for dy in grids[layer] for dx in grids[layer]} for layer in layers}
    table = {layer: {} for layer in layers}
    for shift in sorted(set().union(*wants.values())):
        wanted = [layer for layer in layers if shift in wants[layer]]
        shifted = ShiftedDissection(out, shift)
        for layer, value in labels_at(shifted, wanted, "theoretical", args, model).items():
            table[layer][shift] = value
    return table


def study(model: str, args, folder: Path) -> None:
    layers = args.layers.split(",")
    out = folder / model
    loaded = load_model(model)
    preprocess = loaded.preprocess
    if args.image_size:
        preprocess = replace(preprocess, image_size=args.image_size)
    if args.random_weights:
        torch.manual_seed(args.seed)
        for module in loaded.module.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        print(f"{model}: weights re-initialised (PyTorch's default initialisation, seeded)")
    run_dissection(
        loaded, f"synthetic:{args.images}:{args.seed}", out, layers, topk=args.rf_top,
        batch_size=args.batch_size, progress=False, seed=args.seed, preprocess=preprocess,
    )
    receptive_fields(
        out, layers, list(range(args.rf_units)), OcclusionConfig(top=args.rf_top),
        model=loaded, device="cpu", progress=False,
    )
    dissection = Dissection(out)
    placed = {align: placements(dissection, layers, align) for align in ALIGNMENTS}
    offered = {
        align: labels_at(dissection, layers, align, args, loaded) for align in ALIGNMENTS
    }
    grids = {}
    for layer in layers:
        stride = dissection.geometry(layer).stride[0]
        grids[layer] = np.linspace(-stride, stride, args.steps)
    table = grid_table(out, layers, grids, args, loaded)
    for layer in layers:
        g = dissection.geometry(layer)
        best = max(table[layer], key=lambda s: table[layer][s])
        shift = {
            align: tuple(a - b for a, b in zip(placed[align][layer].offset, g.offset, strict=True))
            for align in ALIGNMENTS
        }
        print(
            f"{model} {layer}: stride {g.stride[0]:g}, theoretical offset {g.offset[0]:g}, "
            f"IoU-optimal shift ({best[0]:+.1f}, {best[1]:+.1f}), empirical centroid offset "
            f"({shift['empirical'][0]:+.1f}, {shift['empirical'][1]:+.1f}), resize shift "
            f"{shift['resize'][0]:+.1f} (stride {placed['resize'][layer].stride[0]:.3g})"
        )
        for align in ALIGNMENTS:
            mean, detectors = offered[align][layer]
            dy, dx = shift[align]
            print(f"  --align {align:11s} shift ({dy:+5.1f}, {dx:+5.1f}): mean best IoU "
                  f"{mean:.4f}, {detectors} units >= 0.04")
        mean, detectors = table[layer][best]
        print(f"  best on the grid    shift ({best[0]:+5.1f}, {best[1]:+5.1f}): mean best IoU "
              f"{mean:.4f}, {detectors} units >= 0.04")
        print("  grid (rows dy, columns dx): mean best IoU / units")
        for dy in grids[layer]:
            print("  " + " ".join(f"{table[layer][(dy, dx)][0]:.3f}/{table[layer][(dy, dx)][1]:2d}"
                                  for dx in grids[layer]))
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="scene-cnn,object-cnn")
    parser.add_argument("--layers", default="conv1,conv2,conv3,conv4,conv5")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5, help="shifts per axis (5)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rf-units", type=int, default=8, help="units per layer for rf (8)")
    parser.add_argument("--rf-top", type=int, default=5, help="top images per unit for rf (5)")
    parser.add_argument(
        "--image-size",
        type=int,
        help="dissect at this input size instead of the model's (113 for scene-cnn makes every "
        "layer's grid of centres symmetric about the image: conv5 cells at 0, 16, ..., 112)",
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="re-initialise the weights first: a lean the architecture (padding, strides) or "
        "the occlusion measurement imposes stays without training, a learned one goes",
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    start = time.process_time()
    with tempfile.TemporaryDirectory() as folder:
        for model in args.models.split(","):
            study(model, args, Path(folder))
    print(f"cpu_seconds: {time.process_time() - start:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
