"""The static HTML report of a dissection directory (``dissect report``).

``report/index.html`` shows whatever stages have been run: the run summary; per-layer semantic
types (from ``labels.csv``); the agreement between annotators of each layer (Fleiss' kappa, from
``annotations_raw.csv``); the receptive-field summary (``receptive_fields_layers.csv``); and one
row per unit with its label, type, score, whether it counts as a detector, its receptive-field
size, a strip of its segmented top images (from ``segments/``, ``dissect segment``) and its
empirical receptive-field map (from ``receptive_fields/``, ``dissect rf``). A small inline script
filters the units by layer, type, label text and detector status.

Everything the page shows lives under ``report/`` (``assets/`` holds the figures and thumbnails)
and is linked relatively, so the folder opens from disk and can be zipped and shared. Every label,
name and path taken from the directory is HTML-escaped.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from string import Template
from typing import Any

import pandas as pd

from .annotation.agreement import layer_agreement
from .annotation.store import read_raw
from .config import DetectorRule, ReportConfig
from .directory import (
    ABLATION_GROUPS,
    IOU,
    IOU_CONCEPTS,
    RF_LAYERS,
    RF_UNITS,
    layer_file_name,
    read_table,
)
from .dissection import Dissection
from .errors import DissectError
from .html import STYLE, VIEWPORT, e, href
from .html import note as _note
from .html import table as _table
from .io import atomic_path, write_text
from .labels import read_labels
from .lock import writes
from .plots.compare import write_reference_plot
from .plots.semantics import write_semantic_plots
from .report_units import unit_assets, unit_table, units_section
from .semantics import concept_table, layer_type_table
from .significance_rule import CountingRule, counting_rule
from .taxonomy import Taxonomy

#: Its columns as the page names them (run_id is checked, not shown).
RF_COLUMNS = {
    "layer": "layer",
    "rf_theoretical": "theoretical (px)",
    "rf_empirical_mean": "half-max, mean (px)",
    "rf_empirical_std": "half-max, sd",
    "ratio": "half-max / theoretical",
    "rf_mass50_mean": "50% mass, mean (px)",
    "rf_mass50_std": "50% mass, sd",
    "rf_mass80_mean": "80% mass, mean (px)",
    "rf_mass80_std": "80% mass, sd",
    "n_units": "units measured",
    "n_silent": "silent units",
    "silent_units": "which",
}

PAGE = Template(
    """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
$viewport
<title>$title</title>
<style>
$style
.filters { margin: 0.6em 0; display: flex; gap: 1em; align-items: center; flex-wrap: wrap; }
.intro { display: flex; flex-wrap: wrap; gap: 1em 2.5em; align-items: flex-start; }
.intro > * { flex: 1 1 340px; min-width: 0; }
.howto { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: 0.4em 1em;
  max-width: 46em; font-size: 0.92em; }
