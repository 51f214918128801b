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


#: What to do about a file restricted to some genes (the usual cause of low coverage with the right identifiers).
SUBSET_ADVICE = ("This is typical of a file restricted to highly variable genes or a targeted panel: upload the full "
                 "gene matrix (all genes, before feature selection) if you have it, or use a model trained on these "
                 "genes.")


#: :data:`SUBSET_ADVICE` as the command line says it: a file is given (--input), not uploaded.
SUBSET_ADVICE_CLI = SUBSET_ADVICE.replace("upload the full gene matrix", "give the full gene matrix")


#: Advice written for the app ("upload ...") and how the command line says it: a file is given there
#: (--input), not uploaded. Whole phrases, so words about the app's uploads (e.g. the upload limit) stay.
_CLI_PHRASES = (
    (SUBSET_ADVICE, SUBSET_ADVICE_CLI),
    ("to human orthologues (e.g. with BioMart) before uploading.", "to human orthologues (e.g. with BioMart) first."),
    ("upload log1p(CP10k) values instead", "give log1p(CP10k) values instead"),
    ("upload the counts instead", "give the counts instead"),
    ("and upload counts if you can", "and give counts if you can"),
    ("would dominate. Upload raw counts, or log1p-transform", "would dominate. Give raw counts, or log1p-transform"),
    ("or upload the data file itself", "or give the data file itself"),
    ("upload a file that carries the symbols", "give a file that carries the symbols"),
    ("or upload an h5ad.", "or give an h5ad file."),
)


def cli_words(text: str) -> str:
    """A message as the command line says it (every line it prints goes through here): the data
    file is given (--input), and mouse genes converted first, not uploaded."""
    for app, cli in _CLI_PHRASES:
        text = text.replace(app, cli)
    return text
