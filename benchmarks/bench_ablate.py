"""Ablation by stacked copies after the layer against a whole forward per ablated unit.

For each case, in fresh child processes (CPU seconds, and peak resident memory above what the
process held before the measurement, after a warm-up on 2 images and 2 units that pages in the
code each method runs: ``VmHWM`` reset through ``/proc/self/clear_refs``; glibc's mmap threshold
fixed at 64 KiB, ``MALLOC_MMAP_THRESHOLD_``, so that the peak is memory in use):

- ``naive``: for each ablated unit, a whole forward of every batch with a hook that zeroes the
  unit (Captum's ``FeatureAblation`` over a layer's channels, or netdissect's per-unit loop);
- ``stacked``: what ``dissect ablate`` runs (:func:`dissect.ablate.listener.ablate_batch`): one
  forward per batch with the layer's output kept, then the ablated copies stacked on the batch
  axis through the rest of the network, as many per forward as fit the memory of the input
  batch; the sums of :class:`dissect.ablate.AblationSums` included, and the check against two
  naive forwards on the first batch.

Cases: ``scene-cnn`` ``conv5`` (all 96 units; built-in weights, ``synthetic`` images at 112 px)
and the ResNet-18-shaped network of ``bench_iou.py`` (seeded random weights) at 224 px,
``layer3`` (the first ``--resnet-units`` of its 256 units; the ratio is per unit). Prints
``name: value`` lines: CPU seconds and peak MiB of each method, ``speedup_vs_naive`` (naive CPU
/ stacked CPU), ``memory_vs_naive`` (stacked peak / naive peak), ``max_abs_diff`` of the logits,
and torch's thread count.

    OMP_NUM_THREADS=1 python benchmarks/bench_ablate.py [--images 64] [--resnet-images 16]
        [--resnet-units 32] [--batch-size 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_iou import resnet18  # noqa: E402

from dissect.ablate import AblationConfig, AblationSums  # noqa: E402
from dissect.ablate.copies import StackedAblation  # noqa: E402
from dissect.ablate.listener import ablate_batch  # noqa: E402
from dissect.ablate.sums import BatchScores  # noqa: E402
from dissect.datasets import open_data  # noqa: E402
from dissect.models import load_model  # noqa: E402


def _status(field: str) -> float:
    """A ``VmRSS``/``VmHWM`` line of /proc/self/status, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def case(name: str, args) -> tuple[torch.nn.Module, str, list[torch.Tensor], int]:
    """(network, layer, batches of images, units to ablate) of one case."""
    if name == "scene-cnn":
        loaded = load_model("scene-cnn")
        source = open_data(f"synthetic:{args.images}:3")
        images = torch.stack(
            [loaded.preprocess.tensor(source.read_rgb(i)) for i in range(len(source))]
        )
        module, layer, units = loaded.module, "conv5", 96
    else:
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(args.resnet_images, 3, 224, 224, generator=generator)
        module, layer, units = resnet18(), "layer3", args.resnet_units
    return module.eval(), layer, list(images.split(args.batch_size)), units


def naive(module, layer: str, batches, units: int) -> np.ndarray:
    """(units, images, outputs): a whole forward per unit and batch, the unit zeroed."""
    target = dict(module.named_modules())[layer]
    results = []
    for unit in range(units):

        def hook(_module, _inputs, output, unit=unit):
            output = output.clone()
            output[:, unit] = 0
            return output

        handle = target.register_forward_hook(hook)
        results.append(torch.cat([module(batch) for batch in batches]).numpy())
        handle.remove()
    return np.stack(results)


