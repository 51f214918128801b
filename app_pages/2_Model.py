"""Step 2, Model: pick a drug model from the library and check the data's gene coverage before running."""

import pandas as pd
import streamlit as st

from scatd_app import state, ui
from scatd_core import foundation, io
from scatd_core._keys import FOUNDATION_EMBEDDING
from scatd_core.backbone_setup import backbone_setup, choice_label
from scatd_core.bundle import (BACKBONE_HELP, FIGSHARE_URL, backbone_group_titles, chosen_by_default_for,
                               import_card_lines, input_transform_words, who_made)
from scatd_core.errors import ScatdError
from scatd_core.inputs import InputSpec, embedding_width_error, no_model_fits, value_messages
from scatd_core.nn import BACKBONES

ss = st.session_state
st.title("2 · Model")
entries = ui.library_entries()
classifiers = [e.bundle for e in entries if e.ok and e.bundle.kind == "classifier"]
demo_data = bool(ss.get(state.IS_DEMO))
real = [b for b in classifiers if not b.is_demo]


def how_to_get_a_model() -> None:
    st.markdown(
        "A drug model is needed for your data. Get one in any of these ways:\n\n"
        f"1. **The published scATD models** ([figshare]({FIGSHARE_URL})): *Get the published scATD models* "
        "on the Model library page downloads and imports them.\n"
        "2. **Import a checkpoint** you have (a `.pth` file) on the Model library page.\n"
        "3. **Train a model** for your drug from bulk cell-line data on the Train page.")
    c = st.columns(2)
    with c[0]:
        ui.link("Model library", "Model library: get or import models", ":material/inventory_2:")
    with c[1]:
        ui.link("Train a model", "Train a model", ":material/school:")


if not classifiers:
    if ui.building("demo"):  # the demo's first build, started on another page, is running
        st.info("The demo (its data and model) is being built for this server; it goes on while you look "
                "around, and its progress is shown in the sidebar.", icon=":material/hourglass_top:")
    st.warning("**No drug model is installed yet.**", icon=":material/inventory_2:")
    how_to_get_a_model()
    if entries:
        st.subheader("Folders in the library that cannot be used")
        ui.show_library(entries)
    ui.stop()

st.caption("Installed drug models. Each is a bundle folder with its weights, genes and provenance.")
ui.show_library(entries)
offered = ui.offered_models(demo_data)
cannot = [b for b in classifiers if b.prediction_problem and (demo_data or not b.is_demo)]
if cannot:
    titles = ui.model_names(entries)
    st.warning("Not offered for prediction: " + "; ".join(f"**{ui.md(titles[str(b.path)])}** "
                                                         f"({ui.md(b.prediction_problem)})" for b in cannot)
               + ". It was imported without the bulk embeddings its AdaIN step needs; import it again with them on "
                 "the Model library page (replacing the installed one is for an administrator).",
               icon=":material/block:")
if not demo_data and not real:
    n_demo = sum(b.is_demo for b in classifiers)
    st.warning(("**Only the demo model is installed**, and it was trained on simulated data: it says nothing about "
                "real cells. Use it with the demo data only." if n_demo == 1 else
                f"**Only the {n_demo} demo models are installed**, trained on simulated data: they say nothing "
                "about real cells. Use them with the demo data only."), icon=":material/warning:")
    how_to_get_a_model()
    ui.stop()
if not demo_data and any(b.is_demo for b in classifiers):
    st.caption("The demo model (simulated data) is offered with the demo data only.")
if not offered:
    st.warning("**No installed drug model can predict.**", icon=":material/inventory_2:")
    how_to_get_a_model()
    ui.stop()

# ------------------------------------------------------------------ pickers
current = ui.current_bundle()
if current is not None and current.is_demo and not demo_data:
    ui.set_bundle(None)  # never keep the demo model for real data
    current = None
# every backbone is offered; one without a drug model or its foundation model's files says so in its label
setups = {b: backbone_setup(b, offered, estimate=False) for b in BACKBONES}
usable = [b for b in BACKBONES if any(m.backbone == b for m in offered)]
if ss.get("model_backbone") not in BACKBONES:  # the chosen model's, else one with a model that may be chosen for you
    first = ui.default_model(offered, ss.get(state.ADATA))
    ss["model_backbone"] = (current.backbone if current is not None and current.backbone in usable else
                            next(m.backbone for m in offered if str(m.path) == first) if first else usable[0])
