"""Which units explain one image (``dissect explain DIR IMAGE``).

For one image (a file, or an image index of the dissection's data) and each dissected layer, the
units that respond most strongly *relative to their own threshold*: a unit's score is its peak
activation on the image divided by its threshold T from the dissection (the activation exceeded by
the top ``quantile`` of all its values over the dataset), so a score above 1 means the unit fires
on this image as it does on its top images, whatever its scale. Units with T <= 0 (dead on the
data) are left out. Each chosen unit's map is upsampled to the image (aligned by stride and
offset, as in segmentation and IoU) and thresholded at T: the region it responds to.

:func:`explain_image` returns an :class:`Explanation` (a pandas table, the image and the masks);
:func:`write_explanation` writes ``explain.csv``, ``explain.png`` (the image segmented by each
unit, one row per layer) and ``index.html``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .config import DetectorRule, ExplainConfig
from .dissection import Dissection, load_dissected_model, open_dissected_data
from .errors import DissectError
from .html import e, href, note, page, table
from .io import write_csv, write_text
from .labels import read_labels
from .lock import writes
from .models import LoadedModel
from .plots.figure import plain, save_figure
from .segment.pictures import dim_outside, outline, write_png
from .segment.rules import threshold_masks
from .semantics import detectors

#: Columns of :attr:`Explanation.table`.
COLUMNS = [
    "layer",
    "rank",
    "unit",
    "score",
    "peak",
    "threshold",
    "coverage",
    "label",
    "category",
    "label_score",
    "source",
    "detector",
]


@dataclass
class Explanation:
    """The units that explain one image.

    Attributes
    ----------
    image_id : str
        The image's path, or ``index N`` of the dissection's data.
    image : ndarray
        (S, S, 3) uint8: the image as the network saw it.
    table : DataFrame
        One row per chosen unit: ``layer, rank`` (1 = strongest in its layer), ``unit``,
        ``score`` (peak / T), ``peak``, ``threshold`` (T), ``coverage`` (fraction of the image
        above T), ``label, category, label_score, source`` (from ``labels.csv``, empty when the
        unit is unlabelled) and ``detector`` (whether the label passes the detector thresholds).
    masks : dict
        (layer, unit) -> (S, S) bool: where the unit's upsampled map exceeds T.
    """

    image_id: str
    image: np.ndarray
    table: pd.DataFrame
    masks: dict[tuple[str, int], np.ndarray]

    def segmented(self, layer: str, unit: int, dim: float = 0.25) -> np.ndarray:
        """The image with everything outside the unit's region dimmed, outlined in yellow."""
        mask = self.masks[(layer, unit)]
        return outline(dim_outside(self.image, mask, dim), mask)


def _read_image(dissection: Dissection, image: str | int | Path) -> tuple[str, np.ndarray]:
    """(image id, RGB array) of an image file or an index of the dissection's data."""
    from .images import ImageReadError, read_image_file

    if isinstance(image, (int, np.integer)) or (
        isinstance(image, str) and image.isdigit() and not Path(image).exists()
    ):
        index = int(image)
        n_images = int(dissection.manifest.get("n_images", 0))
        if not 0 <= index < n_images:
            raise DissectError(
                f"image index {index} is outside the dissection's data, which holds images "
                f"0..{n_images - 1}; give an index in range or an image file."
            )
        source = open_dissected_data(dissection)
        try:
            return f"index {index}: {source.image_id(index)}", source.read_rgb(index)
        except ImageReadError as error:
            raise DissectError(f"image {index} of the data cannot be read: {error}") from error
    path = Path(image)
    if not path.is_file():
        raise DissectError(
            f"no image file {str(path)!r}; give an image file or an image index of the "
            "dissection's data (a number)."
        )
    try:
        return str(path), read_image_file(path)
    except ImageReadError as error:
        raise DissectError(f"{str(path)!r}: {error}; give a readable image file.") from error


