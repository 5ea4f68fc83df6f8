"""The HTML report: renders with any subset of stages, escapes hostile labels, links relatively."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_SPEC
from matplotlib.figure import Figure

from dissect.cli import main
from dissect.dissection import Dissection
from dissect.images import Preprocess
from dissect.labels import write_labels
from dissect.plots.units import plot_rf_map, plot_unit_top_images
from dissect.report import write_report
from dissect.rf import OcclusionConfig, receptive_fields
from dissect.segment import write_segments
from dissect.streaming import run_dissection

PREPROCESS = Preprocess(24, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
HOSTILE = [
    "<script>alert(1)</script>",
    '" onmouseover="alert(2)',
    "<img src=x onerror=alert(3)>",
    "$\\alpha$ & co",
]


class Page(HTMLParser):
    """Collects script tags, attributes, links and the text of label cells."""

    def __init__(self):
        super().__init__()
        self.scripts = 0
        self.links: list[str] = []
        self.handlers: list[str] = []
        self.rows: list[dict] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.scripts += tag == "script"
        self.handlers += [name for name in attrs if name.startswith("on")]
        self.links += [attrs[key] for key in ("src", "href") if key in attrs]
        if tag == "tr" and "unit" in (attrs.get("class") or "").split():
            self.rows.append(attrs)


def parse(index: Path) -> tuple[str, Page]:
    text = index.read_text(encoding="utf-8")
    page = Page()
    page.feed(text)
    return text, page


@pytest.fixture
def dissected(tmp_path, image_folder) -> Dissection:
    with pytest.warns(UserWarning, match="broken.jpg"):
        return run_dissection(
            TINY_SPEC,
            str(image_folder),
            tmp_path / "run",
            ["conv1", "conv2"],
            topk=3,
            preprocess=PREPROCESS,
            progress=False,
        )


def test_report_with_only_the_dissection(dissected):
    index = write_report(dissected, progress=False)
    assert index == dissected.directory.resolve() / "report" / "index.html"
    text, page = parse(index)
    assert page.scripts == 1  # the filter
    assert len(page.rows) == 4 + 6
    assert {row["data-layer"] for row in page.rows} == {"conv1", "conv2"}
    assert "No unit labels yet" in text and "dissect rf DIR" in text
    assert page.links == []


def hostile_labels() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "layer": ["conv1"] * 4 + ["conv2"],
            "unit": [0, 1, 2, 3, 0],
            "label": [*HOSTILE, "dog"],
            "category": ["object", "color", "<b>texture</b>", "part", "object"],
            "precision": [0.9, 0.8, 0.9, 0.5, np.nan],
            "iou": [np.nan] * 4 + [0.3],
        }
    )


@pytest.mark.filterwarnings("ignore:skipped image")
def test_report_escapes_hostile_labels(dissected):
    labels = hostile_labels()
    write_labels(dissected.directory, "crowd", labels.iloc[:4])
    write_labels(dissected.directory, "iou", labels.iloc[4:])
    text, page = parse(write_report(dissected, progress=False))
    assert page.scripts == 1
    assert page.handlers == []
    for label in HOSTILE[:3]:
        assert label not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;b&gt;texture&lt;/b&gt;" not in text  # an unknown category has no type
    rows = {(row["data-layer"], row["data-label"]): row for row in page.rows}
    # The parser decodes attributes: the filter compares the original text.
    assert rows[("conv1", HOSTILE[1])]["data-type"] == "color"
    assert rows[("conv1", HOSTILE[0])]["data-detector"] == "1"
    assert rows[("conv1", HOSTILE[3])]["data-detector"] == "0"  # precision 0.5 < 0.75
    assert rows[("conv2", "dog")]["data-detector"] == "1"  # IoU 0.3 >= 0.04
    # Semantic figures are linked relatively and exist inside report/.
    root = dissected.directory / "report"
    assert any(link.endswith("type_distribution.png") for link in page.links)
    for link in page.links:
        assert not link.startswith(("/", "http")) and ".." not in link
        assert (root / link).is_file()
    pattern = r'Semantic types per layer</h2>\s*<div class="scroll"><table>(.*?)</table>'
    table = re.search(pattern, text, re.S)
    assert "1 (25.0%)" in table.group(1)  # conv1: one object detector of 4 units


@pytest.mark.filterwarnings("ignore:skipped image")
def test_report_shows_segments_and_receptive_fields(dissected, capsys):
    write_segments(dissected, ["conv1"], top=2, progress=False)
    config = OcclusionConfig(top=2, occluder=5, stride=4, batch_size=16)
    receptive_fields(dissected, ["conv2"], [0, 1], config, progress=False)
    (dissected.directory / "plots").mkdir()
    (dissected.directory / "plots" / "rf_sizes.png").write_bytes(b"\x89PNG stand-in")
    assert main(["report", str(dissected.directory), "--top", "2"]) == 0
    assert "report ->" in capsys.readouterr().out
    text, page = parse(dissected.directory / "report" / "index.html")
    root = dissected.directory / "report"
    pictures = {link for link in page.links if "/units/" in link}
    rf_maps = {link for link in page.links if "/rf/" in link}
    assert len(pictures) == 4 * 2  # top 2 of every conv1 unit, none of conv2 (not segmented)
    assert len(rf_maps) == 2
    assert "dissect segment" in text and "--layers conv2" in text  # says how to get them
    assert "assets/plots/rf_sizes.png" in page.links  # the figures of dissect rf, copied
    for link in page.links:
        assert (root / link).is_file()
    assert "half-max, mean (px)" in text  # the receptive-field summary, named for people
    assert "run_id" not in text
    assert "Receptive fields not measured" not in text


@pytest.mark.filterwarnings("ignore:skipped image")
def test_unit_figures(dissected):
    write_labels(dissected.directory, "crowd", hostile_labels().iloc[:4])
    figure = plot_unit_top_images(dissected, "conv1", 3, top=2)
    assert isinstance(figure, Figure)
    assert len(figure.axes) == 2
    assert figure._suptitle.get_text().startswith("conv1 unit 3: \\$\\alpha\\$ & co")
    receptive_fields(dissected, ["conv1"], [1], OcclusionConfig(top=2, occluder=5, stride=4))
    assert isinstance(plot_rf_map(dissected, "conv1", 1), Figure)


@pytest.mark.filterwarnings("ignore:skipped image")
def test_report_refuses_segments_and_receptive_fields_of_another_run(dissected, capsys):
    import pandas as pd

    write_segments(dissected, ["conv1"], top=1, progress=False)
    config = OcclusionConfig(top=1, occluder=5, stride=4, batch_size=16)
    receptive_fields(dissected, ["conv2"], [0], config, progress=False)
    run = dissected.run_id
    rf = dissected.directory / "receptive_fields.csv"
    segments = dissected.directory / "segments" / "conv1" / "segments.csv"
    for path in (rf, segments):
        assert set(pd.read_csv(path, dtype={"run_id": str})["run_id"]) == {run}
    for path, command in ((rf, "dissect rf"), (segments, "dissect segment")):
        table = pd.read_csv(path, dtype={"layer": str, "run_id": str})
        table.assign(run_id="0123456789abcdef").to_csv(path, index=False)
        assert main(["report", str(dissected.directory), "--top", "1"]) == 2
        assert command in capsys.readouterr().err
        table.to_csv(path, index=False)
    receptive_fields(dissected, ["conv1"], [0], config, progress=False)
    assert sorted(pd.read_csv(rf)["layer"]) == ["conv1", "conv2"]  # this run's conv2 rows stay
    table = pd.read_csv(rf, dtype={"layer": str, "run_id": str})
    table.assign(run_id="0123456789abcdef").to_csv(rf, index=False)
    receptive_fields(dissected, ["conv1"], [0], config, progress=False)
    assert pd.read_csv(rf)["layer"].tolist() == ["conv1"]  # another run's rows are dropped


@pytest.mark.filterwarnings("ignore:skipped image")
def test_report_counts_detectors_by_q_values_and_says_which_rule(dissected, capsys):
    labels = pd.DataFrame(
        {
            "layer": ["conv1", "conv1", "conv2"],
            "unit": [0, 1, 0],
            "label": ["red", "dog", "cat"],
            "category": ["color", "object", "object"],
            "iou": [0.2, 0.3, 0.1],
            "q_value": [0.01, 0.2, 0.04],  # dog: a high IoU that is not significant
        }
    )
    write_labels(dissected.directory, "iou", labels)
    text, page = parse(write_report(dissected, progress=False))
    rows = {(row["data-layer"], row["data-label"]): row for row in page.rows}
    assert rows[("conv1", "red")]["data-detector"] == "1"
    assert rows[("conv1", "dog")]["data-detector"] == "0"  # q 0.2 > 0.05
    assert rows[("conv2", "cat")]["data-detector"] == "1"
    rule = "Detectors counted by: IoU \u2265 0.04 and q-value \u2264 0.05 (the significance rule"
    assert rule in text
    pattern = r'Semantic types per layer</h2>\s*<div class="scroll"><table>(.*?)</table>'
    types = re.search(pattern, text, re.S).group(1)
    conv1 = re.search(r"<tr><td>conv1</td>(.*?)</tr>", types, re.S).group(1)
    assert "0 (0.0%)" in conv1 and "1 (25.0%)" in conv1  # the dog does not count as an object
    assert "q-value at most 0.05 (the significance rule)" in text  # how to read this page
    # asked for the IoU rule alone, the dog counts and the page says so
    assert main(["report", str(dissected.directory), "--fdr", "none"]) == 0
    text, page = parse(dissected.directory / "report" / "index.html")
    rows = {(row["data-layer"], row["data-label"]): row for row in page.rows}
    assert rows[("conv1", "dog")]["data-detector"] == "1"
    assert "(the IoU rule, as asked: q-values not used)" in text
    # labels without q-values (dissect run --iou): the IoU rule, and why
    write_labels(dissected.directory, "iou", labels.drop(columns="q_value"))
    text, _ = parse(write_report(dissected, progress=False))
    assert "the IoU rule: some automatic labels have no q-value" in text
    assert main(["report", str(dissected.directory), "--fdr", "0.25"]) == 0
    text, page = parse(dissected.directory / "report" / "index.html")
    assert all(row["data-detector"] == "0" for row in page.rows)  # no q-value: none counts
    assert "q-value \u2264 0.25" in text and "labels without a q-value never count" in text
