"""An offline page for annotating units in the lab.

The page (``annotation/html/annotate.html``) shows the segmented top images from the package's
``images/`` folder beside it (``../images/``, loaded lazily as the annotator scrolls: the page
itself stays small; nothing needs uploading, the ``annotation`` folder is kept together), asks the
three questions for each unit, and saves the answers as a CSV
(``task,layer,unit,label,category,mismatch,annotator``; ``mismatch`` lists the numbers of the
pictures ticked as not showing the concept) that ``dissect import`` scores against the package's
private mapping. No label the units already have is shown, so the answers stay independent of
it. Layer names and file names are HTML-escaped.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from ..io import write_text
from ..taxonomy import DEFAULT_TYPES

_STYLE = """
body { font-family: sans-serif; margin: 1em 2em; }
section { border-top: 1px solid #ccc; padding: 0.5em 0; }
.images { display: flex; flex-wrap: wrap; gap: 8px; }
figure { margin: 0; text-align: center; }
img { width: 128px; height: 128px; image-rendering: pixelated; }
"""

_SCRIPT = """
function quote(value) {
  // a leading apostrophe keeps a spreadsheet from running the text as a formula (OWASP);
  // dissect import removes it again
  var text = String(value);
  if (/^'*[=+\\-@\\t\\r]/.test(text)) { text = "'" + text; }
  return '"' + text.replace(/"/g, '""') + '"';
}
document.getElementById("save").addEventListener("click", function () {
  var annotator = document.getElementById("annotator").value.trim();
  var lines = ["task,layer,unit,label,category,mismatch,annotator"];
  document.querySelectorAll("section.task").forEach(function (task) {
    var label = task.querySelector(".concept").value.trim();
    var type = task.querySelector("input[type=radio]:checked");
    if (!label || !type) { return; }
    var bad = Array.prototype.map.call(task.querySelectorAll(".mismatch:checked"),
                                       function (box) { return box.value; });
    lines.push([task.dataset.task, quote(task.dataset.layer), task.dataset.unit, quote(label),
                type.value, bad.join(" "), quote(annotator)].join(","));
  });
  document.getElementById("status").textContent =
    (lines.length - 1) + " answered unit(s) saved to annotations.csv";
  var blob = new Blob([lines.join("\\n") + "\\n"], {type: "text/csv"});
  var link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = "annotations.csv";
  link.click();
});
"""


def page(tasks: pd.DataFrame, images: str) -> str:
    """The annotation page for ``tasks`` whose image files are in the folder ``images``.

    ``images`` is the folder's path relative to the page (``../images``).
    """
    e = html.escape
    sections = []
    for number, (task, rows) in enumerate(tasks.groupby("task", sort=False)):
        layer, unit = str(rows["layer"].iloc[0]), int(rows["unit"].iloc[0])
        figures = []
        for n, name in zip(rows["n"], rows["image"], strict=True):
            src = e(f"{images}/{quote(Path(name).name)}")
            figures.append(
                f'<figure><img src="{src}" loading="lazy" alt="image {n}"/><br/>'
                f'<label><input type="checkbox" class="mismatch" value="{n}"/> {n}: does not '
                "show it</label></figure>"
            )
        radios = " ".join(
            f'<label><input type="radio" name="type-{number}" value="{key}"/> {e(name)}</label>'
            for key, name in DEFAULT_TYPES.items()
        )
        sections.append(
            f'<section class="task" id="{e(task)}" data-task="{e(task)}" data-layer="{e(layer)}" '
            f'data-unit="{unit}" data-shown="{len(rows)}">\n<h2>{e(layer)}, unit {unit}</h2>\n'
            f'<div class="images">{"".join(figures)}</div>\n'
            '<p><label>Concept the highlighted regions share: <input type="text" '
            'class="concept" size="30"/></label></p>\n'
            f"<p>Type: {radios}</p>\n</section>"
        )
    body = "\n".join(sections)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8"/>
<title>dissect: annotate units</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>Annotate units</h1>
<p>Each picture highlights the region one unit responds to (the rest is darkened). For each
unit: name the concept most highlighted regions share, tick the pictures that do not show it,
and pick its type. Then press <em>Save answers</em> and give the saved annotations.csv to
<code>dissect import DIR annotations.csv</code>. Units left unanswered are not saved. The pictures
come from the <code>images</code> folder next to this page's folder: keep them together.</p>
<p><label>Your name or initials: <input type="text" id="annotator"/></label></p>
{body}
<p><button id="save" type="button">Save answers</button> <span id="status"></span></p>
<script>{_SCRIPT}</script>
</body>
</html>
"""


def write_html(folder: Path, tasks: pd.DataFrame, images: Path) -> list[Path]:
    """Write ``annotate.html`` into ``folder``, showing the pictures in ``images``.

    Returns its path in a list.
    """
    path = folder / "annotate.html"
    relative = Path(os.path.relpath(images, folder)).as_posix()
    write_text(path, page(tasks, relative))
    return [path]
