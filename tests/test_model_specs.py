"""Factory arguments as literals, weights files in every common wrapping (never unpickled as
code), preprocessing with a resize before the crop, and the device choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TESTS
from safetensors.torch import save_file

from dissect.cli import main
from dissect.device import pick_device
from dissect.errors import DissectError
from dissect.images import Preprocess
from dissect.models import load_model, parse_call, read_state_dict
from dissect.models.weights import fit_names

ZOO = TESTS / "zoo_models.py"


def test_factory_takes_literal_arguments():
    loaded = load_model(f"{ZOO}:resnet_basic(width=4)")
    assert loaded.module.stem[0].out_channels == 4
    call = parse_call(
        "torchvision:resnet18(num_classes=365, sizes=(1, 2), cfg={'a': [True, None]})"
    )
    assert call.target == "torchvision:resnet18"
    assert call.kwargs == {"num_classes": 365, "sizes": (1, 2), "cfg": {"a": [True, None]}}


@pytest.mark.parametrize(
    "arguments",
    ["width=__import__('os').getcwd()", "width=open('x')", "width=os.sep", "width=4 if 1 else 2"],
)
def test_non_literal_argument_is_refused_and_never_run(arguments, capsys):
    with pytest.raises(DissectError, match="not a literal"):
        load_model(f"{ZOO}:resnet_basic({arguments})")
    assert main(["layers", f"{ZOO}:resnet_basic({arguments})"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "never evaluates code" in err


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tiny_models:tiny_net(classes=3", "parentheses at the end"),
        ("tiny_models:tiny_net(classes=)", "not valid Python syntax"),
        ("tiny_models:tiny_net(**{'classes': 3})", "write the arguments like"),
        ("tiny_models:tiny_net(colours=3)", "failed with TypeError"),
    ],
)
def test_bad_arguments_are_one_line(spec, message):
    with pytest.raises(DissectError, match=message):
        load_model(spec)


def _reference() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return load_model(f"{TESTS / 'tiny_models.py'}:tiny_net").module.state_dict()


@pytest.mark.parametrize(
    ("wrap", "name"),
    [
        (lambda s: s, "plain.pt"),
        (lambda s: {"state_dict": s, "epoch": 3, "arch": "tiny"}, "checkpoint.pth"),
        (lambda s: {"model": s, "optimizer": {"lr": 0.1}}, "model.pth"),
        (lambda s: {"module": s}, "deepspeed.pt"),
        (lambda s: {f"module.{k}": v for k, v in s.items()}, "dataparallel.pth"),
    ],
)
def test_wrapped_checkpoints_load(tmp_path, tiny_spec, wrap, name):
    state = {
        k: torch.randn_like(v) if v.is_floating_point() else v for k, v in _reference().items()
    }
    torch.save(wrap(state), tmp_path / name)
    loaded = load_model(tiny_spec, str(tmp_path / name))
    for key, value in loaded.module.state_dict().items():
        assert torch.equal(value, state[key])


def test_places365_style_pth_tar(tmp_path, tiny_spec):
    """The Places365 checkpoints: legacy format, epoch/arch/best_prec1 around a state dict whose
    names carry DataParallel's ``module.`` (AlexNet/VGG: only inside, ``features.module.0``)."""
    state = {k: torch.randn_like(v) for k, v in _reference().items() if v.is_floating_point()}
    inside = {k.replace("conv1.", "conv1.module."): v for k, v in state.items()}
    path = tmp_path / "tiny_places365.pth.tar"
    checkpoint = {"epoch": 90, "arch": "tiny", "state_dict": inside, "best_prec1": 54.7}
    torch.save(checkpoint, path, _use_new_zipfile_serialization=False)
    loaded = load_model(tiny_spec, str(path))
    assert torch.equal(loaded.module.conv1.weight, state["conv1.weight"])
    prefixed = {"module.features.0.weight": torch.ones(1)}
    assert list(fit_names(prefixed, torch.nn.Sequential())) == ["features.0.weight"]


def test_safetensors_weights(tmp_path, tiny_spec):
    state = {k: torch.randn_like(v) for k, v in _reference().items()}
    save_file(state, tmp_path / "tiny.safetensors")
    loaded = load_model(tiny_spec, str(tmp_path / "tiny.safetensors"))
    assert torch.equal(loaded.module.fc.weight, state["fc.weight"])
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(DissectError, match="not a readable .safetensors"):
        read_state_dict(tmp_path / "bad.safetensors")


class _Payload:
    """Unpickling this creates a marker file: proof that code in a file ran."""

    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize(
    ("name", "wrap", "legacy"),
    [
        ("evil.pth", lambda s, p: {"state_dict": s, "args": p}, False),
        ("evil.pth.tar", lambda s, p: {"state_dict": s, "best_prec1": p}, True),
        ("evil.pt", lambda s, p: {**s, "extra": p}, False),
        ("evil.safetensors", lambda s, p: {"model": s, "x": p}, False),
        ("evil.bin", lambda s, p: {"module": {"conv1.weight": p}}, False),
    ],
)
def test_a_pickle_inside_any_weights_file_never_runs(tmp_path, tiny_spec, name, wrap, legacy):
    marker = tmp_path / "PWNED"
    payload = _Payload()
    payload.marker = str(marker)
    path = tmp_path / name
    torch.save(wrap(_reference(), payload), path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(DissectError, match="refuses it|not a readable"):
        load_model(tiny_spec, str(path))
    assert main(["layers", tiny_spec, "--weights", str(path), "--image-size", "16"]) == 2
    assert not marker.exists()


def test_resize_then_crop_like_torchvision():
    """Resize the shorter side to 256 (bicubic), centre-crop 224: as torchvision's
    ``Resize(256) + CenterCrop(224)``, here checked against PIL directly."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    preprocess = Preprocess(224, resize=256, interpolation="bicubic")
    resized = np.asarray(Image.fromarray(rgb).resize((341, 256), Image.Resampling.BICUBIC))
    top, left = (256 - 224) // 2, (341 - 224) // 2
    assert np.array_equal(preprocess.display(rgb), resized[top : top + 224, left : left + 224])
    same_size = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    assert not np.array_equal(preprocess.display(same_size), same_size)  # still resized, cropped
    assert Preprocess.from_dict(preprocess.to_dict()) == preprocess
    assert set(Preprocess().to_dict()) == {
        "image_size",
        "mean",
        "std",
        "bgr",
    }  # manifests as before
    with pytest.raises(DissectError, match="interpolation"):
        Preprocess(interpolation="cubic-ish")


def test_device_auto_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device("auto").type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device("auto").type == "cpu"
    with pytest.raises(DissectError, match="MPS is not available"):
        pick_device("mps")
    with pytest.raises(DissectError, match="not a device"):
        pick_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto").type == "cuda"


def test_a_missing_library_says_how_to_install_it_without_moving_torch(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    assert main(["layers", "timm:resnet18"]) == 2
    err = capsys.readouterr().err.strip()
    pinned = f"'torch=={torch.__version__.split('+')[0]}'"
    assert err.endswith(f"pip install --no-deps timm && pip install torchvision {pinned}.")
    assert len(err.splitlines()) == 1
