"""Process-wide state that one user's computation must not change for the server's other users:
torch's CPU thread count (set for one thread only, scatd_core._threads), torch's deterministic
switch (shared by overlapping trainings) and the warnings filters (no catch_warnings on the
prediction path)."""

from __future__ import annotations

import concurrent.futures
import threading

import torch

from scatd_core._threads import default_threads, set_this_thread, threads


def _in_new_thread(func):
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(func).result()


def test_the_block_sets_only_the_calling_thread():
    mine, started = torch.get_num_threads(), _in_new_thread(torch.get_num_threads)  # a new thread: the process's
    other = max(mine, started) + 1  # differs from both on any machine
    with threads(other):
        assert torch.get_num_threads() == other
        assert _in_new_thread(torch.get_num_threads) == started  # started meanwhile: untouched
    assert torch.get_num_threads() == mine
    assert _in_new_thread(torch.get_num_threads) == started


def test_overlapping_blocks_leave_every_thread_as_it_was():
    """Two trainings that overlap, each restoring 'the count before', used to leave the
    process-wide count at theirs."""
    started = _in_new_thread(torch.get_num_threads)
    other = started + 1
    meet = threading.Barrier(2)

    def train():
        before = torch.get_num_threads()
        with threads(other):
            meet.wait(timeout=30)
            inside = torch.get_num_threads()
            meet.wait(timeout=30)
        return before, inside, torch.get_num_threads()

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = [f.result() for f in [pool.submit(train) for _ in range(2)]]
    assert results == [(started, other, started)] * 2
    assert _in_new_thread(torch.get_num_threads) == started


def test_a_thread_started_under_another_count_is_set_back():
    """What the app's background workers do when they start: a worker that first ran while the
    process-wide count was changed (torch.set_num_threads elsewhere) gets the default."""
    other = default_threads() + 1
    before = torch.get_num_threads()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        torch.set_num_threads(other)
        try:
            assert pool.submit(torch.get_num_threads).result() == other  # torch's rule: the count at first use
        finally:
            torch.set_num_threads(before)
        assert pool.submit(torch.get_num_threads).result() == other  # and kept
        pool.submit(set_this_thread, default_threads()).result()
        assert pool.submit(torch.get_num_threads).result() == default_threads()


def test_overlapping_trainings_share_the_deterministic_switch():
    """Training B starts while A runs and ends after it: B keeps deterministic algorithms to its
    end, and the switch is off again once both have ended (each restoring 'the state before'
    turned it off under B, then left it on for good)."""
    from scatd_core.train._fit import _deterministic

    assert not torch.are_deterministic_algorithms_enabled()
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def a():
        with _deterministic():
            a_in.set()
            b_in.wait(timeout=30)
        a_out.set()

    def b():
        a_in.wait(timeout=30)
        with _deterministic():
            b_in.set()
            a_out.wait(timeout=30)
            return torch.are_deterministic_algorithms_enabled()  # A has ended

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        fa, fb = pool.submit(a), pool.submit(b)
        fa.result()
        assert fb.result() is True
    assert not torch.are_deterministic_algorithms_enabled()


_NO_WARNINGS_FILTERS = r'''
import warnings

import numpy as np
import scipy.sparse as sp
import torch

from scatd_core.io._table import _numeric_lines
from scatd_core.nn.sparse import batch_tensor, sparse_linear
from scatd_core.pl import _heatmap_rows

x = sp.random(40, 30, density=0.1, format="csr", dtype=np.float32, random_state=0)
w, b = torch.randn(30, 8), torch.zeros(8)
with warnings.catch_warnings(record=True) as seen:  # (one thread here: the test may)
    warnings.simplefilter("always")
    csr = torch.sparse_csr_tensor(torch.from_numpy(x.indptr).long(), torch.from_numpy(x.indices).long(),
                                  torch.from_numpy(x.data), size=x.shape, check_invariants=False)
    for batch in (batch_tensor(x, torch.device("cpu")), csr):  # numba compiles its kernel (as the server's warm-up)
        sparse_linear(batch, w, b)
assert not [w for w in seen if "beta" in str(w.message)], [str(w.message) for w in seen]  # said, silenced, at import
warnings.simplefilter("error")  # a warning these calls emitted would now raise


def no_filters(*args, **kwargs):
    raise AssertionError("warnings.catch_warnings on a server's path")


warnings.catch_warnings = no_filters
expected = torch.from_numpy(x.toarray()) @ w + b
assert torch.allclose(sparse_linear(batch_tensor(x, torch.device("cpu")), w, b), expected, atol=1e-5)
assert torch.allclose(sparse_linear(csr, w, b), expected, atol=1e-5)
assert _numeric_lines(["c1\t1\t2\n", "c2\t\n"], "\t", 2) is None  # a row without values
assert _numeric_lines(["c1\t\n"], "\t", 2) is None  # (loadtxt: "input contained no data")
ids, block = _numeric_lines(["c1\t1\t2\n", "c2\t3\t4\n"], "\t", 2)
assert ids == ["c1", "c2"] and block.tolist() == [[1, 2], [3, 4]]
prob = np.array([[np.nan, np.nan], [0.2, 0.4], [0.9, np.nan], [0.1, 0.1]])
assert _heatmap_rows(np.array([0, 0, 1, 1]), prob, 10).tolist() == [1, 0, 2, 3]  # unscored cell: last of group 0
print("ok")
'''


def test_the_prediction_path_changes_no_warnings_filter():
    """``warnings.catch_warnings`` swaps the process-wide filters: two that overlap on a server's
    threads can leave one installed for every thread (an "error" filter turned every later warning
    into a failure). The sparse first layer (every prediction), the table reader and the panel
    heatmap use none and emit no warning once the kernels are compiled (the server compiles them
    at start-up); checked in a fresh interpreter, where torch's one-off "sparse CSC is in beta"
    notice has not been said yet."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _NO_WARNINGS_FILTERS], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
