"""Where a whole ``dissect run`` spends its time before (and after) the pass, first and second run.

Runs ``dissect run MODEL DATA`` twice, each in a fresh interpreter that imports nothing before
its clock starts, with the same model, layers and image size, each into its own new directory,
both with one new, empty geometry cache (``DISSECT_CACHE_DIR`` in a temporary folder, so the
user's cache is neither read nor written): the first run pays for everything, the second shows
what the cache saves. For each run it prints the seconds of every part, wall (``perf_counter``)
and, in brackets, the child's CPU seconds (``process_time``; steadier on a shared machine):

- ``interpreter``: start and exit of the Python interpreter;
- ``torch_import``: ``import torch``;
- ``other_imports``: ``import dissect.cli, dissect.models, dissect.streaming``;
- ``load_model``: loading the model (``dissect.models.load_model``);
- ``default_layers``: choosing the layers (the built-in models name theirs; other models run the
  default rule's forward pass);
- ``open_data``: opening DATA (listing a folder, reading an index);
- ``fingerprint``: the digests of the weights and the image list that key the checkpoint;
- ``probe``: the geometry probe (a cache look-up when cached);
- ``pass``: the pass over the images;
- ``write``: writing the dissection directory;
- ``other``: the rest of the command (argument parsing, the summary line);

then ``total`` (the whole child, as the parent sees it: its wall and CPU seconds) and
``startup_fraction`` (1 - pass / total: the share of the run that is not the pass); at the end
``second_vs_first`` (the second run's total over the first's), then the CPU seconds of opening a
folder of ``--folder-files`` empty image files as DATA (``folder_listing_cpu_seconds``) and
``folder_listing_speedup`` over listing it by ``rglob`` and a ``stat`` per file, as it was done
before. ``torch_threads`` is printed first.

    OMP_NUM_THREADS=1 python benchmarks/bench_startup.py [--images 300] [--model scene-cnn]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: A whole ``dissect run`` in a fresh interpreter; prints the (wall, CPU) seconds of each part as
#: JSON. argv: the ``dissect`` arguments.
CHILD_RUN = """
import time
start = (time.perf_counter(), time.process_time())
import json, sys
import torch
after_torch = (time.perf_counter(), time.process_time())
import dissect.cli, dissect.models, dissect.streaming
imported = (time.perf_counter(), time.process_time())
import dissect.commands.run, dissect.datasets
spent = {}

