"""Process-level CPU tuning for training: keep big activations mapped, one BLAS pool per process.

glibc's malloc hands every block above its mmap threshold (32 MiB once it has adapted) straight
back to the kernel on free, so a training loop whose activations are tens of megabytes pays a
page fault per 4 KiB page on every iteration: on the 2-core build machine a large ReLU took
11 ms instead of 1.3 ms. Raising `M_MMAP_THRESHOLD` and `M_TRIM_THRESHOLD` keeps those blocks in
the heap for reuse. `mallopt` is glibc's; elsewhere (musl, macOS, Windows) this is a no-op.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from collections.abc import Iterator
from dataclasses import dataclass

from threadpoolctl import threadpool_limits

# mallopt parameter numbers from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc's adaptive threshold stops at 32 MiB, below a 16-coil first-layer activation (~36 MiB);
# a fixed 1 GiB keeps every training buffer in the heap. mallopt takes a C int, hence 2^31 - 1.
MMAP_THRESHOLD_BYTES = 1024 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 2**31 - 1

_tuned: dict[str, bool] | None = None


@dataclass(frozen=True)
class RuntimeTuning:
    """What `tune_process` changed, for logs and ReconResult.details."""

    mallopt: bool
    threads: int

    def as_dict(self) -> dict[str, object]:
        return {"mallopt": self.mallopt, "threads": self.threads}


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        library = ctypes.CDLL(name)
    except OSError:
        return None
    return library if hasattr(library, "mallopt") else None


def raise_malloc_thresholds() -> bool:
    """Stop glibc returning large freed blocks to the OS; True if both settings were accepted.

    Setting either threshold also turns off glibc's dynamic threshold adjustment, which is what
    we want: the sizes a training loop allocates repeat exactly every iteration.
    """
    global _tuned
    if _tuned is not None:
        return _tuned["mallopt"]
    library = _glibc()
    accepted = False
    if library is not None:
        library.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        library.mallopt.restype = ctypes.c_int
        accepted = bool(library.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
            library.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
        )
    _tuned = {"mallopt": accepted}
    return accepted


def tune_process(threads: int | None = None) -> RuntimeTuning:
    """Apply the allocator settings and, if given, torch's intra-op thread count; idempotent.

    Threads default to what torch already uses (the physical cores, or OMP_NUM_THREADS).
    """
    import torch

    tuned = raise_malloc_thresholds()
    if threads is not None:
        torch.set_num_threads(max(1, int(threads)))
    return RuntimeTuning(mallopt=tuned, threads=torch.get_num_threads())


def default_threads() -> int:
    """Cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """One BLAS thread inside: for linear algebra of a few hundred unknowns (GRAPPA's), thread
    hand-offs cost more than they save. Measured during development on the 2-core machines (no
    command kept, docs/benchmarks.md): GRAPPA on a 16-coil 64x64 slice 51 ms against 152 ms
    with two threads, on a 32-coil 320x256 one 479 ms against 616 ms."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield
