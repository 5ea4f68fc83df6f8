"""Pascal VOC segmentation (and Pascal-Context's index PNGs) as a source of concept masks.

Layout (VOCdevkit/VOC2012)::

    ROOT/JPEGImages/<id>.jpg
    ROOT/SegmentationClass/<id>.png          palette PNG: class index, 0 background, 255 void
    ROOT/ImageSets/Segmentation/<split>.txt  optional: the ids of a split (else every PNG)

The 20 VOC classes are ``object`` concepts numbered 1..20; background and void are unlabelled.
With ``classes`` (a text file, one ``<index> <name>`` or ``<index>: <name>`` per line), the
annotation folder holds another dataset's index PNGs in the same layout, e.g. Pascal-Context's 59
classes converted to PNG (``annotations="SegmentationClassContext"``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import DissectError
from .common import AnnotatedFolder, concept_frame, inside, read_index_png, require

#: VOC's classes in index order (0 is background).
VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


def read_classes(path: Path) -> list[tuple[int, str]]:
    """``<index> <name>`` or ``<index>: <name>`` lines (index 0 and blank lines skipped)."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        head, _, name = line.replace(":", " ", 1).strip().partition(" ")
        if not head.isdigit() or not name.strip():
            raise DissectError(f"{str(path)!r} line {number}: expected '<index> <name>'.")
        if int(head) > 0:
            rows.append((int(head), name.strip()))
    return rows


class PascalVOC(AnnotatedFolder):
    """VOC2012-style segmentation at ``root``."""

    def __init__(
        self,
        root: str | Path,
        split: str = "val",
        annotations: str = "SegmentationClass",
        classes: str | Path | None = None,
    ):
        self.root = Path(root)
        get = "download VOCtrainval_11-May-2012.tar and give its VOCdevkit/VOC2012 folder"
        images = require(self.root / "JPEGImages", "VOC image folder", get)
        labels = require(inside(self.root, annotations, "--annotations"), "VOC annotations", get)
        listing = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if listing.is_file():
            ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        else:
            ids = sorted(path.stem for path in labels.glob("*.png"))
        if not ids:
            raise DissectError(f"VOC: no annotation PNG in {str(labels)!r} and no {listing.name}.")
        self.items = [
            (
                name,
                inside(images, f"{name}.jpg", listing.name),
                inside(labels, f"{name}.png", listing.name),
            )
            for name in ids
        ]
        rows = read_classes(Path(classes)) if classes else list(enumerate(VOC_CLASSES, start=1))
        self.concepts = concept_frame([(n, name, "object") for n, name in rows], "VOC classes")
        top = int(self.concepts["number"].max())
        self._known = np.zeros(top + 1, dtype=bool)
        self._known[self.concepts["number"].to_numpy()] = True
        self.spec = f"voc:{self.root}" + ("" if split == "val" else f":{split}")

    def labels(self, annotation: Path) -> dict[str, np.ndarray]:
        values = read_index_png(annotation)
        top = len(self._known) - 1
        known = (values <= top) & self._known[np.clip(values, 0, top)]
        return {"object": np.where(known, values, 0).astype(np.int32)}