def explain_image(
    directory: str | Path | Dissection,
    image: str | int | Path,
    layers: Sequence[str] | None = None,
    top: int = ExplainConfig.top,
    *,
    model: LoadedModel | None = None,
    rule: DetectorRule | None = None,
    device: str = ExplainConfig.device,
    dtype: str | None = ExplainConfig.dtype,
    **loose: Any,
) -> Explanation:
    """The units of each layer that respond most strongly to one image, relative to T.

    Parameters
    ----------
    directory : path-like or Dissection
        A dissection directory (labels are shown when ``labels.csv`` exists).
    image : path-like or int
        An image file, or the index of an image of the dissection's data (a digit string
        counts as an index unless a file of that name exists).
    layers : sequence of str, optional
        Layers to explain (default: every dissected layer with a spatial map).
    top : int
        Units per layer.
    model : LoadedModel, optional
        The dissected model (default: loaded again from the manifest).
    rule : DetectorRule, optional
        Which labels count as detectors (see :func:`dissect.semantics.detectors`).
    device : str
        ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
    dtype : str, optional
        The forward's number format (None: the one ``dissect run`` used).
    **loose
        ``min_precision``, ``min_iou``, ``taxonomy``, ``max_p``: replace the rule's value.

    Returns
    -------
    Explanation
    """
    import torch

    from .device import forward_dtype, pick_device
    from .images import Batch
    from .passes import KeptOutputs, PassJob, run_pass
    from .upsample import upsample_maps

    dissection = directory if isinstance(directory, Dissection) else Dissection(directory)
    if top < 1:
        raise DissectError(f"--top must be at least 1, got {top}.")
    if layers:
        layers = dissection.check_layers(layers)
    else:
        layers = [name for name in dissection.layers if dissection.geometry(name).is_spatial]
    flat = [name for name in layers if not dissection.geometry(name).is_spatial]
    if flat:
        raise DissectError(
            f"layer(s) {', '.join(flat)} have no spatial map; explain convolution or pooling "
            "layers."
        )
    image_id, rgb = _read_image(dissection, image)
    preprocess = dissection.preprocess
    loaded = model or load_dissected_model(dissection)
    batch = Batch(torch.zeros(1, dtype=torch.int64), preprocess.tensor(rgb)[None], [])
    kept = KeptOutputs()
    torch_device = pick_device(device)
    job = PassJob(
        loaded.module,
        layers,
        lambda start: [batch][start:],
        1,
        torch_device,
        channels_last=dissection.channels_last(layers),
        stream=False,
        progress=False,
        dtype=forward_dtype(dtype or dissection.config.dtype, torch_device),
    )
    run_pass(job, {"outputs": kept})
    outputs = {layer: kept.output(layer) for layer in layers}
    labels = read_labels(dissection.directory).drop_duplicates(["layer", "unit"])
    labels = labels.set_index(["layer", "unit"])
    found = detectors(read_labels(dissection.directory), rule, **loose)
    detector_keys = set(zip(found["layer"], found["unit"].astype(int), strict=True))
    rows, masks = [], {}
    for layer in layers:
        acts = outputs[layer][0].float().cpu()
        thresholds = dissection.thresholds(layer)
        peaks = acts.flatten(1).max(1).values.numpy()
        alive = np.flatnonzero(thresholds > 0)
        scores = peaks[alive] / thresholds[alive]
        chosen = alive[np.argsort(-scores, kind="stable")[:top]]
        maps = upsample_maps(acts[chosen][:, None], dissection.geometry(layer), preprocess.size)
        maps = maps[:, 0].numpy()
        unit_masks = threshold_masks(maps, thresholds[chosen])
        for rank, (unit, mask) in enumerate(zip(chosen.tolist(), unit_masks, strict=True), 1):
            masks[(layer, unit)] = mask
            label = labels.loc[(layer, unit)] if (layer, unit) in labels.index else None
            row = {"layer": layer, "rank": rank, "unit": unit, "coverage": float(mask.mean())}
            row.update(_response(peaks[unit], thresholds[unit], label))
            rows.append({**row, "detector": (layer, unit) in detector_keys})
    return Explanation(
        image_id, preprocess.display(rgb), pd.DataFrame(rows, columns=COLUMNS), masks
    )


def _response(peak: np.float32, threshold: np.float32, label: pd.Series | None) -> dict:
    """A unit's score (its peak over its threshold T, in float32) and its label, as columns."""
    source = None if label is None else label["source"]
    return {
        "score": float(peak / threshold),
        "peak": float(peak),
        "threshold": float(threshold),
        "label": None if label is None else label["label"],
        "category": None if label is None else label["category"],
        "label_score": None
        if label is None
        else (label["precision"] if source == "crowd" else label["iou"]),
        "source": source,
    }


