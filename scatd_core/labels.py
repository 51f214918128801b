"""Drug-response labels: per-cell label columns, and label tables of bulk cell lines.

**Per-cell labels** (a column of the user's data with known responses, for evaluation or a few
labelled cells for training) come as they are in the file: ``resistant``/``sensitive``,
``R``/``S``, ``responder``/``non-responder``, ``1``/``0``, ``True``/``False`` ... Which value
means *resistant* is one question, asked once per column (:func:`set_label_direction`) and
stored with the data in ``uns['scatd_labels']``, so every page, the CLI and the reports read
the same answer (:func:`encode_column`). Words are recognised (:func:`guess_label_direction`);
numeric or boolean codes never get a silent default, because datasets disagree (SCAD's
``response`` is 1 = *sensitive*). Missing values (:data:`MISSING_VALUES`) are left out and
counted, never turned into a third class.

**Bulk label tables**
are cell lines (rows, index) x drugs (columns) holding ``sensitive`` /
``resistant``, the format of scATD's ``ALL_label_binary_wf.csv``: a CSV whose first (unnamed)
column is the cell-line ID. Missing values (empty, ``NA``, ``nan``) mean "not screened"; they
are dropped and counted, never turned into a third class. Drug names are matched
case-insensitively, then ignoring punctuation (so ``PLX-4720`` finds R's ``PLX.4720`` and
``5-Fluorouracil`` finds ``X5.FLUOROURACIL``).

:func:`labels_from_ic50` builds such a table from GDSC ln(IC50) values and per-drug thresholds
(the DeepCDR files ``GDSC_IC50.csv``, ``IC50_thred.txt`` and the GDSC drug list): a cell line
is sensitive when its ln(IC50) is below the drug's threshold.
"""

from __future__ import annotations

import difflib
import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from scatd_core._words import counted
from scatd_core._keys import LABEL_DIRECTIONS, RESISTANT, SENSITIVE
from scatd_core._output import replacing, sha256_file, write_file
from scatd_core._train_settings import MIN_LINES_PER_CLASS
from scatd_core.config import limits
from scatd_core.errors import InputError

#: Class indices of the models (``label_mapping`` of every bundle scATD Studio trains).
LABEL_MAPPING = {SENSITIVE: 0, RESISTANT: 1}


def too_few_lines(drug: str, n_sensitive: int, n_resistant: int, min_lines: int = MIN_LINES_PER_CLASS
                  ) -> InputError | None:
    """The refusal of a drug with fewer than ``min_lines`` labelled cell lines in either class (or ``None``):
    raised by :func:`scatd_core.train.train_drug_model` before any training, shown by the Train page as soon as
    the drug is chosen."""
    if min(int(n_sensitive), int(n_resistant)) >= int(min_lines):
        return None
    return InputError(
        f"{drug}: only {n_sensitive:,} sensitive and {n_resistant:,} resistant labelled cell lines in the bulk data; "
        f"a model needs at least {int(min_lines)} of each. With fewer, the bulk "
        "cross-validation's AUROC and its interval rest on a handful of cell lines and cannot be trusted.",
        "Choose a drug with more labelled cell lines of both classes, or give a lower --min-lines (at least 2) to "
        "train it anyway: its model card then says that its bulk scores cannot be trusted.",
        app_hint="Choose a drug with more labelled cell lines of both classes, or lower 'Fewest labelled cell lines "
                 "per class' in Settings to train it anyway: its model card then says that its bulk scores cannot be "
                 "trusted.")
#: Text that means "no value" in any table or label column (compared lower-case, stripped).
MISSING_VALUES = frozenset({"", "na", "nan", "n/a", "none", "null", "-", "?", ".", "unknown"})
#: Words recognised as naming a class (lower case, ``-``/``_``/space removed).
_RESISTANT_WORDS = ("resistant", "resistance", "r", "nonresponder", "nonresponse", "nonresponsive", "refractory")
_SENSITIVE_WORDS = ("sensitive", "sensitivity", "s", "responder", "response", "responsive")
#: Words for a reference group, not a response: a column of one response word and one of these
#: (``sensitive``/``control``, ``resistant``/``parental``) does not say which cells resist the
#: drug, so the user is asked.
_REFERENCE_WORDS = ("control", "ctrl", "parental", "parent", "untreated", "naive", "baseline", "vehicle", "dmso",
                    "mock", "pre", "pretreatment", "before", "wt", "wildtype", "normal", "other", "unknown", "na")


# --------------------------------------------------------------------------- reading tables

#: Label tables are small: GDSC's IC50 table is ~250 drugs x ~1,000 cell lines (5 MB), its label
#: table about the transpose, a labelled-cells file one short line per cell. These bound what
#: :func:`_read_table` reads (decompressed text, columns, rows and values), whatever the file says.
MAX_TABLE_TEXT_BYTES = 256 << 20
MAX_TABLE_HEADER_BYTES = 4 << 20
MAX_TABLE_COLUMNS = 20_000
MAX_TABLE_ROWS = 100_000
MAX_TABLE_VALUES = 10_000_000
_TABLE_HINT = ("Check that you gave the right file: an IC50 or label table has a row per drug or cell line (GDSC: "
               "~250 drugs, ~1,000 cell lines), a labelled-cells file a row per labelled cell.")


def _open_table_text(path: Path, name: str):
    """``path`` as binary text: gzip (by its first bytes) decompressed, never more than
    :data:`MAX_TABLE_TEXT_BYTES` (or the server's decompression limit, when lower); UTF-16 text
    (Excel's "Unicode text", by its byte-order mark) given as UTF-8, decoded as it is read."""
    import io

    # not at the top: scatd_core.io imports this module
    from scatd_core.io._common import (LimitedReader, encoding_problem, first_bytes, is_office_zip, is_utf16, mb,
                                       utf8_text)

    cap = min(MAX_TABLE_TEXT_BYTES, limits().max_decompressed_bytes)
    with path.open("rb") as fh:
        head = fh.read(8192)
    gz = head.startswith(b"\x1f\x8b")
    if not gz and path.stat().st_size > cap:
        raise InputError(f"{name} is {mb(path.stat().st_size)}, over the limit of {mb(cap)} for a table of labels "
                         "or IC50 values.", _TABLE_HINT)
    office = is_office_zip(path, head)
    if office:
        raise InputError(f"{name} is an {office}, not a CSV/TSV table." if office[0] in "AEIOU" else
                         f"{name} is a {office}, not a CSV/TSV table.",
                         "Export the sheet as CSV (Excel: File > Save As > 'CSV UTF-8 (Comma delimited)') and give "
                         "that file.")
    text_head = first_bytes(path, gz, 8192) if gz else head
    problem = encoding_problem(text_head, name, "CSV/TSV table")  # UTF-32, binary
    if problem is not None:
        raise problem
    raw = gzip.open(path, "rb") if gz else path.open("rb")
    limited = io.BufferedReader(LimitedReader(raw, cap, name, None if cap < MAX_TABLE_TEXT_BYTES else _TABLE_HINT),
                                buffer_size=1 << 20)
    return utf8_text(limited, is_utf16(text_head), name)


