"""The streaming pass against brute force over stored activations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dissect.datasets import ImageFolder
from dissect.dissection import Dissection, load_dissected_model, open_dissected_data
from dissect.errors import DissectError
from dissect.images import Preprocess
from dissect.labels import read_labels, write_labels
from dissect.models import load_model
from dissect.streaming import run_dissection

PREPROCESS = Preprocess(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def brute_force(spec, folder, layer):
    """Every activation of ``layer`` for every readable image, computed module by module."""
    model = load_model(spec).module
    source = ImageFolder(folder)
    acts = {}
    with torch.no_grad():
        for i in range(len(source)):
            if source.image_id(i) == "broken.jpg":
                continue
            x = PREPROCESS.tensor(source.read_rgb(i))[None]
            out = model.conv1(x)
            if layer == "conv2":
                out = model.conv2(model.pool1(torch.relu(out)))
            acts[i] = out[0].numpy()
    return acts


def expected_topk(acts, k):
    """Top-k images per unit, ties to the lower index, with first-argmax peaks."""
    indices = sorted(acts)
    units = next(iter(acts.values())).shape[0]
    result = {"index": [], "score": [], "y": [], "x": []}
    for unit in range(units):
        scores = [(float(acts[i][unit].max()), i) for i in indices]
        best = sorted(scores, key=lambda pair: (-pair[0], pair[1]))[:k]
        result["index"].append([i for _, i in best])
        result["score"].append([s for s, _ in best])
        peaks = [np.unravel_index(np.argmax(acts[i][unit]), acts[i][unit].shape) for _, i in best]
        result["y"].append([p[0] for p in peaks])
        result["x"].append([p[1] for p in peaks])
    return {key: np.array(value) for key, value in result.items()}


@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_topk_and_threshold_match_brute_force(tmp_path, image_folder, tiny_spec, batch_size):
    with pytest.warns(UserWarning, match="broken.jpg"):
        dissection = run_dissection(
            tiny_spec,
            str(image_folder),
            tmp_path / "out",
            ["conv1", "conv2"],
            topk=4,
            quantile=0.01,
            batch_size=batch_size,
            preprocess=PREPROCESS,
            progress=False,
        )
    units = dissection.units()
    for layer in ("conv1", "conv2"):
        acts = brute_force(tiny_spec, image_folder, layer)
        expected = expected_topk(acts, 4)
        got = dissection.topk(layer)
        np.testing.assert_array_equal(got["index"], expected["index"])
        np.testing.assert_allclose(got["score"], expected["score"], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(got["y"], expected["y"])
        np.testing.assert_array_equal(got["x"], expected["x"])
        rows = units[units["layer"] == layer].sort_values("unit")
        stacked = np.stack(list(acts.values()))  # (images, units, H, W)
        per_unit = stacked.transpose(1, 0, 2, 3).reshape(stacked.shape[1], -1)
        np.testing.assert_allclose(rows["max_activation"], per_unit.max(1), rtol=1e-5)
        np.testing.assert_allclose(rows["mean_activation"], per_unit.mean(1), rtol=1e-4, atol=1e-6)
        above = (per_unit > rows["threshold"].to_numpy()[:, None]).mean(1)
        np.testing.assert_allclose(above, 0.01, rtol=0.1)


def test_directory_contents(tmp_path, image_folder, tiny_spec):
    with pytest.warns(UserWarning):
        dissection = run_dissection(
            tiny_spec,
            str(image_folder),
            tmp_path / "out",
            ["conv2"],
            topk=3,
            preprocess=PREPROCESS,
            progress=False,
        )
    reopened = Dissection(tmp_path / "out")
    assert reopened.layers == ["conv2"]
    assert reopened.manifest["n_images"] == 13 and reopened.manifest["n_skipped"] == 1
    assert reopened.preprocess == PREPROCESS
    images = reopened.images()
    broken = images[images["path"] == "broken.jpg"].iloc[0]
    assert broken["skipped"] and "cannot read image" in broken["reason"]
    assert list(reopened.units().columns)[:5] == [
        "layer",
        "unit",
        "max_activation",
        "mean_activation",
        "threshold",
    ]
    assert reopened.geometry("conv2").output_shape[0] == 6
    assert type(load_dissected_model(reopened).module).__name__ == "TinyNet"
    assert len(open_dissected_data(reopened)) == 13
    assert dissection.topk("conv2")["index"].shape == (6, 3)
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_bad_layer_and_unit_names(tmp_path, image_folder, tiny_spec):
    with pytest.raises(DissectError, match="conv1"):
        run_dissection(tiny_spec, str(image_folder), tmp_path / "x", ["conv_1"], progress=False)
    assert not (tmp_path / "x" / "manifest.json").exists()
    with pytest.warns(UserWarning):
        dissection = run_dissection(
            tiny_spec,
            str(image_folder),
            tmp_path / "out",
            ["conv1"],
            topk=2,
            preprocess=PREPROCESS,
            progress=False,
        )
    with pytest.raises(DissectError, match="were not dissected"):
        dissection.topk("conv2")
    with pytest.raises(DissectError, match=r"units 0\.\.3"):
        dissection.check_units("conv1", [4])
    with pytest.raises(DissectError, match="not a dissection directory"):
        Dissection(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"topk": 0}, "--topk"), ({"quantile": 1.5}, "--quantile"), ({"batch_size": 0}, "--batch")],
)
def test_bad_parameters(tmp_path, image_folder, tiny_spec, kwargs, message):
    with pytest.raises(DissectError, match=message):
        run_dissection(tiny_spec, str(image_folder), tmp_path / "o", ["conv1"], **kwargs)


def test_numeric_layer_names_stay_text(tmp_path, image_folder):
    spec = f"{Path(__file__).parent / 'tiny_models.py'}:tiny_sequential"
    with pytest.warns(UserWarning):
        dissection = run_dissection(
            spec, str(image_folder), tmp_path / "out", ["0", "2"], topk=2,
            preprocess=PREPROCESS, progress=False,
        )  # fmt: skip
    assert list(dissection.units()["layer"].unique()) == ["0", "2"]
    assert len(dissection.thresholds("2")) == 2
    write_labels(tmp_path / "out", "crowd", pd.DataFrame({"layer": ["2"], "unit": [1]}))
    assert read_labels(tmp_path / "out")["layer"].tolist() == ["2"]
