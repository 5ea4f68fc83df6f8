"""Occlusion receptive fields: known dependence regions, fast path against naive path, resume."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from dissect.checkpoint import CHECKPOINT_FORMAT
from dissect.cli import main
from dissect.dissection import Dissection
from dissect.errors import DissectError
from dissect.geometry import layer_geometry
from dissect.images import Preprocess
from dissect.models import LoadedModel
from dissect.rf import (
    Measurements,
    OcclusionConfig,
    average_maps,
    discrepancy_maps,
    load_maps,
    map_radius,
    noise_patch,
    occluder_corners,
    receptive_fields,
    rf_mass_size,
    rf_size,
    schedule,
    steps,
)
from dissect.rf.measure import PASS_ORDER
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
    partial = tmp_path / "out" / "receptive_fields" / ".checkpoint" / "rank0.pt"
    saved = torch.load(partial, weights_only=True)  # a Checkpoint: tensors and numbers only
    assert saved["fingerprint"]["format"] == CHECKPOINT_FORMAT
    assert saved["fingerprint"]["pass_order"] == PASS_ORDER
    assert saved["state"]["layer"] == "1" and saved["state"]["done"] == sum(recorded) > 0
    # Other settings are refused with one line, and the saved passes are kept.
    other = dataclasses.replace(config, seed=1)
    with pytest.raises(DissectError, match=r"different run \(seed 0 -> 1\).*add --restart"):
        receptive_fields(tmp_path / "out", ["1"], config=other, model=loaded, progress=False)
    assert torch.load(partial, weights_only=True)["state"]["done"] == sum(recorded)
    resumed = receptive_fields(tmp_path / "out", ["1"], config=config, model=loaded, progress=False)
    pd.testing.assert_frame_equal(resumed, reference)
    assert not partial.parent.exists()
    net.calls_left = 0  # a finished layer runs no forward at all
    again = receptive_fields(tmp_path / "out", ["1"], config=config, model=loaded, progress=False)
    pd.testing.assert_frame_equal(again, reference)
    summary = pd.read_csv(tmp_path / "out" / "receptive_fields_layers.csv", dtype=str)
    assert set(summary["run_id"]) == {Dissection(tmp_path / "out").run_id}
    # Maps measured on another run's top images are never reused.
    manifest = tmp_path / "out" / "manifest.json"
    manifest.write_text(manifest.read_text().replace(summary["run_id"][0], "0123456789abcdef"))
    with pytest.raises(KeyboardInterrupt):
        receptive_fields(tmp_path / "out", ["1"], config=config, model=loaded, progress=False)


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


def box_unit_net(side: int = 5) -> nn.Module:
    """One unit summing a ``side`` x ``side`` box of all channels: translation invariant."""
    conv = nn.Conv2d(3, 1, side, padding=side // 2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    return nn.Sequential(conv).eval()


def box_unit_sizes(peaks: list[tuple[int, int]], occluder: int = 1, stride: int = 1):
    """Half-max and mass sizes of the box unit measured with its peak at each of ``peaks``."""
    net, size = box_unit_net(), 32
    geometry = layer_geometry(net, ["0"], size)["0"]
    images = torch.zeros(len(peaks), 3, size, size)
    ys, xs = (np.array(values) for values in zip(*peaks, strict=True))
    count = len(peaks)
    measurements = Measurements(np.arange(count), np.zeros(count, np.int64), ys, xs)
    config = OcclusionConfig(occluder=occluder, stride=stride)
    patch = noise_patch(PREPROCESS, occluder, 0)
    grids = discrepancy_maps(net, "0", geometry, images.__getitem__, measurements, patch, config,
                             progress=False)  # fmt: skip
    radius = map_radius(geometry, config, (size, size))
    maps, counts, _ = average_maps(grids, measurements, [0], geometry, config, radius, (size, size))
    assert counts[0] == count
    return rf_size(maps, 0.5)[0], rf_mass_size(maps, 0.8)[0]


def test_peaks_at_the_border_measure_like_peaks_inside():
    inside = box_unit_sizes([(16, 16), (12, 20), (20, 9)])
    assert inside[0] == 5.0
    # All peaks in a corner: the field is clipped by the border on every image (the old
    # average counted the missing offsets as zero and measured 3 px).
    np.testing.assert_allclose(box_unit_sizes([(0, 0), (0, 0)]), inside)
    np.testing.assert_allclose(box_unit_sizes([(31, 0), (31, 0)]), inside)
    np.testing.assert_allclose(box_unit_sizes([(0, 0), (0, 0), (31, 31)]), inside)
    # Some peaks on a border, some inside: each offset averaged over the images covering it.
    np.testing.assert_allclose(box_unit_sizes([(16, 16), (0, 7), (31, 20)]), inside)
    # With a blurring occluder on a coarse grid, corner and interior peaks agree within a
    # pixel by the mass rule (half-max depends on the noise patch's sharpest sum).
    blurred = box_unit_sizes([(15, 15), (18, 12)], occluder=5, stride=3)
    corner = box_unit_sizes([(0, 0), (0, 0)], occluder=5, stride=3)
    assert abs(corner[1] - blurred[1]) <= 1.0


@pytest.mark.parametrize("method", ["naive", "crop", "incremental"])
def test_last_occluder_window_reaches_the_last_pixel(method):
    assert list(occluder_corners(112, 11, 3)[-2:]) == [99, 102]  # 102..112, clipped at 111
    assert list(occluder_corners(32, 8, 4)) == [0, 4, 8, 12, 16, 20, 24]  # fits exactly
    # A unit that sees only the bottom-right pixel: occluders stopping at 30 never touch it.
    net, size = box_unit_net(1), 32
    geometry = layer_geometry(net, ["0"], size)["0"]
    images = torch.zeros(1, 3, size, size)
    measurements = Measurements(np.zeros(1, np.int64), np.zeros(1, np.int64), np.array([31]),
                                np.array([31]))  # fmt: skip
    config = OcclusionConfig(occluder=7, stride=4)
    patch = noise_patch(PREPROCESS, 7, 0)
    grids = discrepancy_maps(net, "0", geometry, images.__getitem__, measurements, patch, config,
                             method=method, progress=False)  # fmt: skip
    assert grids.shape == (1, 8, 8)
    expected = abs(float(patch[:, 3, 3].sum()))  # pixel 31 is row 3 of the window at 28
    np.testing.assert_allclose(grids[0, -1, -1], expected, rtol=1e-5)
    assert (grids[0, :-1].max(), grids[0, :, :-1].max()) == (0.0, 0.0)


def test_rf_mass_size_is_steadier_than_half_max():
    maps = np.zeros((4, 9, 9))
    maps[0, 3:6, 3:6] = 1.0  # a flat 3x3 field: 9 pixels
    maps[1] = maps[0]
    maps[1, 4, 4] = 3.0  # the same field with a sharp maximum
    maps[2, 0, 0] = 2.0  # one pixel
    np.testing.assert_allclose(rf_size(maps, 0.5)[:3], [3.0, 1.0, 1.0])
    mass = rf_mass_size(maps, 0.5)
    # 50% of a flat 9-pixel field is 4.5 pixels; the sharp maximum holds 3 of 11.
    np.testing.assert_allclose(mass[:3], [np.sqrt(4.5), np.sqrt(1 + 2.5), np.sqrt(0.5)])
    assert np.isnan(mass[3]) and np.isnan(rf_size(maps, 0.5)[3])
    np.testing.assert_allclose(rf_mass_size(maps[:1], 1.0), [3.0])


def test_units_with_zero_discrepancy_are_reported(tmp_path, image_folder, capsys):
    net = known_net()
    with torch.no_grad():
        net[0].weight[1] = 0.0  # unit 1 of layer "0" is dead: occlusion never changes it
    loaded = dissect_known(tmp_path, image_folder, net)
    config = OcclusionConfig(top=4, occluder=3, stride=2)
    table = receptive_fields(tmp_path / "out", ["0"], config=config, model=loaded, progress=False)
    assert np.isnan(table["rf_empirical"].iloc[1]) and table["max_discrepancy"].iloc[1] == 0
    layers = pd.read_csv(tmp_path / "out" / "receptive_fields_layers.csv")
    assert layers[["n_units", "n_silent"]].values.tolist() == [[1, 1]]
    assert str(layers["silent_units"].iloc[0]) == "1"
    assert {"rf_mass50_mean", "rf_mass80_mean"} <= set(layers.columns)


def test_cost_is_said_up_front_with_an_estimate(tmp_path, image_folder, capsys, monkeypatch):
    net = known_net()
    with torch.no_grad():
        net[0].weight[1] = 0.0
    loaded = dissect_known(tmp_path, image_folder, net)
    monkeypatch.setattr("dissect.rf.occlusion.Cost.HINT_SECONDS", -1.0)
    config = OcclusionConfig(top=4, occluder=3, stride=2, batch_size=4)
    receptive_fields(tmp_path / "out", ["0"], config=config, model=loaded, progress=True)
    out = capsys.readouterr().out
    assert "occluded passes to run" in out and "8 unit-image pairs" in out
    assert "left for these passes (estimated from the first batches)" in out
    assert "--stride" in out and "--top" in out


def test_incremental_batches_hold_no_more_than_whole_image_batches(monkeypatch):
    """A batch of B whole-image equivalents holds at most what B whole-image forwards would,
    channels counted: deep, wide steps get fewer passes per batch."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 64, 3, padding=1),
        nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1),
    ).eval()  # fmt: skip
    size, layer = 32, "4"
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(5))
    geometry = layer_geometry(net, [layer], size)[layer]
    measurements = Measurements(np.array([0, 1]), np.array([3, 9]), np.array([4, 12]),
                                np.array([10, 2]))  # fmt: skip
    config = OcclusionConfig(occluder=5, stride=2, discrepancy="map", batch_size=2)
    whole, x = 0, images[:1]
    for module in net:
        y = module(x)
        whole, x = max(whole, x.numel() + y.numel()), y
    held = []
    apply = steps.Step.apply

    def record(step, window, channels=None):
        out = apply(step, window, channels)
        held.append(window.numel() + out.numel())
        return out

    monkeypatch.setattr(steps.Step, "apply", record)
    patch = noise_patch(PREPROCESS, 5, 0)
    run = (net, layer, geometry, images.__getitem__, measurements, patch, config)
    fast = discrepancy_maps(*run, method="incremental", progress=False)
    assert held and max(held) <= config.batch_size * whole
    naive = discrepancy_maps(*run, method="naive", progress=False)
    np.testing.assert_allclose(fast, naive, rtol=1e-5, atol=1e-5)
