"""``dissect export``: a package of segmented top images that annotators can use as it is."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import pandas as pd

from ..config import ExportConfig
from ..dissection import Dissection, load_dissected_model
from ..errors import DissectError
from ..io import write_csv, write_text
from ..lock import writes
from ..segment import iter_segments
from ..segment.pictures import dim_outside, write_png
from .formats import EXPORT_FORMATS
from .html import write_html
from .labelstudio import write_labelstudio
from .mturk import write_mturk
from .package import (
    ROOT,
    TASK_COLUMNS,
    TASKS,
    Package,
    image_name,
    images_folder,
    merge_tasks,
    package_salt,
    stale_images,
    task_id,
)
from .sentinels import default_count, plan_sentinels

_README = """Annotation package written by dissect export.

images/     the segmented top images (for mturk and labelstudio: upload them where
            {base_url} serves them)
mturk/      batch_input.csv (one HIT per unit) and layout.html (the HIT layout)
labelstudio/ tasks.json (import into a project) and config.xml (the labelling config)
html/       annotate.html: a page for annotating offline; it shows the pictures in ../images,
            so keep this folder together (nothing to upload)
private/    the mapping from tasks to units and sentinel images: do NOT upload it; keep it
            for dissect import
"""


@writes("dissection")
def export_annotation(
    dissection: Dissection,
    fmt: str,
    layers: Sequence[str] | None = None,
    units: Sequence[int] | None = None,
    top: int | None = None,
    *,
    base_url: str | None = None,
    config: ExportConfig | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Write an annotation package under ``DIR/annotation/``.

    No label the dissection already has (automatic or crowd) is shown: the answers are meant
    to be independent of it.

    Parameters
    ----------
    dissection : Dissection
        An opened dissection directory.
    fmt : str
        ``mturk`` (batch input CSV and HIT layout), ``labelstudio`` (tasks JSON and labelling
        config) or ``html`` (an offline page that shows the pictures in ``images/``).
    layers, units, top
        Which layers, units of each layer, and top images per unit (default: all).
    base_url : str, optional
        Where the ``images/`` folder will be served (required for mturk and labelstudio).
    config : ExportConfig, optional
        ``sentinels``: sentinel images (top images of other units of the layer) mixed into
        each task to check the answers (default: one per 12 own images, at least one; 0 for
        none; see :mod:`dissect.annotation.sentinels`); ``seed`` of their choice and places;
        ``dim``: brightness of the image outside the unit's region.
    **options
        ``sentinels``, ``seed``, ``dim`` one by one; ``peak_fraction``, ``rule``, ``rf_size``,
        ``model``, ``batch_size``, ``device``, ``progress``: see
        :func:`dissect.segment.iter_segments`.

    Returns
    -------
    DataFrame
        The exported tasks: ``task, layer, unit, n, image, image_index, image_path, sentinel,
        source_unit``, one row per image shown.
    """
    mine = {key: options.pop(key) for key in ("sentinels", "seed", "dim") if key in options}
    config = dataclasses.replace(config or ExportConfig(), **mine)
    if fmt not in EXPORT_FORMATS:
        raise DissectError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}.")
    if fmt != "html" and not base_url:
        raise DissectError(
            f"--format {fmt} needs --base-url: the web address where the package's images/ "
            "folder will be served (e.g. https://example.org/unit-images)."
        )
    if config.sentinels is not None and config.sentinels < 0:
        raise DissectError(f"--sentinels must be 0 or more, got {config.sentinels}.")
    if top is not None and top < 1:
        raise DissectError(f"--top must be at least 1, got {top}.")
    layers = dissection.check_layers(layers)
    for layer in layers:
        dissection.check_units(layer, units)
    options["model"] = load_dissected_model(dissection, options.get("model"))
    export = _Export(dissection, top, config, options)
    rows = [row for layer in layers for row in export.layer(layer, units)]
    # Tasks in the order their units were asked for, images in their places.
    rows.sort(key=lambda row: (export.order[row["task"]], row["n"]))
    tasks = pd.DataFrame(rows, columns=TASK_COLUMNS)
    tasks["run_id"] = dissection.run_id
    old = Package.read(dissection, check=False).tasks  # another run's tasks are dropped
    write_csv(dissection.path(ROOT, "private", TASKS), merge_tasks(old, tasks, dissection.run_id))
    for name in stale_images(old, tasks, dissection.run_id):
        (export.folder / name).unlink(missing_ok=True)
    out = dissection.path(ROOT, fmt)
    if fmt == "mturk":
        write_mturk(out, tasks, base_url)
    elif fmt == "labelstudio":
        write_labelstudio(out, tasks, base_url)
    else:
        write_html(out, tasks, export.folder)
    write_text(dissection.path(ROOT, "README.txt"), _README.format(base_url=base_url or "a URL"))
    return tasks


