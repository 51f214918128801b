"""Where Geneformer's dictionaries are, by generation (no heavy imports: :mod:`scatd_core.genes` uses it)."""

from __future__ import annotations

import re
from pathlib import Path

from scatd_core.config import geneformer_dir

#: Dictionary file names per generation, preferred first.
DICTIONARIES = {
    "V1": {"tokens": ("token_dictionary_gc30M.pkl", "token_dictionary.pkl"),
           "medians": ("gene_median_dictionary_gc30M.pkl", "gene_median_dictionary.pkl"),
           "names": ("gene_name_id_dict_gc30M.pkl", "gene_name_id_dict.pkl"),
           "mapping": ("ensembl_mapping_dict_gc30M.pkl",)},
    "V2": {"tokens": ("token_dictionary_gc104M.pkl", "token_dictionary_gc95M.pkl"),
           "medians": ("gene_median_dictionary_gc104M.pkl", "gene_median_dictionary_gc95M.pkl"),
           "names": ("gene_name_id_dict_gc104M.pkl", "gene_name_id_dict_gc95M.pkl"),
           "mapping": ("ensembl_mapping_dict_gc104M.pkl", "ensembl_mapping_dict_gc95M.pkl")},
}
DICTIONARY_FOLDERS = (".", "geneformer", "geneformer/gene_dictionaries_30m", "gene_dictionaries_30m")


def find_dictionary(kind: str, version: str = "V1", folder: str | Path | None = None) -> Path | None:
    """The path of one dictionary (``tokens``, ``medians``, ``names``, ``mapping``), or ``None``."""
    root = Path(folder) if folder is not None else geneformer_dir()
    for sub in DICTIONARY_FOLDERS:
        for name in DICTIONARIES[version][kind]:
            if (root / sub / name).is_file():
                return root / sub / name
    return None


#: What each dictionary holds, in words (:func:`content_kind` tells which one a loaded dict is).
CONTENT_WORDS = {"tokens": "token ids (whole numbers, with <pad> = 0 and <mask> = 1)",
                 "medians": "gene medians (decimal numbers, no <pad> or <mask> token)",
                 "names": "gene symbols mapped to Ensembl IDs (e.g. TP53 -> ENSG00000141510)",
                 "mapping": "Ensembl IDs mapped to Ensembl IDs"}
#: The same, short (for "the ... belong in FILE").
CONTENT_SHORT = {"tokens": "token ids", "medians": "gene medians", "names": "gene symbols -> Ensembl IDs",
                 "mapping": "Ensembl ID mapping"}
_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$", re.IGNORECASE)


def content_kind(d: dict) -> str | None:
    """Which of Geneformer's dictionaries ``d`` looks like, by its content (whatever its file is
    called): ``tokens`` (``<pad>`` and ``<mask>``, whole-number values), ``medians`` (numbers,
    some decimal, no special token), ``names`` (text values, mostly Ensembl IDs, keys mostly not),
    ``mapping`` (Ensembl IDs to Ensembl IDs); ``None`` for none of these. ``d`` is what
    :func:`scatd_core.genes.load_pickled_dict` returns (plain ``int``/``float``/``str`` values)."""
    if not d:
        return None
    values = list(d.values())
    whole = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    if whole and "<pad>" in d and "<mask>" in d:
        return "tokens"
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numbers and not any(str(k).startswith("<") for k in d) and any(isinstance(v, float) for v in values):
        return "medians"
    if all(isinstance(v, str) for v in values):
        if sum(bool(_ENSEMBL.match(v)) for v in values) * 2 <= len(values):
            return None
        return "mapping" if sum(bool(_ENSEMBL.match(str(k))) for k in d) * 2 > len(d) else "names"
    return None


def misplaced_text(held: dict, files: dict, version: str) -> tuple[str, str] | None:
    """``(message, hint)`` when a dictionary file holds another one's content (swapped or copied
    over), or ``None``. ``held``: kind of the file -> the kind its content looks like
    (:func:`content_kind`); ``files``: kind -> path of the files read."""
    wrong = [(kind, what) for kind, what in held.items() if what is not None and what != kind]
    if not wrong:
        return None

    def name(kind: str) -> str:
        return Path(files[kind]).name if kind in files else DICTIONARIES[version][kind][-1]

    said = [f"{name(kind)} holds {CONTENT_WORDS[what]}" for kind, what in wrong]
    kinds = {kind for kind, _ in wrong} | {what for _, what in wrong}
    swapped = {kind for kind, _ in wrong} == {what for _, what in wrong}
    if swapped:
        lead = "These two files look swapped" if len(wrong) == 2 else "These files look swapped"
        message = f"{lead}: " + ", and ".join(said) + "."
    else:
        message = ("A dictionary file holds another dictionary's content: " + ", and ".join(
            f"{text} (what {name(what)} holds)" for text, (_, what) in zip(said, wrong)) + ".")
    order = [k for k in CONTENT_SHORT if k in kinds]
    hint = (("Swap their contents (or names): " if swapped else "Put each dictionary in its own file: ")
            + ", ".join(f"the {CONTENT_SHORT[k]} belong in {name(k)}" for k in order) + ".")
    return message, hint
