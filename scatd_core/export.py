"""Everything a user takes home, from one annotated AnnData: CSV tables, the h5ad, the HTML report.

The app's download buttons, ``scatd predict``, ``scatd report`` and ``scatd demo`` all call these
functions on the AnnData that :func:`scatd_core.predict.predict` (and, when run,
:func:`scatd_core.embed.embed` and :func:`scatd_core.explain.explain`) annotated, so the same
input gives the same files everywhere:

- ``predictions.csv`` (:func:`predictions_table`): one row per uploaded cell, in input order;
- ``metrics.csv`` (:func:`metrics_table`): the run summary, the evaluation against a label
  column, the resistant fraction per group;
- ``biomarkers.csv``: the gene ranking of :func:`scatd_core.explain.explain`, when computed;
- ``annotated.h5ad`` (:func:`write_h5ad`): opens in scanpy/cellxgene as it is;
- ``report.html`` (:func:`html_report`): self-contained, figures included, no network needed.
"""

from __future__ import annotations

import datetime as _dt
import html
import io
import json
import os
import platform
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Sequence

import anndata as ad
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from scatd_core import __version__, _keys, pl
from scatd_core._cache import StampedLRU
from scatd_core._keys import result_keys
from scatd_core._output import REPORT_FILES, replacing, staged_folder, write_file, writing
from scatd_core._words import counted, percent
from scatd_core.embed import fit_note, is_data_umap
from scatd_core.errors import InputError
from scatd_core.inputs import left_out_label, mask_reason_text, run_mask
from scatd_core.metrics import METRIC_MEANINGS, evaluate_column, fitted_on_labels, group_table, interval_ends
from scatd_core.predict import summary, threshold_origin, uncalibrated_threshold_words
from scatd_core.explain import completeness_text, out_of_date

#: Columns of ``predictions.csv`` before the optional ones (UMAP, Leiden cluster, the user's columns).
PREDICTION_COLUMNS = ("cell_id", "prob_resistant", "prob_resistant_sd", "label", "calibrated", "scored",
                      "not_scored_reason", "qc_pass", "rank")


#: The Leiden cluster's name in every table (``obs['scatd_cluster']`` in the h5ad)
CLUSTER_COLUMN = "leiden_cluster"

#: The column of ``predictions.csv`` that says in words what each cell's known label means
#: (``resistant``/``sensitive``), next to the label column's own values (e.g. SCAD's ``response``
#: 1/0, where 1 means sensitive)
KNOWN_LABEL_COLUMN = "known_label"


def _empty(value) -> bool:
    """Whether a recorded value is None or empty (a string, list, dict, or the numpy array a list in
    ``uns`` becomes in an h5ad read back, whose truth value is an error). Array-safe, unlike ``value
    or None``; 0 and False are values, not empty."""
    if value is None:
        return True
    if isinstance(value, np.ndarray):
        return value.size == 0
    return isinstance(value, (str, bytes, list, tuple, dict)) and len(value) == 0


def _given(value):
    """``value``, or None when it is empty (:func:`_empty`): an array-safe ``value or None``."""
    return None if _empty(value) else value


def _require(adata: ad.AnnData, keys) -> dict:
    if keys.run not in adata.uns or keys.prob not in adata.obs:
        raise InputError("No predictions in this dataset.", "Run the prediction first (`scatd predict`).")
    return adata.uns[keys.run]


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------

def predictions_table(adata: ad.AnnData, extra_columns: Sequence[str] = (), *,
                      key_added: str | None = None, label_column: str | None = None) -> pd.DataFrame:
    """One row per uploaded cell, in input order.

    Columns: ``cell_id, prob_resistant[, prob_resistant_sd], label, calibrated, scored, qc_pass,
    rank`` (``label``: the call at the threshold; ``calibrated``: whether the threshold behind
    ``label`` was calibrated, see :func:`scatd_core.predict.set_threshold`; ``rank``: 1 for the
    scored cell most likely resistant, ties in input order, empty where not scored: a ranking
    needs no threshold), then ``umap_1, umap_2`` and ``leiden_cluster`` when
    computed, then ``extra_columns`` of ``obs`` (e.g. the sample and true-label columns) under
    their own names (``obs_<name>`` where a name is taken, see :func:`with_cell_context`).

    ``label_column`` (the column of known labels; added to the extra columns when not among
    them): when which of its values means resistant is known (:func:`label_meaning`), the column
    ``known_label`` right after it says each cell's known label in words, ``resistant`` or
    ``sensitive`` (empty where the cell has none), so a ``1`` that means sensitive is never read
    as resistant.
    """
    keys = result_keys(key_added)
    info = _require(adata, keys)
    if label_column and label_column not in extra_columns:
        extra_columns = [label_column, *extra_columns]
    table = pd.DataFrame({"cell_id": adata.obs_names.astype(str), "prob_resistant": adata.obs[keys.prob].to_numpy()})
    if keys.prob_sd in adata.obs:
        table["prob_resistant_sd"] = adata.obs[keys.prob_sd].to_numpy()
    labels = adata.obs[keys.label].astype(str).to_numpy()
    table["label"] = labels
    table["calibrated"] = bool(info["threshold"]["calibrated"])
    table["scored"] = adata.obs[keys.scored].to_numpy(dtype=bool)
    # why a cell got no probability ("" where it got one); a prediction stored before the column
    # existed says only its label (not scored, filtered (QC), left out (mask))
    table["not_scored_reason"] = (adata.obs[keys.not_scored_reason].astype(str).to_numpy()
                                  if keys.not_scored_reason in adata.obs else
                                  np.where(table["scored"], "", np.where(np.isin(labels, _keys.LEFT_OUT),
                                                                         filtered_text(info) or "filtered by QC",
                                                                         "not scored")))
    # only the QC filter's cells fail QC: those a mask column of one's own left out ('left out (mask)') ran no QC
    table["qc_pass"] = labels != _keys.FILTERED
    table["rank"] = resistance_rank(table["prob_resistant"].to_numpy(dtype=np.float64))
    known = known_labels(adata, label_column)
    if known is None:
        return with_cell_context(table, adata, extra_columns)
    table[KNOWN_LABEL_COLUMN] = known  # before the data's columns: one of them so named becomes obs_known_label
    names = _add_cell_context(table, adata, extra_columns)
    columns = [c for c in table.columns if c != KNOWN_LABEL_COLUMN]
    at = columns.index(names[label_column]) + 1  # right after the label column's own values
    return table[columns[:at] + [KNOWN_LABEL_COLUMN] + columns[at:]]


def training_predictions_table(cell_ids: Sequence[str], prob: np.ndarray, threshold: float,
                               truth: np.ndarray | None = None, training_rows: Sequence[int] = ()) -> pd.DataFrame:
    """The target predictions of a training (the Train page's "Target predictions (CSV)",
    ``scatd train --target-predictions``): one row per target cell the model was adapted to.

    Columns ``cell_id, prob_resistant, threshold, label, calibrated`` (``label``: the call at the
    model's default ``threshold``, resistant where P(resistant) > threshold, as predictions.csv
    calls it; ``calibrated`` False: that threshold is not fitted to these cells), then, when the
    target had labels (``truth``: 1 resistant, 0 sensitive, NaN none), ``known_label``
    (resistant/sensitive, empty where the cell has none); with labelled target cells to train on,
    ``used_for_training`` (True for those, ``training_rows``: leave them out of any evaluation)."""
    prob = np.asarray(prob, dtype=np.float64)
    scored = np.isfinite(prob)
    table = pd.DataFrame({"cell_id": [str(c) for c in cell_ids], "prob_resistant": prob,
                          "threshold": float(threshold)})
    table["label"] = np.where(~scored, _keys.NOT_SCORED,
                              np.where(prob > threshold, _keys.RESISTANT, _keys.SENSITIVE))
    table["calibrated"] = False
    if truth is not None:
        truth = np.asarray(truth, dtype=np.float64)
        table[KNOWN_LABEL_COLUMN] = np.where(np.isnan(truth), None,
                                             np.where(truth == 1, _keys.RESISTANT, _keys.SENSITIVE)).astype(object)
    rows = np.asarray(list(training_rows), dtype=np.int64)
    if rows.size:
        used = np.zeros(len(table), dtype=bool)
        used[rows] = True
        table["used_for_training"] = used
    return table


def label_meaning(adata: ad.AnnData, label_column: str | None) -> tuple[str, str | None, bool] | None:
    """``(resistant value, sensitive value, recorded)`` of a label column whose direction is known
    (chosen on the Data page or with ``--label-resistant``, ``recorded`` True; else recognised
    from words such as resistant/sensitive), the values as text (``"1"``, ``"0"``); the sensitive
    value is None when every labelled cell has the resistant one. None when the column is not
    there, which value means resistant is not known, or the direction does not fit its values."""
    from scatd_core.labels import as_text, label_counts, label_direction

    if not label_column or label_column not in adata.obs:
        return None
    resistant = label_direction(adata, label_column)
    if resistant is None:
        return None
    key = as_text([resistant]).iloc[0]
    distinct = [str(v) for v in label_counts(adata.obs[label_column]).index]
    if key not in distinct or len(distinct) > 2:
        return None
    others = [v for v in distinct if v != key]
    entry = adata.uns.get(_keys.LABEL_DIRECTIONS, {}).get(str(label_column))
    recorded = isinstance(entry, dict) and entry.get("how", "chosen") == "chosen"  # a recognised guess is not a choice
    return key, (others[0] if others else None), recorded


def known_labels(adata: ad.AnnData, label_column: str | None) -> np.ndarray | None:
    """Each cell's known label in words (``resistant``/``sensitive``, None where missing), from the
    label column's direction (:func:`label_meaning`); None when that is not known."""
    meaning = label_meaning(adata, label_column)
    if meaning is None:
        return None
    from scatd_core.labels import encode_labels

    y = encode_labels(adata.obs[label_column], meaning[0])
    return np.where(np.isnan(y), None, np.where(y == 1, _keys.RESISTANT, _keys.SENSITIVE)).astype(object)


def with_cell_context(table: pd.DataFrame, adata: ad.AnnData, extra_columns: Sequence[str] = ()) -> pd.DataFrame:
    """Add each cell's UMAP coordinates, Leiden cluster (``leiden_cluster``) and the chosen ``obs``
    columns (when present) to a per-cell table in the order of ``adata`` (the predictions and the
    panel tables share them). A chosen column whose name the table already uses (the data's own
    ``cluster`` or ``label``, say) is written as ``obs_<name>``: never dropped, never mistaken for
    the computed one."""
    _add_cell_context(table, adata, extra_columns)
    return table


def _add_cell_context(table: pd.DataFrame, adata: ad.AnnData, extra_columns: Sequence[str] = ()) -> dict:
    """:func:`with_cell_context` in place; returns the name each chosen ``obs`` column got in ``table``."""
    if _keys.UMAP in adata.obsm and not is_data_umap(adata):  # scATD's UMAP, never the data's own under its name
        coords = np.asarray(adata.obsm[_keys.UMAP], dtype=np.float64)
        table["umap_1"], table["umap_2"] = coords[:, 0], coords[:, 1]
    if _keys.CLUSTER in adata.obs:
        table[CLUSTER_COLUMN] = adata.obs[_keys.CLUSTER].astype(str).to_numpy()
    names = {}
    for col in dict.fromkeys(extra_columns):
        if col and col in adata.obs:
            name = str(col)
            while name in table:
                name = f"obs_{name}"
            table[name] = adata.obs[col].to_numpy()
            names[col] = name
    return names


