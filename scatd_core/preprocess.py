"""Input transforms each backbone expects, value-type detection, and per-cell QC.

A bundle's manifest names its ``input_transform``; :func:`apply_input_transform` applies it to
a dense batch that is already in the model's gene order. :func:`detect_value_type` says whether
a matrix holds counts, log-normalised, z-scored or TPM-like values (with the evidence), and
:func:`check_backbone_compatibility` says whether a backbone can use it.

QC follows scanpy (:func:`scanpy.pp.calculate_qc_metrics`); thresholds are only suggested
(:func:`suggest_qc_thresholds`) and applied on request (:func:`apply_qc_filter`), which marks
cells instead of dropping them.

Every function here works on in-memory dense or sparse matrices and on the row-sliceable
on-disk matrices of a backed AnnData, reading rows in batches.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scatd_core._keys import QC, QC_PASS
from scatd_core._matrix import log1p_cp10k, mean_var, row_batches, sample_rows
from scatd_core.errors import InputError
from scatd_core.genes import mito_mask

# "standardize" (per-gene z-score over the dataset, after log-normalising raw counts) needs
# dataset-level statistics, so it is applied by scatd_core.inputs.ModelInput, not here.
INPUT_TRANSFORMS = ("none", "log1p_cp10k", "standardize")
#: Over which genes a cell's counts are summed to scale them to 10,000 (its library size), the
#: manifest's ``library_size``: the model's genes only (checkpoints imported with ``log1p_cp10k``, as
#: scFoundation's preprocessing, and models trained here before it was recorded: a manifest
#: without the key), or every gene of the data (models trained here now), so that counts and
#: their log1p(CP10k) over the whole transcriptome reach the model alike.
MODEL_GENES, ALL_GENES = "model genes", "all genes"
LIBRARY_SIZES = (MODEL_GENES, ALL_GENES)

#: Backbone names (and accepted aliases) -> the input transform it uses by default.
BACKBONE_DEFAULT_TRANSFORM = {"dist_vae": "log1p_cp10k", "vae_sf": "log1p_cp10k", "vae_gf": "rank_value"}
_BACKBONE_ALIASES = {"geneformer": "vae_gf", "scatd-gf": "vae_gf", "scfoundation": "vae_sf",
                     "scatd-sf": "vae_sf", "scatd-sf-dist": "dist_vae"}
VALUE_KINDS = ("counts", "log_normalized", "zscored", "tpm_like", "unknown")
#: Each value kind in words, as the app shows it (the report keeps the names above)
VALUE_KIND_WORDS = {"counts": "counts", "log_normalized": "log-normalised", "zscored": "z-scored",
                    "tpm_like": "TPM-like", "unknown": "unknown"}
#: The layout of the file read, in words
ORIENTATION_WORDS = {"cells_x_genes": "one row per cell (cells x genes)",
                     "genes_x_cells": "one row per gene (genes x cells), turned round on reading"}


#: Characters a value of the Data page's four tiles shows whole at 1280 px: st.metric cuts a wider value
#: ("log-normalised", 229 px in its 36 px Source Sans, read "log-norm…", 174 px: a quarter of the wide
#: page's content). The values kept to it measure 163 px at most ("embedded"; "log" 47, "TPM-like" 130).
TILE_MAX_CHARS = 8
#: The value kinds whose words are longer, in the tile (their whole words under it).
VALUE_KIND_TILE = {"log_normalized": "log"}


def value_kind_tile(kind) -> tuple[str, str | None]:
    """The Data page's Values tile: ``(value, the whole words under it or None)``, e.g. ``("log",
    "log-normalised")``: a value of at most :data:`TILE_MAX_CHARS` characters, never cut."""
    words = value_kind_words(kind)
    short = VALUE_KIND_TILE.get(str(kind), words)
    if len(short) > TILE_MAX_CHARS:  # a kind without short words (an unknown one from an older file)
        short = "other"
    return short, (words if short != words else None)


def value_kind_words(kind) -> str:
    """A value kind (:data:`VALUE_KINDS`) in words: ``z-scored``, ``log-normalised``, ``TPM-like``."""
    return VALUE_KIND_WORDS.get(str(kind), str(kind).replace("_", " "))


def orientation_text(report: dict, shape: tuple[int, int] | None = None, features: str = "genes") -> str:
    """How the file's rows and columns were read, in one statement: e.g. "one row per cell (cells x
    genes), as stored in the file", or a reader's own ("stored genes x cells (10x)"); with ``shape``
    (cells, genes), "; read as 2,000 cells x 2,000 genes" after it (``features``: what the columns
    are). No internal name, no brackets in brackets, never two layouts side by side."""
    kind = str(report.get("orientation", "?"))
    reason = str(report.get("orientation_reason") or "").removesuffix(" (cells x genes)").strip()
    if reason.startswith("stored "):  # the reader says the stored layout itself (10x): the words below would repeat it
        said = reason
    else:
        said = ORIENTATION_WORDS.get(kind, kind.replace("_x_", " x ")) + (f", {reason}" if reason else "")
    if shape is not None:
        said += f"; read as {int(shape[0]):,} cells x {int(shape[1]):,} {features}"
    return said


def value_evidence_text(evidence: dict) -> str:
    """The value-type evidence of :func:`detect_value_type` as a sentence for a biologist (the
    report's ``value_type_evidence`` keeps the numbers)."""
    ev = evidence or {}
    said = []
    if ev.get("n_cells_sampled") is not None:
        said.append(f"{int(ev['n_cells_sampled']):,} cells sampled")
    if ev.get("min") is not None and ev.get("max") is not None:
        said.append(f"values from {ev['min']:g} to {ev['max']:g}")
    if ev.get("fraction_zero") is not None:
        said.append(f"{ev['fraction_zero']:.0%} zeros")
    if ev.get("fraction_integer") is not None:
        said.append(f"{ev['fraction_integer']:.0%} of the non-zero values whole numbers")
    if ev.get("row_sum_median") is not None:
        said.append(f"median total per cell {ev['row_sum_median']:,.4g}")
    if ev.get("gene_mean_median_abs") is not None and ev.get("gene_std_median") is not None:
        said.append(f"a typical gene's mean {ev['gene_mean_median_abs']:.3g} (absolute) and sd "
                    f"{ev['gene_std_median']:.3g}")
    if ev.get("n_non_finite"):
        said.append(f"{int(ev['n_non_finite']):,} NaN or infinite values")
    return ("; ".join(said) + ".") if said else ""

QC_KEY = QC_PASS


def apply_input_transform(batch: np.ndarray, transform: str) -> np.ndarray:
    """Apply a named transform to a (cells x model genes) float32 batch.

    - ``none``: values are used as given.
    - ``log1p_cp10k``: ``log1p(x / sum(x) * 1e4)`` per cell, the sum running over the model's
      genes, as scFoundation's own preprocessing does for single cells. Cells whose sum is 0
      stay 0.
    """
    if transform == "none":
        return batch
    if transform == "log1p_cp10k":
        return log1p_cp10k(batch)
    raise ValueError(f"unknown input transform {transform!r}; known: {', '.join(INPUT_TRANSFORMS)}")


# --------------------------------------------------------------------------------------------
# What kind of values
# --------------------------------------------------------------------------------------------

#: At most this share of the sampled cells (and always one cell) may hold values that no expression
#: matrix holds, negative, NaN or infinite ones, for the other cells to decide what the matrix
#: holds (:func:`detect_value_type`); more, and the whole matrix is judged with them.
FEW_BAD_CELLS = 0.05
#: The largest value a log scale holds (log1p of counts per 10k stays below ~10, log2(TPM+1)
#: below ~20); above it, values are on a linear scale.
LOG_SCALE_MAX = 30.0


def detect_value_type(X, n_cells: int = 2000) -> dict:
    """Say what a matrix holds: raw counts, log-normalised, z-scored or TPM-like values.

    Looks at up to ``n_cells`` rows (:func:`sample_rows`), so it is cheap on any size and on
    backed data.

    Cells with values no expression matrix holds (negative, NaN or infinite) are first set aside
    when they are **a few of the sampled cells**: at most :data:`FEW_BAD_CELLS` (5 %) of them, and
    always one. The other cells then decide the kind, and the evidence counts the cells set aside
    (``n_cells_negative`` with ``negative_min``, ``n_cells_non_finite``). Such values in a few
    cells are faults of those cells (a corrupt export, an edited value), not a kind of matrix: a
    model that log-normalises the values leaves just those cells unscored
    (:class:`scatd_core.inputs.ModelInput`, reason ``negative_values`` or ``non_finite``), as it
    does with such a cell outside the sample, so where a bad cell sits no longer changes what
    the other cells get. Likewise a few cells with values above :data:`LOG_SCALE_MAX` among
    log-normalised ones do not make the matrix linear (:func:`_judge`). Per-gene z-scores, centred or batch-corrected values have negative
    values in most cells, far more than 5 %, so they are still judged as a whole (``zscored`` or
    ``unknown``), as is a matrix whose sampled cells are all bad.

    Returns
    -------
    ``{"kind": ..., "evidence": {...}}`` with ``kind`` one of

    - ``"counts"``: non-negative and (>= 99.9% of non-zero values) integers;
    - ``"zscored"``: negative values, genes centred near 0 with spread near 1;
    - ``"log_normalized"``: non-negative, non-integer, maximum <= 30 (log1p or log2 scale);
    - ``"tpm_like"``: non-negative, non-integer, on a linear scale (maximum > 30);
    - ``"unknown"``: anything else (e.g. negative values that are not per-gene z-scores).

    ``evidence`` is JSON-safe: cells sampled, fraction of zeros, min, max, fraction of integer
    values, negatives, median and spread (CV) of per-cell sums, per-gene mean and standard
    deviation (medians over genes), and for log data the median per-cell sum of ``expm1``
    (about 1e4 for log1p of counts per 10k), plus a sentence ``reason``. With cells set aside,
    all but the counts of cells describe the other cells.
    """
    block = sample_rows(X, n_cells)
    n_rows = block.shape[0]
    negative, non_finite = _bad_rows(block)
    bad = negative | non_finite
    n_bad = int(bad.sum())
    if 0 < n_bad < n_rows and n_bad <= max(1, int(FEW_BAD_CELLS * n_rows)):
        result = _judge(block[np.flatnonzero(~bad)])
        if result["kind"] not in ("zscored", "unknown"):
            ev = result["evidence"]
            ev["n_cells_sampled"] = int(n_rows)
            parts = []
            if negative.any():
                rows = block[np.flatnonzero(negative)]
                values = rows.data if sp.issparse(rows) else np.asarray(rows).ravel()
                ev["n_cells_negative"] = int(negative.sum())
                ev["negative_min"] = _r(np.nanmin(np.where(np.isfinite(values), values, np.nan)))
                parts.append(f"{_cells(ev['n_cells_negative'])} negative values (min {ev['negative_min']:g})")
            if non_finite.any():
                ev["n_cells_non_finite"] = int(non_finite.sum())
                parts.append(f"{_cells(ev['n_cells_non_finite'])} NaN or infinite values")
            ev["reason"] += (f"; of the {n_rows:,} cells sampled, " + " and ".join(parts) + ", which no expression "
                             "values have: a fault of those cells, so the other cells decide the type")
            return result
    return _judge(block)


def _judge(block) -> dict:
    """:func:`_value_type`, except that a few cells with values above 30 do not make log values
    look linear: a log scale (log1p of counts per 10k, log2 of TPM) stays below ~20, a linear one
    has values above 30 in nearly every cell. When at most :data:`FEW_BAD_CELLS` (5 %, always
    one) of the sampled cells reach above 30 and the others are judged log-normalised, the
    matrix is log-normalised, and the evidence counts those cells (``n_cells_above_log_scale``,
    ``above_log_scale_max``): an edited or corrupt value in one cell, wherever it sits, no longer
    decides how every cell is transformed."""
    result = _value_type(block)
    if result["kind"] != "tpm_like":
        return result
    n_rows = block.shape[0]
    if sp.issparse(block):
        csr = sp.csr_matrix(block)
        row = np.repeat(np.arange(n_rows), np.diff(csr.indptr))
        high = np.bincount(row[csr.data > LOG_SCALE_MAX], minlength=n_rows) > 0
    else:
        high = (np.asarray(block) > LOG_SCALE_MAX).any(axis=1)
    n_high = int(high.sum())
    if not 0 < n_high < n_rows or n_high > max(1, int(FEW_BAD_CELLS * n_rows)):
        return result
    rest = _value_type(block[np.flatnonzero(~high)])
    if rest["kind"] != "log_normalized":
        return result
    ev = rest["evidence"]
    ev["n_cells_sampled"] = int(n_rows)
    ev["n_cells_above_log_scale"] = n_high
    ev["above_log_scale_max"] = result["evidence"]["max"]
    ev["reason"] += (f"; of the {n_rows:,} cells sampled, {_cells(n_high)} values above {LOG_SCALE_MAX:g} "
                     f"(max {ev['above_log_scale_max']:g}), which log values do not reach: a fault of those "
                     "cells, so the other cells decide the type")
    return rest


def _cells(n: int) -> str:
    return f"{n:,} cell has" if n == 1 else f"{n:,} cells have"


def _bad_rows(block) -> tuple[np.ndarray, np.ndarray]:
    """Which rows hold a negative value, and which a NaN or infinite one."""
    n = block.shape[0]
    if sp.issparse(block):
        block = sp.csr_matrix(block)
        row = np.repeat(np.arange(n), np.diff(block.indptr))
        values = block.data
        with np.errstate(invalid="ignore"):
            negative = np.bincount(row[values < 0], minlength=n) > 0
        non_finite = np.bincount(row[~np.isfinite(values)], minlength=n) > 0
        return negative, non_finite
    x = np.asarray(block)
    with np.errstate(invalid="ignore"):
        return (x < 0).any(axis=1), ~np.isfinite(x).all(axis=1)


def _value_type(block) -> dict:
    """:func:`detect_value_type` of the sampled rows ``block``, judged as a whole."""
    n_rows, n_cols = block.shape
    if sp.issparse(block):
        nonzero = block.data[block.data != 0].astype(np.float64)
        dense_cols = None
    else:
        flat = block.astype(np.float64, copy=False).ravel()
        nonzero = flat[flat != 0]
        dense_cols = block.astype(np.float64, copy=False)
    n_values = n_rows * n_cols
    ev: dict = {"n_cells_sampled": int(n_rows), "fraction_zero": _r(1 - nonzero.size / max(n_values, 1))}
    finite = np.isfinite(nonzero)
    if not finite.all():
        ev["n_non_finite"] = int((~finite).sum())
        ev["reason"] = "the matrix holds NaN or infinite values"
        return {"kind": "unknown", "evidence": ev}
    if nonzero.size == 0:
        ev["reason"] = "every sampled value is zero"
        return {"kind": "unknown", "evidence": ev}

    vmin, vmax = float(nonzero.min()), float(nonzero.max())
    if nonzero.size < n_values:  # zeros are values too
        vmin, vmax = min(vmin, 0.0), max(vmax, 0.0)
    integer = float(np.mean(np.abs(nonzero - np.round(nonzero)) < 1e-3))
    row_sums = np.asarray(block.sum(axis=1, dtype=np.float64)).ravel()  # float16 sums overflow
    positive_sums = row_sums[row_sums > 0]
    ev.update(min=_r(vmin), max=_r(vmax), fraction_integer=_r(integer), has_negative=vmin < 0,
              row_sum_median=_r(np.median(row_sums)),
              row_sum_cv=_r(positive_sums.std() / positive_sums.mean()) if positive_sums.size > 1 else None)
    mean, var = mean_var([block])
    std = np.sqrt(var)
    varying = std > 0
    ev["gene_mean_median_abs"] = _r(np.median(np.abs(mean[varying]))) if varying.any() else None
    ev["gene_std_median"] = _r(np.median(std[varying])) if varying.any() else None

    if vmin < 0:
        centred = ev["gene_mean_median_abs"] is not None and ev["gene_mean_median_abs"] < 0.25
        unit = ev["gene_std_median"] is not None and 0.5 <= ev["gene_std_median"] <= 1.5
        if centred and unit and n_rows > 1:
            ev["reason"] = "negative values; genes are centred near 0 with a spread near 1"
            return {"kind": "zscored", "evidence": ev}
        ev["reason"] = ("negative values that are not per-gene z-scores; counts, normalised "
                        "and log values are never negative")
        return {"kind": "unknown", "evidence": ev}
    if integer >= 0.999:
        ev["reason"] = "non-negative whole numbers"
        return {"kind": "counts", "evidence": ev}
    if vmax <= LOG_SCALE_MAX:
        if sp.issparse(block):
            expm1_sums = np.asarray(block.expm1().sum(axis=1)).ravel()
        else:
            expm1_sums = np.expm1(dense_cols).sum(axis=1)
        ev["expm1_row_sum_median"] = _r(np.median(expm1_sums))
        ev["reason"] = "non-negative fractional values with a maximum <= 30: a log scale"
        return {"kind": "log_normalized", "evidence": ev}
    ev["reason"] = "non-negative fractional values on a linear scale (maximum > 30)"
    return {"kind": "tpm_like", "evidence": ev}


def _r(x, digits: int = 4):
    """Round to a plain float (JSON-safe evidence)."""
    return None if x is None else round(float(x), digits)


def _backbone(name: str) -> str:
    key = _BACKBONE_ALIASES.get(name.lower(), name.lower())
    if key not in BACKBONE_DEFAULT_TRANSFORM:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONE_DEFAULT_TRANSFORM)}")
    return key


