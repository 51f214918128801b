"""Results for every uploaded cell, and their exports: CSV tables, the annotated h5ad, figures and
a self-contained HTML report.

Nothing is lost silently: cells removed by a QC filter are not predicted (so that they do not
shift the dataset-level statistics some models use) but keep their row in every output,
labelled ``filtered (QC)`` (:func:`predict_all_cells`). The figures are plotly objects shared by
the app's pages and the HTML report, so both show the same thing.
"""

from __future__ import annotations

import copy as _copy
import datetime as _dt
import html
import json
import platform
from pathlib import Path
from typing import Iterable, Sequence

import anndata as ad
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from scatd_core import __version__
from scatd_core import metrics as _metrics
from scatd_core.bundle import Bundle
from scatd_core.embed import CLUSTER_KEY, INFO_KEY as EMBED_INFO_KEY, UMAP_KEY, finite_rows
from scatd_core.errors import InputError
from scatd_core.predict import (LABEL_KEY, LATENT_KEY, NOT_SCORED, PROB_KEY, SCORED_KEY, SD_KEY, predict,
                                relabel)
from scatd_core.preprocess import QC_KEY

FILTERED = "filtered (QC)"
#: Above this many points, scatter plots use WebGL (``Scattergl``) so the browser stays fluid.
WEBGL_MIN_POINTS = 3000
#: At most this many points are drawn in one scatter plot (a seeded random subsample above it,
#: stated under the plot): more would make the page slow to load without showing more.
MAX_PLOT_POINTS = 200_000
COLORS = {"resistant": "#d62728", "sensitive": "#1f77b4", NOT_SCORED: "#9e9e9e", FILTERED: "#cfcfcf"}
PROB_SCALE = "RdBu_r"


# --------------------------------------------------------------------------------------------
# Results over every uploaded cell
# --------------------------------------------------------------------------------------------

def shallow_copy(adata: ad.AnnData, rows: np.ndarray | None = None) -> ad.AnnData:
    """A new AnnData sharing X with ``adata`` (or a copy of only ``rows``), with its own
    obs, var, uns and obsm mapping, so annotating it never changes ``adata``."""
    src = adata.to_memory() if adata.isbacked else adata
    if rows is None:
        return ad.AnnData(X=src.X, obs=src.obs.copy(), var=src.var.copy(), uns=_copy.deepcopy(dict(src.uns)),
                          obsm={k: v for k, v in src.obsm.items()})
    return src[rows].copy()


def predict_all_cells(adata: ad.AnnData, bundle: Bundle, *, passed: np.ndarray | None = None,
                      **predict_kwargs) -> ad.AnnData:
    """Predict the cells that pass QC and return a result holding every uploaded cell.

    Parameters
    ----------
    adata
        The uploaded data; not modified.
    bundle
        The model.
    passed
        Boolean mask of the cells to predict (``obs['scatd_qc_pass']`` of
        :func:`scatd_core.preprocess.apply_qc_filter`); ``None``: all cells.
    **predict_kwargs
        Passed to :func:`scatd_core.predict.predict` (mode, n_samples, seed, device, progress ...).

    Returns
    -------
    A new AnnData over all cells of ``adata`` with the fields of
    :func:`~scatd_core.predict.predict`. Filtered cells have NaN probabilities and latent rows,
    ``scatd_scored`` False, ``scatd_label`` ``"filtered (QC)"`` and ``obs['scatd_qc_pass']``
    False; ``uns['scatd']['qc']`` counts them and records the thresholds.
    """
    predict_kwargs.pop("copy", None)
    if passed is None or np.all(passed):
        result = shallow_copy(adata)
        predict(result, bundle, **predict_kwargs)
        if passed is not None:
            result.obs[QC_KEY] = True
        _record_qc(result, adata, int(adata.n_obs), 0)
        return result
    passed = np.asarray(passed, dtype=bool)
    if passed.shape != (adata.n_obs,):
        raise ValueError(f"QC mask of length {passed.shape} for {adata.n_obs} cells")
    if not passed.any():
        raise InputError("Every cell is removed by the QC filter, so there is nothing to predict.",
                         "Loosen the QC thresholds on the Data page, or turn the filter off.")
    part = shallow_copy(adata, np.flatnonzero(passed))
    predict(part, bundle, **predict_kwargs)
    result = shallow_copy(adata)
    n = adata.n_obs
    prob = np.full(n, np.nan)
    prob[passed] = part.obs[PROB_KEY].to_numpy()
    result.obs[PROB_KEY] = prob
    if SD_KEY in part.obs:
        sd = np.full(n, np.nan)
        sd[passed] = part.obs[SD_KEY].to_numpy()
        result.obs[SD_KEY] = sd
    labels = np.full(n, FILTERED, dtype=object)
    labels[passed] = part.obs[LABEL_KEY].astype(str).to_numpy()
    result.obs[LABEL_KEY] = pd.Categorical(labels, categories=list(part.obs[LABEL_KEY].cat.categories) + [FILTERED])
    scored = np.zeros(n, dtype=bool)
    scored[passed] = part.obs[SCORED_KEY].to_numpy()
    result.obs[SCORED_KEY] = scored
    result.obs[QC_KEY] = passed
    latent = np.full((n, part.obsm[LATENT_KEY].shape[1]), np.nan, dtype=np.float32)
    latent[passed] = part.obsm[LATENT_KEY]
    result.obsm[LATENT_KEY] = latent
    result.uns["scatd"] = part.uns["scatd"]
    _record_qc(result, adata, int(passed.sum()), int((~passed).sum()))
    return result


