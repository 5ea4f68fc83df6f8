"""dissect.rf.measure: layers written as they finish; SIGTERM saves the batch in flight."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from dissect.cli import main
from dissect.images import Preprocess
from dissect.report import write_report
from dissect.rf import OcclusionConfig, receptive_fields
from dissect.streaming import run_dissection

PREPROCESS = Preprocess(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
RF_ARGS = ["--top", "3", "--occluder", "3", "--stride", "3", "--batch-size", "2"]

#: ``dissect rf`` of conv1 and conv2 in a child process that gets SIGTERM in conv2's first batch
#: of occluded passes, once conv1's maps are written. argv: the dissection directory.
TERMINATED = """
import os, signal, sys
from pathlib import Path
from dissect.cli import main
from dissect.rf import schedule

out = Path(sys.argv[1])
record = schedule._record

def record_then_terminate(*args):
    record(*args)
    if (out / "receptive_fields" / "conv1.npz").exists():
        os.kill(os.getpid(), signal.SIGTERM)

schedule._record = record_then_terminate
sys.exit(main(["rf", str(out), "--layers", "conv1,conv2", "--device", "cpu", *sys.argv[2:]]))
"""


@pytest.fixture
def dissected(tmp_path, image_folder, tiny_spec):
    with pytest.warns(UserWarning, match="broken.jpg"):
        return run_dissection(
            tiny_spec,
            str(image_folder),
            tmp_path / "out",
            ["conv1", "conv2"],
            topk=3,
            preprocess=PREPROCESS,
            progress=False,
        )


def test_sigterm_keeps_finished_layers_in_the_table_and_saves_the_layer_in_flight(
    dissected, capsys
):
    out = dissected.directory
    reference = shutil.copytree(out, out.parent / "reference")
    child = subprocess.run(
        [sys.executable, "-c", TERMINATED, str(out), *RF_ARGS],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 128 + signal.SIGTERM, child.stderr  # stopped, not killed
    table = pd.read_csv(out / "receptive_fields.csv", dtype={"layer": str})
    assert set(table["layer"]) == {"conv1"}  # written as soon as conv1 was done
    summary = pd.read_csv(out / "receptive_fields_layers.csv", dtype={"layer": str})
    assert summary["layer"].tolist() == ["conv1"]
    partial = out / "receptive_fields" / ".checkpoint" / "rank0.pt"
    saved = torch.load(partial, weights_only=True)["state"]
    assert saved["layer"] == "conv2" and saved["done"] > 0  # the batch in flight, on SIGTERM
    page = write_report(out, progress=False).read_text(encoding="utf-8")
    assert "Receptive fields not measured yet" not in page
    # Started with other settings, it is refused with one line that names --restart.
    assert main(["rf", str(out), "--layers", "conv1,conv2", *RF_ARGS, "--stride", "4"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "(stride 3 -> 4)" in line and "add --restart to discard it" in line
    # Started again, it goes on from there and ends with the uninterrupted run's table.
    config = OcclusionConfig(top=3, occluder=3, stride=3, batch_size=2)
    resumed = receptive_fields(out, ["conv1", "conv2"], config=config, progress=False)
    expected = receptive_fields(reference, ["conv1", "conv2"], config=config, progress=False)
    pd.testing.assert_frame_equal(resumed.drop(columns="run_id"), expected.drop(columns="run_id"))
    for name in ("receptive_fields.csv", "receptive_fields_layers.csv"):
        assert (out / name).read_bytes() == (reference / name).read_bytes()
    got, want = (np.load(d / "receptive_fields" / "conv2.npz") for d in (out, reference))
    assert sorted(got.files) == sorted(want.files)
    for key in want.files:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert not partial.parent.exists()


def test_rows_of_layers_not_measured_again_are_kept(dissected):
    config = OcclusionConfig(top=3, occluder=3, stride=3, batch_size=2)
    receptive_fields(dissected, ["conv1"], config=config, progress=False)
    receptive_fields(dissected, ["conv2"], config=config, progress=False)
    table = pd.read_csv(dissected.path("receptive_fields.csv"), dtype={"layer": str})
    assert table["layer"].tolist()[0] == "conv1" and set(table["layer"]) == {"conv1", "conv2"}
