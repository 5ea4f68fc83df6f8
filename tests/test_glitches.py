"""Small things a person notices: help with examples, messages that say what happened, progress
that reads well in a log, a note instead of a raw warning, global pooling called global."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_SPEC
from tqdm import tqdm

from dissect.cli import COMMANDS, build_parser, main
from dissect.images import Preprocess
from dissect.logstream import LineLog

ROOT = Path(__file__).resolve().parents[1]
PREPROCESS = Preprocess(24, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_help_ends_with_examples_that_parse(name, capsys):
    with pytest.raises(SystemExit):
        main([name, "--help"])
    text = capsys.readouterr().out.rstrip()
    examples = text[text.rindex("examples:") :].splitlines()[1:]
    assert 1 <= len(examples) <= 2 and text.endswith(examples[-1])
    for line in examples:
        argv = shlex.split(line)
        assert argv[:2] == ["dissect", name]
        build_parser().parse_args(argv[1:])  # every flag of the example exists


def test_demo_help_does_not_promise_to_open_the_report(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "open the report" not in capsys.readouterr().out


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_in_a_log_is_a_few_whole_lines():
    class Sink:
        def __init__(self):
            self.text = ""

        def write(self, text):
            self.text += text

        def flush(self):
            pass

    sink, clock = Sink(), Clock()
    log = LineLog(sink, every=30.0, clock=clock)
    with tqdm(total=1000, file=log, mininterval=0, miniters=1, desc="dissect") as bar:
        for _ in range(1000):
            clock.now += 0.1  # 100 s in all: a line at most every 30 s
            bar.update(1)
    with tqdm(total=10, file=log, leave=False, mininterval=0) as bar:  # a bar that vanishes
        bar.update(10)
    log.write("done\n")
    lines = sink.text.splitlines()
    assert "\r" not in sink.text and "\x1b" not in sink.text
    assert "" not in lines, "no blank lines"
    assert len(lines) <= 8, lines  # 1,000 redraws: its start, every 30 s, its end; the short bar
    assert "1000/1000" in lines[-3] and lines[-1] == "done"


def test_rf_names_the_plot_folder(tmp_path, capsys):
    from dissect.streaming import run_dissection

    out = tmp_path / "run"
    run_dissection(
        TINY_SPEC, "synthetic:4:3", out, ["conv1"], topk=1, preprocess=PREPROCESS, progress=False
    )
    argv = ["rf", str(out), "--units", "0", "--top", "1", "--occluder", "5", "--stride", "6"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "DIR/plots" not in printed and f"plots in {out / 'plots'}" in printed


def test_run_time_includes_the_labelling(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "run",
        TINY_SPEC,
        "synthetic:6:3",
        "--out",
        str(out),
        "--iou",
        "--layers",
        "conv1",
        "--image-size",
        "24",
        "--topk",
        "2",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "the rest labelling by IoU" in printed


def test_static_batch_note_is_one_clean_line_once(tmp_path):
    code = f"""
import torch, sys
sys.path.insert(0, {str(ROOT / "tests")!r})
from tiny_models import tiny_net
from dissect.cli import main
torch.export.save(torch.export.export(tiny_net().eval(), (torch.randn(2, 3, 32, 32),)), "s.pt2")
for _ in range(2):
    assert main(["layers", "s.pt2", "--image-size", "32"]) == 0
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stderr.splitlines() if "static batch" in line]
    assert notes == [notes[0]] and notes[0].startswith("dissect: note: MODEL 's.pt2'")
    assert "UserWarning" not in done.stderr and ".py:" not in done.stderr


def test_global_pooling_is_called_global():
    from tiny_models import tiny_net

    from dissect.geometry import geometry_table

    table = geometry_table(tiny_net(), image_size=32).set_index("layer")
    assert table.loc["pool2", "rf"] == "global"  # AdaptiveAvgPool2d(1): one position, all pixels
    assert table.loc["pool2", "stride"] == "-"
    assert "global" in table.loc["pool2", "note"]
    assert table.loc["conv2", "rf"] != "global"


def test_threads_come_from_the_free_cores(monkeypatch):
    from dissect import threads

    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (14.6, 14.0, 13.0))
    assert threads.free_cores() == 1  # a busy machine: one thread, no waiting for partners
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.9, 0.5, 0.5))
    assert threads.free_cores() == 3
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # as before torch loads
    assert threads.choose_threads() == 3 and threads.os.environ["OMP_NUM_THREADS"] == "3"
    assert threads.choose_threads() is None  # decided once; a user's count is kept
