"""Broden directories: export, read back, NetDissect's conventions, and untrusted paths."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dissect.cli import main
from dissect.datasets import open_data
from dissect.datasets.broden import (
    BrodenDataset,
    decode_label_png,
    encode_label_png,
    export_broden,
)
from dissect.datasets.synthetic import SyntheticWorld
from dissect.errors import DissectError


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    world = SyntheticWorld(5, seed=2)
    return world, export_broden(world, tmp_path_factory.mktemp("broden") / "out", progress=False)


def test_round_trip_gives_the_same_images_masks_and_labels(exported):
    world, folder = exported
    broden = open_data(str(folder))
    assert isinstance(broden, BrodenDataset) and len(broden) == len(world)
    assert broden.classes == world.classes
    columns = ["number", "name", "category"]
    pd.testing.assert_frame_equal(broden.concepts[columns], world.concepts[columns])
    for i in range(len(world)):
        assert broden.read_rgb(i).tobytes() == world.read_rgb(i).tobytes()
        assert broden.label(i) == world.label(i)
        ours, theirs = world.segmentation(i), broden.segmentation(i)
        assert theirs.image == ours.image
        assert sorted(theirs.pixel) == sorted(ours.pixel)
        for category, maps in ours.pixel.items():
            assert len(theirs.pixel[category]) == len(maps)
            for a, b in zip(maps, theirs.pixel[category], strict=True):
                assert b.dtype == np.int32 and (a == b).all()


def test_tables_follow_netdissect(exported):
    world, folder = exported
    labels = pd.read_csv(folder / "label.csv")
    assert list(labels.columns) == ["number", "name", "category", "frequency", "coverage", "syns"]
    # frequency: images holding the concept, counted by brute force.
    expected = dict.fromkeys(world.concepts["number"], 0)
    for i in range(len(world)):
        segmentation = world.segmentation(i)
        present = set(segmentation.image["scene"])
        for maps in segmentation.pixel.values():
            present |= set(np.unique(maps[0]).tolist()) - {0}
        for number in present:
            expected[number] += 1
    assert dict(zip(labels["number"], labels["frequency"], strict=True)) == expected
    categories = dict(zip(world.concepts["number"], world.concepts["category"], strict=True))
    assert list(labels["category"]) == [
        f"{categories[n]}({f})" for n, f in zip(labels["number"], labels["frequency"], strict=True)
    ]
    category = pd.read_csv(folder / "category.csv").set_index("name")
    objects = world.concepts[world.concepts["category"] == "object"]
    assert category.loc["object", "first"] == objects["number"].min()
    assert category.loc["object", "count"] == len(objects)
    local = pd.read_csv(folder / "c_object.csv")
    assert list(local["code"]) == list(range(1, len(objects) + 1))
    assert list(local["number"]) == list(objects["number"])
    index = pd.read_csv(folder / "index.csv", keep_default_na=False)
    assert list(index.columns[:6]) == ["image", "split", "ih", "iw", "sh", "sw"]
    assert [int(s) for s in index["scene"]] == [
        world.segmentation(i).image["scene"][0] for i in range(len(world))
    ]


def test_png_code_is_r_plus_256_g():
    labels = np.array([[0, 1, 255], [256, 300, 65535]])
    png = encode_label_png(labels)
    assert png[1, 1].tolist() == [300 % 256, 1, 0]
    assert (decode_label_png(png) == labels).all()
    with pytest.raises(DissectError, match="65535"):
        encode_label_png(np.array([[65536]]))


def _write_dataset(root, image_cell="a.jpg", object_cell="a_object.png;a_object2.png"):
    """A hand-made two-mask Broden dataset with half-resolution masks and NetDissect labels."""
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (4, 2), (10, 20, 30)).save(root / "images" / "a.jpg")
    first = np.array([[1, 2]])  # (1, 2) mask for a (2, 4) image: upsampled by 2
    Image.fromarray(encode_label_png(first)).save(root / "images" / "a_object.png")
    second = np.array([[0, 300], [300, 0]])
    Image.fromarray(encode_label_png(second)).save(root / "images" / "a_object2.png")
    pd.DataFrame(
        {
            "image": [image_cell],
            "split": ["val"],
            "ih": [2],
            "iw": [4],
            "sh": [1],
            "sw": [2],
            "object": [object_cell],
            "scene": ["400"],
            "texture": ["5;6"],
        }
    ).to_csv(root / "index.csv", index=False)
    pd.DataFrame(
        {
            "number": [0, 1, 2, 300, 400, 5, 6],
            "name": ["-", "wall", "sky", "wheel", "street-s", "banded", "dotted"],
            "category": [
                "-",
                "object(5)",
                "object(2)",
                "object(1);part(9)",
                "scene(1)",
                "texture(1)",
                "texture(1)",
            ],
            "frequency": [0, 5, 2, 10, 1, 1, 1],
            "coverage": [0] * 7,
            "syns": [""] * 7,
        }
    ).to_csv(root / "label.csv", index=False)
    return root


def test_reads_several_masks_image_labels_and_resizes(tmp_path):
    broden = BrodenDataset(_write_dataset(tmp_path / "b"))
    categories = broden.concept_categories()
    assert categories[300] == "part" and categories[1] == "object" and 0 not in categories
    assert broden.classes == ["street-s"] and broden.label(0) == 0
    segmentation = broden.segmentation(0)
    first, second = segmentation.pixel["object"]
    assert first.tolist() == [[1, 1, 2, 2], [1, 1, 2, 2]]
    assert second.tolist() == [[0, 0, 300, 300], [300, 300, 0, 0]]
    assert segmentation.image == {"scene": [400], "texture": [5, 6]}
    assert broden.read_rgb(0).shape == (2, 4, 3)


@pytest.mark.parametrize(
    "cells",
    [
        {"image_cell": "../outside.jpg"},
        {"image_cell": "/etc/passwd"},
        {"object_cell": "a_object.png;../../x.png"},
    ],
)
def test_paths_that_leave_the_dataset_are_refused(tmp_path, cells):
    root = _write_dataset(tmp_path / "b", **cells)
    with pytest.raises(DissectError, match="images/"):
        broden = BrodenDataset(root)
        broden.segmentation(0)


def test_links_out_of_the_dataset_are_refused(tmp_path):
    secret = tmp_path / "secret.jpg"
    Image.new("RGB", (4, 2)).save(secret)
    root = _write_dataset(tmp_path / "b", image_cell="link.jpg")
    os.symlink(secret, root / "images" / "link.jpg")
    with pytest.raises(DissectError, match="outside"):
        BrodenDataset(root).read_rgb(0)


def test_cli_exports_and_refuses_unsegmented_data(tmp_path, image_folder, capsys):
    assert main(["data", "export", "synthetic:3:1", str(tmp_path / "out")]) == 0
    assert len(open_data(str(tmp_path / "out"))) == 3
    assert main(["data", "export", str(image_folder), str(tmp_path / "nope")]) == 2
    assert "no concept masks" in capsys.readouterr().err
    assert not (tmp_path / "nope" / "index.csv").exists()