def resistance_rank(prob: np.ndarray) -> pd.Series:
    """Rank of each cell by P(resistant): 1 = most likely resistant; ties in input order; <NA> where
    the cell has no probability."""
    ranks = pd.Series(prob).rank(method="first", ascending=False)
    return ranks.astype("Int64")


def spread_note(over: str) -> str:
    """What ``prob_resistant_sd`` is, for a biologist: ``over`` says over what (``"over the 3
    ensemble members"``, ``"over the draws"``). Small values (0.001) are easily read as "every call
    is certain"; they only say the members (or draws) agree."""
    return (f"Uncertainty: the sd of P(resistant) {over} (0: they agree). It is only the spread between "
            + ("the draws" if "draws" in str(over) else "the ensemble members")
            + ", not the confidence of the call: a small sd says they agree, not that the call is right, "
              "and a cell near the threshold is a close call whatever its sd.")


def top_cells(adata: ad.AnnData, k: int, extra_columns: Sequence[str] = (), *,
              key_added: str | None = None, label_column: str | None = None) -> pd.DataFrame:
    """The ``k`` scored cells most likely resistant (rows of :func:`predictions_table`, by rank)."""
    table = predictions_table(adata, extra_columns, key_added=key_added, label_column=label_column)
    return table[table["rank"].notna()].sort_values("rank").head(int(k)).reset_index(drop=True)


def _evaluation_or_note(adata: ad.AnnData, label_column: str | None, key_added: str | None):
    """``(evaluation, roc, pr, problem)``: the evaluation against a label column, or why there is none."""
    if not label_column:
        return None, None, None, None
    try:
        evaluation, roc, pr = evaluate_column(adata, label_column, key_added=key_added)
    except InputError as exc:
        return None, None, None, f"{exc.message} {exc.hint or ''}".strip()
    return evaluation, roc, pr, None


def group_tables(adata: ad.AnnData, group_columns: Sequence[str] = (), *,
                 key_added: str | None = None) -> dict[str, pd.DataFrame]:
    """The resistant fraction per Leiden cluster (when computed) and per ``group_columns``."""
    columns = ([_keys.CLUSTER] if _keys.CLUSTER in adata.obs else []) + [c for c in group_columns if c]
    return {c: group_table(adata, c, key_added=key_added) for c in dict.fromkeys(columns) if c in adata.obs}


def _cell_metadata_text(adata: ad.AnnData) -> str | None:
    """What a cell metadata table added to the data (its name, columns and matches), or None."""
    from scatd_core.io import cell_metadata_messages

    said = cell_metadata_messages(adata.uns.get(_keys.CELL_METADATA))
    return " ".join(said) or None


def metrics_table(adata: ad.AnnData, label_column: str | None = None, group_columns: Sequence[str] = (), *,
                  key_added: str | None = None) -> pd.DataFrame:
    """Long table ``section, metric, value, id`` (``id``: ``section:metric``, unique in the table,
    :func:`_with_ids`): the run summary (threshold and whether it is
    calibrated included; the cells not scored by reason, section ``not scored``; what the model
    input did with the values, metric ``note``), the evaluation against ``label_column`` (when
    given and possible) and the resistant fraction per group."""
    rows = [("summary", k, v) for k, v in summary(adata, key_added=key_added).items()
            if not (k == "batch_size_lowered_to" and v is None)]  # a row only when the batch was lowered
    run = adata.uns[result_keys(key_added).run]
    left_out = filtered_text(run)  # what left the n_filtered cells out: the QC filter or the user's mask column
    if left_out:
        at = next((i + 1 for i, r in enumerate(rows) if r[1] == "n_filtered"), len(rows))
        rows.insert(at, ("summary", "filtered_by", left_out))
    threshold = run["threshold"]  # where the threshold came from
    rows += [("summary", "threshold_source", threshold.get("source")),
             ("summary", "threshold_detail", threshold.get("detail"))]
    rows += _provenance_rows(adata, run)  # which model, how, when, and on which file
    umap_note = _original_umap_note(adata)  # the data's own UMAP kept aside: said in the umap section
    notes = [str(n) for n in run.get("notes", [])]
    rows += [("summary", "note", n) for n in notes if n != umap_note]  # e.g. log-normalised values un-logged
    rows += [("not scored", str(reason), int(n)) for reason, n in (run.get("not_scored") or {}).items()]
    # VAE_sf/VAE_gf: how the foundation-model embeddings were made (settings, coverage, model files)
    rows += [("embeddings", str(k), v) for k, v in (run.get("embeddings") or {}).items()]
    evaluation, _, _, problem = _evaluation_or_note(adata, label_column, key_added)
    if evaluation is not None:
        rows += [("evaluation", k, v) for k, v in evaluation.as_dict().items()]
        if evaluation.undefined:  # their values are left empty (NaN), never 0: say why
            rows.append(("evaluation", "note", evaluation.undefined_note()))
        rows.append(("evaluation", "label_column", label_column))
        rows += _label_meaning_rows(adata, label_column)
        rows.append(("evaluation", "threshold_fitted_on_these_labels",
                     fitted_on_labels(adata, label_column, key_added=key_added)))
        if evaluation.training_note:  # cells whose labels trained the model (few-shot): left out, or why not
            rows.append(("evaluation", "training_cells", evaluation.training_note))
    elif problem:
        rows.append(("evaluation", "not computed", problem))
    rows += _biomarker_rows(adata, key_added)
    note = _no_umap_note(adata, key_added)
    if note:
        rows.append(("umap", "not computed", note))
    if umap_note in notes:
        rows.append(("umap", "note", umap_note))
    metadata = _cell_metadata_text(adata)  # where label or sample columns came from, when a table added them
    if metadata:
        rows.append(("data", "cell_metadata_table", metadata))
    for column, table in group_tables(adata, group_columns, key_added=key_added).items():
        name = CLUSTER_COLUMN if column == _keys.CLUSTER else column  # as predictions.csv names it
        for rec in table.itertuples(index=False):
            rows += [(f"{name}={rec.group}", "n_cells", int(rec.n_cells)),
                     (f"{name}={rec.group}", "n_called", int(rec.n_called)),
                     (f"{name}={rec.group}", "n_resistant", int(rec.n_resistant)),
                     (f"{name}={rec.group}", "fraction_resistant",
                      None if pd.isna(rec.fraction_resistant) else round(float(rec.fraction_resistant), 4))]
    return _with_ids(rows)


#: metrics.csv's columns: the row's parts, then ``id`` (``section:metric``, unique in the file; last, so
#: that the columns a script read before keep their places).
METRICS_COLUMNS = ["section", "metric", "value", "id"]


def _with_ids(rows: Sequence[tuple]) -> pd.DataFrame:
    """metrics.csv's rows, each with an ``id`` unique in the file (``section:metric``, e.g.
    ``summary:threshold`` and ``biomarkers:threshold``), so that a table keyed by it (R's ``setNames``,
    Excel's lookups) never finds two rows under one name. A metric said twice in a section (two
    ``note`` rows) is numbered from its second: ``note``, ``note_2``, ``note_3``."""
    out, taken = [], set()
    for section, metric, value in rows:
        section, base = str(section), str(metric)
        metric, n = base, 1
        while f"{section}:{metric}" in taken:
            n += 1
            metric = f"{base}_{n}"
        taken.add(f"{section}:{metric}")
        out.append((section, metric, value, f"{section}:{metric}"))
    return pd.DataFrame(out, columns=METRICS_COLUMNS, dtype=object)


def filtered_text(run: dict) -> str | None:
    """What left a run's masked cells out, in words (``filtered by QC``, or ``left out by the mask
    column 'keep'``); ``None`` where the mask left none out."""
    if not (run.get("qc") or {}).get("n_filtered"):
        return None
    return mask_reason_text(run_mask(run))


def _label_meaning_rows(adata: ad.AnnData, label_column: str) -> list[tuple]:
    """metrics.csv's evaluation rows saying which value of the label column means resistant and
    which sensitive (``label_resistant``, ``label_sensitive``), as ``--label-resistant`` takes it."""
    meaning = label_meaning(adata, label_column)
    if meaning is None:
        return []
    resistant, sensitive, recorded = meaning
    rows = [("evaluation", "label_resistant", resistant)]
    if sensitive is not None:
        rows.append(("evaluation", "label_sensitive", sensitive))
    rows.append(("evaluation", "label_direction_from",
                 "chosen (Data page or --label-resistant)" if recorded else "recognised from the words"))
    return rows


def _provenance_rows(adata: ad.AnnData, run: dict) -> list[tuple]:
    """``metrics.csv``'s provenance: the model (name, library folder, drug, weights sha256), the mode
    and what ``prob_resistant_sd`` is over, when it ran (UTC) with which scATD Studio, and the data
    file (its name and, when recorded, its sha256)."""
    model, params = run.get("model") or {}, run.get("params") or {}
    mode = params.get("mode")
    rows = [("summary", "model", model.get("name")),
            ("summary", "model_folder", Path(str(model["path"])).name if model.get("path") else None),
            ("summary", "drug", model.get("drug")),
            ("summary", "weights_sha256", model.get("weights_sha256") or None),
            ("summary", "mode", mode)]
    if mode == "sample":
        rows += [("summary", "n_samples", params.get("n_samples")), ("summary", "seed", params.get("seed"))]
    rows += [("summary", "prob_resistant_sd", params.get("prob_resistant_sd")),
             ("summary", "run_at", run.get("run_at")),
             ("summary", "scatd_version", run.get("scatd_version"))]
    data = adata.uns.get(_keys.INPUT_REPORT) or {}
    if data.get("file_name"):
        rows.append(("data", "file", data.get("file_name")))
        rows.append(("data", "file_sha256", data.get("file_sha256") or data.get("file_sha256_skipped")
                     or "not recorded"))
    return rows


def _original_umap_note(adata: ad.AnnData) -> str | None:
    """The note that the data's own UMAP was kept aside (:func:`scatd_core.embed.original_umap_note`),
    when it was; else None."""
    from scatd_core.embed import INFO_KEY, original_umap_note

    kept = (adata.uns.get(INFO_KEY) or {}).get("original_umap")
    return original_umap_note(str(kept)) if kept else None


#: report.html without scATD's UMAP and clusters though there are cells enough for them (made before the
#: app's Cells page computed them, or by ``scatd report --no-umap``): what is missing, and how to include it.
UMAP_NOT_COMPUTED = ("The UMAP and Leiden clusters were not computed for this report. To include them, open the "
                     "Cells page in the app before downloading the report, or run scatd report without "
                     "--no-umap (it computes them by default). The predictions, the ranking and the downloads "
                     "do not need them.")
