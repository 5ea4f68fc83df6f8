"""Small helpers shared by the static HTML pages (``report``, ``compare``, ``explain``).

Everything taken from a dissection directory or a user's file is data: :func:`e` escapes it
(quotes too), :func:`href` makes a relative, percent-encoded link, :func:`table` renders a
DataFrame with every cell escaped. :data:`STYLE` is the pages' common stylesheet.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    import pandas as pd

#: Lets a phone lay the page out at its own width instead of a zoomed-out desktop's.
VIEWPORT = '<meta name="viewport" content="width=device-width, initial-scale=1">'
#: The CSS every page shares (the report's look); wide tables scroll inside a ``.scroll``
#: box, and on a phone figures keep a readable width and scroll sideways.
STYLE = """body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: left; }
th { background: #f3f3f3; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #777; font-style: italic; }
img.figure { max-width: 100%; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 1em; }
dt { font-weight: bold; }
h1, dd, .note { overflow-wrap: anywhere; }
.scroll, p:has(> img.figure) { overflow-x: auto; max-width: 100%; }
@media (max-width: 600px) { body { margin: 0.6em; }
  dl, .howto dl { grid-template-columns: auto; } dd { margin: 0 0 0.4em 1em; }
  img.figure { max-width: none; } }"""


def e(value: object) -> str:
    """HTML-escape any value (quotes too, so it is safe inside attributes); None/NaN -> ''."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return html.escape(str(value), quote=True)


def href(path: Path, root: Path) -> str:
    """A relative, percent-encoded, escaped link from ``root`` to ``path``."""
    return e(quote(path.relative_to(root).as_posix()))


def number(value: object, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits; '' for non-numbers and NaN."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return ""
    return "" if value != value else f"{value:.{digits}g}"


def table(frame: pd.DataFrame) -> str:
    """A plain escaped HTML table of a DataFrame (numbers right-aligned), in a box that scrolls
    sideways when the table is wider than the page."""
    import numpy as np

    head = "".join(f"<th>{e(column)}</th>" for column in frame.columns)
    rows = []
    for record in frame.itertuples(index=False):
        cells = []
        for value in record:
            if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
                value, bool
            ):
                cells.append(f'<td class="num">{number(value, 4)}</td>')
            else:
                cells.append(f"<td>{e(value)}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    body = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    return f'<div class="scroll">{body}</div>'  # a wide table scrolls inside its box


def note(text: str) -> str:
    """A grey italic paragraph (escaped)."""
    return f'<p class="note">{e(text)}</p>'


def page(title: str, body: str, style: str = "") -> str:
    """A whole HTML document: ``title`` (escaped here) and ``body`` (already HTML)."""
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n{VIEWPORT}\n'
        f"<title>{e(title)}</title>\n<style>\n{STYLE}\n{style}\n</style>\n</head>\n<body>\n"
        f"<h1>{e(title)}</h1>\n{body}\n</body>\n</html>\n"
    )
