"""The probe on what used to fool it: ATen operators, mixing layers, constants, upsampling."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from dissect.geometry import geometry_table, layer_geometry
from dissect.geometry.surrogates import DERIVED, ConnectivityMode
from dissect.models import load_model


def conv_relu_pool_conv() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("conv1", nn.Conv2d(3, 4, 3, padding=1))
    net.add_module("relu1", nn.ReLU())
    net.add_module("pool1", nn.MaxPool2d(2))
    net.add_module("conv2", nn.Conv2d(4, 4, 3, padding=1))
    return net.eval()


def _triples(geometry):
    return {name: (g.rf[0], g.stride[0], g.offset[0]) for name, g in geometry.items()}


def test_exported_program_has_the_geometry_of_its_module(tmp_path):
    net = conv_relu_pool_conv()
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(net, (torch.zeros(1, 3, 32, 32),)), path)
    exported = load_model(str(path)).module
    expected = {"conv1": (3, 1, 0), "pool1": (4, 2, 0.5), "conv2": (8, 2, 0.5)}
    assert _triples(layer_geometry(net, list(expected), 32)) == expected
    assert _triples(layer_geometry(exported, list(expected), 32)) == expected


def test_core_aten_max_pool_with_indices(tmp_path):
    net = conv_relu_pool_conv()
    program = torch.export.export(net, (torch.zeros(1, 3, 32, 32),)).run_decompositions()
    path = tmp_path / "core.pt2"
    torch.export.save(program, path)
    geometry = layer_geometry(load_model(str(path)).module, ["conv2"], 32)
    assert _triples(geometry) == {"conv2": (8, 2, 0.5)}


class Normed(nn.Module):
    def __init__(self, norm: nn.Module):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = norm
        self.conv2 = nn.Conv2d(4, 4, 5, padding=2)

    def forward(self, x):
        return self.conv2(self.norm(self.conv1(x)))


@pytest.mark.parametrize(
    "norm",
    [nn.GroupNorm(2, 4), nn.InstanceNorm2d(4), nn.LayerNorm([4, 16, 16]), nn.BatchNorm2d(4)],
    ids=["group", "instance", "layer", "batch-statistics"],
)
def test_normalisation_over_space_is_global(norm):
    net = Normed(norm).eval()
    net.norm.train(isinstance(norm, nn.BatchNorm2d))  # batch statistics: the image's own
    geometry = layer_geometry(net, ["conv1", "norm", "conv2"], 16)
    assert not geometry["conv1"].is_global and geometry["conv1"].rf == (3, 3)
    for name in ("norm", "conv2"):
        g = geometry[name]
        assert g.is_global and g.rf == (16, 16) and not g.is_local, name
        assert (g.stride, g.offset) == ((1, 1), (0, 0))  # positions still sit on their pixels


def test_batchnorm_in_eval_and_channel_layernorm_stay_local():
    net = Normed(nn.BatchNorm2d(4)).eval()
    g = layer_geometry(net, ["conv2"], 16)["conv2"]
    assert not g.is_global and g.rf == (7, 7)


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Conv2d(4, 4, 1)
        self.out = nn.Identity()

    def forward(self, x):
        x = self.conv(x)
        scale = torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))
        return self.out(x * scale)


def test_global_pooling_makes_the_block_global_but_keeps_positions():
    g = layer_geometry(SqueezeExcite().eval(), ["conv", "out"], 16)
    assert not g["conv"].is_global
    assert g["out"].is_global and "mean" in g["out"].global_reason
    assert (g["out"].stride, g["out"].offset) == ((1, 1), (0, 0))
    table = geometry_table(SqueezeExcite().eval(), 16).set_index("layer")
    assert table.loc["out", "rf"] == "global" and "global" in table.loc["out", "note"]


class LearnedConstants(nn.Module):
    """Per-block learned constants (onnx2torch Mul/Add) that turn every activation negative."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.register_buffer("scale", -torch.ones(1, 4, 1, 1))
        self.register_buffer("shift", -5 * torch.ones(1, 4, 1, 1))
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.six = nn.ReLU6()
        self.conv3 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        x = self.relu(self.conv1(x) * self.scale + self.shift)
        return self.conv3(self.six(self.conv2(x) - 100.0))


def test_learned_constants_do_not_blind_the_probe():
    g = layer_geometry(LearnedConstants().eval(), ["relu", "conv3"], 16)
    assert (g["relu"].rf, g["conv3"].rf) == ((3, 3), (7, 7))
    assert not g["conv3"].problem


