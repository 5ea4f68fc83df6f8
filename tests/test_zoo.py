"""Conformance over a zoo of architecture families (tests/zoo_models.py), eager and exported.

Geometry is checked against an independent brute-force dependence probe on the real network:
perturb one input row (or column) at a time and see which output rows (columns) change.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from zoo_models import ZOO

from dissect.dissection import open_dissected_data
from dissect.geometry import layer_geometry
from dissect.hooks import LayerTrace
from dissect.models import load_model

SIZE = 32


def dependence(net, layer: str, axis: int, seeds: int = 2) -> np.ndarray:
    """bool (input lines, output lines): output line i changes when input line r is perturbed."""
    lines = SIZE
    found = None
    with LayerTrace(net, [layer], stop=True) as trace, torch.inference_mode():
        for seed in range(seeds):
            base = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
            reference = trace(base)[layer]
            for sign in (1.0, -1.0):
                batch = base.repeat(lines, 1, 1, 1)
                for r in range(lines):
                    if axis == 0:
                        batch[r, :, r, :] += 6 * sign
                    else:
                        batch[r, :, :, r] += 6 * sign
                outputs = trace(batch)[layer]
                change = (outputs - reference).abs()
                tolerance = 1e-4 * max(reference.abs().max().item(), 1.0)
                other = 3 if axis == 0 else 2
                changed = change.amax(dim=(1, other)) > tolerance  # (input lines, output lines)
                found = changed if found is None else found | changed
    return found.numpy()


def expected_lines(g, axis: int, count: int) -> list[tuple[int, int]]:
    """Input lines [lo, hi] each output line depends on, by the geometry (clipped)."""
    if g.is_global:
        return [(0, SIZE - 1)] * count
    result = []
    for i in range(count):
        centre = g.offset[axis] + g.stride[axis] * i
        lo, hi = centre - (g.rf[axis] - 1) / 2, centre + (g.rf[axis] - 1) / 2
        result.append((max(math.floor(lo), 0), min(math.ceil(hi), SIZE - 1)))
    return result


def _exported(net, tmp_path):
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(net, (torch.zeros(1, 3, SIZE, SIZE),)), path)
    return load_model(str(path)).module


class FixedSize(torch.nn.Module):
    """The eager network, refusing other input sizes as an exported program does."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        if tuple(x.shape) != (1, 3, SIZE, SIZE):
            raise ValueError("fixed input size")
        return self.net(x)


@pytest.mark.parametrize("family", list(ZOO))
def test_geometry_matches_brute_force_dependence(family):
    factory, layers = ZOO[family]
    net = factory()
    geometry = layer_geometry(net, list(layers), SIZE)
    for layer, kind in layers.items():
        g = geometry[layer]
        assert g.is_global == (kind == "global"), (layer, g)
        assert not g.problem, (layer, g.problem)
        for axis in (0, 1):
            count = g.output_shape[1 + axis]
            found = dependence(net, layer, axis)
            if g.is_global:
                # Every line reaches some position, and positions reach far beyond a local box
                # (a real network need not use every connection: saturation, dead units).
                assert found.any(1).all() and found.sum(0).max() >= SIZE // 2, (layer, axis)
                continue
            expected = expected_lines(g, axis, count)
            for i in range(count):
                rows = np.flatnonzero(found[:, i])
                assert len(rows), (layer, axis, i)
                lo, hi = expected[i]
                # Every dependence lies in the theoretical field, and (without holes of dilated
                # kernels or supports alternating after upsampling) reaches both its ends.
                assert lo <= rows[0] and rows[-1] <= hi, (layer, axis, i, rows, (lo, hi), g)
                if family not in ("dilated", "decoder"):
                    assert (rows[0], rows[-1]) == (lo, hi), (layer, axis, i, rows, (lo, hi), g)


@pytest.mark.parametrize("family", list(ZOO))
def test_exported_program_has_the_same_geometry(family, tmp_path):
    factory, layers = ZOO[family]
    net = factory()
    eager = layer_geometry(FixedSize(net), [f"net.{layer}" for layer in layers], SIZE)
    exported = layer_geometry(_exported(net, tmp_path), list(layers), SIZE)
    for layer in layers:
        a, b = eager[f"net.{layer}"], exported[layer]
        assert (a.rf, a.stride, a.offset, a.is_global, a.rf_clipped, a.output_shape) == (
            b.rf, b.stride, b.offset, b.is_global, b.rf_clipped, b.output_shape,
        ), layer  # fmt: skip


