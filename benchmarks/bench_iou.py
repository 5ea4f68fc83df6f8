"""Dissection + IoU labelling against a NetDissect-Lite-style baseline, on a ResNet-18 at 224 px.

The data is a Broden-format export of the synthetic world (``dissect data export``), resized to
224 px by the preprocessing; the network a ResNet-18-shaped one with seeded random weights (no
torchvision). Both sides label the same layers (default ``layer2,layer3,layer4``, the last block
included) on the same images.

- ours: the single pass ``run_dissection(..., iou=True, permutations=0)`` (``dissect run --iou
  --permutations 0``: top-K, threshold sketch and IoU labels in one pass over the data, without
  the permutation null, which the baseline lacks too), timed as a whole (loading, probing,
  writing included); a plain ``run_dissection`` (no labels) is timed too, before it, for
  ``iou_vs_run``, and ``dissect run --iou`` with its default null (p-, z- and q-values of every
  label counted in the same pass) after it;
- the floor: a bare forward loop (``model(x)`` under ``inference_mode``) over the same images,
  with the same loader and batch size, timed before and after ours (the smaller is used); and
  the same loop in channels-last memory format, as dissect runs a convolutional network (it
  prints ``labelled_run_vs_channels_last_forward`` against it);
- baseline, as NetDissect-Lite does it: one pass keeping the features of every image (float64,
  as its memmaps), the exact per-unit quantile over all of them, then a second pass reading the
  concept masks, upsampling every unit's map of every image with a plain bilinear resize
  (``resize``; cell ``i`` lands at ``stride * i + (stride - 1) / 2``) and tallying intersections
  and unions per image. Run a second time with our stride/offset alignment (``aligned``) its
  labels must equal ours.

Prints ``name: value`` lines, ratios of CPU seconds of this one process, which decodes the images
itself (``workers=0``; the machine may be shared; wall seconds are printed beside them, and the
load average; first-call costs are paid before any clock starts; the system part of ours' and
the baseline's CPU seconds, mostly page faults, is printed beside them: it moves with the
machine's memory more than computing does): ``labelled_run_vs_forward``
(ours, the whole call, over the bare loop), ``labelled_run_with_pvalues_vs_forward`` (the same with
the null), each also ``_without_probe``, ``speedup_vs_baseline`` (baseline ``resize`` / ours, whole
calls), ``speedup_vs_baseline_without_probe`` (ours less its geometry probe, a fixed cost every run
pays, timed inside the call), ``label_agreement`` (units whose best concept is the same as ours,
baseline ``aligned``), ``label_agreement_resize``, ``memory_ratio`` (peak resident memory, VmHWM,
of ours in a fresh process on 4N vs N images; ``memory_ratio_after_probe`` the same once the probe
has returned), ``iou_vs_run`` (throughput of the labelling, images / the CPU seconds ``--iou`` adds
to a run, over that of the plain run; both without their probes, whose cost varies by seconds
between calls: >= 1 when labelling costs no more than the run itself) and ``torch_threads``. Every
call probes the geometry (the geometry cache is turned off, so that each figure holds the probe, as
a first run's does). Every side runs under the ``dissect`` program's malloc setting (freed memory
kept for the next batch, ``dissect.allocator``; ``--glibc-defaults``: glibc's own), so that no
side pays page faults the others do not (``bench_allocator.py`` measures the setting itself).
The start-up split of a whole ``dissect run`` is ``bench_startup.py``'s.

    OMP_NUM_THREADS=1 python benchmarks/bench_iou.py [--images 192] [--memory-images 32]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BENCH = Path(__file__).resolve()
LAYERS = "layer2,layer3,layer4"


class BasicBlock(nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.downsample = None
        if stride != 1 or inputs != outputs:
            self.downsample = nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    """torchvision's resnet18 layout (names and shapes), written out."""

    def __init__(self, classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = [64, 128, 256, 512]
        blocks, inputs = [], 64
        for number, width in enumerate(widths):
            stride = 1 if number == 0 else 2
            blocks.append(
                nn.Sequential(BasicBlock(inputs, width, stride), BasicBlock(width, width, 1))
            )
            inputs = width
        self.layer1, self.layer2, self.layer3, self.layer4 = blocks
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def resnet18() -> nn.Module:
    """Seeded random weights; batch-norm statistics perturbed so units differ."""
    torch.manual_seed(0)
    model = ResNet18()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 2)
    return model.eval()