def check_backbone_compatibility(value_type, backbone: str, input_transform: str | None = None) -> list[str]:
    """Problems of data of this value type for ``backbone`` (empty list: none).

    What each problem does: Geneformer's embedding (VAE_gf) refuses the data
    (:func:`require_backbone_compatibility`, :func:`scatd_core.foundation.geneformer.tokenizer`);
    for an expression model (Dist_VAE) it is a warning, shown on the Model page and recorded with
    the prediction (``uns['scatd']['warnings']``, the CLI's ``warning:`` lines, the report), and
    the prediction goes on: its calls are not to be trusted, and the cells a transform cannot
    take are left unscored, each counted under its reason. What a model does with values that is
    not a problem (log-normalised values given to a ``log1p_cp10k`` model, a few faulty cells) is
    said by :func:`value_notes`.

    Parameters
    ----------
    value_type
        The dict of :func:`detect_value_type`, just its ``kind``, or the read report
        ``adata.uns['scatd_input']`` of :func:`scatd_core.io.read`.
    backbone
        ``"dist_vae"``, ``"vae_sf"`` or ``"vae_gf"`` (``"scfoundation"``, ``"geneformer"``
        accepted).
    input_transform
        The bundle's input transform; default: the backbone's own
        (:data:`BACKBONE_DEFAULT_TRANSFORM`). With ``"none"`` the model takes the values as
        they are: counts and log-normalised values are accepted (scATD does not say which its
        Dist_VAE was trained on), negative (z-scored) values are a problem.

    Notes
    -----
    - Geneformer ranks each cell's genes by count / cell total / the gene's median over its
      training corpus: it needs counts (or linear, TPM-like values); z-scored or log values
      are refused.
    - ``log1p_cp10k`` (scATD-sf-dist, scFoundation) rescales each cell to 10,000 and takes
      log1p: it needs non-negative values. Values already log-normalised are no problem: a
      Dist_VAE model un-logs them first (:data:`UNLOG_NOTE`), scFoundation takes them as already
      normalised. scFoundation moreover drops non-positive values without a word
      (backbones.md A.5).
    """
    kind, evidence = _kind_and_evidence(value_type)
    negative = bool(evidence.get("has_negative", kind == "zscored"))
    key = _backbone(backbone)
    transform = input_transform or BACKBONE_DEFAULT_TRANSFORM[key]
    fix = "Upload the raw count matrix (the 10x output, or the counts in adata.raw / layers['counts'])."
    if key == "vae_gf":
        if kind == "zscored":
            return ["Geneformer needs raw counts: it ranks each cell's genes by their count "
                    "scaled to the gene's typical level. This matrix is z-scored (centred per "
                    "gene, with negative values), so the counts and their ranking are lost and "
                    "it is refused. " + fix]
        if kind == "log_normalized":
            return ["Geneformer needs raw counts; this matrix is log-normalised, which distorts "
                    "its median-scaled gene ranking. " + fix]
        if negative:
            return ["Geneformer needs raw counts, which are never negative; this matrix has "
                    f"negative values (min {evidence.get('min')}). " + fix]
        return []
    if transform == "none":
        # an imported checkpoint that takes the values as they are (the original inference script's
        # way; scATD leaves Dist_VAE's normalisation undefined): its training data, scFoundation's
        # preprocessed expression, were counts or log-normalised values, never negative
        if negative:
            what = "are z-scored" if kind == "zscored" else f"have negative values (min {evidence.get('min')})"
            return ["This model takes the values as they are (imported with input transform 'none'), and "
                    f"its training data, expression counts or log-normalised values, had no negative values; "
                    f"these {what}, so the model sees inputs unlike any it was trained on and its calls are not "
                    "to be trusted. " + fix]
        return []
    if transform == "standardize":
        # models trained by scATD Studio: counts are log-normalised, then every gene is z-scored over
        # the dataset. With library_size "all genes" (models trained since it is recorded) each cell's
        # counts are scaled by its total over all the data's genes, so counts, their log1p(CP10k) over
        # all genes and per-gene z-scores of those reach the model alike; older models scale counts by
        # their total over the model's genes only (inputs.py), which values normalised elsewhere lack
        if kind == "tpm_like":
            return ["This model z-scores each gene on a log scale; these values are on a linear scale "
                    "(TPM-like), so highly expressed genes would dominate. Upload raw counts, or "
                    "log1p-transform the values first."]
        if kind == "unknown" and negative:
            return [f"This model expects counts, log-normalised or per-gene z-scored values; these have "
                    f"negative values (min {evidence.get('min')}) that are not per-gene z-scores. Check what "
                    "the matrix holds (e.g. batch-corrected or scaled values) and upload counts if you can."]
        return []
    name = "scFoundation" if key == "vae_sf" else "scATD-sf-dist"
    if negative:
        what = "is z-scored" if kind == "zscored" else f"has negative values (min {evidence.get('min')})"
        dropped = " scFoundation would silently drop them." if key == "vae_sf" else ""
        return [f"{name} scales each cell to 10,000 and takes log1p, which needs non-negative "
                f"counts, TPM-like or log-normalised values; this matrix {what}.{dropped} " + fix]
    return []  # log-normalised values: un-logged first (Dist_VAE), taken as normalised (scFoundation)


