"""Gene vocabularies and the alignment of a dataset's genes to a model's input genes.

A model's gene list is its input order: position *j* of the list is input feature *j*. An
uploaded dataset is matched **by name**; genes the model needs but the data lacks are filled
with 0, genes the model does not know are ignored, and duplicated names in the data are summed
(as scFoundation's preprocessing expects one column per gene).

Also here: what kind of identifiers a file uses (:func:`detect_id_type`), translation between
symbols and Ensembl IDs (:func:`map_gene_ids`), and the coverage of a model's genes shown
before a run (:func:`coverage_report`).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scatd_core._words import SUBSET_ADVICE, SUBSET_ADVICE_CLI, cli_words, counted, percent  # noqa: F401
from scatd_core import _keys
from scatd_core._matrix import sample_rows
from scatd_core.errors import DataNotScorable, InputError


#: A gene list is one short line per gene (scFoundation's 19,264 genes take 230 kB, twice that as
#: UTF-16): at most this many bytes of one are read.
MAX_GENE_LIST_BYTES = 32 << 20
_GENE_LIST_HINT = "Give a TSV with a gene_name column or a file with one gene symbol per line."


def gene_list_text(path: Path, subject: str, hint: str = _GENE_LIST_HINT) -> str:
    """The text of a gene-list file, read as the tables are: UTF-8 (with a byte-order mark or
    without) or UTF-16 with its byte-order mark (Excel's "Unicode text"), at most
    :data:`MAX_GENE_LIST_BYTES` of it. A zip (an Excel workbook), gzip, UTF-32 or binary file, and
    bytes that do not decode, are refused as ``subject`` (e.g. ``"Gene list genes.txt"``).
    ``OSError`` (a missing file) is the caller's to word."""
    from scatd_core.io._common import encoding_problem, is_utf16, mb  # not at the top: it imports this module

    with Path(path).open("rb") as fh:
        data = fh.read(MAX_GENE_LIST_BYTES + 1)
    if len(data) > MAX_GENE_LIST_BYTES:
        raise InputError(f"{subject} is larger than {mb(MAX_GENE_LIST_BYTES)}; a gene list is one short line per "
                         "gene (scFoundation's 19,264 genes take 230 kB).", f"Check that you gave the gene list. {hint}")
    if data.startswith(b"PK\x03\x04"):
        raise InputError(f"{subject} is a zip file (e.g. an Excel workbook), not a text file.",
                         "Save the list as plain text (one gene symbol per line) or export the sheet as CSV.")
    if data.startswith(b"\x1f\x8b"):
        raise InputError(f"{subject} is gzip-compressed, not a text file.", f"Decompress it (gunzip) first. {hint}")
    problem = encoding_problem(data[:8192], subject, "gene list (text, one gene per line or a TSV)")
    if problem is not None:
        raise problem
    utf16 = is_utf16(data)
    try:
        return data.decode("utf-16") if utf16 else data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if utf16:
            raise InputError(f"{subject} starts as UTF-16 text (Excel's 'Unicode text') but holds bytes that are not "
                             f"UTF-16 (near byte {exc.start:,}): the file is damaged, or not a text file.",
                             f"Save the list again (as UTF-8 or Unicode Text). {hint}") from None
        raise InputError(f"{subject} is not UTF-8 text (byte {exc.start + 1:,} cannot be decoded).",
                         f"Save it as UTF-8 (Excel: 'CSV UTF-8'; a text editor: encoding UTF-8). {hint}") from None


def read_gene_list(path: str | Path, name: str | None = None) -> list[str]:
    """Read a model gene list: a TSV/CSV with a ``gene_name`` column, or one symbol per line.

    The order of the file is kept: it is the model's input order and must never be re-sorted.
    ``name``: the file's name in messages (an upload's own name; default the path's). Encodings
    and limits: :func:`gene_list_text`.
    """
    path = Path(path)
    shown = name or path.name
    try:
        text = gene_list_text(path, f"Gene list {shown}")
    except FileNotFoundError:
        raise InputError(f"Gene list not found: {path}", "Check the path given with --genes.") from None
    except OSError as exc:
        raise InputError(f"Gene list {shown} is not readable ({exc}).", _GENE_LIST_HINT) from None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise InputError(f"Gene list {shown} is empty.",
                         "Give a TSV with a gene_name column or a file with one gene symbol per line.")
    delimiter = "\t" if "\t" in lines[0] else ("," if "," in lines[0] else None)
    if delimiter is not None:
        rows = list(csv.reader(lines, delimiter=delimiter))
        header = [h.strip() for h in rows[0]]
        if "gene_name" in header:
            col = header.index("gene_name")
            genes = [r[col].strip() for r in rows[1:] if len(r) > col]
        else:
            raise InputError(
                f"Gene list {shown} has several columns but none is called 'gene_name'.",
                "Use the scFoundation list (OS_scRNA_gene_index.19264.tsv) or one symbol per line.")
    else:
        genes = [ln.strip() for ln in lines]
        if genes and genes[0].lower() in {"gene_name", "gene", "symbol", "genes"}:
            genes = genes[1:]
    if not genes:
        raise InputError(f"Gene list {shown} holds no gene names.", None)
    dupes = len(genes) - len(set(genes))
    if dupes:
        raise InputError(f"Gene list {shown} names {counted(dupes, 'gene')} more than once; a model's "
                         "input genes must be unique.", "Check that the right file was given.")
    return genes


_MONTHS = "jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec"
# Gene names Excel converts to dates (MARCH1 -> 1-Mar, SEPT2 -> 2-Sep, DEC1 -> 1-Dec), in the forms
# its locales write them: 1-Mar, 01-Mar, Mar-01, 2023-03-01, 3/1/2023, 1.3.2023
_EXCEL_DATE = re.compile(rf"^(?:\d{{1,2}}-(?:{_MONTHS})(?:-\d{{2,4}})?|(?:{_MONTHS})-\d{{1,4}}|\d{{4}}-\d{{1,2}}-\d{{1,2}}"
                         r"(?:[ T]00:00(?::00)?)?|\d{1,2}/\d{1,2}/\d{2,4}|\d{1,2}\.\d{1,2}\.\d{2,4})$", re.IGNORECASE)


def excel_date_names(names: Sequence) -> list[str]:
    """Gene names that are dates Excel made of symbols such as MARCH1 or SEPT2 (every one, in order)."""
    return [str(n) for n in names if _EXCEL_DATE.match(str(n).strip())]


def excel_dates_warning(names: Sequence) -> str | None:
    """A warning naming up to 5 gene names Excel turned into dates, or None when there are none."""
    found = excel_date_names(names)
    if not found:
        return None
    shown = ", ".join(found[:5]) + (" ..." if len(found) > 5 else "")
    return (f"{counted(len(found), 'gene name')} {'is a date' if len(found) == 1 else 'are dates'} ({shown}): Excel turned gene names such as MARCH1/SEPT2 into "
            "dates, so these genes cannot be matched. Re-export the table without Excel's conversion (import the "
            "column as text, or write the file from R or Python).")


def gene_list_sha256(genes: Sequence[str]) -> str:
    """Hash of a gene list in order (what a bundle's manifest records)."""
    return hashlib.sha256("\n".join(genes).encode("utf-8")).hexdigest()


@dataclass
class GeneAlignment:
    """How a dataset's genes map onto a model's input genes.

    ``matrix`` is a sparse (n_data_genes x n_model_genes) 0/1 matrix: ``X @ matrix`` gives the
    model input in model order, with missing genes as 0 and duplicated data genes summed.
    """

    model_genes: list[str]
    matrix: sp.csr_matrix
    n_matched: int
    n_model: int
    n_data: int
    n_extra: int
    n_duplicated: int
    missing: list[str] = field(default_factory=list)

    @property
    def fraction_matched(self) -> float:
        return self.n_matched / self.n_model if self.n_model else 0.0

    def summary(self) -> dict:
        return {
            "n_model_genes": self.n_model,
            "n_matched": self.n_matched,
            "fraction_matched": round(self.fraction_matched, 4),
            "n_data_genes": self.n_data,
            "n_extra_ignored": self.n_extra,
            "n_duplicated_summed": self.n_duplicated,
        }


def align_genes(data_genes: Sequence[str], model_genes: Sequence[str]) -> GeneAlignment:
    """Match ``data_genes`` to ``model_genes`` by exact name (see module docstring)."""
    model_genes = list(model_genes)
    position = {g: j for j, g in enumerate(model_genes)}
    rows, cols = [], []
    seen: dict[str, int] = {}
    for i, g in enumerate(data_genes):
        j = position.get(str(g))
        if j is not None:
            rows.append(i)
            cols.append(j)
            seen[g] = seen.get(g, 0) + 1
    matrix = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                           shape=(len(data_genes), len(model_genes)))
    n_duplicated = sum(c - 1 for c in seen.values())
    matched = set(seen)
    return GeneAlignment(
        model_genes=model_genes,
        matrix=matrix,
        n_matched=len(matched),
        n_model=len(model_genes),
        n_data=len(data_genes),
        n_extra=len(data_genes) - len(rows),
        n_duplicated=n_duplicated,
        missing=[g for g in model_genes if g not in matched],
    )


