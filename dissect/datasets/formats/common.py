"""What the dataset readers share: an image list with one annotation file per image, paths kept
inside the dataset's folder, index PNGs read exactly, class tables checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from ...errors import DissectError
from ...images import ImageReadError, read_image_file
from ..masks import Segmentation, SegmentedSource


def inside(root: Path, relative: str, where: str) -> Path:
    """``root / relative``, refused when it is absolute or resolves outside ``root``."""
    path = (root / relative).resolve()
    if Path(relative).is_absolute() or root.resolve() not in path.parents:
        raise DissectError(
            f"{where}: {relative!r} points outside the dataset folder {str(root)!r}; refused."
        )
    return path


def require(path: Path, what: str, fix: str) -> Path:
    """``path`` if it exists; else one line naming what is missing and how to get it."""
    if not path.exists():
        raise DissectError(f"{what} {str(path)!r} is missing: {fix}")
    return path


def read_index_png(path: Path) -> np.ndarray:
    """A label PNG's stored values (palette indices for a P-mode PNG), int32 (H, W)."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("P", "L", "I", "I;16"):
                raise ImageReadError(f"label map {path.name} is {image.mode}, not an index PNG")
            return np.asarray(image, dtype=np.int32)
    except FileNotFoundError as error:
        raise ImageReadError(f"annotation file {path.name} is missing") from error
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ImageReadError(f"cannot read label map {path.name}: {error}") from error


def read_rgb_png(path: Path) -> np.ndarray:
    """An RGB annotation PNG as (H, W, 3) uint8 (COCO panoptic)."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError as error:
        raise ImageReadError(f"annotation file {path.name} is missing") from error
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ImageReadError(f"cannot read annotation {path.name}: {error}") from error


def concept_frame(rows: list[tuple[int, str, str]], where: str) -> pd.DataFrame:
    """``number,name,category`` from (number, name, category) rows; collisions are refused."""
    table = pd.DataFrame(rows, columns=["number", "name", "category"])
    twice = table[table.duplicated(["category", "name"], keep=False)]
    if len(twice):
        numbers = ", ".join(str(n) for n in twice["number"])
        raise DissectError(
            f"{where}: class names collide: {twice['name'].iloc[0]!r} names classes {numbers}; "
            "give each class its own name."
        )
    if table["number"].duplicated().any() or (table["number"] < 1).any():
        raise DissectError(f"{where}: class numbers must be unique and at least 1.")
    return table.astype({"number": np.int64})


class AnnotatedFolder(SegmentedSource):
    """Images, each with one annotation file, read into one pixel-level category map.

    Subclasses fill ``root``, ``spec``, ``items`` (image id, image path, annotation path),
    ``concepts``, and implement :meth:`labels` (annotation -> category -> concept numbers).
    """

    root: Path
    items: list[tuple[str, Path, Path]]
    #: Image-level concept numbers by image id (scenes), when the dataset has them.
    scenes: dict[str, list[int]]

    def __len__(self) -> int:
        return len(self.items)

    def image_id(self, index: int) -> str:
        return self.items[index][0]

    def read_rgb(self, index: int) -> np.ndarray:
        return read_image_file(self.items[index][1])

    def labels(self, annotation: Path) -> dict[str, np.ndarray]:
        """Category -> (H, W) int32 concept numbers (0: unlabelled) of one annotation file."""
        raise NotImplementedError

    def segmentation(self, index: int) -> Segmentation:
        image_id, _, annotation = self.items[index]
        maps = self.labels(annotation)
        scenes = getattr(self, "scenes", {}).get(image_id, [])
        return Segmentation(
            pixel={category: [labels] for category, labels in maps.items()},
            image={"scene": scenes} if scenes else {},
        )


def paired(
    images: Path, annotations: Path, suffix: str, where: str
) -> list[tuple[str, Path, Path]]:
    """Every image under ``images`` (sorted) with its annotation ``<stem><suffix>`` alongside in
    ``annotations`` (the same sub-folders); none found at all is an error."""
    from ...images import IMAGE_EXTENSIONS

    found = sorted(path for path in images.rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS)
    items = []
    for path in found:
        relative = path.relative_to(images)
        items.append(
            (relative.as_posix(), path, annotations / relative.parent / f"{path.stem}{suffix}")
        )
    if not items:
        raise DissectError(f"{where}: no images under {str(images)!r}.")
    if not any(annotation.is_file() for _, _, annotation in items):
        raise DissectError(
            f"{where}: none of the {len(items)} images has its annotation file under "
            f"{str(annotations)!r} (looked for <image name>{suffix})."
        )
    return items
