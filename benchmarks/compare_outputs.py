"""Compare every table and array two dissection directories hold, byte for byte.

    python benchmarks/compare_outputs.py BEFORE AFTER

made, say, by ``dissect demo --out BEFORE`` on one commit and ``--out AFTER`` on another. Every
``.csv`` and ``.npz`` under either directory (the ``stale/`` and ``.checkpoint`` folders left
out) is compared with ``cmp``'s rule, equal bytes; ``manifest.json`` is compared without the keys
that record time (``created``, ``seconds``, ``probe_seconds``). Pictures (``.png``) and pages
(``.html``) are counted apart: they are listed when they differ but do not fail the comparison
(matplotlib's and the report's output is not part of the numbers). Prints one line per file that
differs or exists on one side only and a summary; exits 1 when a table or array differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TABLES = (".csv", ".npz")
PICTURES = (".png", ".html")
TIMING = ("created", "seconds", "probe_seconds")
SKIPPED = ("stale", ".checkpoint")


def files(root: Path) -> set[str]:
    """Paths (relative to ``root``) of the files compared."""
    return {
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file()
        and not set(path.relative_to(root).parts) & set(SKIPPED)
        and (path.suffix in TABLES + PICTURES or path.name == "manifest.json")
    }


def manifest(path: Path) -> dict:
    """A manifest without the keys that record time."""
    values = json.loads(path.read_text(encoding="utf-8"))
    return {key: value for key, value in values.items() if key not in TIMING}


def same(before: Path, after: Path) -> bool:
    if before.name == "manifest.json":
        return manifest(before) == manifest(after)
    return before.read_bytes() == after.read_bytes()


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
        if not same(args.before / name, args.after / name):
            print(f"differs: {name}")
            if picture:
                counts["differing pictures"] += 1
            else:
                failed = True
    print(
        f"{counts['tables']} tables, arrays and manifests compared: "
        f"{'some differ' if failed else 'all identical'}; {counts['pictures']} pictures and "
        f"pages, {counts['differing pictures']} differing"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