# --------------------------------------------------------------------------------------------
# Identifier types
# --------------------------------------------------------------------------------------------

#: Fraction of the model's genes below which coverage is reported as low. Measured on the
#: scFoundation list (19,264 symbols): a whole-transcriptome human matrix annotated with
#: GENCODE symbols matches 99.4% of it (Geneformer's symbol table), the 21,245 genes Geneformer
#: saw expressed across ~30M real cells match 97.9%, while the SCAD files restricted to ~2,900
#: variable genes match 15% and a symbol/Ensembl mismatch matches ~0%. 0.5 sits in the wide gap
#: between "whole transcriptome" and "subset or wrong identifiers", so ordinary data never
#: triggers the warning and subsets always do.
LOW_COVERAGE_FRACTION = 0.5

#: Fraction of the model's genes below which a prediction is refused, not merely warned about
#: (this server's ``limits.min_gene_coverage`` may change it; the CLI's ``--min-gene-coverage``
#: for one run). On the same measurements: the SCAD files restricted to ~2,900 variable genes
#: still cover 15% of scFoundation's 19,264 genes, a model trained on such a subset is covered
#: fully by its own kind of data, while mouse symbols (Actb) or unmapped Ensembl IDs cover ~0.1%.
#: Below a tenth of its input the model sees mostly the zeros put in place of missing genes, so
#: its calls describe the missing genes rather than the cells; 0.1 refuses those cases and lets a
#: variable-gene subset run, with the low-coverage warning.
MIN_GENE_COVERAGE = 0.1

_ENSEMBL = re.compile(r"^(ENS[A-Z]*G\d{11})(\.\d+)?(_PAR_Y)?$")
# "ENSG00000141510_TP53" (scATD's ENS..._Symbol) or "ENSG00000141510|TP53"
_ENSEMBL_WITH_NAME = re.compile(r"^(ENS[A-Z]*G\d{11})(\.\d+)?[_|].+$")
_HUMAN_SYMBOL = re.compile(r"^(?=[A-Z0-9._-]*[A-Z])[A-Z0-9][A-Z0-9._-]*$|^C[0-9XY]+orf\d+")
_MOUSE_SYMBOL = re.compile(r"^[A-Z][a-z0-9]*[a-z][a-z0-9]*(?:[-.][A-Za-z0-9]+)*$|^mt-[A-Z][a-z0-9]*|^\d+[A-Z]\d+Rik$")
_BARCODE = re.compile(r"(?:^|[_:#-])[ACGTN]{10,}(?:[-_.]\d+)?$"
                      # shortened or padded barcodes (AAACCTG000000-1, ACGTAC0001): no symbol among the ~60,000
                      # human ones (scFoundation's, Geneformer's) has 6 or more A/C/G/T/N letters then digits
                      r"|(?:^|[_:#-])[ACGTN]{6,}(?:\d{4,}|\d*[-_.]\d+)$")
_NUMERIC = re.compile(r"^[+-]?\d+(?:\.\d+)?$")
# Cell (sample) names that the symbol pattern would take for genes: archive accessions (a prefix
# and >= 5 digits: SRR7000000, GSM4762001, SAMN12345678) and plate wells (P1_A01, plate1_B12,
# A01). A bare well must be zero-padded (A01-P09): C3, F8, F10, H19 are genes (and G10 a made-up one).
_CELL_NAME = re.compile(r"^(?:(?:SRR|ERR|DRR|SRX|ERX|DRX|SRS|ERS|DRS|GSM|SAMN|SAMEA|SAMD|SAME)\d{5,}(?:[_.:-]\w+)*"
                        # cell lines: DepMap IDs (ACH-000001) and Cellosaurus accessions (CVCL_0023), never genes
                        r"|ACH-\d{6}|CVCL_[A-Z0-9]{4}"
                        r"|(?:p|pl|plate)\d+[_.-]?[A-P](?:0?[1-9]|1\d|2[0-4])|[A-P]0[1-9])$", re.IGNORECASE)

SYMBOL_COLUMNS = ("gene_symbols", "gene_symbol", "gene_name", "gene_names", "feature_name",
                  "symbol", "symbols", "Symbol", "features", "name")
ENSEMBL_COLUMNS = ("gene_ids", "gene_id", "ensembl_id", "ensembl_ids", "ensembl", "feature_id",
                   "Accession", "id")
_MITO_PREFIXES = ("MT-", "mt-")


def _sample(names: Sequence, n: int = 5000) -> list[str]:
    """Evenly spaced (deterministic) sample of at most ``n`` names, as strings."""
    names = list(names)
    if len(names) > n:
        names = [names[i] for i in np.linspace(0, len(names) - 1, n).astype(int)]
    return [str(x) for x in names]


def name_shape(name: str) -> str:
    """Character-class shape of an identifier: letters by case, digit runs collapsed.

    Cell identifiers of one file share a shape (``c4653`` and ``c621`` are both ``a9``;
    ``GSM4762001`` is ``AAA9``) while gene symbols have many, which helps decide which side of
    a table holds the cells.
    """
    shape = re.sub(r"\d+", "9", name)
    return re.sub(r"[A-Z]", "A", re.sub(r"[a-z]", "a", shape))


def id_type_evidence(names: Sequence) -> dict:
    """Fractions of ``names`` that look like each kind of identifier.

    Returns a JSON-safe dict with ``n`` (names looked at, at most 5,000 evenly spaced) and the
    fractions ``ensembl`` (any species), ``ensembl_mouse``, ``ensembl_versioned``,
    ``human_symbol``, ``mouse_symbol``, ``barcode``, ``numeric``, ``cell_name`` (archive
    accessions such as ``SRR7000000`` and plate wells such as ``P1_A01``: cells, never
    counted as symbols), and ``top_shape_fraction``
    (the share of the most common :func:`name_shape`).
    """
    return dict(_evidence_of_sample(tuple(_sample(names))))


#: The Data page's Gene IDs tile for the identifier kinds whose name is longer than its tile shows
#: whole (``scatd_core.preprocess.TILE_MAX_CHARS``): ``(tile, the whole words under it)``.
_ID_TYPE_TILES = {"mouse_symbol": ("mouse", "mouse gene symbols")}


