"""CSV / TSV / TXT tables, plain or gzipped, in either orientation."""

from __future__ import annotations

import csv
import io
import itertools
import re
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from pandas._libs.parsers import STR_NA_VALUES
import scipy.sparse as sp

from scatd_core._words import counted
from scatd_core.errors import InputError
from scatd_core.io._common import (FORMATS_HINT, TABLE_CHUNK_ROWS, TABLE_CHUNK_VALUES, TABLE_PARSE_BYTES_PER_ROW,
                                   TABLE_PARSE_BYTES_PER_VALUE, Options, check_cells, check_genes, check_memory,
                                   column_kind, decide_orientation, mb, open_text, PendingStream, text_file_problem,
                                   UTF16_BOMS, UTF32_BOMS)
from scatd_core.labels import MISSING_VALUES

def _numeric_fraction(values: pd.Series) -> float:
    values = values.dropna().astype(str)
    present = values[~values.str.strip().str.lower().isin(MISSING_VALUES)]
    if present.empty:
        return 1.0
    return float(pd.to_numeric(present, errors="coerce").notna().mean())
# --------------------------------------------------------------------------------------------
# CSV / TSV
# --------------------------------------------------------------------------------------------

_SEPARATOR_NAMES = {",": "comma", "\t": "tab", ";": "semicolon", r"\s+": "whitespace"}


def _first_lines(path: Path, opts: Options, n: int = 2, cap: int = 64 << 20) -> bytes:
    """The first ``n`` lines (decompressed; UTF-16 text as UTF-8), reading at most ``cap`` bytes."""
    buf = b""
    with open_text(path, opts) as fh:
        while buf.count(b"\n") < n and len(buf) < cap:
            chunk = fh.read(1 << 20)
            if not chunk:
                break
            buf += chunk
    return buf


#: Row names given to the rows of a table without a column of them (1-based, file order).
ROW_NAME = "row_{}"
#: First-column headers that name rows even when the rows' names are numbers.
_NAME_HEADERS = {"cell", "cells", "cell_id", "cellid", "cell_name", "cell_names", "barcode", "barcodes", "id", "ids",
                 "index", "name", "names", "obs", "obs_names", "sample", "samples", "sample_id", "gene", "genes",
                 "gene_id", "gene_ids", "gene_name", "gene_symbol", "symbol", "feature", "features", "feature_id",
                 "entrez", "entrez_id", "unnamed:_0", "rownames", "row", "rows", "x"}


def _first_column_is_data(first_header: str, first_fields: list[str]) -> bool:
    """Whether a table's first column holds values rather than row names: a non-empty header
    that is not a name column's, over numbers that are not distinct whole numbers (which row
    numbers and numeric IDs are), or a label/group column's header over repeated values.
    Judged on the first lines."""
    key = "_".join(first_header.strip().strip('"').lower().split()).replace("-", "_")
    if not key or key in _NAME_HEADERS or not first_fields:
        return False
    if column_kind(first_header):  # e.g. 'response' first: names are (nearly) unique, labels repeat
        return len(set(first_fields)) < len(first_fields)
    try:
        values = np.array([float(v) for v in first_fields])
    except ValueError:
        return False  # names (or missing values): the usual layout
    if not np.isfinite(values).all():
        return False
    whole = np.all(values == np.round(values))
    return bool(not whole or np.unique(values).size < values.size)


class _Numbered(PendingStream):
    """A binary table stream whose data lines start with a row name (``ROW_NAME``) and the
    separator: the header passes unchanged, blank lines stay blank. Read in pieces of at most
    1 MiB, so a long line is never held whole here."""

    def __init__(self, raw, sep: str):
        self.raw, self.sep = raw, (b" " if sep == r"\s+" else sep.encode())
        self.pending, self.row, self.lines, self.at_start = b"", 0, 0, True

    def fill(self) -> None:
        while not self.pending:
            piece = self.raw.readline(1 << 20)
            if not piece:
                return
            if self.at_start and self.lines and piece.strip():  # a data line begins
                self.row += 1
                piece = ROW_NAME.format(self.row).encode() + self.sep + piece
            self.at_start = piece.endswith(b"\n")
            self.lines += self.at_start
            self.pending = piece