def _read_table(path: Path, what: str, max_rows: int = MAX_TABLE_ROWS, *, name: str | None = None,
                **kw) -> pd.DataFrame:
    """A CSV/TSV (gzipped or not) of at most ``max_rows`` rows, :data:`MAX_TABLE_COLUMNS` columns
    and :data:`MAX_TABLE_VALUES` values; ``kw`` go to :func:`pandas.read_csv`. ``name``: the file's
    name in messages (an upload's own name; default the path's)."""
    if not path.is_file():
        raise InputError(f"{what} not found: {path}", "Check the path.")
    name = name or path.name
    try:
        with _open_table_text(path, name) as fh:
            first = fh.readline(MAX_TABLE_HEADER_BYTES + 1)
        if len(first) > MAX_TABLE_HEADER_BYTES:
            raise InputError(f"{name} ({what}): the first line is longer than {MAX_TABLE_HEADER_BYTES >> 20} MB, "
                             "so it is not a table.", f"Give the {what.lower()} as a CSV or TSV file, one row per line.")
        text = first.decode("utf-8", errors="replace")
        # the separator is read off the header line, so none has to be given
        sep = max(("\t", ",", ";"), key=text.count)
        n_columns = text.count(sep) + 1
        if n_columns > MAX_TABLE_COLUMNS:
            raise InputError(f"{name} ({what}) has {n_columns:,} columns, over the limit of {MAX_TABLE_COLUMNS:,}.",
                             _TABLE_HINT)
        allowed = max(1, min(max_rows, MAX_TABLE_VALUES // n_columns))
        with _open_table_text(path, name) as fh:  # at most one row beyond the limit is parsed
            table = pd.read_csv(fh, sep=sep, encoding="utf-8", compression=None, nrows=allowed + 1, **kw)
    except UnicodeDecodeError:
        raise InputError(f"{name} ({what}) is not UTF-8 text.",
                         "Save it as CSV UTF-8 (Excel: File > Save As > 'CSV UTF-8 (Comma delimited)') and give it "
                         "again.") from None
    except pd.errors.EmptyDataError:  # which of the command's files is empty, by what it is (QA: --bulk-labels)
        raise InputError(f"{name} ({what}) is empty: it has no header line and no rows.",
                         f"Give the {what.lower()} as a CSV or TSV file with a header line.") from None
    except (pd.errors.ParserError, ValueError, OSError, EOFError) as exc:
        raise InputError(f"{name} ({what}) is not a readable CSV/TSV table ({exc}).",
                         f"Give the {what.lower()} as a CSV or TSV file.") from None
    if len(table) > allowed:
        limit = (f"{max_rows:,} rows" if allowed == max_rows
                 else f"{MAX_TABLE_VALUES:,} values ({allowed:,} rows of {n_columns:,} columns)")
        raise InputError(f"{name} ({what}) has more than {limit}, over the limit.", _TABLE_HINT)
    return table


def read_label_table(source: str | Path | pd.DataFrame, name: str | None = None) -> pd.DataFrame:
    """A label table (cell lines x drugs) from a CSV/TSV path or a DataFrame.

    The first column of a file holds the cell-line IDs (any header, or none). Values are kept as
    given; :func:`drug_labels` interprets them. ``name``: the file's name in messages (an
    upload's own name; default the path's).
    """
    if isinstance(source, pd.DataFrame):
        table = source.copy()
    else:
        path = Path(source)
        table = _read_table(path, "Label table", name=name, index_col=0, dtype=str, keep_default_na=False)
    if table.shape[1] == 0 or table.shape[0] == 0:
        raise InputError("The label table has no drug columns or no cell lines.",
                         "Give cell lines as rows (IDs in the first column) and one column per drug, "
                         "as in GDSC's ALL_label_binary_wf.csv.")
    table.index = pd.Index([str(i).strip() for i in table.index], name=None)
    table.columns = [str(c).strip() for c in table.columns]
    if not isinstance(source, pd.DataFrame):
        _refuse_transposed(table, name or Path(source).name)
        made, _ = read_ic50_provenance(source)  # built by scatd labels-from-ic50: how, as labels_from_ic50 says
        if made is not None:
            table.attrs["report"] = made
    if table.index.duplicated().any():
        dup = table.index[table.index.duplicated()].unique()[:3].tolist()
        raise InputError(f"The label table lists {counted(table.index.duplicated().sum(), 'cell line')} twice "
                         f"(e.g. {', '.join(dup)}).", "Keep one row per cell line.")
    return table


def _loose(name: str) -> str:
    """Lower case, letters and digits only, R's ``X`` prefix before a digit removed."""
    key = re.sub(r"[^a-z0-9]", "", str(name).lower())
    return key[1:] if re.match(r"^x\d", key) else key


def match_drug(drug: str, names, where: str = "the label table") -> str:
    """The column of ``names`` that means ``drug``; :class:`InputError` listing close names if none.

    Exact match first, then case-insensitive, then ignoring punctuation and R's ``X`` prefix.
    """
    names = [str(n) for n in names]
    query = str(drug).strip()
    if query in names:
        return query
    for rule in (str.lower, _loose, lambda n: _loose(_strip_note(n))):
        hits = [n for n in names if rule(n) == rule(query)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise InputError(f"Drug {query!r} matches several columns: {', '.join(hits)}.",
                             "Give the exact column name.")
    loose = {_loose(n): n for n in names}
    close = [n for n in names if _loose(query) and _loose(query) in _loose(n)][:5]
    close += [loose[k] for k in difflib.get_close_matches(_loose(query), list(loose), n=5, cutoff=0.6)
              if loose[k] not in close]
    hint = (f"Close names: {', '.join(close[:6])}." if close else
            f"The only drug there is {names[0]}." if len(names) == 1 else
            f"There are {len(names)} drugs, e.g. {', '.join(names[:6])}.")
    raise InputError(f"Drug {query!r} is not in {where}.", hint)


@dataclass
class DrugLabels:
    """One drug's labels: ``labels`` (index = cell line, values sensitive/resistant) and counts."""

    drug: str
    labels: pd.Series
    n_missing: int

    @property
    def counts(self) -> dict[str, int]:
        return {SENSITIVE: int((self.labels == SENSITIVE).sum()), RESISTANT: int((self.labels == RESISTANT).sum())}

    @property
    def y(self) -> np.ndarray:
        """Class indices (``LABEL_MAPPING``: sensitive 0, resistant 1)."""
        return self.labels.map(LABEL_MAPPING).to_numpy(dtype=np.int64)


def drug_label_values(table: pd.DataFrame, drug: str) -> pd.Series:
    """One drug's column of a label table as stripped lower-case text, missing markers
    (:data:`MISSING_VALUES`, empty cells) as ``""``."""
    column = match_drug(drug, table.columns)
    text = table[column].map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v))
                             else str(v).strip().lower())
    return text.where(~text.isin(MISSING_VALUES), "")


