"""Read any common single-cell file into an AnnData of cells x genes, and say what was found.

:func:`read` takes a path, :func:`read_bytes` an upload; both accept the formats of
:data:`SUPPORTED_FORMATS`:

- ``.h5ad`` (opened backed, X left on disk, when large: :data:`BACKED_MIN_BYTES`,
  :data:`BACKED_MIN_CELLS`);
- 10x Genomics ``.h5`` (v2 and v3);
- a 10x folder (``matrix.mtx(.gz)`` + ``features.tsv(.gz)`` or ``genes.tsv`` +
  ``barcodes.tsv(.gz)``, any file prefix), given as the folder, its ``.mtx`` file, or a
  ``.zip`` / ``.tar.gz`` holding it (an archive may instead hold one other supported file);
- CSV / TSV / TXT tables, plain or gzipped: first column = identifiers, either orientation
  (detected from the names; ``orientation=`` overrides). Non-gene columns (text, or named
  like ``response``, ``label``, ``sample``, ``batch``, ``cell_type``...) go to ``obs``;
- ``.loom``;
- ``.npy``: a 2-D numeric array of cells x features (e.g. scFoundation or Geneformer
  embeddings), never unpickled.

Whatever goes wrong, only :class:`~scatd_core.errors.InputError` leaves these functions, with a
message saying what is wrong and a hint saying what to do.

Sets the following fields of the returned AnnData:

- ``adata.uns['scatd_input']``: the read report, a JSON-safe dict (format, file name,
  orientation and how it was decided, duplicated names made unique, label-like and group
  columns, gene identifier type, value type with its evidence, warnings);
- ``adata.obs['scatd_all_zero']``: cells with no expression at all (kept, never dropped);
- ``adata.var['scatd_original_name']`` / ``adata.obs['scatd_original_id']``: only when
  duplicated names had to be made unique (see :func:`scatd_core.genes.original_gene_names`).
"""

from __future__ import annotations

import csv
import gzip
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import warnings
import weakref
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

from scatd_core import genes, preprocess
from scatd_core.config import limits
from scatd_core.errors import InputError

#: File name endings accepted by :func:`read` / :func:`read_bytes` (a 10x folder is also accepted).
SUPPORTED_FORMATS = (".h5ad", ".h5", ".loom", ".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt", ".txt.gz",
                     ".mtx", ".mtx.gz", ".zip", ".tar.gz", ".tgz", ".tar", ".npy")
#: Last suffixes, for an upload widget that checks only the final extension.
UPLOAD_TYPES = ("h5ad", "h5", "loom", "csv", "tsv", "txt", "gz", "mtx", "zip", "tgz", "tar", "npy")

_FORMAT_OF_SUFFIX = {".h5ad": "hdf5", ".h5": "hdf5", ".hdf5": "hdf5", ".loom": "hdf5",
                     ".csv": "table", ".tsv": "table", ".txt": "table", ".csv.gz": "table",
                     ".tsv.gz": "table", ".txt.gz": "table", ".mtx": "mtx", ".mtx.gz": "mtx",
                     ".zip": "zip", ".tar.gz": "tar", ".tgz": "tar", ".tar": "tar", ".npy": "npy"}

ORIENTATIONS = ("auto", "cells_x_genes", "genes_x_cells")
#: An h5ad at least this large, or with at least :data:`BACKED_MIN_CELLS` cells, is opened
#: backed under ``backed="auto"``: its X (about the file's size in memory) stays on disk.
BACKED_MIN_BYTES = 1 << 30
BACKED_MIN_CELLS = 100_000
#: The fewest cells accepted: QC, value-type detection and every plot compare cells, and a
#: one-row table is usually a file read in the wrong orientation.
MIN_CELLS = 2
#: An archive may expand to at most this many times the upload size limit (zip-bomb guard).
ARCHIVE_EXPANSION = 4
#: Tables are parsed in chunks of about this many values (bounds the parser's memory).
TABLE_CHUNK_VALUES = 40_000_000

#: Column names (lower case) taken as per-cell labels / groups rather than genes.
LABEL_COLUMN_NAMES = frozenset({"response", "label", "labels", "condition", "resistance", "sensitivity",
                                "drug_response", "class", "status", "treatment", "target", "outcome"})
GROUP_COLUMN_NAMES = frozenset({"sample", "samples", "sample_id", "batch", "batch_id", "cell_type",
                                "celltype", "cluster", "clusters", "leiden", "louvain", "donor",
                                "patient", "orig.ident", "cell_line", "tissue", "time", "timepoint"})

REPORT_KEY = "scatd_input"
ZERO_CELL_KEY = "scatd_all_zero"

_FORMATS_HINT = "Supported: " + ", ".join(SUPPORTED_FORMATS) + ", or a 10x folder (matrix.mtx + features + barcodes)."
_NA_STRINGS = {"", "na", "nan", "n/a", "null", "none", "-", "?"}


@dataclass
class _Options:
    orientation: str
    max_bytes: int
    max_cells: int
    backed: object
    display_name: str
    report: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)


def read(path, *, orientation: str = "auto", max_bytes: int | None = None, max_cells: int | None = None,
         backed="auto") -> ad.AnnData:
    """Read a single-cell data file (or 10x folder) into an AnnData of cells x genes.

    Parameters
    ----------
    path
        File or 10x folder; see the module docstring for the formats.
    orientation
        ``"auto"`` (tables and h5ad: decided from the names, see the report),
        ``"cells_x_genes"`` or ``"genes_x_cells"`` (rows are genes). Ignored by 10x and loom
        files, whose layout is fixed.
    max_bytes, max_cells
        Limits; default :func:`scatd_core.config.limits`.
    backed
        ``"auto"``: h5ad files over :data:`BACKED_MIN_BYTES` or :data:`BACKED_MIN_CELLS` are
        opened read-only with X on disk (``adata.X[start:stop]`` reads a batch of rows);
        ``True`` / ``False`` force it. Other formats are always read into memory.

    Returns
    -------
    The AnnData, with the fields listed in the module docstring.

    Raises
    ------
    InputError
        For anything that makes the file unusable (and nothing else).
    """
    opts = _options(orientation, max_bytes, max_cells, backed, Path(path).name)
    return _read_guarded(Path(path), opts)


