"""Biomarkers: which genes push the model's predictions toward resistance or sensitivity.

Thin page over :func:`scatd_core.explain.explain` (integrated gradients, captum): settings,
progress, and plots of the result cached in ``st.session_state[EXPLAIN]``.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from scatd_app import state as S
from scatd_app import ui
from scatd_core.errors import ScatdError
from scatd_core.explain import BASELINES, TARGET_TITLES, TARGETS, explain, feature_names, map_coordinates
from scatd_core.predict import SCORED_KEY

DIRECTION_COLOURS = {"resistance": "#d62728", "sensitivity": "#1f77b4", "none": "#999999"}
BASELINE_HELP = {"mean": "the average cell of this dataset (default)", "zero": "no expression at all",
                 "random": "the mean of a few random cells (the original scATD default)",
                 "mix": "half mean, half random cells"}
DEFAULT_MAX_CELLS = 2000

st.title("5 · Biomarkers")
st.caption("Integrated gradients rank the model's input genes by how much they move each cell's "
           "prediction, next to a plain differential-expression test between the predicted groups.")

result = st.session_state.get(S.RESULT)
if result is None:
    ui.need("result")
bundle = ui.current_bundle()
if bundle is None:
    ui.need("model")
if result.uns.get("scatd", {}).get("model", {}).get("demo"):
    st.badge("demo model (simulated data)", color="orange")

n_scored = int(np.asarray(result.obs[SCORED_KEY]).sum()) if SCORED_KEY in result.obs else result.n_obs
threshold = st.session_state.get(S.THRESHOLD)

# ------------------------------------------------------------------ settings
with st.form("explain_settings"):
    c1, c2, c3 = st.columns(3)
    baseline = c1.selectbox("Baseline", BASELINES, index=BASELINES.index("mean"), key="bio_baseline",
                            help="; ".join(f"**{b}**: {text}" for b, text in BASELINE_HELP.items()))
    target = c2.selectbox("Explained output", TARGETS, format_func=lambda t: TARGET_TITLES[t], key="bio_target")
    n_steps = c3.number_input("Integration steps", min_value=4, max_value=500, value=50, step=10, key="bio_steps",
                              help="Raise it if the completeness warning appears.")
    c4, c5, c6 = st.columns(3)
    max_cells = c4.number_input("Cells to explain (at most)", min_value=2, max_value=max(n_scored, 2),
                                value=max(2, min(n_scored, DEFAULT_MAX_CELLS)), key="bio_cells",
                                help="Larger data are subsampled, stratified by predicted label.")
    keep_top = c5.number_input("Genes with per-cell values", min_value=1, max_value=2000, value=100, key="bio_keep",
                               help="Kept for the dependence plot, the map and the per-cell download.")
    seed = c6.number_input("Seed", min_value=0, value=0, step=1, key="bio_seed")
    submitted = st.form_submit_button("Compute gene ranking", type="primary")

settings = {"baseline": baseline, "target": target, "n_steps": int(n_steps), "max_cells": int(max_cells),
            "keep_top": int(keep_top), "seed": int(seed), "threshold": threshold}
token = st.session_state.get(S.RESULT_TOKEN) or f"id{id(result)}"
key = json.dumps({"result": token, "model": str(bundle.path), **settings}, sort_keys=True, default=str)

# The result is kept per (prediction, model, settings) in session state rather than in
# st.cache_data: the run reports progress as it goes, and the AnnData is not cheaply hashable.
cached = st.session_state.get(S.EXPLAIN)
if cached is not None and json.loads(cached["key"])["result"] != token:
    cached = st.session_state[S.EXPLAIN] = None  # made for an earlier prediction

if submitted:
    bar = st.progress(0.0, text="Starting…")
    try:
        expl = explain(result, bundle, progress=lambda f, m: bar.progress(min(max(f, 0.0), 1.0), text=m),
                       **settings)
    except ScatdError as exc:
        bar.empty()
        ui.show_error(exc)
        st.stop()
    bar.empty()
    cached = st.session_state[S.EXPLAIN] = {"key": key, "result": expl}

if cached is None:
    st.info("Choose the settings and press **Compute gene ranking**. On a CPU, the published Dist_VAE "
            "takes about a second per few cells; the progress bar gives an estimate.")
    st.stop()
expl = cached["result"]
info = expl.info
if cached["key"] != key:
    st.info("The results below are for earlier settings; press **Compute gene ranking** to update them.")

# ------------------------------------------------------------------ summary
st.caption(info["statement"])
for w in info["warnings"]:
    st.warning(w)
for n in info["notes"]:
    st.info(n)
comp, agree, cells_info = info["completeness"], info["agreement"], info["cells"]
m1, m2, m3, m4 = st.columns(4)
m1.metric("Cells explained", f"{cells_info['n_explained']:,}",
          help=f"{cells_info['n_resistant']:,} predicted {info['positive_label']}, "
               f"{cells_info['n_sensitive']:,} {info['negative_label']}")
m2.metric("Completeness error", f"{comp['median_relative_error']:.2%}" if comp["median_relative_error"] >= 1e-4
          else "< 0.01%",
          help=f"Median over cells of |sum of attributions − (f(x) − f(baseline))| relative to the change; max "
               f"{comp['max_relative_error']:.2%}; tolerance {comp['tolerance']:.0%}.")
if agree:
    m3.metric("Top-20 shared with DE", agree.get("top20_overlap", "–"),
              help="Genes in both the attribution top 20 and the Wilcoxon top 20 (by |score|).")
    m4.metric("Spearman |attr| vs |DE|", agree["spearman_abs_attribution_vs_abs_de_score"])

ranking = expl.ranking
level = info["features"]["level"]

# ------------------------------------------------------------------ ranking table
st.subheader("Ranking")
t1, t2 = st.columns([2, 1])
query = t1.text_input("Search", placeholder=f"{level} name, e.g. {ranking['feature'].iloc[0]}", key="bio_search")
top_n = t2.number_input("Show top", min_value=1, max_value=len(ranking), value=min(50, len(ranking)), step=5)
view = ranking[ranking["feature"].str.contains(query.strip(), case=False, regex=False)] if query.strip() else ranking
st.dataframe(view.head(int(top_n)), hide_index=True, use_container_width=True,
             column_config={"mean_abs_attribution": st.column_config.NumberColumn("mean |attribution|", format="%.4g"),
                            "de_pval_adj": st.column_config.NumberColumn("DE p (adj.)", format="%.2e"),
                            "de_pval": st.column_config.NumberColumn("DE p", format="%.2e")})
st.caption("Click a column header to sort. direction: what *higher* expression does to P(resistant) "
           "(sign of the mean path gradient); DE: Wilcoxon rank-sum between the predicted groups "
           f"({info['differential_expression'].get('data_scale', 'not computed')}).")

# ------------------------------------------------------------------ bar chart
n_bar = st.slider("Genes in the bar chart", 1, min(50, len(ranking)), min(20, len(ranking)))
bars = ranking.head(n_bar).iloc[::-1]
fig = px.bar(bars, x="mean_abs_attribution", y="feature", color="direction", orientation="h",
             color_discrete_map=DIRECTION_COLOURS, hover_data=["rank", "mean_attribution_resistant",
                                                               "mean_attribution_sensitive", "de_score"],
             labels={"mean_abs_attribution": f"mean |attribution| ({info['target_title']})", "feature": ""})
fig.update_layout(height=max(300, 22 * n_bar), legend_title_text="higher expression pushes toward")
st.plotly_chart(fig, use_container_width=True)

# ------------------------------------------------------------------ per-gene views
if expl.features:
    st.subheader("One gene across cells")
    gene = st.selectbox(f"{level.capitalize()}", expl.features,
                        help=f"The top {len(expl.features)} by rank (per-cell values are kept for these).")
    values, attributions = expl.feature_values(gene)
    dep = pd.DataFrame({"input": values, "attribution": attributions,
                        "P(resistant)": expl.cells["prob_resistant"].to_numpy(),
                        "label": expl.cells["label"].to_numpy(), "cell": expl.cells.index.to_numpy()})
    fig = px.scatter(dep, x="input", y="attribution", color="P(resistant)", color_continuous_scale="RdBu_r",
                     range_color=(0, 1), hover_data=["cell", "label"],
                     labels={"input": f"{gene}: model input", "attribution": f"{gene}: attribution"})
    fig.add_hline(y=0, line_dash="dot", line_color="grey")
    fig.add_vline(x=float(expl.baseline[feature_names(bundle).index(gene)]), line_dash="dot", line_color="grey",
                  annotation_text="baseline")
    st.plotly_chart(fig, use_container_width=True)

    coords, how = map_coordinates(result)
    if how != "UMAP":
        c1, c2 = st.columns([3, 1])
        c1.caption(f"Map: {how}.")
        if c2.button("Compute UMAP", key="bio_umap"):
            from scatd_core.embed import store

            try:
                with st.spinner("UMAP of the latent space…"):
                    # the Cells page's cached computation, with its parameters: computed once for both
                    emb = ui.embedding(token, "latent", 15, 0.5, 1.0, 0, result)
                store(result, emb)
                st.rerun()
            except ScatdError as exc:
                ui.show_error(exc)
    colour_by = st.radio("Colour the map by", ["attribution", "model input"], horizontal=True)
    axis = "UMAP" if how == "UMAP" else "PC"
    rows = expl.cells["row"].to_numpy()
    cmap = pd.DataFrame({"x": coords[rows, 0], "y": coords[rows, 1],
                         gene: attributions if colour_by == "attribution" else values,
                         "label": expl.cells["label"].to_numpy(), "cell": expl.cells.index.to_numpy()})
    scale = "RdBu_r" if colour_by == "attribution" else "Viridis"
    lim = float(np.nanmax(np.abs(attributions))) if colour_by == "attribution" and len(attributions) else None
    fig = px.scatter(cmap.dropna(subset=["x", "y"]), x="x", y="y", color=gene, color_continuous_scale=scale,
                     range_color=(-lim, lim) if lim else None, hover_data=["cell", "label"],
                     labels={"x": f"{axis} 1", "y": f"{axis} 2"}, title=f"{gene}: {colour_by}")
    fig.update_traces(marker={"size": 5})
    st.plotly_chart(fig, use_container_width=True)
    if cells_info["subsampled"]:
        st.caption(f"Only the explained cells are shown ({cells_info['how']}).")

# ------------------------------------------------------------------ attribution vs DE
if info["differential_expression"]["method"] != "none":
    st.subheader("Attribution and differential expression")
    comp_df = ranking[ranking["in_data"] & np.isfinite(ranking["de_score"])]
    fig = px.scatter(comp_df, x="de_score", y="mean_abs_attribution", color="direction",
                     color_discrete_map=DIRECTION_COLOURS, hover_data=["feature", "rank", "de_rank", "de_pval_adj"],
                     log_y=bool((comp_df["mean_abs_attribution"] > 0).all()),
                     labels={"de_score": f"Wilcoxon score ({info['positive_label']} vs {info['negative_label']})",
                             "mean_abs_attribution": "mean |attribution|"})
    st.plotly_chart(fig, use_container_width=True)
    st.caption("Genes far right/left are differentially expressed; genes high up drive the model. "
               "Both at once: the model uses a gene that also differs between the predicted groups.")

# ------------------------------------------------------------------ downloads
st.subheader("Downloads")
d1, d2 = st.columns(2)
d1.download_button("biomarkers.csv", ranking.to_csv(index=False).encode(), "biomarkers.csv", "text/csv")
if expl.features:
    k = d2.number_input("Per-cell attributions: top genes", 1, len(expl.features), min(20, len(expl.features)))
    d2.download_button("per_cell_attributions.csv", expl.per_cell(int(k)).to_csv().encode(),
                       "per_cell_attributions.csv", "text/csv")

ui.link("Report", "Next: the report", ":material/arrow_forward:")
