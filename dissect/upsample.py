"""Upsample unit activation maps to input pixels, aligned by the layer's stride and offset.

Feature position ``(i, j)`` of a layer sits at input pixel ``offset + (i, j) * stride`` (the centre
of its receptive field, see :class:`dissect.geometry.LayerGeometry`). Pixels between feature
centres are interpolated bilinearly; pixels outside the outermost centres take the border value.
Naive resizing of the map to the image stretches it over the whole image instead and misplaces
it by up to half a stride.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .geometry import LayerGeometry


def feature_coordinates(size: int, stride: float, offset: float, length: int) -> torch.Tensor:
    """Fractional feature coordinate of each of ``size`` input pixels along one axis."""
    pixels = torch.arange(size, dtype=torch.float32)
    return ((pixels - offset) / stride).clamp(0, max(length - 1, 0))


def upsample_maps(maps: torch.Tensor, geometry: LayerGeometry, image_size: int) -> torch.Tensor:
    """Bilinearly upsample feature maps to the input, aligned with the layer's geometry.

    Parameters
    ----------
    maps : Tensor
        Activation maps of shape (N, U, h, w) (images, units, feature height, width).
    geometry : LayerGeometry
        Stride and offset of the layer the maps come from.
    image_size : int
        Side of the square input, in pixels.

    Returns
    -------
    Tensor
        Float32 maps of shape (N, U, image_size, image_size).
    """
    maps = maps.float()
    count, units, height, width = maps.shape
    if not geometry.is_spatial or (height, width) == (1, 1):
        return maps.reshape(count, units, 1, 1).expand(count, units, image_size, image_size)
    ys = feature_coordinates(image_size, geometry.stride[0], geometry.offset[0], height)
    xs = feature_coordinates(image_size, geometry.stride[1], geometry.offset[1], width)
    # grid_sample with align_corners=True maps -1..1 onto the first..last feature centre.
    grid_y = ys / max(height - 1, 1) * 2 - 1
    grid_x = xs / max(width - 1, 1) * 2 - 1
    grid = torch.stack(torch.meshgrid(grid_y, grid_x, indexing="ij")[::-1], dim=-1)
    grid = grid.unsqueeze(0).expand(count, -1, -1, -1).to(maps.device)
    return F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=True)
