"""Forward-hook tracing: in-place ReLUs, early stop, unreached layers, exported programs."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_net
from torch import nn

from dissect.errors import DissectError
from dissect.hooks import LayerTrace, resolve_layers


def test_inplace_relu_does_not_overwrite_traced_conv():
    model = tiny_net().eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), LayerTrace(model, ["conv1", "relu1"]) as trace:
        outputs = trace(x)
        expected = model.conv1(x)
    assert (outputs["conv1"] < 0).any(), "conv1 must be the pre-ReLU response"
    torch.testing.assert_close(outputs["conv1"], expected)
    torch.testing.assert_close(outputs["relu1"], expected.clamp(min=0))


def test_stream_hands_each_output_over_before_inplace_relu_changes_it():
    model = tiny_net().eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    seen, calls = [], []
    model.fc.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad(), LayerTrace(model, ["conv1", "conv2"], stop=True) as trace:
        trace.stream(lambda name, out: seen.append((name, out.min().item())), x)
        assert trace.outputs == {}  # nothing kept
        expected = model.conv1(x)
    assert [name for name, _ in seen] == ["conv1", "conv2"]
    assert seen[0][1] == pytest.approx(expected.min().item()) and seen[0][1] < 0
    assert not calls  # stopped after conv2
    with pytest.raises(DissectError, match="never reached"):
        with LayerTrace(Unused(), ["used", "unused"]) as trace:
            trace.stream(lambda *args: None, torch.randn(1, 3, 4, 4))


@pytest.mark.parametrize("batch", [1, 3])
def test_stop_skips_later_layers_and_keeps_batch_axis(batch):
    model = tiny_net().eval()
    calls = []
    model.fc.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad(), LayerTrace(model, ["conv2"], stop=True) as trace:
        outputs = trace(torch.randn(batch, 3, 16, 16))
    assert outputs["conv2"].shape == (batch, 6, 8, 8)
    assert not calls


class Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.used = nn.Conv2d(3, 2, 1)
        self.unused = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return self.used(x)


def test_unreached_layer_is_an_error_and_hooks_are_removed():
    model = Unused()
    with pytest.raises(DissectError, match="never reached"):
        with LayerTrace(model, ["used", "unused"], stop=True) as trace:
            trace(torch.randn(1, 3, 4, 4))
    assert not model.used._forward_hooks and not model.unused._forward_hooks


def test_hooks_removed_after_error_in_forward():
    model = tiny_net()
    with pytest.raises(RuntimeError):
        with LayerTrace(model, ["conv2"]) as trace:
            trace(torch.randn(1, 5, 16, 16))  # wrong channel count
    assert not model.conv2._forward_hooks


def test_bad_names_list_close_matches():
    with pytest.raises(DissectError, match="did you mean conv1"):
        resolve_layers(tiny_net(), ["conv_1"])
    with pytest.raises(DissectError, match="no layer given"):
        resolve_layers(tiny_net(), [])
    assert resolve_layers(tiny_net(), ["conv2", "conv1", "conv2"]) == ["conv2", "conv1"]


def test_traces_an_unflattened_export_program(tmp_path):
    model = tiny_net().eval()
    x = torch.randn(2, 3, 16, 16)
    path = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(model, (x,)), path)
    restored = torch.export.unflatten(torch.export.load(path))
    with torch.no_grad(), LayerTrace(restored, ["conv2"], stop=True) as trace:
        got = trace(x)["conv2"]
    with torch.no_grad():
        expected = model.conv2(model.pool1(model.relu1(model.conv1(x))))
    torch.testing.assert_close(got, expected)
