"""torchrun with 2 gloo processes writes the same dissection directory as one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_SPEC, make_image_folder

from dissect import distributed
from dissect.cli import main
from dissect.config import RunConfig
from dissect.dissection import Dissection
from dissect.passes import PassState
from dissect.running_stats import TailQuantile, UnitStats
from dissect.streaming import UnitStatsListener

TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.mark.parametrize("world", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("block", [1, 4])
def test_shards_cover_the_indices_in_whole_blocks(monkeypatch, world, block):
    indices = list(range(100, 117))  # 17 items
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    shards = []
    for rank in range(world):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        shards.append(distributed.shard(indices, block=block))
    assert sum(shards, []) == indices
    starts = [indices.index(part[0]) for part in shards if part]
    assert all(start % block == 0 for start in starts)
    blocks = [-(-len(part) // block) for part in shards]
    assert max(blocks) - min(blocks) <= 1


def test_one_process_world():
    assert not distributed.active() and distributed.is_main()
    assert distributed.shard(range(5), block=2) == [0, 1, 2, 3, 4]
    assert distributed.gather_and_merge(3, lambda a, b: a + b) == 3
    assert distributed.broadcast("x") == "x"


def test_pass_results_merge_like_one_pass():
    torch.manual_seed(0)
    acts = torch.randn(6, 3, 4, 4)
    whole = UnitStats(3, 2, max_values=6 * 16)
    whole.add(acts, torch.arange(6))
    first, second = UnitStats(3, 2, max_values=6 * 16), UnitStats(3, 2, 6 * 16, seed=99)
    first.add(acts[:4], torch.arange(4))
    second.add(acts[4:], torch.arange(4, 6))
    a, b = listener({"l": first}), listener({"l": second})
    merged = listener({})
    merged.load_state_dict(a.state_dict())
    merged.merge(b.state_dict())
    state = PassState.from_state_dict(PassState(4, [(5, "bad")], 1.0).state_dict())
    state.merge(PassState(2, [(1, "bad")], 2.0))
    assert state.skipped == [(1, "bad"), (5, "bad")] and state.done == 6 and state.seconds == 2.0
    for key, value in whole.topk().items():
        np.testing.assert_array_equal(merged.stats["l"].topk()[key], value)
    np.testing.assert_array_equal(merged.stats["l"].threshold(), whole.threshold())
    empty = listener({})
    empty.merge(b.state_dict())
    assert empty.stats["l"].images == 2


def listener(stats: dict) -> UnitStatsListener:
    """The statistics listener of a pass holding ``stats``."""
    made = UnitStatsListener(RunConfig(), 6, torch.device("cpu"))
    made.stats = stats
    return made


# One torchrun launch runs several dissections: the CLI twice in the same processes.
TWO_RUNS = """
import sys
from dissect.cli import main
for argv in {argvs!r}:
    assert main(argv) == 0
