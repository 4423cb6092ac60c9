"""inference.heap: freed memory is kept for reuse inside ``kept_heap`` and given back to the system after it.

malloc's settings belong to the whole process, and other tests of this process may have studies under way in
threads of their own (a web session, a batch worker), so each check runs in a fresh interpreter."""

import os
import subprocess
import sys
import textwrap

import pytest

from LumbarSegLib.inference import heap

pytestmark = pytest.mark.skipif(heap.glibc() is None or not os.path.exists("/proc/self/statm"),
                                reason="kept_heap acts on glibc only")

PRELUDE = textwrap.dedent("""
    import os
    import numpy as np
    from LumbarSegLib.inference import heap

    BLOCK = 96 * 2**20  # far above glibc's largest mmap threshold (32 MB): mapped and unmapped on its own by default
    SLACK = 24 * 2**20

    def resident_bytes():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def allocate_and_free():
        block = np.ones(BLOCK // 8)  # written, so resident
        with_block = resident_bytes()
        del block
        return with_block, resident_bytes()
""")


def run_fresh(body: str) -> None:
    """Run ``body`` after :data:`PRELUDE` in a new interpreter; its failed assertion fails the test."""
    proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_outside_kept_heap_a_freed_block_goes_back_at_once():
    run_fresh("""
        with_block, freed = allocate_and_free()
        assert freed < with_block - BLOCK + SLACK, (with_block, freed)
    """)


def test_inside_kept_heap_a_freed_block_stays_for_the_next_and_goes_back_on_leaving():
    run_fresh("""
        with heap.kept_heap():
            with_block, freed = allocate_and_free()
            assert freed > with_block - SLACK, (with_block, freed)  # kept
            again, _ = allocate_and_free()
            assert again < freed + SLACK, (again, freed)  # the next block of that size reused it
        assert resident_bytes() < freed - BLOCK + SLACK  # given back on leaving
        with_block, freed = allocate_and_free()  # and glibc's own behaviour is back
        assert freed < with_block - BLOCK + SLACK, (with_block, freed)
    """)


def test_nested_uses_keep_the_heap_until_the_last_one_leaves():
    run_fresh("""
        with heap.kept_heap():
            with heap.kept_heap():
                pass
            with_block, freed = allocate_and_free()
            assert freed > with_block - SLACK, (with_block, freed)
        assert resident_bytes() < freed - BLOCK + SLACK
    """)


def test_a_failing_study_still_gives_the_heap_back():
    run_fresh("""
        try:
            with heap.kept_heap():
                raise RuntimeError("a study that fails")
        except RuntimeError:
            pass
        assert heap._users == 0
        with_block, freed = allocate_and_free()
        assert freed < with_block - BLOCK + SLACK, (with_block, freed)
    """)
