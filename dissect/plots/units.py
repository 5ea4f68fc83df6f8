"""Figures of single units: top images with the segmented region, empirical receptive field."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..dissection import Dissection
from ..errors import DissectError
from ..labels import read_labels
from ..models import LoadedModel
from ..rf import load_maps
from ..segment import iter_segments
from .figure import plain

if TYPE_CHECKING:
    import torch


def unit_title(dissection: Dissection, layer: str, unit: int) -> str:
    """``layer unit N: label (type, score)`` from ``labels.csv``, or ``layer unit N``."""
    labels = read_labels(dissection.directory)
    row = labels[(labels["layer"] == layer) & (labels["unit"] == unit)]
    title = f"{layer} unit {unit}"
    if len(row):
        row = row.iloc[0]
        score = row["iou"] if row["source"] == "iou" else row["precision"]
        name = "IoU" if row["source"] == "iou" else "precision"
        shown = f", {name} {float(score):.2f}" if score == score else ""
        title += f": {row['label']} ({row['category']}{shown})"
    return plain(title)


def plot_unit_top_images(
    dissection: str | Path | Dissection,
    layer: str,
    unit: int,
    top: int = 6,
    *,
    model: str | torch.nn.Module | LoadedModel | None = None,
    peak_fraction: float | None = None,
) -> Figure:
    """A unit's top images with the outline of the region above its threshold.

    Parameters
    ----------
    dissection : path-like or Dissection
        The dissection directory.
    layer : str
        A dissected layer.
    unit : int
        The unit.
    top : int
        How many top images to show.
    model : str, nn.Module or LoadedModel, optional
        The dissected model (default: loaded again from the manifest's MODEL spec); required
        when the dissection was run on an in-memory module.
    peak_fraction : float, optional
        Outline the region above this fraction of each map's peak instead of the threshold T.

    Returns
    -------
    Figure
    """
    dissection = dissection if isinstance(dissection, Dissection) else Dissection(dissection)
    (segments,) = iter_segments(
        dissection, layer, [unit], top, model=model, peak_fraction=peak_fraction, progress=False
    )
    count = len(segments.indices)
    figure = Figure(figsize=(1.8 * count, 2.2))
    for position, (image, score) in enumerate(
        zip(segments.outlined(), segments.scores, strict=True)
    ):
        axes = figure.add_subplot(1, count, position + 1)
        axes.imshow(image)
        axes.set_title(f"#{segments.indices[position]}  {score:.2f}", fontsize=8)
        axes.axis("off")
    figure.suptitle(unit_title(dissection, layer, unit), fontsize=10)
    return figure


def plot_rf_map(dissection: str | Path | Dissection, layer: str, unit: int) -> Figure:
    """A unit's empirical receptive field (mean discrepancy map) with the theoretical one.

    The map is centred on the unit's peak; the dashed square is the theoretical receptive field.
    Needs ``dissect rf`` to have measured the layer.

    Returns
    -------
    Figure
    """
    dissection = dissection if isinstance(dissection, Dissection) else Dissection(dissection)
    stored = load_maps(dissection, layer)
    rows = np.flatnonzero(stored["units"] == unit)
    if not len(rows):
        raise DissectError(
            f"unit {unit} of layer {layer!r} has no measured receptive field; "
            f"run dissect rf {dissection.directory} --layers {layer} --units {unit}."
        )
    row = int(rows[0])
    radius = int(stored["radius"])
    figure = Figure(figsize=(3.2, 3.2))
    axes = figure.add_subplot()
    extent = (-radius - 0.5, radius + 0.5, radius + 0.5, -radius - 0.5)
    axes.imshow(stored["maps"][row], cmap="inferno", extent=extent)
    height, width = (int(side) for side in stored["rf_theoretical"])
    axes.add_patch(
        Rectangle(
            (-width / 2, -height / 2), width, height, fill=False, color="white", linestyle="--"
        )
    )
    axes.set_xlim(-radius - 0.5, radius + 0.5)
    axes.set_ylim(radius + 0.5, -radius - 0.5)
    size = float(stored["rf_empirical"][row])
    axes.set_title(plain(f"{layer} unit {unit}: RF {size:.0f} px (theory {height}x{width})"))
    axes.set_xlabel("pixels from the peak")
    return figure
