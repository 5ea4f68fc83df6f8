"""Image folders and preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dissect.datasets import ImageFolder, open_data
from dissect.errors import DissectError
from dissect.images import IMAGE_EXTENSIONS, ImageReadError, Preprocess


def test_folder_is_recursive_sorted_and_any_case(image_folder):
    source = open_data(str(image_folder))
    ids = [source.image_id(i) for i in range(len(source))]
    assert ids == sorted(ids)
    assert "broken.jpg" in ids and "notes.txt" not in ids
    assert any(name.startswith("sub/") for name in ids)
    assert any(name.endswith(".JPG") for name in ids)
    assert len(source) == 13


def test_grey_and_rgba_become_rgb(image_folder):
    source = ImageFolder(image_folder)
    for i in range(len(source)):
        if source.image_id(i) == "broken.jpg":
            with pytest.raises(ImageReadError):
                source.read_rgb(i)
            continue
        rgb = source.read_rgb(i)
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3


def test_rgba_composited_on_white(tmp_path):
    pixels = np.zeros((4, 4, 4), np.uint8)  # fully transparent black
    Image.fromarray(pixels, "RGBA").save(tmp_path / "clear.png")
    assert (ImageFolder(tmp_path).read_rgb(0) == 255).all()


def test_preprocess_resizes_and_crops_odd_sizes():
    rgb = np.random.default_rng(0).integers(0, 256, (37, 61, 3), dtype=np.uint8)
    preprocess = Preprocess(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert preprocess.display(rgb).shape == (32, 32, 3)
    tensor = preprocess.tensor(rgb)
    assert tensor.shape == (3, 32, 32)
    assert -1.0 <= tensor.min() and tensor.max() <= 1.0


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(DissectError, match="neither an existing folder"):
        open_data(str(tmp_path / "missing"))
    with pytest.raises(DissectError, match="holds no images"):
        open_data(str(tmp_path))


def test_class_subfolders_give_labels(tmp_path):
    for name in ("beach", "forest"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / name / "a.png")
    source = ImageFolder(tmp_path)
    assert source.classes == ["beach", "forest"]
    assert [source.label(i) for i in range(2)] == [0, 1]


def test_written_files_are_readable_by_others(tmp_path):
    from dissect.io import write_text

    write_text(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644


def test_folder_listing_is_the_one_pathlib_gives(tmp_path):
    """The listing from directory entries finds and orders what ``rglob("*")`` did."""
    root = tmp_path / "images"
    names = [
        "a/b.jpg",
        "a.b/c.JPG",
        "a-b.png",
        "A/z.webp",
        ".hidden.png",
        "..jpg",
        "x..Tif",
        "deep/er/still/img.bmp",
        "notes.txt",
        "trail.",
        "d.png/inside.jpeg",
        "noext",
    ]
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    (root / "link.jpg").symlink_to(root / "a-b.png")  # a link to a file counts
    (root / "linked").symlink_to(root / "a")  # a link to a folder is not followed
    (root / "broken.png").symlink_to(root / "missing.png")
    before = sorted(
        path.relative_to(root)
        for path in root.rglob("*")
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
    )
    assert ImageFolder(root).paths == [path.as_posix() for path in before]
    assert len(before) == 10
