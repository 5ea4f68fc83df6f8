"""Scale of ``dissect run``: peak memory for N vs 10N images, and 2 processes vs 1 (torchrun).

Prints ``name: value`` lines; the ratios compare settings measured in this one run.

- ``memory_ratio``: peak resident memory (``ru_maxrss`` of a fresh child process running
  ``dissect run``) on 10N images over that on N images. The pass keeps only per-unit statistics,
  so it should stay near 1 (<= 1.2).
- ``throughput_ratio``: images/s of ``torchrun --nproc_per_node=2 -m dissect run`` over a
  one-process run on the same 10N images, from each run's pass time (``seconds`` in the
  manifest, the slowest rank's), with one torch thread per process (``OMP_NUM_THREADS=1``) so
  that two processes compete fairly for the cores. ``wall_ratio`` is the same with the whole
  command's wall time, start-up included.

    python benchmarks/bench_scale.py [--images 200] [--image-size 112] [--model MODEL]

MODEL defaults to the built-in ``scene-cnn`` when it loads (with its trained weights), else the
small stand-in network defined here; images are ``synthetic:N`` when the built-in world exists,
else a generated folder of random images.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from dissect.errors import DissectError
from dissect.models import load_model

HERE = Path(__file__).resolve()
TORCHRUN = Path(sys.executable).with_name("torchrun")
# Run ``dissect run`` in this child and report its own peak resident memory (KiB on Linux).
MEASURE = (
    "import resource, sys; from dissect.cli import main; status = main(sys.argv[1:]); "
    "print('maxrss_kib:', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(status)"
)


def stand_in() -> nn.Module:
    """A small seeded CNN (three conv layers) for when no built-in model exists."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 5, stride=2, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1),
        nn.ReLU(),
    )


def scene_cnn_missing() -> bool:
    """True unless the built-in scene CNN loads (it needs its trained weights file)."""
    try:
        load_model("scene-cnn")
    except DissectError:
        return True
    return False


def image_folder(root: Path, count: int) -> str:
    """``count`` random 96x96 PNG images under ``root``."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"{i:06d}.png")
    return str(root)


def dissect_run(argv: list[str], env: dict[str, str], processes: int = 0) -> dict:
    """Run ``dissect run`` in a child (``processes`` > 0: under torchrun); return its figures."""
    if processes:
        command = [str(TORCHRUN), "--standalone", f"--nproc_per_node={processes}"]
        command += ["-m", "dissect", *argv]
    else:
        command = [sys.executable, "-c", MEASURE, *argv]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    out = Path(argv[argv.index("--out") + 1])
    manifest = json.loads((out / "manifest.json").read_text())
    figures = {"wall": wall, "seconds": manifest["seconds"], "images": manifest["n_images"]}
    for line in done.stdout.splitlines():
        if line.startswith("maxrss_kib:"):
            figures["maxrss_mib"] = int(line.split()[1]) / 1024
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images", type=int, default=200, help="N, several batches (the large setting is 10N)"
    )
    parser.add_argument("--model", help="MODEL spec (default scene-cnn, else the stand-in)")
    parser.add_argument("--layers", help="comma-separated (default: every conv and pool layer)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, help="input side (default: the model's own)")
    parser.add_argument(
        "--data-kind", choices=["auto", "synthetic", "folder"], default="auto",
        help="synthetic:N when the built-in world exists (auto), or generated image folders",
    )  # fmt: skip
    args = parser.parse_args()
    model = args.model or (f"{HERE}:stand_in" if scene_cnn_missing() else "scene-cnn")
    kind = args.data_kind
    if kind == "auto":
        kind = (
            "synthetic"
            if (HERE.parents[1] / "dissect/datasets/synthetic.py").is_file()
            else "folder"
        )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = {}
        for count in (args.images, 10 * args.images):
            data[count] = (
                f"synthetic:{count}"
                if kind == "synthetic"
                else image_folder(tmp / f"d{count}", count)
            )

        def argv(count: int, out: str) -> list[str]:
            extra = ["--layers", args.layers] if args.layers else []
            extra += ["--image-size", str(args.image_size)] if args.image_size else []
            return [
                "run", model, data[count], "--out", str(tmp / out), "--device", "cpu",
                "--batch-size", str(args.batch_size), *extra,
            ]  # fmt: skip

        small = dissect_run(argv(args.images, "small"), env)
        large = dissect_run(argv(10 * args.images, "large"), env)
        one = dissect_run(argv(10 * args.images, "one"), env, processes=1)
        two = dissect_run(argv(10 * args.images, "two"), env, processes=2)
    print(f"model: {model}")
    print(f"data: {kind}")
    print(f"cpu_cores: {os.cpu_count()}")
    print("torch_threads_per_process: 1")
    print(f"images_small: {small['images']}")
    print(f"images_large: {large['images']}")
    print(f"peak_rss_small_mib: {small['maxrss_mib']:.1f}")
    print(f"peak_rss_large_mib: {large['maxrss_mib']:.1f}")
    print(f"memory_ratio: {large['maxrss_mib'] / small['maxrss_mib']:.3f}")
    print(f"throughput_1proc_img_s: {one['images'] / one['seconds']:.1f}")
    print(f"throughput_2proc_img_s: {two['images'] / two['seconds']:.1f}")
    print(f"throughput_ratio: {one['seconds'] / two['seconds']:.3f}")
    print(f"wall_ratio: {one['wall'] / two['wall']:.3f}")


if __name__ == "__main__":
    main()
