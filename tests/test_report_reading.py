"""The report explains itself and fits the screen: a "how to read" box, detectors told apart
from best guesses, pictures that link to their full size, human column names, a viewport, plots
in network order with titles and bars that do not collide; checked in a browser when one is
installed (chromium), at desktop and phone width."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_SPEC

from dissect.explain import explain_image, plot_explanation
from dissect.images import Preprocess
from dissect.labels import write_labels
from dissect.plots.semantics import plot_type_distribution
from dissect.reference import zhou2015_types
from dissect.report import write_report
from dissect.rf import OcclusionConfig, receptive_fields
from dissect.segment import write_segments
from dissect.semantics import layer_type_table
from dissect.streaming import run_dissection

PREPROCESS = Preprocess(24, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A report with labels (one detector, one best guess), segments and receptive fields."""
    out = tmp_path_factory.mktemp("reading") / "run"
    dissection = run_dissection(
        TINY_SPEC,
        "synthetic:8:3",
        out,
        ["conv1", "conv2"],
        topk=3,
        preprocess=PREPROCESS,
        progress=False,
    )
    labels = pd.DataFrame(
        {
            "layer": ["conv2", "conv2"],
            "unit": [0, 1],
            "label": ["<b>car</b>", "sky & sea"],
            "category": ["object", "material"],
            "iou": [0.2, 0.01],
        }
    )
    write_labels(out, "iou", labels)
    write_segments(dissection, ["conv2"], top=2, progress=False)
    config = OcclusionConfig(top=2, occluder=5, stride=4, batch_size=16)
    receptive_fields(dissection, ["conv1", "conv2"], [0], config, progress=False)
    return write_report(dissection, progress=False)


def test_page_has_a_viewport_and_a_how_to_read_box(report):
    text = report.read_text(encoding="utf-8")
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in text
    box = re.search(r'<aside class="howto">(.*?)</aside>', text, re.S).group(1)
    for term in ("unit", "detector", "IoU", "threshold T", "half-max", "50% mass", "theoretical"):
        assert f"{term}" in box
    assert "at least 0.04" in box  # the detector rule, with the threshold used
    # The box sits at the top, before the first table.
    assert text.index('class="howto"') < text.index("<table")


def test_detectors_and_best_guesses_look_different(report):
    text = report.read_text(encoding="utf-8")
    pattern = r'<tr class="unit (\w+)" data-layer="conv2" data-type="\w*" data-label="([^"]*)"'
    rows = {label: kind for kind, label in re.findall(pattern, text)}
    assert rows["&lt;b&gt;car&lt;/b&gt;"] == "detector"
    assert rows["sky &amp; sea"] == "other"
    guess = re.search(
        r'<td class="guess">sky &amp; sea <span class="tag">not a detector</span>', text
    )
    assert guess, "a non-detector's label is shown as a best guess"
    assert "<b>car</b>" not in text
    assert re.search(r"tr\.other td \{ color: #[0-9a-f]{6}; \}", text)  # greyed


def test_pictures_link_to_full_size_and_missing_ones_say_how(report):
    text = report.read_text(encoding="utf-8")
    root = report.parent
    pattern = r'<a href="([^"]+)" target="_blank"><img class="top"[^>]*src="([^"]+)"'
    links = re.findall(pattern, text)
    assert len(links) == 6 * 2  # conv2 has 6 units, top 2 each
    for target, shown in links:
        assert target == shown and (root / target).is_file()
    assert "img.top { height: 112px" in text  # large enough to see
    assert "dissect segment" in text and "--layers conv1" in text  # conv1 was not segmented


def test_receptive_field_table_has_human_names(report):
    text = report.read_text(encoding="utf-8")
    section = text[text.index("<h2>Receptive fields</h2>") : text.index("<h2>Units</h2>")]
    for raw in ("rf_empirical_mean", "run_id", "silent_units", "n_units"):
        assert f"<th>{raw}</th>" not in section
    assert "<th>half-max, mean (px)</th>" in section
    assert '<div class="scroll"><table>' in section