def read_bytes(data: bytes, filename: str, *, orientation: str = "auto", max_bytes: int | None = None,
               max_cells: int | None = None, backed="auto") -> ad.AnnData:
    """Read uploaded bytes; ``filename`` only tells the format and names the data in messages.

    The name is never used as a path: the bytes go to a fresh temporary file whose name is a
    fixed stem plus the recognised extension. Other parameters as :func:`read`. When the result
    is backed, the temporary file lives as long as the AnnData.
    """
    opts = _options(orientation, max_bytes, max_cells, backed, _display_name(filename))
    size = len(data)
    if size > opts.max_bytes:
        raise _too_large(opts.display_name, size, opts.max_bytes)
    suffix = _suffix(opts.display_name)
    if suffix is None:
        raise _unsupported(opts.display_name)
    tmpdir = Path(tempfile.mkdtemp(prefix="scatd-upload-"))
    try:
        path = tmpdir / f"upload{suffix}"
        try:
            path.write_bytes(data)
        except OSError as exc:
            raise InputError(f"Could not store the upload {opts.display_name} ({exc}).",
                             "The server may be out of disk space; tell its administrator.") from exc
        adata = _read_guarded(path, opts)
    except BaseException:
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    if adata.isbacked:
        weakref.finalize(adata, shutil.rmtree, tmpdir, True)
    else:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return adata


# --------------------------------------------------------------------------------------------
# Dispatch and guards
# --------------------------------------------------------------------------------------------

def _options(orientation, max_bytes, max_cells, backed, display_name) -> _Options:
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {ORIENTATIONS}, not {orientation!r}")
    if backed not in ("auto", True, False):
        raise ValueError(f"backed must be 'auto', True or False, not {backed!r}")
    lim = limits()
    return _Options(orientation=orientation, max_bytes=max_bytes or lim.max_upload_bytes,
                    max_cells=max_cells or lim.max_cells, backed=backed, display_name=display_name)


def _read_guarded(path: Path, opts: _Options) -> ad.AnnData:
    """Read and validate; turn every failure into an InputError naming the file."""
    try:
        with warnings.catch_warnings():
            # duplicated names are made unique and reported by _finish
            warnings.filterwarnings("ignore", message=".*names are not unique")
            return _finish(_read_any(path, opts), opts)
    except InputError:
        raise
    except MemoryError:
        raise InputError(f"Not enough memory to read {opts.display_name}.",
                         "Use an .h5ad file (read in batches from disk) or fewer cells.") from None
    except Exception as exc:  # the promise of this module: nothing but InputError escapes
        detail = f"{type(exc).__name__}: {exc}"[:300]
        raise InputError(f"Could not read {opts.display_name}: {detail}",
                         "The file may be truncated, corrupt, or not what its extension says. "
                         + _FORMATS_HINT) from exc


def _display_name(filename) -> str:
    """The last component of an uploaded name, printable characters only, at most 255."""
    name = re.split(r"[\\/]", str(filename or ""))[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()[:255]
    return name or "upload"


def _suffix(name: str) -> str | None:
    lower = name.lower()
    for ext in sorted(_FORMAT_OF_SUFFIX, key=len, reverse=True):
        if lower.endswith(ext):
            return ext
    return None


def _unsupported(name: str) -> InputError:
    return InputError(f"{name}: this file type is not supported.", _FORMATS_HINT)


def _too_large(name: str, size: int, limit: int) -> InputError:
    return InputError(f"{name} is {size / 2**20:,.0f} MB, over the limit of {limit / 2**20:,.0f} MB.",
                      "Subsample the cells first, or ask the administrator to raise SCATD_MAX_UPLOAD_MB.")


def _check_cells(n_cells: int, opts: _Options) -> None:
    if n_cells > opts.max_cells:
        raise InputError(f"{opts.display_name} has {n_cells:,} cells, over the limit of {opts.max_cells:,}.",
                         "Subsample the cells (e.g. scanpy.pp.subsample) or ask the administrator "
                         "to raise SCATD_MAX_CELLS.")
    if n_cells == 1:
        raise InputError(f"{opts.display_name} holds a single cell.",
                         f"At least {MIN_CELLS} cells are needed: QC and value-type detection compare "
                         "cells. A one-row table is often a file in the other orientation: try "
                         "orientation 'genes_x_cells'.")


def _read_any(path: Path, opts: _Options) -> ad.AnnData:
    name = opts.display_name
    if not path.exists():
        raise InputError(f"{name} was not found.", "Check the path.")
    if path.is_dir():
        opts.report["format"] = "10x_mtx"
        return _read_mtx(_choose_matrix(_data_files(path), name), opts)
    size = path.stat().st_size
    opts.report["file_bytes"] = size
    if size == 0:
        raise InputError(f"{name} is empty (0 bytes).", "Upload the file again; the transfer may have failed.")
    if size > opts.max_bytes:
        raise _too_large(name, size, opts.max_bytes)
    suffix = _suffix(path.name)
    if suffix is None:
        raise _unsupported(name)
    kind = _FORMAT_OF_SUFFIX[suffix]
    _check_signature(path, kind, suffix, name)
    if kind == "hdf5":
        return _read_hdf5(path, opts)
    if kind == "table":
        return _read_table(path, opts)
    if kind == "mtx":
        opts.report["format"] = "10x_mtx"
        return _read_mtx(path, opts)
    if kind == "npy":
        return _read_npy(path, opts)
    return _read_archive(path, opts, kind)


_SIGNATURES = {"zip": (b"PK\x03\x04", b"PK\x05\x06"), "npy": (b"\x93NUMPY",), "gz": (b"\x1f\x8b",)}


def _check_signature(path: Path, kind: str, suffix: str, name: str) -> None:
    """Refuse a file whose first bytes contradict its extension, before any parser sees it."""
    with path.open("rb") as fh:
        head = fh.read(8192)
    expected = {"zip": "zip", "npy": "npy"}.get(kind)
    if suffix.endswith("gz"):
        expected = "gz"
    if expected and not head.startswith(_SIGNATURES[expected]):
        what = {"zip": "a zip archive", "npy": "a NumPy .npy file", "gz": "gzip-compressed"}[expected]
        raise InputError(f"{name} is not {what}, although its name says so.",
                         "The file is corrupt or has the wrong extension; export it again.")
    if kind == "hdf5" and not h5py.is_hdf5(path):
        raise InputError(f"{name} is not an HDF5 file, so it cannot be {suffix}.",
                         "The file is truncated, corrupt, or has the wrong extension; export it again.")
    if kind in ("table", "mtx") and expected is None and b"\x00" in head:
        raise InputError(f"{name} is binary, not a text table.",
                         "Check the file: it may be another format renamed, or corrupt. " + _FORMATS_HINT)


# --------------------------------------------------------------------------------------------
# HDF5: h5ad, 10x .h5, loom
# --------------------------------------------------------------------------------------------

def _open_h5(path: Path, name: str) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{name} could not be opened as HDF5 ({exc}); it is probably truncated or corrupt.",
                         "Upload it again, or export it again (e.g. adata.write_h5ad).") from None


