"""Overhead of ``dissect run`` over a bare ``model(x)`` loop on the same images and batch size,
with the images decoded in the main process (``--workers 0``) and in worker processes.

Prints ``name: value`` lines: ``overhead_workers_off`` and ``overhead_workers_on`` are the ratios
of each run's wall time to the bare loop's (decoding in the main process), measured in this one
run (best of ``--repeat`` for each, interleaved, so machine noise hits all alike); ``workers`` is
the number of decoding processes of the second run (``--workers auto``'s count, at least 1), and
the machine's load and free cores are printed beside it (workers only pay where cores are free). The
geometry cache is off: every run probes, as a first run does.

    python benchmarks/bench_run.py [--model scene-cnn] [--data synthetic:1024] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings

import torch

from dissect.block_outputs import model_default_layers
from dissect.datasets import open_data
from dissect.device import auto_workers, free_cores, pick_device
from dissect.images import make_loader
from dissect.models import load_model
from dissect.streaming import run_dissection


def bare_loop(module, source, preprocess, batch_size: int, device: torch.device) -> float:
    """Seconds for the same loader (decoding in this process) feeding ``model(x)`` on
    ``device`` with nothing else."""
    start = time.perf_counter()
    loader = make_loader(source, preprocess, range(len(source)), batch_size, 0, device)
    module.to(device)
    with torch.inference_mode():
        for batch in loader:
            module(batch.images.to(device, non_blocking=True))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def dissect_run(loaded, source, layers, batch_size: int, workers: int, device: str) -> float:
    """Seconds for a whole ``dissect run`` (geometry, pass, writing the directory)."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        run_dissection(
            loaded,
            source,
            out,
            layers,
            batch_size=batch_size,
            workers=workers,
            device=device,
            progress=False,
        )
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="scene-cnn")
    parser.add_argument("--data", default="synthetic:1024")
    parser.add_argument(
        "--layers", help="comma-separated (default: dissect run's; scene-cnn: every conv and pool)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="auto", help="where both loops run (auto)")
    parser.add_argument(
        "--workers", type=int, help="decoding processes of the second run (default: auto, >= 1)"
    )
    args = parser.parse_args()
    os.environ["DISSECT_NO_CACHE"] = "1"  # every run probes, as a first run does
    warnings.simplefilter("ignore")
    loaded = load_model(args.model)
    source = open_data(args.data)
    layers = (
        args.layers.split(",")
        if args.layers
        else model_default_layers(loaded, loaded.preprocess.size).layers
    )
    batches = -(-len(source) // args.batch_size)
    device = pick_device(args.device)
    auto = auto_workers(device, batches)
    workers = args.workers if args.workers is not None else max(1, auto)
    bare, off, on = [], [], []
    for _ in range(args.repeat):
        bare.append(bare_loop(loaded.module, source, loaded.preprocess, args.batch_size, device))
        off.append(dissect_run(loaded, source, layers, args.batch_size, 0, args.device))
        on.append(dissect_run(loaded, source, layers, args.batch_size, workers, args.device))
    print(f"images: {len(source)}")
    print(f"layers: {len(layers)}")
    print(f"device: {device}")
    print(f"torch_threads: {torch.get_num_threads()}")
    print(f"load_1min: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"free_cores: {free_cores()}")
    print(f"workers_auto: {auto}")
    print(f"workers: {workers}")
    print(f"bare_seconds: {min(bare):.3f}")
    print(f"run_seconds_workers_off: {min(off):.3f}")
    print(f"run_seconds_workers_on: {min(on):.3f}")
    print(f"overhead_workers_off: {min(off) / min(bare):.3f}")
    print(f"overhead_workers_on: {min(on) / min(bare):.3f}")


if __name__ == "__main__":
    main()
