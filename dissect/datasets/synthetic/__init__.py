"""The built-in synthetic scene world: ``synthetic:N[:SEED]``.

Image ``i`` of seed ``s`` is rendered from a random generator seeded with ``(s, i)`` alone, so the
same index always gives the same image and masks, on any machine and in any order of access.
Every pixel is labelled with its object, object part, material and colour; every image with its
scene. See :mod:`dissect.datasets.synthetic.scenes` for the objects and scenes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ...errors import DissectError
from ...specs import SYNTHETIC_DEFAULT_COUNT, parse_synthetic
from ..masks import Segmentation, SegmentedSource
from .scenes import OBJECTS, PARTS, SCENES, Rendered, render
from .textures import COLORS, MATERIALS, color_names

#: Side of the square images, in pixels.
IMAGE_SIZE = 112
#: Images in ``synthetic`` without a count.
DEFAULT_COUNT = SYNTHETIC_DEFAULT_COUNT


def concept_table() -> pd.DataFrame:
    """Every concept of the world: ``number`` (1..), ``name``, ``category``, in Broden's order."""
    names = (
        [("color", name) for name in COLORS]
        + [("object", kind.name) for kind in OBJECTS]
        + [("part", f"{obj} {part}") for obj, part in PARTS]
        + [("material", name) for name in MATERIALS]
        + [("scene", name) for name in SCENES]
    )
    return pd.DataFrame(
        {
            "number": np.arange(1, len(names) + 1),
            "name": [name for _, name in names],
            "category": [category for category, _ in names],
        }
    )


def _first_numbers(concepts: pd.DataFrame) -> dict[str, int]:
    return concepts.groupby("category", sort=False)["number"].min().to_dict()


class SyntheticWorld(SegmentedSource):
    """``count`` procedurally generated scene images with dense concept labels.

    Parameters
    ----------
    count : int
        Number of images.
    seed : int
        World seed; image ``i`` depends only on ``(seed, i)``.

    Examples
    --------
    >>> world = SyntheticWorld(10, seed=7)
    >>> world.read_rgb(3).shape
    (112, 112, 3)
    >>> world.classes[world.label(3)] in world.classes
    True
    """

    def __init__(self, count: int = DEFAULT_COUNT, seed: int = 0):
        if count < 1 or seed < 0:
            raise DissectError(
                f"synthetic world needs at least one image and a seed >= 0, got {count} "
                f"images, seed {seed}."
            )
        self.count = int(count)
        self.seed = int(seed)
        self.spec = f"synthetic:{self.count}:{self.seed}"
        self.classes = list(SCENES)
        self.concepts = concept_table()
        self._first = _first_numbers(self.concepts)
        self._cached: tuple[int, Rendered] | None = None

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"SyntheticWorld({self.count}, seed={self.seed})"

    def _check(self, index: int) -> int:
        if not 0 <= index < self.count:
            raise IndexError(f"image {index} is outside {self.spec} (0..{self.count - 1})")
        return int(index)

    def render(self, index: int) -> Rendered:
        """Image ``index`` and its 0-based label maps (the last one is cached)."""
        index = self._check(index)
        if self._cached is None or self._cached[0] != index:
            rng = np.random.default_rng([self.seed, index])
            self._cached = (index, render(rng, IMAGE_SIZE))
        return self._cached[1]

    def image_id(self, index: int) -> str:
        return f"synthetic-{self.seed}-{self._check(index):06d}"

    def read_rgb(self, index: int) -> np.ndarray:
        return self.render(index).rgb.copy()

    def label(self, index: int) -> int:
        return self.render(index).scene

    def segmentation(self, index: int) -> Segmentation:
        rendered = self.render(index)
        first = self._first

        def numbers(indices: np.ndarray, category: str) -> np.ndarray:
            return np.where(indices >= 0, indices + first[category], 0).astype(np.int32)

        return Segmentation(
            pixel={
                "object": [numbers(rendered.object, "object")],
                "part": [numbers(rendered.part, "part")],
                "material": [numbers(rendered.material, "material")],
                "color": [numbers(color_names(rendered.rgb), "color")],
            },
            image={"scene": [rendered.scene + first["scene"]]},
        )


def open_synthetic(spec: str) -> SyntheticWorld:
    """Open ``synthetic``, ``synthetic:N`` or ``synthetic:N:SEED``.

    Parameters
    ----------
    spec : str
        The DATA spec. N (default 1000) is the number of images, SEED (default 0) the world seed.

    Returns
    -------
    SyntheticWorld
    """
    count, seed = parse_synthetic(spec)
    return SyntheticWorld(count, seed)