def _hdf5_flavour(f: h5py.File) -> str | None:
    if isinstance(f.get("matrix"), h5py.Group):
        return "10x_h5"
    if isinstance(f.get("matrix"), h5py.Dataset) and "row_attrs" in f:
        return "loom"
    if "X" in f or ("obs" in f and "var" in f):
        return "h5ad"
    if any(isinstance(f[k], h5py.Group) and "barcodes" in f[k] and "data" in f[k] for k in f):
        return "10x_h5"  # v2: one group per genome
    return None


#: Seconds allowed for walking an HDF5 file's structure (a sound file takes well under one).
HDF5_CHECK_SECONDS = 30
_HDF5_WALK = """
import sys, h5py
def visit(name, obj):
    list(obj.attrs.items())
    if isinstance(obj, h5py.Dataset):
        obj.shape, obj.dtype, obj.chunks
with h5py.File(sys.argv[1], "r") as f:
    list(f.attrs.items())
    f.visititems(visit)
"""


def _check_hdf5_structure(path: Path, name: str) -> None:
    """Walk every group, dataset header and attribute of an HDF5 file in a child process.

    Damaged HDF5 metadata can send the HDF5 C library into an endless loop (or a crash) that no
    Python code can interrupt; found by feeding mutated files to the readers. A child process
    with a time limit turns that into an InputError instead of a hung or dead server.
    """
    hint = "The file is damaged; export it again (e.g. adata.write_h5ad) and upload the new copy."
    try:
        proc = subprocess.run([sys.executable, "-c", _HDF5_WALK, str(path)], capture_output=True,
                              text=True, timeout=HDF5_CHECK_SECONDS)
    except subprocess.TimeoutExpired:
        raise InputError(f"{name} is corrupt: its HDF5 structure could not be read.", hint) from None
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1][:200]
        raise InputError(f"{name} is a damaged HDF5 file ({detail}).", hint)


def _read_hdf5(path: Path, opts: _Options) -> ad.AnnData:
    """h5ad, 10x .h5 and loom are all HDF5: the file's structure decides, not its extension."""
    _check_hdf5_structure(path, opts.display_name)
    with _open_h5(path, opts.display_name) as f:
        flavour = _hdf5_flavour(f)
    if flavour is None:
        raise InputError(f"{opts.display_name} is an HDF5 file but neither an AnnData .h5ad, a 10x "
                         "Genomics .h5 nor a loom file.", _FORMATS_HINT)
    opts.report["format"] = flavour
    if flavour == "10x_h5":
        return _read_10x_h5(path, opts)
    if flavour == "loom":
        return _read_loom(path, opts)
    return _read_h5ad(path, opts)


def _attr_str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _read_h5ad(path: Path, opts: _Options) -> ad.AnnData:
    with _open_h5(path, opts.display_name) as f:
        if "X" not in f:
            raise InputError(f"{opts.display_name} has no expression matrix X.",
                             "Store the expression in X before saving (e.g. adata.X = adata.layers['counts']).")
        X = f["X"]
        if isinstance(X, h5py.Group):
            shape = tuple(int(s) for s in X.attrs["shape"])
            encoding = _attr_str(X.attrs.get("encoding-type", "csr_matrix"))
        else:
            shape, encoding = X.shape, "array"
    if len(shape) != 2:
        raise InputError(f"X in {opts.display_name} has {len(shape)} dimensions; a cells x genes matrix is needed.",
                         "Export a 2-D expression matrix.")
    _check_cells(shape[0], opts)
    large = path.stat().st_size >= BACKED_MIN_BYTES or shape[0] >= BACKED_MIN_CELLS
    backed = opts.backed is True or (opts.backed == "auto" and large)
    if backed and encoding == "csc_matrix":
        backed = False  # rows of a column-compressed matrix cannot be read in batches
        opts.warnings.append("X is stored column-wise (CSC), so it was loaded into memory; save it as "
                             "CSR (adata.X = adata.X.tocsr()) to let large files stay on disk.")
    adata = ad.read_h5ad(path, backed="r" if backed else None)
    opts.report["backed"] = bool(backed)
    opts.report["stored_matrices"] = {"X": encoding, "raw": adata.raw is not None,
                                      "layers": [str(k) for k in adata.layers.keys()]}
    decided, how = _decide_orientation(adata.obs_names, adata.var_names, [])
    if opts.orientation == "genes_x_cells" or (opts.orientation == "auto" and decided == "genes_x_cells"):
        if adata.isbacked:
            adata = adata.to_memory()
            opts.report["backed"] = False
        adata = adata.T.copy()
        opts.warnings.append("The file was stored genes x cells and has been transposed.")
        opts.report.update(orientation="genes_x_cells",
                           orientation_reason="given by the user" if opts.orientation != "auto" else how)
    return adata


def _decode(values) -> list[str]:
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]


