"""Taxonomy mapping and per-layer statistics on hand-made label tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from dissect.cli import main
from dissect.errors import DissectError
from dissect.labels import write_labels
from dissect.plots.semantics import (
    plot_detectors_per_layer,
    plot_type_distribution,
    plot_units_per_concept,
)
from dissect.semantics import concept_table, detectors, layer_type_table
from dissect.taxonomy import DEFAULT_TAXONOMY, Taxonomy


def test_default_taxonomy_maps_broden_and_type_names():
    taxonomy = DEFAULT_TAXONOMY
    assert taxonomy.keys == ["color", "texture", "region", "part", "object", "scene"]
    assert taxonomy.type_of("material") == "texture"
    assert taxonomy.type_of("Texture") == "texture"
    assert taxonomy.type_of("object part") == "part"
    assert taxonomy.type_of("simple elements & colors") == "color"
    assert taxonomy.type_of("scene") == "scene"
    assert taxonomy.type_of("weather") is None
    assert taxonomy.type_of(float("nan")) is None


def test_user_mapping_adds_types_and_overrides(tmp_path):
    path = tmp_path / "mapping.csv"
    path.write_text("category,type\nmaterial,region\nweather,sky\n")
    taxonomy = Taxonomy.from_csv(path)
    assert taxonomy.type_of("material") == "region"
    assert taxonomy.type_of("weather") == "sky"
    assert taxonomy.keys[-1] == "sky"
    assert taxonomy.type_of("object") == "object"
    (tmp_path / "bad.csv").write_text("name,kind\na,b\n")
    with pytest.raises(DissectError, match="category,type"):
        Taxonomy.from_csv(tmp_path / "bad.csv")
    with pytest.raises(DissectError, match="lacks"):
        Taxonomy(mapping={"material": "nonsense"})


def labels_table() -> pd.DataFrame:
    """Two layers; crowd rows judged by precision, iou rows by IoU."""
    rows = [
        # layer, unit, label, category, precision, iou, source
        ("conv1", 0, "red", "color", 0.9, np.nan, "crowd"),
        ("conv1", 1, "red", "color", 0.8, np.nan, "crowd"),
        ("conv1", 2, "wood", "material", np.nan, 0.05, "iou"),
        ("conv1", 3, "stripes", "texture", np.nan, 0.03, "iou"),  # IoU too low
        ("conv1", 4, "blue", "color", 0.5, np.nan, "crowd"),  # precision too low
        ("conv2", 0, "dog", "object", np.nan, 0.2, "iou"),
        ("conv2", 1, "cat", "object", np.nan, 0.1, "iou"),
        ("conv2", 2, "dog", "object", 0.75, np.nan, "crowd"),
        ("conv2", 3, "kitchen", "scene", np.nan, 0.04, "iou"),
        ("conv2", 4, "", "object", 1.0, np.nan, "crowd"),  # no label
        ("conv2", 5, "cloud", "weather", 1.0, np.nan, "crowd"),  # unknown category
        ("conv2", 6, "dog", "object", np.nan, np.nan, "crowd"),  # no score
    ]
    columns = ["layer", "unit", "label", "category", "precision", "iou", "source"]
    return pd.DataFrame(rows, columns=columns)


def test_detectors_apply_the_threshold_of_each_source():
    found = detectors(labels_table())
    assert list(zip(found["layer"], found["unit"], strict=True)) == [
        ("conv1", 0),
        ("conv1", 1),
        ("conv1", 2),
        ("conv2", 0),
        ("conv2", 1),
        ("conv2", 2),
        ("conv2", 3),
    ]
    assert found["type"].tolist() == ["color", "color", "texture"] + ["object"] * 3 + ["scene"]
    stricter = detectors(labels_table(), min_precision=0.85, min_iou=0.1)
    assert list(stricter["unit"]) == [0, 0, 1]


def test_layer_type_table_counts_fractions_and_unique_concepts():
    table = layer_type_table(labels_table(), ["conv1", "conv2"], {"conv1": 10, "conv2": 20})
    assert len(table) == 12  # every type of every layer, zeros included
    got = table.set_index(["layer", "category"])
    assert got.loc[("conv1", "color"), "n_units"] == 2
    assert got.loc[("conv1", "color"), "unique_concepts"] == 1
    assert got.loc[("conv1", "color"), "fraction"] == pytest.approx(0.2)
    assert got.loc[("conv1", "texture"), "n_units"] == 1
    assert got.loc[("conv2", "object"), "n_units"] == 3
    assert got.loc[("conv2", "object"), "unique_concepts"] == 2
    assert got.loc[("conv2", "object"), "fraction"] == pytest.approx(3 / 20)
    assert got.loc[("conv2", "scene"), "n_units"] == 1
    assert got.loc[("conv2", "part"), "n_units"] == 0
    # Without unit counts the denominator is the labelled units of the layer.
    default = layer_type_table(labels_table()).set_index(["layer", "category"])
    assert default.loc[("conv1", "color"), "fraction"] == pytest.approx(2 / 5)


def test_concept_table_counts_units_per_concept():
    table = concept_table(labels_table())
    assert table.to_dict("records") == [
        {"layer": "conv1", "category": "color", "label": "red", "n_units": 2},
        {"layer": "conv1", "category": "texture", "label": "wood", "n_units": 1},
        {"layer": "conv2", "category": "object", "label": "dog", "n_units": 2},
        {"layer": "conv2", "category": "object", "label": "cat", "n_units": 1},
        {"layer": "conv2", "category": "scene", "label": "kitchen", "n_units": 1},
    ]
    assert concept_table(labels_table().iloc[:0]).empty


def test_plots_return_figures():
    table = layer_type_table(labels_table())
    concepts = concept_table(labels_table())
    figure = plot_type_distribution(table)
    assert isinstance(figure, Figure)
    color, _, _, _, objects, scene = figure.axes[0].containers  # one per type, in order
    # Denominators are the labelled rows: 5 in conv1, 7 in conv2.
    assert [bar.get_height() for bar in color] == pytest.approx([40.0, 0.0])
    assert [bar.get_height() for bar in objects] == pytest.approx([0.0, 300 / 7])
    assert [bar.get_height() for bar in scene] == pytest.approx([0.0, 100 / 7])
    assert scene[1].get_y() == pytest.approx(300 / 7)  # stacked on top of the objects
    assert isinstance(plot_detectors_per_layer(table), Figure)
    per_concept = plot_units_per_concept(concepts, "object")
    labels = [tick.get_text() for tick in per_concept.axes[0].get_yticklabels()]
    assert labels == ["cat", "dog"]  # most frequent at the top


@pytest.mark.filterwarnings("ignore:skipped image")
def test_stats_command_writes_tables_and_plots(tmp_path, image_folder, tiny_spec, capsys):
    out = tmp_path / "run"
    argv = ["run", tiny_spec, str(image_folder), "--layers", "conv1,conv2", "--out", str(out)]
    assert main([*argv, "--image-size", "32", "--topk", "2"]) == 0
    assert main(["stats", str(out)]) == 2
    assert "no unit labels" in capsys.readouterr().err
    write_labels(out, "iou", labels_table()[labels_table()["source"] == "iou"])
    write_labels(out, "crowd", labels_table()[labels_table()["source"] == "crowd"])
    assert main(["stats", str(out)]) == 0
    types = pd.read_csv(out / "layer_types.csv")
    assert list(types.columns) == ["layer", "category", "n_units", "fraction", "unique_concepts"]
    conv1 = types[types["layer"] == "conv1"].set_index("category")
    assert conv1.loc["color", "fraction"] == pytest.approx(2 / 4)  # conv1 has 4 units
    concepts = pd.read_csv(out / "concepts.csv")
    assert concepts["n_units"].sum() == 7
    for name in ("type_distribution", "detectors_per_layer", "units_per_object"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000
