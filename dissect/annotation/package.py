"""The annotation package on disk: the segmented top images and the private task mapping.

``DIR/annotation/`` holds:

- ``images/u<id>_<n>.png``: the segmented top images, named by a salted hash of layer and unit
  and the image's place in the task, so a name reveals neither the image's path, nor which unit
  it belongs to, nor whether it is a sentinel;
- ``private/tasks.csv``: ``task, layer, unit, n, image, image_index, image_path, sentinel,
  source_unit, run_id`` (keep it: it is not uploaded, and import checks and scores answers
  against it): ``sentinel`` is 1 for a sentinel image, a top image of ``source_unit`` mixed into
  the task (see :mod:`dissect.annotation.sentinels`); ``run_id`` the dissection run whose top
  images were exported (answers for another run's package are refused); ``private/salt.txt``;
- one folder per export format (``mturk/``, ``labelstudio/``, ``html/``).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..dissection import Dissection
from ..errors import DissectError
from ..io import read_csv, write_text

ROOT = "annotation"
TASK_COLUMNS = [
    "task",
    "layer",
    "unit",
    "n",
    "image",
    "image_index",
    "image_path",
    "sentinel",
    "source_unit",
    "run_id",
]
TASKS = "tasks.csv"


def package_salt(dissection: Dissection) -> str:
    """The package's secret salt, created on first use."""
    path = dissection.path(ROOT, "private", "salt.txt")
    if not path.is_file():
        write_text(path, secrets.token_hex(16) + "\n")
    return path.read_text(encoding="utf-8").strip()


def task_id(salt: str, layer: str, unit: int) -> str:
    """The public name of the task of one unit: ``u`` and 12 hex digits of a salted hash."""
    digest = hashlib.sha256(f"{salt}\0{layer}\0{unit}".encode()).hexdigest()
    return f"u{digest[:12]}"


def image_name(task: str, n: int) -> str:
    """The file name of the ``n``-th (1-based) image of a task."""
    return f"{task}_{n}.png"


@dataclass
class Package:
    """The tasks of an annotation package, for checking imported answers.

    Attributes
    ----------
    tasks : DataFrame
        ``private/tasks.csv``: one row per image of each task.
    """

    tasks: pd.DataFrame

    @classmethod
    def read(cls, dissection: Dissection, *, check: bool = True) -> Package:
        """The package of a dissection directory (empty if nothing was exported yet).

        With ``check``, a package exported from another run than the directory's is refused
        with a :class:`DissectError`; without, its tasks are returned with their ``run_id``.
        """
        path = dissection.path(ROOT, "private", TASKS)
        if not path.is_file():
            return cls(pd.DataFrame(columns=TASK_COLUMNS))
        text = {"task": str, "layer": str, "image": str, "run_id": str}
        tasks = read_csv(path, dtype=text, keep_default_na=False)
        if "sentinel" not in tasks:  # a package of an older version: no sentinels
            tasks = tasks.assign(sentinel=0, source_unit=tasks["unit"])
        if "run_id" not in tasks:  # written before run ids: accepted
            tasks = tasks.assign(run_id="")
        if check:
            for found in tasks["run_id"].unique():
                dissection.check_run(
                    found, f"{ROOT}/private/{TASKS}", f"dissect export {dissection.directory}"
                )
        return cls(tasks[TASK_COLUMNS])

    def task(self, task: str, where: str) -> tuple[str, int, list[str]]:
        """Layer, unit and image names of ``task``; a clear error naming ``where`` if unknown."""
        rows = self.tasks[self.tasks["task"] == task]
        if not len(rows):
            raise DissectError(
                f"{where}: task {task!r} is not in this annotation package; import answers "
                "into the dissection directory whose dissect export made them."
            )
        rows = rows.sort_values("n")
        return str(rows["layer"].iloc[0]), int(rows["unit"].iloc[0]), list(rows["image"])

    def sentinels(self, task: str) -> set[int]:
        """The numbers of the sentinel images of ``task`` (empty for a task without)."""
        rows = self.tasks[(self.tasks["task"] == task) & (self.tasks["sentinel"] == 1)]
        return {int(n) for n in rows["n"]}

    def check_images(self, task: str, shown: dict[int, str], where: str) -> None:
        """Refuse image URLs or names (image number -> value) that are not the task's images."""
        _, _, images = self.task(task, where)
        for n, value in sorted(shown.items()):
            name = str(value).split("?")[0].rstrip("/").rsplit("/", 1)[-1]
            if not value or n > len(images) or name != images[n - 1]:
                raise DissectError(
                    f"{where}: image_{n} {str(value)!r} is not image {n} of task {task!r} in "
                    "this annotation package (answers must come from this package's export)."
                )


def merge_tasks(old: pd.DataFrame, new: pd.DataFrame, run_id: str) -> pd.DataFrame:
    """The tasks of ``old`` of run ``run_id`` not exported again, then those of ``new``."""
    kept = old[~old["task"].isin(set(new["task"])) & old["run_id"].isin({"", run_id})]
    frames = [frame for frame in (kept, new) if len(frame)]
    if not frames:
        return pd.DataFrame(columns=TASK_COLUMNS)
    return pd.concat(frames, ignore_index=True)[TASK_COLUMNS]


def stale_images(old: pd.DataFrame, new: pd.DataFrame, run_id: str) -> list[str]:
    """Images of re-exported tasks, or of another run's tasks, that the new export lacks."""
    again = old[old["task"].isin(set(new["task"])) | ~old["run_id"].isin({"", run_id})]
    return sorted(set(again["image"]) - set(new["image"]))


def images_folder(dissection: Dissection) -> Path:
    """Where the package's images are."""
    return dissection.path(ROOT, "images")
