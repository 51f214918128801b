"""torch's CPU thread count set for one thread only (scatd_core._threads): a training on one
thread must not hand one thread to the server's other users."""

from __future__ import annotations

import concurrent.futures
import threading

import torch

from scatd_core._threads import default_threads, set_this_thread, threads


def _in_new_thread(func):
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(func).result()


def test_the_block_sets_only_the_calling_thread():
    other = default_threads() + 1  # differs from the default on any machine
    assert torch.get_num_threads() == default_threads()
    with threads(other):
        assert torch.get_num_threads() == other
        assert _in_new_thread(torch.get_num_threads) == default_threads()  # started meanwhile: untouched
    assert torch.get_num_threads() == default_threads()
    assert _in_new_thread(torch.get_num_threads) == default_threads()


def test_overlapping_blocks_leave_every_thread_at_the_default():
    """Two trainings that overlap, each restoring 'the count before', used to leave the
    process-wide count at theirs."""
    other = default_threads() + 1
    meet = threading.Barrier(2)

    def train():
        with threads(other):
            meet.wait(timeout=30)
            inside = torch.get_num_threads()
            meet.wait(timeout=30)
        return inside, torch.get_num_threads()

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = [f.result() for f in [pool.submit(train) for _ in range(2)]]
    assert results == [(other, default_threads())] * 2
    assert _in_new_thread(torch.get_num_threads) == default_threads()


def test_a_thread_started_under_another_count_is_set_back():
    """What the app's background workers do when they start: a worker that first ran while the
    process-wide count was changed (torch.set_num_threads elsewhere) gets the default."""
    other = default_threads() + 1
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        torch.set_num_threads(other)
        try:
            assert pool.submit(torch.get_num_threads).result() == other  # torch's rule: the count at first use
        finally:
            torch.set_num_threads(default_threads())
        assert pool.submit(torch.get_num_threads).result() == other  # and kept
        pool.submit(set_this_thread, default_threads()).result()
        assert pool.submit(torch.get_num_threads).result() == default_threads()
