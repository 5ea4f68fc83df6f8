"""Dissection + IoU labelling against a NetDissect-Lite-style baseline, on a ResNet-18 at 224 px.

The data is a Broden-format export of the synthetic world (``dissect data export``), resized to
224 px by the preprocessing; the network a ResNet-18-shaped one with seeded random weights (no
torchvision). Both sides label the same layers (default ``layer2,layer3,layer4``, the last block
included) on the same images.

- ours: ``run_dissection`` (top-K, threshold sketch) then ``autolabel`` (sparse IoU tally,
  without the permutation null, which the baseline lacks too), each timed as a whole (loading,
  probing, writing included);
- baseline, as NetDissect-Lite does it: one pass keeping the features of every image (float64,
  as its memmaps), the exact per-unit quantile over all of them, then a second pass reading the
  concept masks, upsampling every unit's map of every image with a plain bilinear resize
  (``resize``; cell ``i`` lands at ``stride * i + (stride - 1) / 2``) and tallying intersections
  and unions per image. Run a second time with our stride/offset alignment (``aligned``) its
  labels must equal ours.

Prints ``name: value`` lines, ratios measured in this one run:
``speedup_vs_baseline`` (baseline ``resize`` wall time / ours), ``label_agreement`` (units whose
best concept is the same as ours, baseline ``aligned``), ``label_agreement_resize``,
``memory_ratio`` (peak RSS of ours, in a fresh process, on 4N vs N images), ``iou_vs_run``
(images/s of ``autolabel`` over images/s of ``run``, whole calls), and the split of a whole
300-image ``dissect run`` of scene-cnn in a fresh process into interpreter start, imports, the
pass, and the rest (model, data, probing, writing).

    OMP_NUM_THREADS=1 python benchmarks/bench_iou.py [--images 64] [--memory-images 32]
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


def ours(data: str, out: Path, layers: list[str], batch_size: int) -> tuple[float, float]:
    """Wall seconds of ``run_dissection`` and of ``autolabel``."""
    from dissect.iou import autolabel
    from dissect.streaming import run_dissection

    loaded = loaded_model()
    start = time.perf_counter()
    run_dissection(loaded, data, out, layers, batch_size=batch_size, device="cpu", progress=False)
    middle = time.perf_counter()
    autolabel(out, model=loaded, batch_size=batch_size, device="cpu", progress=False,
              permutations=0)  # fmt: skip
    return middle - start, time.perf_counter() - middle


def baseline(data: str, layers: list[str], batch_size: int, quantile: float, aligned: bool,
             features: dict | None = None) -> tuple[float, dict, dict]:  # fmt: skip
    """NetDissect-Lite's two passes; returns (seconds, {layer: (U, C) IoU}, features)."""
    from dissect.datasets import open_data
    from dissect.geometry import layer_geometry
    from dissect.hooks import LayerTrace
    from dissect.images import make_loader
    from dissect.iou.concepts import ConceptIndex
    from dissect.upsample import upsample_maps

    start = time.perf_counter()
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
                up = upsample_maps(unit_maps, geometry[layer], size)[0]
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
    return time.perf_counter() - start, ious, features


def agreement(out: Path, ious: dict) -> float:
    from dissect.dissection import layer_file_name

    same = total = 0
    for layer, iou in ious.items():
        mine = np.load(out / "iou" / f"{layer_file_name(layer)}.npz")["iou"]
        same += int((mine.argmax(1) == iou.argmax(1)).sum())
        total += len(iou)
    return same / total


def peak_memory(data: str, layers: str, batch_size: int) -> int:
    """Peak RSS (bytes) of a fresh process running ours on ``data``."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, str(BENCH), "--child", data, out, layers, str(batch_size)]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
        if status:
            raise RuntimeError(f"child failed: {command}")
    return usage.ru_maxrss * 1024


def startup_split(images: int) -> dict[str, float]:
    """A whole ``dissect run`` of scene-cnn on ``synthetic:images`` in a fresh process, split."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, str(BENCH), "--child-run", str(images), out]
        start = time.perf_counter()
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        wall = time.perf_counter() - start
        inside = json.loads(done.stdout.strip().splitlines()[-1])
        seconds = json.loads((Path(out) / "manifest.json").read_text())["seconds"]
    return {
        "wall": wall,
        "interpreter": wall - inside["imports"] - inside["command"],
        "imports": inside["imports"],
        "pass": seconds,
        "other": inside["command"] - seconds,  # model, data, probing, writing
    }


def child_run(images: int, out: str) -> None:
    """Time the imports and the ``dissect run`` command in this process; print them as JSON."""
    start = time.perf_counter()
    import dissect.streaming  # noqa: F401 (torch, pandas and the rest of the pass)
    from dissect.cli import main as cli

    middle = time.perf_counter()
    cli(["run", "scene-cnn", f"synthetic:{images}", "--out", out, "--device", "cpu"])
    end = time.perf_counter()
    print(json.dumps({"imports": middle - start, "command": end - middle}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="images of the speed comparison")
    parser.add_argument("--memory-images", type=int, default=32, help="N of memory N vs 4N")
    parser.add_argument("--layers", default=LAYERS)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--startup-images", type=int, default=300)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--child-run", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    if args.child_run:
        child_run(int(args.child_run[0]), args.child_run[1])
        return
    if args.child:
        data, out, layers, batch_size = args.child
        ours(data, Path(out), layers.split(","), int(batch_size))
        return
    from dissect.datasets import open_data
    from dissect.datasets.broden import export_broden

    layers = args.layers.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = str(export_broden(open_data(f"synthetic:{args.images}"), tmp / "data", False))
        run_seconds, iou_seconds = ours(data, tmp / "ours", layers, args.batch_size)
        mine = run_seconds + iou_seconds
        plain, plain_iou, features = baseline(data, layers, args.batch_size, 0.005, False)
        _, aligned_iou, _ = baseline(data, layers, args.batch_size, 0.005, True, features)
        print(f"images: {args.images}")
        print(f"layers: {args.layers}")
        print(f"torch_threads: {torch.get_num_threads()}")
        print(f"ours_run_seconds: {run_seconds:.2f}")
        print(f"ours_iou_seconds: {iou_seconds:.2f}")
        print(f"baseline_seconds: {plain:.2f}")
        print(f"speedup_vs_baseline: {plain / mine:.2f}")
        print(f"label_agreement: {agreement(tmp / 'ours', aligned_iou):.4f}")
        print(f"label_agreement_resize: {agreement(tmp / 'ours', plain_iou):.4f}")
        print(f"iou_vs_run: {run_seconds / iou_seconds:.2f}")
        small, large = args.memory_images, 4 * args.memory_images
        memory = {}
        for count in (small, large):
            path = export_broden(open_data(f"synthetic:{count}"), tmp / f"m{count}", False)
            memory[count] = peak_memory(str(path), args.layers, args.batch_size)
        print(f"peak_rss_mb_{small}: {memory[small] / 2**20:.0f}")
        print(f"peak_rss_mb_{large}: {memory[large] / 2**20:.0f}")
        print(f"memory_ratio: {memory[large] / memory[small]:.3f}")
    split = startup_split(args.startup_images)
    for key, value in split.items():
        print(f"run{args.startup_images}_{key}_seconds: {value:.2f}")
    print(f"run{args.startup_images}_startup_fraction: {1 - split['pass'] / split['wall']:.2f}")


if __name__ == "__main__":
    main()
