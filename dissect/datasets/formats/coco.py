"""COCO panoptic segmentation as a source of concept masks.

Layout (COCO 2017 panoptic annotations)::

    ROOT/annotations/panoptic_<split>2017.json     images, annotations (file_name, segments_info),
                                                   categories (id, name, isthing)
    ROOT/annotations/panoptic_<split>2017/*.png    segment id = R + 256 G + 256^2 B (0: void)
    ROOT/<split>2017/*.jpg

Each pixel's segment id is looked up in its image's ``segments_info`` for the category. Things
(``isthing`` 1) are ``object`` concepts, stuff ``region`` concepts, numbered by COCO's category
id. File names from the JSON must stay inside their folders.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...errors import DissectError
from .common import AnnotatedFolder, concept_frame, inside, read_rgb_png, require


class CocoPanoptic(AnnotatedFolder):
    """COCO panoptic at ``root``, one split (``val`` by default)."""

    def __init__(self, root: str | Path, split: str = "val"):
        self.root = Path(root)
        get = "download COCO's panoptic_annotations_trainval2017.zip and <split>2017.zip"
        path = require(
            self.root / "annotations" / f"panoptic_{split}2017.json", "COCO panoptic JSON", get
        )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            categories = data["categories"]
            files = {int(image["id"]): image["file_name"] for image in data["images"]}
            annotations = data["annotations"]
        except (ValueError, KeyError, TypeError) as error:
            raise DissectError(f"{str(path)!r} is not a COCO panoptic file: {error}") from error
        rows = [
            (int(c["id"]), str(c["name"]), "object" if c.get("isthing", 1) else "region")
            for c in categories
        ]
        self.concepts = concept_frame(rows, f"{path.name} categories")
        images = require(self.root / f"{split}2017", "COCO image folder", get)
        masks = require(
            self.root / "annotations" / f"panoptic_{split}2017", "COCO panoptic PNG folder", get
        )
        self.items, self._segments = [], {}
        for entry in sorted(annotations, key=lambda a: str(a["file_name"])):
            image = files.get(int(entry["image_id"]))
            if image is None:
                raise DissectError(f"{path.name}: annotation of unknown image {entry['image_id']}.")
            mask = inside(masks, str(entry["file_name"]), path.name)
            self.items.append((str(image), inside(images, str(image), path.name), mask))
            self._segments[mask] = {
                int(s["id"]): int(s["category_id"]) for s in entry.get("segments_info", [])
            }
        if not self.items:
            raise DissectError(f"{path.name} lists no annotations.")
        self._category = dict(
            zip(self.concepts["number"].tolist(), self.concepts["category"], strict=True)
        )
        self.spec = f"coco-panoptic:{self.root}" + ("" if split == "val" else f":{split}")

    def labels(self, annotation: Path) -> dict[str, np.ndarray]:
        rgb = read_rgb_png(annotation).astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
        segments = self._segments[annotation]
        unique, inverse = np.unique(ids, return_inverse=True)
        found = [segments.get(int(u), 0) for u in unique]
        numbers = np.array([n if n in self._category else 0 for n in found], dtype=np.int32)
        labels = numbers[inverse.reshape(ids.shape)]
        kinds = np.array([self._category.get(int(n), "") for n in numbers])
        kind_of_pixel = kinds[inverse.reshape(ids.shape)]
        return {
            kind: np.where(kind_of_pixel == kind, labels, 0).astype(np.int32)
            for kind in dict.fromkeys(self._category.values())
        }