class Ignores(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.blank = nn.Identity()
        self.after = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        x = self.conv(x)
        return self.after(x) + self.blank(torch.zeros_like(x))


def test_a_layer_that_cannot_be_measured_does_not_stop_the_others():
    g = layer_geometry(Ignores().eval(), ["conv", "blank", "after"], 16)
    assert g["blank"].problem and "no input pixel" in g["blank"].problem
    assert g["blank"].stride == (1, 1) and g["blank"].offset == (0, 0)  # a plain resize's
    assert g["after"].rf == (5, 5) and not g["after"].problem
    table = geometry_table(Ignores().eval(), 16).set_index("layer")
    assert "not measured" in table.loc["blank", "note"] and table.loc["after", "rf"] == "5"


class Decoder(nn.Module):
    """A stride-8 encoder, then a x2 upsampling of its map (an FPN/U-Net step)."""

    def __init__(self, mode: str):
        super().__init__()
        self.down = nn.Sequential(*[nn.Conv2d(3 if i == 0 else 4, 4, 3, 2, 1) for i in range(3)])
        self.up = nn.Upsample(scale_factor=2, mode=mode)
        self.head = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.head(self.up(self.down(x)))


def test_bilinear_upsampling_halves_the_stride():
    g = layer_geometry(Decoder("bilinear").eval(), ["down", "up", "head"], 64)
    assert g["down"].stride == (8, 8) and g["down"].offset == (0, 0)
    # Bilinear x2 (align_corners=False): position i samples i/2 - 0.25 of the stride-8 map.
    assert g["up"].stride == (4, 4) and g["up"].offset == (-2, -2)
    assert g["head"].stride == (4, 4) and g["head"].offset == (-2, -2)
    assert g["up"].rf[0] > g["down"].rf[0] and not g["up"].problem


def test_nearest_upsampling_is_stride_four_too():
    g = layer_geometry(Decoder("nearest").eval(), ["up"], 64)["up"]
    assert g.stride == (4, 4) and not g.problem


def test_receptive_field_beyond_four_images_keeps_its_stride():
    layers = [nn.Conv2d(3, 2, 3, 2, 1), nn.Conv2d(2, 2, 3, 2, 1)]
    layers += [nn.Conv2d(2, 2, 9, padding=4) for _ in range(12)]
    g = layer_geometry(nn.Sequential(*layers).eval(), ["13"], 32)["13"]
    assert g.stride == (4, 4) and g.rf_clipped and g.rf[0] >= 4 * 32  # a lower bound, said so
    assert "lower bound" in g.problem


def test_non_square_input():
    g = layer_geometry(conv_relu_pool_conv(), ["conv2"], (16, 24))["conv2"]
    assert (g.rf, g.stride, g.offset, g.output_shape) == ((8, 8), (2, 2), (0.5, 0.5), (4, 8, 12))


@pytest.mark.parametrize("net", [Normed(nn.GroupNorm(2, 4)), Decoder("bilinear")], ids=["gn", "up"])
def test_fast_occlusion_falls_back_where_positions_are_not_local(net):
    import numpy as np

    from dissect.images import Preprocess
    from dissect.rf import Measurements, OcclusionConfig, discrepancy_maps, noise_patch

    torch.manual_seed(0)
    net, size = net.eval(), 32
    layer = "conv2" if isinstance(net, Normed) else "head"
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    geometry = layer_geometry(net, [layer], size)[layer]
    measurements = Measurements(np.array([0, 1]), np.array([0, 3]), np.array([3, 6]),
                                np.array([5, 2]))  # fmt: skip
    patch = noise_patch(Preprocess(size), 5, 0)
    config = OcclusionConfig(occluder=5, stride=3)
    run = (net, layer, geometry, images.__getitem__, measurements, patch, config)
    naive = discrepancy_maps(*run, method="naive", progress=False)
    for method in ("fast", "crop"):
        fast = discrepancy_maps(*run, method=method, progress=False)
        np.testing.assert_allclose(fast, naive, rtol=1e-5, atol=1e-5)
    # Far from the measured position, the GroupNorm layer still responds to the occluder.
    assert (naive > 0).mean() > 0.9 if isinstance(net, Normed) else naive.max() > 0


def test_cli_layers_takes_a_non_square_size_and_marks_global_layers(tmp_path, capsys):
    from dissect.cli import main

    source = tmp_path / "nets.py"
    source.write_text(
        "from torch import nn\n"
        "def net():\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GroupNorm(2, 4),\n"
        "                         nn.Conv2d(4, 4, 3, stride=2, padding=1))\n"
    )
    assert main(["layers", f"{source}:net", "--image-size", "16,24"]) == 0
    out = capsys.readouterr().out
    assert "at 16x24 px" in out and "4x8x12" in out
    rows = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert " global " in rows["1"] and "group_norm" in rows["2"]
    with pytest.raises(SystemExit):
        main(["layers", f"{source}:net", "--image-size", "16,x"])
    assert "H,W" in capsys.readouterr().err


def test_cli_run_reports_the_probe_time(tmp_path, image_folder, tiny_spec, capsys):
    from dissect.cli import main

    args = ["run", tiny_spec, str(image_folder), "--layers", "conv2", "--out", str(tmp_path)]
    with pytest.warns(UserWarning, match="broken"):
        assert main([*args, "--image-size", "32", "--topk", "2"]) == 0
    assert "geometry probe" in capsys.readouterr().out


def _full_average(name, x, weight_shape, **options):
    """The surrogate as first written: the same call with every weight ``1 / fan_in``."""
    transposed = name == "conv_transpose2d"
    fan_in = weight_shape[0 if transposed else 1] * math.prod(weight_shape[2:])
    weight = torch.full(weight_shape, 1.0 / fan_in, dtype=torch.float64)
    if name == "linear":
        return F.linear(x, weight)
    return getattr(F, name)(x, weight, None, **options)


@pytest.mark.parametrize(
    "name, input_shape, weight_shape, options",
    [
        ("conv2d", (2, 5, 9, 11), (7, 5, 3, 3), {"stride": 2, "padding": 1}),
        ("conv2d", (5, 9, 11), (7, 5, 3, 2), {"padding": "same", "dilation": 2}),
        ("conv1d", (2, 5, 13), (3, 5, 4), {"stride": 3}),
        ("conv_transpose2d", (2, 5, 6, 7), (5, 4, 3, 3), {"stride": 2, "output_padding": 1}),
        ("linear", (2, 6, 5), (8, 5), {}),
    ],
)
def test_one_channel_surrogate_has_the_full_maps_values_and_gradients(
    name, input_shape, weight_shape, options
):
    """Each output channel of an averaging map is the average of the input channels' mean, so
    the probe computes one channel: the values and the gradient are those of the full map."""
    torch.manual_seed(0)
    x = torch.rand(input_shape, dtype=torch.float64, requires_grad=True)
    expected = _full_average(name, x, weight_shape, **options)
    (expected_grad,) = torch.autograd.grad((expected * torch.arange(expected.numel()).view(
        expected.shape)).sum(), x)  # fmt: skip
    weight = torch.randn(weight_shape, dtype=torch.float64)  # the network's own weights
    probe_input = x.detach().clone().requires_grad_(True)
    setattr(probe_input, DERIVED, True)
    with ConnectivityMode():
        if name == "linear":
            out = F.linear(probe_input, weight, torch.randn(weight_shape[0]).double())
        else:
            out = getattr(F, name)(probe_input, weight, torch.randn(weight.shape[0]), **options)
    (grad,) = torch.autograd.grad((out * torch.arange(out.numel()).view(out.shape)).sum(),
                                  probe_input)  # fmt: skip
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(grad, expected_grad)


class _Flops(TorchDispatchMode):
    """Floating-point operations of every operator torch knows a formula for, backward passes
    included (torch's ``FlopCounterMode`` tracks modules with hooks that autograd.grad refuses)."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def test_the_probe_costs_less_than_one_forward_of_the_network():
    """Wide convolutions are probed on one channel: the probe's floating-point operations (its
    forwards and backward passes) stay below those of one real forward of one image."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 128, 3, stride=2, padding=1),
        nn.BatchNorm2d(128), nn.ReLU(), nn.Conv2d(128, 256, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, stride=2, padding=1),
    ).eval()  # fmt: skip
    with _Flops() as forward:
        net(torch.zeros(1, 3, 64, 64))
    with _Flops() as probe:
        geometry = layer_geometry(net, ["2", "7"], 64)
    assert geometry["7"].rf == (17, 17) and geometry["7"].stride == (8.0, 8.0)
    assert probe.total < forward.total
