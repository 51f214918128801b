"""Biomarkers: which genes push the model's predictions toward resistance or sensitivity.

Thin page over :func:`scatd_core.explain.explain` (integrated gradients, captum): settings,
progress, and the figures of :mod:`scatd_core.pl` over the result stored in the session's AnnData.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from scatd_app import jobs, session, state, ui
from scatd_core import explain as ex
from scatd_core import export, foundation, pl, scaleout
from scatd_core._keys import FOUNDATION, SCORED
from scatd_core._matrix import stored_fraction
from scatd_core._memory import size_text
from scatd_core._progress import duration, with_eta
from scatd_core.config import server_memory_bytes
from scatd_core.embed import plot_coordinates
from scatd_core.errors import ScatdError

BASELINE_HELP = {"mean": "the average cell of this dataset (default)", "zero": "no expression at all",
                 "random": "the mean of a few random cells (the original scATD default)",
                 "mix": "half mean, half random cells"}
DEFAULT_MAX_CELLS = 2000

ss = st.session_state
st.title("5 · Biomarkers")
st.caption("Rank the genes (or embedding features) by how much they move each cell's prediction: integrated "
           "gradients, or for a Geneformer model deleting each gene from the cell, next to a plain "
           "differential-expression test between the predicted groups.")
if not state.has_prediction():
    ui.need("result")
bundle = ui.current_bundle()
if bundle is None:
    ui.need("model")
adata = ss[state.ADATA]
if adata.uns["scatd"]["model"].get("demo"):
    st.badge("demo model (simulated data)", color="orange")
n_scored = int(np.asarray(adata.obs[SCORED]).sum())
threshold = adata.uns["scatd"]["threshold"]

# ------------------------------------------------------------------ settings
# VAE_sf/VAE_gf whose embeddings were computed here from the expression: genes through the foundation model
through_genes = bundle.input_kind == "embedding" and bundle.backbone in adata.uns.get(FOUNDATION, {})
if through_genes:
    ss.setdefault("bio_level", "genes")
    st.radio("Rank", ["genes", "features"], key="bio_level", horizontal=True, format_func={
        "genes": "Genes, through " + ("scFoundation (integrated gradients)" if bundle.backbone == "vae_sf" else
                                      "Geneformer (in-silico deletion)"),
        "features": "Embedding features (the model's direct input)"}.get)
gene_level = through_genes and ss["bio_level"] == "genes"
deletion = gene_level and bundle.backbone == "vae_gf"
# the user's choice, capped for these data (a cap is not a choice: larger data later show the choice again)
ui.capped_choice("bio_gene_cells", foundation.DEFAULT_MAX_CELLS, max(n_scored, 2))
ss.setdefault("bio_deletion_genes", foundation.DEFAULT_DELETION_GENES)
ss.setdefault("bio_baseline", "mean")
ss.setdefault("bio_target", "logit")
ss.setdefault("bio_steps", 50)
ui.capped_choice("bio_cells", DEFAULT_MAX_CELLS, max(n_scored, 2))
ss.setdefault("bio_keep", 100)
ss.setdefault("bio_seed", 0)
engine = scaleout.engine_for(adata.n_obs)
with st.form("explain_settings"):
    c1, c2, c3 = st.columns(3)
    if deletion:
        c1.number_input("Genes tested by deletion", min_value=1, max_value=2000, key="bio_deletion_genes",
                        help="The genes present in most explained cells; each is removed from every explained cell "
                             "that holds it (one Geneformer pass each).")
    else:
        zero = "every expressed gene at 0" if gene_level else ex.zero_baseline_meaning(bundle)
        c1.selectbox("Baseline", ex.BASELINES, key="bio_baseline",
                     help="; ".join(f"**{b}**: {zero if b == 'zero' else text}" for b, text in BASELINE_HELP.items()))
    c2.selectbox("Explained output", ex.TARGETS, format_func=ui.detached(lambda t: ex.TARGET_TITLES[t]),
                 key="bio_target")
    c3.number_input("Integration steps", min_value=ex.MIN_STEPS, max_value=ex.MAX_STEPS, step=10, key="bio_steps",
                    disabled=deletion, help=f"Raise it if the completeness warning appears (at most {ex.MAX_STEPS}).")
    c4, c5, c6 = st.columns(3)
    c4.number_input("Cells to explain (at most)", min_value=2, max_value=max(n_scored, 2),
                    key="bio_gene_cells" if gene_level else "bio_cells",
                    help="Larger data are subsampled, stratified by predicted label." + (
                        " Every cell costs many foundation-model passes." if gene_level else ""))
    c5.number_input("Genes with per-cell values", min_value=1, max_value=2000, key="bio_keep",
                    help="Kept for the dependence plot, the map, the h5ad and the per-cell download.")
    c6.number_input("Seed", min_value=0, step=1, key="bio_seed")
    cost = None
    if gene_level:
        seconds = foundation.explain_seconds(adata, bundle.backbone, n_cells=min(int(ss["bio_gene_cells"]), n_scored),
                                             n_steps=int(ss["bio_steps"]), n_genes=int(ss["bio_deletion_genes"]))
        if seconds is not None:
            st.caption(f"Expected time: about {duration(seconds)} on {ui.device_text()} (from the speed of the "
                       "embedding run).")
    elif engine.use_ray:
        seconds = None  # shard by shard on the cluster: the progress bar gives the time left
    else:
        cost = ex.estimate(bundle, min(int(ss["bio_cells"]), n_scored), n_steps=int(ss["bio_steps"]),
                           keep_top=int(ss["bio_keep"]), density=stored_fraction(adata.X))
        seconds = cost["seconds"]
        st.caption(f"Expected: about {duration(max(seconds, 1))} on {ui.device_text()}, and up to "
                   f"{size_text(cost['bytes'])} of memory while it runs.")
    long = seconds is not None and seconds > ui.LONG_CPU_SECONDS and not ui.device_text().startswith("CUDA")
    confirmed = st.checkbox("Run it anyway", key="bio_confirm_long") if long else True
    submitted = st.form_submit_button("Compute gene ranking", type="primary")
settings = {"baseline": "mean" if deletion else ss["bio_baseline"], "target": ss["bio_target"],
            "n_steps": int(ss["bio_steps"]),
            "max_cells": int(min(ss["bio_gene_cells" if gene_level else "bio_cells"], max(n_scored, 2))),
            "keep_top": int(ss["bio_keep"]), "seed": int(ss["bio_seed"])}
if gene_level:
    settings["n_genes"] = int(ss["bio_deletion_genes"])
token = ui.token_of(ss.get(state.PREDICTION), settings, threshold["value"], gene_level)
free = session.free_memory() if cost is not None else None
if engine.use_ray and not gene_level:
    st.info("The integrated gradients of the chosen cells run on Ray, shard by shard, as the prediction did (a "
            "large dataset, or the administrator's cluster); the ranking is the one a single process gives.",
            icon=":material/hub:")

ui.say_if_stopped(state.EXPLAIN_RUNNING, "The gene ranking was stopped before it finished; the ranking shown before "
                  "(if any) is kept.")
if submitted and long and not confirmed:
    st.warning(f"This takes about {duration(seconds)} on the CPU: tick **Run it anyway**, or explain fewer cells.",
               icon=":material/hourglass:")
elif submitted and free is not None and cost["bytes"] > free:
    fits = max(0, free - (cost["bytes"] - settings["max_cells"] * cost["bytes_per_cell"])) // cost["bytes_per_cell"]
    st.error(f"**Explaining {settings['max_cells']:,} cells needs up to {size_text(cost['bytes'])} of memory while it "
             f"runs; this server has {size_text(max(free, 0))} free now** "
             f"({session.memory_use(free, server_memory_bytes())}).\n\n" + (f"Explain at most {fits:,} cells (a subsample stratified by predicted label), or try "
                               "again later." if fits >= 2 else session.waiting_advice()), icon=":material/memory:")
elif submitted:
    try:
        with ui.long_run(state.EXPLAIN_RUNNING, "Starting…", "btn_cancel_explain",
                         "Stops the run; the ranking shown before (if any) is kept.") as bar:
            report = ui.progress_to(bar)
            with jobs.computing("the gene ranking", cancel_button=False):
                if gene_level:  # its messages carry the time left
                    foundation.explain_genes(adata, bundle, inputs=ui.model_inputs(adata, bundle), progress=report,
                                             **settings)
                elif engine.use_ray:  # a dataset above the configured size, or an admin's cluster: same ranking
                    scaleout.explain_in_folder(adata, bundle, session.folder() / "scaleout", token, engine,
                                               progress=with_eta(report), **settings)
                else:
                    ex.explain(adata, bundle, inputs=ui.model_inputs(adata, bundle), progress=report,  # says the time left
                               **settings)
                # stored: finished (and for these settings), whatever interrupts this run's next Streamlit call
                ss[state.EXPLAIN_RUNNING], ss[state.BIOMARKERS] = False, token
    except ScatdError as exc:
        ui.show_error(exc)
        ui.stop()

expl = ex.from_adata(adata)
if expl is None:
    st.info("Choose the settings and press **Compute gene ranking**. The progress bar gives the time left.")
    ui.stop()
info = expl.info
stale = ex.out_of_date(adata)
if stale:
    st.warning(ui.md(stale), icon=":material/update:")  # the button above computes them again
elif ss.get(state.BIOMARKERS) != token:
    st.info("The results below are for earlier settings or another threshold (the predicted groups depend on it); "
            "press **Compute gene ranking** to update them.")

# ------------------------------------------------------------------ summary
st.caption(ui.md(info["statement"]))
for w in info["warnings"]:
    st.warning(ui.md(w))
for n in info["notes"]:
    st.info(ui.md(n))
if info["differential_expression"]["method"] == "none" and info["differential_expression"].get("reason"):
    st.info(ui.md(f"No differential-expression test between the predicted groups: "
                  f"{info['differential_expression']['reason']}."), icon=":material/science:")
comp, agree, cells_info = info["completeness"], info["agreement"], info["cells"]
m1, m2, m3, m4 = st.columns(4)
m1.metric("Cells explained", f"{cells_info['n_explained']:,}",
          help=f"{cells_info['n_resistant']:,} predicted {ui.md(info['positive_label'])}, "
               f"{cells_info['n_sensitive']:,} {ui.md(info['negative_label'])}")
nothing = info.get("nothing_to_attribute")  # said in the first warning above
if comp and not nothing:  # in-silico deletion has no completeness property
    m2.metric("Completeness error", f"{comp['median_relative_error']:.2%}" if comp["median_relative_error"] >= 1e-4
              else "< 0.01%",
              help=f"Median over cells of |sum of attributions − (f(x) − f(baseline))| relative to the change; max "
                   f"{comp['max_relative_error']:.2%}; tolerance {comp['tolerance']:.0%}.")
if agree:
    m3.metric("Top-20 shared with DE", agree.get("top20_overlap", "–"),
              help="Genes in both the attribution top 20 and the Wilcoxon top 20 (by |score|).")
    rho = agree["spearman_abs_attribution_vs_abs_de_score"]
    n_compared, what = agree.get("n_features_compared"), f"{info['features']['level']}s"
    m4.metric("Spearman |attr| vs |DE|", f"{rho:.3f}" if isinstance(rho, (int, float)) else rho,
              help=f"Rank correlation (Spearman) of each {info['features']['level']}'s mean |attribution| with its "
                   f"|Wilcoxon score|, over all {f'{n_compared:,} ' if n_compared else ''}{what} in the data, not "
                   f"only the top ones. Most of them barely move the model and barely differ between the predicted "
                   f"groups: their order on both sides is noise, which pulls this number towards 0. A low value next "
                   f"to a large top-20 overlap is therefore expected: the two rankings agree on the strongest "
                   f"{what}, not on the noise. 1: the same order throughout; 0: no relation; below 0: opposite "
                   f"orders.")

ranking = expl.ranking
level = info["features"]["level"]
if nothing:  # every attribution is 0 (or adds up to 0): no ranking, no per-gene views
    ui.link("Report", "Next: the report", ":material/arrow_forward:")
    ui.stop()

# ------------------------------------------------------------------ ranking table
st.subheader("Ranking")
t1, t2 = st.columns([2, 1])
query = t1.text_input("Search", placeholder=f"{level} name, e.g. {ranking['feature'].iloc[0]}", key="bio_search")
top_n = t2.number_input("Show top", min_value=1, max_value=len(ranking), value=min(50, len(ranking)), step=5,
                        key="bio_top_n")
view = ranking[ranking["feature"].str.contains(query.strip(), case=False, regex=False)] if query.strip() else ranking
hide_signed_mean = ex.signed_mean_near_zero(info)  # ~0 for every gene by construction: said why below
ui.biomarker_table(view.head(int(top_n)), hide_signed_mean=hide_signed_mean, hide_index=True)
st.caption(f"Click a column header to sort. direction: {ex.direction_meaning(info['target'], level)}; DE: Wilcoxon "
           f"rank-sum between the predicted groups ({info['differential_expression'].get('data_scale', 'not computed')}).")
if hide_signed_mean:
    st.caption(ui.MEAN_BASELINE_SIGNED_MEAN)

n_bar = st.slider("Genes in the bar chart", 1, min(50, len(ranking)), min(20, len(ranking)), key="bio_n_bar")
ui.chart(pl.biomarker_bar(ranking, n_bar, info["target_title"], target=info["target"], level=level),
         key="bio_bar")

# ------------------------------------------------------------------ per-gene views
if expl.features:
    st.subheader("One gene across cells")
    gene = st.selectbox(level.capitalize(), expl.features, key="bio_gene",
                        help=f"The top {len(expl.features)} by rank (per-cell values are kept for these).")
    values, attributions = expl.feature_values(gene)
    ui.chart(pl.dependence_figure(gene, values, attributions, expl.cells["prob_resistant"].to_numpy(),
                                  expl.cells["label"].to_numpy(), expl.cells.index.to_numpy(),
                                  expl.baseline_of(gene), threshold=info.get("threshold")),
             key="bio_dependence")
    coords, how = plot_coordinates(adata)
    if how != "UMAP":
        c1, c2 = st.columns([3, 1])
        c1.caption(f"Map: {how}.")
        if c2.button("Compute UMAP", key="btn_bio_umap"):
            try:
                ui.embedding(adata, "latent", asked=True)  # the Cells page's computation: done once for both
            except ScatdError as exc:
                ui.show_error(exc)
            else:
                st.rerun()  # the map on the UMAP, its caption, and no button: drawn afresh
    what = st.radio("Colour the map by", ["attribution", "model input"], horizontal=True, key="bio_colour")
    rows = expl.cells["row"].to_numpy()
    ui.chart(pl.feature_map(coords[rows], attributions if what == "attribution" else values, gene, what,
                            "UMAP" if how == "UMAP" else "PC", expl.cells.index.to_numpy()), key="bio_map")
    if cells_info["subsampled"]:
        st.caption(f"Only the explained cells are shown ({cells_info['how']}).")

# ------------------------------------------------------------------ attribution vs DE
if info["differential_expression"]["method"] != "none":
    st.subheader("Attribution and differential expression")
    ui.chart(pl.attribution_vs_de(ranking, info["positive_label"], info["negative_label"]), key="bio_de")
    st.caption("Genes far right/left are differentially expressed; genes high up drive the model. "
               "Both at once: the model uses a gene that also differs between the predicted groups.")

# ------------------------------------------------------------------ downloads
st.subheader("Downloads")
st.caption("biomarkers.csv, the per-cell attributions (in the h5ad) and the ranking in report.html are also on the "
           "Report page.")
d1, d2 = st.columns(2)
# every file of the ranking (its metrics file too) is named at the threshold the ranking was computed at; the
# metrics file's biomarkers rows say whether the calls now use another (out_of_date)
ranked = export.biomarkers_stem(ss.get(state.DATA_NAME), adata)
d1.download_button("biomarkers.csv", export.to_csv_bytes(ranking), f"{ranked}_biomarkers.csv", "text/csv",
                   key="btn_dl_biomarkers", on_click="ignore")
d1.caption(export.explained_cells_text(info))
label_column, sample_column = ui.report_columns(adata)
try:  # metrics.csv's rows, 'biomarkers' (the cells explained) included: named as scatd explain names it
    metrics = export.metrics_table(adata, label_column, [sample_column] if sample_column else [])
except ScatdError as exc:
    d1.warning(ui.md(f"biomarkers_metrics.csv could not be made: {exc}"))
else:
    d1.download_button("biomarkers_metrics.csv", export.to_csv_bytes(metrics), f"{ranked}_biomarkers_metrics.csv",
                       "text/csv",
                       key="btn_dl_biomarker_metrics", on_click="ignore",
                       help="The run as metrics.csv records it. Its 'biomarkers' rows: how many cells were "
                            "explained, of how many scored, whether a subsample; the threshold and the predicted "
                            "groups the ranking was computed at, and whether the calls now use another threshold "
                            "(out_of_date); the method, explained output, baseline, steps, seed and completeness.")
if expl.features:
    k = d2.number_input("Per-cell attributions: top genes", 1, len(expl.features), min(20, len(expl.features)),
                        key="bio_per_cell_k")
    d2.download_button("per_cell_attributions.csv", export.to_csv_bytes(expl.per_cell(int(k)), index=True),
                       f"{ranked}_per_cell_attributions.csv", "text/csv", key="btn_dl_per_cell",
                       on_click="ignore")

ui.link("Report", "Next: the report", ":material/arrow_forward:")