def loaded_model():
    from dissect.images import Preprocess
    from dissect.models import LoadedModel

    return LoadedModel(resnet18(), f"{BENCH}:resnet18", preprocess=Preprocess(224))


class Clock:
    """Wall and CPU seconds of this process since it was made (CPU: less noisy on a shared box)."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def ours(
    data: str, out: Path, layers: list[str], batch_size: int, iou: bool = True, permutations=0
):
    """``run_dissection``, with IoU labels (and ``permutations`` of the null) in the same pass
    or not: (wall, CPU) seconds of the whole call and CPU seconds of its geometry probe (a fixed
    cost, which varies by seconds from one call to the next)."""
    import dissect.streaming

    probe, spent = dissect.streaming.layer_geometry, []

    def timed(*args):
        clock = Clock()
        try:
            return probe(*args)
        finally:
            spent.append(clock.read()[1])

    loaded = loaded_model()
    dissect.streaming.layer_geometry = timed
    try:
        clock = Clock()
        dissect.streaming.run_dissection(loaded, data, out, layers, batch_size=batch_size,
                                         device="cpu", progress=False, iou=iou, workers=0,
                                         permutations=permutations)  # fmt: skip
        return (*clock.read(), sum(spent))
    finally:
        dissect.streaming.layer_geometry = probe


def bare_loop(data: str, batch_size: int, channels_last: bool = False) -> tuple[float, float]:
    """(wall, CPU) seconds of the same loader feeding ``model(x)`` with nothing else (in
    channels-last memory format, as dissect runs a convolutional network, if asked)."""
    from dissect.datasets import open_data
    from dissect.images import make_loader

    clock = Clock()
    loaded, source = loaded_model(), open_data(data)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    module = loaded.module.to(memory_format=layout)
    loader = make_loader(source, loaded.preprocess, range(len(source)), batch_size)
    with torch.inference_mode():
        for batch in loader:
            module(batch.images.contiguous(memory_format=layout))
    return clock.read()


def baseline(data: str, layers: list[str], batch_size: int, quantile: float, aligned: bool,
             features: dict | None = None) -> tuple[tuple[float, float], dict, dict]:  # fmt: skip
    """NetDissect-Lite's two passes; returns ((wall, CPU) seconds, {layer: IoU}, features)."""
    from dissect.datasets import open_data
    from dissect.geometry import layer_geometry
    from dissect.hooks import LayerTrace
    from dissect.images import make_loader
    from dissect.iou.concepts import ConceptIndex
    from dissect.upsample import upsample_maps

    clock = Clock()
    loaded = loaded_model()
    source, preprocess, size = open_data(data), loaded.preprocess, loaded.preprocess.image_size
    geometry = layer_geometry(loaded.module, layers, size) if aligned else None
    if features is None:  # pass 1: every feature map of every image, as float64
        features = {layer: [] for layer in layers}
        loader = make_loader(source, preprocess, range(len(source)), batch_size)
        with torch.inference_mode(), LayerTrace(loaded.module, layers, stop=True) as trace:
            for batch in loader:
                outputs = trace(batch.images)
                for layer in layers:
                    features[layer].append(outputs[layer].double().numpy())
        features = {layer: np.concatenate(maps) for layer, maps in features.items()}
    # Exact quantile: the value with a `quantile` fraction of each unit's values above it.
    thresholds = {}
    for layer, maps in features.items():
        values = maps.transpose(1, 0, 2, 3).reshape(maps.shape[1], -1)
        rank = int(quantile * values.shape[1])
        thresholds[layer] = -np.partition(-values, rank, axis=1)[:, rank]
    # Pass 2: concept masks, per-image upsampling, tally.
    index = ConceptIndex(source.concepts)
    concepts, categories = len(index), len(index.categories)
    counts = {
        layer: (np.zeros((maps.shape[1], concepts)), np.zeros((maps.shape[1], categories)))
        for layer, maps in features.items()
    }
    concept_area = np.zeros(concepts)
    for image in range(len(source)):
        labels = index.image_concepts(source.segmentation(image), preprocess)
        pixel, whole, present = labels.pixel.numpy(), labels.image.numpy(), labels.present.numpy()
        concept_area += np.bincount(pixel[pixel >= 0], minlength=concepts)
        concept_area[whole] += size * size
        for layer, maps in features.items():
            unit_maps = torch.from_numpy(maps[image]).float()[None]
            if aligned:
                up = upsample_maps(unit_maps, geometry[layer], (size, size))[0]
            else:
                up = F.interpolate(unit_maps, (size, size), mode="bilinear", align_corners=False)[0]
            masks = up.numpy().reshape(len(up), -1) > thresholds[layer][:, None].astype(np.float32)
            inter, unit_area = counts[layer]
            area = masks.sum(1)
            unit_area[:, present] += area[:, None]
            inter[:, whole] += area[:, None]
            unit, where = np.nonzero(masks)
            for label_map in pixel:
                columns = label_map[where]
                keep = columns >= 0
                keys = unit[keep] * concepts + columns[keep]
                inter += np.bincount(keys, minlength=inter.size).reshape(inter.shape)
    ious = {}
    for layer, (inter, unit_area) in counts.items():
        union = unit_area[:, index.category_of] + concept_area - inter
        ious[layer] = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return clock.read(), ious, features