#: What a ``log1p_cp10k`` expression model (a scATD-sf-dist checkpoint imported with
#: ``--input-transform log1p_cp10k``) does with values already log-normalised (:class:`scatd_core.inputs.ModelInput`):
#: the Model page, the prediction's record and the CLI say it in these words.
UNLOG_NOTE = ("These values are already log-normalised (log1p of normalised counts), so the model un-logs them "
              "(expm1) and scales each cell to 10,000 over its own genes before log1p, as it does with counts, "
              "instead of log-transforming them a second time: the cells get the input their counts would give, "
              "whatever total they were normalised to. Natural-log values are assumed (log1p, as scanpy and "
              "Seurat write them); for log2 values (e.g. scran's logcounts) upload the counts instead.")


#: What a Dist_VAE model imported with input transform ``none`` (the default of ``scatd
#: import-checkpoint`` and of the published models' install, as the original inference script)
#: does with raw counts: the Model page, the prediction's record and the CLI say it in these words.
AS_GIVEN_COUNTS_NOTE = (
    "These values are raw counts, and this model takes values as they are (it was imported with input transform "
    "'none', as the original scATD inference script reads them): each cell's counts go in without being scaled to "
    "its total or log-transformed, so a cell sequenced more deeply gets larger inputs. The scATD reference does not "
    "say whether its Dist_VAE models were trained on counts or on log-normalised values. If the model's authors say "
    "it takes log-normalised values, upload log1p(CP10k) values instead (scanpy's normalize_total to 10,000, then "
    "log1p), or have the checkpoint imported again with --input-transform log1p_cp10k.")


def as_given_counts(value_type, input_transform: str | None) -> bool:
    """Whether an expression model with ``input_transform`` takes these values, raw counts, as they
    are (:data:`AS_GIVEN_COUNTS_NOTE`)."""
    kind, _ = _kind_and_evidence(value_type)
    return input_transform == "none" and kind == "counts"


def unlogs(value_type, input_transform: str | None) -> bool:
    """Whether an expression model with ``input_transform`` un-logs these values before its
    transform: ``log1p_cp10k`` of values already log-normalised (log1p of normalised counts).

    Its input is log1p of each cell's counts scaled to 10,000 over the model's genes
    (scFoundation's preprocessing, reference §7.1). Given ``y = log1p(c * x)`` (counts ``x`` scaled
    by any per-cell factor ``c``, e.g. scanpy's ``normalize_total`` to 10,000 or to the median
    total, then ``log1p``), ``expm1(y)`` is proportional to the counts within the cell, so
    scaling it to 10,000 over the model's genes and taking log1p gives the counts' input exactly,
    for any target total. Taking ``y`` as it is would be right only for a target of 10,000 over
    exactly the model's genes (over all genes it differs slightly; normalised to a million or to
    the median total it differs a lot), and log-transforming it again (the earlier behaviour)
    gives an input unlike any the model was trained on.
    """
    kind, _ = _kind_and_evidence(value_type)
    return input_transform == "log1p_cp10k" and kind == "log_normalized"