def id_type_tile(kind) -> tuple[str, str | None]:
    """The Data page's Gene IDs tile for :func:`detect_id_type`'s ``kind``: ``(value, the whole words
    under it or None)``; ``("mouse", "mouse gene symbols")``, ``("symbol", None)``."""
    if str(kind) in _ID_TYPE_TILES:
        return _ID_TYPE_TILES[str(kind)]
    return str(kind).replace("_", " "), None


_ID_EVIDENCE_WORDS = (("human_symbol", "human gene symbols"), ("ensembl", "Ensembl IDs"),
                      ("ensembl_versioned", "versioned Ensembl IDs (ENSG...{dot}1)"),
                      ("mouse_symbol", "mouse gene symbols"), ("ensembl_mouse", "mouse Ensembl IDs"),
                      ("barcode", "cell barcodes"), ("cell_name", "cell names"), ("numeric", "plain numbers"))


def id_evidence_text(evidence: dict) -> str:
    """:func:`id_type_evidence` as a sentence: how many names were looked at and the share that
    look like each kind of identifier (kinds no name looks like are left out)."""
    ev = evidence or {}
    if not ev.get("n"):
        return ""
    parts = [f"{percent(ev[key])} look like {words.format(dot='.')}" for key, words in _ID_EVIDENCE_WORDS
             if float(ev.get(key) or 0) > 0]
    return (f"Of {int(ev['n']):,} gene names looked at, " + (", ".join(parts) if parts else
                                                            "none looks like a gene symbol or Ensembl ID") + ".")


@functools.lru_cache(maxsize=64)
def _evidence_of_sample(sample: tuple[str, ...]) -> dict:
    """:func:`id_type_evidence` of a sample; cached, as the same names are asked about several
    times per upload and model (reading, alignment, QC, coverage)."""
    n = len(sample)
    if n == 0:
        return {"n": 0}
    counts = dict.fromkeys(("ensembl", "ensembl_mouse", "ensembl_versioned", "human_symbol",
                            "mouse_symbol", "barcode", "numeric", "cell_name"), 0)
    shapes: dict[str, int] = {}
    for name in sample:
        shape = name_shape(name)
        shapes[shape] = shapes.get(shape, 0) + 1
        m = _ENSEMBL.match(name) or _ENSEMBL_WITH_NAME.match(name)
        if m:
            counts["ensembl"] += 1
            counts["ensembl_mouse"] += name.startswith("ENSMUSG")
            counts["ensembl_versioned"] += m.group(2) is not None
        elif _NUMERIC.match(name):
            counts["numeric"] += 1
        elif _BARCODE.search(name):
            counts["barcode"] += 1
        elif _CELL_NAME.match(name):
            counts["cell_name"] += 1
        elif _HUMAN_SYMBOL.match(name):
            counts["human_symbol"] += 1
        elif _MOUSE_SYMBOL.match(name):
            counts["mouse_symbol"] += 1
    out = {"n": n}
    out.update({k: round(v / n, 4) for k, v in counts.items()})
    out["top_shape_fraction"] = round(max(shapes.values()) / n, 4)
    return out


def detect_id_type(names: Sequence) -> str:
    """Classify gene identifiers.

    Returns
    -------
    ``"ensembl"`` (>= 90% Ensembl gene IDs, with or without version; see
    :func:`id_type_evidence` for the species), ``"symbol"`` (>= 80% gene-symbol-like and no
    Ensembl), ``"mouse_symbol"`` (a majority of ``Actb``-style symbols: the models are human),
    ``"mixed"`` (Ensembl IDs and symbols together) or ``"unknown"`` (numbers, barcodes,
    ``feature_0`` ...).
    """
    ev = id_type_evidence(names)
    if ev["n"] == 0:
        return "unknown"
    ens, human, mouse = ev["ensembl"], ev["human_symbol"], ev["mouse_symbol"]
    if ens >= 0.9:
        return "ensembl"
    if mouse >= 0.5 and mouse > human:
        return "mouse_symbol"
    if human + mouse >= 0.8 and ens < 0.05:
        return "symbol"
    if ens >= 0.05 and ens + human + mouse >= 0.8:
        return "mixed"
    return "unknown"


def _ensembl_core(name: str) -> str | None:
    """The bare Ensembl gene ID inside ``name`` (version and attached symbol removed), or None."""
    m = _ENSEMBL.match(name) or _ENSEMBL_WITH_NAME.match(name)
    return m.group(1) if m else None


def strip_ensembl_version(ids: str | Sequence[str]) -> str | list[str]:
    """Remove version suffixes: ``ENSG00000141510.16`` -> ``ENSG00000141510``.

    Accepts one ID or a sequence (returns a list). Anything that is not an Ensembl gene ID is
    returned unchanged, so a mixed list can be passed as is.
    """
    def strip(x):
        m = _ENSEMBL.match(str(x))
        return m.group(1) + (m.group(3) or "") if m else x
    if isinstance(ids, str):
        return strip(ids)
    return [strip(x) for x in ids]


def original_gene_names(adata) -> list[str]:
    """Gene names as they were in the file, before :func:`scatd_core.io.read` made them unique.

    Use these (not ``var_names``) for :func:`align_genes`, so that duplicated genes are summed
    rather than the copies (``TP53-1``) being dropped as unknown.
    """
    if _keys.ORIGINAL_GENE_NAME in adata.var:
        return [str(x) for x in adata.var[_keys.ORIGINAL_GENE_NAME]]
    return [str(x) for x in adata.var_names]


def var_id_columns(var) -> dict:
    """Columns of a ``var`` table that hold gene symbols and Ensembl IDs (by name, then content).

    Returns ``{"symbol": column or None, "ensembl": column or None}``.
    """
    accepted = {"symbol": ("symbol", "mouse_symbol", "mixed"), "ensembl": ("ensembl",)}
    found = {"symbol": None, "ensembl": None}
    for kind, candidates in (("symbol", SYMBOL_COLUMNS), ("ensembl", ENSEMBL_COLUMNS)):
        for col in candidates:
            if col not in var.columns:
                continue
            values = [v for v in var[col].astype(str) if _present(v)]
            if detect_id_type(values) in accepted[kind]:
                found[kind] = col
                break
    return found


def _present(value: str) -> bool:
    return value.strip().lower() not in ("", "nan", "none", "na")


def mito_mask(adata) -> np.ndarray:
    """Boolean mask of mitochondrial genes (symbols starting ``MT-`` or ``mt-``).

    When the var_names are Ensembl IDs, a symbol column of ``var`` is used instead (10x files
    and most h5ad carry one).
    """
    names = pd.Index(adata.var_names.astype(str))
    if detect_id_type(names) in ("ensembl", "mixed", "unknown"):
        col = var_id_columns(adata.var)["symbol"]
        if col is not None:
            names = pd.Index(adata.var[col].astype(str))
    return np.asarray(names.str.startswith(_MITO_PREFIXES), dtype=bool)


# --------------------------------------------------------------------------------------------
# Symbol <-> Ensembl
# --------------------------------------------------------------------------------------------

def _numeric_dtype(*args):
    """``numpy.dtype`` as a pickle may call it, for plain numbers only (bool, integers, floats)."""
    dtype = np.dtype(*args[:1])  # the other arguments (align, copy) change nothing for such a dtype
    if dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
        raise pickle.UnpicklingError(f"refused to load a numpy value of type {dtype} (only plain numbers are allowed)")
    return dtype


