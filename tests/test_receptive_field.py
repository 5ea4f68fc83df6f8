"""Occlusion receptive fields: known dependence regions, fast path against naive path, resume."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from dissect.cli import main
from dissect.errors import DissectError
from dissect.geometry import layer_geometry
from dissect.images import Preprocess
from dissect.models import LoadedModel
from dissect.rf import (
    Measurements,
    OcclusionConfig,
    discrepancy_maps,
    load_maps,
    noise_patch,
    receptive_fields,
    rf_size,
    schedule,
)
from dissect.streaming import run_dissection

PREPROCESS = Preprocess(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


class Interruptible(nn.Sequential):
    """A Sequential that raises KeyboardInterrupt once ``calls_left`` forwards have run."""

    calls_left: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calls_left is not None:
            if self.calls_left == 0:
                raise KeyboardInterrupt
            self.calls_left -= 1
        return super().forward(x)


def sparse_kernel(channels_in: int, size: int, centres: list[int]) -> nn.Conv2d:
    """A ``size`` x ``size`` convolution, one output per entry of ``centres``, whose weights are
    positive on a centred ``centres[i]`` square and zero elsewhere."""
    conv = nn.Conv2d(channels_in, len(centres), size, padding=size // 2, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        for unit, side in enumerate(centres):
            lo = (size - side) // 2
            conv.weight[unit, :, lo : lo + side, lo : lo + side] = 1.0
    return conv


def known_net() -> nn.Module:
    """layer "0": units see a 3x3 and a 5x5 region of a 15x15 kernel; layer "1" stacks a 9x9
    kernel that sees its 3x3 centre on top of unit 0, so it depends on a 5x5 region of 23x23."""
    second = sparse_kernel(2, 9, [3])
    with torch.no_grad():
        second.weight[:, 1] = 0.0
    return Interruptible(sparse_kernel(3, 15, [3, 5]), second).eval()


def dissect_known(tmp_path, image_folder, net=None):
    loaded = LoadedModel(net or known_net(), "in-memory", preprocess=PREPROCESS)
    with pytest.warns(UserWarning, match="broken.jpg"):
        run_dissection(
            loaded, str(image_folder), tmp_path / "out", ["0", "1"], topk=4,
            preprocess=PREPROCESS, progress=False,
        )  # fmt: skip
    return loaded


def test_known_dependence_region_is_found(tmp_path, image_folder):
    loaded = dissect_known(tmp_path, image_folder)
    config = OcclusionConfig(top=4, occluder=1, stride=1, fraction=0.05, batch_size=64)
    table = receptive_fields(tmp_path / "out", config=config, model=loaded, progress=False)
    sizes = {(row.layer, row.unit): row for row in table.itertuples()}
    # True dependence regions: 3x3, 5x5 (layer 0), 5x5 (layer 1); theoretical 15, 15, 23.
    for key, true, theoretical in ((("0", 0), 3, 15), (("0", 1), 5, 15), (("1", 0), 5, 23)):
        assert sizes[key].rf_empirical == true
        assert sizes[key].rf_theoretical == theoretical
        assert sizes[key].n_images == 4
    maps = load_maps(tmp_path / "out", "0")
    centre = int(maps["radius"])
    assert maps["maps"][0, centre - 1 : centre + 2, centre - 1 : centre + 2].min() > 0
    layers = pd.read_csv(tmp_path / "out" / "receptive_fields_layers.csv")
    assert list(layers["layer"].astype(str)) == ["0", "1"]
    np.testing.assert_allclose(layers["rf_empirical_mean"], [4.0, 5.0])
    np.testing.assert_allclose(layers["rf_empirical_std"], [1.0, 0.0])


def test_occluder_blur_keeps_size_far_below_theoretical(tmp_path, image_folder):
    loaded = dissect_known(tmp_path, image_folder)
    config = OcclusionConfig(top=4, occluder=3, stride=1)
    table = receptive_fields(tmp_path / "out", ["0"], [0], config, model=loaded, progress=False)
    # A 3x3 field blurred by a 3x3 occluder covers at most 5x5 pixels (half-max: fewer).
    assert 1 <= table["rf_empirical"].iloc[0] <= 5 < table["rf_theoretical"].iloc[0] / 2


def pool_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 5, stride=2, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(8, 8, 3, padding=1),
    ).eval()


@pytest.mark.parametrize(("occluder", "stride"), [(7, 4), (5, 3), (6, 5)])
@pytest.mark.parametrize("discrepancy", ["peak", "map"])
@pytest.mark.parametrize("layer", ["0", "3", "6"])
def test_fast_path_equals_naive_path(layer, discrepancy, occluder, stride):
    net, size = pool_net(), 32
    images = torch.randn(5, 3, size, size, generator=torch.Generator().manual_seed(1))
    geometry = layer_geometry(net, [layer], size)[layer]
    channels, height, width = geometry.output_shape
    rng = np.random.default_rng(2)
    count = 6
    measurements = Measurements(
        rng.integers(0, 5, count), rng.integers(0, channels, count),
        rng.integers(0, height, count), rng.integers(0, width, count),
    )  # fmt: skip
    patch = noise_patch(PREPROCESS, occluder, 0)
    config = OcclusionConfig(
        occluder=occluder, stride=stride, discrepancy=discrepancy, batch_size=64
    )
    naive = discrepancy_maps(
        net, layer, geometry, images.__getitem__, measurements, patch, config, method="naive",
        progress=False,
    )  # fmt: skip
    assert naive.max() > 0
    for method in ("crop", "incremental"):
        for batch_size in (3, 64):
            config = dataclasses.replace(config, batch_size=batch_size)
            fast = discrepancy_maps(
                net, layer, geometry, images.__getitem__, measurements, patch, config,
                method=method, progress=False,
            )  # fmt: skip
            np.testing.assert_allclose(fast, naive, rtol=1e-5, atol=1e-5)


class Residual(nn.Module):
    """conv -> relu -> a block with a skip connection -> conv: not a plain chain."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.block = nn.Conv2d(4, 4, 3, padding=1)
        self.out = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv(x))
        return self.out(x + self.block(x))


