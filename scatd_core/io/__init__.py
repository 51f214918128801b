"""Read any common single-cell file into an AnnData of cells x genes, and say what was found.

:func:`read` takes a path, :func:`read_bytes` an upload; both accept the formats of
:data:`SUPPORTED_FORMATS`:

- ``.h5ad`` (opened backed, X left on disk, when large: :data:`BACKED_MIN_BYTES`,
  :data:`BACKED_MIN_CELLS`);
- 10x Genomics ``.h5`` (v2 and v3);
- a 10x folder (``matrix.mtx(.gz)`` + ``features.tsv(.gz)`` or ``genes.tsv`` +
  ``barcodes.tsv(.gz)``, any file prefix), given as the folder, its ``.mtx`` file, or a
  ``.zip`` / ``.tar.gz`` holding it (an archive may instead hold one other supported file);
- CSV / TSV / TXT tables, plain or gzipped, UTF-8 or UTF-16 with its byte-order mark (Excel's
  "Unicode text"): first column = identifiers, either orientation
  (detected from the names; ``orientation=`` overrides). Non-gene columns (text, or named
  like ``response``, ``label``, ``sample``, ``batch``, ``cell_type``...) go to ``obs``;
- ``.loom``;
- ``.npy``: a 2-D numeric array of cells x features (e.g. scFoundation or Geneformer
  embeddings), never unpickled. A row all NaN is a cell without an embedding (as
  :func:`scatd_core.foundation.embed_cells` writes it): kept, and left unscored by the models.

A table of per-cell annotations keyed by cell ID (labels, samples: what 10x output lacks) is
added to ``obs`` by :func:`add_cell_metadata` (:mod:`scatd_core.io._obs`).

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

import os
import shutil
import tempfile
import warnings
import weakref
from pathlib import Path

import anndata as ad

from scatd_core._keys import ALL_ZERO as ZERO_CELL_KEY
from scatd_core._keys import INPUT_REPORT as REPORT_KEY
from scatd_core._output import sha256_file
from scatd_core.config import limits
from scatd_core.errors import InputError
from scatd_core.io._common import (BACKED_MIN_BYTES, BACKED_MIN_CELLS, FORMAT_OF_SUFFIX, FORMATS_HINT, MIN_CELLS,
                                   ORIENTATIONS, REFUSED_UPLOAD_TYPES, SPREADSHEET_LABEL_NOTE, SPREADSHEET_UPLOAD_HELP,
                                   SPREADSHEET_UPLOAD_NOTE, SUPPORTED_FORMATS,
                                   UPLOAD_TYPES, Options, check_signature,
                                   display_name, make_options, suffix_of, too_large, unsupported)
from scatd_core.io._hdf5 import read_hdf5
from scatd_core.io._npy import read_npy
from scatd_core.io._obs import add_cell_metadata, cell_metadata_messages, read_cell_metadata, remove_cell_metadata
from scatd_core.io._report import finish
from scatd_core.io._table import read_table
from scatd_core.io._tenx import choose_matrix, data_files, read_archive, read_mtx

#: The start of the name of each folder :func:`store_upload` makes.
UPLOAD_FOLDER_PREFIX = "scatd-upload-"

__all__ = ["read", "read_bytes", "store_upload", "write_private", "private_folder", "read_cell_metadata", "add_cell_metadata", "remove_cell_metadata",
           "cell_metadata_messages", "UPLOAD_FOLDER_PREFIX", "SUPPORTED_FORMATS", "UPLOAD_TYPES",
           "REFUSED_UPLOAD_TYPES", "SPREADSHEET_LABEL_NOTE", "SPREADSHEET_UPLOAD_HELP", "SPREADSHEET_UPLOAD_NOTE",
           "ORIENTATIONS", "REPORT_KEY", "ZERO_CELL_KEY", "MIN_CELLS", "BACKED_MIN_BYTES", "BACKED_MIN_CELLS"]


def read(path, *, orientation: str = "auto", max_bytes: int | None = None, max_cells: int | None = None,
         backed="auto", max_dataset_bytes: int | None = None, name: str | None = None,
         limit_reason: str | None = None, samples: bool = False, limit_advice: str | None = None) -> ad.AnnData:
    """Read a single-cell data file (or 10x folder) into an AnnData of cells x genes.

    Parameters
    ----------
    path
        File or 10x folder; see the module docstring for the formats.
    orientation
        ``"auto"`` (tables: decided from the names, see the report; an h5ad is read
        as stored, cells x genes by AnnData's convention, with a warning when its names look
        swapped), ``"cells_x_genes"`` or ``"genes_x_cells"`` (rows are genes; an h5ad is then
        transposed). Ignored by 10x and loom files, whose layout is fixed.
    max_bytes
        The largest file (or 10x folder) accepted; default none. The upload limit
        (``limits.max_upload_mb``) is for uploads (:func:`store_upload`, :func:`read_bytes`;
        the app passes it when it reads an upload it stored): a file on the server's disk (the
        CLI, ``--engine ray``, the demo) is bounded by memory and by what it declares instead.
    max_cells, max_dataset_bytes
        Limits (cells, memory of the dataset once read); default
        :func:`scatd_core.config.limits`. Declared sizes are checked before anything is
        allocated; an h5ad too large for memory is read from disk (backed) instead.
    backed
        ``"auto"``: h5ad files over :data:`BACKED_MIN_BYTES` or :data:`BACKED_MIN_CELLS` are
        opened read-only with X on disk (``adata.X[start:stop]`` reads a batch of rows);
        ``True`` / ``False`` force it. Other formats are always read into memory.
    name
        What messages call the file (e.g. the name an upload had; :func:`store_upload`); default
        the file's own name. The format always comes from ``path``'s extension.
    limit_reason
        Why ``max_dataset_bytes`` is lower than the configured limit, for the messages (e.g. "the
        1,200 MB this server has free for a new dataset now"); with it, an h5ad read from disk
        because of it says so in the report's warnings.
    limit_advice
        What the user can do about ``limit_reason`` (default: try again when other analyses on the
        server have finished; a server whose budget is too small for itself says to ask its administrator).
    samples
        The rows are bulk samples (cell lines), not cells (bulk expression for training): messages
        about a row call it a cell line.

    Returns
    -------
    The AnnData, with the fields listed in the module docstring.

    Raises
    ------
    InputError
        For anything that makes the file unusable (and nothing else).
    """
    shown = display_name(name) if name is not None else Path(path).name
    opts = make_options(orientation, max_bytes, max_cells, backed, shown, max_dataset_bytes, limit_reason, samples,
                        limit_advice)
    return _with_sha256(_read_guarded(Path(path), opts), Path(path))


#: Files larger than this are not hashed when read (one more pass over the file: ~2 s per GB on
#: 2 cores); the read report says so (``file_sha256_skipped``) and ``sha256sum`` gives it.
SHA256_MAX_BYTES = 2 << 30


def _with_sha256(adata: ad.AnnData, path: Path) -> ad.AnnData:
    """Record the sha256 of the file read (not of a 10x folder) in the read report, as
    ``file_sha256``: metrics.csv and report.html name the exact file the results came from.
    Not for files over :data:`SHA256_MAX_BYTES`, whose hash would cost a pass of its own."""
    if path.is_file() and path.stat().st_size > SHA256_MAX_BYTES:
        adata.uns[REPORT_KEY]["file_sha256_skipped"] = (f"not computed: the file is over {SHA256_MAX_BYTES >> 30} GB "
                                                        "(sha256sum gives it)")
    elif path.is_file():
        adata.uns[REPORT_KEY]["file_sha256"] = sha256_file(path)
    return adata


def private_folder(path: str | Path) -> Path:
    """``path`` as a folder only this account may open (0700, whatever the umask; made with its
    missing parents, those 0700 too; an existing one is narrowed): a user's working folder, whose
    names and files another account on the server must not read."""
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    for folder in [path, *missing]:
        try:
            folder.chmod(0o700)  # mkdir's mode is narrowed by the umask only, and parents= ignores it
        except OSError:  # another account's (a shared parent made meanwhile): not ours to change
            pass
    return path


def write_private(path: str | Path, data) -> Path:
    """Write ``data`` (bytes or a buffer) to the new file ``path``, readable by this account only
    (0600 from its creation, whatever the umask): a user's upload on the server's disk."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


def store_upload(data, filename: str, folder: str | Path | None = None, *, max_bytes: int | None = None) -> Path:
    """Write uploaded bytes (``bytes`` or a buffer such as a memoryview) to a fresh folder inside
    ``folder`` (default the system's temporary folder) and return the file's path, for
    :func:`read` (``name=filename``) now and again later, e.g. in another orientation, without
    holding the bytes in memory.

    ``filename`` only tells the format: the file is a fixed stem plus the recognised extension, so
    no name a user typed becomes a path. Checked first: the size limit (``max_bytes``, default the
    upload limit) and a supported extension. Remove the file's folder (``path.parent``) when done.
    The folder (0700) and the file (0600) are this account's only, whatever the umask.
    """
    shown = display_name(filename)
    size = memoryview(data).nbytes
    limit = max_bytes or limits().max_upload_bytes
    if size > limit:
        raise too_large(shown, size, limit)
    suffix = suffix_of(shown)
    if suffix is None:
        raise unsupported(shown)
    tmpdir = Path(tempfile.mkdtemp(prefix=UPLOAD_FOLDER_PREFIX, dir=folder))
    path = tmpdir / f"upload{suffix}"
    try:
        write_private(path, data)
    except OSError as exc:
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise InputError(f"Could not store the upload {shown} ({exc}).",
                         "The server may be out of disk space; tell its administrator.") from exc
    return path


def read_bytes(data: bytes, filename: str, *, orientation: str = "auto", max_bytes: int | None = None,
               max_cells: int | None = None, backed="auto", workdir: str | Path | None = None,
               max_dataset_bytes: int | None = None, limit_reason: str | None = None,
               samples: bool = False, limit_advice: str | None = None) -> ad.AnnData:
    """Read uploaded bytes; ``filename`` only tells the format and names the data in messages.

    The name is never used as a path: the bytes go to a fresh temporary folder (inside ``workdir``,
    e.g. the app session's own working folder; default the system's) as a fixed stem plus the
    recognised extension. ``max_bytes``: the largest upload accepted, default the upload limit
    (``limits.max_upload_mb``). Other parameters as :func:`read`. When the result is backed, the
    temporary file lives as long as the AnnData.
    """
    opts = make_options(orientation, max_bytes or limits().max_upload_bytes, max_cells, backed, display_name(filename), max_dataset_bytes,
                        limit_reason, samples, limit_advice)
    path = store_upload(data, filename, workdir, max_bytes=opts.max_bytes)
    try:
        adata = _with_sha256(_read_guarded(path, opts), path)
    except BaseException:
        shutil.rmtree(path.parent, ignore_errors=True)
        raise
    if adata.isbacked:
        weakref.finalize(adata, shutil.rmtree, path.parent, True)
    else:
        shutil.rmtree(path.parent, ignore_errors=True)
    return adata


def _read_guarded(path: Path, opts: Options) -> ad.AnnData:
    """Read and validate; turn every failure into an InputError naming the file."""
    try:
        with warnings.catch_warnings():
            # duplicated names are made unique and reported by _finish
            warnings.filterwarnings("ignore", message=".*names are not unique")
            return finish(read_any(path, opts), opts)
    except InputError:
        raise
    except EOFError:  # gzip, bzip2, xz: "Compressed file ended before the end-of-stream marker was reached"
        raise InputError(f"{opts.display_name} is cut short: its compressed data stop before their end (the "
                         "file was not copied or downloaded completely).",
                         "Copy or download the file again (compare its size with the original) and give the new copy.",
                         app_hint="Copy or download the file again (compare its size with the original) and upload "
                                  "the new copy.") from None
    except MemoryError:
        raise InputError(f"Not enough memory to read {opts.display_name}.",
                         "Use an .h5ad file (read in batches from disk) or fewer cells.") from None
    except Exception as exc:  # the promise of this module: nothing but InputError escapes
        detail = f"{type(exc).__name__}: {exc}"[:300]
        raise InputError(f"Could not read {opts.display_name}: {detail}",
                         "The file may be truncated, corrupt, or not what its extension says. "
                         + FORMATS_HINT) from exc


def read_any(path: Path, opts: Options) -> ad.AnnData:
    name = opts.display_name
    if str(path) == "-" and not path.exists():  # a command line's "standard input": not a file name here
        raise InputError("Reading data from standard input ('-') is not supported; give the data file's name.",
                         "A pipe or process substitution can be saved to a file first.")
    if not path.exists():
        raise InputError(f"{name} was not found.", "Check the path.")
    if path.is_dir():
        opts.report["format"] = "10x_mtx"
        return read_mtx(choose_matrix(data_files(path), name), opts)
    size = path.stat().st_size
    opts.report["file_bytes"] = size
    if size == 0:
        raise InputError(f"{name} is empty (0 bytes).",
                         "Check that the right file was given and that it was saved or copied completely.",
                         app_hint="Upload the file again; the transfer may have failed.")
    if opts.max_bytes is not None and size > opts.max_bytes:
        raise too_large(name, size, opts.max_bytes)
    suffix = suffix_of(path.name)
    if suffix is None:
        raise unsupported(name)
    kind = FORMAT_OF_SUFFIX[suffix]
    check_signature(path, kind, suffix, name)
    if kind == "hdf5":
        return read_hdf5(path, opts)
    if kind == "table":
        return read_table(path, opts)
    if kind == "mtx":
        opts.report["format"] = "10x_mtx"
        return read_mtx(path, opts, alone=True)
    if kind == "npy":
        return read_npy(path, opts)
    return read_archive(path, opts, kind)