#: A line of a table may be this long, plus :data:`LINE_BYTES_PER_FIELD` per field of its header:
#: the parsers hold a line whole (pandas several times over), so one line that never ends must not
#: reach them.
LINE_BYTES_BASE = 1 << 20
LINE_BYTES_PER_FIELD = 64


class _LineGuard(io.RawIOBase):
    """A binary stream that refuses a line longer than ``limit`` bytes (checked block by block at
    the speed of a byte search, never holding a line)."""

    def __init__(self, raw, limit: int, name: str):
        self.raw, self.limit, self.name, self.run = raw, limit, name, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        # blocks of at most 1 MiB, not over LINE_BYTES_BASE: a line inside one block always fits
        data = self.raw.read(min(len(buffer), LINE_BYTES_BASE))
        last = data.rfind(b"\n")
        if last < 0:
            self.run += len(data)
        else:
            if self.run + data.find(b"\n") > self.limit:  # the line that ends in this block
                self.run += data.find(b"\n")
            else:
                self.run = len(data) - last - 1  # the line that goes on after it
        if self.run > self.limit:
            raise self.too_long(self.name, self.limit)
        buffer[:len(data)] = data
        return len(data)

    @staticmethod
    def too_long(name: str, limit: int) -> InputError:
        return InputError(f"{name} has a line longer than {limit / 2**20:,.1f} MB, far more than its header's columns "
                          "need; it is not a table (or is damaged), so it was refused.",
                          "Export the table again (one row per line), or upload an h5ad.")

    def close(self) -> None:
        self.raw.close()
        super().close()


def _line_limit(n_fields: int) -> int:
    """The longest line a table with ``n_fields`` header fields may have."""
    return LINE_BYTES_BASE + LINE_BYTES_PER_FIELD * n_fields


def _open_rows(path: Path, opts: Options, sep: str, numbered: bool, n_fields: int):
    """The table's binary stream (:func:`open_text`: UTF-16 text as UTF-8), lines no longer than its
    ``n_fields`` header fields need, with numbered rows for a table without a column of row names."""
    guard = _LineGuard(open_text(path, opts), _line_limit(n_fields), opts.display_name)
    stream = io.BufferedReader(guard, buffer_size=1 << 20)
    return io.BufferedReader(_Numbered(stream, sep), buffer_size=1 << 20) if numbered else stream


def _sniff_separator(line: str) -> str:
    counts = {sep: line.count(sep) for sep in ("\t", ",", ";")}
    best = max(counts, key=counts.get)
    return best if counts[best] else r"\s+"


def _split(line: str, sep: str) -> list[str]:
    if sep == r"\s+":
        return line.split()
    return next(csv.reader([line], delimiter=sep))


def _odd_first_line(name: str, line: str) -> InputError:
    shown = line.strip() if len(line.strip()) <= 60 else line.strip()[:57] + "..."
    return InputError(f"{name}: the first line ('{shown}') does not look like the table's header.",
                      "Remove title or comment lines above the table, so that its first line names the columns.")


