"""10x matrix-market folders (matrix.mtx + features + barcodes) and archives (.zip, .tar.gz) holding data."""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import lzma
import re
import sys
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import replace
from pathlib import Path, PurePosixPath

import anndata as ad
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

from scatd_core.errors import InputError
from scatd_core.io._common import (FORMAT_OF_SUFFIX, FORMATS_HINT, LimitedReader, Options, check_cells, check_genes,
                                   check_memory, encoding_problem, first_bytes, is_utf16, keep_gene_expression, mb,
                                   open_limited, raise_limit, suffix_of, too_large, utf8_text)

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


#: The most bytes per line of a barcodes or features file (a barcode; a gene ID, name and type).
MAX_NAME_LINE_BYTES = 4096


def _read_text_table(path: Path, opts: Options, max_rows: int) -> pd.DataFrame:
    """A barcodes/features file: at most ``max_rows`` rows are parsed (the matrix says how many there
    are), of at most :data:`MAX_NAME_LINE_BYTES` each on average (a line that never ends is not held).
    UTF-8 text, or UTF-16 with its byte-order mark (the file opened in Excel and saved as "Unicode
    text"), decoded as it is read within the same limit; UTF-32 and binary files are refused by name."""
    cap = min(opts.max_decompressed_bytes, max_rows * MAX_NAME_LINE_BYTES + (1 << 20))
    hint = (f"A barcodes or features file has one short line per cell or gene (here at most {max_rows:,} lines, from the "
            "matrix's size line); check that the three files belong together and are not damaged.")
    shown = f"{opts.display_name}: {path.name}"
    gz = path.name.lower().endswith(".gz")
    if not gz and path.stat().st_size > cap:
        raise InputError(f"{opts.display_name}: {path.name} is {mb(path.stat().st_size)}, more than {mb(cap)} for "
                         f"{max_rows:,} names.", hint)
    head = first_bytes(path, gz, 8192)
    problem = encoding_problem(head, shown, "barcodes or features file (text, one name per line)")
    if problem is not None:
        raise problem
    raw = gzip.open(path, "rb") if gz else path.open("rb")
    limited = io.BufferedReader(LimitedReader(raw, cap, shown, hint), 1 << 20)  # the file's bytes are limited
    try:
        with utf8_text(limited, is_utf16(head), shown) as fh:
            return pd.read_csv(fh, sep="\t", header=None, dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE,
                               nrows=max_rows, encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{shown} is not UTF-8 text.",
                         "Cell Ranger writes it as UTF-8: take it from the 10x folder as it came, or save it again as "
                         "UTF-8 (or Excel's 'Unicode Text').") from None


#: The most bytes of banner and comment lines before a Matrix Market size line (Cell Ranger writes
#: three short lines).
MAX_MTX_HEADER_BYTES = 1 << 20


def _mtx_shape(path: Path, opts: Options, given: str) -> tuple[int, int, int]:
    """``(rows, columns, stored entries)`` from the Matrix Market header, read through the
    decompression limit and never more than :data:`MAX_MTX_HEADER_BYTES` of it. ``given``: what
    messages call the matrix file."""
    left = MAX_MTX_HEADER_BYTES
    name = opts.display_name if given == opts.display_name else f"{opts.display_name}: {given}"

    def next_line() -> str:
        nonlocal left
        raw = fh.readline(left + 1)
        left -= len(raw)
        if left < 0:
            raise InputError(f"{name} has more than {mb(MAX_MTX_HEADER_BYTES)} of header and comment "
                             "lines before its size line (or a line that never ends); a Matrix Market header is a "
                             "few short lines.", "The matrix file is corrupt or not a Matrix Market file; export it "
                                                 "again with Cell Ranger or scipy.io.mmwrite.")
        return raw.decode("latin-1")

    with open_limited(path, opts) as fh:  # a .gz is never decompressed beyond the limit
        banner = next_line()
        if not banner.startswith("%%MatrixMarket"):
            raise InputError(f"{name} is not a Matrix Market file (no %%MatrixMarket line).",
                             "Export the matrix again with Cell Ranger or scipy.io.mmwrite.")
        line = next_line()
        while line.startswith("%"):
            line = next_line()
    fields = line.split()
    if len(fields) < 3 or not all(x.isdigit() for x in fields):
        raise InputError(f"{name} has no valid size line.", "The matrix file is truncated or corrupt.")
    return int(fields[0]), int(fields[1]), int(fields[2])


