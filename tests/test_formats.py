"""ADE20K, Pascal VOC, COCO panoptic and Cityscapes read from tiny hand-made samples in each
dataset's published layout, checked pixel by pixel, directly and after `dissect data import`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dissect.cli import main
from dissect.datasets import BrodenDataset, open_data
from dissect.datasets.formats import open_format
from dissect.errors import DissectError


def _photo(path: Path, height: int = 6, width: int = 8, seed: int = 0) -> np.ndarray:
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)  # PNG even when named .jpg: lossless pixels to compare
    return rgb


def _index_png(path: Path, values: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(values.astype(np.uint8), mode="P" if palette else "L")
    if palette:  # VOC's colour map: the stored index, not the colour, is the class
        image.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
    image.save(path)


def _ade(root: Path) -> np.ndarray:
    root.mkdir(parents=True, exist_ok=True)
    (root / "objectInfo150.csv").write_text(
        "Idx,Ratio,Train,Val,Name\n1,0.15,11664,1172,wall\n2,0.10,6046,612,building;edifice\n"
        "3,0.09,8265,796,sky\n"
    )
    scenes = "ADE_val_00000001 bathroom\nADE_val_00000002 street\n"
    (root / "sceneCategories.txt").write_text(scenes)
    labels = np.array([[0, 1, 1, 2], [3, 3, 2, 2], [9, 0, 1, 3]])
    for n in (1, 2):
        _photo(root / "images/validation" / f"ADE_val_0000000{n}.jpg", 3, 4, n)
        _index_png(root / "annotations/validation" / f"ADE_val_0000000{n}.png", labels * (n == 1))
    return labels


def test_ade20k_masks_names_and_scenes(tmp_path):
    labels = _ade(tmp_path / "ADEChallengeData2016")
    source = open_data(f"ade20k:{tmp_path / 'ADEChallengeData2016'}")
    assert len(source) == 2
    names = source.concept_names()
    assert [names[n] for n in (1, 2, 3)] == ["wall", "building", "sky"]
    found = source.segmentation(0)
    expected = np.where(labels == 9, 0, labels)  # 9 is not in the class table
    np.testing.assert_array_equal(found.pixel["object"][0], expected)
    scene = found.image["scene"][0]
    assert names[scene] == "bathroom" and source.concept_categories()[scene] == "scene"
    assert not source.segmentation(1).pixel["object"][0].any()


def _voc(root: Path) -> np.ndarray:
    labels = np.array([[0, 15, 15, 255], [7, 7, 255, 0]])
    for name in ("2007_000032", "2007_000039"):
        _photo(root / "JPEGImages" / f"{name}.jpg", 2, 4)
        _index_png(root / "SegmentationClass" / f"{name}.png", labels, palette=True)
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    (root / "ImageSets/Segmentation/val.txt").write_text("2007_000039\n")
    return labels


def test_voc_palette_png_void_and_background_unlabelled(tmp_path):
    _voc(tmp_path)
    source = open_format("voc", tmp_path)
    assert len(source) == 1 and source.image_id(0) == "2007_000039"
    got = source.segmentation(0).pixel["object"][0]
    np.testing.assert_array_equal(got, [[0, 15, 15, 0], [7, 7, 0, 0]])
    assert source.concept_names()[15] == "person" and source.concept_names()[7] == "car"
    assert len(open_format("voc", tmp_path, "train")) == 2  # no train.txt: every PNG


def test_voc_layout_with_another_class_list(tmp_path):
    _voc(tmp_path)
    (tmp_path / "labels.txt").write_text("0: background\n7: cup\n15: sky\n")
    source = open_format("voc", tmp_path, classes=tmp_path / "labels.txt")
    assert source.concept_names() == {7: "cup", 15: "sky"}
    (tmp_path / "clash.txt").write_text("7 cup\n15 cup\n")
    with pytest.raises(DissectError, match="class names collide"):
        open_format("voc", tmp_path, classes=tmp_path / "clash.txt")


def _coco(root: Path, file_name: str = "000000000139.png") -> np.ndarray:
    ids = np.array([[0, 300, 300], [70000, 70000, 5]])  # 5: a segment of no listed category
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    (root / "annotations/panoptic_val2017").mkdir(parents=True)
    Image.fromarray(rgb).save(root / "annotations/panoptic_val2017/000000000139.png")
    _photo(root / "val2017/000000000139.jpg", 2, 3)
    data = {
        "images": [{"id": 139, "file_name": "000000000139.jpg", "height": 2, "width": 3}],
        "annotations": [
            {
                "image_id": 139,
                "file_name": file_name,
                "segments_info": [
                    {"id": 300, "category_id": 1, "iscrowd": 0},
                    {"id": 70000, "category_id": 187, "iscrowd": 0},
                    {"id": 5, "category_id": 999, "iscrowd": 0},
                ],
            }
        ],
        "categories": [
            {"id": 1, "name": "person", "isthing": 1, "supercategory": "person"},
            {"id": 187, "name": "sky-other-merged", "isthing": 0, "supercategory": "sky"},
        ],
    }
    (root / "annotations/panoptic_val2017.json").write_text(json.dumps(data))
    return ids


def test_coco_panoptic_ids_things_and_stuff(tmp_path):
    _coco(tmp_path)
    source = open_data(f"coco-panoptic:{tmp_path}")
    found = source.segmentation(0).pixel
    np.testing.assert_array_equal(found["object"][0], [[0, 1, 1], [0, 0, 0]])
    np.testing.assert_array_equal(found["region"][0], [[0, 0, 0], [187, 187, 0]])
    assert source.concept_categories() == {1: "object", 187: "region"}


def test_coco_file_name_outside_its_folder_is_refused(tmp_path):
    _coco(tmp_path, "../../../etc/passwd")
    with pytest.raises(DissectError, match="outside the dataset folder"):
        open_format("coco-panoptic", tmp_path)


def _cityscapes(root: Path) -> np.ndarray:
    labels = np.array([[0, 7, 26, 26], [23, 23, 24, 3]])
    stem = "frankfurt_000000_000294"
    _photo(root / "leftImg8bit/val/frankfurt" / f"{stem}_leftImg8bit.png", 2, 4)
    _index_png(root / "gtFine/val/frankfurt" / f"{stem}_gtFine_labelIds.png", labels)
    return labels


def test_cityscapes_label_ids(tmp_path):
    _cityscapes(tmp_path)
    source = open_format("cityscapes", tmp_path)
    found = source.segmentation(0).pixel
    np.testing.assert_array_equal(found["object"][0], [[0, 0, 26, 26], [0, 0, 24, 0]])
    np.testing.assert_array_equal(found["region"][0], [[0, 7, 0, 0], [23, 23, 0, 0]])
    names = source.concept_names()
    assert (names[26], names[24], names[23], names[7]) == ("car", "person", "sky", "road")


@pytest.mark.parametrize("kind", ["ade20k", "voc", "coco-panoptic", "cityscapes"])
def test_import_writes_the_same_masks_in_the_broden_layout(tmp_path, kind, capsys):
    src = tmp_path / "src"
    {"ade20k": _ade, "voc": _voc, "coco-panoptic": _coco, "cityscapes": _cityscapes}[kind](src)
    assert main(["data", "import", "--from", kind, str(src), str(tmp_path / "out")]) == 0
    original, broden = open_format(kind, src), open_data(str(tmp_path / "out"))
    assert isinstance(broden, BrodenDataset) and len(broden) == len(original)
    names = {(c, n): k for k, n, c in broden.concepts[["number", "name", "category"]].values}
    for index in range(len(original)):
        np.testing.assert_array_equal(broden.read_rgb(index), original.read_rgb(index))
        mine, theirs = original.segmentation(index), broden.segmentation(index)
        for category, maps in mine.pixel.items():
            lookup = np.zeros(int(maps[0].max()) + 1, dtype=np.int64)
            for number, name in original.concept_names().items():
                if (category, name) in names and number < len(lookup):
                    lookup[number] = names[(category, name)]
            want = lookup[maps[0]]
            np.testing.assert_array_equal(theirs.pixel[category][0], want)


@pytest.mark.parametrize("kind", ["ade20k", "voc", "coco-panoptic", "cityscapes"])
def test_missing_annotations_are_one_line(tmp_path, kind, capsys):
    src = tmp_path / "src"
    {"ade20k": _ade, "voc": _voc, "coco-panoptic": _coco, "cityscapes": _cityscapes}[kind](src)
    folder = {
        "ade20k": "annotations",
        "voc": "SegmentationClass",
        "coco-panoptic": "annotations",
        "cityscapes": "gtFine",
    }[kind]
    for path in sorted((src / folder).rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (src / folder).rmdir()
    assert main(["data", "import", "--from", kind, str(src), str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing" in err[0], err
    assert not (tmp_path / "out" / "index.csv").exists()


def test_one_missing_annotation_skips_that_image(tmp_path):
    _ade(tmp_path)
    (tmp_path / "annotations/validation/ADE_val_00000002.png").unlink()
    source = open_format("ade20k", tmp_path)
    from dissect.images import ImageReadError

    with pytest.raises(ImageReadError, match="missing"):
        source.segmentation(1)