def _read_10x_h5(path: Path, opts: _Options) -> ad.AnnData:
    with _open_h5(path, opts.display_name) as f:
        if "matrix" in f:
            g, version = f["matrix"], "v3"
            feats = g["features"]
            ids, names = _decode(feats["id"][()]), _decode(feats["name"][()])
            types = _decode(feats["feature_type"][()]) if "feature_type" in feats else None
        else:
            genomes = [k for k in f if isinstance(f[k], h5py.Group) and "barcodes" in f[k]]
            if len(genomes) > 1:
                raise InputError(f"{opts.display_name} holds several genomes ({', '.join(genomes)}).",
                                 "Split it per genome with Cell Ranger, or convert the human part to h5ad.")
            g, version = f[genomes[0]], "v2"
            ids, names, types = _decode(g["genes"][()]), _decode(g["gene_names"][()]), None
        n_features, n_cells = (int(s) for s in g["shape"][()])
        _check_cells(n_cells, opts)
        # 10x stores genes x cells column-compressed, which is cells x genes row-compressed
        X = sp.csr_matrix((g["data"][()].astype(np.float32), g["indices"][()], g["indptr"][()]),
                          shape=(n_cells, n_features))
        barcodes = _decode(g["barcodes"][()])
    X.check_format(full_check=True)  # indices from a file must be valid before any C code uses them
    var = pd.DataFrame({"gene_ids": ids}, index=[n or i for n, i in zip(names, ids)])
    if types is not None:
        var["feature_types"] = types
    opts.report["10x_version"] = version
    adata = ad.AnnData(X=X, obs=pd.DataFrame(index=barcodes), var=var)
    _ignore_orientation(opts, "10x")
    return _keep_gene_expression(adata, opts)


def _keep_gene_expression(adata: ad.AnnData, opts: _Options) -> ad.AnnData:
    """Drop antibody-capture / CRISPR features of a 10x multi-modal file, and say so."""
    if "feature_types" not in adata.var:
        return adata
    is_gex = (adata.var["feature_types"] == "Gene Expression").to_numpy()
    if is_gex.all() or not is_gex.any():
        return adata
    dropped = adata.var["feature_types"][~is_gex].value_counts()
    opts.report["features_dropped"] = {str(k): int(v) for k, v in dropped.items()}
    opts.warnings.append(f"{int((~is_gex).sum())} non-gene features ("
                         + ", ".join(f"{k}: {v}" for k, v in dropped.items()) + ") were set aside; "
                         "only Gene Expression is used.")
    return adata[:, is_gex].copy()


def _ignore_orientation(opts: _Options, fmt: str) -> None:
    opts.report.update(orientation="cells_x_genes", orientation_reason=f"fixed by the {fmt} format")
    if opts.orientation == "genes_x_cells":
        opts.warnings.append(f"orientation='genes_x_cells' was ignored: the {fmt} format fixes the layout.")


_LOOM_GENE_ATTRS = ("Gene", "var_names", "gene_name", "Gene_name", "GeneName", "gene_names", "Accession", "gene_ids")
_LOOM_CELL_ATTRS = ("CellID", "obs_names", "cell_id", "CellId", "cell_names", "barcode", "Barcode", "barcodes")


def _loom_name_attr(attrs, known: tuple[str, ...], n: int) -> str | None:
    """The attribute naming genes (or cells): a conventional name, else the first unique text one."""
    if attrs is None:
        return None
    hit = next((a for a in known if a in attrs), None)
    if hit is not None:
        return hit
    for key, values in attrs.items():
        if values.dtype.kind in "SOU" and values.shape == (n,) and len(set(values[()])) == n:
            return key
    return None


def _loom_axis(attrs, n: int, name_attr: str | None) -> pd.DataFrame:
    """The 1-D attributes of one loom axis as a frame indexed by the naming attribute."""
    columns = {}
    for key, dataset in (attrs.items() if attrs is not None else ()):
        if dataset.shape == (n,):
            values = dataset[()]
            columns[key] = _decode(values) if values.dtype.kind in "SO" else values
    index = columns.pop(name_attr) if name_attr else [str(i) for i in range(n)]
    return pd.DataFrame(columns, index=pd.Index(index, dtype=object))


def _read_loom(path: Path, opts: _Options) -> ad.AnnData:
    """Read a loom file with h5py: /matrix is genes x cells, dense, stored in chunks."""
    with _open_h5(path, opts.display_name) as f:
        matrix = f["matrix"]
        n_genes, n_cells = matrix.shape
        _check_cells(n_cells, opts)
        gene_attr = _loom_name_attr(f.get("row_attrs"), _LOOM_GENE_ATTRS, n_genes)
        cell_attr = _loom_name_attr(f.get("col_attrs"), _LOOM_CELL_ATTRS, n_cells)
        var = _loom_axis(f.get("row_attrs"), n_genes, gene_attr)
        obs = _loom_axis(f.get("col_attrs"), n_cells, cell_attr)
        step = max(1, (1 << 25) // max(n_genes, 1))  # ~32M values in memory at a time
        X = sp.vstack([sp.csr_matrix(np.asarray(matrix[:, start:start + step], dtype=np.float32).T)
                       for start in range(0, n_cells, step)], format="csr")
        opts.report["stored_matrices"] = {"matrix": "dense", "layers": [str(k) for k in f.get("layers", {})]}
    if gene_attr is None:
        opts.warnings.append("The loom file names no genes (no 'Gene' row attribute); genes are numbered.")
    _ignore_orientation(opts, "loom")
    return ad.AnnData(X=X, obs=obs, var=var)


# --------------------------------------------------------------------------------------------
# 10x matrix market folders and archives
# --------------------------------------------------------------------------------------------

def _data_files(root: Path) -> list[Path]:
    """Files under ``root``, without hidden files and macOS archive metadata."""
    return sorted(p for p in root.rglob("*") if p.is_file()
                  and not any(part.startswith(".") or part == "__MACOSX" for part in p.relative_to(root).parts))


def _choose_matrix(files: list[Path], name: str) -> Path:
    mtx = [p for p in files if p.name.lower().endswith((".mtx", ".mtx.gz"))]
    if len(mtx) > 1:  # several matrices: prefer 10x's names
        mtx = [p for p in mtx if "matrix.mtx" in p.name.lower()] or mtx
    if not mtx:
        raise InputError(f"{name} holds no matrix.mtx(.gz).",
                         "A 10x folder holds matrix.mtx(.gz), features.tsv(.gz) (or genes.tsv) and barcodes.tsv(.gz).")
    if len(mtx) > 1:
        raise InputError(f"{name} holds several matrices ({', '.join(p.name for p in mtx[:4])}).",
                         "Give one 10x folder (e.g. filtered_feature_bc_matrix) at a time.")
    return mtx[0]


def _companion(folder: Path, prefix: str, stems: tuple[str, ...]) -> Path | None:
    by_name = {p.name.lower(): p for p in folder.iterdir() if p.is_file()}
    for stem in stems:
        for ending in ("", ".gz"):
            hit = by_name.get(f"{prefix}{stem}{ending}".lower())
            if hit is not None:
                return hit
    return None


def _read_text_table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", header=None, dtype=str, keep_default_na=False,
                       quoting=csv.QUOTE_NONE, compression="gzip" if path.name.lower().endswith(".gz") else None)


def _mtx_shape(path: Path, name: str) -> tuple[int, int]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="latin-1") as fh:
        banner = fh.readline()
        if not banner.startswith("%%MatrixMarket"):
            raise InputError(f"{name}: {path.name} is not a Matrix Market file (no %%MatrixMarket line).",
                             "Export the matrix again with Cell Ranger or scipy.io.mmwrite.")
        line = fh.readline()
        while line.startswith("%"):
            line = fh.readline()
    fields = line.split()
    if len(fields) < 2 or not all(x.isdigit() for x in fields):
        raise InputError(f"{name}: {path.name} has no valid size line.", "The matrix file is truncated or corrupt.")
    return int(fields[0]), int(fields[1])


def _read_mtx(matrix: Path, opts: _Options) -> ad.AnnData:
    name, folder = opts.display_name, matrix.parent
    lower = matrix.name.lower()
    prefix = matrix.name[:lower.index("matrix.mtx")] if "matrix.mtx" in lower else ""
    barcodes_file = _companion(folder, prefix, ("barcodes.tsv", "barcodes.txt"))
    features_file = _companion(folder, prefix, ("features.tsv", "genes.tsv", "features.txt", "genes.txt"))
    if barcodes_file is None or features_file is None:
        missing = " and ".join(n for n, p in (("barcodes", barcodes_file), ("features/genes", features_file)) if p is None)
        raise InputError(f"{name}: {matrix.name} has no {missing} file beside it.",
                         f"A 10x folder holds {prefix}matrix.mtx(.gz), {prefix}features.tsv(.gz) (or "
                         f"genes.tsv) and {prefix}barcodes.tsv(.gz), with the same prefix; upload the "
                         "whole folder as a .zip or .tar.gz.")
    total = sum(p.stat().st_size for p in (matrix, barcodes_file, features_file))
    if total > opts.max_bytes:
        raise _too_large(name, total, opts.max_bytes)
    n_rows, n_cols = _mtx_shape(matrix, name)
    barcodes = _read_text_table(barcodes_file).iloc[:, 0].tolist()
    features = _read_text_table(features_file)
    # a header line ("gene_id  gene_name") shows up as one row too many
    dims = (n_rows, n_cols)
    if len(features) not in dims and len(features) - 1 in dims:
        features = features.iloc[1:]
    if len(barcodes) not in dims and len(barcodes) - 1 in dims:
        barcodes = barcodes[1:]
    if (n_rows, n_cols) == (len(features), len(barcodes)):
        genes_by_cells = True
    elif (n_rows, n_cols) == (len(barcodes), len(features)):
        genes_by_cells = False
    else:
        raise InputError(f"{name}: the matrix is {n_rows:,} x {n_cols:,} but there are {len(features):,} "
                         f"features and {len(barcodes):,} barcodes.",
                         "The three files do not belong together; take them from the same 10x folder.")
    _check_cells(len(barcodes), opts)
    m = scipy.io.mmread(str(matrix))
    X = sp.csr_matrix(m.T if genes_by_cells else m, dtype=np.float32)
    ids = features.iloc[:, 0].astype(str).tolist()
    names = features.iloc[:, 1].astype(str).tolist() if features.shape[1] > 1 else ids
    var = pd.DataFrame(index=[n or i for n, i in zip(names, ids)])
    if features.shape[1] > 1:
        var["gene_ids"] = ids
    if features.shape[1] > 2:
        var["feature_types"] = features.iloc[:, 2].astype(str).tolist()
    opts.report.update(orientation="cells_x_genes",
                       orientation_reason="10x layout (genes x cells), matched by the feature and barcode counts"
                       if genes_by_cells else "the matrix is cells x genes (matched by the feature and barcode counts)")
    adata = ad.AnnData(X=X, obs=pd.DataFrame(index=[str(b) for b in barcodes]), var=var)
    return _keep_gene_expression(adata, opts)