def _record_qc(result: ad.AnnData, adata: ad.AnnData, n_predicted: int, n_filtered: int) -> None:
    info = result.uns["scatd"]
    info["n_cells"] = int(adata.n_obs)
    info["n_scored"] = int(result.obs[SCORED_KEY].sum())
    info["qc"] = {"n_uploaded": int(adata.n_obs), "n_predicted": n_predicted, "n_filtered": n_filtered,
                  "thresholds": _copy.deepcopy(adata.uns.get("scatd_qc", {}).get("thresholds", {})) if n_filtered
                  else {}}


def labels_at(result: ad.AnnData, threshold: float) -> pd.Series:
    """Called labels at another threshold, without recomputing (filtered cells stay filtered)."""
    labels = relabel(result, threshold)
    if QC_KEY in result.obs and not result.obs[QC_KEY].all():
        values = labels.astype(str).to_numpy(dtype=object)
        values[~result.obs[QC_KEY].to_numpy(dtype=bool)] = FILTERED
        labels = pd.Series(pd.Categorical(values, categories=list(labels.cat.categories) + [FILTERED]),
                           index=labels.index)
    return labels


def current_threshold(result: ad.AnnData) -> float:
    return float(result.uns.get("scatd", {}).get("params", {}).get("threshold", 0.5))


def _positive(result: ad.AnnData) -> tuple[str, str]:
    info = result.uns.get("scatd", {})
    return info.get("positive_label", "resistant"), info.get("negative_label", "sensitive")


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------

def predictions_table(result: ad.AnnData, threshold: float | None = None,
                      extra_columns: Sequence[str] = ()) -> pd.DataFrame:
    """One row per uploaded cell, in input order.

    Columns: ``cell_id, prob_resistant[, prob_resistant_sd], label, scored, qc_pass``, then
    ``umap_1, umap_2`` and ``cluster`` when computed, then ``extra_columns`` of ``obs`` (e.g.
    the sample and true-label columns) under their own names. ``label`` is at ``threshold``
    (default: the run's).
    """
    if PROB_KEY not in result.obs:
        raise InputError("No predictions in this dataset.", "Run the prediction first.")
    thr = current_threshold(result) if threshold is None else float(threshold)
    table = pd.DataFrame({"cell_id": result.obs_names.astype(str),
                          "prob_resistant": result.obs[PROB_KEY].to_numpy()})
    if SD_KEY in result.obs:
        table["prob_resistant_sd"] = result.obs[SD_KEY].to_numpy()
    table["label"] = labels_at(result, thr).astype(str).to_numpy()
    table["scored"] = result.obs[SCORED_KEY].to_numpy(dtype=bool)
    table["qc_pass"] = result.obs[QC_KEY].to_numpy(dtype=bool) if QC_KEY in result.obs else True
    if UMAP_KEY in result.obsm:
        coords = np.asarray(result.obsm[UMAP_KEY], dtype=np.float64)
        table["umap_1"], table["umap_2"] = coords[:, 0], coords[:, 1]
    if CLUSTER_KEY in result.obs:
        table["cluster"] = result.obs[CLUSTER_KEY].astype(str).to_numpy()
    for col in extra_columns:
        if col and col in result.obs and col not in table:
            table[col] = result.obs[col].to_numpy()
    return table


def evaluate_result(result: ad.AnnData, label_column: str, positive, threshold: float | None = None):
    """``(Evaluation, roc curve, pr curve)`` of a result against one of its obs columns.

    Filtered and unscored cells, and cells without a label, are left out and counted.
    """
    if label_column not in result.obs:
        raise InputError(f"The label column '{label_column}' is not in the data.",
                         "Choose the label column on the Data page.")
    pos, neg = _positive(result)
    y = _metrics.encode_labels(result.obs[label_column], positive)
    prob = result.obs[PROB_KEY].to_numpy(dtype=np.float64)
    thr = current_threshold(result) if threshold is None else float(threshold)
    evaluation = _metrics.evaluate(y, prob, thr, positive_label=pos, negative_label=neg)
    return evaluation, _metrics.roc_curve(y, prob), _metrics.pr_curve(y, prob)


