"""How labels change when the forward runs in bfloat16 (or float16) instead of float32.

Runs ``dissect run MODEL DATA --iou`` twice, ``--dtype float32`` and ``--dtype DTYPE``, and
prints ``name: value`` lines: per layer the share of units whose IoU label is the same, the same
among the float32 run's detectors (IoU at least 0.04), and the median relative change of the
threshold T; then the share over every unit and the ratio of the two passes' CPU seconds
(measured in this one run).

    python benchmarks/bench_dtype.py [--model scene-cnn] [--data synthetic:300] [--dtype bfloat16]
        [--device auto]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd
import torch

from dissect.config import DTYPES, DetectorRule
from dissect.streaming import run_dissection


def dissect(model: str, data: str, out: Path, dtype: str, device: str) -> float:
    """CPU seconds of one ``dissect run --iou`` in ``dtype``."""
    start = time.process_time()
    run_dissection(model, data, out, iou=True, dtype=dtype, device=device, progress=False)
    return time.process_time() - start


def compare(reference: Path, other: Path, min_iou: float) -> pd.DataFrame:
    """Per layer: units, same label, detectors of the reference, same label among them, median
    relative change of T."""
    keys = ["layer", "unit"]
    labels = pd.read_csv(reference / "labels_iou.csv").merge(
        pd.read_csv(other / "labels_iou.csv"), on=keys, suffixes=("", "_other")
    )
    labels["same"] = labels["label"] == labels["label_other"]
    labels["detector"] = labels["iou"] >= min_iou
    units = pd.read_csv(reference / "units.csv").merge(
        pd.read_csv(other / "units.csv"), on=keys, suffixes=("", "_other")
    )
    units["change"] = (units["threshold_other"] - units["threshold"]).abs() / units[
        "threshold"
    ].abs().clip(lower=1e-12)
    table = labels.groupby("layer", sort=False).agg(
        units=("same", "size"),
        same=("same", "sum"),
        detectors=("detector", "sum"),
        same_detectors=("same", lambda same: int(same[labels.loc[same.index, "detector"]].sum())),
    )
    table["threshold_change"] = units.groupby("layer", sort=False)["change"].median()
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="scene-cnn")
    parser.add_argument("--data", default="synthetic:300")
    parser.add_argument("--dtype", default="bfloat16", choices=DTYPES[1:])
    parser.add_argument("--device", default="auto", help="where both runs go (auto)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as root:
        reference, other = Path(root, "float32"), Path(root, args.dtype)
        seconds = dissect(args.model, args.data, reference, "float32", args.device)
        other_seconds = dissect(args.model, args.data, other, args.dtype, args.device)
        table = compare(reference, other, DetectorRule().min_iou)
    print(f"model: {args.model}")
    print(f"data: {args.data}")
    print(f"device: {args.device}")
    print(f"torch_threads: {torch.get_num_threads()}")
    for layer, row in table.iterrows():
        same, units = int(row.same), int(row.units)
        print(f"same_label_{layer}: {same / units:.3f} ({same}/{units})")
        if row.detectors:
            kept, detectors = int(row.same_detectors), int(row.detectors)
            print(f"same_label_detectors_{layer}: {kept / detectors:.3f} ({kept}/{detectors})")
        print(f"threshold_change_median_{layer}: {row.threshold_change:.4f}")
    total, same = int(table["units"].sum()), int(table["same"].sum())
    detectors, kept = int(table["detectors"].sum()), int(table["same_detectors"].sum())
    print(f"same_label_all: {same / total:.3f} ({same}/{total})")
    print(f"same_label_detectors_all: {kept / max(detectors, 1):.3f} ({kept}/{detectors})")
    print(f"cpu_seconds_ratio_{args.dtype}_to_float32: {other_seconds / seconds:.2f}")


if __name__ == "__main__":
    main()
