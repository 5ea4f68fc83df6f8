"""--layers as names, globs and type filters; the default block outputs on every conformance
family; the built-in models keep the layers they dissected before."""

from __future__ import annotations

import pytest
import torch
from conftest import TESTS
from zoo_models import ZOO

from dissect.block_outputs import conv_and_pool, default_layers
from dissect.cli import main
from dissect.errors import DissectError
from dissect.layer_select import select_layers
from dissect.models import load_model


@pytest.fixture(scope="module")
def resnet():
    return ZOO["resnet_bottleneck"][0]()


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        (["layer1"], ["layer1"]),
        (["layer*"], ["layer1", "layer2"]),
        (["layer2.*"], ["layer2.conv1", "layer2.bn1", "layer2.conv2", "layer2.bn2", "layer2.conv3"]
         + ["layer2.bn3", "layer2.relu", "layer2.down"]),
        (["**.down.0"], ["layer1.down.0", "layer2.down.0"]),
        (["type:Bottleneck"], ["layer1", "layer2"]),
        (["type:Conv2d", "layer1"], ["stem.0", "layer1.conv1", "layer1.conv2", "layer1.conv3"]
         + ["layer1.down.0", "layer2.conv1", "layer2.conv2", "layer2.conv3", "layer2.down.0"]
         + ["layer1"]),
        (["type:torch.nn.modules.pooling.MaxPool2d"], ["pool"]),
        (["type:*Pool2d"], ["pool", "head.0"]),
    ],
)  # fmt: skip
def test_names_globs_and_types(resnet, items, expected):
    assert select_layers(resnet, items) == expected


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("layer9", "'layer9' is not in the network; did you mean layer2, layer1"),
        ("block*", "'block\\*' matches no layer"),
        ("type:BottleNeck", "did you mean type:Bottleneck"),
    ],
)
def test_a_pattern_that_matches_nothing_is_one_line(resnet, item, message):
    with pytest.raises(DissectError, match=message):
        select_layers(resnet, [item])


#: family -> the block outputs (one per resolution stage) or, for plain stacks, each
#: resolution stage's last module, worked out by hand from tests/zoo_models.py.
EXPECTED = {
    "plain": ["relu1", "relu3", "pool3"],
    "resnet_basic": ["layer1", "layer2"],
    "resnet_bottleneck": ["layer1", "layer2"],
    "densenet": ["block1", "block2"],  # after each dense block's last concatenation
    "mobilenet": ["block1", "block2"],  # the inverted residuals, not their SE
    "convnext": ["stage1", "stage2"],
    "decoder": ["enc1.1", "enc2.1", "enc3.1", "dec2", "dec1"],  # skips join in the top module
    "dilated": ["dil4"],
    "vit": ["block"],  # one resolution: every block
}


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_default_is_the_block_outputs(family):
    factory, _ = ZOO[family]
    size = (32, 32) if family == "vit" else (64, 48)
    assert default_layers(factory(), size).layers == EXPECTED[family]


def test_every_block_of_one_resolution_and_the_stage_containers():
    """Blocks in Sequential stages: the stage's name when it returns its last block's output."""
    from zoo_models import Basic

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, 2, 1),
        torch.nn.Sequential(Basic(4, 4), Basic(4, 4)),
        torch.nn.Sequential(Basic(4, 8, 2), Basic(8, 8)),
        torch.nn.Sequential(Basic(8, 8), Basic(8, 8)),
    ).eval()
    found = default_layers(net, (32, 32))
    assert found.layers == ["1", "3"]  # stages 2 and 3 share a resolution: one stage, ends at 3
    assert found.blocks == ["1.0", "1.1", "2.0", "2.1", "3.0", "3.1"]
    same = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, 1, 1), Basic(4, 4), Basic(4, 4)).eval()
    assert default_layers(same, (16, 16)).layers == ["1", "2"]


@pytest.mark.parametrize("name", ["scene-cnn", "object-cnn"])
def test_built_in_models_keep_their_layers(name):
    """The demo's outputs depend on these: the same every-conv-and-pool set as before."""
    loaded = load_model(name)
    assert list(loaded.layers) == conv_and_pool(loaded.module)
    assert list(loaded.layers) == [
        "conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5"
    ]  # fmt: skip


def test_dissect_layers_shows_what_run_dissects(capsys):
    spec = f"{TESTS / 'zoo_models.py'}:resnet_basic(width=4)"
    assert main(["layers", spec, "--image-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "# dissected (default: the last block (Basic) of each of 2 resolution stages): " \
        "layer1, layer2" in out  # fmt: skip
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[5:]}
    assert [name for name, mark in rows.items() if mark == "yes"] == ["layer1", "layer2"]
    assert main(["layers", spec, "--image-size", "32", "--layers", "type:Conv2d"]) == 0
    out = capsys.readouterr().out
    assert "# dissected (--layers type:Conv2d): stem.0, layer1.conv1, layer1.conv2" in out
    assert "# preprocessing: resize to cover, centre crop 32, bilinear" in out


def test_run_dissects_the_default_and_patterns(tmp_path):
    import json

    spec = f"{TESTS / 'zoo_models.py'}:resnet_basic(width=4)"
    common = ["synthetic:6:0", "--image-size", "32", "--topk", "2", "--device", "cpu"]
    assert main(["run", spec, *common, "--out", str(tmp_path / "a")]) == 0
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["config"]["layers"] == ["layer1", "layer2"]
    assert main(["run", spec, *common, "--out", str(tmp_path / "b"), "--layers", "layer1.c*"]) == 0
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["config"]["layers"] == ["layer1.conv1", "layer1.conv2"]


def test_the_python_api_dissects_the_cli_default(tmp_path):
    from dissect import run_dissection
    from dissect.images import Preprocess

    spec = f"{TESTS / 'zoo_models.py'}:resnet_basic(width=4)"
    options = {"topk": 2, "device": "cpu", "progress": False}
    small = Preprocess(image_size=32)
    found = run_dissection(spec, "synthetic:4:0", tmp_path / "a", preprocess=small, **options)
    assert found.layers == ["layer1", "layer2"]  # as dissect run without --layers
    found = run_dissection("scene-cnn", "synthetic:2:0", tmp_path / "b", **options)
    assert found.layers == conv_and_pool(load_model("scene-cnn").module)  # the built-in's own
