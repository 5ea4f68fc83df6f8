"""The incremental method's windows and reused buffers: small, and still exact."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from test_receptive_field import dissect_known
from torch import nn

from dissect.dissection import Dissection
from dissect.errors import DissectError
from dissect.geometry import layer_geometry
from dissect.images import Preprocess
from dissect.io import write_npz
from dissect.rf import (
    Measurements,
    OcclusionConfig,
    discrepancy_maps,
    noise_patch,
    occluder_corners,
    receptive_fields,
)
from dissect.rf import incremental as inc
from dissect.rf import steps as steps_module
from dissect.rf.measure import PASS_ORDER, measurement_params, rf_checkpoint
from dissect.rf.steps import chain_steps

PREPROCESS = Preprocess(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def deep_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 5, stride=2, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1),
        nn.Conv2d(6, 8, 5, padding=2), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 5, 3, padding=1),
    ).eval()  # fmt: skip


def test_windows_are_cut_to_what_the_measured_positions_read():
    net, size = deep_net(), 32
    image = torch.randn(3, size, size, generator=torch.Generator().manual_seed(0))
    steps = chain_steps(net, "7", image)
    corners = occluder_corners(size, 5, 1)
    incremental = inc.Incremental(steps, image, 5, (corners, corners))
    one = incremental.windows((3, 3, 4, 4))  # one measured position
    whole = incremental.windows((0, 7, 0, 7))  # the whole map
    for a in range(2):
        forward = incremental.forward[a][1] - incremental.forward[a][0] + 1
        assert (one.size[a] <= forward).all() and (one.size[a] >= 1).all()
        assert (one.size[a][:, -1] == 1).all()  # the last step computes the position only
        np.testing.assert_array_equal(whole.size[a], forward)  # nothing to cut
        assert (one.start[a] >= 0).all()
        lengths = np.array([incremental.lengths[i][a] for i in incremental.spatial])
        assert (one.start[a] + one.size[a] <= lengths).all()
    jobs = np.argwhere(np.ones((len(corners), len(corners))))
    assert incremental.cost(one, jobs) < incremental.cost(whole, jobs) / 2


def test_fast_equals_naive_where_windows_of_one_batch_differ():
    """Peaks in corners and in the middle, one image: passes whose own windows differ run in
    one batch at the largest windows of their kind, at every batch size."""
    net, size, layer = deep_net(), 32, "7"
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    geometry = layer_geometry(net, [layer], size)[layer]
    measurements = Measurements(np.array([0, 0, 0, 1, 1]), np.array([0, 1, 2, 3, 4]),
                                np.array([0, 7, 3, 0, 7]), np.array([0, 7, 4, 7, 0]))  # fmt: skip
    patch = noise_patch(PREPROCESS, 5, 0)
    config = OcclusionConfig(occluder=5, stride=1)
    run = (net, layer, geometry, images.__getitem__, measurements, patch)
    naive = discrepancy_maps(*run, config, method="naive", progress=False)
    assert (naive > 0).mean() > 0.1
    for batch_size in (1, 4, 128):
        config = dataclasses.replace(config, batch_size=batch_size)
        fast = discrepancy_maps(*run, config, method="incremental", progress=False)
        np.testing.assert_allclose(fast, naive, rtol=1e-5, atol=1e-5)


def test_workspace_reuses_one_buffer():
    work, like = inc._Workspace(), torch.zeros(1)
    first, second = work.take([(4, 5), (2, 3)], like)
    assert first.shape == (4, 5) and second.shape == (2, 3)
    assert second.data_ptr() == first.data_ptr() + 20 * first.element_size()
    (again,) = work.take([(6, 3)], like)
    assert again.data_ptr() == first.data_ptr()  # no new memory for what fits
    (larger,) = work.take([(40, 5)], like)
    assert larger.shape == (40, 5) and work.buffer.numel() == 200
    (double,) = work.take([(2,)], torch.zeros(1, dtype=torch.float64))
    assert double.dtype == torch.float64


def test_checkpoint_of_another_pass_order_or_version_is_refused_and_restart_discards_it(
    tmp_path, image_folder
):
    """A checkpoint counts finished passes in its writer's order: one of another pass order, or
    a partial file of a version before rf's checkpoints, is refused with one line naming
    --restart (never resumed, never silently measured again); ``restart`` discards it."""
    loaded = dissect_known(tmp_path, image_folder)
    config = OcclusionConfig(top=4, occluder=3, stride=3, batch_size=4)
    out = tmp_path / "out"
    reference = receptive_fields(out, ["1"], config=config, model=loaded, progress=False)
    (out / "receptive_fields" / "1.npz").unlink()
    side = len(occluder_corners(32, 3, 3))
    grids = np.full((4, side, side), 1e6, dtype=np.float32)
    checkpoint = rf_checkpoint(Dissection(out), ["1"], None, config, restart=False)
    checkpoint.fingerprint["pass_order"] = PASS_ORDER - 1
    checkpoint.save({"layer": "1", "grids": torch.from_numpy(grids), "done": 10**6})
    order = f"pass_order {PASS_ORDER - 1} -> {PASS_ORDER}"
    with pytest.raises(DissectError, match=f"different run \\({order}\\).*add --restart"):
        receptive_fields(out, ["1"], config=config, model=loaded, progress=False)
    assert checkpoint.path.is_file()  # refused, not discarded
    again = receptive_fields(out, ["1"], config=config, model=loaded, progress=False, restart=True)
    pd.testing.assert_frame_equal(again, reference)
    assert not checkpoint.folder.exists()
    (out / "receptive_fields" / "1.npz").unlink()
    earlier = out / "receptive_fields" / "1.partial.npz"
    params = measurement_params(config, [0], Dissection(out).run_id)
    write_npz(earlier, grids=grids, done=np.int64(10**6), params=np.str_(params))
    with pytest.raises(DissectError, match="another version of dissect.*add --restart"):
        receptive_fields(out, ["1"], config=config, model=loaded, progress=False)
    again = receptive_fields(out, ["1"], config=config, model=loaded, progress=False, restart=True)
    pd.testing.assert_frame_equal(again, reference)
    assert not earlier.exists()


def test_a_wide_box_does_not_widen_the_windows_of_one_position():
    """Passes for one measured position run at that position's windows even where another
    image's peaks span a wide box (the windows of a batch kind are the largest of the kind)."""
    net, size = deep_net(), 32
    image = torch.randn(3, size, size, generator=torch.Generator().manual_seed(0))
    corners = occluder_corners(size, 5, 1)
    incremental = inc.Incremental(chain_steps(net, "7", image), image, 5, (corners, corners))
    one = incremental.windows((3, 3, 4, 4))
    incremental.windows((0, 7, 0, 7))
    for row, column in np.argwhere(np.ones((len(corners), len(corners)))):
        kind = (one.kind[0][row], one.kind[1][column])
        np.testing.assert_array_equal(incremental.sizes(kind)[-1], (1, 1))


