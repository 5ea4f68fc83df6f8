"""The whole study on the built-in scene CNN and synthetic world, as one command.

``dissect demo`` runs, in order, the same subcommands a user would type (and prints each one, so
it can be repeated by hand): ``run`` (every conv and pool layer), ``autolabel`` (IoU labels),
``stats``, ``rf`` (a sample of units per layer), ``segment``, ``export --format html`` and
``report``; then it prints the paper's finding as measured on this dissection:
:func:`finding` summarises which kinds of concept the first and the last convolutional layers
detect.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .dissection import Dissection
from .labels import read_labels
from .semantics import detectors, object_of
from .taxonomy import DEFAULT_TAXONOMY, MIN_IOU, Taxonomy


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of the demo: full (a few minutes on 2 cores) or quick (under a minute)."""

    images: int
    rf_layers: tuple[str, ...]
    rf_units: int
    rf_top: int
    segment_layers: tuple[str, ...]
    top: int

    @classmethod
    def choose(cls, quick: bool, images: int | None) -> DemoPlan:
        if quick:
            return cls(images or 200, ("conv1", "conv3", "conv5"), 2, 5, ("conv5",), 5)
        convs = ("conv1", "conv2", "conv3", "conv4", "conv5")
        return cls(images or 1000, convs, 8, 10, ("conv1", "conv3", "conv5"), 8)


def demo_commands(out: str, plan: DemoPlan, seed: int, device: str) -> list[list[str]]:
    """The subcommands the demo runs, as argument lists."""
    sample = np.linspace(0, 47, plan.rf_units).round().astype(int)  # conv1 has 48 units
    segment = ",".join(plan.segment_layers)
    return [
        ["run", "scene-cnn", f"synthetic:{plan.images}:{seed}", "--out", out,
         "--topk", "20", "--device", device],
        ["autolabel", out, "--device", device],
        ["stats", out],
        ["rf", out, "--layers", ",".join(plan.rf_layers), "--units", ",".join(map(str, sample)),
         "--top", str(plan.rf_top), "--device", device],
        ["segment", out, "--layers", segment, "--top", str(plan.top), "--device", device],
        ["export", out, "--format", "html", "--layers", "conv5", "--top", str(plan.top),
         "--device", device],
        ["report", out],
    ]  # fmt: skip


def run_demo(
    out: str,
    quick: bool = False,
    images: int | None = None,
    seed: int = 1,
    device: str = "auto",
    runner: Callable[[Sequence[str]], int] | None = None,
) -> dict:
    """Run the whole study and return :func:`finding` for it.

    Parameters
    ----------
    out : str
        The dissection directory to write.
    quick : bool
        Fewer images, units and pictures (under a minute).
    images : int, optional
        Images of the synthetic world to dissect (default 1000, quick 200).
    seed : int
        Seed of the synthetic world (the scene CNN was trained on seed 0: 1 is held out).
    device : str
        ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
    runner : callable, optional
        Runs one subcommand's argument list (default :func:`dissect.cli.main`).
    """
    if runner is None:
        from .cli import main as runner
    plan = DemoPlan.choose(quick, images)
    start = time.perf_counter()
    for command in demo_commands(out, plan, seed, device):
        print(f"\n$ dissect {shlex.join(command)}", flush=True)
        began = time.perf_counter()
        status = runner(command)
        if status:
            raise SystemExit(status)
        print(f"({time.perf_counter() - began:.0f} s)", flush=True)
    summary = finding(out)
    summary["seconds"] = round(time.perf_counter() - start, 1)
    return summary


def finding(
    directory: str | Path,
    min_iou: float = MIN_IOU,
    taxonomy: Taxonomy = DEFAULT_TAXONOMY,
) -> dict:
    """What the first and the last convolutional layer detect, from the IoU labels.

    Parameters
    ----------
    directory : path-like
        A dissection directory labelled by ``dissect autolabel`` on data with concept masks.
    min_iou : float
        IoU from which a unit counts as a detector.
    taxonomy : Taxonomy
        Maps label categories onto semantic types.

    Returns
    -------
    dict
        ``first_layer``, ``last_layer``; ``last_object_part_fraction`` (share of the last conv
        layer's units that detect an object or an object part), ``objects_covered`` and
        ``objects_total`` (object classes of the data detected by some unit of any type object
        or part in the last layer: a part counts for its object), ``first_color_texture_share``
        (share of the first layer's detectors that detect a colour or a texture/material), and
        ``first_detectors``.
    """
    dissection = Dissection(directory)
    convs = [layer for layer in dissection.layers if layer.startswith("conv")] or dissection.layers
    first, last = convs[0], convs[-1]
    found = detectors(read_labels(dissection.directory, "iou"), min_iou=min_iou, taxonomy=taxonomy)
    last_found = found[found["layer"] == last]
    object_like = last_found[last_found["type"].isin(["object", "part"])]
    first_found = found[found["layer"] == first]
    concepts = pd.read_csv(dissection.path("iou", "concepts.csv"), keep_default_na=False)
    objects = set(concepts.loc[concepts["category"] == "object", "name"])
    covered = {object_of(label, objects) for label in object_like["label"]} & objects
    share = first_found["type"].isin(["color", "texture"]).mean() if len(first_found) else 0.0
    return {
        "first_layer": first,
        "last_layer": last,
        "last_units": dissection.n_units(last),
        "last_object_part_fraction": round(len(object_like) / dissection.n_units(last), 3),
        "objects_covered": len(covered),
        "objects_total": len(objects),
        "first_detectors": len(first_found),
        "first_color_texture_share": round(float(share), 3),
    }


def describe(summary: dict) -> str:
    """The finding in words, for the end of ``dissect demo``."""
    return (
        f"{summary['last_layer']}: {summary['last_object_part_fraction']:.0%} of "
        f"{summary['last_units']} units are object or part detectors (IoU >= {MIN_IOU}), "
        f"covering {summary['objects_covered']} of {summary['objects_total']} object classes.\n"
        f"{summary['first_layer']}: {summary['first_color_texture_share']:.0%} of its "
        f"{summary['first_detectors']} detectors are colour or texture/material detectors."
    )
