"""Crowd quality: votes, sentinel images, agreement, and no label shown to annotators."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dissect.annotation import aggregate_answers, export_annotation, import_answers, read_raw
from dissect.annotation.aggregate import RAW_COLUMNS, answer_weights, dedupe_answers
from dissect.annotation.agreement import fleiss_kappa, layer_agreement
from dissect.cli import main
from dissect.dissection import Dissection
from dissect.errors import DissectError
from dissect.images import Preprocess
from dissect.labels import read_labels, write_labels
from dissect.report import write_report
from dissect.segment import iter_segments
from dissect.segment.pictures import dim_outside
from dissect.semantics import write_statistics
from dissect.streaming import run_dissection

BASE_URL = "https://example.org/units"
HARNESS = Path(__file__).parent / "fixtures" / "annotation" / "page_harness.js"
SCRIPT = "<script>alert(1)</script>"


def raw_answers(rows, columns=("layer", "unit", "label", "category", "precision")):
    frame = pd.DataFrame(rows, columns=list(columns))
    for column in RAW_COLUMNS:
        if column not in frame:
            frame[column] = np.nan if column in ("n_sentinels", "sentinels_kept") else ""
    return frame[RAW_COLUMNS]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """The tiny net dissected (conv2: 6 units, top 4 of 12 images), nothing exported."""
    from conftest import TINY_SPEC, make_image_folder

    root = tmp_path_factory.mktemp("crowd")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_dissection(
            TINY_SPEC,
            str(make_image_folder(root / "images")),
            root / "out",
            ["conv1", "conv2"],
            topk=4,
            preprocess=Preprocess(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
            progress=False,
        )


@pytest.fixture
def dissection(template, tmp_path):
    return Dissection(shutil.copytree(template.directory, tmp_path / "copy"))


def tasks_of(dissection) -> pd.DataFrame:
    return pd.read_csv(dissection.path("annotation", "private", "tasks.csv"), dtype={"task": str})


# --- votes ------------------------------------------------------------------------------------


def test_type_and_precision_come_from_the_winning_labels_answers():
    raw = raw_answers(
        [
            ("a", 0, "dog", "object", 0.9),
            ("a", 0, "dog", "object", 0.9),
            ("a", 0, "park", "scene", 0.1),
            ("a", 0, "street", "scene", 0.1),
            ("a", 0, "beach", "scene", 0.2),
        ]
    )
    label = aggregate_answers(raw).iloc[0]
    assert (label["label"], label["category"]) == ("dog", "object")
    assert label["precision"] == pytest.approx(0.9)
    assert label["n_annotators"] == 5 and label["agreement"] == pytest.approx(0.4)


def test_identical_anonymous_answers_are_separate_votes(dissection, tmp_path):
    answers = tmp_path / "answers.csv"
    answers.write_text(
        "layer,unit,label,category\nconv2,0,sky,region\nconv2,0,sky,region\nconv2,0,grass,texture\n"
    )
    label = import_answers(dissection, [answers]).iloc[0]
    assert label["label"] == "sky" and label["n_annotators"] == 3
    # The same file again adds nothing; another file's identical answer is one more vote.
    import_answers(dissection, [answers])
    other = tmp_path / "other.csv"
    other.write_text("layer,unit,label,category\n\nconv2,0,grass,texture\n")
    label = import_answers(dissection, [answers, other]).iloc[0]
    assert label["n_annotators"] == 4 and label["agreement"] == pytest.approx(0.5)


def test_only_true_duplicates_are_merged():
    columns = ("layer", "unit", "label", "category", "worker", "assignment", "format")
    raw = raw_answers(
        [
            ("a", 0, "sky", "region", "", "A1", "mturk"),
            ("a", 0, "sky", "region", "", "A1", "mturk"),  # the same assignment again
            ("a", 0, "sky", "region", "", "A1", "labelstudio"),  # another service's id
            ("a", 0, "sky", "region", "", "", "csv"),
            ("a", 0, "sky", "region", "", "", "csv"),
            ("a", 0, "tree", "object", "ann", "", "csv"),
            ("a", 0, "bush", "object", "ann", "", "csv"),  # ann revised her answer
            ("a", 1, "bush", "object", "ann", "", "csv"),  # ... and answered another unit
        ],
        columns,
    )
    kept = dedupe_answers(raw)
    assert list(kept["format"]) == ["mturk", "labelstudio", "csv", "csv", "csv", "csv"]
    assert list(kept["label"][kept["worker"] == "ann"]) == ["bush", "bush"]


# --- no label shown ---------------------------------------------------------------------------


def test_no_existing_label_is_shown_in_any_export(dissection, tmp_path):
    iou = pd.DataFrame({"layer": "conv2", "unit": [0, 1], "label": ["window pane", "tree"]})
    write_labels(dissection.directory, "iou", iou.assign(iou=0.2))
    answers = tmp_path / "answers.csv"
    answers.write_text(f'layer,unit,label,category\nconv2,2,"{SCRIPT}",object\n')
    import_answers(dissection, [answers])
    for fmt in ("html", "mturk", "labelstudio"):
        export_annotation(
            dissection, fmt, ["conv2"], [0, 1, 2], top=2, base_url=BASE_URL, progress=False
        )
    public = [
        path
        for path in dissection.path("annotation").rglob("*")
        if path.is_file() and "private" not in path.parts and path.suffix != ".png"
    ]
    assert {path.parent.name for path in public} == {"html", "mturk", "labelstudio", "annotation"}
    for path in public:
        text = path.read_text()
        for hidden in ("window pane", "tree", "alert(1)", "imported label"):
            assert hidden not in text, (path, hidden)


# --- sentinels --------------------------------------------------------------------------------


def test_export_mixes_sentinels_from_other_units_into_every_format(dissection):
    for fmt in ("mturk", "labelstudio", "html"):
        tasks = export_annotation(
            dissection,
            fmt,
            ["conv2"],
            [0, 1, 2],
            top=3,
            sentinels=2,
            base_url=BASE_URL,
            progress=False,
        )
    tasks = tasks_of(dissection)
    assert len(tasks) == 3 * (3 + 2)
    topk = dissection.topk("conv2")["index"]
    for unit, rows in tasks.groupby("unit"):
        rows = rows.sort_values("n")
        assert list(rows["n"]) == [1, 2, 3, 4, 5]
        own, sentinels = rows[rows["sentinel"] == 0], rows[rows["sentinel"] == 1]
        assert list(own["image_index"]) == list(topk[unit, :3])  # rank order kept
        assert len(sentinels) == 2 and (sentinels["source_unit"] != unit).all()
        assert not set(sentinels["image_index"]) & set(topk[unit])  # none of its top 4
        for source, image in zip(sentinels["source_unit"], sentinels["image_index"], strict=True):
            assert image in topk[source, :3]
    # A sentinel file is its source unit's segmented picture, named like any other image.
    row = tasks[tasks["sentinel"] == 1].iloc[0]
    (segments,) = iter_segments(dissection, "conv2", [int(row["source_unit"])], 3, progress=False)
    rank = list(segments.indices).index(row["image_index"])
    saved = np.asarray(Image.open(dissection.path("annotation", "images", row["image"])))
    np.testing.assert_array_equal(saved, dim_outside(segments.images[rank], segments.masks[rank]))
    assert all(re.fullmatch(r"u[0-9a-f]{12}_[1-5]\.png", name) for name in tasks["image"])
    # Every format asks about all five pictures and says nothing of sentinels.
    folder = dissection.path("annotation")
    batch = pd.read_csv(folder / "mturk" / "batch_input.csv")
    assert [c for c in batch.columns if c.startswith("image_")] == [
        f"image_{n}" for n in range(1, 6)
    ]
    assert len(json.loads((folder / "labelstudio" / "tasks.json").read_text())[0]["data"]) == 6
    page = (folder / "html" / "annotate.html").read_text()
    assert page.count('<img src="../images/') == 15
    for path in [*folder.glob("mturk/*"), *folder.glob("labelstudio/*"), *folder.glob("html/*")]:
        assert "sentinel" not in path.read_text().lower()


def test_sentinel_draw_is_seeded(dissection):
    def draw(seed):
        export_annotation(dissection, "html", ["conv2"], top=3, seed=seed, progress=False)
        tasks = tasks_of(dissection)
        return tasks[["task", "n", "image_index", "sentinel"]]

    first = draw(0)
    pd.testing.assert_frame_equal(draw(0), first)
    assert any(not draw(seed).equals(first) for seed in (1, 2, 3))
    # Default: one sentinel per 12 own images, at least one.
    assert first.groupby("task")["sentinel"].sum().tolist() == [1] * 6


def test_sentinels_need_other_units(dissection):
    with pytest.raises(DissectError, match=r"sentinels.*--sentinels"):
        export_annotation(dissection, "html", ["conv2"], [0], top=3, sentinels=40, progress=False)
    with pytest.raises(DissectError, match="--sentinels must be 0 or more"):
        export_annotation(dissection, "html", ["conv2"], [0], sentinels=-1, progress=False)


def mturk_results(dissection, path: Path, answers: list[tuple]) -> Path:
    """A batch results file: (worker, unit, concept, type, ticked image numbers) per answer."""
    batch = pd.read_csv(dissection.path("annotation", "mturk", "batch_input.csv"))
    tasks = tasks_of(dissection)
    images = [c for c in batch.columns if c.startswith("image_")]
    header = ["AssignmentId", "WorkerId", "AssignmentStatus", "Input.task"]
    header += [f"Input.{c}" for c in images] + ["Answer.concept"]
    header += [f"Answer.mismatch-{n}.on" for n in range(1, len(images) + 1)]
    header += ["Answer.type-object.object", "Answer.type-scene.scene"]
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        for number, (worker, unit, concept, kind, ticked) in enumerate(answers):
            task = tasks.loc[tasks["unit"] == unit, "task"].iloc[0]
            row = batch[batch["task"] == task].iloc[0]
            marks = [str(n in ticked).lower() for n in range(1, len(images) + 1)]
            kinds = [str(kind == "object").lower(), str(kind == "scene").lower()]
            writer.writerow(
                [f"A{number}", worker, "Approved", task, *row[images], concept, *marks, *kinds]
            )
    return path


def places(dissection, unit: int) -> tuple[list[int], list[int]]:
    """(own image numbers, sentinel numbers) of a unit's task."""
    rows = tasks_of(dissection)
    rows = rows[rows["unit"] == unit]
    return list(rows.loc[rows["sentinel"] == 0, "n"]), list(rows.loc[rows["sentinel"] == 1, "n"])


