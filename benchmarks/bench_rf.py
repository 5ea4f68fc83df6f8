"""Speed-up of fast occlusion receptive fields over the naive per-unit loop, and their agreement.

Dissects one layer (>= 64 units) of the model over the data, then measures every unit's top
images twice with the same noise occluder, in one run:

- naive: for every unit, for every top image, one full forward per occluder position (batched by
  ``--batch-size`` occluded images, as the fast path is);
- fast: :func:`dissect.receptive_field.discrepancy_maps` (shared per image, stopped at the layer,
  skipping occluders outside the receptive fields, cropped, batched).

Prints ``name: value`` lines: the two wall times, ``speedup`` (naive / fast), ``max_abs_diff`` of
the discrepancy maps and of the averaged maps, and what the fast path saved.

    python benchmarks/bench_rf.py [--model scene-cnn] [--data synthetic:200] [--layer conv5]

The model defaults to the built-in ``scene-cnn``; without its weights file, the same architecture
with seeded random weights is used (``model:`` says which).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

import numpy as np
import torch

from dissect.data import open_data
from dissect.dissection import Dissection, run_dissection
from dissect.errors import DissectError
from dissect.models import LoadedModel, builtin_models, load_model
from dissect.receptive_field import (
    Measurements,
    OcclusionConfig,
    average_maps,
    discrepancy_maps,
    map_radius,
    noise_patch,
    occluder_corners,
)


def pick_model(spec: str) -> tuple[LoadedModel, str]:
    """The model, and how it was obtained (trained weights, or seeded random ones)."""
    try:
        return load_model(spec), f"{spec} (trained weights)"
    except DissectError as error:
        entry = builtin_models().get(spec)
        if entry is None:
            raise
        torch.manual_seed(0)
        module = entry.factory().eval()
        note = f"{spec} architecture, seeded random weights ({error})"
        return LoadedModel(module, spec, preprocess=entry.preprocess), note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="scene-cnn")
    parser.add_argument("--data", default="synthetic:200")
    parser.add_argument("--layer", default="conv5", help="a layer with >= 64 units")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--occluder", type=int, default=11)
    parser.add_argument("--stride", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_grad_enabled(False)
    loaded, note = pick_model(args.model)
    source = open_data(args.data)
    with tempfile.TemporaryDirectory() as out:
        run_dissection(
            loaded, source, out, [args.layer], topk=args.top, batch_size=64, progress=False
        )
        dissection = Dissection(out)
        topk = dissection.topk(args.layer)
        geometry = dissection.geometry(args.layer)
    units = list(range(geometry.output_shape[0]))
    if len(units) < 64:
        raise SystemExit(f"layer {args.layer} has {len(units)} units; pick one with >= 64")
    measurements = Measurements.from_topk(topk, units, args.top)
    config = OcclusionConfig(
        top=args.top, occluder=args.occluder, stride=args.stride, batch_size=args.batch_size
    )
    preprocess = loaded.preprocess
    patch = noise_patch(preprocess, args.occluder, 0)
    cache = {}

    def load_image(index: int) -> torch.Tensor:
        if index not in cache:
            cache[index] = preprocess.tensor(source.read_rgb(index))
        return cache[index]

    for index in np.unique(measurements.image):
        load_image(int(index))
    passes = []

    def count(done: int) -> None:
        passes.append(done)

    module = loaded.module
    common = (module, args.layer, geometry, load_image, measurements, patch, config)
    start = time.perf_counter()
    fast = discrepancy_maps(*common, progress=False, checkpoint=count)
    fast_seconds = time.perf_counter() - start
    start = time.perf_counter()
    naive = discrepancy_maps(*common, method="naive", progress=False)
    naive_seconds = time.perf_counter() - start
    radius = map_radius(geometry, config, preprocess.image_size)
    fast_maps, _ = average_maps(fast, measurements, units, geometry, config, radius)
    naive_maps, _ = average_maps(naive, measurements, units, geometry, config, radius)
    positions = len(occluder_corners(preprocess.image_size, args.occluder, args.stride)) ** 2
    images = len(np.unique(measurements.image))
    print(f"model: {note}")
    print(f"data: {args.data}")
    print(f"layer: {args.layer}")
    print(f"units: {len(units)}")
    print(f"top: {args.top}")
    print(f"image_size: {preprocess.image_size}")
    print(f"rf_theoretical: {geometry.rf[0]}")
    print(f"occluder_positions: {positions}")
    print(f"unit_images: {len(measurements)}")
    print(f"distinct_images: {images}")
    print(f"naive_passes: {len(measurements) * positions}")
    print(f"fast_passes: {passes[-1] if passes else 0}")
    print(f"torch_threads: {torch.get_num_threads()}")
    print(f"naive_seconds: {naive_seconds:.3f}")
    print(f"fast_seconds: {fast_seconds:.3f}")
    print(f"speedup: {naive_seconds / fast_seconds:.1f}")
    print(f"max_abs_diff: {np.abs(fast - naive).max():.3g}")
    print(f"max_abs_diff_averaged: {np.abs(fast_maps - naive_maps).max():.3g}")
    print(f"max_discrepancy: {naive.max():.3g}")


if __name__ == "__main__":
    main()
