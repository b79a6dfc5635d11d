"""Process-wide tuning of the RX and TX processes: BLAS threads and glibc's heap.

Kept apart from the trainers (:mod:`common.learn.fastlora`) so the daemons can
tune the process without importing torch; :func:`match_blas_threads` imports
it only when called.
"""

from __future__ import annotations


def match_blas_threads(threads: int | None = None) -> int | None:
    """Limit numpy's BLAS (OpenBLAS, MKL) to ``threads`` (default: torch's thread count), process-wide.

    After a multi-threaded numpy product (PCA decode, payload reconstruction)
    OpenBLAS's worker threads keep spinning for a while; on a small machine
    they take the core the single-threaded trainer needs, and the next ~100
    training steps ran at half speed. Returns the limit set, or None where
    ``threadpoolctl`` (a scikit-learn dependency) is missing.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    import torch  # here, so the daemons' start-up does not import it for this

    n = threads or torch.get_num_threads()
    threadpool_limits(limits=n, user_api="blas")
    return n


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks instead of returning them to the kernel (process-wide).

    Each training step allocates and frees blocks of a few hundred kB; by
    default glibc serves those with fresh ``mmap`` pages, and the page faults
    cost more than the arithmetic. Returns False where this is not glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 31 - 1))
    except (OSError, AttributeError):
        return False


def release_freed_memory() -> bool:
    """Hand freed heap memory back to the kernel now (glibc ``malloc_trim``); False where not glibc.

    With :func:`keep_freed_memory` freed blocks stay in the process; after a
    large message the RX calls this so one big round does not keep its peak RSS.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False