"""


def torchrun_and_one_process(tmp_path: Path, dist_argvs: list, single_argvs: list) -> str:
    """Run CLI argument lists under torchrun (2 processes) and in this process; return stdout.

    CPU convolutions round differently with another thread count, so both sides use 1 thread.
    """
    script = tmp_path / "launch.py"
    script.write_text(TWO_RUNS.format(argvs=dist_argvs))
    command = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for argv in single_argvs:
            assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    stdout, stderr = launch.communicate(timeout=120)
    assert launch.returncode == 0, stderr
    return stdout


def test_sampled_thresholds_of_merged_ranks_equal_one_pass():
    """Beyond the exact bound the sample is keyed on (seed, image, position): ranks agree."""
    generator = torch.Generator().manual_seed(0)
    scale = torch.linspace(0.5, 4, 4)[:, None]
    acts = torch.randn(60, 4, 2000, generator=generator).exp() * scale  # (images, units, n)
    whole = UnitStats(4, 1, 60 * 2000, quantile=0.05, seed=3)
    for first in range(0, 60, 7):
        whole.add(acts[first : first + 7, :, :, None], torch.arange(first, min(first + 7, 60)))
    assert whole.tail.level > 0, "the run must be long enough to need sampling"
    ranks = []
    for part in (range(0, 25), range(25, 60)):
        stats = UnitStats(4, 1, 60 * 2000, quantile=0.05, seed=3)
        for first in range(part.start, part.stop, 5):
            last = min(first + 5, part.stop)
            stats.add(acts[first:last, :, :, None], torch.arange(first, last))
        ranks.append(listener({"l": stats}))
    ranks[1].merge(ranks[0].state_dict())
    merged = ranks[1].stats["l"]
    np.testing.assert_array_equal(merged.threshold(), whole.threshold())


def run_args(images: Path, out: Path, batch_size: int, quantile: float = 0.01) -> list[str]:
    return [
        "run", TINY_SPEC, str(images), "--out", str(out), "--layers", "conv1,conv2",
        "--image-size", "32", "--topk", "5", "--quantile", str(quantile),
        "--batch-size", str(batch_size), "--device", "cpu",
    ]  # fmt: skip


def assert_same_directory(got: Path, expected: Path) -> None:
    for name in ("units.csv", "images.csv"):
        assert (got / name).read_text() == (expected / name).read_text(), name
    got, expected = Dissection(got), Dissection(expected)
    for layer in ("conv1", "conv2"):
        for key, value in expected.topk(layer).items():
            np.testing.assert_array_equal(got.topk(layer)[key], value)


@pytest.mark.filterwarnings("ignore:skipped image")
def test_torchrun_two_processes_equal_one(tmp_path):
    images = make_image_folder(tmp_path / "images", count=24, seed=5)
    # 64: one batch, so rank 1 gets no image at all; 0.5: conv1's 0.5 x 24 x 32 x 32 values above
    # T are beyond the sketch's exact bound, so it samples.
    runs = {"3": (3, 0.01), "64": (64, 0.01), "sampled": (4, 0.5)}
    assert TailQuantile(1, 0.5, 25 * 32 * 32).level > 0
    stdout = torchrun_and_one_process(
        tmp_path,
        [run_args(images, tmp_path / f"dist{name}", *how) for name, how in runs.items()],
        [run_args(images, tmp_path / f"single{name}", *how) for name, how in runs.items()],
    )
    assert stdout.count("dissected 2 layer(s) over 25 images (1 skipped)") == len(runs)  # rank 0
    for size in runs:
        assert_same_directory(tmp_path / f"dist{size}", tmp_path / f"single{size}")
        assert Dissection(tmp_path / f"dist{size}").manifest["world_size"] == 2
        single = Dissection(tmp_path / f"single{size}").run_id
        assert Dissection(tmp_path / f"dist{size}").run_id == single  # the same run
        assert not (tmp_path / f"dist{size}" / ".checkpoint").exists()


@pytest.mark.filterwarnings("ignore:skipped image")
def test_torchrun_iou_labels_equal_one_process(tmp_path):
    def argvs(out: Path) -> list[list[str]]:
        return [
            ["run", TINY_SPEC, "synthetic:10:3", "--out", str(out), "--layers", "conv1,conv2",
             "--image-size", "32", "--topk", "3", "--batch-size", "3", "--device", "cpu"],
            ["autolabel", str(out), "--batch-size", "2", "--device", "cpu"],
        ]  # fmt: skip

    stdout = torchrun_and_one_process(
        tmp_path, argvs(tmp_path / "dist"), argvs(tmp_path / "single")
    )
    assert stdout.count("conv2:") == 1  # only rank 0 reports
    dist, single = tmp_path / "dist", tmp_path / "single"
    for layer in ("conv1", "conv2"):
        got, expected = (
            np.load(dist / "iou" / f"{layer}.npz"),
            np.load(single / "iou" / f"{layer}.npz"),
        )
        np.testing.assert_array_equal(got["intersection"], expected["intersection"])
        np.testing.assert_array_equal(got["union"], expected["union"])
        np.testing.assert_array_equal(got["null_best"], expected["null_best"])  # the null too
    assert (dist / "labels.csv").read_text() == (single / "labels.csv").read_text()
    assert "q_value" in (single / "labels.csv").read_text().splitlines()[0]
    assert not list((dist / "iou").glob("checkpoint*"))


@pytest.mark.filterwarnings("ignore:skipped image")
def test_torchrun_receptive_fields_equal_one_process(tmp_path):
    def argvs(out: Path) -> list[list[str]]:
        return [
            ["run", TINY_SPEC, "synthetic:8:3", "--out", str(out), "--layers", "conv1,conv2",
             "--image-size", "32", "--topk", "2", "--batch-size", "4", "--device", "cpu"],
            ["rf", str(out), "--top", "2", "--occluder", "5", "--stride", "4", "--device", "cpu"],
        ]  # fmt: skip

    torchrun_and_one_process(tmp_path, argvs(tmp_path / "dist"), argvs(tmp_path / "single"))
    dist, single = tmp_path / "dist", tmp_path / "single"
    for layer in ("conv1", "conv2"):
        got = np.load(dist / "receptive_fields" / f"{layer}.npz")
        expected = np.load(single / "receptive_fields" / f"{layer}.npz")
        assert sorted(got.files) == sorted(expected.files)
        for key in expected.files:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    csv = "receptive_fields.csv"
    assert (dist / csv).read_text() == (single / csv).read_text()
    assert not list((dist / "receptive_fields").glob("*.rank*"))


@pytest.mark.filterwarnings("ignore:skipped image")
def test_torchrun_same_pass_iou_labels_equal_one_process(tmp_path):
    def argvs(out: Path) -> list[list[str]]:
        return [
            ["run", TINY_SPEC, "synthetic:10:3", "--out", str(out / name), "--layers",
             "conv1,conv2", "--image-size", "32", "--topk", "3", "--batch-size", "3",
             "--quantile", quantile, "--device", "cpu", "--iou"]
            for name, quantile in (("exact", "0.005"), ("sampled", "0.5"))
        ]  # fmt: skip

    assert TailQuantile(1, 0.5, 10 * 32 * 32).level > 0  # "sampled" samples
    stdout = torchrun_and_one_process(
        tmp_path, argvs(tmp_path / "dist"), argvs(tmp_path / "single")
    )
    assert stdout.count("labelled the units by IoU") == 2  # only rank 0 reports
    for name in ("exact", "sampled"):
        dist, single = tmp_path / "dist" / name, tmp_path / "single" / name
        for layer in ("conv1", "conv2"):
            got, expected = (
                np.load(dist / "iou" / f"{layer}.npz"),
                np.load(single / "iou" / f"{layer}.npz"),
            )
            for key in ("intersection", "union", "iou", "null_best"):  # the null too
                np.testing.assert_array_equal(got[key], expected[key])
        assert pd.read_csv(dist / "labels.csv")["q_value"].notna().any()  # in the same pass
        for table in ("units.csv", "labels.csv", "iou/skipped.csv"):
            assert (dist / table).read_text() == (single / table).read_text(), table
        assert not (dist / ".checkpoint").exists()
