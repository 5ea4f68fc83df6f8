"""The finding of an ablation run in a few lines: per class, the concept groups that hurt it
most, and whether the object detectors matter more than random units of their layer."""

from __future__ import annotations

from pathlib import Path

from ..directory import ABLATION_GROUPS, read_table
from ..errors import DissectError


def ablation_finding(directory: str | Path, layer: str, top: int = 2) -> dict:
    """Per class, the ``top`` label groups of ``layer`` by accuracy drop, and the object group.

    Returns
    -------
    dict
        ``classes``: {class: [(label, n_units, accuracy_drop, p_accuracy)]}; ``objects``:
        {class: (n_units, accuracy_drop, null mean, p_accuracy)} for the ``object`` type group.
    """
    groups = read_table(directory, ABLATION_GROUPS)
    if groups is None:
        raise DissectError(f"no {ABLATION_GROUPS} in {str(directory)!r}; run dissect ablate.")
    groups = groups[groups["layer"] == layer]
    labels = groups[groups["kind"] == "label"].sort_values(
        ["accuracy_drop", "logit_drop"], ascending=False, kind="stable"
    )
    classes = {
        name: [
            (row.name, int(row.n_units), float(row.accuracy_drop), float(row.p_accuracy))
            for row in rows.head(top).itertuples()
        ]
        for name, rows in labels.groupby("class", sort=True)
    }
    objects = groups[(groups["kind"] == "type") & (groups["name"] == "object")]
    found = {
        row["class"]: (
            int(row["n_units"]),
            float(row["accuracy_drop"]),
            float(row["null_accuracy_mean"]),
            float(row["p_accuracy"]),
        )
        for _, row in objects.iterrows()
    }
    return {"layer": layer, "classes": classes, "objects": found}


def describe_finding(finding: dict) -> str:
    """The finding as lines of text."""
    lines = [
        f"{finding['layer']} ablation: per class, the label groups whose ablation hurts it most:"
    ]
    for name, groups in finding["classes"].items():
        shown = ", ".join(
            f"{label} ({units} units: accuracy -{drop:.2f}, p {p:.2f})"
            for label, units, drop, p in groups
        )
        lines.append(f"  {name}: {shown}")
    if finding["objects"]:
        units = next(iter(finding["objects"].values()))[0]
        below = [name for name, (_, _, _, p) in finding["objects"].items() if p <= 0.05]
        lines.append(
            f"  all {units} object detectors vs random groups of {units} units: they hurt "
            f"{len(below)} of {len(finding['objects'])} classes more than random (p <= 0.05)"
            + (f": {', '.join(below)}" if below else "")
        )
    return "\n".join(lines)
