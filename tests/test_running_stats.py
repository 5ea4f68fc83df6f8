"""Streaming statistics against brute force; merging and state round trips."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from dissect.running_stats import TailQuantile, UnitStats


def activations(images=40, units=5, size=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    acts = torch.randn(images, units, size, size, generator=generator)
    acts[3] = acts[7]  # exact ties: the lower image index must win
    return acts


def feed(stats, acts, batch, start=0):
    for first in range(0, len(acts), batch):
        chunk = acts[first : first + batch]
        stats.add(chunk, torch.arange(start + first, start + first + len(chunk)))
    return stats


def brute_topk(acts, k):
    flat = acts.flatten(2)
    score, where = flat.max(2).values.numpy(), flat.argmax(2).numpy()
    index = np.stack([np.lexsort((np.arange(len(acts)), -score[:, u]))[:k] for u in range(5)])
    return index, np.take_along_axis(score.T, index, 1), where.T


@pytest.mark.parametrize("batch", [1, 7, 40])
def test_topk_mean_max_match_brute_force(batch):
    acts = activations()
    stats = feed(UnitStats(5, k=6, max_values=40 * 36, quantile=0.01), acts, batch)
    got = stats.topk()
    index, score, where = brute_topk(acts, 6)
    np.testing.assert_array_equal(got["index"], index)
    np.testing.assert_allclose(got["score"], score)
    peaks = np.take_along_axis(where, index, 1)
    np.testing.assert_array_equal(got["y"] * 6 + got["x"], peaks)
    np.testing.assert_allclose(stats.max(), acts.amax((0, 2, 3)).numpy())
    np.testing.assert_allclose(stats.mean(), acts.double().mean((0, 2, 3)).numpy(), rtol=1e-6)


def test_threshold_is_exact_while_the_tail_fits():
    acts = activations()
    stats = feed(UnitStats(5, k=2, max_values=40 * 36, quantile=0.01), acts, 9)
    values = acts.transpose(0, 1).reshape(5, -1).numpy()
    rank = int(0.01 * values.shape[1])
    expected = -np.sort(-values, axis=1)[:, rank]
    np.testing.assert_array_equal(stats.threshold(), expected)


def test_threshold_sketch_keeps_the_requested_fraction_on_long_streams():
    generator = torch.Generator().manual_seed(0)
    scale = torch.linspace(0.5, 4, 8)[:, None]
    batches = [torch.randn(8, 20000, generator=generator).exp() * scale for _ in range(50)]
    sketch = TailQuantile(units=8, quantile=0.005, max_values=50 * 20000, seed=3)
    for values in batches:
        sketch.add(values)
    assert sketch.level > 0, "the stream must be long enough to need sampling"
    everything = torch.cat(batches, 1)
    above = (everything > torch.from_numpy(sketch.threshold())[:, None]).double().mean(1)
    np.testing.assert_allclose(above.numpy(), 0.005, rtol=0.1)
    assert sketch.capacity <= 4097 and sketch.values.shape[1] <= 2 * sketch.capacity  # bounded


def test_threshold_is_exact_below_the_bound_and_refuses_more_values():
    values = torch.randn(3, 1000, generator=torch.Generator().manual_seed(1))
    sketch = TailQuantile(units=3, quantile=0.01, max_values=1500)
    for chunk in values.split(70, dim=1):
        sketch.add(chunk)
    expected = values.sort(1, descending=True).values[:, 10]  # 1% of the 1000 values seen
    np.testing.assert_array_equal(sketch.threshold(), expected.numpy())
    with pytest.raises(ValueError, match="at most 1500 values"):
        sketch.add(values)
    np.testing.assert_array_equal(sketch.threshold(), expected.numpy())  # nothing lost


def test_merged_shards_equal_one_pass_for_topk_and_mean():
    acts = activations(images=30)
    whole = feed(UnitStats(5, k=4, max_values=30 * 36), acts, 8)
    left = feed(UnitStats(5, k=4, max_values=30 * 36), acts[:13], 5)
    right = feed(UnitStats(5, k=4, max_values=30 * 36, seed=1), acts[13:], 5, start=13)
    right.merge(left)  # order of merging must not matter
    for key, value in whole.topk().items():
        np.testing.assert_array_equal(right.topk()[key], value)
    np.testing.assert_allclose(right.mean(), whole.mean(), rtol=1e-12)
    np.testing.assert_array_equal(right.max(), whole.max())
    np.testing.assert_array_equal(right.threshold(), whole.threshold())  # exact regime


def test_state_round_trip_resumes_identically():
    acts = activations(images=60, size=12)
    options = dict(k=3, max_values=60 * 144, quantile=0.05, sketch_size=64)
    straight = feed(UnitStats(5, **options), acts, 10)
    first = feed(UnitStats(5, **options), acts[:30], 10)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = UnitStats.from_state_dict(torch.load(buffer, weights_only=True))
    feed(resumed, acts[30:], 10, start=30)
    assert straight.tail.level > 0
    np.testing.assert_array_equal(resumed.threshold(), straight.threshold())
    for key, value in straight.topk().items():
        np.testing.assert_array_equal(resumed.topk()[key], value)


def test_non_spatial_layers_have_peak_at_origin():
    stats = UnitStats(3, k=2, max_values=2)
    stats.add(torch.tensor([[1.0, 5.0, -1.0], [2.0, 0.0, -3.0]]), torch.tensor([0, 1]))
    got = stats.topk()
    np.testing.assert_array_equal(got["index"], [[1, 0], [0, 1], [0, 1]])
    assert not got["y"].any() and not got["x"].any()


def test_dead_unit_keeps_the_first_images_whatever_the_sign_of_zero():
    acts = torch.zeros(12, 2, 3, 3)
    acts[2, 0] = -0.0  # a conv can give -0.0: it ties with 0.0
    acts[:, 1] = -torch.arange(12.0)[:, None, None]  # negative scores: image 0 is best
    stats = feed(UnitStats(2, k=4, max_values=12 * 9), acts, 5)
    got = stats.topk()
    np.testing.assert_array_equal(got["index"], [[0, 1, 2, 3], [0, 1, 2, 3]])
    assert not got["y"].any() and not got["x"].any()
    np.testing.assert_array_equal(stats.threshold(), [0.0, 0.0])