def _safe_member(name: str) -> Path | None:
    """Relative path of an archive member, None to skip it; refuses absolute and '..' paths."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or re.match(r"^[A-Za-z]:", name):
        raise InputError(f"The archive holds an unsafe path ({name!r}), so it was refused.",
                         "Create the archive from the data folder itself (e.g. zip -r data.zip filtered_feature_bc_matrix).")
    if any(part.startswith(".") or part == "__MACOSX" for part in p.parts) or not p.parts:
        return None
    return Path(*p.parts)


def _extract(archive: Path, dest: Path, kind: str, cap: int, name: str) -> None:
    """Extract regular files only (no links, devices), stopping past ``cap`` bytes."""
    written = 0

    def copy(member_name: str, src) -> None:
        nonlocal written
        rel = _safe_member(member_name)
        if rel is None:
            return
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as out:
            while chunk := src.read(1 << 20):
                written += len(chunk)
                if written > cap:
                    raise InputError(f"{name} expands to more than {cap / 2**20:,.0f} MB.",
                                     "Upload the data file itself, or a smaller archive.")
                out.write(chunk)

    if kind == "zip":
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    with zf.open(info) as src:
                        copy(info.filename, src)
    else:
        with tarfile.open(archive, "r:*") as tf:
            for member in tf:
                if member.isfile():
                    copy(member.name, tf.extractfile(member))


def _read_archive(path: Path, opts: _Options, kind: str) -> ad.AnnData:
    name = opts.display_name
    with tempfile.TemporaryDirectory(prefix="scatd-archive-") as tmp:
        root = Path(tmp)
        _extract(path, root, kind, opts.max_bytes * ARCHIVE_EXPANSION, name)
        files = _data_files(root)
        if any(p.name.lower().endswith((".mtx", ".mtx.gz")) for p in files):
            target = _choose_matrix(files, name)
        else:
            data = [p for p in files if _FORMAT_OF_SUFFIX.get(_suffix(p.name) or "") in ("hdf5", "table", "npy")]
            if len(data) != 1:
                listed = ", ".join(p.name for p in files[:5]) or "nothing"
                raise InputError(f"{name} holds {'no' if not data else 'several'} data files (found: {listed}).",
                                 "An archive must hold one 10x folder or one data file. " + _FORMATS_HINT)
            target = data[0]
        # everything is read into memory: the extracted files vanish with this folder
        inner = replace(opts, backed=False, display_name=f"{name}:{target.relative_to(root)}")
        adata = _read_any(target, inner)
    opts.report["archive"] = kind
    return adata


# --------------------------------------------------------------------------------------------
# npy
# --------------------------------------------------------------------------------------------

def _read_npy(path: Path, opts: _Options) -> ad.AnnData:
    name = opts.display_name
    opts.report["format"] = "npy"
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r")
    except ValueError as exc:
        raise InputError(f"{name} is not a plain numeric .npy array ({exc}).",
                         "Save a 2-D float array with numpy.save (object arrays are never loaded).") from None
    if arr.ndim != 2:
        raise InputError(f"{name} holds a {arr.ndim}-D array; a 2-D array of cells x features is needed.",
                         "Save the matrix with shape (n_cells, n_features).")
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{name} holds {arr.dtype} values, not numbers.", "Save a float array.")
    transpose = opts.orientation == "genes_x_cells"
    _check_cells(arr.shape[1] if transpose else arr.shape[0], opts)
    X = np.array(arr.T if transpose else arr, dtype=np.float32, order="C")
    opts.report.update(orientation="genes_x_cells" if transpose else "cells_x_genes",
                       orientation_reason="given by the user" if transpose else ".npy arrays are cells x features")
    return ad.AnnData(X=X, obs=pd.DataFrame(index=[str(i) for i in range(X.shape[0])]),
                      var=pd.DataFrame(index=[f"feature_{j}" for j in range(X.shape[1])]))


# --------------------------------------------------------------------------------------------
# CSV / TSV
# --------------------------------------------------------------------------------------------

_SEPARATOR_NAMES = {",": "comma", "\t": "tab", ";": "semicolon", r"\s+": "whitespace"}


def _first_lines(path: Path, gz: bool, n: int = 2, cap: int = 64 << 20) -> bytes:
    """The first ``n`` lines (decompressed), reading at most ``cap`` bytes."""
    opener = gzip.open if gz else open
    buf = b""
    with opener(path, "rb") as fh:
        while buf.count(b"\n") < n and len(buf) < cap:
            chunk = fh.read(1 << 20)
            if not chunk:
                break
            buf += chunk
    return buf


def _sniff_separator(line: str) -> str:
    counts = {sep: line.count(sep) for sep in ("\t", ",", ";")}
    best = max(counts, key=counts.get)
    return best if counts[best] else r"\s+"


def _split(line: str, sep: str) -> list[str]:
    if sep == r"\s+":
        return line.split()
    return next(csv.reader([line], delimiter=sep))


def _column_kind(label: str) -> str | None:
    key = re.sub(r"[\s-]+", "_", label.strip().lower())
    if key in LABEL_COLUMN_NAMES:
        return "label"
    if key in GROUP_COLUMN_NAMES:
        return "group"
    return None


def _numeric_fraction(values: pd.Series) -> float:
    values = values.dropna().astype(str)
    present = values[~values.str.strip().str.lower().isin(_NA_STRINGS)]
    if present.empty:
        return 1.0
    return float(pd.to_numeric(present, errors="coerce").notna().mean())


def _decide_orientation(row_names, col_names, per_cell_columns: list[str]) -> tuple[str, str]:
    """Which side holds the cells, from the names alone; returns (orientation, reason)."""
    if per_cell_columns:
        return "cells_x_genes", f"the header holds per-cell fields ({', '.join(per_cell_columns[:3])})"
    r, c = genes.id_type_evidence(row_names), genes.id_type_evidence(col_names)
    if not r["n"] or not c["n"]:
        return "cells_x_genes", "assumed (the AnnData convention)"
    for ev in (r, c):
        ev["symbol"] = ev["human_symbol"] + ev["mouse_symbol"]
    rules = (("ensembl", 0.5, 0.1, True, "Ensembl gene IDs"), ("barcode", 0.5, 0.1, False, "cell barcodes"),
             ("symbol", 0.7, 0.3, True, "gene symbols"),
             ("top_shape_fraction", 0.8, 0.5, False, "identically patterned cell names"))
    for metric, high, low, gene_like, what in rules:
        for side, this, other in (("columns", c, r), ("rows", r, c)):
            if this[metric] >= high and other[metric] < low:
                genes_on_columns = (side == "columns") == gene_like
                return ("cells_x_genes" if genes_on_columns else "genes_x_cells"), f"the {side} hold {what}"
    return "cells_x_genes", ("undecided from the names; assumed cells x genes (the AnnData convention). "
                             "Choose 'genes x cells' if that is wrong")


def _read_table(path: Path, opts: _Options) -> ad.AnnData:
    name = opts.display_name
    gz = path.name.lower().endswith(".gz")
    head = _first_lines(path, gz)
    if b"\x00" in head:
        raise InputError(f"{name} is binary, not a text table.", "Check the file. " + _FORMATS_HINT)
    try:
        text, encoding = head.decode("utf-8-sig"), "utf-8-sig"
    except UnicodeDecodeError as exc:
        # a cut at the end of the buffer can split a character; anything earlier is not UTF-8
        encoding = "utf-8-sig" if exc.start >= len(head) - 4 else "latin-1"
        text = head.decode(encoding, errors="ignore")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise InputError(f"{name} holds no text.", "Upload the table again; it is empty.")
    if head.count(b"\n") == 0 and len(head) >= 64 << 20:
        raise InputError(f"{name} has no line break in its first 64 MB; it is not a table.", _FORMATS_HINT)
    sep = _sniff_separator(lines[0])
    header = _split(lines[0], sep)
    if len(lines) < 2:
        raise InputError(f"{name} has a header row but no data rows.", "Export the table again with its data.")
    n_fields = len(_split(lines[1], sep))
    if len(header) == n_fields - 1:  # R's write.table leaves out the row-name header
        header = [""] + header
    if n_fields < 2:
        raise InputError(f"{name} has a single column (separator not recognised).",
                         "Use commas or tabs between fields, with cell or gene names in the first column.")
    labels = [str(x) for x in header[1:]]
    # pandas' own type inference, in chunks of rows: dtype maps or a preview pass cost
    # several times more on wide (20k-column) tables, and chunks bound the memory to one chunk
    # of parsed text plus the float32 result
    reader = pd.read_csv(path, sep=sep, header=None, skiprows=1, index_col=0, encoding=encoding,
                         compression="gzip" if gz else None, engine="c", dtype={0: str}, low_memory=False,
                         chunksize=max(1, TABLE_CHUNK_VALUES // len(labels)))
    blocks, ids, metas, layout = [], [], [], None
    try:
        for chunk in reader:
            if layout is None:
                layout = _table_layout(chunk, labels, opts)
            orientation, reason, meta, data_pos = layout
            for p in data_pos:
                if chunk.dtypes[p].kind not in "iuf":
                    raise _non_numeric(chunk[p], labels[p - 1], name)
            block = chunk[data_pos].to_numpy(dtype=np.float32)
            # mostly zeros (a counts table, judged on the first chunk): keep it sparse
            sparse = sp.issparse(blocks[0]) if blocks else np.count_nonzero(block) <= block.size / 2
            if sparse:
                block = sp.csr_matrix(block)
            blocks.append(block)
            ids.extend(chunk.index.astype(str))
            metas.append(pd.DataFrame({labels[p - 1]: _tidy_column(chunk[p]) for p in sorted(meta)}))
    except pd.errors.ParserError as exc:
        raise _malformed(name, exc) from None
    X = sp.vstack(blocks, format="csr") if sp.issparse(blocks[0]) else np.vstack(blocks)
    meta_frame = pd.concat(metas, ignore_index=True).set_axis(ids)
    data_labels = [labels[p - 1] for p in data_pos]
    if orientation == "cells_x_genes":
        adata = ad.AnnData(X=X, obs=meta_frame, var=pd.DataFrame(index=data_labels))
    else:
        X = X.T.tocsr() if sp.issparse(X) else np.ascontiguousarray(X.T)
        adata = ad.AnnData(X=X, obs=pd.DataFrame(index=data_labels), var=meta_frame)
    opts.report.update(format="tsv" if sep == "\t" else "csv", separator=_SEPARATOR_NAMES[sep], compressed=gz,
                       orientation=orientation, orientation_reason=reason,
                       metadata_columns=[labels[p - 1] for p in sorted(meta)])
    return adata


def _table_layout(chunk: pd.DataFrame, labels: list[str], opts: _Options):
    """From the first chunk: orientation (and why), metadata columns and data columns.

    Columns are numbered from 1 (0 is the identifiers); ``labels[p - 1]`` names column ``p``.
    """
    name = opts.display_name
    if chunk.shape[1] != len(labels):
        raise InputError(f"{name}: the header has {len(labels) + 1} fields but the rows have {chunk.shape[1] + 1}.",
                         "Every row must have as many fields as the header; check the separator and quoting.")
    non_numeric = set()
    for p, dtype in chunk.dtypes.items():  # not chunk[p]: column access costs seconds on wide tables
        if dtype.kind in "iuf":
            continue
        if dtype.kind == "O" and _numeric_fraction(chunk[p]) >= 0.5:
            raise _non_numeric(chunk[p], labels[p - 1], name)  # a number column with stray text
        non_numeric.add(p)  # text (or true/false): information about the row, not expression
    named = {p for p in chunk.columns if _column_kind(labels[p - 1])}
    if opts.orientation != "auto":
        orientation, reason = opts.orientation, "given by the user"
    else:
        candidates = [labels[p - 1] for p in chunk.columns if p not in non_numeric and p not in named]
        orientation, reason = _decide_orientation(chunk.index.astype(str), candidates,
                                                  [labels[p - 1] for p in sorted(named)])
    meta = non_numeric | (named if orientation == "cells_x_genes" else set())
    data_pos = [p for p in chunk.columns if p not in meta]
    if not data_pos:
        raise InputError(f"{name} has no numeric columns: every column holds text.",
                         "The table needs one column per gene (or per cell) of numbers.")
    return orientation, reason, meta, data_pos


def _tidy_column(values: pd.Series) -> np.ndarray:
    """A metadata column: numbers when all of it parses (0/1 labels stay integers), else text."""
    if values.dtype.kind == "b":
        return values.to_numpy()
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.notna().sum() == values.notna().sum():
        if numbers.notna().all() and (numbers == np.round(numbers)).all():
            return numbers.to_numpy(dtype=np.int64)
        return numbers.to_numpy(dtype=np.float64)
    return values.to_numpy(dtype=object)


def _malformed(name: str, exc: Exception) -> InputError:
    return InputError(f"{name} is not a well-formed table: {str(exc).strip()[:200]}",
                      "Every row must have as many fields as the header; check the separator and quoting.")


def _non_numeric(values: pd.Series, label: str, name: str) -> InputError:
    present = values.dropna()
    bad = present[pd.to_numeric(present, errors="coerce").isna()]
    return InputError(f"{name}: column '{label}' holds non-numeric values (e.g. {bad.iloc[0]!r} in row "
                      f"'{bad.index[0]}').",
                      "Expression values must be numbers; fix or remove that column, or write missing "
                      "values as NA.")


# --------------------------------------------------------------------------------------------
# Validation and the report
# --------------------------------------------------------------------------------------------

def _scan(X) -> tuple[np.ndarray, int, int, int | None]:
    """One pass over the rows: non-zeros per cell, NaN and inf counts, first bad row."""
    n_cells = X.shape[0]
    nonzero = np.zeros(n_cells, dtype=np.int64)
    n_nan = n_inf = 0
    first_bad = None
    for start, stop, block in preprocess.row_batches(X):
        if sp.issparse(block):
            block.check_format(full_check=True)  # invalid indices would crash later C code
            values = block.data
            rows = np.repeat(np.arange(stop - start), np.diff(block.indptr))
            nonzero[start:stop] = np.bincount(rows[values != 0], minlength=stop - start)
        else:
            values = block
            nonzero[start:stop] = np.count_nonzero(block, axis=1)
        if values.dtype.kind == "f":
            nan, inf = np.isnan(values), np.isinf(values)
            n_nan, n_inf = n_nan + int(nan.sum()), n_inf + int(inf.sum())
            if first_bad is None and (nan.any() or inf.any()):
                flat = int(np.flatnonzero((nan | inf).ravel())[0])
                row = (np.searchsorted(block.indptr, flat, side="right") - 1) if sp.issparse(block) \
                    else flat // block.shape[1]
                first_bad = start + int(row)
    return nonzero, n_nan, n_inf, first_bad


def _n_duplicated(index: pd.Index) -> int:
    return int(index.duplicated().sum())


def _per_cell_columns(obs: pd.DataFrame) -> tuple[dict, list[str]]:
    labels, groups = {}, []
    for col in obs.columns:
        kind = _column_kind(str(col))
        if kind == "group":
            groups.append(str(col))
        elif kind == "label":
            values = obs[col]
            counts = values.value_counts(dropna=True)
            entry = {"n_missing": int(values.isna().sum()), "n_values": int(counts.size),
                     "binary": bool(counts.size == 2)}
            if counts.size <= 20:
                entry["values"] = {str(k): int(v) for k, v in counts.items()}
            labels[str(col)] = entry
    return labels, groups


def _finish(adata: ad.AnnData, opts: _Options) -> ad.AnnData:
    name, report = opts.display_name, opts.report
    n_cells, n_genes = adata.shape
    if n_cells == 0:
        raise InputError(f"{name} holds no cells.", "Check that the right file was exported.")
    if n_genes == 0:
        raise InputError(f"{name} holds no genes (no expression columns).", "Check that the right file was exported.")
    _check_cells(n_cells, opts)
    dtype = np.dtype(adata.X.dtype)
    if dtype.kind not in "biuf":
        raise InputError(f"The expression values in {name} are {dtype}, not real numbers.", "Export numeric expression.")

    adata.obs_names = pd.Index([str(x) for x in adata.obs_names])
    adata.var_names = pd.Index([str(x) for x in adata.var_names])
    dup_genes, dup_cells = _n_duplicated(adata.var_names), _n_duplicated(adata.obs_names)
    if dup_genes:
        adata.var["scatd_original_name"] = adata.var_names.tolist()
        adata.var_names_make_unique()
        opts.warnings.append(f"{dup_genes} duplicated gene name(s) were made unique (e.g. 'GENE-1'); "
                             "they are summed when aligned to a model.")
    if dup_cells:
        adata.obs["scatd_original_id"] = adata.obs_names.tolist()
        adata.obs_names_make_unique()
        opts.warnings.append(f"{dup_cells} duplicated cell name(s) were made unique.")

    nonzero, n_nan, n_inf, first_bad = _scan(adata.X)
    if n_nan or n_inf:
        raise InputError(f"{name} holds {n_nan:,} missing (NaN) and {n_inf:,} infinite value(s) "
                         f"(first in cell '{adata.obs_names[first_bad]}').",
                         "Replace missing values with 0 (not expressed) or remove the affected cells or "
                         "genes, then upload again.")
    zero = nonzero == 0
    if zero.all():
        raise InputError(f"Every cell in {name} is all zero: there is no expression to score.",
                         "Check that the right file (or layer) was exported.")
    adata.obs[ZERO_CELL_KEY] = zero
    if zero.any():
        opts.warnings.append(f"{int(zero.sum())} cell(s) have no expression at all; they are kept, marked "
                             f"in obs['{ZERO_CELL_KEY}'], and cannot be scored meaningfully.")

    value_type = preprocess.detect_value_type(adata.X)
    names = genes.original_gene_names(adata)
    id_type = genes.detect_id_type(names)
    id_evidence = genes.id_type_evidence(names)
    if id_type == "mouse_symbol" or id_evidence.get("ensembl_mouse", 0) > 0.5:
        opts.warnings.append("The genes look like mouse genes; the scATD models are human, so most genes "
                             "will not match. Convert to human orthologues first.")
    labels, groups = _per_cell_columns(adata.obs)
    report.setdefault("orientation", "cells_x_genes")
    report.setdefault("orientation_reason", "fixed by the format")
    report.setdefault("backed", False)
    report.update(
        file_name=name, n_cells=int(n_cells), n_genes=int(n_genes),
        n_duplicated_genes=dup_genes, n_duplicated_cells=dup_cells,
        gene_id_type=id_type, gene_id_evidence=id_evidence,
        value_type=value_type["kind"], value_type_evidence=value_type["evidence"],
        label_columns=labels, group_columns=groups, n_all_zero_cells=int(zero.sum()),
        warnings=list(opts.warnings),
    )
    adata.uns[REPORT_KEY] = _json_safe(report)
    return adata


def _json_safe(obj):
    """Plain Python containers and scalars (NaN -> None), fit for JSON and for h5ad's uns."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
