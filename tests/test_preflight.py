"""Typos are answered at once: every command checks paths, specs and layer names before it
imports torch, pandas or matplotlib (checked by what is loaded when the error comes, not by a
clock)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "matplotlib", "scipy", "pandas", "skimage", "numpy", "PIL")
ROOT = Path(__file__).resolve().parents[1]


def run_cli(argv: list[str], cwd: Path) -> tuple[int, str, list[str]]:
    """Run ``dissect ARGV`` in a fresh interpreter: status, stderr, heavy modules loaded."""
    code = (
        "import sys; from dissect.cli import main; status = main(sys.argv[1:]); "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))); "
        "sys.exit(status)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={
            "PYTHONPATH": str(ROOT),
            "PATH": "/usr/bin:/bin",
            "DISSECT_CACHE_DIR": os.environ["DISSECT_CACHE_DIR"],
        },
        timeout=120,
    )
    loaded = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "[]"
    return done.returncode, done.stderr, ast.literal_eval(loaded)


@pytest.fixture(scope="module")
def fake_dissection(tmp_path_factory) -> Path:
    """A directory with only a manifest: enough for the checks, which read nothing else."""
    folder = tmp_path_factory.mktemp("preflight") / "dissection"
    folder.mkdir()
    manifest = {"config": {"layers": ["conv1", "conv5"]}}
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["report", "/nonexistent"], "'/nonexistent' does not exist"),
        (["run", "scene-cnn", "synthetic:abc", "--out", "x"], "N and SEED must be whole"),
        (["run", "scene-cnn", "my-photos", "--out", "x"], "neither an existing folder"),
        (["run", "scene-cn", "synthetic:10", "--out", "x"], "not a built-in name"),
        (["layers", "nets/missing.py:make"], "file 'nets/missing.py' does not exist"),
        (["layers", "model.pt2"], "'model.pt2' does not exist"),
        (["run", "scene-cnn", "synthetic:4", "--out", "x", "--weights", "w.pt"], "--weights"),
        (["stats", "."], "not a dissection directory"),
        (["rf", "{dir}", "--layers", "conv1,conv9"], "conv9 not dissected"),
        (["segment", "{dir}", "--layers", "pool5"], "its layers are conv1, conv5"),
        (["import", "{dir}", "answers.csv"], "'answers.csv' does not exist"),
        (["compare", "{dir}", "/nonexistent", "--out", "c"], "'/nonexistent' does not exist"),
    ],
)
def test_errors_come_before_heavy_imports(argv, message, fake_dissection, tmp_path):
    argv = [arg.replace("{dir}", str(fake_dissection)) for arg in argv]
    status, stderr, heavy = run_cli(argv, tmp_path)
    assert status == 2, stderr
    assert message in stderr
    assert len(stderr.strip().splitlines()) == 1, "one line, no traceback"
    assert heavy == [], f"loaded {heavy} before answering"


def test_good_arguments_pass_the_checks(fake_dissection):
    from argparse import Namespace

    from dissect.specs import preflight

    preflight(Namespace(directory=str(fake_dissection), layers="conv5"))
    preflight(Namespace(model="scene-cnn", data="synthetic:20:3", weights=None))
    preflight(Namespace(model="dissect.zoo.scene_cnn:scene_cnn", data=str(fake_dissection)))


def test_builtin_names_match_the_zoo():
    from dissect.specs import BUILTIN_MODELS
    from dissect.zoo import builtin_models

    assert set(BUILTIN_MODELS) == set(builtin_models())
