"""Broden-format datasets (NetDissect): read them as a source, and export any segmented source.

A Broden directory holds:

- ``index.csv``: ``image,split,ih,iw,sh,sw`` then one column per category. ``image`` is a path
  under ``images/``. A pixel-level cell lists label PNGs (paths under ``images/``, several
  separated by ``;``); an image-level cell (``scene``, Broden's whole-image ``texture``) lists
  concept numbers the same way.
- ``images/``: the images and label PNGs; a PNG pixel's concept number is ``R + 256 * G``.
- ``label.csv``: ``number,name,category,frequency,coverage,syns``; ``category`` as NetDissect
  writes it, ``object(120);part(3)`` (category and image count; the largest count wins).
- ``category.csv``: ``name,first,last,count,frequency``.
- ``c_<category>.csv``: ``code,number,name,frequency,coverage`` (category-local codes).
"""

from __future__ import annotations

import csv
import functools
import posixpath
import re
import warnings
from collections import defaultdict
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from ..errors import DissectError
from ..images import ImageReadError, read_image_file
from ..io import atomic_path, read_csv, write_csv
from ..lock import writes
from .masks import CATEGORIES, Segmentation, SegmentedSource

_CATEGORY_COUNT = re.compile(r"^\s*([^()]+?)\s*(?:\((\d+)\))?\s*$")


def _primary_category(text: str) -> str:
    """``object(120);part(3)`` -> ``object`` (the category with the largest count)."""
    best, best_count = "", -1
    for field in str(text).split(";"):
        match = _CATEGORY_COUNT.match(field)
        if match:
            count = int(match.group(2)) if match.group(2) else 0
            if count > best_count:
                best, best_count = match.group(1), count
    return best


def _safe_relative(text: str, where: str) -> str:
    """Refuse a path from an imported file that is absolute or climbs out of its folder."""
    normal = posixpath.normpath(text.replace("\\", "/"))
    if not text or normal.startswith("/") or normal == ".." or normal.startswith("../"):
        raise DissectError(
            f"{where}: path {text!r} leaves the dataset's images/ folder; Broden paths must be "
            "relative paths inside images/. Fix or remove that row."
        )
    return normal


def decode_label_png(rgb: np.ndarray) -> np.ndarray:
    """Concept numbers ``R + 256 * G`` of a Broden label image (H, W, 3)."""
    rgb = np.asarray(rgb)
    return rgb[..., 0].astype(np.int32) + 256 * rgb[..., 1].astype(np.int32)


