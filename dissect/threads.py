"""How many threads torch computes with: the cores that are free when the command starts.

torch starts one intra-op thread per core. On a machine whose cores are already busy, those
threads wait for each other at every operation while the scheduler hands the cores to others:
measured on the project's 2-core machine at load 15, a 128-image ``dissect run`` spent 11.4
CPU-s with 2 threads and 4.4 CPU-s with 1 (and took 158 s instead of 85 s). :func:`choose_threads`
sets ``OMP_NUM_THREADS`` (read by torch when it loads) to the cores not taken by the load
average, at least one; a count the user set is kept.
"""

from __future__ import annotations

import os
import sys


def free_cores() -> int:
    """Cores this process may use minus the one-minute load average, rounded; at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):  # no load average on this system
        return cores
    return max(1, min(cores, round(cores - load)))


def choose_threads() -> int | None:
    """Set torch's thread count from :func:`free_cores` unless ``OMP_NUM_THREADS`` is set.

    Decided once per process (the variable stays set), so a demo's later stages do not count
    the demo's own load. Returns the count chosen, or None when the user's is kept.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    threads = free_cores()
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:  # already loaded (a notebook, a test): tell it directly
        sys.modules["torch"].set_num_threads(threads)
    return threads