def agreement(out: Path, ious: dict) -> float:
    from dissect.directory import layer_file_name

    same = total = 0
    for layer, iou in ious.items():
        mine = np.load(out / "iou" / f"{layer_file_name(layer)}.npz")["iou"]
        same += int((mine.argmax(1) == iou.argmax(1)).sum())
        total += len(iou)
    return same / total


def _peak_kib() -> int:
    """Peak resident memory of this process (VmHWM: unlike ru_maxrss, not inherited from the
    parent that started it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status (not Linux?)")


def peak_memory(data: str, layers: str, batch_size: int) -> tuple[int, int]:
    """Peak resident memory (bytes) of a fresh process running ours on ``data``: over the whole
    run, and after the geometry probe (a fixed cost that can set the peak by itself)."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, str(BENCH), "--child", data, out, layers, str(batch_size)]
        done = subprocess.run(command, check=True, capture_output=True, text=True)
    whole, after = done.stdout.strip().splitlines()[-1].split()
    return int(whole) * 1024, int(after) * 1024


def child(data: str, out: str, layers: str, batch_size: int) -> None:
    """Ours in this (fresh) process; print the peak resident memory in KiB, over the whole run
    and after the probe (the high-water mark is reset when the probe returns)."""
    import dissect.streaming

    probe, peaks = dissect.streaming.layer_geometry, []

    def probed(*args):
        geometry = probe(*args)
        peaks.append(_peak_kib())
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return geometry

    dissect.streaming.layer_geometry = probed
    ours(data, Path(out), layers.split(","), batch_size)
    print(max(peaks[0], _peak_kib()), _peak_kib())