def encode_label_png(labels: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 with ``R = n % 256``, ``G = n // 256`` for concept numbers < 65536."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.min(initial=0) < 0 or labels.max(initial=0) >= 65536:
        raise DissectError("concept numbers must lie in 0..65535 to be stored in a Broden PNG.")
    out = np.zeros((*labels.shape, 3), dtype=np.uint8)
    out[..., 0] = labels % 256
    out[..., 1] = labels // 256
    return out


class BrodenDataset(SegmentedSource):
    """A dataset in NetDissect's Broden layout (see the module docstring).

    Parameters
    ----------
    path : path-like
        The directory holding ``index.csv``, ``label.csv`` and ``images/``.
    """

    def __init__(self, path: str | Path):
        self.root = Path(path)
        self.images_dir = self.root / "images"
        for name in ("index.csv", "label.csv"):
            if not (self.root / name).is_file():
                raise DissectError(
                    f"{str(self.root)!r} is not a Broden directory: {name} is missing."
                )
        self.index = self._read_csv("index.csv")
        if "image" not in self.index.columns:
            raise DissectError(f"{self.root / 'index.csv'} has no 'image' column.")
        labels = self._read_csv("label.csv")
        if not {"number", "name", "category"} <= set(labels.columns):
            raise DissectError(
                f"{self.root / 'label.csv'} needs columns number,name,category (Broden's)."
            )
        labels = labels[labels["number"].str.strip() != "0"]
        bad = labels.index[~labels["number"].str.strip().str.fullmatch(r"[0-9]{1,9}")]
        if len(bad):
            raise DissectError(
                f"{self.root / 'label.csv'}, line {bad[0] + 2}: concept number "
                f"{labels['number'][bad[0]]!r} is not a whole number; fix label.csv."
            )
        self.concepts = pd.DataFrame(
            {
                "number": labels["number"].astype(int).to_numpy(),
                "name": labels["name"].to_numpy(),
                "category": [_primary_category(text) for text in labels["category"]],
            }
        )
        self.categories = [c for c in self.index.columns if c in set(CATEGORIES)] + [
            c for c in self.index.columns if c in set(self.concepts["category"]) - set(CATEGORIES)
        ]
        for row, cell in enumerate(self.index["image"]):
            _safe_relative(cell, f"index.csv row {row + 1}")
        self.spec = str(self.root)
        self._known = np.unique(self.concepts["number"].to_numpy())
        #: Pixels (of the label images) of each concept number that label.csv does not list.
        self.unknown_codes: dict[int, int] = {}
        scenes = self.concepts[self.concepts["category"] == "scene"].sort_values("number")
        if "scene" in self.index.columns and len(scenes):
            self.classes = list(scenes["name"])
            self._scene_class = {int(n): i for i, n in enumerate(scenes["number"])}

    def _read_csv(self, name: str) -> pd.DataFrame:
        _check_fields(self.root / name)
        try:
            return read_csv(self.root / name, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
            raise DissectError(f"cannot read {self.root / name}: {error}") from error

    def __len__(self) -> int:
        return len(self.index)

    @functools.cached_property
    def _rows(self) -> list[dict[str, str]]:
        """index.csv's rows as dicts (a pandas row per image costs more than reading its
        label images)."""
        return self.index.to_dict("records")

    @functools.cached_property
    def _images_root(self) -> Path:
        return self.images_dir.resolve()

    def _path(self, text: str, row: int) -> Path:
        relative = _safe_relative(text, f"index.csv row {row + 1}")
        path = (self.images_dir / relative).resolve()
        if self._images_root not in path.parents:
            raise DissectError(
                f"index.csv row {row + 1}: {text!r} resolves outside {str(self.images_dir)!r} "
                "(a link?); dissect reads only files inside the dataset."
            )
        return path

    def image_id(self, index: int) -> str:
        return self._rows[index]["image"]

    def read_rgb(self, index: int) -> np.ndarray:
        return read_image_file(self._path(self.image_id(index), index))

    def _image_size(self, index: int) -> tuple[int, int]:
        """The image's (height, width) as read from its file (the masks must line up with it).

        ``ih,iw`` of index.csv that disagree with the file are reported, not followed.
        """
        row = self._rows[index]
        try:
            with Image.open(self._path(row["image"], index)) as image:
                size = image.size[1], image.size[0]
        except (OSError, ValueError, SyntaxError) as error:
            raise ImageReadError(f"cannot read image {row['image']!r}: {error}") from error
        stated = row.get("ih", ""), row.get("iw", "")
        if all(text.isdigit() for text in stated) and tuple(map(int, stated)) != size:
            warnings.warn(
                f"index.csv row {index + 1}: ih,iw = {','.join(stated)} but "
                f"{row['image']!r} is {size[0]}x{size[1]}; its masks are fitted to the image.",
                stacklevel=2,
            )
        return size

    def _decode(self, image: Image.Image, token: str) -> np.ndarray:
        """Concept numbers of a label image: R + 256 G, or the value itself in a grey PNG."""
        if image.mode in ("L", "I", "I;16", "I;16B", "I;16L"):
            labels = np.asarray(image).astype(np.int32)
        else:
            labels = decode_label_png(
                np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
            )
        unknown = (labels != 0) & ~np.isin(labels, self._known)  # a lookup table: numbers are small
        if not unknown.any():
            return labels
        codes, counts = np.unique(labels[unknown], return_counts=True)
        for code, count in zip(codes.tolist(), counts.tolist(), strict=True):
            if code not in self.unknown_codes:
                warnings.warn(
                    f"label image {token!r} holds concept number {code}, which label.csv "
                    "does not list: its pixels count as unlabelled (counted in "
                    "unknown_codes).",
                    stacklevel=3,
                )
            self.unknown_codes[code] = self.unknown_codes.get(code, 0) + count
        return labels

    def segmentation(self, index: int) -> Segmentation:
        row = self._rows[index]
        size = None
        result = Segmentation()
        for category in self.categories:
            for token in filter(None, (t.strip() for t in row[category].split(";"))):
                if token.isdigit():
                    result.image.setdefault(category, []).append(int(token))
                    continue
                path = self._path(token, index)
                try:
                    with Image.open(path) as image:
                        labels = self._decode(image, token)
                except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
                    # The image is skipped and listed, as an unreadable image is.
                    raise ImageReadError(f"cannot read label image {token!r}: {error}") from error
                size = size or self._image_size(index)
                if labels.shape != size:
                    labels = np.asarray(
                        Image.fromarray(labels).resize(size[::-1], Image.Resampling.NEAREST)
                    )
                result.pixel.setdefault(category, []).append(labels.astype(np.int32))
        return result

    def label(self, index: int) -> int:
        if self.classes is None:
            return super().label(index)
        cell = self.index["scene"].iloc[index]
        numbers = [int(t) for t in cell.split(";") if t.strip().isdigit()]
        if not numbers or numbers[0] not in self._scene_class:
            raise DissectError(
                f"{self.image_id(index)!r} has no known scene label in index.csv ({cell!r})."
            )
        return self._scene_class[numbers[0]]


def _check_fields(path: Path) -> None:
    """Refuse a CSV whose record has another number of fields than its header (truncated)."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle, strict=True)
            header = next(reader, [])
            for record in reader:
                if record and len(record) != len(header):
                    raise DissectError(
                        f"{path}, line {reader.line_num}: {len(record)} field(s) where the "
                        f"header has {len(header)}; the file is truncated or malformed (a "
                        "missing field would read as 'no labels')."
                    )
    except (csv.Error, UnicodeDecodeError) as error:
        raise DissectError(f"cannot read {path}: {error}") from error


def _stem(image_id: str) -> str:
    """A relative file stem for an image id, with any ``..`` or root removed."""
    path = PurePosixPath(image_id.replace("\\", "/"))
    parts = [part for part in path.with_suffix("").parts if part not in ("/", "..", ".")]
    return "/".join(parts) or "image"


def _save_png(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


@writes("outdir")
def export_broden(source: SegmentedSource, outdir: str | Path, progress: bool = True) -> Path:
    """Write ``source`` (images and concept labels) as a Broden directory.

    Parameters
    ----------
    source : SegmentedSource
        The synthetic world, a Broden dataset, or any other segmented source.
    outdir : path-like
        The directory to create; images and label PNGs go to ``outdir/images``. ``index.csv``
        is written last, so a directory interrupted half-way is not mistaken for a dataset.
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    Path
        ``outdir``.
    """
    if not isinstance(source, SegmentedSource):
        raise DissectError(
            f"DATA {source.spec!r} has no concept masks to export; use the synthetic world "
            "(synthetic:N[:SEED]) or a Broden directory."
        )
    outdir = Path(outdir)
    categories_of = source.concept_categories()
    order = [c for c in CATEGORIES if c in set(categories_of.values())]
    order += sorted(set(categories_of.values()) - set(order))
    frequency: dict[tuple[int, str], int] = defaultdict(int)
    coverage: dict[tuple[int, str], float] = defaultdict(float)
    category_images: dict[str, int] = defaultdict(int)
    rows = []
    for index in tqdm(range(len(source)), desc="export", unit="img", disable=not progress):
        try:
            rgb = source.read_rgb(index)
            segmentation = source.segmentation(index)
        except ImageReadError as error:
            warnings.warn(f"skipped image {source.image_id(index)!r}: {error}", stacklevel=2)
            continue
        stem = _stem(source.image_id(index))
        image_name = f"{stem}.png"
        _save_png(outdir / "images" / image_name, rgb)
        row = {"image": image_name, "split": "train", "ih": rgb.shape[0], "iw": rgb.shape[1]}
        row.update(sh=rgb.shape[0], sw=rgb.shape[1])
        for category in order:
            cells: list[str] = []
            present: dict[int, float] = defaultdict(float)
            for k, labels in enumerate(segmentation.pixel.get(category, [])):
                name = f"{stem}_{category}{'' if k == 0 else f'_{k}'}.png"
                _save_png(outdir / "images" / name, encode_label_png(labels))
                cells.append(name)
                numbers, counts = np.unique(labels[labels > 0], return_counts=True)
                for number, count in zip(numbers.tolist(), counts.tolist(), strict=True):
                    present[number] += count / labels.size
            for number in segmentation.image.get(category, []):
                cells.append(str(number))
                present[int(number)] = 1.0
            for number, fraction in present.items():
                frequency[(number, category)] += 1
                coverage[(number, category)] += fraction
            category_images[category] += bool(present)
            row[category] = ";".join(cells)
        rows.append(row)
    _write_tables(outdir, source, order, frequency, coverage, category_images)
    write_csv(outdir / "index.csv", pd.DataFrame(rows, columns=[*_INDEX_COLUMNS, *order]))
    return outdir


_INDEX_COLUMNS = ("image", "split", "ih", "iw", "sh", "sw")


def _write_tables(outdir, source, order, frequency, coverage, category_images) -> None:
    """label.csv, category.csv and c_<category>.csv from the export's counts."""
    concepts = source.concepts.sort_values("number")
    labels, per_category = [], defaultdict(list)
    for number, name, category in concepts[["number", "name", "category"]].itertuples(index=False):
        count = frequency.get((int(number), category), 0)
        mean_cover = coverage.get((int(number), category), 0.0) / count if count else 0.0
        labels.append((int(number), name, f"{category}({count})", count, mean_cover, ""))
        per_category[category].append((int(number), name, count, mean_cover))
    columns = ["number", "name", "category", "frequency", "coverage", "syns"]
    write_csv(outdir / "label.csv", pd.DataFrame(labels, columns=columns))
    categories = []
    for category in order:
        entries = per_category.get(category, [])
        numbers = [entry[0] for entry in entries]
        categories.append(
            (
                category,
                min(numbers, default=0),
                max(numbers, default=0),
                len(entries),
                category_images.get(category, 0),
            )
        )
        table = pd.DataFrame(
            [(code, *entry) for code, entry in enumerate(entries, start=1)],
            columns=["code", "number", "name", "frequency", "coverage"],
        )
        write_csv(outdir / f"c_{category}.csv", table)
    write_csv(
        outdir / "category.csv",
        pd.DataFrame(categories, columns=["name", "first", "last", "count", "frequency"]),
    )
