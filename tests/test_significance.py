"""Significance of IoU labels: the permutation null against a brute-force re-pairing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_SPEC
from test_iou import BROKEN, CONCEPTS, PREPROCESS, TinyWorld

from dissect.dissection import Dissection
from dissect.errors import DissectError
from dissect.iou import autolabel, best_concepts, compute_iou
from dissect.iou.concepts import ConceptBatch, ConceptIndex, ImageConcepts
from dissect.iou.significance import (
    PermutationNull,
    benjamini_hochberg,
    partners,
    permutation_p_values,
    significance,
)
from dissect.iou.tally import IoUStats
from dissect.labels import read_labels
from dissect.models import load_model
from dissect.semantics import detectors
from dissect.streaming import run_dissection
from dissect.upsample import upsample_maps


@pytest.fixture(scope="module")
def dissected(tmp_path_factory):
    out = tmp_path_factory.mktemp("significance") / "run"
    with pytest.warns(UserWarning, match="world/004"):
        run_dissection(
            TINY_SPEC, TinyWorld(), out, ["conv2"], topk=3, quantile=0.2,
            preprocess=PREPROCESS, progress=False, seed=5,
        )  # fmt: skip
    return Dissection(out)


def per_image(dissection: Dissection, source: TinyWorld):
    """Unit masks, concept regions and annotated categories of every readable image."""
    model = load_model(TINY_SPEC).module
    thresholds = dissection.thresholds("conv2")
    numbers = CONCEPTS["number"].tolist()
    found = {}
    for i in range(len(source)):
        if i == BROKEN:
            continue
        x = PREPROCESS.tensor(source.read_rgb(i))[None]
        with torch.no_grad():
            acts = model.conv2(model.pool1(torch.relu(model.conv1(x))))
        maps = upsample_maps(acts, dissection.geometry("conv2"), (16, 16))[0].numpy()
        seg = source.segmentation(i)
        regions = np.zeros((len(numbers), 16, 16), dtype=bool)
        for column, number in enumerate(numbers):
            for maps_of_category in seg.pixel.values():
                for label_map in maps_of_category:
                    regions[column] |= PREPROCESS.display_labels(label_map) == number
            if any(number in values for values in seg.image.values()):
                regions[column] = True
        present = {c for c, v in seg.pixel.items() if v} | {c for c, v in seg.image.items() if v}
        found[i] = (maps > thresholds[:, None, None], regions, present)
    return found


def brute_force_null(found, batch_size: int, seed: int, permutation: int) -> np.ndarray:
    """Best IoU of every unit when image i's masks meet the concepts of its partner, by sets."""
    categories = CONCEPTS["category"].tolist()
    units = next(iter(found.values()))[0].shape[0]
    inter = np.zeros((units, len(categories)))
    union_unit = np.zeros((units, len(categories)))
    concept_area = np.zeros(len(categories))
    for first in range(0, 11, batch_size):
        read = [i for i in range(first, min(first + batch_size, 11)) if i in found]
        rows = partners(read, seed, permutation)
        for row, image in enumerate(read):
            masks = found[image][0]
            _, regions, present = found[read[rows[row]]]
            concept_area += regions.sum((1, 2))
            for column, category in enumerate(categories):
                inter[:, column] += (masks & regions[column]).sum((1, 2))
                if category in present:
                    union_unit[:, column] += masks.sum((1, 2))
    union = union_unit + concept_area - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0).max(1)


@pytest.mark.filterwarnings("ignore:skipped image")
@pytest.mark.parametrize("batch_size", [3, 5])
def test_null_matches_brute_force_repairing(dissected, batch_size):
    nulls = {}
    compute_iou(
        dissected, source=TinyWorld(), batch_size=batch_size, progress=False, checkpoint=False,
        permutations=3, nulls=nulls,
    )  # fmt: skip
    found = per_image(dissected, TinyWorld())
    expected = np.stack(
        [brute_force_null(found, batch_size, 5, p) for p in range(3)]
    )  # the dissection's seed
    np.testing.assert_allclose(nulls["conv2"].best(), expected, rtol=1e-12)
    assert (expected > 0).any()


def test_partners_are_one_cycle_keyed_on_global_indices():
    indices = [40, 3, 17, 8, 99, 21]
    rows = partners(indices, seed=1, permutation=0)
    assert sorted(rows) == list(range(6)) and (rows != np.arange(6)).all()
    seen, row = set(), 0
    for _ in range(6):
        seen.add(row)
        row = rows[row]
    assert seen == set(range(6))  # a single cycle: nobody is paired with itself
    shuffled = [8, 99, 40, 21, 3, 17]  # the same images listed in another order
    other = partners(shuffled, seed=1, permutation=0)
    pairs = {indices[i]: indices[rows[i]] for i in range(6)}
    assert pairs == {shuffled[i]: shuffled[other[i]] for i in range(6)}
    assert not np.array_equal(partners(indices, 1, 1), rows) or not np.array_equal(
        partners(indices, 2, 0), rows
    )
    assert partners([7], 0, 0).tolist() == [0]


