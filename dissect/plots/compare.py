"""Figures of a comparison of networks (:mod:`dissect.compare`), the paper's way.

:func:`plot_type_comparison` draws one stacked bar of semantic types per network per layer (Zhou
et al., ICLR 2015, the figure comparing Places-CNN and ImageNet-CNN), with published reference
bars beside ours where a layer name matches; :func:`plot_detector_comparison` the detectors,
unique concepts and object classes covered per layer; :func:`plot_rf_comparison` receptive-field
sizes. Each returns a matplotlib Figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..errors import DissectError
from ..taxonomy import DEFAULT_TAXONOMY, Taxonomy
from .figure import plain, save_figure
from .semantics import TYPE_COLORS

if TYPE_CHECKING:
    from ..compare import Comparison

#: Hatches that tell the networks apart (ours first, then the reference networks).
HATCHES = ("", "//", "..", "xx", "\\\\", "oo", "--", "++")


def _bars(
    types: pd.DataFrame, reference: pd.DataFrame | None, rows: Sequence[str], share: str
) -> list[tuple[str, bool, pd.DataFrame]]:
    """(network, is_reference, rows x types table of percentages) for every bar series."""
    if share not in ("units", "detectors"):
        raise DissectError(f"share must be 'units' or 'detectors', got {share!r}.")
    value = "fraction" if share == "units" else "share"
    series = []
    for network in dict.fromkeys(types["network"]):
        mine = types[types["network"] == network]
        wide = mine.pivot_table(
            index="row", columns="category", values=value, aggfunc="sum", sort=False
        )
        series.append((network, False, wide.reindex(index=rows) * 100))
    if reference is not None:
        for network in dict.fromkeys(reference["network"]):
            theirs = reference[reference["network"] == network]
            wide = theirs.pivot_table(
                index="layer", columns="category", values="fraction", aggfunc="sum", sort=False
            )
            if share == "detectors":
                wide = wide.div(wide.sum(axis=1), axis=0)
            series.append((network, True, wide.reindex(index=rows) * 100))
    return series


def plot_type_comparison(
    comparison: Comparison,
    reference: pd.DataFrame | None = None,
    share: str = "units",
    taxonomy: Taxonomy | None = None,
) -> Figure:
    """One stacked bar of semantic types per network per layer, reference bars hatched beside.

    Parameters
    ----------
    comparison : Comparison
        From :func:`dissect.compare.compare_dissections`.
    reference : DataFrame, optional
        ``network,layer,category,fraction`` of published networks (e.g.
        :func:`dissect.reference.zhou2015_types`); a reference layer is drawn in the row of the
        same name, and left out where no row has its name.
    share : str
        ``units``: detectors of each type as a share of the layer's units (a reference's shares
        of annotations as they are); ``detectors``: as a share of the layer's detectors (a
        reference's rows normalised to 100 %).
    taxonomy : Taxonomy, optional
        Type order and names (default: the comparison's).

    Returns
    -------
    Figure
    """
    taxonomy = taxonomy or comparison.taxonomy
    return plot_type_bars(comparison.types, comparison.rows, reference, share, taxonomy)


def _share_label(share: str, reference: bool) -> str:
    """What the bars' height measures, for the y axis (ours, then the published bars')."""
    ours = "% of the layer's units that detect it" if share == "units" else "% of its detectors"
    if not reference:
        return ours
    theirs = "of crowd annotations" if share == "units" else "of annotations, to 100%"
    return f"plain bars: {ours}\nhatched (published): % {theirs}"


def plot_type_bars(
    types: pd.DataFrame,
    rows: Sequence[str],
    reference: pd.DataFrame | None = None,
    share: str = "units",
    taxonomy: Taxonomy = DEFAULT_TAXONOMY,
) -> Figure:
    """:func:`plot_type_comparison` from a types table; one network works too (the report).

    Parameters
    ----------
    types : DataFrame
        ``network,row,category,fraction`` (and ``share`` for ``share="detectors"``), as in
        :attr:`dissect.compare.Comparison.types`.
    rows : sequence of str
        Rows (layers) in display order.
    reference, share, taxonomy
        See :func:`plot_type_comparison`.

    Returns
    -------
    Figure
    """
    rows = list(rows)
    top = 0.0
    series = _bars(types, reference, rows, share)
    series = [item for item in series if not (item[1] and item[2].isna().all().all())]
    width = 0.8 / len(series)
    figure = Figure(figsize=(max(5.0, 1.2 + 0.35 * len(rows) * len(series)), 4.2))
    axes = figure.add_subplot()
    for number, (_, is_reference, wide) in enumerate(series):
        wide = wide.reindex(columns=taxonomy.keys).fillna(0.0)
        positions = np.arange(len(rows)) - 0.4 + width * (number + 0.5)
        bottom = np.zeros(len(rows))
        for colour, key in enumerate(taxonomy.keys):
            heights = wide[key].to_numpy()
            axes.bar(
                positions,
                heights,
                width * 0.92,
                bottom=bottom,
                color=TYPE_COLORS.get(key, f"C{colour % 10}"),
                hatch=HATCHES[number % len(HATCHES)],
                edgecolor="white" if not is_reference else "#555555",
                linewidth=0.4,
                alpha=0.65 if is_reference else 1.0,
            )
            bottom += heights
        top = max(top, float(bottom.max(initial=0.0)))
    axes.set_xticks(range(len(rows)), [plain(row) for row in rows])
    has_reference = any(is_reference for _, is_reference, _ in series)
    axes.set_ylabel(_share_label(share, has_reference))
    axes.set_ylim(0, max(100.0 if has_reference else 0.0, float(top)) * 1.05 or 1.0)
    axes.set_title("Semantic types per layer, one bar per network")
    types = [
        Patch(color=TYPE_COLORS.get(k, "C0"), label=plain(taxonomy.types[k])) for k in taxonomy.keys
    ]
    networks = [
        Patch(
            facecolor="#dddddd",
            edgecolor="#555555",
            hatch=HATCHES[number % len(HATCHES)],
            label=plain(f"{name} (published)" if is_reference else name),
        )
        for number, (name, is_reference, _) in enumerate(series)
    ]
    legend = axes.legend(
        handles=types[::-1], loc="upper left", bbox_to_anchor=(1.01, 1.0), title="type"
    )
    axes.add_artist(legend)
    axes.legend(
        handles=networks, loc="lower left", bbox_to_anchor=(1.01, 0.0), title="bars, left to right"
    )
    return figure


def plot_detector_comparison(comparison: Comparison) -> Figure:
    """Grouped bars per layer: detectors, unique concepts, object classes covered.

    Parameters
    ----------
    comparison : Comparison
        From :func:`dissect.compare.compare_dissections`.

    Returns
    -------
    Figure
    """
    panels = (
        ("detectors", "detector units"),
        ("unique_concepts", "unique concepts"),
        ("objects_covered", "object classes covered\n(object and part detectors)"),
    )
    rows = comparison.rows
    figure = Figure(figsize=(max(9.0, 1.5 * len(rows) * 1.2 + 3), 3.4))
    width = 0.8 / len(comparison.networks)
    for panel, (column, title) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), panel + 1)
        table = comparison.pivot(column)
        for number, network in enumerate(comparison.networks):
            positions = np.arange(len(rows)) - 0.4 + width * (number + 0.5)
            axes.bar(positions, table[network].to_numpy(), width * 0.92, label=plain(network))
        axes.set_xticks(range(len(rows)), [plain(row) for row in rows], rotation=30)
        axes.set_title(title, fontsize=10)
        if panel == 0:
            axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def plot_rf_comparison(comparison: Comparison) -> Figure:
    """Empirical receptive-field size (mean and std) per layer and network; theoretical dashed.

    Parameters
    ----------
    comparison : Comparison
        From :func:`dissect.compare.compare_dissections`.

    Returns
    -------
    Figure
    """
    rows = comparison.rows
    figure = Figure(figsize=(max(5.0, 1.0 + 0.9 * len(rows)), 3.6))
    axes = figure.add_subplot()
    x = np.arange(len(rows))
    mean, std = comparison.pivot("rf_empirical_mean"), comparison.pivot("rf_empirical_std")
    theoretical = comparison.pivot("rf_theoretical")
    for number, network in enumerate(comparison.networks):
        colour = f"C{number % 10}"
        axes.errorbar(
            x + 0.06 * number,
            mean[network],
            yerr=std[network],
            marker="o",
            color=colour,
            capsize=3,
            label=plain(f"{network}, empirical"),
        )
        axes.plot(
            x,
            theoretical[network],
            "--",
            color=colour,
            alpha=0.6,
            label=plain(f"{network}, theoretical"),
        )
    axes.set_xticks(x, [plain(row) for row in rows])
    axes.set_ylabel("receptive field (px)")
    axes.set_title("Receptive fields per layer")
    axes.legend(fontsize=8)
    return figure


def write_compare_plots(
    comparison: Comparison, folder: str | Path, reference: pd.DataFrame | None, share: str
) -> list[Path]:
    """Save the comparison's figures under ``folder``; return their paths."""
    folder = Path(folder)
    figures = {
        "types.png": plot_type_comparison(comparison, reference, share),
        "detectors.png": plot_detector_comparison(comparison),
    }
    if comparison.layers["rf_units"].sum() > 0:
        figures["receptive_fields.png"] = plot_rf_comparison(comparison)
    return [save_figure(figure, folder / name) for name, figure in figures.items()]


def write_reference_plot(
    folder: str | Path,
    layer_types: pd.DataFrame,
    network: str,
    taxonomy: Taxonomy = DEFAULT_TAXONOMY,
) -> list[Path]:
    """One network's types beside the paper's (``types_vs_zhou2015.png``), for the report.

    Parameters
    ----------
    folder : path-like
        Where to save the figure.
    layer_types : DataFrame
        ``layer,category,n_units,fraction`` (``layer_types.csv``).
    network : str
        The network's name in the legend.
    taxonomy : Taxonomy
        Type order and names.

    Returns
    -------
    list of Path
        The figure written, or nothing when no layer shares a name with the paper's layers
        (pool1, pool2, conv3, conv4, pool5).
    """
    from ..reference import zhou2015_types

    reference = zhou2015_types()
    rows = list(dict.fromkeys(layer_types["layer"]))
    if not set(rows) & set(reference["layer"]):
        return []
    types = layer_types.assign(network=network, row=layer_types["layer"])
    figure = plot_type_bars(types, rows, reference, "units", taxonomy)
    return [save_figure(figure, Path(folder) / "types_vs_zhou2015.png")]
