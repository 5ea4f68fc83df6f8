"""Label Studio: the labelling config, the tasks JSON, and JSON exports of annotations.

Each task's ``data`` holds ``task`` (the package's task id) and ``image_<n>`` URLs. The config
asks the three questions with a ``<TextArea name="concept">``, a
``<Choices name="mismatch" choice="multiple">`` of image numbers and a
``<Choices name="category" choice="single-radio">`` whose choices carry the type keys as
``alias``, so an export's ``annotations[].result[]`` items read
``{"from_name": "concept", "type": "textarea", "value": {"text": [...]}}`` and
``{"from_name": "category", "type": "choices", "value": {"choices": ["object"]}}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from xml.sax.saxutils import quoteattr

import pandas as pd

from ..errors import DissectError
from ..io import write_text
from ..taxonomy import DEFAULT_TYPES
from .mturk import batch_input
from .package import Package
from .readers import Origin, Shown, answer, json_array


def config(count: int) -> str:
    """The labelling config XML for tasks of ``count`` images."""
    images = "\n".join(
        f'    <View><Header value="{n}" size="6"/>'
        f'<Image name="image_{n}" value="$image_{n}" maxWidth="160px"/></View>'
        for n in range(1, count + 1)
    )
    numbers = "\n".join(f'    <Choice value="{n}"/>' for n in range(1, count + 1))
    types = "\n".join(
        f"    <Choice value={quoteattr(name)} alias={quoteattr(key)}/>"
        for key, name in DEFAULT_TYPES.items()
    )
    return f"""<View>
  <Header value="Each picture highlights the region one unit of a neural network responds to."/>
  <View style="display: flex; flex-wrap: wrap; gap: 8px">
{images}
  </View>
  <Header value="1. What concept do most highlighted regions share? (a word or short phrase)"/>
  <TextArea name="concept" toName="image_1" rows="1" maxSubmissions="1" required="true"/>
  <Header value="2. Which pictures do not show that concept?"/>
  <Choices name="mismatch" toName="image_1" choice="multiple" showInline="true">
{numbers}
  </Choices>
  <Header value="3. Which type of concept is it?"/>
  <Choices name="category" toName="image_1" choice="single-radio" required="true">
{types}
  </Choices>
</View>
"""


def write_labelstudio(folder: Path, tasks: pd.DataFrame, base_url: str) -> list[Path]:
    """Write ``tasks.json`` and ``config.xml`` into ``folder``; return their paths."""
    data = batch_input(tasks, base_url)
    records = [
        {"data": {key: value for key, value in row.items() if value}}
        for row in data.to_dict(orient="records")
    ]
    paths = [folder / "tasks.json", folder / "config.xml"]
    write_text(paths[0], json.dumps(records, indent=2) + "\n")
    write_text(paths[1], config(int(tasks["n"].max())))
    return paths


def read_labelstudio(path: Path, package: Package) -> list[dict]:
    """The answers of a Label Studio JSON export (cancelled annotations left out).

    Raises
    ------
    DissectError
        Naming file and line of the task, for malformed JSON, tasks or images not in the
        package, missing answers, unknown types or image numbers.
    """
    answers = []
    for line, item in json_array(path):
        where = f"{path}, line {line}"
        if not isinstance(item, dict) or not isinstance(item.get("data"), dict):
            raise DissectError(f"{where}: a task without a 'data' object; export as JSON.")
        if "annotations" not in item:
            raise DissectError(
                f"{where}: a task without 'annotations'; export from Label Studio as JSON "
                "(not JSON-MIN or CSV)."
            )
        task = str(item["data"].get("task", ""))
        layer, unit, images = package.task(task, where)
        shown = {
            int(key[len("image_") :]): value
            for key, value in item["data"].items()
            if key.startswith("image_") and key[len("image_") :].isdigit()
        }
        package.check_images(task, shown, where)
        for annotation in item["annotations"]:
            if not isinstance(annotation, dict) or annotation.get("was_cancelled"):
                continue
            values = _results(annotation, where)
            missing = [name for name in ("concept", "category") if name not in values]
            if missing:
                raise DissectError(
                    f"{where}: annotation {annotation.get('id')} has no answer for "
                    f"{', '.join(missing)}."
                )
            try:
                mismatches = {int(n) for n in values.get("mismatch", [])}
            except ValueError as error:
                raise DissectError(f"{where}: image numbers must be integers ({error}).") from None
            answers.append(
                answer(
                    where,
                    layer,
                    unit,
                    " ".join(values["concept"]),
                    values["category"][0] if values["category"] else "",
                    shown=Shown(len(images), mismatches, package.sentinels(task)),
                    origin=Origin(
                        "labelstudio",
                        path.name,
                        line,
                        f"labelstudio:{_annotator(annotation.get('completed_by'))}",
                        str(annotation.get("id", "")),
                    ),
                )
            )
    return answers


def _results(annotation: dict, where: str) -> dict[str, list[str]]:
    """``from_name`` -> the texts or choices of an annotation's result items."""
    values = {}
    for result in annotation.get("result") or []:
        value = result.get("value") if isinstance(result, dict) else None
        if not isinstance(value, dict):
            raise DissectError(f"{where}: a result item without a 'value' object.")
        entries = value.get("text", value.get("choices", []))
        values[result.get("from_name")] = [str(entry) for entry in entries]
    return values


def _annotator(completed_by: object) -> str:
    """Label Studio writes ``completed_by`` as a user id or as ``{"id": ..., "email": ...}``."""
    if isinstance(completed_by, dict):
        return str(completed_by.get("id", completed_by.get("email", "")))
    return "" if completed_by is None else str(completed_by)
