"""One writer at a time per dissection directory: an exclusive lock, refused with its holder named.

Every stage that writes a dissection directory takes ``DIR/.dissect.lock`` with ``flock`` for as
long as it runs (:func:`directory_lock`, or the :func:`writes` decorator on a stage's entry
point). A second writer is refused with one line that names the holder: process id, host,
command and since when. The lock dies with its process, so a crash or ``kill -9`` leaves nothing
that blocks the next run (the holder's note stays in the file, but is only read while the lock
is really held). The lock is reentrant within a process (a command that calls a library stage
which locks too), and under torchrun the job's rank 0 holds it for all ranks, which write the
same directory together. The first write into the directory is this file, so a directory that
cannot be written is reported here, in one line, before any work is done.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from .errors import DissectError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock, no lock
    fcntl = None  # type: ignore[assignment]

#: The lock file in a dissection directory (``dissect run`` never moves it aside).
LOCK_FILE = ".dissect.lock"

_HELD: dict[Path, list] = {}  # resolved directory -> [open file, depth]
F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def directory_lock(directory: str | os.PathLike) -> Iterator[None]:
    """Hold the exclusive write lock of ``directory`` (created if missing) inside the block.

    Raises
    ------
    DissectError
        If another process holds it (naming pid, host, command and start), or the directory
        cannot be created or written (read-only, no permission, no space left).
    """
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        key = path.resolve()
    except OSError as error:
        raise unwritable(path, error) from error
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    if fcntl is None or int(os.environ.get("RANK", "0")) != 0:
        yield  # torchrun's other ranks write under rank 0's lock
        return
    handle = _acquire(key)
    _HELD[key] = [handle, 1]
    try:
        yield
    finally:
        del _HELD[key]
        handle.close()  # closing the descriptor releases the flock


def writes(argument: str) -> Callable[[F], F]:
    """Decorate a stage's entry point: it holds the lock of the directory in ``argument``.

    ``argument`` names the parameter holding the directory (a path, or an object with a
    ``directory`` attribute such as :class:`dissect.dissection.Dissection`).
    """

    def decorate(function: F) -> F:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def locked(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            target = bound.arguments[argument]
            target = getattr(target, "directory", target)
            if target is None:
                return function(*args, **kwargs)
            with directory_lock(target):
                return function(*args, **kwargs)

        return locked  # type: ignore[return-value]

    return decorate


def unwritable(path: Path, error: OSError) -> DissectError:
    """The one-line error for a directory dissect cannot write."""
    import errno

    if error.errno == errno.ENOSPC:
        return DissectError(f"no space left on the device of {str(path)!r}; free some and rerun.")
    return DissectError(
        f"cannot write to {str(path)!r} ({error.strerror or error}); give a writable directory."
    )


def _acquire(directory: Path):
    lock = directory / LOCK_FILE
    try:
        handle = open(lock, "a+", encoding="utf-8")  # noqa: SIM115 - held until released
    except OSError as error:
        raise unwritable(directory, error) from error
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = _describe(handle.read())
        handle.close()
        raise DissectError(
            f"{str(directory)!r} is being written by {holder}; wait for it to finish (or stop "
            "it), or write to another directory."
        ) from None
    note = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300],
        "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(note) + "\n")
        handle.flush()
    except OSError as error:
        handle.close()
        raise unwritable(directory, error) from error
    return handle


def _describe(note: str) -> str:
    try:
        holder = json.loads(note)
        return (
            f"process {holder['pid']} on {holder['host']} ({holder['command']!r}, since "
            f"{holder['since']})"
        )
    except (ValueError, KeyError, TypeError):
        return "another process"
