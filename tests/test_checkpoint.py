"""Checkpoints: a run killed mid-way and started again ends exactly like an uninterrupted one."""

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
from conftest import TESTS, make_image_folder

from dissect.checkpoint import (
    CHECKPOINT_DIR,
    Checkpoint,
    deferred_interrupts,
    describe_changes,
    module_digest,
    source_digest,
)
from dissect.cli import main
from dissect.datasets import ImageFolder
from dissect.errors import DissectError

SLOW_MODEL = f"""
import os, sys, time
import torch
sys.path.insert(0, {str(TESTS)!r})
from tiny_models import TinyNet


class SlowNet(TinyNet):
    def forward(self, x):
        time.sleep(float(os.environ.get("SLOW_SECONDS", "0")))
        return super().forward(x)


def slow_net():
    torch.manual_seed(0)
    return SlowNet()
"""

# --quantile 0.5 puts the threshold sketch in sampling mode after a few images, so resuming must
# restore its random generator to give the same thresholds.
OPTIONS = ["--layers", "conv1,conv2", "--image-size", "32", "--topk", "5", "--quantile", "0.5"]
OPTIONS += ["--batch-size", "2", "--checkpoint-every", "4", "--device", "cpu"]

pytestmark = pytest.mark.filterwarnings("ignore:skipped image")


@pytest.fixture
def setup(tmp_path: Path) -> tuple[str, Path]:
    model_file = tmp_path / "slow_model.py"
    model_file.write_text(SLOW_MODEL)
    images = make_image_folder(tmp_path / "images", count=20, seed=3)
    return f"{model_file}:slow_net", images


def cli(spec: str, images: Path, out: Path, *extra: str) -> int:
    return main(["run", spec, str(images), "--out", str(out), *OPTIONS, *extra])