def test_branching_network_uses_crops_and_refuses_incremental():
    net, size = Residual().eval(), 24
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(4))
    geometry = layer_geometry(net, ["out"], size)["out"]
    measurements = Measurements(np.array([0, 1, 1]), np.array([0, 1, 3]),
                                np.array([2, 9, 5]), np.array([6, 0, 5]))  # fmt: skip
    patch = noise_patch(PREPROCESS, 5, 0)
    config = OcclusionConfig(occluder=5, stride=2)
    run = (net, "out", geometry, images.__getitem__, measurements, patch, config)
    naive = discrepancy_maps(*run, method="naive", progress=False)
    fast = discrepancy_maps(*run, progress=False)
    np.testing.assert_allclose(fast, naive, rtol=1e-5, atol=1e-5)
    assert naive.max() > 0
    with pytest.raises(DissectError, match="not reached through a plain chain"):
        discrepancy_maps(*run, method="incremental", progress=False)


def test_interrupted_pass_resumes_from_last_batch():
    net, size, layer = pool_net(), 40, "3"
    images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(3))
    geometry = layer_geometry(net, [layer], size)[layer]
    measurements = Measurements(np.array([0, 1, 2, 0]), np.array([0, 1, 2, 3]),
                                np.array([1, 4, 7, 8]), np.array([2, 5, 0, 8]))  # fmt: skip
    patch = noise_patch(PREPROCESS, 5, 0)
    config = OcclusionConfig(occluder=5, stride=2, batch_size=2)
    whole = discrepancy_maps(net, layer, geometry, images.__getitem__, measurements, patch, config,
                             progress=False)  # fmt: skip
    saved = []

    def stop_after_three(done: int) -> None:
        saved.append(done)
        if len(saved) == 3:
            raise KeyboardInterrupt

    grids = np.zeros_like(whole)
    with pytest.raises(KeyboardInterrupt):
        discrepancy_maps(net, layer, geometry, images.__getitem__, measurements, patch, config,
                         progress=False, grids=grids, checkpoint=stop_after_three)  # fmt: skip
    assert 0 < saved[-1] and not np.array_equal(grids, whole)
    discrepancy_maps(net, layer, geometry, images.__getitem__, measurements, patch, config,
                     progress=False, grids=grids, done=saved[-1])  # fmt: skip
    np.testing.assert_allclose(grids, whole, atol=1e-6)