def warm_up(layers: list[str]) -> None:
    """Pay first-call costs (lazy imports, kernel set-up) before any clock starts."""
    import dissect.iou.samepass  # noqa: F401
    from dissect.geometry import layer_geometry

    module = resnet18()
    layer_geometry(module, layers, 64)
    with torch.inference_mode():
        module(torch.zeros(2, 3, 224, 224))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=192, help="images of the speed comparison")
    parser.add_argument("--memory-images", type=int, default=32, help="N of memory N vs 4N")
    parser.add_argument("--layers", default=LAYERS)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--permutations", type=int, default=19, help="P of the null run")
    parser.add_argument(
        "--glibc-defaults", action="store_true", help="glibc's malloc, not the program's setting"
    )
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    from dissect.allocator import SWITCH, keep_freed_memory

    if args.glibc_defaults:
        os.environ[SWITCH] = "0"  # children too
    kept = keep_freed_memory()
    os.environ["DISSECT_NO_CACHE"] = "1"  # every run probes (children too), as a first run does
    if args.child:
        data, out, layers, batch_size = args.child
        child(data, out, layers, int(batch_size))
        return
    from dissect.datasets import open_data
    from dissect.datasets.broden import export_broden

    layers = args.layers.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = str(export_broden(open_data(f"synthetic:{args.images}"), tmp / "data", False))
        warm_up(layers)
        bare = [bare_loop(data, args.batch_size)]
        run_wall, run_cpu, run_probe = ours(data, tmp / "plain", layers, args.batch_size, False)
        system = os.times().system
        wall, cpu, probe_cpu = ours(data, tmp / "ours", layers, args.batch_size, iou=True)
        ours_system = os.times().system - system
        null = ours(data, tmp / "null", layers, args.batch_size, True, args.permutations)
        bare.append(bare_loop(data, args.batch_size))
        bare_wall, bare_cpu = min(bare, key=lambda seconds: seconds[1])
        nhwc_wall, nhwc_cpu = bare_loop(data, args.batch_size, channels_last=True)
        system = os.times().system
        (plain_wall, plain_cpu), plain_iou, features = baseline(
            data, layers, args.batch_size, 0.005, False
        )
        baseline_system = os.times().system - system
        _, aligned_iou, _ = baseline(data, layers, args.batch_size, 0.005, True, features)
        print("ours: one pass, run_dissection(iou=True) (dissect run --iou); ratios of CPU seconds")
        print(f"images: {args.images}")
        print(f"layers: {args.layers}")
        print(f"torch_threads: {torch.get_num_threads()}")
        print(f"malloc: {'freed memory kept (the dissect program)' if kept else 'glibc defaults'}")
        print("load_average: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
        print(f"bare_forward_seconds: wall {bare_wall:.2f} cpu {bare_cpu:.2f}")
        seconds = f"wall {null[0]:.2f} cpu {null[1]:.2f} (probe cpu {null[2]:.2f})"
        print(f"ours_run_iou_pvalues_seconds: {seconds}, permutations {args.permutations}")
        print(f"bare_forward_channels_last_seconds: wall {nhwc_wall:.2f} cpu {nhwc_cpu:.2f}")
        print(f"labelled_run_vs_forward: {cpu / bare_cpu:.2f}")
        print(f"labelled_run_vs_channels_last_forward: {cpu / nhwc_cpu:.2f}")
        print(f"labelled_run_with_pvalues_vs_forward: {null[1] / bare_cpu:.2f}")
        print(f"labelled_run_vs_forward_without_probe: {(cpu - probe_cpu) / bare_cpu:.2f}")
        without = (null[1] - null[2]) / bare_cpu
        print(f"labelled_run_with_pvalues_vs_forward_without_probe: {without:.2f}")
        print(
            f"ours_run_seconds: wall {run_wall:.2f} cpu {run_cpu:.2f} (probe cpu {run_probe:.2f})"
        )
        print(f"ours_run_iou_seconds: wall {wall:.2f} cpu {cpu:.2f} (probe cpu {probe_cpu:.2f},"
              f" system {ours_system:.2f})")  # fmt: skip
        print(f"baseline_seconds: wall {plain_wall:.2f} cpu {plain_cpu:.2f}"
              f" (system {baseline_system:.2f})")  # fmt: skip
        print(f"speedup_vs_baseline: {plain_cpu / cpu:.2f}")
        print(f"speedup_vs_baseline_without_probe: {plain_cpu / max(cpu - probe_cpu, 1e-9):.2f}")
        print(f"label_agreement: {agreement(tmp / 'ours', aligned_iou):.4f}")
        print(f"label_agreement_resize: {agreement(tmp / 'ours', plain_iou):.4f}")
        added = (cpu - probe_cpu) - (run_cpu - run_probe)
        print(f"iou_added_cpu_seconds: {added:.2f}")
        print(f"iou_vs_run: {(run_cpu - run_probe) / max(added, 1e-9):.2f}")
        small, large = args.memory_images, 4 * args.memory_images
        memory = {}
        for count in (small, large):
            path = export_broden(open_data(f"synthetic:{count}"), tmp / f"m{count}", False)
            memory[count] = peak_memory(str(path), args.layers, args.batch_size)
        for name, which in (("", 0), ("_after_probe", 1)):
            print(f"peak_rss_mb{name}_{small}: {memory[small][which] / 2**20:.0f}")
            print(f"peak_rss_mb{name}_{large}: {memory[large][which] / 2**20:.0f}")
            print(f"memory_ratio{name}: {memory[large][which] / memory[small][which]:.3f}")


if __name__ == "__main__":
    main()