def _numeric_scalar(dtype, data=None):
    """numpy's scalar constructor as a pickle calls it, for a plain number given by its bytes only:
    built here from the bytes (no numpy constructor called on the pickle's arguments)."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biuf" or dtype.fields is not None \
            or dtype.hasobject or not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise pickle.UnpicklingError("refused to load a numpy value that is not a plain number")
    return np.frombuffer(data, dtype=dtype)[0]


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickler that builds only dicts, lists, str, int, float (and, on request, numpy numbers).

    Plain containers and numbers are made by pickle opcodes, never through ``find_class``; so
    refusing every global refuses every callable, and a crafted pickle cannot run code.
    Geneformer's token and median dictionaries store their values as numpy int16 / float64,
    which need two globals (``numpy.dtype`` and the scalar constructor): both are replaced by
    functions that accept plain number types only (bool, integers, floats; never object or
    structured types) and build the number from its bytes.
    """

    _NUMPY_SCALAR_GLOBALS = {("numpy", "dtype"): _numeric_dtype, ("numpy.core.multiarray", "scalar"): _numeric_scalar,
                             ("numpy._core.multiarray", "scalar"): _numeric_scalar}

    def __init__(self, file, allow_numpy_scalars: bool):
        super().__init__(file)
        self.allow_numpy_scalars = allow_numpy_scalars

    def find_class(self, module, name):
        if self.allow_numpy_scalars and (module, name) in self._NUMPY_SCALAR_GLOBALS:
            return self._NUMPY_SCALAR_GLOBALS[module, name]
        raise pickle.UnpicklingError(f"refused to load '{module}.{name}' (only plain data is allowed)")


def load_pickled_dict(path: str | Path, *, allow_numpy_scalars: bool = False) -> dict:
    """Load a pickled ``dict`` of str keys to str/int/float values, without executing code.

    Parameters
    ----------
    path
        A pickle such as Geneformer's ``gene_name_id_dict.pkl`` (symbol -> Ensembl ID).
    allow_numpy_scalars
        Also accept numpy scalar values (Geneformer's ``token_dictionary.pkl``); they are
        returned as Python ``int``/``float``.
    """
    path = Path(path)
    hint = "Give the dictionary file shipped with Geneformer (e.g. gene_name_id_dict.pkl)."
    from scatd_core.foundation._assets import lfs_pointer_size, lfs_problem, unreadable_problem

    if (unreadable := unreadable_problem(path, "The dictionary file")) is not None:  # not "not a pickle"
        raise InputError(unreadable.message, unreadable.hint)
    lfs = lfs_pointer_size(path)
    if lfs is not None:  # a clone without Git LFS: say so, not "invalid load key 'v'"
        problem = lfs_problem(path, lfs)
        raise InputError(problem.message, problem.hint)
    try:
        with path.open("rb") as fh:
            obj = _PlainDataUnpickler(fh, allow_numpy_scalars).load()
    except FileNotFoundError:
        raise InputError(f"Dictionary file not found: {path}", hint) from None
    except Exception as exc:  # any unpickling failure means "not a plain-data dict pickle"
        raise InputError(f"{path.name} is not a plain-data pickled dictionary ({exc}).", hint) from None
    if not isinstance(obj, dict):
        raise InputError(f"{path.name} holds a {type(obj).__name__}, not a dictionary.", hint)
    out = {}
    for key, value in obj.items():
        if isinstance(value, np.generic):
            value = value.item()
        if not isinstance(key, str) or not isinstance(value, (str, int, float)):
            raise InputError(f"{path.name} maps {type(key).__name__} to {type(value).__name__}; "
                             "expected names to IDs or numbers.", hint)
        out[key] = value
    return out


def _biomart_text(raw: bytes, name: str, hint: str) -> bytes:
    """The bytes of a BioMart table as UTF-8 text (UTF-16 with its byte-order mark is converted);
    a file that is no text table is refused by what it is (an Excel workbook, a zip or gzip
    archive, a PDF, a binary file), not by the columns a text parser would make of its bytes."""
    import io

    from scatd_core.io._common import SIGNATURES, encoding_problem, is_utf16, text_file_problem

    head = raw[:8192]
    problem = text_file_problem(io.BytesIO(raw), head, name, "table")  # Excel workbook, Word document, PDF
    if problem is not None:
        raise problem
    if head.startswith(SIGNATURES["zip"]):
        raise InputError(f"{name} is a zip archive, not a text table.",
                         "Unzip it and give the BioMart export inside. " + hint)
    if head.startswith(SIGNATURES["gz"]):
        raise InputError(f"{name} is gzip-compressed, not a text table.",
                         "Decompress it (e.g. gunzip) and give the table inside. " + hint)
    if is_utf16(head):
        try:
            return raw.decode("utf-16").encode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{name} is not valid UTF-16 text, although it starts as such.", hint) from None
    problem = encoding_problem(head, name)  # UTF-32, or binary
    if problem is not None:
        raise InputError(problem.message, f"{problem.hint} {hint}")
    return raw


def read_biomart_table(source: str | Path | bytes, *, name: str | None = None) -> pd.DataFrame:
    """Read a BioMart export with the columns ``Gene stable ID`` and ``Gene name``.

    ``source`` is a path or the file's bytes (an upload; ``name`` names it in messages).
    Comma- or tab-separated; ``Gene stable ID version`` is accepted in place of ``Gene stable
    ID``. Returns a two-column frame ``ensembl`` (version removed), ``symbol``, without empty
    rows, in file order (the first row wins for a name listed twice).
    """
    import io

    hint = ("Export from Ensembl BioMart with the attributes 'Gene stable ID' and 'Gene name' "
            "(CSV or TSV, with the header row).")
    if isinstance(source, (bytes, bytearray)):
        name, raw = name or "BioMart table", bytes(source)
    else:
        path = Path(source)
        name = name or path.name
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise InputError(f"BioMart table not found: {path}", hint) from None
    raw = _biomart_text(raw, name, hint)
    try:
        first = raw.split(b"\n", 1)[0].decode("utf-8-sig", errors="replace")
        table = pd.read_csv(io.BytesIO(raw), sep="\t" if "\t" in first else ",", dtype=str,
                            encoding="utf-8-sig", encoding_errors="replace")
    except Exception as exc:
        raise InputError(f"Could not read the BioMart table {name} ({exc}).", hint) from None
    id_col = next((c for c in ("Gene stable ID", "Gene stable ID version") if c in table.columns), None)
    if id_col is None or "Gene name" not in table.columns:
        raise InputError(f"BioMart table {name} lacks 'Gene stable ID' and/or 'Gene name' "
                         f"(columns found: {', '.join(map(str, table.columns[:6]))}).", hint)
    out = pd.DataFrame({"ensembl": strip_ensembl_version(table[id_col].fillna("").str.strip()),
                        "symbol": table["Gene name"].fillna("").str.strip()})
    return out[(out["ensembl"] != "") & (out["symbol"] != "")].reset_index(drop=True)


@dataclass
class GeneIdMapping:
    """Result of :func:`map_gene_ids`.

    ``names`` has one entry per input gene: the mapped identifier, or the input name when no
    route knew it (``mapped`` is then False). ``routes`` counts the genes each route mapped, in
    the order they were tried.
    """

    target: str
    names: list[str]
    mapped: np.ndarray
    routes: dict
    #: the ``var`` column whose symbols replaced gene names that are neither symbols nor Ensembl IDs
    symbol_column: str | None = None

    def summary(self) -> dict:
        return {"target": self.target, "n_genes": len(self.names),
                "n_mapped": int(self.mapped.sum()), **{f"n_{k}": v for k, v in self.routes.items()},
                **({"symbol_column": self.symbol_column} if self.symbol_column else {})}


