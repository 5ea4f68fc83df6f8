"""The options that make a pass fast on a GPU box: --workers, --dtype, the out-of-memory back-off.

Each must leave the results as they are (workers, back-off: to the byte; dtype: float32
statistics), and be said in one clear line when it cannot be had.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TESTS

from dissect import device as device_module
from dissect.cli import main
from dissect.config import IoUConfig, RunConfig
from dissect.device import auto_workers, forward_dtype
from dissect.errors import DissectError

GREEDY = f"{TESTS / 'tiny_models.py'}:greedy_net"
TINY = f"{TESTS / 'tiny_models.py'}:tiny_net"
OPTIONS = ["--layers", "conv1,conv2", "--image-size", "32", "--topk", "3", "--device", "cpu"]


def run(model: str, out: Path, *extra: str) -> None:
    assert main(["run", model, "synthetic:12", "--out", str(out), "--iou", *OPTIONS, *extra]) == 0


def assert_same_outputs(got: Path, expected: Path, same_run: bool = True) -> None:
    """Every file of two dissections is the same, but for the manifest (timings, options) and,
    unless ``same_run``, the run id."""
    if same_run:
        assert read_manifest(got)["run_id"] == read_manifest(expected)["run_id"]
    drop = [] if same_run else ["run_id"]
    names = sorted(p.relative_to(expected) for p in expected.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(got) for p in got.rglob("*") if p.is_file())
    for name in names:
        if name.name in ("manifest.json", ".dissect.lock"):
            continue
        if name.suffix == ".csv":
            a, b = pd.read_csv(got / name), pd.read_csv(expected / name)
            pd.testing.assert_frame_equal(
                a.drop(columns=drop, errors="ignore"), b.drop(columns=drop, errors="ignore")
            )
        elif name.suffix == ".npz":
            with np.load(got / name) as a, np.load(expected / name) as b:
                assert a.files == b.files
                for key in a.files:
                    if key not in drop:
                        np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}:{key}")
        else:
            assert (got / name).read_bytes() == (expected / name).read_bytes(), name


def read_manifest(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


def test_workers_give_the_same_dissection_as_the_main_process(tmp_path):
    run(TINY, tmp_path / "main", "--workers", "0", "--batch-size", "4")
    run(TINY, tmp_path / "workers", "--workers", "2", "--batch-size", "4")
    assert_same_outputs(tmp_path / "workers", tmp_path / "main")
    manifest = read_manifest(tmp_path / "workers")
    assert manifest["config"]["workers"] == 2 and manifest["config"]["dtype"] == "float32"


def test_out_of_memory_back_off_matches_a_run_at_the_smaller_batch(tmp_path):
    run(TINY, tmp_path / "small", "--batch-size", "3")  # 12 -> 6 -> 3 images per forward
    with pytest.warns(UserWarning, match="out of cpu memory with 12 images per forward") as seen:
        run(GREEDY, tmp_path / "greedy", "--batch-size", "12")
    assert sum("memory" in str(warning.message) for warning in seen) == 1
    assert_same_outputs(tmp_path / "greedy", tmp_path / "small", same_run=False)


def test_bfloat16_is_recorded_and_read_back_by_later_stages(tmp_path, monkeypatch):
    run(TINY, tmp_path / "bf16", "--dtype", "bfloat16", "--batch-size", "4")
    manifest = json.loads((tmp_path / "bf16" / "manifest.json").read_text())
    assert manifest["config"]["dtype"] == "bfloat16"
    units = pd.read_csv(tmp_path / "bf16" / "units.csv")
    assert units["threshold"].notna().all()
    import dissect.iou.counting as counting
    from dissect.dissection import Dissection

    seen = []

    def spy(job, listeners):
        seen.append(job.dtype)
        raise KeyboardInterrupt

    monkeypatch.setattr(counting, "run_pass", spy)
    for config in (IoUConfig(), IoUConfig(dtype="float32")):
        with pytest.raises(KeyboardInterrupt):
            counting.compute_iou(
                Dissection(tmp_path / "bf16"), config=config, device="cpu", progress=False
            )
    assert seen == [torch.bfloat16, torch.float32]


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        (["--dtype", "float64"], "invalid choice: 'float64'"),
        (["--workers", "many"], "expected auto or a number of processes"),
    ],
)
def test_bad_speed_options_are_one_line(tmp_path, capsys, flag, message):
    with pytest.raises(SystemExit):
        main(["run", TINY, "synthetic:2", "--out", str(tmp_path / "x"), *flag])
    assert message in capsys.readouterr().err


def test_configs_refuse_bad_workers_and_dtypes():
    with pytest.raises(DissectError, match="--workers -1"):
        RunConfig(workers=-1)
    with pytest.raises(DissectError, match="--dtype must be one of float32, bfloat16, float16"):
        IoUConfig(dtype="half")


def test_auto_workers_leave_the_compute_its_cores(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(device_module, "free_cores", lambda: 6)
    assert auto_workers(cpu, batches=10) == 4  # 2 cores for the forward's threads
    assert auto_workers(cuda, batches=10) == 5  # 1 core feeds the GPU
    assert auto_workers(cuda, batches=10, processes=2) == 2  # (6 - 2) // 2 per process
    assert auto_workers(cuda, batches=1) == 0  # one batch: workers would not pay back
    monkeypatch.setattr(device_module, "free_cores", lambda: 64)
    assert auto_workers(cuda, batches=10) == device_module.MAX_AUTO_WORKERS
    monkeypatch.setattr(device_module, "free_cores", lambda: 2)
    assert auto_workers(cpu, batches=10) == 0  # a busy machine: decode in this process


def test_a_dtype_autocast_cannot_run_is_refused(monkeypatch):
    assert forward_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16

    def unsupported(device_type, dtype):
        raise RuntimeError("Current CPU Autocast only supports bfloat16")

    monkeypatch.setattr(torch, "autocast", unsupported)
    with pytest.raises(DissectError, match="--dtype float16 is not supported on cpu.*bfloat16"):
        forward_dtype("float16", torch.device("cpu"))
