"""Step 1, Data: upload (or the demo), what was read, gene IDs, QC, and the label and sample columns."""

import pandas as pd
import streamlit as st

from scatd_app import state, ui
from scatd_core._words import counted
from scatd_core import genes, io, labels, pl
from scatd_core._keys import CELL_METADATA
from scatd_core.errors import ScatdError
from scatd_core.genes import id_evidence_text, id_type_tile
from scatd_core.matrices import qc_words, unlogged_qc
from scatd_core.preprocess import (QC_METRICS, orientation_text, qc_metric_name, remove_qc_filter,
                                   suggest_qc_thresholds, value_evidence_text, value_kind_tile,
                                   value_kind_words)

ss = st.session_state
st.title("1 · Data")
limit_mb = ui.upload_limit_mb()
st.caption(f"Upload single-cell expression: {', '.join(io.SUPPORTED_FORMATS)} (a 10x folder as .zip or "
           f".tar.gz); {io.SPREADSHEET_UPLOAD_NOTE}. **Up to {limit_mb:,} MB per file** (this server's limit; "
           "its administrator sets it with limits.max_upload_mb in the configuration file, or SCATD_MAX_UPLOAD_MB).")

# ------------------------------------------------------------------ input
left, right = st.columns([0.7, 0.3])
with left:
    # spreadsheets too: refused by the reader with the export to use, not by the widget without a word
    uploaded = st.file_uploader("Data file", type=[*io.UPLOAD_TYPES, *io.REFUSED_UPLOAD_TYPES],
                                max_upload_size=limit_mb, key=ui.data_uploader_key(),  # emptied by Forget it
                                help="Cells x genes or genes x cells; counts, normalised, log or z-scored values. "
                                     + io.SPREADSHEET_UPLOAD_HELP)
with right:
    orientation = st.radio("Table orientation", io.ORIENTATIONS, key="data_orientation",
                           on_change=ui.read_again_in_orientation,  # also when another page follows at once
                           format_func={"auto": "detect", "cells_x_genes": "rows are cells",
                                        "genes_x_cells": "rows are genes"}.get,
                           help="For CSV/TSV tables and .npy arrays (detected from the names). An h5ad is read "
                                "cells x genes, as AnnData stores it, unless you choose 'rows are genes'; 10x and "
                                "loom files fix it themselves. Changing it reads the file again and starts over from "
                                "the new data.")
    ui.demo_button("btn_demo", left)

ui.read_upload(uploaded, orientation)

if ss.get(state.ADATA) is None:  # "Try the demo" clicked, then another page at once: its build goes on
    ui.resume_demo(left)
if ss.get(state.ADATA) is not None or not ss.get(state.DEMO_WANTED):  # not following it above: still in view
    ui.demo_build_note(left)
adata = ss.get(state.ADATA)
if adata is None:
    st.info("No data yet. Upload a file above" + ("." if ui.demo_module().cell_limit_problem() is not None
                                                   else ", or try the demo."), icon=":material/upload_file:")
    ui.stop()

# ------------------------------------------------------------------ summary card
info = adata.uns.get(io.REPORT_KEY, {})
evidence = info.get("value_type_evidence") or {}
with st.container(border=True):
    st.subheader(ui.md(ss.get(state.DATA_NAME, "data")))
    c = st.columns(4)
    c[0].metric("Cells", f"{adata.n_obs:,}")
    embedding_file = info.get("format") == "npy"  # cell embeddings (VAE_sf / VAE_gf input), not genes
    c[1].metric("Embedding features" if embedding_file else "Genes", f"{adata.n_vars:,}")
    if embedding_file:  # no gene identifiers, and no value type (z-scored, counts ...) to detect
        c[2].metric("Gene IDs", "none", help="Embedding features are taken by position, not by name.")
        c[3].metric("Values", "embedded", delta="cell embeddings", delta_color="off", delta_arrow="off",
                    help="Cell embeddings (for VAE_sf / VAE_gf models).")  # a short value: st.metric cuts a long one
    else:
        column = ((info.get("gene_ids") or {}).get("symbol") or {}).get("symbol_column")
        if column and info.get("gene_id_type", "unknown") in ("unknown", "numeric", "barcode", "cell_name"):
            # names that are no identifiers (gene0 ...): the symbols come from a var column, said below
            c[2].metric("Gene IDs", "symbol", help=f"Gene symbols taken from var['{column}']: the gene names "
                                                  "themselves are not identifiers.")
        else:
            tile, whole = id_type_tile(info.get("gene_id_type", "unknown"))  # short: st.metric cuts a long value
            c[2].metric("Gene IDs", tile, delta=whole, delta_color="off", delta_arrow="off")
        tile, whole = value_kind_tile(info.get("value_type", "unknown"))  # short: st.metric cuts a long value
        c[3].metric("Values", tile, delta=whole, delta_color="off", delta_arrow="off",
                    help="Detected from the values; see the evidence below.")
    layout = orientation_text(info, adata.shape, "features" if embedding_file else "genes")
    st.caption(f"Format: {ui.md(info.get('format', '?'))} · layout: {ui.md(layout)}"
               + (" · read from disk (backed)" if info.get("backed") else ""))
    with st.expander("Evidence for the value type and gene identifiers"):
        st.markdown(f"**Values: {ui.md(value_kind_words(info.get('value_type')))}**, because "
                    f"{ui.md(evidence.get('reason', 'nothing was measured'))}. "
                    + ui.md(value_evidence_text(evidence)))
        st.markdown(ui.md(id_evidence_text(info.get("gene_id_evidence", {}))))
    for warning in info.get("warnings", []):
        st.warning(ui.md(warning), icon=":material/warning:")
    if not embedding_file:
        ui.matrix_choice(adata)  # X, adata.raw, layers: which the models read