def test_p_value_goes_below_the_permutation_floor_and_z_score():
    best = np.array([0.5, 0.1, 0.0])
    null = np.array([[0.1, 0.2, 0.0], [0.2, 0.1, 0.0], [0.3, 0.0, 0.0]])
    np.testing.assert_allclose(permutation_p_values(best, null), [0.25, 0.75, 1.0])
    p_value, z_score = significance(best, null)
    # The studentized Gumbel tail for P = 3, by brute force: one more draw 3 (or 0) standard
    # deviations above the mean of three others.
    draws = np.random.default_rng(5).gumbel(size=(400000, 4))
    t = (draws[:, 0] - draws[:, 1:].mean(1)) / draws[:, 1:].std(1, ddof=1)
    np.testing.assert_allclose(p_value[:2], [(t >= 3).mean(), (t >= 0).mean()], rtol=0.05)
    assert p_value[2] == 1.0  # no spread: the permutation p-value
    assert p_value[0] < 0.25 / 2 and p_value[1] > 0.25  # the first below the floor 1 / (P + 1)
    assert z_score[0] == pytest.approx((0.5 - 0.2) / 0.1)
    assert np.isnan(z_score[2])


def test_asymptotic_p_values_are_calibrated_on_a_null_of_maxima():
    """The real value is one more draw of the null: the share of p <= alpha is alpha when the
    null is Gumbel, at most alpha in the tail for the best of 50 independent normal 'concepts'
    (whose maximum approaches the Gumbel slowly, with a lighter tail)."""
    rng = np.random.default_rng(0)
    gumbel = rng.gumbel(size=(20, 40000))  # (P + 1, units)
    p_value, _ = significance(gumbel[0], gumbel[1:])
    for alpha in (0.001, 0.01, 0.05, 0.2, 0.5):
        assert abs((p_value <= alpha).mean() - alpha) < 0.1 * alpha + 0.0005, alpha
    normal = rng.normal(size=(20, 20000, 50)).max(2)
    p_value, _ = significance(normal[0], normal[1:])
    for alpha in (0.001, 0.01, 0.05):
        assert (p_value <= alpha).mean() <= alpha, alpha


def test_benjamini_hochberg_matches_scipy():
    from scipy.stats import false_discovery_control

    rng = np.random.default_rng(1)
    p = np.concatenate([rng.random(40), rng.random(10) * 1e-3])
    np.testing.assert_allclose(benjamini_hochberg(p), false_discovery_control(p), rtol=1e-12)
    with_gaps = p.copy()
    with_gaps[[3, 7]] = np.nan  # units without a null: not in the family
    q = benjamini_hochberg(with_gaps)
    assert np.isnan(q[[3, 7]]).all()
    kept = np.isfinite(with_gaps)
    np.testing.assert_allclose(q[kept], false_discovery_control(p[kept]), rtol=1e-12)
    assert np.isnan(benjamini_hochberg(np.array([np.nan]))).all()


def test_a_planted_detector_is_significant_and_random_units_are_not():
    rng = np.random.default_rng(0)
    count, pixels, concepts, noisy = 16, 64, 3, 40
    images = [
        ImageConcepts(
            torch.from_numpy(rng.integers(-1, concepts, (1, pixels))),
            torch.zeros(0, dtype=torch.int64),
            torch.ones(1, dtype=torch.bool),
        )
        for _ in range(count)
    ]
    batch = ConceptBatch.stack(images, pixels, concepts)
    planted = batch.pixel[:, None, :, 0] == 1  # unit 0 fires exactly on concept 1
    noise = torch.from_numpy(rng.random((count, noisy, pixels)) < 0.3)  # the others anywhere
    masks = torch.cat([planted, noise], 1)
    units = 1 + noisy
    category_of = np.zeros(concepts, dtype=np.int64)
    real = IoUStats(units, category_of, 1)
    null = PermutationNull(units, category_of, 1, permutations=9, seed=0)
    real.add(masks, batch)
    null.add_concepts(batch, list(range(100, 100 + count)))
    image, unit = torch.arange(count).repeat_interleave(units), torch.arange(units).repeat(count)
    null.add_masks(masks.reshape(count * units, pixels), image, unit, batch)
    p_value, z_score = significance(real.iou().max(1), null.best())
    assert real.iou()[0, 1] == 1.0
    assert p_value[0] < 1e-6 and z_score[0] > 5  # far below the permutation floor 1 / (P + 1)
    assert 0.3 < p_value[1:].mean() < 0.7  # about uniform
    assert (p_value[1:] <= 0.1).mean() < 0.25
    q_value = benjamini_hochberg(p_value)
    assert q_value[0] < 0.05 and (q_value[1:] > 0.05).all()
    np.testing.assert_array_equal(null.counts[0].concept_area, real.concept_area)
    np.testing.assert_array_equal(null.counts[0].unit_area, real.unit_area)