class _Export:
    """The pictures and task rows of an export, layer by layer."""

    def __init__(self, dissection: Dissection, top: int | None, config: ExportConfig, options):
        self.dissection, self.top, self.config, self.options = dissection, top, config, options
        self.salt = package_salt(dissection)
        self.folder = images_folder(dissection)
        self.paths = dissection.images().set_index("index")["path"]
        self.order: dict[str, int] = {}  # task -> position, in the order asked for

    def layer(self, layer: str, units: Sequence[int] | None) -> list[dict]:
        """Write the pictures of ``units`` of ``layer`` (and their sentinels); their rows."""
        dissection, config, rows = self.dissection, self.config, []
        chosen = dissection.check_units(layer, units)
        index = dissection.topk(layer)["index"]
        shown = index.shape[1] if self.top is None else min(self.top, index.shape[1])
        plans = {}
        for unit in chosen:
            n_own = int((index[unit, :shown] >= 0).sum())
            count = default_count(n_own) if config.sentinels is None else config.sentinels
            plans[unit] = plan_sentinels(index, layer, unit, n_own, count, shown, config.seed)
        # Sentinel picture (source unit, image index) -> the files it goes to.
        wanted: dict[tuple[int, int], list[str]] = {}
        for unit, plan in plans.items():
            task = task_id(self.salt, layer, unit)
            self.order[task] = len(self.order)
            for place, source in zip(plan.positions, plan.sources, strict=True):
                wanted.setdefault(source, []).append(image_name(task, place))
                rows.append(_row(task, layer, unit, place, source, self.paths))
        donors = sorted({source_unit for source_unit, _ in wanted} - set(chosen))
        every = chosen + donors
        for segments in iter_segments(dissection, layer, every, self.top, **self.options):
            pictures = [
                dim_outside(image, mask, config.dim)
                for image, mask in zip(segments.images, segments.masks, strict=True)
            ]
            for picture, image in zip(pictures, segments.indices.tolist(), strict=True):
                for name in wanted.get((segments.unit, int(image)), []):
                    write_png(self.folder / name, picture)
            if segments.unit in plans:
                rows += self._own(layer, segments, pictures, set(plans[segments.unit].positions))
        return rows

    def _own(self, layer: str, segments, pictures: list, taken: set[int]) -> list[dict]:
        """Write a unit's own pictures in the places its sentinels left free; their rows."""
        task, rows = task_id(self.salt, layer, segments.unit), []
        places = [n for n in range(1, len(pictures) + len(taken) + 1) if n not in taken]
        for place, picture, image in zip(places, pictures, segments.indices.tolist(), strict=True):
            write_png(self.folder / image_name(task, place), picture)
            rows.append(_row(task, layer, segments.unit, place, (segments.unit, image), self.paths))
        return rows


def _row(
    task: str, layer: str, unit: int, place: int, source: tuple[int, int], paths: pd.Series
) -> dict:
    source_unit, image = source
    return {
        "task": task,
        "layer": layer,
        "unit": unit,
        "n": place,
        "image": image_name(task, place),
        "image_index": int(image),
        "image_path": paths.get(int(image), ""),
        "sentinel": int(source_unit != unit),
        "source_unit": int(source_unit),
    }
