"""Memory kept for reuse while the networks run: on glibc, large blocks come from malloc's heap and what is freed
stays there for the next block, instead of a fresh mapping of its own each time.

Why: glibc maps every block above its mmap threshold (32 MB at most) from the kernel on its own and unmaps it
when freed. A U-Net's activations are such blocks (stage 3's first level is 150 MB for a batch of four crops),
so every layer of every pass paged its memory in afresh, one zeroed page at a time. On the 2-core AMD EPYC of
sessions 15-17 that was about a fifth of a study's time and of a training step's:

- one study of ``benchmarks/bench_pipeline.py``'s CT per fresh process, with and without, rounds alternated:
  median 12.7 -> 10.1 s over five rounds (stage 3 8.6 -> 6.5 s), and 13.5 -> 11.1 s over three at a slower hour;
- ``benchmarks/bench_training.py --stage3``: 467 and 486 -> 596 and 656 steps an hour.

The price is 0.3-0.6 GiB more peak memory (the kept heap fragments), about the same on 150, 300 and 500 slices
of 512x512 (``io.images.BYTES_PER_VOXEL`` says why its per-voxel figure stays). When the last user leaves, the
settings go back and ``malloc_trim`` returns the free memory to the system, so a batch worker or the web server
does not hold a study's peak between studies. Elsewhere (macOS, Windows, other C libraries) :func:`kept_heap`
changes nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import platform
import threading

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt's parameters (malloc.h)
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536  # glibc's defaults, restored afterwards
# Free memory at the heap's top kept for the next block, at most this much; beyond it, free() gives it back.
# 1 GiB measured faster than 256 MiB (median 10.1 against 10.8 s) and no slower than 4 GB.
KEPT_BYTES = 1 << 30

_lock = threading.Lock()
_users = 0


def glibc():
    """The C library when it is glibc (with ``mallopt`` and ``malloc_trim``), else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


@contextlib.contextmanager
def kept_heap():
    """While inside (any thread; nested or concurrent uses are counted), large blocks come from the heap and freed
    memory is kept for reuse; on leaving, glibc's defaults return and the free memory goes back to the system."""
    global _users
    libc = glibc()
    if libc is None:
        yield
        return
    with _lock:
        _users += 1
        if _users == 1:
            libc.mallopt(M_MMAP_MAX, 0)
            libc.mallopt(M_TRIM_THRESHOLD, KEPT_BYTES)
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
                libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)
