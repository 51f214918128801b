"""Model library: installed bundles, import of original scATD checkpoints, and the way to training."""

import shutil
import tempfile
from pathlib import Path

import streamlit as st

from scatd_app import ui
from scatd_core.bundle import BACKBONE_TITLES, import_checkpoint
from scatd_core.config import model_library_dir
from scatd_core.errors import ScatdError
from scatd_core.nn import BACKBONES

st.title("Model library")
library = model_library_dir()
st.caption(f"Bundles in `{library}` (set SCATD_MODEL_LIBRARY or SCATD_HOME to move it).")
entries = ui.library_entries()
if entries:
    ui.show_library(entries)
else:
    st.info("The library is empty. Import an original scATD checkpoint below, train a model, or install "
            "the demo model with `scatd demo`.", icon=":material/inventory_2:")
carded = {str(e.path): e.bundle for e in entries if e.ok and e.bundle.manifest.get("card")}
if carded:
    st.subheader("Model card")
    chosen = st.selectbox("Trained model", list(carded), format_func=lambda p: f"{carded[p].title} ({Path(p).name})",
                          key="model_card_choice")
    ui.show_card(carded[chosen].manifest["card"], key="model_card_figure")
ui.link("Train a model", "Train a new drug model from bulk data", ":material/school:")

# ------------------------------------------------------------------ import
st.subheader("Import an original scATD checkpoint")
st.caption("A `.pth` state dict from the scATD release (pretraining or drug classifier). It is read with "
           "`weights_only=True`: a file holding anything but tensors is refused. The same as "
           "`scatd import-checkpoint` on the server.")
ss = st.session_state
ss.setdefault("model_import_backbone", "dist_vae")
backbone = st.selectbox("Backbone", BACKBONES, key="model_import_backbone",
                        format_func=lambda b: BACKBONE_TITLES.get(b, b))
with st.form("import_checkpoint"):
    upload = st.file_uploader("Checkpoint file (.pth)", type=["pth", "pt"], key="upload_pth")
    server_path = st.text_input("…or its path on the server", key="import_path",
                                placeholder="/data/scATD/checkpoints/Gefitinib.pth")
    c = st.columns(2)
    drug = c[0].text_input("Drug", key="import_drug", help="Any spelling; it is the name shown.")
    name = c[1].text_input("Display name (optional)", key="import_name")
    if backbone == "dist_vae":
        side = st.file_uploader("Model gene list (scFoundation OS_scRNA_gene_index.19264.tsv, or one gene per line)",
                                type=["tsv", "txt", "csv"], key="upload_genes")
        side_path = st.text_input("…or its path on the server", key="import_genes_path")
    else:
        side = st.file_uploader("Bulk embeddings for AdaIN (.npy, samples x features)", type=["npy"],
                                key="upload_style")
        side_path = st.text_input("…or its path on the server", key="import_style_path")
    threshold = st.number_input("Decision threshold (empty: the original default)", min_value=0.0, max_value=1.0,
                                value=None, step=0.01, key="import_threshold")
    submitted = st.form_submit_button("Import", type="primary", icon=":material/upload:")

if submitted:
    tmp = Path(tempfile.mkdtemp(prefix="scatd-import-"))
    try:
        if upload is not None:
            pth = tmp / "checkpoint.pth"
            pth.write_bytes(upload.getvalue())
        elif server_path.strip():
            pth = Path(server_path.strip()).expanduser()
        else:
            raise ScatdError("No checkpoint given.", "Upload a .pth file or give its path on the server.")
        extra = None
        if side is not None:
            extra = tmp / ("genes" + Path(side.name).suffix if backbone == "dist_vae" else "style.npy")
            extra.write_bytes(side.getvalue())
        elif side_path.strip():
            extra = Path(side_path.strip()).expanduser()
        with st.spinner("Importing…"):
            bundle = import_checkpoint(
                pth, backbone, drug=drug.strip() or None, name=name.strip() or None, threshold=threshold,
                genes=extra if backbone == "dist_vae" else None,
                style_reference=extra if backbone != "dist_vae" else None)
    except ScatdError as exc:
        ui.show_error(exc)
    except Exception as exc:
        ui.show_error(exc)
    else:
        ui.clear_library_cache()
        st.success(f"Imported **{bundle.title}** into `{bundle.path}`.", icon=":material/check_circle:")
        if bundle.input_kind == "embedding" and bundle.style_mean is None and bundle.kind == "classifier":
            st.warning("No bulk embeddings were given: this model cannot predict until it has the AdaIN "
                       "statistics. Import it again with the bulk embeddings .npy.", icon=":material/warning:")
        ui.link("Model", "Use it: choose the model", ":material/arrow_forward:")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