left, right = st.columns([0.4, 0.6])  # a drug model's title is long: at 1280 px half the width cut it
# a model trained here is not the published backbone: said so, shortly (the rest in the box's help)
group_titles = backbone_group_titles(offered, short=True)
backbone = left.selectbox("Backbone", list(BACKBONES), key="model_backbone", help=BACKBONE_HELP,
                          format_func=ui.detached(lambda b: choice_label(b, group_titles.get(b), setups[b])))
if backbone not in usable:  # what it lacks, in order, and the cost here; nothing is run, no Predict link
    # (with a drug model but not the foundation model's files, the step below says so: embeddings may be uploaded)
    ui.set_bundle(None)
    ui.show_backbone_setup(backbone_setup(backbone, offered, ss.get(state.ADATA)))
    ui.stop()
choices = {str(m.path): m for m in offered if m.backbone == backbone}
labels = ui.model_names(entries)  # each model's one name, as the table above and the Models page say it
if ss.get("model_bundle") not in choices:  # never another user's model, unless they chose it
    ss["model_bundle"] = str(current.path) if current is not None and str(current.path) in choices \
        else ui.default_model(choices.values(), ss.get(state.ADATA))
path = right.selectbox("Drug model", list(choices), key="model_bundle", index=None, placeholder="choose a drug model",
                       format_func=ui.detached(lambda p: labels[p]))
ui.set_bundle(path)
if path is None:
    data_now = ss.get(state.ADATA)
    # not one model has enough of its genes in the data: said now, with each one's coverage, not model by model
    if data_now is not None and (unfit := no_model_fits(data_now, offered, ui.model_names(entries),
                                                        ui.model_fits(data_now, offered))):
        statement, lines, advice = unfit
        st.warning(f"**{ui.md(statement)}**\n\n" + "\n".join(f"- {ui.md(line)}" for line in lines)
                   + f"\n\n{ui.md(advice)}", icon=":material/block:")
        how_to_get_a_model()
    user = ui.model_user()
    others = [m for m in choices.values() if not chosen_by_default_for(m, user)]
    named = "; ".join(f"**{ui.md(labels[str(m.path)])}** ({ui.md(who_made(m))})" for m in others)
    whose = ("is another user's model", "it") if len(others) == 1 else ("are other users' models", "one")
    st.info("Choose the drug model to use." + (f" Nothing is chosen for you here: {named} {whose[0]}, offered for "
                                               f"you to choose if you mean to use {whose[1]}." if others else ""),
            icon=":material/touch_app:")
    ui.stop()
bundle = choices[path]

with st.container(border=True):
    st.subheader(ui.md(labels[path]))  # the model's name, as the picker and the Models page say it
    if bundle.is_demo:
        st.badge("demo model (simulated data): trained on simulated cell lines; for trying the app only",
                 color="orange")
    s = bundle.summary()
    c = st.columns(4)
    c[0].metric("Drug", ui.md(s["drug"] or "—"))
    c[1].metric("Input", f"{s['n_input_features']:,} " + ("genes" if s["input"] == "expression" else "features"))
    members = int(s.get("members") or 1)
    c[2].metric("Latent dimensions", f"{members} × {s['z_dim']}" if members > 1 else s["z_dim"],
                help=(f"An ensemble of {members} backbones with {s['z_dim']} latent dimensions each; the Cells page's "
                      f"UMAP is of their latents side by side ({members * s['z_dim']} dimensions)." if members > 1 else
                      "The model's latent space, which the Cells page's UMAP shows."))
    c[3].metric("Default threshold", f"{s['threshold']:.3g}",
                help="Not calibrated to your data: calibrate it on the Cells page (expected fraction or labelled "
                     "cells).")
    named = f"{ui.md(s['name'])} · " if s["name"] != bundle.path.name else ""
    origin = (f" · from {ui.md(s['source_file'])} (sha256 {ui.md(s['source_sha256'][:12])}…)"
              if s["source_file"] and s["source_sha256"] else "")
    labels = f" · P(resistant) is the probability of class {bundle.positive_index}" if s["label_mapping"] else ""
    beta = f" · Swish beta: {ui.BETA_WORDS[s['beta_mode']]}" if bundle.backbone == "dist_vae" else ""
    st.caption(f"{named}Source: {ui.md(s['source'] or '—')}{origin} · created {ui.md(s['created'] or '—')}"
               f"{labels}{beta}")
    st.caption(ui.md(input_transform_words(bundle)))
    if bundle.is_imported:
        with st.expander("Model card (imported checkpoint)"):
            st.markdown("\n".join(f"- {ui.md(line)}" for line in import_card_lines(bundle)))
    if s["metrics"]:
        with st.expander("Metrics recorded with the model"):
            from scatd_core.metrics import metrics_table

            ui.table(metrics_table(s["metrics"]), hide_index=True)

