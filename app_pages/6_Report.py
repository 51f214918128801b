"""Step 6, Report: predictions.csv, metrics.csv, biomarkers.csv, the annotated h5ad and an HTML report."""

import streamlit as st

from scatd_app import state, ui
from scatd_core import embed, explain, export
from scatd_core._keys import BIOMARKERS
from scatd_core.errors import ScatdError

ss = st.session_state
st.title("6 · Report")
if not state.has_prediction():
    ui.need("result")
adata = ss[state.ADATA]
ss[state.REPORT_SEEN] = ss.get(state.PREDICTION)  # the sidebar ticks "Report" for these results
info = adata.uns["scatd"]
thr = info["threshold"]
label_column, sample_column = ui.report_columns(adata)  # no evaluation before the direction is known
extra = [c for c in (label_column, sample_column) if c]
groups = [sample_column] if sample_column else []
stem = export.file_stem(ss.get(state.DATA_NAME), run=info)  # the data, the model's folder, the threshold
explained = export.biomarkers_table(adata) is not None
stale = explain.out_of_date(adata) if explained else None

with st.container(border=True):
    label, model_name = "demo (simulated data)", str(info["model"].get("name") or "")
    data_name = str(ss.get(state.DATA_NAME) or "")
    if label in data_name:  # the demo data's name says it already: once is enough
        model_name = model_name.replace(f" · {label}", "").replace(label, "").strip(" ·") or model_name
    heading = f"**{ui.md(data_name)}** · model **{ui.md(model_name)}**"
    if info["model"].get("demo") and label not in f"{data_name} {model_name}":
        heading += f" · {label}"
    st.markdown(heading)
    st.caption(f"Threshold {thr['value']:.3f} ({ui.md(thr['detail'])}"
               + ("" if thr["calibrated"] else ", **uncalibrated**") + f") · mode {info['params']['mode']} · "
               f"{info['params']['device']} · labels: {ui.md(label_column or 'none')} · sample column: "
               f"{ui.md(sample_column or 'none')}"
               + (" · UMAP and clusters included" if "X_umap" in adata.obsm and not embed.is_data_umap(adata) else
                  " · no UMAP or clusters: too few cells (the report says why)" if embed.too_few_cells(adata) else
                  " · the UMAP and clusters were stopped: compute them on the Cells page to include them"
                  if ui.embedding_declined(ss.get("cells_basis", "latent")) else
                  " · open the Cells page first to include the UMAP and clusters")
               + ((" · biomarkers included" + (" (**out of date**)" if stale else "")) if explained
                  else " · compute biomarkers to include them"))
if stale:
    st.warning(ui.md(stale), icon=":material/update:")
    ui.link("Biomarkers", "Compute the biomarkers again", ":material/arrow_forward:")

try:
    table = export.predictions_table(adata, extra, label_column=label_column)
    metrics_table = export.metrics_table(adata, label_column, groups)
    ranking = export.biomarkers_table(adata)
except ScatdError as exc:
    ui.show_error(exc)
    ui.stop()

# the names the buttons below give the files, as the report's footer names them
ranked = export.biomarkers_stem(ss.get(state.DATA_NAME), adata)  # at the threshold the ranking was computed at
files = [f"{stem}_predictions.csv", f"{stem}_metrics.csv"] + ([f"{ranked}_biomarkers.csv"] if ranking is not None
                                                               else []) + [f"{stem}_annotated.h5ad"]
c = st.columns(5)
with c[0]:
    st.download_button("predictions.csv", export.to_csv_bytes(table), file_name=f"{stem}_predictions.csv",
                       mime="text/csv", icon=":material/table:", type="primary", key="btn_dl_predictions",
                       on_click="ignore")
    st.caption(f"{len(table):,} rows: one per uploaded cell")
with c[1]:
    st.download_button("metrics.csv", export.to_csv_bytes(metrics_table), file_name=f"{stem}_metrics.csv",
                       mime="text/csv", icon=":material/analytics:", key="btn_dl_metrics", on_click="ignore")
    st.caption("summary, evaluation, per-group fractions")
with c[2]:
    if ranking is not None:
        st.download_button("biomarkers.csv", export.to_csv_bytes(ranking), file_name=f"{ranked}_biomarkers.csv",
                           mime="text/csv", icon=":material/genetics:", key="btn_dl_report_biomarkers",
                           on_click="ignore")
        cells_text = export.explained_cells_text(adata.uns[BIOMARKERS].get("info", {}), short=True)
        if adata.uns[BIOMARKERS].get("info", {}).get("nothing_to_attribute"):
            st.caption(f"{len(ranking):,} genes, not ranked: there was nothing to attribute (the Biomarkers page "
                       "says why)")
        else:
            st.caption(f"{len(ranking):,} genes, ranked" + (f" {cells_text} (metrics.csv records it)" if cells_text
                                                              else ""))
    else:
        st.button("biomarkers.csv", disabled=True, icon=":material/genetics:", key="btn_no_biomarkers")
        st.caption("not computed yet (Biomarkers page, link below)")
with c[3]:
    with_x = export.h5ad_download_has_x(adata)
    ui.data_download(st, "annotated .h5ad", ui.detached(lambda: export.h5ad_bytes(
                         adata, with_x=with_x, context=export.report_context(adata, label_column, groups))), adata,
                     file_name=f"{stem}_annotated.h5ad",
                     mime="application/x-hdf5", icon=":material/database:", key="btn_dl_h5ad", on_click="ignore")
    st.caption("opens in scanpy/cellxgene: obs, obsm, uns['scatd'] (the run), uns['scatd_report'] (labels, "
               "evaluation)" + ("" if with_x else ui.WITHOUT_X))
with c[4]:
    st.download_button("report.html",
                       # deferred: made when clicked, in a thread without the session (read its name now)
                       ui.detached(lambda: export.html_report(adata, label_column=label_column, group_columns=groups,
                                                              data_name=data_name, files=files).encode("utf-8")),
                       file_name=f"{stem}_report.html", mime="text/html", icon=":material/article:",
                       key="btn_dl_html", on_click="ignore")
    st.caption("self-contained: figures, parameters, provenance")
if ranking is None:  # full width: in the download's narrow column the link's words were cut ("Compute biomarkers fi…")
    ui.link("Biomarkers", "Compute the biomarkers first to add biomarkers.csv and the report's gene ranking",
            ":material/arrow_forward:")

st.subheader("Preview")
st.markdown(f"**{ui.md(files[0])}** (" + (f"the first 200 of {len(table):,} rows" if len(table) > 200 else
                                          f"{len(table):,} row{'' if len(table) == 1 else 's'}") + ")")
ui.cells_table(table.head(200), hide_index=True)
st.markdown(f"**{ui.md(files[1])}**")
ui.table(metrics_table.astype({"value": str}), hide_index=True)  # mixed numbers and text: shown as text
if ranking is not None:
    st.markdown(f"**{ui.md(files[2])}** (the top {min(len(ranking), 50):,} of {len(ranking):,} genes)")
    ui.biomarker_table(ranking.head(50), hide_index=True)
