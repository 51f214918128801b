"""Model library: installed bundles, the published scATD models, importing checkpoints, the demo model.

Nothing typed in the browser becomes a server path: checkpoints are uploaded, or chosen from the
folder the administrator configured (``paths.import_folder``), listed here.
"""

import shutil
import tempfile
from pathlib import Path

import streamlit as st

from scatd_app import auth, jobs, session, state, ui
from scatd_core import io, published
from scatd_core.bundle import (BACKBONE_TITLES, BETA_MODES, FIGSHARE_URL, import_card_lines, import_checkpoint,
                               remove_bundle)
from scatd_core.config import import_folder, limits
from scatd_core.errors import ScatdError
from scatd_core.nn import BACKBONES

ss = st.session_state
user = auth.current_user()
st.title("Model library")
entries = ui.library_entries()
if entries:
    ui.show_library(entries)
else:
    st.info("The library is empty. Get the published scATD models or import a checkpoint below, train a model, or "
            "install the demo model.", icon=":material/inventory_2:")
carded = {str(e.path): e.bundle for e in entries if e.ok and (e.bundle.manifest.get("card") or e.bundle.is_imported)}
if carded:
    st.subheader("Model card")
    # the card of the session's chosen model (Model page) opens first; another card chosen here stays while on
    # this page, until another model is chosen
    in_use = next((p for p in carded if ss.get(state.BUNDLE_PATH) and
                   Path(p).resolve() == Path(ss[state.BUNDLE_PATH]).resolve()), None)
    if in_use is not None and (ss.get("model_card_choice") not in carded or ss.get("model_card_follows") != in_use):
        ss["model_card_choice"] = ss["model_card_follows"] = in_use
    card_titles = ui.model_names(entries)  # each model's one name, as the table and the pickers say it
    chosen = st.selectbox("Model", list(carded), key="model_card_choice",
                          format_func=ui.detached(lambda p: card_titles[p]))
    if carded[chosen].manifest.get("card"):
        ui.show_card(carded[chosen].manifest["card"], key="model_card_figure")
    else:  # an imported checkpoint: no training data to compare with, so a short card
        st.markdown("\n".join(f"- {ui.md(line)}" for line in import_card_lines(carded[chosen])))
ui.link("Train a model", "Train a new drug model from bulk data", ":material/school:")

# ------------------------------------------------------------------ published models
st.subheader("Get the published scATD models")
st.caption(f"The scATD authors' checkpoints on [figshare]({FIGSHARE_URL}): downloaded with a size limit and a "
           "checksum check, then imported (weights only) with the right backbone, drug and gene list.")
if st.button("List the published models", key="btn_list_published", icon=":material/cloud_download:"):
    try:
        with st.spinner("Asking figshare…"):
            ss["models_published"] = published.list_files()
    except ScatdError as exc:
        ui.show_error(exc)
        ui.show_manual_steps(published.manual_steps())
files = ss.get("models_published")
if files is not None:
    usable = {f.name: f for f in files if f.recognised and f.recognised.kind in ("classifier", "backbone")}
    if not usable:
        st.warning("figshare lists no checkpoint scATD Studio recognises.", icon=":material/warning:")
        ui.show_manual_steps(published.manual_steps())
    else:
        chosen = st.multiselect("Checkpoints to install", list(usable), key="models_published_choice",
                                format_func=ui.detached(lambda n: f"{usable[n].recognised.title} · {n} · "
                                                                  f"{usable[n].size / 2**20:,.0f} MB"))
        if chosen and st.button("Download and install", type="primary", key="btn_install_published"):
            bar = st.progress(0.0, text="Downloading…")
            notes = []
            try:
                with jobs.computing("the download"):
                    installed = published.install(chosen, files=files, user=user.name if user else None,
                                                  progress=ui.progress_to(bar), notice=notes.append)
            except ScatdError as exc:
                bar.empty()
                ui.show_error(exc)
            else:
                ui.clear_library_cache()
                st.success("Installed: " + ", ".join(f"{ui.md(b.title)} ({ui.md(b.path.name)})" for b in installed),
                           icon=":material/check_circle:")
            for note in notes:  # another model held a published model's folder: where it went instead
                st.info(ui.md(note), icon=":material/info:")

# ------------------------------------------------------------------ import
st.subheader("Import an scATD checkpoint")
st.caption("A `.pth` state dict from the scATD release (pretraining or drug classifier). It is read with "
           "`weights_only=True`: a file holding anything but tensors is refused.")
