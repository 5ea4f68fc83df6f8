"""Compare every table and array two dissection directories hold, byte for byte.

    python benchmarks/compare_outputs.py BEFORE AFTER

made, say, by ``dissect demo --out BEFORE`` on one commit and ``--out AFTER`` on another. Every
``.csv`` and ``.npz`` under either directory (the ``stale/`` and ``.checkpoint`` folders left
out) is compared with ``cmp``'s rule, equal bytes; ``manifest.json`` is compared without the keys
that record time (``created``, ``seconds``, ``probe_seconds``). Two outputs differ by design from
one run to the next and are compared for what they mean: the annotation package names its tasks
and pictures with a random secret salt (``annotation/private/salt.txt``), so ``tasks.csv`` is
compared without its ``task`` and ``image`` columns and ``annotation/images/`` as the multiset of
its pictures' bytes; ``compare/networks.csv`` records where each directory is, and is compared
without its ``directory`` column. Pictures (``.png``) and pages (``.html``) are counted apart:
they are listed when they differ but do not fail the comparison (matplotlib's and the report's
output is not part of the numbers, and pages name the salted pictures). Prints one line per file
that differs or exists on one side only and a summary; exits 1 when a table or array differs.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from pathlib import Path

import pandas as pd

TABLES = (".csv", ".npz")
PICTURES = (".png", ".html")
TIMING = ("created", "seconds", "probe_seconds")
SKIPPED = ("stale", ".checkpoint")
SALTED = "annotation/images"
#: Tables compared without the columns that differ by design: salted names, directory paths.
WITHOUT = {"annotation/private/tasks.csv": ["task", "image"], "compare/networks.csv": ["directory"]}


def files(root: Path) -> set[str]:
    """Paths (relative to ``root``) of the files compared."""
    return {
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file()
        and not set(path.relative_to(root).parts) & set(SKIPPED)
        and not str(path.relative_to(root)).startswith(SALTED)
        and (path.suffix in TABLES + PICTURES or path.name == "manifest.json")
    }


def manifest(path: Path) -> dict:
    """A manifest without the keys that record time."""
    values = json.loads(path.read_text(encoding="utf-8"))
    return {key: value for key, value in values.items() if key not in TIMING}


def same(before: Path, after: Path, name: str) -> bool:
    if before.name == "manifest.json":
        return manifest(before) == manifest(after)
    if name in WITHOUT:
        old, new = (pd.read_csv(path).drop(columns=WITHOUT[name]) for path in (before, after))
        return csv_bytes(old) == csv_bytes(new)
    return before.read_bytes() == after.read_bytes()


def csv_bytes(table: pd.DataFrame) -> bytes:
    buffer = io.StringIO()
    table.to_csv(buffer, index=False)
    return buffer.getvalue().encode()


def salted_pictures(root: Path) -> list[str]:
    """SHA-256 of every picture of the annotation package, sorted (their names are salted)."""
    folder = root / SALTED
    paths = folder.glob("*.png") if folder.is_dir() else []
    return sorted(hashlib.sha256(path.read_bytes()).hexdigest() for path in paths)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    old, new = files(args.before), files(args.after)
    failed, counts = False, {"tables": 0, "pictures": 0, "differing pictures": 0}
    for name in sorted(old | new):
        picture = Path(name).suffix in PICTURES
        if name not in old or name not in new:
            print(f"only in {'after' if name in new else 'before'}: {name}")
            failed |= not picture
            continue
        counts["pictures" if picture else "tables"] += 1
        if not same(args.before / name, args.after / name, name):
            print(f"differs: {name}")
            if picture:
                counts["differing pictures"] += 1
            else:
                failed = True
    pictures = [salted_pictures(root) for root in (args.before, args.after)]
    if pictures[0] != pictures[1]:
        print(f"differs: the pictures of {SALTED}/ (names aside)")
        failed = True
    print(
        f"{len(pictures[0])} annotation pictures compared by content; "
        f"{counts['tables']} tables, arrays and manifests compared: "
        f"{'some differ' if failed else 'all identical'}; {counts['pictures']} pictures and "
        f"pages, {counts['differing pictures']} differing"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