def test_interrupted_run_resumes_and_finished_layers_are_skipped(
    tmp_path, image_folder, monkeypatch
):
    net = known_net()
    loaded = dissect_known(tmp_path, image_folder, net)
    config = OcclusionConfig(top=4, occluder=3, stride=3, batch_size=4)
    reference = receptive_fields(
        tmp_path / "out", ["1"], config=config, model=loaded, progress=False
    )
    (tmp_path / "out" / "receptive_fields" / "1.npz").unlink()
    recorded = []
    record = schedule._record

    def interrupt_after_two_batches(*args):
        if len(recorded) == 2:
            raise KeyboardInterrupt
        record(*args)
        recorded.append(len(args[4]))  # passes of the batch

    monkeypatch.setattr(schedule, "_record", interrupt_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        receptive_fields(tmp_path / "out", ["1"], config=config, model=loaded, progress=False)
    monkeypatch.undo()
    partial = tmp_path / "out" / "receptive_fields" / "1.partial.npz"
    assert int(np.load(partial)["done"]) == sum(recorded) > 0
    resumed = receptive_fields(tmp_path / "out", ["1"], config=config, model=loaded, progress=False)
    pd.testing.assert_frame_equal(resumed, reference)
    assert not partial.exists()
    net.calls_left = 0  # a finished layer runs no forward at all
    again = receptive_fields(tmp_path / "out", ["1"], config=config, model=loaded, progress=False)
    pd.testing.assert_frame_equal(again, reference)


def test_rf_size_counts_pixels_above_fraction_of_max():
    maps = np.zeros((3, 7, 7))
    maps[0, 2:5, 2:5] = 1.0
    maps[0, 3, 3] = 2.0
    maps[1, 1:5, 1:5] = 1.0
    sizes = rf_size(maps, 0.5)
    np.testing.assert_allclose(sizes[:2], [3.0, 4.0])
    assert np.isnan(sizes[2])


def test_bad_arguments_get_clear_errors(tmp_path, image_folder):
    loaded = dissect_known(tmp_path, image_folder)
    out = tmp_path / "out"
    with pytest.raises(DissectError, match="--occluder 33 px is larger than the 32 px"):
        receptive_fields(out, config=OcclusionConfig(occluder=33), model=loaded)
    with pytest.raises(DissectError, match=r"unit\(s\) 7 do not exist in layer '0'"):
        receptive_fields(out, ["0"], [0, 7], OcclusionConfig(top=4), model=loaded)
    with pytest.raises(DissectError, match="--top 5 exceeds the 4 top images"):
        receptive_fields(out, ["0"], config=OcclusionConfig(top=5), model=loaded)
    with pytest.raises(DissectError, match="not dissected"):
        receptive_fields(out, ["conv9"], config=OcclusionConfig(top=4), model=loaded)
    with pytest.raises(DissectError, match="--stride must be at least 1"):
        OcclusionConfig(stride=0)
    with pytest.raises(DissectError, match="--discrepancy must be one of peak, map"):
        OcclusionConfig(discrepancy="mean")


def test_cli_writes_tables_maps_and_plots(tmp_path, image_folder, tiny_spec, capsys):
    with pytest.warns(UserWarning, match="broken.jpg"):
        run_dissection(tiny_spec, str(image_folder), tmp_path / "out", ["conv1", "conv2"],
                       topk=3, preprocess=PREPROCESS, progress=False)  # fmt: skip
    out = str(tmp_path / "out")
    argv = ["rf", out, "--layers", "conv1,conv2", "--units", "0,2", "--top", "3",
            "--occluder", "5", "--stride", "4", "--plot-units", "2"]  # fmt: skip
    assert main(argv) == 0
    units = pd.read_csv(tmp_path / "out" / "receptive_fields.csv")
    assert list(units.columns[:5]) == [
        "layer",
        "unit",
        "rf_empirical",
        "rf_theoretical",
        "n_images",
    ]
    assert list(zip(units["layer"], units["unit"], strict=True)) == [
        ("conv1", 0), ("conv1", 2), ("conv2", 0), ("conv2", 2),
    ]  # fmt: skip
    assert (units["n_images"] == 3).all()
    for name in ("rf_conv1.png", "rf_conv2.png", "rf_sizes.png"):
        assert (tmp_path / "out" / "plots" / name).stat().st_size > 0
    assert load_maps(out, "conv2")["maps"].shape[0] == 2
    assert main(["rf", out, "--units", "9"]) == 2
    assert "do not exist" in capsys.readouterr().err
