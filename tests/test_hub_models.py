"""``torchvision:`` and ``timm:`` models for real: the libraries' own definitions, weights saved
from a seeded random initialisation into a temporary local cache (TORCH_HOME, HF_HOME), nothing
downloaded. Skipped where torchvision / timm are not installed (or do not load with this torch);
CI runs them in its second environment (``.ci/run``)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
from PIL import Image

from dissect.block_outputs import default_layers
from dissect.cli import main
from dissect.errors import DissectError
from dissect.models import load_model


def _library(name: str):
    try:
        return importlib.import_module(name)
    except Exception as error:  # noqa: BLE001 - missing, or built for another torch
        pytest.skip(f"{name} does not load here ({type(error).__name__})")


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Empty local caches of torch and Hugging Face; the hub may not be reached."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def _cache_torchvision(name: str, weights: str = "DEFAULT") -> dict[str, torch.Tensor]:
    models = _library("torchvision.models")
    torch.manual_seed(0)
    state = models.get_model(name).state_dict()
    url = models.get_model_weights(name)[weights].url
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def _cache_timm(name: str) -> dict[str, torch.Tensor]:
    """A timm model's weights as the Hugging Face cache keeps them (refs/main, snapshots/)."""
    timm = _library("timm")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    state = timm.create_model(name).state_dict()
    repo = timm.models.get_pretrained_cfg(name).hf_hub_id
    folder = Path(torch.hub.get_dir()).parent.parent / "hf" / "hub"
    folder = folder / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    snapshot = folder / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, snapshot / "model.safetensors")
    return state