def map_gene_ids(source, to: str = "symbol", *, geneformer_dict=None, biomart=None) -> GeneIdMapping:
    """Translate gene identifiers between symbols and Ensembl gene IDs.

    Routes, tried in this order for every gene not already of the target type:

    1. ``file_columns``: the file's own columns (``source`` is an AnnData whose ``var`` has
       e.g. ``gene_ids`` next to symbol var_names, as 10x files do; see :data:`SYMBOL_COLUMNS`
       and :data:`ENSEMBL_COLUMNS`);
    2. ``geneformer_dict``: Geneformer's symbol -> Ensembl dictionary (a dict, or the path of
       ``gene_name_id_dict.pkl``, loaded by :func:`load_pickled_dict`), inverted for
       ``to="symbol"``;
    3. ``biomart``: a user table (path or the frame of :func:`read_biomart_table`).

    Parameters
    ----------
    source
        An AnnData or a sequence of names.
    to
        ``"symbol"`` or ``"ensembl"``. Ensembl results carry no version suffix.

    Returns
    -------
    :class:`GeneIdMapping`; ``routes`` has the counts ``already`` (already the target type),
    ``file_columns``, ``geneformer_dict``, ``biomart`` and ``unmapped``.

    Gene names that are neither symbols nor Ensembl IDs (``gene0``, ``feature_12``: detected as
    ``unknown``) are no symbols: with ``to="symbol"`` a symbol column of ``var`` (e.g.
    ``var['gene_symbols']``) gives every gene its symbol (route ``file_columns``; the column is
    ``symbol_column``), and a gene without a value there is ``unmapped``.
    """
    if to not in ("symbol", "ensembl"):
        raise ValueError(f"to must be 'symbol' or 'ensembl', not {to!r}")
    symbol_column = None
    if hasattr(source, "var_names"):
        names = original_gene_names(source)
        cols = var_id_columns(source.var)
        other = cols["ensembl" if to == "ensembl" else "symbol"]
        file_values = [str(x) for x in source.var[other]] if other else None
        if to == "symbol" and other and detect_id_type(names) == "unknown":
            symbol_column = other  # the names match no model: the column's symbols are the genes' names
    else:
        names, file_values = [str(x) for x in source], None

    lookups = []
    if geneformer_dict is not None:
        gf = geneformer_dict if isinstance(geneformer_dict, dict) else load_name_dictionary(geneformer_dict)
        gf = {k: strip_ensembl_version(str(v)) for k, v in gf.items()}
        lookups.append(("geneformer_dict", gf if to == "ensembl" else {v: k for k, v in gf.items()}))
    if biomart is not None:
        table = biomart if isinstance(biomart, pd.DataFrame) else read_biomart_table(biomart)
        keys, values = (table["symbol"], table["ensembl"]) if to == "ensembl" else (table["ensembl"], table["symbol"])
        bm: dict[str, str] = {}
        for k, v in zip(keys, values):
            bm.setdefault(k, v)
        lookups.append(("biomart", bm))

    routes = dict.fromkeys(("already", "file_columns", "geneformer_dict", "biomart", "unmapped"), 0)
    out, mapped = [], np.zeros(len(names), dtype=bool)
    for i, name in enumerate(names):
        core = _ensembl_core(name)
        if symbol_column is not None:
            value = file_values[i]
            found = _present(value) and _ensembl_core(value) is None
            routes["file_columns" if found else "unmapped"] += 1
            mapped[i] = found
            out.append(value if found else name)
            continue
        if (to == "ensembl") == (core is not None):
            out.append(core if to == "ensembl" else name)
            routes["already"] += 1
            mapped[i] = True
            continue
        key = core if to == "symbol" else name
        result, route = None, "unmapped"
        if file_values is not None:
            candidate = file_values[i]
            if _present(candidate) and (_ensembl_core(candidate) is not None) == (to == "ensembl"):
                result, route = (_ensembl_core(candidate) if to == "ensembl" else candidate), "file_columns"
        for route_name, table in lookups:
            if result is None and key in table:
                result, route = table[key], route_name
        routes[route] += 1
        mapped[i] = result is not None
        out.append(result if result is not None else name)
    return GeneIdMapping(target=to, names=out, mapped=mapped, routes=routes, symbol_column=symbol_column)


def _cached_dictionary(path: str) -> dict:
    """The dictionary at ``path``, read again when the file changes (a fixed file needs no restart)."""
    st = Path(path).stat()
    key = (path, st.st_mtime_ns, st.st_size)
    if key not in _DICTIONARIES:
        _DICTIONARIES.clear()  # one installed dictionary at a time
        _DICTIONARIES[key] = load_name_dictionary(path)
    return _DICTIONARIES[key]


def load_name_dictionary(path: str | Path) -> dict:
    """Geneformer's ``gene_name_id_dict`` (symbol -> Ensembl ID) at ``path``, read as
    :func:`load_pickled_dict` (numpy numbers allowed, so that another dictionary put in its place,
    e.g. the token dictionary after a swap, is named by what it holds rather than refused for its
    number types); :class:`~scatd_core.errors.InputError` when it holds no symbols -> Ensembl IDs."""
    from scatd_core.foundation._dictionaries import CONTENT_SHORT, CONTENT_WORDS, DICTIONARIES, content_kind

    path = Path(path)
    d = load_pickled_dict(path, allow_numpy_scalars=True)
    kind = content_kind(d)
    if kind in (None, "names"):
        return d
    belongs = next((names[-1] for names in (v[kind] for v in DICTIONARIES.values() if kind in v)), kind)
    raise InputError(f"{path.name} holds {CONTENT_WORDS[kind]}, not gene symbols mapped to Ensembl IDs: it looks "
                     f"swapped with (or copied from) {belongs}.",
                     f"Put Geneformer's gene-name dictionary (gene symbol -> Ensembl ID) in {path.name}, and "
                     f"the {CONTENT_SHORT[kind]} in {belongs}.")


_DICTIONARIES: dict[tuple, dict] = {}
_DICTIONARY_UNREADABLE = "The Geneformer gene dictionary installed on this server could not be read"


def default_symbol_dictionary(problems: list[str] | None = None):
    """Geneformer's ``gene_name_id_dict`` (symbol -> Ensembl) when it is installed in
    :func:`scatd_core.config.geneformer_dir` (any layout :mod:`scatd_core.foundation.geneformer`
    finds, V1 or V2), else ``None``.

    The server's dictionary is an optional route for gene identifiers: when it cannot be read (a
    Git LFS pointer, a damaged or unsafe pickle), ``None`` is returned and the reason appended to
    ``problems``, so that reading data never fails because of it."""
    from scatd_core.foundation._dictionaries import find_dictionary

    path = find_dictionary("names", "V1") or find_dictionary("names", "V2")
    if path is None:
        return None
    try:
        return _cached_dictionary(str(path))
    except (InputError, OSError) as exc:
        if problems is not None:
            what = exc.message if isinstance(exc, InputError) else str(exc)
            problems.append(f"{_DICTIONARY_UNREADABLE}, so gene identifiers were not mapped through it: {what} "
                            "Ask the administrator to run `scatd doctor`.")
        return None


#: How to give Ensembl IDs their symbols, on either surface (the app's Data page, the command line).
MAP_IDS_HINT = ("Give a BioMart table with 'Gene stable ID' and 'Gene name' (on the Data page; on the command line "
                "--biomart FILE), upload a file that carries the symbols (e.g. the 10x features.tsv), or ask the "
                "administrator to install Geneformer's gene dictionary (gene_name_id_dict.pkl in "
                "SCATD_GENEFORMER_DIR; `scatd doctor` checks it).")
#: The end of the data's warning while most of its Ensembl IDs have no symbol (:func:`annotate_gene_ids`).
NO_SYMBOLS_HINT = ("The drug models use gene symbols, so these genes cannot be matched. " + MAP_IDS_HINT)