def stacked(module, layer: str, batches, units: int) -> np.ndarray:
    """The same by ``dissect ablate``'s method, sums included."""
    masks = {layer: torch.eye(units, dtype=torch.bool)}
    channels = None
    config = AblationConfig(groups=(), batch_size=len(batches[0]))
    results = []
    for number, batch in enumerate(batches):
        if channels is None:
            with StackedAblation(module, layer, torch.zeros(1), False) as probe:
                probe.forward(batch[:1])
                channels = probe.kept.shape[1]
            masks[layer] = torch.cat(
                [masks[layer], torch.zeros(units, channels - units, dtype=torch.bool)], 1
            )
            sums = AblationSums(units, 2)
        hook = StackedAblation(module, layer, torch.zeros(channels), False)
        with hook:
            ((base, ablated),) = ablate_batch([hook], masks, batch, config, check=number == 0)
        classes = torch.zeros(len(batch), dtype=torch.int64)
        sums.add(number, BatchScores(base, ablated, classes, torch.tensor([0, 1])))
        results.append(ablated.numpy())
    return np.concatenate(results, axis=1)


def child(args) -> None:
    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    module, layer, batches, units = case(args.child_case, args)
    method = naive if args.child_method == "naive" else stacked
    with torch.inference_mode():  # page in the code both methods run: not what is measured
        method(module, layer, [batches[0][:2]], 2)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current VmRSS
    except OSError:
        pass
    before = _status("VmRSS")
    start, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        outputs = method(module, layer, batches, units)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = _status("VmHWM") - before
    np.save(Path(args.out) / f"{args.child_case}_{args.child_method}.npy", outputs)
    print("RESULT " + json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_mib": peak}))


#: glibc's mmap threshold in the children: fixed, so that freed blocks of 64 KiB or more go back
#: to the system at once and a peak is memory in use, not the allocator's slack (whose size
#: moves from run to run); MALLOC_MMAP_THRESHOLD_ set outside wins.
MMAP_THRESHOLD = os.environ.get("MALLOC_MMAP_THRESHOLD_", "65536")


def run_child(args, name: str, method: str, out: str) -> dict:
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child-case",
        name,
        "--child-method",
        method,
        "--out",
        out,
    ]
    argv += ["--images", str(args.images), "--resnet-images", str(args.resnet_images)]
    argv += ["--resnet-units", str(args.resnet_units), "--batch-size", str(args.batch_size)]
    argv += ["--threads", str(args.threads)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise SystemExit(f"{method} on {name} failed:\n{done.stdout}\n{done.stderr}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="scene-cnn images (64)")
    parser.add_argument("--resnet-images", type=int, default=16, help="ResNet-18 images (16)")
    parser.add_argument("--resnet-units", type=int, default=32, help="layer3 units ablated (32)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per child (1)")
    parser.add_argument("--cases", default="scene-cnn,resnet18")
    parser.add_argument("--child-case", help=argparse.SUPPRESS)
    parser.add_argument("--child-method", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_case:
        child(args)
        return
    import tempfile

    omp = os.environ.get("OMP_NUM_THREADS")
    print(f"torch_threads: {args.threads} per child (OMP_NUM_THREADS={omp})")
    print(f"malloc_mmap_threshold: {MMAP_THRESHOLD}")
    with tempfile.TemporaryDirectory() as out:
        for name in args.cases.split(","):
            figures = {
                method: run_child(args, name, method, out) for method in ("naive", "stacked")
            }
            diff = np.abs(
                np.load(Path(out) / f"{name}_naive.npy")
                - np.load(Path(out) / f"{name}_stacked.npy")
            ).max()
            layer = "conv5" if name == "scene-cnn" else "layer3"
            for method, values in figures.items():
                print(f"{name}.{layer}.{method}_cpu_seconds: {values['cpu_seconds']:.2f}")
                print(f"{name}.{layer}.{method}_wall_seconds: {values['seconds']:.2f}")
                print(f"{name}.{layer}.{method}_peak_mib: {values['peak_mib']:.1f}")
            speedup = figures["naive"]["cpu_seconds"] / figures["stacked"]["cpu_seconds"]
            memory = figures["stacked"]["peak_mib"] / max(figures["naive"]["peak_mib"], 1e-9)
            print(f"{name}.{layer}.speedup_vs_naive: {speedup:.2f}")
            print(f"{name}.{layer}.memory_vs_naive: {memory:.2f}")
            print(f"{name}.{layer}.max_abs_diff: {diff:.2e}")


if __name__ == "__main__":
    main()
