"""Layers and inputs of other shapes: channels-last (B, H, W, C) outputs, non-square inputs, layers
after a resize to a fixed size, and rf on a static-batch exported program."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dissect.dissection import open_dissected_data
from dissect.geometry import geometry_table, layer_geometry
from dissect.hooks import LayerTrace
from dissect.images import Preprocess
from dissect.streaming import run_dissection

PREPROCESS = Preprocess(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


class Permute(nn.Module):
    def __init__(self, *dims: int):
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


class ChannelsLast(nn.Module):
    """conv (stride 2) -> to (B, H, W, C) -> Linear over C (a ConvNeXt MLP) -> back -> conv."""

    def __init__(self, channels: int):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, channels, 3, stride=2, padding=1)
        self.to_last = Permute(0, 2, 3, 1)
        self.mlp = nn.Linear(channels, channels)
        self.to_first = Permute(0, 3, 1, 2)
        self.conv2 = nn.Conv2d(channels, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.to_first(self.mlp(self.to_last(self.conv(x)))))


# 8 channels: the shape tells (16x16x8); 16 channels: 16x16x16 fits both, the probe tells.
@pytest.mark.parametrize("channels", [8, 16])
def test_channels_last_layers_are_c_units_over_the_map(channels, tmp_path):
    net = ChannelsLast(channels).eval()
    geometry = layer_geometry(net, ["conv", "mlp", "conv2"], 32)
    mlp = geometry["mlp"]
    assert mlp.channels_last and not geometry["conv"].channels_last
    assert mlp.output_shape == (channels, 16, 16)
    assert (mlp.rf, mlp.stride, mlp.offset) == ((3, 3), (2.0, 2.0), (0.0, 0.0))
    assert geometry["conv2"].rf == (7, 7)
    table = geometry_table(net, 32).set_index("layer")
    assert "channels-last" in table.loc["mlp", "note"]
    d = run_dissection(
        net, "synthetic:6:2", tmp_path / "d", ["mlp"], topk=2, batch_size=4,
        preprocess=PREPROCESS, progress=False,
    )  # fmt: skip
    assert d.n_units("mlp") == channels
    images = torch.stack([PREPROCESS.tensor(open_dissected_data(d).read_rgb(i)) for i in range(6)])
    with torch.inference_mode():
        values = net.mlp(net.to_last(net.conv(images)))  # (B, H, W, C)
    peak = values.amax(dim=(1, 2))  # (B, C)
    topk = d.topk("mlp")
    assert np.array_equal(topk["index"][:, 0], peak.argmax(0).numpy())
    assert np.allclose(topk["score"][:, 0], peak.max(0).values.numpy(), atol=1e-5)


def test_trace_is_told_the_layout():
    net = ChannelsLast(16).eval()
    images = torch.randn(2, 3, 32, 32)
    with LayerTrace(net, ["mlp"], channels_last=["mlp"]) as trace:
        told = trace(images)["mlp"]
    with LayerTrace(net, ["mlp"]) as trace:  # 16x16x16: read as (B, C, H, W) unless told
        guessed = trace(images)["mlp"]
    expected = net.mlp(net.to_last(net.conv(images))).detach()
    assert torch.equal(told, expected.permute(0, 3, 1, 2))
    assert torch.equal(guessed, expected)


def test_rf_on_a_static_batch_program_equals_the_module(tmp_path):
    """Exported at batch 2 and 32x32: passes of 1 or 3 images are padded (the padding must not
    reach the maps) and crops cannot run (the fast method occludes whole images)."""
    from tiny_models import tiny_net

    from dissect.datasets import open_data
    from dissect.errors import DissectError
    from dissect.models import load_model
    from dissect.rf import Measurements, OcclusionConfig, discrepancy_maps, noise_patch

    model = tiny_net().eval()
    path = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(2, 3, 32, 32),)), path)
    with pytest.warns(UserWarning, match="static batch"):
        program = load_model(str(path)).module
    d = run_dissection(
        model, "synthetic:5:3", tmp_path / "d", ["pool1", "conv2"], topk=3, batch_size=4,
        preprocess=PREPROCESS, progress=False,
    )  # fmt: skip
    source = open_data("synthetic:5:3")
    config = OcclusionConfig(top=3, occluder=5, stride=3, batch_size=3)
    patch = noise_patch(PREPROCESS, config.occluder, config.seed)

    def load(index: int) -> torch.Tensor:
        return PREPROCESS.tensor(source.read_rgb(index))

    for layer in ("pool1", "conv2"):
        geometry = d.geometry(layer)
        measurements = Measurements.from_topk(d.topk(layer), [0, 1], config.top)
        args = (layer, geometry, load, measurements, patch, config)
        reference = discrepancy_maps(model, *args, method="naive", progress=False)
        assert reference.max() > 0
        for method in ("naive", "fast", "crop"):
            maps = discrepancy_maps(program, *args, method=method, progress=False)
            assert np.allclose(maps, reference, atol=1e-5), (layer, method)
        with pytest.raises(DissectError, match="plain chain"):
            discrepancy_maps(program, *args, method="incremental", progress=False)


class FixedResize(nn.Module):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear")


@pytest.mark.parametrize("resize", [nn.AdaptiveAvgPool2d(4), FixedResize(4)])
def test_layer_after_a_resize_to_a_fixed_size(resize):
    """Its receptive field exceeds the image, but a larger canvas is another network (the map
    stays 4x4): the geometry is the one measured at the input size, its rf a lower bound."""
    torch.manual_seed(0)
    convs = [
        m for k in range(6) for m in (nn.Conv2d(3 if k == 0 else 4, 4, 5, padding=2), nn.ReLU())
    ]
    net = nn.Sequential(*convs, resize, nn.Conv2d(4, 4, 3, padding=1)).eval()
    g = layer_geometry(net, ["13"], 32)["13"]
    assert g.output_shape == (4, 4, 4)
    assert g.stride == (8.0, 8.0)  # 4 positions over 32 px (not 16, a 64 px canvas's)
    assert g.rf_clipped and g.rf[0] >= 32 and "fixed size" in g.problem
    assert not g.is_local  # rf measures it with the exact (naive) method


def test_preprocess_to_a_non_square_size():
    rgb = np.zeros((30, 100, 3), np.uint8)
    rgb[:, 50:] = 255  # right half white
    preprocess = Preprocess((48, 64))
    shown = preprocess.display(rgb)
    assert shown.shape == (48, 64, 3)  # scaled to cover 48x64 (48 x 160), centre-cropped
    assert (shown[:, :30] == 0).all() and (shown[:, 34:] == 255).all()
    assert preprocess.tensor(rgb).shape == (3, 48, 64)
    assert preprocess.size == (48, 64) and Preprocess((32, 32)).image_size == 32
    assert preprocess.to_dict()["image_size"] == [48, 64]


def test_non_square_input_end_to_end(tmp_path, capsys):
    """48x64 through run, rf (fast methods equal the naive one), segment, autolabel, report."""
    from tiny_models import tiny_net

    from dissect.cli import main
    from dissect.dissection import Dissection
    from dissect.rf import Measurements, OcclusionConfig, discrepancy_maps, noise_patch
    from dissect.segment import iter_segments

    spec = f"{Path(__file__).parent / 'tiny_models.py'}:tiny_net"
    out = tmp_path / "d"
    common = ["--image-size", "48,64", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"]
    common += ["--layers", "conv1,pool1,conv2"]
    assert main(["run", spec, "synthetic:6:1", "--out", str(out), "--topk", "3", *common]) == 0
    d = Dissection(out)
    assert d.preprocess.size == (48, 64)
    assert d.geometry("conv2").output_shape == (6, 24, 32)
    net, source = tiny_net().eval(), open_dissected_data(d)
    images = torch.stack([d.preprocess.tensor(source.read_rgb(i)) for i in range(6)])
    with torch.inference_mode():
        peak = net.conv2(net.pool1(net.relu1(net.conv1(images)))).amax(dim=(2, 3))
    assert np.array_equal(d.topk("conv2")["index"][:, 0], peak.argmax(0).numpy())

    config = OcclusionConfig(top=3, occluder=5, stride=3, batch_size=8)
    patch = noise_patch(d.preprocess, config.occluder, config.seed)
    for layer in ("pool1", "conv2"):
        measurements = Measurements.from_topk(d.topk(layer), [0, 1, 2], config.top)
        args = (net, layer, d.geometry(layer), lambda i: images[i], measurements, patch, config)
        naive = discrepancy_maps(*args, method="naive", progress=False)
        assert naive.shape == (len(measurements), 16, 21) and naive.max() > 0
        for method in ("crop", "incremental"):
            fast = discrepancy_maps(*args, method=method, progress=False)
            assert np.allclose(fast, naive, atol=1e-5), (layer, method)

    assert main(["rf", str(out), "--layers", "conv2", "--units", "0,1", "--top", "2"]) == 0
    assert main(["segment", str(out), "--layers", "conv2"]) == 0
    for rule in ("threshold", "disk"):
        segments = next(iter_segments(d, "conv2", [0], top=1, rule=rule, model=net, progress=False))
        assert segments.masks.shape[1:] == (48, 64) and segments.images.shape[1:3] == (48, 64)
    assert main(["autolabel", str(out), "--permutations", "0"]) == 0
    assert main(["report", str(out)]) == 0
    assert "48x64 px" in (out / "report" / "index.html").read_text()


def test_static_non_square_program_sets_the_default_size(tmp_path):
    from tiny_models import tiny_net

    from dissect.models import load_model

    path = tmp_path / "wide.pt2"
    dynamic = {"x": {0: torch.export.Dim("n", max=64)}}
    program = torch.export.export(
        tiny_net().eval(), (torch.randn(2, 3, 48, 64),), dynamic_shapes=dynamic
    )
    torch.export.save(program, path)
    loaded = load_model(str(path))
    assert loaded.preprocess.size == (48, 64)
    with pytest.raises(Exception, match="--image-size 48,64"):
        loaded.module(torch.zeros(1, 3, 64, 64))