def timed(module, name, key):
    inner = getattr(module, name)
    def wrapper(*args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return inner(*args, **kwargs)
        finally:
            old = spent.get(key, (0.0, 0.0))
            spent[key] = (old[0] + time.perf_counter() - wall, old[1] + time.process_time() - cpu)
    setattr(module, name, wrapper)

timed(dissect.models, "load_model", "load_model")
timed(dissect.streaming, "load_model", "load_model")
timed(dissect.commands.run, "layers_from_args", "default_layers")
timed(dissect.datasets, "open_data", "open_data")
timed(dissect.streaming, "open_data", "open_data")
timed(dissect.streaming, "run_fingerprint", "fingerprint")
# the probe, or once it is cached, the look-up (which calls layer_geometry on a miss)
cached = hasattr(dissect.streaming, "cached_layer_geometry")
timed(dissect.streaming, "cached_layer_geometry" if cached else "layer_geometry", "probe")
timed(dissect.streaming, "run_pass", "pass")
timed(dissect.streaming, "write_dissection", "write")
program = getattr(dissect.cli, "entry", None)  # what the dissect program runs, where it exists
try:
    status = program(sys.argv[1:]) if program else dissect.cli.main(sys.argv[1:])
except SystemExit as stop:
    status = stop.code
assert status == 0, status
end = (time.perf_counter(), time.process_time())
spent["torch_import"] = [b - a for a, b in zip(start, after_torch)]
spent["other_imports"] = [b - a for a, b in zip(after_torch, imported)]
spent["command"] = [b - a for a, b in zip(imported, end)]
spent["cpu_before_start"], spent["cpu_at_end"] = start[1], end[1]
print(json.dumps(spent))
"""

#: The parts of the split, in the order they are printed (then wall, cpu).
PARTS = (
    "interpreter",
    "torch_import",
    "other_imports",
    "load_model",
    "default_layers",
    "open_data",
    "fingerprint",
    "probe",
    "pass",
    "write",
    "other",
)
#: The parts timed inside the command.
INSIDE = ("load_model", "default_layers", "open_data", "fingerprint", "probe", "pass", "write")


def child_cpu() -> float:
    """CPU seconds (user and system) of the waited-for children of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def startup_split(arguments: list[str], out: Path, env: dict[str, str]) -> dict[str, tuple]:
    """``dissect run`` with ``arguments`` and ``--out out`` in a fresh process: (wall, CPU)
    seconds of each part, of the whole (``total``)."""
    command = [sys.executable, "-c", CHILD_RUN, "run", *arguments, "--out", str(out)]
    command += ["--workers", "0"]  # decoded in the child, whose CPU seconds are split
    cpu, start = child_cpu(), time.perf_counter()
    done = subprocess.run(command, check=False, capture_output=True, text=True, env=env)
    wall, cpu = time.perf_counter() - start, child_cpu() - cpu
    if done.returncode:
        raise SystemExit(f"dissect run failed:\n{done.stderr}")
    inside = json.loads(done.stdout.strip().splitlines()[-1])
    parts = {key: tuple(inside.get(key, (0.0, 0.0))) for key in (*INSIDE, "torch_import")}
    parts["other_imports"], command_time = tuple(inside["other_imports"]), inside["command"]
    parts["other"] = tuple(
        command_time[clock] - sum(parts[key][clock] for key in INSIDE) for clock in (0, 1)
    )
    imports = [parts["torch_import"][clock] + parts["other_imports"][clock] for clock in (0, 1)]
    interpreter_wall = wall - imports[0] - command_time[0]
    interpreter_cpu = inside["cpu_before_start"] + cpu - inside["cpu_at_end"]  # start and exit
    parts["interpreter"] = (interpreter_wall, interpreter_cpu)
    return {**{key: parts[key] for key in PARTS}, "total": (wall, cpu)}


def folder_listing(files: int, root: Path) -> tuple[float, float]:
    """CPU seconds to open a folder of ``files`` empty image files (100 sub-folders, a text file
    in each) as DATA, and those of listing it as ``rglob("*")`` and a ``stat`` per file do (how
    it was listed before)."""
    from dissect.datasets import ImageFolder
    from dissect.images import IMAGE_EXTENSIONS

    for index in range(files):
        folder = root / f"class{index % 100:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"image{index:07d}.jpg").touch()
    for folder in root.iterdir():
        (folder / "notes.txt").touch()
    start = time.process_time()
    ours = ImageFolder(root).paths
    middle = time.process_time()
    found = root.rglob("*")
    before = sorted(
        p.relative_to(root) for p in found if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )
    end = time.process_time()
    assert ours == [path.as_posix() for path in before]
    return middle - start, end - middle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300, help="N of synthetic:N")
    parser.add_argument("--data", help="DATA spec instead of synthetic:N")
    parser.add_argument("--model", default="scene-cnn", help="MODEL spec")
    parser.add_argument("--layers", help="--layers of dissect run (default: the model's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--folder-files", type=int, default=20000, help="files of the folder")
    args = parser.parse_args()
    data = args.data or f"synthetic:{args.images}"
    arguments = [args.model, data, "--device", args.device]
    arguments += ["--layers", args.layers] if args.layers else []
    import torch  # after the arguments: --help stays quick

    print(f"command: dissect run {' '.join(arguments)} --out DIR (twice, one geometry cache)")
    print(f"torch_threads: {torch.get_num_threads()}")
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "DISSECT_CACHE_DIR": str(tmp / "cache")}
        env["XDG_CACHE_HOME"] = str(tmp / "xdg")  # nothing of the user's is read or written
        for name in ("first", "second"):
            runs[name] = startup_split(arguments, tmp / name, env)
    for name, split in runs.items():
        for key, (wall, cpu) in split.items():
            print(f"{name}_{key}_seconds: {wall:.2f} (cpu {cpu:.2f})")
        (wall, cpu), (pass_wall, pass_cpu) = split["total"], split["pass"]
        fraction, fraction_cpu = 1 - pass_wall / wall, 1 - pass_cpu / cpu
        print(f"{name}_startup_fraction: {fraction:.2f} (cpu {fraction_cpu:.2f})")
    first, second = runs["first"]["total"], runs["second"]["total"]
    print(f"second_vs_first: {second[0] / first[0]:.2f} (cpu {second[1] / first[1]:.2f})")
    with tempfile.TemporaryDirectory() as tmp:
        ours, before = folder_listing(args.folder_files, Path(tmp))
    print(f"folder_listing_cpu_seconds: {ours:.3f} ({args.folder_files} files; rglob {before:.3f})")
    print(f"folder_listing_speedup: {before / ours:.1f}")


if __name__ == "__main__":
    main()
