"""Images per second of ``dissect run`` and ``dissect run --iou`` against a bare forward loop, on a
GPU: ResNet-50 at 224 px, batch 256.

The network is torchvision's ResNet-50 with seeded random weights (``torchvision:resnet50:none``:
nothing is downloaded; the speed does not depend on the weights), the data a Broden-format export
of the synthetic world (``dissect data export``; images and concept masks as PNG files, upsampled
to 224 px by the preprocessing), the layers those ``dissect run`` picks by default. Measured, in
wall seconds of this one process (a GPU's work is not counted in CPU seconds):

- ``resident``: the forward alone, on one batch of random images already on the GPU, in
  channels-last memory format (the GPU's ceiling: no loading, no copies);
- ``bare``: a bare ``model(x)`` loop over the images, fed as dissect feeds its pass (the same
  loader, decoding workers, pinned batches, side-stream copies, channels-last); best of two;
- ``run``, ``run_iou`` (``--permutations 0``) and ``run_iou_pvalues`` (the default null): whole
  ``run_dissection`` calls (probe, pass, labelling, writing), and the same less the geometry
  probe (``_without_probe``: a fixed cost of every first run, ``manifest.json``'s
  ``probe_seconds``); ``run_iou_bfloat16``: ``run --iou --dtype bfloat16`` against
  ``bare_bfloat16``.

Prints ``name: value`` lines: ``*_images_per_second`` for each, and ``run_vs_forward``,
``labelled_run_vs_forward``, ``labelled_run_with_pvalues_vs_forward`` (whole calls over the bare
loop; ``_without_probe`` the same less the probe). The geometry cache is off: every run probes, as a
first run does. On a machine without CUDA it runs on the CPU (use a small ``--images``, and
``--no-bfloat16`` where the CPU has no bfloat16 instructions).

    python benchmarks/bench_gpu.py [--images 2048] [--batch-size 256] [--model ...] [--data DIR]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import tempfile
import time
import warnings
from pathlib import Path

import torch

from dissect.block_outputs import model_default_layers
from dissect.datasets import open_data
from dissect.datasets.broden import export_broden
from dissect.device import auto_workers, forward_dtype, pick_device
from dissect.images import make_loader
from dissect.models import load_model
from dissect.on_device import autocast, staged, wants_channels_last
from dissect.streaming import run_dissection


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resident(module, batch_size: int, size, device: torch.device, repeat: int) -> float:
    """Images per second of the forward alone on one batch already on ``device``."""
    images = torch.randn(batch_size, 3, *size, device=device)
    if wants_channels_last(module, device):
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        module(images)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeat):
            module(images)
        synchronize(device)
    return batch_size * repeat / (time.perf_counter() - start)


def bare_loop(loaded, source, batch_size: int, workers: int, device, dtype) -> float:
    """Wall seconds of ``model(x)`` over ``source``, fed as dissect's pass feeds it."""
    channels_last = wants_channels_last(loaded.module, device)
    start = time.perf_counter()
    loader = make_loader(source, loaded.preprocess, range(len(source)), batch_size, workers, device)
    with torch.inference_mode():
        for _, images in staged(loader, device, channels_last):
            with autocast(device, dtype):
                loaded.module(images)
    synchronize(device)
    return time.perf_counter() - start


