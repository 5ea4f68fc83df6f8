"""Fast occlusion receptive fields against per-target occlusion and the naive loop: time, memory.

Dissects the layers of the model over the data, then measures the same units' top images with
the same noise occluder three ways, each in a fresh child process (its wall time, and its peak
resident memory above what it held before the measurement: ``VmHWM`` reset through
``/proc/self/clear_refs``; glibc's mmap threshold set to 64 KiB, so that the peak is the memory
in use rather than the allocator's slack):

- ``per_target``: occlusion as Captum's ``Occlusion.attribute`` runs it, one target at a time:
  for each unit and top image, a forward of the image for the baseline value, then batches of
  ``--batch-size`` occluded copies (each built as ``image * (1 - mask) + occluder``, Captum's
  ablated input), a forward, and the target (the unit at its peak) read out. The forward stops at
  the measured layer (cheaper than Captum's whole-model ``forward_func``, so the speed-up below
  is not flattered);
- ``naive``: :func:`dissect.rf.discrepancy_maps` with ``method="naive"`` (the same loop, pasting
  the occluder into a copy, whole-model forwards);
- ``fast``: :func:`dissect.rf.discrepancy_maps` (shared per image, stopped at the layer,
  skipping occluders outside the receptive fields, cropped or incremental, batched).

The defaults measure what ``dissect rf`` measures by default: every unit of the layer, each on
its top 20 images (``--units all --top 20``), here over 60 images, so that an image is the top
image of many units (``*_measurements_per_image``), as in a real dissection, and the fast method
occludes each image once for all of them. ``--units 4 --top 3`` measures the other extreme, about
one measurement per image. The per-target and naive loops cost the same per pass whatever they
measure, so they run on the first ``--timed`` measurements (6) and their time is extrapolated to
all (``*_extrapolated: yes`` says so; ``max_abs_diff`` compares those measurements).

Each child runs ``--threads`` torch threads (1). Prints ``name: value`` lines per layer: CPU
seconds (the ratios use them: on a shared machine they move far less than wall time, also
printed), peak memory (MiB) and passes of each method, ``speedup_vs_per_target`` (per_target /
fast), ``speedup_vs_naive``, ``memory_vs_naive`` (peak of fast / peak of naive), ``max_abs_diff``
of fast against naive, ``flops_vs_naive`` (the naive method's floating-point operations over the
fast method's, counted by torch's ``FlopCounterMode`` after the timed runs: the work the fast
method saves, a figure the load of the machine does not move); the worst of each ratio over the
layers last.

    python benchmarks/bench_rf.py [--model scene-cnn] [--data synthetic:60] [--layers conv2,conv5]
                                  [--units all] [--top 20] [--timed 6]

``--paper`` measures the paper's setting instead: 224 px images, an AlexNet-sized network (the
five convolutions of AlexNet, random seeded weights), layer conv5, 11 px occluder, stride 3, top
10 images, ``--units`` units (default 4). There one naive (and per-target) measurement runs
about 5,000 forwards of AlexNet, too slow for this machine: they are timed on their first
``--sample`` batches of each of their ``--timed`` measurements and extrapolated to all positions
and measurements (their cost per pass is constant; ``*_extrapolated: yes`` says so); the fast
method runs in full.

The model defaults to the built-in ``scene-cnn``; without its weights file, the same architecture
with seeded random weights is used (``model:`` says which).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dissect.datasets import open_data
from dissect.dissection import Dissection
from dissect.errors import DissectError
from dissect.hooks import LayerTrace
from dissect.images import Preprocess
from dissect.models import LoadedModel, load_model
from dissect.rf import (
    Measurements,
    OcclusionConfig,
    discrepancy_maps,
    noise_patch,
    occluder_corners,
)
from dissect.streaming import run_dissection
from dissect.zoo import builtin_models

METHODS = ("per_target", "naive", "fast")


def alexnet_conv() -> nn.Module:
    """AlexNet's five convolutions (torchvision's widths) named conv1..conv5, seeded weights."""
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(3, 64, 11, stride=4, padding=2)), ("relu1", nn.ReLU()),
                ("pool1", nn.MaxPool2d(3, 2)),
                ("conv2", nn.Conv2d(64, 192, 5, padding=2)), ("relu2", nn.ReLU()),
                ("pool2", nn.MaxPool2d(3, 2)),
                ("conv3", nn.Conv2d(192, 384, 3, padding=1)), ("relu3", nn.ReLU()),
                ("conv4", nn.Conv2d(384, 256, 3, padding=1)), ("relu4", nn.ReLU()),
                ("conv5", nn.Conv2d(256, 256, 3, padding=1)),
            ]
        )
    ).eval()  # fmt: skip


def pick_model(spec: str) -> tuple[LoadedModel, str]:
    """The model, and how it was obtained (trained weights, or seeded random ones)."""
    if spec == "alexnet-conv":
        preprocess = Preprocess(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        note = "AlexNet's five convolutions, seeded random weights"
        return LoadedModel(alexnet_conv(), spec, preprocess=preprocess), note
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


def per_target(module, layer, load_image, measurements, patch, config, corners, limit=None):
    """Captum-style occlusion, one target (unit at its peak, on one image) at a time."""
    size = patch.shape[-1]
    positions = [(int(y), int(x)) for y in corners for x in corners][:limit]
    grids = np.zeros((len(measurements), len(positions)), dtype=np.float32)
    with torch.inference_mode(), LayerTrace(module, [layer], stop=True) as trace:
        for m in range(len(measurements)):
            image = load_image(int(measurements.image[m]))
            side = image.shape[-1]
            unit, y, x = int(measurements.unit[m]), int(measurements.y[m]), int(measurements.x[m])
            base = trace(image[None])[layer][0, unit, y, x]
            for start in range(0, len(positions), config.batch_size):
                chunk = positions[start : start + config.batch_size]
                mask = torch.zeros(len(chunk), 1, side, side)
                occluder = torch.zeros(len(chunk), 3, side, side)
                for b, (py, px) in enumerate(chunk):
                    h, w = min(size, side - py), min(size, side - px)
                    mask[b, :, py : py + h, px : px + w] = 1
                    occluder[b, :, py : py + h, px : px + w] = patch[:, :h, :w]
                ablated = image[None] * (1 - mask) + occluder
                out = trace(ablated)[layer][:, unit, y, x]
                grids[m, start : start + len(chunk)] = (out - base).abs().numpy()
    return grids


def _status(field: str) -> float:
    """A ``VmRSS``/``VmHWM`` line of /proc/self/status, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(args) -> None:
    """Run one method on one layer in this fresh process; print a JSON line of its figures."""
    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    loaded, _ = pick_model(args.model)
    dissection = Dissection(args.directory)
    source = open_data(args.data)
    layer = args.child_layer
    geometry = dissection.geometry(layer)
    count = geometry.output_shape[0]
    units = list(range(count if args.units == "all" else min(int(args.units), count)))
    measurements = Measurements.from_topk(dissection.topk(layer), units, args.top)
    total = len(measurements)
    if args.child_method != "fast" and total > args.timed:  # timed on a few, extrapolated
        measurements = Measurements(
            *(getattr(measurements, f)[: args.timed] for f in ("image", "unit", "y", "x"))
        )
    config = OcclusionConfig(
        top=args.top, occluder=args.occluder, stride=args.stride, batch_size=args.batch_size
    )
    preprocess = loaded.preprocess
    patch = noise_patch(preprocess, args.occluder, 0)
    images = {
        int(i): preprocess.tensor(source.read_rgb(int(i))) for i in np.unique(measurements.image)
    }
    corners = occluder_corners(preprocess.image_size, args.occluder, args.stride)
    positions = len(corners) ** 2
    method = args.child_method
    limit = None
    if args.paper and method != "fast":  # time the first batches, extrapolate
        limit = min(positions, args.sample * args.batch_size)
    common = (loaded.module, layer, geometry, images.__getitem__, measurements, patch, config)
    passes = [0]
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current VmRSS
    except OSError:
        pass
    before = _status("VmRSS")
    start, cpu = time.perf_counter(), time.process_time()
    if method == "per_target":
        grids = per_target(loaded.module, layer, images.__getitem__, measurements, patch, config,
                           corners, limit)  # fmt: skip
    elif method == "naive" and limit is not None:
        grids = naive_sample(*common, corners, limit)
    else:
        kwargs = {"method": method, "progress": False}
        if method == "fast":
            kwargs["checkpoint"] = passes.append
        grids = discrepancy_maps(*common, **kwargs)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = _status("VmHWM") - before
    run = len(measurements) * (limit or positions)
    scale = total * positions / run  # 1 unless extrapolated
    seconds, cpu = seconds * scale, cpu * scale
    figures_flops = count_flops(args, loaded.module, common, positions, total)
    flat = np.asarray(grids).reshape(len(grids), -1)
    np.save(Path(args.directory) / f"{layer}_{method}.npy", flat)
    figures = {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "peak_mib": peak,
        "passes": passes[-1] if method == "fast" else total * positions,
        "extrapolated": scale != 1,
        "ran_passes": passes[-1] if method == "fast" else run,
        "unit_images": total,
        "distinct_images": len(images),
        "units": len(units),
        "flops": figures_flops,
    }
    print("RESULT " + json.dumps(figures), flush=True)


