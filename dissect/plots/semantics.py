"""Figures of what the layers detect: semantic types per layer, detectors, units per concept.

Each function takes the tables of :mod:`dissect.semantics` (``layer_types.csv``,
``concepts.csv``) and returns a matplotlib Figure; :func:`save_figure` writes one as a PNG.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from ..taxonomy import DEFAULT_TAXONOMY, Taxonomy
from .figure import plain, save_figure

#: One colour per default type, shallow (light) to deep (dark), as in the paper's figure.
TYPE_COLORS = {
    "color": "#f4a261",
    "texture": "#e9c46a",
    "region": "#8ab17d",
    "part": "#2a9d8f",
    "object": "#287271",
    "scene": "#264653",
}


def _type_color(key: str, position: int) -> str:
    return TYPE_COLORS.get(key, f"C{position % 10}")


def plot_type_distribution(
    layer_types: pd.DataFrame,
    taxonomy: Taxonomy = DEFAULT_TAXONOMY,
    percent: bool = True,
) -> Figure:
    """Stacked bars of the semantic types of each layer's detectors (Zhou et al., Fig. 5).

    Parameters
    ----------
    layer_types : DataFrame
        ``layer,category,n_units,fraction``, as from :func:`dissect.semantics.layer_type_table`.
    taxonomy : Taxonomy
        Type order and display names.
    percent : bool
        Bar heights as the percentage of the layer's units (default) or as unit counts.

    Returns
    -------
    Figure
    """
    value = "fraction" if percent else "n_units"
    layers = list(dict.fromkeys(layer_types["layer"]))
    table = layer_types.pivot_table(
        index="layer", columns="category", values=value, aggfunc="sum", fill_value=0
    ).reindex(index=layers, columns=taxonomy.keys, fill_value=0)
    if percent:
        table = table * 100
    figure = Figure(figsize=(max(4.0, 1.0 + 0.8 * len(layers)), 4.0))
    axes = figure.add_subplot()
    bottom = pd.Series(0.0, index=table.index)
    for position, key in enumerate(taxonomy.keys):
        axes.bar(
            range(len(layers)),
            table[key],
            bottom=bottom,
            color=_type_color(key, position),
            label=plain(taxonomy.types[key]),
            edgecolor="white",
            linewidth=0.5,
        )
        bottom += table[key]
    axes.set_xticks(
        range(len(layers)),
        [plain(layer) for layer in layers],
        rotation=30 if len(layers) > 6 else 0,
    )
    axes.set_ylabel("units of the layer (%)" if percent else "units")
    axes.set_ylim(0, max(float(bottom.max()), 1.0) * 1.08)  # headroom: no bar meets the frame
    axes.set_title("Semantic types of detector units per layer")
    handles, names = axes.get_legend_handles_labels()
    axes.legend(handles[::-1], names[::-1], loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure


def plot_detectors_per_layer(layer_types: pd.DataFrame) -> Figure:
    """Detector units and distinct concepts of each layer, as grouped bars.

    Parameters
    ----------
    layer_types : DataFrame
        ``layer,category,n_units,unique_concepts``.

    Returns
    -------
    Figure
    """
    layers = list(dict.fromkeys(layer_types["layer"]))
    sums = layer_types.groupby("layer", sort=False)[["n_units", "unique_concepts"]].sum()
    sums = sums.reindex(layers, fill_value=0)
    figure = Figure(figsize=(max(4.0, 1.0 + 0.8 * len(layers)), 3.5))
    axes = figure.add_subplot()
    positions = range(len(layers))
    axes.bar([p - 0.2 for p in positions], sums["n_units"], 0.4, label="detector units")
    axes.bar([p + 0.2 for p in positions], sums["unique_concepts"], 0.4, label="unique concepts")
    axes.set_xticks(
        list(positions), [plain(layer) for layer in layers], rotation=30 if len(layers) > 6 else 0
    )
    axes.set_ylabel("count")
    axes.set_title("Detectors per layer")
    axes.legend()
    return figure


def plot_units_per_concept(
    concepts: pd.DataFrame,
    category: str = "object",
    layer: str | None = None,
    top: int = 40,
) -> Figure:
    """Horizontal bars: how many detector units each concept of one type has.

    Parameters
    ----------
    concepts : DataFrame
        ``layer,category,label,n_units``, as from :func:`dissect.semantics.concept_table`.
    category : str
        The semantic type key to show (``object`` by default, as in the paper).
    layer : str, optional
        One layer; default all layers summed.
    top : int
        Show at most this many concepts, the most frequent.

    Returns
    -------
    Figure
    """
    rows = concepts[concepts["category"] == category]
    if layer is not None:
        rows = rows[rows["layer"] == layer]
    counts = rows.groupby("label")["n_units"].sum().sort_values(ascending=False, kind="stable")
    counts = counts.head(top)[::-1]
    figure = Figure(figsize=(5.0, max(2.0, 0.6 + 0.22 * len(counts))))
    axes = figure.add_subplot()
    axes.barh(range(len(counts)), counts.to_numpy(), color=TYPE_COLORS.get(category, "C0"))
    axes.set_yticks(range(len(counts)), [plain(label) for label in counts.index])
    axes.set_xlabel("detector units")
    where = f" in {layer}" if layer is not None else ""
    axes.set_title(plain(f"Units per {category} concept{where}"))
    if counts.empty:
        axes.text(0.5, 0.5, "no detectors", ha="center", va="center", transform=axes.transAxes)
    return figure


def write_semantic_plots(
    directory: str | Path,
    layer_types: pd.DataFrame,
    concepts: pd.DataFrame,
    taxonomy: Taxonomy = DEFAULT_TAXONOMY,
) -> list[Path]:
    """Save the three semantic figures under ``directory/plots/``; return their paths."""
    plots = Path(directory) / "plots"
    figures = {
        "type_distribution.png": plot_type_distribution(layer_types, taxonomy),
        "detectors_per_layer.png": plot_detectors_per_layer(layer_types),
        "units_per_object.png": plot_units_per_concept(concepts, "object"),
    }
    return [save_figure(figure, plots / name) for name, figure in figures.items()]
