"""Where Geneformer's dictionaries are, by generation (no heavy imports: :mod:`scatd_core.genes` uses it)."""

from __future__ import annotations

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
