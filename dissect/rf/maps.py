"""From discrepancy grids to receptive fields: re-centring, averaging, sizes and summaries.

Pure functions of arrays and tables: :func:`average_maps` re-centres each map on its unit's peak
pixel and averages per unit, :func:`rf_size` and :func:`theoretical_size` measure empirical and
theoretical sizes, :func:`layer_summary` gives the per-layer table (the paper's Table 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..geometry import LayerGeometry
from .occlusion import Measurements, OcclusionConfig


def average_maps(
    grids: np.ndarray,
    measurements: Measurements,
    units: Sequence[int],
    geometry: LayerGeometry,
    config: OcclusionConfig,
    radius: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Re-centre each discrepancy map on its peak and average per unit.

    Parameters
    ----------
    grids : ndarray, shape (M, ny, nx)
        Discrepancy maps from :func:`discrepancy_maps`.
    measurements : Measurements
        What each map measured.
    units : sequence of int
        Units to average (in this order).
    geometry : LayerGeometry
        Geometry of the layer (peak feature position to input pixel).
    config : OcclusionConfig
        Occluder size and stride (where the map's samples sit in the image).
    radius : int
        The averaged maps cover pixel offsets ``-radius..radius`` from the peak pixel.

    Returns
    -------
    maps : ndarray, shape (U, 2 * radius + 1, 2 * radius + 1)
        Float32 averaged maps, row = vertical offset, column = horizontal offset.
    counts : ndarray of int, shape (U,)
        Images averaged per unit (0: the map is all zero).
    """
    side = 2 * radius + 1
    maps = np.zeros((len(units), side, side), dtype=np.float32)
    counts = np.zeros(len(units), dtype=np.int64)
    first = (config.occluder - 1) / 2
    for row, unit in enumerate(units):
        members = np.flatnonzero(measurements.unit == unit)
        if len(members) == 0:
            continue
        centres = np.array([geometry.center(measurements.y[m], measurements.x[m]) for m in members])
        weights_y = _interpolation(centres[:, 0], first, config.stride, grids.shape[1], radius)
        weights_x = _interpolation(centres[:, 1], first, config.stride, grids.shape[2], radius)
        recentred = np.einsum(
            "mai,mij,mbj->mab", weights_y, grids[members].astype(np.float64), weights_x
        )
        maps[row] = recentred.mean(0)
        counts[row] = len(members)
    return maps, counts


def _interpolation(centres, first, step, samples, radius) -> np.ndarray:
    """(M, 2R+1, samples) linear-interpolation weights from grid samples to pixel offsets."""
    offsets = np.arange(-radius, radius + 1)
    grid = (centres[:, None] + offsets[None] - first) / step
    low = np.floor(grid).astype(np.int64)
    frac = grid - low
    weights = np.zeros((len(centres), len(offsets), samples))
    m, a = np.indices(low.shape)
    for index, weight in ((low, 1 - frac), (low + 1, frac)):
        inside = (index >= 0) & (index < samples)
        np.add.at(weights, (m[inside], a[inside], index[inside]), weight[inside])
    return weights


def rf_size(maps: np.ndarray, fraction: float) -> np.ndarray:
    """Side of the square with the area of the region where a map is >= ``fraction`` x its max.

    Parameters
    ----------
    maps : ndarray, shape (U, H, W)
        Averaged maps on a 1-pixel grid.
    fraction : float
        Threshold as a fraction of each map's maximum.

    Returns
    -------
    ndarray, shape (U,)
        Size in input pixels; NaN where a map is all zero (the unit never responded).
    """
    peak = maps.reshape(len(maps), -1).max(1)
    area = (maps >= fraction * peak[:, None, None]).reshape(len(maps), -1).sum(1)
    return np.where(peak > 0, np.sqrt(area), np.nan)


def map_radius(geometry: LayerGeometry, config: OcclusionConfig, image_size: int) -> int:
    """Half-side of the averaged maps: every occluder that can matter, within the image."""
    if config.discrepancy == "map":
        return image_size - 1
    reach = (max(geometry.rf) - 1) / 2 + config.occluder + config.stride
    return int(min(image_size - 1, math.ceil(reach)))


def theoretical_size(geometry: LayerGeometry) -> float:
    """Side of the square with the area of the theoretical receptive field."""
    return float(math.sqrt(geometry.rf[0] * geometry.rf[1]))


def layer_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per layer (as the paper's Table 1): theoretical size and empirical mean and std.

    Parameters
    ----------
    table : DataFrame
        Per-unit rows as returned by :func:`receptive_fields`.

    Returns
    -------
    DataFrame
        ``layer, rf_theoretical, rf_empirical_mean, rf_empirical_std, n_units, ratio`` (ratio:
        empirical mean over theoretical), layers in order of first appearance.
    """
    rows = []
    for layer, group in table.groupby("layer", sort=False):
        sizes = group["rf_empirical"].dropna()
        theoretical = float(group["rf_theoretical"].iloc[0])
        mean = float(sizes.mean()) if len(sizes) else math.nan
        rows.append(
            {
                "layer": layer,
                "rf_theoretical": theoretical,
                "rf_empirical_mean": mean,
                "rf_empirical_std": float(sizes.std(ddof=0)) if len(sizes) else math.nan,
                "n_units": len(sizes),
                "ratio": mean / theoretical,
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "layer", "rf_theoretical", "rf_empirical_mean", "rf_empirical_std", "n_units", "ratio",
        ],
    )  # fmt: skip


def _rows(layer: str, geometry: LayerGeometry, stored: dict[str, np.ndarray]) -> pd.DataFrame:
    theoretical = theoretical_size(geometry)
    return pd.DataFrame(
        {
            "layer": layer,
            "unit": stored["units"],
            "rf_empirical": stored["rf_empirical"].astype(np.float64),
            "rf_theoretical": theoretical,
            "n_images": stored["n_images"],
            "ratio": stored["rf_empirical"].astype(np.float64) / theoretical,
            "max_discrepancy": stored["max_discrepancy"].astype(np.float64),
            "rf_theoretical_h": geometry.rf[0],
            "rf_theoretical_w": geometry.rf[1],
        }
    )