#: The Train page's expander (in its Upload mode) that builds a label table from GDSC ln(IC50) values.
IC50_BUILDER = "No label table? Build one from GDSC ln(IC50) values"


def other_label_values(table: pd.DataFrame, drug: str, *, upload_shown: bool = True) -> InputError | None:
    """The refusal of a drug whose column holds values other than sensitive/resistant or a missing
    marker (or ``None``): raised by :func:`drug_labels` (so by training, app and CLI alike), shown by
    the Train page as soon as the drug is chosen. ``upload_shown``: whether the page shows its Upload
    mode (the label upload and the 'No label table?' builder); else its hint says to choose Upload first."""
    column = match_drug(drug, table.columns)
    text = drug_label_values(table, column)
    bad = sorted(set(text[text != ""]) - {SENSITIVE, RESISTANT})
    if not bad:
        return None
    keep = "Label each cell line 'sensitive' or 'resistant' (leave unscreened ones empty or NA)"
    if upload_shown:
        app_hint = (f"{keep} and upload the table again, or choose another drug; to build labels from GDSC ln(IC50) "
                    f"values use '{IC50_BUILDER}' above.")
    else:  # the demo panel's mode: the label upload and the builder are in the Upload mode only
        app_hint = (f"{keep}, then choose 'Upload' under Bulk data and upload the table there, or choose another "
                    f"drug; to build labels from GDSC ln(IC50) values, choose 'Upload' under Bulk data and use "
                    f"'{IC50_BUILDER}'.")
    return InputError(f"Drug {column}: values other than sensitive/resistant: {', '.join(map(repr, bad[:5]))}.",
                      f"{keep}; to build labels from IC50 values use `scatd labels-from-ic50`.", app_hint=app_hint)


def drug_labels(table: pd.DataFrame | str | Path, drug: str) -> DrugLabels:
    """The ``sensitive`` / ``resistant`` labels of one drug; missing ones dropped and counted.

    Values are read case-insensitively; anything other than the two classes or a missing
    marker is an error (:func:`other_label_values`: it is never silently made a third class).
    """
    table = read_label_table(table)
    column = match_drug(drug, table.columns)
    if (refused := other_label_values(table, column)) is not None:
        raise refused
    text = drug_label_values(table, column)
    missing = text == ""
    labels = text[~missing]
    if labels.empty:
        raise InputError(f"Drug {column} has no labelled cell line in the table.")
    return DrugLabels(column, labels.astype(object), int(missing.sum()))


def as_text(values) -> pd.Series:
    """Label values as stripped text, missing values as NaN (``1.0`` -> ``"1"``, ``True`` -> ``"True"``)."""
    series = values.reset_index(drop=True) if isinstance(values, pd.Series) else pd.Series(list(values), dtype=object)

    def text(v):
        if v is None or (isinstance(v, (float, np.floating)) and np.isnan(v)):
            return np.nan
        if isinstance(v, (bool, np.bool_)):
            return "True" if v else "False"
        if isinstance(v, (int, np.integer)) or (isinstance(v, (float, np.floating)) and float(v).is_integer()):
            return str(int(v))
        t = str(v).strip()
        return np.nan if t.lower() in MISSING_VALUES else t
    return series.astype(object).map(text)


def label_counts(values) -> pd.Series:
    """Count of each non-missing label value (as text), most frequent first."""
    return as_text(values).value_counts(dropna=True)


def _word(value: str) -> str:
    return re.sub(r"[\s_-]+", "", str(value).lower())


def guess_label_direction(values) -> str | None:
    """The value meaning *resistant* when the words say so, else ``None`` (the user must say).

    Recognised: ``resistant``/``sensitive``, ``R``/``S``, ``non-responder``/``responder``
    (any case, ``-``/``_``/space ignored); one recognised word is enough when the column has
    exactly two values and the other is not a reference group (``control``, ``parental``,
    ``untreated``... : :data:`_REFERENCE_WORDS`). Numbers and booleans are never guessed.
    """
    distinct = list(label_counts(values).index)
    if len(distinct) != 2 or any(_word(v) in _REFERENCE_WORDS for v in distinct):
        return None
    kinds = [RESISTANT if _word(v) in _RESISTANT_WORDS else SENSITIVE if _word(v) in _SENSITIVE_WORDS else None
             for v in distinct]
    if kinds.count(RESISTANT) == 1 and kinds.count(SENSITIVE) <= 1 and (SENSITIVE in kinds or None in kinds):
        return distinct[kinds.index(RESISTANT)]
    if kinds.count(SENSITIVE) == 1 and None in kinds:
        return distinct[kinds.index(None)]
    return None


def encode_labels(values, resistant) -> np.ndarray:
    """Per-cell truth as floats: 1 = resistant, 0 = sensitive, NaN = missing.

    Parameters
    ----------
    values
        The labels as found (text, numbers, booleans; missing as NaN/None/"NA"/"").
    resistant
        The value meaning resistant (compared as text: ``1``, ``1.0`` and ``"1"`` are one value);
        the column's single other value means sensitive.

    Raises
    ------
    InputError
        When no label equals ``resistant``, or the column holds more than two values.
    """
    text = as_text(values)
    key = as_text([resistant]).iloc[0]
    distinct = list(text.value_counts(dropna=True).index)
    if key not in distinct:
        raise InputError(f"No cell is labelled {resistant!r} (the value chosen to mean resistant); the labels are "
                         f"{', '.join(map(str, distinct[:10])) or 'all missing'}.",
                         "Choose which value of the column means resistant.")
    if len(distinct) > 2:
        raise InputError(f"The label column holds {len(distinct)} values ({', '.join(map(str, distinct[:6]))}); "
                         "resistant vs sensitive needs exactly two.",
                         "Choose a column with two classes, or merge the classes in your file first.")
    out = np.full(len(text), np.nan)
    present = text.notna().to_numpy()
    out[present] = (text[present] == key).to_numpy(dtype=float)
    return out


#: How a label column's direction was settled (``uns['scatd_labels'][column]['how']``): said by the
#: user (the Data page's answer changed from any guess, ``--label-resistant``), or recognised from
#: its words (resistant/sensitive ...) and left as it was. metrics.csv says which.
DIRECTION_CHOSEN, DIRECTION_RECOGNISED = "chosen", "recognised from the words"


def set_label_direction(adata, column: str, resistant, how: str = DIRECTION_CHOSEN) -> dict:
    """Record which value of ``adata.obs[column]`` means resistant (the answer to the one question).

    Sets ``adata.uns['scatd_labels'][column]`` to ``{"resistant": value, "sensitive": other,
    "counts": {...}, "how": how}`` and returns it; ``how``: :data:`DIRECTION_CHOSEN` (the user said
    it) or :data:`DIRECTION_RECOGNISED` (the words were taken as they read). Raises :class:`InputError` as :func:`encode_labels`.
    A threshold calibrated on this column under another direction is put back to its model's
    default (:func:`scatd_core.predict.forget_label_calibrations`).
    """
    if column not in adata.obs:
        raise InputError(f"The data has no column '{column}'.", "Choose one of its columns.")
    encode_labels(adata.obs[column], resistant)  # validates
    before = label_direction(adata, column)
    counts = label_counts(adata.obs[column])
    key = as_text([resistant]).iloc[0]
    others = [v for v in counts.index if v != key]
    entry = {"resistant": key, "sensitive": others[0] if others else None,
             "counts": {str(k): int(v) for k, v in counts.items()},
             "n_missing": int(as_text(adata.obs[column]).isna().sum()), "how": str(how)}
    directions = dict(adata.uns.get(LABEL_DIRECTIONS, {}))
    directions[str(column)] = entry
    adata.uns[LABEL_DIRECTIONS] = directions
    if before is not None and str(before) != key:
        from scatd_core.predict import forget_label_calibrations

        forget_label_calibrations(adata, column)
    return entry