def value_notes(value_type, input_transform: str | None) -> list[str]:
    """What an expression model with ``input_transform`` does with these values that the user
    should know and that is not a problem (those are :func:`check_backbone_compatibility`'s):
    log-normalised values un-logged first (:data:`UNLOG_NOTE`), raw counts taken as they are by a
    model imported with input transform ``none`` (:data:`AS_GIVEN_COUNTS_NOTE`), and the sampled cells with
    negative, NaN or infinite values among values that have none (:func:`detect_value_type`),
    which the model leaves unscored or, taking the values as they are, scores as they are. The
    prediction records what it did itself (``uns['scatd']['notes']``, ``not_scored``)."""
    kind, evidence = _kind_and_evidence(value_type)
    notes = [UNLOG_NOTE] if unlogs(value_type, input_transform) else []
    if as_given_counts(value_type, input_transform):
        notes.append(AS_GIVEN_COUNTS_NOTE)
    n = evidence.get("n_cells_sampled") or 0
    if evidence.get("n_cells_non_finite"):
        notes.append(f"Of the {n:,} cells sampled, {_cells(evidence['n_cells_non_finite'])} NaN or infinite values: "
                     "such cells are not scored; the others are.")
    if evidence.get("n_cells_negative"):
        log = input_transform == "log1p_cp10k" or (input_transform == "standardize" and kind == "counts")
        what = {"counts": "counts", "log_normalized": "log-normalised values"}.get(kind, "these values")
        then = ("this model log-normalises the values, which a negative value cannot go through, so such cells "
                "are not scored; the others are" if log else
                "this model takes the values as they are, so such cells are scored on values unlike any it was "
                "trained on: check them")
        notes.append(f"Of the {n:,} cells sampled, {_cells(evidence['n_cells_negative'])} negative values (min "
                     f"{evidence.get('negative_min')}), which {what} never have: {then}.")
    if evidence.get("n_cells_above_log_scale"):
        notes.append(f"Of the {n:,} cells sampled, {_cells(evidence['n_cells_above_log_scale'])} values above "
                     f"{LOG_SCALE_MAX:g} (max {evidence.get('above_log_scale_max')}), which log-normalised values do "
                     "not reach: the matrix was judged from the other cells; such cells are scored on that one "
                     "value's scale, so check them (a corrupt export or an edited value).")
    return notes


def _kind_and_evidence(value_type) -> tuple[str, dict]:
    if isinstance(value_type, dict) and "kind" in value_type:
        return value_type["kind"], value_type.get("evidence", {})
    if isinstance(value_type, dict) and "value_type" in value_type:  # the read report
        return value_type["value_type"], value_type.get("value_type_evidence", {})
    return str(value_type), {}


def require_backbone_compatibility(value_type, backbone: str, input_transform: str | None = None) -> None:
    """Raise :class:`InputError` with the problems of :func:`check_backbone_compatibility`."""
    problems = check_backbone_compatibility(value_type, backbone, input_transform)
    if problems:
        kind, _ = _kind_and_evidence(value_type)
        raise InputError(f"The data ({kind}) cannot be used with {backbone}: " + " ".join(problems),
                         "Upload counts, or choose a model whose input matches these values.")


# --------------------------------------------------------------------------------------------
# Quality control
# --------------------------------------------------------------------------------------------

QC_METRICS = ("n_genes_by_counts", "total_counts", "pct_counts_mt")
#: What the QC metrics are called for people (the Data page's plots and bounds alike).
QC_METRIC_NAMES = {"n_genes_by_counts": "genes detected", "total_counts": "total counts",
                   "pct_counts_mt": "% mitochondrial"}