def _check_first_line(name: str, lines: list[str], head: bytes) -> None:
    """Refuse a title or comment line above the table: line 1 is the odd one out when it is a
    ``#`` comment, or has fewer fields than the rows below it, which agree with each other
    (one field fewer is R's header without a row-name field, and allowed)."""
    if head.startswith(b"%PDF"):
        raise InputError(f"{name} is a PDF document, not a table.", "Upload the data table itself. " + FORMATS_HINT)
    if len(lines) < 2:
        return
    if lines[0].lstrip().startswith("#"):
        raise _odd_first_line(name, lines[0])

    def fits(sep: str) -> bool:  # line 1 is a header of the rows below with this separator
        n_second = len(_split(lines[1], sep))
        return n_second >= 2 and len(_split(lines[0], sep)) in (n_second, n_second - 1)

    sep = _sniff_separator(lines[1])  # a separator tie in line 2 (e.g. decimal commas) is why line 1's is tried too
    try:
        if fits(sep) or fits(_sniff_separator(lines[0])):
            return
        n_first, n_second = len(_split(lines[0], sep)), len(_split(lines[1], sep))
        rows_agree = len(lines) < 3 or len(_split(lines[2], sep)) == n_second
    except csv.Error:  # a field beyond the csv module's limit: the line guard of read_table names it
        return
    if n_second >= 2 and rows_agree and n_first < n_second - 1:
        raise _odd_first_line(name, lines[0])


def read_table(path: Path, opts: Options) -> ad.AnnData:
    name = opts.display_name
    gz = path.name.lower().endswith(".gz")
    head = _first_lines(path, opts)
    problem = text_file_problem(path, head, name)
    if problem is not None:
        raise problem
    if b"\x00" in head:
        raise InputError(f"{name} is binary, not a text table.", "Check the file. " + FORMATS_HINT)
    try:
        text, encoding = head.decode("utf-8-sig"), "utf-8-sig"
    except UnicodeDecodeError as exc:
        # a cut at the end of the buffer can split a character; anything earlier is not UTF-8
        encoding = "utf-8-sig" if exc.start >= len(head) - 4 else "latin-1"
        text = head.decode(encoding, errors="ignore")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise InputError(f"{name} holds no text: it is empty.",
                         "Check that the right file was given and that it was saved completely.",
                         app_hint="Upload the table again; the transfer may have failed.")
    if head.count(b"\n") == 0 and len(head) >= 64 << 20:
        raise InputError(f"{name} has no line break in its first 64 MB; it is not a table.", FORMATS_HINT)
    _check_first_line(name, lines, head)
    sep = _sniff_separator(lines[0])
    header = _split(lines[0], sep)
    if len(lines) < 2:
        raise InputError(f"{name} has a header row but no data rows.", "Export the table again with its data.")
    if len(lines[1].encode(encoding, errors="replace")) > _line_limit(len(header) + 1):
        raise _LineGuard.too_long(name, _line_limit(len(header) + 1))
    n_fields = len(_split(lines[1], sep))
    if len(header) == n_fields - 1:  # R's write.table leaves out the row-name header
        header = [""] + header
    if n_fields < 2:
        raise InputError(f"{name} has a single column (separator not recognised).",
                         "Use commas or tabs between fields, with cell or gene names in the first column.")
    complete = lines[1:] if head.endswith(b"\n") or len(head) < 1 << 20 else lines[1:-1]  # the last may be cut
    numbered = len(header) == n_fields and _first_column_is_data(header[0], [_split(ln, sep)[0] for ln in complete])
    if numbered:  # e.g. pandas' to_csv(index=False): no column of row names; the rows are numbered instead
        opts.warnings.append(f"{name} has no column of row names (its first column, '{header[0]}', holds values, "
                             f"not names): the rows are named {ROW_NAME.format(1)}, {ROW_NAME.format(2)}, ... in "
                             "file order.")
        header = [""] + header
    labels = [str(x) for x in header[1:]]
    if not labels:
        raise _odd_first_line(name, lines[0])
    rows_per_chunk = _rows_per_chunk(len(labels), opts)
    hint = _rows_hint(path, head, lines)
    acc = _Rows(opts, hint, path)
    # All-numeric tables (the usual counts matrix) are parsed by NumPy straight into one array
    # per chunk of rows: no per-column objects, so a genes x cells table with a million columns
    # reads in seconds. Anything else (text or label columns, NA, quoting) goes to pandas.
    layout = _read_numeric(path, opts, sep, encoding, labels, rows_per_chunk, acc, numbered)
    if layout is None:
        acc = _Rows(opts, hint, path)
        layout = _read_general(path, opts, sep, encoding, labels, rows_per_chunk, acc, numbered)
    orientation, reason, meta, data_pos, _text = layout
    blocks, ids, metas = acc.blocks, acc.ids, acc.metas
    if any(np.isnan(b.data if sp.issparse(b) else b).any() for b in blocks):
        # pandas reads a row with too few fields as missing values: say so (a cut download) rather than "NaN"
        short = _short_row(path, opts, sep, encoding, len(labels) + (0 if numbered else 1))
        if short is not None:
            raise short
    X = sp.vstack(blocks, format="csr") if sp.issparse(blocks[0]) else np.vstack(blocks)
    meta_frame = (pd.concat(metas, ignore_index=True) if metas else pd.DataFrame(index=range(len(ids)))).set_axis(ids)
    data_labels = [labels[p - 1] for p in data_pos]
    if orientation == "cells_x_genes":
        adata = ad.AnnData(X=X, obs=meta_frame, var=pd.DataFrame(index=data_labels))
    else:
        X = X.T.tocsr() if sp.issparse(X) else np.ascontiguousarray(X.T)
        adata = ad.AnnData(X=X, obs=pd.DataFrame(index=data_labels), var=meta_frame)
    opts.report.update(format="tsv" if sep == "\t" else "csv", separator=_SEPARATOR_NAMES[sep], compressed=gz,
                       orientation=orientation, orientation_reason=reason,
                       metadata_columns=[labels[p - 1] for p in sorted(meta)])
    if meta:
        _say_set_aside(meta, labels, layout, orientation, opts)
    return adata


