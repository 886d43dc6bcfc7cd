"""glibc allocator settings for scoring on CPU.

PyTorch takes CPU memory from glibc's malloc. Scoring a gallery allocates and frees the same megabyte-sized
block tensors thousands of times; with glibc's defaults, in a process that also holds large tensors (the text
side of 5000 captions), each block lands on fresh pages (mmap'd, or handed back by heap trimming) and the page
faults cost up to a third of the scoring time. Serving allocations below `mmap_threshold` from the heap, and
keeping up to `trim_threshold` of freed heap, removes them (`benchmarks/bench_eval.py` and
`examples/evaluate_retrieval.py` apply it).
"""

import ctypes
import ctypes.util
import sys

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def reuse_freed_cpu_memory(mmap_threshold: int = 64 * 2**20, trim_threshold: int = 256 * 2**20) -> bool:
    """Applies the settings to the whole process (glibc on Linux only) and returns whether they were applied.

    A process-wide change: up to `trim_threshold` bytes of freed memory stay with the process instead of going
    back to the operating system. `examples/evaluate_retrieval.py` and the benchmarks call it; call it yourself
    before scoring large galleries in a notebook.
    """
    for name, value in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold)):
        if not 0 < value < 2**31:  # mallopt takes a C int
            raise ValueError(f"{name} must be a positive number of bytes below 2**31, got {value}")
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # no C library found, or one without mallopt (musl)
        return False
    return mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1 and mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1
