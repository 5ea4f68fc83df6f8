"""Amazon Mechanical Turk: the batch input CSV, the HIT layout, and batch results.

The layout uses crowd-html-elements in a ``<crowd-form answer-format="flatten-objects">``, so
the batch results CSV has one column per answer:

- ``Answer.concept``: the concept (``<crowd-input name="concept">``);
- ``Answer.mismatch-<n>.on``: ``true`` where image ``n`` does not show it
  (``<crowd-checkbox name="mismatch-<n>">``, whose value defaults to ``on``);
- ``Answer.type-<key>.<key>``: ``true`` for the chosen type
  (``<crowd-radio-button name="type-<key>" value="<key>">`` in a ``<crowd-radio-group>``).

Each HIT's inputs come back as ``Input.<column>`` (``Input.task``, ``Input.image_<n>``) next to
``HITId``, ``AssignmentId``, ``WorkerId`` and ``AssignmentStatus``; rejected assignments are
ignored.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import pandas as pd

from ..errors import DissectError
from ..io import write_csv, write_text
from ..taxonomy import DEFAULT_TYPES
from .package import Package
from .readers import Origin, Shown, answer, csv_rows

_TYPE_COLUMN = re.compile(r"^Answer\.type(?:-(\w+))?\.(\w+)$")
_MISMATCH_COLUMN = re.compile(r"^Answer\.mismatch-(\d+)\.\w+$")
_IMAGE_COLUMN = re.compile(r"^Input\.image_(\d+)$")
REQUIRED = ("AssignmentId", "WorkerId", "AssignmentStatus", "Input.task", "Answer.concept")


def batch_input(tasks: pd.DataFrame, base_url: str) -> pd.DataFrame:
    """The batch input CSV: a ``task`` column and ``image_<n>`` URLs, one row per task."""
    base = base_url.rstrip("/")
    count = int(tasks["n"].max())
    rows = []
    for task, images in tasks.groupby("task", sort=False):
        urls = dict(zip(images["n"], images["image"], strict=True))
        row = {"task": task}
        for n in range(1, count + 1):
            row[f"image_{n}"] = f"{base}/{urls[n]}" if n in urls else ""
        rows.append(row)
    return pd.DataFrame(rows)


def layout(count: int) -> str:
    """The HIT layout (crowd-html-elements) for tasks of ``count`` images."""
    figures = "\n".join(
        f'    <figure><img src="${{image_{n}}}" alt="image {n}"/>\n'
        f'      <crowd-checkbox name="mismatch-{n}">{n}: does not show it</crowd-checkbox>'
        "</figure>"
        for n in range(1, count + 1)
    )
    buttons = "\n".join(
        f'    <crowd-radio-button name="type-{key}" value="{key}">{html.escape(name)}'
        "</crowd-radio-button>"
        for key, name in DEFAULT_TYPES.items()
    )
    return f"""<script src="https://assets.crowd.aws/crowd-html-elements.js"></script>
<style>
  .images {{ display: flex; flex-wrap: wrap; gap: 8px; }}
  figure {{ margin: 0; text-align: center; }}
  img {{ width: 160px; height: 160px; image-rendering: pixelated; }}
</style>
<crowd-form answer-format="flatten-objects">
  <p>Each picture below highlights the region that one unit of a neural network responds to
  (the rest is darkened). Look at the highlighted regions.</p>
  <div class="images">
{figures}
  </div>
  <p><strong>1.</strong> What concept do most highlighted regions share? Answer with a word or a
  short phrase.</p>
  <crowd-input name="concept" label="concept, e.g. sky, striped, wheel" required></crowd-input>
  <p><strong>2.</strong> Tick every picture above whose highlighted region does not show that
  concept.</p>
  <p><strong>3.</strong> Which type of concept is it?</p>
  <crowd-radio-group>
{buttons}
  </crowd-radio-group>
</crowd-form>
"""


def write_mturk(folder: Path, tasks: pd.DataFrame, base_url: str) -> list[Path]:
    """Write ``batch_input.csv`` and ``layout.html`` into ``folder``; return their paths."""
    paths = [folder / "batch_input.csv", folder / "layout.html"]
    write_csv(paths[0], batch_input(tasks, base_url))
    write_text(paths[1], layout(int(tasks["n"].max())))
    return paths


def is_mturk_header(columns: list[str]) -> bool:
    """Whether CSV columns look like an MTurk batch results file."""
    return "AssignmentId" in columns or any(column.startswith("Answer.") for column in columns)


def read_mturk(path: Path, package: Package) -> list[dict]:
    """The answers of an MTurk batch results CSV (rejected assignments left out).

    Raises
    ------
    DissectError
        Naming file and line, for missing columns, tasks or images not in the package, no or
        several types chosen, an empty concept, or a malformed file.
    """
    answers = []
    for line, row in csv_rows(path):
        where = f"{path}, line {line}"
        missing = [column for column in REQUIRED if column not in row]
        if missing:
            raise DissectError(
                f"{where}: column(s) {', '.join(missing)} missing; is this a batch results "
                "file of a HIT made with dissect export --format mturk?"
            )
        if row["AssignmentStatus"].strip().lower() == "rejected":
            continue
        task = row["Input.task"].strip()
        layer, unit, images = package.task(task, where)
        shown = {
            int(match[1]): value
            for column, value in row.items()
            if (match := _IMAGE_COLUMN.match(column)) and value
        }
        package.check_images(task, shown, where)
        types = [
            match[1] or match[2]
            for column, value in row.items()
            if (match := _TYPE_COLUMN.match(column)) and _true(value)
        ]
        if len(types) != 1:
            raise DissectError(
                f"{where}: {'no' if not types else 'more than one'} concept type chosen "
                f"({', '.join(types) or 'none'}); expected exactly one."
            )
        mismatches = {
            int(match[1])
            for column, value in row.items()
            if (match := _MISMATCH_COLUMN.match(column)) and _true(value)
        }
        answers.append(
            answer(
                where,
                layer,
                unit,
                row["Answer.concept"],
                types[0],
                shown=Shown(len(images), mismatches, package.sentinels(task)),
                origin=Origin(
                    "mturk",
                    path.name,
                    line,
                    row["WorkerId"].strip(),
                    row["AssignmentId"].strip(),
                ),
            )
        )
    return answers


def _true(value: str) -> bool:
    return value.strip().lower() in ("true", "on", "1", "yes")