def test_sentinels_score_answers_and_flag_annotators(dissection, tmp_path, capsys):
    export_annotation(
        dissection,
        "mturk",
        ["conv2"],
        [0, 1],
        top=3,
        sentinels=2,
        base_url=BASE_URL,
        progress=False,
    )
    own0, sentinels0 = places(dissection, 0)
    own1, sentinels1 = places(dissection, 1)
    results = mturk_results(
        dissection,
        tmp_path / "results.csv",
        [
            # good marks both sentinels and one of unit 0's own images.
            ("good", 0, "car", "object", {*sentinels0, own0[0]}),
            # careless keeps a sentinel of unit 0, catches both of unit 1.
            ("careless", 0, "house", "scene", {sentinels0[0]}),
            ("careless", 1, "tree", "object", set(sentinels1)),
            ("good", 1, "bush", "object", set(sentinels1)),
        ],
    )
    labels = import_answers(dissection, [results]).set_index("unit")
    # Precision over the unit's own 3 images only; careless's answer about unit 0 is dropped.
    assert labels.loc[0, "label"] == "car" and labels.loc[0, "precision"] == pytest.approx(2 / 3)
    assert labels.loc[0, "n_annotators"] == 1 and labels.loc[0, "agreement"] == 1
    # careless caught 3 of 4 sentinels: the tree answer weighs 0.75 against bush's 1.
    assert labels.loc[1, "label"] == "bush"
    assert labels.loc[1, "agreement"] == pytest.approx(1 / 1.75)
    raw = read_raw(dissection).set_index(["worker", "unit"])
    assert raw.loc[("good", 0), "n_shown"] == 3 and raw.loc[("good", 0), "n_mismatch"] == 1
    assert raw.loc[("careless", 0), "sentinels_kept"] == 1
    annotators = pd.read_csv(dissection.path("annotators.csv")).set_index("worker")
    assert annotators.loc["careless", "flagged"] and not annotators.loc["good", "flagged"]
    assert annotators.loc["careless", "catch_rate"] == pytest.approx(0.75)
    assert annotators.loc["careless", "n_dropped"] == 1
    # A revised answer (same worker, same unit) replaces the flagged one.
    revised = mturk_results(
        dissection, tmp_path / "revised.csv", [("careless", 0, "car", "object", set(sentinels0))]
    )
    revised.write_text(revised.read_text().replace("A0,", "R0,"))
    assert main(["import", str(dissection.directory), str(revised)]) == 0
    labels = read_labels(dissection.directory).set_index("unit")
    assert labels.loc[0, "n_annotators"] == 2
    assert "kept a sentinel" not in capsys.readouterr().out