def read_mtx(matrix: Path, opts: Options, *, alone: bool = False) -> ad.AnnData:
    """A Matrix Market file with its barcodes and features files beside it. ``alone``: the matrix
    file itself was given (not a folder or archive): messages call it by the name it was given
    (an upload is stored under a fixed name, which means nothing to its user)."""
    name, folder = opts.display_name, matrix.parent
    given = name if alone else matrix.name
    lower = given.lower()
    prefix = given[:lower.index("matrix.mtx")] if "matrix.mtx" in lower else ""
    stored_prefix = matrix.name[:matrix.name.lower().index("matrix.mtx")] if "matrix.mtx" in matrix.name.lower() else ""
    barcodes_file = _companion(folder, stored_prefix, ("barcodes.tsv", "barcodes.txt"))
    features_file = _companion(folder, stored_prefix, ("features.tsv", "genes.tsv", "features.txt", "genes.txt"))
    if barcodes_file is None or features_file is None:
        missing = " and ".join(n for n, p in (("barcodes", barcodes_file), ("features/genes", features_file)) if p is None)
        raise InputError(f"{name if alone else f'{name}: {matrix.name}'} has no {missing} file beside it.",
                         f"A 10x folder holds {prefix}matrix.mtx(.gz), {prefix}features.tsv(.gz) (or "
                         f"genes.tsv) and {prefix}barcodes.tsv(.gz), with the same prefix; upload the "
                         "whole folder as a .zip or .tar.gz.")
    total = sum(p.stat().st_size for p in (matrix, barcodes_file, features_file))
    if opts.max_bytes is not None and total > opts.max_bytes:
        raise too_large(name, total, opts.max_bytes)
    for path, shown in ((matrix, given), (barcodes_file, barcodes_file.name), (features_file, features_file.name)):
        _check_gzip(path, name if shown == name else f"{name}: {shown}")
    n_rows, n_cols, nnz = _mtx_shape(matrix, opts, given)
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
        try:
            m = scipy.io.mmread(fh)
        except ValueError as exc:  # the entries disagree with the size line (or do not parse)
            raise _mtx_entries_problem(name if given == name else f"{name}: {given}", nnz, exc) from None
    X = sp.csr_matrix(m.T if genes_by_cells else m, dtype=np.float32)
    ids = features.iloc[:, 0].astype(str).tolist()
    names = features.iloc[:, 1].astype(str).tolist() if features.shape[1] > 1 else ids
    var = pd.DataFrame(index=[n or i for n, i in zip(names, ids)])
    if features.shape[1] > 1:
        var["gene_ids"] = ids
    if features.shape[1] > 2:
        var["feature_types"] = features.iloc[:, 2].astype(str).tolist()
    opts.report.update(orientation="cells_x_genes", orientation_fixed=True,
                       orientation_reason="stored genes x cells (10x)" if genes_by_cells else
                       "stored cells x genes (not 10x's genes x cells: told by the feature and barcode counts)")
    adata = ad.AnnData(X=X, obs=pd.DataFrame(index=[str(b) for b in barcodes]), var=var)
    return keep_gene_expression(adata, opts)


def _check_gzip(path: Path, shown: str) -> None:
    """A file of a 10x folder whose name ends in .gz is gzip-compressed (else gzip's own error,
    "Not a gzipped file", would be all the user saw)."""
    if not path.name.lower().endswith(".gz"):
        return
    with path.open("rb") as fh:
        head = fh.read(2)
    if head != b"\x1f\x8b":
        raise InputError(f"{shown} is not gzip-compressed, although its name ends in .gz.",
                         f"If it is plain text, rename it without .gz ({path.name[:-3]}); otherwise take the file from "
                         "the 10x folder again (it may be damaged).")


def _mtx_entries_problem(shown: str, nnz: int, exc: ValueError) -> InputError:
    """scipy's complaint about a Matrix Market file's entries, in words: fewer or more entries than
    its size line declares (a file cut short, or files mixed up), or a line that is not an entry."""
    text = str(exc)
    redo = "Take the matrix from the 10x folder again, or write it again with scipy.io.mmwrite or R's Matrix::writeMM."
    if "truncat" in text.lower() or "expected another" in text.lower():
        return InputError(f"{shown} holds fewer entries than the {nnz:,} its size line declares: the file looks "
                          "truncated (cut short while it was downloaded or copied).",
                          "Download (or copy) it again, completely, or write it again with scipy.io.mmwrite or R's "
                          "Matrix::writeMM.")
    if "too many" in text.lower() or "too long" in text.lower():
        return InputError(f"{shown} holds more entries than the {nnz:,} its size line declares: the size line and "
                          "the entries do not belong together.", redo)
    return InputError(f"{shown}: its entries cannot be read as a Matrix Market matrix ({text.strip()[:160]}).", redo)


