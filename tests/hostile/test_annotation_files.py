"""Crowd answer files built to be slow or to crash the reader."""

from __future__ import annotations

import json

import pytest

from dissect.annotation import readers
from dissect.errors import DissectError


class _CountingText(str):
    """A str that adds up how many characters ``count`` scans."""

    scanned = 0

    def count(self, sub, start=0, end=None):
        end = len(self) if end is None else end
        _CountingText.scanned += max(0, end - start)
        return super().count(sub, start, end)


def test_label_studio_items_are_read_in_linear_time(tmp_path, monkeypatch):
    """The line of every item used to be counted again from the start of the text."""
    items = [{"data": {"task": f"t{i}"}, "annotations": []} for i in range(2000)]
    text = "[\n" + ",\n".join(json.dumps(item) for item in items) + "\n]\n"
    path = tmp_path / "export.json"
    path.write_text(text)
    monkeypatch.setattr(readers, "read_text", lambda _: _CountingText(text))
    _CountingText.scanned = 0
    lines = [line for line, _ in readers.json_array(path)]
    assert lines == list(range(2, 2002))
    assert _CountingText.scanned <= 2 * len(text)  # quadratic: ~1000 times the text


def test_deeply_nested_json_is_one_line(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" + "[" * 200_000 + "]" * 200_000 + "]")
    with pytest.raises(DissectError, match="nested too deeply") as error:
        list(readers.json_array(path))
    assert "\n" not in str(error.value)