def _photo(seed: int = 0, size: tuple[int, int] = (300, 400)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


@pytest.mark.torchvision
def test_torchvision_by_name_from_the_local_cache(caches):
    state = _cache_torchvision("resnet18")
    loaded = load_model("torchvision:resnet18")
    assert all(torch.equal(loaded.module.state_dict()[k], v) for k, v in state.items())
    assert len(loaded.classes) == 1000 and "IMAGENET1K_V1" in loaded.source
    # The preprocessing is the weights' own: the same tensor as weights.transforms() gives.
    models = _library("torchvision.models")
    transform = models.ResNet18_Weights.IMAGENET1K_V1.transforms()
    rgb = _photo()
    expected = transform(Image.fromarray(rgb))
    assert loaded.preprocess.resize == 256 and loaded.preprocess.image_size == 224
    assert torch.allclose(loaded.preprocess.tensor(rgb), expected, atol=1e-5)


@pytest.mark.torchvision
def test_missing_weights_say_where_and_how_without_downloading(caches, capsys):
    _library("torchvision.models")
    with pytest.raises(DissectError, match="not in the local cache .*--allow-download"):
        load_model("torchvision:resnet18")
    assert main(["layers", "torchvision:resnet50:IMAGENET1K_V2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(caches / "torch" / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth") in err
    assert not (caches / "torch" / "hub" / "checkpoints").exists()


@pytest.mark.torchvision
def test_places365_resnet18_with_its_checkpoint(caches, capsys):
    """NetDissect-Lite's start: ResNet-18 with 365 classes and the Places365 .pth.tar file."""
    models = _library("torchvision.models")
    torch.manual_seed(3)
    places = models.resnet18(num_classes=365).state_dict()
    path = caches / "resnet18_places365.pth.tar"
    wrapped = {f"module.{key}": value for key, value in places.items()}
    torch.save({"epoch": 90, "arch": "resnet18", "state_dict": wrapped}, path)
    spec = "torchvision:resnet18(num_classes=365)"
    loaded = load_model(spec, str(path))
    assert torch.equal(loaded.module.fc.weight, places["fc.weight"])
    assert loaded.preprocess.describe().startswith("resize shorter side to 256, centre crop 224")
    assert main(["layers", spec, "--weights", str(path), "--image-size", "64"]) == 0
    out = capsys.readouterr().out  # (64 px: the probe of every layer at 224 takes minutes)
    assert "# preprocessing: resize shorter side to 73, centre crop 64, bilinear" in out
    assert "layer1, layer2, layer3, layer4" in out
    assert main(["layers", "torchvision:resnet18(num_classes=os.sep)"]) == 2
    assert "not a literal" in capsys.readouterr().err
    with pytest.raises(DissectError, match="pass --weights FILE"):
        load_model(spec)  # the ImageNet weights cannot have 365 classes


@pytest.mark.torchvision
def test_run_resnet50_dissects_layer1_to_layer4(caches, tmp_path):
    _cache_torchvision("resnet50")
    out = tmp_path / "d"
    args = ["run", "torchvision:resnet50", "synthetic:4:0", "--out", str(out), "--topk", "2"]
    assert main([*args, "--image-size", "64", "--device", "cpu"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["layers"] == ["layer1", "layer2", "layer3", "layer4"]
    assert manifest["preprocess"]["resize"] == 66  # IMAGENET1K_V2: 232 for 224, so 66 for 64


TORCHVISION_DEFAULTS = {
    "alexnet": ["features.1", "features.4", "features.11", "features.12"],
    "vgg16": ["features.3", "features.8", "features.15", "features.22", "features.29"]
    + ["features.30"],
    "resnet18": ["layer1", "layer2", "layer3", "layer4"],
    "resnet50": ["layer1", "layer2", "layer3", "layer4"],
    "densenet121": [f"features.denseblock{i}" for i in range(1, 5)],
    "mobilenet_v2": ["features.1", "features.3", "features.6", "features.13", "features.17"],
    "efficientnet_b0": ["features.1", "features.2", "features.3", "features.5", "features.7"],
    "convnext_tiny": ["features.1", "features.3", "features.5", "features.7"],
    "swin_t": ["features.1", "features.3", "features.5", "features.7"],
    "vit_b_16": [f"encoder.layers.encoder_layer_{i}" for i in range(12)],
}


@pytest.mark.torchvision
@pytest.mark.parametrize("name", sorted(TORCHVISION_DEFAULTS))
def test_default_layers_of_torchvision_definitions(name):
    models = _library("torchvision.models")
    torch.manual_seed(0)
    net = models.get_model(name).eval()
    assert default_layers(net, (224, 224)).layers == TORCHVISION_DEFAULTS[name]


TIMM_DEFAULTS = {
    "resnet50": ["layer1", "layer2", "layer3", "layer4"],
    "convnext_tiny": ["stages.0", "stages.1", "stages.2", "stages.3"],
    "efficientnet_b0": ["blocks.1", "blocks.2", "blocks.4", "blocks.6"],
    "swin_tiny_patch4_window7_224": ["layers.0", "layers.1", "layers.2", "layers.3"],
    "densenet121": [f"features.denseblock{i}" for i in range(1, 5)],
    "vit_tiny_patch16_224": [f"blocks.{i}" for i in range(12)],
}


@pytest.mark.timm
@pytest.mark.parametrize("name", sorted(TIMM_DEFAULTS))
def test_default_layers_of_timm_definitions(name):
    timm = _library("timm")
    torch.manual_seed(0)
    net = timm.create_model(name).eval()
    assert default_layers(net, (224, 224)).layers == TIMM_DEFAULTS[name]


@pytest.mark.timm
def test_timm_by_name_from_the_hugging_face_cache(caches):
    timm = _library("timm")
    state = _cache_timm("convnext_tiny.fb_in1k")
    loaded = load_model("timm:convnext_tiny.fb_in1k")
    assert all(torch.equal(loaded.module.state_dict()[k], v) for k, v in state.items())
    config = timm.data.resolve_data_config(model=loaded.module)
    transform = timm.data.create_transform(**config)
    rgb = _photo(1)
    assert loaded.preprocess.interpolation == config["interpolation"] == "bicubic"
    assert torch.allclose(loaded.preprocess.tensor(rgb), transform(Image.fromarray(rgb)), atol=1e-5)


@pytest.mark.timm
def test_dissect_run_timm_resnet18_on_photos(caches, image_folder, tmp_path, capsys):
    _library("timm")
    with pytest.raises(DissectError, match="Hugging Face cache .*huggingface-cli download"):
        load_model("timm:resnet18")
    _cache_timm("resnet18")
    out = tmp_path / "d"
    args = ["run", "timm:resnet18", str(image_folder), "--out", str(out), "--topk", "2"]
    with pytest.warns(UserWarning, match="skipped image"):
        assert main([*args, "--device", "cpu"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["layers"] == ["layer1", "layer2", "layer3", "layer4"]
    assert manifest["preprocess"]["interpolation"] == "bicubic"
    assert manifest["preprocess"]["resize"] == 235  # 224 / crop_pct 0.95