def test_rf_plots_follow_the_network_not_the_alphabet(tmp_path):
    out = tmp_path / "run"
    dissection = run_dissection(
        TINY_SPEC,
        "synthetic:4:3",
        out,
        ["conv2", "conv1"],
        topk=2,
        preprocess=PREPROCESS,
        progress=False,
    )
    receptive_fields(
        dissection,
        dissection.layers,
        [0],
        OcclusionConfig(top=1, occluder=5, stride=6, batch_size=16),
        progress=False,
    )
    for name in ("rf_sizes.png", "rf_conv1.png", "rf_conv2.png"):
        (out / "plots").mkdir(exist_ok=True)
        (out / "plots" / name).write_bytes(b"\x89PNG stand-in")
    text = write_report(dissection, progress=False).read_text(encoding="utf-8")
    shown = re.findall(r'src="assets/plots/(rf_\w+)\.png"', text)
    order = [f"rf_{layer}" for layer in dissection.layers]
    assert shown == [*order, "rf_sizes"]


def test_type_bars_keep_clear_of_the_frame():
    types = pd.DataFrame(
        {
            "layer": ["a", "b"],
            "category": ["object", "object"],
            "n_units": [3, 4],
            "fraction": [0.5, 1.0],
        }
    )
    axes = plot_type_distribution(types).axes[0]
    assert axes.get_ylim()[1] > 100 * 1.02


def test_paper_comparison_axis_says_what_each_bar_measures(tmp_path):
    labels = pd.DataFrame(
        {
            "layer": ["conv3", "pool5"],
            "unit": [0, 1],
            "label": ["car", "sky"],
            "category": ["object", "material"],
            "iou": [0.2, 0.3],
            "source": ["iou", "iou"],
        }
    )
    types = layer_type_table(labels, ["conv3", "pool5"], {"conv3": 4, "pool5": 4})
    from dissect.plots.compare import plot_type_bars

    figure = plot_type_bars(
        types.assign(network="ours", row=types["layer"]), ["conv3", "pool5"], zhou2015_types()
    )
    label = figure.axes[0].get_ylabel()
    assert "units" in label and "annotations" in label


def test_explanation_title_does_not_cover_the_first_row(tmp_path):
    out = tmp_path / "run"
    layers = ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2"]  # a tall figure
    run_dissection(
        TINY_SPEC, "synthetic:4:3", out, layers, topk=2, preprocess=PREPROCESS, progress=False
    )
    figure = plot_explanation(explain_image(out, 0, top=4))
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    title = figure._suptitle.get_window_extent(renderer)
    for axes in figure.axes:
        box = axes.title.get_window_extent(renderer)
        if axes.title.get_text():
            assert title.y0 >= box.y1 - 0.5, "the figure's title overlaps a panel title"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROBE = """<script>
window.addEventListener("load", function () {
  var out = {width: window.innerWidth, page: document.documentElement.scrollWidth, cut: []};
  document.querySelectorAll("table, img.figure, .howto, img.top").forEach(function (el) {
    var r = el.getBoundingClientRect();
    if (r.right > window.innerWidth + 1 && !el.closest(".scroll, p"))
      out.cut.push(el.tagName + "." + el.className);
  });
  var howto = document.querySelector(".howto");
  var box = howto ? howto.getBoundingClientRect() : {width: 0, height: 0};
  out.howto = [box.width, box.height];
  var pre = document.createElement("pre"); pre.id = "probe";
  pre.textContent = JSON.stringify(out); document.body.appendChild(pre);
});
</script>"""


def browser_layout(page: Path, width: int) -> dict:
    """Load ``page`` in headless chromium at ``width`` px; what overflows the window."""
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text(encoding="utf-8") + PROBE, encoding="utf-8")
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                f"--window-size={width},1600",
                "--virtual-time-budget=5000",
                "--dump-dom",
                probe.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        ).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, "the browser did not run the page"
    return json.loads(found.group(1).replace("&quot;", '"'))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
@pytest.mark.parametrize("width", [1400, 420])
def test_nothing_is_cut_off_in_a_browser(report, width):
    layout = browser_layout(report, width)
    assert layout["cut"] == [], f"cut off at {width} px: {layout['cut']}"
    assert layout["page"] <= layout["width"], "the page scrolls sideways as a whole"
    assert layout["howto"][0] > 200 and layout["howto"][1] > 50  # the box is shown