def summary(result: ad.AnnData, threshold: float | None = None) -> dict:
    """Counts of cells by called label at ``threshold`` (default: the run's)."""
    thr = current_threshold(result) if threshold is None else float(threshold)
    pos, neg = _positive(result)
    labels = labels_at(result, thr).astype(str)
    counts = labels.value_counts()
    n_called = int(counts.get(pos, 0) + counts.get(neg, 0))
    return {"threshold": thr, "n_cells": int(result.n_obs), "n_resistant": int(counts.get(pos, 0)),
            "n_sensitive": int(counts.get(neg, 0)), "n_not_scored": int(counts.get(NOT_SCORED, 0)),
            "n_filtered": int(counts.get(FILTERED, 0)),
            "fraction_resistant": round(counts.get(pos, 0) / n_called, 4) if n_called else None}


def group_table(result: ad.AnnData, column: str, threshold: float | None = None) -> pd.DataFrame:
    """Fraction called resistant per value of ``obs[column]`` (cluster, sample ...)."""
    if column not in result.obs:
        raise InputError(f"'{column}' is not a column of the data.")
    thr = current_threshold(result) if threshold is None else float(threshold)
    pos, _ = _positive(result)
    return _metrics.group_fractions(labels_at(result, thr).astype(str), result.obs[column], pos,
                                    excluded=(NOT_SCORED, FILTERED))


def metrics_table(result: ad.AnnData, threshold: float | None = None, evaluation=None,
                  groups: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """Long table ``section, metric, value``: the run summary, the evaluation against labels
    (when given) and the resistant fraction per group (``groups``: column -> :func:`group_table`)."""
    rows = [("summary", k, v) for k, v in summary(result, threshold).items()]
    if evaluation is not None:
        rows += [("evaluation", k, v) for k, v in evaluation.as_dict().items()]
    for column, table in (groups or {}).items():
        for rec in table.itertuples(index=False):
            rows += [(f"{column}={rec.group}", "n_cells", int(rec.n_cells)),
                     (f"{column}={rec.group}", "n_resistant", int(rec.n_resistant)),
                     (f"{column}={rec.group}", "fraction_resistant",
                      None if pd.isna(rec.fraction_resistant) else round(float(rec.fraction_resistant), 4))]
    return pd.DataFrame(rows, columns=["section", "metric", "value"], dtype=object)


def file_stem(data_name: str | None, drug: str | None) -> str:
    """A safe file-name stem for the downloads, e.g. ``tumour_GEFITINIB``."""
    from scatd_core.bundle import safe_name

    base = str(data_name or "data")
    extensions = (".h5ad", ".h5", ".loom", ".csv", ".tsv", ".txt", ".gz", ".zip", ".tgz", ".tar", ".npy", ".mtx")
    while ext := next((e for e in extensions if base.lower().endswith(e)), None):
        base = base[: -len(ext)]
    return safe_name(f"{base}_{drug}" if drug else base, "scatd")


def to_csv_bytes(table: pd.DataFrame) -> bytes:
    return table.to_csv(index=False).encode("utf-8")


def write_h5ad(adata: ad.AnnData, path: str | Path) -> Path:
    """Write the annotated AnnData so it opens in scanpy/cellxgene as it is.

    ``obs['scatd_*']``, ``obsm['X_scatd']`` (and ``obsm['X_umap']`` when computed) and
    ``uns['scatd']`` are kept; a backed dataset is read into memory first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = adata.to_memory() if adata.isbacked else adata
    out.write_h5ad(path, compression="gzip")
    return path


def h5ad_bytes(adata: ad.AnnData) -> bytes:
    """The annotated h5ad as bytes (for a download button)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="scatd-export-") as tmp:
        return write_h5ad(adata, Path(tmp) / "annotated.h5ad").read_bytes()


# --------------------------------------------------------------------------------------------
# Figures (plotly), shared by the app and the HTML report
# --------------------------------------------------------------------------------------------

def _layout(fig: go.Figure, title: str | None = None, height: int = 420) -> go.Figure:
    fig.update_layout(title=title, height=height, margin=dict(l=40, r=20, t=50 if title else 20, b=40),
                      template="plotly_white", legend=dict(itemsizing="constant"))
    return fig


def _scatter_trace(n_points: int):
    return go.Scattergl if n_points >= WEBGL_MIN_POINTS else go.Scatter


