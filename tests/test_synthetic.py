"""The synthetic scene world: determinism, specs, concepts and mask consistency."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest

from dissect.datasets import open_data
from dissect.datasets.masks import SegmentedSource
from dissect.datasets.synthetic import IMAGE_SIZE, SyntheticWorld, open_synthetic
from dissect.datasets.synthetic.scenes import OBJECTS, PARTS, SCENES, _primitive_mask
from dissect.datasets.synthetic.textures import COLORS, color_names
from dissect.errors import DissectError


def _arrays(world: SyntheticWorld, index: int) -> list[np.ndarray]:
    segmentation = world.segmentation(index)
    maps = [segmentation.pixel[c][0] for c in ("object", "part", "material", "color")]
    return [world.read_rgb(index), *maps, np.array(segmentation.image["scene"])]


def test_same_seed_same_bytes_in_any_order():
    forward = SyntheticWorld(6, seed=3)
    first = [_arrays(forward, i) for i in range(6)]
    backward = SyntheticWorld(6, seed=3)
    for i in reversed(range(6)):
        for a, b in zip(first[i], _arrays(backward, i), strict=True):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    # A larger world with the same seed starts with the same images.
    assert SyntheticWorld(50, seed=3).read_rgb(4).tobytes() == first[4][0].tobytes()
    assert SyntheticWorld(6, seed=4).read_rgb(4).tobytes() != first[4][0].tobytes()


def test_bytes_are_pinned_across_machines_and_versions():
    # Rendering uses only correctly rounded arithmetic; this digest must not change from one
    # machine (or NumPy build) to another. If the world is changed on purpose, update it and
    # retrain the shipped model.
    world = SyntheticWorld(3, seed=11)
    digest = hashlib.sha256()
    for i in range(3):
        for array in _arrays(world, i)[:5]:
            digest.update(array.tobytes())
    assert digest.hexdigest() == (
        "ad2fcbd6d31d98de38c8861d1dcdae25bf6fb7e84702214a529b21719881d0ac"
    )


def test_specs_and_bad_specs():
    assert open_data("synthetic:5:7").spec == "synthetic:5:7"
    world = open_data("synthetic:5")
    assert isinstance(world, SegmentedSource) and (len(world), world.seed) == (5, 0)
    assert len(open_synthetic("synthetic")) == 1000
    assert open_synthetic(world.spec).read_rgb(2).tobytes() == world.read_rgb(2).tobytes()
    for bad in ("synthetic:x", "synthetic:0", "synthetic:5:-1", "synthetic:1:2:3", "synthetic:"):
        with pytest.raises(DissectError, match="synthetic"):
            open_data(bad)
    with pytest.raises(IndexError):
        world.read_rgb(5)


def test_images_ids_and_labels():
    world = SyntheticWorld(4, seed=9)
    rgb = world.read_rgb(1)
    assert rgb.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and rgb.dtype == np.uint8
    assert world.image_id(1) == "synthetic-9-000001"
    first = int(world.concepts.loc[world.concepts["category"] == "scene", "number"].min())
    for i in range(4):
        assert world.segmentation(i).image["scene"] == [first + world.label(i)]
        assert world.classes[world.label(i)] in SCENES


def test_concept_table_meets_the_world_spec():
    concepts = SyntheticWorld(1).concepts
    assert list(concepts["number"]) == list(range(1, len(concepts) + 1))
    counts = concepts["category"].value_counts()
    assert counts["object"] >= 10 and counts["material"] >= 6
    assert counts["color"] >= 8 and counts["scene"] >= 8
    assert sum(len(kind.parts) >= 2 for kind in OBJECTS) >= 5
    assert not concepts.duplicated(["category", "name"]).any()


def test_no_two_scenes_share_three_objects():
    for (_, a), (_, b) in itertools.combinations(SCENES.items(), 2):
        assert len(set(a) & set(b)) <= 2


@pytest.mark.parametrize("seed", [0, 5])
def test_masks_agree_with_each_other_and_the_image(seed):
    world = SyntheticWorld(12, seed=seed)
    names = world.concept_names()
    for i in range(12):
        segmentation = world.segmentation(i)
        objects = segmentation.pixel["object"][0]
        parts = segmentation.pixel["part"][0]
        materials = segmentation.pixel["material"][0]
        colors = segmentation.pixel["color"][0]
        for array in (objects, parts, materials, colors):
            assert array.shape == (IMAGE_SIZE, IMAGE_SIZE) and array.dtype == np.int32
        assert ((parts > 0) == (objects > 0)).all()
        for number in np.unique(parts[parts > 0]):
            owners = np.unique(objects[parts == number])
            assert [names[int(o)] for o in owners] == [names[int(number)].split(" ")[0]]
        assert (materials > 0).all() and (colors > 0).all()
        first_color = int(world.concepts.loc[world.concepts["category"] == "color", "number"].min())
        assert (colors == color_names(world.read_rgb(i)) + first_color).all()
        assert len(np.unique(objects[objects > 0])) >= 2


def test_color_names_by_hand():
    pixels = np.array(
        [
            [[220, 20, 20], [20, 40, 220], [30, 200, 40], [240, 220, 40], [5, 5, 5]],
            [[250, 250, 250], [128, 128, 128], [120, 70, 30], [240, 130, 180], [130, 40, 170]],
        ],
        dtype=np.uint8,
    )
    expected = [
        ["red", "blue", "green", "yellow", "black"],
        ["white", "grey", "brown", "pink", "purple"],
    ]
    assert [[COLORS[i] for i in row] for row in color_names(pixels)] == expected


@pytest.fixture(scope="module")
def world_300():
    """``synthetic:300``: every image's concept numbers, object / part pixel counts, and the
    height in pixels of every object class visible in an image (rows it occupies)."""
    world = SyntheticWorld(300)
    present, object_pixels, part_pixels = [], np.zeros(len(OBJECTS)), np.zeros(len(PARTS))
    heights = []
    for i in range(len(world)):
        segmentation = world.segmentation(i)
        numbers = {int(n) for maps in segmentation.pixel.values() for n in np.unique(maps[0])}
        present.append((numbers | set(segmentation.image["scene"])) - {0})
        rendered = world.render(i)
        object_pixels += np.bincount(rendered.object[rendered.object >= 0], minlength=len(OBJECTS))
        part_pixels += np.bincount(rendered.part[rendered.part >= 0], minlength=len(PARTS))
        for k in np.unique(rendered.object[rendered.object >= 0]):
            rows = np.nonzero((rendered.object == k).any(1))[0]
            heights.append(rows[-1] - rows[0] + 1)
    return world, present, object_pixels, part_pixels, np.array(heights)


def test_every_concept_occurs_in_a_few_hundred_images(world_300):
    world, present, _, _, _ = world_300
    images = {
        f"{row.category} {row.name}": sum(row.number in numbers for numbers in present)
        for row in world.concepts.itertuples()
    }
    assert {name: count for name, count in images.items() if count < 10} == {}


def test_every_part_is_a_proper_piece_of_its_object(world_300):
    # Over all the images, each part covers some but not all of its object's pixels: a part
    # that paints nothing, or that is the whole object (lamp pole = lamp), fails.
    _, _, object_pixels, part_pixels, _ = world_300
    index = {kind.name: i for i, kind in enumerate(OBJECTS)}
    shares = {
        f"{obj} {part}": part_pixels[i] / object_pixels[index[obj]]
        for i, (obj, part) in enumerate(PARTS)
    }
    assert {name: share for name, share in shares.items() if not 0.05 <= share <= 0.95} == {}


def test_objects_are_small_enough_for_whole_object_units(world_300):
    # A conv5 cell of the built-in networks is 16 px: most objects span one or two of them, so
    # a unit's thresholded blob (about 0.5 % of the pixels) can cover a whole object. Each
    # object class covers at most about 2 % of all pixels (issue 13: at twice these heights,
    # median 48 px, the house 6 % of the pixels, conv5 units settled on parts).
    _, _, object_pixels, _, heights = world_300
    assert 16 <= np.median(heights) <= 32
    assert np.percentile(heights, 90) <= 40
    assert object_pixels.max() / (300 * IMAGE_SIZE**2) <= 0.02


POLYGONS = [
    params for kind in OBJECTS for _, shape, params in kind.primitives if shape == "poly"
] + [((0.1, 0.1), (0.9, 0.1), (0.5, 0.5), (0.9, 0.9), (0.1, 0.9))]  # not convex


@pytest.mark.parametrize("vertices", POLYGONS)
def test_polygons_paint_the_same_pixels_in_either_vertex_order(vertices):
    grid = (np.arange(200, dtype=np.float32) + 0.5) / 200
    u, v = grid[None, :], grid[:, None]
    mask = _primitive_mask("poly", vertices, u, v)
    corners = np.array(vertices)
    area = 0.5 * abs(np.dot(corners[:, 0], np.roll(corners[:, 1], -1))
                     - np.dot(corners[:, 1], np.roll(corners[:, 0], -1)))  # fmt: skip
    assert abs(mask.mean() - area) < 0.02
    for start in range(len(vertices)):
        rotated = vertices[start:] + vertices[:start]
        assert (_primitive_mask("poly", rotated, u, v) == mask).all()
        assert (_primitive_mask("poly", rotated[::-1], u, v) == mask).all()


def test_a_rectangle_polygon_paints_what_rect_paints():
    # Pixel centres on the rectangle's edges, so the half-open rule is exercised too.
    grid = np.arange(40, dtype=np.float32) / 40
    u, v = grid[None, :], grid[:, None]
    corners = ((0.25, 0.125), (0.75, 0.125), (0.75, 0.625), (0.25, 0.625))
    rect = _primitive_mask("rect", (0.25, 0.125, 0.75, 0.625), u, v)
    assert rect.sum() == 20 * 20
    assert (_primitive_mask("poly", corners, u, v) == rect).all()
    assert (_primitive_mask("poly", corners[::-1], u, v) == rect).all()
