"""Pictures of a region on an image: dimmed outside, outlined, cropped, and grids of them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from ..errors import DissectError
from ..io import atomic_path

#: Pictures made for every top image, in the order files are written.


def dim_outside(image: np.ndarray, mask: np.ndarray, dim: float = 0.25) -> np.ndarray:
    """The image with pixels outside ``mask`` darkened to ``dim`` of their brightness.

    Parameters
    ----------
    image : ndarray
        (H, W, 3) uint8.
    mask : ndarray
        (H, W) bool: the region kept as it is.
    dim : float
        Brightness factor in [0, 1] for the rest (0 is black).

    Returns
    -------
    ndarray
        (H, W, 3) uint8.
    """
    factor = np.where(mask[..., None], 1.0, float(dim))
    return np.round(image.astype(np.float32) * factor).astype(np.uint8)


def boundary(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The pixels of ``mask`` within ``width`` pixels of its edge (the image border counts)."""
    if not mask.any():
        return np.zeros_like(mask, dtype=bool)
    inner = ndimage.binary_erosion(mask, iterations=width, border_value=0)
    return mask & ~inner


def outline(
    image: np.ndarray,
    mask: np.ndarray,
    color: tuple[int, int, int] = (255, 255, 0),
    width: int = 1,
) -> np.ndarray:
    """The image with the edge of ``mask`` drawn in ``color``.

    Parameters
    ----------
    image : ndarray
        (H, W, 3) uint8.
    mask : ndarray
        (H, W) bool.
    color : tuple of int
        RGB of the outline.
    width : int
        Line width in pixels, drawn inside the region.

    Returns
    -------
    ndarray
        (H, W, 3) uint8; the image itself where the mask is empty.
    """
    result = image.copy()
    result[boundary(mask, width)] = np.asarray(color, dtype=np.uint8)
    return result


def crop_box(mask: np.ndarray, margin: int = 0) -> tuple[int, int, int, int]:
    """The tight box ``(top, left, bottom, right)`` (bottom/right exclusive) around ``mask``.

    The box grows by ``margin`` pixels on each side, within the image; an empty mask gives the
    whole image.
    """
    height, width = mask.shape
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return 0, 0, height, width
    return (
        max(int(rows[0]) - margin, 0),
        max(int(cols[0]) - margin, 0),
        min(int(rows[-1]) + 1 + margin, height),
        min(int(cols[-1]) + 1 + margin, width),
    )


def crop(image: np.ndarray, mask: np.ndarray, margin: int = 0) -> np.ndarray:
    """The part of ``image`` inside :func:`crop_box` of ``mask``."""
    top, left, bottom, right = crop_box(mask, margin)
    return image[top:bottom, left:right]


def image_grid(
    images: Sequence[np.ndarray], columns: int | None = None, pad: int = 2, background: int = 255
) -> np.ndarray:
    """Place images side by side, row by row, each at the top left of an equal cell.

    Parameters
    ----------
    images : sequence of ndarray
        (H, W, 3) uint8 images, sizes may differ (crops).
    columns : int, optional
        Images per row (default: all in one row).
    pad : int
        Pixels between cells and around the grid.
    background : int
        Grey level of the padding.

    Returns
    -------
    ndarray
        (rows * (h + pad) + pad, columns * (w + pad) + pad, 3) uint8, where h, w are the
        largest image sides.
    """
    if not images:
        raise DissectError("no image to put in a grid.")
    columns = columns or len(images)
    rows = -(-len(images) // columns)
    cell_h = max(image.shape[0] for image in images)
    cell_w = max(image.shape[1] for image in images)
    grid = np.full(
        (rows * (cell_h + pad) + pad, columns * (cell_w + pad) + pad, 3), background, np.uint8
    )
    for i, image in enumerate(images):
        top = pad + (i // columns) * (cell_h + pad)
        left = pad + (i % columns) * (cell_w + pad)
        grid[top : top + image.shape[0], left : left + image.shape[1]] = image
    return grid


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write a uint8 (H, W, 3) array as a PNG file, atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