def count_flops(args, module, common, positions: int, total: int) -> float:
    """Floating-point operations of the measurement (torch's ``FlopCounterMode``, counted
    after the timed run): the fast method run again under the counter; the naive and per-target
    loops as their passes (and one unoccluded pass per measurement, ``total`` measurements) times
    those of one forward (whole model for naive, stopped at the layer for per-target)."""
    from torch.utils.flop_counter import FlopCounterMode

    layer, load_image, measurements = common[1], common[3], common[4]
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        if args.child_method == "fast":
            discrepancy_maps(*common, method="fast", progress=False)
        else:
            image = load_image(int(measurements.image[0]))[None]
            with LayerTrace(module, [layer], stop=args.child_method == "per_target") as trace:
                trace(image)
    flops = counter.get_total_flops()
    if args.child_method != "fast":
        flops *= total * (positions + 1)
    return float(flops)


def naive_sample(module, layer, geometry, load_image, measurements, patch, config, corners, limit):
    """The naive method's loop (a copy with the occluder pasted, whole-model forward) on the first
    ``limit`` positions of every measurement, for extrapolation."""
    from dissect.rf.occlusion import occlude

    positions = [(int(y), int(x)) for y in corners for x in corners][:limit]
    grids = np.zeros((len(measurements), len(positions)), dtype=np.float32)
    with torch.inference_mode(), LayerTrace(module, [layer]) as trace:
        for m in range(len(measurements)):
            image = load_image(int(measurements.image[m]))
            unit, y, x = int(measurements.unit[m]), int(measurements.y[m]), int(measurements.x[m])
            base = trace(image[None])[layer][0, unit]
            for start in range(0, len(positions), config.batch_size):
                chunk = positions[start : start + config.batch_size]
                batch = torch.stack([occlude(image, patch, py, px) for py, px in chunk])
                maps = trace(batch)[layer][:, unit]
                grids[m, start : start + len(chunk)] = (maps[:, y, x] - base[y, x]).abs().numpy()
    return grids


