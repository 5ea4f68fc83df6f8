"""Rules that turn a unit's map on an image into the mask of the region it responds to.

:func:`threshold_masks` (NetDissect's rule, the default: the map upsampled to the image, above a
threshold, with :func:`peak_thresholds` for a fraction of each map's peak) and :func:`disk_masks`
(the rule Zhou et al. released for their annotation images: a disk of the layer's empirical
receptive field around every map cell above a fraction of the map's maximum).
"""

from __future__ import annotations

import numpy as np

from ..errors import DissectError


def threshold_masks(maps: np.ndarray, thresholds: np.ndarray | float) -> np.ndarray:
    """Where each map exceeds its threshold.

    Parameters
    ----------
    maps : ndarray
        Upsampled activation maps of shape (..., H, W).
    thresholds : ndarray or float
        One threshold per map, of shape (...), or one for all.

    Returns
    -------
    ndarray of bool
        Masks of the shape of ``maps``: True strictly above the threshold.
    """
    thresholds = np.asarray(thresholds, dtype=np.float32)
    return np.asarray(maps) > thresholds[..., None, None]


def peak_thresholds(maps: np.ndarray, fraction: float) -> np.ndarray:
    """``fraction`` of each map's peak, as thresholds for :func:`threshold_masks`.

    Parameters
    ----------
    maps : ndarray
        Maps of shape (..., H, W).
    fraction : float
        In (0, 1]: 0.5 keeps the pixels above half the image's peak activation.

    Returns
    -------
    ndarray
        Thresholds of shape (...).
    """
    if not 0 < fraction <= 1:
        raise DissectError(f"--peak-fraction must lie in (0, 1], got {fraction}.")
    return np.asarray(maps).max(axis=(-2, -1)) * np.float32(fraction)


#: Segmentation rules: NetDissect's (the upsampled map above a threshold) and the one Zhou et al.
#: released for their annotation images (a disk of the layer's empirical receptive field around
#: every map cell above a fraction of the image's maximum).
RULES = ("threshold", "disk")


def disk_masks(
    maps: np.ndarray,
    centres_y: np.ndarray,
    centres_x: np.ndarray,
    image_size: tuple[int, int],
    rf_size: float,
    fraction: float,
) -> np.ndarray:
    """The paper's rule: a disk of the receptive field around every strong cell of a map.

    Parameters
    ----------
    maps : ndarray
        Activation maps at the layer's resolution, shape (K, h, w).
    centres_y, centres_x : ndarray
        Input pixel at the centre of each map row (h,) and column (w,) (the layer geometry's
        ``center``).
    image_size : (int, int)
        The image's (height, width), in pixels.
    rf_size : float
        The layer's empirical receptive-field size in pixels (side of a square of its area);
        each disk has the same area, diameter ``2 * rf_size / sqrt(pi)``.
    fraction : float
        In (0, 1]: cells at least this fraction of their map's maximum (and above 0) are drawn.

    Returns
    -------
    ndarray of bool
        Masks of shape (K, H, W), the image's: True within a disk of some strong cell.
    """
    if not 0 < fraction <= 1:
        raise DissectError(f"--peak-fraction must lie in (0, 1], got {fraction}.")
    if not np.isfinite(rf_size) or rf_size <= 0:
        raise DissectError(f"--rf-size must be a positive number of pixels, got {rf_size}.")
    maps = np.asarray(maps, dtype=np.float32)
    peak = maps.max(axis=(-2, -1), keepdims=True)
    strong = (maps >= fraction * peak) & (maps > 0)  # (K, h, w)
    radius2 = rf_size**2 / np.pi
    height, width = image_size
    rows_px, columns_px = np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64)
    dy2 = (rows_px[None] - np.asarray(centres_y, dtype=np.float64)[:, None]) ** 2  # (h, H)
    dx2 = (columns_px[None] - np.asarray(centres_x, dtype=np.float64)[:, None]) ** 2  # (w, W)
    masks = np.zeros((len(maps), height, width), dtype=bool)
    for k, cells in enumerate(strong):
        rows = np.flatnonzero(cells.any(1))
        if len(rows) == 0:
            continue
        # Per strong map row: squared horizontal distance to its nearest strong cell, per column.
        nearest_x = np.where(cells[rows, :, None], dx2[None], np.inf).min(1)  # (r, W)
        masks[k] = (dy2[rows, :, None] + nearest_x[:, None, :]).min(0) <= radius2
    return masks