def test_dead_units_get_no_label():
    index = ConceptIndex(CONCEPTS)
    iou = np.zeros((2, len(CONCEPTS)))
    iou[1, 3] = 0.2
    table = best_concepts(iou, index)
    assert table["label"].isna().tolist() == [True, False]
    assert table["concept"].isna().tolist() == [True, False]
    assert table.loc[1, "label"] == "cat"


@pytest.mark.filterwarnings("ignore:skipped image")
def test_labels_carry_p_values_and_max_p_selects_detectors(dissected):
    labels = autolabel(dissected, source=TinyWorld(), batch_size=4, progress=False, permutations=4)
    assert labels["p_value"].between(0, 1).all()
    np.testing.assert_allclose(labels["q_value"], benjamini_hochberg(labels["p_value"]))
    table = read_labels(dissected.directory)
    assert table["p_value"].tolist() == pytest.approx(labels["p_value"].tolist())
    assert table["q_value"].tolist() == pytest.approx(labels["q_value"].tolist())
    assert "z_score" in table
    assert len(detectors(table, min_iou=0.0, fdr=0.5)) == (labels["q_value"] <= 0.5).sum()
    everything = detectors(table, min_iou=0.0)
    strict = detectors(table, min_iou=0.0, max_p=0.2)
    assert len(strict) == (labels["p_value"] <= 0.2).sum() < len(everything)
    crowd = pd.DataFrame(
        {"layer": ["x"], "unit": [0], "label": ["sky"], "category": ["region"],
         "precision": [0.9], "iou": [np.nan], "p_value": [np.nan], "source": ["crowd"]}
    )  # fmt: skip
    assert len(detectors(crowd, max_p=0.01)) == 1  # --max-p concerns automatic labels only
    null = np.load(dissected.path("iou", "conv2.npz"))["null_best"]
    assert null.shape == (4, 6)


def test_batches_of_one_image_cannot_give_a_null(dissected):
    with pytest.raises(DissectError, match="--batch-size"):
        compute_iou(dissected, source=TinyWorld(), batch_size=1, permutations=2)


def test_mapping_applies_to_the_dataset_category_in_every_command(tmp_path):
    from dissect.taxonomy import Taxonomy

    labels = pd.DataFrame(
        {"layer": ["a", "a"], "unit": [0, 1], "label": ["wood", "sky"],
         "category": ["texture", "region"], "concept_category": ["material", None],
         "precision": [np.nan, 0.9], "iou": [0.3, np.nan], "source": ["iou", "crowd"]}
    )  # fmt: skip
    mine = Taxonomy.from_mapping({"material": "object"})
    # autolabel without --mapping wrote category "texture"; stats --mapping must still apply.
    assert detectors(labels, taxonomy=mine)["type"].tolist() == ["object", "region"]


def test_max_p_on_the_command_line(tmp_path, capsys):
    from dissect.cli import main

    out = tmp_path / "world"
    argv = ["run", TINY_SPEC, "synthetic:8", "--layers", "conv2", "--out", str(out)]
    assert main([*argv, "--image-size", "32", "--topk", "2", "--quantile", "0.05"]) == 0
    assert main(["autolabel", str(out), "--batch-size", "4", "--permutations", "3"]) == 0
    assert "p <= " not in capsys.readouterr().out
    labels = read_labels(out)
    assert labels["p_value"].dropna().between(0, 1).all() and labels["q_value"].notna().all()
    assert main(["stats", str(out), "--min-iou", "0", "--max-p", "0.25"]) == 0
    strict = pd.read_csv(out / "layer_types.csv")["n_units"].sum()
    assert strict == len(detectors(labels, min_iou=0, max_p=0.25))
    assert main(["report", str(out), "--max-p", "0.5"]) == 0
    assert "permutation p-value" in (out / "report" / "index.html").read_text(encoding="utf-8")
    with pytest.raises(SystemExit):
        main(["stats", str(out), "--max-p", "2"])
    assert "expected a p-value" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:skipped image")