folder = import_folder()
offered = sorted(p for p in folder.iterdir() if p.is_file()) if folder is not None and folder.is_dir() else []
ss.setdefault("model_import_backbone", "dist_vae")
backbone = st.selectbox("Backbone", BACKBONES, key="model_import_backbone",
                        format_func=ui.detached(lambda b: BACKBONE_TITLES.get(b, b)))
with st.form("import_checkpoint"):
    upload = st.file_uploader("Checkpoint file (.pth)", type=["pth", "pt"], key="upload_pth")
    checkpoints = [p.name for p in offered if p.suffix in (".pth", ".pt")]
    from_folder = st.selectbox("…or one the administrator placed in the import folder", [None] + checkpoints,
                               key="import_from_folder", format_func=ui.detached(lambda n: "—" if n is None else n), placeholder="—",
                               disabled=not checkpoints,
                               help="The server's import folder (paths.import_folder), set by the administrator.")
    c = st.columns(2)
    drug = c[0].text_input("Drug", key="import_drug", help="Any spelling; it is the name shown.")
    name = c[1].text_input("Display name (optional)", key="import_name",
                           help="The name shown in the library; it also names the model's folder (default: drug and "
                                "backbone), so a second model of one drug and backbone, e.g. a Dist_VAE model for "
                                "another target dataset, needs a display name of its own.")
    side_types = ["tsv", "txt", "csv"] if backbone == "dist_vae" else ["npy"]
    side = st.file_uploader("Model gene list (scFoundation OS_scRNA_gene_index.19264.tsv, or one gene per line)"
                            if backbone == "dist_vae" else
                            "Bulk embeddings for AdaIN (.npy, samples x features): needed for a drug classifier",
                            type=side_types, key="upload_side",
                            help=None if backbone == "dist_vae" else
                            "The bulk cell-line embeddings of this backbone the model was trained on (scATD's "
                            "AllbulkDEll_*_bulk_cell_embedding_*.npy): their per-feature mean and sd are the AdaIN "
                            "target of every prediction. A pretraining (backbone) checkpoint does not need them.")
    side_files = [p.name for p in offered if p.suffix.lstrip(".") in side_types]
    side_from_folder = st.selectbox("…or from the import folder", [None] + side_files, key="import_side_from_folder",
                                    format_func=ui.detached(lambda n: "—" if n is None else n), disabled=not side_files,
                                    placeholder="—")
    threshold = st.number_input("Decision threshold (empty: the original default)", min_value=0.0, max_value=1.0,
                                value=None, step=0.01, key="import_threshold")
    beta_mode = st.selectbox(
        "Swish beta at inference (Dist_VAE classifiers)", BETA_MODES, key="import_beta_mode",
        disabled=backbone != "dist_vae", format_func=ui.detached(lambda m: ui.BETA_IMPORT_WORDS[m]),
        help="The original code loads a Dist_VAE classifier so that its encoder blocks use the head's Swish beta, "
             "not their own trained one (a known bug of the original). 'Shared with head' reproduces the published "
             "predictions; 'separate' runs the function as trained, whose predictions differ from the published ones.")
    replace = st.checkbox("Replace a model of the same name", key="import_replace", disabled=not (user and user.admin),
                          help="Administrators only: shared models are never replaced by accident.")
    submitted = st.form_submit_button("Import", type="primary", icon=":material/upload:")

