"""Cityscapes fine annotations (``*_gtFine_labelIds.png``) as a source of concept masks.

Layout::

    ROOT/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    ROOT/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png   label id per pixel

Label ids follow cityscapesScripts' ``labels.py``; the void ids (0-6: unlabeled, ego vehicle,
rectification border, out of roi, static, dynamic, ground) are unlabelled. Classes of the groups
human, vehicle and object are ``object`` concepts; flat, construction, nature and sky are
``region`` concepts; numbered by label id.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import DissectError
from .common import AnnotatedFolder, concept_frame, read_index_png, require

#: (label id, name, Cityscapes group) of every non-void label.
LABELS = (
    (7, "road", "flat"),
    (8, "sidewalk", "flat"),
    (9, "parking", "flat"),
    (10, "rail track", "flat"),
    (11, "building", "construction"),
    (12, "wall", "construction"),
    (13, "fence", "construction"),
    (14, "guard rail", "construction"),
    (15, "bridge", "construction"),
    (16, "tunnel", "construction"),
    (17, "pole", "object"),
    (18, "polegroup", "object"),
    (19, "traffic light", "object"),
    (20, "traffic sign", "object"),
    (21, "vegetation", "nature"),
    (22, "terrain", "nature"),
    (23, "sky", "sky"),
    (24, "person", "human"),
    (25, "rider", "human"),
    (26, "car", "vehicle"),
    (27, "truck", "vehicle"),
    (28, "bus", "vehicle"),
    (29, "caravan", "vehicle"),
    (30, "trailer", "vehicle"),
    (31, "train", "vehicle"),
    (32, "motorcycle", "vehicle"),
    (33, "bicycle", "vehicle"),
)
OBJECT_GROUPS = ("human", "vehicle", "object")


class Cityscapes(AnnotatedFolder):
    """Cityscapes at ``root``, one split (``val`` by default)."""

    def __init__(self, root: str | Path, split: str = "val"):
        self.root = Path(root)
        get = "download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from Cityscapes"
        images = require(self.root / "leftImg8bit" / split, "Cityscapes image folder", get)
        labels = require(self.root / "gtFine" / split, "Cityscapes gtFine folder", get)
        items = []
        for path in sorted(images.rglob("*_leftImg8bit.png")):
            relative = path.relative_to(images)
            stem = path.name[: -len("_leftImg8bit.png")]
            annotation = labels / relative.parent / f"{stem}_gtFine_labelIds.png"
            items.append((relative.as_posix(), path, annotation))
        if not items:
            raise DissectError(f"Cityscapes: no *_leftImg8bit.png under {str(images)!r}.")
        if not any(annotation.is_file() for _, _, annotation in items):
            raise DissectError(
                f"Cityscapes: no *_gtFine_labelIds.png under {str(labels)!r} for the images; "
                "the fine annotations (gtFine) are needed."
            )
        self.items = items
        rows = [
            (number, name, "object" if group in OBJECT_GROUPS else "region")
            for number, name, group in LABELS
        ]
        self.concepts = concept_frame(rows, "Cityscapes labels")
        self._category = np.zeros(256, dtype=np.int8)  # 0 void, 1 object, 2 region
        for number, _, category in rows:
            self._category[number] = 1 if category == "object" else 2
        self.spec = f"cityscapes:{self.root}" + ("" if split == "val" else f":{split}")

    def labels(self, annotation: Path) -> dict[str, np.ndarray]:
        values = read_index_png(annotation)
        kind = self._category[np.clip(values, 0, 255)] * ((values >= 0) & (values < 256))
        return {
            "object": np.where(kind == 1, values, 0).astype(np.int32),
            "region": np.where(kind == 2, values, 0).astype(np.int32),
        }