def test_a_new_run_moves_later_stages_aside_and_stale_labels_are_refused(tmp_path, capsys):
    from dissect.cli import main
    from dissect.iou import read_iou

    out = tmp_path / "run"
    argv = ["run", TINY_SPEC, "synthetic:6:1", "--layers", "conv2", "--out", str(out)]
    options = ["--image-size", "32", "--topk", "2", "--quantile", "0.05"]
    assert main([*argv, *options]) == 0
    first = Dissection(out).run_id
    assert len(first) == 16
    assert main(["autolabel", str(out), "--batch-size", "3", "--permutations", "2"]) == 0
    assert set(read_labels(out)["run_id"]) == {first}
    assert main([*argv, *options]) == 0  # the same pass again: same run, labels stay current
    assert Dissection(out).run_id == first and (out / "labels.csv").is_file()
    (out / "report").mkdir()
    (out / "report" / "index.html").write_text("old report")
    with pytest.warns(UserWarning, match="moved to"):
        assert main([*argv[:2], "synthetic:6:2", *argv[3:], *options]) == 0  # other data
    second = Dissection(out).run_id
    assert second != first
    for name in ("labels.csv", "labels_iou.csv", "iou", "report"):
        assert not (out / name).exists()
        assert (out / "stale" / first / name).exists()
    assert read_labels(out).empty
    # An output copied back from the old run is refused, not shown as current.
    (out / "stale" / first / "labels_iou.csv").rename(out / "labels_iou.csv")
    (out / "stale" / first / "iou").rename(out / "iou")
    from dissect.labels import rebuild_labels

    rebuild_labels(out)
    with pytest.raises(DissectError, match=f"from run {first}"):
        read_labels(out)
    assert main(["report", str(out)]) == 2
    assert "dissect autolabel" in capsys.readouterr().err
    with pytest.raises(DissectError, match="dissect autolabel"):
        read_iou(out, "conv2")
    assert main(["autolabel", str(out), "--batch-size", "3", "--permutations", "2"]) == 0
    assert set(read_labels(out)["run_id"]) == {second}  # labelled again: current
    assert main(["report", str(out)]) == 0
    assert second in (out / "report" / "index.html").read_text(encoding="utf-8")


@pytest.mark.filterwarnings("ignore:skipped image")
def test_labels_written_before_run_ids_are_read_and_relabelled(dissected):
    old = pd.DataFrame(
        {"layer": ["conv9"], "unit": [0], "label": ["sky"], "iou": [0.2], "source": ["iou"]}
    )
    old.to_csv(dissected.directory / "labels_iou.csv", index=False)  # no run_id column
    from dissect.labels import rebuild_labels

    assert len(rebuild_labels(dissected.directory)) == 1
    assert len(read_labels(dissected.directory)) == 1  # accepted: written before run ids
    autolabel(dissected, source=TinyWorld(), batch_size=4, progress=False, permutations=0)
    labels = read_labels(dissected.directory, "iou")
    assert "conv9" in set(labels["layer"]) and len(labels) == 7


@pytest.mark.filterwarnings("ignore:skipped image")
def test_resumed_autolabel_gives_the_same_null_p_and_q_values(dissected):
    """The null's counts are saved with the real ones: an interrupted labelling resumed from its
    checkpoint writes the same null, p-values and q-values as one uninterrupted pass."""
    options = {"batch_size": 3, "progress": False, "permutations": 5, "workers": 0}
    whole = autolabel(dissected, source=TinyWorld(), restart=True, **options)
    null = np.load(dissected.path("iou", "conv2.npz"))["null_best"]
    with pytest.raises(KeyboardInterrupt):
        autolabel(dissected, source=TinyWorld(fail_at=7), **options)
    resumed = autolabel(dissected, source=TinyWorld(), **options)
    np.testing.assert_array_equal(np.load(dissected.path("iou", "conv2.npz"))["null_best"], null)
    for column in ("p_value", "q_value", "z_score"):
        np.testing.assert_array_equal(resumed[column], whole[column])
    assert whole["q_value"].notna().all()


def test_fdr_on_the_command_line(tmp_path, capsys):
    from dissect.cli import main

    out = tmp_path / "world"
    argv = ["run", TINY_SPEC, "synthetic:8", "--layers", "conv2", "--out", str(out)]
    assert main([*argv, "--image-size", "32", "--topk", "2", "--quantile", "0.05"]) == 0
    command = ["autolabel", str(out), "--batch-size", "4", "--permutations", "3"]
    assert main([*command, "--min-iou", "0", "--fdr", "0.5"]) == 0
    printed = capsys.readouterr().out
    labels = read_labels(out)
    count = int((labels["q_value"] <= 0.5).sum())
    assert f"conv2: {count} of {len(labels)} units" in printed and "q <= 0.5 (FDR)" in printed
    assert main(["autolabel", str(out), "--permutations", "0", "--fdr", "0.05"]) == 2
    assert "--fdr needs p-values" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*command, "--fdr", "1.5"])
