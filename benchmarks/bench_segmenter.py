"""Labels from a segmenter's predicted masks vs labels from the true masks (the error bar).

On the built-in world, where every pixel's object, part, material and colour are known:
``dissect run scene-cnn synthetic:N:SEED --iou`` with the true masks, and the same run with
masks predicted by ``world-fcn`` (``--segmenter``; the true masks unused). Per layer:

- ``label_agreement``: among units that are detectors (best IoU >= 0.04) under either set of
  masks, the share whose best concept is the same;
- ``best_iou_correlation``: Pearson correlation of the units' best IoU under the two;
- ``iou_correlation``: of the whole unit x concept IoU tables (concepts both know);
- ``detectors_gained`` / ``detectors_lost``: detectors only under predicted / true masks.

Then the agreement curve: the same on ``--curve-layer`` with each of ``--checkpoints`` (weaker
segmenters, e.g. the recipe's epoch 1 and 2 weights from ``--keep-epochs``), beside the
segmenter's mean IoU (objects and parts) on the same images. And the cost: CPU seconds of the
pass with ``--segmenter`` over the pass with the true masks. With ``--permutations P`` (19), the
curve layer is labelled again by ``dissect autolabel`` with p-values under both sets of masks:
``significant_true`` / ``significant_predicted``, the detectors with p <= 0.05 under each.

    OMP_NUM_THREADS=1 python benchmarks/bench_segmenter.py [--images 300] [--checkpoints a.pt,b.pt]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dissect.config import DetectorRule
from dissect.datasets.synthetic import SyntheticWorld
from dissect.iou import autolabel
from dissect.labels import read_labels
from dissect.models import load_model
from dissect.segmenter import PredictedSource, evaluate_segmenter
from dissect.streaming import run_dissection

MIN_IOU = DetectorRule.min_iou


def dissect_once(source, out: Path, layers: list[str], batch: int) -> float:
    """CPU seconds of one ``dissect run --iou`` of scene-cnn over ``source``."""
    start = time.process_time()
    run_dissection(
        "scene-cnn", source, out, layers, topk=10, batch_size=batch, device="cpu", progress=False,
        iou=True,
    )
    return time.process_time() - start


def iou_table(directory: Path, layer: str) -> pd.DataFrame:
    """Units x (category, name) IoU of one layer."""
    concepts = pd.read_csv(directory / "iou" / "concepts.csv", keep_default_na=False)
    iou = np.load(directory / "iou" / f"{layer}.npz")["iou"]
    return pd.DataFrame(iou, columns=pd.MultiIndex.from_frame(concepts[["category", "name"]]))


def compare(true_dir: Path, pred_dir: Path, layer: str) -> dict:
    """Agreement figures of one layer."""
    true, pred = read_labels(true_dir, "iou"), read_labels(pred_dir, "iou")
    true, pred = (t[t["layer"] == layer].set_index("unit") for t in (true, pred))
    true_hit, pred_hit = true["iou"] >= MIN_IOU, pred["iou"] >= MIN_IOU
    either = true_hit | pred_hit
    same = (true["label"] == pred["label"]) & (true["concept_category"] == pred["concept_category"])
    a, b = iou_table(true_dir, layer), iou_table(pred_dir, layer)
    shared = [column for column in b.columns if column in a.columns]
    return {
        "label_agreement": float(same[either].mean()) if either.any() else float("nan"),
        "detectors_true": int(true_hit.sum()),
        "detectors_gained": int((pred_hit & ~true_hit).sum()),
        "detectors_lost": int((true_hit & ~pred_hit).sum()),
        "best_iou_correlation": float(np.corrcoef(true["iou"], pred["iou"])[0, 1]),
        "iou_correlation": float(
            np.corrcoef(a[shared].to_numpy().ravel(), b[shared].to_numpy().ravel())[0, 1]
        ),
    }


def significance(true_dir: Path, pred_dir: Path, world, predicted, args) -> None:
    """p-values of the curve layer's labels under the true and the predicted masks."""
    layer = [args.curve_layer]
    options = {"batch_size": args.batch_size, "device": "cpu", "progress": False}
    true = autolabel(true_dir, layer, source=world, permutations=args.permutations, **options)
    pred = autolabel(pred_dir, layer, source=predicted, permutations=args.permutations, **options)
    for name, table in (("true", true), ("predicted", pred)):
        hits = (table["iou"] >= MIN_IOU) & (table["p_value"] <= 0.05)
        print(f"{args.curve_layer}.significant_{name}: {int(hits.sum())} of {len(table)} units")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1, help="world seed (held out from training)")
    parser.add_argument("--layers", default="conv1,conv3,conv5,pool5")
    parser.add_argument("--curve-layer", default="conv5")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--permutations", type=int, default=19, help="p-values (0: none)")
    parser.add_argument("--checkpoints", default="", help="weaker world-fcn weights, a,b,...")
    args = parser.parse_args()
    print(f"torch_threads: {torch.get_num_threads()}")
    layers = args.layers.split(",")
    world = SyntheticWorld(args.images, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        true_cpu = dissect_once(world, root / "true", layers, args.batch_size)
        curve = []
        for weights in [None, *filter(None, args.checkpoints.split(","))]:
            segmenter = load_model("world-fcn", weights)
            predicted = PredictedSource(world, segmenter, batch_size=args.batch_size, device="cpu")
            out = root / f"pred{len(curve)}"
            cpu = dissect_once(predicted, out, layers, args.batch_size)
            scores = evaluate_segmenter(predicted, world, progress=False).set_index("category")
            miou = float(scores.loc[["object", "part"], "mean_iou"].mean())
            name = weights or "world-fcn"
            if weights is None:
                ratio = cpu / true_cpu
                print(f"segmenter_over_true_masks_cpu: {ratio:.2f} ({cpu:.1f} vs {true_cpu:.1f})")
                for category, row in scores.iterrows():
                    print(f"world_fcn_miou_{category}: {row['mean_iou']:.3f}")
                for layer in layers:
                    for key, value in compare(root / "true", out, layer).items():
                        shown = f"{value:.3f}" if isinstance(value, float) else value
                        print(f"{layer}.{key}: {shown}")
                if args.permutations:
                    significance(root / "true", out, world, predicted, args)
            agreement = compare(root / "true", out, args.curve_layer)["label_agreement"]
            curve.append((Path(name).name, miou, agreement))
        print(f"curve ({args.curve_layer}): segmenter, object+part mIoU, label_agreement")
        for name, miou, agreement in sorted(curve, key=lambda row: row[1]):
            print(f"  {name}: {miou:.3f} {agreement:.3f}")


if __name__ == "__main__":
    main()
