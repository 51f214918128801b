"""torch's CPU thread count for one thread, without changing it for the others.

``torch.set_num_threads(n)`` sets the calling thread's OpenMP and MKL thread counts *and* the
process-wide count every other thread takes when it first runs a parallel operation (and keeps:
torch reads it once per thread). On a server that is wrong twice over:

- while one user's model trains on one thread, every thread that starts meanwhile gets one
  thread for good: each Streamlit script run is a new thread, and a worker thread of a pool keeps
  the count it started with (measured here: a 2,000 x 2,000 matmul 1.7x slower in such a thread);
- two trainings that overlap, each putting back "the count before", can leave the process-wide
  count at one for every thread started afterwards.

:func:`threads` sets only the calling thread's counts, through the two per-thread calls
``torch.set_num_threads`` itself makes (OpenMP's ``omp_set_num_threads`` and MKL's
``MKL_Set_Num_Threads_Local``, looked up in the loaded ``libtorch_cpu``), and puts them back.
Where they cannot be found (another torch build or platform) it falls back to
``torch.set_num_threads`` (process-wide, as before).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from pathlib import Path

import torch


@functools.cache
def default_threads() -> int:
    """The thread count of this process as torch chose it (or the environment set it): read once,
    when this module is first imported (:mod:`scatd_core.predict` imports it), before anything in
    the process changes it."""
    return torch.get_num_threads()


@functools.cache
def _per_thread_setters():
    """``(omp_set_num_threads, MKL_Set_Num_Threads_Local or None)`` of the running torch, or None."""
    lib_dir = Path(torch.__file__).parent / "lib"
    for name in ("libtorch_cpu.so", "libtorch_cpu.dylib"):
        path = lib_dir / name
        if not path.exists():
            continue
        try:
            lib = ctypes.CDLL(str(path))  # already loaded: the same handle torch uses
            omp = lib.omp_set_num_threads
        except (OSError, AttributeError):
            return None
        omp.argtypes, omp.restype = [ctypes.c_int], None
        mkl = getattr(lib, "MKL_Set_Num_Threads_Local", None)  # (by value; the lower-case name takes a pointer)
        if mkl is not None:
            mkl.argtypes, mkl.restype = [ctypes.c_int], ctypes.c_int
        return omp, mkl
    return None


def set_this_thread(n: int) -> int | None:
    """Set the calling thread's torch CPU threads to ``n`` and no other thread's; returns MKL's
    previous per-thread value for :func:`threads` to restore (None where there is none).
    Falls back to ``torch.set_num_threads`` where the per-thread calls are missing."""
    n = int(n)
    torch.get_num_threads()  # torch's own first-use set-up of this thread first, or it would undo ours later
    setters = _per_thread_setters()
    if setters is None:
        torch.set_num_threads(n)
        return None
    omp, mkl = setters
    omp(n)
    return mkl(n) if mkl is not None else None


@contextlib.contextmanager
def threads(n: int):
    """torch's CPU threads set to ``n`` in the calling thread for the block, then put back; the
    other threads, and the threads started meanwhile, keep theirs."""
    previous = torch.get_num_threads()
    if int(n) == previous:
        yield
        return
    mkl_previous = set_this_thread(n)
    try:
        yield
    finally:
        setters = _per_thread_setters()
        if setters is None:
            torch.set_num_threads(previous)
        else:
            omp, mkl = setters
            omp(previous)
            if mkl is not None and mkl_previous is not None:
                mkl(mkl_previous)


@contextlib.contextmanager
def openmp_threads(n: int):
    """The OpenMP threads of the calling thread set to ``n`` for the block, in every OpenMP runtime
    loaded (scikit-learn's own ``libgomp`` as well as torch's), then put back: what
    ``HistGradientBoostingClassifier`` uses (the model card's baselines). libgomp's
    ``omp_set_num_threads`` is per thread (as :func:`threads` relies on), so other threads keep theirs.
    Measured on the shared 2-core machine: gradient boosting on 48 cell lines x 2,000 genes took
    3.3-5.9 CPU s on 2 threads and 0.4-0.6 on one (the same predictions: its histograms are built per
    feature, whatever the threads)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=int(n), user_api="openmp"):
        yield


default_threads()  # read before anything in this process changes it
