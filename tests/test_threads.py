"""What a training sets for itself must not reach the server's other users: torch's CPU thread
count for one thread only (scatd_core._threads), and the process-wide deterministic switch
shared by overlapping trainings."""

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