# ------------------------------------------------------------------ gene identifiers
mapping = info.get("gene_ids") or {}
if mapping.get("data_id_type") in ("ensembl", "mixed") or (mapping.get("symbol") or {}).get("symbol_column"):
    st.subheader("Gene identifiers")
    # the counts by route, as the command line says them; the hint (unmapped IDs) is among the warnings above
    st.markdown(ui.md(genes.id_mapping_text({k: v for k, v in mapping.items() if k != "hint"})))
if mapping.get("data_id_type") in ("ensembl", "mixed"):
    biomart = st.file_uploader("BioMart table (columns 'Gene stable ID' and 'Gene name'; CSV or TSV; "
                               f"{io.SPREADSHEET_LABEL_NOTE})",
                               type=["csv", "tsv", "txt", *io.REFUSED_UPLOAD_TYPES], key="upload_biomart",
                               help="Export it from Ensembl BioMart (Human genes): attributes Gene stable ID and "
                                    "Gene name. " + io.SPREADSHEET_UPLOAD_HELP)
    if biomart is not None and ss.get("data_biomart") != biomart.file_id:
        try:
            table = genes.read_biomart_table(biomart.getvalue(), name=biomart.name)
            genes.annotate_gene_ids(adata, biomart=table)
        except ScatdError as exc:
            ui.show_error(exc)
        else:
            ss["data_biomart"] = biomart.file_id
            state.invalidate("prediction")
            st.rerun()

# when the model is already settled (chosen, or the library's only one for these data), the
# prediction starts in the background now, before the QC metrics and plots (seconds on 10k cells)
# are computed and drawn; nothing is written into the data until Run prediction. A QC filter
# switched on below (a new mask) stops it and starts it again, at the end of the page.
ui.start_prediction_ahead(adata, ui.settled_model())

# ------------------------------------------------------------------ QC
st.subheader("Quality control")
qc = source = None
if embedding_file:
    st.info("These are cell embeddings (a .npy file), not gene expression: there are no QC metrics for them. "
            "They are the input of scFoundation (3,072 features) and Geneformer (512) models; filter "
            "low-quality cells before embedding them.", icon=":material/info:")
elif (source := ui.qc_source(adata))[0].kind == "zscored":  # every gene "detected" in every cell, sums of z-scores: no QC meaning
    st.info("Quality control needs counts or normalised values. These values are per-gene z-scores, so every "
            "gene counts as detected in every cell and their sums say nothing about a cell's quality: no QC "
            "metrics or filter for these data. Filter low-quality cells before z-scoring, or upload the counts.",
            icon=":material/info:")
    if remove_qc_filter(adata):  # a filter set before (another reading of the data) does not stay on unseen
        state.invalidate("prediction")
else:
    try:
        qc = ui.qc_metrics(adata)
    except ScatdError as exc:
        ui.show_error(exc)
