"""The geometry cache: a second run of the same network, layers and size does not probe again,
and nothing it writes changes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import TINY_SPEC
from tiny_models import tiny_net
from torch import nn
from zoo_models import ZOO

from dissect.cli import main
from dissect.geometry import cached_layer_geometry, layer_geometry
from dissect.geometry.cache import cache_dir, geometry_key
from dissect.images import Preprocess
from dissect.models import load_model
from dissect.streaming import run_dissection

TIMING = ("created", "seconds", "probe_seconds")


@pytest.fixture
def probes(monkeypatch) -> list:
    """The layers of every probe ``run_dissection`` runs (it counts them)."""
    calls = []

    def counted(module, layers, image_size):
        calls.append((tuple(layers), image_size))
        return layer_geometry(module, layers, image_size)

    monkeypatch.setattr("dissect.streaming.layer_geometry", counted)
    return calls


def run(out: Path, data: Path, layers=("conv1", "conv2"), size: int = 16) -> Path:
    run_dissection(
        TINY_SPEC,
        str(data),
        out,
        list(layers),
        preprocess=Preprocess(size),
        batch_size=4,
        device="cpu",
        progress=False,
    )
    return out


def outputs(out: Path) -> dict:
    """Every file of a dissection directory: its bytes, the manifest without its timing (the
    lock file, which says who wrote the directory when, left out)."""
    files = {}
    for path in sorted(out.rglob("*")):
        if path.is_file() and path.name != ".dissect.lock":
            data = path.read_bytes()
            if path.name == "manifest.json":
                data = {k: v for k, v in json.loads(data).items() if k not in TIMING}
            files[path.relative_to(out).as_posix()] = data
    return files


def test_a_second_run_does_not_probe_again(tmp_path, image_folder, geometry_cache, probes):
    run(tmp_path / "first", image_folder)
    assert len(probes) == 1
    run(tmp_path / "second", image_folder)
    assert len(probes) == 1  # read from the cache
    entries = list((geometry_cache / "geometry").glob("*.json"))
    assert len(entries) == 1
    entry = json.loads(entries[0].read_text())  # plain JSON, nothing to unpickle
    assert entry["key"]["layers"] == ["conv1", "conv2"]
    assert entry["key"]["image_size"] == [16, 16]
    run(tmp_path / "layers", image_folder, layers=("conv2",))
    run(tmp_path / "size", image_folder, size=24)
    assert probes[1:] == [(("conv2",), (16, 16)), (("conv1", "conv2"), (24, 24))]  # other keys
    assert len(list((geometry_cache / "geometry").glob("*.json"))) == 3


def test_outputs_are_byte_identical_with_and_without_the_cache(
    tmp_path, image_folder, monkeypatch, probes
):
    monkeypatch.setenv("DISSECT_NO_CACHE", "1")
    plain = outputs(run(tmp_path / "plain", image_folder))
    monkeypatch.delenv("DISSECT_NO_CACHE")
    cold = outputs(run(tmp_path / "cold", image_folder))
    warm = outputs(run(tmp_path / "warm", image_folder))
    assert len(probes) == 2  # without the cache, then the one that filled it
    assert "units.csv" in plain and any(name.startswith("topk/") for name in plain)
    assert plain == cold == warm


def test_a_second_dissect_run_command_does_not_probe_again(tmp_path, image_folder, probes):
    argv = [
        "run",
        TINY_SPEC,
        str(image_folder),
        "--image-size",
        "16",
        "--device",
        "cpu",
        "--layers",
        "conv1,conv2",
    ]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0
    assert len(probes) == 1
    first, second = (json.loads((tmp_path / n / "manifest.json").read_text()) for n in "ab")
    assert first["geometry"] == second["geometry"] and first["run_id"] == second["run_id"]


@pytest.mark.parametrize(
    "spoil",
    [
        lambda entry: "",
        lambda entry: json.dumps(entry)[:-20],  # cut short
        lambda entry: "[1, 2]",
        lambda entry: json.dumps({**entry, "key": {**entry["key"], "torch": "0.1"}}),
        lambda entry: json.dumps({**entry, "geometry": {"conv1": entry["geometry"]["conv1"]}}),
        lambda entry: json.dumps(
            {**entry, "geometry": {**entry["geometry"], "conv2": {"name": "conv2", "rf": "ab"}}}
        ),
        lambda entry: json.dumps(
            {**entry, "geometry": {**entry["geometry"], "conv2": entry["geometry"]["conv1"]}}
        ),
        lambda entry: json.dumps(
            {
                **entry,
                "geometry": {
                    **entry["geometry"],
                    "conv2": {**entry["geometry"]["conv2"], "stride": [True, 2]},
                },
            }
        ),
    ],
    ids=[
        "empty",
        "cut",
        "list",
        "other-key",
        "missing-layer",
        "bad-value",
        "other-layer",
        "bad-type",
    ],
)
def test_a_spoilt_entry_is_probed_again_and_replaced(geometry_cache, spoil):
    net, layers, calls = tiny_net().eval(), ["conv1", "conv2"], []

    def probe(*args):
        calls.append(args)
        return layer_geometry(*args)

    expected = cached_layer_geometry(net, layers, 16, probe=probe)
    (path,) = (geometry_cache / "geometry").glob("*.json")
    path.write_text(spoil(json.loads(path.read_text())))
    assert cached_layer_geometry(net, layers, 16, probe=probe) == expected
    assert len(calls) == 2
    assert cached_layer_geometry(net, layers, 16, probe=probe) == expected  # replaced
    assert len(calls) == 2


def test_same_weights_other_form_is_another_key(tmp_path):
    def net(padding: int, dilation: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=padding, dilation=dilation),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 4, 3),
        ).eval()

    first = net(1, 1)
    for other in (net(0, 1), net(1, 2)):
        other.load_state_dict(first.state_dict())  # the same weights digest
        cached_layer_geometry(first, ["2"], 32)
        assert cached_layer_geometry(other, ["2"], 32) == layer_geometry(other, ["2"], 32)
        assert layer_geometry(other, ["2"], 32) != layer_geometry(first, ["2"], 32)


def test_a_change_to_the_model_code_is_another_key(tmp_path):
    file = tmp_path / "model.py"
    code = (
        "import torch\nfrom torch import nn\nimport torch.nn.functional as F\n\n"
        "class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.conv = nn.Conv2d(3, 4, 3)\n        self.head = nn.Conv2d(4, 4, 1)\n\n"
        "    def forward(self, x):\n        return self.head(F.max_pool2d(self.conv(x), POOL))\n"
        "\ndef make():\n    torch.manual_seed(0)\n    return Net().eval()\n"
    )
    found = []
    for pool in (2, 4):
        file.write_text(code.replace("POOL", str(pool)))
        module = load_model(f"{file}:make").module
        found.append(cached_layer_geometry(module, ["head"], 32)["head"])
        assert found[-1] == layer_geometry(module, ["head"], 32)["head"]
    assert found[0].stride == (2, 2) and found[1].stride == (4, 4)


def test_a_network_without_readable_code_is_probed_every_time(geometry_cache):
    Net = type("Net", (nn.Sequential,), {"__module__": "not_a_module_anywhere"})
    net, calls = Net(nn.Conv2d(3, 4, 3)).eval(), []

    def probe(*args):
        calls.append(args)
        return layer_geometry(*args)

    for _ in range(2):
        assert cached_layer_geometry(net, ["0"], 16, probe=probe) == layer_geometry(net, ["0"], 16)
    assert len(calls) == 2
    assert not (geometry_cache / "geometry").exists()


@pytest.mark.parametrize("family", sorted(ZOO))
def test_every_architecture_reads_back_what_was_probed(family, geometry_cache):
    factory, layers = ZOO[family]
    net, names = factory().eval(), list(layers)
    probed = cached_layer_geometry(net, names, 32)
    assert probed == layer_geometry(net, names, 32)
    assert cached_layer_geometry(net, names, 32, probe=None) == probed  # read, not probed


def test_where_the_cache_lives(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DISSECT_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_dir() == tmp_path / "home" / ".cache" / "dissect"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "dissect"
    monkeypatch.setenv("DISSECT_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.setenv("DISSECT_NO_CACHE", "1")
    assert cache_dir() is None
    net = tiny_net().eval()
    cached_layer_geometry(net, ["conv1"], 16)
    assert not (tmp_path / "mine").exists()


def test_an_unwritable_cache_is_skipped(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("a file where the cache folder should be")
    monkeypatch.setenv("DISSECT_CACHE_DIR", str(tmp_path / "file"))
    net = tiny_net().eval()
    assert cached_layer_geometry(net, ["conv1"], 16) == layer_geometry(net, ["conv1"], 16)


def test_the_key_does_not_depend_on_the_name_a_model_file_is_imported_under(tmp_path):
    """A model file is imported under a module name that changes from process to process."""
    import importlib.util

    file = tmp_path / "model.py"
    file.write_text(
        "import torch\nfrom torch import nn\n\nclass Net(nn.Sequential):\n    pass\n\n"
        "def make():\n    torch.manual_seed(0)\n    return Net(nn.Conv2d(3, 4, 3)).eval()\n"
    )
    forms = []
    for name in ("_model_one", "_model_two"):
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
            forms.append(geometry_key(module.make(), ["0"], 16))
        finally:
            del sys.modules[name]
    assert forms[0] is not None and forms[0] == forms[1]
