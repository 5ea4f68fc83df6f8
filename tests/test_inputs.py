"""Untrusted inputs: EXIF orientation, decompression bombs, corrupt label maps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_SPEC
from PIL import Image

from dissect.cli import main
from dissect.datasets.broden import BrodenDataset, export_broden
from dissect.datasets.synthetic import SyntheticWorld
from dissect.images import ImageReadError, read_image_file


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((10, 20, 3), dtype=np.uint8)
    pixels[:, :10] = (255, 0, 0)  # left half red, right half blue, as stored
    pixels[:, 10:] = (0, 0, 255)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "photo.jpg"
    image.save(path, quality=95, exif=exif)
    rgb = read_image_file(path)
    assert rgb.shape == (20, 10, 3)  # upright: portrait
    assert rgb[2, 5, 0] > 200 and rgb[2, 5, 2] < 60  # the stored left (red) is now on top
    assert rgb[17, 5, 2] > 200 and rgb[17, 5, 0] < 60


def test_decompression_bombs_are_skipped_and_listed(tmp_path, monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (40, 40), (9, 9, 9)).save(folder / "bomb.png")  # 1600 pixels
    Image.new("RGB", (16, 16), (200, 9, 9)).save(folder / "fine.png")  # 256 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)
    with pytest.raises(ImageReadError, match="decompression-bomb"):
        read_image_file(folder / "bomb.png")
    Image.new("RGB", (20, 20)).save(folder / "big.png")  # 400: over the limit, under twice it
    with pytest.raises(ImageReadError, match="decompression-bomb"):
        read_image_file(folder / "big.png")
    out = tmp_path / "run"
    argv = ["run", TINY_SPEC, str(folder), "--out", str(out), "--layers", "conv1"]
    with pytest.warns(UserWarning, match="bomb.png"):
        assert main([*argv, "--image-size", "16", "--topk", "1"]) == 0
    images = pd.read_csv(out / "images.csv", keep_default_na=False)
    skipped = dict(zip(images["path"], images["skipped"], strict=True))
    assert skipped == {"big.png": True, "bomb.png": True, "fine.png": False}


@pytest.mark.filterwarnings("ignore:skipped image")
def test_a_corrupt_label_png_skips_its_image_in_autolabel(tmp_path, capsys):
    root = export_broden(SyntheticWorld(6, seed=3), tmp_path / "broden", progress=False)
    broden = BrodenDataset(root)
    cell = next(
        token
        for category in broden.categories
        for token in broden.index[category].iloc[2].split(";")
        if token.endswith(".png")
    )
    (root / "images" / cell).write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageReadError, match="label image"):
        broden.segmentation(2)
    out = tmp_path / "run"
    argv = ["run", TINY_SPEC, str(root), "--out", str(out), "--layers", "conv2"]
    assert main([*argv, "--image-size", "32", "--topk", "2"]) == 0
    with pytest.warns(UserWarning, match="label image"):
        assert main(["autolabel", str(out), "--batch-size", "3", "--permutations", "2"]) == 0
    skipped = pd.read_csv(out / "iou" / "skipped.csv")
    assert skipped["index"].tolist() == [2]
    assert skipped["path"].tolist() == [broden.image_id(2)]
    assert "label image" in skipped["reason"].iloc[0]
    data_out = tmp_path / "again"
    with pytest.warns(UserWarning, match="label image"):
        export_broden(broden, data_out, progress=False)  # the exporter skips it too
    assert len(pd.read_csv(data_out / "index.csv")) == 5


def test_nonfinite_activations_stay_out_of_the_statistics():
    import torch

    from dissect.running_stats import UnitStats

    acts = torch.arange(3 * 2 * 4, dtype=torch.float32).reshape(3, 2, 2, 2)
    acts[1, 0, 0, 0] = float("nan")  # image 1 is unit 0's best image, but not at (0, 0)
    acts[2, 1] = float("inf")  # image 2 of unit 1: nothing finite at all
    acts[0, 1, 1, 1] = float("-inf")
    stats = UnitStats(2, 2, max_values=3 * 4, quantile=0.25)
    assert stats.add(acts, torch.tensor([10, 11, 12])) == 1 + 4 + 1
    assert stats.nonfinite.tolist() == [1, 5]
    top = stats.topk()
    assert top["index"][0].tolist() == [12, 11] and top["index"][1].tolist() == [11, 10]
    assert top["score"][1].tolist() == [15.0, 6.0]
    assert (top["y"][0, 1], top["x"][0, 1]) == (1, 1)  # image 11's finite peak, not the NaN
    assert stats.max().tolist() == [19.0, 15.0]
    finite = [[0, 1, 2, 3, 9, 10, 11, 16, 17, 18, 19], [4, 5, 6, 12, 13, 14, 15]]
    np.testing.assert_allclose(stats.mean(), [np.mean(finite[0]), np.mean(finite[1])])
    # T: the value with a quarter of the finite values above it (the sketch keeps them all here).
    expected = [sorted(values, reverse=True)[int(0.25 * len(values))] for values in finite]
    assert stats.threshold().tolist() == expected == [17, 14]


def test_a_layer_with_nonfinite_values_warns_once_and_counts_them(tmp_path, recwarn):
    import torch
    from torch import nn

    from dissect.dissection import Dissection
    from dissect.images import Preprocess
    from dissect.models import LoadedModel
    from dissect.streaming import run_dissection

    class Broken(nn.Module):
        """Unit 1 of ``bad`` is NaN at one position of every image."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3, padding=1)
            self.bad = nn.Identity()

        def forward(self, x):
            y = self.conv(x)
            y = y.clone()
            y[:, 1, 0, 0] = float("nan")
            return self.bad(y)

    torch.manual_seed(0)
    loaded = LoadedModel(Broken().eval(), "in-memory", preprocess=Preprocess(8))
    out = tmp_path / "run"
    run_dissection(loaded, "synthetic:6:1", out, ["bad"], batch_size=2, topk=2, progress=False)
    messages = [str(w.message) for w in recwarn if "NaN or infinite" in str(w.message)]
    assert len(messages) == 1 and "'bad'" in messages[0]  # once for the layer, not per batch
    units = Dissection(out).units()
    assert units["nonfinite"].tolist() == [0, 6]
    assert np.isfinite(units[["max_activation", "mean_activation", "threshold"]]).all().all()
