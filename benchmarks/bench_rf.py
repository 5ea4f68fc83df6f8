"""Speed-up of fast occlusion receptive fields over the naive per-unit loop, and their agreement.

Dissects the layers (each with >= 64 units) of the model over the data, then measures every
unit's top images twice with the same noise occluder, in one run:

- naive: for every unit, for every top image, one full forward per occluder position (batched by
  ``--batch-size`` occluded images, as the fast path is);
- fast: :func:`dissect.rf.discrepancy_maps` (shared per image, stopped at the layer,
  skipping occluders outside the receptive fields, cropped or incremental, batched).

Prints ``name: value`` lines per layer: the two wall times, ``speedup`` (naive / fast),
``max_abs_diff`` of the discrepancy maps and of the averaged maps, and the occluded passes each
method ran; ``speedup_min`` over the layers last.

    python benchmarks/bench_rf.py [--model scene-cnn] [--data synthetic:100] [--layers conv2,conv5]

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

from dissect.datasets import open_data
from dissect.dissection import Dissection
from dissect.errors import DissectError
from dissect.models import LoadedModel, builtin_models, load_model
from dissect.rf import (
    Measurements,
    OcclusionConfig,
    average_maps,
    discrepancy_maps,
    map_radius,
    noise_patch,
    occluder_corners,
)
from dissect.streaming import run_dissection


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


def measure(loaded, dissection, layer, source, args) -> dict[str, str]:
    """Time both methods on every unit of ``layer``; return the figures as printable strings."""
    topk, geometry = dissection.topk(layer), dissection.geometry(layer)
    units = list(range(geometry.output_shape[0]))
    if len(units) < 64:
        raise SystemExit(f"layer {layer} has {len(units)} units; pick layers with >= 64")
    measurements = Measurements.from_topk(topk, units, args.top)
    config = OcclusionConfig(
        top=args.top, occluder=args.occluder, stride=args.stride, batch_size=args.batch_size
    )
    preprocess = loaded.preprocess
    patch = noise_patch(preprocess, args.occluder, 0)
    images = {
        int(i): preprocess.tensor(source.read_rgb(int(i))) for i in np.unique(measurements.image)
    }
    passes = [0]
    common = (loaded.module, layer, geometry, images.__getitem__, measurements, patch, config)
    start = time.perf_counter()
    fast = discrepancy_maps(*common, progress=False, checkpoint=passes.append)
    fast_seconds = time.perf_counter() - start
    start = time.perf_counter()
    naive = discrepancy_maps(*common, method="naive", progress=False)
    naive_seconds = time.perf_counter() - start
    radius = map_radius(geometry, config, preprocess.image_size)
    size = preprocess.image_size
    fast_maps, *_ = average_maps(fast, measurements, units, geometry, config, radius, size)
    naive_maps, *_ = average_maps(naive, measurements, units, geometry, config, radius, size)
    positions = len(occluder_corners(preprocess.image_size, args.occluder, args.stride)) ** 2
    return {
        "units": str(len(units)),
        "rf_theoretical": str(geometry.rf[0]),
        "unit_images": str(len(measurements)),
        "distinct_images": str(len(images)),
        "naive_passes": str(len(measurements) * positions),
        "fast_passes": str(passes[-1]),
        "naive_seconds": f"{naive_seconds:.3f}",
        "fast_seconds": f"{fast_seconds:.3f}",
        "speedup": f"{naive_seconds / fast_seconds:.1f}",
        "max_abs_diff": f"{np.abs(fast - naive).max():.3g}",
        "max_abs_diff_averaged": f"{np.abs(fast_maps - naive_maps).max():.3g}",
        "max_discrepancy": f"{naive.max():.3g}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="scene-cnn")
    parser.add_argument("--data", default="synthetic:100")
    parser.add_argument(
        "--layers", default="conv2,conv5", help="comma-separated layers with >= 64 units each"
    )
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--occluder", type=int, default=11)
    parser.add_argument("--stride", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_grad_enabled(False)
    loaded, note = pick_model(args.model)
    source = open_data(args.data)
    layers = args.layers.split(",")
    print(f"model: {note}")
    print(f"data: {args.data}")
    print(f"image_size: {loaded.preprocess.image_size}")
    print(f"top: {args.top}")
    print(f"occluder: {args.occluder}")
    print(f"stride: {args.stride}")
    corners = occluder_corners(loaded.preprocess.image_size, args.occluder, args.stride)
    print(f"occluder_positions: {len(corners) ** 2}")
    print(f"torch_threads: {torch.get_num_threads()}")
    speedups = []
    with tempfile.TemporaryDirectory() as out:
        run_dissection(loaded, source, out, layers, topk=args.top, batch_size=64, progress=False)
        dissection = Dissection(out)
        for layer in layers:
            figures = measure(loaded, dissection, layer, source, args)
            for name, value in figures.items():
                print(f"{layer}_{name}: {value}", flush=True)
            speedups.append(float(figures["speedup"]))
    print(f"speedup_min: {min(speedups):.1f}")


if __name__ == "__main__":
    main()