def umap_figure(coords: np.ndarray, values: Sequence | None = None, *, name: str = "",
                categorical: bool | None = None, cell_ids: Sequence[str] | None = None,
                color_range: tuple[float, float] | None = None, colorscale: str = PROB_SCALE,
                title: str | None = None, point_size: float | None = None,
                max_points: int = MAX_PLOT_POINTS) -> go.Figure:
    """UMAP scatter coloured by ``values`` (numbers: a colour scale; text: one trace per value).

    Points with non-finite coordinates are left out and counted in a note under the plot;
    cells with a non-finite colour value are drawn in grey. WebGL above
    :data:`WEBGL_MIN_POINTS` points; a seeded random subsample of ``max_points`` above that.
    """
    coords = np.asarray(coords, dtype=np.float64)
    ok = finite_rows(coords)
    n_out = int((~ok).sum())
    n_drawable = int(ok.sum())
    if n_drawable > max_points:
        keep = np.random.default_rng(0).choice(np.flatnonzero(ok), size=max_points, replace=False)
        ok = np.zeros_like(ok)
        ok[keep] = True
    xy = coords[ok]
    ids = np.asarray(cell_ids if cell_ids is not None else np.arange(coords.shape[0]).astype(str))[ok]
    size = point_size or (3 if xy.shape[0] > 20_000 else 4 if xy.shape[0] > 3000 else 6)
    Trace = _scatter_trace(xy.shape[0])
    fig = go.Figure()
    if values is None:
        fig.add_trace(Trace(x=xy[:, 0], y=xy[:, 1], mode="markers", marker=dict(size=size, color="#555"),
                            text=ids, hovertemplate="%{text}<extra></extra>", showlegend=False))
    else:
        vals = pd.Series(np.asarray(values, dtype=object)[ok])
        numeric = pd.api.types.is_numeric_dtype(pd.Series(values)) and not pd.api.types.is_bool_dtype(
            pd.Series(values)) if categorical is None else not categorical
        if numeric:
            v = pd.to_numeric(vals, errors="coerce").to_numpy(dtype=np.float64)
            has = np.isfinite(v)
            if (~has).any():
                fig.add_trace(Trace(x=xy[~has, 0], y=xy[~has, 1], mode="markers", name="no value",
                                    marker=dict(size=size, color=COLORS[NOT_SCORED]), text=ids[~has],
                                    hovertemplate="%{text}: no value<extra></extra>"))
            lo, hi = color_range or (float(np.nanmin(v)) if has.any() else 0.0,
                                     float(np.nanmax(v)) if has.any() else 1.0)
            fig.add_trace(Trace(x=xy[has, 0], y=xy[has, 1], mode="markers", name=name, showlegend=False,
                                marker=dict(size=size, color=v[has], colorscale=colorscale, cmin=lo, cmax=hi,
                                            colorbar=dict(title=dict(text=name, side="top"), thickness=14)),
                                text=ids[has], customdata=v[has],
                                hovertemplate="%{text}<br>" + html.escape(name) + ": %{customdata:.3f}<extra></extra>"))
        else:
            text = vals.astype(str).where(vals.notna(), "NA")
            cats = pd.Series(values).astype("category").cat.categories if hasattr(values, "cat") else None
            order = [str(c) for c in cats if str(c) in set(text)] if cats is not None else sorted(set(text))
            order += sorted(set(text) - set(order))
            palette = _palette(order)
            for cat in order:
                m = (text == cat).to_numpy()
                fig.add_trace(Trace(x=xy[m, 0], y=xy[m, 1], mode="markers", name=f"{cat} ({int(m.sum()):,})",
                                    marker=dict(size=size, color=palette[cat]), text=ids[m],
                                    hovertemplate="%{text}<br>" + html.escape(f"{name}: {cat}") + "<extra></extra>"))
    fig.update_xaxes(title="UMAP 1", showticklabels=False, zeroline=False, showgrid=False)
    fig.update_yaxes(title="UMAP 2", showticklabels=False, zeroline=False, showgrid=False, scaleanchor=None)
    notes = []
    if n_out:
        notes.append(f"{n_out:,} cell(s) without coordinates are not shown")
    if n_drawable > max_points:
        notes.append(f"showing a random {max_points:,} of {n_drawable:,} cells")
    if notes:
        fig.add_annotation(text="; ".join(notes), showarrow=False, xref="paper", yref="paper", x=0, y=-0.08,
                           font=dict(size=11, color="#666"))
    return _layout(fig, title, height=520)


_QUALITATIVE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
                "#7f7f7f", "#aec7e8", "#ffbb78", "#98df8a", "#c5b0d5", "#c49c94", "#f7b6d2", "#9edae5",
                "#dbdb8d", "#393b79", "#637939", "#8c6d31")


