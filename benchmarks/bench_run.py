"""Overhead of ``dissect run`` over a bare ``model(x)`` loop on the same images and batch size.

Prints ``name: value`` lines; ``overhead`` is the ratio of the two wall times measured in this
one run (best of ``--repeat`` for each, interleaved, so machine noise hits both alike). The
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
from dissect.images import make_loader
from dissect.models import load_model
from dissect.streaming import run_dissection


def bare_loop(module, source, preprocess, batch_size: int) -> float:
    """Seconds for the same loader feeding ``model(x)`` with nothing else."""
    start = time.perf_counter()
    loader = make_loader(source, preprocess, range(len(source)), batch_size)
    with torch.inference_mode():
        for batch in loader:
            module(batch.images)
    return time.perf_counter() - start


def dissect_run(loaded, source, layers, batch_size: int) -> float:
    """Seconds for a whole ``dissect run`` (geometry, pass, writing the directory)."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        run_dissection(loaded, source, out, layers, batch_size=batch_size, progress=False)
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
    bare, full = [], []
    for _ in range(args.repeat):
        bare.append(bare_loop(loaded.module, source, loaded.preprocess, args.batch_size))
        full.append(dissect_run(loaded, source, layers, args.batch_size))
    print(f"images: {len(source)}")
    print(f"layers: {len(layers)}")
    print(f"torch_threads: {torch.get_num_threads()}")
    print(f"bare_seconds: {min(bare):.3f}")
    print(f"run_seconds: {min(full):.3f}")
    print(f"overhead: {min(full) / min(bare):.3f}")


if __name__ == "__main__":
    main()
