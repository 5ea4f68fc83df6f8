"""Annotation round trip: export, answers in each service's own format, import, aggregate."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dissect.annotation import aggregate_answers, export_annotation, import_answers, read_raw
from dissect.annotation.aggregate import RAW_COLUMNS, normalise_label
from dissect.cli import main
from dissect.dissection import Dissection
from dissect.errors import DissectError
from dissect.images import Preprocess
from dissect.labels import read_labels, write_labels
from dissect.segment import iter_segments
from dissect.segment.pictures import dim_outside
from dissect.streaming import run_dissection

FIXTURES = Path(__file__).parent / "fixtures" / "annotation"
MTURK = FIXTURES / "mturk_batch_results.csv"
LABELSTUDIO = FIXTURES / "labelstudio_export.json"
PLAIN = FIXTURES / "plain_labels.csv"
HTML_ANSWERS = FIXTURES / "html_page_answers.csv"
BASE_URL = "https://example.org/units"
# The fixtures name the tasks of conv2 units 0, 1, 2 in a package whose salt is "fixture-salt".
TASKS = {0: "u803eddf9ad51", 1: "u9c34b716a5db", 2: "u3ba91efde465"}
SCRIPT = "<script>alert(1)</script>"


def line_of(path: Path, text: str) -> int:
    """The 1-based line of the first occurrence of ``text`` in ``path``."""
    content = path.read_text()
    return content[: content.index(text)].count("\n") + 1


# Label Studio errors name the line where the task starts (one line above its "id").
TASK_102 = line_of(LABELSTUDIO, '"id": 102') - 1


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A dissection of the tiny net with conv2 units 0-2 exported for MTurk and Label Studio."""
    from conftest import TINY_SPEC, make_image_folder

    root = tmp_path_factory.mktemp("annotation")
    folder = make_image_folder(root / "images")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dissection = run_dissection(
            TINY_SPEC,
            str(folder),
            root / "out",
            ["conv1", "conv2"],
            topk=3,
            preprocess=Preprocess(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
            progress=False,
        )
    private = dissection.path("annotation", "private")
    private.mkdir(parents=True)
    (private / "salt.txt").write_text("fixture-salt\n")
    for fmt in ("mturk", "labelstudio"):
        export_annotation(
            dissection, fmt, ["conv2"], [0, 1, 2], base_url=BASE_URL, sentinels=0, progress=False
        )
    return dissection


@pytest.fixture
def dissection(template, tmp_path):
    """A fresh copy of the exported dissection for tests that import into it."""
    return Dissection(shutil.copytree(template.directory, tmp_path / "copy"))


def crowd(directory) -> pd.DataFrame:
    return read_labels(directory).set_index(["layer", "unit"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Sky", "sky"),
        ("  Blue   SKIES ", "blue sky"),
        ("boxes", "box"),
        ("benches", "bench"),
        ("glasses", "glass"),
        ("cars", "car"),
        ("grass", "grass"),
        ("bus", "bus"),
        ("iris", "iris"),
        ("gas", "gas"),
        (SCRIPT, SCRIPT),
    ],
)
def test_normalise_label(text, expected):
    assert normalise_label(text) == expected


def raw_answers(rows):
    frame = pd.DataFrame(rows, columns=["layer", "unit", "label", "category", "precision"])
    for column in RAW_COLUMNS:
        if column not in frame:
            frame[column] = ""
    return frame[RAW_COLUMNS]


def test_aggregate_by_hand():
    raw = raw_answers(
        [
            ("a", 1, "Dogs", "object", 0.5),
            ("a", 1, "dog", "part", 1.0),
            ("a", 1, "cat", "object", np.nan),
            ("a", 0, "tree", "scene", np.nan),
            ("a", 0, "bush", "object", np.nan),
        ]
    )
    labels = aggregate_answers(raw).set_index("unit")
    # Type and precision come from the answers that said dog: object and part tie (taxonomy
    # order), cat's object does not count.
    assert labels.loc[1, "label"] == "dog" and labels.loc[1, "category"] == "part"
    assert labels.loc[1, "precision"] == pytest.approx(0.75)
    assert labels.loc[1, "n_annotators"] == 3
    assert labels.loc[1, "agreement"] == pytest.approx(2 / 3)
    # A tie: the alphabetically first label, the type first in the taxonomy.
    assert labels.loc[0, "label"] == "bush" and labels.loc[0, "category"] == "object"
    assert np.isnan(labels.loc[0, "precision"]) and labels.loc[0, "agreement"] == 0.5
    shuffled = aggregate_answers(raw.iloc[::-1]).set_index("unit")
    pd.testing.assert_frame_equal(shuffled, labels)


def test_mturk_package(template):
    folder = template.path("annotation")
    batch = pd.read_csv(folder / "mturk" / "batch_input.csv")
    assert list(batch.columns) == ["task", "image_1", "image_2", "image_3"]
    assert list(batch["task"]) == list(TASKS.values())
    assert batch.loc[0, "image_2"] == f"{BASE_URL}/{TASKS[0]}_2.png"
    layout = (folder / "mturk" / "layout.html").read_text()
    assert '<crowd-form answer-format="flatten-objects">' in layout
    assert '<crowd-input name="concept"' in layout
    for n in (1, 2, 3):
        assert f'src="${{image_{n}}}"' in layout
        assert f'<crowd-checkbox name="mismatch-{n}">' in layout
    for key in ("color", "texture", "region", "part", "object", "scene"):
        assert f'<crowd-radio-button name="type-{key}" value="{key}">' in layout
    names = sorted(path.name for path in (folder / "images").iterdir())
    assert names == sorted(f"{task}_{n}.png" for task in TASKS.values() for n in (1, 2, 3))
    tasks = pd.read_csv(folder / "private" / "tasks.csv")
    paths = set(template.images()["path"])
    for name in names:
        assert re.fullmatch(r"u[0-9a-f]{12}_[1-3]\.png", name)
        assert not any(Path(path).stem in name for path in paths)
    # The package images are the segmented top images, in rank order.
    for segments in iter_segments(template, "conv2", [0, 1, 2], progress=False):
        rows = tasks[tasks["unit"] == segments.unit].sort_values("n")
        assert list(rows["image_index"]) == list(segments.indices)
        for n, name in enumerate(rows["image"]):
            saved = np.asarray(Image.open(folder / "images" / name))
            expected = dim_outside(segments.images[n], segments.masks[n])
            np.testing.assert_array_equal(saved, expected)


def test_labelstudio_package(template):
    folder = template.path("annotation", "labelstudio")
    root = ET.fromstring((folder / "config.xml").read_text())
    assert [image.get("value") for image in root.iter("Image")] == [
        "$image_1",
        "$image_2",
        "$image_3",
    ]
    assert root.find(".//TextArea").get("name") == "concept"
    choices = {element.get("name"): element for element in root.iter("Choices")}
    assert choices["mismatch"].get("choice") == "multiple"
    assert [c.get("value") for c in choices["mismatch"]] == ["1", "2", "3"]
    assert [c.get("alias") for c in choices["category"]] == [
        "color",
        "texture",
        "region",
        "part",
        "object",
        "scene",
    ]
    tasks = json.loads((folder / "tasks.json").read_text())
    assert tasks[1]["data"] == {
        "task": TASKS[1],
        **{f"image_{n}": f"{BASE_URL}/{TASKS[1]}_{n}.png" for n in (1, 2, 3)},
    }


def test_mturk_round_trip(dissection):
    labels = import_answers(dissection, [MTURK]).set_index("unit")
    # unit 0: Skies (2/3 match), sky (3/3), grass (1/3); the rejected "car" is ignored. The
    # precision is that of the sky answers.
    assert labels.loc[0, "label"] == "sky" and labels.loc[0, "category"] == "region"
    assert labels.loc[0, "precision"] == pytest.approx(5 / 6)
    assert labels.loc[0, "n_annotators"] == 3 and labels.loc[0, "agreement"] == pytest.approx(2 / 3)
    # unit 1: Wheels (part, 3/3), wheel (object, 2/3): a type tie goes to the taxonomy order.
    assert labels.loc[1, "label"] == "wheel" and labels.loc[1, "category"] == "part"
    assert labels.loc[1, "precision"] == pytest.approx(5 / 6) and labels.loc[1, "agreement"] == 1
    assert labels.loc[2, "label"] == SCRIPT and labels.loc[2, "category"] == "texture"
    merged = crowd(dissection.directory)
    assert merged.loc[("conv2", 2), "label"] == SCRIPT
    assert set(merged["source"]) == {"crowd"}
    raw = read_raw(dissection)
    assert len(raw) == 7 and "AWORKER4EXAMPLE" not in set(raw["worker"])


def test_labelstudio_round_trip(dissection):
    labels = import_answers(dissection, [LABELSTUDIO], "labelstudio").set_index("unit")
    # unit 0: Sky (region, 2/3) and clouds (scene, 3/3); the cancelled annotation is ignored.
    # The tie goes to cloud, whose answer alone gives type and precision.
    assert labels.loc[0, "label"] == "cloud" and labels.loc[0, "n_annotators"] == 2
    assert labels.loc[0, "category"] == "scene"
    assert labels.loc[0, "precision"] == pytest.approx(1.0)
    assert labels.loc[1, "precision"] == pytest.approx(1 / 3)
    raw = read_raw(dissection)
    assert set(raw["worker"]) == {"labelstudio:1", "labelstudio:2"}


def test_importing_again_adds_and_counts_each_answer_once(dissection):
    import_answers(dissection, [MTURK])
    import_answers(dissection, [LABELSTUDIO, MTURK])
    labels_file = dissection.path("labels.csv").read_bytes()
    labels = import_answers(dissection, [LABELSTUDIO]).set_index("unit")
    assert dissection.path("labels.csv").read_bytes() == labels_file
    assert len(read_raw(dissection)) == 7 + 3
    # unit 0 over both: sky, sky, grass (MTurk) + sky, clouds (Label Studio).
    assert labels.loc[0, "n_annotators"] == 5 and labels.loc[0, "agreement"] == pytest.approx(0.6)
    assert labels.loc[0, "precision"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)  # the sky answers
    assert labels.loc[1, "category"] == "part" and labels.loc[1, "n_annotators"] == 3


def test_plain_csv_and_html_page_answers(dissection):
    labels = import_answers(dissection, [PLAIN, HTML_ANSWERS]).set_index(["layer", "unit"])
    assert labels.loc[("conv2", 3), "label"] == "striped"
    assert labels.loc[("conv2", 4), "category"] == "part"
    assert labels.loc[("conv2", 4), "label"] == "door, wooden"
    assert labels.loc[("conv1", 0), "category"] == "color"
    assert np.isnan(labels.loc[("conv1", 0), "precision"])
    assert labels.loc[("conv2", 2), "label"] == 'zebra "stripes"'
    assert labels.loc[("conv2", 0), "precision"] == pytest.approx(0.666667)


def test_crowd_labels_win_over_iou(dissection):
    iou = pd.DataFrame(
        {"layer": ["conv2", "conv2"], "unit": [0, 5], "label": ["tree", "road"], "iou": 0.1}
    )
    write_labels(dissection.directory, "iou", iou)
    import_answers(dissection, [MTURK])
    merged = crowd(dissection.directory)
    assert merged.loc[("conv2", 0), "label"] == "sky"
    assert merged.loc[("conv2", 0), "source"] == "crowd"
    assert merged.loc[("conv2", 5), "source"] == "iou"


def test_html_page_shows_no_imported_label(dissection):
    import_answers(dissection, [MTURK])
    export_annotation(dissection, "html", ["conv2"], [0, 2], top=2, sentinels=0, progress=False)
    page = dissection.path("annotation", "html", "annotate.html").read_text()
    assert page.count('<section class="task"') == 2
    # The page shows the package's pictures from images/ beside its folder, inlining none.
    assert "base64" not in page
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 4
    folder = dissection.path("annotation", "html")
    assert all((folder / source).resolve().is_file() for source in sources)
    assert all(source.startswith("../images/") for source in sources)
    assert "alert(1)" not in page and "imported label" not in page
    # Re-exporting with fewer images keeps the package consistent for import.
    tasks = pd.read_csv(dissection.path("annotation", "private", "tasks.csv"))
    assert len(tasks) == 2 + 3 + 2
    assert not dissection.path("annotation", "images", f"{TASKS[0]}_3.png").exists()


def test_html_export_says_what_to_do_with_the_page(dissection, capsys):
    args = ["export", str(dissection.directory), "--format", "html", "--units", "0", "--top", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "annotate.html in a browser" in out and "upload" not in out
    readme = dissection.path("annotation", "README.txt").read_text()
    assert "self-contained" not in readme


def edited(tmp_path, source: Path, old: str, new: str, count: int = 1) -> Path:
    text = source.read_text()
    assert old in text
    path = tmp_path / source.name
    path.write_text(text.replace(old, new, count))
    return path


def truncated(tmp_path, source: Path, end: int) -> Path:
    path = tmp_path / source.name
    path.write_text(source.read_text()[:end])
    return path


def written(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def plain(tmp_path, body: str) -> Path:
    return written(tmp_path / "labels.csv", "layer,unit,label,category,precision\n" + body)


BAD_INPUTS = {
    "unknown layer": (
        lambda t: plain(t, "conv2,1,dog,object,1\nconv9,1,dog,object,1\n"),
        r"labels.csv, line 3: layer 'conv9' was not dissected",
    ),
    "unknown unit": (
        lambda t: plain(t, "conv2,6,dog,object,1\n"),
        r"labels.csv, line 2: unit '6'.*units 0..5",
    ),
    "unit not a number": (
        lambda t: plain(t, "conv2,two,dog,object,1\n"),
        r"line 2: unit 'two': it is not a whole number",
    ),
    "unknown type in csv": (
        lambda t: plain(t, "conv2,1,dog,animal,1\n"),
        r"line 2: unknown concept type 'animal'; use one of color, texture",
    ),
    "bad precision": (
        lambda t: plain(t, "conv2,1,dog,object,1.5\n"),
        r"line 2: precision 1.5 is not between 0 and 1",
    ),
    "empty label": (lambda t: plain(t, "conv2,1, ,object,1\n"), r"line 2: the concept label"),
    "no type chosen in mturk": (
        lambda t: edited(
            t,
            MTURK,
            '"Skies","false","false","true","false","false","true"',
            '"Skies","false","false","true","false","false","false"',
        ),
        r"mturk_batch_results.csv, line 2: no concept type chosen",
    ),
    "two types chosen in mturk": (
        lambda t: edited(
            t,
            MTURK,
            '"wheel","false","true","false","false","false","false"',
            '"wheel","false","true","false","true","false","false"',
        ),
        r"line 7: more than one concept type chosen \(color, object\)",
    ),
    "mturk image not in package": (
        lambda t: edited(t, MTURK, f"{TASKS[1]}_2.png", f"{TASKS[1]}_9.png", 2),
        r"line 6: image_2 '.*_9.png' is not image 2 of task",
    ),
    "mturk task not in package": (
        lambda t: edited(t, MTURK, f'"{TASKS[2]}"', '"u000000000000"'),
        r"line 8: task 'u000000000000' is not in this annotation package",
    ),
    "mturk missing column": (
        lambda t: edited(t, MTURK, '"Answer.concept"', '"Answer.conzept"'),
        r"line 2: column\(s\) Answer.concept missing",
    ),
    "mturk truncated mid-record": (
        lambda t: truncated(t, MTURK, MTURK.read_text().index('"AWORKER3EXAMPLE"')),
        r"line 4: 16 fields where the header has 43",
    ),
    "mturk truncated inside a quote": (
        lambda t: truncated(t, MTURK, MTURK.read_text().index("AWORKER3EXAMPLE") + 3),
        r"mturk_batch_results.csv, line 4: malformed CSV",
    ),
    "labelstudio truncated": (
        lambda t: truncated(t, LABELSTUDIO, LABELSTUDIO.read_text().index('"id": 102') + 4),
        rf"labelstudio_export.json, line {TASK_102 + 1}: invalid JSON",
    ),
    "labelstudio image not in package": (
        lambda t: edited(t, LABELSTUDIO, f"{TASKS[1]}_3.png", "elsewhere.png"),
        rf"labelstudio_export.json, line {TASK_102}: image_3 'https://example.org/units/elsewhere.png'",
    ),
    "labelstudio image number out of range": (
        lambda t: edited(t, LABELSTUDIO, '["1", "2"]', '["1", "4"]'),
        rf"line {TASK_102}: image\(s\) 4 marked as not matching, but the task shows images 1..3",
    ),
    "labelstudio unknown type": (
        lambda t: edited(t, LABELSTUDIO, '["scene"]', '["landscape"]'),
        r"labelstudio_export.json, line 2: unknown concept type 'landscape'",
    ),
    "labelstudio json-min": (
        lambda t: edited(t, LABELSTUDIO, '"annotations": [', '"annotationz": [', 2),
        r"line 2: a task without 'annotations'; export from Label Studio as JSON",
    ),
    "not a known format": (
        lambda t: written(t / "other.csv", "a,b\n1,2\n"),
        r"cannot tell the format",
    ),
    "missing file": (lambda t: t / "nowhere.csv", r"'.*nowhere.csv' does not exist"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_a_clear_error_and_loses_nothing(dissection, tmp_path, case):
    make, message = BAD_INPUTS[case]
    import_answers(dissection, [PLAIN])
    before = {
        name: dissection.path(name).read_bytes()
        for name in ("labels.csv", "labels_crowd.csv", "annotations_raw.csv")
    }
    folder = tmp_path / "bad"
    folder.mkdir()
    bad = make(folder)
    with pytest.raises(DissectError, match=message):
        import_answers(dissection, [MTURK, bad])
    after = {name: dissection.path(name).read_bytes() for name in before}
    assert after == before
    assert not list(dissection.directory.glob(".*.tmp"))


def test_task_answers_need_the_package(template, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(template.directory, bare, ignore=shutil.ignore_patterns("annotation"))
    with pytest.raises(DissectError, match="has no annotation package.*dissect export"):
        import_answers(bare, [MTURK])
    labels = import_answers(bare, [PLAIN])
    assert len(labels) == 3


def test_export_arguments(template):
    with pytest.raises(DissectError, match="--base-url"):
        export_annotation(template, "mturk", ["conv2"], [0])
    with pytest.raises(DissectError, match="--format must be one of"):
        export_annotation(template, "cvat", ["conv2"], [0])
    with pytest.raises(DissectError, match=r"units 0\.\.5"):
        export_annotation(template, "html", ["conv2"], [7])


def test_cli_export_and_import(dissection, capsys):
    directory = str(dissection.directory)
    args = ["export", directory, "--format", "labelstudio", "--layers", "conv2", "--units", "1"]
    assert main([*args, "--top", "1", "--base-url", BASE_URL]) == 0
    assert "exported 1 unit(s), 1 images + 1 sentinel(s)" in capsys.readouterr().out
    assert main(["import", directory, str(PLAIN)]) == 0
    assert "3 unit(s) labelled from 3 answer(s)" in capsys.readouterr().out
    # Label Studio's answers for task 1 named 3 images; the package now has 2 for it.
    assert main(["import", directory, str(LABELSTUDIO)]) == 2
    err = capsys.readouterr().err
    assert "dissect import: error:" in err and "image_3" in err and "Traceback" not in err
    assert main(["export", directory, "--format", "mturk"]) == 2
    assert "--base-url" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's script")
def test_html_page_saves_answers_that_import(dissection, tmp_path):
    export_annotation(dissection, "html", ["conv2"], [0, 1], sentinels=0, progress=False)
    page = dissection.path("annotation", "html", "annotate.html").read_text()
    sections = re.findall(
        r'<section class="task" id="(u[0-9a-f]{12})" data-task="u[0-9a-f]{12}" '
        r'data-layer="conv2" data-unit="(\d)" data-shown="(\d)">',
        page,
    )
    assert [(task, int(unit)) for task, unit, _ in sections] == [(TASKS[0], 0), (TASKS[1], 1)]
    for element in ('class="concept"', 'class="mismatch"', 'type="radio"', 'id="annotator"'):
        assert element in page
    assert 'id="save"' in page and 'id="status"' in page
    script = tmp_path / "page.js"
    script.write_text(page.split("<script>")[1].split("</script>")[0])
    state = {
        "annotator": 'lab "A"',
        "tasks": [
            {
                "task": TASKS[0],
                "layer": "conv2",
                "unit": 0,
                "shown": 3,
                "label": f'{SCRIPT}, "x"',
                "type": "scene",
                "mismatches": [2],
            },
            {
                "task": TASKS[1],
                "layer": "conv2",
                "unit": 1,
                "shown": 3,
                "label": "wheel",
                "type": None,
                "mismatches": [],
            },
        ],
    }
    saved = subprocess.run(
        ["node", str(FIXTURES / "page_harness.js"), str(script), json.dumps(state)],
        capture_output=True,
        text=True,
        check=True,
        timeout=20,
    ).stdout
    answers = tmp_path / "annotations.csv"
    answers.write_text(saved)
    labels = import_answers(dissection, [answers]).set_index("unit")
    assert list(labels.index) == [0]  # unit 1 had no type: not saved
    assert labels.loc[0, "label"] == f'{SCRIPT}, "x"' and labels.loc[0, "category"] == "scene"
    assert labels.loc[0, "precision"] == pytest.approx(2 / 3)
    assert set(read_raw(dissection)["worker"]) == {'lab "A"'}


def test_package_records_its_run_and_another_runs_is_refused(dissection):
    tasks_csv = dissection.path("annotation", "private", "tasks.csv")
    tasks = pd.read_csv(tasks_csv, dtype=str)
    assert set(tasks["run_id"]) == {dissection.run_id}
    # The directory now holds another run (as if dissect run wrote it again): answers for the
    # old package would label the new run's units with judgements of other images.
    manifest = dissection.path("manifest.json")
    manifest.write_text(manifest.read_text().replace(dissection.run_id, "0123456789abcdef"))
    rerun = Dissection(dissection.directory)
    with pytest.raises(DissectError, match="tasks.csv .* comes from run .* dissect export"):
        import_answers(rerun, [MTURK])
    assert not rerun.path("labels.csv").exists()
    old_images = set(tasks.loc[tasks["unit"] != "2", "image"])
    export_annotation(rerun, "html", ["conv2"], [2], sentinels=0, progress=False)
    again = pd.read_csv(tasks_csv, dtype=str)
    assert set(again["run_id"]) == {"0123456789abcdef"} and set(again["unit"]) == {"2"}
    images = rerun.path("annotation", "images")
    assert not any((images / name).exists() for name in old_images)