def _safe_member(name: str) -> Path | None:
    """Relative path of an archive member, None to skip it; refuses absolute and '..' paths."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or re.match(r"^[A-Za-z]:", name):
        raise InputError(f"The archive holds an unsafe path ({name!r}), so it was refused.",
                         "Create the archive from the data folder itself (e.g. zip -r data.zip filtered_feature_bc_matrix).")
    if any(part.startswith(".") or part == "__MACOSX" for part in p.parts) or not p.parts:
        return None
    return Path(*p.parts)


#: The most entries (files, folders, links) an archive may hold: a 10x folder is three files, and
#: a whole Cell Ranger ``outs`` folder a few dozen. Every entry costs time and memory before its
#: content is read, so an archive of a million empty entries is refused, not walked.
MAX_ARCHIVE_MEMBERS = 1000
#: The largest extended tar header (a pax record set, or a GNU long name), read whole by tarfile.
MAX_TAR_HEADER_BYTES = 1 << 20
#: All extended tar headers of one archive together.
MAX_TAR_HEADERS_BYTES = 16 << 20
_REMAKE_HINT = ("Create the archive from the data folder itself (e.g. tar czf data.tar.gz filtered_feature_bc_matrix, "
                "or zip -r data.zip filtered_feature_bc_matrix), or upload the data file itself.")


def _too_many_members(name: str, count: int | None = None) -> InputError:
    found = f" ({count:,})" if count is not None else ""
    return InputError(f"{name} holds more than {MAX_ARCHIVE_MEMBERS:,} entries{found}; an archive of one dataset "
                      "holds a few files.", _REMAKE_HINT)


def _bounded_tarinfo(name: str) -> type[tarfile.TarInfo]:
    """A TarInfo class that refuses oversized extended headers (tarfile reads each one whole into
    memory before the member it describes) and sparse entries (whose maps are unbounded)."""
    seen = {"bytes": 0, "headers": 0}

    class BoundedTarInfo(tarfile.TarInfo):
        def _proc_member(self, tf):
            if self.type == tarfile.GNUTYPE_SPARSE:
                self._refuse_sparse()
            if self.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
                             tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE):
                seen["bytes"] += self.size
                seen["headers"] += 1
                if self.size > MAX_TAR_HEADER_BYTES:
                    raise InputError(f"{name} has a tar header of {mb(self.size)} (extended attributes or a long "
                                     f"name), over the limit of {mb(MAX_TAR_HEADER_BYTES)}; an archive of data files "
                                     "has headers of a few hundred bytes.", _REMAKE_HINT)
                if seen["bytes"] > MAX_TAR_HEADERS_BYTES or seen["headers"] > 2 * MAX_ARCHIVE_MEMBERS:
                    raise InputError(f"{name} has more than {mb(MAX_TAR_HEADERS_BYTES)} of tar headers (extended "
                                     "attributes or long names); an archive of data files has a few kB.",
                                     _REMAKE_HINT)
            return super()._proc_member(tf)

        def _refuse_sparse(self, *args):
            raise InputError(f"{name} holds a sparse tar entry; sparse entries are not supported.",
                             "Create the archive without --sparse (e.g. tar czf data.tar.gz "
                             "filtered_feature_bc_matrix), or upload the data file itself.")

        _proc_gnusparse_00 = _proc_gnusparse_01 = _proc_gnusparse_10 = _refuse_sparse

    return BoundedTarInfo


def _open_tar_stream(archive: Path, cap: int, name: str):
    """The archive's tar bytes (gzip, bzip2 and xz decompressed), never more than ``cap`` of them."""
    with archive.open("rb") as fh:
        magic = fh.read(6)
    if magic.startswith(b"\x1f\x8b"):
        raw = gzip.open(archive, "rb")
    elif magic.startswith(b"BZh"):
        raw = bz2.open(archive, "rb")
    elif magic.startswith(b"\xfd7zXZ\x00"):
        raw = lzma.open(archive, "rb")
    else:
        raw = archive.open("rb")
    return io.BufferedReader(LimitedReader(raw, cap, name), buffer_size=1 << 20)