def _palette(categories: Iterable[str]) -> dict[str, str]:
    out, i = {}, 0
    for cat in categories:
        if cat in COLORS:
            out[cat] = COLORS[cat]
        elif cat.lower() in ("resistant", "r", "1", "true", "non-responder"):
            out[cat] = COLORS["resistant"]
        elif cat.lower() in ("sensitive", "s", "0", "false", "responder"):
            out[cat] = COLORS["sensitive"]
        elif cat in ("NA", "not embedded"):
            out[cat] = COLORS[NOT_SCORED]
        else:
            out[cat] = _QUALITATIVE[i % len(_QUALITATIVE)]
            i += 1
    return out


def probability_histogram(prob: np.ndarray, threshold: float, title: str | None = None) -> go.Figure:
    """Histogram of P(resistant) over scored cells with the threshold marked."""
    p = np.asarray(prob, dtype=np.float64)
    p = p[np.isfinite(p)]
    fig = go.Figure(go.Histogram(x=p, xbins=dict(start=0, end=1.0001, size=0.02), marker_color="#6c8ebf",
                                 hovertemplate="P %{x}: %{y} cells<extra></extra>"))
    fig.add_vline(x=threshold, line=dict(color=COLORS["resistant"], dash="dash"),
                  annotation_text=f"threshold {threshold:.3g}", annotation_position="top")
    fig.update_xaxes(title="P(resistant)", range=[0, 1])
    fig.update_yaxes(title="cells")
    return _layout(fig, title, height=320)


def composition_figure(table: pd.DataFrame, group_name: str, title: str | None = None) -> go.Figure:
    """Bar chart of the fraction called resistant per group (from :func:`group_table`)."""
    text = [f"{r:,}/{c:,}" for r, c in zip(table["n_resistant"], table["n_called"])]
    fig = go.Figure(go.Bar(x=table["group"].astype(str), y=table["fraction_resistant"], text=text,
                           textposition="outside", marker_color=COLORS["resistant"],
                           hovertemplate="%{x}: %{y:.1%} resistant (%{text})<extra></extra>"))
    fig.update_yaxes(title="fraction resistant", range=[0, 1.1], tickformat=".0%")
    fig.update_xaxes(title=group_name, type="category")
    return _layout(fig, title, height=360)


def roc_figure(roc: pd.DataFrame, auroc: float, title: str | None = None) -> go.Figure:
    fig = go.Figure([
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#bbb", dash="dot"), showlegend=False,
                   hoverinfo="skip"),
        go.Scatter(x=roc["fpr"], y=roc["tpr"], mode="lines", name=f"AUROC {auroc:.3f}",
                   line=dict(color=COLORS["resistant"], width=2), customdata=roc["threshold"],
                   hovertemplate="FPR %{x:.3f}, TPR %{y:.3f}<br>threshold %{customdata:.3f}<extra></extra>"),
    ])
    fig.update_xaxes(title="false positive rate", range=[0, 1])
    fig.update_yaxes(title="true positive rate", range=[0, 1.02])
    fig.update_layout(legend=dict(x=0.55, y=0.08))
    return _layout(fig, title or "ROC curve", height=380)


def pr_figure(pr: pd.DataFrame, auprc: float, prevalence: float, title: str | None = None) -> go.Figure:
    fig = go.Figure([
        go.Scatter(x=[0, 1], y=[prevalence, prevalence], mode="lines", line=dict(color="#bbb", dash="dot"),
                   name=f"chance ({prevalence:.2f})", hoverinfo="skip"),
        go.Scatter(x=pr["recall"], y=pr["precision"], mode="lines", name=f"AUPRC {auprc:.3f}",
                   line=dict(color=COLORS["resistant"], width=2), customdata=pr["threshold"],
                   hovertemplate="recall %{x:.3f}, precision %{y:.3f}<br>threshold %{customdata:.3f}"
                                 "<extra></extra>"),
    ])
    fig.update_xaxes(title="recall", range=[0, 1])
    fig.update_yaxes(title="precision", range=[0, 1.02])
    fig.update_layout(legend=dict(x=0.98, y=0.98, xanchor="right", yanchor="top"))
    return _layout(fig, title or "Precision-recall curve", height=380)