def _last_conv_channels(monkeypatch, net, layer, units):
    """The output channels the last convolution of incremental passes computes, and the
    incremental maps against the naive ones (units ``units`` at peaks over two images)."""
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    geometry = layer_geometry(net, [layer], 32)[layer]
    order = np.arange(len(units))
    measurements = Measurements(order % 2, np.array(units), order % 3 + 1, order[::-1] % 3)
    config = OcclusionConfig(occluder=5, stride=2, batch_size=8)
    seen = []
    apply = steps_module.Step.apply

    def record(step, window, channels=None):
        out = apply(step, window, channels)
        if isinstance(step.module, nn.Conv2d):
            seen.append(out.shape[1])
        return out

    monkeypatch.setattr(steps_module.Step, "apply", record)
    run = (net, layer, geometry, images.__getitem__, measurements, noise_patch(PREPROCESS, 5, 0))
    for discrepancy in ("peak", "map"):
        config = dataclasses.replace(config, discrepancy=discrepancy)
        fast = discrepancy_maps(*run, config, method="incremental", progress=False)
        naive = discrepancy_maps(*run, config, method="naive", progress=False)
        assert (naive > 0).mean() > 0.3
        np.testing.assert_allclose(fast, naive, rtol=1e-5, atol=1e-5)
    return seen[-1]


def test_last_convolution_computes_the_measured_units_alone(monkeypatch):
    net = deep_net()
    assert _last_conv_channels(monkeypatch, net, "7", [4, 1, 4]) == 2
    pooled = nn.Sequential(*deep_net(), nn.ReLU(), nn.MaxPool2d(2)).eval()
    assert _last_conv_channels(monkeypatch, pooled, "9", [0, 3, 3]) == 2


def test_all_channels_where_the_units_cannot_be_computed_apart(monkeypatch):
    """Batch norm after the last convolution (per-channel statistics), a grouped convolution."""
    torch.manual_seed(1)
    norm = nn.Sequential(*deep_net(), nn.BatchNorm2d(5)).eval()
    norm[-1].running_mean.uniform_(-1, 1)
    assert _last_conv_channels(monkeypatch, norm, "8", [1, 2]) == 5
    grouped = nn.Sequential(*list(deep_net())[:-1], nn.Conv2d(8, 4, 3, padding=1, groups=2))
    assert _last_conv_channels(monkeypatch, grouped.eval(), "7", [1, 2]) == 4


@pytest.mark.parametrize("onednn", [True, False])
def test_incremental_passes_run_without_onednn_and_restore_the_setting(monkeypatch, onednn):
    """oneDNN caches a compiled kernel per input shape, and windows come in many shapes: the
    incremental passes run without it, and leave the caller's setting as it was."""
    net, size, layer = deep_net(), 32, "7"
    images = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(3))
    geometry = layer_geometry(net, [layer], size)[layer]
    measurements = Measurements(np.array([0]), np.array([1]), np.array([3]), np.array([4]))
    seen = []
    apply = steps_module.Step.apply

    def recorded(self, window, channels=None):
        seen.append(torch.backends.mkldnn.enabled)
        return apply(self, window, channels)

    monkeypatch.setattr(steps_module.Step, "apply", recorded)
    run = (net, layer, geometry, images.__getitem__, measurements, noise_patch(PREPROCESS, 5, 0))
    with torch.backends.mkldnn.flags(enabled=onednn):
        discrepancy_maps(*run, OcclusionConfig(occluder=5, stride=2), method="incremental",
                         progress=False)  # fmt: skip
        assert torch.backends.mkldnn.enabled is onednn
    assert seen and not any(seen)