def test_cli_reports_answers_that_kept_a_sentinel(dissection, tmp_path, capsys):
    export_annotation(
        dissection, "mturk", ["conv2"], [0], top=3, sentinels=1, base_url=BASE_URL, progress=False
    )
    results = mturk_results(dissection, tmp_path / "r.csv", [("w", 0, "car", "object", set())])
    assert main(["import", str(dissection.directory), str(results)]) == 0
    out = capsys.readouterr().out
    assert "0 unit(s) labelled" in out and "1 answer(s) kept a sentinel" in out


def test_labelstudio_answers_are_scored_against_sentinels(dissection, tmp_path):
    export_annotation(
        dissection,
        "labelstudio",
        ["conv2"],
        [3],
        top=3,
        sentinels=1,
        base_url=BASE_URL,
        progress=False,
    )
    own, (sentinel,) = places(dissection, 3)
    (task,) = json.loads(dissection.path("annotation", "labelstudio", "tasks.json").read_text())

    def annotation(number, ticked):
        return {
            "id": number,
            "completed_by": number,
            "result": [
                {"from_name": "concept", "value": {"text": ["wheel"]}},
                {"from_name": "mismatch", "value": {"choices": [str(n) for n in ticked]}},
                {"from_name": "category", "value": {"choices": ["part"]}},
            ],
        }

    task["annotations"] = [annotation(1, [sentinel, own[2]]), annotation(2, [own[0]])]
    export = tmp_path / "export.json"
    export.write_text(json.dumps([task]))
    label = import_answers(dissection, [export]).iloc[0]
    assert label["n_annotators"] == 1 and label["precision"] == pytest.approx(2 / 3)


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's script")
def test_offline_page_answers_are_scored_against_sentinels(dissection, tmp_path):
    export_annotation(dissection, "html", ["conv2"], [4], top=3, sentinels=1, progress=False)
    page = dissection.path("annotation", "html", "annotate.html").read_text()
    (task,) = re.findall(r'data-task="(u[0-9a-f]{12})"', page)
    own, (sentinel,) = places(dissection, 4)
    script = tmp_path / "page.js"
    script.write_text(page.split("<script>")[1].split("</script>")[0])
    state = {
        "annotator": "lab",
        "tasks": [
            {
                "task": task,
                "layer": "conv2",
                "unit": 4,
                "shown": 4,
                "label": "door",
                "type": "part",
                "mismatches": [own[1], sentinel],
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
    label = import_answers(dissection, [answers]).iloc[0]
    assert label["precision"] == pytest.approx(2 / 3)
    raw = read_raw(dissection).iloc[0]
    assert (raw["n_sentinels"], raw["sentinels_kept"], raw["worker"]) == (1, 0, "lab")
    tampered = tmp_path / "tampered.csv"
    tampered.write_text(saved.replace(",4,", ",5,"))
    with pytest.raises(DissectError, match=r"line 2: task .* is conv2 unit 4"):
        import_answers(dissection, [tampered])


# --- agreement --------------------------------------------------------------------------------


def test_fleiss_kappa_of_the_textbook_example():
    # Fleiss (1971) as worked in the Wikipedia article: 10 subjects, 14 raters, 5 categories.
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    assert fleiss_kappa(table) == pytest.approx(0.2099, abs=5e-5)
    assert fleiss_kappa([[3, 0], [0, 3]]) == pytest.approx(1.0)
    assert fleiss_kappa([[1, 1], [1, 1]]) == pytest.approx(-1.0)
    assert np.isnan(fleiss_kappa([[2, 0], [3, 0]]))  # one category only: undefined
    assert np.isnan(fleiss_kappa([[1, 0]]))


def test_layer_agreement_by_hand():
    raw = raw_answers(
        [
            ("a", 0, "sky", "region", 1.0),
            ("a", 0, "Skies", "region", 1.0),
            ("a", 1, "car", "object", 1.0),
            ("a", 1, "wheel", "part", 1.0),
            ("a", 2, "lone", "scene", 1.0),  # one answer: not counted
            ("b", 0, "red", "color", 1.0),
            ("b", 0, "red", "color", 1.0),
        ]
    )
    raw.loc[3, ["n_sentinels", "sentinels_kept"]] = [1, 1]  # kept a sentinel: left out
    assert list(answer_weights(raw)) == [1, 1, 1, 0, 1, 1, 1]
    table = layer_agreement(raw).set_index("layer")
    assert table.loc["a", "n_units"] == 1 and table.loc["a", "n_answers"] == 2
    assert np.isnan(table.loc["a", "kappa_label"])  # sky only: undefined
    raw.loc[3, ["n_sentinels", "sentinels_kept"]] = [1, 0]
    table = layer_agreement(raw).set_index("layer")
    assert table.loc["a", "n_units"] == 2
    # labels: unit 0 agrees (sky, sky), unit 1 does not (car, wheel): shares 1/2, 1/4, 1/4.
    assert table.loc["a", "kappa_label"] == pytest.approx((0.5 - 0.375) / 0.625)
    assert table.loc["a", "kappa_type"] == pytest.approx((0.5 - 0.375) / 0.625)


def test_stats_and_report_show_agreement(dissection, tmp_path, capsys):
    answers = tmp_path / "answers.csv"
    answers.write_text(
        "layer,unit,label,category,precision\n"
        + "".join(f"conv2,{unit},{label},object,1\n" for unit in (0, 1) for label in ("a", "a"))
        + "conv2,2,car,object,1\nconv2,2,house,scene,1\nconv1,0,red,color,1\n"
    )
    import_answers(dissection, [answers])
    assert main(["stats", str(dissection.directory)]) == 0
    assert "Fleiss' kappa" in capsys.readouterr().out
    table = pd.read_csv(dissection.path("layer_agreement.csv")).set_index("layer")
    assert list(table.index) == ["conv1", "conv2"]
    assert table.loc["conv2", "n_units"] == 3 and table.loc["conv2", "n_answers"] == 6
    # labels a, a | a, a | car, house: P = 2/3; shares 4/6, 1/6, 1/6.
    chance = (4 / 6) ** 2 + 2 * (1 / 6) ** 2
    assert table.loc["conv2", "kappa_label"] == pytest.approx((2 / 3 - chance) / (1 - chance))
    page = write_report(dissection, progress=False).read_text()
    section = page.split("<h2>Agreement between annotators</h2>")[1].split("<h2>")[0]
    assert "conv2" in section and f"{table.loc['conv2', 'kappa_label']:.3g}" in section
    # No answers left: the table goes with them.
    dissection.path("annotations_raw.csv").unlink()
    write_statistics(dissection.directory)
    assert not dissection.path("layer_agreement.csv").exists()
