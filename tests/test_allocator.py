"""The dissect program's malloc setting: freed memory stays in the process for the next batch."""

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the setting is glibc's malloc"
)

# Minor page faults of the last 4 of 12 "batches" that each allocate, fill and free a 64 MiB and
# a 48 MiB tensor (glibc's defaults map blocks over 32 MiB afresh every time: 28672 4 KiB pages
# a batch).
FAULTS = """
import resource, sys
from dissect.allocator import keep_freed_memory
print(keep_freed_memory() if sys.argv[1] == "kept" else False)
import torch
for batch in range(12):
    if batch == 8:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    first = torch.ones(2**26, dtype=torch.uint8)
    second = torch.ones(3 * 2**24, dtype=torch.uint8)
    del second, first
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
FRESH_PAGES = 4 * (2**26 + 3 * 2**24) // 4096


def run_child(mode: str, **settings: str) -> tuple[str, int]:
    unset = ("MALLOC_", "GLIBC_TUN", "DISSECT_KEEP")
    env = {k: v for k, v in os.environ.items() if not k.startswith(unset)}
    env["THP_MEM_ALLOC_ENABLE"] = "0"  # 4 KiB pages, torch's default
    done = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True,
                          env={**env, **settings}, check=True)  # fmt: skip
    applied, faults = done.stdout.split()
    return applied, int(faults)


def test_freed_blocks_are_reused_without_faulting_pages_in_again():
    applied, kept = run_child("kept")
    assert applied == "True"
    assert kept < FRESH_PAGES / 20
    if huge_page_mode() != "always":  # huge pages everywhere fault 2 MiB at a time
        assert run_child("default")[1] > FRESH_PAGES * 0.9


@pytest.mark.parametrize(
    "setting", [{"DISSECT_KEEP_FREED_MEMORY": "0"}, {"MALLOC_TRIM_THRESHOLD_": "131072"}]
)
def test_the_switch_and_a_user_s_own_malloc_settings_stand(setting):
    applied, faults = run_child("kept", **setting)
    assert applied == "False"
    if huge_page_mode() != "always":
        assert faults > FRESH_PAGES * 0.9


def huge_page_mode() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as setting:
            return next(w for w in setting.read().split() if w.startswith("[")).strip("[]")
    except (OSError, StopIteration):
        return "never"