# ------------------------------------------------------------------ coverage of the current data
st.subheader("Does your data fit this model?")
adata = ss.get(state.ADATA)
if adata is None:
    st.info("Upload data to see how many of the model's genes it covers.", icon=":material/info:")
    ui.link("Data", "Go to Data", ":material/arrow_forward:")
    ui.stop()

info = adata.uns.get(io.REPORT_KEY, {})
ready = True
if bundle.input_kind == "expression":
    try:
        inputs = ui.model_inputs(adata, bundle)
    except ScatdError as exc:
        ui.show_error(exc)
        ui.stop()
    from scatd_core._words import percent
    from scatd_core.genes import coverage_refusal, coverage_report
    from scatd_core.inputs import model_data

    data, matrix = model_data(adata, bundle)  # the matrix of the file the model reads (X, adata.raw, a layer)
    st.caption(ui.md(ui.matrix_words(matrix)))
    if matrix.note:
        st.info(ui.md(matrix.note), icon=":material/info:")
    cov = coverage_report(data, bundle.genes)
    c = st.columns(3)
    c[0].metric("Model genes found", f"{cov['n_matched']:,} / {cov['n_model_genes']:,}")
    c[1].metric("Coverage", percent(cov["n_matched"] / max(cov["n_model_genes"], 1)),
                help=f"Predictions need at least {percent(cov['min_coverage'])} of the model's genes (this server's "
                     "limits.min_gene_coverage); below half of them they run with a warning.")
    c[2].metric("Data genes the model ignores", f"{cov['n_data_genes_unmatched']:,}")
    if cov["status"] == "refused":  # the prediction would be refused: said here, never started ahead
        from scatd_core.matrices import fuller_elsewhere

        ui.show_error(coverage_refusal(data, bundle.genes, also=fuller_elsewhere(adata, matrix, bundle.genes)))
        ready = False
    elif cov["status"] == "low":
        st.warning(ui.md(cov["advice"]), icon=":material/warning:")
    else:
        st.success(ui.md(cov["advice"]), icon=":material/check_circle:")
    if cov.get("top_unmatched_genes") and cov.get("unmatched_ranked_by") == "name":
        shown = len(cov["top_unmatched_genes"])
        with st.expander("Data genes the model does not use"):
            st.caption(f"These values are centred per gene (z-scores or similar): every gene's mean is near 0, so "
                       f"they cannot tell which genes are most expressed. The first {shown:,} of "
                       f"{cov['n_data_genes_unmatched']:,} by name:")
            ui.table(pd.DataFrame({"gene": cov["top_unmatched_genes"]}), hide_index=True)
    elif cov.get("top_unmatched_genes"):
        with st.expander("Most expressed data genes the model does not use"):
            ui.table(pd.DataFrame({"gene": cov["top_unmatched_genes"], "mean value": cov["top_unmatched_mean"]}),
                     hide_index=True)
    warnings, notes = value_messages(adata, bundle)  # the prediction records the same warnings
    for problem in warnings:
        st.warning(ui.md(problem), icon=":material/warning:")
    for note in notes:
        if note != matrix.note:  # said above
            st.info(ui.md(note), icon=":material/info:")
else:
    key = FOUNDATION_EMBEDDING[backbone]
    dim = bundle.architecture.input_dim
    if not foundation.needs_embedding(adata, bundle):
        if key in adata.obsm and adata.obsm[key].shape[1] == dim:
            st.success(f"The data carries {dim}-dimensional embeddings in obsm['{key}'].", icon=":material/check_circle:")
        elif adata.n_vars == dim:
            st.success(f"The data has {dim} features: they are used as the cell embeddings, by position.",
                       icon=":material/check_circle:")
        else:
            ui.show_error(embedding_width_error(adata, InputSpec.of(bundle)))
            ready = False
    else:
        ready = ui.embedding_step(adata, bundle)

with st.expander("Foundation models on this server (scFoundation for VAE_sf, Geneformer for VAE_gf)"):
    for entry in foundation.probe_all():
        ui.show_probe(entry)

st.divider()
if ready:
    # so that Run prediction finds it done or under way (the Predict page's bundle object: its model is loaded once)
    ui.start_prediction_ahead(adata, ui.current_bundle())
    ui.link("Predict", "Next: run the prediction", ":material/arrow_forward:")
