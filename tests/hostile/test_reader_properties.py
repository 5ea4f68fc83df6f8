"""Property tests: any text given to a reader of untrusted files: a result or one DissectError.

Crowd answer files (plain CSV, the offline page's CSV, MTurk batch results, Label Studio JSON)
and Broden's ``index.csv`` / ``label.csv`` are built by hypothesis around valid examples
(columns, task ids and image names of a real package, so that the readers get past their first
checks) and must never raise anything but :class:`dissect.errors.DissectError`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dissect.annotation import export_annotation
from dissect.annotation.importers import read_answers
from dissect.datasets.broden import BrodenDataset, encode_label_png
from dissect.dissection import Dissection
from dissect.errors import DissectError
from dissect.images import ImageReadError, Preprocess
from dissect.streaming import run_dissection

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
TYPES = ["colour", "texture", "region", "part", "object", "scene", "", "Object Part", "?"]


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    """A tiny dissection with an MTurk package; its task ids and image names."""
    from conftest import TINY_SPEC, make_image_folder

    root = tmp_path_factory.mktemp("properties")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dissection = run_dissection(
            TINY_SPEC, str(make_image_folder(root / "images")), root / "out", ["conv2"],
            topk=2, preprocess=Preprocess(32), progress=False,
        )  # fmt: skip
        tasks = export_annotation(
            dissection, "mturk", ["conv2"], [0, 1], base_url="https://x.example/", progress=False
        )
    return Dissection(dissection.directory), sorted(set(tasks["task"]))


def _read(dissection, text: str, suffix: str, fmt: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"answers{suffix}"
        path.write_text(text, encoding="utf-8")
        try:
            read_answers(dissection, [path], fmt)
        except DissectError as error:
            assert "\n" not in str(error).strip()


_CELL = st.one_of(st.text(max_size=12), st.sampled_from(["conv2", "0", "1", "-1", "1e9", "nan"]))


@SETTINGS
@given(data=st.data())
def test_plain_and_page_csv(packaged, data):
    dissection, tasks = packaged
    columns = data.draw(
        st.lists(
            st.sampled_from(["task", "layer", "unit", "label", "category", "precision",
                             "mismatch", "annotator", "x"]),
            min_size=1, max_size=8, unique=True,
        )
    )  # fmt: skip
    rows = data.draw(
        st.lists(
            st.fixed_dictionaries(
                {c: st.one_of(_CELL, st.sampled_from([*tasks, *TYPES, "1 2"])) for c in columns}
            ),
            max_size=4,
        )
    )
    text = pd.DataFrame(rows, columns=columns).to_csv(index=False)
    if data.draw(st.booleans()):
        text = text[: data.draw(st.integers(0, len(text)))]  # truncated anywhere
    _read(dissection, text, ".csv", "csv")


@SETTINGS
@given(data=st.data())
def test_mturk_results(packaged, data):
    dissection, tasks = packaged
    kinds = ["color", "texture", "region", "part", "object", "scene"]
    header = ["AssignmentId", "WorkerId", "AssignmentStatus", "Input.task", "Answer.concept"]
    header += [f"Answer.mismatch-{n}.on" for n in (1, 2, 3)]
    header += [f"Answer.type-{kind}.{kind}" for kind in kinds]
    cell = st.one_of(_CELL, st.sampled_from([*tasks, "true", "false", "Approved", "Rejected"]))
    row = st.lists(cell, min_size=len(header), max_size=len(header))
    rows = data.draw(st.lists(row, max_size=4))
    if data.draw(st.booleans()):
        header = data.draw(st.permutations(header))[: data.draw(st.integers(1, len(header)))]
        rows = [row[: len(header)] for row in rows]
    text = pd.DataFrame(rows, columns=header).to_csv(index=False)
    _read(dissection, text, ".csv", "mturk")


_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 9), st.text(max_size=8)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


@SETTINGS
@given(data=st.data())
def test_label_studio_json(packaged, data):
    dissection, tasks = packaged
    result = st.fixed_dictionaries(
        {
            "from_name": st.sampled_from(["concept", "category", "mismatch", "x"]),
            "value": st.one_of(
                _JSON,
                st.fixed_dictionaries({"text": st.lists(st.text(max_size=6), max_size=2)}),
                st.fixed_dictionaries({"choices": st.lists(st.sampled_from(TYPES), max_size=2)}),
            ),
        }
    )
    annotation = st.one_of(
        _JSON,
        st.fixed_dictionaries(
            {"id": _JSON, "result": st.one_of(_JSON, st.lists(result, max_size=3)),
             "was_cancelled": st.booleans(), "completed_by": _JSON}
        ),
    )  # fmt: skip
    task = st.fixed_dictionaries(
        {
            "data": st.one_of(
                _JSON,
                st.fixed_dictionaries(
                    {"task": st.sampled_from([*tasks, "u0"]), "image_1": st.text(max_size=5)}
                ),
            ),
            "annotations": st.one_of(_JSON, st.lists(annotation, max_size=2)),
        }
    )
    items = data.draw(st.one_of(_JSON, st.lists(st.one_of(task, _JSON), max_size=3)))
    text = json.dumps(items)
    if data.draw(st.booleans()):
        text = text[: data.draw(st.integers(0, len(text)))]
    _read(dissection, text, ".json", "labelstudio")


@SETTINGS
@given(data=st.data())
def test_broden_index_and_label_csv(tmp_path, data):
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    (root / "images").mkdir()
    Image.new("RGB", (4, 2)).save(root / "images" / "a.jpg")
    Image.fromarray(encode_label_png(np.array([[1, 300]]))).save(root / "images" / "a_o.png")
    cell = st.one_of(
        st.text(max_size=10),
        st.sampled_from(["a.jpg", "a_o.png", "1", "300", "2;5", "../a.jpg", "/etc/passwd"]),
    )
    index_columns = ["image", "split", "ih", "iw", "sh", "sw", "object", "scene", "texture"]
    index = data.draw(st.lists(st.lists(cell, min_size=9, max_size=9), min_size=1, max_size=3))
    labels = data.draw(
        st.lists(
            st.tuples(
                st.one_of(st.sampled_from(["0", "1", "300", "5"]), st.text(max_size=4)),
                st.text(max_size=6),
                st.sampled_from(["object(1)", "part(2);object(1)", "scene(1)", "-", "", "x("]),
            ),
            max_size=4,
        )
    )
    pd.DataFrame(index, columns=index_columns).to_csv(root / "index.csv", index=False)
    pd.DataFrame(labels, columns=["number", "name", "category"]).to_csv(
        root / "label.csv", index=False
    )
    for name in ("index.csv", "label.csv"):
        if data.draw(st.booleans()):
            text = (root / name).read_text()
            (root / name).write_text(text[: data.draw(st.integers(0, len(text)))])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            broden = BrodenDataset(root)
            for index in range(len(broden)):
                try:
                    broden.segmentation(index)
                    broden.read_rgb(index)
                except ImageReadError:
                    pass  # skipped and listed, as an unreadable image is
    except DissectError as error:
        assert "\n" not in str(error).strip()
    finally:
        shutil.rmtree(root)
