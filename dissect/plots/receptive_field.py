"""Figures of empirical receptive fields: averaged occlusion maps, and size against depth.

Each function takes what :mod:`dissect.rf` writes (the arrays of
``receptive_fields/<layer>.npz``, the table ``receptive_fields_layers.csv``) and returns a
matplotlib Figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle


def plot_rf_maps(
    maps: np.ndarray,
    units: Sequence[int],
    rf_theoretical: Sequence[int],
    rf_empirical: Sequence[float] | None = None,
    layer: str = "",
    columns: int = 4,
) -> Figure:
    """Averaged receptive-field maps of some units, with the theoretical field drawn as a square.

    Parameters
    ----------
    maps : ndarray, shape (U, 2R+1, 2R+1)
        Averaged discrepancy maps centred on the peak pixel (``maps`` of the layer's npz).
    units : sequence of int
        Unit number of each map (titles).
    rf_theoretical : (int, int)
        Theoretical receptive field (height, width) in pixels, drawn centred on the peak.
    rf_empirical : sequence of float, optional
        Empirical size of each unit, shown in the titles.
    layer : str
        Layer name for the figure title.
    columns : int
        Panels per row.

    Returns
    -------
    Figure
    """
    count = len(maps)
    columns = max(1, min(columns, count))
    rows = max(1, math.ceil(count / columns))
    figure = Figure(figsize=(2.4 * columns, 2.5 * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    radius = (maps.shape[-1] - 1) / 2 if count else 0
    extent = (-radius - 0.5, radius + 0.5, radius + 0.5, -radius - 0.5)
    for position, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if position >= count:
            ax.set_axis_off()
            continue
        ax.imshow(maps[position], cmap="magma", extent=extent, interpolation="nearest")
        height, width = rf_theoretical
        ax.add_patch(
            Rectangle(
                (-width / 2, -height / 2), width, height, fill=False, edgecolor="cyan", lw=1.2
            )
        )
        title = f"unit {units[position]}"
        if rf_empirical is not None and np.isfinite(rf_empirical[position]):
            title += f": {rf_empirical[position]:.0f} px"
        ax.set_title(title, fontsize=9)
    figure.suptitle(
        f"{layer} empirical receptive fields (square: theoretical {rf_theoretical[0]} px)"
        if layer
        else "empirical receptive fields",
        fontsize=10,
    )
    return figure


def plot_rf_sizes(layers: pd.DataFrame) -> Figure:
    """Empirical (mean +- std over units, both size rules) and theoretical size per layer.

    Parameters
    ----------
    layers : DataFrame
        ``layer, rf_theoretical, rf_empirical_mean, rf_empirical_std`` in depth order, as in
        ``receptive_fields_layers.csv``; ``rf_mass50_mean``, ``rf_mass80_mean`` (and their
        ``_std``), where present, are drawn too.

    Returns
    -------
    Figure
    """
    figure = Figure(figsize=(max(4.0, 1.1 * len(layers) + 2), 3.5))
    ax = figure.subplots()
    x = np.arange(len(layers))
    ax.plot(x, layers["rf_theoretical"], "s--", color="grey", label="theoretical")
    rules = (
        ("rf_empirical", "half-max (mean +- std)", "C3"),
        ("rf_mass50", "50% of discrepancy mass", "C0"),
        ("rf_mass80", "80% of discrepancy mass", "C2"),
    )
    for shift, (column, label, color) in enumerate(rules):
        if f"{column}_mean" not in layers:
            continue
        ax.errorbar(
            x + 0.06 * (shift - 1),
            layers[f"{column}_mean"],
            yerr=layers[f"{column}_std"],
            fmt="o-",
            color=color,
            capsize=3,
            label=label,
        )
    ax.set_xticks(x, [str(name) for name in layers["layer"]])
    ax.set_ylabel("receptive field size (px)")
    ax.set_ylim(bottom=0)
    ax.legend(frameon=False, fontsize=8)
    ax.set_title("Receptive field size by layer")
    return figure
