"""The command line, called in-process through main(argv)."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from dissect.cli import entry, main


def test_layers_lists_geometry(capsys, tiny_spec):
    assert main(["layers", tiny_spec, "--image-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "conv1" in out and "pool1" in out and "fc" in out


def test_run_writes_directory(tmp_path, image_folder, tiny_spec, capsys):
    out = tmp_path / "run"
    status = main(
        [
            "run",
            tiny_spec,
            str(image_folder),
            "--layers",
            "conv1,conv2",
            "--out",
            str(out),
            "--image-size",
            "32",
            "--topk",
            "3",
            "--batch-size",
            "4",
        ]
    )
    assert status == 0
    assert "dissected 2 layer(s) over 13 images (1 skipped)" in capsys.readouterr().out
    units = pd.read_csv(out / "units.csv")
    assert len(units) == 4 + 6
    assert (out / "topk" / "conv1.npz").is_file()


def test_bad_layer_is_a_clear_error(tmp_path, image_folder, tiny_spec, capsys):
    status = main(
        ["run", tiny_spec, str(image_folder), "--layers", "conv3", "--out", str(tmp_path)]
    )
    assert status == 2
    err = capsys.readouterr().err
    assert "conv3" in err and "conv1" in err and "Traceback" not in err


def test_python_dash_m():
    result = subprocess.run(
        [sys.executable, "-m", "dissect", "--help"], capture_output=True, text=True, check=True
    )
    assert "layers" in result.stdout and "run" in result.stdout


def test_the_program_keeps_freed_memory_then_exits_with_main_s_status_after_freezing(
    monkeypatch,
):
    steps = []
    monkeypatch.setattr("dissect.cli.keep_freed_memory", lambda: steps.append("allocator"))
    monkeypatch.setattr("dissect.cli.main", lambda argv=None: steps.append("main") or 3)
    monkeypatch.setattr("gc.freeze", lambda: steps.append("freeze"))
    with pytest.raises(SystemExit) as stop:
        entry(["run"])
    assert stop.value.code == 3 and steps == ["allocator", "main", "freeze"]


def test_python_m_dissect_passes_on_the_status_and_the_message(tmp_path):
    out, missing = str(tmp_path / "out"), str(tmp_path / "none")
    command = [sys.executable, "-m", "dissect", "run", "scene-cnn", missing, "--out", out]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "dissect run: error:" in done.stderr and "none" in done.stderr
