"""The report's table of units (``dissect report``): one row per unit with its label, whether it
counts as a detector, its threshold, receptive-field sizes, its segmented top images (each a link
to the picture at full size) and its receptive-field map.

A unit that is not a detector still has a best concept; the row shows it greyed and marked "not
a detector". A layer whose top images were not segmented says which command makes them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from PIL import Image
from tqdm.auto import tqdm

from .config import DetectorRule
from .directory import RF_UNITS, SEGMENTS, layer_file_name, read_table
from .dissection import Dissection
from .html import e, href
from .html import number as _number
from .io import atomic_path, read_npz
from .labels import read_labels
from .semantics import detectors, label_types

#: Files of other stages the report reads, relative to the dissection directory.
#: Per-unit sizes shown: half-max rule, 50%-of-mass rule, theoretical.
RF_SIZES = ("rf_empirical", "rf_mass50", "rf_theoretical")


def check_run_rows(dissection: Dissection, table: pd.DataFrame, what: str, command: str) -> None:
    """Refuse a stage's table whose rows record another run than the directory's."""
    for found in table.get("run_id", pd.Series(dtype=str)).dropna().unique():
        dissection.check_run(found, what, f"{command} {dissection.directory}")


def unit_table(dissection: Dissection, rule: DetectorRule) -> pd.DataFrame:
    """One row per dissected unit with its label, type, score, p-value, detector flag, RF size."""
    units = dissection.units()[["layer", "unit", "threshold", "max_activation"]]
    labels = read_labels(dissection.directory)
    table = units.merge(
        labels.drop(columns=["threshold"], errors="ignore"), on=["layer", "unit"], how="left"
    )
    table["type"] = label_types(table, rule.types())
    found = detectors(labels, rule)
    keys = set(zip(found["layer"], found["unit"], strict=True))
    table["detector"] = [
        (layer, unit) in keys for layer, unit in zip(table["layer"], table["unit"], strict=True)
    ]
    table["score"] = np.where(table["source"] == "crowd", table["precision"], table["iou"])
    sizes = read_table(dissection.directory, RF_UNITS)
    if sizes is not None:
        check_run_rows(dissection, sizes, RF_UNITS, "dissect rf")
        sizes = sizes.reindex(columns=["layer", "unit", *RF_SIZES])
        table = table.merge(sizes, on=["layer", "unit"], how="left")
    else:
        for column in RF_SIZES:
            table[column] = np.nan
    return table


def rf_image(maps: np.ndarray) -> Image.Image:
    """A receptive-field map as a colour image (inferno, scaled to its own maximum)."""
    top = float(maps.max())
    scaled = maps / top if top > 0 else np.zeros_like(maps)
    colours = colormaps["inferno"](scaled)[..., :3]
    return Image.fromarray((colours * 255).astype(np.uint8))


def _copy(source: Path, path: Path) -> None:
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)


def unit_assets(
    dissection: Dissection, table: pd.DataFrame, root: Path, top: int, progress: bool = False
) -> tuple[dict, dict]:
    """Copy the segmented top images and write the RF maps under ``root/assets``.

    Returns ``(pictures, maps)``: per ``(layer, unit)``, the list of top-image paths (best
    first) and the path of the RF map.
    """
    pictures, maps = {}, {}
    for layer in dissection.layers:
        rf_path = dissection.path("receptive_fields", f"{layer_file_name(layer)}.npz")
        if rf_path.is_file():
            stored = read_npz(rf_path)
            for unit, rf_map in zip(stored["units"].tolist(), stored["maps"], strict=True):
                path = root / "assets" / "rf" / layer_file_name(layer) / f"unit{unit:04d}.png"
                with atomic_path(path) as tmp:
                    rf_image(rf_map).save(tmp, format="PNG")
                maps[(layer, unit)] = path
    if not dissection.path("segments").is_dir():
        return pictures, maps
    for listing in sorted(dissection.path("segments").glob(f"*/{SEGMENTS}")):
        what = f"segments/{listing.parent.name}/{SEGMENTS}"
        written = read_table(dissection.directory, what)
        check_run_rows(dissection, written, what, "dissect segment")
    rows = list(zip(table["layer"], table["unit"], strict=True))
    for layer, unit in tqdm(rows, desc="report", unit="unit", disable=not progress):
        name = f"unit{int(unit):04d}"
        folder = dissection.path("segments", layer_file_name(layer), name)
        found = [folder / f"{rank:02d}_segmented.png" for rank in range(1, top + 1)]
        copies = []
        for source in (path for path in found if path.is_file()):
            copy = root / "assets" / "units" / layer_file_name(layer) / f"{name}_{source.name}"
            _copy(source, copy)
            copies.append(copy)
        if copies:
            pictures[(layer, unit)] = copies
    return pictures, maps


HEAD = (
    "<tr><th>layer</th><th>unit</th><th>label (best concept)</th><th>type</th><th>source</th>"
    '<th>score<br><span class="sub">IoU or precision</span></th>'
    '<th>p<br><span class="sub">permutation</span></th><th>detector</th>'
    '<th>threshold T<br><span class="sub">activation</span></th>'
    '<th>receptive field (px)<br><span class="sub">half-max / 50% mass / theoretical</span></th>'
    '<th>top images<br><span class="sub">click to enlarge</span></th><th>RF map</th></tr>'
)


def _source(row) -> str:
    """The label source, with the segmenter whose predicted masks gave it."""
    segmenter = getattr(row, "segmenter", "")
    if isinstance(segmenter, str) and segmenter:
        return f"{row.source} (masks predicted by {segmenter})"
    return "" if row.source != row.source else str(row.source)


def _label_cell(label: str, detector: bool) -> str:
    if not label:
        return '<td class="guess">none</td>'
    if detector:
        return f"<td>{e(label)}</td>"
    return f'<td class="guess">{e(label)} <span class="tag">not a detector</span></td>'


def _pictures_cell(paths: list[Path] | None, layer: str, root: Path, segmented: bool) -> str:
    if paths:
        links = "".join(
            f'<a href="{href(path, root)}" target="_blank">'
            f'<img class="top" loading="lazy" src="{href(path, root)}" alt="top image {rank}"></a>'
            for rank, path in enumerate(paths, 1)
        )
        return f'<td class="pictures">{links}</td>'
    if segmented:
        return '<td class="sub">not segmented</td>'
    return f'<td class="sub">none: dissect segment DIR --layers {e(layer)}</td>'


def units_section(
    table: pd.DataFrame, pictures: dict, maps: dict, root: Path, segmented_layers: set[str]
) -> str:
    """The filterable table of every unit (inside a box that scrolls sideways on small screens)."""
    rows = []
    for row in table.itertuples(index=False):
        key = (row.layer, row.unit)
        score_name = {"crowd": "precision", "iou": "IoU"}.get(row.source, "")
        rf_map = (
            f'<a href="{href(maps[key], root)}" target="_blank"><img class="rf" loading="lazy" '
            f'src="{href(maps[key], root)}" alt="RF map"></a>'
            if key in maps
            else ""
        )
        rf_size = _number(row.rf_empirical)
        if rf_size:
            rf_size += f" / {_number(row.rf_mass50)} / {_number(row.rf_theoretical)}"
        label = "" if row.label is None or row.label != row.label else str(row.label)
        kind = "unit detector" if row.detector else "unit other"
        rows.append(
            f'<tr class="{kind}" data-layer="{e(row.layer)}" data-type="{e(row.type)}" '
            f'data-label="{e(label)}" data-detector="{int(row.detector)}">'
            f'<td>{e(row.layer)}</td><td class="num">{int(row.unit)}</td>'
            f"{_label_cell(label, bool(row.detector))}<td>{e(row.type)}</td>"
            f"<td>{e(_source(row))}</td>"
            f'<td class="num" title="{e(score_name)}">{_number(row.score)}</td>'
            f'<td class="num" title="permutation p-value">{_number(row.p_value)}</td>'
            f'<td class="flag">{"&#10003; yes" if row.detector else "no"}</td>'
            f'<td class="num">{_number(row.threshold)}</td><td class="num">{rf_size}</td>'
            f"{_pictures_cell(pictures.get(key), row.layer, root, row.layer in segmented_layers)}"
            f"<td>{rf_map}</td></tr>"
        )
    return (
        f'<div class="scroll"><table class="units"><thead>{HEAD}</thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )
