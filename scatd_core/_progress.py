"""Progress messages with elapsed time and an estimate of the time left, for every long step."""

from __future__ import annotations

import re
import time
from typing import Callable

ProgressFn = Callable[[float, str], None]


def duration(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``1.2 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Eta:
    """Elapsed time and time left from the fraction done so far (linear extrapolation).

    >>> eta = Eta()
    >>> eta.text(0.25)   # "12 s elapsed · about 36 s left"
    """

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self, fraction: float) -> float | None:
        if fraction <= 0.0:
            return None
        return self.elapsed * (1.0 - fraction) / fraction

    def text(self, fraction: float) -> str:
        left = self.left(fraction)
        out = f"{duration(self.elapsed)} elapsed"
        if left is not None and fraction < 1.0:
            out += f" · about {duration(left)} left"
        return out


_ETA_TAIL = re.compile(r"(?P<elapsed>\d+(?:\.\d+)?) (?P<unit>s|min|h) elapsed"
                       r"(?: · about (?P<left>\d+(?:\.\d+)?) (?P<left_unit>s|min|h) left)?$")
_UNIT_SECONDS = {"s": 1.0, "min": 60.0, "h": 3600.0}


def ticking(message: str, fraction: float, since: float) -> str:
    """``message`` (a report of :func:`with_eta`, ending ``6.1 min elapsed · about 1.8 min left``)
    as it reads ``since`` seconds after it was reported, so the line of a long step that reports
    seldom keeps ticking instead of freezing: the elapsed time moved on by ``since`` and the time
    left counted down by it. Only once that count is spent (the step runs longer than estimated)
    is the time left estimated again from the elapsed time and ``fraction`` (the fraction done when
    it was reported), which grows while nothing is reported: before, it grew from the report on
    (the demo's gradient boosting on all the cell lines, minutes without a report, read "about 3
    min left", then 4, 5, 6). A message without that ending is returned as it is."""
    found = _ETA_TAIL.search(message)
    if found is None or since <= 0:
        return message
    elapsed = float(found["elapsed"]) * _UNIT_SECONDS[found["unit"]] + since
    text = f"{duration(elapsed)} elapsed"
    if 0.0 < fraction < 1.0:
        left = float(found["left"]) * _UNIT_SECONDS[found["left_unit"]] - since if found["left"] else 0.0
        if left < 1.0:
            left = elapsed * (1.0 - fraction) / fraction
        text += f" · about {duration(left)} left"
    return message[:found.start()] + text


def with_eta(progress: ProgressFn | None) -> ProgressFn | None:
    """Wrap a ``progress(fraction, message)`` callback so every message ends with the time left."""
    if progress is None:
        return None
    eta = Eta()

    def report(fraction: float, message: str) -> None:
        progress(fraction, f"{message} · {eta.text(fraction)}" if message else eta.text(fraction))
    return report


def step(progress: ProgressFn | None, i: int, n: int, label: str) -> ProgressFn | None:
    """The progress of step ``i`` of ``n`` (e.g. one model of a panel) as part of the whole:
    fractions are mapped into ``[i/n, (i+1)/n]`` and messages start with ``label (i+1 of n)``."""
    if progress is None:
        return None

    def report(fraction: float, message: str) -> None:
        progress((i + min(max(fraction, 0.0), 1.0)) / n, f"{label} ({i + 1} of {n}) · {message}")
    return report
