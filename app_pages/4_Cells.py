"""Step 4, Cells: threshold and its calibration, UMAP, resistant fraction per group, evaluation."""

import numpy as np
import pandas as pd
import streamlit as st

from scatd_app import state, ui
from scatd_core._words import counted, sentence_start
from scatd_core import embed, export, metrics, pl
from scatd_core._keys import CLUSTER, PROB, PROB_SD, SCORED
from scatd_core.errors import ScatdError
from scatd_core.inputs import left_out_label
from scatd_core.labels import label_counts, label_direction, shown_labels, shown_meanings
from scatd_core.predict import calibrate, set_threshold, summary

ss = st.session_state
st.title("4 · Cells")
if not state.has_prediction():
    ui.need("result")
adata = ss[state.ADATA]
info = adata.uns["scatd"]
if info["model"].get("demo"):
    st.badge("demo model (simulated data)", color="orange")
label_column = ss.get(state.LABEL_COLUMN) if ss.get(state.LABEL_COLUMN) in adata.obs else None
direction = label_direction(adata, label_column) if label_column else None

# ------------------------------------------------------------------ threshold and calibration
st.subheader("Decision threshold")
thr = info["threshold"]
default_threshold = float(info["model"]["default_threshold"])


def on_slider() -> None:
    set_threshold(adata, float(ss["cells_threshold"]), "user", detail="set by hand on the Cells page")


def use(action) -> None:
    try:
        action()
    except ScatdError as exc:
        ss["cells_calibration_error"] = exc
    ss["cells_threshold"] = float(adata.uns["scatd"]["threshold"]["value"])


ss["cells_threshold"] = float(thr["value"])
left, right = st.columns([0.6, 0.4])
with left:
    st.slider("Decision threshold on P(resistant)", 0.0, 1.0, step=0.001, format="%.3f", key="cells_threshold",
              on_change=ui.detached(on_slider), help="Cells with P(resistant) above it are called resistant. Moving it "
              "relabels the cells without recomputing anything.")
    if thr["calibrated"]:
        st.success(f"Calibrated: {ui.md(thr['detail'])}.", icon=":material/check_circle:")
    else:
        where = f"{ui.md(thr.get('detail') or thr['source'])} ({float(thr['value']):.3g})"
        st.warning(f"**Uncalibrated**: {where}. The share called resistant may be far from the truth; calibrate "
                   "it with an expected fraction or labelled cells under **Calibrate**.", icon=":material/tune:")
with right:
    st.markdown("**Calibrate**")
    ss.setdefault("cells_expected_fraction", 0.3)
    c = st.columns([0.5, 0.5], vertical_alignment="bottom")
    c[0].number_input("Expected resistant fraction", 0.01, 0.99, step=0.05, key="cells_expected_fraction",
                                 help="From another assay or prior knowledge: the threshold then calls that share "
                                      "of the cells resistant.")
    c[1].button("Apply", key="btn_fraction",  # short: at 200% zoom "Use this fraction" was cut to "Use this fract…"
                help="Set the threshold so that this fraction of the scored cells is called resistant.",
                on_click=ui.detached(use),
                args=(ui.detached(lambda: calibrate(adata, expected_fraction=float(ss["cells_expected_fraction"]))),))
    if label_column and direction is not None:  # short labels: at 1280 px "From labels: Youden's J" was cut
        st.caption(f"Or from the labelled cells of '{ui.md(label_column)}':")
        c = st.columns(2)
        c[0].button("Youden's J", key="btn_youden",
                    on_click=ui.detached(use),
                    args=(ui.detached(lambda: calibrate(adata, label_column=label_column, method="youden")),),
                    help=f"From the labelled cells of '{ui.md(label_column)}' (at least 2 per class): the "
                         "threshold with the best sensitivity + specificity.")
        c[1].button("Best MCC", key="btn_mcc",
                    on_click=ui.detached(use),
                    args=(ui.detached(lambda: calibrate(adata, label_column=label_column, method="mcc")),),
                    help=f"From the labelled cells of '{ui.md(label_column)}' (at least 2 per class): the "
                         "threshold with the best Matthews correlation.")
    st.button(f"Back to the model default ({default_threshold:.3g})", key="btn_threshold_default",
              on_click=ui.detached(use),
              args=(ui.detached(lambda: set_threshold(adata, default_threshold, "model default")),))
