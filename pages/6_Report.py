"""Step 6, Report: predictions.csv, metrics.csv, the annotated h5ad and a self-contained HTML report."""

import streamlit as st

from scatd_app import state, ui
from scatd_core import report
from scatd_core.errors import ScatdError

ss = st.session_state
st.title("6 · Report")
result = ss.get(state.RESULT)
if result is None:
    ui.need("result")

info = result.uns["scatd"]
threshold = float(ss.get(state.THRESHOLD) if ss.get(state.THRESHOLD) is not None else info["params"]["threshold"])
label_column = ss.get(state.LABEL_COLUMN) if ss.get(state.LABEL_COLUMN) in result.obs else None
positive = ss.get(ui.POSITIVE_CLASS)
sample_column = ss.get(state.SAMPLE_COLUMN) if ss.get(state.SAMPLE_COLUMN) in result.obs else None
extra = [c for c in (label_column, sample_column) if c]
stem = report.file_stem(ss.get(state.DATA_NAME), info["model"].get("drug"))

with st.container(border=True):
    st.markdown(f"**{ss.get(state.DATA_NAME)}** · model **{info['model'].get('name')}**"
                + (" · demo (simulated data)" if info["model"].get("demo") else ""))
    st.caption(f"Threshold {threshold:.3f} · mode {info['params']['mode']} · "
               f"{info['params']['device']} · labels: {label_column or 'none'}"
               + (f" (resistant = '{positive}')" if label_column else "")
               + f" · sample column: {sample_column or 'none'}"
               + (" · UMAP and clusters included" if "X_umap" in result.obsm else
                  " · open the Cells page first to include the UMAP and clusters"))

try:
    table = report.predictions_table(result, threshold, extra)
    evaluation = None
    if label_column:
        try:
            evaluation = report.evaluate_result(result, label_column, positive, threshold)[0]
        except ScatdError as exc:
            st.warning(f"No evaluation in metrics.csv: {exc.message}", icon=":material/warning:")
    groups = {c: report.group_table(result, c, threshold) for c in ("scatd_cluster", sample_column)
              if c and c in result.obs}
    metrics_table = report.metrics_table(result, threshold, evaluation, groups)
except ScatdError as exc:
    ui.show_error(exc)
    st.stop()

c = st.columns(4)
with c[0]:
    st.download_button("predictions.csv", report.to_csv_bytes(table), file_name=f"{stem}_predictions.csv",
                       mime="text/csv", icon=":material/table:", type="primary", key="btn_dl_predictions",
                       on_click="ignore")
    st.caption(f"{len(table):,} rows: one per uploaded cell")
with c[1]:
    st.download_button("metrics.csv", report.to_csv_bytes(metrics_table), file_name=f"{stem}_metrics.csv",
                       mime="text/csv", icon=":material/analytics:", key="btn_dl_metrics", on_click="ignore")
    st.caption("summary, evaluation, per-group fractions")
with c[2]:
    st.download_button("annotated .h5ad", lambda: report.h5ad_bytes(result), file_name=f"{stem}_annotated.h5ad",
                       mime="application/x-hdf5", icon=":material/database:", key="btn_dl_h5ad", on_click="ignore")
    st.caption("opens in scanpy/cellxgene: obs, obsm, uns['scatd']")
with c[3]:
    st.download_button("report.html",
                       lambda: report.html_report(result, threshold=threshold, label_column=label_column,
                                                  positive=positive, group_columns=[sample_column] if sample_column
                                                  else [], data_name=ss.get(state.DATA_NAME)).encode("utf-8"),
                       file_name=f"{stem}_report.html", mime="text/html", icon=":material/article:",
                       key="btn_dl_html", on_click="ignore")
    st.caption("self-contained: figures, parameters, provenance")

st.subheader("Preview")
st.dataframe(table.head(200), hide_index=True)
st.dataframe(metrics_table, hide_index=True)
