"""Step 1, Data: upload (or the demo), what was read, QC with optional filters, label and sample columns."""

import streamlit as st

from scatd_app import state, ui
from scatd_core import io, metrics, report
from scatd_core.errors import ScatdError
from scatd_core.preprocess import QC_KEY, QC_METRICS, apply_qc_filter, suggest_qc_thresholds

ss = st.session_state
st.title("1 · Data")
limit_mb = ui.upload_limit_mb()
st.caption(f"Upload single-cell expression: {', '.join(io.SUPPORTED_FORMATS)} (a 10x folder as .zip or "
           f".tar.gz). **Up to {limit_mb:,} MB per file** (set by the server's SCATD_MAX_UPLOAD_MB).")

# ------------------------------------------------------------------ input
left, right = st.columns([0.7, 0.3])
with left:
    uploaded = st.file_uploader("Data file", type=list(io.UPLOAD_TYPES), max_upload_size=limit_mb,
                                help="Cells x genes or genes x cells; counts, normalised, log or z-scored values.")
with right:
    orientation = st.radio("Table orientation", io.ORIENTATIONS, key="data_orientation",
                           format_func={"auto": "detect", "cells_x_genes": "rows are cells",
                                        "genes_x_cells": "rows are genes"}.get,
                           help="Only for CSV/TSV tables; h5ad, 10x and loom files say it themselves.")
    demo = ui.demo_module()
    if demo is not None and st.button("Try the demo", icon=":material/science:", key="btn_demo",
                                      help="A simulated tumour and a model trained on simulated cell lines, "
                                           "labelled demo (simulated data). Built once on first use (about "
                                           "a minute)."):
        bar = left.progress(0.0, text="Preparing the demo…")
        try:
            ui.use_demo(demo, bar)
        except ScatdError as exc:
            bar.empty()
            ui.show_error(exc)
        else:
            st.rerun()

if uploaded is not None:
    data = uploaded.getvalue()
    token = ui.token_of(data, orientation)
    if token != ss.get(state.DATA_TOKEN):
        try:
            with st.spinner(f"Reading {uploaded.name}…"):
                adata = io.read_bytes(data, uploaded.name, orientation=orientation)
        except ScatdError as exc:
            ui.show_error(exc)
            st.stop()
        except Exception as exc:  # io promises InputError only; still never show a traceback
            ui.show_error(exc)
            st.stop()
        ui.set_data(adata, uploaded.name, token)
        st.rerun()  # so the sidebar shows the new data

adata = ss.get(state.ADATA)
if adata is None:
    st.info("No data yet. Upload a file above" + (" or try the demo." if ui.demo_module() else "."),
            icon=":material/upload_file:")
    st.stop()

# ------------------------------------------------------------------ summary card
info = adata.uns.get(io.REPORT_KEY, {})
evidence = info.get("value_type_evidence") or {}
with st.container(border=True):
    st.subheader(ss.get(state.DATA_NAME, "data"))
    c = st.columns(4)
    c[0].metric("Cells", f"{adata.n_obs:,}")
    c[1].metric("Genes", f"{adata.n_vars:,}")
    c[2].metric("Gene IDs", str(info.get("gene_id_type", "unknown")).replace("_", " "))
    c[3].metric("Values", str(info.get("value_type", "unknown")).replace("_", " "),
                help="Detected from the values; see the evidence below.")
    st.caption(f"Format: {info.get('format', '?')} · orientation: {info.get('orientation', '?')} "
               f"({info.get('orientation_reason', '')})" + (" · read from disk (backed)" if info.get("backed") else ""))
    with st.expander("Evidence for the value type and gene identifiers"):
        st.markdown(f"**Values: {info.get('value_type')}** because {evidence.get('reason', 'n/a')}.")
        st.json({"values": evidence, "gene identifiers": info.get("gene_id_evidence", {})}, expanded=False)
    for warning in info.get("warnings", []):
        st.warning(warning, icon=":material/warning:")

# ------------------------------------------------------------------ QC
st.subheader("Quality control")
token = ss[state.DATA_TOKEN]
try:
    qc = ui.qc_metrics(token, adata)
except ScatdError as exc:
    ui.show_error(exc)
    qc = None