if ss.get("cells_calibration_error") is not None:
    ui.show_error(ss.pop("cells_calibration_error"))

counts = summary(adata)
c = st.columns(5)
c[0].metric("Resistant", f"{counts['n_resistant']:,}")
c[1].metric("Sensitive", f"{counts['n_sensitive']:,}")
c[2].metric("Fraction resistant", "—" if counts["fraction_resistant"] is None else f"{counts['fraction_resistant']:.1%}",
            delta=None if counts["calibrated"] else "uncalibrated", delta_color="off", delta_arrow="off")
c[3].metric("Not scored", f"{counts['n_not_scored']:,}")
c[4].metric(sentence_start(left_out_label(info)), f"{counts['n_filtered']:,}")  # "Filtered (QC)"

# ------------------------------------------------------------------ page layout
# The UMAP may still be computing (it follows the prediction in the background, or starts here):
# the page first draws what does not depend on it (the ranking's controls and the agreement with
# known labels), then the UMAP and the parts that show its clusters, each into its own place.
st.subheader("UMAP")
ss.setdefault("cells_basis", "latent")
ctl = st.columns([0.3, 0.7])
basis = ctl[0].segmented_control("Space", embed.BASES, key="cells_basis", required=True,
                                 format_func={"latent": "model latent", "expression": "expression"}.get,
                                 help="Latent: what the model sees. Expression: PCA of log-normalised expression.")
umap_area = st.container()

st.subheader("Cells most likely resistant")
st.caption("A ranking needs no threshold: it is the same whether or not the calls are calibrated.")
n_scored = int(adata.obs[SCORED].sum())
ss.setdefault("cells_top_k", min(50, n_scored))
top_k = st.number_input("How many", min_value=1, max_value=max(n_scored, 1), step=10, key="cells_top_k")
if label_column and direction is not None:
    from scatd_core.labels import encode_column
    from scatd_core.training_cells import without_training_cells

    truth = without_training_cells(adata, encode_column(adata, label_column))  # not the cells that trained it
    labelled = int(np.isfinite(truth[adata.obs[SCORED].to_numpy(dtype=bool)]).sum())
    if labelled:
        prob = adata.obs[PROB].to_numpy(dtype=np.float64)
        k_eval = min(int(top_k), labelled)
        st.metric(f"Resistant among the top {k_eval:,} labelled cells", f"{metrics.precision_at_k(truth, prob, k_eval):.1%}",
                  help=f"'{ui.md(label_column)}': the share of truly resistant cells among the labelled cells ranked "
                       "highest. "
                       f"All labelled cells: {np.nanmean(truth[np.isfinite(prob)]):.1%} resistant.")
top_area = st.container()  # the table lists each cell's cluster

st.subheader("Resistant fraction per group")
composition_area = st.container()  # the clusters are one of the groupings

# ------------------------------------------------------------------ evaluation
st.subheader("Agreement with known labels")
if not label_column:
    st.info("No label column is chosen, so there is nothing to evaluate against. If your data has known "
            "responses, choose the column on the Data page to see AUROC, AUPRC, F1, MCC and the curves.",
            icon=":material/info:")
elif len(label_counts(adata.obs[label_column])) != 2:
    values = ", ".join(f"'{ui.md(v)}'" for v in label_counts(adata.obs[label_column]).index[:5])
    st.info(f"'{ui.md(label_column)}' holds {counted(len(label_counts(adata.obs[label_column])), 'value')} ({values}); AUROC, "
            "AUPRC, MCC and the curves need cells of exactly two classes, resistant and sensitive.",
            icon=":material/info:")
elif direction is None:
    st.info(f"Say which value of '{ui.md(label_column)}' means resistant on the Data page to see the evaluation.",
            icon=":material/help:")
    ui.link("Data", "Go to Data", ":material/arrow_forward:")