def label_direction(adata, column: str) -> str | None:
    """The value of ``adata.obs[column]`` meaning resistant: as recorded by
    :func:`set_label_direction`, else as recognised from words, else ``None``."""
    entry = adata.uns.get(LABEL_DIRECTIONS, {}).get(str(column))
    if entry:
        return entry["resistant"]
    return guess_label_direction(adata.obs[column]) if column in adata.obs else None


def answer_direction(adata, column: str, resistant) -> dict:
    """Record the user's answer to "which value means resistant" for ``column`` (a radio clicked),
    as the Data page records it: :data:`DIRECTION_RECOGNISED` when it is what the words say (a guess
    left as it was), else :data:`DIRECTION_CHOSEN`. Raises :class:`InputError` as
    :func:`set_label_direction`."""
    guessed = guess_label_direction(adata.obs[column]) if column in adata.obs else None
    how = DIRECTION_RECOGNISED if guessed is not None and guessed == as_text([resistant]).iloc[0] else DIRECTION_CHOSEN
    return set_label_direction(adata, column, resistant, how=how)


def direction_how(adata, column: str) -> str | None:
    """How the value meaning resistant in ``column`` (:func:`label_direction`) was settled:
    :data:`DIRECTION_CHOSEN` (a user said it), :data:`DIRECTION_RECOGNISED` (the words say it), or
    ``None`` when it is not settled (numbers such as 0/1 are never guessed)."""
    entry = adata.uns.get(LABEL_DIRECTIONS, {}).get(str(column))
    if entry:
        return str(entry.get("how") or DIRECTION_CHOSEN)
    return DIRECTION_RECOGNISED if label_direction(adata, column) is not None else None


def shown_labels(adata, column: str) -> pd.Series:
    """``adata.obs[column]`` as categories to colour a plot by, with their meaning when the column's
    direction is known (recorded on the Data page, or recognised from words): ``0 = resistant`` and
    ``1 = sensitive`` for a column whose resistant value is ``0``, resistant first (as the calls are
    listed), so a plot colours them by what they mean, never by what the values look like (a ``1``
    is not resistant unless declared so); :func:`shown_meanings` says which is which. Missing
    labels stay missing; a column whose direction is not known is shown as it is, as text."""
    values = adata.obs[column]
    text = as_text(values)  # (a fresh index)
    as_they_are = pd.Series(text.where(text.notna(), None).to_numpy(dtype=object), index=values.index)
    names = _shown_names(adata, column, text)
    if names is None:
        return as_they_are
    order = list(dict.fromkeys(names.values()))
    return pd.Series(pd.Categorical(text.map(names).to_numpy(dtype=object), categories=order), index=values.index)


def shown_meanings(adata, column: str) -> dict[str, str]:
    """What each category of :func:`shown_labels` means, ``{"0 = resistant": "resistant",
    "1 = sensitive": "sensitive"}``, resistant first, to colour them by it; empty when the
    column's direction is not known (its values are then shown as they are)."""
    names = _shown_names(adata, column, as_text(adata.obs[column])) if column in adata.obs else None
    if names is None:
        return {}
    meanings = list(names.values())
    return {name: RESISTANT if i == 0 else SENSITIVE for i, name in enumerate(meanings)}


def _shown_names(adata, column: str, text: pd.Series) -> dict[str, str] | None:
    """``{value: shown name}`` of a label column whose direction is known, the resistant value first;
    None when it is not known or does not fit the values."""
    resistant = label_direction(adata, column)
    if resistant is None:
        return None
    key = as_text([resistant]).iloc[0]
    distinct = list(text.value_counts(dropna=True).index)
    if key not in distinct or len(distinct) > 2:  # not a direction of these values
        return None

    def name(v: str) -> str:
        meaning = RESISTANT if v == key else SENSITIVE
        return v if v.lower() == meaning else f"{v} = {meaning}"
    return {v: name(v) for v in [key] + [v for v in distinct if v != key]}


def encode_column(adata, column: str, resistant=None, *, option: str = "--label-resistant") -> np.ndarray:
    """:func:`encode_labels` of ``adata.obs[column]`` with its recorded direction (or ``resistant``);
    ``option``: what gives the direction where the caller asks it, for the hint: its command-line
    option (``--...``), or the app's field that asks it."""
    if column not in adata.obs:
        raise InputError(f"The data has no column '{column}'.", "Choose the label column again.")
    resistant = resistant if resistant is not None else label_direction(adata, column)
    if resistant is None:
        values = ", ".join(map(str, label_counts(adata.obs[column]).index[:5]))
        if option.startswith("--"):  # a command line's option; the app's page where the app says it
            raise InputError(f"Which value of '{column}' means resistant is not known (values: {values}).",
                             f"Say which value means resistant: {option} VALUE.",
                             app_hint="Say which value means resistant on the Data page.")
        raise InputError(f"Which value of '{column}' means resistant is not known (values: {values}).",
                         f"Say which value means resistant ({option}).")
    return encode_labels(adata.obs[column], resistant)


# --------------------------------------------------------------------------- a few labelled target cells

#: Fewest labelled target cells of each class that few-shot training accepts.
MIN_FEW_SHOT_PER_CLASS = 2


def _few_shot_series(ids, names: pd.Series, where: str) -> pd.Series:
    """Index: cell ID; values ``sensitive`` / ``resistant``; checked for duplicates and both classes."""
    labels = pd.Series(names.to_numpy(), index=pd.Index([str(i).strip() for i in ids], name="cell_id"))
    if labels.index.duplicated().any():
        dup = labels.index[labels.index.duplicated()].unique()[:3].tolist()
        raise InputError(f"{where} lists {counted(labels.index.duplicated().sum())} twice (e.g. {', '.join(dup)}).",
                         "Keep one label per cell.")
    counts = labels.value_counts()
    n_r, n_s = int(counts.get(RESISTANT, 0)), int(counts.get(SENSITIVE, 0))
    if min(n_r, n_s) < MIN_FEW_SHOT_PER_CLASS:
        raise InputError(f"{where} labels {n_r} resistant and {counted(n_s, 'sensitive cell')}; training with labelled "
                         f"target cells needs at least {MIN_FEW_SHOT_PER_CLASS} of each.",
                         "Label a few more cells of the missing class, or train without labelled cells.")
    return labels


