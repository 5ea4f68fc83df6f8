"""``dissect compare``: networks side by side, layers matched, counts from hand-made labels."""

from __future__ import annotations

import shutil
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_SPEC
from matplotlib.figure import Figure

from dissect.cli import main
from dissect.compare import compare_dissections, match_layers, parse_match, write_comparison
from dissect.dissection import Dissection
from dissect.errors import DissectError
from dissect.images import Preprocess
from dissect.labels import read_labels, write_labels
from dissect.plots.compare import plot_type_comparison
from dissect.reference import ZHOU2015_POOL5_OBJECT_DETECTORS, zhou2015_types
from dissect.streaming import run_dissection

PREPROCESS = Preprocess(24, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
HOSTILE = "<script>alert(1)</script>"


def _labels(rows) -> pd.DataFrame:
    columns = ["layer", "unit", "label", "category", "iou"]
    return pd.DataFrame(rows, columns=columns)


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """Two dissections of the tiny net (conv1: 4 units, conv2: 6) with hand-made IoU labels."""
    root = tmp_path_factory.mktemp("compare")
    a, b = root / "a", root / "b"
    for out in (a, b):
        run_dissection(
            TINY_SPEC, "synthetic:6", out, ["conv1", "conv2"], topk=2, preprocess=PREPROCESS,
            progress=False,
        )  # fmt: skip
    write_labels(
        a,
        "iou",
        _labels(
            [
                ("conv1", 0, "red", "color", 0.10),
                ("conv1", 1, "red", "color", 0.01),  # below the IoU threshold
                ("conv2", 0, "car", "object", 0.20),
                ("conv2", 1, "car wheel", "part", 0.05),  # counts for car
                ("conv2", 2, "house roof", "part", 0.06),
                ("conv2", 3, "house", "object", 0.02),  # not a detector
                ("conv2", 4, HOSTILE, "object", 0.30),  # an object class nobody else has
            ]
        ),
    )
    write_labels(
        b,
        "iou",
        _labels([("conv1", 0, "wood", "material", 0.2), ("conv2", 5, "car", "object", 0.04)]),
    )
    return a, b


def test_layers_by_name_and_counts(two):
    a, b = two
    comparison = compare_dissections([a, b], names=["scene", "object"])
    assert comparison.networks == ["scene", "object"]
    assert comparison.rows == ["conv1", "conv2"]
    layers = comparison.layers.set_index(["network", "row"])
    assert layers.loc[("scene", "conv1"), "detectors"] == 1
    assert layers.loc[("scene", "conv2"), "detectors"] == 4
    assert layers.loc[("object", "conv2"), "detectors"] == 1
    assert layers.loc[("scene", "conv2"), "n_units"] == 6
    assert layers.loc[("scene", "conv2"), "detector_fraction"] == pytest.approx(4 / 6)
    assert layers.loc[("scene", "conv2"), "unique_concepts"] == 4
    # No iou/concepts.csv: the object classes are the object labels (car, house, the hostile one).
    assert layers.loc[("scene", "conv2"), "objects_total"] == 3
    assert layers.loc[("scene", "conv2"), "objects_covered"] == 3  # car, house (roof), hostile
    assert layers.loc[("object", "conv2"), "objects_covered"] == 1
    objects = comparison.objects
    car = objects[(objects["network"] == "scene") & (objects["object"] == "car")]
    assert car["n_units"].tolist() == [2]  # the car and the car-wheel detector
    types = comparison.types.set_index(["network", "row", "category"])
    assert types.loc[("scene", "conv2", "object"), "n_units"] == 2
    assert types.loc[("scene", "conv2", "part"), "fraction"] == pytest.approx(2 / 6)
    assert types.loc[("scene", "conv2", "part"), "share"] == pytest.approx(2 / 4)
    assert types.loc[("object", "conv1", "texture"), "n_units"] == 1  # material -> texture
    # Theoretical RF comes from the geometry; empirical is absent without dissect rf.
    assert layers.loc[("scene", "conv1"), "rf_theoretical"] == pytest.approx(3.0)
    assert np.isnan(layers.loc[("scene", "conv1"), "rf_empirical_mean"])


def test_explicit_match_pairs_layers_of_other_names(two):
    a, b = two
    comparison = compare_dissections([a, b], match=parse_match(["conv2:conv1"], 2))
    assert comparison.rows == ["conv2:conv1"]
    pairs = comparison.matches.set_index("network")["layer"]
    assert list(pairs) == ["conv2", "conv1"]
    assert comparison.pivot("detectors").iloc[0].tolist() == [4, 1]
    assert comparison.networks == [f"{TINY_SPEC} (a)", f"{TINY_SPEC} (b)"]


def test_matching_errors_name_the_fix():
    assert match_layers([["conv1", "x"], ["x", "conv1"]]) == [("conv1",) * 2, ("x",) * 2]
    with pytest.raises(DissectError, match="--match A:B"):
        match_layers([["conv1"], ["layer1"]])
    with pytest.raises(DissectError, match="has conv1"):
        match_layers([["conv1"], ["conv1"]], [("conv1", "layer4")])
    with pytest.raises(DissectError, match="one layer per network"):
        parse_match(["conv5"], 2)


def test_unlabelled_or_single_directory_is_refused(two, tmp_path):
    a, _ = two
    with pytest.raises(DissectError, match="at least two"):
        compare_dissections([a])
    bare = tmp_path / "bare"
    run_dissection(TINY_SPEC, "synthetic:2", bare, ["conv1"], topk=1, preprocess=PREPROCESS,
                   progress=False)  # fmt: skip
    with pytest.raises(DissectError, match="autolabel"):
        compare_dissections([a, bare])


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.scripts = [], 0

    def handle_starttag(self, tag, attrs):
        self.scripts += tag == "script"
        self.links += [value for key, value in attrs if key in ("src", "href")]


def test_cli_writes_tables_plots_and_an_escaped_page(two, tmp_path, capsys):
    a, b = two
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out), "--names", "scene,object"]) == 0
    assert "detector units per layer" in capsys.readouterr().out
    for name in ("networks.csv", "types.csv", "layers.csv", "objects.csv", "reference.csv"):
        assert (out / name).is_file(), name
    layers = pd.read_csv(out / "layers.csv")
    assert layers["detectors"].tolist() == [1, 4, 1, 1]
    text = (out / "index.html").read_text(encoding="utf-8")
    assert HOSTILE not in text and "&lt;script&gt;" in text
    page = Links()
    page.feed(text)
    assert page.scripts == 0
    assert {"plots/types.png", "plots/detectors.png"} <= set(page.links)
    for link in page.links:
        assert (out / link).is_file() and not link.startswith("/")
    assert "Places205-AlexNet" in text  # the reference, drawn and tabled
    assert "different data" not in text
    networks = pd.read_csv(out / "networks.csv", dtype=str)
    assert networks["data"].tolist() == ["synthetic:6:0"] * 2
    assert networks["run_id"].tolist() == [Dissection(a).run_id, Dissection(b).run_id]
    assert networks["run_id"].str.len().min() > 0
    assert main(["compare", str(a), "--out", str(out)]) == 2
    assert main(["compare", str(a), str(b), "--out", str(out), "--match", "conv9:conv1"]) == 2
    assert "conv9" in capsys.readouterr().err