def _unmapped_ids_problem(n_unmapped: int, n_other: int, n_genes: int) -> bool:
    """Whether identifiers of the other kind than the model's are unmapped as a whole: most of them
    (over half) are, and they are at least 5% of the data's genes (a few unnamed genes are not)."""
    return n_unmapped > 0 and n_unmapped > 0.5 * n_other and n_unmapped >= 0.05 * max(n_genes, 1)


def no_symbols_warning(n_unmapped: int) -> str:
    """The data's warning for ``n_unmapped`` Ensembl IDs without a symbol (ends with :data:`NO_SYMBOLS_HINT`)."""
    return (f"{counted(n_unmapped, 'Ensembl ID')} could not be mapped to {'a symbol' if n_unmapped == 1 else 'symbols'}. "
            + NO_SYMBOLS_HINT)


def annotate_gene_ids(adata, *, geneformer_dict=None, biomart=None) -> dict:
    """Give every gene both identifiers a model may need: an HGNC symbol and an Ensembl ID.

    Routes as :func:`map_gene_ids`: the file's own columns (10x ``gene_ids``, cellxgene
    ``feature_name`` ...; a symbol column also replaces gene names that are neither symbols nor
    Ensembl IDs), then Geneformer's dictionary (``geneformer_dict``, default
    :func:`default_symbol_dictionary`), then a BioMart table (``biomart``). Genes no route knows
    keep their own name, so they simply match no model gene and show up in the coverage.

    Sets ``adata.var['scatd_symbol']`` and ``adata.var['scatd_ensembl']`` and records the counts in
    ``adata.uns['scatd_input']['gene_ids']``, which it also returns: per target the numbers
    mapped by each route, plus ``data_id_type`` and, while most of the data's Ensembl IDs have no
    symbol, ``n_ensembl_unmapped`` and ``hint`` (:func:`no_symbols_warning`), which is also among
    ``adata.uns['scatd_input']['warnings']`` while it holds. :func:`id_mapping_text` says it in words.
    """
    problems: list[str] = []
    if geneformer_dict is None:
        geneformer_dict = default_symbol_dictionary(problems)
    names = original_gene_names(adata)
    data_type = detect_id_type(names)
    summary: dict = {"data_id_type": data_type}
    for target, key in (("symbol", _keys.SYMBOL), ("ensembl", _keys.ENSEMBL)):
        mapping = map_gene_ids(adata, target, geneformer_dict=geneformer_dict, biomart=biomart)
        adata.var[key] = mapping.names
        summary[target] = mapping.summary()
    annotate_raw_gene_ids(adata, geneformer_dict=geneformer_dict, biomart=biomart)
    if data_type in ("ensembl", "mixed"):
        sym = summary["symbol"]
        n_ensembl = sym["n_genes"] - sym["n_already"]
        if _unmapped_ids_problem(sym["n_unmapped"], n_ensembl, sym["n_genes"]):
            summary["n_ensembl_unmapped"] = sym["n_unmapped"]
            summary["hint"] = no_symbols_warning(sym["n_unmapped"])
    report = dict(adata.uns.get(_keys.INPUT_REPORT, {}))
    report["gene_ids"] = summary
    if "warnings" in report or "hint" in summary or problems:  # said while it holds, not after a mapping
        warnings = [str(w) for w in report.get("warnings", []) if not str(w).endswith(NO_SYMBOLS_HINT)
                    and not str(w).startswith(_DICTIONARY_UNREADABLE)]
        report["warnings"] = warnings + problems + ([summary["hint"]] if "hint" in summary else [])
    adata.uns[_keys.INPUT_REPORT] = report
    return summary


def raw_has_own_genes(adata) -> bool:
    """Whether ``adata.raw`` holds other genes than X (its own ``raw.var``, e.g. all genes beside X's
    highly variable ones, or Ensembl IDs beside X's symbols)."""
    raw = getattr(adata, "raw", None)
    return raw is not None and list(map(str, raw.var_names)) != list(map(str, adata.var_names))


def annotate_raw_gene_ids(adata, *, geneformer_dict=None, biomart=None) -> None:
    """``adata.raw``'s own genes (:func:`raw_has_own_genes`) mapped as X's are by :func:`annotate_gene_ids`
    (the same routes: raw.var's own columns such as ``gene_symbols`` or ``feature_name``, Geneformer's
    dictionary, the BioMart table): sets ``adata.raw.var['scatd_symbol']`` and ``['scatd_ensembl']``, so
    that a model reading adata.raw matches its genes as it would X's. Nothing to do when raw shares X's
    genes (it then reads X's ``var``)."""
    if not raw_has_own_genes(adata):
        return
    raw_var = adata.raw.var
    for target, key in (("symbol", _keys.SYMBOL), ("ensembl", _keys.ENSEMBL)):
        raw_var[key] = map_gene_ids(adata.raw, target, geneformer_dict=geneformer_dict, biomart=biomart).names


def mapped_raw_var(adata) -> pd.DataFrame:
    """``adata.raw.var`` with the model identifiers X's genes have (:func:`annotate_raw_gene_ids`): as it is
    when mapped already or when X's were never mapped (names as in the file, as for X), else a mapped copy
    (the file's own columns and the server's dictionary; the data are not changed)."""
    raw_var = adata.raw.var
    if _keys.SYMBOL in raw_var or _keys.SYMBOL not in adata.var:
        return raw_var
    out = raw_var.copy()
    dictionary = default_symbol_dictionary()
    for target, key in (("symbol", _keys.SYMBOL), ("ensembl", _keys.ENSEMBL)):
        out[key] = map_gene_ids(adata.raw, target, geneformer_dict=dictionary).names
    return out


def id_mapping_text(summary: dict) -> str:
    """:func:`annotate_gene_ids`'s counts in words (the Data page and the command line say the same),
    or "" when the data's gene names are symbols the models take as they are."""
    sym = (summary or {}).get("symbol") or {}
    data_type = summary.get("data_id_type") if summary else None
    n = int(sym.get("n_genes", 0))
    if not n:
        return ""
    if sym.get("symbol_column"):
        return (f"The gene names are neither gene symbols nor Ensembl IDs: gene symbols taken from "
                f"var['{sym['symbol_column']}'] for {int(sym.get('n_file_columns', 0)):,} of {counted(n, 'gene')}.")
    if data_type not in ("ensembl", "mixed"):
        return ""
    n_already = int(sym.get("n_already", 0))
    n_ensembl = n - n_already
    n_new = n_ensembl - int(sym.get("n_unmapped", 0))
    routes = (f"{int(sym.get('n_file_columns', 0)):,} from the file's own columns, "
              f"{int(sym.get('n_geneformer_dict', 0)):,} from the Geneformer dictionary, "
              f"{int(sym.get('n_biomart', 0)):,} from a BioMart table")
    if data_type == "ensembl" and not n_already:
        text = (f"The genes are Ensembl IDs; the drug models use gene symbols. {n_new:,} of {n:,} "
                f"({percent(n_new / n)}) have a symbol: {routes}.")
    else:
        text = (f"The genes are a mix of gene symbols and Ensembl IDs; the drug models use gene symbols. "
                f"{n_already:,} of {n:,} are already symbols; {n_new:,} of the {counted(n_ensembl, 'Ensembl ID')} "
                f"have a symbol: {routes}.")
    if summary.get("hint"):
        text += " " + summary["hint"]
    return text


def names_for(adata, id_type: str) -> list[str]:
    """The data's gene names in the identifier space of a model (``"symbol"`` or ``"ensembl"``),
    from :func:`annotate_gene_ids` when it ran, else the names as in the file."""
    key = {"ensembl": _keys.ENSEMBL}.get(id_type, _keys.SYMBOL)
    if key in adata.var:
        return [str(x) for x in adata.var[key]]
    return original_gene_names(adata)


