"""ADE20K's scene-parsing release (ADEChallengeData2016) as a source of concept masks.

Layout (the MIT Scene Parsing benchmark's development kit)::

    ROOT/objectInfo150.csv                      Idx,Ratio,Train,Val,Name (Name: "a;b;c" synonyms)
    ROOT/sceneCategories.txt                    optional: "<image stem> <scene>" per line
    ROOT/images/{training,validation}/*.jpg
    ROOT/annotations/{training,validation}/*.png  8-bit class index per pixel, 0 = other/unlabelled

The 150 classes (things and stuff alike, as NetDissect's Broden files ADE20K's) are ``object``
concepts numbered by their index; scenes, when listed, are ``scene`` concepts numbered after them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import DissectError
from .common import AnnotatedFolder, concept_frame, paired, read_index_png, require

SPLITS = {
    "train": "training",
    "val": "validation",
    "training": "training",
    "validation": "validation",
}


class ADE20K(AnnotatedFolder):
    """ADEChallengeData2016 at ``root``, one split (``val`` by default)."""

    def __init__(self, root: str | Path, split: str = "val"):
        self.root = Path(root)
        if split not in SPLITS:
            raise DissectError(f"ADE20K split must be train or val, got {split!r}.")
        folder = SPLITS[split]
        get = "download ADEChallengeData2016.zip from the MIT Scene Parsing benchmark and unzip it"
        table = self._object_info(self.root, get)
        images = require(self.root / "images" / folder, "ADE20K image folder", get)
        annotations = require(self.root / "annotations" / folder, "ADE20K annotation folder", get)
        self.items = paired(images, annotations, ".png", f"ADE20K {folder}")
        rows = [(int(i), str(name).split(";")[0].strip(), "object") for i, name in table]
        self.scenes, scene_rows = self._scenes(len(rows))
        self.concepts = concept_frame(rows + scene_rows, "ADE20K objectInfo150")
        self._known = np.zeros(256, dtype=bool)
        self._known[[number for number, _, _ in rows if number < 256]] = True
        self.spec = f"ade20k:{self.root}" + ("" if split == "val" else f":{split}")

    @staticmethod
    def _object_info(root: Path, get: str) -> list[tuple[int, str]]:
        csv, txt = root / "objectInfo150.csv", root / "objectInfo150.txt"
        path = csv if csv.is_file() else txt
        require(path, "ADE20K class table", get)
        table = pd.read_csv(path, sep="," if path == csv else "\t", keep_default_na=False)
        table.columns = [str(c).strip() for c in table.columns]
        if not {"Idx", "Name"} <= set(table.columns):
            raise DissectError(f"{str(path)!r} lacks the Idx and Name columns of objectInfo150.")
        return list(zip(table["Idx"].astype(int), table["Name"], strict=True))

    def _scenes(self, first: int) -> tuple[dict[str, list[int]], list[tuple[int, str, str]]]:
        path = self.root / "sceneCategories.txt"
        if not path.is_file():
            return {}, []
        pairs = [line.split() for line in path.read_text(encoding="utf-8").splitlines()]
        by_stem = {words[0]: words[1] for words in pairs if len(words) == 2}
        names = sorted(set(by_stem.values()))
        number = {name: first + 1 + i for i, name in enumerate(names)}
        scenes = {
            image_id: [number[by_stem[Path(image_id).stem]]]
            for image_id, _, _ in self.items
            if Path(image_id).stem in by_stem
        }
        return scenes, [(number[name], name, "scene") for name in names]

    def labels(self, annotation: Path) -> dict[str, np.ndarray]:
        values = read_index_png(annotation)
        inside = (values >= 0) & (values < 256)
        known = np.where(inside, self._known[np.clip(values, 0, 255)], False)
        return {"object": np.where(known, values, 0).astype(np.int32)}
