"""Read answer files of every supported format into checked answers."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from ..dissection import Dissection
from ..errors import DissectError
from ..io import restore
from .formats import IMPORT_FORMATS
from .labelstudio import read_labelstudio
from .mturk import is_mturk_header, read_mturk
from .package import Package
from .readers import Origin, Shown, answer, csv_rows, read_text

PLAIN_COLUMNS = ("layer", "unit", "label", "category")


def detect_format(path: Path) -> str:
    """``labelstudio`` for JSON, ``mturk`` for batch results, ``csv`` for a plain labels CSV."""
    if path.suffix.lower() == ".json":
        return "labelstudio"
    header = read_text(path).split("\n", 1)[0]
    columns = [column.strip().strip('"') for column in header.split(",")]
    if is_mturk_header(columns):
        return "mturk"
    if set(PLAIN_COLUMNS) <= set(columns):
        return "csv"
    raise DissectError(
        f"{path}: cannot tell the format (not JSON, no MTurk Answer.* columns, no "
        f"{','.join(PLAIN_COLUMNS)} header); give --format mturk, labelstudio or csv."
    )


def read_plain_csv(path: Path, dissection: Dissection, package: Package) -> list[dict]:
    """Answers from a CSV ``layer,unit,label,category[,precision][,annotator]``.

    The offline page (``dissect export --format html``) adds ``task`` and ``mismatch`` (the
    numbers of the pictures ticked as not showing the concept, separated by spaces): a row with
    a task is checked against the annotation package and its precision computed there, over the
    unit's own images, with its sentinels scored. Rows carry no assignment id of their own; each
    gets ``<file digest>:<line>``, so importing the same file again adds nothing while another
    file's identical answers are votes of their own.

    Raises
    ------
    DissectError
        Naming file and line, for unknown layers, units, tasks or types, a bad precision or
        image number, an empty label, or a malformed file.
    """
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    answers = []
    for line, row in csv_rows(path):
        where = f"{path}, line {line}"
        row = {column: restore(cell) for column, cell in row.items()}  # the page's apostrophes
        missing = [column for column in PLAIN_COLUMNS if column not in row]
        if missing:
            raise DissectError(
                f"{where}: column(s) {', '.join(missing)} missing; a plain CSV needs "
                "layer,unit,label,category[,precision]."
            )
        origin = Origin(
            "csv", path.name, line, (row.get("annotator") or "").strip(), f"{digest}:{line}"
        )
        task = (row.get("task") or "").strip()
        if task:
            answers.append(_task_answer(where, row, task, package, origin))
            continue
        layer, unit = _layer_unit(where, row, dissection)
        text = (row.get("precision") or "").strip()
        try:
            precision = float(text) if text else None
        except ValueError:
            raise DissectError(f"{where}: precision {text!r} is not a number.") from None
        answers.append(
            answer(
                where,
                layer,
                unit,
                row["label"],
                row["category"],
                origin=origin,
                precision=precision,
            )
        )
    return answers


def _layer_unit(where: str, row: dict[str, str], dissection: Dissection) -> tuple[str, int]:
    layer = row["layer"].strip()
    if layer not in dissection.layers:
        raise DissectError(
            f"{where}: layer {layer!r} was not dissected here; it has "
            f"{', '.join(dissection.layers)}."
        )
    try:
        unit = int(row["unit"])
        (unit,) = dissection.check_units(layer, [unit])
    except (ValueError, DissectError) as error:
        detail = error if isinstance(error, DissectError) else "it is not a whole number"
        raise DissectError(f"{where}: unit {row['unit']!r}: {detail}") from None
    return layer, unit


def _task_answer(
    where: str, row: dict[str, str], task: str, package: Package, origin: Origin
) -> dict:
    """An answer of the offline page: its task's images, the pictures ticked."""
    layer, unit, images = package.task(task, where)
    if (row["layer"].strip(), row["unit"].strip()) != (layer, str(unit)):
        raise DissectError(
            f"{where}: task {task!r} is {layer} unit {unit} in this annotation package, not "
            f"{row['layer'].strip()} unit {row['unit'].strip()}; was the file edited?"
        )
    try:
        mismatches = {int(n) for n in (row.get("mismatch") or "").split()}
    except ValueError:
        raise DissectError(
            f"{where}: mismatch {row.get('mismatch')!r} must list image numbers separated by "
            "spaces."
        ) from None
    return answer(
        where,
        layer,
        unit,
        row["label"],
        row["category"],
        shown=Shown(len(images), mismatches, package.sentinels(task)),
        origin=origin,
    )


def read_answers(dissection: Dissection, files: Sequence[str | Path], fmt: str = "auto") -> list:
    """Read and check every answer of ``files``; nothing is written.

    Parameters
    ----------
    dissection : Dissection
        The dissection the answers are about (its annotation package checks task answers).
    files : sequence of path-like
        Answer files.
    fmt : str
        ``auto`` (by content), ``mturk``, ``labelstudio`` or ``csv``.

    Returns
    -------
    list of dict
        Answers (rows of ``annotations_raw.csv``) of all files, in order.
    """
    if fmt not in IMPORT_FORMATS:
        raise DissectError(f"--format must be one of {', '.join(IMPORT_FORMATS)}, got {fmt!r}.")
    package = Package.read(dissection)
    answers = []
    for file in files:
        path = Path(file)
        if not path.is_file():
            raise DissectError(f"answer file {str(path)!r} does not exist.")
        kind = detect_format(path) if fmt == "auto" else fmt
        if kind != "csv" and not len(package.tasks):
            raise DissectError(
                f"{path}: {str(dissection.directory)!r} has no annotation package to check "
                f"{kind} answers against; run dissect export there first."
            )
        if kind == "mturk":
            answers.extend(read_mturk(path, package))
        elif kind == "labelstudio":
            answers.extend(read_labelstudio(path, package))
        else:
            answers.extend(read_plain_csv(path, dissection, package))
    return answers
