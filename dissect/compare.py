"""Several networks dissected on the same data, side by side (``dissect compare``).

Zhou et al. (ICLR 2015) compare one architecture trained for scenes (Places-CNN) with the same
architecture trained for objects (ImageNet-CNN): per layer, the semantic types of the units, how
many units detect something, and how large their receptive fields are. :func:`compare_dissections`
reads two or more labelled dissection directories and aligns their layers, by name or by an
explicit match (``conv5`` of one network against ``layer4`` of another); it returns a
:class:`Comparison` of pandas tables. :func:`write_comparison` writes them as CSV, with the
figures of :mod:`dissect.plots.compare` and an HTML page in the report's style.

A unit counts as a detector by the rules of :func:`dissect.semantics.detectors` (the same
``min_precision`` / ``min_iou`` as ``dissect stats``), with the significance rule (q-value at most
the FDR level) where every network's automatic labels have q-values
(:mod:`dissect.significance_rule`). An object class is *covered* in a layer when
some object or object-part detector of that layer names it (a part counts for its object).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .config import DetectorRule
from .directory import IOU, IOU_CONCEPTS, RF_LAYERS, read_table
from .dissection import Dissection
from .errors import DissectError
from .html import e, href, note, page, table
from .io import write_csv, write_text
from .labels import read_labels, segmenters
from .lock import writes
from .semantics import detectors, label_types, layer_type_table, object_of
from .significance_rule import CountingRule, counting_rule
from .taxonomy import DEFAULT_TAXONOMY, Taxonomy

#: Files the rf stage writes that the comparison reads.


@dataclass
class Comparison:
    """Tables of several dissections with their layers aligned.

    Attributes
    ----------
    networks : list of str
        Network names, in the order given.
    matches : DataFrame
        ``row,network,layer``: which layer of each network sits in each row of the comparison.
        ``row`` is the layer name when every network's layer has the same name, else the names
        joined by ``:``.
    types : DataFrame
        ``network,row,layer,category,n_units,fraction,share,unique_concepts``: detectors of each
        semantic type, ``fraction`` of the layer's units, ``share`` of the layer's detectors.
    layers : DataFrame
        ``network,row,layer,n_units,detectors,detector_fraction,unique_concepts,objects_covered,
        objects_total,rule,rf_theoretical,rf_empirical_mean,rf_empirical_std,rf_units``: one row
        per network and row (``rule``: what counted a detector, e.g. ``IoU >= 0.04, q <= 0.05
        (FDR)``; receptive fields empirical only where ``dissect rf`` has run).
    objects : DataFrame
        ``network,row,layer,object,n_units``: object and part detectors per object class.
    sources : DataFrame
        ``network,model,data,images,run_id,directory``: what each dissection ran on.
    taxonomy : Taxonomy
        The semantic types used.
    counted : CountingRule or None
        The rule every network's detectors were counted by, and the sentence saying it.
    """

    networks: list[str]
    matches: pd.DataFrame
    types: pd.DataFrame
    layers: pd.DataFrame
    objects: pd.DataFrame
    sources: pd.DataFrame
    taxonomy: Taxonomy = DEFAULT_TAXONOMY
    counted: CountingRule | None = None

    @property
    def rows(self) -> list[str]:
        """Row names in order."""
        return list(dict.fromkeys(self.matches["row"]))

    def pivot(self, value: str = "detectors") -> pd.DataFrame:
        """One column of :attr:`layers` as a rows x networks table."""
        return self.layers.pivot(index="row", columns="network", values=value).reindex(
            index=self.rows, columns=self.networks
        )


def parse_match(texts: Sequence[str], n_networks: int) -> list[tuple[str, ...]]:
    """``["conv5:layer4", ...]`` -> ``[("conv5", "layer4"), ...]``, one name per network."""
    matches = []
    for text in texts:
        names = tuple(name.strip() for name in text.split(":"))
        if len(names) != n_networks or not all(names):
            raise DissectError(
                f"--match {text!r} must name one layer per network ({n_networks}), separated by "
                f"colons, e.g. --match {':'.join(['conv5'] * n_networks)}."
            )
        matches.append(names)
    return matches


def match_layers(
    layers: Sequence[Sequence[str]], match: Sequence[Sequence[str]] | None = None
) -> list[tuple[str, ...]]:
    """Align the layers of several networks.

    Parameters
    ----------
    layers : sequence of sequences of str
        The dissected layers of each network.
    match : sequence of tuples of str, optional
        Explicit rows, one layer name per network. Default: the layers every network has, in
        the order of the first.

    Returns
    -------
    list of tuples of str
        One tuple per row, one layer per network.
    """
    if match:
        for row in match:
            for position, (name, names) in enumerate(zip(row, layers, strict=True)):
                if name not in names:
                    raise DissectError(
                        f"--match names layer {name!r} for network {position + 1}, which has "
                        f"{', '.join(names)}."
                    )
        return [tuple(row) for row in match]
    common = [name for name in layers[0] if all(name in other for other in layers[1:])]
    if not common:
        raise DissectError(
            "the networks have no layer name in common; pair layers with --match A:B "
            f"(layers: {' | '.join(', '.join(names) for names in layers)})."
        )
    return [(name,) * len(layers) for name in common]


def network_names(dissections: Sequence[Dissection], names: Sequence[str] | None) -> list[str]:
    """The given names, or each manifest's MODEL spec (made unique with the folder name)."""
    if names:
        if len(names) != len(dissections) or len(set(names)) != len(names):
            raise DissectError(
                f"--names needs {len(dissections)} distinct names, one per directory; got "
                f"{', '.join(names)}."
            )
        return list(names)
    found = [str(d.manifest.get("model") or d.directory.name) for d in dissections]
    if len(set(found)) < len(found):
        found = [f"{name} ({d.directory.name})" for name, d in zip(found, dissections, strict=True)]
    if len(set(found)) < len(found):
        found = [f"{name} #{i + 1}" for i, name in enumerate(found)]
    return found


