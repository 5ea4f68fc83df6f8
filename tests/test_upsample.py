"""dissect.upsample: unit maps on input pixels, against bilinear interpolation by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dissect.geometry import LayerGeometry
from dissect.upsample import upsample_maps


def geometry(stride: tuple[float, float], offset: tuple[float, float], shape) -> LayerGeometry:
    return LayerGeometry("layer", "Conv2d", (2, *shape), (7, 7), stride, offset)


def by_hand(values: np.ndarray, stride, offset, size) -> np.ndarray:
    """Bilinear between feature centres ``offset + i * stride``; the border value outside."""
    height, width = size
    centres_y = offset[0] + stride[0] * np.arange(values.shape[0])
    centres_x = offset[1] + stride[1] * np.arange(values.shape[1])
    rows = np.stack([np.interp(np.arange(width), centres_x, row) for row in values])
    return np.stack([np.interp(np.arange(height), centres_y, col) for col in rows.T], 1)


@pytest.mark.parametrize(
    ("stride", "offset", "size"),
    [
        ((4, 4), (1.5, 1.5), (24, 24)),
        ((8, 4), (3.5, 0.0), (40, 30)),
        ((2.5, 3), (0.7, 2), (17, 23)),
    ],
)
def test_maps_are_interpolated_between_receptive_field_centres(stride, offset, size):
    shape = (4, 6)
    maps = torch.randn(3, 2, *shape, generator=torch.Generator().manual_seed(0))
    up = upsample_maps(maps, geometry(stride, offset, shape), size)
    assert up.shape == (3, 2, *size) and up.dtype == torch.float32
    for image in range(3):
        for unit in range(2):
            expected = by_hand(maps[image, unit].double().numpy(), stride, offset, size)
            np.testing.assert_allclose(up[image, unit].numpy(), expected, atol=1e-5)


def test_a_one_cell_or_flat_layer_covers_the_image():
    flat = LayerGeometry("fc", "Linear", (2,), (32, 32), (32, 32), (15.5, 15.5))
    maps = torch.tensor([[3.0, -1.0]])[:, :, None, None]
    up = upsample_maps(maps, flat, (16, 20))
    assert up.shape == (1, 2, 16, 20) and (up[0, 0] == 3).all() and (up[0, 1] == -1).all()
    one = upsample_maps(torch.full((1, 1, 1, 1), 2.0), geometry((8, 8), (3, 3), (1, 1)), (12, 12))
    assert one.shape == (1, 1, 12, 12) and (one == 2).all()
