"""Atomic file writes: a crash never leaves a half-written file that looks whole."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    Parameters
    ----------
    path : path-like
        Final destination. Its parent folder is created if needed.

    Yields
    ------
    Path
        Where to write. On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes files private (0600); results are ordinary files
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


#: A cell a spreadsheet would run as a formula, behind any apostrophes we added before it.
_FORMULA = re.compile(r"'*[=+\-@\t\r]")


def neutralise(text: str) -> str:
    """A CSV cell that no spreadsheet runs as a formula (OWASP: a leading apostrophe).

    Text starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return (or apostrophes
    before one, so that :func:`restore` gives back exactly what was written) gets an apostrophe
    in front; anything else is left as it is.
    """
    return "'" + text if _FORMULA.match(text) else text


def restore(text: str) -> str:
    """The text :func:`neutralise` was given: its added apostrophe removed."""
    return text[1:] if text.startswith("'") and _FORMULA.match(text, 1) else text


def write_csv(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    """Write a DataFrame as CSV (no index column) to ``path`` atomically.

    Every text cell is :func:`neutralise`-d (labels, names and file names come from outside and
    would otherwise be formulas in a spreadsheet); :func:`read_csv` restores them.
    """
    with atomic_path(path) as tmp:
        _map_text(frame, neutralise).to_csv(tmp, index=False)


def read_csv(path: str | os.PathLike, **options: Any) -> pd.DataFrame:
    """Read a CSV written by :func:`write_csv` (``pandas.read_csv`` options), text restored."""
    import pandas as pd

    return _map_text(pd.read_csv(path, **options), restore)


def _map_text(frame: pd.DataFrame, change) -> pd.DataFrame:
    from pandas.api.types import is_object_dtype, is_string_dtype

    text = [
        name
        for name, column in frame.items()
        if is_object_dtype(column.dtype) or is_string_dtype(column.dtype)
    ]
    if not text:
        return frame
    frame = frame.copy()
    for name in text:
        frame[name] = frame[name].map(lambda cell: change(cell) if isinstance(cell, str) else cell)
    return frame


def write_torch(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically; a full disk raises ``OSError`` (ENOSPC).

    The bytes are made in memory first: torch's own file writer reports a failed write as a
    ``RuntimeError`` ("unexpected pos") and leaves a truncated file. Here a failed write leaves
    nothing behind.
    """
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(buffer.getbuffer())


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Write arrays to an uncompressed ``.npz`` file atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            import numpy as np

            np.savez(handle, **arrays)


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` file (pickles refused) into a dict."""
    import numpy as np

    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}
