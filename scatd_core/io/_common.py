"""What every reader shares: the formats, the read options, limits and guards."""

from __future__ import annotations

import anndata as ad

import codecs
import gzip
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import h5py

from scatd_core import genes
from scatd_core._memory import size_text
from scatd_core.config import KEYS, limits
from scatd_core.errors import InputError, MemoryShortage

#: File name endings accepted by :func:`read` / :func:`read_bytes` (a 10x folder is also accepted).
SUPPORTED_FORMATS = (".h5ad", ".h5", ".loom", ".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt", ".txt.gz",
                     ".mtx", ".mtx.gz", ".zip", ".tar.gz", ".tgz", ".tar", ".npy")
#: Last suffixes, for an upload widget that checks only the final extension.
UPLOAD_TYPES = ("h5ad", "h5", "loom", "csv", "tsv", "txt", "gz", "mtx", "zip", "tgz", "tar", "npy")
#: Spreadsheet workbooks: never read, but refused by name with the export to use. An upload widget
#: accepts them too (:data:`REFUSED_UPLOAD_TYPES`), so that its user sees that advice, not only
#: the browser's "files are not allowed".
SPREADSHEET_SUFFIXES = {".xlsx": "an Excel workbook", ".xlsm": "an Excel workbook", ".xls": "an Excel workbook",
                        ".ods": "an OpenDocument spreadsheet", ".numbers": "a Numbers spreadsheet"}
REFUSED_UPLOAD_TYPES = tuple(s.lstrip(".") for s in SPREADSHEET_SUFFIXES)
#: What an upload widget that lists :data:`REFUSED_UPLOAD_TYPES` says about them (its help text),
#: so that a biologist does not read the list as "spreadsheets are read".
SPREADSHEET_UPLOAD_HELP = ("Spreadsheet workbooks (XLSX, XLS, ODS, Numbers) are listed only so that the app can "
                           "tell you how to save them as CSV: they are not read.")
#: The same, in the text above such a widget (a page's caption): the widget's own list names them.
SPREADSHEET_UPLOAD_NOTE = "a spreadsheet (XLSX, XLS, ODS, Numbers) is taken only to tell you how to save it as CSV"
#: The same, short, in such a widget's label.
SPREADSHEET_LABEL_NOTE = "a spreadsheet gets only the steps to save it as CSV"
#: How to save a sheet as a table the readers take (the CLI's words; the app's: :func:`spreadsheet_error`).
SPREADSHEET_EXPORT_HINT = ("Export the sheet as CSV (Excel: File > Save As > 'CSV UTF-8 (Comma delimited)'; "
                           "LibreOffice or Numbers: export as CSV, UTF-8) and give that file.")


def spreadsheet_error(message: str) -> InputError:
    """``message`` (a workbook given as a table) with the export to use, given or uploaded."""
    return InputError(message, SPREADSHEET_EXPORT_HINT,
                      app_hint=SPREADSHEET_EXPORT_HINT.replace("and give that file", "and upload that file"))

FORMAT_OF_SUFFIX = {".h5ad": "hdf5", ".h5": "hdf5", ".hdf5": "hdf5", ".loom": "hdf5",
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
#: Tables are parsed in chunks of about this many values (bounds the parser's memory) ...
TABLE_CHUNK_VALUES = 40_000_000
#: ... and of at most this many rows (each row costs its name and line besides its values) ...
TABLE_CHUNK_ROWS = 100_000
#: ... whose parsing (text, float64 values, row names) takes at most the dataset's memory budget,
#: counting this many bytes per value and per row.
TABLE_PARSE_BYTES_PER_VALUE = 16
TABLE_PARSE_BYTES_PER_ROW = 128

#: Column names (lower case) taken as per-cell labels / groups rather than genes.
LABEL_COLUMN_NAMES = frozenset({"response", "label", "labels", "condition", "resistance", "sensitivity",
                                "drug_response", "class", "status", "treatment", "target", "outcome"})
GROUP_COLUMN_NAMES = frozenset({"sample", "samples", "sample_id", "batch", "batch_id", "cell_type",
                                "celltype", "cluster", "clusters", "leiden", "louvain", "donor",
                                "patient", "orig.ident", "cell_line", "tissue", "time", "timepoint"})

FORMATS_HINT = "Supported: " + ", ".join(SUPPORTED_FORMATS) + ", or a 10x folder (matrix.mtx + features + barcodes)."


@dataclass
class Options:
    """What the caller asked for, and what the readers found (``report``, ``warnings``)."""

    orientation: str
    #: The largest file (or 10x folder) accepted, or None: no cap on the file's size. Uploads are
    #: capped (limits.max_upload_mb); a file on the server's disk (the CLI, Ray, the demo) is bounded
    #: by memory (backed reading, :func:`check_memory`) and by what it declares, not by its size.
    max_bytes: int | None
    max_cells: int
    backed: object
    display_name: str
    max_dataset_bytes: int = 4096 << 20
    max_decompressed_bytes: int = 4096 << 20
    max_genes: int = 100_000
    #: The most obs (per-cell) or var (per-gene) columns of an h5ad.
    max_annotation_columns: int = 1000
    #: Why ``max_dataset_bytes`` is below the per-dataset limit (the server's free memory now), or None.
    limit_reason: str | None = None
    #: What to do about :attr:`limit_reason` (default: wait for other analyses on the server to finish)
    limit_advice: str | None = None
    #: The rows are bulk samples (cell lines), not cells: what messages about a row call it.
    samples: bool = False
    report: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)