def confusion_figure(confusion: np.ndarray, positive_label: str = "resistant",
                     negative_label: str = "sensitive", title: str | None = None) -> go.Figure:
    cm = np.asarray(confusion)
    names = [negative_label, positive_label]
    fig = go.Figure(go.Heatmap(z=cm, x=[f"called {n}" for n in names], y=[f"true {n}" for n in names],
                               colorscale="Blues", showscale=False, text=cm, texttemplate="%{text:,}",
                               hovertemplate="%{y}, %{x}: %{z:,} cells<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, title or "Confusion matrix", height=320)


def qc_violin(metrics: pd.DataFrame, columns: Sequence[str], passed: np.ndarray | None = None,
              title: str | None = None) -> go.Figure:
    """Violin per QC metric (one panel each); cells failing the filter drawn as red points."""
    from plotly.subplots import make_subplots

    cols = [c for c in columns if c in metrics and metrics[c].notna().any()]
    titles = {"n_genes_by_counts": "genes detected", "total_counts": "total counts",
              "pct_counts_mt": "% mitochondrial"}
    fig = make_subplots(rows=1, cols=max(1, len(cols)), subplot_titles=[titles.get(c, c.replace("_", " "))
                                                                        for c in cols])
    for i, col in enumerate(cols, start=1):
        values = metrics[col].to_numpy(dtype=np.float64)
        fig.add_trace(go.Violin(y=values, name=col, box_visible=True, meanline_visible=False, points=False,
                                line_color="#4c72b0", fillcolor="rgba(76,114,176,0.25)", showlegend=False,
                                spanmode="hard"), row=1, col=i)
        if passed is not None and (~passed).any():
            failed = values[~passed]
            fig.add_trace(go.Scatter(x=[col] * failed.size, y=failed, mode="markers", showlegend=False,
                                     marker=dict(size=3, color=COLORS["resistant"], opacity=0.5),
                                     hovertemplate="filtered: %{y}<extra></extra>"), row=1, col=i)
        fig.update_xaxes(showticklabels=False, row=1, col=i)
    return _layout(fig, title, height=340)


def _log_ticks(values: np.ndarray) -> dict:
    """Readable ticks for a log axis: 1, 2, 5 x 10^k within the data's range."""
    v = values[np.isfinite(values) & (values > 0)]
    if v.size == 0:
        return {}
    lo, hi = np.floor(np.log10(v.min())), np.ceil(np.log10(v.max()))
    ticks = [m * 10 ** k for k in range(int(lo), int(hi) + 1) for m in (1, 2, 5)]
    ticks = [t for t in ticks if v.min() / 1.5 <= t <= v.max() * 1.5]
    return {"tickvals": ticks, "ticktext": [f"{t:,.0f}" if t >= 1 else f"{t:g}" for t in ticks]} if ticks else {}


def qc_scatter(metrics: pd.DataFrame, passed: np.ndarray | None = None, title: str | None = None) -> go.Figure:
    """Total counts vs genes detected, coloured by mitochondrial share, filtered cells marked."""
    x = metrics["total_counts"].to_numpy(dtype=np.float64)
    y = metrics["n_genes_by_counts"].to_numpy(dtype=np.float64)
    mt = metrics["pct_counts_mt"].to_numpy(dtype=np.float64) if "pct_counts_mt" in metrics else None
    Trace = _scatter_trace(x.size)
    keep = np.ones(x.size, dtype=bool) if passed is None else np.asarray(passed, dtype=bool)
    has_mt = mt is not None and np.isfinite(mt).any()
    marker = dict(size=4, color=mt[keep] if has_mt else "#4c72b0", colorscale="Viridis",
                  colorbar=dict(title=dict(text="% mito", side="top"), thickness=12) if has_mt else None)
    fig = go.Figure(Trace(x=x[keep], y=y[keep], mode="markers", marker=marker, name="kept",
                          hovertemplate="counts %{x:,.0f}, genes %{y:,}<extra></extra>"))
    if (~keep).any():
        fig.add_trace(Trace(x=x[~keep], y=y[~keep], mode="markers", name=f"filtered ({int((~keep).sum()):,})",
                            marker=dict(size=5, color=COLORS["resistant"], symbol="x"),
                            hovertemplate="filtered: counts %{x:,.0f}, genes %{y:,}<extra></extra>"))
    fig.update_xaxes(title="total counts", type="log", **_log_ticks(x))
    fig.update_yaxes(title="genes detected", type="log", **_log_ticks(y))
    fig.update_layout(legend=dict(orientation="h", y=1.08))
    return _layout(fig, title, height=380)


# --------------------------------------------------------------------------------------------
# The HTML report
# --------------------------------------------------------------------------------------------

_CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;margin:0;
color:#222;background:#fafafa}
main{max-width:1100px;margin:0 auto;padding:24px 32px;background:#fff}
h1{margin-bottom:0}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
.sub{color:#666;margin-top:4px}.demo{background:#fff3cd;border:1px solid #e0c36a;padding:8px 12px;
border-radius:6px;font-weight:600}.warn{background:#fdecea;border:1px solid #f5c2c0;padding:8px 12px;border-radius:6px}
table{border-collapse:collapse;margin:8px 0;font-size:14px}td,th{border:1px solid #e3e3e3;padding:4px 10px;
text-align:left;vertical-align:top}th{background:#f3f3f3}.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{border:1px solid #e3e3e3;border-radius:8px;padding:10px 16px;min-width:130px}.card b{font-size:22px;
display:block}.grid{display:grid;grid-template-columns:1fr 1fr;gap:12px}footer{color:#888;font-size:12px;
margin-top:40px}code{background:#f3f3f3;padding:1px 4px;border-radius:3px}
"""


def _kv_table(pairs: Iterable[tuple[str, object]]) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in pairs)
    return f"<table>{rows}</table>"


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)
    return str(v)


def _frame_html(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
                   for row in frame.itertuples(index=False))
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure_html(fig: go.Figure) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False, "responsive": True})


def html_report(result: ad.AnnData, *, threshold: float | None = None, label_column: str | None = None,
                positive=None, group_columns: Sequence[str] = (), data_name: str | None = None) -> str:
    """A self-contained HTML report of one prediction run (plotly.js embedded once, no network).

    Holds the data summary and QC, the model and its provenance (labelled *demo (simulated
    data)* for a demo model), every run parameter, gene coverage and warnings, the called
    labels at ``threshold`` (default: the run's), UMAPs when computed, the resistant fraction
    per ``group_columns`` (and per Leiden cluster), and with ``label_column``/``positive`` the
    evaluation (metrics, ROC, PR, confusion matrix). Evaluation problems (e.g. one class only)
    are reported in the page, not raised.
    """
    from plotly.offline import get_plotlyjs

    if "scatd" not in result.uns:
        raise InputError("No predictions in this dataset.", "Run the prediction first.")
    info = result.uns["scatd"]
    model = info.get("model", {})
    params = info.get("params", {})
    thr = current_threshold(result) if threshold is None else float(threshold)
    pos, neg = _positive(result)
    counts = summary(result, thr)
    data_name = data_name or result.uns.get("scatd_input", {}).get("file_name") or "uploaded data"
    parts: list[str] = []
    title = f"scATD prediction: {model.get('drug') or 'drug'} on {data_name}"
    parts.append(f"<h1>{html.escape(title)}</h1><p class='sub'>Generated "
                 f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by scATD Studio "
                 f"{html.escape(__version__)}</p>")
    if model.get("demo"):
        parts.append("<p class='demo'>Demo model: demo (simulated data). Its predictions illustrate the "
                     "workflow and say nothing about real cells.</p>")

    cards = [("cells uploaded", counts["n_cells"]), ("called resistant", counts["n_resistant"]),
             ("called sensitive", counts["n_sensitive"]), ("not scored", counts["n_not_scored"]),
             ("filtered (QC)", counts["n_filtered"]),
             ("fraction resistant", "—" if counts["fraction_resistant"] is None
              else f"{counts['fraction_resistant']:.1%}")]
    parts.append("<h2>Summary</h2><div class='cards'>" + "".join(
        f"<div class='card'><b>{html.escape(_fmt(v))}</b>{html.escape(k)}</div>" for k, v in cards) + "</div>")
    parts.append(f"<p>A cell is called <b>{html.escape(pos)}</b> when P({html.escape(pos)}) &gt; "
                 f"{thr:.4g} (the model's default is {html.escape(_fmt(params.get('threshold')))}).</p>")
    for w in info.get("warnings", []):
        parts.append(f"<p class='warn'>{html.escape(str(w))}</p>")

    figures: list[str] = [_figure_html(probability_histogram(result.obs[PROB_KEY].to_numpy(), thr,
                                                             "Distribution of P(resistant)"))]
    if UMAP_KEY in result.obsm:
        coords = np.asarray(result.obsm[UMAP_KEY])
        ids = result.obs_names.astype(str)
        basis = result.uns.get(EMBED_INFO_KEY, {}).get("basis", "latent")
        figures.append(_figure_html(umap_figure(coords, result.obs[PROB_KEY].to_numpy(), name="P(resistant)",
                                                color_range=(0, 1), cell_ids=ids,
                                                title=f"UMAP ({basis}) coloured by P(resistant)")))
        figures.append(_figure_html(umap_figure(coords, labels_at(result, thr), name="called", categorical=True,
                                                cell_ids=ids, title="UMAP coloured by the called label")))
    parts.append("<h2>Predictions</h2>" + "".join(figures))

    groups = [c for c in ([CLUSTER_KEY] if CLUSTER_KEY in result.obs else []) + list(group_columns)
              if c and c in result.obs]
    group_tables = {}
    if groups:
        parts.append("<h2>Resistant fraction per group</h2>")
        for col in dict.fromkeys(groups):
            table = group_table(result, col, thr)
            group_tables[col] = table
            name = "Leiden cluster" if col == CLUSTER_KEY else col
            parts.append(_figure_html(composition_figure(table, name, f"Fraction resistant per {name}")))
            parts.append(_frame_html(table))

    evaluation = None
    if label_column:
        parts.append(f"<h2>Evaluation against '{html.escape(label_column)}'</h2>")
        try:
            evaluation, roc, pr = evaluate_result(result, label_column, positive, thr)
        except InputError as exc:
            parts.append(f"<p class='warn'>{html.escape(exc.message)} {html.escape(exc.hint or '')}</p>")
        else:
            parts.append(f"<p>Resistant class: <code>{html.escape(str(positive))}</code>. "
                         + " ".join(html.escape(n) for n in evaluation.notes) + "</p>")
            shown = {k: v for k, v in evaluation.as_dict().items()}
            parts.append(_kv_table(shown.items()))
            prevalence = evaluation.n_positive / evaluation.n_evaluated
            parts.append("<div class='grid'>" + _figure_html(roc_figure(roc, evaluation.auroc))
                         + _figure_html(pr_figure(pr, evaluation.auprc, prevalence)) + "</div>")
            parts.append(_figure_html(confusion_figure(evaluation.confusion, pos, neg)))

    data = result.uns.get("scatd_input", {})
    qc = info.get("qc", {})
    parts.append("<h2>Data</h2>" + _kv_table([
        ("file", data_name), ("cells", result.n_obs), ("genes", result.n_vars),
        ("gene identifiers", data.get("gene_id_type")), ("values", data.get("value_type")),
        ("value evidence", (data.get("value_type_evidence") or {}).get("reason")),
        ("QC filter", f"{qc.get('n_filtered', 0):,} cell(s) filtered" if qc.get("n_filtered") else "none"),
        ("QC thresholds", qc.get("thresholds") or None),
        ("input warnings", data.get("warnings") or None),
    ]))
    prov = model.get("provenance", {})
    parts.append("<h2>Model</h2>" + _kv_table([
        ("name", model.get("name")), ("drug", model.get("drug")), ("backbone", model.get("backbone")),
        ("demo model (simulated data)", bool(model.get("demo"))), ("bundle", model.get("path")),
        ("weights sha256", model.get("weights_sha256")),
        *[(f"provenance: {k}", v) for k, v in prov.items()],
    ]))
    coverage = info.get("gene_coverage") or {}
    embed_info = result.uns.get(EMBED_INFO_KEY, {})
    parts.append("<h2>Run parameters</h2>" + _kv_table([
        *[(k, v) for k, v in params.items()], ("decision threshold shown", thr),
        ("model input", info.get("input")), ("run at", info.get("run_at")), ("seconds", info.get("seconds")),
        ("cells scored", info.get("n_scored")), ("not scored, by reason", info.get("not_scored")),
        *[(f"gene coverage: {k}", v) for k, v in coverage.items()],
        *[(f"UMAP: {k}", v) for k, v in embed_info.items()],
    ]))
    parts.append("<h2>Software</h2>" + _kv_table([
        ("scATD Studio", __version__), ("Python", platform.python_version()), ("anndata", _version("anndata")),
        ("plotly", _version("plotly")), ("torch", _version("torch")), ("umap-learn", _version("umap-learn")),
        ("scikit-learn", _version("scikit-learn")),
    ]))
    parts.append("<footer>scATD method: domain-adaptive transfer of bulk drug-response models to single "
                 "cells. Files: predictions.csv (one row per uploaded cell), metrics.csv, annotated.h5ad.</footer>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style>"
            f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body><main>"
            + "\n".join(parts) + "</main></body></html>")


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def write_report(result: ad.AnnData, folder: str | Path, *, threshold: float | None = None,
                 label_column: str | None = None, positive=None, group_columns: Sequence[str] = (),
                 data_name: str | None = None) -> dict[str, Path]:
    """Write ``predictions.csv``, ``metrics.csv``, ``annotated.h5ad`` and ``report.html`` into
    ``folder`` (the app's downloads, for scripts and the CLI). Returns the paths by name."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    extra = [c for c in (label_column, *group_columns) if c]
    evaluation = None
    if label_column:
        try:
            evaluation = evaluate_result(result, label_column, positive, threshold)[0]
        except InputError:
            evaluation = None
    groups = {c: group_table(result, c, threshold) for c in
              dict.fromkeys(([CLUSTER_KEY] if CLUSTER_KEY in result.obs else []) + list(group_columns))
              if c in result.obs}
    paths = {"predictions": folder / "predictions.csv", "metrics": folder / "metrics.csv",
             "h5ad": folder / "annotated.h5ad", "html": folder / "report.html"}
    paths["predictions"].write_bytes(to_csv_bytes(predictions_table(result, threshold, extra)))
    paths["metrics"].write_bytes(to_csv_bytes(metrics_table(result, threshold, evaluation, groups)))
    write_h5ad(result, paths["h5ad"])
    paths["html"].write_text(html_report(result, threshold=threshold, label_column=label_column, positive=positive,
                                         group_columns=group_columns, data_name=data_name), encoding="utf-8")
    return paths
