"""Material textures and named colours of the synthetic world.

A material is a grey-level pattern (mean 1) that modulates a tint colour: brick, grass and gravel
come from the photographs scikit-image ships; the others are procedural. Colour names are computed
per pixel from the rendered image, as Broden labels its colour concepts.

Everything here uses only correctly rounded arithmetic (no ``sin``/``exp``, whose vectorised
implementations differ between CPUs) and quantises the tiles, so that every machine renders the
same bytes.
"""

from __future__ import annotations

from functools import cache

import numpy as np

#: Side of every texture tile, in pixels; regions crop it at random offsets.
TILE = 256

#: Materials that cover the background: name -> base colour (R, G, B) of its tint.
BACKGROUND_MATERIALS = {
    "sky": (135, 190, 235),
    "grass": (70, 140, 50),
    "sand": (215, 190, 130),
    "water": (40, 90, 160),
    "brick": (160, 70, 50),
    "gravel": (130, 125, 120),
    "wood": (150, 100, 55),
}

#: Materials objects are made of; they take a random named colour as tint.
OBJECT_MATERIALS = ("metal", "fabric", "plastic", "wood")

#: Every material, in concept order.
MATERIALS = tuple(BACKGROUND_MATERIALS) + tuple(
    name for name in OBJECT_MATERIALS if name not in BACKGROUND_MATERIALS
)

#: Named colours objects are painted in (the tint before texture and lighting).
PALETTE = {
    "red": (200, 30, 30),
    "orange": (235, 130, 20),
    "yellow": (230, 210, 40),
    "green": (40, 160, 50),
    "blue": (40, 70, 200),
    "purple": (120, 50, 160),
    "pink": (240, 130, 180),
    "brown": (120, 70, 30),
    "black": (25, 25, 25),
    "white": (235, 235, 235),
    "grey": (128, 128, 128),
}

#: Colour concepts, in concept order.
COLORS = tuple(PALETTE)


def _normalise(pattern: np.ndarray, contrast: float) -> np.ndarray:
    """Zero mean, unit spread, scaled by ``contrast`` around 1, in steps of 1/64."""
    pattern = (pattern - pattern.mean()) / (pattern.std() + 1e-6)
    pattern = np.clip(1.0 + contrast * pattern, 0.3, 1.7)
    return (np.round(pattern * 64) / 64).astype(np.float32)


def _wave(t: np.ndarray) -> np.ndarray:
    """A sine-like wave of period 2 pi from arithmetic alone (a smoothed triangle wave)."""
    phase = np.mod(t / (2 * np.pi), 1.0)
    triangle = 1.0 - 4.0 * np.abs(phase - 0.5)
    return triangle * (1.5 - 0.5 * triangle * triangle)


def _photo(name: str) -> np.ndarray:
    import skimage.data

    photo = getattr(skimage.data, name)().astype(np.float64)
    return photo.reshape(TILE, 2, TILE, 2).sum(axis=(1, 3)) / 4


def _smooth_noise(rng: np.random.Generator, cells: int) -> np.ndarray:
    """Bilinearly interpolated value noise with ``cells`` cells per tile side."""
    grid = rng.random((cells + 1, cells + 1))
    t = np.linspace(0, cells, TILE, endpoint=False)
    i = t.astype(int)
    f = t - i
    rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


@cache
def texture(material: str) -> np.ndarray:
    """The (TILE, TILE) float32 grey-level pattern of ``material``, mean about 1.

    Deterministic: the same array on every machine and in every process.
    """
    rng = np.random.default_rng(sum(map(ord, material)))
    y, x = np.mgrid[0:TILE, 0:TILE].astype(np.float64)
    if material in ("brick", "grass", "gravel"):
        return _normalise(_photo(material), 0.35)
    if material == "sky":
        return _normalise(_smooth_noise(rng, 3), 0.05)
    if material == "sand":
        return _normalise(rng.random((TILE, TILE)) + 0.5 * _smooth_noise(rng, 16), 0.12)
    if material == "water":
        waves = _wave(y / 2.5 + 2.0 * _wave(x / 9.0)) + 0.3 * _smooth_noise(rng, 12)
        return _normalise(waves, 0.18)
    if material == "wood":
        grain = _wave(y / 1.6 + 6.0 * _smooth_noise(rng, 4)) + 0.2 * rng.random((TILE, TILE))
        return _normalise(grain, 0.2)
    if material == "metal":
        streaks = rng.random(TILE)[None, :].repeat(TILE, 0)
        return _normalise(streaks + 0.5 * x / TILE, 0.12)
    if material == "fabric":
        return _normalise(_wave(x * 1.6) * _wave(y * 1.6) + 0.2 * rng.random((TILE, TILE)), 0.2)
    if material == "plastic":
        return _normalise(_smooth_noise(rng, 6), 0.04)
    raise KeyError(material)


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees, saturation and value in [0, 1] of a uint8 (..., 3) image."""
    values = rgb.astype(np.float32) / 255.0
    top = values.max(axis=-1)
    bottom = values.min(axis=-1)
    spread = top - bottom
    r, g, b = values[..., 0], values[..., 1], values[..., 2]
    safe = np.where(spread > 0, spread, 1.0)
    hue = np.where(
        top == r, (g - b) / safe % 6, np.where(top == g, (b - r) / safe + 2, (r - g) / safe + 4)
    )
    hue = np.where(spread > 0, hue * 60.0, 0.0)
    saturation = np.where(top > 0, spread / np.where(top > 0, top, 1.0), 0.0)
    return hue, saturation, top


def color_names(rgb: np.ndarray) -> np.ndarray:
    """Index into :data:`COLORS` of the colour bin of every pixel of a uint8 (..., 3) image.

    Bins: black (dark), white / grey (unsaturated), brown (dark red-orange), then by hue red,
    orange, yellow, green, blue, purple, pink.
    """
    hue, saturation, value = _hsv(rgb)
    index = {name: i for i, name in enumerate(COLORS)}
    by_hue = np.select(
        [hue < 15, hue < 40, hue < 70, hue < 165, hue < 255, hue < 290, hue < 345],
        [index[n] for n in ("red", "orange", "yellow", "green", "blue", "purple", "pink")],
        index["red"],
    )
    warm = (hue < 40) | (hue >= 345)
    return np.select(
        [
            value < 0.18,
            (saturation < 0.2) & (value > 0.75),
            saturation < 0.2,
            warm & (value < 0.6),
        ],
        [index["black"], index["white"], index["grey"], index["brown"]],
        by_hue,
    ).astype(np.int32)
