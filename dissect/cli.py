"""The ``dissect`` command line: one subcommand per stage, each in ``dissect.commands``."""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from collections.abc import Sequence

from . import __version__
from .errors import DissectError, interrupted_status

#: Write failures a user fixes outside dissect: a full disk, a quota or file-size limit, a
#: read-only place.
_DISK_ERRORS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
)

#: Subcommand name -> module in dissect.commands defining HELP, add_arguments(parser), run(args).
COMMANDS = {
    "demo": "demo",
    "layers": "layers",
    "data": "data",
    "evaluate": "evaluate",
    "run": "run",
    "stats": "stats",
    "autolabel": "autolabel",
    "report": "report",
    "segment": "segment",
    "export": "export",
    "import": "import_labels",
    "rf": "rf",
    "compare": "compare",
    "explain": "explain",
    "ablate": "ablate",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="dissect",
        description="Network dissection: what each unit of a trained CNN has learned.",
    )
    parser.add_argument("--version", action="version", version=f"dissect {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"dissect.commands.{module_name}")
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status (2 for errors the user can fix)."""
    args = build_parser().parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    try:
        return int(args.handler(args) or 0)
    except DissectError as error:
        print(f"dissect {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as error:
        print(f"dissect {args.command}: interrupted; finished work is saved.", file=sys.stderr)
        return interrupted_status(error)
    except OSError as error:
        if error.errno not in _DISK_ERRORS:
            raise
        where = f" ({error.filename})" if error.filename else ""
        problem = "no space left on the device" if error.errno == errno.ENOSPC else error.strerror
        print(
            f"dissect {args.command}: error: {problem}{where}; free space or give a writable "
            "place, then run the same command again (finished work is saved).",
            file=sys.stderr,
        )
        return 2
