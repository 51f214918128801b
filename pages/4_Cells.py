"""Step 4, Cells: UMAP, threshold, resistant fraction per group and, with labels, the evaluation."""

import numpy as np
import pandas as pd
import streamlit as st

from scatd_app import state, ui
from scatd_core import embed, metrics, report
from scatd_core.errors import ScatdError
from scatd_core.predict import PROB_KEY, SD_KEY

ss = st.session_state
st.title("4 · Cells")
result = ss.get(state.RESULT)
if result is None:
    ui.need("result")
info = result.uns["scatd"]
if info["model"].get("demo"):
    st.badge("demo model (simulated data)", color="orange")

# ------------------------------------------------------------------ threshold
default_threshold = float(info["params"]["threshold"])
if ss.get(state.THRESHOLD) is None:
    ss[state.THRESHOLD] = default_threshold
label_column = ss.get(state.LABEL_COLUMN)
positive = ss.get(ui.POSITIVE_CLASS)


def set_threshold(value: float) -> None:
    ss[state.THRESHOLD] = float(np.clip(value, 0.0, 1.0))


left, right = st.columns([0.65, 0.35], vertical_alignment="bottom")
threshold = left.slider("Decision threshold on P(resistant)", 0.0, 1.0, step=0.001, format="%.3f",
                        key=state.THRESHOLD, help="Cells with P(resistant) above it are called resistant. "
                        "Moving it relabels the cells without recomputing anything.")
right.button(f"Model default ({default_threshold:.3g})", on_click=set_threshold, args=(default_threshold,),
             key="btn_threshold_default")
counts = report.summary(result, threshold)
c = st.columns(5)
c[0].metric("Resistant", f"{counts['n_resistant']:,}")
c[1].metric("Sensitive", f"{counts['n_sensitive']:,}")
c[2].metric("Fraction resistant", "—" if counts["fraction_resistant"] is None else f"{counts['fraction_resistant']:.1%}")
c[3].metric("Not scored", f"{counts['n_not_scored']:,}")
c[4].metric("Filtered (QC)", f"{counts['n_filtered']:,}")
labels = report.labels_at(result, threshold)

# ------------------------------------------------------------------ UMAP
st.subheader("UMAP")
ss.setdefault("cells_basis", "latent")
ctl = st.columns([0.3, 0.7])
basis = ctl[0].segmented_control("Space", embed.BASES, key="cells_basis", required=True,
                                 format_func={"latent": "model latent", "expression": "expression"}.get,
                                 help="Latent: what the model sees. Expression: PCA of log-normalised expression.")
colour_options = {"P(resistant)": (result.obs[PROB_KEY].to_numpy(), False, (0.0, 1.0), report.PROB_SCALE),
                  "called label": (labels, True, None, None)}
if SD_KEY in result.obs:
    colour_options["uncertainty (sd of P)"] = (result.obs[SD_KEY].to_numpy(), False, None, "Viridis")

n_cells = result.n_obs
try:
    with st.spinner(f"Computing the UMAP and clusters of {n_cells:,} cells (about "
                    f"{max(5, n_cells // 500)} s the first time)…"):
        emb = ui.embedding(ss[state.RESULT_TOKEN], basis, 15, 0.5, 1.0, 0, result)
    first = "X_umap" not in result.obsm
    embed.store(result, emb)
    if first:
        st.rerun()  # so the sidebar shows this step as done
except ScatdError as exc:
    ui.show_error(exc)
    emb = None
if emb is not None and emb.clusters is not None:
    colour_options["Leiden cluster"] = (np.asarray(emb.clusters.astype(str)), True, None, None)
for col in [label_column, ss.get(state.SAMPLE_COLUMN)] + list(result.obs.columns):
    if not col or col in colour_options or str(col).startswith("scatd_"):
        continue
    values = result.obs[col]
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    if numeric or values.nunique(dropna=True) <= 100:
        colour_options[col] = (values.to_numpy(), not numeric, None, "Viridis")
if ss.get("cells_colour") not in colour_options:
    ss["cells_colour"] = "P(resistant)"
colour = ctl[1].selectbox("Colour by", list(colour_options), key="cells_colour")
if emb is not None:
    values, categorical, crange, scale = colour_options[colour]
    fig = report.umap_figure(emb.coords, values, name=colour, categorical=categorical, color_range=crange,
                             colorscale=scale or report.PROB_SCALE, cell_ids=result.obs_names.astype(str))
    st.plotly_chart(fig, key="cells_umap")
    excluded = emb.info.get("n_excluded", 0)
    if excluded:
        st.caption(f"{excluded:,} cell(s) have no {basis} coordinates (not scored or filtered) and are not "
                   f"shown; they keep their rows in every download. UMAP of {emb.info['n_embedded']:,} cells, "
                   f"{emb.info.get('n_clusters', 0)} Leiden clusters.")
    else:
        st.caption(f"UMAP of {emb.info['n_embedded']:,} cells ({emb.info['input']}); "
                   f"{emb.info.get('n_clusters', 0)} Leiden clusters on the latent space.")

