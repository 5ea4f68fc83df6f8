"""Concept masks predicted by a segmenter: decoding, bad input, batching, and labels from
`dissect run --iou --segmenter` equal to labels from the true masks when the segmenter is exact."""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from dissect.cli import main
from dissect.datasets import open_data
from dissect.datasets.folder import ImageFolder
from dissect.datasets.synthetic.textures import COLORS
from dissect.errors import DissectError
from dissect.labels import read_labels
from dissect.segmenter import PredictedSource, SegmenterConcepts


class Fixed(nn.Module):
    """Returns the same scores for every image; counts its calls."""

    def __init__(self, scores: torch.Tensor):
        super().__init__()
        self.scores, self.calls = scores, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.scores.expand(len(x), *self.scores.shape[1:])


TABLE = pd.DataFrame(
    {
        "index": [0, 1, 2, 3, 4],
        "name": ["", "cat", "dog", "fur", "whisker"],
        "category": ["object", "object", "object", "material", "part"],
        "head": ["things", "things", "things", "fur", "whisker"],
    }
)


def _scores() -> torch.Tensor:
    scores = torch.zeros(1, 5, 2, 3)
    scores[0, 1, 0, :] = 5.0  # cat on row 0
    scores[0, 2, 1, 2] = 5.0  # dog at (1, 2); (1, 0), (1, 1): none wins
    scores[0, 3] = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0]])  # fur where > 0
    scores[0, 4, 0, 0] = 0.5  # whisker at (0, 0) only
    return scores


def test_heads_decode_pixel_by_pixel():
    concepts = SegmenterConcepts(TABLE)
    table = concepts.concepts
    number = dict(zip(table["name"], table["number"], strict=True))
    maps = concepts.decode(_scores())[0]
    cat, dog, fur, whisker = (number[k] for k in ("cat", "dog", "fur", "whisker"))
    np.testing.assert_array_equal(maps["object"][0], [[cat, cat, cat], [0, 0, dog]])
    np.testing.assert_array_equal(maps["material"][0], [[fur, 0, fur], [0, fur, 0]])
    np.testing.assert_array_equal(maps["part"][0], [[whisker, 0, 0], [0, 0, 0]])


def test_bad_tables_and_outputs_are_one_line():
    with pytest.raises(DissectError, match="class names collide"):
        SegmenterConcepts(TABLE.assign(name=["", "cat", "cat", "fur", "whisker"]))
    with pytest.raises(DissectError, match="every output channel 0..C-1"):
        SegmenterConcepts(TABLE.assign(index=[0, 1, 2, 3, 7]))
    with pytest.raises(DissectError, match="lacks column"):
        SegmenterConcepts(TABLE.drop(columns="category"))
    concepts = SegmenterConcepts(TABLE)
    with pytest.raises(DissectError, match=r"not \(B, 5, h, w\)"):
        concepts.decode(torch.zeros(1, 6, 2, 3))  # table size != C
    with pytest.raises(DissectError, match=r"not \(B, 5, h, w\)"):
        concepts.decode(torch.zeros(1, 5))  # a classifier, not a segmenter


def _folder(tmp_path, sizes):
    for i, (height, width) in enumerate(sizes):
        rgb = np.random.default_rng(i).integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(tmp_path / f"img{i}.png")
    return ImageFolder(tmp_path)


def test_masks_come_back_at_each_image_size_one_forward_per_batch(tmp_path):
    segmenter = Fixed(_scores())
    source = PredictedSource(
        _folder(tmp_path, [(4, 6), (8, 12), (2, 3), (6, 6), (4, 6)]),
        segmenter,
        TABLE,
        batch_size=2,
        device="cpu",
    )
    for index in range(len(source)):
        rgb = source.read_rgb(index)
        labels = source.segmentation(index).pixel["object"][0]
        assert labels.shape == rgb.shape[:2]
    assert segmenter.calls == 3  # 5 images in blocks of 2
    wide = source.segmentation(1).pixel["object"][0]  # 8 x 12: each score cell is 4 x 4
    assert (wide[:4] == wide[0, 0]).all() and wide[0, 0] > 0 and (wide[4:, :8] == 0).all()


def test_segmenter_output_with_the_wrong_batch_is_refused(tmp_path):
    source = PredictedSource(
        _folder(tmp_path, [(4, 6)] * 3),
        Fixed(torch.zeros(1, 5, 2, 3)[:, :, :, :]).eval(),
        TABLE,
        batch_size=3,
        device="cpu",
    )
    source.model.module.forward = lambda x: torch.zeros(1, 5, 2, 3)
    with pytest.raises(DissectError, match="score maps for a batch of 3"):
        source.segmentation(0)


ORACLE = """
import numpy as np
import torch
from torch import nn
from dissect.datasets.synthetic.textures import color_names


class ColourOracle(nn.Module):
    # the synthetic world's colour of every pixel, read off the normalised input exactly
    def forward(self, x):
        rgb = torch.round((x * 0.25 + 0.5) * 255).clamp(0, 255).byte()
        names = color_names(rgb.permute(0, 2, 3, 1).numpy())
        hot = torch.nn.functional.one_hot(torch.from_numpy(names).long(), 11)
        return hot.permute(0, 3, 1, 2).float()


def oracle():
    return ColourOracle()
"""


