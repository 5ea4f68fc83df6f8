"""Upsample unit activation maps to input pixels, aligned by the layer's stride and offset.

Feature position ``(i, j)`` of a layer sits at input pixel ``offset + (i, j) * stride`` (the centre
of its receptive field, see :class:`dissect.geometry.LayerGeometry`). Pixels between feature
centres are interpolated bilinearly (along x, then along y); pixels outside the outermost centres
take the border value.
Naive resizing of the map to the image stretches it over the whole image instead and misplaces
it by up to half a stride.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from .geometry import LayerGeometry


def feature_coordinates(size: int, stride: float, offset: float, length: int) -> torch.Tensor:
    """Fractional feature coordinate of each of ``size`` input pixels along one axis."""
    pixels = torch.arange(size, dtype=torch.float32)
    return ((pixels - offset) / stride).clamp(0, max(length - 1, 0))


@dataclass(frozen=True)
class AxisWeights:
    """Bilinear weights of every input pixel along one axis of a feature map.

    Pixel ``p`` takes ``rest[p] * map[low[p]] + weight[p] * map[high[p]]``; pixels are grouped
    into *cells* by ``low`` (the feature centre at or before them).

    Attributes
    ----------
    low, high : Tensor
        (size,) int64 feature indices around each pixel (``high = min(low + 1, length - 1)``).
    weight, rest : Tensor
        (size,) float32 weight of ``high`` and ``1 - weight``.
    cells : Tensor
        (length, most) int64: the pixels of each cell, padded with -1.
    """

    low: torch.Tensor
    high: torch.Tensor
    weight: torch.Tensor
    rest: torch.Tensor
    cells: torch.Tensor

    def to(self, device: torch.device | str) -> AxisWeights:
        """The same weights on ``device``."""
        return AxisWeights(*(getattr(self, f.name).to(device) for f in fields(self)))


def axis_weights(size: int, stride: float, offset: float, length: int) -> AxisWeights:
    """The :class:`AxisWeights` of ``size`` pixels over ``length`` feature centres."""
    if length > 1:
        coordinate = feature_coordinates(size, stride, offset, length)
    else:
        coordinate = torch.zeros(size)
    low = coordinate.floor().long().clamp(0, length - 1)
    high = (low + 1).clamp(max=length - 1)
    weight = coordinate - low.float()
    counts = torch.bincount(low, minlength=length)
    most = max(int(counts.max()), 1)
    column = torch.arange(most)
    first = counts.cumsum(0) - counts
    cells = torch.where(column < counts[:, None], first[:, None] + column, -1)
    return AxisWeights(low, high, weight, 1 - weight, cells)


def layer_weights(
    geometry: LayerGeometry, image_size: tuple[int, int], height: int, width: int
) -> tuple[AxisWeights, AxisWeights]:
    """:class:`AxisWeights` of the rows and columns of a layer's ``height`` x ``width`` maps, for
    an input of (height, width) ``image_size``."""
    rows, columns = image_size
    if not geometry.is_spatial or (height, width) == (1, 1):
        return axis_weights(rows, 1, 0, 1), axis_weights(columns, 1, 0, 1)
    return (
        axis_weights(rows, geometry.stride[0], geometry.offset[0], height),
        axis_weights(columns, geometry.stride[1], geometry.offset[1], width),
    )


def upsample_maps(
    maps: torch.Tensor, geometry: LayerGeometry, image_size: tuple[int, int]
) -> torch.Tensor:
    """Bilinearly upsample feature maps to the input, aligned with the layer's geometry.

    Parameters
    ----------
    maps : Tensor
        Activation maps of shape (N, U, h, w) (images, units, feature height, width).
    geometry : LayerGeometry
        Stride and offset of the layer the maps come from.
    image_size : (int, int)
        The input's (height, width), in pixels.

    Returns
    -------
    Tensor
        Float32 maps of shape (N, U, H, W), the input's size.
    """
    maps = maps.float()
    count, units, height, width = maps.shape
    if not geometry.is_spatial or (height, width) == (1, 1):
        return maps.reshape(count, units, 1, 1).expand(count, units, *image_size)
    ys, xs = (a.to(maps.device) for a in layer_weights(geometry, image_size, height, width))
    # Separably: along x within each feature row, then along y (the order the IoU tally's sparse
    # evaluation repeats, so both give the same float32 values).
    rows = maps[..., xs.low] * xs.rest + maps[..., xs.high] * xs.weight
    return rows[..., ys.low, :] * ys.rest[:, None] + rows[..., ys.high, :] * ys.weight[:, None]
