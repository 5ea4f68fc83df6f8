"""--align: where upsampled unit maps are placed (theoretical, resize, empirical), recorded."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TESTS

from dissect.alignment import map_centroid, placed_geometry, resize_geometry
from dissect.cli import main
from dissect.directory import RF_MAPS
from dissect.dissection import Dissection
from dissect.errors import DissectError
from dissect.images import Preprocess
from dissect.io import write_npz
from dissect.iou import autolabel
from dissect.labels import read_labels
from dissect.rf import load_maps, receptive_fields
from dissect.rf.occlusion import OcclusionConfig
from dissect.segment import iter_segments, write_segments
from dissect.streaming import run_dissection
from dissect.upsample import upsample_maps

SPEC = f"{TESTS / 'tiny_models.py'}:tiny_strided"
DATA = "synthetic:6"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("align") / "run"
    run_dissection(
        SPEC,
        DATA,
        out,
        ["0", "2"],
        topk=3,
        quantile=0.05,
        progress=False,
        preprocess=_preprocess(),
    )
    return out


def _preprocess() -> Preprocess:
    return Preprocess(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _write_rf(dissection: Dissection, layer: str, maps: np.ndarray) -> None:
    """An rf maps file of this run with the given averaged maps (what dissect rf stores)."""
    params = json.dumps({"run": dissection.run_id})
    write_npz(dissection.path(RF_MAPS, f"{layer}.npz"), maps=maps.astype("f4"), params=params)


def _hat(size: int, centre: float, stride: float) -> np.ndarray:
    """Bilinear interpolation of a one-cell delta along an axis: a hat of half-width stride."""
    return np.clip(1 - np.abs(np.arange(size) - centre) / stride, 0, None)


def test_a_delta_lands_where_each_placement_puts_it(tmp_path, run_dir):
    dissection = Dissection(run_dir)
    theoretical = dissection.geometry("2")
    assert theoretical.output_shape[1:] == (7, 7)
    assert theoretical.stride == (4, 4) and theoretical.offset == (3, 3)
    maps = np.zeros((3, 7, 7))
    maps[0, 3 + 2, 3 - 1] = 1.0  # centroid (+2, -1)
    maps[1, 3, 3 + 1] = maps[1, 3 + 2, 3 + 1] = 1.0  # centroid (+1, +1)
    maps[2, 0, 0] = -5.0  # nothing positive: left out
    _write_rf(dissection, "2", maps)
    assert map_centroid(maps) == pytest.approx((1.5, 0.0))
    cell = (3, 2)
    expected = {  # (centre y, centre x), stride of the cell (3, 2)
        "theoretical": ((3 + 4 * 3, 3 + 4 * 2), 4),
        "resize": ((32 / 7 * 3 + (32 / 7 - 1) / 2, 32 / 7 * 2 + (32 / 7 - 1) / 2), 32 / 7),
        "empirical": ((3 + 4 * 3 + 1.5, 3 + 4 * 2 + 0.0), 4),
    }
    delta = torch.zeros(1, 1, 7, 7)
    delta[0, 0, cell[0], cell[1]] = 1.0
    for align, ((cy, cx), stride) in expected.items():
        geometry = placed_geometry(dissection, "2", align)
        assert geometry.center(*cell) == pytest.approx((cy, cx)), align
        up = upsample_maps(delta, geometry, (32, 32))[0, 0].numpy()
        np.testing.assert_allclose(
            up, np.outer(_hat(32, cy, stride), _hat(32, cx, stride)), atol=1e-5, err_msg=align
        )


def test_resize_is_netdissect_lites_plain_resize():
    """The resize placement equals torch's bilinear resize (align_corners=False) inside."""
    from dissect.geometry import LayerGeometry

    geometry = LayerGeometry("x", "Conv2d", (1, 5, 5), (9, 9), (4, 4), (3, 3))
    maps = torch.randn(1, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    ours = upsample_maps(maps, resize_geometry(geometry, 30), (30, 30))
    theirs = torch.nn.functional.interpolate(maps, size=(30, 30), mode="bilinear")
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-5)


