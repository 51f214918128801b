"""A small thread-safe cache of values made from files, kept while the files stay as they were."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Hashable, Iterator


class StampedLRU:
    """Values made last, per place looked at (``where``: a folder, a file, the settings), each with
    the state of the files it was made from (``state``: sizes, mtimes, modes ...): a value is made
    again when that state changed, and replaces the old one. At most ``size`` places are kept, the
    least recently used dropped first, so a long-running server does not keep one value per change
    of the files or per place ever seen. Used by the backbone probes (:mod:`scatd_core.foundation`)
    and the panel's per-model figures (:mod:`scatd_core.export`)."""

    def __init__(self, size: int = 16):
        self.size = size
        self._kept: OrderedDict[Hashable, tuple[Hashable, object]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, where: Hashable, state: Hashable, make: Callable[[], object],
            keep: Callable[[object], bool] = lambda value: True):
        """The value kept for ``where`` if the files are still in ``state``, else ``make()``'s, kept
        when ``keep(value)`` (e.g. not a file that could not be read)."""
        with self._lock:
            kept = self._kept.get(where)
            if kept is not None and kept[0] == state:
                self._kept.move_to_end(where)
                return kept[1]
        made = make()
        if keep(made):
            with self._lock:
                self._kept[where] = (state, made)
                self._kept.move_to_end(where)
                while len(self._kept) > self.size:
                    self._kept.popitem(last=False)
        return made

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()

    def __len__(self) -> int:
        return len(self._kept)

    def __iter__(self) -> Iterator[Hashable]:
        """The places kept, least recently used first."""
        with self._lock:
            return iter(list(self._kept))
