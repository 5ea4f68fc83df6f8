"""IoU labels in the same pass as the statistics equal ``dissect autolabel``'s, resumed or not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_SPEC, make_image_folder
from test_iou import PREPROCESS, TinyWorld

from dissect.cli import main
from dissect.datasets.masks import Segmentation
from dissect.dissection import Dissection
from dissect.errors import DissectError
from dissect.images import ImageReadError, Preprocess
from dissect.iou import autolabel, samepass
from dissect.iou import regions as regions_module
from dissect.iou.concepts import ConceptBatch, ConceptIndex, ImageConcepts
from dissect.iou.regions import PairedCounts, RegionGroup, region_concepts, segmentation_regions
from dissect.iou.significance import PermutationNull
from dissect.iou.tally import IoUStats
from dissect.running_stats import TailQuantile
from dissect.streaming import run_dissection

pytestmark = pytest.mark.usefixtures("contiguous_forward")

LAYERS = ["conv1", "conv2"]
BIG = Preprocess(64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))  # conv1: 11 x 4096 values, sampled
WIDE = Preprocess((24, 40), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


class Maskless(TinyWorld):
    """TinyWorld whose image 7 has a label map that cannot be read."""

    def segmentation(self, index: int):
        if index == 7:
            raise ImageReadError("corrupt label map")
        return super().segmentation(index)


def run(out: Path, source, preprocess, batch_size: int, **options) -> Dissection:
    return run_dissection(TINY_SPEC, source, out, LAYERS, topk=3, quantile=0.2,
                          batch_size=batch_size, preprocess=preprocess, device="cpu",
                          progress=False, **options)  # fmt: skip


def assert_same_labels(got: Path, expected: Path) -> None:
    """Same statistics, IoU tables, concept and skipped lists, and labels.csv."""
    for name in ("units.csv", "images.csv", "labels.csv", "iou/concepts.csv", "iou/skipped.csv"):
        assert (got / name).read_text() == (expected / name).read_text(), name
    for layer in LAYERS:
        mine = np.load(got / "iou" / f"{layer}.npz")
        theirs = np.load(expected / "iou" / f"{layer}.npz")
        assert sorted(mine.files) == sorted(theirs.files)
        for key in theirs.files:
            np.testing.assert_array_equal(mine[key], theirs[key], err_msg=f"{layer} {key}")
    assert not (got / ".checkpoint").exists()


def autolabelled(
    tmp_path: Path, source, preprocess, batch_size: int, permutations: int = 19
) -> Path:
    """``dissect run`` then ``dissect autolabel``, the two-pass way."""
    out = tmp_path / "two-pass"
    run(out, source, preprocess, batch_size)
    options = {"batch_size": batch_size, "permutations": permutations}
    autolabel(out, source=source, progress=False, **options)
    return out


@pytest.mark.filterwarnings("ignore:skipped image")
@pytest.mark.parametrize(
    ("source", "preprocess", "batch_size", "budget", "permutations"),
    [
        (TinyWorld(), PREPROCESS, 3, 2**26, 19),  # everything held in memory
        (TinyWorld(), PREPROCESS, 3, 2**26, 0),  # no null
        (TinyWorld(), PREPROCESS, 3, 1, 19),  # every batch spilled to disk
        (TinyWorld(), PREPROCESS, 3, 1, 0),
        (Maskless(), PREPROCESS, 2, 2**26, 19),  # a label map that cannot be read
        (TinyWorld(), BIG, 4, 5000, 19),  # the threshold sketch samples; some batches spilled
        (TinyWorld(), BIG, 4, 5000, 0),
        (TinyWorld(), WIDE, 3, 1, 5),  # a non-square input, spilled
    ],
)
def test_same_pass_labels_equal_autolabel(tmp_path, monkeypatch, source, preprocess,
                                          batch_size, budget, permutations):  # fmt: skip
    """Labels, IoU tables and the permutation null's p-, z- and q-values (``null_best``) equal
    those of ``dissect run`` then ``dissect autolabel`` with the same permutations."""
    monkeypatch.setattr(samepass, "PENDING_BYTES", budget)
    spills = []
    original = samepass.PendingIoU.spill
    monkeypatch.setattr(samepass.PendingIoU, "spill",
                        lambda self: spills.append(1) or original(self))  # fmt: skip
    out = tmp_path / "same-pass"
    run(out, source, preprocess, batch_size, iou=True, permutations=permutations)
    expected = autolabelled(tmp_path, source, preprocess, batch_size, permutations)
    assert_same_labels(out, expected)
    assert ("null_best" in np.load(out / "iou" / "conv2.npz").files) == bool(permutations)
    labels = pd.read_csv(out / "labels.csv")
    for column in ("p_value", "q_value"):  # every layer's, without a second pass
        assert labels[column].notna().any() == bool(permutations), column
    if budget < 2**20:
        assert spills, "the test must exercise the files on disk"
    labels = (out / "labels.csv").read_text()
    assert "conv2" in labels and ",iou," in labels.replace("\r", "")
    if preprocess is BIG:
        sketch = TailQuantile(1, 0.2, 11 * 64 * 64)
        assert sketch.level > 0, "the sketch must sample in this case"
    if isinstance(source, Maskless):
        assert "corrupt label map" in (out / "iou" / "skipped.csv").read_text()


@pytest.mark.filterwarnings("ignore:skipped image")
def test_resumed_same_pass_writes_identical_files(tmp_path, monkeypatch):
    monkeypatch.setattr(samepass, "PENDING_BYTES", 1)  # a file per batch: some written late
    expected = tmp_path / "whole"
    run(expected, TinyWorld(), PREPROCESS, 2, iou=True)
    out = tmp_path / "resumed"
    # Checkpoints after 4 and 8 images; image 7 interrupts batch [6, 7], after batch [4, 5]
    # was written to disk but not checkpointed: the resumed run must not count it twice.
    with pytest.raises(KeyboardInterrupt):
        run(out, TinyWorld(fail_at=7), PREPROCESS, 2, iou=True, checkpoint_every=4, workers=0)
    parts = sorted(path.name for path in (out / ".checkpoint" / "iou-rank0").iterdir())
    assert parts == ["part000000.pt", "part000001.pt", "part000002.pt"]
    with pytest.raises(DissectError, match="iou concepts changed.*--restart"):
        run(out, TinyWorld(), PREPROCESS, 2, checkpoint_every=4)  # without --iou: refused
    run(out, TinyWorld(), PREPROCESS, 2, iou=True, checkpoint_every=4)
    assert_same_labels(out, expected)


def test_lower_bound_never_exceeds_the_final_threshold():
    generator = torch.Generator().manual_seed(1)
    values = torch.randn(40, 3, 500, generator=generator).exp()
    for quantile in (0.01, 0.3):  # exact, then sampled
        sketch = TailQuantile(3, quantile, 40 * 500, size=256, seed=2)
        bounds = []
        for image in range(40):
            sketch.add(values[image : image + 1], torch.tensor([image]))
            bounds.append(sketch.lower_bound())
        final = torch.from_numpy(sketch.threshold())
        assert all((bound <= final).all() for bound in bounds)
        assert torch.isfinite(bounds[20]).all()  # it does rise before the end
    assert sketch.level > 0


def test_iou_needs_concept_masks_and_says_so_before_probing(tmp_path, capsys, monkeypatch):
    def probe(*args):
        raise AssertionError("probed the network before refusing the data")

    monkeypatch.setattr("dissect.streaming.layer_geometry", probe)
    images = make_image_folder(tmp_path / "images", count=3)
    argv = ["run", TINY_SPEC, str(images), "--out", str(tmp_path / "out"), "--iou",
            "--image-size", "16", "--device", "cpu"]  # fmt: skip
    assert main(argv) != 0
    assert "has no concept masks" in capsys.readouterr().err


def random_concepts(generator, maps: int, pixels: int, concepts: int) -> ImageConcepts:
    """One image's concept masks: ``maps`` label maps, an image-level concept, 3 categories."""
    pixel = torch.randint(-1, concepts - 1, (maps, pixels), generator=generator)
    for later in range(1, maps):  # a concept at most once per pixel, as ImageConcepts holds
        for earlier in range(later):
            pixel[later][pixel[later] == pixel[earlier]] = -1
    pixel[pixel == concepts - 1] = -1
    present = torch.rand(3, generator=generator) > 0.3
    return ImageConcepts(pixel, torch.tensor([concepts - 1]), present)


