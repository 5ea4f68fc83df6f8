"""Read answer files of every supported format into checked answers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..dissection import Dissection
from ..errors import DissectError
from .formats import IMPORT_FORMATS
from .labelstudio import read_labelstudio
from .mturk import is_mturk_header, read_mturk
from .package import Package
from .readers import answer, csv_rows, read_text

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


def read_plain_csv(path: Path, dissection: Dissection) -> list[dict]:
    """Answers from a CSV ``layer,unit,label,category[,precision][,annotator]``.

    Raises
    ------
    DissectError
        Naming file and line, for unknown layers, units or types, a bad precision, an empty
        label, or a malformed file.
    """
    answers = []
    for line, row in csv_rows(path):
        where = f"{path}, line {line}"
        missing = [column for column in PLAIN_COLUMNS if column not in row]
        if missing:
            raise DissectError(
                f"{where}: column(s) {', '.join(missing)} missing; a plain CSV needs "
                "layer,unit,label,category[,precision]."
            )
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
                precision=precision,
                worker=(row.get("annotator") or "").strip(),
                fmt="csv",
                file=path.name,
                line=line,
            )
        )
    return answers


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
            answers.extend(read_plain_csv(path, dissection))
    return answers