def _objects(dissection: Dissection, labels: pd.DataFrame, taxonomy: Taxonomy) -> set[str]:
    """The object classes of the data: from ``iou/concepts.csv``, else the object labels."""
    concepts = read_table(dissection.directory, f"{IOU}/{IOU_CONCEPTS}")
    if concepts is not None:
        return set(concepts.loc[concepts["category"] == "object", "name"])
    kinds = label_types(labels, taxonomy)
    return {
        str(label) for label, kind in zip(labels["label"], kinds, strict=True) if kind == "object"
    }


def _rf(dissection: Dissection, layer: str) -> dict:
    geometry = dissection.geometry(layer)
    rf = {
        "rf_theoretical": math.sqrt(geometry.rf[0] * geometry.rf[1]),
        "rf_empirical_mean": math.nan,
        "rf_empirical_std": math.nan,
        "rf_units": 0,
    }
    summary = read_table(dissection.directory, RF_LAYERS)
    if summary is not None:
        for found in summary.get("run_id", pd.Series(dtype=str)).dropna().unique():
            dissection.check_run(found, RF_LAYERS, f"dissect rf {dissection.directory}")
        summary = summary.set_index("layer")
        if layer in summary.index:
            row = summary.loc[layer]
            rf["rf_empirical_mean"] = float(row["rf_empirical_mean"])
            rf["rf_empirical_std"] = float(row["rf_empirical_std"])
            rf["rf_units"] = int(row["n_units"])
    return rf