def test_reference_table_is_the_papers():
    table = zhou2015_types()
    assert set(table["network"]) == {"Places205-AlexNet", "ImageNet-AlexNet"}
    sums = table.groupby(["network", "layer"])["fraction"].sum()
    assert len(sums) == 10 and np.allclose(sums, 1.0, atol=0.002)
    row = table.set_index(["network", "layer", "category"])["fraction"]
    assert row[("Places205-AlexNet", "pool5", "object")] == pytest.approx(0.382)
    assert row[("ImageNet-AlexNet", "pool1", "color")] == pytest.approx(0.726)
    assert row[("ImageNet-AlexNet", "conv4", "part")] == pytest.approx(0.242)
    assert list(dict.fromkeys(table["layer"])) == ["pool1", "pool2", "conv3", "conv4", "pool5"]
    assert ZHOU2015_POOL5_OBJECT_DETECTORS == {"Places205-AlexNet": 59, "ImageNet-AlexNet": 30}
    assert "cnnvisualizer" in table.attrs["source"]


def test_type_figure_draws_a_bar_per_network_and_matching_reference_layer(two):
    a, b = two
    comparison = compare_dissections([a, b])
    reference = zhou2015_types()
    reference = reference.assign(layer=reference["layer"].replace({"pool1": "conv1"}))
    figure = plot_type_comparison(comparison, reference)
    assert isinstance(figure, Figure)
    bars = figure.axes[0].patches
    # 6 types x 2 rows for each of ours and each reference network (a missing row is height 0).
    assert len(bars) == 6 * 2 * 4
    heights = [bar.get_height() for bar in bars[6 * 2 * 2 : 6 * 2 * 3]]  # Places, type-major
    assert heights[0] == pytest.approx(79.2)  # simple elements in "conv1" (the renamed pool1)
    assert heights[1] == 0.0  # no conv2 in the reference
    with pytest.raises(DissectError, match="share"):
        plot_type_comparison(comparison, share="nonsense")


