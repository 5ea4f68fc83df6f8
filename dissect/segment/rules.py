"""Rules that turn a unit map upsampled to the image into the mask of the region it responds to."""

from __future__ import annotations

import numpy as np

from ..errors import DissectError

#: Pictures made for every top image, in the order files are written.


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