def _refuse_transposed(table: pd.DataFrame, name: str) -> None:
    """A label table the other way round (drugs as rows): its column names look like cell-line IDs
    (COSMIC numbers, CL000, ACH-000001, A549_LUNG: nearly all with digits) and its row names like
    drug names (mostly without)."""
    def with_digits(names) -> float:
        names = [str(n) for n in names]
        return sum(any(ch.isdigit() for ch in n) for n in names) / max(1, len(names))

    if table.shape[1] >= 3 and with_digits(table.columns) >= 0.9 and with_digits(table.index) < 0.5:
        cols = ", ".join(map(str, table.columns[:3]))
        rows = ", ".join(map(str, table.index[:3]))
        raise InputError(f"{name} looks transposed: its columns ({cols}, ...) look like cell-line IDs and its rows "
                         f"({rows}) like drugs.",
                         "Give cell lines as rows (their IDs in the first column) and one column per drug, as in "
                         "GDSC's ALL_label_binary_wf.csv: transpose the table (in Python: "
                         "pd.read_csv(f, index_col=0).T.to_csv(out)) and give it again.")


def _some(names, n: int = 3) -> str:
    names = [str(x) for x in names]
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


_LAYOUT = ("Give cell lines as rows (their IDs in the first column, as the bulk data writes them) and one column per "
           "drug, as in GDSC's ALL_label_binary_wf.csv")
_TRANSPOSE = "transpose the table (in Python: pd.read_csv(f, index_col=0).T.to_csv(out)) and give it again"


def check_orientation(table: pd.DataFrame, sample_ids: Sequence, shown: str = "The label table") -> str | None:
    """Whether a label table (cell lines x drugs, :func:`read_label_table`) is the right way round
    for bulk data whose sample IDs are ``sample_ids``, decided by the IDs themselves: its row IDs
    must match more bulk samples than its column names do.

    Raises :class:`InputError` with how many IDs match each way when the columns match more (the
    table is transposed), as many (it could be read either way) or neither matches any; returns a
    warning when some column names are sample IDs too (fewer than the rows), else None. ``shown``
    names the table in messages."""
    order = list(dict.fromkeys(str(i) for i in sample_ids))
    ids = set(order)
    rows = list(dict.fromkeys(str(r) for r in table.index if str(r) in ids))
    cols = list(dict.fromkeys(str(c) for c in table.columns if str(c) in ids))
    n_rows, n_cols, n_bulk = table.shape[0], table.shape[1], len(ids)
    counts = (f"{len(rows):,} of its {n_rows:,} row IDs" + (f" (e.g. {_some(rows)})" if rows else "")
              + f" and {len(cols):,} of its {n_cols:,} column names" + (f" (e.g. {_some(cols)})" if cols else "")
              + f" are among the {n_bulk:,} bulk sample IDs")
    if len(rows) > len(cols):
        if not cols:
            return None
        return (f"{shown}: {counts}. It was read with cell lines as rows (they match more), so its "
                f"{'column' if len(cols) == 1 else 'columns'} {_some(cols)} {'was' if len(cols) == 1 else 'were'} "
                f"taken as drugs although they are bulk sample IDs too. If the cell lines are its "
                f"columns, {_TRANSPOSE}.")
    if cols and len(cols) > len(rows):
        raise InputError(f"{shown} looks transposed (cell lines as columns): {counts}.",
                         f"{_LAYOUT}: {_TRANSPOSE}.")
    if cols:
        raise InputError(f"{shown} could be read either way round: {counts}, as many each way, so it is not "
                         "clear which holds the cell lines.",
                         f"{_LAYOUT}. If the cell lines are its columns, {_TRANSPOSE}; if they are its rows, rename "
                         f"the drug columns that are also sample IDs ({_some(cols)}).")
    loose = {_loose(i): i for i in reversed(order)}
    loose.pop("", None)
    near_rows = [str(r) for r in table.index if _loose(r) in loose]
    near_cols = [str(c) for c in table.columns if _loose(c) in loose]
    near = ""
    if near_rows or near_cols:
        side, names = ("row IDs", near_rows) if len(near_rows) >= len(near_cols) else ("column names", near_cols)
        near = (f" Ignoring case and punctuation, {len(names):,} of its {side} would match (e.g. {names[0]} for "
                f"{loose[_loose(names[0])]}): write them exactly as the bulk data does"
                + (", and transpose the table (cell lines as rows)." if side == "column names" else "."))
    raise InputError(f"{shown} matches the bulk data neither way round: none of its {n_rows:,} row IDs (e.g. "
                     f"{_some(table.index)}) and none of its {n_cols:,} column names (e.g. {_some(table.columns)}) "
                     f"is among the {n_bulk:,} bulk sample IDs (e.g. {_some(order)}).{near}",
                     f"{_LAYOUT}; the table and the bulk data must use the same cell-line IDs (e.g. both DepMap "
                     "ACH- IDs, or both COSMIC IDs).")


def check_bulk_orientation(table: pd.DataFrame, bulk, shown: str = "The label table") -> str | None:
    """:func:`check_orientation` against the sample IDs of ``bulk`` (an AnnData); a table that matches
    them neither way round is told how the bulk data were read (:func:`_bulk_reading`). Training and the
    Train page check with it."""
    try:
        return check_orientation(table, bulk.obs_names, shown)
    except InputError as exc:
        if "neither way round" not in exc.message:
            raise
        raise InputError(exc.message + " " + _bulk_reading(bulk, table), exc.hint, app_hint=exc.app_hint) from None


def _bulk_reading(bulk, table: pd.DataFrame) -> str:
    """How the bulk data were read (which side holds the samples, and why), for a label table that matches
    its sample IDs neither way round: when the table's IDs are the bulk's gene names instead, the bulk was
    read the wrong way round, and this says so."""
    from scatd_core._keys import INPUT_REPORT

    reason = (bulk.uns.get(INPUT_REPORT) or {}).get("orientation_reason")
    read = (f"The bulk data were read with its {bulk.n_obs:,} rows as samples (e.g. "
            f"{', '.join(map(str, bulk.obs_names[:3]))}) and its {bulk.n_vars:,} columns as genes (e.g. "
            f"{', '.join(map(str, bulk.var_names[:3]))})" + (f": {reason}." if reason else "."))
    genes = set(map(str, bulk.var_names))
    as_genes = [str(r) for r in table.index if str(r) in genes] or [str(c) for c in table.columns if str(c) in genes]
    if as_genes:
        return (read + f" The label table's cell-line IDs are among its genes instead (e.g. {', '.join(as_genes[:3])}):"
                " the bulk file holds the samples as columns. Give it with one row per cell line (the IDs in the "
                "first column) and one column per gene.")
    return read + " If that is the wrong way round, give it with one row per cell line and one column per gene."


