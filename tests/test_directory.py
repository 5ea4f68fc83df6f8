"""dissect.directory: names, manifest, run ids, this run's rows, stale outputs moved aside."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from dissect import directory
from dissect.images import Preprocess
from dissect.streaming import run_dissection

PREPROCESS = Preprocess(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_keep_run_rows_drops_other_runs_only():
    table = pd.DataFrame({"unit": [0, 1, 2, 3], "run_id": ["a", None, "b", ""]})
    assert directory.keep_run_rows(table, "a")["unit"].tolist() == [0, 1, 3]
    assert directory.keep_run_rows(table, "")["unit"].tolist() == [0, 1, 2, 3]
    assert directory.keep_run_rows(table.drop(columns="run_id"), "a")["unit"].tolist() == [
        0,
        1,
        2,
        3,
    ]


def test_manifest_readers(tmp_path):
    assert directory.read_manifest(tmp_path) is None and directory.current_run(tmp_path) == ""
    (tmp_path / directory.MANIFEST).write_text("{not json")
    assert directory.read_manifest(tmp_path) is None
    (tmp_path / directory.MANIFEST).write_text(json.dumps({"run_id": "abc"}))
    assert directory.current_run(tmp_path) == "abc"


def test_layer_file_names():
    assert directory.layer_file_name("conv1/Conv") == "conv1_Conv"
    assert directory.layer_file_name("features.3") == "features.3"


@pytest.mark.filterwarnings("ignore:skipped image")
def test_a_run_with_fewer_layers_moves_the_top_images_of_the_others_aside(
    tmp_path, image_folder, tiny_spec
):
    out = tmp_path / "out"
    options = {"topk": 2, "preprocess": PREPROCESS, "progress": False}
    first = run_dissection(tiny_spec, str(image_folder), out, ["conv1", "conv2"], **options)
    (out / "labels.csv").write_text("layer,unit\n")  # a later stage's output
    with pytest.warns(UserWarning, match="moved to"):
        second = run_dissection(tiny_spec, str(image_folder), out, ["conv2"], **options)
    assert sorted(path.name for path in (out / "topk").iterdir()) == ["conv2.npz"]
    stale = out / "stale" / first.run_id
    assert (stale / "topk" / "conv1.npz").is_file() and (stale / "labels.csv").is_file()
    assert second.layers == ["conv2"] and second.run_id != first.run_id