if qc is not None:
    qc_matrix, qc_kind = qc.attrs.get("matrix", "X"), qc.attrs.get("value_type", info.get("value_type"))
    totals_said = pl.qc_notes_say_totals(qc)  # by the note under the QC plots: not again in the caption
    if qc_matrix != "X":  # the models' matrix beside X (the raw counts, or log-normalised values beside a scaled X)
        st.caption(ui.md(qc_words(*source, info.get("value_type"), totals_said=totals_said)))
    elif qc_kind == "log_normalized":  # un-logged for QC
        st.caption(ui.md(f"These values are log-normalised. {unlogged_qc(totals_said)}"))
    elif qc_kind not in ("counts", None):
        kind = str(qc_kind).replace("_", " ")
        st.caption(("These values are not recognisable as counts" if kind == "unknown" else
                    f"These values are {ui.md(kind)}, not counts")
                   + ": 'total counts' is the sum of the values per cell, so judge the thresholds with care.")
    suggested = suggest_qc_thresholds(qc)
    if ui.QC_ENABLED not in ss:  # new data: start from the suggestions, filter off
        ss[ui.QC_ENABLED] = False
        for metric, bound, key in ui.qc_bound_keys():
            ss[key] = ui.qc_bound_value(metric, bound, suggested.get(metric, {}).get(bound))
    # each change is applied to the data in its callback too: one followed at once by another page
    # (one rerun of that page, in which this code does not run) reaches the data all the same
    enabled = st.toggle("Mark low-quality cells as filtered", key=ui.QC_ENABLED, on_change=ui.apply_qc_choice,
                        help="Filtered cells are not predicted but keep their row, marked 'filtered (QC)', "
                             "in every table and file.")
    if enabled:
        st.caption(f"Suggested bounds: {suggested['method']}. Empty = no bound.")
        bound_keys = ui.qc_bound_keys()
        for col, metric in zip(st.columns(len(QC_METRICS)), QC_METRICS):
            with col:
                st.markdown(f"**{ui.md(qc_metric_name(metric))}**")  # as the plots below name it
                for _, bound, key in [k for k in bound_keys if k[0] == metric]:
                    disabled = metric not in qc or qc[metric].isna().all()
                    # value=None: an emptied field stays empty (no bound), not the minimum, 0
                    st.number_input(f"{bound} {qc_metric_name(metric)}", key=key, value=None, disabled=disabled,
                                    **ui.qc_bound_format(metric), label_visibility="collapsed",
                                    placeholder=f"no {bound}imum", on_change=ui.apply_qc_choice)
    passed = ui.apply_qc_choice()  # (as the callbacks left it, unless the data are new)
    if passed is not None:
        st.info(f"**{int(passed.sum()):,} of {adata.n_obs:,} cells pass**; {int((~passed).sum()):,} will be marked "
                "'filtered (QC)': not predicted, but kept in every output.", icon=":material/filter_alt:")
    left, right = st.columns([0.55, 0.45])
    violin = pl.qc_violin(qc, QC_METRICS, passed)
    ui.chart(violin, key="qc_violin", where=left)
    if {"total_counts", "n_genes_by_counts"} <= set(qc.columns):  # (a note said under the violins: not again)
        ui.chart(pl.qc_scatter(qc, passed), key="qc_scatter", where=right, said=pl.figure_notes(violin))

# ------------------------------------------------------------------ label and sample columns
st.subheader("Columns for evaluation and grouping")
metadata_key = ui.cell_metadata_key()
metadata = st.file_uploader(f"Cell metadata table (optional; CSV or TSV; {io.SPREADSHEET_LABEL_NOTE})",
                            type=["csv", "tsv", "txt", "gz", *io.REFUSED_UPLOAD_TYPES],
                            key=metadata_key, max_upload_size=limit_mb,
                            help="Known responses, samples ... per cell, for data that do not carry them (10x output, "
                                 "matrix files): a header line, the cell IDs in the first column (or in one named "
                                 "cell_id or barcode), then one column per annotation, e.g. cell_id,response,sample. "
                                 "Its columns are added to the data's; another table replaces them, and they go "
                                 "with the data. " + io.SPREADSHEET_UPLOAD_HELP,
                            on_change=ui.remove_cell_metadata_if_cleared, args=(metadata_key,))
removed = ss.pop(ui.CELL_METADATA_REMOVED, None)
if removed:
    st.info(f"Removed the table's columns from the data: {', '.join(ui.md(str(c)) for c in removed)}.",
            icon=":material/table_view:")
ui.add_cell_metadata(adata, metadata, metadata_key)
added = adata.uns.get(CELL_METADATA)
if added:
    said = io.cell_metadata_messages(added)
    st.info("  \n".join(ui.md(line) for line in said), icon=":material/table_view:")
    st.button("Remove the table's columns", key="btn_remove_cell_metadata", icon=":material/delete:",
              on_click=ui.remove_cell_metadata_if_cleared)