def read_few_shot_labels(path: str | Path, name: str | None = None) -> pd.Series:
    """The labelled target cells of a CSV/TSV ``cell_id,label`` (only the labelled cells).

    ``label`` is ``sensitive`` or ``resistant`` (any case); empty or NA rows are skipped. Returns
    a Series indexed by cell ID (see :func:`_few_shot_series` for the checks).
    """
    path = Path(path)
    shown = name or path.name
    table = _read_table(path, "Labelled-cells file", max_rows=limits().max_cells, name=shown, dtype=str,
                        keep_default_na=False)
    if table.shape[1] < 2:
        raise InputError(f"{shown} has {counted(table.shape[1], 'column')}; it needs two: cell_id and label.",
                         "Write one row per labelled cell: cell_id,label (sensitive or resistant).")
    ids, values = table.iloc[:, 0], table.iloc[:, 1].str.strip().str.lower()
    missing = values.isin(MISSING_VALUES)
    bad = sorted(set(values[~missing]) - {SENSITIVE, RESISTANT})
    if bad:
        raise InputError(f"{shown}: labels other than sensitive/resistant: {', '.join(map(repr, bad[:5]))}.",
                         "Label each cell 'sensitive' or 'resistant'; leave out the cells you have not labelled.")
    return _few_shot_series(ids[~missing], values[~missing], shown)


#: Where the Train page asks which value of its labelled-cells column means resistant.
FEW_SHOT_FIELD = "the Train page asks it under 'Labelled cells to train with'"


def few_shot_from_column(adata, column: str, resistant=None, *, option: str = FEW_SHOT_FIELD) -> pd.Series:
    """The labelled cells of a column with blanks for unlabelled cells (its direction as recorded,
    :func:`label_direction`, unless ``resistant`` is given); see :func:`read_few_shot_labels`.
    ``option``: the caller's option (``--few-shot-resistant``) or field that gives the direction,
    named when it is not known (:func:`encode_column`); by default the Train page's."""
    y = encode_column(adata, column, resistant, option=option)
    known = np.isfinite(y)
    names = pd.Series(np.where(y[known] == 1, RESISTANT, SENSITIVE))
    labels = _few_shot_series(adata.obs_names[known], names, f"Column '{column}'")
    labels.name = str(column)  # the column they came from (a trained model records a cell metadata table's)
    return labels


def refuse_few_shot_as_evaluation(few_shot_column, label_column, drug: str | None = None) -> None:
    """Refuse one column as both the labelled cells to train with (``--few-shot-column``) and the
    evaluation labels (``--target-labels``) of the same model (``drug``: which of a panel's), before
    any training: the cells it labels would train the model and so be left out of its evaluation,
    leaving none to evaluate on (``scatd train`` and ``scatd train-panel`` alike)."""
    if few_shot_column is None or label_column is None or str(few_shot_column) != str(label_column):
        return
    which = "--target-labels" if drug is None else f"--target-labels {drug}={label_column}"
    raise InputError(f"--few-shot-column and {which} name the same column {str(label_column)!r}: the cells it labels "
                     "would train the model and so be left out of its evaluation, leaving none to evaluate on.",
                     f"Give the evaluation labels in another column, or leave {which} out.")


# --------------------------------------------------------------------------- from GDSC IC50

def _strip_note(name: str) -> str:
    """``'RDEA119 (rescreen)'`` -> ``'RDEA119'``."""
    return re.sub(r"\s*\(.*?\)\s*$", "", str(name)).strip()