def qc_metric_name(metric: str) -> str:
    """A QC metric's name for people: "genes detected" for ``n_genes_by_counts`` (:data:`QC_METRIC_NAMES`)."""
    return QC_METRIC_NAMES.get(metric, str(metric).replace("_", " "))


def qc_metrics(adata, batch_size: int = 10_000) -> pd.DataFrame:
    """Per-cell QC metrics computed by :func:`scanpy.pp.calculate_qc_metrics`, in batches.

    Returns
    -------
    A frame indexed by ``obs_names`` with ``n_genes_by_counts`` (genes detected),
    ``total_counts`` and ``pct_counts_mt`` (share of counts in ``MT-``/``mt-`` genes, see
    :func:`scatd_core.genes.mito_mask`; NaN when the file has no mitochondrial genes).
    ``adata`` is not modified; it may be backed (every matrix is read in row blocks, never whole). They
    are computed from the matrix the models read (:func:`scatd_core.matrices.qc_candidate`): the one
    chosen for them (``uns['scatd_matrix']``) when it holds expression values, else the file's raw
    counts (X, ``layers['counts']`` / ``layers['raw_counts']``, ``adata.raw``), else the log-normalised
    values beside a scaled X, else X; ``metrics.attrs["matrix"]`` says which (``"X"``,
    ``"layers['counts']"``, ``"adata.raw"``), ``metrics.attrs["value_type"]`` what it holds and
    ``metrics.attrs["chosen_by_user"]`` whether it was chosen for the models.

    Log-normalised values (log1p of each cell's counts scaled to a total, scanpy's ``normalize_total``
    then ``log1p``) are un-logged first (``expm1``, one row block at a time; ``attrs["unlogged"]``):
    each cell's counts were scaled by one factor, so the mitochondrial share of the un-logged values is
    that of the counts, and the genes detected are the counts' too; their total is then about the same
    in every cell (the total they were scaled to, e.g. 10,000) and says nothing about a cell's quality.
    """
    import anndata as ad
    import scanpy as sc  # imported here: slow to import, and only QC needs it

    from scatd_core import matrices

    source, chosen = matrices.qc_candidate(adata)
    matrix, where, kind = source.matrix, source.where, source.kind
    genes = adata if source.name == "X" else ad.AnnData(obs=pd.DataFrame(index=pd.RangeIndex(0).astype(str)),
                                                        var=source.var)
    mt = mito_mask(genes)
    var = pd.DataFrame({"mt": mt}, index=pd.RangeIndex(mt.size).astype(str))
    unlog = kind == "log_normalized"
    parts = []
    for _, _, block in row_batches(matrix, batch_size):
        if unlog:  # one block at a time: never the whole matrix un-logged (or densified) at once
            block = _expm1_block(block)
        part, _ = sc.pp.calculate_qc_metrics(ad.AnnData(X=block, var=var), qc_vars=["mt"] if mt.any() else [],
                                             percent_top=None, log1p=False, inplace=False)
        parts.append(part)
    metrics = pd.concat(parts, ignore_index=True)
    if not mt.any():
        metrics["pct_counts_mt"] = np.nan
    metrics.index = adata.obs_names
    metrics = metrics[list(QC_METRICS)]
    metrics.attrs.update(matrix=where, value_type=kind, chosen_by_user=chosen, unlogged=unlog)
    return metrics