if qc is not None:
    if info.get("value_type") not in ("counts", None):
        st.caption(f"These values are {info.get('value_type')}, not counts: 'total counts' is the sum of the "
                   "values per cell, so judge the thresholds with care.")
    suggested = suggest_qc_thresholds(qc)
    if ss.get("qc_token") != token:  # new data: start from the suggestions, filter off
        ss["qc_token"] = token
        ss["qc_enabled"] = False
        for metric in QC_METRICS:
            for bound in ("min", "max"):
                ss[f"qc_{metric}_{bound}"] = suggested.get(metric, {}).get(bound)
    enabled = st.toggle("Mark low-quality cells as filtered", key="qc_enabled",
                        help="Filtered cells are not predicted but keep their row, marked 'filtered (QC)', "
                             "in every table and file.")
    thresholds = {}
    if enabled:
        st.caption(f"Suggested bounds: {suggested['method']}. Empty = no bound.")
        cols = st.columns(len(QC_METRICS))
        for col, metric in zip(cols, QC_METRICS):
            with col:
                st.markdown(f"**{metric.replace('_', ' ')}**")
                bounds = {}
                for bound in ("min", "max"):
                    if metric == "pct_counts_mt" and bound == "min":
                        continue
                    disabled = metric not in qc or qc[metric].isna().all()
                    value = st.number_input(f"{bound} {metric}", key=f"qc_{metric}_{bound}", min_value=0.0, format="%.2f", disabled=disabled,
                                            label_visibility="collapsed", placeholder=f"no {bound}imum")
                    if value is not None:
                        bounds[bound] = float(value)
                thresholds[metric] = bounds
        passed = apply_qc_filter(adata, thresholds, qc)
        n_fail = int((~passed).sum())
        st.info(f"**{int(passed.sum()):,} of {adata.n_obs:,} cells pass**; {n_fail:,} will be marked "
                "'filtered (QC)': not predicted, but kept in every output.", icon=":material/filter_alt:")
    else:
        passed = None
        if QC_KEY in adata.obs:
            del adata.obs[QC_KEY]
        adata.uns.pop("scatd_qc", None)
    left, right = st.columns([0.55, 0.45])
    left.plotly_chart(report.qc_violin(qc, QC_METRICS, passed), key="qc_violin")
    if {"total_counts", "n_genes_by_counts"} <= set(qc.columns):
        right.plotly_chart(report.qc_scatter(qc, passed), key="qc_scatter")

# ------------------------------------------------------------------ label and sample columns
st.subheader("Columns for evaluation and grouping")
flagged = info.get("label_columns") or {}
candidates = [c for c in adata.obs.columns if not str(c).startswith("scatd_")
              and (c in flagged or adata.obs[c].nunique(dropna=True) <= 50)]
label_options = [None] + sorted(candidates, key=lambda c: (c not in flagged, str(c)))
if ss.get(state.LABEL_COLUMN) not in label_options:
    ss[state.LABEL_COLUMN] = None
left, right = st.columns(2)
with left:
    label_column = st.selectbox("Label column (known response, for evaluation)", label_options,
                                key=state.LABEL_COLUMN, format_func=lambda c: "none (unlabelled data)" if c is None else c,
                                help="Optional. With labels, the Cells page shows AUROC, AUPRC, F1, MCC and curves.")
    if label_column is not None:
        values = metrics.label_values(adata.obs[label_column])
        if ss.get(ui.POSITIVE_CLASS) not in values:
            ss[ui.POSITIVE_CLASS] = metrics.guess_positive(adata.obs[label_column]) or (values[0] if values else None)
        if values:
            st.selectbox("Which value means resistant?", values, key=ui.POSITIVE_CLASS,
                         help="Every other value counts as sensitive; missing labels are left out.")
            n_missing = int(adata.obs[label_column].isna().sum())
            counts = adata.obs[label_column].astype(str).value_counts().head(10)
            st.caption(" · ".join(f"{k}: {v:,}" for k, v in counts.items())
                       + (f" · {n_missing:,} missing (left out)" if n_missing else ""))
        else:
            st.warning(f"'{label_column}' holds no labels (every value is missing).", icon=":material/warning:")
group_options = [None] + [c for c in candidates]
if ss.get(state.SAMPLE_COLUMN) not in group_options:
    ss[state.SAMPLE_COLUMN] = None
with right:
    st.selectbox("Sample / batch column", group_options, key=state.SAMPLE_COLUMN,
                 format_func=lambda c: "none" if c is None else c,
                 help="Optional. The Cells page shows the fraction of resistant cells per sample.")

st.divider()
ui.link("Model", "Next: choose a model", ":material/arrow_forward:")