@pytest.mark.parametrize("table_bytes", [2**28, 0])  # the pairing table whole, or looked up
@pytest.mark.parametrize(("maps", "concepts"), [(4, 68), (12, 300)])  # 300**12: no int64 key
@pytest.mark.parametrize("chunk", [2**22, 40])  # one chunk, or chunks of 8 pixels in any order
def test_region_counts_equal_pixel_counts_and_the_null(
    maps, concepts, table_bytes, chunk, monkeypatch
):
    """Counting through regions (all pairings at once) gives IoUStats' and PermutationNull's
    numbers, however many label maps an image has, and in chunks of pixels of a few pairs
    (counted in bins of those pairs only)."""
    monkeypatch.setattr(regions_module, "PAIRING_TABLE_BYTES", table_bytes)
    monkeypatch.setattr(regions_module, "CHUNK", chunk)
    generator = torch.Generator().manual_seed(3)
    pixels, units, indices = 60, 5, [11, 4, 9, 30]
    images = [random_concepts(generator, maps, pixels, concepts) for _ in indices]
    category_of = torch.randint(0, 3, (concepts,), generator=generator)
    stats, null = IoUStats(units, category_of, 3), PermutationNull(units, category_of, 3, 4, 7)
    batch = ConceptBatch.stack(images, pixels, concepts)
    stats.add_concepts(batch)
    null.add_concepts(batch, indices)
    image = torch.tensor([0, 0, 1, 2, 3, 3])
    unit = torch.tensor([0, 4, 2, 2, 1, 4])
    masks = torch.rand(len(image), pixels, generator=generator) > 0.6
    pair, position = masks.nonzero(as_tuple=True)
    if chunk < 2**22:  # chunks of pairs in no order, some far from the first pair
        order = torch.randperm(len(pair), generator=generator)
        pair, position = pair[order], position[order]
    stats.add_pixels(pair, position, image, unit, batch)
    null.add_pixels(pair, position, image, unit, batch)
    regions = [region_concepts(concepts_of, concepts) for concepts_of in images]
    counts = PairedCounts(units, category_of.numpy(), 3, 5)
    counts.add_pixels(pair, position, image, unit, RegionGroup.stack(regions, indices, 4, 7))
    area = sum(r.area(concepts) for r in regions)
    np.testing.assert_array_equal(area.numpy(), batch.area.numpy())
    real, paired_null = counts.results(area, len(indices), 7)
    for mine, theirs in zip([real, *paired_null.counts], [stats, *null.counts], strict=True):
        for key, value in theirs.state_dict().items():
            np.testing.assert_array_equal(np.asarray(mine.state_dict()[key]), np.asarray(value))