def warm_up() -> None:
    """Compile the QC kernels (scanpy's numba functions, one per matrix layout and value type) ahead
    of time, e.g. in a server's start-up thread. Each is compiled on first use, 2-3 s when numba's
    disk cache is cold: without this, the first upload of counts in a sparse matrix waited for it
    (the benchmark's first walk: 7.2 s of upload against 4.4 s for the next user)."""
    import anndata as ad

    counts = np.array([[1, 0, 2], [0, 3, 0], [4, 0, 0], [0, 0, 5]], dtype=np.float32)
    sparse_counts = [sp.csr_matrix(counts.astype(dtype)) for dtype in (np.float32, np.int32, np.int64)]
    for X in (counts, *sparse_counts, sp.csr_matrix(np.log1p(counts))):  # dense, sparse counts, log-normalised
        qc_metrics(ad.AnnData(X))


def _expm1_block(block):
    """``expm1`` of a row block (CSR: of its stored values, zeros stay zero), in float64: a new array,
    the file's values are never changed."""
    if sp.issparse(block):
        out = sp.csr_matrix(block, dtype=np.float64, copy=True)
        np.expm1(out.data, out=out.data)
        return out
    return np.expm1(np.asarray(block, dtype=np.float64))


def suggest_qc_thresholds(metrics: pd.DataFrame, k: float = 3.0) -> dict:
    """Suggest outlier bounds: median ± k·MAD per metric.

    The MAD is scaled to the standard deviation of a normal distribution (x1.4826), so k=3 is
    the usual "3 standard deviations, robustly". ``total_counts`` and ``n_genes_by_counts`` are
    judged on a log1p scale (their distributions are right-skewed) and get both bounds;
    ``pct_counts_mt`` gets only an upper bound. A metric with no spread (MAD 0, or under 0.1 % on
    the log1p scale, e.g. a normalised matrix's totals, equal but for rounding) or no values gets no
    bound.

    Returns
    -------
    ``{"k": k, "method": ..., metric: {"min": lo, "max": hi}, ...}`` with plain floats, to show
    to the user and pass to :func:`apply_qc_filter`.
    """
    from scipy.stats import median_abs_deviation

    out: dict = {"k": float(k), "method": f"median ± {k:g}·MAD (MAD scaled to a normal SD; "
                                          "log1p scale for counts and genes)"}
    for metric, log, lower in (("total_counts", True, True), ("n_genes_by_counts", True, True),
                               ("pct_counts_mt", False, False)):
        if metric not in metrics:
            continue
        values = metrics[metric].to_numpy(dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            continue
        scaled = np.log1p(np.maximum(values, 0)) if log else values
        med, mad = np.median(scaled), median_abs_deviation(scaled, scale="normal")
        if mad == 0 or (log and mad < 1e-3):  # (the totals of normalised values differ only by rounding)
            continue
        lo, hi = (np.expm1(med - k * mad), np.expm1(med + k * mad)) if log else (med - k * mad, med + k * mad)
        bounds = {"max": round(float(min(hi, 100.0) if metric == "pct_counts_mt" else hi), 4)}
        if lower:
            bounds["min"] = round(float(max(lo, 0.0)), 4)
        out[metric] = bounds
    return out


def apply_qc_filter(adata, thresholds: dict, metrics: pd.DataFrame | None = None,
                    key_added: str = QC_KEY) -> np.ndarray:
    """Mark the cells that pass QC thresholds; no cell is removed.

    Parameters
    ----------
    adata
        The data (may be backed).
    thresholds
        ``{metric: {"min": ..., "max": ...}}`` as returned by :func:`suggest_qc_thresholds`
        (possibly edited by the user); other keys are ignored.
    metrics
        Precomputed :func:`qc_metrics`; computed when not given.

    Returns
    -------
    Boolean mask over cells, True = passes. A cell whose metric is NaN is not judged on it.

    Sets the following fields: ``adata.obs[key_added]`` (the mask) and
    ``adata.uns['scatd_qc']`` (thresholds and counts, for the report).
    """
    if metrics is None:
        metrics = qc_metrics(adata)
    mask = np.ones(adata.n_obs, dtype=bool)
    used = {}
    for metric, bounds in thresholds.items():
        if not isinstance(bounds, dict) or metric not in metrics:
            continue
        values = metrics[metric].to_numpy(dtype=np.float64)
        with np.errstate(invalid="ignore"):
            if bounds.get("min") is not None:
                mask &= ~(values < bounds["min"])
            if bounds.get("max") is not None:
                mask &= ~(values > bounds["max"])
        used[metric] = {b: float(v) for b, v in bounds.items() if v is not None}
    adata.obs[key_added] = mask
    adata.uns[QC] = {"thresholds": used, "n_pass": int(mask.sum()), "n_fail": int((~mask).sum()),
                             "key": key_added}
    return mask


def remove_qc_filter(adata, key_added: str = QC_KEY) -> bool:
    """Undo :func:`apply_qc_filter`: every cell is used again. Returns whether a filter was there."""
    had = key_added in adata.obs
    if had:
        del adata.obs[key_added]
    adata.uns.pop(QC, None)
    return had
