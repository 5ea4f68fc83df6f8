"""dissect ablate: tables equal a whole forward per ablated unit, exact sums, groups, refusals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TESTS, TINY_SPEC
from PIL import Image
from torch import nn

from dissect.ablate import AblationConfig, AblationSums, TreeSum, ablate
from dissect.ablate.sets import random_groups
from dissect.ablate.sums import BatchScores
from dissect.cli import main
from dissect.datasets import open_data
from dissect.directory import read_table
from dissect.dissection import Dissection, load_dissected_model
from dissect.errors import DissectError
from dissect.labels import write_labels

RUN = ["--image-size", "32", "--topk", "3", "--batch-size", "4", "--device", "cpu"]


def labelled_folder(root: Path, per_class: int = 5, seed: int = 0) -> Path:
    """Images in three class folders (a, b, c): each class brighter in one channel."""
    rng = np.random.default_rng(seed)
    for number, name in enumerate("abc"):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 160, (32, 32, 3))
            pixels[..., number] += 90
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def dissected(tmp_path: Path, spec: str = TINY_SPEC, layers: str = "conv1,conv2") -> Path:
    images = labelled_folder(tmp_path / "images")
    out = tmp_path / "dissection"
    assert main(["run", spec, str(images), "--out", str(out), "--layers", layers, *RUN]) == 0
    labels = pd.DataFrame(
        {
            "layer": ["conv2"] * 4,
            "unit": [0, 1, 2, 4],
            "label": ["stripe", "stripe", "spot", "stripe"],
            "category": ["object", "object", "part", "object"],
            "iou": [0.2, 0.1, 0.08, 0.05],
        }
    )
    write_labels(out, "iou", labels)
    return out


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return dissected(tmp_path)


def naive_drops(directory: Path, layer: str, units: list[int], values: np.ndarray):
    """Per unit and class: mean logit drop and accuracy drop, one whole forward per unit."""
    dissection = Dissection(directory)
    module = load_dissected_model(dissection).module.eval()
    source = open_data(str(directory.parent / "images"))
    images = torch.stack(
        [dissection.preprocess.tensor(source.read_rgb(i)) for i in range(len(source))]
    )
    labels = torch.tensor([source.label(i) for i in range(len(source))])
    target = dict(module.named_modules())[layer]
    with torch.inference_mode():
        base = module(images)
        drops, accuracy = [], []
        for unit in units:

            def hook(_m, _i, output, unit=unit):
                output = output.clone()
                output[:, unit] = float(values[unit])
                return output

            handle = target.register_forward_hook(hook)
            ablated = module(images)
            handle.remove()
            rows = torch.arange(len(labels))
            drop = (base[rows, labels] - ablated[rows, labels]).numpy()
            correct = (base.argmax(1) == labels).float() - (ablated.argmax(1) == labels).float()
            drops.append([drop[labels.numpy() == c].mean() for c in range(3)])
            accuracy.append([correct.numpy()[labels.numpy() == c].mean() for c in range(3)])
    return np.array(drops), np.array(accuracy)


@pytest.mark.parametrize("copies_mib", [1e-6, None], ids=["one-copy-per-forward", "default"])
@pytest.mark.parametrize("layer,mode", [("conv2", "zero"), ("conv1", "mean")])
def test_tables_equal_a_naive_forward_per_unit(directory, layer, mode, copies_mib):
    # conv1 is followed by an in-place ReLU: the kept output must be a copy
    config = AblationConfig(mode=mode, groups=(), batch_size=4, copies_mib=copies_mib)
    ablate(
        directory, str(directory.parent / "images"), [layer], config, device="cpu", progress=False
    )
    dissection = Dissection(directory)
    if mode == "mean":
        table = dissection.units()
        values = table.loc[table["layer"] == layer, "mean_activation"].to_numpy()
    else:
        values = np.zeros(dissection.n_units(layer))
    with np.load(directory / "ablation" / f"{layer}.npz") as saved:
        units = saved["units"].tolist()
        logit, accuracy = naive_drops(directory, layer, units, values)
        np.testing.assert_allclose(saved["logit_drop"], logit, atol=1e-5)
        np.testing.assert_allclose(saved["accuracy_drop"], accuracy, atol=1e-12)
        assert saved["logit_drop_se"].shape == logit.shape
        assert str(saved["mode"]) == mode and list(saved["classes"]) == ["a", "b", "c"]
    assert np.abs(logit).max() > 1e-3, "the test must ablate units that matter"


def test_groups_are_tested_against_random_groups_of_their_size(directory):
    config = AblationConfig(units="labelled", draws=30, batch_size=4)
    ablate(
        directory, str(directory.parent / "images"), ["conv2"], config, device="cpu", progress=False
    )
    groups = pd.read_csv(directory / "ablation_groups.csv", keep_default_na=False)
    stripe = groups[(groups["kind"] == "label") & (groups["name"] == "stripe")]
    assert set(stripe["n_units"]) == {3} and len(stripe) == 3  # one row per class
    objects = groups[(groups["kind"] == "type") & (groups["name"] == "object")]
    assert set(objects["n_units"]) == {3}
    every = pd.read_csv(directory / "ablation" / "conv2.csv", keep_default_na=False)
    null = every[(every["kind"] == "random") & (every["n_units"] == 3) & (every["class"] == "a")]
    assert len(null) == 30
    row = stripe[stripe["class"] == "a"].iloc[0]
    expected = (1 + (null["accuracy_drop"] >= row["accuracy_drop"]).sum()) / 31
    assert row["p_accuracy"] == pytest.approx(expected)
    assert row["null_logit_mean"] == pytest.approx(null["logit_drop"].mean())
    units = pd.read_csv(directory / "ablation.csv", keep_default_na=False)
    assert sorted(units["unit"]) == [0, 1, 2, 4]
    assert units.set_index("unit").loc[2, "label"] == "spot"
    assert len(pd.read_csv(directory / "ablation_classes.csv")) == 3 * 4  # 4 units, 3 classes
    for name in ("ablation_conv2.png", "ablation_groups_conv2.png"):
        assert (directory / "plots" / name).stat().st_size > 1000, name
    assert main(["report", str(directory)]) == 0
    page = (directory / "report" / "index.html").read_text()
    assert "What the units do for the network (ablation)" in page
    assert "assets/plots/ablation_groups_conv2.png" in page and "<td>stripe</td>" in page


def test_random_groups_depend_only_on_seed_size_and_draw():
    first = random_groups(20, [3, 5], 4, seed=7)
    again = random_groups(20, [5, 3, 3], 4, seed=7)
    assert first == again and len(first) == 8
    assert all(len(set(group.units)) == len(group.units) for group in first)
    assert random_groups(20, [3], 4, seed=8) != random_groups(20, [3], 4, seed=7)


def test_tree_sum_is_the_same_bits_in_any_order_and_split():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((13, 5)) * 10.0 ** rng.integers(-8, 8, (13, 1))
    whole = TreeSum(5)
    for batch, vector in enumerate(vectors):
        whole.add(batch, vector)
    for cuts in ([4], [1, 7], [3, 6, 9, 12]):
        parts = []
        for start, stop in zip([0, *cuts], [*cuts, 13], strict=True):
            part = TreeSum(5)
            for batch in reversed(range(start, stop)):
                part.add(batch, vectors[batch])
            parts.append(TreeSum.from_state_dict(part.state_dict()))
        merged = parts[-1]
        for part in parts[:-1]:
            merged.merge(part)
        np.testing.assert_array_equal(merged.total(), whole.total())
    np.testing.assert_allclose(whole.total(), vectors.sum(0), rtol=1e-12)


def test_ablation_sums_merge_and_reload_like_one_listener():
    generator = torch.Generator().manual_seed(0)
    batches = [
        BatchScores(
            torch.randn(4, 3, generator=generator),
            torch.randn(5, 4, 3, generator=generator),
            torch.tensor([0, 1, 1, 0]),
            torch.tensor([2, 0]),
        )
        for _ in range(3)
    ]
    whole = AblationSums(5, 2)
    for number, batch in enumerate(batches):
        whole.add(number, batch)
    first, second = AblationSums(5, 2), AblationSums(5, 2)
    first.add(0, batches[0])
    second.add(1, batches[1])
    second.add(2, batches[2])
    restored = AblationSums(5, 2)
    restored.load_state_dict(second.state_dict())
    merged = first.merge(restored).tables()
    for name, value in whole.tables().items():
        np.testing.assert_array_equal(merged[name], value, err_msg=name)
    assert whole.tables()["count"].tolist() == [6, 6]


RESIDUAL = """
import torch
from torch import nn


