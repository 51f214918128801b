"""Small wording helpers shared by the figures and reports (light: no science imports)."""

from __future__ import annotations

import re

_NUMBER = re.compile(r"-?\d+(\.\d+)?")


def counted(n, word: str = "cell", plural: str | None = None) -> str:
    """``n`` with its noun, singular for exactly one: ``1 cell``, ``0 cells``, ``2,000 cells``."""
    n = int(n)
    return f"{n:,} {word if n == 1 else (plural or word + 's')}"


def percent(fraction) -> str:
    """A share as a percentage with one decimal (``52.5%``), never rounded to 0% or 100% when it is
    not: ``<0.1%`` for 1 of 2,932, ``>99.9%`` for all but 1 of them."""
    f = float(fraction)
    if 0 < f < 0.001:
        return "<0.1%"
    if 0.999 < f < 1:
        return ">99.9%"
    return f"{f:.1%}"


def sentence_start(text: str) -> str:
    """``text`` with its first letter upper case and the rest as written: "Filtered (QC)" from
    "filtered (QC)" (``str.capitalize`` lowers the rest: "Filtered (qc)")."""
    return text[:1].upper() + text[1:]


def natural_key(text: str) -> tuple:
    """A sort key that puts group names in their natural order: numbers numerically (Leiden
    clusters 1, 2, ..., 10, 11, not 1, 10, 11, 2), before text, which is sorted as written."""
    text = str(text)
    return (0, float(text), text) if _NUMBER.fullmatch(text) else (1, 0.0, text)


def natural_order(names) -> list[str]:
    """``names`` (each once) in :func:`natural_key` order."""
    return sorted({str(n) for n in names}, key=natural_key)