if submitted:
    tmp = Path(tempfile.mkdtemp(prefix="scatd-import-"))
    try:
        if upload is not None:
            pth = tmp / "checkpoint.pth"
            io.write_private(pth, upload.getvalue())
        elif from_folder:
            pth = folder / from_folder  # a listed name, never a typed path
        else:
            raise ScatdError("No checkpoint given.", "Upload a .pth file, or choose one from the import folder.")
        extra = None
        if side is not None:
            extra = tmp / (f"genes{Path(side.name).suffix}" if backbone == "dist_vae" else "style.npy")
            io.write_private(extra, side.getvalue())
        elif side_from_folder:
            extra = folder / side_from_folder
        with st.spinner("Importing…"):
            bundle = import_checkpoint(
                pth, backbone, drug=drug.strip() or None, name=name.strip() or None, threshold=threshold,
                genes=extra if backbone == "dist_vae" else None,
                # the default: chosen by the checkpoint (a pretraining one has no head to share with)
                beta_mode="separate" if backbone == "dist_vae" and beta_mode == "separate" else None,
                style_reference=extra if backbone != "dist_vae" else None,
                provenance={"imported_by": user.name if user else None},
                require_style=True,  # the app has no way to add them later: a classifier without them is refused
                overwrite=bool(replace and user and user.admin),
                source_name=upload.name if upload is not None else None,  # a name in messages, never a path
                side_name=side.name if side is not None else None,
                # an upload unpacks to no more than the upload limit (a torch.save file is uncompressed)
                max_checkpoint_bytes=min(limits().max_upload_bytes, limits().max_decompressed_bytes)
                if upload is not None else None)
    except Exception as exc:  # ScatdError: a message; anything else: still no traceback
        ui.show_error(exc)
    else:
        ui.clear_library_cache()
        for done in (upload, side):  # in the library now: Streamlit's in-memory copies are not needed
            if done is not None:
                session.release_upload(done.file_id)
        replaced = f" It replaced the model {ui.md(bundle.replaced)} there, for every user." if bundle.replaced else ""
        st.success(f"Imported **{ui.md(bundle.title)}** as {ui.md(bundle.path.name)}.{replaced}",
                   icon=":material/check_circle:")
        for note in bundle.manifest["provenance"].get("notes") or []:
            st.info(ui.md(f"Note: {note}."), icon=":material/info:")
        ui.link("Model", "Use it: choose the model", ":material/arrow_forward:")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

# ------------------------------------------------------------------ demo model
st.subheader("The demo model")
st.caption("A model trained on simulated cell lines, for trying the app with the demo data (labelled demo "
           "(simulated data) everywhere). It says nothing about real cells.")
if ui.demo_button("btn_models_demo", st):
    st.success("The demo data and model are ready.", icon=":material/check_circle:")

# ------------------------------------------------------------------ administration
if user is not None and user.admin:
    st.subheader("Remove a model")
    # the confirmation is for one model, once: it is cleared when another model is chosen and after a
    # removal, so the next model is never one click from removal. It remembers the model it was given
    # for (models_remove_for: [path, title]): a model removed by someone else meanwhile drops out of
    # the list, the choice falls back to another model, and that one is never removed in its place.
    if removed := ss.pop("models_removed", None):  # said after the rerun that drops it from the list
        ss["models_remove_sure"] = False
        st.success(f"Removed {ui.md(removed)} from the library.", icon=":material/check_circle:")
    removable = {str(e.path): e for e in entries}
    sure_for = ss.get("models_remove_for")
    if ss.get("models_remove_sure") and (not sure_for or sure_for[0] not in removable):
        ss["models_remove_sure"] = False  # (before the checkbox is drawn)
        ss.pop("models_remove_for", None)
        if sure_for:
            ss["models_remove_gone"] = sure_for[1]
    if gone := ss.pop("models_remove_gone", None):
        st.warning(f"{ui.md(gone)} is no longer in the library (removed by someone else); nothing was removed.",
                   icon=":material/info:")
    if removable:
        titles = ui.model_names(entries)  # as the table above names them
        title_of = ui.detached(lambda p: titles.get(p, f"{Path(p).name} (unusable)"))

        def forget_sure():
            ss["models_remove_sure"] = False
            ss.pop("models_remove_for", None)

        def remember_sure():  # the model shown when the box was ticked
            choice = ss.get("models_remove_choice")
            if ss.get("models_remove_sure") and choice in removable:
                ss["models_remove_for"] = [choice, title_of(choice)]
            else:
                ss.pop("models_remove_for", None)

        target = st.selectbox("Model", list(removable), key="models_remove_choice", format_func=title_of,
                              on_change=ui.detached(forget_sure))
        sure = st.checkbox("Yes, remove it for every user of this server", key="models_remove_sure",
                           on_change=ui.detached(remember_sure))
        if st.button("Remove", disabled=not sure, key="btn_remove_model", icon=":material/delete:") and sure:
            sure_for = ss.get("models_remove_for")
            if not sure_for or sure_for[0] != target or not Path(target).is_dir():
                # removed by someone else between this page's last run and the click
                ss["models_remove_gone"] = sure_for[1] if sure_for else title_of(target)
                ss.pop("models_remove_for", None)  # the next run clears the tick (before drawing it)
                st.rerun()
            try:
                remove_bundle(target)
            except ScatdError as exc:
                ui.show_error(exc)
            else:
                ui.clear_library_cache()
                if ss.get("bundle_path") == target:
                    ui.set_bundle(None)
                ss["models_removed"] = title_of(target)
                ss.pop("models_remove_for", None)
                st.rerun()
