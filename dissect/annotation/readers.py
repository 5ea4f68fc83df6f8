"""Reading answer files line by line, with errors that name the file and line."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DissectError
from ..taxonomy import DEFAULT_TAXONOMY, DEFAULT_TYPES


def read_text(path: Path) -> str:
    """The whole file as UTF-8 text (a byte-order mark is dropped)."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise DissectError(f"{path}: cannot read this file as UTF-8 text ({error}).") from error


def csv_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line, row)`` for every record of a CSV file with a header.

    Raises
    ------
    DissectError
        For an empty file, a quote left open (a truncated file), or a record whose number of
        fields differs from the header's, naming the file and line.
    """
    lines = read_text(path).splitlines(keepends=True)
    reader = csv.reader(lines, strict=True)
    try:
        header = next(reader, None)
        if not header:
            raise DissectError(f"{path}: the file is empty; expected a CSV header line.")
        for record in reader:
            if not any(field.strip() for field in record):
                continue
            if len(record) != len(header):
                raise DissectError(
                    f"{path}, line {reader.line_num}: {len(record)} fields where the header has "
                    f"{len(header)}; the file is malformed or truncated."
                )
            yield reader.line_num, dict(zip(header, record, strict=True))
    except csv.Error as error:
        raise DissectError(
            f"{path}, line {reader.line_num}: malformed CSV ({error}); the file may be truncated."
        ) from error


def json_array(path: Path) -> Iterator[tuple[int, object]]:
    """``(line, item)`` for every item of a file holding one JSON array.

    Raises
    ------
    DissectError
        For invalid or truncated JSON (with the line of the error) or a file that is not an
        array.
    """
    text = read_text(path)
    decoder = json.JSONDecoder()
    position = _skip_space(text, 0)
    if position >= len(text) or text[position] != "[":
        raise DissectError(f"{path}: expected a JSON array of tasks ([...]) at the top level.")
    position = _skip_space(text, position + 1)
    if text.startswith("]", position):
        return
    line, counted = 1, 0  # lines counted up to ``counted``: each newline is counted once
    while True:
        line, counted = line + text.count("\n", counted, position), position
        try:
            item, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise DissectError(
                f"{path}, line {error.lineno}: invalid JSON ({error.msg}); "
                "the file may be truncated."
            ) from error
        except RecursionError as error:
            raise DissectError(
                f"{path}, line {line}: JSON nested too deeply to read (thousands of levels); "
                "this is not an annotation export."
            ) from error
        yield line, item
        position = _skip_space(text, position)
        if text.startswith(",", position):
            position = _skip_space(text, position + 1)
        elif text.startswith("]", position):
            if _skip_space(text, position + 1) != len(text):
                raise DissectError(f"{path}: unexpected text after the JSON array.")
            return
        else:
            line = text.count("\n", 0, position) + 1
            raise DissectError(
                f"{path}, line {line}: invalid JSON (expected ',' or ']'); "
                "the file may be truncated."
            )


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


@dataclass(frozen=True)
class Origin:
    """Where an answer comes from: annotator, assignment, file format, file and line."""

    fmt: str
    file: str
    line: int
    worker: str = ""
    assignment: str = ""


@dataclass(frozen=True)
class Shown:
    """What the task showed: ``n_shown`` images, the numbers of those marked as not matching
    (``mismatches``) and of the sentinel images among them (``sentinels``)."""

    n_shown: int
    mismatches: set[int]
    sentinels: set[int] = field(default_factory=set)


def answer(
    where: str,
    layer: str,
    unit: int,
    label: object,
    category: object,
    *,
    origin: Origin,
    shown: Shown | None = None,
    precision: float | None = None,
) -> dict:
    """One checked answer (a row of ``annotations_raw.csv``).

    The label must be non-empty; the category is mapped onto a semantic type key (keys,
    display names and common spellings are accepted); mismatching image numbers must lie in
    1..n_shown. ``sentinels`` are the numbers of the task's sentinel images (images of other
    units, see :mod:`dissect.annotation.sentinels`): they are left out of the precision,
    ``1 - (own images marked) / (own images shown)``, and counted as caught when marked. Without
    mismatches the precision is the one given, if any.
    """
    text = "" if label is None else " ".join(str(label).split())
    if not text:
        raise DissectError(f"{where}: the concept label is empty.")
    key = DEFAULT_TAXONOMY.type_of(category)
    if key not in DEFAULT_TYPES:
        raise DissectError(
            f"{where}: unknown concept type {str(category)!r}; use one of "
            f"{', '.join(DEFAULT_TYPES)}."
        )
    n_sentinels = kept = n_shown = mismatches = None
    if shown is not None:
        n_shown, mismatches, sentinels = shown.n_shown, shown.mismatches, shown.sentinels
        bad = sorted(n for n in mismatches if not 1 <= n <= (n_shown or 0))
        if bad:
            raise DissectError(
                f"{where}: image(s) {', '.join(map(str, bad))} marked as not matching, but the "
                f"task shows images 1..{n_shown}."
            )
        n_sentinels, kept = len(sentinels), len(sentinels - mismatches)
        n_shown -= n_sentinels
        mismatches = mismatches - sentinels
        precision = 1 - len(mismatches) / n_shown
    if precision is not None and not 0 <= precision <= 1:
        raise DissectError(f"{where}: precision {precision} is not between 0 and 1.")
    return {
        "layer": layer,
        "unit": int(unit),
        "label": text,
        "category": key,
        "n_shown": n_shown if n_shown is not None else np.nan,
        "n_mismatch": len(mismatches) if mismatches is not None else np.nan,
        "precision": np.nan if precision is None else float(precision),
        "n_sentinels": np.nan if n_sentinels is None else n_sentinels,
        "sentinels_kept": np.nan if kept is None else kept,
        "worker": origin.worker,
        "assignment": origin.assignment,
        "format": origin.fmt,
        "file": origin.file,
        "line": origin.line,
    }
