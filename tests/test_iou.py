"""IoU labelling against a brute-force computation on a tiny segmented source."""

from __future__ import annotations

import io
import os
import signal

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_SPEC

from dissect.checkpoint import Checkpoint
from dissect.cli import main
from dissect.datasets.masks import Segmentation, SegmentedSource
from dissect.directory import IOU_CHECKPOINT as CHECKPOINT_FOLDER
from dissect.dissection import Dissection
from dissect.errors import DissectError
from dissect.images import ImageReadError, Preprocess
from dissect.iou import autolabel, compute_iou, read_iou
from dissect.iou.concepts import ImageConcepts
from dissect.iou.tally import IoUStats
from dissect.labels import read_labels, write_labels
from dissect.models import load_model
from dissect.streaming import run_dissection
from dissect.upsample import upsample_maps

pytestmark = pytest.mark.usefixtures("contiguous_forward")

PREPROCESS = Preprocess(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
CONCEPTS = pd.DataFrame(
    {
        "number": [1, 2, 3, 4, 5, 7, 9],
        "name": ["red", "blue", "dog", "cat", "leg", "kitchen", "<b>street</b>"],
        "category": ["color", "color", "object", "object", "part", "scene", "scene"],
    }
)
BROKEN = 4


class TinyWorld(SegmentedSource):
    """Random images of odd sizes with hand-made random label maps; image 4 is unreadable."""

    concepts = CONCEPTS
    spec = "tiny-world"

    def __init__(self, count: int = 11, fail_at: int | None = None, term_at: int | None = None):
        self.count = count
        self.fail_at = fail_at
        self.term_at = term_at

    def __len__(self) -> int:
        return self.count

    def image_id(self, index: int) -> str:
        return f"world/{index:03d}"

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng(100 + index)

    def _size(self, index: int) -> tuple[int, int]:
        return 16 + index % 3 * 4, 16 + index % 2 * 6

    def read_rgb(self, index: int) -> np.ndarray:
        if index == self.fail_at:
            raise KeyboardInterrupt
        if index == self.term_at:
            os.kill(os.getpid(), signal.SIGTERM)
        if index == BROKEN:
            raise ImageReadError("corrupt")
        return self._rng(index).integers(0, 256, (*self._size(index), 3), dtype=np.uint8)

    def segmentation(self, index: int) -> Segmentation:
        rng = self._rng(index + 1000)
        shape = self._size(index)
        colors = rng.choice([0, 1, 2], shape)
        # Two object maps that overlap, sometimes on the same concept: unions must not count twice.
        objects = [rng.choice([0, 3, 4], shape), rng.choice([0, 0, 3], shape)]
        pixel = {"color": [colors], "object": objects}
        if index % 2 == 0:  # only even images have part annotations
            pixel["part"] = [rng.choice([0, 5], shape, p=[0.7, 0.3])]
        image = {"scene": [7] if index % 3 else [9]}
        if index == 6:  # an image-level concept that also appears at pixel level
            image["object"] = [3]
        return Segmentation(pixel=pixel, image=image)


def brute_force(spec: str, source: TinyWorld, dissection: Dissection, layer: str) -> np.ndarray:
    """IoU by definition: per image, per unit, per concept, with numpy sets of pixels."""
    model = load_model(spec).module
    thresholds = dissection.thresholds(layer)
    geometry = dissection.geometry(layer)
    numbers = CONCEPTS["number"].tolist()
    categories = dict(zip(CONCEPTS["number"], CONCEPTS["category"], strict=True))
    units = len(thresholds)
    inter = np.zeros((units, len(numbers)))
    unit_area = {name: np.zeros(units) for name in set(categories.values())}
    concept_area = np.zeros(len(numbers))
    for i in range(len(source)):
        if i == BROKEN:
            continue
        x = PREPROCESS.tensor(source.read_rgb(i))[None]
        with torch.no_grad():
            acts = model.conv1(x)
            if layer == "conv2":
                acts = model.conv2(model.pool1(torch.relu(acts)))
        maps = upsample_maps(acts, geometry, (16, 16))[0].numpy()
        masks = maps > thresholds[:, None, None]
        seg = source.segmentation(i)
        present = {c for c, v in seg.pixel.items() if v} | {c for c, v in seg.image.items() if v}
        for name in present:
            unit_area[name] += masks.sum((1, 2))
        for column, number in enumerate(numbers):
            region = np.zeros((16, 16), dtype=bool)
            for maps_of_category in seg.pixel.values():
                for label_map in maps_of_category:
                    region |= PREPROCESS.display_labels(label_map) == number
            if any(number in values for values in seg.image.values()):
                region[:] = True
            concept_area[column] += region.sum()
            for unit in range(units):
                inter[unit, column] += (masks[unit] & region).sum()
    union = np.stack([unit_area[categories[n]] for n in numbers], 1) + concept_area - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


@pytest.fixture(scope="module")
def dissected(tmp_path_factory):
    out = tmp_path_factory.mktemp("iou") / "run"
    with pytest.warns(UserWarning, match="world/004"):
        run_dissection(
            TINY_SPEC,
            TinyWorld(),
            out,
            ["conv1", "conv2"],
            topk=3,
            quantile=0.2,
            preprocess=PREPROCESS,
            progress=False,
        )
    return Dissection(out)


@pytest.fixture(scope="module")
def expected(dissected):
    return {
        layer: brute_force(TINY_SPEC, TinyWorld(), dissected, layer) for layer in ("conv1", "conv2")
    }


@pytest.mark.filterwarnings("ignore:skipped image")
@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_iou_matches_brute_force(dissected, expected, batch_size):
    stats, index = compute_iou(
        dissected, source=TinyWorld(), batch_size=batch_size, progress=False, checkpoint=False
    )
    assert index.table["number"].tolist() == CONCEPTS["number"].tolist()
    for layer in ("conv1", "conv2"):
        assert stats[layer].images == 10
        np.testing.assert_allclose(stats[layer].iou(), expected[layer], rtol=1e-12)
    assert (expected["conv2"] > 0).any() and (expected["conv2"] < 1).any()  # a real test


def saved_state(dissection: Dissection) -> dict:
    path = dissection.path(CHECKPOINT_FOLDER, "rank0.pt")
    return torch.load(path, weights_only=True)["state"]


@pytest.mark.filterwarnings("ignore:skipped image")
def test_interrupted_pass_resumes_from_checkpoint_with_the_same_batch_size(dissected, expected):
    with pytest.raises(KeyboardInterrupt):
        compute_iou(
            dissected, source=TinyWorld(fail_at=7), batch_size=3, progress=False, workers=0
        )  # read in this process: the interruption is raised here
    state = saved_state(dissected)
    assert state["pass"]["done"] == 6  # two whole batches kept; the batch in flight lost
    assert state["listeners"]["iou"]["layers"]["conv1"]["images"] == 5  # image 4 was skipped
    # torchrun cuts shards on batch boundaries: another batch size is refused, not misread.
    with pytest.raises(DissectError, match="batch_size 3 -> 4.*--restart"):
        compute_iou(dissected, source=TinyWorld(), batch_size=4, progress=False)
    stats, _ = compute_iou(dissected, source=TinyWorld(), batch_size=3, progress=False)
    np.testing.assert_allclose(stats["conv2"].iou(), expected["conv2"], rtol=1e-12)
    stats, _ = compute_iou(
        dissected, source=TinyWorld(), batch_size=4, progress=False, restart=True
    )
    np.testing.assert_allclose(stats["conv2"].iou(), expected["conv2"], rtol=1e-12)
    Checkpoint(dissected.directory, {}, 0, CHECKPOINT_FOLDER).remove()


@pytest.mark.filterwarnings("ignore:skipped image")
def test_sigterm_saves_the_batch_in_flight_and_checkpoints_go_by_time(
    dissected, expected, monkeypatch
):
    with pytest.raises(KeyboardInterrupt):
        compute_iou(
            dissected, source=TinyWorld(term_at=7), batch_size=3, progress=False, workers=0
        )  # read in this process: the signal is sent to it
    assert saved_state(dissected)["pass"]["done"] == 9  # the batch in flight finished and was saved
    saves = []
    original = Checkpoint.save

    def counted(self, state):
        saves.append(state["pass"]["done"])
        original(self, state)

    monkeypatch.setattr(Checkpoint, "save", counted)
    stats, _ = compute_iou(dissected, source=TinyWorld(), batch_size=3, progress=False)
    np.testing.assert_allclose(stats["conv1"].iou(), expected["conv1"], rtol=1e-12)
    assert saves == [11]  # not after every batch: once at the end (well within 60 s)
    saves.clear()
    compute_iou(dissected, source=TinyWorld(), batch_size=3, progress=False, restart=True,
                checkpoint_seconds=0)  # fmt: skip
    assert saves == [3, 6, 9, 11, 11]
    Checkpoint(dissected.directory, {}, 0, CHECKPOINT_FOLDER).remove()


@pytest.mark.filterwarnings("ignore:skipped image")
def test_autolabel_writes_labels_and_tables(dissected, expected):
    write_labels(
        dissected.directory,
        "crowd",
        pd.DataFrame({"layer": ["conv1"], "unit": [0], "label": ["sky"], "category": ["region"]}),
    )
    labels = autolabel(dissected, source=TinyWorld(), batch_size=5, progress=False)
    assert len(labels) == 4 + 6
    conv2 = labels[labels["layer"] == "conv2"].reset_index(drop=True)
    best = expected["conv2"].argmax(1)
    assert conv2["label"].tolist() == CONCEPTS["name"].to_numpy()[best].tolist()
    np.testing.assert_allclose(conv2["iou"], expected["conv2"].max(1), rtol=1e-12)
    categories = CONCEPTS["category"].to_numpy()[best]
    assert conv2["concept_category"].tolist() == categories.tolist()
    assert conv2["category"].tolist() == categories.tolist()  # these map onto themselves
    merged = read_labels(dissected.directory)
    assert len(merged) == 10
    first = merged[(merged["layer"] == "conv1") & (merged["unit"] == 0)].iloc[0]
    assert (first["label"], first["source"]) == ("sky", "crowd")  # crowd labels win
    table = read_iou(dissected, "conv2")
    assert table.shape == (6, 7)
    assert table[("scene", "<b>street</b>")].tolist() == pytest.approx(expected["conv2"][:, 6])
    assert not dissected.path(CHECKPOINT_FOLDER).exists()
    autolabel(dissected, ["conv2"], source=TinyWorld(), progress=False)
    assert len(read_labels(dissected.directory, "iou")) == 10  # conv1 labels kept


def random_batch(rng, count, units=3, pixels=10, concepts=4):
    masks = torch.from_numpy(rng.random((count, units, pixels)) < 0.4)
    images = [
        ImageConcepts(
            torch.from_numpy(rng.integers(-1, concepts, (2, pixels))),
            torch.from_numpy(rng.choice(concepts, rng.integers(0, 2), replace=False)),
            torch.from_numpy(rng.random(2) < 0.7),
        )
        for _ in range(count)
    ]
    return masks, images


def test_stats_merge_and_state_dict_are_exact():
    rng = np.random.default_rng(0)
    masks, images = random_batch(rng, 9)
    category_of = np.array([0, 0, 1, 1])
    whole = IoUStats(3, category_of, 2)
    whole.add(masks, images)
    first, second = IoUStats(3, category_of, 2), IoUStats(3, category_of, 2)
    first.add(masks[:4], images[:4])
    second.add(masks[4:], images[4:])
    buffer = io.BytesIO()
    torch.save(second.state_dict(), buffer)
    buffer.seek(0)
    restored = IoUStats.from_state_dict(torch.load(buffer, weights_only=True))
    merged = first.merge(restored)
    assert merged.images == 9
    np.testing.assert_array_equal(merged.iou(), whole.iou())
    np.testing.assert_array_equal(merged.intersection.numpy(), whole.intersection.numpy())


def test_autolabel_command_explains_missing_masks(tmp_path, image_folder, tiny_spec, capsys):
    out = tmp_path / "d"
    argv = ["run", tiny_spec, str(image_folder), "--layers", "conv1", "--out", str(out)]
    with pytest.warns(UserWarning):
        assert main([*argv, "--image-size", "16", "--topk", "2"]) == 0
    assert main(["autolabel", str(out)]) == 2
    assert "no concept masks" in capsys.readouterr().err


def test_autolabel_stats_report_commands_on_the_synthetic_world(tmp_path, tiny_spec, capsys):
    out = tmp_path / "world"
    argv = ["run", tiny_spec, "synthetic:6", "--layers", "conv2", "--out", str(out)]
    assert main([*argv, "--image-size", "32", "--topk", "2", "--quantile", "0.05"]) == 0
    assert main(["autolabel", str(out), "--batch-size", "4"]) == 0
    assert "conv2: " in capsys.readouterr().out
    labels = read_labels(out)
    assert len(labels) == 6 and set(labels["source"]) == {"iou"}
    iou = read_iou(out, "conv2")
    np.testing.assert_allclose(labels["iou"], iou.to_numpy().max(1))
    assert set(labels["category"]) <= {"color", "texture", "region", "part", "object", "scene"}
    assert main(["stats", str(out), "--min-iou", "0"]) == 0
    assert pd.read_csv(out / "layer_types.csv")["n_units"].sum() == 6
    assert main(["report", str(out)]) == 0
    assert "conv2" in (out / "report" / "index.html").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("stride", "offset", "side"), [(4.0, 1.5, 13), (3.0, -2.0, 7), (1.0, 0.0, 16), (8.0, 4.0, 1)]
)
def test_sparse_tally_equals_dense_upsampled_masks(stride, offset, side):
    """Counting only the cells that can exceed T gives the counts of every upsampled map."""
    from dissect.geometry import LayerGeometry
    from dissect.iou.concepts import ConceptBatch
    from dissect.iou.tally import count_layer

    rng = np.random.default_rng(side)
    size, units, images = 40, 5, 3
    geometry = LayerGeometry(
        "l", "Conv2d", (units, side, side), (9, 9), (stride, stride), (offset, offset)
    )
    acts = torch.from_numpy(rng.normal(size=(images, units, side, side)).astype(np.float32))
    thresholds = torch.from_numpy(np.quantile(acts.numpy(), 0.9, axis=(0, 2, 3))).float()
    concepts = ConceptBatch.stack(
        [
            ImageConcepts(
                torch.from_numpy(rng.integers(-1, 6, (2, size * size))),
                torch.tensor([6]) if i == 1 else torch.zeros(0, dtype=torch.int64),
                torch.tensor([True, i != 2]),
            )
            for i in range(images)
        ],
        size * size,
        7,
    )
    category_of = np.array([0, 0, 0, 1, 1, 1, 1])
    sparse, dense = IoUStats(units, category_of, 2), IoUStats(units, category_of, 2)
    count_layer(sparse, acts, thresholds, geometry, (size, size), concepts)
    masks = upsample_maps(acts, geometry, (size, size)) > thresholds[None, :, None, None]
    dense.add_masks(
        masks.reshape(images * units, -1),
        torch.arange(images).repeat_interleave(units),
        torch.arange(units).repeat(images),
        concepts,
    )
    assert masks.any() and not masks.all()
    np.testing.assert_array_equal(sparse.intersection.numpy(), dense.intersection.numpy())
    np.testing.assert_array_equal(sparse.unit_area.numpy(), dense.unit_area.numpy())


