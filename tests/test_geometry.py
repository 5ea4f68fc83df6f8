"""Probed layer geometry against hand-computed receptive fields, strides and offsets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dissect.geometry import geometry_table, layer_geometry
from dissect.upsample import upsample_maps


def alexnet() -> nn.Sequential:
    layers = [
        ("conv1", nn.Conv2d(3, 8, 11, 4, 2)),
        ("relu1", nn.ReLU(inplace=True)),
        ("pool1", nn.MaxPool2d(3, 2)),
        ("conv2", nn.Conv2d(8, 8, 5, padding=2)),
        ("pool2", nn.MaxPool2d(3, 2)),
        ("conv3", nn.Conv2d(8, 8, 3, padding=1)),
        ("conv4", nn.Conv2d(8, 8, 3, padding=1)),
        ("conv5", nn.Conv2d(8, 8, 3, padding=1)),
        ("pool5", nn.MaxPool2d(3, 2)),
        ("gap", nn.AdaptiveAvgPool2d(1)),
        ("flat", nn.Flatten()),
        ("fc", nn.Linear(8, 4)),
    ]
    model = nn.Sequential()
    for name, layer in layers:
        model.add_module(name, layer)
    return model.eval()


# (rf, stride, offset) from r_l = r_{l-1} + (k-1) j_{l-1}; AlexNet's pool5 is the paper's 195.
ALEXNET = {
    "conv1": (11, 4, 3),
    "pool1": (19, 8, 7),
    "conv2": (51, 8, 7),
    "pool2": (67, 16, 15),
    "conv3": (99, 16, 15),
    "conv5": (163, 16, 15),
    "pool5": (195, 32, 31),
}


def test_alexnet_matches_the_recursion():
    geometry = layer_geometry(alexnet(), list(ALEXNET), 227)
    for name, (rf, stride, offset) in ALEXNET.items():
        g = geometry[name]
        assert (g.rf, g.stride, g.offset) == ((rf, rf), (stride, stride), (offset, offset)), name
        assert not g.rf_clipped
    assert geometry["pool5"].output_shape == (8, 6, 6)


def test_global_and_linear_layers_see_the_whole_image():
    geometry = layer_geometry(alexnet(), ["gap", "fc"], 227)
    assert geometry["gap"].rf == (227, 227) and geometry["gap"].is_spatial
    assert geometry["fc"].rf == (227, 227) and not geometry["fc"].is_spatial


def test_dilation_ceil_mode_and_strided_padding():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, dilation=2, padding=2),  # effective kernel 5
        nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(4, 4, 4, stride=2, padding=1),
    ).eval()
    geometry = layer_geometry(model, ["0", "1", "2"], 33)
    assert [(g.rf[0], g.stride[0], g.offset[0]) for g in geometry.values()] == [
        (5, 1, 0),
        (7, 2, 1),
        (13, 4, 2),
    ]


class Residual(nn.Module):
    """x -> conv3x3 -> [conv3x3 -> conv3x3] + skip, with a functional max pool."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.out = nn.Identity()

    def forward(self, x):
        x = F.max_pool2d(self.stem(x), 2)
        return self.out(x + self.b(torch.relu(self.a(x))))


def test_branches_and_functional_pooling():
    geometry = layer_geometry(Residual().eval(), ["stem", "out"], 32)
    assert geometry["stem"].rf == (3, 3)
    # stem 3 -> pool 4 (jump 2) -> two 3x3 convs on the branch: 4 + 2*2 + 2*2 = 12.
    assert geometry["out"].rf == (12, 12) and geometry["out"].stride == (2.0, 2.0)
    assert geometry["out"].offset == (0.5, 0.5)


def test_receptive_field_larger_than_the_image():
    model = nn.Sequential(*[nn.Conv2d(3 if i == 0 else 2, 2, 7, padding=3) for i in range(8)])
    geometry = layer_geometry(model.eval(), ["7"], 16)["7"]
    assert geometry.rf == (49, 49) and not geometry.rf_clipped


def test_small_maps_whose_neighbours_touch_the_border():
    # The built-in scene CNN's layout at 112 px: pool5 is 4x4 and its RF (191) exceeds the image.
    model = nn.Sequential(
        nn.Conv2d(3, 2, 7, 4, 3),
        nn.MaxPool2d(3, 2, 1),
        nn.Conv2d(2, 2, 5, padding=2),
        nn.MaxPool2d(3, 2, 1),
        *[nn.Conv2d(2, 2, 3, padding=1) for _ in range(3)],
        nn.MaxPool2d(3, 2, 1),
    )
    geometry = layer_geometry(model.eval(), ["7"], 112)["7"]
    assert (geometry.rf, geometry.stride, geometry.offset) == ((191, 191), (32, 32), (0, 0))
    assert geometry.output_shape == (2, 4, 4) and not geometry.rf_clipped


def test_table_lists_every_layer():
    table = geometry_table(alexnet(), 227)
    assert list(table["layer"]) == [name for name, _ in alexnet().named_children()]
    row = table.set_index("layer").loc["pool5"]
    assert row["rf"] == "195" and row["stride"] == "32" and row["output_shape"] == "8x6x6"


@pytest.mark.parametrize(("y", "x"), [(0, 0), (3, 5), (6, 6)])
def test_upsampled_peak_lands_on_the_receptive_field_centre(y, x):
    geometry = layer_geometry(alexnet(), ["conv5"], 227)["conv5"]
    maps = torch.zeros(1, 1, 13, 13)
    maps[0, 0, y, x] = 1.0
    up = upsample_maps(maps, geometry, (227, 227))[0, 0]
    cy, cx = (int(v) for v in geometry.center(y, x))
    assert up[cy, cx] == 1.0  # full value exactly at the centre...
    assert up[cy, cx + 8] == pytest.approx(0.5)  # ...half-way to the next centre, half of it
    assert up[cy + 16, cx].item() == 0.0
