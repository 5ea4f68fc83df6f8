"""Loading MODEL specs: every form, and every refusal."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_net

from dissect.errors import DissectError
from dissect.models import load_model, read_state_dict


def test_file_callable_is_eval_mode(tiny_spec):
    loaded = load_model(tiny_spec)
    assert not loaded.module.training
    assert loaded.spec == tiny_spec
    assert loaded.preprocess.image_size == 224


def test_package_module_callable():
    loaded = load_model("tiny_models:tiny_net")
    assert type(loaded.module).__name__ == "TinyNet"


def test_weights_with_checkpoint_and_dataparallel_prefix(tmp_path, tiny_spec):
    source = tiny_net()
    torch.nn.init.constant_(source.conv1.weight, 0.25)
    state = {f"module.{key}": value for key, value in source.state_dict().items()}
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": state}, path)
    loaded = load_model(tiny_spec, str(path))
    assert torch.equal(loaded.module.conv1.weight, source.conv1.weight)


def test_mismatched_weights_name_keys(tmp_path, tiny_spec):
    path = tmp_path / "w.pt"
    torch.save({"other.weight": torch.zeros(1)}, path)
    with pytest.raises(DissectError, match="does not fit the model"):
        load_model(tiny_spec, str(path))


def test_pickled_module_refused(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(tiny_net(), path)
    with pytest.raises(DissectError, match="pickled Python object"):
        load_model(str(path))
    with pytest.raises(DissectError, match="pickled Python objects"):
        read_state_dict(path)


def test_torchscript_refused(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(tiny_net()), path)
    with pytest.raises(DissectError, match="TorchScript"):
        load_model(str(path))


def test_bare_state_dict_refused_as_model(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(tiny_net().state_dict(), path)
    with pytest.raises(DissectError, match="not an architecture"):
        load_model(str(path))


def test_export_program_keeps_layer_names(tmp_path):
    model = tiny_net().eval()
    example = torch.randn(1, 3, 32, 32)
    path = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(model, (example,)), path)
    loaded = load_model(str(path))
    names = dict(loaded.module.named_modules())
    assert "conv2" in names
    assert torch.allclose(loaded.module(example), model(example), atol=1e-6)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_model", "not a built-in name"),
        ("missing_file.py:build", "does not exist"),
        ("no.such.module:build", "cannot import"),
        ("tiny_models:nothing_here", "no callable"),
        ("tiny_models:not_a_module", "not a torch nn.Module"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(DissectError, match=message):
        load_model(spec)
