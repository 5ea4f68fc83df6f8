"""Tables of an ablation pass: per set and class, means with standard errors, p-values of groups.

For set k and class c, over the images of class c: ``logit_drop`` (the class's logit, unablated
minus ablated), ``prob_drop`` (its softmax probability) and ``accuracy_drop`` (top-1 accuracy on
the class), each with its standard error over images (``_se``: the sample standard deviation of
the per-image drops over sqrt(n)). A concept group's ``p_<measure>`` is
``(1 + random groups of its size whose drop is at least as large) / (draws + 1)``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .sets import AblationSet
from .sums import AblationSums

#: The measures of every table, each with ``_se``.
MEASURES = ("logit_drop", "prob_drop", "accuracy_drop")
_SOURCE = {"logit_drop": "logit_drop", "prob_drop": "prob_drop", "accuracy_drop": "correct_drop"}


def measures(sums: AblationSums) -> dict[str, np.ndarray]:
    """Means and standard errors, (K, C) each, and the class counts and unablated accuracy."""
    fields = sums.tables()
    count = fields["count"]
    with np.errstate(invalid="ignore", divide="ignore"):
        result = {
            "n_images": count.astype(np.int64),
            "base_accuracy": fields["base_correct"] / count,
            "base_logit": fields["base_logit"] / count,
            "base_prob": fields["base_prob"] / count,
        }
        for name in MEASURES:
            total, squares = fields[_SOURCE[name]], fields[_SOURCE[name] + "_sq"]
            mean = total / count
            variance = np.maximum(squares - count * mean**2, 0.0) / (count - 1)
            result[name] = mean
            result[name + "_se"] = np.where(count > 1, np.sqrt(variance / count), np.nan)
    return result


def set_table(
    layer: str, sets: list[AblationSet], classes: list[str], values: dict[str, np.ndarray]
) -> pd.DataFrame:
    """One row per (set, class): ``layer,kind,name,n_units,units,class,n_images,<measures>``."""
    k, c = len(sets), len(classes)
    table = pd.DataFrame(
        {
            "layer": layer,
            "kind": np.repeat([s.kind for s in sets], c),
            "name": np.repeat([s.name for s in sets], c),
            "n_units": np.repeat([len(s.units) for s in sets], c),
            "units": np.repeat([" ".join(map(str, s.units)) for s in sets], c),
            "class": np.tile(classes, k),
            "n_images": np.tile(values["n_images"], k),
            "base_accuracy": np.tile(values["base_accuracy"], k),
        }
    )
    for name in MEASURES:
        table[name] = values[name].reshape(-1)
        table[name + "_se"] = values[name + "_se"].reshape(-1)
    return table


def group_table(table: pd.DataFrame) -> pd.DataFrame:
    """Concept groups against the random groups of their size: null mean and std, p-values."""
    groups = table[table["kind"].isin(["label", "type"])].reset_index(drop=True)
    null = {
        key: part for key, part in table[table["kind"] == "random"].groupby(["n_units", "class"])
    }
    keys = list(zip(groups["n_units"], groups["class"], strict=True))
    groups["draws"] = [len(null.get(key, ())) for key in keys]
    for name in ("logit_drop", "accuracy_drop"):
        short, found = name.removesuffix("_drop"), []
        for key, observed in zip(keys, groups[name], strict=True):
            drops = null[key][name].to_numpy() if key in null else np.zeros(0)
            found.append(
                (
                    drops.mean() if len(drops) else np.nan,
                    drops.std(ddof=1) if len(drops) > 1 else np.nan,
                    (1 + np.sum(drops >= observed)) / (len(drops) + 1) if len(drops) else np.nan,
                )
            )
        columns = [f"null_{short}_mean", f"null_{short}_std", f"p_{short}"]
        groups[columns] = pd.DataFrame(found, columns=columns) if found else np.nan
    return groups.reset_index(drop=True)


def unit_summary(table: pd.DataFrame, labels: pd.DataFrame, top: int = 3) -> pd.DataFrame:
    """``ablation.csv``: per ablated unit, the classes it matters most for, beside its label."""
    units = table[table["kind"] == "unit"]
    rows = []
    for (layer, name), part in units.groupby(["layer", "name"], sort=False):
        ranked = part.sort_values(["accuracy_drop", "logit_drop"], ascending=False, kind="stable")
        weights = part["n_images"] / part["n_images"].sum()
        rows.append(
            {
                "layer": layer,
                "unit": int(name),
                "top_class": ranked["class"].iloc[0],
                "top_accuracy_drop": ranked["accuracy_drop"].iloc[0],
                "top_logit_drop": ranked["logit_drop"].iloc[0],
                "classes": ";".join(ranked["class"].iloc[:top]),
                "accuracy_drop": float((part["accuracy_drop"] * weights).sum()),
            }
        )
    summary = pd.DataFrame(rows)
    if summary.empty or labels.empty:
        return summary.assign(label="", category="")
    named = labels[["layer", "unit", "label", "category"]].astype({"layer": str, "unit": int})
    return summary.merge(named, on=["layer", "unit"], how="left")


def class_summary(table: pd.DataFrame, kind: str = "unit", top: int = 5) -> pd.DataFrame:
    """Per class, the ``top`` sets of ``kind`` whose ablation hurts it most (accuracy, then
    logit drop)."""
    chosen = table[table["kind"] == kind]
    ranked = chosen.sort_values(
        ["layer", "class", "accuracy_drop", "logit_drop"],
        ascending=[True, True, False, False],
        kind="stable",
    )
    best = ranked.groupby(["layer", "class"], sort=False).head(top).copy()
    best["rank"] = best.groupby(["layer", "class"]).cumcount() + 1
    return best.reset_index(drop=True)
