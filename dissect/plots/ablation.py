"""Figures of ``dissect ablate``: a units x classes heatmap ordered by label, and per class the
concept groups whose ablation hurts it most.

Each function takes the tables ``dissect ablate`` writes (``ablation/<layer>.csv``,
``ablation_groups.csv``, ``labels.csv``) and returns a matplotlib Figure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .figure import plain, save_figure


def plot_ablation_heatmap(
    table: pd.DataFrame, labels: pd.DataFrame, layer: str, measure: str = "logit_drop"
) -> Figure:
    """Units x classes: the drop of each class's ``measure`` when each unit is ablated.

    Units are ordered by label (detectors first, grouped by label; unlabelled units last).

    Parameters
    ----------
    table : DataFrame
        ``ablation/<layer>.csv`` (rows of kind ``unit`` are drawn).
    labels : DataFrame
        ``labels.csv`` (``layer``, ``unit``, ``label``); may be empty.
    layer : str
        The layer.
    measure : str
        ``logit_drop``, ``prob_drop`` or ``accuracy_drop``.
    """
    units = table[(table["kind"] == "unit") & (table["layer"].astype(str) == layer)]
    grid = units.pivot(index="name", columns="class", values=measure)
    grid.index = grid.index.astype(int)
    mine = labels[labels["layer"].astype(str) == layer] if len(labels) else labels
    named = dict(zip(mine.get("unit", []), mine.get("label", []), strict=True))
    names = {unit: str(named.get(unit, "") or "") for unit in grid.index}
    order = sorted(grid.index, key=lambda unit: (names[unit] == "", names[unit], unit))
    grid = grid.loc[order]
    height = max(3.0, 0.12 * len(grid) + 1.5)
    figure = Figure(figsize=(1.0 + 0.55 * grid.shape[1] + 2.0, height))
    axes = figure.add_subplot()
    limit = float(np.nanmax(np.abs(grid.to_numpy()))) or 1.0
    image = axes.imshow(grid.to_numpy(), aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit)
    axes.set_xticks(
        range(grid.shape[1]), [plain(name) for name in grid.columns], rotation=45, ha="right"
    )
    axes.set_yticks(
        range(len(grid)),
        [plain(f"{unit} {names[unit]}".strip()) for unit in grid.index],
        fontsize=max(3, min(8, 400 // max(len(grid), 1))),
    )
    axes.set_title(plain(f"{layer}: {measure.replace('_', ' ')} when one unit is ablated"))
    figure.colorbar(image, ax=axes, label=measure.replace("_", " "))
    return figure


def plot_group_importance(groups: pd.DataFrame, layer: str, top: int = 3) -> Figure:
    """Per class, the ``top`` label groups whose ablation lowers its accuracy most, each bar
    beside the mean of random groups of the same size, with its p-value."""
    mine = groups[(groups["layer"].astype(str) == layer) & (groups["kind"] == "label")]
    classes = sorted(mine["class"].unique())
    columns = min(4, max(len(classes), 1))
    rows = -(-max(len(classes), 1) // columns)
    figure = Figure(figsize=(3.2 * columns, 2.2 * rows), layout="constrained")
    for position, name in enumerate(classes):
        axes = figure.add_subplot(rows, columns, position + 1)
        best = (
            mine[mine["class"] == name]
            .sort_values(["accuracy_drop", "logit_drop"], ascending=False, kind="stable")
            .head(top)
        )
        y = np.arange(len(best))[::-1]
        axes.barh(y + 0.2, best["accuracy_drop"], height=0.4, color="#287271", label="group")
        axes.barh(
            y - 0.2,
            best["null_accuracy_mean"],
            height=0.4,
            color="#bbbbbb",
            label="random, same size",
        )
        ticks = [
            plain(f"{label} ({n}) p={p:.2f}")
            for label, n, p in zip(best["name"], best["n_units"], best["p_accuracy"], strict=True)
        ]
        axes.set_yticks(y, ticks, fontsize=7)
        axes.set_title(plain(name), fontsize=9)
        axes.tick_params(axis="x", labelsize=7)
        if position == 0:
            axes.legend(fontsize=6, loc="lower right")
    figure.suptitle(plain(f"{layer}: accuracy drop of each class when a label group is ablated"))
    return figure


def write_ablation_plots(
    directory: str | Path, table: pd.DataFrame, groups: pd.DataFrame, labels: pd.DataFrame
) -> list[Path]:
    """``plots/ablation_<layer>.png`` and ``plots/ablation_groups_<layer>.png`` per layer."""
    written = []
    for layer in dict.fromkeys(table["layer"].astype(str)):
        name = layer.replace("/", "_")
        if (table["kind"] == "unit").any():
            figure = plot_ablation_heatmap(table, labels, layer)
            written.append(save_figure(figure, Path(directory) / "plots" / f"ablation_{name}.png"))
        if len(groups) and (groups["layer"].astype(str) == layer).any():
            figure = plot_group_importance(groups, layer)
            path = Path(directory) / "plots" / f"ablation_groups_{name}.png"
            written.append(save_figure(figure, path))
    return written
