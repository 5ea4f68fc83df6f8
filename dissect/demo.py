"""The whole study on the built-in scene CNN and synthetic world, as one command.

``dissect demo`` runs, in order, the same subcommands a user would type (and prints each one, so
it can be repeated by hand): ``run --iou`` (every conv and pool layer, labelled by IoU in the same
pass), ``autolabel`` (p-values of the last layers' labels), ``stats``, ``rf`` (a sample of units
per layer), ``segment``, ``export --format html``, ``ablate`` (conv5's concept groups on held-out
images) and ``report``; then it prints the paper's
finding as measured on this dissection: :func:`finding` summarises which kinds of concept the
first and the last convolutional layers detect.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .ablate.finding import ablation_finding, describe_finding
from .config import DemoConfig, DetectorRule
from .directory import IOU, IOU_CONCEPTS, read_table
from .dissection import Dissection
from .io import read_csv
from .labels import read_labels
from .semantics import detectors, object_of


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of the demo: full (1000 images) or quick (200 images, fewer units and pictures).

    Attributes
    ----------
    images : int
        Images of the synthetic world dissected.
    null_layers : tuple of str
        Layers whose IoU labels get permutation p-values (``dissect autolabel``); every layer is
        labelled in the ``dissect run --iou`` pass.
    rf_layers, rf_units, rf_top : tuple of str, int, int
        Receptive fields: layers, units per layer, top images per unit.
    segment_layers, top : tuple of str, int
        Segmented layers and top images per unit (segment and export).
    ablate_images : int
        Held-out images (seed 7) over which conv5's concept groups are ablated, at the end.
    """

    images: int
    null_layers: tuple[str, ...]
    rf_layers: tuple[str, ...]
    rf_units: int
    rf_top: int
    segment_layers: tuple[str, ...]
    top: int
    ablate_images: int = 400

    @classmethod
    def choose(cls, quick: bool, images: int | None) -> DemoPlan:
        if quick:
            plan = (images or 200, ("conv5",), ("conv1", "conv3", "conv5"), 2, 4, ("conv5",), 5)
            return cls(*plan, min(images or 100, 100))
        convs = ("conv1", "conv2", "conv3", "conv4", "conv5")
        plan = (images or 1000, ("conv5", "pool5"), convs, 6, 6, ("conv1", "conv3", "conv5"), 5)
        return cls(*plan, min(images or 400, 400))


def demo_commands(
    out: str, plan: DemoPlan, seed: int, device: str, compare_with: str | None = None
) -> list[list[str]]:
    """The subcommands the demo runs, as argument lists.

    With ``compare_with`` (a second MODEL, dissected into ``out/<its name>``), the second
    network is dissected, labelled and measured the same way, then compared with the first
    (``out/compare``) before the report is written.
    """
    sample = np.linspace(0, 47, plan.rf_units).round().astype(int)  # conv1 has 48 units
    segment = ",".join(plan.segment_layers)
    data = f"synthetic:{plan.images}:{seed}"

    def measure(model: str, directory: str, null: bool = True) -> list[list[str]]:
        # Every layer is labelled by IoU in the pass itself (--iou, without its null); the labels
        # of the main network's last layers get p-values from dissect autolabel's permutation
        # null. The second network's labels only feed the comparison's detector counts.
        run = ["run", model, data, "--out", directory, "--topk", "20", "--iou"]
        run += ["--permutations", "0", "--device", device]
        layers = ",".join(plan.null_layers)
        p_values = ["autolabel", directory, "--layers", layers, "--device", device]
        return [
            run,
            *([p_values] if null else []),
            ["stats", directory],
            [
                "rf",
                directory,
                "--layers",
                ",".join(plan.rf_layers),
                "--units",
                ",".join(map(str, sample)),
                "--top",
                str(plan.rf_top),
                "--device",
                device,
            ],
        ]

    commands = [
        *measure("scene-cnn", out),
        ["segment", out, "--layers", segment, "--top", str(plan.top), "--device", device],
        [
            "export",
            out,
            "--format",
            "html",
            "--layers",
            "conv5",
            "--top",
            str(plan.top),
            "--device",
            device,
        ],
    ]
    if compare_with:
        other = str(Path(out) / _folder(compare_with))
        commands += [
            *measure(compare_with, other, null=False),
            ["compare", out, other, "--out", str(Path(out) / "compare")],
        ]
    held_out = f"synthetic:{plan.ablate_images}:7"
    commands += [
        ["explain", out, "0", "--top", "4", "--device", device],
        ["ablate", out, held_out, "--layers", "conv5", "--device", device],
        ["report", out],
    ]
    return commands


