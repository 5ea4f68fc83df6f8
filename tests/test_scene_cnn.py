"""The built-in CNNs (scene-cnn, object-cnn): architecture, shipped weights, evaluation,
training determinism."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from dissect.cli import main
from dissect.datasets.synthetic import SyntheticWorld
from dissect.datasets.synthetic.scenes import OBJECTS
from dissect.errors import DissectError
from dissect.evaluate import average_precision, class_map, evaluate
from dissect.models import load_model, read_state_dict
from dissect.zoo.scene_cnn import (
    OBJECT_WEIGHTS_PATH,
    WEIGHTS_PATH,
    SceneCNN,
    fold_batch_norm,
    object_cnn,
    scene_cnn,
)
from dissect.zoo.train import (
    Recipe,
    accuracy,
    augment,
    mean_average_precision,
    render_world,
    train,
)
from dissect.zoo.train import (
    main as train_main,
)

LAYERS = [
    "conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "conv3", "relu3", "conv4", "relu4",
    "conv5", "relu5", "pool5", "avgpool", "dropout", "fc",
]  # fmt: skip


def test_layer_names_and_shapes():
    model = scene_cnn().eval()
    assert [name for name, _ in model.named_children()] == LAYERS
    assert model(torch.zeros(2, 3, 112, 112)).shape == (2, 8)
    assert model.features(torch.zeros(1, 3, 112, 112)).shape[-2:] == (4, 4)


def test_folding_batch_norm_changes_nothing():
    torch.manual_seed(0)
    trained = SceneCNN(batch_norm=True)
    for module in trained.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 2)
            module.bias.data.uniform_(-1, 1)
    trained.eval()
    x = torch.randn(3, 3, 112, 112)
    assert torch.allclose(fold_batch_norm(trained).eval()(x), trained(x), atol=1e-4)


@pytest.mark.parametrize(
    ("path", "factory"), [(WEIGHTS_PATH, scene_cnn), (OBJECT_WEIGHTS_PATH, object_cnn)]
)
def test_shipped_weights_are_a_small_plain_state_dict(path, factory):
    assert path.stat().st_size <= 10 * 2**20
    state = read_state_dict(path)  # weights_only=True
    assert set(state) == set(factory().state_dict())


def test_shipped_model_classifies_fresh_images_well_above_chance():
    loaded = load_model("scene-cnn")
    assert loaded.classes == tuple(SyntheticWorld(1).classes)
    images, labels = render_world(SyntheticWorld(96, seed=2024), progress=False)
    assert accuracy(loaded.module, images, labels) >= 0.6  # chance is 1/8


def test_evaluate_does_not_depend_on_batch_size():
    loaded = load_model("scene-cnn")
    results = {
        size: evaluate(loaded, "synthetic:12:77", batch_size=size, progress=False)
        for size in (1, 5, 12)
    }
    images, labels = render_world(SyntheticWorld(12, seed=77), progress=False)
    assert set(results.values()) == {accuracy(loaded.module, images, labels)}
    assert evaluate(loaded, "synthetic:12:77", limit=7, progress=False) == accuracy(
        loaded.module, images[:7], labels[:7]
    )


def test_folder_classes_are_matched_by_name(tmp_path, capsys):
    world = SyntheticWorld(16, seed=5)
    for i in range(len(world)):
        folder = tmp_path / world.classes[world.label(i)]
        folder.mkdir(exist_ok=True)
        Image.fromarray(world.read_rgb(i)).save(folder / f"{i}.png")
    loaded = load_model("scene-cnn")
    images, labels = render_world(world, progress=False)
    assert evaluate(loaded, str(tmp_path), progress=False) == accuracy(
        loaded.module, images, labels
    )
    assert main(["evaluate", "scene-cnn", str(tmp_path), "--batch-size", "5"]) == 0
    assert capsys.readouterr().out.strip().startswith("accuracy: ")
    assert class_map(("a", "b", "c"), ["c", "a"]) == [2, 0]
    with pytest.raises(DissectError, match="not among the model's classes"):
        class_map(("a", "b"), ["a", "zebra"])


def test_unlabelled_data_is_refused(tmp_path, image_folder, capsys):
    assert main(["evaluate", "scene-cnn", str(image_folder)]) == 2
    assert "no image-level labels" in capsys.readouterr().err


#: A recipe small enough for a test: 16 training images, one epoch.
TINY = Recipe(seed=3, images=16, epochs=1, batch_size=8, val_images=4, threads=1)


def test_augment_flips_and_shifts_within_the_limit():
    generator = torch.Generator().manual_seed(0)
    batch = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    plain = augment(batch, 0, generator)
    for image, result in zip(batch, plain, strict=True):
        assert torch.equal(result, image) or torch.equal(result, image.flip(2))
    seen = set()
    for _ in range(20):
        out = augment(batch, 2, generator)
        for image, result in zip(batch, out, strict=True):
            padded = torch.nn.functional.pad(image[None], (2,) * 4, mode="replicate")[0]
            matches = [
                (flipped, y, x)
                for flipped, source in ((False, padded), (True, padded.flip(2)))
                for y in range(5)
                for x in range(5)
                if torch.equal(source[:, y : y + 6, x : x + 6], result)
            ]
            assert matches, "not a flipped/shifted copy"
            seen.update(matches)
    assert {flipped for flipped, _, _ in seen} == {False, True}
    assert len({(y, x) for _, y, x in seen}) > 10
    with pytest.raises(ValueError, match="translate"):
        Recipe(translate=-1)


def test_training_keeps_the_best_epoch(tmp_path, capsys):
    out = tmp_path / "w.pt"
    best = train(str(out), replace(TINY, epochs=3), progress=False)
    printed = capsys.readouterr().out
    scores = [float(line.split()[-3 if "->" in line else -1]) for line in printed.splitlines()]
    assert best == max(scores)
    assert printed.count("->") == sum(
        score > max(scores[:i], default=-1) for i, score in enumerate(scores)
    )
    model = SceneCNN()
    model.load_state_dict(read_state_dict(out))
    images, labels = render_world(SyntheticWorld(4, seed=4), progress=False)
    assert accuracy(model, images, labels) == best
    argv = "--seed 3 --images 16 --epochs 1 --batch-size 8 --val-images 4 --threads 1".split()
    assert train_main(["--out", str(out), *argv]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("best accuracy: ")


def test_training_is_deterministic(tmp_path):
    runs = []
    for name in ("a.pt", "b.pt"):
        train(str(tmp_path / name), TINY, progress=False)
        runs.append(read_state_dict(tmp_path / name))
    assert runs[0].keys() == set(scene_cnn().state_dict())
    for key, value in runs[0].items():
        assert torch.equal(value, runs[1][key]), key
    torch.manual_seed(3)
    initial = SceneCNN(batch_norm=True).fc.weight.detach()
    assert not torch.allclose(runs[0]["fc.weight"], initial)


def test_average_precision_by_hand():
    scores = np.array([[0.9, 0.1, 0.5], [0.8, 0.2, 0.5], [0.7, 0.3, 0.5], [0.1, 0.4, 0.5]])
    targets = np.array([[1, 0, 1], [0, 0, 0], [1, 0, 0], [0, 0, 1]])
    # Column 0: hits at ranks 1 and 3 -> (1/1 + 2/3) / 2. Column 1: no positive. Column 2: all
    # tied, one threshold -> precision 2/4 at recall 1.
    expected = [(1 + 2 / 3) / 2, np.nan, 0.5]
    np.testing.assert_allclose(average_precision(scores, targets), expected)
    np.testing.assert_allclose(average_precision(np.eye(3), np.eye(3)), [1.0, 1.0, 1.0])


def test_shipped_object_cnn_tells_objects_well_above_chance(capsys):
    loaded = load_model("object-cnn")
    assert loaded.classes == tuple(kind.name for kind in OBJECTS)
    assert loaded.presence_category == "object"
    images, presence = render_world(SyntheticWorld(96, seed=2024), progress=False, task="objects")
    # Chance (random scores) is each class's frequency, about 0.3 on average.
    assert mean_average_precision(loaded.module, images, presence) >= 0.8
    images, presence = render_world(SyntheticWorld(12, seed=77), progress=False, task="objects")
    expected = mean_average_precision(loaded.module, images, presence)
    for size in (1, 5):
        result = evaluate(loaded, "synthetic:12:77", batch_size=size, progress=False)
        assert result == pytest.approx(expected, abs=1e-6)
    assert main(["evaluate", "object-cnn", "synthetic:12:77"]) == 0
    assert capsys.readouterr().out.strip() == f"mAP: {expected:.4f}"


def test_object_cnn_needs_object_masks(image_folder, capsys):
    assert main(["evaluate", "object-cnn", str(image_folder)]) == 2
    assert "no object masks" in capsys.readouterr().err


def test_objects_recipe_runs(tmp_path):
    out = tmp_path / "objects.pt"
    result = train(str(out), replace(TINY, task="objects"), progress=False)
    assert 0.0 <= result <= 1.0
    state = read_state_dict(out)
    assert set(state) == set(object_cnn().state_dict())
    assert state["fc.weight"].shape == (len(OBJECTS), 96)
    assert load_model("object-cnn", str(out)).module(torch.zeros(1, 3, 112, 112)).shape == (1, 11)
    with pytest.raises(ValueError, match="task must be one of"):
        Recipe(task="parts")
