"""``dissect explain``: the units of each layer that respond most to one image, relative to T."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_SPEC
from PIL import Image

from dissect.cli import main
from dissect.dissection import load_dissected_model, open_dissected_data
from dissect.errors import DissectError
from dissect.explain import explain_image, folder_name, write_explanation
from dissect.hooks import LayerTrace
from dissect.images import Preprocess
from dissect.labels import write_labels
from dissect.streaming import run_dissection
from dissect.upsample import upsample_maps

PREPROCESS = Preprocess(24, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


@pytest.fixture(scope="module")
def dissected(tmp_path_factory):
    out = tmp_path_factory.mktemp("explain") / "run"
    dissection = run_dissection(
        TINY_SPEC, "synthetic:8:3", out, ["conv1", "conv2"], topk=2, preprocess=PREPROCESS,
        progress=False,
    )  # fmt: skip
    labels = pd.DataFrame(
        {
            "layer": ["conv2", "conv2"],
            "unit": [0, 1],
            "label": ["<b>car</b>", "sky"],
            "category": ["object", "material"],
            "iou": [0.2, 0.01],
        }
    )
    write_labels(out, "iou", labels)
    return dissection


def _expected(dissection, image_index: int, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """(peak / T of every unit, upsampled maps) computed here, without explain."""
    loaded = load_dissected_model(dissection)
    rgb = open_dissected_data(dissection).read_rgb(image_index)
    with torch.inference_mode(), LayerTrace(loaded.module, [layer]) as trace:
        acts = trace(PREPROCESS.tensor(rgb)[None])[layer][0]
    thresholds = dissection.thresholds(layer)
    peaks = acts.flatten(1).max(1).values.numpy()
    maps = upsample_maps(acts[:, None], dissection.geometry(layer), (24, 24))[:, 0].numpy()
    return peaks / thresholds, maps


def test_units_ranked_by_peak_over_threshold(dissected):
    explanation = explain_image(dissected, 2, top=3, device="cpu")
    table = explanation.table
    assert list(dict.fromkeys(table["layer"])) == ["conv1", "conv2"]
    for layer in ("conv1", "conv2"):
        scores, maps = _expected(dissected, 2, layer)
        rows = table[table["layer"] == layer]
        alive = np.flatnonzero(dissected.thresholds(layer) > 0)
        best = alive[np.argsort(-scores[alive], kind="stable")[:3]]
        assert rows["unit"].tolist() == best.tolist()
        assert rows["rank"].tolist() == [1, 2, 3]
        assert rows["score"].to_numpy() == pytest.approx(scores[best], rel=1e-5)
        for unit, coverage in zip(rows["unit"], rows["coverage"], strict=True):
            threshold = dissected.thresholds(layer)[unit]
            mask = explanation.masks[(layer, unit)]
            assert mask.shape == (24, 24)
            np.testing.assert_array_equal(mask, maps[unit] > threshold)
            assert coverage == pytest.approx(mask.mean())
    assert explanation.image.shape == (24, 24, 3)
    assert explanation.segmented("conv1", int(table["unit"].iloc[0])).shape == (24, 24, 3)


def test_labels_and_detector_flags_come_from_labels_csv(dissected):
    table = explain_image(dissected, 0, layers=["conv2"], top=6, device="cpu").table
    by_unit = table.set_index("unit")
    assert by_unit.loc[0, "label"] == "<b>car</b>" and bool(by_unit.loc[0, "detector"])
    assert by_unit.loc[1, "label"] == "sky" and not bool(by_unit.loc[1, "detector"])
    assert by_unit.loc[0, "label_score"] == pytest.approx(0.2)


def test_units_dead_on_the_data_are_left_out(dissected, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(dissected.directory, copy)
    units = pd.read_csv(copy / "units.csv", dtype={"layer": str})
    first = explain_image(copy, 1, layers=["conv1"], top=1, device="cpu").table
    best = int(first["unit"].iloc[0])
    units.loc[(units["layer"] == "conv1") & (units["unit"] == best), "threshold"] = 0.0
    units.to_csv(copy / "units.csv", index=False)
    table = explain_image(copy, 1, layers=["conv1"], top=4, device="cpu").table
    assert best not in table["unit"].tolist() and len(table) == 3


def test_an_image_file_equals_its_index(dissected, tmp_path):
    rgb = open_dissected_data(dissected).read_rgb(5)
    path = tmp_path / "five.png"
    Image.fromarray(rgb).save(path)
    by_index = explain_image(dissected, "5", device="cpu").table
    by_file = explain_image(dissected, path, device="cpu").table
    pd.testing.assert_frame_equal(by_index, by_file)


def test_bad_images_are_clear_errors(dissected, tmp_path):
    with pytest.raises(DissectError, match="0..7"):
        explain_image(dissected, 8)
    with pytest.raises(DissectError, match="no image file"):
        explain_image(dissected, tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DissectError, match="readable image"):
        explain_image(dissected, tmp_path / "bad.png")
    with pytest.raises(DissectError, match="--top"):
        explain_image(dissected, 0, top=0)


def test_folder_names_stay_inside():
    assert folder_name(7) == "image0007"
    assert folder_name("../../etc/passwd") == "passwd"
    assert folder_name("/x/<a b>.png") == "a_b"


def test_cli_writes_figure_page_and_table(dissected, tmp_path, capsys):
    command = ["explain", str(dissected.directory), "3", "--layers", "conv2", "--top", "6"]
    assert main([*command, "--device", "cpu"]) == 0
    out = dissected.directory / "explain" / "image0003"
    assert "->" in capsys.readouterr().out
    for name in ("explain.csv", "explain.png", "image.png", "index.html"):
        assert (out / name).is_file(), name
    assert len(list((out / "units").glob("*.png"))) == 6
    text = (out / "index.html").read_text(encoding="utf-8")
    assert "<b>car</b>" not in text and "&lt;b&gt;car&lt;/b&gt;" in text
    assert len(pd.read_csv(out / "explain.csv")) == 6
    explanation, index = write_explanation(dissected, 3, tmp_path / "mine", top=1, device="cpu")
    assert index == tmp_path / "mine" / "index.html" and len(explanation.table) == 2