def _check_zip_directory(archive: Path, name: str) -> None:
    """Refuse a zip whose central directory declares too many entries, before zipfile parses it
    (it builds one object per entry, all at once)."""
    with archive.open("rb") as fh:
        end = zipfile._EndRecData(fh)  # the end-of-central-directory record (zip64 aware)
    if not end:
        return  # not a zip: ZipFile says so
    entries, size = end[zipfile._ECD_ENTRIES_TOTAL], end[zipfile._ECD_SIZE]
    # a central-directory entry is 46 bytes plus its name, extra field and comment
    if entries > MAX_ARCHIVE_MEMBERS or size > MAX_ARCHIVE_MEMBERS * 1024:
        raise _too_many_members(name, entries if entries > MAX_ARCHIVE_MEMBERS else None)


def _extract(archive: Path, dest: Path, kind: str, cap: int, name: str, member_cap: int | None) -> None:
    """Extract regular files only (no links, devices), stopping past ``cap`` bytes (of content,
    and for a tar of the whole decompressed stream, headers included) or
    :data:`MAX_ARCHIVE_MEMBERS` entries. A member over ``member_cap`` (the size limit the reader
    applies to the file once extracted) is refused from its declared size, before any of it is
    written, and while it is written should it hold more than it declares."""
    if member_cap is None:  # a file on the server's disk: no upload limit, the decompressed cap bounds it
        member_cap = sys.maxsize
    written = 0

    def copy(member_name: str, src, declared: int) -> None:
        nonlocal written
        rel = _safe_member(member_name)
        if rel is None:
            return
        if declared > member_cap:
            raise too_large(f"{name}:{rel.as_posix()}", declared, member_cap)
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        own = 0
        with target.open("wb") as out:
            while chunk := src.read(1 << 20):
                written += len(chunk)
                own += len(chunk)
                if written > cap:
                    raise InputError(f"{name} expands to more than {mb(cap)}, over the server's limit.",
                                     "Upload the data file itself, or a smaller archive.")
                if own > member_cap:
                    raise too_large(f"{name}:{rel.as_posix()}", own, member_cap)
                out.write(chunk)

    if kind == "zip":
        _check_zip_directory(archive, name)
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_ARCHIVE_MEMBERS:
                raise _too_many_members(name, len(infos))
            for info in infos:  # each member's declared size, before anything is written
                if not info.is_dir() and info.file_size > member_cap and _safe_member(info.filename) is not None:
                    raise too_large(f"{name}:{info.filename}", info.file_size, member_cap)
            declared = sum(info.file_size for info in infos)
            if declared > cap:  # refused before anything is written; the copy below checks the truth
                raise InputError(f"{name} declares {mb(declared)} of content, over the server's limit of {mb(cap)} "
                                 "decompressed.", "Upload the data file itself, or a smaller archive, or "
                                 f"{raise_limit('max_decompressed_mb')}.")
            for info in infos:
                if not info.is_dir():
                    with zf.open(info) as src:
                        copy(info.filename, src, info.file_size)
        return
    # streamed ('r|'): one pass, the decompressed stream itself capped (headers count too)
    try:
        with _open_tar_stream(archive, cap, name) as stream, \
                tarfile.open(fileobj=stream, mode="r|", tarinfo=_bounded_tarinfo(name)) as tf:
            for count, member in enumerate(tf, start=1):
                if count > MAX_ARCHIVE_MEMBERS:
                    raise _too_many_members(name)
                if member.isfile():
                    copy(member.name, tf.extractfile(member), member.size)
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, RecursionError) as exc:
        raise InputError(f"{name} is not a readable tar archive ({str(exc)[:200] or type(exc).__name__}).",
                         "The file is truncated or corrupt; " + _REMAKE_HINT[0].lower() + _REMAKE_HINT[1:]) from None


def read_archive(path: Path, opts: Options, kind: str) -> ad.AnnData:
    name = opts.display_name
    with tempfile.TemporaryDirectory(prefix="scatd-archive-") as tmp:
        root = Path(tmp)
        _extract(path, root, kind, opts.max_decompressed_bytes, name, opts.max_bytes)
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