def test_page_needs_no_reference(two, tmp_path):
    a, b = two
    index = write_comparison(compare_dissections([a, b]), tmp_path / "out")
    assert "Reference" not in index.read_text(encoding="utf-8")
    assert not (tmp_path / "out" / "reference.csv").exists()


def test_report_draws_the_papers_bars_where_layer_names_match(two, tmp_path):
    from dissect.report import write_report

    out = tmp_path / "pooled"
    run_dissection(TINY_SPEC, "synthetic:4", out, ["conv1", "pool1"], topk=1,
                   preprocess=PREPROCESS, progress=False)  # fmt: skip
    write_labels(out, "iou", _labels([("pool1", 0, "red", "color", 0.3)]))
    page = Links()
    page.feed(write_report(out, progress=False).read_text(encoding="utf-8"))
    assert "assets/plots/types_vs_zhou2015.png" in page.links
    a, _ = two  # conv1, conv2: no layer of the paper's, no such figure
    page = Links()
    page.feed(write_report(a, progress=False).read_text(encoding="utf-8"))
    assert not any("zhou2015" in link for link in page.links)
    # Different data: compared all the same, with a warning on the page.
    index = write_comparison(compare_dissections([a, out]), tmp_path / "mixed")
    assert "different data" in index.read_text(encoding="utf-8")


def test_receptive_fields_of_another_run_are_refused(two, tmp_path):
    import shutil

    a, b = (shutil.copytree(directory, tmp_path / directory.name) for directory in two)
    sizes = {"layer": ["conv2"], "rf_empirical_mean": [9.0], "rf_empirical_std": [1.0]}
    table = pd.DataFrame({**sizes, "n_units": [3], "run_id": [Dissection(a).run_id]})
    table.to_csv(a / "receptive_fields_layers.csv", index=False)
    layers = compare_dissections([a, b]).layers
    assert layers.loc[layers["layer"] == "conv2", "rf_empirical_mean"].tolist()[0] == 9.0
    table.assign(run_id="0123456789abcdef").to_csv(a / "receptive_fields_layers.csv", index=False)
    with pytest.raises(DissectError, match="receptive_fields_layers.csv .* comes from run"):
        compare_dissections([a, b])


def test_detectors_are_counted_by_q_values_where_every_network_has_them(two, tmp_path, capsys):
    """With q-values in both networks the significance rule counts, and the page says so;
    without them in one, both are counted by IoU alone, and the page says why."""
    root = tmp_path / "q"
    copies = []
    for source in two:
        target = root / source.name
        shutil.copytree(source, target)
        copies.append(target)
    a, b = copies
    labels_a = read_labels(a)
    # conv2 unit 0 (car, IoU 0.20) and unit 2 (house roof) fail q <= 0.05; the rest pass
    labels_a["q_value"] = np.where(
        labels_a["unit"].isin([0, 2]) & (labels_a["layer"] == "conv2"), 0.2, 0.01
    )
    write_labels(a, "iou", labels_a)
    labels_b = read_labels(b)
    write_labels(b, "iou", labels_b.assign(q_value=0.01))
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out), "--reference", "none"]) == 0
    printed = capsys.readouterr().out
    assert "q-value \u2264 0.05 (the significance rule" in printed
    layers = pd.read_csv(out / "layers.csv")
    assert layers["detectors"].tolist() == [1, 2, 1, 1]  # conv2 of a: 4 by IoU, 2 by q too
    assert set(layers["rule"]) == {"IoU >= 0.04, q <= 0.05 (FDR)"}
    text = (out / "index.html").read_text(encoding="utf-8")
    assert "Detectors counted by: IoU \u2265 0.04 and q-value \u2264 0.05" in text
    # --fdr none: the IoU rule, as asked
    assert main(["compare", str(a), str(b), "--out", str(out), "--fdr", "none"]) == 0
    assert pd.read_csv(out / "layers.csv")["detectors"].tolist() == [1, 4, 1, 1]
    assert "the IoU rule, as asked" in (out / "index.html").read_text(encoding="utf-8")
    # one network without q-values: the IoU rule for both, and why
    write_labels(b, "iou", labels_b)
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    layers = pd.read_csv(out / "layers.csv")
    assert layers["detectors"].tolist() == [1, 4, 1, 1]
    assert set(layers["rule"]) == {"IoU >= 0.04"}
    text = (out / "index.html").read_text(encoding="utf-8")
    assert "the IoU rule: some automatic labels have no q-value" in text
