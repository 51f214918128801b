"""Step 2, Model: pick a drug model from the library and check the data's gene coverage before running."""

import pandas as pd
import streamlit as st

from scatd_app import state, ui
from scatd_core import io
from scatd_core.bundle import BACKBONE_TITLES
from scatd_core.config import model_library_dir
from scatd_core.errors import ScatdError
from scatd_core.nn import BACKBONES
from scatd_core.predict import EMBEDDING_OBSM
from scatd_core.preprocess import check_backbone_compatibility

ss = st.session_state
st.title("2 · Model")
entries = ui.library_entries()
classifiers = [e.bundle for e in entries if e.ok and e.bundle.kind == "classifier"]

if not classifiers:
    st.warning(f"**No drug model is installed** (model library: `{model_library_dir()}`).",
               icon=":material/inventory_2:")
    st.markdown(
        "Get one in any of these ways:\n\n"
        "1. **Import an original scATD checkpoint** (from the scATD figshare) on the model library page, "
        "or on the server:\n"
        "   ```\n   scatd import-checkpoint Gefitinib.pth --backbone dist_vae --drug Gefitinib \\\n"
        "       --genes OS_scRNA_gene_index.19264.tsv\n   ```\n"
        "2. **Train a model** for your drug from bulk cell-line data on the Train page (or `scatd train`).\n"
        "3. **Install the demo model** (simulated data) with `scatd demo`, to try the whole path.")
    c = st.columns(3)
    with c[0]:
        ui.link("Model library", "Import a checkpoint", ":material/upload:")
    with c[1]:
        ui.link("Train a model", "Train a model", ":material/school:")
    demo = ui.demo_module()
    if demo is not None and callable(getattr(demo, "ensure", None)) and c[2].button(
            "Install the demo model", icon=":material/science:", key="btn_install_demo",
            help="Builds the demo (simulated data) model once, in about a minute."):
        bar = st.progress(0.0, text="Building the demo model…")
        try:
            demo.ensure(progress=lambda fraction, message: bar.progress(min(1.0, fraction), text=message))
        except ScatdError as exc:
            ui.show_error(exc)
        else:
            ui.clear_library_cache()
            st.rerun()
    if entries:
        st.subheader("Folders in the library that cannot be used")
        ui.show_library(entries)
    st.stop()

st.caption("Installed drug models. Each is a bundle folder with its weights, genes and provenance.")
ui.show_library(entries)

# ------------------------------------------------------------------ pickers
current = ui.current_bundle()
backbones = [b for b in BACKBONES if any(m.backbone == b for m in classifiers)]
if ss.get("model_backbone") not in backbones:
    ss["model_backbone"] = current.backbone if current is not None and current.backbone in backbones else backbones[0]
left, right = st.columns(2)
backbone = left.selectbox("Backbone", backbones, key="model_backbone", format_func=lambda b: BACKBONE_TITLES.get(b, b))
choices = {str(m.path): m for m in classifiers if m.backbone == backbone}
if ss.get("model_bundle") not in choices:
    ss["model_bundle"] = str(current.path) if current is not None and str(current.path) in choices else next(iter(choices))
path = right.selectbox("Drug model", list(choices), key="model_bundle",
                       format_func=lambda p: f"{choices[p].drug} · {choices[p].name}"
                       + (" · demo (simulated data)" if choices[p].is_demo else ""))
if ss.get(state.BUNDLE_PATH) != path:
    ss[state.BUNDLE_PATH] = path
    for key in (state.RESULT, state.RESULT_TOKEN, state.EXPLAIN):
        ss.pop(key, None)
    st.rerun()  # so the sidebar shows the chosen model
bundle = choices[path]

with st.container(border=True):
    st.subheader(bundle.title)
    if bundle.is_demo:
        st.badge("demo (simulated data): trained on simulated cell lines; for trying the app only", color="orange")
    s = bundle.summary()
    c = st.columns(4)
    c[0].metric("Drug", s["drug"] or "—")
    c[1].metric("Input", f"{s['n_input_features']:,} " + ("genes" if s["input"] == "expression" else "features"))
    c[2].metric("Latent dimensions", s["z_dim"])
    c[3].metric("Default threshold", f"{s['threshold']:.3g}")
    st.caption(f"Source: {s['source'] or '—'} · created {s['created'] or '—'} · "
               f"input transform: {bundle.manifest['input_transform']} · folder: {s['path']}")
    if s["metrics"]:
        with st.expander("Metrics recorded with the model"):
            st.json(s["metrics"])

# ------------------------------------------------------------------ coverage of the current data
st.subheader("Does your data fit this model?")
adata = ss.get(state.ADATA)
if adata is None:
    st.info("Upload data to see how many of the model's genes it covers.", icon=":material/info:")
    ui.link("Data", "Go to Data", ":material/arrow_forward:")
    st.stop()

info = adata.uns.get(io.REPORT_KEY, {})
ready = True
if bundle.input_kind == "expression":
    try:
        cov = ui.coverage(ss[state.DATA_TOKEN], path, adata, bundle.genes)
    except ScatdError as exc:
        ui.show_error(exc)
        st.stop()
    c = st.columns(3)
    c[0].metric("Model genes found", f"{cov['n_matched']:,} / {cov['n_model_genes']:,}")
    c[1].metric("Coverage", f"{cov['fraction_matched']:.1%}")
    c[2].metric("Data genes the model ignores", f"{cov['n_data_genes_unmatched']:,}")
    if cov["n_matched"] == 0:
        st.error(f"**None of the model's genes is in the data.** {cov['advice']}", icon=":material/error:")
        ready = False
    elif cov["low_coverage"]:
        st.warning(cov["advice"], icon=":material/warning:")
    else:
        st.success(cov["advice"], icon=":material/check_circle:")
    if cov.get("top_unmatched_genes"):
        with st.expander("Most expressed data genes the model does not use"):
            st.dataframe(pd.DataFrame({"gene": cov["top_unmatched_genes"], "mean value": cov["top_unmatched_mean"]}),
                         hide_index=True)
    value_type = {"kind": info.get("value_type", "unknown"), "evidence": info.get("value_type_evidence") or {}}
    for problem in check_backbone_compatibility(value_type, backbone, bundle.manifest["input_transform"]):
        st.warning(problem, icon=":material/warning:")
else:
    key = EMBEDDING_OBSM[backbone]
    dim = bundle.architecture.input_dim
    if key in adata.obsm and adata.obsm[key].shape[1] == dim:
        st.success(f"The data carries {dim}-dimensional embeddings in obsm['{key}'].", icon=":material/check_circle:")
    elif adata.n_vars == dim:
        st.success(f"The data has {dim} features: they are used as the cell embeddings, by position.",
                   icon=":material/check_circle:")
    else:
        st.error(f"**This {BACKBONE_TITLES[backbone]} model takes {dim}-dimensional cell embeddings**, but the "
                 f"data has {adata.n_vars:,} features and no obsm['{key}'].\n\n"
                 "Upload the scFoundation (3,072-d) or Geneformer (512-d) embeddings as a .npy (cells x features) "
                 "or an h5ad holding them, or choose a Dist_VAE model, which reads genes.", icon=":material/error:")
        ready = False

st.divider()
if ready:
    ui.link("Predict", "Next: run the prediction", ":material/arrow_forward:")
