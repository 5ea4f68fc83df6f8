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

import numpy as np
import pandas as pd
from matplotlib import colormaps
from PIL import Image
from tqdm.auto import tqdm

from .annotation.agreement import layer_agreement
from .annotation.store import read_raw
from .dissection import Dissection, layer_file_name
from .errors import DissectError
from .html import STYLE, e, href
from .html import note as _note
from .html import number as _number
from .html import table as _table
from .io import atomic_path, read_csv, read_npz, write_text
from .labels import read_labels
from .lock import writes
from .plots.compare import write_reference_plot
from .plots.semantics import write_semantic_plots
from .semantics import concept_table, detectors, label_types, layer_type_table
from .taxonomy import DEFAULT_TAXONOMY, MIN_IOU, MIN_PRECISION, Taxonomy

#: Files of other stages the report reads, relative to the dissection directory.
RF_UNITS = "receptive_fields.csv"
RF_LAYERS = "receptive_fields_layers.csv"
#: Per-unit sizes shown: half-max rule, 50%-of-mass rule, theoretical.
RF_SIZES = ("rf_empirical", "rf_mass50", "rf_theoretical")

PAGE = Template(
    """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>$title</title>
<style>
$style
.filters { margin: 0.6em 0; display: flex; gap: 1em; align-items: center; flex-wrap: wrap; }
.detector { color: #1a7f37; font-weight: bold; }
img.strip { height: ${thumb}px; } img.rf { height: ${thumb}px; image-rendering: pixelated; }
</style>
</head>
<body>
<h1>$title</h1>
<h2>Run</h2>
$summary
<h2>Semantic types per layer</h2>
$types
<h2>Agreement between annotators</h2>
$agreement
<h2>Receptive fields</h2>
$receptive_fields
<h2>What the units do for the network (ablation)</h2>
$ablation
<h2>Units</h2>
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
    types: pd.DataFrame | None, figures: list[Path], root: Path, taxonomy: Taxonomy
) -> str:
    """Per-layer type counts (detectors, % of the layer's units) and the semantic figures."""
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
    return _table(table) + images


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
    """The per-layer receptive-field summary and figures, when ``dissect rf`` has run."""
    path = dissection.path(RF_LAYERS)
    if not path.is_file():
        return _note("Receptive fields not measured yet: run dissect rf DIR.")
    images = []
    for figure in sorted(dissection.path("plots").glob("rf*.png")):
        copy = root / "assets" / "plots" / figure.name
        with atomic_path(copy) as tmp:
            shutil.copyfile(figure, tmp)
        link, name = href(copy, root), e(figure.stem)
        images.append(f'<p><img class="figure" src="{link}" alt="{name}"></p>')
    rules = _note(
        "Empirical sizes by two rules: half-max (rf_empirical, the paper's: the area where the "
        "averaged occlusion map reaches half its maximum) and mass (rf_mass50, rf_mass80: the "
        "smallest area holding 50% or 80% of the discrepancy); n_silent units never changed "
        "under occlusion and have no size."
    )
    return rules + _table(read_csv(path, dtype={"layer": str})) + "".join(images)


def ablation_section(dissection: Dissection, root: Path) -> str:
    """Per class the label groups whose ablation hurts it most, and the figures of ``dissect
    ablate``, when it has run on this run."""
    path = dissection.path("ablation_groups.csv")
    if not path.is_file():
        return _note("Not measured yet: run dissect ablate DIR DATA (held-out labelled data).")
    groups = pd.read_csv(path, dtype={"layer": str, "run_id": str}, keep_default_na=False)
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


def unit_table(
    dissection: Dissection,
    min_precision: float,
    min_iou: float,
    taxonomy: Taxonomy,
    max_p: float | None = None,
) -> pd.DataFrame:
    """One row per dissected unit with its label, type, score, p-value, detector flag, RF size."""
    units = dissection.units()[["layer", "unit", "threshold", "max_activation"]]
    labels = read_labels(dissection.directory)
    table = units.merge(
        labels.drop(columns=["threshold"], errors="ignore"), on=["layer", "unit"], how="left"
    )
    table["type"] = label_types(table, taxonomy)
    found = detectors(labels, min_precision, min_iou, taxonomy, max_p)
    keys = set(zip(found["layer"], found["unit"], strict=True))
    table["detector"] = [
        (layer, unit) in keys for layer, unit in zip(table["layer"], table["unit"], strict=True)
    ]
    table["score"] = np.where(table["source"] == "crowd", table["precision"], table["iou"])
    rf = dissection.path(RF_UNITS)
    if rf.is_file():
        sizes = read_csv(rf, dtype={"layer": str, "run_id": str})
        _check_run(dissection, sizes, RF_UNITS, "dissect rf")
        sizes = sizes.reindex(columns=["layer", "unit", *RF_SIZES])
        table = table.merge(sizes, on=["layer", "unit"], how="left")
    else:
        for column in RF_SIZES:
            table[column] = np.nan
    return table


def _size(image_size) -> str:
    """``224`` or ``48x64`` (height x width) for a manifest's ``image_size``."""
    if isinstance(image_size, list):
        return "x".join(map(str, image_size))
    return str(image_size)


def _check_run(dissection: Dissection, table: pd.DataFrame, what: str, command: str) -> None:
    """Refuse a stage's table whose rows record another run than the directory's."""
    for found in table.get("run_id", pd.Series(dtype=str)).dropna().unique():
        dissection.check_run(found, what, f"{command} {dissection.directory}")


def segment_strip(dissection: Dissection, layer: str, unit: int, top: int, height: int):
    """The first ``top`` segmented top images of a unit side by side, or None if not segmented."""
    folder = dissection.path("segments", layer_file_name(layer), f"unit{unit:04d}")
    paths = [folder / f"{rank:02d}_segmented.png" for rank in range(1, top + 1)]
    paths = [path for path in paths if path.is_file()]
    if not paths:
        return None
    tiles = []
    for path in paths:
        with Image.open(path) as image:
            image = image.convert("RGB")
            width = max(1, round(image.width * height / image.height))
            tiles.append(image.resize((width, height), Image.Resampling.BILINEAR))
    strip = Image.new("RGB", (sum(t.width for t in tiles) + 2 * (len(tiles) - 1), height), "white")
    left = 0
    for tile in tiles:
        strip.paste(tile, (left, 0))
        left += tile.width + 2
    return strip


def rf_image(maps: np.ndarray) -> Image.Image:
    """A receptive-field map as a colour image (inferno, scaled to its own maximum)."""
    top = float(maps.max())
    scaled = maps / top if top > 0 else np.zeros_like(maps)
    colours = colormaps["inferno"](scaled)[..., :3]
    return Image.fromarray((colours * 255).astype(np.uint8))


def _save_png(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def unit_assets(
    dissection: Dissection, table: pd.DataFrame, root: Path, top: int, height: int, progress: bool
) -> tuple[dict, dict]:
    """Write thumbnails of segmented top images and RF maps; return their paths per unit."""
    strips, maps = {}, {}
    for layer in dissection.layers:
        rf_path = dissection.path("receptive_fields", f"{layer_file_name(layer)}.npz")
        if rf_path.is_file():
            stored = read_npz(rf_path)
            for unit, rf_map in zip(stored["units"].tolist(), stored["maps"], strict=True):
                path = root / "assets" / "rf" / layer_file_name(layer) / f"unit{unit:04d}.png"
                _save_png(rf_image(rf_map), path)
                maps[(layer, unit)] = path
    if not dissection.path("segments").is_dir():
        return strips, maps
    for listing in sorted(dissection.path("segments").glob("*/segments.csv")):
        written = read_csv(listing, dtype={"layer": str, "run_id": str})
        what = f"segments/{listing.parent.name}/segments.csv"
        _check_run(dissection, written, what, "dissect segment")
    rows = list(zip(table["layer"], table["unit"], strict=True))
    for layer, unit in tqdm(rows, desc="report", unit="unit", disable=not progress):
        strip = segment_strip(dissection, layer, int(unit), top, height)
        if strip is not None:
            path = root / "assets" / "units" / layer_file_name(layer) / f"unit{int(unit):04d}.png"
            _save_png(strip, path)
            strips[(layer, unit)] = path
    return strips, maps


def _source(row) -> str:
    """The label source, with the segmenter whose predicted masks gave it."""
    segmenter = getattr(row, "segmenter", "")
    if isinstance(segmenter, str) and segmenter:
        return f"{row.source} (masks predicted by {segmenter})"
    return str(row.source)


def units_section(table: pd.DataFrame, strips: dict, maps: dict, root: Path) -> str:
    """The filterable table of every unit."""
    head = (
        "<tr><th>layer</th><th>unit</th><th>label</th><th>type</th><th>source</th>"
        "<th>score</th><th>p</th><th>detector</th><th>threshold</th>"
        '<th title="half-max rule / 50% of discrepancy mass / theoretical">RF (px)</th>'
        "<th>top images</th><th>RF map</th></tr>"
    )
    rows = []
    for row in table.itertuples(index=False):
        key = (row.layer, row.unit)
        score_name = {"crowd": "precision", "iou": "IoU"}.get(row.source, "")
        strip = (
            f'<img class="strip" loading="lazy" src="{href(strips[key], root)}" alt="top images">'
            if key in strips
            else ""
        )
        rf_map = (
            f'<img class="rf" loading="lazy" src="{href(maps[key], root)}" alt="RF map">'
            if key in maps
            else ""
        )
        rf_size = _number(row.rf_empirical)
        if rf_size:
            rf_size += f" / {_number(row.rf_mass50)} / {_number(row.rf_theoretical)}"
        label = "" if row.label is None or row.label != row.label else row.label
        rows.append(
            f'<tr class="unit" data-layer="{e(row.layer)}" data-type="{e(row.type)}" '
            f'data-label="{e(label)}" data-detector="{int(row.detector)}">'
            f'<td>{e(row.layer)}</td><td class="num">{int(row.unit)}</td><td>{e(label)}</td>'
            f"<td>{e(row.type)}</td><td>{e(_source(row))}</td>"
            f'<td class="num" title="{e(score_name)}">{_number(row.score)}</td>'
            f'<td class="num" title="permutation p-value">{_number(row.p_value)}</td>'
            f'<td class="detector">{"yes" if row.detector else ""}</td>'
            f'<td class="num">{_number(row.threshold)}</td><td class="num">{rf_size}</td>'
            f"<td>{strip}</td><td>{rf_map}</td></tr>"
        )
    return f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


@writes("directory")
def write_report(
    directory: str | Path | Dissection,
    *,
    min_precision: float = MIN_PRECISION,
    min_iou: float = MIN_IOU,
    taxonomy: Taxonomy = DEFAULT_TAXONOMY,
    max_p: float | None = None,
    top: int = 5,
    thumbnail: int = 72,
    progress: bool = True,
) -> Path:
    """Write ``report/index.html`` and its assets for a dissection directory.

    Parameters
    ----------
    directory : path-like or Dissection
        The dissection directory; only ``dissect run`` is required, later stages are shown when
        their files exist.
    min_precision, min_iou : float
        Thresholds above which crowd / automatic labels count as detectors.
    taxonomy : Taxonomy
        Semantic types and the mapping of label categories onto them.
    max_p : float, optional
        Automatic labels count as detectors only with a p-value at most this.
    top : int
        Segmented top images shown per unit.
    thumbnail : int
        Height of thumbnails in pixels.
    progress : bool
        Show a progress bar while thumbnails are written.

    Returns
    -------
    Path
        The ``index.html`` written.
    """
    if top < 1 or thumbnail < 8:
        raise DissectError(f"--top must be at least 1 and thumbnails 8 px, got {top}, {thumbnail}.")
    dissection = directory if isinstance(directory, Dissection) else Dissection(directory)
    root = dissection.path("report")
    if (root / "assets").is_dir():
        shutil.rmtree(root / "assets")  # thumbnails of units no longer labelled or segmented
    labels = read_labels(dissection.directory)
    stages = {
        "labels": not labels.empty,
        "IoU labels": dissection.path("iou", "concepts.csv").is_file(),
        "segmentation": dissection.path("segments").is_dir(),
        "receptive fields": dissection.path(RF_UNITS).is_file(),
    }
    types, figures = None, []
    if not labels.empty:
        counts = {layer: dissection.n_units(layer) for layer in dissection.layers}
        types = layer_type_table(
            labels,
            dissection.layers,
            counts,
            min_precision=min_precision,
            min_iou=min_iou,
            taxonomy=taxonomy,
            max_p=max_p,
        )
        concepts = concept_table(
            labels, min_precision=min_precision, min_iou=min_iou, taxonomy=taxonomy, max_p=max_p
        )
        figures = write_semantic_plots(root / "assets", types, concepts, taxonomy)
        name = str(dissection.manifest.get("model") or "this network")
        figures += write_reference_plot(root / "assets" / "plots", types, name, taxonomy)
    table = unit_table(dissection, min_precision, min_iou, taxonomy, max_p)
    strips, maps = unit_assets(dissection, table, root, top, thumbnail, progress)
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
        summary=summary_section(dissection, stages),
        types=types_section(types, figures, root, taxonomy),
        agreement=agreement_section(dissection),
        receptive_fields=rf_section(dissection, root),
        ablation=ablation_section(dissection, root),
        layer_options=layer_options,
        type_options=type_options,
        units=units_section(table, strips, maps, root),
    )
    index = root / "index.html"
    write_text(index, page)
    return index
