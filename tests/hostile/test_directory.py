"""Two writers, unwritable and full directories, bad arguments: one line each, nothing lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import TINY_SPEC, make_image_folder

from dissect.cli import main
from dissect.errors import DissectError
from dissect.images import Preprocess
from dissect.lock import LOCK_FILE, directory_lock
from dissect.streaming import run_dissection

ROOT = Path(__file__).parents[2]
RUN = ["--image-size", "32", "--layers", "conv2", "--topk", "3", "--batch-size", "4"]


def _environment() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of ``tmp_path / 'out'``."""
    out = tmp_path / "out"
    code = textwrap.dedent(
        f"""
        import sys, time
        from dissect.lock import directory_lock
        with directory_lock({str(out)!r}):
            print("held", flush=True)
            time.sleep(60)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=_environment()
    )
    assert process.stdout.readline().strip() == "held"
    yield out, process
    process.kill()
    process.wait()


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "dissect run: error" in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_second_writer_is_refused_naming_the_holder(holder, image_folder, capsys):
    out, process = holder
    assert main(["run", TINY_SPEC, str(image_folder), "--out", str(out), *RUN]) == 2
    line = _one_line(capsys)
    assert f"process {process.pid} on " in line and "since" in line and "-c" in line
    assert not (out / "manifest.json").exists()
    with pytest.raises(DissectError, match=f"process {process.pid}"):
        run_dissection(TINY_SPEC, str(image_folder), out, ["conv2"], progress=False)
    # the holder dies (kill -9): its lock goes with it, the next run goes ahead
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert main(["run", TINY_SPEC, str(image_folder), "--out", str(out), *RUN]) == 0
    assert (out / "manifest.json").is_file() and (out / LOCK_FILE).is_file()


def test_lock_is_reentrant_and_shared_by_torchrun_ranks(holder, image_folder, monkeypatch):
    out, _ = holder
    monkeypatch.setenv("RANK", "1")  # a torchrun rank other than 0 writes under rank 0's lock
    with directory_lock(out):
        pass
    monkeypatch.delenv("RANK")
    mine = out.parent / "mine"
    with directory_lock(mine), directory_lock(mine):
        run_dissection(
            TINY_SPEC,
            str(image_folder),
            mine,
            ["conv2"],
            topk=3,
            preprocess=Preprocess(32),
            progress=False,
        )
    assert (mine / "manifest.json").is_file()


def test_unwritable_out_is_one_line(tmp_path, image_folder, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert main(["run", TINY_SPEC, str(image_folder), "--out", str(blocker / "out"), *RUN]) == 2
    assert "cannot write to" in _one_line(capsys)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "read-only"
        locked.mkdir(mode=0o555)
        assert main(["run", TINY_SPEC, str(image_folder), "--out", str(locked), *RUN]) == 2
        assert "cannot write to" in _one_line(capsys)


def test_negative_workers_is_one_line(tmp_path, image_folder, capsys):
    out = str(tmp_path / "out")
    assert main(["run", TINY_SPEC, str(image_folder), "--out", out, *RUN, "--workers", "-1"]) == 2
    assert "--workers -1" in _one_line(capsys)


def test_full_disk_is_one_line_and_leaves_no_truncated_file(tmp_path):
    """The checkpoint cannot be written whole (a file-size limit stands in for a full disk; it
    would also stop decoding workers from passing images through shared memory, so none)."""
    folder = make_image_folder(tmp_path / "images")
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8000, 8000))
        from dissect.cli import main
        sys.exit(main(["run", {TINY_SPEC!r}, {str(folder)!r}, "--out", "out",
                       "--image-size", "32", "--checkpoint-every", "4", "--batch-size", "4",
                       "--workers", "0"]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**_environment(), "PYTHONDONTWRITEBYTECODE": "1"},
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "dissect run: error" in line]
    assert len(errors) == 1 and "File too large" in errors[0]
    left = [path for path in (tmp_path / "out").rglob("*") if path.is_file()]
    assert [path.name for path in left] == [LOCK_FILE]


def test_no_space_left_is_named(tmp_path, monkeypatch, capsys):
    import errno

    from dissect import io

    def full(path, obj):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(io, "write_torch", full)
    monkeypatch.setattr("dissect.checkpoint.write_torch", full)
    folder = make_image_folder(tmp_path / "images")
    out = str(tmp_path / "out")
    assert main(["run", TINY_SPEC, str(folder), "--out", out, *RUN, "--checkpoint-every", "4"]) == 2
    assert "no space left on the device" in _one_line(capsys)


def test_sigterm_exits_143(tmp_path):
    """SIGTERM's conventional status is 128 + 15 (Ctrl-C's stays 130)."""
    folder = make_image_folder(tmp_path / "images", count=40)
    command = [sys.executable, "-m", "dissect", "run", TINY_SPEC, str(folder), "--out", "out"]
    process = subprocess.Popen(
        [*command, *RUN, "--batch-size", "1"],
        cwd=tmp_path,
        env=_environment(),
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in iter(process.stderr.readline, ""):
        if "img/s" in line or "img]" in line or "/40" in line:
            break
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    assert process.returncode == 143
