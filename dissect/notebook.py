"""A dissection directory shown inline in Jupyter: :class:`NotebookDissection`.

``dissect.dissect(...)`` and ``dissect.open_dissection(DIR)`` return one. Ending a cell with it
shows a summary (model, data, run, and per layer its units, detectors and a bar of their semantic
types); :meth:`~NotebookDissection.labels` is every unit's label with its type and whether it
counts as a detector; :meth:`~NotebookDissection.unit` shows a unit's top images with the region
above its threshold outlined; :meth:`~NotebookDissection.plot_types` is the paper's figure.

The HTML is plain (no widget, no script, pictures as ``data:`` URIs) and every label, name and
path in it is escaped.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .config import DetectorRule
from .dissection import Dissection
from .errors import DissectError
from .html import e
from .labels import read_labels
from .plots.semantics import TYPE_COLORS, plot_type_distribution
from .plots.units import unit_title
from .segment import iter_segments
from .semantics import detectors, label_types, layer_type_table
from .taxonomy import DEFAULT_TAXONOMY, Taxonomy

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

    from .models import LoadedModel

#: The inline summary's look (scoped by the ``dissect-inline`` class).
INLINE_STYLE = """<style>
.dissect-inline table { border-collapse: collapse; }
.dissect-inline td, .dissect-inline th { padding: 2px 8px; text-align: left; }
.dissect-inline .bar { display: flex; width: 240px; height: 12px; background: #eee; }
.dissect-inline .bar span { display: block; height: 100%; }
.dissect-inline .key { display: inline-block; width: 10px; height: 10px; margin: 0 3px 0 8px; }
.dissect-inline figure { display: inline-block; margin: 2px; text-align: center; }
.dissect-inline figcaption { font-size: 0.8em; color: #555; }
</style>"""


class HTML:
    """A piece of HTML that Jupyter shows as it is (``_repr_html_``)."""

    def __init__(self, html: str):
        self.html = html

    def _repr_html_(self) -> str:
        return self.html

    def __str__(self) -> str:
        return self.html


class NotebookDissection(Dissection):
    """A :class:`~dissect.dissection.Dissection` that shows itself inline in Jupyter.

    Parameters
    ----------
    directory : path-like
        A dissection directory (``dissect run``).
    model : str, nn.Module or LoadedModel, optional
        The dissected model, kept for :meth:`unit` (default: the manifest's MODEL spec).
    taxonomy : Taxonomy
        Semantic types; ``min_iou``, ``min_precision`` say which labels are detectors.
    """

    def __init__(
        self,
        directory: str | Path,
        model: str | torch.nn.Module | LoadedModel | None = None,
        taxonomy: Taxonomy = DEFAULT_TAXONOMY,
        min_iou: float = DetectorRule.min_iou,
        min_precision: float = DetectorRule.min_precision,
    ):
        super().__init__(directory)
        self.model = model
        self.taxonomy = taxonomy
        self.min_iou = min_iou
        self.min_precision = min_precision

    def labels(self) -> pd.DataFrame:
        """Every unit's label (empty columns where it has none), its semantic ``type`` and
        ``detector`` (whether it counts as one: IoU >= ``min_iou``, or crowd precision >=
        ``min_precision``)."""
        return unit_labels(self, self.taxonomy, self.min_iou, self.min_precision)

    def layer_types(self) -> pd.DataFrame:
        """Detectors per semantic type and layer (``layer,category,n_units,fraction,...``)."""
        labels = read_labels(self.directory)
        counts = {layer: self.n_units(layer) for layer in self.layers}
        return layer_type_table(
            labels,
            self.layers,
            counts,
            min_precision=self.min_precision,
            min_iou=self.min_iou,
            taxonomy=self.taxonomy,
        )

    def plot_types(self, percent: bool = True) -> Figure:
        """The paper's figure: semantic types of each layer's detectors, as stacked bars."""
        if read_labels(self.directory).empty:
            raise DissectError(_NO_LABELS)
        return plot_type_distribution(self.layer_types(), self.taxonomy, percent)

    def unit(self, layer: str, unit: int, top: int = 6) -> HTML:
        """A unit's label and its ``top`` images with the region above its threshold outlined."""
        return unit_view(self, layer, unit, top, self.model)

    def _repr_html_(self) -> str:
        return summary_html(self)


_NO_LABELS = (
    "no unit labels yet: dissect.dissect(..., iou=True) on data with concept masks, "
    "dissect.autolabel(d), or imported crowd answers label them."
)


def unit_labels(
    dissection: Dissection,
    taxonomy: Taxonomy = DEFAULT_TAXONOMY,
    min_iou: float = DetectorRule.min_iou,
    min_precision: float = DetectorRule.min_precision,
) -> pd.DataFrame:
    """One row per dissected unit: its label columns, ``type`` and ``detector``."""
    units = dissection.units()[["layer", "unit", "threshold"]]
    labels = read_labels(dissection.directory)
    table = units.merge(
        labels.drop(columns=["threshold", "run_id"], errors="ignore"),
        on=["layer", "unit"],
        how="left",
    )
    table["type"] = label_types(table, taxonomy)
    rule = DetectorRule(min_precision=min_precision, min_iou=min_iou, taxonomy=taxonomy)
    found = detectors(labels, rule)
    keys = set(zip(found["layer"], found["unit"], strict=True))
    table["detector"] = [
        (layer, unit) in keys for layer, unit in zip(table["layer"], table["unit"], strict=True)
    ]
    return table


def type_bar(row: pd.DataFrame, taxonomy: Taxonomy) -> str:
    """One layer's detectors as a stacked bar of its types (widths: % of the layer's units)."""
    spans = []
    for position, record in enumerate(row.itertuples(index=False)):
        if record.n_units:
            colour = TYPE_COLORS.get(record.category, f"hsl({47 * position}, 50%, 50%)")
            name = taxonomy.types.get(record.category, record.category)
            spans.append(
                f'<span style="width:{100 * record.fraction:.2f}%;background:{e(colour)}" '
                f'title="{e(name)}: {int(record.n_units)} ({100 * record.fraction:.1f}%)"></span>'
            )
    return f'<div class="bar">{"".join(spans)}</div>'


def summary_html(dissection: NotebookDissection) -> str:
    """The inline summary: the run, then per layer its units, detectors and type bar."""
    manifest = dissection.manifest
    head = (
        f"<p><b>Dissection of {e(manifest.get('model') or 'an in-memory model')}</b> over "
        f"{e(manifest.get('data'))}: {e(manifest.get('n_images'))} images, "
        f"{len(dissection.layers)} layer(s), in <code>{e(dissection.directory)}</code></p>"
    )
    labels = read_labels(dissection.directory)
    if labels.empty:
        rows = "".join(
            f"<tr><td>{e(layer)}</td><td>{dissection.n_units(layer)}</td></tr>"
            for layer in dissection.layers
        )
        table = f"<table><tr><th>layer</th><th>units</th></tr>{rows}</table>"
        body = f"{head}{table}<p>{e(_NO_LABELS)}</p>"
        return f'{INLINE_STYLE}<div class="dissect-inline">{body}</div>'
    types = dissection.layer_types()
    rows = []
    for layer in dissection.layers:
        mine = types[types["layer"] == layer]
        rows.append(
            f"<tr><td>{e(layer)}</td><td>{dissection.n_units(layer)}</td>"
            f"<td>{int(mine['n_units'].sum())}</td>"
            f"<td>{type_bar(mine, dissection.taxonomy)}</td></tr>"
        )
    legend = "".join(
        f'<span class="key" style="background:{e(TYPE_COLORS.get(key, "#999"))}"></span>{e(name)}'
        for key, name in dissection.taxonomy.types.items()
    )
    table = (
        "<table><tr><th>layer</th><th>units</th><th>detectors</th>"
        f"<th>semantic types of the detectors (bar: % of the layer's units)</th></tr>"
        f"{''.join(rows)}</table>"
    )
    rule = (
        f"A unit is a detector when its label's IoU with the concept's masks is at least "
        f"{dissection.min_iou} (crowd labels: precision at least {dissection.min_precision})."
    )
    more = "More: d.labels(), d.unit(layer, u), d.plot_types()."
    body = f"{head}{table}<p>{legend}</p><p>{e(rule)} {e(more)}</p>"
    return f'{INLINE_STYLE}<div class="dissect-inline">{body}</div>'


def png_uri(image: np.ndarray) -> str:
    """An RGB uint8 array as a ``data:image/png;base64,...`` URI."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def unit_view(
    dissection: Dissection,
    layer: str,
    unit: int,
    top: int = 6,
    model: str | torch.nn.Module | LoadedModel | None = None,
) -> HTML:
    """A unit's title (label, type, score) and its top images with the region above T outlined."""
    dissection.check_units(layer, [unit])
    (segments,) = iter_segments(dissection, layer, [unit], top, model=model, progress=False)
    pictures = "".join(
        f'<figure><img src="{png_uri(image)}" width="{min(224, image.shape[1] * 2)}" '
        f'alt="top image {rank}"><figcaption>#{int(index)} &middot; {score:.2f}</figcaption>'
        "</figure>"
        for rank, (image, index, score) in enumerate(
            zip(segments.outlined(), segments.indices, segments.scores, strict=True), 1
        )
    )
    title = unit_title(dissection, layer, unit).replace(r"\$", "$")
    caption = "top images (image index, peak activation); outlined: the region above T"
    return HTML(
        f'{INLINE_STYLE}<div class="dissect-inline"><p><b>{e(title)}</b></p>{pictures}'
        f"<p><small>{e(caption)}</small></p></div>"
    )
