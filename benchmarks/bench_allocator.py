"""What the ``dissect`` program's malloc setting (``dissect.allocator.keep_freed_memory``)
changes, on bench_iou's ResNet-18 at 224 px.

Each measurement runs in a fresh child process, with glibc's defaults or with the setting
(``keep_freed_memory()`` first, as the program does; neither sees this environment's
``MALLOC_*``, ``GLIBC_TUNABLES`` or ``DISSECT_KEEP_FREED_MEMORY``), alternating, ``--repeat``
times each. A
child pays first-call costs, then times a bare forward loop (``model(x)`` under
``inference_mode``, channels-last as dissect runs a convolutional network) and ``dissect run
--iou --permutations 0`` (``run_dissection``, workers off, every run probing) on the same
images. Prints ``name: value`` lines: torch's thread count, each side's best CPU seconds and
fewest minor page faults, ``forward_cpu_ratio`` and ``run_iou_cpu_ratio`` (kept / defaults:
below 1 is faster), each child's peak resident memory and ``memory_ratio`` (kept / defaults).

    OMP_NUM_THREADS=1 python benchmarks/bench_allocator.py [--images 192] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

BENCH = Path(__file__).resolve()
sys.path.insert(0, str(BENCH.parent))


def child(data: str, batch_size: int, kept: bool) -> None:
    """Time both sides in this process; print them as one JSON line."""
    from dissect.allocator import keep_freed_memory

    if kept and not keep_freed_memory():
        raise SystemExit("keep_freed_memory() changed nothing here (not glibc?)")
    import bench_iou

    layers = bench_iou.LAYERS.split(",")
    bench_iou.warm_up(layers)
    found = {}
    with tempfile.TemporaryDirectory() as out:
        sides = {
            "forward": lambda: bench_iou.bare_loop(data, batch_size, channels_last=True),
            "run_iou": lambda: bench_iou.ours(data, Path(out), layers, batch_size),
        }
        for name, side in sides.items():
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            cpu = side()[1]
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
            found[name] = {"cpu": cpu, "faults": faults}
    found["peak_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(found))


def measure(data: str, batch_size: int, kept: bool) -> dict:
    unset = ("MALLOC_", "GLIBC_TUNABLES", "DISSECT_KEEP_FREED_MEMORY")
    env = {name: value for name, value in os.environ.items() if not name.startswith(unset)}
    env["DISSECT_NO_CACHE"] = "1"
    command = [sys.executable, str(BENCH), "--child", data, str(batch_size), str(int(kept))]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    if args.child:
        child(args.child[0], int(args.child[1]), args.child[2] == "1")
        return
    import torch

    from dissect.datasets import open_data
    from dissect.datasets.broden import export_broden

    with tempfile.TemporaryDirectory() as tmp:
        data = str(export_broden(open_data(f"synthetic:{args.images}"), Path(tmp) / "data", False))
        runs = {False: [], True: []}
        for _ in range(args.repeat):
            for kept in runs:
                runs[kept].append(measure(data, args.batch_size, kept))
    print(f"torch_threads: {torch.get_num_threads()}")
    print(f"images: {args.images}")
    print("load_average: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    best = {}
    for kept, name in ((False, "defaults"), (True, "kept")):
        for side in ("forward", "run_iou"):
            best[kept, side] = min(run[side]["cpu"] for run in runs[kept])
            faults = min(run[side]["faults"] for run in runs[kept])
            print(f"{side}_cpu_seconds_{name}: {best[kept, side]:.2f} (minor faults {faults})")
        best[kept] = max(run["peak_kib"] for run in runs[kept]) / 1024
        print(f"peak_rss_mb_{name}: {best[kept]:.0f}")
    print(f"forward_cpu_ratio: {best[True, 'forward'] / best[False, 'forward']:.3f}")
    print(f"run_iou_cpu_ratio: {best[True, 'run_iou'] / best[False, 'run_iou']:.3f}")
    print(f"memory_ratio: {best[True] / best[False]:.3f}")


if __name__ == "__main__":
    main()
