"""A per-cell metadata table (CSV/TSV keyed by cell ID) added to the data's ``obs``.

10x output, matrix files and tables of genes x cells carry no labels or samples; this is how
they get them: a table with the cell IDs in its first column (or in one named like ``cell_id``
or ``barcode``) and one column per annotation (``response``, ``sample``, ...). Its rows are
matched to the data's cell IDs exactly; a row left over is matched when the IDs differ only by a
10x barcode suffix (``AAAC`` and ``AAAC-1``) and the match is unambiguous, and the count of such
matches is said. The columns go into ``obs`` (cells without a row get a missing value), never
over an existing column: a name already taken gets ``_meta`` appended, and that is said.

What was added is recorded in ``uns['scatd_cell_metadata']`` (with the sha256 of the table's file
or upload, so a model trained on its columns can name it); adding another table replaces the
columns of the earlier one (adding the same table again changes nothing).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pandas as pd

from scatd_core._words import counted
from scatd_core._json import json_safe
from scatd_core._keys import CELL_METADATA, INPUT_REPORT, LABEL_DIRECTIONS
from scatd_core.config import limits
from scatd_core.errors import InputError
from scatd_core.io._common import column_kind, display_name, is_utf16, text_file_problem, too_large

#: Column names (lower case, letters and digits only) that hold the cell IDs.
ID_COLUMN_NAMES = frozenset({"cell", "cells", "cellid", "cellids", "cellname", "cellnames", "cellbarcode",
                             "cellbarcodes", "barcode", "barcodes", "obsnames", "obsname", "index"})
#: A 10x barcode suffix: ``-1`` (``-2`` ... for libraries aggregated by cellranger aggr).
_SUFFIX = re.compile(r"^(.+)(-\d{1,3})$")
#: Appended to a column name the data already has.
CLASH_SUFFIX = "_meta"
_LAYOUT = ("Give a CSV or TSV with a header line, the cell IDs in the first column (or in one named cell_id or "
           "barcode) and one column per annotation, e.g. cell_id,response,sample.")


def read_cell_metadata(source, name: str | None = None) -> pd.DataFrame:
    """The table of a CSV/TSV (plain or gzipped; UTF-8, or UTF-16 as Excel's "Unicode text"),
    every value as text, from a path or an upload's bytes (``name``: the file's name in messages,
    never a server path). At most one row per cell the server accepts
    (:func:`~scatd_core.config.limits`), within the size limits of every label table."""
    from scatd_core.labels import _read_table  # not at the top: scatd_core.labels imports scatd_core.io lazily

    if isinstance(source, (bytes, bytearray, memoryview)):
        shown = display_name(name or "cell metadata")
        size = memoryview(source).nbytes
        if size > limits().max_upload_bytes:
            raise too_large(shown, size, limits().max_upload_bytes)
        folder = Path(tempfile.mkdtemp(prefix="scatd-metadata-"))
        try:
            path = folder / "upload.txt"
            path.write_bytes(source)
            return read_cell_metadata(path, shown)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    path = Path(source)
    shown = name or path.name
    if path.is_file():
        with path.open("rb") as fh:
            head = fh.read(8192)
        problem = text_file_problem(path, head, shown)  # an Excel workbook: named, with the export to use
        if problem is not None:
            raise problem
        if not head.startswith(b"\x1f\x8b") and not is_utf16(head) and (b"\x00" in head or head.startswith(b"%PDF")):
            raise InputError(f"{shown} is not a text table (it holds binary data: another kind of file, or a "
                             "damaged one).", _LAYOUT)
    table = _read_table(path, "Cell metadata table", max_rows=limits().max_cells, name=shown, dtype=str,
                        keep_default_na=False)
    if table.shape[0] == 0:
        raise InputError(f"{shown} has a header but no rows.", _LAYOUT)
    if table.shape[1] < 2:
        raise InputError(f"{shown} has one column; a cell metadata table needs the cell IDs and at least one "
                         "column of annotations (e.g. response or sample).", _LAYOUT)
    table.columns = [str(c).strip() for c in table.columns]
    if path.is_file():  # the file's fingerprint, recorded with what it adds (a trained model names it)
        from scatd_core.bundle import sha256_file  # not at the top: bundle loads torch

        table.attrs["sha256"] = sha256_file(path)
    return table


def _id_column_order(table: pd.DataFrame) -> list[str]:
    """The columns that may hold the cell IDs, the preferred first: one named like ``cell_id``
    or ``barcode``, then the first column."""
    named = [c for c in table.columns if re.sub(r"[^a-z0-9]", "", c.lower()) in ID_COLUMN_NAMES]
    first = table.columns[0]
    return named + ([first] if first not in named else [])


def _match(ids: list[str], obs_names: pd.Index) -> tuple[dict[int, str], dict[int, str]]:
    """``({row: cell} matched exactly, {row: cell} matched ignoring a barcode suffix)``.

    A suffix match pairs a row ID and a cell ID that differ only by a ``-<number>`` at the end
    of one of them (``AAAC`` / ``AAAC-1``); only unambiguous pairs count (a row that fits two
    cells, or two rows one cell, match nothing), and never a cell already matched exactly."""
    position = {name: i for i, name in enumerate(obs_names)}
    exact = {row: cid for row, cid in enumerate(ids) if cid in position}
    taken = set(exact.values())
    by_base: dict[str, list[str]] = {}
    plain = set()
    for cell in obs_names:
        if cell in taken:
            continue
        m = _SUFFIX.match(cell)
        if m:
            by_base.setdefault(m.group(1), []).append(cell)
        else:
            plain.add(cell)
    loose = {}
    for row, cid in enumerate(ids):
        if row in exact or not cid:
            continue
        m = _SUFFIX.match(cid)
        if m and m.group(1) in plain:
            loose[row] = m.group(1)
        elif not m and len(by_base.get(cid, ())) == 1:
            loose[row] = by_base[cid][0]
    counts = Counter(loose.values())
    return exact, {row: cell for row, cell in loose.items() if counts[cell] == 1}


def _as_values(text: pd.Series) -> pd.Series:
    """One column's values: numbers when every value is one (and none is written with a leading
    zero, as sample names "01", "02" are), else text; missing markers (``NA``, empty ...) missing."""
    from scatd_core.labels import MISSING_VALUES

    stripped = text.astype(str).str.strip()
    values = stripped.where(~stripped.str.lower().isin(MISSING_VALUES))
    present = values.dropna()
    numbers = pd.to_numeric(present, errors="coerce")
    if len(present) and numbers.notna().all() and not present.str.match(r"^[+-]?0\d").any():
        return pd.to_numeric(values, errors="coerce")
    words = present.str.lower()
    if len(present) and words.isin(("true", "false")).all():  # True/False, TRUE/FALSE (R, Excel): a mask
        flags = values.str.lower().map({"true": True, "false": False})
        return flags.astype(bool) if flags.notna().all() else flags.astype(object)
    return values


def _free_name(column: str, taken: set[str]) -> str:
    name = f"{column}{CLASH_SUFFIX}"
    n = 2
    while name in taken:
        name, n = f"{column}{CLASH_SUFFIX}{n}", n + 1
    return name


def _as_list(values) -> list[str]:
    """A list of names kept in ``uns`` (a list, or an array once read from an h5ad; ``None``: empty)."""
    return [] if values is None else [str(v) for v in values]


def _examples(values, n: int = 3) -> str:
    return ", ".join(repr(str(v)) for v in list(values)[:n])


def remove_cell_metadata(adata) -> list[str]:
    """Remove the columns an earlier cell metadata table added (and their recorded label
    directions); returns their names."""
    record = adata.uns.get(CELL_METADATA)
    if not record:
        return []
    columns = [str(c) for c in record.get("columns", ()) if str(c) in adata.obs]
    if columns:
        adata.obs = adata.obs.drop(columns=columns)
        from scatd_core.predict import forget_label_calibrations

        for column in columns:  # a threshold fitted on labels that are gone means nothing any more
            forget_label_calibrations(adata, column, why="another cell metadata table replaced the column")
    directions = dict(adata.uns.get(LABEL_DIRECTIONS, {}))
    if any(c in directions for c in columns):
        adata.uns[LABEL_DIRECTIONS] = {k: v for k, v in directions.items() if k not in columns}
    report = adata.uns.get(INPUT_REPORT)
    if isinstance(report, dict):
        report["label_columns"] = {k: v for k, v in (report.get("label_columns") or {}).items() if k not in columns}
        report["group_columns"] = [c for c in _as_list(report.get("group_columns")) if c not in columns]
    del adata.uns[CELL_METADATA]
    return columns


def add_cell_metadata(adata, source, name: str | None = None) -> dict:
    """Add the columns of a cell metadata table (a path, an upload's bytes, or a table from
    :func:`read_cell_metadata`) to ``adata.obs``, matched by cell ID; returns the record kept in
    ``uns['scatd_cell_metadata']`` (:func:`cell_metadata_messages` says it in words).

    Raises :class:`InputError` (nothing changed) when no row matches a cell, when the table lists
    a cell twice, or when it has no header line.
    """
    if isinstance(source, pd.DataFrame):
        table, shown = source, display_name(name or "the cell metadata table")
    else:
        shown = display_name(name) if name else (Path(source).name if not isinstance(
            source, (bytes, bytearray, memoryview)) else "the cell metadata table")
        table = read_cell_metadata(source, shown)
    obs_names = pd.Index([str(c) for c in adata.obs_names])
    first = table.columns[0]
    if str(first).strip() in set(obs_names):
        raise InputError(f"{shown} has no header line: its first line starts with the cell ID '{first}'.",
                         "Add a header line naming the columns, e.g. cell_id,response,sample.")
    best = None
    for column in _id_column_order(table):
        ids = [str(v).strip() for v in table[column]]
        exact, loose = _match(ids, obs_names)
        if best is None or len(exact) + len(loose) > len(best[2]) + len(best[3]):
            best = (column, ids, exact, loose)
    id_column, ids, exact, loose = best
    n_rows = len(ids)
    if not exact and not loose:
        shown_column = "its first column" if str(id_column).startswith("Unnamed: ") else f"its column '{id_column}'"
        raise InputError(f"None of the {n_rows:,} cell IDs in {shown} ({shown_column}, e.g. "
                         f"{_examples(ids)}) is a cell of the data (e.g. {_examples(obs_names)}).",
                         "Put the data's cell IDs (barcodes), written as in the data, in the first column or in one "
                         "named cell_id or barcode. A 10x barcode suffix ('-1') on one side only is matched; other "
                         "differences, such as a sample name Seurat puts before the barcode, are not: remove them "
                         "first.")
    counts = Counter(ids)
    repeated = [i for i, n in counts.items() if n > 1 and i]
    if repeated:
        raise InputError(f"{shown} lists {counted(len(repeated), 'cell ID')} more than once (e.g. {_examples(repeated)}).",
                         "Keep one row per cell.")

    kept = [c for c in table.columns if c != id_column and not c.startswith("scatd_")]
    if not kept:
        raise InputError(f"{shown} has no column to add besides the cell IDs"
                         + (" (names starting with scatd_ are scATD Studio's own results, never added)."
                            if len(table.columns) > 1 else "."), _LAYOUT)
    removed = remove_cell_metadata(adata)  # another table (or this one again) replaces the earlier columns
    matched = {**exact, **loose}
    rows = sorted(matched)
    cells = [matched[r] for r in rows]
    taken = {str(c) for c in adata.obs.columns}
    added, skipped = {}, []
    new = {}
    for column in table.columns:
        if column == id_column:
            continue
        if column.startswith("scatd_"):  # scATD Studio's own results (an earlier predictions.csv): never data
            skipped.append(column)
            continue
        target = column if column not in taken and column not in new else _free_name(column, taken | set(new))
        values = _as_values(table[column].iloc[rows].reset_index(drop=True))
        values.index = pd.Index(cells)
        values = values.reindex(obs_names)
        new[target] = values.to_numpy() if pd.api.types.is_numeric_dtype(values) else pd.Categorical(values)
        added[column] = target
    for target, values in new.items():
        adata.obs[target] = values
    unmatched_rows = [ids[r] for r in range(n_rows) if r not in matched]
    named = [i for i in unmatched_rows if i]
    without = obs_names[~obs_names.isin(set(cells))]
    suffix_pairs = [(ids[r], matched[r]) for r in sorted(loose)][:1]
    record = {
        "file": shown, "id_column": str(id_column), "id_column_is_first": bool(id_column == first),
        "n_rows": n_rows, "n_cells": int(adata.n_obs), "n_matched": len(matched), "n_matched_by_suffix": len(loose),
        "suffix_example": list(suffix_pairs[0]) if suffix_pairs else None,
        "n_rows_unmatched": len(unmatched_rows), "unmatched_examples": named[:3],
        "n_cells_without_row": int(len(without)), "columns": list(added.values()), "sources": list(added),
        "skipped": skipped, "replaced": removed,
        **({"sha256": str(table.attrs["sha256"])} if table.attrs.get("sha256") else {}),  # of the file read
    }
    adata.uns[CELL_METADATA] = json_safe(record)
    report = adata.uns.get(INPUT_REPORT)
    if isinstance(report, dict):  # the new columns are flagged as the reader flags a file's own
        labels, groups = dict(report.get("label_columns") or {}), _as_list(report.get("group_columns"))
        for column, target in added.items():
            kind = column_kind(column)
            if kind == "group" and target not in groups:
                groups.append(target)
            elif kind == "label":
                present = adata.obs[target].dropna()
                n_values = int(present.nunique())
                entry = {"n_missing": int(adata.obs[target].isna().sum()), "n_values": n_values,
                         "binary": n_values == 2}
                if n_values <= 20:
                    entry["values"] = {str(k): int(v) for k, v in present.value_counts().items()}
                labels[target] = entry
        report["label_columns"], report["group_columns"] = json_safe(labels), groups
    return adata.uns[CELL_METADATA]


def cell_metadata_messages(record) -> list[str]:
    """What adding a cell metadata table did, in sentences (the app and the CLI say the same):
    the first the summary, then one per thing to know."""
    if not record:
        return []
    columns = [str(c) for c in record.get("columns", ())]
    sources = [str(c) for c in record.get("sources", ())]
    unnamed = record.get("id_column_is_first") and str(record["id_column"]).startswith("Unnamed: ")  # pandas' name
    id_where = "first column" if unnamed else f"column '{record['id_column']}'"
    n_cells, n_matched = int(record["n_cells"]), int(record["n_matched"])
    lines = [f"{record['file']}: {n_matched:,} of the data's {n_cells:,} cells matched a row (cell IDs from its "
             f"{id_where}); added {counted(len(columns), 'column')}: {', '.join(columns) or 'none'}."]
    if record.get("n_matched_by_suffix"):
        table_id, cell_id = (str(v) for v in record["suffix_example"])  # a list, or an array once read from h5ad
        lines.append(f"{int(record['n_matched_by_suffix']):,} of them matched only once a barcode suffix was ignored "
                     f"(the table's '{table_id}' is the data's '{cell_id}').")
    if record.get("n_rows_unmatched"):
        one = int(record['n_rows_unmatched']) == 1
        lines.append(f"{counted(record['n_rows_unmatched'], 'row')} of the table's {int(record['n_rows']):,} "
                     f"{'matches' if one else 'match'} no cell of the data "
                     + (f"(e.g. {_examples(record['unmatched_examples'])})" if len(record.get("unmatched_examples", ()))
                        else "(without a cell ID)") + ("; it is left out." if one else "; they are left out."))
    if record.get("n_cells_without_row"):
        one = int(record['n_cells_without_row']) == 1
        lines.append(f"{counted(record['n_cells_without_row'])} {'has no row: its' if one else 'have no row: their'} "
                     "values are missing (left out "
                     "of label scores and sample fractions).")
    for column, target in ((c, t) for c, t in zip(sources, columns) if c != t):
        lines.append(f"The data already has a column '{column}': the table's is added as '{target}'.")
    if len(record.get("skipped", ())):
        lines.append(f"Left out {', '.join(map(str, record['skipped']))}: names starting with scatd_ are scATD Studio's own "
                     "results.")
    if len(record.get("replaced", ())):
        lines.append(f"Replaced the columns of the table added before ({', '.join(map(str, record['replaced']))}).")
    return lines


__all__ = ["read_cell_metadata", "add_cell_metadata", "remove_cell_metadata", "cell_metadata_messages",
           "ID_COLUMN_NAMES", "CLASH_SUFFIX"]