else:
    try:
        evaluation, roc, pr = metrics.evaluate_column(adata, label_column)
    except ScatdError as exc:
        ui.show_error(exc)
    else:
        if evaluation.ranks_reversed:
            low, high = metrics.interval_ends(*evaluation.auroc_ci)
            st.error(f"**Check the label direction.** AUROC {evaluation.auroc:.3f} is below 0.5 beyond chance "
                     f"(95% interval {low}-{high}): the model ranks the cells the wrong way round against "
                     f"'{ui.md(label_column)}' with resistant = '{ui.md(direction)}'. If that value actually means "
                     "sensitive, change it on the Data page.", icon=":material/swap_vert:")
            ui.link("Data", "Change the label direction", ":material/arrow_forward:")
        st.caption(f"'{ui.md(label_column)}', resistant = '{ui.md(direction)}': {evaluation.n_evaluated:,} cells "
                   f"({evaluation.n_positive:,} resistant, {evaluation.n_negative:,} sensitive). "
                   + ui.md(" ".join(n for n in evaluation.notes if not n.startswith("AUROC is below"))))
        c = st.columns(6)
        low, high = metrics.interval_ends(*evaluation.auroc_ci, 2)
        c[0].metric("AUROC", f"{evaluation.auroc:.3f}", delta=f"95% CI {low}-{high}", delta_color="off",
                    delta_arrow="off", help="0.5 is chance. The interval (Hanley-McNeil) shows how much these "
                    "cells pin it down: when it includes 0.5 they do not show the model separating the labels.")
        c[1].metric("AUPRC", f"{evaluation.auprc:.3f}", delta=f"chance {evaluation.auprc_chance:.2f}",
                    delta_color="off", delta_arrow="off", help="A ranking by chance scores the share of resistant "
                    "cells among those evaluated.")
        undefined = evaluation.undefined  # e.g. precision with no cell called resistant: 0 of 0, not 0
        for col, (name, key) in zip(c[2:], [("F1", "f1"), ("MCC", "mcc"), ("Precision", "precision"),
                                            ("Recall", "recall")]):
            value = getattr(evaluation, key)
            col.metric(name, "—" if key in undefined else f"{value:.3f}",
                       help=f"Undefined: {undefined[key]}." if key in undefined else None)
        c = st.columns(3)
        ui.chart(pl.roc_figure(roc, evaluation.auroc), key="cells_roc", where=c[0])
        ui.chart(pl.pr_figure(pr, evaluation.auprc, evaluation.n_positive / evaluation.n_evaluated),
                 key="cells_pr", where=c[1])
        ui.chart(pl.confusion_figure(evaluation.confusion, evaluation.positive_label,
                                     evaluation.negative_label), key="cells_confusion", where=c[2])

st.subheader("Cells")
table_area = st.container()  # each cell's cluster is one of its columns
st.divider()
ui.link("Biomarkers", "Next: biomarkers", ":material/arrow_forward:")
ui.link("Report", "Or go to the report", ":material/download:")

# ------------------------------------------------------------------ UMAP
labels = adata.obs["scatd_label"]
colour_options = {"P(resistant)": (adata.obs[PROB].to_numpy(), False, (0.0, 1.0), pl.PROB_SCALE),
                  "called label": (labels, True, None, None)}
if PROB_SD in adata.obs:
    colour_options["uncertainty (sd of P)"] = (adata.obs[PROB_SD].to_numpy(), False,
                                               pl.sd_colour_range(adata.obs[PROB_SD]), "Viridis")
colour_options["Leiden cluster"] = None  # computed with the UMAP, just below
legend_colours = {}  # per colouring: the colour of each category that means resistant or sensitive
if label_column and label_column in adata.obs:  # coloured by what its values mean (its declared direction)
    colour_options[label_column] = (shown_labels(adata, label_column), True, None, None)
    legend_colours[label_column] = {name: pl.COLORS[meaning]
                                    for name, meaning in shown_meanings(adata, label_column).items()}
for col in [ss.get(state.SAMPLE_COLUMN)] + list(adata.obs.columns):
    if not col or col in colour_options or str(col).startswith("scatd_"):
        continue
    values = adata.obs[col]
    categories = pl.colour_as_categories(values, str(col))  # whole-number cluster ids too: one colour each
    if not categories or values.nunique(dropna=True) <= 100:
        colour_options[col] = (values.to_numpy(), categories, None, "Viridis")
if ss.get("cells_colour") not in colour_options:
    ss["cells_colour"] = "P(resistant)"