def dissect_run(loaded, data: str, out: Path, layers, batch_size, workers, device, **options):
    """(wall seconds of the whole call, seconds of its pass, of its probe)."""
    start = time.perf_counter()
    run_dissection(
        loaded,
        data,
        out,
        layers,
        batch_size=batch_size,
        workers=workers,
        device=device,
        progress=False,
        **options,
    )
    wall = time.perf_counter() - start
    manifest = json.loads((out / "manifest.json").read_text())
    return wall, manifest["seconds"], manifest["probe_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="torchvision:resnet50:none")
    parser.add_argument("--images", type=int, default=2048, help="images exported (no --data)")
    parser.add_argument("--data", help="a Broden directory instead of the synthetic export")
    parser.add_argument("--layers", help="comma-separated (default: dissect run's)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", help="decoding processes (default: auto, as dissect run)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeat", type=int, default=20, help="batches of the resident forward")
    parser.add_argument(
        "--bfloat16",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also the bfloat16 forward, loop and run (--no-bfloat16 on a CPU without it)",
    )
    parser.add_argument(
        "--profile", type=int, default=0, help="then profile a run --iou: its N costliest calls"
    )
    args = parser.parse_args()
    os.environ["DISSECT_NO_CACHE"] = "1"  # every run probes, as a first run does
    warnings.simplefilter("ignore")
    device = pick_device(args.device)
    torch.manual_seed(0)
    loaded = load_model(args.model)
    loaded.module.to(device)
    if wants_channels_last(loaded.module, device):  # as dissect's pass does
        loaded.module.to(memory_format=torch.channels_last)
    size = loaded.preprocess.size
    layers = args.layers.split(",") if args.layers else model_default_layers(loaded, size).layers
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        if args.data:
            data = args.data
        else:
            source = open_data(f"synthetic:{args.images}")
            data = str(export_broden(source, tmp / "data", False))
        export_seconds = time.perf_counter() - start
        source = open_data(data)
        images = len(source)
        batches = -(-images // args.batch_size)
        workers = int(args.workers) if args.workers else auto_workers(device, batches)
        float32, bfloat16 = torch.float32, forward_dtype("bfloat16", device)
        if device.type == "cuda":
            print(f"device: {torch.cuda.get_device_name(device)}")
        else:
            print(f"device: {device}")
        print(f"torch: {torch.__version__}; torch_threads: {torch.get_num_threads()}")
        print("load_average: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
        print(f"cpu_cores: {os.cpu_count()}; workers: {workers}")
        print(f"model: {args.model}; size: {size}; batch_size: {args.batch_size}")
        print(f"images: {images}; layers: {','.join(layers)}")
        print(f"export_seconds: {export_seconds:.1f}")
        plain = {"batch_size": args.batch_size, "workers": workers, "device": str(device)}
        rate = resident(loaded.module, args.batch_size, size, device, args.repeat)
        print(f"resident_images_per_second: {rate:.0f}")
        bare = images / bare_loop(loaded, source, args.batch_size, workers, device, float32)
        print(f"bare_images_per_second: {bare:.0f}")
        for name, ratio, options in (
            ("run", "run_vs_forward", {}),
            ("run_iou", "labelled_run_vs_forward", {"iou": True, "permutations": 0}),
            ("run_iou_pvalues", "labelled_run_with_pvalues_vs_forward", {"iou": True}),
        ):
            wall, seconds, probe = dissect_run(loaded, data, tmp / name, layers, **plain, **options)
            print(f"{name}_seconds: wall {wall:.2f} pass {seconds:.2f} probe {probe:.2f}")
            print(f"{name}_images_per_second: {images / wall:.0f}")
            print(f"{ratio}: {bare * wall / images:.2f}")
            print(f"{ratio}_without_probe: {bare * (wall - probe) / images:.2f}")
        if args.profile:
            profiler = cProfile.Profile()
            profiler.runcall(dissect_run, loaded, data, tmp / "profiled", layers, **plain, iou=True)
            stats = pstats.Stats(profiler)
            stats.sort_stats("tottime").print_stats(args.profile)
            stats.sort_stats("cumulative").print_stats(args.profile)
        again = images / bare_loop(loaded, source, args.batch_size, workers, device, float32)
        print(f"bare_again_images_per_second: {again:.0f}")
        if not args.bfloat16:
            return
        with autocast(device, bfloat16):
            rate = resident(loaded.module, args.batch_size, size, device, args.repeat)
        print(f"resident_bfloat16_images_per_second: {rate:.0f}")
        bare = images / bare_loop(loaded, source, args.batch_size, workers, device, bfloat16)
        print(f"bare_bfloat16_images_per_second: {bare:.0f}")
        options = {"iou": True, "permutations": 0, "dtype": "bfloat16"}
        wall, _, probe = dissect_run(loaded, data, tmp / "bfloat16", layers, **plain, **options)
        print(f"run_iou_bfloat16_images_per_second: {images / wall:.0f}")
        print(f"labelled_run_vs_forward_bfloat16: {bare * wall / images:.2f}")
        print(
            f"labelled_run_vs_forward_bfloat16_without_probe: {bare * (wall - probe) / images:.2f}"
        )


if __name__ == "__main__":
    main()
