"""Freed memory kept for the next batch: the ``dissect`` program's malloc setting (glibc).

A pass over images frees and allocates the same large tensors every batch (a ResNet-18's first
activation at 224 px is 3 MiB an image). glibc's malloc serves each block above its mmap threshold
(128 KiB at first, raised as big blocks are freed, 32 MiB at most) with a mapping of its own and
unmaps it when the block is freed, so each batch's tensors are fresh pages that the kernel faults
in and zeroes again. :func:`keep_freed_memory` serves blocks up to :data:`MMAP_THRESHOLD` from
the heap and keeps up to :data:`TRIM_THRESHOLD` of free memory at its top, so the next batch
reuses what the last one freed. Measured with ``benchmarks/bench_allocator.py`` (fresh
processes, 192 images, one thread) on the project's 2-core machine: ``dissect run --iou`` of a
ResNet-18 at 224 px faulted 527 pages instead of 0.79 M and took 0.89 and 0.97 of the CPU
seconds in two runs (a bare forward loop 0.93 and 0.88); a process that ran both peaked 1.22
and 1.05 times as high (the heap's free blocks).
"""

from __future__ import annotations

import ctypes
import os
import platform

#: mallopt's parameter numbers (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: Blocks up to this size come from the heap; bigger ones are mapped as before.
MMAP_THRESHOLD = 2**28
#: Free memory at the top of the heap kept up to this size.
TRIM_THRESHOLD = 2**30
#: Environment variables through which a user sets glibc's malloc; where one is set, it stands.
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
#: ``0`` there leaves glibc's malloc as it is.
SWITCH = "DISSECT_KEEP_FREED_MEMORY"


def keep_freed_memory() -> bool:
    """Keep freed blocks in the process for reuse (see the module docstring); True where done.

    Nothing changes off glibc (macOS, musl), with ``DISSECT_KEEP_FREED_MEMORY=0`` (glibc's
    defaults), nor where the user set malloc through :data:`USER_SETTINGS` or ``GLIBC_TUNABLES``.
    The ``dissect`` program calls it at start; a notebook or script that runs passes may call it
    too: it changes malloc for the whole process, for as long as it runs.
    """
    if platform.libc_ver()[0] != "glibc" or os.environ.get(SWITCH) == "0":
        return False
    if any(name in os.environ for name in USER_SETTINGS):
        return False
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    kept = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return bool(kept)