# ------------------------------------------------------------------ composition
st.subheader("Resistant fraction per group")
group_options = {}
if "scatd_cluster" in result.obs:
    group_options["scatd_cluster"] = "Leiden cluster"
for col in [ss.get(state.SAMPLE_COLUMN)] + list(result.obs.columns):
    if col and col not in group_options and not str(col).startswith("scatd_") and col != label_column \
            and not pd.api.types.is_float_dtype(result.obs[col]) and result.obs[col].nunique() <= 50:
        group_options[col] = col
if group_options:
    if ss.get("cells_group") not in group_options:
        ss["cells_group"] = ss.get(state.SAMPLE_COLUMN) if ss.get(state.SAMPLE_COLUMN) in group_options \
            else next(iter(group_options))
    group = st.selectbox("Group by", list(group_options), key="cells_group", format_func=group_options.get)
    table = report.group_table(result, group, threshold)
    left, right = st.columns([0.6, 0.4])
    left.plotly_chart(report.composition_figure(table, group_options[group]), key="cells_groups")
    right.dataframe(table, hide_index=True, column_config={
        "fraction_resistant": st.column_config.ProgressColumn("fraction resistant", min_value=0.0, max_value=1.0,
                                                              format="percent")})
else:
    st.caption("No cluster or sample column to group by.")

# ------------------------------------------------------------------ evaluation
st.subheader("Agreement with known labels")
if not label_column:
    st.info("No label column is chosen, so there is nothing to evaluate against. If your data has known "
            "responses, choose the column on the Data page to see AUROC, AUPRC, F1, MCC and the curves.",
            icon=":material/info:")
elif label_column not in result.obs:
    st.info(f"The label column '{label_column}' is not in these results; run the prediction again.")
else:
    try:
        evaluation, roc, pr = report.evaluate_result(result, label_column, positive, threshold)
    except ScatdError as exc:
        ui.show_error(exc)
    else:
        st.caption(f"'{label_column}', resistant = '{positive}': {evaluation.n_evaluated:,} cells "
                   f"({evaluation.n_positive:,} resistant, {evaluation.n_negative:,} sensitive). "
                   + " ".join(evaluation.notes))
        c = st.columns(6)
        for col, (name, value) in zip(c, [("AUROC", evaluation.auroc), ("AUPRC", evaluation.auprc),
                                          ("F1", evaluation.f1), ("MCC", evaluation.mcc),
                                          ("Precision", evaluation.precision), ("Recall", evaluation.recall)]):
            col.metric(name, f"{value:.3f}")
        c = st.columns(3)
        c[0].plotly_chart(report.roc_figure(roc, evaluation.auroc), key="cells_roc")
        c[1].plotly_chart(report.pr_figure(pr, evaluation.auprc, evaluation.n_positive / evaluation.n_evaluated),
                          key="cells_pr")
        c[2].plotly_chart(report.confusion_figure(evaluation.confusion, evaluation.positive_label,
                                                  evaluation.negative_label), key="cells_confusion")
        st.markdown("**Threshold helper**")
        y = metrics.encode_labels(result.obs[label_column], positive)
        prob = result.obs[PROB_KEY].to_numpy()
        h = st.columns([0.3, 0.3, 0.4], vertical_alignment="bottom")
        youden = metrics.youden_threshold(y, prob)
        h[0].button(f"Youden's J: {youden:.3f}", on_click=set_threshold, args=(youden,), key="btn_youden",
                    help="Maximises sensitivity + specificity - 1.")
        ss.setdefault("cells_target_precision", 0.9)
        target = h[1].number_input("Target precision", 0.05, 1.0, step=0.05, key="cells_target_precision")
        at_precision = metrics.precision_threshold(y, prob, float(target))
        if at_precision is None:
            h[2].caption(f"No threshold reaches a precision of {target:.2f}.")
        else:
            h[2].button(f"Lowest threshold with precision ≥ {target:.2f}: {at_precision:.3f}",
                        on_click=set_threshold, args=(at_precision,), key="btn_precision")

# ------------------------------------------------------------------ table
st.subheader("Cells")
extra = [c for c in (label_column, ss.get(state.SAMPLE_COLUMN)) if c]
cells_table = report.predictions_table(result, threshold, extra)
st.dataframe(cells_table.head(5000), hide_index=True, height=300)
if len(cells_table) > 5000:
    st.caption(f"The first 5,000 of {len(cells_table):,} cells; predictions.csv on the Report page has them all.")
st.divider()
ui.link("Biomarkers", "Next: biomarkers", ":material/arrow_forward:")
ui.link("Report", "Or go to the report", ":material/download:")
