"""``dissect demo --quick`` runs every stage on the built-in model and world."""

from __future__ import annotations

import pandas as pd

from dissect.cli import main
from dissect.demo import comparison_finding, finding
from dissect.semantics import object_of


def test_quick_demo_runs_every_stage(tmp_path, capsys):
    out = tmp_path / "demo"
    command = ["demo", "--quick", "--images", "40", "--out", str(out), "--device", "cpu"]
    # Compared with itself, the network must come out the same on both sides.
    assert main([*command, "--compare-with", "scene-cnn"]) == 0
    printed = capsys.readouterr().out
    for stage in ("run", "autolabel", "stats", "rf", "segment", "export", "compare", "explain",
                  "ablate", "report"):  # fmt: skip
        assert f"$ dissect {stage} " in printed
    assert f"$ dissect ablate {out} synthetic:40:7 --layers conv5" in printed
    assert "conv5 ablation: per class, the label groups whose ablation hurts it most:" in printed
    groups = pd.read_csv(out / "ablation_groups.csv")
    assert set(groups["layer"]) == {"conv5"} and groups["p_accuracy"].between(0, 1).all()
    assert "object or part detectors" in printed and "index.html" in printed
    assert f"$ dissect run scene-cnn synthetic:40:1 --out {out / 'scene-cnn'}" in printed
    assert "conv5 object detectors: scene-cnn (demo)" in printed
    assert (out / "compare" / "index.html").is_file()
    assert (out / "scene-cnn" / "labels.csv").is_file()
    assert (out / "explain" / "image0000" / "explain.png").is_file()
    for name in ("units.csv", "labels.csv", "layer_types.csv", "receptive_fields.csv"):
        assert (out / name).is_file(), name
    assert (out / "report" / "index.html").is_file()
    assert (out / "annotation" / "html").is_dir()
    summary = finding(out)
    labels = pd.read_csv(out / "labels_iou.csv")
    assert set(labels.loc[labels["p_value"].notna(), "layer"]) == {"conv5"}
    conv5 = labels[(labels["layer"] == "conv5") & (labels["iou"] >= 0.04)]
    expected = conv5["category"].isin(["object", "part"]).sum() / 96
    assert summary["last_layer"] == "conv5" and summary["first_layer"] == "conv1"
    assert summary["last_object_part_fraction"] == round(expected, 3)
    assert summary["objects_total"] == 11
    compared = comparison_finding(out / "compare")
    assert compared["networks"] == ["scene-cnn (demo)", "scene-cnn (scene-cnn)"]
    first, second = (compared[name] for name in compared["networks"])
    assert first == second
    conv5 = labels[labels["layer"] == "conv5"]
    assert first["object"] == int((conv5["iou"] >= 0.04).mul(conv5["category"] == "object").sum())
    types = pd.read_csv(out / "compare" / "types.csv").drop(columns="network")
    half = len(types) // 2
    pd.testing.assert_frame_equal(types.iloc[:half], types.iloc[half:].reset_index(drop=True))


def test_demo_without_comparison_lists_no_second_network():
    from dissect.demo import DemoPlan, demo_commands

    plan = DemoPlan.choose(True, 10)
    alone = [command[0] for command in demo_commands("out", plan, 1, "cpu")]
    assert "compare" not in alone and alone.count("run") == 1
    both = demo_commands("out", plan, 1, "cpu", "object-cnn")
    assert [c[0] for c in both].count("run") == 2
    assert ["compare", "out", "out/object-cnn", "--out", "out/compare"] in both
    # Both networks are labelled in the pass (without its null); only the main one's last
    # layers get p-values, from autolabel.
    runs = [command for command in both if command[0] == "run"]
    assert all("--iou" in command and "--permutations" in command for command in runs)
    autolabels = [command for command in both if command[0] == "autolabel"]
    assert autolabels == [["autolabel", "out", "--layers", "conv5", "--device", "cpu"]]


def test_parts_count_for_their_object():
    objects = {"car", "house", "table"}
    assert object_of("car wheel", objects) == "car"
    assert object_of("table", objects) == "table"
    assert object_of("carpet", objects) == "carpet"