#: glibc's mmap threshold in the children (unless set): blocks from 64 KiB up are returned to
#: the system when freed, so a peak is the memory in use, not the allocator's slack (which
#: otherwise flatters whichever method allocates in fewer, larger steps).
MMAP_THRESHOLD = os.environ.get("MALLOC_MMAP_THRESHOLD_", "65536")


def run_child(args, layer: str, method: str) -> dict:
    """Run :func:`child` for one method in a fresh Python process."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--child-method", method,
            "--child-layer", layer, "--directory", args.directory] + args.passthrough  # fmt: skip
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise SystemExit(f"{method} on {layer} failed:\n{done.stdout}\n{done.stderr}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="scene-cnn")
    parser.add_argument("--data", default="synthetic:60")
    parser.add_argument("--layers", default="conv2,conv5", help="comma-separated layers")
    parser.add_argument("--units", default="all", help="units measured per layer: all, or N")
    parser.add_argument("--top", type=int, default=20, help="top images per unit (20)")
    parser.add_argument(
        "--timed", type=int, default=6, help="measurements the slow loops run on (6)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per child (1)")
    parser.add_argument("--occluder", type=int, default=11)
    parser.add_argument("--stride", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--paper", action="store_true", help="the paper's setting (see above)")
    parser.add_argument("--sample", type=int, default=2, help="--paper: batches timed (2)")
    parser.add_argument("--child-method", help=argparse.SUPPRESS)
    parser.add_argument("--child-layer", help=argparse.SUPPRESS)
    parser.add_argument("--directory", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.paper:
        defaults = {"model": "scene-cnn", "data": "synthetic:60", "layers": "conv2,conv5",
                    "units": "all", "top": 20}  # fmt: skip
        paper = {"model": "alexnet-conv", "data": "synthetic:60", "layers": "conv5",
                 "units": "4", "top": 10}  # fmt: skip
        for name, value in paper.items():
            if getattr(args, name) == defaults[name]:
                setattr(args, name, value)
    if args.child_method:
        child(args)
        return
    args.passthrough = [
        "--model", args.model, "--data", args.data, "--units", str(args.units), "--top",
        str(args.top), "--timed", str(args.timed), "--occluder", str(args.occluder), "--stride",
        str(args.stride),
        "--batch-size", str(args.batch_size), "--sample", str(args.sample),
        "--threads", str(args.threads),
    ] + (["--paper"] if args.paper else [])  # fmt: skip
    warnings.simplefilter("ignore")
    torch.set_grad_enabled(False)
    loaded, note = pick_model(args.model)
    layers = args.layers.split(",")
    print(f"model: {note}")
    print(f"data: {args.data}")
    print(f"image_size: {loaded.preprocess.image_size}")
    for name in ("top", "occluder", "stride", "batch_size"):
        print(f"{name}: {getattr(args, name)}")
    corners = occluder_corners(loaded.preprocess.image_size, args.occluder, args.stride)
    print(f"occluder_positions: {len(corners) ** 2}")
    print(f"torch_threads: {args.threads}")
    print(f"malloc_mmap_threshold: {MMAP_THRESHOLD}")
    worst = {"speedup_vs_per_target": [], "speedup_vs_naive": [], "memory_vs_naive": []}
    with tempfile.TemporaryDirectory() as out:
        args.directory = out
        source = open_data(args.data)
        run_dissection(loaded, source, out, layers, topk=args.top, batch_size=32, progress=False)
        for layer in layers:
            figures = {method: run_child(args, layer, method) for method in METHODS}
            first = figures["fast"]
            print(f"{layer}_units: {first['units']}")
            print(f"{layer}_unit_images: {first['unit_images']}")
            print(f"{layer}_distinct_images: {first['distinct_images']}")
            per_image = first["unit_images"] / first["distinct_images"]
            print(f"{layer}_measurements_per_image: {per_image:.1f}")
            for method in METHODS:
                f = figures[method]
                print(f"{layer}_{method}_passes: {f['passes']}")
                print(f"{layer}_{method}_cpu_seconds: {f['cpu_seconds']:.2f}")
                print(f"{layer}_{method}_wall_seconds: {f['seconds']:.2f}")
                print(f"{layer}_{method}_peak_mib: {f['peak_mib']:.1f}")
                if f["extrapolated"]:
                    print(f"{layer}_{method}_extrapolated: yes (from {f['ran_passes']} passes)")
            ratios = {
                "speedup_vs_per_target": figures["per_target"]["cpu_seconds"]
                / first["cpu_seconds"],
                "speedup_vs_naive": figures["naive"]["cpu_seconds"] / first["cpu_seconds"],
                "memory_vs_naive": first["peak_mib"] / max(figures["naive"]["peak_mib"], 1e-9),
            }
            fast = np.load(Path(out) / f"{layer}_fast.npy")
            naive = np.load(Path(out) / f"{layer}_naive.npy")
            rows, width = len(naive), min(fast.shape[1], naive.shape[1])
            difference = np.abs(fast[:rows, :width] - naive[:, :width]).max()
            print(f"{layer}_max_abs_diff: {difference:.3g}")
            flops = figures["naive"]["flops"] / max(first["flops"], 1.0)
            print(f"{layer}_flops_vs_naive: {flops:.2f}")
            for name, value in ratios.items():
                print(f"{layer}_{name}: {value:.2f}", flush=True)
                worst[name].append(value)
    print(f"speedup_vs_per_target: {min(worst['speedup_vs_per_target']):.2f}")
    print(f"speedup_vs_naive: {min(worst['speedup_vs_naive']):.2f}")
    print(f"memory_vs_naive: {max(worst['memory_vs_naive']):.2f}")


if __name__ == "__main__":
    main()
