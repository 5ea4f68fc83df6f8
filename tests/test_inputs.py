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