.howto h2 { margin-top: 0.4em; }
@media (min-width: 601px) { .howto dl { grid-template-columns: 9em auto; } }
.sub { font-weight: normal; color: #777; font-size: 0.85em; }
tr.detector td.flag { color: #1a7f37; font-weight: bold; }
tr.other td { color: #8c959f; } tr.other td.guess { font-style: italic; }
.tag { font-size: 0.75em; font-style: normal; border: 1px solid #c6cbd1; border-radius: 3px;
  padding: 0 3px; white-space: nowrap; }
td.pictures { white-space: nowrap; }
img.top { height: ${thumb}px; margin-right: 3px; border: 1px solid #ddd; }
img.top:hover { outline: 2px solid #0969da; }
img.rf { height: ${thumb}px; image-rendering: pixelated; }
</style>
</head>
<body>
<h1>$title</h1>
<div class="intro">
<section><h2>Run</h2>
$summary
</section>
$howto
</div>
<h2>Semantic types per layer</h2>
$types
<h2>Agreement between annotators</h2>
$agreement
<h2>Receptive fields</h2>
$receptive_fields
<h2>What the units do for the network (ablation)</h2>
$ablation
<h2>Units</h2>
$units_note
<div class="filters">
<label>Layer <select id="f-layer"><option value="">all</option>$layer_options</select></label>
<label>Type <select id="f-type"><option value="">all</option>$type_options</select></label>
<label>Label <input id="f-label" type="search" placeholder="contains..."></label>
<label><input id="f-detector" type="checkbox"> detectors only</label>
<span id="f-count"></span>
</div>
$units
<script>
function applyFilter() {
  var layer = document.getElementById("f-layer").value;
  var type = document.getElementById("f-type").value;
  var text = document.getElementById("f-label").value.toLowerCase();
  var onlyDetectors = document.getElementById("f-detector").checked;
  var rows = document.querySelectorAll("tr.unit"), shown = 0;
  for (var i = 0; i < rows.length; i++) {
    var d = rows[i].dataset;
    var show = (!layer || d.layer === layer) && (!type || d.type === type) &&
      (!text || d.label.toLowerCase().indexOf(text) >= 0) &&
      (!onlyDetectors || d.detector === "1");
    rows[i].hidden = !show;
    if (show) shown++;
  }
  document.getElementById("f-count").textContent = shown + " of " + rows.length + " units";
}
["f-layer", "f-type", "f-label", "f-detector"].forEach(function (id) {
  document.getElementById(id).addEventListener("input", applyFilter);
});
applyFilter();
</script>
</body>
</html>
"""
)


def howto_section(counted: CountingRule) -> str:
    """The "how to read this page" box: what a unit, a detector, IoU, T and the RF numbers are."""
    rule = counted.rule
    p_rule = f" and its permutation p-value at most {rule.max_p}" if rule.max_p is not None else ""
    q_rule = (
        f" and its q-value at most {rule.fdr} (the significance rule)"
        if counted.significance
        else ""
    )
    items = {
        "unit": "one channel of a layer (one feature map); its activation at every position of "
        "an image is what the page dissects.",
        "threshold T": "an activation value, in the layer's own output units: the level the "
        "unit exceeds on only the top fraction of all positions of all images (the threshold "
        "quantile above). The region of an image above T is where the unit fires.",
        "IoU": "intersection over union, between the unit's region above T and a concept's "
        "pixels, summed over all images: 0 is no overlap, 1 the same pixels. The concept with "
        "the highest IoU is the unit's label (its best guess).",
        "detector": f"a unit whose label's IoU is at least {rule.min_iou}{p_rule}{q_rule} (a "
        f"crowd label: precision at least {rule.min_precision}). Detectors are marked \u2713; "
        "every other unit shows its best guess greyed, marked not a detector.",
        "score, p": "the label's IoU (automatic labels) or precision (crowd labels); p: the "
        "chance of an IoU this high with images and masks paired at random.",
        "q-value": "the label's p-value corrected for testing every unit of the layer "
        "(Benjamini-Hochberg): counting the units with q at most 0.05 as detectors expects at "
        "most 5% of them to be chance.",
        "receptive field": "three sizes in pixels of the input image: half-max (the area where "
        "the unit's averaged occlusion map reaches half its maximum, the paper's rule) / 50% "
        "mass (the smallest area holding half of it) / theoretical (every pixel that can reach "
        "the unit through the network).",
        "top images": "the images on which the unit fires most, the region above T bright and "
        "the rest dimmed; click one to see it at full size.",
    }
    body = "".join(f"<dt>{e(key)}</dt><dd>{e(text)}</dd>" for key, text in items.items())
    return f'<aside class="howto"><h2>How to read this page</h2><dl>{body}</dl></aside>'


def summary_section(dissection: Dissection, stages: dict[str, bool]) -> str:
    """The run summary: model, data, layers, parameters, and which stages have been run."""
    manifest = dissection.manifest
    config = manifest.get("config", {})
    items = {
        "model": manifest.get("model") or "(in-memory model)",
        "data": manifest.get("data"),
        "images": f"{manifest.get('n_images')} ({manifest.get('n_skipped')} skipped)",
        "input size": f"{_size(manifest.get('preprocess', {}).get('image_size'))} px",
        "layers": ", ".join(dissection.layers),
        "top images kept": config.get("topk"),
        "threshold quantile": config.get("quantile"),
        "created": manifest.get("created"),
        "run id": manifest.get("run_id") or "(none: written before run ids)",
        "dissect version": manifest.get("dissect_version"),
        "stages run": ", ".join(name for name, done in stages.items() if done) or "dissection",
        "stages not run": ", ".join(name for name, done in stages.items() if not done) or "none",
    }
    body = "".join(f"<dt>{e(key)}</dt><dd>{e(value)}</dd>" for key, value in items.items())
    return f"<dl>{body}</dl>"


def types_section(
    types: pd.DataFrame | None,
    figures: list[Path],
    root: Path,
    taxonomy: Taxonomy,
    counted: CountingRule | None = None,
) -> str:
    """Per-layer type counts (detectors, % of the layer's units), the rule they were counted by
    and the semantic figures."""
    if types is None:
        return _note(
            "No unit labels yet: run dissect autolabel DIR (data with concept masks) or import "
            "crowd annotations, then dissect report DIR again."
        )
    counts = types.pivot_table(
        index="layer", columns="category", values="n_units", aggfunc="sum", sort=False
    ).reindex(columns=taxonomy.keys, fill_value=0)
    fractions = types.pivot_table(
        index="layer", columns="category", values="fraction", aggfunc="sum", sort=False
    ).reindex(index=counts.index, columns=taxonomy.keys, fill_value=0)
    table = pd.DataFrame({"layer": counts.index})
    for key in taxonomy.keys:
        table[taxonomy.types[key]] = [
            f"{int(n)} ({100 * f:.1f}%)" for n, f in zip(counts[key], fractions[key], strict=True)
        ]
    images = "".join(
        f'<p><img class="figure" src="{href(path, root)}" alt="{e(path.stem)}"></p>'
        for path in figures
    )
    rule = _note(counted.text) if counted is not None else ""
    return _table(table) + rule + images


def agreement_section(dissection: Dissection) -> str:
    """Fleiss' kappa of the crowd answers of every layer, over labels and over types."""
    raw = read_raw(dissection)
    if raw.empty:
        return _note("No crowd answers imported: dissect export, then dissect import DIR FILE.")
    table = layer_agreement(raw, dissection.layers)
    note = _note(
        "Fleiss' kappa over the units with two or more counted answers (answers that kept a "
        "sentinel image left out): 1 is full agreement, 0 what chance gives."
    )
    return _table(table) + note


def rf_section(dissection: Dissection, root: Path) -> str:
    """The per-layer receptive-field summary and figures in network order (``dissect rf``)."""
    path = dissection.path(RF_LAYERS)
    if not path.is_file():
        return _note("Receptive fields not measured yet: run dissect rf DIR.")
    order = [f"rf_{layer_file_name(layer)}.png" for layer in dissection.layers]
    found = {figure.name: figure for figure in dissection.path("plots").glob("rf*.png")}
    named = [found.pop(name) for name in order if name in found]
    images = []
    for figure in [*named, *(found[name] for name in sorted(found))]:
        copy = root / "assets" / "plots" / figure.name
        with atomic_path(copy) as tmp:
            shutil.copyfile(figure, tmp)
        link, name = href(copy, root), e(figure.stem)
        images.append(f'<p><img class="figure" src="{link}" alt="{name}"></p>')
    rules = _note(
        "Sizes in pixels of the input image. Half-max: the area where the unit's averaged "
        "occlusion map reaches half its maximum (the paper's rule); 50% and 80% mass: the "
        "smallest area holding that share of the map; theoretical: every pixel that can reach "
        "the unit. Silent units never changed under occlusion and have no size."
    )
    table = read_table(dissection.directory, RF_LAYERS)
    table = table.reindex(columns=[c for c in RF_COLUMNS if c in table]).rename(columns=RF_COLUMNS)
    return rules + _table(table) + "".join(images)


def ablation_section(dissection: Dissection, root: Path) -> str:
    """Per class the label groups whose ablation hurts it most, and the figures of ``dissect
    ablate``, when it has run on this run."""
    groups = read_table(dissection.directory, ABLATION_GROUPS)
    if groups is None:
        return _note("Not measured yet: run dissect ablate DIR DATA (held-out labelled data).")
    groups = groups[(groups["kind"] == "label") & (groups["run_id"] == dissection.run_id)]
    best = groups.sort_values(["accuracy_drop", "logit_drop"], ascending=False, kind="stable")
    columns = [
        "layer",
        "class",
        "name",
        "n_units",
        "accuracy_drop",
        "null_accuracy_mean",
        "p_accuracy",
        "logit_drop",
        "p_logit",
    ]
    best = best.groupby(["layer", "class"], sort=True).head(2).sort_values(["layer", "class"])
    images = []
    for figure in sorted(dissection.path("plots").glob("ablation*.png")):
        copy = root / "assets" / "plots" / figure.name
        with atomic_path(copy) as tmp:
            shutil.copyfile(figure, tmp)
        images.append(
            f'<p><img class="figure" src="{href(copy, root)}" alt="{e(figure.stem)}"></p>'
        )
    rule = _note(
        "Per class (over its held-out images), the two label groups whose ablation lowers its "
        "accuracy most; p: the share of random groups of the same size from the layer that "
        "lower it at least as much (ablation_groups.csv has every group and class)."
    )
    return rule + _table(best[columns].round(4)) + "".join(images)


def _size(image_size) -> str:
    """``224`` or ``48x64`` (height x width) for a manifest's ``image_size``."""
    if isinstance(image_size, list):
        return "x".join(map(str, image_size))
    return str(image_size)


def units_note(dissection: Dissection, segmented: set[str]) -> str:
    """Which layers have no top images in the table, and the command that makes them."""
    missing = [layer for layer in dissection.layers if layer not in segmented]
    if not missing:
        return ""
    command = f"dissect segment {dissection.directory} --layers {','.join(missing)}"
    shown = f"Top images are shown for {', '.join(sorted(segmented))}. " if segmented else ""
    return _note(
        f"{shown}Layer(s) {', '.join(missing)} have no segmented top images yet: run "
        f"{command}, then dissect report again."
    )


@writes("directory")
def write_report(
    directory: str | Path | Dissection,
    *,
    rule: DetectorRule | None = None,
    top: int = ReportConfig.top,
    thumbnail: int = 112,
    progress: bool = True,
    significance: bool = True,
    **loose: Any,
) -> Path:
    """Write ``report/index.html`` and its assets for a dissection directory.

    Parameters
    ----------
    directory : path-like or Dissection
        The dissection directory; only ``dissect run`` is required, later stages are shown when
        their files exist.
    rule : DetectorRule, optional
        Which labels count as detectors, and the semantic types (default: the defaults of
        :class:`~dissect.config.DetectorRule`). Where every automatic label has a q-value and
        the rule sets no ``fdr``, the significance rule at :data:`~dissect.config.FDR` is added
        (see :mod:`dissect.significance_rule`); the page says which rule counted.
    top : int
        Segmented top images shown per unit.
    thumbnail : int
        Height of the top images and RF maps on the page, in pixels (each links to its
        picture at full size).
    progress : bool
        Show a progress bar while the pictures are copied.
    significance : bool
        False: never add the significance rule (the IoU rule, as asked).
    **loose
        ``min_precision``, ``min_iou``, ``taxonomy``, ``max_p``, ``fdr``: replace the rule's
        value.

    Returns
    -------
    Path
        The ``index.html`` written.
    """
    if top < 1 or thumbnail < 8:
        raise DissectError(f"--top must be at least 1 and thumbnails 8 px, got {top}, {thumbnail}.")
    dissection = directory if isinstance(directory, Dissection) else Dissection(directory)
    rule = (rule or DetectorRule()).replace(**loose)
    taxonomy = rule.types()
    root = dissection.path("report")
    if (root / "assets").is_dir():
        shutil.rmtree(root / "assets")  # thumbnails of units no longer labelled or segmented
    labels = read_labels(dissection.directory)
    counted = counting_rule([labels], rule, significance)
    rule = counted.rule
    stages = {
        "labels": not labels.empty,
        "IoU labels": dissection.path(IOU, IOU_CONCEPTS).is_file(),
        "segmentation": dissection.path("segments").is_dir(),
        "receptive fields": dissection.path(RF_UNITS).is_file(),
    }
    types, figures = None, []
    if not labels.empty:
        counts = {layer: dissection.n_units(layer) for layer in dissection.layers}
        types = layer_type_table(labels, dissection.layers, counts, rule=rule)
        concepts = concept_table(labels, rule=rule)
        figures = write_semantic_plots(root / "assets", types, concepts, taxonomy)
        name = str(dissection.manifest.get("model") or "this network")
        figures += write_reference_plot(root / "assets" / "plots", types, name, taxonomy)
    table = unit_table(dissection, rule)
    pictures, maps = unit_assets(dissection, table, root, top, progress)
    segmented = {layer for layer, _ in pictures}
    layer_options = "".join(
        f'<option value="{e(layer)}">{e(layer)}</option>' for layer in dissection.layers
    )
    type_options = "".join(
        f'<option value="{e(key)}">{e(name)}</option>' for key, name in taxonomy.types.items()
    )
    page = PAGE.substitute(
        style=STYLE,
        title=e(f"Dissection of {dissection.manifest.get('model') or 'a model'}"),
        thumb=int(thumbnail),
        viewport=VIEWPORT,
        howto=howto_section(counted),
        summary=summary_section(dissection, stages),
        types=types_section(types, figures, root, taxonomy, counted),
        agreement=agreement_section(dissection),
        receptive_fields=rf_section(dissection, root),
        ablation=ablation_section(dissection, root),
        layer_options=layer_options,
        type_options=type_options,
        units_note=units_note(dissection, segmented),
        units=units_section(table, pictures, maps, root, segmented),
    )
    index = root / "index.html"
    write_text(index, page)
    return index
