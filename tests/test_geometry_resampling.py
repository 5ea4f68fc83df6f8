"""Exact stride and offset after resampling: upsampling by any factor, transposed convolutions,
branches of different strides summed or concatenated (feature pyramids), at two canvas sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dissect.geometry import layer_geometry
from dissect.geometry.centroid import periodic_line
from dissect.models import load_model


class Pyramid(nn.Module):
    """A 4x4/4 branch and a 32x32/32 branch upsampled x8 (nearest), summed or concatenated,
    then a 1x1 convolution (the reduced feature-pyramid neck of a text detector)."""

    def __init__(self, concatenate: bool = False):
        super().__init__()
        self.fine = nn.Conv2d(3, 4, 4, stride=4)
        self.coarse = nn.Conv2d(3, 4, 32, stride=32)
        self.up = nn.Upsample(scale_factor=8, mode="nearest")
        self.head = nn.Conv2d(8 if concatenate else 4, 4, 1)
        self.concatenate = concatenate

    def forward(self, x):
        fine, coarse = self.fine(x), self.up(self.coarse(x))
        return self.head(torch.cat([fine, coarse], 1) if self.concatenate else fine + coarse)


def upsampled(factor: int, mode: str) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 4, stride=4), nn.Upsample(scale_factor=factor, mode=mode))


def transposed_twice() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 4, stride=4), nn.ConvTranspose2d(4, 4, 2, 2), nn.ConvTranspose2d(4, 4, 2, 2)
    )


def padded_decoder() -> nn.Sequential:
    """Padded stride-2 encoder (stride 4, offset 0), a padded transposed convolution (stride 2,
    offset 0), bilinear x2 (clamped borders): output j samples the map at j / 2 - 1 / 4."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1, output_padding=1),
        nn.Upsample(scale_factor=2, mode="bilinear"),
    )


# A stride-4 map (offset 1.5) resampled by k: stride 4 / k, offset 1.5 - 2 (k - 1) / k, for
# nearest and bilinear (align_corners=False) alike.
CASES = {
    "nearest x2": (lambda: upsampled(2, "nearest"), "1", (64, 96), 2.0, 0.5),
    "nearest x3": (lambda: upsampled(3, "nearest"), "1", (64, 96), 4 / 3, 1 / 6),
    "nearest x4": (lambda: upsampled(4, "nearest"), "1", (64, 96), 1.0, 0.0),
    "bilinear x2": (lambda: upsampled(2, "bilinear"), "1", (64, 96), 2.0, 0.5),
    "bilinear x3": (lambda: upsampled(3, "bilinear"), "1", (64, 96), 4 / 3, 1 / 6),
    "bilinear x5": (lambda: upsampled(5, "bilinear"), "1", (64, 96), 0.8, -0.1),
    "transposed x2 x2": (transposed_twice, "2", (64, 96), 1.0, 0.0),
    "padded decoder": (padded_decoder, "4", (64, 96), 1.0, -0.5),
    "pyramid, summed": (Pyramid, "head", (128, 256), 4.0, 1.5),
    "pyramid, concatenated": (lambda: Pyramid(True), "head", (128, 256), 4.0, 1.5),
}


@pytest.mark.parametrize("case", list(CASES))
def test_resampled_geometry_is_exact_at_two_canvas_sizes(case):
    factory, layer, sizes, stride, offset = CASES[case]
    torch.manual_seed(0)
    net = factory().eval()
    for size in sizes:
        g = layer_geometry(net, [layer], size)[layer]
        assert g.resampled and not g.problem, (size, g.problem)
        np.testing.assert_allclose(g.stride, (stride, stride), atol=0.01, err_msg=str(size))
        np.testing.assert_allclose(g.offset, (offset, offset), atol=0.01, err_msg=str(size))


def test_resampled_geometry_on_a_non_square_canvas():
    g = layer_geometry(Pyramid().eval(), ["head"], (128, 256))["head"]
    assert g.output_shape == (4, 32, 64)
    assert g.stride == (4.0, 4.0) and g.offset == (1.5, 1.5)


def test_periodic_line():
    line = 3.0 * np.arange(24) + 1.25
    assert periodic_line(line) == (3.0, 1.25)
    stairs = 8.0 * (np.arange(24) // 4) + 1.5  # nearest x4 of stride 8
    assert periodic_line(stairs) == (2.0, 1.5 - 3.0)
    bent = line.copy()
    bent[:2] += [0.7, 0.2]  # a padded border
    bent[-1] = np.nan
    assert periodic_line(bent) == (3.0, 1.25)
    assert periodic_line(np.array([0.0, 4.0, 4.0])) is None  # too short to tell
    assert periodic_line(np.full(12, np.nan)) is None


def test_a_fixed_size_pyramid_gets_the_module_numbers(tmp_path):
    """At 64 px the pyramid's head has 16 positions, two periods of 8 with no border to bend
    them: the fit holds there, so a program exported at 64 px (it runs at no other size) gets
    the module's stride and offset."""
    torch.manual_seed(0)
    net = Pyramid().eval()
    g = layer_geometry(net, ["head"], 64)["head"]
    assert g.stride == (4.0, 4.0) and g.offset == (1.5, 1.5) and not g.problem
    path = tmp_path / "pyramid.pt2"
    torch.export.save(torch.export.export(net, (torch.zeros(1, 3, 64, 64),)), path)
    with pytest.warns(UserWarning, match="static batch size"):
        exported = load_model(str(path)).module
    g = layer_geometry(exported, ["head"], 64)["head"]
    assert g.stride == (4.0, 4.0) and g.offset == (1.5, 1.5)
    assert g.rf[0] >= 32 and "one input size only" in g.problem


def test_fixed_size_program_says_why_it_cannot_tell(tmp_path):
    """A static-shape export runs at its own size only. Layers whose fields fit get the
    module's numbers; a layer whose receptive field is cut on every side is said to be measured
    at this size only, not to be larger than 4x the image."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2))
    net.extend([nn.Conv2d(4, 4, 3, padding=1), nn.MaxPool2d(2)])
    net.extend([nn.Conv2d(4, 4, 5, padding=2), nn.MaxPool2d(2)])
    net.eval()
    path = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(net, (torch.zeros(1, 3, 16, 16),)), path)
    with pytest.warns(UserWarning, match="static batch size"):
        exported = load_model(str(path)).module
    layers = ["0", "2", "4", "5"]
    module, program = layer_geometry(net, layers, 16), layer_geometry(exported, layers, 16)
    for name in ("0", "2"):
        for field in ("rf", "stride", "offset"):
            assert getattr(program[name], field) == getattr(module[name], field), (name, field)
    assert module["5"].stride == (8.0, 8.0) and module["5"].offset == (3.5, 3.5)
    assert module["5"].rf == (30, 30) and not module["5"].problem
    assert "one input size only" in program["5"].problem
    assert "4x the image" not in program["5"].problem