#: The same, under the data's own UMAP (scATD's is not there, nor its clusters).
DATA_UMAP_ONLY = ("The UMAP above is the file's own; scATD's UMAP and Leiden clusters were not computed for this "
                  "report. To include them, open the Cells page in the app before downloading the report, or "
                  "run scatd report without --no-umap.")


def _no_umap_note(adata: ad.AnnData, key_added: str | None) -> str | None:
    """Why the report has no UMAP and clusters when there are too few cells for them, else None."""
    from scatd_core.embed import not_computed_note

    if _keys.UMAP in adata.obsm and not is_data_umap(adata):
        return None
    return not_computed_note(adata, latent_key=result_keys(key_added).latent)


def _biomarker_rows(adata: ad.AnnData, key_added: str | None) -> list[tuple]:
    """The cells the biomarkers of this prediction explained: how many, of how many scored, and
    whether (and how) they were a subsample: the app's Biomarkers page explains at most 2,000 cells
    by default, ``scatd explain`` / ``scatd report --explain`` all of them (``--max-cells``)."""
    stored = adata.uns.get(_keys.BIOMARKERS)
    info = {} if stored is None else stored.get("info", {})
    if not info or info.get("prediction_key", result_keys(key_added).prefix) != result_keys(key_added).prefix:
        return []
    cells = info.get("cells") or {}
    rows = [("biomarkers", "n_cells_explained", cells.get("n_explained")),
            ("biomarkers", "n_cells_scored", cells.get("n_scored")),
            ("biomarkers", "subsampled", cells.get("subsampled")),
            ("biomarkers", "cells_explained", cells.get("how"))]
    if info.get("nothing_to_attribute"):
        rows.append(("biomarkers", "nothing_to_attribute", info["nothing_to_attribute"]))
    # the threshold and the predicted groups the ranking was computed at, which the summary rows above
    # (the calls now) no longer give once the threshold changed afterwards (out_of_date then says so)
    stale = out_of_date(adata)
    rows += [("biomarkers", "threshold", info.get("threshold")),
             ("biomarkers", "threshold_calibrated", info.get("threshold_calibrated")),
             ("biomarkers", "n_explained_resistant", cells.get("n_resistant")),
             ("biomarkers", "n_explained_sensitive", cells.get("n_sensitive")),
             ("biomarkers", "out_of_date", bool(stale))]
    if stale:
        rows.append(("biomarkers", "out_of_date_reason", stale))
    rows += _biomarker_settings_rows(info)
    return rows


def _biomarker_settings_rows(info: dict) -> list[tuple]:
    """How the stored ranking was computed, as the h5ad's ``uns['scatd_biomarkers']['info']`` and
    report.html record it: the method, the explained output, the baseline, the steps, the seed and
    the completeness check (integrated gradients only: in-silico deletion has none)."""
    rows = [("biomarkers", "method", info.get("method")),
            ("biomarkers", "explained_output", info.get("target")),
            ("biomarkers", "explained_output_meaning", info.get("target_title")),
            ("biomarkers", "baseline", info.get("baseline")),
            ("biomarkers", "baseline_meaning", info.get("baseline_title")),
            ("biomarkers", "n_steps", info.get("n_steps") or None),  # 0: in-silico deletion, no steps
            ("biomarkers", "seed", info.get("seed"))]
    comp = info.get("completeness") or {}
    if comp and not info.get("nothing_to_attribute"):  # with nothing to attribute it measures nothing
        rows += [("biomarkers", f"completeness_{k}", comp.get(k)) for k in
                 ("median_relative_error", "max_relative_error", "tolerance", "ok") if k in comp]
    return [r for r in rows if r[2] is not None]


def explained_cells_text(info: dict, *, short: bool = False) -> str:
    """Words for beside a downloaded ranking: the cells it was computed from, since
    ``biomarkers.csv``'s columns do not say it (``metrics.csv``'s ``biomarkers`` rows do), e.g.
    "Ranked from 2,000 of the 10,000 scored cells: a subsample, ...". ``short``: "from 2,000 of
    10,000 scored cells (a subsample)"."""
    cells = info.get("cells") or {}
    n_explained, n_scored = cells.get("n_explained"), cells.get("n_scored")
    if n_explained is None or n_scored is None:
        return ("" if short else
                "The ranking does not record how many cells it explained (computed by an earlier version).")
    n_explained, n_scored = int(n_explained), int(n_scored)
    if not cells.get("subsampled"):
        return f"from all {n_scored:,} scored cells" if short else f"Ranked from all {n_scored:,} scored cells."
    if short:
        return f"from {n_explained:,} of {n_scored:,} scored cells (a subsample)"
    return (f"Ranked from {n_explained:,} of the {n_scored:,} scored cells: a subsample, stratified by predicted "
            "label. biomarkers.csv's columns do not say so; the metrics file (its 'biomarkers' rows) records it.")


def biomarkers_table(adata: ad.AnnData) -> pd.DataFrame | None:
    """The gene ranking stored by :func:`scatd_core.explain.explain`, or ``None``."""
    stored = adata.uns.get(_keys.BIOMARKERS)
    return None if stored is None else pd.DataFrame(stored["ranking"])