def make_options(orientation, max_bytes, max_cells, backed, display_name, max_dataset_bytes=None,
                 limit_reason=None, samples=False, limit_advice=None) -> Options:
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {ORIENTATIONS}, not {orientation!r}")
    if backed not in ("auto", True, False):
        raise ValueError(f"backed must be 'auto', True or False, not {backed!r}")
    lim = limits()
    return Options(orientation=orientation, max_bytes=max_bytes or None,
                   max_cells=max_cells or lim.max_cells, backed=backed, display_name=display_name,
                   max_dataset_bytes=max_dataset_bytes or lim.max_dataset_bytes,
                   max_decompressed_bytes=lim.max_decompressed_bytes, max_genes=lim.max_genes,
                   max_annotation_columns=lim.max_annotation_columns,
                   limit_reason=limit_reason if max_dataset_bytes else None, samples=bool(samples),
                   limit_advice=limit_advice if max_dataset_bytes else None)


def display_name(filename) -> str:
    """The last component of an uploaded name, printable characters only, at most 255."""
    name = re.split(r"[\\/]", str(filename or ""))[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()[:255]
    return name or "upload"


def suffix_of(name: str) -> str | None:
    lower = name.lower()
    for ext in sorted(FORMAT_OF_SUFFIX, key=len, reverse=True):
        if lower.endswith(ext):
            return ext
    return None


def spreadsheet_problem(name: str) -> InputError | None:
    """A spreadsheet workbook, by its name's extension (.xlsx, .xls, .ods ...), named as one with the
    export to use (it is never opened); else None."""
    lower = name.lower()
    sheet = next((what for ext, what in SPREADSHEET_SUFFIXES.items() if lower.endswith(ext)), None)
    if sheet is None:
        return None
    return spreadsheet_error(f"{name} is {sheet}: spreadsheets are not read, only tables saved as text (CSV or TSV).")


def unsupported(name: str) -> InputError:
    """A name whose extension no reader takes: a spreadsheet workbook is named as one, with the
    export to use; anything else lists the formats read."""
    return spreadsheet_problem(name) or InputError(f"{name}: this file type is not supported.", FORMATS_HINT)


def raise_limit(key: str) -> str:
    """How to ask for a higher limit ``key`` (e.g. ``"max_cells"``): the administrator may have set it
    in the configuration file or in the environment, so both are named."""
    return (f"ask the administrator to raise limits.{key} in the configuration file (config.toml), "
            f"or {KEYS[('limits', key)][0]}")


def too_large(name: str, size: int, limit: int) -> InputError:
    """An upload (or a file read with an explicit ``max_bytes``) over the upload size limit."""
    return InputError(f"{name} is {size / 2**20:,.0f} MB, over the limit of {limit / 2**20:,.0f} MB.",
                      f"Subsample the cells first, or {raise_limit('max_upload_mb')}.")


def check_cells(n_cells: int, opts: Options, *, final: bool = True, count=None) -> None:
    """At most ``max_cells`` cells; with ``final`` (the whole dataset is known) also at least 2.

    ``count``, where ``n_cells`` is only how many were read so far (a reader stops one past the
    limit), is called once the limit is passed: the file's whole count, or ``None`` when it is not
    known cheaply (the message then says "more than" the limit)."""
    if n_cells > opts.max_cells:
        total = n_cells if count is None else count()
        has = f"{total:,}" if total is not None and total >= n_cells else f"more than {opts.max_cells:,}"
        raise InputError(f"{opts.display_name} has {has} cells, over the limit of {opts.max_cells:,}.",
                         f"Subsample the cells (e.g. scanpy.pp.subsample) or {raise_limit('max_cells')}.")
    if final and n_cells == 1:
        other = "rows are cells" if opts.report.get("orientation") == "genes_x_cells" else "rows are genes"
        flag = "cells_x_genes" if other == "rows are cells" else "genes_x_cells"
        raise InputError(f"{opts.display_name} holds a single cell.",
                         f"At least {MIN_CELLS} cells are needed: QC and value-type detection compare "
                         "cells. A table with one cell is often read in the wrong orientation: try the other "
                         f"one ('{other}' on the Data page, --orientation {flag}).")


def check_genes(n_genes: int, opts: Options) -> None:
    if n_genes > opts.max_genes:
        raise InputError(f"{opts.display_name} declares {n_genes:,} genes (features), over the limit of "
                         f"{opts.max_genes:,}.",
                         "A genome has tens of thousands of genes: the file is probably in the other orientation or "
                         f"damaged. Otherwise {raise_limit('max_genes')}.")


def mb(n_bytes: int) -> str:
    return size_text(n_bytes)


def check_memory(n_bytes: int, what: str, opts: Options, hint: str | None = None, *,
                 read_so_far: str | None = None, whole: str | None = None, amount: str | None = None,
                 after: str | None = None) -> None:
    """Refuse ``what`` before it is read when its declared size exceeds the dataset memory budget.

    ``read_so_far`` (e.g. "its first 5,000 rows", "its first row"): ``n_bytes`` is what that part, read before
    stopping, takes, not the whole file's: the message says "at least", names the part, and gives
    ``whole`` (the whole matrix as the file declares it: its shape and type) where known, else says
    that the whole size is not known. ``amount`` (e.g. an estimate of the whole file's) and ``after``
    (the sentences after the reason) replace what is said of the size when given."""
    amount = amount or ("at least " if read_so_far else "") + f"{mb(n_bytes)} of memory once read"
    rest = whole or "the rest of the file, if any, was not read, so its whole size is not known"
    part = f" Reading {read_so_far} took that already; {rest}." if read_so_far else ""
    if after:
        part = f" {after}"
    if hint:  # after "; or:" it goes on the sentence (no full stop of its own, no capital)
        hint = hint.rstrip(". ")
        hint = hint[0].lower() + hint[1:] if hint[1:2].islower() else hint
    if n_bytes > opts.max_dataset_bytes and opts.limit_reason:
        raise MemoryShortage(f"{opts.display_name}: {what} would take {amount}, more than {opts.limit_reason}.{part}",
                             "Your file is kept: "
                             + (opts.limit_advice or "try again when other analyses on this server have finished") + (
                                 f"; or: {hint}" if hint else ", or save it as an .h5ad with X in CSR format (read "
                                 "from disk in batches when memory is short)") + ".")
    if n_bytes > opts.max_dataset_bytes:
        raise InputError(f"{opts.display_name}: {what} would take {amount}, over the server's limit of "
                         f"{mb(opts.max_dataset_bytes)} per dataset.{part}",
                         (hint[0].upper() + hint[1:] + ".") if hint else "Save it as an .h5ad with X in CSR format (read from disk in batches), upload "
                                 f"fewer cells, or {raise_limit('max_dataset_mb')}.")


class LimitedReader(io.RawIOBase):
    """A binary stream that refuses to give more than ``cap`` bytes (a decompression-bomb guard)."""

    def __init__(self, raw, cap: int, name: str, hint: str | None = None):
        self.raw, self.cap, self.name, self.count, self.hint = raw, cap, name, 0, hint

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.raw.read(min(len(buffer), self.cap + 1 - self.count))
        self.count += len(data)
        if self.count > self.cap:
            raise InputError(f"{self.name} expands to more than {mb(self.cap)} when decompressed, over the server's "
                             "limit.", self.hint or f"Upload a smaller file, or {raise_limit('max_decompressed_mb')}.")
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self.raw.close()
        super().close()


def open_limited(path: Path, opts: Options):
    """``path`` opened for binary reading; gzip files decompressed, never beyond the limit."""
    if path.name.lower().endswith(".gz"):
        return io.BufferedReader(LimitedReader(gzip.open(path, "rb"), opts.max_decompressed_bytes,
                                               opts.display_name), buffer_size=1 << 20)
    return path.open("rb")


SIGNATURES = {"zip": (b"PK\x03\x04", b"PK\x05\x06"), "npy": (b"\x93NUMPY",), "gz": (b"\x1f\x8b",)}
#: The start of an OLE2 compound file: Office's binary formats (.xls, .doc) before 2007.
OLE_SIGNATURE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
#: UTF-32 LE's byte-order mark starts as UTF-16 LE's does: never taken for UTF-16.
UTF32_LE_BOM = b"\xff\xfe\x00\x00"


UTF32_BOMS = (UTF32_LE_BOM, b"\x00\x00\xfe\xff")


def is_utf16(head: bytes) -> bool:
    """Text saved as UTF-16 (Excel's "Unicode text"), by its byte-order mark (little or big endian)."""
    return head.startswith(UTF16_BOMS) and not head.startswith(UTF32_LE_BOM)


def encoding_problem(head: bytes, name: str, what: str = "text table") -> InputError | None:
    """Why a file given as text (``head``: its first bytes, decompressed) cannot be read: saved as
    UTF-32, or binary (NUL bytes outside UTF-16 text); else None. Text is read as UTF-8 (a
    byte-order mark or none) or as UTF-16 with its byte-order mark."""
    if head.startswith(UTF32_BOMS):
        return InputError(f"{name} is saved as UTF-32 text; a {what} must be UTF-8 or UTF-16 text.",
                          "Save it again as UTF-8 (Excel: File > Save As > 'CSV UTF-8 (Comma delimited)', or 'Unicode "
                          "Text'; a text editor: encoding UTF-8) and give that file.")
    if b"\x00" in head and not is_utf16(head):
        return InputError(f"{name} is binary, not a {what}.",
                          "Check the file: it may be another format renamed, or damaged.")
    return None


def first_bytes(path: Path, gz: bool, n: int = 4) -> bytes:
    """The first ``n`` bytes of ``path`` (decompressed when ``gz``); empty when they cannot be read
    (the reader that follows says why)."""
    try:
        with (gzip.open(path, "rb") if gz else path.open("rb")) as fh:
            return fh.read(n)
    except (OSError, EOFError, ValueError):
        return b""


#: UTF-16 text is decoded this many bytes of the file at a time.
UTF16_PIECE_BYTES = 1 << 20


def not_utf16(name: str, at: int) -> InputError:
    return InputError(f"{name} starts as UTF-16 text (Excel's 'Unicode text') but holds bytes that are not UTF-16 "
                      f"(near byte {at:,}): the file is damaged, or not a text table.",
                      "Export the table again (Excel: File > Save As > 'CSV UTF-8 (Comma delimited)' or 'Unicode "
                      "Text') and give that file.")


class PendingStream(io.RawIOBase):
    """A raw binary stream over ``raw`` that hands out ``pending`` bytes, made by :meth:`fill`
    (which leaves them empty at the end); closing it closes ``raw``."""

    raw = None
    pending = b""

    def readable(self) -> bool:
        return True

    def fill(self) -> None:
        raise NotImplementedError

    def readinto(self, buffer) -> int:
        if not self.pending:
            self.fill()
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n

    def close(self) -> None:
        self.raw.close()
        super().close()


class Utf16Text(PendingStream):
    """A binary stream of UTF-16 text (byte-order mark first, little or big endian, as Excel's
    "Unicode text" export writes it) given as UTF-8 bytes, for readers that read UTF-8: decoded
    :data:`UTF16_PIECE_BYTES` of the file at a time, so at most 1.5 times that is held, however
    long a line is (the readers' own line and size guards then see the text as a UTF-8 file's).
    The UTF-8 text is at most 1.5 times the UTF-16 bytes, about half of them for Latin text. Bytes
    that are not UTF-16 (a lone surrogate, an odd byte at the end) are refused by the file's name."""

    def __init__(self, raw, name: str):
        self.raw, self.name = raw, name
        self.decoder = codecs.getincrementaldecoder("utf-16")("strict")  # the BOM says the byte order
        self.pending, self.offset, self.ended = b"", 0, False

    def fill(self) -> None:
        while not self.pending and not self.ended:
            data = self.raw.read(UTF16_PIECE_BYTES)
            self.ended = not data
            try:
                text = self.decoder.decode(data, final=self.ended)
            except UnicodeDecodeError as exc:
                raise not_utf16(self.name, max(0, self.offset + exc.start)) from None
            self.offset += len(data)
            self.pending = text.encode("utf-8")


def utf8_text(stream, utf16: bool, name: str):
    """``stream`` (binary), given as UTF-8 when ``utf16`` (:class:`Utf16Text`)."""
    return io.BufferedReader(Utf16Text(stream, name), buffer_size=1 << 20) if utf16 else stream


def open_text(path: Path, opts: Options):
    """:func:`open_limited` for a text table: UTF-16 text (by its byte-order mark, after
    decompression) given as UTF-8; the limits are those of the file as it is (its size, and what
    it decompresses to)."""
    utf16 = is_utf16(first_bytes(path, path.name.lower().endswith(".gz")))
    return utf8_text(open_limited(path, opts), utf16, opts.display_name)


def is_office_zip(path: Path, head: bytes) -> str | None:
    """``"Excel workbook"`` or ``"Word document"`` for an Office file (a zip with ``xl/`` or
    ``word/`` parts), else None; only the zip's directory is read."""
    if not head.startswith(b"PK\x03\x04"):
        return None
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()[:10_000]
    except (zipfile.BadZipFile, OSError, ValueError):
        names = []
    if any(n.startswith("xl/") for n in names) or (not names and b"xl/" in head):
        return "Excel workbook"
    if any(n.startswith("word/") for n in names):
        return "Word document"
    return None


def text_file_problem(path: Path, head: bytes, name: str, what: str = "table") -> InputError | None:
    """What a file given as a text table (or list) really is, when its first bytes say it is
    not a text table: an Excel workbook or Word document, a PDF; else None. (UTF-16 text is read
    as such: :func:`open_text`.)"""
    office = is_office_zip(path, head)
    if office is None and (head.startswith(OLE_SIGNATURE) or (b"\x00" in head and not is_utf16(head))):
        sheet = spreadsheet_problem(name)  # binary, and named as a workbook (e.g. an .xls)
        if sheet is not None:
            return sheet
        if head.startswith(OLE_SIGNATURE):
            return spreadsheet_error(f"{name} is an Office file in the older binary format (e.g. an .xls workbook), "
                                     f"not a CSV/TSV {what}.")
    if office == "Excel workbook":
        return spreadsheet_error(f"{name} is an Excel workbook, not a CSV/TSV {what}.")
    if office:
        return InputError(f"{name} is a {office}, not a CSV/TSV {what}.", "Give the data as a CSV or TSV file.")
    if head.startswith(b"%PDF"):
        return InputError(f"{name} is a PDF document, not a {what}.", "Give the data itself as a CSV or TSV file.")
    return None


def _text_table_kind(head: bytes) -> str | None:
    """'comma-separated text' or 'tab-separated text' when ``head`` (a file's first bytes) reads as
    a delimited text table; else None."""
    if not head or b"\x00" in head:
        return None
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = head[:-4].decode("utf-8-sig", "ignore")  # a character cut at the end of the sample
    lines = [line for line in text.splitlines()[:-1] or text.splitlines() if line.strip()]
    if not lines or any(not ch.isprintable() for line in lines for ch in line.replace("\t", " ")):
        return None
    for sep, what in (("\t", "tab-separated text"), (",", "comma-separated text")):
        if all(sep in line for line in lines[:20]):
            return what
    return None


def check_signature(path: Path, kind: str, suffix: str, name: str) -> None:
    """Refuse a file whose first bytes contradict its extension, before any parser sees it."""
    with path.open("rb") as fh:
        head = fh.read(8192)
    if kind == "mtx" and not suffix.endswith("gz") and is_utf16(head):
        raise InputError(f"{name} is saved as UTF-16 text; a Matrix Market file is plain (ASCII) text.",
                         "Write it again with scipy.io.mmwrite or R's Matrix::writeMM, or upload the 10x folder as "
                         "it came (a .zip or .tar.gz).")
    if kind in ("table", "mtx") and not suffix.endswith("gz"):
        problem = text_file_problem(path, head, name)
        if problem is not None:
            raise problem
    expected = {"zip": "zip", "npy": "npy"}.get(kind)
    if suffix.endswith("gz"):
        expected = "gz"
    if expected and not head.startswith(SIGNATURES[expected]):
        what = {"zip": "a zip archive", "npy": "a NumPy .npy file", "gz": "gzip-compressed"}[expected]
        raise InputError(f"{name} is not {what}, although its name says so.",
                         "The file is corrupt or has the wrong extension; export it again.")
    if kind == "hdf5" and not h5py.is_hdf5(path):
        table = _text_table_kind(head)
        if table is not None:
            raise InputError(f"{name} is a text table ({table}), not an HDF5 file, although its name ends in "
                             f"{suffix}.", f"If it is your expression table, rename it to end in "
                             f"{'.tsv' if table.startswith('tab') else '.csv'} and give it again; a real {suffix} "
                             "file is written by software (e.g. adata.write_h5ad).")
        raise InputError(f"{name} is not an HDF5 file, so it cannot be {suffix}.",
                         "The file is truncated, corrupt, or has the wrong extension; export it again.")
    if kind == "table" and expected is None and head.startswith(UTF32_BOMS):
        raise encoding_problem(head, name)
    if kind in ("table", "mtx") and expected is None and b"\x00" in head and not is_utf16(head):
        raise InputError(f"{name} is binary, not a text table.",
                         "Check the file: it may be another format renamed, or corrupt. " + FORMATS_HINT)


def column_kind(label: str) -> str | None:
    key = re.sub(r"[\s-]+", "_", label.strip().lower())
    if key in LABEL_COLUMN_NAMES:
        return "label"
    if key in GROUP_COLUMN_NAMES:
        return "group"
    return None

def decide_orientation(row_names, col_names, per_cell_columns: list[str], samples: bool = False) -> tuple[str, str]:
    """Which side holds the cells, from the names alone; returns (orientation, reason). ``samples``:
    bulk data, whose samples are cell lines (the reason speaks of them)."""
    if per_cell_columns:
        return "cells_x_genes", f"the header holds per-cell fields ({', '.join(per_cell_columns[:3])})"
    r, c = genes.id_type_evidence(row_names), genes.id_type_evidence(col_names)
    if not r["n"] or not c["n"]:
        return "cells_x_genes", "assumed (the AnnData convention)"
    for ev, names in ((r, row_names), (c, col_names)):
        ev["symbol"] = ev["human_symbol"] + ev["mouse_symbol"]
        # gene symbols in any case (lasp1, Lasp1, LASP1): for the side that holds them, while the other
        # side's names are judged as written (cell names such as cell1 are no symbols there)
        upper = genes.id_type_evidence([n.upper() for n in genes._sample(names)])
        ev["symbol_any_case"] = max(ev["symbol"], upper["human_symbol"])
    rules = (("ensembl", 0.5, 0.1, True, "Ensembl gene IDs"), ("barcode", 0.5, 0.1, False, "cell barcodes"),
             ("cell_name", 0.5, 0.1, False,
              "cell-line IDs (DepMap IDs such as ACH-000828, Cellosaurus accessions) or sequencing-run accessions"
              if samples else "cell names (sequencing-run accessions, plate wells or cell-line IDs)"),
             ("symbol", 0.7, 0.3, True, "gene symbols"),
             ("top_shape_fraction", 0.8, 0.5, False,
              "identically patterned sample names" if samples else "identically patterned cell names"))
    for metric, high, low, gene_like, what in rules:
        for side, this, other in (("columns", c, r), ("rows", r, c)):
            if this["symbol_any_case" if metric == "symbol" else metric] >= high and other[metric] < low:
                genes_on_columns = (side == "columns") == gene_like
                return ("cells_x_genes" if genes_on_columns else "genes_x_cells"), f"the {side} hold {what}"
    return "cells_x_genes", ("undecided from the names; assumed cells x genes (the AnnData convention). "
                             "Choose 'genes x cells' if that is wrong")

def decode(values) -> list[str]:
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]

def attr_str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def keep_gene_expression(adata: ad.AnnData, opts: Options) -> ad.AnnData:
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
