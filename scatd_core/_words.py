"""Small wording helpers shared by the figures and reports (light: no science imports)."""

from __future__ import annotations


def counted(n, word: str = "cell", plural: str | None = None) -> str:
    """``n`` with its noun, singular for exactly one: ``1 cell``, ``0 cells``, ``2,000 cells``."""
    n = int(n)
    return f"{n:,} {word if n == 1 else (plural or word + 's')}"