def compare_dissections(
    directories: Sequence[str | Path | Dissection],
    *,
    names: Sequence[str] | None = None,
    match: Sequence[Sequence[str]] | None = None,
    rule: DetectorRule | None = None,
    significance: bool = True,
    **loose: Any,
) -> Comparison:
    """Compare labelled dissections of several networks, layer by layer.

    Parameters
    ----------
    directories : sequence of path-like or Dissection
        Two or more dissection directories with unit labels (``dissect autolabel`` or imported
        crowd annotations), ideally of the same data.
    names : sequence of str, optional
        A name per network (default: each manifest's MODEL spec).
    match : sequence of tuples of str, optional
        Rows of layers to compare, one layer name per network (default: layers by name).
    rule : DetectorRule, optional
        Which units count as detectors, and their types (see :func:`dissect.semantics.detectors`).
        Where every network's automatic labels have q-values and the rule sets no ``fdr``, the
        significance rule at :data:`~dissect.config.FDR` is added for all of them, else none
        gets it (:mod:`dissect.significance_rule`); ``layers``'s ``rule`` column and the page
        say which.
    significance : bool
        False: never add the significance rule (the IoU rule, as asked).
    **loose
        ``min_precision``, ``min_iou``, ``taxonomy``, ``max_p``, ``fdr``: replace the rule's
        value.

    Returns
    -------
    Comparison
    """
    if len(directories) < 2:
        raise DissectError("compare needs at least two dissection directories.")
    dissections = [d if isinstance(d, Dissection) else Dissection(d) for d in directories]
    networks = network_names(dissections, names)
    rows = match_layers([d.layers for d in dissections], match)
    row_names = [row[0] if len(set(row)) == 1 else ":".join(row) for row in rows]
    if len(set(row_names)) < len(row_names):
        raise DissectError("--match lists the same row of layers twice; list each pair once.")
    rule = (rule or DetectorRule()).replace(**loose)
    taxonomy = rule.types()
    tables = labels_tables(dissections)
    counted = counting_rule(tables, rule, significance)
    rule = counted.rule
    matches, types, layers, objects = [], [], [], []
    for position, (network, dissection) in enumerate(zip(networks, dissections, strict=True)):
        labels = tables[position]
        wanted = [row[position] for row in rows]
        counts = {layer: dissection.n_units(layer) for layer in wanted}
        typed = layer_type_table(labels, wanted, counts, rule=rule)
        found = detectors(labels, rule)
        known = _objects(dissection, labels, taxonomy)
        for row, layer in zip(row_names, wanted, strict=True):
            matches.append({"row": row, "network": network, "layer": layer})
            of_layer = typed[typed["layer"] == layer]
            total = int(of_layer["n_units"].sum())
            types.append(
                of_layer.assign(
                    network=network,
                    row=row,
                    share=of_layer["n_units"] / total if total else 0.0,
                )
            )
            covered = objects_covered(found[found["layer"] == layer], known)
            for name, count in sorted(covered.items()):
                objects.append(
                    {
                        "network": network,
                        "row": row,
                        "layer": layer,
                        "object": name,
                        "n_units": int(count),
                    }
                )
            in_layer = found[found["layer"] == layer]
            layers.append(
                {
                    "network": network,
                    "row": row,
                    "layer": layer,
                    "n_units": counts[layer],
                    "detectors": len(in_layer),
                    "detector_fraction": len(in_layer) / counts[layer],
                    "unique_concepts": in_layer["label"].nunique(),
                    "objects_covered": len(covered),
                    "objects_total": len(known),
                    "rule": rule.describe(),
                    **_rf(dissection, layer),
                }
            )
    return Comparison(
        networks=networks,
        matches=pd.DataFrame(matches, columns=["row", "network", "layer"]),
        types=pd.concat(types, ignore_index=True)[TYPE_COLUMNS],
        layers=pd.DataFrame(layers),
        objects=pd.DataFrame(objects, columns=["network", "row", "layer", "object", "n_units"]),
        sources=sources_table(networks, dissections),
        taxonomy=taxonomy,
        counted=counted,
    )


def labels_tables(dissections: Sequence[Dissection]) -> list[pd.DataFrame]:
    """Every dissection's ``labels.csv``; one without labels is refused, naming the fix."""
    tables = [read_labels(dissection.directory) for dissection in dissections]
    for labels, dissection in zip(tables, dissections, strict=True):
        if labels.empty:
            raise DissectError(
                f"{str(dissection.directory)!r} has no unit labels; run dissect autolabel on it "
                "(or import crowd annotations) before comparing."
            )
    return tables


#: Columns of :attr:`Comparison.types`.
TYPE_COLUMNS = [
    "network",
    "row",
    "layer",
    "category",
    "n_units",
    "fraction",
    "share",
    "unique_concepts",
]


def objects_covered(found: pd.DataFrame, known: set[str]) -> pd.Series:
    """Detector units per object class of the data among one layer's detectors ``found``
    (object and part detectors; a part counts for its object)."""
    hits = found[found["type"].isin(["object", "part"])]
    covered = pd.Series([object_of(str(label), known) for label in hits["label"]])
    return covered[covered.isin(known)].value_counts()


def sources_table(networks: Sequence[str], dissections: Sequence[Dissection]) -> pd.DataFrame:
    """Where each network's dissection comes from (:attr:`Comparison.sources`)."""
    return pd.DataFrame(
        {
            "network": networks,
            "model": [d.manifest.get("model") for d in dissections],
            "data": [d.manifest.get("data") for d in dissections],
            "images": [d.manifest.get("n_images") for d in dissections],
            "run_id": [d.run_id for d in dissections],
            "segmenter": [";".join(segmenters(read_labels(d.directory))) for d in dissections],
            "directory": [str(d.directory) for d in dissections],
        }
    )


