"""Write every unit's segmented top images and ``segments.csv`` (``dissect segment``)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..alignment import placements, record_alignment
from ..config import PICTURES, SegmentConfig
from ..directory import SEGMENT_FOLDERS, SEGMENTS, keep_run_rows, layer_file_name, read_table
from ..dissection import Dissection, load_dissected_model
from ..errors import DissectError
from ..io import write_csv
from ..lock import writes
from .pictures import crop_box, write_png
from .segments import iter_segments

#: Pictures made for every top image, in the order files are written (:data:`PICTURES` adds a
#: grid per unit).
KINDS = PICTURES[:3]
#: Folder of the pictures of each rule.
FOLDERS = SEGMENT_FOLDERS


@writes("dissection")
def write_segments(
    dissection: Dissection,
    layers: Sequence[str] | None = None,
    units: Sequence[int] | None = None,
    top: int | None = SegmentConfig.top,
    *,
    pictures: Sequence[str] = SegmentConfig.pictures,
    **options,
) -> pd.DataFrame:
    """Write every unit's segmented top images under ``segments/<layer>/``.

    Per unit and top image, ``segments/<layer>/unit<NNNN>/<rank>_segmented.png`` (what the
    report shows) and, when asked for in ``pictures``, ``_outline.png`` and ``_crop.png``;
    ``grid`` adds ``segments/<layer>/unit<NNNN>_grid.png`` with the segmented images side by
    side. ``segments/<layer>/segments.csv`` lists the top images (rows of units segmented
    earlier and not now are kept). The disk rule writes the same under
    ``segments_disk/``. Each file is written atomically as its unit finishes, so an
    interruption loses at most one unit.

    Parameters
    ----------
    dissection : Dissection
        An opened dissection directory.
    layers : sequence of str, optional
        Layers (default: all dissected ones).
    units : sequence of int, optional
        Units of each layer (default: all).
    top : int, optional
        Top images per unit (default 10; None: all kept).
    pictures : sequence of str
        Which of ``segmented``, ``outline``, ``crop``, ``grid`` to write (default: segmented).
    **options
        ``peak_fraction``, ``rule``, ``rf_size``, ``align``, ``model``, ``batch_size``,
        ``device``, ``workers``, ``dtype``, ``progress``: see :func:`iter_segments`. The placement
        of every layer is recorded in ``manifest.json`` (``alignment``, under the pictures'
        folder name).

    Returns
    -------
    DataFrame
        ``layer, unit, rank, image_index, image, score, threshold, coverage, crop_top,
        crop_left, crop_bottom, crop_right, rule, align``: one row per top image segmented.
    """
    pictures = (pictures,) if isinstance(pictures, str) else tuple(pictures)
    unknown = sorted(set(pictures) - set(PICTURES))
    if unknown or not pictures:
        raise DissectError(
            f"--pictures takes some of {','.join(PICTURES)}, got {','.join(pictures) or 'none'}."
        )
    kinds = [kind for kind in KINDS if kind in pictures]
    layers = dissection.check_layers(layers)
    rule = options.get("rule", "threshold")
    align = options.get("align") or SegmentConfig.align
    spatial = [layer for layer in layers if dissection.geometry(layer).is_spatial]
    placed = placements(dissection, spatial, align)  # refuses a missing rf before any work
    options["model"] = load_dissected_model(dissection, options.get("model"))
    tables = []
    for layer in layers:
        folder = dissection.path(FOLDERS.get(rule, "segments"), layer_file_name(layer))
        rows = []
        for segments in iter_segments(dissection, layer, units, top, **options):
            unit_folder = folder / f"unit{segments.unit:04d}"
            made = {
                "segmented": segments.segmented() if "segmented" in kinds else None,
                "outline": segments.outlined() if "outline" in kinds else None,
                "crop": segments.crops() if "crop" in kinds else None,
            }
            for rank in range(1, len(segments.indices) + 1):
                for kind in kinds:
                    write_png(unit_folder / f"{rank:02d}_{kind}.png", made[kind][rank - 1])
                mask = segments.masks[rank - 1]
                rows.append(
                    {
                        "layer": layer,
                        "unit": segments.unit,
                        "rank": rank,
                        "image_index": int(segments.indices[rank - 1]),
                        "score": float(segments.scores[rank - 1]),
                        "threshold": float(segments.thresholds[rank - 1]),
                        "coverage": float(mask.mean()),
                        **dict(zip(_BOX, crop_box(mask), strict=True)),
                        "rule": rule,
                        "align": align,
                    }
                )
            for rank in range(len(segments.indices) + 1, _highest_rank(unit_folder) + 1):
                for kind in KINDS:
                    (unit_folder / f"{rank:02d}_{kind}.png").unlink(missing_ok=True)
            if "grid" in pictures:
                write_png(folder / f"unit{segments.unit:04d}_grid.png", segments.grid())
        table = pd.DataFrame(rows)
        images = dissection.images().set_index("index")["path"]
        table.insert(4, "image", images.reindex(table["image_index"]).to_numpy())
        table["run_id"] = dissection.run_id
        listing = (folder / SEGMENTS).relative_to(dissection.directory).as_posix()
        old = read_table(dissection.directory, listing)
        write_csv(folder / SEGMENTS, _merge_rows(old, table))
        record_alignment(dissection, FOLDERS.get(rule, "segments"), align, {layer: placed[layer]})
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


_BOX = ("crop_top", "crop_left", "crop_bottom", "crop_right")


def _highest_rank(folder: Path) -> int:
    """The highest rank of the pictures already in a unit's folder (0 if none)."""
    names = (re.match(r"(\d+)_", path.name) for path in folder.glob("*.png"))
    return max((int(name[1]) for name in names if name), default=0)


def _merge_rows(old: pd.DataFrame | None, table: pd.DataFrame) -> pd.DataFrame:
    """``table`` plus the rows of units it does not have from an earlier ``segments.csv``."""
    if old is None:
        return table
    kept = old[~old["unit"].isin(set(table["unit"]))]
    kept = keep_run_rows(kept, table["run_id"].iloc[0] if len(table) else "")
    return pd.concat([kept, table], ignore_index=True).sort_values(["unit", "rank"], kind="stable")