# --------------------------------------------------------------------------------------------
# Coverage of a model's genes
# --------------------------------------------------------------------------------------------

def min_gene_coverage() -> float:
    """The least share of a model's genes the data must have to be predicted: this server's
    ``limits.min_gene_coverage`` (``SCATD_MIN_GENE_COVERAGE``), default :data:`MIN_GENE_COVERAGE`."""
    from scatd_core.config import settings

    return float(settings()["min_gene_coverage"])


def coverage_report(adata_or_names, model_genes: Sequence[str], *, n_top: int = 20,
                    low_threshold: float = LOW_COVERAGE_FRACTION, min_coverage: float | None = None) -> dict:
    """How well a dataset covers a model's input genes, with advice when it does not.

    Parameters
    ----------
    adata_or_names
        An AnnData (enables the expression-based fields) or a sequence of gene names.
    model_genes
        The model's genes in input order (a bundle's gene list).
    n_top
        How many unmatched data genes to list.
    low_threshold
        Coverage fraction below which ``low_coverage`` is True; see
        :data:`LOW_COVERAGE_FRACTION` for why 0.5.
    min_coverage
        Coverage fraction below which the prediction is refused (``status`` ``"refused"``);
        default :func:`min_gene_coverage` (see :data:`MIN_GENE_COVERAGE` for why 0.1).

    Returns
    -------
    A JSON-safe dict: ``n_model_genes``, ``n_matched``, ``fraction_matched``, ``n_data_genes``,
    ``n_data_genes_unmatched``, ``data_id_type``, ``model_id_type``, ``low_coverage``,
    ``min_coverage``, ``n_ids_unmapped`` (the data's genes still of the other kind of identifier
    than the model's: Ensembl IDs no route gave a symbol), ``status`` (``"good"``, ``"low"``: low
    coverage or a whole kind of identifier unmapped, or ``"refused"``: below ``min_coverage``),
    ``unmatched_examples`` (the first data genes the model does not know, in file order) and
    ``advice``; with an AnnData also ``top_unmatched_genes`` (the data genes the model ignores),
    ``unmatched_ranked_by`` and, for expression, ``top_unmatched_mean`` and
    ``expression_fraction_matched`` (share of the total signal carried by matched genes). On
    expression values the genes are the most expressed (``unmatched_ranked_by`` ``"mean"``: mean
    value over up to 2,000 cells); on centred values (per-gene z-scores, batch-corrected values:
    negative values, :func:`values_are_centred`) a gene's mean says nothing of its expression
    (near 0 for every z-scored gene), so they are the first by name (``"name"``), with no means.
    """
    is_adata = hasattr(adata_or_names, "var_names")
    report, names, unmatched_idx = _coverage_numbers(adata_or_names, model_genes, low_threshold, min_coverage)
    if is_adata:
        block = sample_rows(adata_or_names.X)
        if values_are_centred(adata_or_names, block):  # a mean z-score is not expression: by name
            report["unmatched_ranked_by"] = "name"
            report["top_unmatched_genes"] = sorted((names[i] for i in unmatched_idx), key=str.casefold)[:n_top]
            report["advice"] = _coverage_advice(report)
            return report
        means = np.asarray(block.mean(axis=0)).ravel().astype(np.float64)
        order = unmatched_idx[np.argsort(-means[unmatched_idx], kind="stable")][:n_top]
        report["unmatched_ranked_by"] = "mean"
        report["top_unmatched_genes"] = [names[i] for i in order]
        report["top_unmatched_mean"] = [round(float(means[i]), 4) for i in order]
        if means.min(initial=0.0) >= 0 and means.sum() > 0:
            matched_mask = np.ones(len(names), dtype=bool)
            matched_mask[unmatched_idx] = False
            report["expression_fraction_matched"] = round(float(means[matched_mask].sum() / means.sum()), 4)
    report["advice"] = _coverage_advice(report)
    return report


def _coverage_numbers(adata_or_names, model_genes: Sequence[str], low_threshold: float = LOW_COVERAGE_FRACTION,
                      min_coverage: float | None = None) -> tuple[dict, list[str], np.ndarray]:
    """:func:`coverage_report`'s fields from the gene names alone (no values read), the data's
    names in the model's kind of identifier, and the positions of those the model does not know."""
    is_adata = hasattr(adata_or_names, "var_names")
    model_genes = [str(g) for g in model_genes]
    model_type = detect_id_type(model_genes)
    names = names_for(adata_or_names, model_type) if is_adata else [str(x) for x in adata_or_names]
    aln = align_genes(names, model_genes)
    model_set = set(model_genes)
    unmatched_idx = np.array([i for i, g in enumerate(names) if g not in model_set], dtype=int)
    ids = adata_or_names.uns.get(_keys.INPUT_REPORT, {}).get("gene_ids", {}) if is_adata else {}
    column = (ids.get("symbol") or {}).get("symbol_column") if model_type == "symbol" else None
    # with a symbol column in place of names that are no identifiers, those symbols are the data's genes
    data_type = detect_id_type(original_gene_names(adata_or_names) if is_adata and not column else names)
    mapped = ids.get(model_type) if data_type != model_type and not column else None
    minimum = min_gene_coverage() if min_coverage is None else float(min_coverage)
    other_kind = (lambda g: _ensembl_core(g) is not None) if model_type != "ensembl" else \
        (lambda g: _ensembl_core(g) is None)
    n_unmapped = sum(map(other_kind, names)) if model_type in ("symbol", "ensembl") else 0
    originals = original_gene_names(adata_or_names) if is_adata else names
    n_other = sum(map(other_kind, originals)) if model_type in ("symbol", "ensembl") else 0
    ids_unmapped = _unmapped_ids_problem(n_unmapped, n_other, len(names))
    fraction = aln.fraction_matched
    report = {
        "n_model_genes": aln.n_model,
        "n_matched": aln.n_matched,
        "fraction_matched": round(fraction, 4),
        "n_data_genes": len(names),
        "n_data_genes_unmatched": int(unmatched_idx.size),
        "data_id_type": data_type,
        "model_id_type": model_type,
        "low_coverage": bool(fraction < low_threshold),
        "threshold": low_threshold,
        "min_coverage": minimum,
        "n_ids_unmapped": int(n_unmapped) if ids_unmapped else 0,
        "status": "refused" if fraction < minimum else "low" if fraction < low_threshold or ids_unmapped else "good",
        "unmatched_examples": [names[i] for i in unmatched_idx[:5]],
        # the model's genes the data lack, in the model's order: what a refusal names (the data's extra genes
        # are ignored and say nothing of what is missing)
        "missing_examples": list(aln.missing[:5]),
        # share of the data's genes given the model's kind of identifier (annotate_gene_ids), where the kinds differ
        "fraction_ids_mapped": (round(mapped["n_mapped"] / max(mapped["n_genes"], 1), 4) if mapped else None),
        **({"symbol_column": column} if column else {}),
    }
    return report, names, unmatched_idx