def test_empirical_without_receptive_fields_is_one_clear_error(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", SPEC, DATA, "--layers", "0,2", "--out", str(out), "--image-size", "32"]
    assert main([*argv, "--topk", "2", "--quantile", "0.05"]) == 0
    capsys.readouterr()
    for command in (
        ["autolabel", str(out), "--align", "empirical", "--batch-size", "3"],
        ["segment", str(out), "--align", "empirical", "--top", "1"],
    ):
        assert main(command) != 0
        err = capsys.readouterr().err
        assert "dissect rf" in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (out / "labels.csv").exists() and not (out / "segments").exists()
    assert main([*argv, "--iou", "--align", "empirical"]) != 0
    err = capsys.readouterr().err
    assert "dissect rf" in err and "Traceback" not in err
    assert main([*argv[:-2], "--align", "resize"]) != 0  # --align without --iou
    assert "add --iou" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:skipped image")
def test_labels_and_manifest_record_the_placement(tmp_path):
    out = tmp_path / "run"
    argv = ["run", SPEC, DATA, "--layers", "0,2", "--out", str(out), "--image-size", "32"]
    assert main([*argv, "--topk", "2", "--quantile", "0.05", "--iou", "--align", "resize"]) == 0
    dissection = Dissection(out)
    record = dissection.manifest["alignment"]["iou"]
    resize = resize_geometry(dissection.geometry("2"), 32)
    assert record["2"]["align"] == "resize"
    assert record["2"]["offset"] == pytest.approx(list(resize.offset))
    assert record["2"]["shift"] == pytest.approx([resize.offset[0] - 3] * 2)
    same_pass = read_labels(out)
    assert set(same_pass["align"]) == {"resize"}
    # autolabel with the same placement gives the same labels as the same pass
    autolabel(out, permutations=0, batch_size=64, progress=False, align="resize")
    np.testing.assert_allclose(read_labels(out)["iou"], same_pass["iou"])
    theoretical = autolabel(out, permutations=0, batch_size=64, progress=False)
    assert set(read_labels(out)["align"]) == {"theoretical"}
    assert Dissection(out).manifest["alignment"]["iou"]["2"]["shift"] == [0.0, 0.0]
    assert not np.allclose(theoretical["iou"], same_pass["iou"])  # the placement matters


def test_empirical_uses_the_measured_receptive_fields(tmp_path):
    out = tmp_path / "run"
    run_dissection(
        SPEC, DATA, out, ["2"], topk=2, quantile=0.05, progress=False, preprocess=_preprocess()
    )
    config = OcclusionConfig(top=2, occluder=3, stride=2)
    receptive_fields(out, ["2"], [0, 1, 2], config, device="cpu", progress=False)
    centroid = map_centroid(load_maps(out, "2")["maps"])
    table = write_segments(Dissection(out), ["2"], [0], 2, align="empirical", progress=False)
    assert set(table["align"]) == {"empirical"}
    assert set(pd.read_csv(out / "segments" / "2" / "segments.csv")["align"]) == {"empirical"}
    record = Dissection(out).manifest["alignment"]["segments"]["2"]
    assert record["align"] == "empirical" and record["shift"] == pytest.approx(list(centroid))
    # the segmented maps are the top maps upsampled at the shifted placement
    dissection = Dissection(out)
    shifted = placed_geometry(dissection, "2", "empirical")
    assert shifted.offset == pytest.approx((3 + centroid[0], 3 + centroid[1]))
    plain = next(iter_segments(dissection, "2", [0], 1, progress=False))
    moved = next(iter_segments(dissection, "2", [0], 1, progress=False, align="empirical"))
    assert not np.allclose(plain.maps, moved.maps)
    autolabel(out, permutations=0, batch_size=64, progress=False, align="empirical")
    assert set(read_labels(out)["align"]) == {"empirical"}
    # rf results of another run are refused, naming the command
    with pytest.warns(UserWarning, match="moved to"):
        run_dissection(
            SPEC, DATA, out, ["2"], topk=2, quantile=0.1, progress=False, preprocess=_preprocess()
        )
    with pytest.raises(DissectError, match="dissect rf"):
        placed_geometry(Dissection(out), "2", "empirical")
    (stale,) = (out / "stale").glob(f"*/{RF_MAPS}/2.npz")
    (out / RF_MAPS).mkdir()
    (out / RF_MAPS / "2.npz").write_bytes(stale.read_bytes())
    with pytest.raises(DissectError, match="comes from run .*dissect rf"):
        placed_geometry(Dissection(out), "2", "empirical")