def _caption(row) -> str:
    label = "" if row.label is None or row.label != row.label else f" {row.label}"
    return f"unit {row.unit}{label}\n{row.score:.2f} x T"


def plot_explanation(explanation: Explanation) -> Figure:
    """The image segmented by each chosen unit: one row per layer, strongest unit first."""
    table = explanation.table
    layers = list(dict.fromkeys(table["layer"]))
    columns = max(1, int(table.groupby("layer").size().max())) if len(table) else 1
    size = (1.9 * (columns + 1), 2.1 * max(1, len(layers)))
    figure = Figure(figsize=size, layout="constrained")  # keeps the title off the first row
    for row_number, layer in enumerate(layers):
        axes = figure.add_subplot(len(layers), columns + 1, row_number * (columns + 1) + 1)
        axes.imshow(explanation.image)
        axes.set_title(plain(layer), fontsize=9)
        axes.axis("off")
        for position, row in enumerate(table[table["layer"] == layer].itertuples(), start=2):
            axes = figure.add_subplot(
                len(layers), columns + 1, row_number * (columns + 1) + position
            )
            axes.imshow(explanation.segmented(layer, int(row.unit)))
            axes.set_title(plain(_caption(row)), fontsize=7)
            axes.axis("off")
    figure.suptitle(plain(f"Units that explain {explanation.image_id}"), fontsize=10)
    return figure


def folder_name(image: str | int | Path) -> str:
    """A safe folder name for an image: ``image0042`` for an index, the file's stem otherwise."""
    text = str(image)
    if text.isdigit() and not Path(text).exists():
        return f"image{int(text):04d}"
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(text).stem).strip("._") or "image"
    return stem[:80]


@writes("directory")
def write_explanation(
    directory: str | Path | Dissection,
    image: str | int | Path,
    out: str | Path | None = None,
    **options,
) -> tuple[Explanation, Path]:
    """Explain one image and write ``explain.csv``, ``explain.png``, pictures and ``index.html``.

    Parameters
    ----------
    directory : path-like or Dissection
        The dissection directory.
    image : path-like or int
        See :func:`explain_image`.
    out : path-like, optional
        Output folder (default ``DIR/explain/<image name>/``).
    **options
        ``layers``, ``top``, ``model``, ``rule`` (or its ``min_precision``, ``min_iou``,
        ``taxonomy``, ``max_p``), ``device``: see :func:`explain_image`.

    Returns
    -------
    (Explanation, Path)
        The explanation and the ``index.html`` written.
    """
    dissection = directory if isinstance(directory, Dissection) else Dissection(directory)
    explanation = explain_image(dissection, image, **options)
    root = Path(out) if out is not None else dissection.path("explain", folder_name(image))
    write_csv(root / "explain.csv", explanation.table)
    figure = save_figure(plot_explanation(explanation), root / "explain.png")
    write_png(root / "image.png", explanation.image)
    cells = []
    for row in explanation.table.itertuples():
        picture = root / "units" / f"{row.layer.replace('/', '_')}_unit{int(row.unit):04d}.png"
        write_png(picture, explanation.segmented(row.layer, int(row.unit)))
        label = "" if row.label is None or row.label != row.label else row.label
        cells.append(
            f'<figure><img src="{href(picture, root)}" alt="unit {int(row.unit)}">'
            f"<figcaption>{e(row.layer)} unit {int(row.unit)}<br><b>{e(label)}</b><br>"
            f"{row.score:.2f} &times; T{' (detector)' if row.detector else ''}"
            "</figcaption></figure>"
        )
    body = "\n".join(
        [
            f'<p><img src="{href(root / "image.png", root)}" alt="image"></p>',
            note(
                "Units ranked by peak activation on this image divided by their threshold T; "
                "each picture is the image segmented by the unit (above T)."
            ),
            f'<div class="units">{"".join(cells)}</div>',
            f'<p><img class="figure" src="{href(figure, root)}" alt="figure"></p>',
            table(explanation.table),
        ]
    )
    style = (
        ".units { display: flex; flex-wrap: wrap; gap: 8px; } figure { margin: 0; "
        "font-size: 0.8em; } .units img { height: 112px; }"
    )
    index = root / "index.html"
    write_text(index, page(f"Units that explain {explanation.image_id}", body, style))
    return explanation, index
