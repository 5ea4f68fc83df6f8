"""Broden datasets that used to be misread without a word."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_broden import _write_dataset

from dissect.datasets.broden import BrodenDataset
from dissect.errors import DissectError


def test_wrong_ih_iw_is_reported_and_masks_fit_the_image(tmp_path):
    root = _write_dataset(tmp_path / "b")
    index = pd.read_csv(root / "index.csv", dtype=str, keep_default_na=False)
    index.loc[0, ["ih", "iw"]] = ["6", "3"]  # the image is 2x4
    index.to_csv(root / "index.csv", index=False)
    broden = BrodenDataset(root)
    with pytest.warns(UserWarning, match="ih,iw = 6,3 .* is 2x4"):
        masks = broden.segmentation(0).pixel["object"]
    assert [mask.shape for mask in masks] == [(2, 4), (2, 4)]
    assert masks[0].tolist() == [[1, 1, 2, 2], [1, 1, 2, 2]]


def test_grey_label_png_holds_the_codes_themselves(tmp_path):
    root = _write_dataset(tmp_path / "b", object_cell="a_object.png")
    Image.fromarray(np.array([[1, 2]], dtype=np.uint8), "L").save(root / "images" / "a_object.png")
    mask = BrodenDataset(root).segmentation(0).pixel["object"][0]
    assert mask.tolist() == [[1, 1, 2, 2], [1, 1, 2, 2]]  # not 257 and 514


def test_truncated_index_row_is_one_line(tmp_path):
    root = _write_dataset(tmp_path / "b")
    text = (root / "index.csv").read_text().rstrip("\n")
    (root / "index.csv").write_text(text.rsplit(",", 2)[0] + "\n")  # the last fields cut off
    with pytest.raises(DissectError, match="line 2: 7 field.* header has 9; .* truncated"):
        BrodenDataset(root)


def test_codes_missing_from_label_csv_are_counted_and_reported(tmp_path):
    root = _write_dataset(tmp_path / "b", object_cell="a_object.png")
    codes = np.array([[1, 77]])
    from dissect.datasets.broden import encode_label_png

    Image.fromarray(encode_label_png(codes)).save(root / "images" / "a_object.png")
    broden = BrodenDataset(root)
    with pytest.warns(UserWarning, match="concept number 77, which label.csv does not list"):
        broden.segmentation(0)
    assert broden.unknown_codes == {77: 1}  # pixels of the label image (half resolution)


def test_label_csv_number_that_is_not_a_number_is_one_line(tmp_path):
    root = _write_dataset(tmp_path / "b")
    labels = pd.read_csv(root / "label.csv", dtype=str, keep_default_na=False)
    labels.loc[2, "number"] = "two"
    labels.to_csv(root / "label.csv", index=False)
    with pytest.raises(DissectError, match="line 4: concept number 'two'"):
        BrodenDataset(root)