colour = ctl[1].selectbox("Colour by", list(colour_options), key="cells_colour")  # usable while the UMAP computes
emb_info = None
too_few = embed.not_computed_note(adata, basis)  # 2-4 cells: no UMAP, and nothing wrong
with umap_area:
    if too_few:
        st.info(too_few, icon=":material/scatter_plot:")
    stopped, asked = st.empty(), False
    if ui.embedding_declined(basis):  # Cancel was clicked: computed again only when asked
        with stopped.container():
            st.info("The UMAP and clusters were stopped before they finished.", icon=":material/block:")
            asked = st.button(f"Compute the UMAP and clusters of {adata.n_obs:,} cells", key="btn_cells_umap",
                              icon=":material/play_arrow:")
    try:
        emb_info = None if too_few else ui.embedding(adata, basis, asked=asked)
    except ScatdError as exc:
        ui.show_error(exc)
    if emb_info is not None:
        stopped.empty()
if CLUSTER in adata.obs:
    colour_options["Leiden cluster"] = (adata.obs[CLUSTER].astype(str).to_numpy(), True, None, None)
elif colour == "Leiden cluster":
    colour = "P(resistant)"  # no clusters (the UMAP could not be computed): the default colouring
if emb_info is not None:
    values, categorical, crange, scale = colour_options[colour]
    fig = pl.umap_figure(np.asarray(adata.obsm["X_umap"]), values, name=colour, categorical=categorical,
                         color_range=crange, colorscale=scale or pl.PROB_SCALE, cell_ids=adata.obs_names.astype(str),
                         colors=legend_colours.get(colour),
                         # the notes as text under the chart (they wrap on a phone); the fit on a
                         # subsample and the cells without coordinates: in the page's own caption below
                         notes_below=True, missing_note=False,
                         # blue/red: the calls at the threshold in use
                         threshold=float(info["threshold"]["value"]) if colour == "P(resistant)" else None)
    with umap_area:
        ui.chart(fig, key="cells_umap")
        if colour == "uncertainty (sd of P)":
            st.caption(ui.md(export.spread_note(info['params'].get('prob_resistant_sd', 'over the draws'))))
        excluded = emb_info.get("n_excluded", 0)
        one = excluded == 1
        st.caption((f"{counted(excluded)} {'has' if one else 'have'} no {basis} coordinates (not scored or filtered) "
                    f"and {'is' if one else 'are'} not shown; {'it keeps its row' if one else 'they keep their rows'} "
                    "in every download. " if excluded else "")
                   + embed.umap_caption(emb_info))
        if emb_info.get("original_umap"):  # the data brought a UMAP: kept, and said where
            st.caption(ui.md(embed.original_umap_note(str(emb_info["original_umap"]))))

# ------------------------------------------------------------------ ranking table
top = export.top_cells(adata, int(top_k), [c for c in (label_column, ss.get(state.SAMPLE_COLUMN)) if c],
                       label_column=label_column)
ui.cells_table(top, where=top_area, hide_index=True, height=250)

# ------------------------------------------------------------------ composition
group_options = {CLUSTER: "Leiden cluster"} if CLUSTER in adata.obs else {}
for col in [ss.get(state.SAMPLE_COLUMN)] + list(adata.obs.columns):
    if col and col not in group_options and not str(col).startswith("scatd_") and col != label_column \
            and not pd.api.types.is_float_dtype(adata.obs[col]) and adata.obs[col].nunique() <= 50:
        group_options[col] = col
with composition_area:
    if group_options:
        sample = ss.get(state.SAMPLE_COLUMN)
        if ss.get("cells_group") not in group_options or ss.get("cells_group_sample") != sample:
            # new options, or a new sample column chosen on the Data page: group by it again
            ss["cells_group"] = sample if sample in group_options else next(iter(group_options))
            ss["cells_group_sample"] = sample
        group = st.selectbox("Group by", list(group_options), key="cells_group", format_func=group_options.get)
        table = metrics.group_table(adata, group)
        left, right = st.columns([0.55, 0.45])
        ui.chart(pl.composition_figure(table, group_options[group]), key="cells_groups", where=left)
        with right:
            ui.group_table(table)
    else:
        st.caption("No cluster or sample column to group by.")

# ------------------------------------------------------------------ table
cells_table = export.predictions_table(adata, [c for c in (label_column, ss.get(state.SAMPLE_COLUMN)) if c],
                                        label_column=label_column)
with table_area:
    ui.cells_table(cells_table.head(5000), hide_index=True, height=300)
    if len(cells_table) > 5000:
        st.caption(f"The first 5,000 of {len(cells_table):,} cells; predictions.csv on the Report page has them all.")
