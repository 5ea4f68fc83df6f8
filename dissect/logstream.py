"""Progress bars in a log file: :class:`LineLog` turns tqdm's redraws into plain lines.

On a terminal a progress bar redraws itself in place with a carriage return. Redirected to a
file (``dissect run ... 2> run.log``, a batch job), every redraw stays: megabytes of ``\\r``
lines, and the blank redraws of closed bars. The CLI wraps ``sys.stderr`` in a
:class:`LineLog` when it is not a terminal: a bar's state is written as one line at most every
``every`` seconds and once more when the bar ends; blank redraws and cursor moves are dropped;
everything else passes through unchanged.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TextIO

#: Cursor movements tqdm uses for nested bars.
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class LineLog:
    """A text stream that writes progress redraws to ``stream`` as occasional whole lines.

    Parameters
    ----------
    stream : text stream
        Where the lines go (the real ``sys.stderr``).
    every : float
        Seconds between two lines of the same running bar.
    clock : callable
        Returns the time in seconds (a monotonic clock by default).
    """

    def __init__(
        self, stream: TextIO, every: float = 30.0, clock: Callable[[], float] = time.monotonic
    ):
        self.stream = stream
        self.every = every
        self.clock = clock
        self.line = ""
        self.shown = float("-inf")

    def write(self, text: str) -> int:
        for piece in re.split(r"(\r|\n)", _ANSI.sub("", text)):
            if piece == "\r":  # the end of a redraw: show it now and then
                if self.line.strip() and self.clock() - self.shown >= self.every:
                    self.stream.write(self.line.strip() + "\n")
                    self.shown = self.clock()
                self.line = ""
            elif piece == "\n":
                self.stream.write(self.line.rstrip() + "\n")
                self.line = ""
                self.shown = float("-inf")  # the next bar shows its first state
            else:
                self.line += piece
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str):
        return getattr(self.stream, name)