def _short_row(path: Path, opts: Options, sep: str, encoding: str, n_fields: int) -> InputError | None:
    """The first data row with fewer fields than the header (``n_fields``) as an error, or ``None``.

    Only called when the values hold NaN (the file is refused then anyway), so the second pass
    over the file costs nothing on a good table. A short last row is what a download or copy cut
    short leaves: the file looks truncated. A short row elsewhere is named by its row and line."""
    name = opts.display_name
    found = None  # (row, line, fields) of the first short row
    row = 0
    with _open_rows(path, opts, sep, False, n_fields) as raw, \
            io.TextIOWrapper(raw, encoding=encoding, errors="replace", newline="") as text:
        lines = enumerate(text, start=1)
        reader = ((i, ln.split()) for i, ln in lines) if sep == r"\s+" else _numbered_csv(text, sep)
        try:
            next(reader, None)  # the header
            for line, fields in reader:
                if not any(f.strip() for f in fields):
                    continue  # a blank line: skipped by the reader too
                row += 1
                if found is not None:  # a row after the short one: it is not the last
                    break
                if len(fields) < n_fields:
                    found = (f"row {row:,} (line {line:,} of the file)", len(fields))
            else:
                if found is not None:
                    return InputError(
                        f"{name} looks truncated: its last row, {found[0]}, has {found[1]:,} of "
                        f"{n_fields:,} fields, as when a download or copy stops before the end of the file.",
                        "Download (or copy) the file again, completely, and read the new copy.",
                        app_hint="Download the file again, completely, and upload the new copy.")
                return None
        except csv.Error:  # a field beyond the csv module's limit: the other messages say what is wrong
            return None
    return InputError(f"{name}: {found[0]} has {found[1]:,} of {n_fields:,} fields; every row needs as many "
                      "fields as the header.",
                      "Fix that row (a missing value is written NA, or 0 for not expressed), or export the table "
                      "again.")


def _numbered_csv(text, sep: str):
    """``(line number, fields)`` of each record of a CSV/TSV text stream."""
    reader = csv.reader(text, delimiter=sep)
    for fields in reader:
        yield reader.line_num, fields