def test_labels_from_an_exact_segmenter_equal_those_from_true_masks(tmp_path, capsys):
    (tmp_path / "oracle.py").write_text(textwrap.dedent(ORACLE))
    table = pd.DataFrame({"index": range(len(COLORS)), "name": COLORS, "category": "color"})
    table.to_csv(tmp_path / "colours.csv", index=False)
    common = [
        "scene-cnn",
        "synthetic:48:3",
        "--layers",
        "conv1",
        "--topk",
        "5",
        "--iou",
        "--batch-size",
        "16",
        "--device",
        "cpu",
    ]
    assert main(["run", *common, "--out", str(tmp_path / "true")]) == 0
    segmenter = [
        "--segmenter",
        f"{tmp_path / 'oracle.py'}:oracle",
        "--concepts",
        str(tmp_path / "colours.csv"),
        "--segmenter-size",
        "112",
        "--segmenter-mean",
        "0.5,0.5,0.5",
        "--segmenter-std",
        "0.25,0.25,0.25",
    ]
    assert (
        main(
            [
                "run",
                *common,
                "--out",
                str(tmp_path / "pred"),
                *segmenter,
                "--save-masks",
                str(tmp_path / "masks"),
            ]
        )
        == 0
    )
    assert "masks predicted by" in capsys.readouterr().out

    def colour_iou(directory):
        concepts = pd.read_csv(directory / "iou" / "concepts.csv", keep_default_na=False)
        iou = np.load(directory / "iou" / "conv1.npz")["iou"]
        keep = (concepts["category"] == "color").to_numpy()
        return pd.DataFrame(iou[:, keep], columns=concepts["name"][keep])[list(COLORS)]

    true, pred = colour_iou(tmp_path / "true"), colour_iou(tmp_path / "pred")
    np.testing.assert_allclose(pred.to_numpy(), true.to_numpy(), atol=1e-6)
    assert (
        main(
            [
                "autolabel",
                str(tmp_path / "pred"),
                "--permutations",
                "0",
                "--batch-size",
                "16",
                "--device",
                "cpu",
                *segmenter,
            ]
        )
        == 0
    )
    np.testing.assert_allclose(colour_iou(tmp_path / "pred").to_numpy(), true.to_numpy(), atol=1e-6)
    assert true.to_numpy().max() > 0.04  # the units do detect colours
    labels = read_labels(tmp_path / "pred")
    assert set(labels["segmenter"]) == {f"{tmp_path / 'oracle.py'}:oracle"}
    assert set(labels["category"].dropna()) <= {"color"}
    assert main(["report", str(tmp_path / "pred")]) == 0
    page = (tmp_path / "pred" / "report" / "index.html").read_text()
    assert f"iou (masks predicted by {tmp_path / 'oracle.py'}:oracle)" in page
    assert (
        main(
            [
                "compare",
                str(tmp_path / "true"),
                str(tmp_path / "pred"),
                "--out",
                str(tmp_path / "cmp"),
            ]
        )
        == 0
    )
    networks = pd.read_csv(tmp_path / "cmp" / "networks.csv", keep_default_na=False)
    assert list(networks["segmenter"]) == ["", f"{tmp_path / 'oracle.py'}:oracle"]
    saved = open_data(str(tmp_path / "masks"))
    world = open_data("synthetic:48:3")
    number = dict(zip(saved.concepts["name"], saved.concepts["number"], strict=True))
    truth = world.segmentation(5).pixel["color"][0]
    names = world.concept_names()
    expected = np.vectorize(lambda n: number[names[n]])(truth)
    np.testing.assert_array_equal(saved.segmentation(5).pixel["color"][0], expected)


def test_segmenter_flags_without_iou_or_segmenter_are_one_line(tmp_path, capsys):
    args = ["run", "scene-cnn", "synthetic:4", "--out", str(tmp_path / "x")]
    assert main([*args, "--segmenter", "world-fcn"]) != 0
    assert "add --iou" in capsys.readouterr().err
    assert main([*args, "--iou", "--concepts", "x.csv"]) != 0
    assert "need --segmenter" in capsys.readouterr().err


def test_world_fcn_names_the_world_concepts_and_evaluate_prints_each_category(tmp_path, capsys):
    from dissect.datasets.synthetic import concept_table
    from dissect.zoo.world_fcn import CHANNELS, WorldFCN
    from dissect.zoo.world_fcn import concept_table as fcn_table

    table = fcn_table()
    assert len(table) == CHANNELS
    world = set(zip(concept_table()["category"], concept_table()["name"], strict=True))
    named = table[table["name"] != ""]
    assert set(zip(named["category"], named["name"], strict=True)) <= world
    assert WorldFCN()(torch.zeros(2, 3, 112, 112)).shape == (2, CHANNELS, 112, 112)
    torch.manual_seed(0)
    torch.save(WorldFCN().state_dict(), tmp_path / "random.pt")
    args = ["evaluate", "world-fcn", "synthetic:6:7", "--weights", str(tmp_path / "random.pt")]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["object", "part", "material", "color"]
    assert all("mean IoU" in line and "pixel accuracy" in line for line in lines)


def test_segment_recipe_keeps_every_epoch(tmp_path, capsys):
    from dissect.zoo.train import main as train

    out = tmp_path / "fcn.pt"
    args = [
        "--task",
        "segment",
        "--out",
        str(out),
        "--images",
        "8",
        "--val-images",
        "4",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--threads",
        "1",
        "--keep-epochs",
    ]
    assert train(args) == 0
    assert "mIoU: object" in capsys.readouterr().out
    first, last = (torch.load(tmp_path / f"fcn.epoch{n}.pt", weights_only=True) for n in (1, 2))
    final = torch.load(out, weights_only=True)
    assert all(torch.equal(final[key], last[key]) for key in final)
    assert not all(torch.equal(first[key], last[key]) for key in first)