@pytest.mark.parametrize(
    ("shape", "preprocess"),
    [
        ((30, 50), Preprocess(16)),  # shrunk, the sides cropped
        ((7, 9), Preprocess((20, 12))),  # enlarged, non-square
        ((16, 16), Preprocess(16)),  # the input's size: kept as it is
        ((12, 20), Preprocess(16, resize=24)),  # resized past the input, then cropped
        ((3, 400), Preprocess(8)),  # a long strip: only the part the crop keeps is resampled
    ],
)
def test_regions_of_the_label_maps_equal_regions_of_the_resized_maps(shape, preprocess):
    """``dissect run --iou``'s loader finds the regions at the label maps' size and resizes the
    region map: the same regions, numbered the same, as resizing every label map first."""
    rng = np.random.default_rng(5)
    categories = ["object", "object", "part", "part", "color", "scene"]
    concepts = pd.DataFrame({"number": [1, 2, 3, 5, 8, 9], "name": list("abcdef"),
                             "category": categories})  # fmt: skip
    index = ConceptIndex(concepts)
    segmentation = Segmentation(
        pixel={  # numbers 4 and 7 are not in the table; 2 is also image-level; 3 is in two maps
            "object": [rng.choice([0, 1, 2, 4], shape), rng.choice([0, 1, 3], shape)],
            "part": [rng.choice([0, 3, 5, 7], shape)],
            "color": [rng.choice([8, 0], shape)],
        },
        image={"object": [2], "scene": [9]},
    )
    mine = segmentation_regions(segmentation, index, preprocess)
    expected = region_concepts(index.image_concepts(segmentation, preprocess), len(index))
    assert mine.region.dtype == expected.region.dtype
    np.testing.assert_array_equal(mine.region.numpy(), expected.region.numpy())
    np.testing.assert_array_equal(mine.hits.numpy(), expected.hits.numpy())
    assert len(mine.hits) > 4  # a real test: many regions


def test_a_large_pairing_table_is_looked_up_not_held(monkeypatch):
    """Past PAIRING_TABLE_BYTES a batch's regions under 1 + P pairings are looked up for the
    mask pixels counted: the group holds each pixel's region once (at batch 64, 224 px and 19
    permutations the whole table takes 128 MB), and reads what the whole table holds."""
    generator = torch.Generator().manual_seed(5)
    pixels, concepts, permutations, indices = 400, 20, 19, [3, 8, 1, 6, 2]
    images = [random_concepts(generator, 3, pixels, concepts) for _ in indices]
    regions = [region_concepts(concepts_of, concepts) for concepts_of in images]

    def held(group: RegionGroup) -> int:
        return sum(t.numel() for t in (group.regions, group.rows, group.offset, group.table))

    whole = RegionGroup.stack(regions, indices, permutations, 7)
    monkeypatch.setattr(regions_module, "PAIRING_TABLE_BYTES", 0)
    group = RegionGroup.stack(regions, indices, permutations, 7)
    alone = RegionGroup.stack(regions, indices, 0, 7)
    assert whole.whole is not None and group.whole is None
    assert held(group) - held(alone) == permutations * len(indices)  # the partners alone
    image, where = torch.tensor([0, 4, 2, 2]), torch.tensor([0, 399, 17, 250])
    met = group.met(image, where)
    assert torch.equal(met, whole.met(image, where))
    for i, (b, p) in enumerate(zip(image.tolist(), where.tolist(), strict=True)):
        for pairing in range(1 + permutations):
            partner = int(group.rows[pairing, b])
            expected = pairing * group.width + int(regions[partner].region[p])
            assert int(met[i, pairing]) == expected


def test_the_null_needs_two_images_a_batch_and_says_so(tmp_path, capsys):
    argv = ["run", TINY_SPEC, "synthetic:4", "--out", str(tmp_path / "out"), "--iou",
            "--image-size", "16", "--device", "cpu", "--batch-size", "1"]  # fmt: skip
    assert main(argv) != 0
    assert "--batch-size of at least 2" in capsys.readouterr().err
    assert main([*argv, "--permutations", "0"]) == 0
    labels = pd.read_csv(tmp_path / "out" / "labels.csv")
    assert len(labels) and labels["p_value"].isna().all()
