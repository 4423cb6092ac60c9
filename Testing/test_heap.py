"""inference.heap: freed memory is kept for reuse inside ``kept_heap`` and given back to the system after it."""

import os

import numpy as np
import pytest

from LumbarSegLib.inference import heap

BLOCK = 96 * 2**20  # far above glibc's largest mmap threshold (32 MB): mapped and unmapped on its own by default
SLACK = 24 * 2**20

pytestmark = pytest.mark.skipif(heap.glibc() is None or not os.path.exists("/proc/self/statm"),
                                reason="kept_heap acts on glibc only")


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def allocate_and_free() -> tuple[int, int]:
    """(resident bytes with a freshly written block, resident bytes once it is freed)."""
    block = np.ones(BLOCK // 8)
    with_block = resident_bytes()
    del block
    return with_block, resident_bytes()


def test_outside_kept_heap_a_freed_block_goes_back_at_once():
    with_block, freed = allocate_and_free()
    assert freed < with_block - BLOCK + SLACK


def test_inside_kept_heap_a_freed_block_stays_for_the_next_and_goes_back_on_leaving():
    with heap.kept_heap():
        with_block, freed = allocate_and_free()
        assert freed > with_block - SLACK  # kept
        again, _ = allocate_and_free()
        assert again < freed + SLACK  # the next block of that size reused it rather than growing
    assert resident_bytes() < freed - BLOCK + SLACK  # given back on leaving
    with_block, freed = allocate_and_free()  # and glibc's own behaviour is back
    assert freed < with_block - BLOCK + SLACK


def test_nested_uses_keep_the_heap_until_the_last_one_leaves():
    with heap.kept_heap():
        with heap.kept_heap():
            pass
        with_block, freed = allocate_and_free()
        assert freed > with_block - SLACK
    assert resident_bytes() < freed - BLOCK + SLACK
