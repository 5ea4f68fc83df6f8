"""The maps `dissect run --iou` keeps until T is known: stored sparsely, counted exactly; the
concept masks of a batch sent from the loader's workers in a few tensors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dissect.datasets import open_data
from dissect.geometry import LayerGeometry
from dissect.images import Preprocess
from dissect.iou.concepts import ConceptBatch, ConceptIndex, ImageConcepts
from dissect.iou.kept_maps import KeptMaps
from dissect.iou.labelled_batches import LabelledDataset, collate_labelled
from dissect.iou.regions import segmentation_regions
from dissect.iou.tally import IoUStats, count_maps


def _concepts(rng, images: int, pixels: int) -> ConceptBatch:
    return ConceptBatch.stack(
        [
            ImageConcepts(
                torch.from_numpy(rng.integers(-1, 6, (2, pixels))),
                torch.zeros(0, dtype=torch.int64),
                torch.tensor([True, True]),
            )
            for _ in range(images)
        ],
        pixels,
        7,
    )


def _counts(maps, pairs, thresholds, geometry, size, concepts) -> IoUStats:
    stats = IoUStats(thresholds.numel(), np.array([0, 0, 0, 1, 1, 1, 1]), 2)
    count_maps(stats, maps, pairs, thresholds, geometry, size, concepts)
    return stats


@pytest.mark.parametrize(
    ("stride", "offset", "side", "bound"),
    [
        (4.0, 1.5, 13, "below"),
        (3.0, -2.0, 7, "below"),
        (8.0, 4.0, 5, "equal"),
        (4.0, 1.5, 9, "none"),
        (1.0, 0.0, 16, "below"),
    ],
)
def test_restored_maps_count_as_the_whole_maps(stride, offset, side, bound):
    """Counting maps restored from what is stored gives the counters of the whole maps: with T
    above L, T equal to L, L = -inf (nothing sampled yet), and NaN and -inf values planted."""
    rng = np.random.default_rng(side)
    size, units, images = 40, 5, 3
    geometry = LayerGeometry(
        "l", "Conv2d", (units, side, side), (9, 9), (stride, stride), (offset, offset)
    )
    acts = torch.from_numpy(rng.normal(size=(images, units, side, side)).astype(np.float32))
    acts[0, 1, 2, 3] = float("nan")
    acts[1, 2, 0, 0] = -float("inf")
    flat = acts.transpose(0, 1).reshape(units, -1).nan_to_num(neginf=-9).numpy()
    thresholds = torch.from_numpy(np.quantile(flat, 0.9, axis=1)).float()
    lower = {
        "below": torch.from_numpy(np.quantile(flat, 0.75, axis=1)).float(),
        "equal": thresholds.clone(),
        "none": torch.full((units,), -float("inf")),
    }[bound]
    image, unit = torch.meshgrid(torch.arange(images), torch.arange(units), indexing="ij")
    image, unit = image.reshape(-1), unit.reshape(-1)
    maps = acts[image, unit]
    kept = KeptMaps.of(maps, lower[unit])
    restored = kept.dense()
    concepts = _concepts(rng, images, size * size)
    whole = _counts(maps, (image, unit), thresholds, geometry, (size, size), concepts)
    mine = _counts(restored, (image, unit), thresholds, geometry, (size, size), concepts)
    assert whole.intersection.sum() > 0
    if bound != "none":
        assert kept.values.numel() < maps.numel()
        assert not torch.equal(restored.nan_to_num(), maps.nan_to_num())
    np.testing.assert_array_equal(mine.intersection.numpy(), whole.intersection.numpy())
    np.testing.assert_array_equal(mine.unit_area.numpy(), whole.unit_area.numpy())


def test_only_the_neighbourhood_of_values_above_the_bound_is_stored():
    """A value above L (or NaN) and its eight neighbours are stored; the rest comes back as L."""
    maps = torch.zeros(3, 6, 6)
    maps[0, 2, 3] = 5.0
    maps[1, 0, 0] = 5.0
    maps[2, 5, 1] = float("nan")
    kept = KeptMaps.of(maps, torch.tensor([1.0, 1.0, 1.0]))
    assert kept.counts.tolist() == [9, 4, 6]
    stored = torch.zeros(3, 36, dtype=torch.bool)
    stored[torch.arange(3).repeat_interleave(kept.counts), kept.cells.long()] = True
    expected = torch.zeros(3, 6, 6, dtype=torch.bool)
    expected[0, 1:4, 2:5] = True
    expected[1, 0:2, 0:2] = True
    expected[2, 4:6, 0:3] = True
    assert torch.equal(stored.view(3, 6, 6), expected)
    restored = kept.dense()
    torch.testing.assert_close(restored[expected], maps[expected], rtol=0, atol=0, equal_nan=True)
    assert (restored[~expected] == 1.0).all()
    # An early-layer map with a few values near the top costs a fraction of its whole bytes.
    big = torch.zeros(1, 56, 56)
    big[0, 10, 10] = big[0, 40, 20] = 3.0
    assert KeptMaps.of(big, torch.tensor([1.0])).nbytes * 50 < big.nbytes


def test_select_cat_and_state_round_trip():
    rng = np.random.default_rng(0)
    maps = torch.from_numpy(rng.normal(size=(6, 5, 4)).astype(np.float32))
    lower = torch.full((6,), 0.5)
    kept = KeptMaps.of(maps, lower)
    keep = torch.tensor([True, False, True, True, False, True])
    parts = [KeptMaps.of(maps[:3], lower[:3]), KeptMaps.of(maps[3:], lower[3:])]
    assert torch.equal(KeptMaps.cat(parts).dense(), kept.dense())
    assert torch.equal(kept.select(keep).dense(), kept.dense()[keep])
    again = KeptMaps.from_state_dict(kept.state_dict())
    assert torch.equal(again.dense(), kept.dense()) and again.shape == (5, 4)


def _tensors(value) -> int:
    """Tensors reachable from ``value`` through dataclasses, lists and tuples."""
    if isinstance(value, torch.Tensor):
        return 1
    if dataclasses.is_dataclass(value):
        return sum(_tensors(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, (list, tuple)):
        return sum(_tensors(item) for item in value)
    return 0


def test_a_batch_sends_its_concept_masks_in_two_tensors():
    """Whatever the number of images, a labelled batch holds a fixed number of tensors (each a
    shared-memory file when a worker sends it), and unpacks into every image's regions; an
    image whose masks failed stays in the batch without them."""
    source = open_data("synthetic:7")
    preprocess = Preprocess(48)
    index = ConceptIndex(source.concepts)
    dataset = LabelledDataset(source, preprocess, range(7), index)
    items = [dataset[i] for i in range(7)]
    items[3] = (*items[3][:3], None, "unreadable label map")
    batch = collate_labelled(items)
    assert _tensors(batch) <= 6
    assert batch.unlabelled == [(3, "unreadable label map")]
    concepts = batch.concepts()
    assert concepts[3] is None
    for position in (0, 1, 2, 4, 5, 6):
        expected = segmentation_regions(source.segmentation(position), index, preprocess)
        assert concepts[position].region.dtype == expected.region.dtype
        assert torch.equal(concepts[position].region, expected.region)
        assert torch.equal(concepts[position].hits, expected.hits)