flagged = info.get("label_columns") or {}
candidates = [c for c in adata.obs.columns if not str(c).startswith("scatd_")
              and (c in flagged or adata.obs[c].nunique(dropna=True) <= 50)]
if not candidates:
    st.info("These data carry no column of known responses or samples (10x output and matrix files never do). "
            "To evaluate the predictions against known responses, or see them per sample, add a cell metadata "
            "table above: a CSV or TSV with the cell IDs in the first column and columns such as response or "
            "sample.", icon=":material/lightbulb:")
label_options = [None] + sorted(candidates, key=lambda c: (c not in flagged, str(c)))
if ss.get(state.LABEL_COLUMN) not in label_options:
    ss[state.LABEL_COLUMN] = None


def answered(key: str, column: str) -> None:
    """The radio's answer, recorded on the data as it is clicked: a click followed at once by
    another page (before this page's rerun drew it) reaches the server as one rerun of that page,
    in which this page's code below never runs."""
    data, choice = ss.get(state.ADATA), ss.get(key)
    if data is not None and column in data.obs and choice in {str(v) for v in labels.label_counts(data.obs[column]).index}:
        labels.answer_direction(data, column, choice)


left, right = st.columns(2)
with left:
    label_column = st.selectbox("Label column (known response, for evaluation)", label_options,
                                key=state.LABEL_COLUMN,
                                format_func=ui.detached(lambda c: "none (unlabelled data)" if c is None else c),
                                placeholder="none (unlabelled data)",  # shown while None is the value
                                help="Optional. With labels, the Cells page shows AUROC, AUPRC, F1, MCC and curves.")
    if label_column is not None:
        counts = labels.label_counts(adata.obs[label_column])
        n_missing = int(labels.as_text(adata.obs[label_column]).isna().sum())
        ui.table(pd.DataFrame({"value": counts.index.astype(str), "cells": counts.to_numpy()}), hide_index=True)
        if n_missing:
            st.caption(f"{counted(n_missing)} without a label {'is' if n_missing == 1 else 'are'} left out of every "
                       "score.")
        if len(counts) != 2:
            st.warning(f"'{ui.md(label_column)}' holds {len(counts)} values; resistant vs sensitive needs exactly "
                       "two. Choose another column.", icon=":material/warning:")
        else:
            values = [str(v) for v in counts.index]
            recorded = labels.label_direction(adata, label_column)
            key = f"label_resistant_{label_column}"
            if ss.get(key) not in values:
                ss[key] = recorded if recorded in values else None
            # plain words: markdown in a label is read out with its asterisks by a screen reader
            choice = st.radio(f"Which value of '{ui.md(label_column)}' means resistant?", values, key=key,
                              horizontal=True, format_func=ui.md, on_change=ui.detached(answered),
                              args=(key, label_column),
                              help="Datasets disagree: SCAD's 'response' column is 1 = sensitive. The other value "
                                   "means sensitive. The answer is used on every page and in every report.")
            if choice is None:
                st.warning("Say which value means resistant: numbers like 0/1 are never guessed, and the "
                           "evaluation stays off until you do.", icon=":material/help:")
            else:  # recorded, and how: a guess left as it was is "recognised from the words", not a choice
                guessed = labels.guess_label_direction(adata.obs[label_column]) == choice
                how = labels.DIRECTION_RECOGNISED if guessed else labels.DIRECTION_CHOSEN
                stored = adata.uns.get("scatd_labels", {}).get(label_column, {})
                if stored.get("resistant") != choice or stored.get("how", labels.DIRECTION_CHOSEN) != how:
                    labels.set_label_direction(adata, label_column, choice, how=how)
            if choice is not None and labels.guess_label_direction(adata.obs[label_column]) == choice:
                st.caption(f"'{ui.md(choice)}' was recognised from the words; change it if that is wrong.")
group_options = [None] + candidates
if ss.get(state.SAMPLE_COLUMN) not in group_options:
    ss[state.SAMPLE_COLUMN] = None
with right:
    st.selectbox("Sample / batch column", group_options, key=state.SAMPLE_COLUMN,
                 format_func=ui.detached(lambda c: "none" if c is None else c), placeholder="none",
                 help="Optional. The Cells page shows the fraction of resistant cells per sample.")

# again with the QC filter and columns as they now stand (the same prediction is kept, a new mask
# stops it and starts one for the mask)
ui.start_prediction_ahead(adata, ui.settled_model())
st.divider()
ui.link("Model", "Next: choose a model", ":material/arrow_forward:")