def _rows_per_chunk(n_values: int, opts: Options) -> int:
    """The most rows parsed at once: a chunk's parse (text, values, names) fits the dataset's memory
    budget; :meth:`_Rows.next_rows` also keeps it within the cell or gene limit."""
    by_budget = opts.max_dataset_bytes // (TABLE_PARSE_BYTES_PER_VALUE * n_values + TABLE_PARSE_BYTES_PER_ROW)
    return max(1, min(TABLE_CHUNK_ROWS, TABLE_CHUNK_VALUES // n_values, by_budget))


class _Rows:
    """The rows read so far: value blocks (sparse when mostly zeros), row names and metadata."""

    def __init__(self, opts: Options, rows_hint: tuple[int, bool, int] | None = None, path: Path | None = None):
        self.opts, self.blocks, self.ids, self.metas, self.held, self.orientation = opts, [], [], [], 0, None
        #: (rows the file holds, whether counted exactly, its size in bytes), from :func:`_rows_hint`, or None
        self.rows_hint = rows_hint
        #: the file, for its rows to be counted when there are more cells than the limit
        self.path = path

    def _all_rows(self) -> int | None:
        """The data rows of the whole file, for the too-many-cells message: ``None`` where not known cheaply."""
        return None if self.path is None else _count_rows(self.path)

    def next_rows(self, most: int) -> int:
        """Rows to parse next: at most ``most``, and at most one beyond what the cell (or gene) limit
        still allows, so that a table over the limit is refused before more of it is parsed."""
        if self.orientation is None:  # not known before the first chunk: the rows are cells or genes
            limit = min(self.opts.max_cells, self.opts.max_genes)
        else:
            limit = self.opts.max_cells if self.orientation == "cells_x_genes" else self.opts.max_genes
        return max(1, min(most, limit + 1 - len(self.ids)))

    def add(self, ids, block: np.ndarray, orientation: str, meta: pd.DataFrame | None = None) -> None:
        # mostly zeros (a counts table, judged on the first chunk): keep it sparse
        sparse = sp.issparse(self.blocks[0]) if self.blocks else np.count_nonzero(block) <= block.size / 2
        if sparse:
            block = sp.csr_matrix(block)
        self.held += block.data.nbytes + block.indices.nbytes + block.indptr.nbytes if sparse else block.nbytes
        self.blocks.append(block)
        self.ids.extend(ids)
        self.orientation = orientation
        if orientation == "cells_x_genes":
            check_cells(len(self.ids), self.opts, final=False, count=self._all_rows)
        else:
            check_genes(len(self.ids), self.opts)
        rows = len(self.ids)
        part = "its first row" if rows == 1 else f"its first {rows:,} rows"
        amount = after = None
        if self.held > self.opts.max_dataset_bytes:  # refused: say what the whole file would need
            amount, after = self._whole_need(rows, block.shape[1], part)
        check_memory(self.held, "its values", self.opts, read_so_far=part, amount=amount, after=after)
        if meta is not None:
            self.metas.append(meta)

    #: Rows of an example the message sizes when a table does not say how many rows it has.
    EXAMPLE_ROWS = 10_000

    def _whole_need(self, rows: int, n_values: int, part: str) -> tuple[str | None, str | None]:
        """What a table refused for memory after ``rows`` rows would need whole, as ``check_memory``'s
        ``amount`` and ``after``: estimated from the rows read so far and the number of rows the file
        holds (counted, or estimated from its size and the length of its first lines). Where that is
        not known (a compressed file): after one row, what a row and an example number of rows take;
        after more, ``(None, None)`` ("at least" what those rows took, which then means something)."""
        per_row = self.held / rows
        values = counted(n_values, "value")
        if self.rows_hint is not None:
            n_rows, exact, size = self.rows_hint
            whole = max(self.held, round(per_row * n_rows))
            how = (f"its {counted(n_rows, 'row')} of {values}" if exact else
                   f"about {counted(n_rows, 'row')} of {values}, as the file's size, {mb(size)}, and the length of "
                   "its first lines suggest")
            return (f"about {mb(whole)} of memory once read ({how})",
                    f"Reading stopped after {part}, which took {mb(self.held)}.")
        if rows > 1:
            return None, None
        example = self.EXAMPLE_ROWS
        return (f"about {mb(self.held)} of memory per row once read ({values} a row), and {part} alone takes that",
                "The rest of the file was not read and a compressed table does not say how many rows it has: "
                f"{example:,} rows would take about {mb(round(per_row * example))}.")


#: A line holding something else than blanks (its start only: nothing long is copied).
_FILLED_LINE = re.compile(rb"^[ \t\r\f\v]*[^ \t\r\f\v\n]", re.M)


def _count_rows(path: Path) -> int | None:
    """The data rows (lines holding something, after the header) of a plain UTF-8 table, in one pass
    over its bytes (bounded by the upload size limit: cheap next to parsing them), for the
    too-many-cells message; ``None`` where lines are not rows or cannot be told cheaply: a compressed
    file, UTF-16/32 text, a quoted field that goes on over a line break."""
    if path.name.lower().endswith(".gz"):
        return None
    filled = 0
    try:
        with path.open("rb") as fh:
            if fh.read(4).startswith(UTF16_BOMS + UTF32_BOMS):
                return None
            fh.seek(0)
            while chunk := fh.read(1 << 22):
                if not chunk.endswith(b"\n"):
                    chunk += fh.readline()  # whole lines in each chunk
                if b"\0" in chunk or b'"' in chunk and any(ln.count(b'"') & 1 for ln in chunk.split(b"\n")):
                    return None
                filled += len(_FILLED_LINE.findall(chunk))
    except OSError:
        return None
    return max(0, filled - 1)


def _rows_hint(path: Path, head: bytes, lines: list[str]) -> tuple[int, bool, int] | None:
    """How many data rows a plain (not compressed) UTF-8 table holds, for the memory message:
    ``(rows, True, size)`` when its first lines are the whole file, else ``(rows, False, size)``
    estimated from its size on disk and the mean length of its first data lines; ``None`` for a
    compressed file or UTF-16/32 text (their size on disk says nothing simple about their lines)."""
    if path.name.lower().endswith(".gz"):
        return None
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            start = fh.read(4)
    except OSError:
        return None
    if start.startswith(UTF16_BOMS) or start.startswith(UTF32_BOMS):
        return None
    if len(head) >= size:
        return max(0, len(lines) - 1), True, size
    end = head.rfind(b"\n") + 1
    first = head.find(b"\n") + 1
    sample = [ln for ln in head[first:end].split(b"\n") if ln.strip()]
    if not sample or end <= first:
        return None
    return max(1, round((size - first) * len(sample) / (end - first))), False, size


def _read_general(path: Path, opts: Options, sep: str, encoding: str, labels: list[str], rows_per_chunk: int,
                  acc: _Rows, numbered: bool = False):
    """pandas' own type inference, in chunks of rows (bounded memory: one chunk of parsed text)."""
    name, layout = opts.display_name, None
    # the decompressed stream is capped as it is read (a gzip bomb stops at the limit)
    with _open_rows(path, opts, sep, numbered, len(labels) + 1) as stream:
        # row names as written ("NA", "null" are names there); pandas' missing-value words in every other column
        missing = list(STR_NA_VALUES)
        reader = pd.read_csv(stream, sep=sep, header=None, skiprows=1, index_col=0, encoding=encoding, engine="c",
                             dtype={0: str}, low_memory=False, chunksize=rows_per_chunk, keep_default_na=False,
                             na_values={p: missing for p in range(1, len(labels) + 1)})
        try:
            while True:
                try:
                    chunk = reader.get_chunk(acc.next_rows(rows_per_chunk))
                except StopIteration:
                    break
                if layout is None:
                    layout = _table_layout(chunk, labels, opts)
                    _check_axes(layout, opts)
                orientation, _reason, meta, data_pos, _text = layout
                kinds = {p: dtype.kind for p, dtype in chunk.dtypes.items()}  # once per chunk: linear in columns
                for p in data_pos:
                    if kinds[p] not in "iuf":
                        raise _non_numeric(chunk[p], labels[p - 1], name)
                acc.add(chunk.index.astype(str), chunk[data_pos].to_numpy(dtype=np.float32), orientation,
                        pd.DataFrame({labels[p - 1]: _tidy_column(chunk[p]) for p in sorted(meta)}))
        except pd.errors.ParserError as exc:
            raise _malformed(name, exc) from None
    if layout is None:
        raise InputError(f"{name} has a header row but no data rows.", "Export the table again with its data.")
    return layout


def _read_numeric(path: Path, opts: Options, sep: str, encoding: str, labels: list[str], rows_per_chunk: int,
                  acc: _Rows, numbered: bool = False):
    """Read a table whose every field after the row name is a number; ``None`` if it is not one.

    Gives up (``None``, nothing kept) at the first line NumPy cannot take as it stands: a text
    or empty field, a quoted row name, a wrong number of fields, or label/group columns that
    the general reader sets aside. Values are parsed as float64 and rounded to float32, as pandas does.
    """
    layout = None
    with _open_rows(path, opts, sep, numbered, len(labels) + 1) as raw, io.TextIOWrapper(raw, encoding=encoding) as text:
        text.readline()  # the header, already parsed
        while True:
            try:
                lines = [ln for ln in itertools.islice(text, acc.next_rows(rows_per_chunk)) if ln.strip()]
            except UnicodeDecodeError:
                return None  # the general reader says where
            if not lines:
                break
            parsed = _numeric_lines(lines, sep, len(labels))
            if parsed is None:
                return None
            ids, block = parsed
            if layout is None:
                layout = _numeric_layout(ids, labels, opts)
                if layout is None:
                    return None
                _check_axes(layout, opts)
            acc.add(ids, block, layout[0])
    return layout


def _numeric_lines(lines: list[str], sep: str, n_values: int):
    ids, rests = [], []
    for line in lines:
        parts = line.split(None, 1) if sep == r"\s+" else line.split(sep, 1)
        if len(parts) < 2 or '"' in parts[0]:
            return None
        ids.append(parts[0])
        rests.append(parts[1])
    if not all(rest.strip() for rest in rests):  # a row with no values (loadtxt would skip it, or warn)
        return None
    try:
        block = np.loadtxt(rests, delimiter=None if sep == r"\s+" else sep, dtype=np.float64, comments=None,
                           quotechar='"', ndmin=2)
    except ValueError:
        return None
    if block.shape != (len(lines), n_values):
        return None
    return ids, block.astype(np.float32)


def _numeric_layout(ids: list[str], labels: list[str], opts: Options):
    """The layout of an all-numeric table, or ``None`` when label/group columns must be set aside."""
    named = [p for p in range(1, len(labels) + 1) if column_kind(labels[p - 1])]
    if opts.orientation != "auto":
        orientation, reason = opts.orientation, "given by the user"
    else:
        named_set = set(named)
        candidates = [labels[p - 1] for p in range(1, len(labels) + 1) if p not in named_set]
        orientation, reason = decide_orientation(pd.Index(ids), candidates, [labels[p - 1] for p in named],
                                                 opts.samples)
    if orientation == "cells_x_genes" and named:
        return None
    return orientation, reason, set(), list(range(1, len(labels) + 1)), set()


def _say_set_aside(meta: set, labels: list[str], layout, orientation: str, opts: Options) -> None:
    """A warning naming the columns that were kept as cell (or gene) information, not data, and why."""
    text_cols = layout[4]
    where = "cell information (obs)" if orientation == "cells_x_genes" else "gene information (var)"
    parts = [f"'{labels[p - 1]}' ({'text' if p in text_cols else 'named like a label or group'})"
             for p in sorted(meta)[:8]]
    more = f" and {len(meta) - 8} more" if len(meta) > 8 else ""
    one = len(meta) == 1
    opts.warnings.append(f"{counted(len(meta), 'column')} {'was' if one else 'were'} set aside as {where}, not "
                         f"expression: {', '.join(parts)}{more}. {'It is' if one else 'They are'} available as "
                         f"{'a label or group' if one else 'labels or groups'}.")


def _table_layout(chunk: pd.DataFrame, labels: list[str], opts: Options):
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
    named = {p for p in chunk.columns if column_kind(labels[p - 1])}
    if opts.orientation != "auto":
        orientation, reason = opts.orientation, "given by the user"
    else:
        candidates = [labels[p - 1] for p in chunk.columns if p not in non_numeric and p not in named]
        orientation, reason = decide_orientation(chunk.index.astype(str), candidates,
                                                  [labels[p - 1] for p in sorted(named)], opts.samples)
    meta = non_numeric | (named if orientation == "cells_x_genes" else set())
    data_pos = [p for p in chunk.columns if p not in meta]
    if not data_pos:
        raise InputError(f"{name} has no numeric columns: every column holds text.",
                         _comma_hint(chunk.iloc[:20, :20].to_numpy().ravel())
                         or "The table needs one column per gene (or per cell) of numbers.")
    return orientation, reason, meta, data_pos, non_numeric


def _check_axes(layout, opts: Options) -> None:
    """The columns are cells or genes, by the orientation; their number is known from the header."""
    orientation, _reason, _meta, data_pos, _text = layout
    if orientation == "cells_x_genes":
        check_genes(len(data_pos), opts)
    else:
        check_cells(len(data_pos), opts, final=False)


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


_DECIMAL_COMMA = re.compile(r"^[-+]?\d+(\.\d{3})*,\d+$")  # 0,5 12,37 1.234,5
#: Digits grouped in threes by commas: 1,000 12,345.6 (never 0,123: a group does not start with 0)
_THOUSANDS = re.compile(r"^[-+]?[1-9]\d{0,2}(,\d{3})+(\.\d+)?$")
DECIMAL_COMMA_HINT = ("The numbers are written with decimal commas (e.g. 0,5): save the table with decimal points "
                      "(e.g. a spreadsheet's CSV export in an English locale).")
THOUSANDS_HINT = ("The numbers are written with thousands separators (e.g. 1,000): save the table without them "
                  "(in a spreadsheet, format the numbers without the 1000 separator, then export it as CSV).")


def _comma_hint(values) -> str | None:
    """What the commas in these text values are, as advice: thousands separators when every value
    with a comma groups its digits in threes (1,000; 12,345.6), decimal commas when any is
    written as one (0,5; 1.234,5); else None."""
    texts = [str(v).strip() for v in values if isinstance(v, str) and "," in v][:1000]
    if texts and all(_THOUSANDS.match(t) for t in texts):
        return THOUSANDS_HINT
    if any(_DECIMAL_COMMA.match(t) for t in texts):
        return DECIMAL_COMMA_HINT
    return None


def _non_numeric(values: pd.Series, label: str, name: str) -> InputError:
    present = values.dropna()
    bad = present[pd.to_numeric(present, errors="coerce").isna()]
    return InputError(f"{name}: column '{label}' holds non-numeric values (e.g. {bad.iloc[0]!r} in row "
                      f"'{bad.index[0]}').",
                      _comma_hint(bad.iloc[:1000]) or
                      "Expression values must be numbers; fix or remove that column, or write missing "
                      "values as NA.")