@writes("out")
def write_comparison(
    comparison: Comparison,
    out: str | Path,
    *,
    reference: pd.DataFrame | None = None,
    share: str = "units",
) -> Path:
    """Write the comparison's tables, figures and ``index.html`` under ``out``.

    Parameters
    ----------
    comparison : Comparison
        From :func:`compare_dissections`.
    out : path-like
        Output folder: ``networks.csv``, ``types.csv``, ``layers.csv``, ``objects.csv``,
        ``plots/*.png``,
        ``index.html`` (self-contained, relative links).
    reference : DataFrame, optional
        Published distributions to draw beside ours (``network,layer,category,fraction``, e.g.
        :func:`dissect.reference.zhou2015_types`); layers are placed by name.
    share : str
        Bar heights as the share of each layer's ``units`` (default) or of its ``detectors``.

    Returns
    -------
    Path
        The ``index.html`` written.
    """
    from .plots.compare import write_compare_plots

    out = Path(out)
    if (out / "plots").is_dir():
        shutil.rmtree(out / "plots")  # figures of an earlier comparison
    write_csv(out / "networks.csv", comparison.sources)
    write_csv(out / "types.csv", comparison.types)
    write_csv(out / "layers.csv", comparison.layers)
    write_csv(out / "objects.csv", comparison.objects)
    figures = write_compare_plots(comparison, out / "plots", reference, share)
    if reference is not None:
        write_csv(out / "reference.csv", reference)
    index = out / "index.html"
    write_text(index, comparison_page(comparison, out, figures, reference))
    return index


def comparison_page(
    comparison: Comparison, root: Path, figures: Sequence[Path], reference: pd.DataFrame | None
) -> str:
    """The HTML of ``index.html``: tables per row of layers, figures, the reference."""
    taxonomy = comparison.taxonomy
    wide = comparison.types.pivot_table(
        index=["row", "network"], columns="category", values="n_units", aggfunc="sum", sort=False
    ).reindex(columns=taxonomy.keys, fill_value=0)
    summary = comparison.layers.set_index(["row", "network"])
    types_rows = []
    for (row, network), counts in wide.iterrows():
        entry = summary.loc[(row, network)]
        types_rows.append(
            {
                "layer": row,
                "network": network,
                **({"its layer": entry["layer"]} if entry["layer"] != row else {}),
                **{
                    taxonomy.types[key]: f"{int(counts[key])} "
                    f"({100 * counts[key] / entry['n_units']:.1f}%)"
                    for key in taxonomy.keys
                },
                "detectors": f"{int(entry['detectors'])} of {int(entry['n_units'])}",
                "unique concepts": int(entry["unique_concepts"]),
                "objects covered": f"{int(entry['objects_covered'])} of "
                f"{int(entry['objects_total'])}",
            }
        )
    rf = comparison.layers[
        ["row", "network", "rf_theoretical", "rf_empirical_mean", "rf_empirical_std", "rf_units"]
    ].rename(columns={"row": "layer", "rf_units": "units measured"})
    covered = (
        comparison.objects.groupby(["row", "network"], sort=False)["object"]
        .agg(lambda names: ", ".join(names))
        .reset_index()
        .rename(columns={"row": "layer", "object": "object classes covered"})
    )
    images = "".join(
        f'<p><img class="figure" src="{href(path, root)}" alt="{e(path.stem)}"></p>'
        for path in figures
    )
    body = [
        "<h2>Networks</h2>",
        table(comparison.sources),
        ""
        if comparison.sources["data"].nunique() == 1
        else note("The networks were dissected on different data: counts are not comparable."),
        "<h2>Semantic types per layer</h2>",
        note("Detector units of each type (and their share of the layer's units)."),
        note(comparison.counted.text) if comparison.counted is not None else "",
        table(pd.DataFrame(types_rows).fillna("")),
        images,
        "<h2>Object classes covered by object and part detectors</h2>",
        table(covered) if len(covered) else note("No object or part detectors."),
        "<h2>Receptive fields (px)</h2>",
        table(rf),
    ]
    if reference is not None:
        shares = reference.pivot_table(
            index=["network", "layer"], columns="category", values="fraction", sort=False
        ).reindex(columns=taxonomy.keys)
        shares.columns = [taxonomy.types[key] for key in shares.columns]
        body += [
            "<h2>Reference</h2>",
            note(reference.attrs.get("source", "Published figures, drawn hatched beside ours.")),
            table(shares.reset_index()),
        ]
    return page(f"Comparison of {', '.join(comparison.networks)}", "\n".join(body))