def interrupted_run(spec: str, images: Path, out: Path, sig: signal.Signals, *extra: str) -> int:
    """Start a slow run in a subprocess, send ``sig`` after its first checkpoint; return done."""
    command = [sys.executable, "-m", "dissect", "run", spec, str(images), "--out", str(out)]
    env = {**os.environ, "SLOW_SECONDS": "0.1"}
    process = subprocess.Popen(
        command + OPTIONS + list(extra),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    checkpoint = out / CHECKPOINT_DIR / "rank0.pt"
    deadline = time.monotonic() + 60
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    if sig == signal.SIGTERM:
        assert process.returncode == 143, stderr  # 128 + SIGTERM
        assert "interrupted; progress is saved" in stderr
    else:
        assert process.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()
    return torch.load(checkpoint, weights_only=True)["state"]["pass"]["done"]


def corrupt_first(images: Path, count: int) -> None:
    """Make the first ``count`` images unreadable: a resumed run must never read them again."""
    source = ImageFolder(images)
    for index in range(count):
        (images / source.image_id(index)).write_bytes(b"corrupted after the checkpoint")


def assert_same_directory(got: Path, expected: Path) -> None:
    assert (got / "units.csv").read_text() == (expected / "units.csv").read_text()
    assert (got / "images.csv").read_text() == (expected / "images.csv").read_text()
    for layer in ("conv1", "conv2"):
        with (
            np.load(got / "topk" / f"{layer}.npz") as a,
            np.load(expected / "topk" / f"{layer}.npz") as b,
        ):
            for key in ("index", "score", "y", "x"):
                np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_resume_equals_uninterrupted_run(tmp_path, setup, sig):
    spec, images = setup
    assert cli(spec, images, tmp_path / "reference") == 0
    out = tmp_path / "out"
    done = interrupted_run(spec, images, out, sig)
    assert 0 < done < 21
    corrupt_first(images, done)
    assert cli(spec, images, out) == 0
    assert_same_directory(out, tmp_path / "reference")
    assert not (out / CHECKPOINT_DIR).exists()
    units = pd.read_csv(out / "units.csv")
    assert units["threshold"].nunique() > 1  # the sampled sketch took part


def test_resume_with_image_decoding_workers_is_exact(tmp_path, setup):
    spec, images = setup
    assert cli(spec, images, tmp_path / "reference", "--workers", "0") == 0
    out = tmp_path / "out"
    done = interrupted_run(spec, images, out, signal.SIGTERM, "--workers", "2")
    assert 0 < done < 21
    corrupt_first(images, done)
    assert cli(spec, images, out, "--workers", "2") == 0
    assert_same_directory(out, tmp_path / "reference")


def test_changed_parameter_is_refused_and_restart_starts_over(tmp_path, setup, capsys):
    spec, images = setup
    out = tmp_path / "out"
    done = interrupted_run(spec, images, out, signal.SIGKILL)
    corrupt_first(images, done)
    assert cli(spec, images, out, "--topk", "6") == 2
    err = capsys.readouterr().err
    assert "topk 5 -> 6" in err and "--restart" in err
    assert (out / CHECKPOINT_DIR / "rank0.pt").exists()  # refusing loses nothing
    assert cli(spec, images, out, "--topk", "6", "--restart") == 0
    skipped = pd.read_csv(out / "images.csv")["skipped"]
    assert skipped[:done].all() and skipped.sum() == done  # started over: read them again
    assert not (out / CHECKPOINT_DIR).exists()


def test_fingerprint_changes_are_named(tmp_path):
    old = {"batch_size": 64, "model_weights_sha256": "a", "layers": ["conv1"]}
    new = {"batch_size": 32, "model_weights_sha256": "b", "layers": ["conv1"]}
    assert describe_changes(old, new) == "batch_size 64 -> 32, model weights changed"
    assert describe_changes(old, dict(old)) == ""
    Checkpoint(tmp_path, old).save({"done": 3})
    assert Checkpoint(tmp_path, dict(old)).load() == {"done": 3}
    with pytest.raises(DissectError, match="model weights changed.*--restart"):
        Checkpoint(tmp_path, new).load()
    (tmp_path / CHECKPOINT_DIR / "rank0.pt").write_bytes(b"garbage")
    with pytest.raises(DissectError, match="cannot be read.*--restart"):
        Checkpoint(tmp_path, old).load()
    Checkpoint(tmp_path, old).remove()
    assert not (tmp_path / CHECKPOINT_DIR).exists()


def test_checkpoint_of_another_format_is_refused_clearly(tmp_path):
    fingerprint = {"batch_size": 64, "layers": ["conv1"]}
    (tmp_path / CHECKPOINT_DIR).mkdir()
    # What dissect wrote before checkpoints carried a format version: the same fingerprint.
    torch.save({"fingerprint": fingerprint, "state": {"done": 3}}, Checkpoint(tmp_path, {}).path)
    with pytest.raises(DissectError, match="another version of dissect.*format.*--restart"):
        Checkpoint(tmp_path, fingerprint).load()
    Checkpoint(tmp_path, fingerprint).save({"done": 3})
    assert Checkpoint(tmp_path, fingerprint).load() == {"done": 3}


def test_digests_see_changed_weights_and_images(tmp_path):
    from tiny_models import tiny_net

    model = tiny_net()
    before = module_digest(model)
    assert module_digest(tiny_net()) == before
    with torch.no_grad():
        model.conv2.bias[0] += 1e-6
    assert module_digest(model) != before
    images = make_image_folder(tmp_path / "images", count=3)
    listed = source_digest(ImageFolder(images))
    (images / "img01.JPG").rename(images / "img01b.JPG")
    assert source_digest(ImageFolder(images)) != listed


def test_signals_are_deferred_to_the_end_of_the_batch():
    with deferred_interrupts() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)  # torchrun's, right after the terminal's Ctrl-C
        assert stop.signal == "SIGINT"
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C stops at once
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
