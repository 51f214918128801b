"""10x matrix-market folders (matrix.mtx + features + barcodes) and archives (.zip, .tar.gz) holding data."""

from __future__ import annotations

import csv
import gzip
import re
import tarfile
import tempfile
import zipfile
from dataclasses import replace
from pathlib import Path, PurePosixPath

import anndata as ad
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

from scatd_core.errors import InputError
from scatd_core.io._common import (FORMAT_OF_SUFFIX, FORMATS_HINT, Options, check_cells, check_genes, check_memory,
                                   keep_gene_expression, mb, open_limited, suffix_of, too_large)

def data_files(root: Path) -> list[Path]:
    """Files under ``root``, without hidden files and macOS archive metadata."""
    return sorted(p for p in root.rglob("*") if p.is_file()
                  and not any(part.startswith(".") or part == "__MACOSX" for part in p.relative_to(root).parts))


def choose_matrix(files: list[Path], name: str) -> Path:
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


def _read_text_table(path: Path, opts: Options, max_rows: int) -> pd.DataFrame:
    """A barcodes/features file: at most ``max_rows`` rows are parsed (the matrix says how many there are)."""
    with open_limited(path, opts) as fh:
        return pd.read_csv(fh, sep="\t", header=None, dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE,
                           nrows=max_rows)


def _mtx_shape(path: Path, name: str) -> tuple[int, int, int]:
    """``(rows, columns, stored entries)`` from the Matrix Market header."""
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
    if len(fields) < 3 or not all(x.isdigit() for x in fields):
        raise InputError(f"{name}: {path.name} has no valid size line.", "The matrix file is truncated or corrupt.")
    return int(fields[0]), int(fields[1]), int(fields[2])


def read_mtx(matrix: Path, opts: Options) -> ad.AnnData:
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
        raise too_large(name, total, opts.max_bytes)
    n_rows, n_cols, nnz = _mtx_shape(matrix, name)
    # which side holds the cells is known once the names are read; the header already bounds both
    check_cells(max(n_rows, n_cols), opts)
    check_genes(min(n_rows, n_cols), opts)
    # scipy's reader holds (row, column, value) triplets, then the CSR copy: ~3 x 12 bytes per entry
    check_memory(36 * nnz, f"its {nnz:,} stored values", opts)
    barcodes = _read_text_table(barcodes_file, opts, max(n_rows, n_cols) + 1).iloc[:, 0].tolist()
    features = _read_text_table(features_file, opts, max(n_rows, n_cols) + 1)
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
    check_cells(len(barcodes), opts)
    check_genes(len(features), opts)
    with open_limited(matrix, opts) as fh:  # a .gz is never decompressed beyond the limit
        m = scipy.io.mmread(fh)
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
    return keep_gene_expression(adata, opts)


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
                    raise InputError(f"{name} expands to more than {mb(cap)}, over the server's limit.",
                                     "Upload the data file itself, or a smaller archive.")
                out.write(chunk)

    if kind == "zip":
        with zipfile.ZipFile(archive) as zf:
            declared = sum(info.file_size for info in zf.infolist())
            if declared > cap:  # refused before anything is written; the copy below checks the truth
                raise InputError(f"{name} declares {mb(declared)} of content, over the server's limit of {mb(cap)} "
                                 "decompressed.", "Upload the data file itself, or a smaller archive.")
            for info in zf.infolist():
                if not info.is_dir():
                    with zf.open(info) as src:
                        copy(info.filename, src)
    else:
        with tarfile.open(archive, "r:*") as tf:
            for member in tf:
                if member.isfile():
                    copy(member.name, tf.extractfile(member))


def read_archive(path: Path, opts: Options, kind: str) -> ad.AnnData:
    name = opts.display_name
    with tempfile.TemporaryDirectory(prefix="scatd-archive-") as tmp:
        root = Path(tmp)
        _extract(path, root, kind, opts.max_decompressed_bytes, name)
        files = data_files(root)
        if any(p.name.lower().endswith((".mtx", ".mtx.gz")) for p in files):
            target = choose_matrix(files, name)
        else:
            data = [p for p in files if FORMAT_OF_SUFFIX.get(suffix_of(p.name) or "") in ("hdf5", "table", "npy")]
            if len(data) != 1:
                listed = ", ".join(p.name for p in files[:5]) or "nothing"
                raise InputError(f"{name} holds {'no' if not data else 'several'} data files (found: {listed}).",
                                 "An archive must hold one 10x folder or one data file. " + FORMATS_HINT)
            target = data[0]
        # everything is read into memory: the extracted files vanish with this folder
        inner = replace(opts, backed=False, display_name=f"{name}:{target.relative_to(root)}")
        from scatd_core.io import read_any  # the archive may hold any format

        adata = read_any(target, inner)
    opts.report["archive"] = kind
    return adata
