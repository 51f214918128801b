"""Small wording helpers shared by the figures and reports (light: no science imports)."""

from __future__ import annotations


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
