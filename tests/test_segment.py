"""Segmentation of top images: hand-computed masks on toy maps, brute force on a tiny network."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dissect.cli import main
from dissect.dissection import Dissection, load_dissected_model, open_dissected_data
from dissect.errors import DissectError
from dissect.geometry import LayerGeometry
from dissect.hooks import LayerTrace
from dissect.images import Preprocess
from dissect.segment import PICTURES, iter_segments, write_segments
from dissect.segment.pictures import boundary, crop, crop_box, dim_outside, image_grid, outline
from dissect.segment.rules import disk_masks, peak_thresholds, threshold_masks
from dissect.streaming import run_dissection
from dissect.upsample import upsample_maps

PREPROCESS = Preprocess(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))

# A 2x2 map with one hot feature at (0, 1), stride 2, offset 0.5, upsampled to 4x4 px: pixel p
# sits at feature coordinate clamp((p - 0.5) / 2, 0, 1) = 0, 0.25, 0.75, 1, so the value is
# 4 * (1 - fy) * fx.
TOY_GEOMETRY = LayerGeometry("toy", "Conv2d", (1, 2, 2), (3, 3), (2.0, 2.0), (0.5, 0.5))
TOY_UPSAMPLED = np.array(
    [
        [0, 1, 3, 4],
        [0, 0.75, 2.25, 3],
        [0, 0.25, 0.75, 1],
        [0, 0, 0, 0],
    ],
    dtype=np.float32,
)


def toy_upsampled() -> np.ndarray:
    maps = torch.tensor([[[[0.0, 4.0], [0.0, 0.0]]]])
    return upsample_maps(maps, TOY_GEOMETRY, (4, 4))[0, 0].numpy()


def test_toy_map_masks_by_hand():
    upsampled = toy_upsampled()
    np.testing.assert_allclose(upsampled, TOY_UPSAMPLED, atol=1e-6)
    unit_mask = threshold_masks(upsampled, 0.9)
    expected = np.array(
        [[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]],
        dtype=bool,
    )
    np.testing.assert_array_equal(unit_mask, expected)
    half_peak = threshold_masks(upsampled, peak_thresholds(upsampled, 0.5))
    np.testing.assert_array_equal(
        half_peak, np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]], bool)
    )
    assert crop_box(unit_mask) == (0, 1, 3, 4)
    assert crop_box(unit_mask, margin=1) == (0, 0, 4, 4)
    assert crop_box(np.zeros((4, 5), bool)) == (0, 0, 4, 5)


def test_masks_broadcast_one_threshold_per_map():
    maps = np.stack([TOY_UPSAMPLED, TOY_UPSAMPLED * 2])
    masks = threshold_masks(maps, np.array([2.5, 2.5]))
    assert masks[0].sum() == 3 and masks[1].sum() == 4
    np.testing.assert_allclose(peak_thresholds(maps, 0.25), [1.0, 2.0])
    with pytest.raises(DissectError, match="--peak-fraction"):
        peak_thresholds(maps, 1.5)


def test_dim_outline_crop_and_grid_by_hand():
    image = np.full((5, 5, 3), 200, np.uint8)
    mask = np.zeros((5, 5), bool)
    mask[1:4, 1:4] = True
    dimmed = dim_outside(image, mask, dim=0.25)
    assert (dimmed[mask] == 200).all() and (dimmed[~mask] == 50).all()
    edge = boundary(mask)
    expected_edge = mask.copy()
    expected_edge[2, 2] = False
    np.testing.assert_array_equal(edge, expected_edge)
    drawn = outline(image, mask, color=(255, 0, 0))
    assert (drawn[expected_edge] == [255, 0, 0]).all()
    assert (drawn[~expected_edge] == 200).all()
    np.testing.assert_array_equal(outline(image, np.zeros((5, 5), bool)), image)
    assert crop(image, mask).shape == (3, 3, 3)
    grid = image_grid([np.zeros((2, 3, 3), np.uint8), np.zeros((4, 2, 3), np.uint8)], pad=1)
    assert grid.shape == (1 + 4 + 1, 1 + 3 + 1 + 3 + 1, 3)
    assert (grid[1:3, 1:4] == 0).all() and (grid[3:5, 1:4] == 255).all()
    assert (grid[1:5, 5:7] == 0).all() and (grid[1:5, 7] == 255).all()
    two_rows = image_grid([np.zeros((2, 2, 3), np.uint8)] * 3, columns=2, pad=0)
    assert two_rows.shape == (4, 4, 3) and (two_rows[2:, 2:] == 255).all()


@pytest.fixture(scope="module")
def dissection(tmp_path_factory):
    from conftest import TINY_SPEC, make_image_folder

    root = tmp_path_factory.mktemp("seg")
    folder = make_image_folder(root / "images")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_dissection(
            TINY_SPEC,
            str(folder),
            root / "out",
            ["conv1", "conv2"],
            topk=4,
            preprocess=PREPROCESS,
            progress=False,
        )


def brute_force(dissection, layer, unit, top):
    """Maps of one unit on its top images, one image at a time, upsampled and thresholded."""
    model = load_dissected_model(dissection).module
    source = open_dissected_data(dissection)
    modules = dict(model.named_modules())
    captured = {}
    handle = modules[layer].register_forward_hook(
        lambda _m, _i, out: captured.__setitem__("out", out.clone())
    )
    maps, images = [], []
    try:
        with torch.no_grad():
            for image in dissection.topk(layer)["index"][unit, :top]:
                rgb = source.read_rgb(int(image))
                model(PREPROCESS.tensor(rgb)[None])
                maps.append(captured["out"][0, unit])
                images.append(PREPROCESS.display(rgb))
    finally:
        handle.remove()
    stacked = torch.stack(maps)[:, None]
    upsampled = upsample_maps(stacked, dissection.geometry(layer), (32, 32))[:, 0]
    return upsampled.numpy(), np.stack(images)


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_segments_match_brute_force(dissection, batch_size):
    model = load_dissected_model(dissection)
    forwarded = []
    model.module.register_forward_pre_hook(lambda _m, inputs: forwarded.append(len(inputs[0])))
    units = [5, 0, 2]
    segments = list(
        iter_segments(
            dissection, "conv2", units, top=3, model=model, batch_size=batch_size, progress=False
        )
    )
    distinct = np.unique(dissection.topk("conv2")["index"][units, :3])
    assert sum(forwarded) == len(distinct)  # each distinct image runs through once
    assert max(forwarded) <= batch_size
    thresholds = dissection.thresholds("conv2")
    for unit, got in zip(units, segments, strict=True):
        maps, images = brute_force(dissection, "conv2", unit, 3)
        assert got.unit == unit and got.layer == "conv2"
        np.testing.assert_allclose(got.maps, maps, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got.images, images)
        np.testing.assert_array_equal(got.thresholds, np.full(3, thresholds[unit], np.float32))
        np.testing.assert_array_equal(got.masks, maps > thresholds[unit])
        np.testing.assert_array_equal(got.indices, dissection.topk("conv2")["index"][unit, :3])


def test_peak_fraction_threshold(dissection):
    (got,) = iter_segments(dissection, "conv1", [1], top=2, peak_fraction=0.5, progress=False)
    maps, _ = brute_force(dissection, "conv1", 1, 2)
    peaks = maps.max(axis=(1, 2)) * 0.5
    np.testing.assert_allclose(got.thresholds, peaks, rtol=1e-5)
    np.testing.assert_array_equal(got.masks, maps > peaks[:, None, None])
    assert got.masks.any(axis=(1, 2)).all()


def test_bad_arguments(dissection):
    with pytest.raises(DissectError, match="units 0..5"):
        next(iter_segments(dissection, "conv2", [6], progress=False))
    with pytest.raises(DissectError, match="were not dissected"):
        next(iter_segments(dissection, "fc", progress=False))
    with pytest.raises(DissectError, match="--top"):
        next(iter_segments(dissection, "conv2", top=0, progress=False))
    with pytest.raises(DissectError, match="--peak-fraction"):
        next(iter_segments(dissection, "conv2", peak_fraction=0, progress=False))


def test_non_spatial_layer_is_refused(tmp_path, image_folder, tiny_spec):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flat = run_dissection(
            tiny_spec,
            str(image_folder),
            tmp_path,
            ["fc"],
            topk=1,
            preprocess=PREPROCESS,
            progress=False,
        )
    with pytest.raises(DissectError, match=r"'fc' has no spatial map \(output \(3,\)\)"):
        next(iter_segments(flat, "fc", progress=False))


def test_write_segments_files(dissection):
    table = write_segments(dissection, ["conv2"], [1, 3], top=2, pictures=PICTURES, progress=False)
    assert len(table) == 4 and list(table["rank"]) == [1, 2, 1, 2]
    folder = dissection.path("segments", "conv2")
    on_disk = pd.read_csv(folder / "segments.csv")
    assert list(on_disk["image"]) == list(table["image"])
    images = dissection.images().set_index("index")["path"]
    assert list(table["image"]) == [images[i] for i in table["image_index"]]
    (segmented,) = iter_segments(dissection, "conv2", [3], top=2, progress=False)
    for rank in (1, 2):
        for kind in ("segmented", "outline", "crop"):
            assert (folder / "unit0003" / f"{rank:02d}_{kind}.png").is_file()
        saved = np.asarray(Image.open(folder / "unit0003" / f"{rank:02d}_segmented.png"))
        np.testing.assert_array_equal(saved, segmented.segmented()[rank - 1])
        row = table[(table["unit"] == 3) & (table["rank"] == rank)].iloc[0]
        box = crop_box(segmented.masks[rank - 1])
        assert tuple(row[["crop_top", "crop_left", "crop_bottom", "crop_right"]]) == box
        assert row["coverage"] == pytest.approx(segmented.masks[rank - 1].mean())
    write_segments(dissection, ["conv2"], [3, 4], top=1, pictures=PICTURES, progress=False)
    merged = pd.read_csv(folder / "segments.csv")
    assert list(zip(merged["unit"], merged["rank"], strict=True)) == [
        (1, 1),
        (1, 2),
        (3, 1),
        (4, 1),
    ]
    assert not (folder / "unit0003" / "02_crop.png").exists()
    write_segments(dissection, ["conv2"], [3], top=2, pictures=PICTURES, progress=False)
    grid = np.asarray(Image.open(folder / "unit0003_grid.png"))
    np.testing.assert_array_equal(grid, segmented.grid())
    assert not list(folder.rglob("*.tmp"))


def test_cli_segment(dissection, capsys):
    status = main(["segment", str(dissection.directory), "--layers", "conv1", "--top", "1"])
    assert status == 0
    assert "segmented 4 top images of 4 unit(s)" in capsys.readouterr().out
    assert main(["segment", str(dissection.directory), "--units", "x"]) == 2
    assert "--units" in capsys.readouterr().err
    reopened = Dissection(dissection.directory)
    assert len(pd.read_csv(reopened.path("segments", "conv1", "segments.csv"))) == 4


def test_cli_segment_writes_only_what_the_report_shows_by_default(dissection):
    assert main(["segment", str(dissection.directory), "--layers", "conv2", "--units", "5"]) == 0
    folder = dissection.path("segments", "conv2")
    written = sorted(path.name for path in (folder / "unit0005").iterdir())
    assert written == [f"{rank:02d}_segmented.png" for rank in range(1, 5)]  # topk=4 kept
    assert not (folder / "unit0005_grid.png").exists()
    args = ["segment", str(dissection.directory), "--layers", "conv2", "--units", "5", "--top", "1"]
    assert main([*args, "--pictures", "outline,grid"]) == 0
    assert (folder / "unit0005" / "01_outline.png").is_file()
    assert (folder / "unit0005_grid.png").is_file()
    assert main([*args, "--pictures", "movie"]) == 2


def test_disk_rule_on_a_hand_built_map():
    # 3x3 cells of stride 4, offset 1.5: cell (i, j) is centred on pixel (1.5 + 4i, 1.5 + 4j).
    centres = 1.5 + 4 * np.arange(3)
    maps = np.zeros((3, 3, 3), dtype=np.float32)
    maps[0, 1, 1] = 2.0  # strong, centre (5.5, 5.5)
    maps[0, 2, 0] = 0.9  # below half the max: not drawn
    maps[1, 0, 2] = 1.0  # two cells at exactly half the max: both drawn
    maps[1, 2, 2] = 2.0
    maps[2] = -1.0  # nothing above 0: empty
    rf_size = 2 * np.sqrt(np.pi)  # a disk of that area has radius 2
    masks = disk_masks(maps, centres, centres, (12, 12), rf_size, 0.5)
    yy, xx = np.mgrid[:12, :12]

    def disk(cy, cx):
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= 4

    np.testing.assert_array_equal(masks[0], disk(5.5, 5.5))
    assert masks[0].sum() == 12  # a 4x4 block less its corners
    np.testing.assert_array_equal(masks[1], disk(1.5, 9.5) | disk(9.5, 9.5))
    assert not masks[2].any()
    with pytest.raises(DissectError, match="--rf-size"):
        disk_masks(maps, centres, centres, (12, 12), float("nan"), 0.5)


def test_disk_rule_segments_and_exports(dissection, capsys):
    layer, units = "conv2", [1, 4]
    with pytest.raises(DissectError, match="run dissect rf .* or give --rf-size"):
        next(iter_segments(dissection, layer, units, rule="disk", progress=False))
    with pytest.raises(DissectError, match="--rule must be one of threshold, disk"):
        next(iter_segments(dissection, layer, units, rule="circle", progress=False))
    geometry = dissection.geometry(layer)
    got = list(
        iter_segments(dissection, layer, units, top=2, rule="disk", rf_size=9.0, progress=False)
    )
    model = load_dissected_model(dissection).module
    source = open_dissected_data(dissection)
    for unit, segments in zip(units, got, strict=True):
        for rank, image in enumerate(dissection.topk(layer)["index"][unit, :2]):
            with torch.no_grad(), LayerTrace(model, [layer]) as t:
                cells = t(PREPROCESS.tensor(source.read_rgb(int(image)))[None])[layer][0, unit]
            cells = cells.numpy()
            ys = np.arange(cells.shape[0]) * geometry.stride[0] + geometry.offset[0]
            xs = np.arange(cells.shape[1]) * geometry.stride[1] + geometry.offset[1]
            strong = (cells >= 0.5 * cells.max()) & (cells > 0)
            yy, xx = np.mgrid[:32, :32]
            expected = np.zeros((32, 32), bool)
            for i, j in zip(*np.nonzero(strong), strict=True):
                expected |= (yy - ys[i]) ** 2 + (xx - xs[j]) ** 2 <= 81 / np.pi
            np.testing.assert_array_equal(segments.masks[rank], expected)
    # Without --rf-size: the layer's mean empirical size from dissect rf's table.
    sizes = dissection.path("receptive_fields_layers.csv")
    pd.DataFrame({"layer": [layer], "rf_empirical_mean": [9.0]}).to_csv(sizes, index=False)
    try:
        (again,) = iter_segments(dissection, layer, [4], top=2, rule="disk", progress=False)
    finally:
        sizes.unlink()
    np.testing.assert_array_equal(again.masks, got[1].masks)
    directory = str(dissection.directory)
    argv = ["segment", directory, "--layers", layer, "--units", "1", "--top", "2",
            "--rule", "disk", "--rf-size", "9"]  # fmt: skip
    assert main(argv) == 0
    assert "segments_disk" in capsys.readouterr().out
    table = pd.read_csv(dissection.path("segments_disk", layer, "segments.csv"))
    assert list(table["rule"]) == ["disk", "disk"]
    assert (dissection.path("segments_disk", layer, "unit0001", "01_segmented.png")).is_file()
    argv = ["export", directory, "--format", "html", "--layers", layer, "--units", "1",
            "--top", "2", "--rule", "disk", "--rf-size", "9"]  # fmt: skip
    assert main(argv) == 0
    assert "exported 1 unit(s), 2 images" in capsys.readouterr().out
