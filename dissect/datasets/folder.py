"""A folder of image files as a DATA source (classes from first-level sub-folders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DissectError
from ..images import IMAGE_EXTENSIONS, ImageSource, read_image_file


class ImageFolder(ImageSource):
    """Every image file under a folder, searched recursively, sorted by relative path.

    If every image sits in a first-level sub-folder, the sub-folder names are the classes.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DissectError(f"DATA folder {str(self.root)!r} does not exist or is not a folder.")
        self.paths = sorted(
            path.relative_to(self.root)
            for path in self.root.rglob("*")
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
        )
        if not self.paths:
            raise DissectError(
                f"DATA folder {str(self.root)!r} holds no images "
                f"(looked for {', '.join(IMAGE_EXTENSIONS)} in any case, recursively)."
            )
        self.spec = str(self.root)
        if all(len(path.parts) == 2 for path in self.paths):
            self.classes = sorted({path.parts[0] for path in self.paths})
            self._class_index = {name: i for i, name in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.paths)

    def image_id(self, index: int) -> str:
        return self.paths[index].as_posix()

    def read_rgb(self, index: int) -> np.ndarray:
        return read_image_file(self.root / self.paths[index])

    def label(self, index: int) -> int:
        if self.classes is None:
            return super().label(index)
        return self._class_index[self.paths[index].parts[0]]