class Residual(nn.Module):
    def __init__(self, mixes_batch=False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)
        self.mixes_batch = mixes_batch

    def forward(self, x):
        x = self.conv1(x)
        y = self.conv2(x)
        y = y - y.mean(0, keepdim=True) if self.mixes_batch else x + y
        return self.fc(y.mean((2, 3)))


class Maps(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return self.conv1(x)


def residual():
    torch.manual_seed(0)
    return Residual()


def mixing():
    torch.manual_seed(0)
    return Residual(mixes_batch=True)


def maps():
    torch.manual_seed(0)
    return Maps()
"""


@pytest.mark.parametrize(
    "factory,layer,message",
    [
        ("residual", "conv2", "skip connection"),
        ("mixing", "conv2", "mixes the images of a batch"),
        ("maps", "conv1", "not class scores"),
    ],
)
def test_layers_the_stacked_copies_cannot_ablate_are_refused(tmp_path, factory, layer, message):
    models = tmp_path / "models.py"
    models.write_text(RESIDUAL)
    out = dissected(tmp_path, f"{models}:{factory}", layer)
    config = AblationConfig(groups=(), batch_size=4)
    with pytest.raises(DissectError, match=message):
        ablate(out, str(tmp_path / "images"), [layer], config, device="cpu", progress=False)


def test_the_check_runs_whole_forwards_on_a_few_images_only():
    """The first batch's check against whole forwards holds the layer's kept output: run on the
    whole batch, its peak memory was a forward's plus that output, above the naive method's."""
    from dissect.ablate.copies import CHECK_IMAGES, StackedAblation
    from dissect.ablate.listener import ablate_batch

    torch.manual_seed(0)
    network = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    ).eval()
    seen = []
    network.register_forward_pre_hook(lambda _module, inputs: seen.append(len(inputs[0])))
    images = torch.randn(3 * CHECK_IMAGES, 3, 8, 8)
    masks = {"0": torch.eye(4, dtype=torch.bool)}
    config = AblationConfig(groups=(), batch_size=len(images))
    with torch.inference_mode(), StackedAblation(network, "0", torch.zeros(4), False) as hook:
        ((base, ablated),) = ablate_batch([hook], masks, images, config, check=True)
        whole = [hook.forward_naive(images, mask) for mask in masks["0"]]
    assert seen.count(len(images)) == 1 + len(whole)  # the normal forward, and ours below
    assert seen.count(CHECK_IMAGES) == 2  # the check's two ablations
    torch.testing.assert_close(ablated, torch.stack(whole))
    torch.testing.assert_close(base, network(images))


def test_the_check_on_a_few_images_still_refuses_a_network_that_mixes_them():
    """The few images alone get other scores than among the whole batch's stacked copies."""
    from dissect.ablate.copies import CHECK_IMAGES, StackedAblation
    from dissect.ablate.listener import ablate_batch

    class MeanOverBatch(nn.Module):
        def forward(self, x):
            return x - x.mean(0, keepdim=True)

    torch.manual_seed(0)
    network = nn.Sequential(
        nn.Conv2d(3, 4, 3), MeanOverBatch(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()  # fmt: skip
    images = torch.randn(2 * CHECK_IMAGES, 3, 8, 8)
    config = AblationConfig(groups=(), batch_size=len(images))
    masks = {"0": torch.eye(4, dtype=torch.bool)}
    with torch.inference_mode(), StackedAblation(network, "0", torch.zeros(4), False) as hook:
        with pytest.raises(DissectError, match="mixes the images of a batch"):
            ablate_batch([hook], masks, images, config, check=True)


def test_bad_input_is_one_line(directory, tmp_path, capsys):
    unlabelled = tmp_path / "flat"
    unlabelled.mkdir()
    Image.new("RGB", (32, 32)).save(unlabelled / "x.png")
    Image.new("RGB", (32, 32)).save(unlabelled / "y.png")
    cases = [
        ([str(directory), str(unlabelled)], "has no class labels"),
        ([str(directory), str(directory.parent / "images"), "--layers", "fc"], "not dissected"),
        (
            [str(directory), str(directory.parent / "images"), "--mode", "zero", "--units", "x"],
            "--units takes",
        ),
        ([str(directory), str(directory.parent / "images"), "--groups", "colour"], "--groups"),
    ]
    for argv, message in cases:
        assert main(["ablate", *argv, "--device", "cpu"]) == 2
        error = capsys.readouterr().err
        assert message in error and len(error.strip().splitlines()) == 1, error


def test_presence_models_are_refused(tmp_path):
    out = tmp_path / "objects"
    argv = ["run", "object-cnn", "synthetic:4", "--out", str(out), "--layers", "conv5"]
    assert main([*argv, "--topk", "2", "--device", "cpu"]) == 0
    with pytest.raises(DissectError, match="not one class per image"):
        ablate(out, "synthetic:4", ["conv5"], AblationConfig(groups=()), progress=False)


def ablate_argv(directory: Path, images: Path) -> list[str]:
    return [
        "ablate",
        str(directory),
        str(images),
        "--layers",
        "conv2",
        "--draws",
        "20",
        "--batch-size",
        "2",
        "--device",
        "cpu",
    ]


def read_outputs(directory: Path) -> dict[str, bytes]:
    names = ["ablation.csv", "ablation_groups.csv", "ablation_classes.csv", "ablation/conv2.csv"]
    found = {name: (directory / name).read_bytes() for name in names}
    with np.load(directory / "ablation" / "conv2.npz") as saved:
        found.update({key: saved[key].tobytes() for key in saved.files})
    return found


def test_torchrun_two_processes_equal_one(tmp_path, directory):
    from test_distributed import torchrun_and_one_process

    images = directory.parent / "images"
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(directory), str(copy)], check=True)
    torchrun_and_one_process(
        tmp_path, [ablate_argv(copy, images)], [ablate_argv(directory, images)]
    )
    assert read_outputs(copy) == read_outputs(directory)
    assert not (copy / "ablation" / ".checkpoint").exists()


SLOW = f"""
import os, sys, time
sys.path.insert(0, {str(TESTS)!r})
from tiny_models import tiny_net as _tiny


def slow_net():
    net = _tiny()
    forward = net.forward

    def slow(x):
        time.sleep(float(os.environ.get("SLOW_SECONDS", "0")))
        return forward(x)

    net.forward = slow
    return net
"""


def test_resume_after_sigterm_equals_an_uninterrupted_run(tmp_path):
    model = tmp_path / "slow.py"
    model.write_text(SLOW)
    directory = dissected(tmp_path, f"{model}:slow_net", "conv2")
    images = directory.parent / "images"
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(directory), str(copy)], check=True)
    argv = [*ablate_argv(copy, images), "--checkpoint-seconds", "0"]
    env = {**os.environ, "SLOW_SECONDS": "0.02", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "dissect", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    checkpoint = copy / "ablation" / ".checkpoint" / "rank0.pt"
    deadline = time.monotonic() + 60
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    done = torch.load(checkpoint, weights_only=True)["state"]["pass"]["done"]
    assert 0 < done < 15
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(argv) == 0
        assert main(ablate_argv(directory, images)) == 0
    finally:
        torch.set_num_threads(threads)
    assert read_outputs(copy) == read_outputs(directory)


def test_rows_kept_from_another_layer_keep_their_text(directory):
    """Labels that look like spreadsheet formulas survive a second run that keeps the first
    layer's rows (read back once, not escaped twice)."""
    labels = pd.DataFrame(
        {"layer": ["conv2"] * 2, "unit": [0, 1], "label": ["=stripe"] * 2, "iou": [0.2, 0.1]}
    )
    write_labels(directory, "iou", labels.assign(category="object"))
    images = str(directory.parent / "images")
    first = AblationConfig(units="labelled", draws=2, batch_size=4)
    ablate(directory, images, ["conv2"], first, device="cpu", progress=False)
    second = AblationConfig(units=(0,), groups=(), batch_size=4)
    ablate(directory, images, ["conv1"], second, device="cpu", progress=False)
    groups = read_table(directory, "ablation_groups.csv")
    assert set(groups.loc[groups["kind"] == "label", "name"]) == {"=stripe"}
    units = read_table(directory, "ablation.csv")
    assert set(units.loc[units["layer"] == "conv2", "label"]) == {"=stripe"}