def coverage_refusal(adata_or_names, model_genes: Sequence[str], *, min_coverage: float | None = None,
                     model_name: str | None = None, also: str | None = None) -> InputError | None:
    """The error that refuses a prediction with too few of the model's genes in the data (fewer
    than ``min_coverage`` of them, default :func:`min_gene_coverage`), or ``None``: how many
    matched, examples of the model's genes missing from the data, the likely cause and what to
    do; the command line's hint names ``--min-gene-coverage``, the app's the server setting."""
    report, _names, _idx = _coverage_numbers(adata_or_names, model_genes, min_coverage=min_coverage)
    if report["status"] != "refused":
        return None
    examples = report["missing_examples"]
    n_missing = report["n_model_genes"] - report["n_matched"]
    cause = _coverage_cause(report)
    if also:  # another matrix of the same file has the genes: said first, and no generic "upload the full matrix"
        cause = f"{also} {cause.replace(SUBSET_ADVICE, '').strip()}".strip()
    model = f" with {model_name}" if model_name else ""
    message = (f"Too few of the model's genes are in the data to predict{model}: only {_matched_text(report)} are, and at "
               f"least {percent(report['min_coverage'])} are needed (the missing genes would be filled with 0, "
               "which the model never saw in training, so its calls would be meaningless)."
               + (f" The model's genes missing from the data ({n_missing:,}) include {', '.join(examples)}."
                  if examples else "")
               + f" {cause}")
    expert = "lower the minimum with --min-gene-coverage (e.g. --min-gene-coverage 0.01)"
    return DataNotScorable(cli_words(message), f"If you are sure the calls mean something anyway, {expert}.",
                      app_message=message,
                      app_hint="Choose a model whose genes your data have, or upload data that fit this model. The "
                               f"minimum ({percent(report['min_coverage'])} of the model's genes) is this server's "
                               "setting: its administrator sets it with limits.min_gene_coverage in the configuration "
                               f"file (or SCATD_MIN_GENE_COVERAGE); an expert can {expert} on the command line.")


#: Value kinds (:func:`scatd_core.preprocess.detect_value_type`) of expression: a higher mean is a more expressed gene
EXPRESSION_KINDS = ("counts", "log_normalized", "tpm_like")


def values_are_centred(adata, block=None) -> bool:
    """Whether ``adata.X`` holds centred values (per-gene z-scores, batch-corrected or otherwise
    centred values), whose per-gene means do not rank genes by expression: judged so when the data
    were read (``uns['scatd_input']['value_type']`` ``zscored``, or ``unknown`` with negative
    values), else by :func:`scatd_core.preprocess.detect_value_type` of ``block`` (a sample of its
    rows). A few cells with negative values among log-normalised ones are not centred data."""
    report = adata.uns.get(_keys.INPUT_REPORT, {})
    kind, evidence = report.get("value_type"), report.get("value_type_evidence") or {}
    if kind is None:
        from scatd_core.preprocess import detect_value_type  # (it imports this module)

        found = detect_value_type(sample_rows(adata.X) if block is None else block)
        kind, evidence = found["kind"], found["evidence"]
    return kind == "zscored" or (kind not in EXPRESSION_KINDS and bool(evidence.get("has_negative")))


def _matched_text(r: dict) -> str:
    return f"{r['n_matched']:,} of the model's {r['n_model_genes']:,} genes ({percent(r['n_matched'] / max(r['n_model_genes'], 1))})"


#: The kinds of gene identifier (:func:`detect_id_type`) as a message names them ("Ensembl IDs", never "ensembl").
_ID_KIND_WORDS = {"ensembl": "Ensembl IDs", "symbol": "gene symbols", "mouse_symbol": "mouse gene symbols",
                  "mixed": "mixed identifiers (symbols and Ensembl IDs)", "unknown": "unrecognised gene names"}


def _coverage_cause(r: dict) -> str:
    """The likely cause of low coverage and what to do: mouse genes, identifiers of another kind
    (unmapped), names that are no identifiers, or a subset of the genes."""
    if r["data_id_type"] == "mouse_symbol":
        return ("The data has mouse gene symbols and the models are human: convert them to human orthologues "
                "(e.g. with BioMart) before uploading.")
    if r.get("n_ids_unmapped"):
        if r["model_id_type"] == "ensembl":
            return (f"{counted(r['n_ids_unmapped'], 'gene symbol')} of the data could not be mapped to Ensembl IDs, "
                    "which this model uses: " + MAP_IDS_HINT)
        return (f"{counted(r['n_ids_unmapped'], 'Ensembl ID')} of the data could not be mapped to "
                f"{'a symbol' if r['n_ids_unmapped'] == 1 else 'symbols'}, so the model's genes among them are "
                "missing. " + MAP_IDS_HINT)
    kinds = {r["data_id_type"], r["model_id_type"]}
    if r.get("fraction_ids_mapped") is not None and r["fraction_ids_mapped"] >= 0.5:
        return (f"The data's {_ID_KIND_WORDS.get(r['data_id_type'], r['data_id_type'])} were mapped to the "
                f"model's {_ID_KIND_WORDS.get(r['model_id_type'], r['model_id_type'])} "
                f"({percent(r['fraction_ids_mapped'])} of them), so identifiers are not the cause. " + SUBSET_ADVICE)
    if kinds == {"symbol", "ensembl"} or "mixed" in kinds:
        return (f"The data uses {_ID_KIND_WORDS.get(r['data_id_type'], r['data_id_type'])} and the model "
                f"{_ID_KIND_WORDS.get(r['model_id_type'], r['model_id_type'])}: map them (the "
                "file's own gene_ids/gene_symbols columns, the Geneformer dictionary, or a BioMart table with 'Gene "
                "stable ID' and 'Gene name').")
    if r["data_id_type"] == "unknown":
        return ("The data's gene names look like neither gene symbols nor Ensembl IDs: give the genes as human gene "
                "symbols (the var_names, or a column of them such as var['gene_symbols']).")
    if r.get("symbol_column"):
        return f"Gene symbols were taken from var['{r['symbol_column']}']. " + SUBSET_ADVICE
    return SUBSET_ADVICE


def _coverage_advice(r: dict) -> str:
    matched = _matched_text(r)
    taken = f" (gene symbols taken from var['{r['symbol_column']}'])" if r.get("symbol_column") else ""
    if r.get("status") == "refused":
        return (f"Too few genes to predict: only {matched} are in the data{taken}, below the minimum of "
                f"{percent(r['min_coverage'])}, so this model will not score these data. " + _coverage_cause(r))
    if r.get("status", "low" if r["low_coverage"] else "good") == "good":
        return f"Coverage is good: {matched} are in the data{taken}."
    if not r["low_coverage"]:  # enough genes, but a whole kind of identifier unmapped: some of the model's are among them
        return f"Coverage is incomplete: {matched} are in the data. " + _coverage_cause(r)
    return (f"Low gene coverage: only {matched} are in the data{taken}. The missing genes are filled with 0, which "
            "the model never saw in training, so predictions may be unreliable. " + _coverage_cause(r))


def coverage_warning(adata_or_names, model_genes: Sequence[str], *, also: str | None = None) -> str | None:
    """The prediction's warning on gene coverage, as the Model page's advice says it (``None`` when
    coverage is good): low coverage, or a whole kind of identifier left unmapped, with the cause.
    ``also``: another matrix of the same file has more of the genes
    (:func:`scatd_core.matrices.fuller_elsewhere`): said first, without the generic advice, as the
    refusal says it."""
    r, _names, _idx = _coverage_numbers(adata_or_names, model_genes, min_coverage=0.0)
    if r["status"] == "good":
        return None
    if not r["low_coverage"]:  # enough genes, but a whole kind of identifier unmapped
        return _coverage_advice(r)
    cause = _coverage_cause(r)
    if also:
        cause = f"{also} {cause.replace(SUBSET_ADVICE, '').strip()}".strip()
    return (f"Only {percent(r['n_matched'] / max(r['n_model_genes'], 1))} of the model's genes are in the data "
            f"({r['n_matched']:,} of {r['n_model_genes']:,}); predictions may be unreliable, as the missing genes are "
            "filled with 0, which the model never saw in training. " + cause)