@pytest.mark.parametrize("nudge", [0.0, -1e-7, 1e-7])
def test_sparse_tally_at_the_threshold_equals_dense_upsampled_masks(nudge):
    """Plateaus exactly at, just below and just above the threshold, and thresholds equal to
    upsampled values: the pixel rows counted whole or skipped by their end pixels give the
    counts of every upsampled map."""
    from dissect.geometry import LayerGeometry
    from dissect.iou.concepts import ConceptBatch
    from dissect.iou.tally import count_layer

    rng = np.random.default_rng(11)
    size, units, images, side = 48, 4, 3, 6
    geometry = LayerGeometry("l", "Conv2d", (units, side, side), (9, 9), (8.0, 8.0), (3.5, 3.5))
    levels = torch.tensor([0.25, 0.5, 0.75, 1.0])
    acts = levels[torch.from_numpy(rng.integers(0, 4, (images, units, side, side)))]
    upsampled = upsample_maps(acts, geometry, (size, size))
    thresholds = torch.tensor(
        [0.5 * (1 + nudge), 0.75 * (1 + nudge), float(upsampled[1, 2, 20, 13]), 0.3]
    )
    concepts = ConceptBatch.stack(
        [
            ImageConcepts(
                torch.from_numpy(rng.integers(-1, 6, (2, size * size))),
                torch.zeros(0, dtype=torch.int64),
                torch.tensor([True, True]),
            )
            for _ in range(images)
        ],
        size * size,
        7,
    )
    category_of = np.array([0, 0, 0, 1, 1, 1, 1])
    sparse, dense = IoUStats(units, category_of, 2), IoUStats(units, category_of, 2)
    count_layer(sparse, acts, thresholds, geometry, (size, size), concepts)
    masks = upsampled > thresholds[None, :, None, None]
    dense.add_masks(
        masks.reshape(images * units, -1),
        torch.arange(images).repeat_interleave(units),
        torch.arange(units).repeat(images),
        concepts,
    )
    assert (upsampled == thresholds[None, :, None, None]).any()
    np.testing.assert_array_equal(sparse.intersection.numpy(), dense.intersection.numpy())
    np.testing.assert_array_equal(sparse.unit_area.numpy(), dense.unit_area.numpy())