def _folder(model: str) -> str:
    """A folder name for a MODEL spec (``object-cnn``; ``net.py:make`` -> ``net.py_make``)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(model).name) or "other"


def run_demo(
    out: str,
    quick: bool = False,
    images: int | None = None,
    seed: int = 1,
    device: str = DemoConfig.device,
    runner: Callable[[Sequence[str]], int] | None = None,
    compare_with: str | None = None,
) -> dict:
    """Run the whole study and return :func:`finding` for it.

    Parameters
    ----------
    out : str
        The dissection directory to write.
    quick : bool
        Fewer images, units and pictures.
    images : int, optional
        Images of the synthetic world to dissect (default 1000, quick 200).
    seed : int
        Seed of the synthetic world (the scene CNN was trained on seed 0: 1 is held out).
    device : str
        ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
    runner : callable, optional
        Runs one subcommand's argument list (default :func:`dissect.cli.main`).
    compare_with : str, optional
        A second MODEL, dissected the same way into ``out/<its name>`` and compared with
        ``scene-cnn`` in ``out/compare``; the summary then holds :func:`comparison_finding`
        under ``comparison``. Default: no comparison.
    """
    if runner is None:
        from .cli import main as runner
    plan = DemoPlan.choose(quick, images)
    start = time.perf_counter()
    for command in demo_commands(out, plan, seed, device, compare_with):
        print(f"\n$ dissect {shlex.join(command)}", flush=True)
        began = time.perf_counter()
        status = runner(command)
        if status:
            raise SystemExit(status)
        print(f"({time.perf_counter() - began:.0f} s)", flush=True)
    summary = finding(out)
    summary["ablation"] = ablation_finding(out, "conv5")
    if compare_with:
        summary["comparison"] = comparison_finding(Path(out) / "compare")
    summary["seconds"] = round(time.perf_counter() - start, 1)
    return summary


def finding(directory: str | Path, rule: DetectorRule | None = None) -> dict:
    """What the first and the last convolutional layer detect, from the IoU labels.

    Parameters
    ----------
    directory : path-like
        A dissection directory labelled by ``dissect autolabel`` on data with concept masks.
    rule : DetectorRule, optional
        Which IoU labels count as detectors, and their types (default: the defaults).

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
    found = detectors(read_labels(dissection.directory, "iou"), rule)
    last_found = found[found["layer"] == last]
    object_like = last_found[last_found["type"].isin(["object", "part"])]
    first_found = found[found["layer"] == first]
    concepts = read_table(dissection.directory, f"{IOU}/{IOU_CONCEPTS}")
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


def comparison_finding(directory: str | Path, layer: str = "conv5") -> dict:
    """Detectors of ``layer`` in each network of a comparison (``dissect compare``'s tables).

    Parameters
    ----------
    directory : path-like
        The folder ``dissect compare`` wrote (``types.csv``, ``layers.csv``).
    layer : str
        The row to read (default the last conv layer of the built-in networks).

    Returns
    -------
    dict
        ``layer``, ``networks`` (names in order) and, per network name, ``units``, ``object``
        and ``part`` (detectors of that type), ``detectors`` and ``objects_covered``.
    """
    folder = Path(directory)
    types = read_csv(folder / "types.csv", dtype={"row": str, "layer": str})
    layers = read_csv(folder / "layers.csv", dtype={"row": str, "layer": str})
    networks = list(dict.fromkeys(layers["network"]))
    summary: dict = {"layer": layer, "networks": networks}
    for network in networks:
        mine = types[(types["network"] == network) & (types["row"] == layer)]
        counts = dict(zip(mine["category"], mine["n_units"], strict=True))
        row = layers[(layers["network"] == network) & (layers["row"] == layer)].iloc[0]
        summary[network] = {
            "units": int(row["n_units"]),
            "object": int(counts.get("object", 0)),
            "part": int(counts.get("part", 0)),
            "detectors": int(row["detectors"]),
            "objects_covered": int(row["objects_covered"]),
        }
    return summary


def describe(summary: dict) -> str:
    """The finding in words, for the end of ``dissect demo``."""
    return (
        f"{summary['last_layer']}: {summary['last_object_part_fraction']:.0%} of "
        f"{summary['last_units']} units are object or part detectors "
        f"(IoU >= {DetectorRule.min_iou}), "
        f"covering {summary['objects_covered']} of {summary['objects_total']} object classes.\n"
        f"{summary['first_layer']}: {summary['first_color_texture_share']:.0%} of its "
        f"{summary['first_detectors']} detectors are colour or texture/material detectors."
        + ("\n" + _describe_comparison(summary["comparison"]) if "comparison" in summary else "")
        + ("\n" + describe_finding(summary["ablation"]) if "ablation" in summary else "")
    )


def _describe_comparison(comparison: dict) -> str:
    names = comparison["networks"]
    per = [comparison[name] for name in names]
    return (
        f"{comparison['layer']} object detectors: "
        + ", ".join(f"{name} {entry['object']}" for name, entry in zip(names, per, strict=True))
        + f" (object or part: {' vs '.join(str(e['object'] + e['part']) for e in per)}, of "
        f"{per[0]['units']} units; object classes covered: "
        f"{' vs '.join(str(e['objects_covered']) for e in per)})."
    )
