"""Fixtures: tiny images and models made by the tests themselves."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))

TINY_SPEC = f"{TESTS / 'tiny_models.py'}:tiny_net"


def make_image_folder(root: Path, count: int = 12, seed: int = 0) -> Path:
    """Write ``count`` images of mixed modes, sizes and formats, plus one corrupt file."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        height, width = int(rng.integers(20, 48)), int(rng.integers(20, 48))
        pixels = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
        mode, suffix = [("RGB", ".png"), ("L", ".JPG"), ("RGBA", ".png"), ("RGB", ".bmp")][i % 4]
        folder = root / ("sub" if i % 3 == 0 else "")
        folder.mkdir(exist_ok=True)
        if mode == "L":
            image = Image.fromarray(pixels[..., 0], "L")
        else:
            image = Image.fromarray(pixels[..., : len(mode)], mode)
        image.save(folder / f"img{i:02d}{suffix}")
    (root / "broken.jpg").write_bytes(b"this is not a jpeg")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(autouse=True, scope="session")
def session_geometry_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A geometry cache for what module- and session-scoped fixtures run (they start before
    the per-test cache below); never the user's ``~/.cache``."""
    folder = tmp_path_factory.mktemp("session-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DISSECT_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(autouse=True)
def geometry_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> Path:
    """Every test's own, empty geometry cache (never the user's ``~/.cache``); child processes
    inherit it."""
    folder = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("DISSECT_CACHE_DIR", str(folder))
    monkeypatch.delenv("DISSECT_NO_CACHE", raising=False)
    return folder


@pytest.fixture(scope="module")
def contiguous_forward() -> Iterator[None]:
    """The forward in the default memory format, for the modules whose tests compare passes
    over other batches (other sizes, a per-image brute force) to the pixel. T is itself a
    feature value, so some pixel sits at T; the tiny networks' convolutions round differently
    from one batch size to another in either format (oneDNN picks its kernels by shape), and
    in channels-last format that moves pixels at these thresholds across T."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DISSECT_CHANNELS_LAST", "0")
        yield


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images")


@pytest.fixture
def tiny_spec() -> str:
    return TINY_SPEC
