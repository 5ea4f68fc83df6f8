"""``dissect export``: a package of segmented top images that annotators can use as it is."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..dissection import Dissection
from ..errors import DissectError
from ..io import write_csv, write_text
from ..labels import read_labels
from ..segment import iter_segments
from ..segment.pictures import dim_outside, write_png
from .formats import EXPORT_FORMATS
from .html import write_html
from .labelstudio import write_labelstudio
from .mturk import write_mturk
from .package import (
    ROOT,
    Package,
    image_name,
    images_folder,
    merge_tasks,
    package_salt,
    stale_images,
    task_id,
)

_README = """Annotation package written by dissect export.

images/     the segmented top images: upload them where {base_url} serves them
mturk/      batch_input.csv (one HIT per unit) and layout.html (the HIT layout)
labelstudio/ tasks.json (import into a project) and config.xml (the labelling config)
html/       annotate.html: a self-contained page for annotating offline
private/    the mapping from tasks to units: do NOT upload it; keep it for dissect import
"""


def export_annotation(
    dissection: Dissection,
    fmt: str,
    layers: Sequence[str] | None = None,
    units: Sequence[int] | None = None,
    top: int | None = None,
    *,
    base_url: str | None = None,
    dim: float = 0.25,
    **options,
) -> pd.DataFrame:
    """Write an annotation package under ``DIR/annotation/``.

    Parameters
    ----------
    dissection : Dissection
        An opened dissection directory.
    fmt : str
        ``mturk`` (batch input CSV and HIT layout), ``labelstudio`` (tasks JSON and labelling
        config) or ``html`` (a self-contained offline page).
    layers, units, top
        Which layers, units of each layer, and top images per unit (default: all).
    base_url : str, optional
        Where the ``images/`` folder will be served (required for mturk and labelstudio).
    dim : float
        Brightness of the image outside the unit's region.
    **options
        ``peak_fraction``, ``model``, ``batch_size``, ``device``, ``progress``: see
        :func:`dissect.segment.iter_segments`.

    Returns
    -------
    DataFrame
        The exported tasks: ``task, layer, unit, n, image, image_index, image_path``.
    """
    if fmt not in EXPORT_FORMATS:
        raise DissectError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}.")
    if fmt != "html" and not base_url:
        raise DissectError(
            f"--format {fmt} needs --base-url: the web address where the package's images/ "
            "folder will be served (e.g. https://example.org/unit-images)."
        )
    layers = dissection.check_layers(layers)
    for layer in layers:
        dissection.check_units(layer, units)
    options.setdefault("model", dissection.load_model())
    salt = package_salt(dissection)
    folder = images_folder(dissection)
    paths = dissection.images().set_index("index")["path"]
    rows = []
    for layer in layers:
        for segments in iter_segments(dissection, layer, units, top, **options):
            task = task_id(salt, layer, segments.unit)
            for n, image in enumerate(segments.images, start=1):
                name = image_name(task, n)
                write_png(folder / name, dim_outside(image, segments.masks[n - 1], dim))
                index = int(segments.indices[n - 1])
                rows.append(
                    {
                        "task": task,
                        "layer": layer,
                        "unit": segments.unit,
                        "n": n,
                        "image": name,
                        "image_index": index,
                        "image_path": paths.get(index, ""),
                    }
                )
    tasks = pd.DataFrame(rows)
    old = Package.read(dissection).tasks
    write_csv(dissection.path(ROOT, "private", "tasks.csv"), merge_tasks(old, tasks))
    for name in stale_images(old, tasks):
        (folder / name).unlink(missing_ok=True)
    out = dissection.path(ROOT, fmt)
    if fmt == "mturk":
        write_mturk(out, tasks, base_url)
    elif fmt == "labelstudio":
        write_labelstudio(out, tasks, base_url)
    else:
        write_html(out, tasks, folder, _current_labels(dissection.directory))
    write_text(dissection.path(ROOT, "README.txt"), _README.format(base_url=base_url or "a URL"))
    return tasks


def _current_labels(directory: Path) -> dict[tuple[str, int], str]:
    labels = read_labels(directory)
    return {
        (str(layer), int(unit)): str(label)
        for layer, unit, label in zip(labels["layer"], labels["unit"], labels["label"], strict=True)
        if isinstance(label, str) and label
    }
