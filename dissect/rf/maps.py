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

from ..config import OcclusionConfig
from ..geometry import LayerGeometry
from .occlusion import Measurements


def average_maps(
    grids: np.ndarray,
    measurements: Measurements,
    units: Sequence[int],
    geometry: LayerGeometry,
    config: OcclusionConfig,
    radius: int,
    image_size: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Re-centre each discrepancy map on its peak and average per unit, offset by offset.

    Each offset from the peak pixel is averaged over the top images that cover it (where peak
    pixel + offset lies inside the image): counting an image as zero past its border would
    shrink the field of units that peak near borders. Offsets that no top image covers (the
    field reaches past the image on every one, e.g. all peaks in one corner) are filled from
    their mirror offset (flipped vertically, else horizontally, else both), so a field
    symmetric about its peak measures the same wherever the peaks lie.

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
    image_size : (int, int)
        The network input's (height, width), in pixels.

    Returns
    -------
    maps : ndarray, shape (U, 2 * radius + 1, 2 * radius + 1)
        Float32 averaged maps, row = vertical offset, column = horizontal offset.
    counts : ndarray of int, shape (U,)
        Images averaged per unit (0: the map is all zero).
    coverage : ndarray, shape (U, 2 * radius + 1, 2 * radius + 1)
        Float32 number of images covering each offset (0 where it was filled from its mirror).
    """
    height, width = image_size
    side = 2 * radius + 1
    maps = np.zeros((len(units), side, side), dtype=np.float32)
    coverage = np.zeros((len(units), side, side), dtype=np.float32)
    counts = np.zeros(len(units), dtype=np.int64)
    first = (config.occluder - 1) / 2
    for row, unit in enumerate(units):
        members = np.flatnonzero(measurements.unit == unit)
        if len(members) == 0:
            continue
        centres = np.array([geometry.center(measurements.y[m], measurements.x[m]) for m in members])
        args = (first, config.stride)
        weights_y = _interpolation(centres[:, 0], *args, grids.shape[1], radius, height)
        weights_x = _interpolation(centres[:, 1], *args, grids.shape[2], radius, width)
        total = np.einsum(
            "mai,mij,mbj->ab", weights_y, grids[members].astype(np.float64), weights_x
        )
        covered = np.einsum("ma,mb->ab", weights_y.sum(2), weights_x.sum(2))
        average = np.divide(total, covered, out=np.zeros_like(total), where=covered > 0)
        maps[row] = _mirror_fill(average, covered > 0)
        coverage[row] = covered
        counts[row] = len(members)
    return maps, counts, coverage


def _interpolation(centres, first, step, samples, radius, length) -> np.ndarray:
    """(M, 2R+1, samples) linear-interpolation weights from grid samples to pixel offsets.

    A pixel between the image border and the outermost occluder centre takes that centre's
    value (its occluder covers the pixel); offsets outside the image get no weight at all.
    """
    offsets = np.arange(-radius, radius + 1)
    pixels = centres[:, None] + offsets[None]
    inside = (pixels > -0.5) & (pixels < length - 0.5)
    grid = np.clip((pixels - first) / step, 0, samples - 1)
    low = np.minimum(np.floor(grid), max(samples - 2, 0)).astype(np.int64)
    frac = grid - low
    weights = np.zeros((len(centres), len(offsets), samples))
    m, a = np.indices(low.shape)
    for index, weight in ((low, 1 - frac), (low + 1, frac)):
        keep = inside & (index < samples)
        np.add.at(weights, (m[keep], a[keep], index[keep]), weight[keep])
    return weights


def _mirror_fill(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """``values`` with unknown entries taken from their vertical, horizontal or central mirror."""
    filled, known = values.copy(), known.copy()
    for axes in ((0,), (1,), (0, 1)):
        take = ~known & np.flip(known, axes)
        filled[take] = np.flip(filled, axes).copy()[take]  # mirrors filled earlier count too
        known |= take
    return filled


def rf_size(maps: np.ndarray, fraction: float) -> np.ndarray:
    """Half-max rule: side of the square with the area where a map is >= ``fraction`` x its max.

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


def rf_mass_size(maps: np.ndarray, mass: float) -> np.ndarray:
    """Mass rule: side of the square with the smallest area that holds ``mass`` of a map's sum.

    Pixels are taken from the largest value down until they hold ``mass`` of the map's total
    discrepancy (the last one counted in part), so one sharp maximum, which shrinks the
    half-max area, moves the size little.

    Parameters
    ----------
    maps : ndarray, shape (U, H, W)
        Averaged maps on a 1-pixel grid (negative values count as 0).
    mass : float
        In (0, 1]: the share of the total discrepancy the area holds.

    Returns
    -------
    ndarray, shape (U,)
        Size in input pixels; NaN where a map is all zero.
    """
    flat = np.clip(maps.reshape(len(maps), -1).astype(np.float64), 0, None)
    ordered = -np.sort(-flat, axis=1)
    cumulative = np.cumsum(ordered, axis=1)
    total = cumulative[:, -1] if flat.shape[1] else np.zeros(len(maps))
    need = mass * total
    whole = np.array([np.searchsorted(c, n) for c, n in zip(cumulative, need, strict=True)])
    whole = np.minimum(whole, flat.shape[1] - 1)
    rows = np.arange(len(maps))
    before = np.where(whole > 0, cumulative[rows, np.maximum(whole - 1, 0)], 0.0)
    part = np.divide(
        need - before, ordered[rows, whole], out=np.ones(len(maps)), where=ordered[rows, whole] > 0
    )
    return np.where(total > 0, np.sqrt(whole + part), np.nan)


#: Shares of the discrepancy mass of the mass-rule sizes (columns ``rf_mass50``, ``rf_mass80``).
MASSES = (0.5, 0.8)


def map_radius(
    geometry: LayerGeometry, config: OcclusionConfig, image_size: tuple[int, int]
) -> int:
    """Half-side of the (square) averaged maps: every occluder that can matter, within the
    image's longer side."""
    longest = max(image_size)
    if config.discrepancy == "map":
        return longest - 1
    reach = (max(geometry.rf) - 1) / 2 + config.occluder + config.stride
    return int(min(longest - 1, math.ceil(reach)))


def theoretical_size(geometry: LayerGeometry) -> float:
    """Side of the square with the area of the theoretical receptive field."""
    return float(math.sqrt(geometry.rf[0] * geometry.rf[1]))


def layer_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per layer (as the paper's Table 1): theoretical size, empirical sizes under both rules.

    Parameters
    ----------
    table : DataFrame
        Per-unit rows as returned by :func:`receptive_fields`.

    Returns
    -------
    DataFrame
        ``layer, rf_theoretical, rf_empirical_mean, rf_empirical_std, n_units, ratio,
        rf_mass50_mean, rf_mass50_std, rf_mass80_mean, rf_mass80_std, n_silent,
        silent_units``: the half-max rule's mean and std over the units with a size
        (``n_units``), its ratio to the theoretical size, the mass rules' mean and std, and the
        units whose discrepancy was zero everywhere (occlusion never changed them on their top
        images; they have no size and are left out of the means), layers in order of first
        appearance.
    """
    rows = []
    for layer, group in table.groupby("layer", sort=False):
        theoretical = float(group["rf_theoretical"].iloc[0])
        row = {"layer": layer, "rf_theoretical": theoretical}
        for column in ("rf_empirical", *(f"rf_mass{round(100 * m)}" for m in MASSES)):
            sizes = group[column].dropna() if column in group else pd.Series(dtype=float)
            row[f"{column}_mean"] = float(sizes.mean()) if len(sizes) else math.nan
            row[f"{column}_std"] = float(sizes.std(ddof=0)) if len(sizes) else math.nan
            if column == "rf_empirical":
                row["n_units"] = len(sizes)
                row["ratio"] = row["rf_empirical_mean"] / theoretical
        silent = group[(group["n_images"] > 0) & (group["max_discrepancy"] <= 0)]["unit"]
        row["n_silent"] = len(silent)
        row["silent_units"] = " ".join(str(unit) for unit in silent)
        rows.append(row)
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


#: Columns of ``receptive_fields_layers.csv``.
SUMMARY_COLUMNS = [
    "layer",
    "rf_theoretical",
    "rf_empirical_mean",
    "rf_empirical_std",
    "n_units",
    "ratio",
    "rf_mass50_mean",
    "rf_mass50_std",
    "rf_mass80_mean",
    "rf_mass80_std",
    "n_silent",
    "silent_units",
]


def unit_rows(layer: str, geometry: LayerGeometry, stored: dict[str, np.ndarray]) -> pd.DataFrame:
    theoretical = theoretical_size(geometry)
    masses = {
        f"rf_mass{round(100 * m)}": stored[f"rf_mass{round(100 * m)}"].astype(np.float64)
        for m in MASSES
    }
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
            **masses,
        }
    )
