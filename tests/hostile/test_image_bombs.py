"""Images whose shape, not their pixel count, makes preprocessing expensive."""

from __future__ import annotations

import tracemalloc

import numpy as np
from PIL import Image

from dissect.images import Preprocess, read_image_file


def test_a_long_strip_costs_what_the_output_costs(tmp_path):
    """A 2000x1 PNG at 64 px used to be enlarged to 128000x64 before the crop."""
    path = tmp_path / "strip.png"
    Image.fromarray(np.arange(2000, dtype=np.uint8)[None, :].repeat(1, 0)).save(path)
    assert path.stat().st_size < 5000
    preprocess = Preprocess(64)
    rgb = read_image_file(path)
    tracemalloc.start()
    try:
        shown = preprocess.display(rgb)
        labels = preprocess.display_labels(np.zeros(rgb.shape[:2], dtype=np.int32))
        tensor = preprocess.tensor(rgb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert shown.shape == (64, 64, 3) and labels.shape == (64, 64)
    assert tuple(tensor.shape) == (3, 64, 64)
    assert peak < 20 * 64 * 64 * 4 * 3  # a few copies of the output, not 128000x64 pixels
    # the middle of the strip is what the crop keeps: the grey ramp around column 1000
    assert abs(int(shown[0, 32, 0]) - 1000 % 256) <= 2


def test_ordinary_images_are_resized_as_before():
    """Images of ordinary aspect keep the plain resize-then-crop, pixel for pixel."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    preprocess = Preprocess(32)
    resized = np.asarray(Image.fromarray(rgb).resize((53, 32), Image.Resampling.BILINEAR))
    assert np.array_equal(preprocess.display(rgb), resized[:, 10:42])


def test_float_tiff_is_not_read_as_black(tmp_path):
    """A mode-F TIFF (floats in [0, 1]) used to become all zeros."""
    ramp = np.linspace(0.0, 1.0, 64, dtype=np.float32)[None, :].repeat(8, 0)
    Image.fromarray(ramp, "F").save(tmp_path / "ramp.tif")
    rgb = read_image_file(tmp_path / "ramp.tif")
    assert rgb.shape == (8, 64, 3)
    assert rgb[0, 0, 0] == 0 and rgb[0, -1, 0] == 255 and 120 <= rgb[0, 32, 0] <= 135
    scaled = ramp * 1000.0  # floats beyond 1 go up to their maximum
    Image.fromarray(scaled, "F").save(tmp_path / "scaled.tif")
    assert read_image_file(tmp_path / "scaled.tif")[0, -1, 0] == 255