def _read_thresholds(path: Path, name: str | None = None) -> list[tuple[str, float]]:
    """Two rows (tab-separated; commas accepted when there is no tab): drug names, then their ln(IC50)
    thresholds. One drug per line and decimal commas are named, with what to write instead."""
    name = name or path.name
    if not path.is_file():
        raise InputError(f"Threshold file not found: {path}", "Check the path.")
    lines = [ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    layout = "Write two tab-separated rows: the drug names, then their ln(IC50) thresholds in the same order."
    sep = "\t" if any("\t" in ln for ln in lines[:2]) else ","
    rows = [[f.strip() for f in ln.split(sep)] for ln in lines]
    if len(rows) >= 2 and all(len(r) == 2 and _is_number(r[1]) for r in rows) and not _is_number(rows[1][0]):
        raise InputError(f"{name} lists one drug per line (e.g. '{rows[0][0]}', {rows[0][1]}); expected two rows: "
                         "drug names, then thresholds.", layout)
    if len(lines) < 2:
        raise InputError(f"{name} must have two tab-separated rows: drug names, then ln(IC50) thresholds.", layout)
    names, fields = rows[0], rows[1]
    bad = [v for v in fields if not _is_number(v)]
    if bad:
        if all(re.fullmatch(r"[+-]?\d*,\d+", v) or _is_number(v) for v in fields):
            raise InputError(f"The thresholds in {name} are written with decimal commas (e.g. {bad[0]}).",
                             f"Write decimal points (e.g. {bad[0].replace(',', '.')}), tab-separated.")
        raise InputError(f"The second row of {name} must hold numbers (ln(IC50) thresholds); it holds "
                         f"{bad[0]!r}.", layout)
    values = [float(v) for v in fields]
    if len(names) != len(values):
        raise InputError(f"{name}: {len(names)} drug names but {len(values)} thresholds.", layout)
    return list(zip(names, values))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _drug_ids(index, name: str = "The IC50 table") -> dict[str, int]:
    """Row label -> GDSC drug id; a drug listed on two rows (also as ``1003`` and ``GDSC:1003``)
    is refused, naming the rows (1 = the first row under the header)."""
    out: dict[str, int] = {}
    first_row: dict[int, int] = {}
    for row, key in enumerate(index, start=1):
        m = re.match(r"^\s*(?:GDSC:)?(\d+)\s*$", str(key))
        if not m:
            raise InputError(f"IC50 row {key!r} is not a GDSC drug id like 'GDSC:1010'.",
                             "Give GDSC_IC50.csv as distributed with DeepCDR (rows GDSC:<drug_id>).")
        drug = int(m.group(1))
        if drug in first_row:
            raise InputError(f"{name} lists drug GDSC:{drug} twice (rows {first_row[drug]} and {row}); "
                             "keep one row per drug.",
                             "Delete the repeated row (or merge the two) and give the table again.")
        first_row[drug] = row
        out[str(key)] = drug
    return out


def labels_from_ic50(ic50_csv: str | Path, thresholds_txt: str | Path, drug_list_csv: str | Path,
                     drugs=None, names: Sequence[str | None] | None = None) -> pd.DataFrame:
    """A label table (cell lines x drug names) from GDSC ln(IC50) values and per-drug thresholds.

    Parameters
    ----------
    ic50_csv
        ln(IC50) per drug and cell line: rows ``GDSC:<drug_id>``, columns cell lines, empty or
        NA where not screened (``GDSC_IC50.csv``).
    thresholds_txt
        Two tab-separated rows: drug names, then their ln(IC50) thresholds (``IC50_thred.txt``).
    drug_list_csv
        The GDSC drug list with ``drug_id``, ``Name`` and ``Synonyms`` columns.
    drugs
        Drug names or GDSC ids to keep (default: every drug with a threshold).
    names
        The three files' names in messages (uploads' own names; default the paths').

    Returns
    -------
    Cell lines x drugs with ``sensitive`` (ln IC50 < threshold), ``resistant`` or NaN. Drugs whose
    name occurs under several ids get ``"<name> (GDSC:<id>)"`` columns. ``df.attrs['report']``
    says which threshold each drug got and which drugs had none.

    Thresholds are looked up by drug name (case and punctuation ignored, notes such as
    ``(rescreen)`` dropped), then by synonym. A name listed twice in the threshold file goes to
    the ids of that name in ascending order: the file lists drugs in GDSC id order.
    """
    paths = Path(ic50_csv), Path(thresholds_txt), Path(drug_list_csv)
    ic50_name, thr_name, dlist_name = (n or p.name for n, p in zip(list(names or ()) + [None] * 3, paths))
    ic50 = _read_table(paths[0], "IC50 table", name=ic50_name, index_col=0)
    dlist = _read_table(paths[2], "Drug list", name=dlist_name)
    need = {"drug_id", "Name"}
    if not need <= set(dlist.columns):
        missing = ", ".join(sorted(need - set(dlist.columns)))
        raise InputError(f"{dlist_name} lacks the {'column' if ', ' not in missing else 'columns'} {missing}.",
                         "Give the GDSC drug list (columns drug_id, Name, Synonyms, ...).")
    thresholds = _read_thresholds(paths[1], thr_name)
    row_ids = _drug_ids(ic50.index, ic50_name)
    info = dlist.drop_duplicates("drug_id").set_index("drug_id")
    unknown_ids = sorted({i for i in row_ids.values() if i not in info.index})
    ids = sorted(i for i in set(row_ids.values()) if i in info.index)
    names = {i: str(info.at[i, "Name"]).strip() for i in ids}
    synonyms = {i: [s.strip() for s in str(info.at[i, "Synonyms"]).split(",") if s.strip()]
                if "Synonyms" in info.columns and pd.notna(info.at[i, "Synonyms"]) else [] for i in ids}

    # Assign threshold positions: by name for all drugs first, then by synonym, each position once.
    keys = [_loose(_strip_note(n)) for n, _ in thresholds]
    used: set[int] = set()
    chosen: dict[int, tuple[int, str]] = {}
    for rule in ("name", "synonym"):
        for i in ids:
            if i in chosen:
                continue
            wanted = [names[i]] if rule == "name" else synonyms[i]
            wanted = {_loose(_strip_note(w)) for w in wanted} - {""}
            pos = next((p for p, k in enumerate(keys) if k in wanted and p not in used), None)
            if pos is not None:
                used.add(pos)
                chosen[i] = (pos, rule)

    counts = pd.Series([names[i] for i in ids]).value_counts()
    column_of = {i: (names[i] if counts[names[i]] == 1 else f"{names[i]} (GDSC:{i})") for i in ids}
    if drugs is not None:
        wanted_ids = []
        for d in ([drugs] if isinstance(drugs, (str, int)) else list(drugs)):
            m = re.match(r"^\s*(?:GDSC:)?(\d+)\s*$", str(d))
            if m and int(m.group(1)) in column_of:
                wanted_ids.append(int(m.group(1)))
                continue
            key = _loose(_strip_note(str(d)))
            hits = [i for i in ids if key in (_loose(names[i]), _loose(column_of[i]))]
            if not hits:
                match_drug(str(d), [column_of[i] for i in ids], "the IC50 table")  # raises, naming close drugs
            wanted_ids += hits
        ids = sorted(set(wanted_ids))
    no_threshold = [column_of[i] for i in ids if i not in chosen]
    by_id = {i: k for k, i in row_ids.items()}
    columns = {}
    unreadable: dict[str, int] = {}  # per drug: values given that are not numbers ('-', 'n.d.'...), not screened
    examples: list[str] = []
    for i in ids:
        if i not in chosen:
            continue
        raw = ic50.loc[by_id[i]]
        values = pd.to_numeric(raw, errors="coerce")
        bad = values.isna() & raw.notna() & (raw.astype(str).str.strip() != "")
        if bad.any():
            unreadable[column_of[i]] = int(bad.sum())
            examples += [v for v in dict.fromkeys(map(str, raw[bad])) if v not in examples][:3 - len(examples)]
        thr = thresholds[chosen[i][0]][1]
        columns[column_of[i]] = pd.Series(np.where(values.isna(), None,
                                                   np.where(values < thr, SENSITIVE, RESISTANT)),
                                          index=[str(c) for c in ic50.columns], dtype=object)
    if not columns:
        raise InputError("No drug could be given a threshold"
                         + (f" (no threshold for {', '.join(no_threshold[:5])})." if no_threshold else "."),
                         "Check that the threshold file names the drugs of the drug list.")
    table = pd.DataFrame(columns)
    table.attrs["report"] = {
        "n_drugs": len(columns), "n_cell_lines": int(table.shape[0]),
        "thresholds": {column_of[i]: {"gdsc_id": i, "threshold": thresholds[chosen[i][0]][1],
                                      "matched_by": chosen[i][1],
                                      "threshold_name": thresholds[chosen[i][0]][0]}
                       for i in ids if i in chosen},
        "no_threshold": no_threshold, "ids_not_in_drug_list": unknown_ids,
        "unreadable": {"n": sum(unreadable.values()), "examples": examples, "by_drug": unreadable},
        "files": {"ic50": Path(ic50_name).name, "thresholds": Path(thr_name).name,
                  "drug_list": Path(dlist_name).name},  # names only: a trained model records them
        "files_sha256": {key: sha256_file(path) for key, path in zip(("ic50", "thresholds", "drug_list"), paths)},
    }
    return table


def unreadable_ic50_words(report: dict) -> str | None:
    """What :func:`labels_from_ic50` said of the ln(IC50) values it could not read as numbers (its
    ``report['unreadable']``): "50 values could not be read as numbers, e.g. '-': treated as not
    screened (3 drugs)"; ``None`` when there were none."""
    found = report.get("unreadable") or {}
    if not found.get("n"):
        return None
    examples = ", ".join(repr(v) for v in found.get("examples") or [])
    return (f"{counted(found['n'], 'ln(IC50) value')} could not be read as "
            f"{'a number' if found['n'] == 1 else 'numbers'}" + (f", e.g. {examples}" if examples else "")
            + f": treated as not screened ({counted(len(found.get('by_drug') or {}), 'drug')}, e.g. "
            + ", ".join(f"{d}: {n:,}" for d, n in list((found.get("by_drug") or {}).items())[:3]) + ").")


#: What a label table's provenance file says it is (``scatd labels-from-ic50`` writes one beside the table).
PROVENANCE_KIND = "scatd labels-from-ic50"


def ic50_provenance_path(labels_path: str | Path) -> Path:
    """The provenance file beside a label table: ``labels.csv`` -> ``labels.provenance.json``."""
    path = Path(labels_path)
    return path.with_name(f"{path.stem}.provenance.json")


def write_ic50_provenance(table: pd.DataFrame, labels_path: str | Path) -> Path:
    """Write how :func:`labels_from_ic50` built ``table``, written to ``labels_path``, beside it
    (:func:`ic50_provenance_path`): the label file's sha256, the ln(IC50), threshold and drug list
    files' names and sha256, and each drug's GDSC id and threshold. ``scatd train`` and ``scatd
    train-panel`` find it when the label file is unchanged, and record the drug's threshold as the
    Train page's "Build labels" does (:func:`read_ic50_provenance`)."""
    report = table.attrs["report"]
    out = ic50_provenance_path(labels_path)
    record = {"kind": PROVENANCE_KIND, "labels_file": Path(labels_path).name,
              "labels_sha256": sha256_file(labels_path),
              "files": report["files"], "files_sha256": report.get("files_sha256") or {},
              "thresholds": report["thresholds"], "no_threshold": report.get("no_threshold") or []}
    return write_file(out, json.dumps(record, indent=2, default=str) + "\n")


def read_ic50_provenance(labels_path: str | Path) -> tuple[dict | None, str | None]:
    """How ``scatd labels-from-ic50`` built the label table at ``labels_path``, from the provenance
    file beside it (:func:`write_ic50_provenance`), as ``(report, problem)``: ``report`` in the
    form of :func:`labels_from_ic50`'s ``attrs['report']`` (``thresholds``, ``files``,
    ``files_sha256``) when the file is there and was written for this very table (its sha256);
    ``problem``, a sentence, when one is there but does not match or cannot be read (then nothing
    is recorded from it); ``(None, None)`` when there is none."""
    labels_path = Path(labels_path)
    side = ic50_provenance_path(labels_path)
    if not side.is_file() or not labels_path.is_file():
        return None, None
    try:
        record = json.loads(side.read_text(encoding="utf-8"))
        if not isinstance(record, dict) or record.get("kind") != PROVENANCE_KIND:
            raise ValueError("not written by scatd labels-from-ic50")
        thresholds = {str(k): dict(v) for k, v in record["thresholds"].items()}
        report = {"thresholds": thresholds, "files": dict(record.get("files") or {}),
                  "files_sha256": dict(record.get("files_sha256") or {}), "provenance_file": side.name}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return None, (f"{side.name} beside {labels_path.name} could not be read ({exc}); the labels' ln(IC50) "
                      "thresholds are not recorded with the model.")
    if record.get("labels_sha256") != sha256_file(labels_path):
        return None, (f"{side.name} was written for another version of {labels_path.name} (its sha256 differs: the "
                      "table was changed after scatd labels-from-ic50 wrote it), so the labels' ln(IC50) thresholds "
                      "are not recorded with the model. Run scatd labels-from-ic50 again to record them.")
    return report, None


#: The most bytes of a provenance file the Train page reads (GDSC's ~300 drugs take ~60 kB).
MAX_PROVENANCE_BYTES = 4 << 20
_PROVENANCE_KEYS = {"kind", "labels_file", "labels_sha256", "files", "files_sha256", "thresholds", "no_threshold"}
_THRESHOLD_KEYS = {"gdsc_id", "threshold", "matched_by", "threshold_name"}
_FILE_KEYS = {"ic50", "thresholds", "drug_list"}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def read_ic50_provenance_bytes(data: bytes, table_sha256: str, *, name: str, table_name: str) -> dict:
    """How ``scatd labels-from-ic50`` built a label table, from its provenance file given as bytes (an
    upload beside the table's), checked strictly: at most :data:`MAX_PROVENANCE_BYTES`, plain JSON
    written by :func:`write_ic50_provenance` (its keys only, each of its type), and written for this
    very table (``labels_sha256`` equal to ``table_sha256``, the sha256 of the table's bytes). Returns
    the report in the form of :func:`read_ic50_provenance`'s; raises :class:`InputError` saying what
    is wrong, and then nothing of it is used."""
    hint = (f"Give the {Path(table_name).stem}.provenance.json that scatd labels-from-ic50 wrote beside "
            f"{table_name}, unchanged, or leave it out (the model then records no ln(IC50) threshold).")

    def refuse(why: str):
        raise InputError(f"{name} is not used: {why}", hint)

    if len(data) > MAX_PROVENANCE_BYTES:
        refuse(f"it holds {len(data) / 2**20:,.1f} MB, more than a provenance file's "
               f"{MAX_PROVENANCE_BYTES >> 20} MB.")

    def no_constant(word):  # NaN, Infinity: not plain JSON
        raise ValueError(f"{word} is not a JSON number")

    try:
        record = json.loads(data.decode("utf-8"), parse_constant=no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        refuse(f"it is not plain JSON text ({str(exc)[:120]}).")
    if not isinstance(record, dict) or record.get("kind") != PROVENANCE_KIND:
        refuse(f"it was not written by scatd labels-from-ic50 (no \"kind\": \"{PROVENANCE_KIND}\").")
    unknown = sorted(set(record) - _PROVENANCE_KEYS)
    if unknown:
        refuse(f"it holds keys a provenance file does not ({', '.join(map(str, unknown[:5]))}).")
    if record.get("labels_sha256") != table_sha256:
        refuse(f"it was written for another label table, or another version of {table_name} (its labels_sha256 "
               f"differs from the sha256 of {table_name}).")
    thresholds, files, hashes = record.get("thresholds"), record.get("files") or {}, record.get("files_sha256") or {}
    if not isinstance(thresholds, dict) or not thresholds:
        refuse("it lists no drug's threshold.")
    report_thresholds = {}
    for drug, entry in thresholds.items():
        if (not isinstance(entry, dict) or set(entry) - _THRESHOLD_KEYS
                or isinstance(entry.get("threshold"), bool) or not isinstance(entry.get("threshold"), (int, float))
                or not np.isfinite(entry["threshold"])
                or not (entry.get("gdsc_id") is None or (isinstance(entry["gdsc_id"], int)
                                                          and not isinstance(entry["gdsc_id"], bool)))
                or not all(isinstance(entry.get(k), str) for k in ("matched_by", "threshold_name") if k in entry)):
            refuse(f"its entry for drug {str(drug)[:60]!r} is not a threshold record (gdsc_id, threshold, "
                   "matched_by, threshold_name).")
        report_thresholds[str(drug)] = dict(entry)
    if (not isinstance(files, dict) or set(files) - _FILE_KEYS or not all(isinstance(v, str) for v in files.values())
            or not isinstance(hashes, dict) or set(hashes) - _FILE_KEYS
            or not all(isinstance(v, str) and _SHA256.match(v) for v in hashes.values())):
        refuse("its files or files_sha256 are not the ln(IC50), threshold and drug list files' names and sha256.")
    names = {k: v.replace("\\", "/").rsplit("/", 1)[-1][:200] for k, v in files.items()}  # names, never folders
    return {"thresholds": report_thresholds, "files": names, "files_sha256": dict(hashes),
            "provenance_file": Path(str(name).replace("\\", "/")).name[:200]}


def write_label_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Write a label table as ``ALL_label_binary_wf.csv`` does (unnamed ID column, NA empty)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:  # a stopped run leaves no half-written table under the user's name
        table.to_csv(tmp, na_rep="")
    return path