def _slug(text: str, limit: int) -> str:
    """``text`` made file-name-safe (ASCII letters, digits, ``-``, ``_``, ``.``) and at most ``limit`` long."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._")[:limit].strip("._")


def file_stem(data_name: str | None, drug: str | None = None, *, run: dict | None = None) -> str:
    """A safe, bounded file-name stem for the downloads, e.g. ``tumour_GEFITINIB``.

    ``run`` (``uns['scatd']`` of a prediction) makes it say which prediction: the model's library
    folder (the drug kept when the folder does not name it) and the threshold of the calls, e.g.
    ``tumour_gefitinib_vae_sf_thr0.42``, so two models of one drug, or one model before and
    after calibration, never give files of the same name."""
    base = str(data_name or "data")
    extensions = (".h5ad", ".h5", ".loom", ".csv", ".tsv", ".txt", ".gz", ".zip", ".tgz", ".tar", ".npy", ".mtx")
    while ext := next((e for e in extensions if base.lower().endswith(e)), None):
        base = base[: -len(ext)]
    parts = [_slug(base, 48) or "data"]  # "demo (simulated data)": no "_" left before the drug
    model = (run or {}).get("model") or {}
    drug = _slug(drug if drug is not None else model.get("drug") or "", 32)
    folder = _slug(Path(str(model["path"])).name, 48) if model.get("path") else ""
    if drug and drug.lower() not in folder.lower():
        parts.append(drug)
    if folder:
        parts.append(folder)
    value = ((run or {}).get("threshold") or {}).get("value")
    if value is not None:
        parts.append(f"thr{float(value):.4g}")
    return "_".join(parts)


def biomarkers_stem(data_name: str | None, adata: ad.AnnData) -> str:
    """:func:`file_stem` for the downloads of the stored biomarker ranking (biomarkers.csv, the per-cell
    attributions): with the threshold its predicted groups were called at, which the ranking keeps
    when the threshold changes afterwards (a ranking computed at 0.5 is never named ``thr0.3``)."""
    stored = adata.uns.get(_keys.BIOMARKERS) or {}
    info = stored.get("info") or {}
    run = dict(adata.uns.get(result_keys(info.get("prediction_key")).run) or {})
    if info.get("threshold") is not None:
        run["threshold"] = {**(run.get("threshold") or {}), "value": float(info["threshold"])}
    return file_stem(data_name, run=run)


def panel_stem(data_name: str | None, panel_name: str | None = None, drugs: Sequence[str] = ()) -> str:
    """The stem of a panel's downloads: the data, then the saved panel's name, else its drugs
    (each cut to 12 characters, at most about 40 in all, ``+N`` for the N left out), e.g.
    ``tumour_panel_CISPLATIN-GEFITINIB+2``."""
    label = _slug(panel_name, 40) if panel_name else ""
    if not label:
        names = [n for n in (_slug(d, 12) for d in drugs) if n]
        kept: list[str] = []
        for name in names:
            left = len(names) - len(kept) - 1
            if kept and len("-".join(kept + [name])) + (len(f"+{left}") if left else 0) > 40:
                break
            kept.append(name)
        label = "-".join(kept) + (f"+{len(names) - len(kept)}" if len(names) > len(kept) else "")
    return file_stem(data_name, "") + "_panel" + (f"_{label}" if label else "")


#: First characters that make a spreadsheet (Excel, LibreOffice, Google Sheets) read a CSV cell as a
#: formula: a cell or gene name such as ``=HYPERLINK(...)`` would run when the file is opened.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


#: A signed number with its interval, as the model card writes a difference ("+0.041 [-0.068, +0.159]"):
#: no function, no reference, nothing a spreadsheet could run.
_SIGNED_INTERVAL = r"[+-]\d+(?:\.\d+)?(?: \[[+-]?\d+(?:\.\d+)?, [+-]?\d+(?:\.\d+)?\])?"


def _formula_mask(values: pd.Series) -> np.ndarray:
    text = values.astype(str)
    risky = text.str[:1].isin(FORMULA_STARTS).to_numpy() & ~text.isin(["-", "+"]).to_numpy()
    if risky.any():  # a signed number ("-1.5", "+3"), or one with its interval, is a number, not a formula
        numeric = (pd.to_numeric(text[risky], errors="coerce").notna()
                   | text[risky].str.fullmatch(_SIGNED_INTERVAL)).to_numpy()
        risky[np.flatnonzero(risky)[numeric]] = False
    return risky


def _quoted_labels(labels: pd.Index) -> pd.Index:
    if labels.dtype.kind not in "OSU" and not isinstance(labels.dtype, (pd.CategoricalDtype, pd.StringDtype)):
        return labels
    risky = _formula_mask(pd.Series(labels, dtype=object)) & pd.notna(np.asarray(labels, dtype=object))
    if not risky.any():
        return labels
    return pd.Index(["'" + str(v) if r else v for v, r in zip(labels, risky)], name=labels.name)


def spreadsheet_safe(table: pd.DataFrame, index: bool = False) -> pd.DataFrame:
    """``table`` with every text value that a spreadsheet would run as a formula (it starts with
    ``= + - @``, a tab or a carriage return, and is not a number) prefixed with ``'``, in the
    cells, the column names and (``index``) the row names; the same object when none does.

    Cell, gene and group names come from the user's data: a downloaded CSV opened in a
    spreadsheet must not run them. Numbers are never changed."""
    out = None
    for j in range(table.shape[1]):
        col = table.iloc[:, j]
        if isinstance(col.dtype, pd.CategoricalDtype):
            cats = _quoted_labels(pd.Index(col.cat.categories))
            if not cats.equals(col.cat.categories):
                out = table.copy() if out is None else out
                out.isetitem(j, col.cat.rename_categories(list(cats)))
        elif col.dtype.kind in "OSU" or isinstance(col.dtype, pd.StringDtype):
            values = col.to_numpy(dtype=object)
            present = col.notna().to_numpy()
            risky = np.zeros(len(values), dtype=bool)
            if present.any():
                risky[present] = _formula_mask(pd.Series(values[present], dtype=object))
            if risky.any():
                out = table.copy() if out is None else out
                values = values.copy()
                values[risky] = ["'" + str(v) for v in values[risky]]
                out.isetitem(j, pd.Series(values, index=table.index, dtype=object))
    columns = _quoted_labels(pd.Index(table.columns.astype(str)))
    if not columns.equals(pd.Index(table.columns.astype(str))):
        out = table.copy() if out is None else out
        out.columns = columns
    if index:
        rows = _quoted_labels(table.index)
        if not rows.equals(table.index):
            out = table.copy() if out is None else out
            out.index = rows
    return table if out is None else out


def to_csv_bytes(table: pd.DataFrame, index: bool = False) -> bytes:
    """``table`` as UTF-8 CSV, safe to open in a spreadsheet (:func:`spreadsheet_safe`)."""
    return spreadsheet_safe(table, index=index).to_csv(index=index).encode("utf-8")


# --------------------------------------------------------------------------------------------
# h5ad
# --------------------------------------------------------------------------------------------

#: Keys of ``uns`` records that may hold a path of the machine that made them
_PATH_KEYS = ("path", "folder", "store", "parts", "bundle_path")


def _without_paths(value):
    """``value`` (an ``uns`` tree) with every path under :data:`_PATH_KEYS` cut to its last name."""
    if not isinstance(value, dict):
        return value
    out = {}
    for k, v in value.items():
        if k in _PATH_KEYS and isinstance(v, (str, Path)) and ("/" in str(v) or "\\" in str(v)):
            out[k] = Path(str(v)).name
        else:
            out[k] = _without_paths(v)
    return out


def report_context(adata: ad.AnnData, label_column: str | None = None, group_columns: Sequence[str] = (), *,
                   key_added: str | None = None) -> dict:
    """What a report is made with, for ``uns['scatd_report']`` of its h5ad: the label and group
    columns and the evaluation against the labels (its scores, or why there is none), as in
    ``metrics.csv``."""
    context = {"label_column": label_column or "", "group_columns": [str(c) for c in group_columns if c]}
    evaluation, _, _, problem = _evaluation_or_note(adata, label_column, key_added)
    if evaluation is not None:
        context["evaluation"] = {k: v for k, v in evaluation.as_dict().items() if v is not None}
        context.update({k: v for _, k, v in _label_meaning_rows(adata, label_column)})
        context["threshold_fitted_on_these_labels"] = fitted_on_labels(adata, label_column, key_added=key_added)
        if evaluation.training_note:
            context["training_cells"] = evaluation.training_note
    elif problem:
        context["evaluation_not_computed"] = problem
    return context


def write_h5ad(adata: ad.AnnData, path: str | Path, *, with_x: bool = True, context: dict | None = None,
               public: bool = False) -> Path:
    """Write the annotated AnnData so it opens in scanpy/cellxgene as it is.

    Every ``scatd_*`` field is kept (predictions, UMAP, clusters, biomarkers). A backed dataset is
    never read into memory: its file is copied as it is and the annotations (obs, var, obsm, uns)
    are written over the copy. ``with_x=False`` writes the annotations only (X left empty): small
    enough to download for any number of cells, and joined to the original file by cell name.
    ``context`` (:func:`report_context`) goes to ``uns['scatd_report']``; ``public`` (a download
    from a server) cuts the server's paths in ``uns`` (e.g. the model's library folder) to their
    last name. ``adata`` itself is left as it was.
    """
    uns = dict(adata.uns)
    if context is not None:
        uns[_keys.REPORT] = context
    obs = _exported_calls(adata, uns)
    if public:
        uns = _without_paths(uns)
    return _write_h5ad(adata, path, with_x, obs, uns)


def _prediction_record(adata: ad.AnnData, prefix: str, model: str | None = None) -> dict:
    """The obs columns of one prediction (under ``prefix``) and the model and threshold of its calls."""
    keys, run = result_keys(prefix), adata.uns[prefix]
    thr = run.get("threshold") or {}
    record = {"columns": [c for c in (keys.prob, keys.prob_sd, keys.label, keys.scored, keys.not_scored_reason)
                          if c in adata.obs],
              "model": str(model or (run.get("model") or {}).get("name") or ""),
              "drug": str((run.get("model") or {}).get("drug") or ""),
              "threshold": float(thr.get("value", float("nan"))), "calibrated": bool(thr.get("calibrated")),
              "threshold_detail": str(thr.get("detail") or "")}
    if keys.latent in adata.obsm:
        record["obsm"] = keys.latent
    return record


def _exported_calls(adata: ad.AnnData, uns: dict) -> pd.DataFrame:
    """Make an exported h5ad unambiguous (``uns`` is the copy to be written; ``adata`` is left as
    it is). Every called-label column (``obs['scatd_label']``, a panel's ``obs['scatd_<DRUG>_label']``)
    keeps only the categories it uses and gets ``uns['<column>_colors']`` as the app draws them,
    so ``sc.pl.umap(color='scatd_label')`` shows the app's colours and no empty entry;
    ``uns['scatd_columns']`` says which columns hold the single-model prediction and which the
    panel's, each with its model and threshold; a biomarker ranking computed at another threshold
    (or for another model) than the calls is marked ``info['out_of_date']`` (the sentence the app
    shows). Returns the obs to write (``adata.obs`` itself when nothing changed)."""
    from scatd_core import panel

    columns: dict = {}
    prefixes = []
    if _keys.RUN in adata.uns and _keys.LABEL in adata.obs:
        columns["prediction"] = _prediction_record(adata, _keys.RUN)
        prefixes.append(_keys.RUN)
    if adata.uns.get(_keys.PANEL):
        ms = panel.members(adata)
        columns["panel"] = {
            "columns": [c for c in (_keys.PANEL_N_SCORED, _keys.PANEL_N_RESISTED, _keys.PANEL_RESISTANT_TO_ALL)
                        if c in adata.obs],
            "drugs": {m.drug: _prediction_record(adata, m.key, m.model) for m in ms}}
        prefixes += [m.key for m in ms if result_keys(m.key).label in adata.obs]
    if "prediction" in columns and "panel" in columns:
        columns["note"] = ("obs['scatd_label'] holds the single-model prediction's calls (model and threshold under "
                           "'prediction'); each drug's calls of the panel are in its own columns, at that drug's "
                           "threshold (under 'panel'). The two can differ for the same drug.")
    if columns:
        uns[_keys.COLUMNS] = columns
    stored = adata.uns.get(_keys.BIOMARKERS)
    stale = out_of_date(adata) if stored is not None else None
    if stale:
        uns[_keys.BIOMARKERS] = {**stored, "info": {**stored.get("info", {}), "out_of_date": stale}}
    obs = adata.obs
    for prefix in prefixes:
        label = result_keys(prefix).label
        values = obs[label]
        if not isinstance(values.dtype, pd.CategoricalDtype):
            continue
        trimmed = values.cat.remove_unused_categories()
        if len(trimmed.cat.categories) != len(values.cat.categories):
            obs = adata.obs.copy() if obs is adata.obs else obs
            obs[label] = trimmed
        uns[f"{label}_colors"] = pl.label_colors([str(c) for c in trimmed.cat.categories])
    return obs


class _KeepFirstError(io.RawIOBase):
    """The file HDF5 writes through (h5py's ``fileobj`` driver): the first OS error (no space left,
    a file size limit) is kept and every later write, truncation and flush is taken as done, so
    HDF5 finishes and closes its objects as after a good write. A failed write inside HDF5 left its
    objects half closed: ~1,900 lines of h5py tracebacks, then a crash of Python at exit (SIGSEGV).
    The caller discards the file and raises :attr:`error` (:func:`_hdf5_file`)."""

    def __init__(self, path: Path, mode: str):
        super().__init__()
        self._fh = open(path, mode, buffering=0)
        self.error: OSError | None = None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        return self._fh.readinto(b)

    def write(self, b) -> int:
        data = memoryview(b).cast("B")
        done = 0
        if self.error is None:
            try:
                while done < len(data):
                    done += self._fh.write(data[done:]) or 0
            except OSError as exc:
                self.error = exc
        if done < len(data):
            self._fh.seek(len(data) - done, os.SEEK_CUR)  # as if written: HDF5 goes on
            self._end = max(self._end, self._fh.tell())
        return len(data)

    _end = 0  # after an error: the end of the file as HDF5 wrote it (the file on disk is shorter)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_END and self.error is not None:
            end = max(self._end, os.fstat(self._fh.fileno()).st_size)
            return self._fh.seek(end + offset)
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def truncate(self, size: int | None = None) -> int:
        if self.error is None:
            try:
                return self._fh.truncate(size)
            except OSError as exc:
                self.error = exc
        return self.tell() if size is None else size

    def flush(self) -> None:
        pass  # unbuffered

    def close(self) -> None:
        if not self.closed:
            try:
                self._fh.close()
            except OSError as exc:
                self.error = self.error or exc
        super().close()


@contextmanager
def _hdf5_file(path: Path, mode: str):
    """``h5py.File`` on ``path`` (``"w"``: made anew, ``"r+"``: changed) written through
    :class:`_KeepFirstError`: an OS error while writing (a full disk) is raised once HDF5 has
    closed the file, as one ``OSError`` naming ``path``, not from inside HDF5."""
    import h5py

    guard = _KeepFirstError(path, "w+b" if mode == "w" else "r+b")
    try:
        with h5py.File(guard, mode) as f:
            yield f
    except Exception:
        if guard.error is None:
            raise  # else HDF5's complaint is about the write that failed: that error is raised below
    finally:
        guard.close()
    if guard.error is not None:
        exc = guard.error
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None


def _write_h5ad(adata: ad.AnnData, path: str | Path, with_x: bool, obs: pd.DataFrame, uns: dict) -> Path:
    """``adata`` with ``obs`` and ``uns`` in their place, written to ``path``; ``adata`` itself is
    never changed, not even for a moment (a download is made in another thread while the page may
    write to the session's data: a swapped obs would have taken, then lost, that write). An OS
    error while writing (no space left) is one ``OSError`` naming ``path`` (:func:`_hdf5_file`)."""
    from anndata.io import write_elem

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    gzip = {"compression": "gzip"}
    with replacing(path) as tmp:  # a stopped run leaves no half-written file under the user's name
        if not with_x:
            with _hdf5_file(tmp, "w") as f:
                write_elem(f, "/", ad.AnnData(obs=_categorical_strings(obs), var=_categorical_strings(adata.var),
                                              obsm=dict(adata.obsm), uns=uns), dataset_kwargs=gzip)
        elif adata.isbacked:
            import shutil

            if source_missing(adata):
                raise InputError(f"The data file {Path(adata.filename).name} these data are read from is gone, so the "
                                 "annotated h5ad (which copies its matrix) cannot be written. Read the data again.")
            shutil.copyfile(adata.filename, tmp)
            with _hdf5_file(tmp, "r+") as f:
                for elem, value in (("obs", obs), ("var", adata.var), ("obsm", dict(adata.obsm)), ("uns", uns)):
                    if elem in f:
                        del f[elem]
                    write_elem(f, elem, value)
        else:
            with _hdf5_file(tmp, "w") as f:  # the exported obs and uns in place of the session's
                write_elem(f, "/", adata, dataset_kwargs=gzip)
                for elem, value in (("obs", _categorical_strings(obs)), ("var", _categorical_strings(adata.var)),
                                    ("uns", uns)):
                    del f[elem]
                    write_elem(f, elem, value)
        with _hdf5_file(tmp, "r+") as f:
            _drop_null_elements(f)
    return path


def _drop_null_elements(f) -> None:
    """Remove the top-level elements ``write_elem`` wrote as 'null' (anndata 0.12 writes a missing
    ``raw``, or ``X`` of an annotations-only file, so): ``AnnData.write_h5ad`` writes none, and a
    file holding them is misread when opened backed (its 'raw' taken for an adata.raw without X)."""
    for name in list(f.keys()):
        if f[name].attrs.get("encoding-type") == "null":
            del f[name]


def _categorical_strings(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with its text columns as categories, as ``AnnData.write_h5ad`` stores them (a copy
    when any changes; ``df`` itself is left as it is)."""
    text = [c for c in df.columns if pd.api.types.infer_dtype(df[c], skipna=True) == "string"
            and not isinstance(df[c].dtype, pd.CategoricalDtype)]
    if not text:
        return df
    df = df.copy()
    for c in text:
        df[c] = pd.Categorical(df[c])
    return df


def source_missing(adata: ad.AnnData) -> bool:
    """Whether ``adata`` is read from a file on disk (backed) that is no longer there: the annotated
    h5ad, which copies that file, cannot be written (what is already read still shows)."""
    return bool(adata.isbacked and adata.filename is not None and not Path(adata.filename).is_file())


#: Above this estimated size the app offers the annotations without X (the full file: ``scatd report``).
MAX_DOWNLOAD_BYTES = 1 << 30


def h5ad_download_size(adata: ad.AnnData) -> int:
    """Rough size of the annotated h5ad (the backed file's size, or X's bytes in memory; 0 for a
    backed file that is gone, :func:`source_missing`)."""
    if adata.isbacked:
        try:
            return Path(adata.filename).stat().st_size
        except OSError:
            return 0
    X = adata.X
    if hasattr(X, "nnz"):
        return int(X.nnz * (X.dtype.itemsize + 4))
    return int(np.asarray(X).nbytes) if X is not None else 0


def h5ad_download_has_x(adata: ad.AnnData) -> bool:
    """Whether the app's annotated h5ad download carries the expression matrix: not above
    :data:`MAX_DOWNLOAD_BYTES` (a download is made in the server's memory, for every click), where
    it carries the annotations only and ``scatd report`` writes the whole file."""
    return h5ad_download_size(adata) <= MAX_DOWNLOAD_BYTES


def h5ad_bytes(adata: ad.AnnData, *, with_x: bool = True, context: dict | None = None) -> bytes:
    """The annotated h5ad as bytes, for a download from the server (its paths cut to their names;
    ``context``: :func:`report_context`)."""
    with tempfile.TemporaryDirectory(prefix="scatd-export-") as tmp:
        return write_h5ad(adata, Path(tmp) / "annotated.h5ad", with_x=with_x, context=context,
                          public=True).read_bytes()


# --------------------------------------------------------------------------------------------
# The HTML report
# --------------------------------------------------------------------------------------------

_CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;margin:0;
color:#222;background:#fafafa}
main{max-width:1100px;margin:0 auto;padding:24px 32px;background:#fff}
h1{margin-bottom:0;overflow-wrap:anywhere}h2{overflow-wrap:anywhere;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
.sub{color:#666;margin-top:4px}.demo{background:#fff3cd;border:1px solid #e0c36a;padding:8px 12px;
border-radius:6px;font-weight:600}.warn{background:#fdecea;border:1px solid #f5c2c0;padding:8px 12px;border-radius:6px}
table{border-collapse:collapse;margin:8px 0;font-size:14px}td,th{border:1px solid #e3e3e3;padding:4px 10px;
text-align:left;vertical-align:top}th{background:#f3f3f3}.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{border:1px solid #e3e3e3;border-radius:8px;padding:10px 16px;min-width:130px}.card b{font-size:22px;
display:block}.grid{display:grid;grid-template-columns:1fr 1fr;gap:12px}footer{color:#888;font-size:12px;
margin-top:40px}code{background:#f3f3f3;padding:1px 4px;border-radius:3px}
.table-scroll{overflow-x:auto;max-width:100%}.table-scroll table{margin:0}.table-scroll{margin:8px 0}
p,li{overflow-wrap:anywhere}figure.chart{margin:0;min-width:0}figure.chart figcaption{color:#666;font-size:13px;margin-bottom:12px}
@media (max-width:640px){main{padding:12px}.grid{grid-template-columns:1fr}}
"""
#: Rows of the biomarker ranking shown in the HTML report (biomarkers.csv has them all).
REPORT_TOP_FEATURES = 30


def _fmt(v) -> str:
    if v is None or v is pd.NA or v is pd.NaT:
        return "—"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        return "—" if not np.isfinite(v) else f"{v:.4g}"
    if isinstance(v, (int, np.integer)):
        return f"{v:,}"
    if isinstance(v, np.ndarray):  # a list read back from an h5ad
        v = v.tolist()
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, default=str)
    return str(v)


def _kv_table(pairs: Iterable[tuple[str, object]]) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in pairs)
    return _scrolling(f"<table>{rows}</table>")


def _frame_html(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
                   for row in frame.itertuples(index=False))
    return _scrolling(f"<table><tr>{head}</tr>{body}</table>")


def _scrolling(table: str) -> str:
    """A table in its own horizontally scrolling box: a wide table scrolls on a phone, not the page."""
    return f"<div class='table-scroll'>{table}</div>"


def _figure_html(fig: go.Figure) -> str:
    """``fig`` for report.html: in a ``<figure>`` named by its text alternative (:func:`scatd_core.pl.alt_text`,
    read by screen readers as the app's charts are), with the app's short toolbar and PNG file name, and
    the notes its builder left to be written under it (:func:`scatd_core.pl.figure_notes`) as its
    ``<figcaption>``: text that wraps on a phone, as under the app's charts."""
    config = {**pl.chart_config(fig), "responsive": True}
    plot = fig.to_html(full_html=False, include_plotlyjs=False, config=config)
    notes = pl.figure_notes(fig)
    caption = f"<figcaption>{html.escape(' '.join(notes))}</figcaption>" if notes else ""
    return (f"<figure class='chart' role='figure' aria-label='{html.escape(pl.alt_text(fig), quote=True)}'>"
            f"{plot}{caption}</figure>")


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def _summary_section(adata, keys, info) -> list[str]:
    counts = summary(adata, key_added=keys.prefix)
    thr = info["threshold"]
    pos = info["positive_label"]
    cards = [("cells uploaded", counts["n_cells"]), ("called resistant", counts["n_resistant"]),
             ("called sensitive", counts["n_sensitive"]), ("not scored", counts["n_not_scored"]),
             (left_out_label(info), counts["n_filtered"]),  # 'filtered (QC)', or 'left out (mask)' for a mask column
             ("of the scored cells called resistant", "—" if counts["fraction_resistant"] is None
              else f"{counts['fraction_resistant']:.1%}" + ("" if thr["calibrated"] else " (uncalibrated)"))]
    parts = ["<h2>Summary</h2><div class='cards'>" + "".join(
        f"<div class='card'><b>{html.escape(_fmt(v))}</b>{html.escape(k)}</div>" for k, v in cards) + "</div>",
        f"<p>A cell is called <b>{html.escape(pos)}</b> when P({html.escape(pos)}) &gt; {thr['value']:.4g} "
        f"({html.escape(thr['detail'])}).</p>"]
    if not thr["calibrated"]:
        used = uncalibrated_threshold_words(thr)
        parts.append(f"<p class='warn'>These calls use {used}, which is <b>not calibrated</b> "
                     "to this dataset: the fraction called resistant can be far from the truth even when the "
                     "ranking of the cells is good. Calibrate the threshold with an expected resistant fraction or "
                     "a few labelled cells (Cells page, or <code>scatd predict --expected-fraction</code>), or use "
                     "the ranking (P(resistant)) rather than the calls.</p>")
    return parts


def _prediction_figures(adata, keys, info) -> str:
    thr = info["threshold"]
    figures = [_figure_html(pl.probability_histogram(adata.obs[keys.prob].to_numpy(), thr["value"],
                                                     "Distribution of P(resistant)", thr["calibrated"],
                                                     threshold_origin(thr)))]
    if _keys.UMAP in adata.obsm:
        coords = np.asarray(adata.obsm[_keys.UMAP])
        ids = adata.obs_names.astype(str)
        embed_info = adata.uns.get(_keys.EMBED, {})
        basis, note = embed_info.get("basis", "latent"), fit_note(embed_info)
        if is_data_umap(adata):  # the data brought it; scATD computed none: said so, not titled as scATD's
            basis, note = "the data's own obsm['X_umap']", None
        figures.append(_figure_html(pl.umap_figure(coords, adata.obs[keys.prob].to_numpy(), name="P(resistant)",
                                                   color_range=(0, 1), cell_ids=ids, note=note,
                                                   notes_below=True,  # as text under it: wraps on a phone
                                                   threshold=thr["value"],  # blue/red: the calls
                                                   title=f"UMAP ({basis}) coloured by P(resistant)")))
        figures.append(_figure_html(pl.umap_figure(coords, adata.obs[keys.label], name="called", categorical=True,
                                                   cell_ids=ids, note=note, notes_below=True,
                                                   title=f"UMAP ({basis}) coloured by the called label")))
        umap_note = _no_umap_note(adata, keys.prefix)
        if umap_note:  # scATD's UMAP not computed: too few cells
            figures.append(f"<p class='warn'>{html.escape(umap_note)}</p>")
        elif is_data_umap(adata):  # not computed (the app's Cells page not opened, --no-umap): said, QA r1
            figures.append(f"<p class='warn'>{html.escape(DATA_UMAP_ONLY)}</p>")
    else:  # too few cells, or not computed: the report says which, never nothing (QA r1)
        note = _no_umap_note(adata, keys.prefix) or UMAP_NOT_COMPUTED
        figures.append(f"<p class='warn'>{html.escape(note)}</p>")
    return "<h2>Predictions</h2>" + "".join(figures)


def _evaluation_section(adata, label_column, keys, info) -> list[str]:
    evaluation, roc, pr, problem = _evaluation_or_note(adata, label_column, keys.prefix)
    parts = [f"<h2>Evaluation against '{html.escape(label_column)}'</h2>"]
    if evaluation is None:
        return parts + [f"<p class='warn'>{html.escape(problem)}</p>"]
    resistant, sensitive, recorded = label_meaning(adata, label_column)  # known: the evaluation needed it
    said = (resistant.strip().lower() == "resistant"
            and (sensitive is None or sensitive.strip().lower() == "sensitive"))  # the words say it already
    meaning = "" if said else (
        f"In '{html.escape(label_column)}', <code>{html.escape(resistant)}</code> means resistant"
        + (f" and <code>{html.escape(sensitive)}</code> sensitive" if sensitive is not None else "")
        + ("" if recorded else " (recognised from the words)") + ". ")
    parts.append(f"<p>{meaning}" + " ".join(html.escape(n) for n in evaluation.notes) + "</p>")
    thr = info["threshold"]
    parts.append(f"<p>Resistant is the positive class. AUROC and AUPRC rank the cells and need no threshold; the "
                 f"other scores use the calls at P(resistant) &gt; {thr['value']:.4g}"
                 + ("" if thr["calibrated"] else
                    ", " + uncalibrated_threshold_words(thr) + ", <b>not calibrated</b> to these cells, so they can be poor even "
                    "when the ranking is good") + ".</p>")
    values = evaluation.as_dict()  # the interval's ends as every place prints them (never rounded onto 0.5)
    values["auroc_ci_low"], values["auroc_ci_high"] = interval_ends(*evaluation.auroc_ci)
    undefined = evaluation.undefined  # shown "—" with why, never 0
    parts.append(_frame_html(pd.DataFrame(
        [(k, v, f"undefined: {undefined[k]}" if k in undefined else METRIC_MEANINGS.get(k, ""))
         for k, v in values.items()], columns=["metric", "value", "meaning"])))
    prevalence = evaluation.n_positive / evaluation.n_evaluated
    parts.append("<div class='grid'>" + _figure_html(pl.roc_figure(roc, evaluation.auroc))
                 + _figure_html(pl.pr_figure(pr, evaluation.auprc, prevalence)) + "</div>")
    parts.append(_figure_html(pl.confusion_figure(evaluation.confusion, info["positive_label"],
                                                  info["negative_label"])))
    return parts


def _biomarker_section(adata) -> list[str]:
    stored = adata.uns.get(_keys.BIOMARKERS)
    if stored is None:
        return []
    ranking = pd.DataFrame(stored["ranking"])
    info = stored["info"]
    n = min(REPORT_TOP_FEATURES, len(ranking))
    parts = ["<h2>Biomarkers</h2>", f"<p>{html.escape(info.get('statement', ''))}</p>"]
    stale = out_of_date(adata)
    if stale:
        parts.append(f"<p class='warn'><b>Out of date.</b> {html.escape(stale)}</p>")
    comp = info.get("completeness", {})
    nothing = info.get("nothing_to_attribute")
    if comp and not nothing:
        parts.append(f"<p>{html.escape(completeness_text(comp))}</p>")
    for w in info.get("warnings", []):
        parts.append(f"<p class='warn'>{html.escape(str(w))}</p>")
    if nothing:  # no ranking to show: the warning above says why
        return parts
    parts.append(_figure_html(pl.biomarker_bar(ranking, min(20, n), info.get("target_title", "attribution"),
                                               "Top features by mean |attribution|", target=info.get("target", "logit"),
                                               level=info.get("features", {}).get("level", "gene"))))
    shown = ranking.head(n)[["rank", "feature", "mean_abs_attribution", "direction", "logfoldchange", "de_pval_adj",
                             "de_rank"]]
    parts.append(_frame_html(shown))
    parts.append(f"<p>The top {n} of {len(ranking):,} features; biomarkers.csv holds them all.</p>")
    return parts


def _card_section(model: dict) -> list[str]:
    """The model card stored with the prediction: a trained model's (its data, genes and settings, its
    scores next to the baselines', the verdicts, its warnings), an imported checkpoint's short card,
    or nothing (a run recorded before either was)."""
    if not model.get("card_json"):
        lines = [str(line) for line in model.get("import_card", [])]
        if not lines:
            return []
        return ["<h2>Model card (imported checkpoint)</h2><ul>"
                + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>"]
    from scatd_core.card import INTERVAL, card_details, card_table, few_shot_line, verdicts

    card = json.loads(model["card_json"])
    parts = ["<h2>Model card</h2>", f"<p>{html.escape(card['model']['description'])}</p>",
             f"<p>{html.escape(card['data']['summary'])}</p>"]
    if few_shot_line(card):  # the labelled target cells that trained it
        parts.append(f"<p>{html.escape(few_shot_line(card))}</p>")
    details = card_details(card)  # the data files with their sha256, the genes, the settings used and not used
    if details:
        parts.append("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in details) + "</ul>")
    parts.append(_frame_html(card_table(card)))
    if card.get("evaluations"):
        parts.append(f"<p>In brackets: the {INTERVAL} (cells or lines resampled within each class), computed "
                     "when the model was trained. An evaluation of this prediction against labels gives the AUROC's 95% interval "
                     "from the AUROC and the class counts (Hanley-McNeil), so on the same cells the two intervals "
                     "differ a little.</p>")
    parts.append(_figure_html(pl.card_figure(card)))
    for ev in card["evaluations"]:
        for text in verdicts(ev):  # a baseline not told apart or better, or a model within chance: a warning
            css = "" if text.startswith("This model beats") else " class='warn'"
            parts.append(f"<p{css}>{html.escape(text)}</p>")
    parts.append(f"<p>{html.escape(card['calibration'])}</p>")
    for w in card.get("warnings") or []:
        parts.append(f"<p class='warn'>{html.escape(str(w))}</p>")
    return parts


def _embeddings_line(e: dict) -> str:
    """One sentence on how a VAE_sf/VAE_gf run's cell embeddings were made."""
    if e.get("model") is None:
        return f"Embeddings: {e.get('source')}."
    settings = ", ".join(f"{k} {e[k]}" for k in ("key", "resolution", "max_genes", "emb_mode", "emb_layer")
                         if k in e)
    text = (f"Embeddings: {e['model']}{' ' + str(e['version']) if e.get('version') else ''} ({settings}), "
            f"from {e.get('values_given', 'X')}")
    if "genes: n_matched" in e:
        text += (f"; the model knew {e['genes: n_matched']:,} of the data's {e.get('genes: n_data_genes', 0):,} genes "
                 f"({e.get('genes: n_model_genes', 0):,} in its vocabulary)")
    text += f"; {counted(e.get('cells embedded') or 0)} embedded"
    missing = sum(int(v) for k, v in e.items() if k.startswith("cells not embedded"))
    if missing:
        text += f", {missing:,} not"
    return text + " (model files and their sha256 under Run parameters)."


def _report_file_content(name: str) -> str:
    """What a file of a prediction's report holds, from its name (the app's carry a stem)."""
    for end, what in (("predictions.csv", "one row per uploaded cell"),
                      ("metrics.csv", "the run's summary and provenance, the evaluation, the fraction per group"),
                      ("biomarkers.csv", "the gene ranking"), (".h5ad", "the annotated AnnData")):
        if name.endswith(end):
            return what
    return ""


def html_report(adata: ad.AnnData, *, label_column: str | None = None, group_columns: Sequence[str] = (),
                data_name: str | None = None, key_added: str | None = None,
                files: Sequence[str] | None = None) -> str:
    """A self-contained HTML report of one prediction run (plotly.js embedded once, no network).

    Holds the data summary and QC, the model and its provenance (labelled *demo (simulated
    data)* for a demo model), every run parameter, gene coverage and warnings, the calls at the
    current threshold (marked uncalibrated while it is the model's default), UMAPs when computed,
    the resistant fraction per Leiden cluster and ``group_columns``, the evaluation against
    ``label_column`` (its recorded direction) and the biomarker ranking when computed. Problems
    (e.g. one class only) are reported in the page, not raised. ``files``: the names of the files
    written with it, named in its footer (default: ``scatd report``'s names, biomarkers.csv when
    computed).
    """
    from plotly.offline import get_plotlyjs

    keys = result_keys(key_added)
    info = _require(adata, keys)
    model, params = info.get("model", {}), info.get("params", {})
    data_name = data_name or adata.uns.get(_keys.INPUT_REPORT, {}).get("file_name") or "uploaded data"
    title = f"scATD prediction: {model.get('drug') or 'drug'} on {data_name}"
    parts = [f"<h1>{html.escape(title)}</h1><p class='sub'>Generated "
             f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by scATD Studio "
             f"{html.escape(__version__)}</p>"]
    if model.get("demo"):
        parts.append("<p class='demo'>Demo model: demo (simulated data). Its predictions illustrate the "
                     "workflow and say nothing about real cells.</p>")
    parts += _summary_section(adata, keys, info)
    for w in info.get("warnings", []):
        parts.append(f"<p class='warn'>{html.escape(str(w))}</p>")
    for n in info.get("notes", []):  # what the model input did with the values (e.g. un-logged them)
        parts.append(f"<p>{html.escape(str(n))}</p>")
    if info.get("embeddings"):
        parts.append(f"<p>{html.escape(_embeddings_line(info['embeddings']))}</p>")
    parts.append(_prediction_figures(adata, keys, info))
    tables = group_tables(adata, group_columns, key_added=key_added)
    if tables:
        parts.append("<h2>Resistant fraction per group</h2><p><i>cells</i>: cells of the group; <i>scored</i>: "
                     "those with a call (not left out by the QC filter or a mask column, not left unscored); "
                     "<i>resistant</i>: those called resistant; <i>fraction resistant</i> = resistant / scored.</p>")
        for col, table in tables.items():
            name = "Leiden cluster" if col == _keys.CLUSTER else col
            parts.append(_figure_html(pl.composition_figure(table, name, f"Fraction resistant per {name}")))
            parts.append(_frame_html(table.rename(columns={
                "group": name, "n_cells": "cells", "n_called": "scored", "n_resistant": "resistant",
                "fraction_resistant": "fraction resistant"})))
    if label_column:
        parts += _evaluation_section(adata, label_column, keys, info)
    parts += _biomarker_section(adata)

    data = adata.uns.get(_keys.INPUT_REPORT, {})
    qc = info.get("qc", {})
    parts.append("<h2>Data</h2>" + _kv_table([
        # the file's name as metrics.csv records it (the title may name the data otherwise, e.g. the demo's)
        ("file", data.get("file_name") or data_name),
        ("file sha256", data.get("file_sha256") or data.get("file_sha256_skipped")),
        ("cells", adata.n_obs), ("genes", adata.n_vars),
        ("gene identifiers", data.get("gene_id_type")), ("values", data.get("value_type")),
        ("value evidence", (data.get("value_type_evidence") or {}).get("reason")),
        ("QC filter" if left_out_label(info) == _keys.FILTERED else "mask",
         f"{counted(qc.get('n_filtered', 0))} {filtered_text(info)}" if qc.get("n_filtered") else "none"),
        ("QC thresholds", _given(qc.get("thresholds"))),
        ("input warnings", _given(data.get("warnings"))),
        ("cell metadata table", _cell_metadata_text(adata)),
    ]))
    parts += _card_section(model)
    from scatd_core.bundle import backbone_title

    prov = model.get("provenance", {})
    parts.append("<h2>Model</h2>" + _kv_table([
        ("name", model.get("name")), ("drug", model.get("drug")),
        ("backbone", backbone_title(model.get("backbone"), prov)),
        ("demo model (simulated data)", bool(model.get("demo"))),
        ("library folder", Path(str(model["path"])).name if model.get("path") else None),
        ("weights sha256", model.get("weights_sha256")),
        *[(f"provenance: {k}", v) for k, v in prov.items() if not _empty(v)],
    ]))
    coverage = info.get("gene_coverage") or {}
    embed_info = adata.uns.get(_keys.EMBED, {})
    parts.append("<h2>Run parameters</h2>" + _kv_table([
        *[(k, v) for k, v in params.items()], *[(f"threshold: {k}", v) for k, v in info["threshold"].items()],
        ("model input", info.get("input")), ("run at", info.get("run_at")), ("seconds", info.get("seconds")),
        ("cells scored", info.get("n_scored")), ("not scored, by reason", _given(info.get("not_scored"))),
        *[(f"gene coverage: {k}", v) for k, v in coverage.items()],
        *[(f"UMAP: {k}", v) for k, v in embed_info.items()],
        *[(f"embeddings: {k}", v) for k, v in (info.get("embeddings") or {}).items()],
    ]))
    parts.append("<h2>Software</h2>" + _kv_table([
        ("scATD Studio", __version__), ("Python", platform.python_version()),
        *[(name, _version(name)) for name in SOFTWARE],
    ]))
    if files is None:
        files = [n for n in REPORT_FILES if n != "report.html"
                 and (n != "biomarkers.csv" or adata.uns.get(_keys.BIOMARKERS) is not None)]
    listed = ", ".join(html.escape(f) + (f" ({_report_file_content(f)})" if _report_file_content(f) else "")
                       for f in files)
    parts.append("<footer>scATD method: domain-adaptive transfer of bulk drug-response models to single "
                 "cells." + (f" Files: {listed}." if listed else "") + "</footer>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style>"
            f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body><main>"
            + "\n".join(parts) + "</main></body></html>")


#: The libraries the results depend on, with their versions in the HTML report: the model (torch), the
#: data (anndata, numpy, scipy, pandas), the UMAP and clusters (scanpy, umap-learn, pynndescent, igraph,
#: leidenalg), the attributions and DE test (captum, numba), the metrics (scikit-learn), the figures (plotly).
SOFTWARE = ("torch", "anndata", "numpy", "scipy", "pandas", "scanpy", "umap-learn", "pynndescent", "igraph",
            "leidenalg", "captum", "numba", "scikit-learn", "plotly")


def write_report(adata: ad.AnnData, folder: str | Path, *, label_column: str | None = None,
                 group_columns: Sequence[str] = (), data_name: str | None = None,
                 key_added: str | None = None) -> dict[str, Path]:
    """Write ``predictions.csv``, ``metrics.csv``, ``biomarkers.csv`` (when explained),
    ``annotated.h5ad`` and ``report.html`` into ``folder``. Returns the paths by name; an OS
    error while writing is a :class:`~scatd_core.errors.ScatdError` naming the folder.

    Without a ranking, a ``biomarkers.csv`` an earlier report left in ``folder`` is removed, so
    the folder holds only this run's results."""
    folder = Path(folder)
    with writing(folder), staged_folder(folder) as stage:  # the files appear together, or none of them
        paths = _write_report_files(adata, stage, label_column, group_columns, data_name, key_added)
    return {name: folder / path.name for name, path in paths.items()}


def _write_report_files(adata, folder: Path, label_column, group_columns, data_name, key_added) -> dict[str, Path]:
    predictions, metrics, biomarkers, h5ad, report = (folder / name for name in REPORT_FILES)
    extra = [c for c in (label_column, *group_columns) if c]
    paths = {"predictions": predictions, "metrics": metrics}
    # into the temporary folder of write_report (an earlier report's ranking is removed when they are moved in)
    write_file(predictions, to_csv_bytes(predictions_table(adata, extra, key_added=key_added,
                                                           label_column=label_column)))
    write_file(metrics, to_csv_bytes(metrics_table(adata, label_column, group_columns, key_added=key_added)))
    ranking = biomarkers_table(adata)
    if ranking is not None:
        paths["biomarkers"] = biomarkers
        write_file(biomarkers, to_csv_bytes(ranking))
    paths["h5ad"] = write_h5ad(adata, h5ad, context=report_context(adata, label_column, group_columns,
                                                                     key_added=key_added))
    paths["html"] = report
    write_file(report, html_report(adata, label_column=label_column, group_columns=group_columns,
                                   data_name=data_name, key_added=key_added,
                                   files=[p.name for k, p in paths.items() if k != "html"]))
    return paths


# --------------------------------------------------------------------------------------------
# Panels of drug models
# --------------------------------------------------------------------------------------------

def panel_group_columns(adata: ad.AnnData, group_columns: Sequence[str] = ()) -> list[str]:
    """The Leiden clusters (when computed) and ``group_columns`` present in ``adata``."""
    columns = ([_keys.CLUSTER] if _keys.CLUSTER in adata.obs else []) + [c for c in group_columns if c]
    return [c for c in dict.fromkeys(columns) if c in adata.obs]


def panel_summary_table(adata: ad.AnnData, group_columns: Sequence[str] = ()) -> pd.DataFrame:
    """The panel's per-group summary in one long table: ``grouping, group, drug, n_cells, n_called,
    n_resistant, fraction_resistant, mean_prob_resistant, calibrated, not_scored_reason``; ``grouping`` is ``all``
    for the whole sample, else ``leiden_cluster`` (when computed) or one of ``group_columns``
    (:func:`panel_group_columns`). The drugs are in panel order in every group, ``all`` included
    (the drug ranking is the report's and the page's). Every drug requested that did not score the
    data (refused by its model, or not loaded) has a row in every group after the scored drugs, with
    ``n_called`` 0, the rest empty and why in ``not_scored_reason`` (empty for a scored drug)."""
    from scatd_core import panel

    lost = [(drug, f"drug not scored: {panel._short_reason(why)}") for drug, why in panel.not_scored(adata)]

    def with_lost(part: pd.DataFrame, sizes: dict[str, int]) -> pd.DataFrame:
        if not lost:
            return part.assign(not_scored_reason="")
        rows = []
        for group, size in sizes.items():
            rows += [r for r in part[part["group"] == group].to_dict("records")]
            rows += [{"group": group, "drug": drug, "n_cells": size, "n_called": 0, "n_resistant": np.nan,
                      "fraction_resistant": np.nan, "mean_prob_resistant": np.nan, "calibrated": pd.NA,
                      "not_scored_reason": why} for drug, why in lost]
        out = pd.DataFrame(rows, columns=[*part.columns, "not_scored_reason"])
        out["not_scored_reason"] = out["not_scored_reason"].fillna("")
        return out

    parts = [with_lost(panel.drug_summary(adata).assign(group="all"), {"all": adata.n_obs}).assign(grouping="all")]
    for column in panel_group_columns(adata, group_columns):
        values = panel.group_values(adata, column).astype(str)
        summary_ = panel.group_summary(adata, column)
        sizes = {g: int((values == g).sum()) for g in dict.fromkeys(summary_["group"])}
        # the Leiden clusters are named as in every other table (obs['scatd_cluster'] only in the h5ad)
        parts.append(with_lost(summary_, sizes).assign(grouping=CLUSTER_COLUMN if column == _keys.CLUSTER else column))
    table = pd.concat(parts, ignore_index=True)
    return table[["grouping", "group"] + [c for c in table.columns if c not in ("grouping", "group")]]


def write_panel_summary(adata: ad.AnnData, path: str | Path, group_columns: Sequence[str] = ()) -> Path:
    return write_file(path, to_csv_bytes(panel_summary_table(adata, group_columns)))


def panel_models_table(adata: ad.AnnData, *, app: bool = False) -> pd.DataFrame:
    """The panel's drugs requested, one row each: scored, refused by its model, or not loaded; each
    threshold with how it was set. ``app``: the reasons as the app says them."""
    from scatd_core import panel

    rows = []
    warned: dict[str, list[str]] = {}
    for drug, warning in panel.model_warnings(adata):
        warned.setdefault(drug, []).append(warning)
    for m in panel.members(adata, scored_only=False):
        cov = m.coverage or {}
        thr = adata.uns[m.key]["threshold"] if m.scored else {}
        rows.append({"drug": m.drug, "model": m.model, "folder": m.folder, "backbone": m.backbone,
                     "status": m.status if m.scored else "refused (not scored)",
                     "gene coverage": f"{cov['n_matched']:,}/{cov['n_model_genes']:,} ({percent(cov['n_matched'] / cov['n_model_genes'])})"
                     if cov.get("n_model_genes") else ("embeddings" if m.scored else "—"),
                     "cells scored": m.n_scored, "threshold": thr.get("value"),
                     # how it was set, as a single prediction's report says it (Youden's J on 'response' ...)
                     "calibrated": thr.get("calibrated"), "threshold set by": thr.get("detail") or "",
                     "seconds": m.seconds, "problem": (app and m.problem_app) or m.problem or "",
                     # what its prediction warned of (few of its genes in the data ...), next to its drug
                     "warnings": " ".join(warned.get(m.drug, []))})
    for drug, why in panel.not_scored(adata, app=app)[sum(not m.scored for m in panel.members(
            adata, scored_only=False)):]:  # requested, but its model could not be loaded (removed ...)
        rows.append({"drug": drug, "model": "—", "folder": "—", "backbone": "—", "status": "not loaded (not scored)",
                     "gene coverage": "—", "cells scored": 0, "threshold": None, "calibrated": None,
                     "threshold set by": "", "seconds": 0.0, "problem": why, "warnings": ""})
    return pd.DataFrame(rows)


#: The per-drug metrics' columns (:func:`panel_drug_metrics`), in order.
PANEL_DRUG_COLUMNS = ("drug", "model", "folder", "backbone", "status", "not_scored_reason", "n_cells", "n_scored",
                      "n_called", "n_resistant", "n_sensitive", "fraction_resistant", "mean_prob_resistant",
                      "threshold", "calibrated", "threshold_set_by", "bulk_cv_auroc", "bulk_cv_auroc_ci_low",
                      "bulk_cv_auroc_ci_high", "bulk_best_baseline", "bulk_best_baseline_auroc", "label_column",
                      "label_auroc", "label_auroc_ci_low", "label_auroc_ci_high", "label_n_evaluated", "warnings")


def _manifest_of(folder: str | Path) -> dict:
    """A panel model's manifest, read again from its folder ({} when it cannot be: removed since ...)."""
    from scatd_core.bundle import MANIFEST

    try:
        return json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}


#: The bulk CV figures of the panel models' manifests read last (:func:`_bulk_figures`), by manifest path
#: with its identity when read, least recently used first, at most 256.
_MANIFEST_FIGURES = StampedLRU(256)


def _bulk_figures(folder: str | Path) -> dict:
    """:func:`scatd_core.card.bulk_cv_figures` of the model in ``folder``, its manifest read again only
    when the file changed: the Panel page builds the per-drug metrics on every rerun (every click).
    Kept by the file's absolute path and identity (inode, size, mtime_ns), so models of another user or
    library never share an entry, and each entry holds only what that file gives; a file that cannot be
    read is never kept (:func:`_manifest_of` gives ``{}``)."""
    from scatd_core.bundle import MANIFEST
    from scatd_core.card import bulk_cv_figures

    path = os.path.abspath(Path(folder) / MANIFEST)
    try:
        st = os.stat(path)
    except OSError:
        return bulk_cv_figures(_manifest_of(folder))

    def read() -> tuple[bool, dict]:
        manifest = _manifest_of(folder)  # read after the stat: never older than the identity it is kept under
        return bool(manifest), bulk_cv_figures(manifest)

    _, figures = _MANIFEST_FIGURES.get(path, (st.st_ino, st.st_size, st.st_mtime_ns), read,
                                       keep=lambda made: made[0])  # an unreadable file: never kept
    return dict(figures)


def panel_drug_metrics(adata: ad.AnnData, *, app: bool = False) -> pd.DataFrame:
    """The panel's per-drug metrics, one row per drug requested, in panel order (the scored and refused
    drugs, then those not loaded): :data:`PANEL_DRUG_COLUMNS`. ``status`` is ``scored``, ``refused`` (its
    model could not score the data) or ``not loaded``, and ``not_scored_reason`` says why (empty for a
    scored drug): the one place a per-cell table's "drug not scored" rows point to. The counts are over
    all cells (``n_called`` = ``n_resistant`` + ``n_sensitive``, the cells scored and called); the bulk CV
    figures are the model's card's (:func:`scatd_core.card.bulk_cv_figures`, empty for a model without
    one); ``label_*`` the AUROC against the label column recorded for that drug
    (:func:`scatd_core.panel.label_evaluation`), empty for the others. ``app``: the reasons as the
    app says them. The CLI's ``--drug-metrics`` and the Drug panel page's download are this table."""
    from scatd_core import panel

    warned: dict[str, list[str]] = {}
    for drug, warning in panel.model_warnings(adata):
        warned.setdefault(drug, []).append(warning)
    found = panel.label_evaluation(adata) or {}
    label = found if found and not found.get("problem") else {}
    everyone = panel.members(adata, scored_only=False)
    reasons = dict(panel.not_scored(adata, app=app))
    rows = []
    for m in everyone:
        row = {"drug": m.drug, "model": m.model, "folder": m.folder, "backbone": m.backbone,
               "status": "scored" if m.scored else "refused", "not_scored_reason": reasons.get(m.drug, ""),
               "n_cells": adata.n_obs, "n_scored": m.n_scored, "warnings": " ".join(warned.get(m.drug, []))}
        bulk = _bulk_figures(m.path)  # read again only when the manifest changed (the page reruns on every click)
        row.update({"bulk_cv_auroc": bulk["cv_auroc"], "bulk_cv_auroc_ci_low": bulk["cv_auroc_ci_low"],
                    "bulk_cv_auroc_ci_high": bulk["cv_auroc_ci_high"], "bulk_best_baseline": bulk["cv_best_baseline"],
                    "bulk_best_baseline_auroc": bulk["cv_best_baseline_auroc"]})
        if m.scored:
            stats = panel._drug_stats(adata, m, np.arange(adata.n_obs))
            thr = adata.uns[m.key]["threshold"]
            row.update({"n_called": stats["n_called"], "n_resistant": stats["n_resistant"],
                        "n_sensitive": stats["n_called"] - stats["n_resistant"],
                        "fraction_resistant": stats["fraction_resistant"],
                        "mean_prob_resistant": stats["mean_prob_resistant"], "threshold": float(thr["value"]),
                        "calibrated": bool(thr["calibrated"]), "threshold_set_by": thr.get("detail") or ""})
            if label.get("drug") == m.drug:
                row.update({"label_column": label["column"], "label_auroc": label["auroc"],
                            "label_auroc_ci_low": label["auroc_ci_low"], "label_auroc_ci_high": label["auroc_ci_high"],
                            "label_n_evaluated": label["n_evaluated"]})
        rows.append(row)
    for drug, why in panel.not_scored(adata, app=app)[sum(not m.scored for m in everyone):]:
        rows.append({"drug": drug, "status": "not loaded", "not_scored_reason": why, "n_cells": adata.n_obs,
                     "n_scored": 0})
    table = pd.DataFrame(rows, columns=list(PANEL_DRUG_COLUMNS))
    for column in ("model", "folder", "backbone", "not_scored_reason", "threshold_set_by", "bulk_best_baseline",
                   "label_column", "warnings"):
        table[column] = table[column].fillna("")
    for column in ("n_scored", "n_called", "n_resistant", "n_sensitive", "label_n_evaluated"):
        table[column] = table[column].astype("Int64")
    table["calibrated"] = table["calibrated"].astype("boolean")
    return table


def write_panel_drug_metrics(adata: ad.AnnData, path: str | Path) -> Path:
    return write_file(path, to_csv_bytes(panel_drug_metrics(adata)))


def _panel_file_content(name: str) -> str:
    """What a panel file holds, from its name (the app's downloads carry the data's name)."""
    if name.endswith("summary.csv"):
        return "per cluster / sample and drug"
    if name.endswith("drugs.csv") or "drug_metrics" in name:
        return "one row per drug: its metrics, why not scored"
    if name.endswith(".h5ad"):
        return "one column set per drug"
    return "cells x drugs"


#: The standard names of a panel run's files (named in the report's footer unless others are given).
PANEL_DOWNLOADS = ("panel.csv", "panel_summary.csv", "panel_drugs.csv", "annotated.h5ad")


def panel_html_report(adata: ad.AnnData, *, group_columns: Sequence[str] = (), data_name: str | None = None,
                      markers: pd.DataFrame | None = None, files: Sequence[str] | None = None,
                      app: bool = False) -> str:
    """A self-contained HTML report of a panel run: the models (status, coverage, calibration), the
    drug ranking, the cells x drugs heatmap and dot plot per cluster/sample, the UMAP coloured by
    the number of drugs resisted (when computed), the cells resistant to every drug and, when
    given and every drug is calibrated, their top ``markers``
    (:func:`scatd_core.panel.multi_resistant_markers`). ``files``: the files written with it, named
    in its footer (default: the standard names). ``app``: made by the app (its notes name the Panel
    page's ways to calibrate, else the command line's)."""
    from plotly.offline import get_plotlyjs

    from scatd_core import panel

    info = adata.uns[_keys.PANEL]
    ms = panel.members(adata)
    data_name = data_name or adata.uns.get(_keys.INPUT_REPORT, {}).get("file_name") or "uploaded data"
    lost = panel.not_scored(adata, app=app)
    n_requested = len(ms) + len(lost)
    drugs_said = (f"{n_requested} drugs requested, {len(ms)} scored" if lost else counted(len(ms), "drug"))
    title = f"scATD drug panel ({drugs_said}) on {data_name}"
    parts = [f"<h1>{html.escape(title)}</h1><p class='sub'>Generated "
             f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by scATD Studio "
             f"{html.escape(__version__)}; {counted(adata.n_obs)}, {info['n_scored_models']} of {n_requested} "
             f"models scored them in {info['seconds']:.1f} s.</p>"]
    if lost:  # every drug requested is named, with why it was not scored: one line each
        parts.append(f"<div class='warn'><b>{html.escape(panel.requested_statement(adata) or '')}</b><ul>"
                     + "".join(f"<li><b>{html.escape(drug)}</b>: {html.escape(why)}</li>" for drug, why in lost)
                     + "</ul></div>")
    if any(m.demo for m in ms):
        parts.append("<p class='demo'>Demo models: demo (simulated data). These predictions illustrate the "
                     "workflow and say nothing about real cells.</p>")
    if panel.uncalibrated(adata):
        parts.append("<p class='warn'>Some calls use a threshold <b>not calibrated</b> to this dataset.</p>")
    parts += [f"<p class='warn'>{html.escape(note)}</p>" for note in panel.comparison_notes(adata, app=app)]
    parts.append("<h2>Models</h2>" + _frame_html(panel_models_table(adata, app=app)))
    found = panel.label_evaluation(adata)
    if found:  # the drug whose response the label column records, scored as a single prediction scores it
        parts.append(f"<h2>{html.escape(found['drug'])} against the labels of '{html.escape(found['column'])}'</h2>"
                     f"<p>{html.escape(panel.label_statement(found) or '')}</p>"
                     + "".join(f"<p class='warn'>{html.escape(n)}</p>" for n in ([found["notes"]] if isinstance(
                         found.get("notes"), str) and found.get("notes") else found.get("notes") or [])))
    warned = panel.model_warnings(adata)
    if warned:  # each model's own warnings (few of its genes in the data ...), as the CLI prints them per drug
        parts.append(f"<div class='warn'><b>{html.escape(panel.warnings_summary(adata) or '')}</b><ul>"
                     + "".join(f"<li><b>{html.escape(drug)}</b>: {html.escape(w)}</li>" for drug, w in warned)
                     + "</ul></div>")
    ranking = panel.drug_ranking(adata)
    caveat = panel.ranking_caveat(adata, app=app)
    parts.append(f"<h2>{html.escape(panel.ranking_title(adata, 'Whole sample'))}</h2>"
                 + (f"<p class='warn'>{html.escape(caveat)}</p>" if caveat else "")
                 # uncalibrated, the order does not rank the drugs: no rank column then
                 + _figure_html(pl.drug_ranking_figure(ranking, thresholds=panel.thresholds(adata)))
                 # nor when every drug is calibrated to an expected fraction: the fractions given, no ranking
                 + _frame_html(ranking if panel.is_ranking(adata, "Whole sample") else ranking.drop(columns="rank")))
    prob, drugs = panel.probability_matrix(adata)
    for column in panel_group_columns(adata, group_columns):
        name = "Leiden cluster" if column == _keys.CLUSTER else column
        summary_ = panel.group_summary(adata, column)
        order = list(dict.fromkeys(summary_["group"]))
        parts.append(f"<h2>Per {html.escape(name)}</h2>")
        parts.append(_figure_html(pl.panel_heatmap(prob, drugs, panel.group_values(adata, column), name, order,
                                                   f"P(resistant), cells x drugs, by {name}",
                                                   thresholds=panel.thresholds(adata))))
        parts.append(_figure_html(pl.panel_dotplot(summary_, name, f"Fraction resistant per {name} and drug",
                                                   thresholds=panel.thresholds(adata))))
    statement, subclone = panel.resistant_to_all_statement(adata, app=app)
    parts.append(f"<h2>Cells resistant to every drug</h2><p>{html.escape(statement)}</p>")
    if _keys.UMAP in adata.obsm:
        coords = np.asarray(adata.obsm[_keys.UMAP])
        whose = " (the data's own obsm['X_umap'])" if is_data_umap(adata) else ""
        resisted = panel.n_resisted_values(adata)
        grey = " (grey: scored by no drug)" if np.isnan(resisted).any() else ""  # only when some cell is grey
        parts.append(_figure_html(pl.count_umap_figure(coords, resisted, len(ms),
                                                       name="drugs resisted", cell_ids=adata.obs_names.astype(str),
                                                       notes_below=True,
                                                       title=f"UMAP{whose} coloured by the number of drugs "
                                                             f"resisted{grey}")))
    if subclone and markers is not None and len(markers):
        parts.append("<p>Genes most up in these cells against the other scored cells (Wilcoxon):</p>"
                     + _frame_html(markers))
    files = list(PANEL_DOWNLOADS if files is None else files)
    if files:
        listed = ", ".join(html.escape(f) + f" ({_panel_file_content(f)})" for f in files)
        parts.append(f"<footer>Files: {listed}.</footer>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style>"
            f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body><main>"
            + "\n".join(parts) + "</main></body></html>")
