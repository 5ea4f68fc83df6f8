"""A folder of image files as a DATA source (classes from first-level sub-folders)."""

from __future__ import annotations

import os
from collections.abc import Iterator
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
        #: Relative paths ("sub/name.jpg"), sorted by their parts as pathlib sorts them.
        self.paths = sorted(list_images(self.root), key=lambda path: path.split("/"))
        if not self.paths:
            raise DissectError(
                f"DATA folder {str(self.root)!r} holds no images "
                f"(looked for {', '.join(IMAGE_EXTENSIONS)} in any case, recursively)."
            )
        self.spec = str(self.root)
        if all(path.count("/") == 1 for path in self.paths):
            self.classes = sorted({path.split("/")[0] for path in self.paths})
            self._class_index = {name: i for i, name in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.paths)

    def image_id(self, index: int) -> str:
        return self.paths[index]

    def read_rgb(self, index: int) -> np.ndarray:
        return read_image_file(self.root / self.paths[index])

    def label(self, index: int) -> int:
        if self.classes is None:
            return super().label(index)
        return self._class_index[self.paths[index].split("/")[0]]


def list_images(root: Path, prefix: str = "") -> Iterator[str]:
    """Every image file under ``root`` as a relative path with ``/``, as ``root.rglob("*")``
    finds them (symbolic links to folders are not followed, unreadable sub-folders are skipped),
    but from the directory entries alone: a file is looked at (``stat``) only when its name is an
    image's and the entry cannot say what it is."""
    try:
        with os.scandir(root) as listing:
            entries = list(listing)
    except PermissionError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from list_images(Path(entry.path), f"{prefix}{entry.name}/")
        elif _suffix(entry.name).lower() in IMAGE_EXTENSIONS and entry.is_file():
            yield prefix + entry.name


def _suffix(name: str) -> str:
    """``PurePath(name).suffix``, without making a path."""
    dot = name.rfind(".")
    return name[dot:] if 0 < dot < len(name) - 1 else ""
