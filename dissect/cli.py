"""The ``dissect`` command line: one subcommand per stage, each in ``dissect.commands``."""

from __future__ import annotations

import argparse
import errno
import gc
import importlib
import os
import sys
import warnings
from collections.abc import Sequence

from . import __version__
from .allocator import keep_freed_memory
from .errors import DissectError, interrupted_status
from .logstream import LineLog
from .specs import preflight
from .threads import choose_threads

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


#: Subcommand name -> one or two typical command lines, shown at the end of its --help.
EXAMPLES = {
    "demo": ["dissect demo --quick --out demo", "dissect demo --out demo --compare-with none"],
    "layers": ["dissect layers scene-cnn", "dissect layers net.py:make --weights w.pt"],
    "data": [
        "dissect data export synthetic:500:1 broden-synthetic",
        "dissect data import --from ade20k ADEChallengeData2016 ade-broden",
    ],
    "evaluate": ["dissect evaluate net.py:make photos/ --weights w.pt --image-size 224"],
    "run": [
        "dissect run scene-cnn synthetic:1000:1 --out d --iou",
        "dissect run net.py:make photos/ --weights w.pt --layers layer3,layer4 --out d",
    ],
    "stats": ["dissect stats d", "dissect stats d --min-iou 0.05 --max-p 0.05"],
    "autolabel": [
        "dissect autolabel d --layers conv5,pool5",
        "dissect autolabel d --permutations 0",
    ],
    "report": ["dissect report d", "dissect report d --top 8 --min-iou 0.05"],
    "segment": ["dissect segment d --layers conv5 --top 10", "dissect segment d --rule disk"],
    "export": [
        "dissect export d --format html --layers conv5",
        "dissect export d --format mturk --base-url https://example.org/units",
    ],
    "import": ["dissect import d batch_results.csv", "dissect import d export.json"],
    "rf": ["dissect rf d --layers conv1,conv5 --units 0,3", "dissect rf d --top 20 --stride 3"],
    "compare": ["dissect compare d d-objects --out cmp --names scene,object"],
    "ablate": [
        "dissect ablate d synthetic:1000:7 --layers conv5",
        "dissect ablate d synthetic:1000:7 --units labelled --mode mean --draws 200",
    ],
    "explain": ["dissect explain d 0 --top 4", "dissect explain d photo.jpg --layers conv5"],
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
        epilog = "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[name])
        sub = subparsers.add_parser(
            name,
            help=module.HELP,
            description=module.HELP,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    return parser


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """``dissect: note: MESSAGE`` for the terminal: no file, line or source of the caller."""
    return f"dissect: note: {message}\n"


def use_agg() -> None:
    """Draw without a display: matplotlib's Agg backend, chosen without importing matplotlib
    when it is not loaded yet (the import costs seconds; the stage that plots pays it)."""
    if "matplotlib" in sys.modules:
        sys.modules["matplotlib"].use("Agg")
    else:
        os.environ["MPLBACKEND"] = "Agg"


def entry(argv: Sequence[str] | None = None) -> None:
    """The ``dissect`` program (``python -m dissect``): :func:`main`, then exit with its status.

    Freed memory is kept for the next batch (:mod:`~dissect.allocator`).
    Everything is frozen (``gc.freeze``) before the interpreter exits: its last garbage
    collection would walk every object torch and the rest made (half a CPU second, seconds of
    wall time on a busy machine) to free memory that the process hands back anyway. Exit
    handlers and ``__del__`` of what is freed by reference counting still run.
    """
    keep_freed_memory()
    status = main(argv)
    gc.freeze()
    sys.exit(status)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status (2 for errors the user can fix)."""
    args = build_parser().parse_args(argv)
    stderr = sys.stderr
    if not stderr.isatty() and not isinstance(stderr, LineLog):
        sys.stderr = LineLog(stderr)  # a log file: progress as lines, not carriage returns
    try:
        preflight(args)  # paths, specs, layer names: before any heavy import
        choose_threads()  # the cores free now, before torch loads
        use_agg()
        warnings.formatwarning = one_line_warning
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
    finally:
        sys.stderr = stderr