def test_token_layers_are_units_over_the_patch_grid(tmp_path):
    import warnings

    from zoo_models import vit

    from dissect.geometry import geometry_table
    from dissect.images import Preprocess
    from dissect.models import LoadedModel
    from dissect.streaming import run_dissection

    net = vit()
    g = layer_geometry(net, ["block", "norm"], SIZE)["block"]
    assert g.output_shape == (16, 4, 4) and g.extra_tokens == 1  # 1 class token + 4x4 patches
    assert g.is_global and "attention" in g.global_reason
    assert (g.stride, g.offset) == ((8, 8), (3.5, 3.5))  # where the 8 px patches sit
    note = geometry_table(net, SIZE).set_index("layer").loc["block", "note"]
    assert "4x4 grid + 1 extra" in note
    loaded = LoadedModel(net, "vit", preprocess=Preprocess(SIZE))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = run_dissection(loaded, "synthetic:6:3", tmp_path, ["block"], topk=2, progress=False)
    # Brute force: the block's tokens without the class token, unit by unit.
    source = open_dissected_data(d)
    images = torch.stack([loaded.preprocess.tensor(source.read_rgb(i)) for i in range(6)])
    with torch.inference_mode():
        tokens = net.block(_tokens(net, images))
    maps = tokens[:, 1:].transpose(1, 2).reshape(6, 16, 4, 4)
    peak = maps.flatten(2).amax(2)  # (images, units)
    top = d.topk("block")
    np.testing.assert_array_equal(top["index"][:, 0], peak.argmax(0).numpy())
    np.testing.assert_allclose(top["score"][:, 0], peak.amax(0).numpy(), rtol=1e-5)


def _tokens(net, images):
    tokens = net.patch(images).flatten(2).transpose(1, 2)
    return torch.cat([net.cls.expand(len(images), -1, -1), tokens], 1) + net.pos


@pytest.mark.parametrize("family", list(ZOO))
def test_run_rf_segment_and_report(family, tmp_path):
    import warnings

    from dissect.images import Preprocess
    from dissect.models import LoadedModel
    from dissect.report import write_report
    from dissect.rf import Measurements, OcclusionConfig, discrepancy_maps, noise_patch
    from dissect.segment import write_segments
    from dissect.streaming import run_dissection

    net = ZOO[family][0]()
    names = list(ZOO[family][1])
    layers = [names[0], names[-1]]
    spec = f"{Path(__file__).parent / 'zoo_models.py'}:{family}"
    loaded = LoadedModel(net, spec, preprocess=Preprocess(SIZE))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = run_dissection(loaded, "synthetic:6:1", tmp_path, layers, topk=2, progress=False)
    source = open_dissected_data(d)
    images = torch.stack([loaded.preprocess.tensor(source.read_rgb(i)) for i in range(6)])
    with LayerTrace(net, layers) as trace, torch.inference_mode():
        outputs = trace(images)
    for layer in layers:
        # dissect run's top image of every unit against all activations computed at once.
        peak = outputs[layer].flatten(2).amax(2)  # (images, units)
        top = d.topk(layer)
        np.testing.assert_allclose(top["score"][:, 0], peak.amax(0).numpy(), rtol=1e-4, atol=1e-5)
        ordered = peak.sort(0, descending=True).values
        clear = (ordered[0] - ordered[1] > 1e-4).numpy()
        np.testing.assert_array_equal(top["index"][clear, 0], peak.argmax(0).numpy()[clear])
    layer = layers[-1]
    geometry = d.geometry(layer)
    top = d.topk(layer)
    measurements = Measurements(
        top["index"][:2, 0], np.arange(2), top["y"][:2, 0], top["x"][:2, 0]
    )  # fmt: skip
    patch = noise_patch(loaded.preprocess, 7, 0)
    config = OcclusionConfig(occluder=7, stride=5)
    run = (net, layer, geometry, images.__getitem__, measurements, patch, config)
    naive = discrepancy_maps(*run, method="naive", progress=False)
    np.testing.assert_allclose(
        discrepancy_maps(*run, progress=False), naive, rtol=1e-5, atol=1e-5
    )  # fmt: skip
    segments = write_segments(d, layers=[layer], units=[0], top=2, model=loaded, progress=False)
    assert len(segments) > 0
    assert write_report(d, progress=False).is_file()
