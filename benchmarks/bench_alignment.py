"""Where do units really look? IoU labels as a function of the placement of the unit masks.

``python benchmarks/bench_alignment.py [--models scene-cnn,object-cnn] [--images 200]``

For each model and layer, dissects ``synthetic:N:SEED``, then labels every unit by IoU (the
same counting as ``dissect autolabel --permutations 0``) with every upsampled unit map shifted
by (dy, dx) pixels, on a grid of ``--steps`` x ``--steps`` shifts spanning -1..+1 stride. The
shift is applied to the layer's geometry (``offset + (dy, dx)``), so only the placement changes:
thresholds, maps and concept masks stay the same. Prints per layer:

- ``theoretical``: the probed offset (cell i centred at ``offset + stride * i``);
- ``resize``: the shift that a plain resize of the map onto the image implies (NetDissect-Lite);
- ``empirical``: the mean centroid (dy, dx) of the units' averaged occlusion maps
  (``dissect rf``, ``--rf-units`` units, top ``--rf-top`` images), relative to the theoretical
  centre of each unit's peak cell: measured without IoU, so not tuned to the labels;
- ``best``: the IoU-optimal shift on the grid;
- for each placement (theoretical, resize, empirical to 0.5 px, best on the grid): the mean best
  IoU of the units with IoU >= 0.04 and how many there are; then the whole grid.

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

from dissect.dissection import Dissection
from dissect.geometry import LayerGeometry
from dissect.iou import compute_iou
from dissect.models import load_model
from dissect.rf import load_maps, receptive_fields
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


def labels_at(directory: Path, layers: list[str], shift, batch_size: int) -> dict:
    """Per layer: (mean best IoU of units with IoU >= 0.04, how many) at ``shift``."""
    stats, _ = compute_iou(
        ShiftedDissection(directory, shift), layers, batch_size=batch_size, progress=False,
        checkpoint=False, permutations=0,
    )
    result = {}
    for layer in layers:
        best = stats[layer].iou().max(1)
        detectors = best >= 0.04
        mean = float(best[detectors].mean()) if detectors.any() else 0.0
        result[layer] = (mean, int(detectors.sum()))
    return result


def empirical_offsets(directory: Path, layers: list[str], args) -> dict:
    """Mean centroid (dy, dx) of the units' averaged occlusion maps, from their centres."""
    units = list(range(args.rf_units))
    config = OcclusionConfig(top=args.rf_top)
    receptive_fields(directory, layers, units, config, device="cpu", progress=False)
    offsets = {}
    for layer in layers:
        maps = load_maps(directory, layer)["maps"]  # (units, 2R+1, 2R+1), centred
        radius = (maps.shape[1] - 1) // 2
        mass = np.clip(np.nan_to_num(maps), 0, None)
        grid = np.arange(-radius, radius + 1)
        total = mass.sum((1, 2))
        keep = total > 0
        dy = (mass.sum(2) * grid).sum(1)[keep] / total[keep]
        dx = (mass.sum(1) * grid).sum(1)[keep] / total[keep]
        offsets[layer] = (float(dy.mean()), float(dx.mean()))
    return offsets


def study(model: str, args, folder: Path) -> None:
    layers = args.layers.split(",")
    out = folder / model
    preprocess = load_model(model).preprocess
    if args.image_size:
        preprocess = replace(preprocess, image_size=args.image_size)
    run_dissection(
        model, f"synthetic:{args.images}:{args.seed}", out, layers, topk=args.rf_top,
        batch_size=args.batch_size, progress=False, seed=args.seed, preprocess=preprocess,
    )
    dissection = Dissection(out)
    geometry = {layer: dissection.geometry(layer) for layer in layers}
    size = dissection.preprocess.size
    size = size if isinstance(size, int) else size[0]
    empirical = empirical_offsets(out, layers, args)
    grids = {}
    for layer in layers:
        stride = geometry[layer].stride[0]
        grids[layer] = np.linspace(-stride, stride, args.steps)
    # The placements the tool could offer, per layer: a plain resize's (NetDissect-Lite: cell i
    # at (S / n) i + (S / n - 1) / 2; a shift where the strides agree) and the empirical
    # centroid's (to 0.5 px).
    offered = {}
    for layer in layers:
        g = geometry[layer]
        resize = (size / g.output_shape[1] - 1) / 2 - g.offset[0]
        centroid = tuple(round(2 * value) / 2 for value in empirical[layer])
        offered[layer] = {"resize": (resize, resize), "empirical": centroid}
    # One IoU pass per shift for every layer that wants it (the same shifts when strides agree).
    wants = {
        layer: {(dy, dx) for dy in grids[layer] for dx in grids[layer]}
        | set(offered[layer].values())
        for layer in layers
    }
    table = {layer: {} for layer in layers}
    for shift in sorted(set().union(*wants.values())):
        wanted = [layer for layer in layers if shift in wants[layer]]
        for layer, value in labels_at(out, wanted, shift, args.batch_size).items():
            table[layer][shift] = value
    for layer in layers:
        g = geometry[layer]
        on_grid = {(dy, dx): table[layer][(dy, dx)] for dy in grids[layer] for dx in grids[layer]}
        best = max(on_grid, key=lambda s: on_grid[s])
        resize = offered[layer]["resize"][0]
        plain = size / g.output_shape[1]
        print(
            f"{model} {layer}: stride {g.stride[0]:g}, theoretical offset {g.offset[0]:g}, "
            f"resize shift {resize:+.1f} (stride {plain:g}), empirical centroid "
            f"({empirical[layer][0]:+.1f}, {empirical[layer][1]:+.1f}), IoU-optimal shift "
            f"({best[0]:+.1f}, {best[1]:+.1f})"
        )
        for name, shift in (("theoretical", (0.0, 0.0)), ("resize", offered[layer]["resize"]),
                            ("empirical", offered[layer]["empirical"]), ("best on grid", best)):
            mean, detectors = table[layer][shift]
            print(f"  {name:12s} shift ({shift[0]:+5.1f}, {shift[1]:+5.1f}): mean best IoU "
                  f"{mean:.4f}, {detectors} units >= 0.04")
        print("  grid (rows dy, columns dx): mean best IoU / units")
        for dy in grids[layer]:
            print("  " + " ".join(f"{table[layer][(dy, dx)][0]:.3f}/{table[layer][(dy, dx)][1]:2d}"
                                  for dx in grids[layer]))
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="scene-cnn,object-cnn")
    parser.add_argument("--layers", default="conv3,conv5")
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
