"""Per architecture family at a realistic size: ``dissect run`` over a bare forward loop, and the
geometry probe's time and peak memory against one forward pass of a batch.

Prints ``name: value`` lines per family (``family.overhead``: wall time of a whole ``dissect run``
-- probe included: the geometry cache is off -- over a bare ``model(x)`` loop on the same
loader; ``family.probe_overhead``:
that run's time over the same run without its geometry probe (the manifest's
``probe_seconds``); ``family.probe_time`` and ``family.probe_memory``: the probe's CPU seconds
and peak resident-memory growth divided by those of one forward pass of one batch, each measured
in a fresh process). The families are ``resnet18`` (torchvision's ResNet-18 layout, written out
in ``bench_iou.py``, layers layer1-4) and those of the conformance suite
(``tests/zoo_models.py``) at ``--width`` channels.

    OMP_NUM_THREADS=1 python benchmarks/bench_zoo.py [--images 1000] [--size 224] [--width 32]
        [--batch-size 50] [--families resnet18,plain,resnet_basic,...]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_iou import resnet18  # noqa: E402
from bench_run import bare_loop  # noqa: E402
from zoo_models import ZOO  # noqa: E402

from dissect.datasets import open_data  # noqa: E402
from dissect.geometry import layer_geometry  # noqa: E402
from dissect.images import Preprocess  # noqa: E402
from dissect.models import LoadedModel  # noqa: E402
from dissect.streaming import run_dissection  # noqa: E402

#: Every family: factory and dissected layers.
FAMILIES = {"resnet18": (resnet18, ("layer1", "layer2", "layer3", "layer4")), **ZOO}


def build(family: str, width: int, size: int) -> torch.nn.Module:
    factory = FAMILIES[family][0]
    if family == "resnet18":
        module = factory()
    else:
        module = factory(width, size) if family == "vit" else factory(width)
    return module.requires_grad_(False)


def _peak_kib() -> int:
    """Peak resident memory of this process (VmHWM: unlike ru_maxrss, not inherited from the
    parent that started it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _measure(task: str, family: str, width: int, size: int, batch: int, queue) -> None:
    """In a fresh process: seconds and peak memory growth (KiB) of one task."""
    torch.set_num_threads(THREADS)
    module = build(family, width, size)
    layers = list(FAMILIES[family][1])
    images = torch.randn(batch, 3, size, size)
    base = _peak_kib()
    start = time.process_time()
    if task == "forward":
        with torch.inference_mode():
            module(images)
    else:
        layer_geometry(module, layers, size)
    queue.put((time.process_time() - start, _peak_kib() - base))


def measure(task: str, family: str, args) -> tuple[float, float]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(
        target=_measure, args=(task, family, args.width, args.size, args.batch_size, queue)
    )
    process.start()
    result = queue.get()
    process.join()
    return result


def dissect_run(loaded, source, layers, batch_size: int) -> tuple[float, float]:
    """Seconds of a whole ``dissect run``, and of its geometry probe."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        d = run_dissection(loaded, source, out, layers, batch_size=batch_size, progress=False,
                           workers=0)  # decoding in this process, as the bare loop  # fmt: skip
        return time.perf_counter() - start, float(d.manifest["probe_seconds"])


THREADS = torch.get_num_threads()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--families", default=",".join(FAMILIES))
    args = parser.parse_args()
    os.environ["DISSECT_NO_CACHE"] = "1"  # every run probes, as a first run does
    warnings.simplefilter("ignore")
    source = open_data(f"synthetic:{args.images}")
    preprocess = Preprocess(args.size)
    print(f"torch_threads: {torch.get_num_threads()}")
    print(f"images: {args.images}")
    print(f"size: {args.size}")
    for family in args.families.split(","):
        module = build(family, args.width, args.size)
        loaded = LoadedModel(module, f"zoo:{family}", preprocess=preprocess)
        layers = list(FAMILIES[family][1])
        bare = bare_loop(module, source, preprocess, args.batch_size, torch.device("cpu"))
        full, probe = dissect_run(loaded, source, layers, args.batch_size)
        forward_s, forward_kib = measure("forward", family, args)
        probe_s, probe_kib = measure("probe", family, args)
        print(f"{family}.layers: {len(layers)}")
        print(f"{family}.overhead: {full / bare:.3f}")
        print(f"{family}.probe_overhead: {full / (full - probe):.3f}")
        print(f"{family}.probe_seconds: {probe_s:.2f}")
        print(f"{family}.probe_time: {probe_s / forward_s:.2f}")
        print(f"{family}.probe_memory: {probe_kib / max(forward_kib, 1):.2f}")
        print(f"{family}.forward_mib: {forward_kib / 1024:.0f}")


if __name__ == "__main__":
    main()
