"""Train a drug model: bulk cell lines + labels -> a model adapted to the user's single cells.

Thin page over :func:`scatd_core.train.train_drug_model`: uploads, choices, live progress,
cancel, and the CV / target metrics of the run. The new bundle goes to the model library.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import streamlit as st

from scatd_app import auth, jobs, session, ui
from scatd_app import state as S
from scatd_core._words import counted
from scatd_core import export, io, pl
from scatd_core._progress import with_eta
from scatd_core.card import LABEL_RULE_UNKNOWN, auroc_interval_words
from scatd_core.errors import MemoryShortage, ScatdError

# Session keys of this page only.
BULK = "train_bulk"          # {"adata", "name"[, "id", "sha256"]}: the user's bulk cell lines x genes (Upload mode)
LABELS = "train_labels"      # {"table", "name"[, "id", "sha256"]}: the user's cell lines x drugs label table (Upload)
DEMO_PANEL = "train_demo_panel"  # [bulk, labels] entries of the simulated demo panel (its mode): the user's kept apart
TARGET = "train_target"      # {"adata", "name", "id", "sha256"}: an uploaded target (when not the current dataset)
RESULT = "train_result"      # {"bundle_path", "report"}: the last finished run
STOP = "train_stop"          # set by the Stop button
RUNNING = "train_running"    # a run began in this session and has not ended (a Stop click interrupts it)
PANEL_RESULT = "train_panel_result"  # the summary table of the last panel run
DATA_TYPES = ["csv", "tsv", "txt", "gz", "h5ad", "h5", "loom", "zip"]


show_error = ui.show_error


@contextmanager
def _temp_copies(*uploads):
    """Uploads as files in a fresh temporary folder, removed afterwards (names only give the extension:
    the readers are given the upload's own name for their messages)."""
    folder = Path(tempfile.mkdtemp(prefix="scatd-train-"))
    try:
        paths = []
        for i, upload in enumerate(uploads):
            suffix = "".join(Path(upload.name).suffixes[-2:]) or ".csv"
            path = folder / f"upload{i}{suffix}"
            io.write_private(path, upload.getvalue())  # 0600 in a 0700 folder: this user's data
            paths.append(path)
        yield paths
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _upload_anndata(label: str, key: str, slot: str, help_text: str, samples: bool = False) -> None:
    """Read an upload into this session (never a shared cache: one user's data stays theirs), in
    memory, within what the server's memory budget leaves free (as the Data page's). ``samples``: bulk
    data, whose rows are cell lines (in the messages too, as scatd train reads them)."""
    from scatd_core.io import read_bytes

    upload = st.file_uploader(label, type=DATA_TYPES, key=key, help=help_text)
    if upload is not None and st.session_state.get(slot, {}).get("id") != upload.file_id:
        if _failed_before(slot, upload):
            return
        try:
            data = upload.getvalue()
            with st.spinner(f"Reading {ui.md(upload.name)}…"):
                adata = read_bytes(data, upload.name, backed=False, workdir=session.folder(), samples=samples,
                                   **session.room_for_a_dataset(st.session_state.get(session.TOKEN)))
            # the sha256 of the uploaded bytes (the reader's, when it hashed the file): the model records the
            # file as scatd train records the same file
            sha256 = (adata.uns.get(io.REPORT_KEY) or {}).get("file_sha256") or hashlib.sha256(data).hexdigest()
            st.session_state[slot] = {"adata": adata, "name": upload.name, "id": upload.file_id, "sha256": sha256}
            st.session_state.pop(slot + FAILED, None)
            session.release_upload(upload.file_id)  # read into the session: Streamlit's copy is not needed
        except ScatdError as exc:
            _failed(slot, upload, exc)


FAILED = "_failed"  # suffix of a slot's key: [file id, error] of an upload that could not be read


def _failed_before(slot: str, upload) -> bool:
    """Whether this upload failed before: then its error is shown again, the file not read again
    (the same file gives the same error), as on the Data page."""
    failed = st.session_state.get(slot + FAILED)
    if failed and failed[0] == upload.file_id:
        show_error(failed[1])
        return True
    return False


def _failed(slot: str, upload, exc: BaseException) -> None:
    show_error(exc)
    if not isinstance(exc, MemoryShortage):  # short of memory now: the next run tries again
        st.session_state[slot + FAILED] = [upload.file_id, ui.error_copy(exc)]  # no traceback kept


def _use_provenance(entry: dict | None, upload) -> None:
    """Attach how scatd labels-from-ic50 made the uploaded label table (its provenance file, checked
    strictly against the table's sha256) to the table, so the model's card says its threshold; a file
    taken away, or another table, takes it off again."""
    from scatd_core.labels import read_ic50_provenance_bytes

    if entry is None or not entry.get("sha256"):  # a table built here or the demo's: its own record
        return
    wanted = [entry["id"], upload.file_id] if upload is not None else None
    if entry.get("provenance_for") == wanted:
        if entry.get("provenance_error"):
            show_error(entry["provenance_error"])
        return
    entry["table"].attrs.pop("report", None)
    entry.update(provenance_for=wanted, provenance=None, provenance_error=None)
    if upload is None:
        return
    try:
        made = read_ic50_provenance_bytes(upload.getvalue(), entry["sha256"], name=upload.name,
                                          table_name=entry["name"])
    except ScatdError as exc:
        entry["provenance_error"] = ui.error_copy(exc)
        show_error(exc)
    else:
        entry["table"].attrs["report"] = made
        entry["provenance"] = upload.name
    # the upload is kept (at most 4 MB), not released as the tables are: this check runs on every run of
    # the page, and a released file reads as taken away (the card then lost its threshold)


st.title("Train a drug model")
st.caption("Train a drug-response model on bulk cancer cell lines with known responses, adapted to your "
           "single cells (scATD domain-adaptive learning). The target's own labels, if any, are only used "
           "to report how well the model did.")
ss = st.session_state

# ------------------------------------------------------------------ 1. bulk and labels
st.subheader("1 · Bulk cell lines and their drug responses")
bulk_source = st.radio("Bulk data", ["Upload", "Simulated demo panel"], horizontal=True,
                       help="The demo panel is simulated (300 cell lines with a built-in resistance program); "
                            "use it to try the page.")
if bulk_source == "Upload":
    c1, c2 = st.columns(2)
    with c1:
        _upload_anndata("Bulk expression (cell lines × genes)", "upload_train_bulk", BULK,
                        "Log TPM or counts; CSV/TSV with cell-line IDs in the first column, or h5ad.", samples=True)
    with c2:
        labels_upload = st.file_uploader("Labels (cell lines × drugs)", type=["csv", "tsv", "txt", "gz"],
                                         key="upload_train_labels",
                                         help="sensitive / resistant per cell line and drug, the format of GDSC's "
                                              "ALL_label_binary_wf.csv; empty or NA = not screened.")
        if (labels_upload is not None and ss.get(LABELS, {}).get("id") != labels_upload.file_id
                and not _failed_before(LABELS, labels_upload)):
            from scatd_core.labels import read_label_table

            try:
                with _temp_copies(labels_upload) as (path,):
                    ss[LABELS] = {"table": read_label_table(path, name=labels_upload.name),
                                  "name": labels_upload.name, "id": labels_upload.file_id,
                                  "sha256": hashlib.sha256(labels_upload.getvalue()).hexdigest()}
                ss.pop(LABELS + FAILED, None)
                session.release_upload(labels_upload.file_id)
            except ScatdError as exc:
                _failed(LABELS, labels_upload, exc)
        provenance_upload = st.file_uploader(
            "How the labels were made (optional): the .provenance.json beside a table of scatd labels-from-ic50",
            type=["json"], key="upload_train_labels_provenance",
            help="scatd labels-from-ic50 --out labels.csv also writes labels.provenance.json (the ln(IC50) files and "
                 "each drug's threshold). Given with that very table, the model's card says which threshold made "
                 "its labels; without it, the card names only the table.")
        _use_provenance(ss.get(LABELS), provenance_upload)
    from scatd_core.labels import IC50_BUILDER

    with st.expander(IC50_BUILDER):
        u1, u2, u3 = st.columns(3)
        ic50 = u1.file_uploader("GDSC_IC50.csv", type=["csv", "gz"], key="upload_train_ic50")
        thred = u2.file_uploader("IC50_thred.txt", type=["txt", "tsv"], key="upload_train_thred")
        dlist = u3.file_uploader("GDSC drug list", type=["csv"], key="upload_train_druglist")
        if st.button("Build labels", disabled=not (ic50 and thred and dlist)):
            from scatd_core.labels import labels_from_ic50, unreadable_ic50_words

            try:
                with _temp_copies(ic50, thred, dlist) as paths:
                    table = labels_from_ic50(*paths, names=[u.name for u in (ic50, thred, dlist)])
                ss[LABELS] = {"table": table, "name": f"labels from {ic50.name}"}
                rep = table.attrs["report"]
                st.success(f"{counted(rep['n_drugs'], 'drug')} × {counted(rep['n_cell_lines'], 'cell line')} "
                           "(ln IC50 below the "
                           "drug's threshold = sensitive).")
                if unreadable_ic50_words(rep):
                    st.warning(ui.md(unreadable_ic50_words(rep)), icon=":material/warning:")
                if rep["no_threshold"]:
                    st.warning(f"No threshold for {counted(len(rep['no_threshold']), 'drug')}: "
                               f"{ui.md(', '.join(rep['no_threshold'][:10]))}.")
            except ScatdError as exc:
                show_error(exc)
elif ss.get(DEMO_PANEL) is None:  # its own bulk and labels, never the user's (kept for Upload mode)
    try:
        from scatd_core.demo.simulate import simulate_bulk

        with st.spinner("Simulating the demo panel…"):
            demo_bulk, demo_labels = simulate_bulk(seed=0)
        ss[DEMO_PANEL] = [{"adata": demo_bulk, "name": "simulated demo panel"},
                          {"table": demo_labels, "name": "simulated demo labels"}]
    except ScatdError as exc:
        show_error(exc)

def _still_used(slot: str, key: str, what: str) -> None:
    """Say that the earlier file is still used after an upload of ``key`` that could not be read (its
    error shown above), as for the target."""
    failed, shown = ss.get(slot + FAILED), ss.get(key)
    if failed and shown is not None and failed[0] == shown.file_id:
        st.info(f"Your earlier {what}.", icon=":material/info:")


if bulk_source == "Upload":
    bulk, labels = ss.get(BULK), ss.get(LABELS)
else:  # the demo panel's own labels: the user's would be trained against its simulated cell lines
    bulk, labels = ss.get(DEMO_PANEL) or [None, None]
    yours = [f"{what} ({ui.md(ss[slot]['name'])})" for what, slot in (("bulk data", BULK), ("label table", LABELS))
             if ss.get(slot) is not None]
    if yours:
        them = "them" if ss.get(BULK) is not None else "it"
        st.caption(f":material/info: Kept for Upload mode, not used with the demo panel: your {' and '.join(yours)}. "
                   f"To train on {them} again, choose 'Upload' under Bulk data.")
if bulk is not None and bulk_source == "Upload":
    _still_used(BULK, "upload_train_bulk", f"bulk data ({ui.md(bulk['name'])}) are still used")
if labels is not None and bulk_source == "Upload":
    _still_used(LABELS, "upload_train_labels", f"label table ({ui.md(labels['name'])}) is still used")
if bulk is not None:
    st.caption(f":material/dataset: Bulk: **{ui.md(bulk['name'])}**, {counted(bulk['adata'].n_obs, 'sample')} × "
               f"{counted(bulk['adata'].n_vars, 'gene')}")
if labels is not None:
    made_by = ""
    if labels.get("provenance"):  # its provenance file was given, and fits it
        source = (labels["table"].attrs.get("report") or {}).get("files", {}).get("ic50") or "ln(IC50) values"
        made_by = (f"; made by scatd labels-from-ic50 from {ui.md(source)}, as {ui.md(labels['provenance'])} says "
                   "(the model's card records the drug's threshold)")
    elif labels.get("sha256"):  # an uploaded table without its provenance file: nothing says how it was made
        made_by = (f"; {LABEL_RULE_UNKNOWN}: the model's card says so. Give its .provenance.json above to record "
                   "the drug's ln(IC50) threshold")
    st.caption(f":material/label: Labels: **{ui.md(labels['name'])}**, {counted(labels['table'].shape[0], 'cell line')}"
               f" × {counted(labels['table'].shape[1], 'drug')}{made_by}")
orientation_error = None
if bulk is not None and labels is not None:  # the bulk's IDs say which way round the table is, before a drug is chosen
    from scatd_core.labels import check_bulk_orientation

    try:
        orientation_warning = check_bulk_orientation(labels["table"], bulk["adata"],
                                                     f"The label table {labels['name']}")
    except ScatdError as exc:
        orientation_error = exc
        show_error(exc)
    else:
        if orientation_warning:
            st.warning(ui.md(orientation_warning), icon=":material/warning:")

# ------------------------------------------------------------------ 2. target
st.subheader("2 · Target single cells")
current = ss.get(S.ADATA)
titles = {"Upload": "Upload another dataset"}
if current is not None:
    titles = {"Current dataset": f"Current dataset: {ui.md(ss.get(S.DATA_NAME))} ({current.n_obs:,} cells)", **titles}
target_source = st.radio("Target", list(titles), horizontal=True, format_func=titles.get, key="train_target_source")
target_mask = None
target_upload = None  # the uploaded target's entry (its file's sha256), None for the current dataset
if target_source == "Current dataset":
    target, target_name = current, ss.get(S.DATA_NAME) or "current dataset"
    target_mask = ui.qc_mask(current)
    if target_mask is not None:
        st.caption(f":material/filter_alt: The Data page's QC filter is on: the {int((~target_mask).sum()):,} "
                   "cells marked 'filtered (QC)' are left out of training and of the evaluation, as the Predict "
                   f"page leaves them out; {int(target_mask.sum()):,} cells are used.")
else:
    _upload_anndata("Single cells (cells × genes)", "upload_train_target", TARGET,
                    "Any format the Data page reads; counts are log-normalised, every gene is z-scored.")
    entry = target_upload = ss.get(TARGET)
    target, target_name = (entry["adata"], entry["name"]) if entry else (None, None)
    if entry is not None:  # the file in use, as for the bulk data and labels; kept after a failed upload
        failed, shown = ss.get(TARGET + FAILED), ss.get("upload_train_target")
        if failed and shown is not None and failed[0] == shown.file_id:
            st.info(f"Your earlier target ({ui.md(target_name)}) is still used.", icon=":material/info:")
        st.caption(f":material/scatter_plot: Target: **{ui.md(target_name)}**, {target.n_obs:,} cells × "
                   f"{target.n_vars:,} genes")

ANSWERED = "train_resistant_answered"  # {column: value} answered on this page (the caption says where it was)
CLICKED = "train_resistant_clicked"    # [column, value] of a radio just clicked, recorded on the data this run


def _clicked(key: str, column: str) -> None:
    ss[CLICKED] = [column, ss.get(key)]


def _resistant_radio(target, column: str, key: str, *, shared: bool, uses: str, help_text: str | None = None):
    """Which value of ``column`` means resistant: one radio, kept on the page with the current answer
    (recorded on the data, recognised from the words, or none yet) so that a mis-click can be undone;
    a click records the new answer on the data. ``shared``: the Data page's dataset, whose answer it is."""
    from scatd_core.labels import (DIRECTION_RECOGNISED, answer_direction, direction_how, label_counts,
                                   label_direction)

    values = [str(v) for v in label_counts(target.obs[column]).index]
    clicked = ss.get(CLICKED)
    if clicked and clicked[0] == column and ss.pop(CLICKED) and clicked[1] in values:
        answer_direction(target, column, clicked[1])
        ss.setdefault(ANSWERED, {})[column] = clicked[1]
        if shared:  # the Data page's radio shows the answer on the data again (its kept value would put it back)
            ss.pop(f"label_resistant_{column}", None)
    recorded = label_direction(target, column)
    ss[key] = recorded if recorded in values else None  # the answer on the data (the Data page may have changed it)
    choice = st.radio(f"Which value of '{ui.md(column)}' means **resistant**?", values, key=key, horizontal=True,
                      format_func=ui.md, on_change=ui.detached(_clicked), args=(key, column), help=help_text)
    if choice is None:
        return None
    if direction_how(target, column) == DIRECTION_RECOGNISED:
        where = "was recognised from the words"  # resistant / sensitive, R / S...: never numbers
    elif ss.get(ANSWERED, {}).get(column) == choice or not shared:
        where = "is your answer on this page" + (" (the Data page's too: it is the same dataset)" if shared else "")
    else:
        where = "is your answer on the Data page"
    st.caption(f"Resistant = '{ui.md(choice)}': it {where}. Change it above if that is wrong: it decides {uses}.")
    return choice


label_column = resistant_value = None
if target is not None:
    from scatd_core.labels import label_counts

    candidates = [c for c in target.obs.columns if target.obs[c].nunique(dropna=True) == 2]
    default = ss.get(S.LABEL_COLUMN) if target_source == "Current dataset" else None
    choices = [None] + candidates
    label_column = st.selectbox("True labels of the cells (evaluation only; never used for training)", choices,
                                index=choices.index(default) if default in choices else 0,
                                format_func=ui.detached(lambda c: "none" if c is None else c), key="train_label_column",
                                placeholder="none")
    shared = target_source == "Current dataset"
    if label_column is not None:  # the same one question as on the Data page, never a silent default
        resistant_value = _resistant_radio(target, label_column, f"train_resistant_{label_column}", shared=shared,
                                           uses="which cells count as resistant in the evaluation saved on the model's card",
                                           help_text="SCAD's 'response' column: 1 = sensitive, so 0 = resistant.")
        if resistant_value is None:
            st.warning("Say which value means resistant (numbers such as 0/1 are never guessed), or choose no label "
                       "column.", icon=":material/help:")

    # a few labelled cells to train with: a column holding labels for some cells and blanks for the others
    few_choices = [None] + [c for c in candidates if c != label_column]
    few_column = st.selectbox("Labelled cells to train with (optional): a column with a label for a few cells and "
                              "blanks for the others", few_choices, key="train_few_shot_column",
                              format_func=ui.detached(lambda c: "none" if c is None else c), placeholder="none",
                              help="Semi-supervised training: the bulk, these labelled cells and the unlabelled rest. "
                                   "At least 2 cells of each class. Cells labelled here are left out of the target "
                                   "evaluation.")
    few_resistant = None
    if few_column is not None:
        few_resistant = _resistant_radio(target, few_column, f"train_resistant_{few_column}", shared=shared,
                                         uses="which labelled cells the model trains on as resistant")
        if few_resistant is not None:
            n_known = int(label_counts(target.obs[few_column]).sum())
            st.caption(f"{counted(n_known, 'labelled cell')} of {target.n_obs:,} in '{ui.md(few_column)}' will be used for "
                       "training.")

# ------------------------------------------------------------------ 3. drug and settings
st.subheader("3 · Drug and training")
if bulk is None or labels is None or target is None:
    st.info("Give the bulk data, its labels and the target cells above to train a model.")
    ui.stop()
if orientation_error is not None:
    st.info("Give a label table that fits the bulk data (cell lines as rows, see above) to train a model.")
    ui.stop()

table = labels["table"]
drug = st.selectbox("Drug", list(table.columns), help="A column of the label table.", key="train_drug")
from scatd_core.labels import drug_label_values, other_label_values  # noqa: E402

col = drug_label_values(table, drug)  # lower case, missing markers as ""
in_bulk = table.index.isin(bulk["adata"].obs_names)
n_sensitive, n_resistant = int(((col == "sensitive") & in_bulk).sum()), int(((col == "resistant") & in_bulk).sum())
others = col[in_bulk & (col != "") & ~col.isin(["sensitive", "resistant"])]
n_without = int((in_bulk & (col == "")).sum()) + bulk["adata"].n_obs - int(in_bulk.sum())
other_words = (f", {len(others):,} with another value ({ui.md(', '.join(map(repr, sorted(set(others))[:5])))})"
               if len(others) else "")
st.caption(f"{ui.md(drug)}: {n_sensitive} sensitive and {n_resistant} resistant of the {bulk['adata'].n_obs:,} bulk "
           f"cell lines{other_words}; {n_without:,} without a label for this drug (used for pretraining only).")
# refused as training would refuse it, said under its counts; its hint says how to reach the label upload and the
# 'No label table?' builder when the demo panel's mode hides them
other_values = other_label_values(table, drug, upload_shown=bulk_source == "Upload")
if other_values is not None:
    show_error(other_values)
too_few_slot = st.empty()  # the refusal of a drug with too few lines of a class, said under its counts

with st.expander("Settings"):
    from scatd_core.train import TrainSettings, default_model_name, free_model_name
    from scatd_core._train_settings import MIN_LINES_PER_CLASS

    d = TrainSettings()
    a1, a2, a3, a4 = st.columns(4)
    seed = a1.number_input("Seed", min_value=0, max_value=2 ** 32 - 1, value=0, step=1, key="train_seed")
    folds = a2.number_input("CV folds", min_value=2, max_value=10, value=d.folds, key="train_folds")
    pretrain_epochs = a3.number_input("Pretraining epochs", min_value=1, max_value=1000, value=d.pretrain_epochs,
                                      key="train_pretrain_epochs")
    adaptation = a4.checkbox("Adapt to the target", value=True,
                             help="Pretrain the backbones on bulk + target cells (unlabelled). Off: the target is only "
                                  "predicted, never used for training.")
    head = st.radio("Drug head", ["linear", "scatd"], horizontal=True, key="train_head",
                    format_func={"linear": "ensemble of linear heads (default)",
                                 "scatd": "the original scATD head (one model)"}.get,
                    help="Default: several backbones from different seeds, each with a class-balanced linear head on "
                         "its latent and the standardised genes; predictions average them. The original head "
                         "(fc3 → bn3 → Swish → fc4) chooses its epochs by bulk cross-validation, then fine-tunes with MMD.")
    if head == "linear":
        b1, b2, b3 = st.columns(3)
        members = b1.number_input("Members", min_value=1, max_value=50, value=d.members, key="train_members",
                                  help="Backbones pretrained from different seeds; time grows with them.")
        head_c = b2.number_input("Head C (inverse L2 strength)", min_value=1e-4, max_value=100.0, value=d.head_c,
                                 format="%.4g", key="train_head_c")
        head_inputs = b3.selectbox("Head inputs", ["latent+input", "latent"], key="train_head_inputs",
                                   format_func={"latent+input": "latent + standardised genes",
                                                "latent": "latent only"}.get)
        epochs, finetune_epochs, mmd_weight = d.epochs, d.finetune_epochs, d.mmd_weight
    else:
        members, head_c, head_inputs = d.members, d.head_c, d.head_inputs
        b1, b2, b3 = st.columns(3)
        epochs = b1.number_input("Head epochs (at most)", min_value=1, max_value=1000, value=d.epochs,
                                 key="train_epochs", help="On the frozen encoder; the cross-validation picks how many.")
        finetune_epochs = b2.number_input("Fine-tuning epochs", min_value=0, max_value=1000, value=d.finetune_epochs,
                                          key="train_finetune_epochs",
                                          help="Then the encoder is trained too (with MMD to the target when adapting).")
        mmd_weight = b3.number_input("MMD weight", min_value=0.0, value=d.mmd_weight, step=0.5, key="train_mmd_weight")
    min_lines_single = st.number_input(
        "Fewest labelled cell lines per class", min_value=2, max_value=200, value=MIN_LINES_PER_CLASS,
        key="train_min_lines",
        help=f"A drug with fewer labelled cell lines than this in either class is refused before training (default "
             f"{MIN_LINES_PER_CLASS}, as for a panel). Below {MIN_LINES_PER_CLASS} the model is trained, but its card "
             "says that its bulk scores cannot be trusted.")
    model_name = st.text_input("Model name", value="",
                               # the name an empty field gives: a number added when a model has it already
                               placeholder=free_model_name(default_model_name(drug, "dist_vae")),
                               help="Empty: the name shown. A name a model of the library has already is refused "
                                    "before training.")
    if auth.mode() != "none":  # a lab server with logins: say what the other users will see of it
        st.caption("The model goes into this server's shared model library: every user of the server can use it "
                   "and read its card, which names you, the files that trained it, its genes and the label "
                   "column, and its scores. Your data themselves stay in your session.")
from scatd_core.labels import too_few_lines  # noqa: E402

too_few = other_values or too_few_lines(drug, n_sensitive, n_resistant, int(min_lines_single))
if too_few is not None and other_values is None:
    with too_few_slot.container():
        show_error(too_few)
# what the model records of its inputs: the uploads' own names (never a server path)
input_names = {"bulk": bulk["name"], "labels": labels["name"], "target": target_name}
# an uploaded file (bulk, label table, target) is recorded as its file: its name and the sha256 of the uploaded
# bytes, as scatd train records the same file; data with no file of their own (the demo panel, a label table built
# here, the Data page's current dataset) are recorded by a hash of their values
input_files = {key: {"file": kept["name"], "sha256": kept["sha256"]}
               for key, kept in (("bulk", bulk), ("labels", labels), ("target", target_upload))
               if kept is not None and kept.get("sha256")} or None
settings = TrainSettings(pretrain_epochs=int(pretrain_epochs), head=head, members=int(members),
                         head_c=float(head_c), head_inputs=head_inputs, epochs=int(epochs),
                         finetune_epochs=int(finetune_epochs), mmd_weight=float(mmd_weight))

with st.expander("Or train a panel: one model per drug, with these settings (resumable)"):
    panel_drugs = st.multiselect("Drugs of the panel", list(table.columns), key="train_panel_drugs",
                                 help="Each is trained as above and installed in the model library; score them "
                                      "together on the Drug panel page.")
    p1, p2 = st.columns(2)
    min_lines = p1.number_input("Skip drugs with fewer labelled cell lines per class than", min_value=2,
                                max_value=200, value=MIN_LINES_PER_CLASS, key="train_panel_min_lines")
    # the 'Replace it' box's key ends with this count, raised at each save and each change of the name: a new,
    # unticked box, so each replace is asked for itself (QA r1: it stayed ticked after a replace)
    panel_name = p2.text_input("Save them as your panel named (optional)", key="train_panel_name", max_chars=64,
                               on_change=ui.detached(lambda: ss.__setitem__(
                                   "train_panel_replace_asked", ss.get("train_panel_replace_asked", 0) + 1)))
    replace_saved, replace_slot = False, None  # a saved panel of this name (whatever its case) replaced only if asked
    if panel_name.strip():
        from scatd_core.panel import find_saved, list_panels, saved_panel_drugs

        def ask_replace(slot) -> bool:
            """The 'Replace it' box for ``panel_name``'s saved panel, drawn in ``slot``; False when none."""
            try:
                your_panels = list_panels(auth.current_user().name if auth.current_user() else None)
            except ScatdError:
                your_panels = {}
            if (taken_name := find_saved(your_panels, panel_name)) is None:
                return False
            return slot.checkbox(
                f"Replace it: your saved panel '{ui.md(taken_name)}' "
                f"({ui.md(saved_panel_drugs(your_panels[taken_name]))}) becomes the trained models",
                key=f"train_panel_replace_{taken_name}_{ss.get('train_panel_replace_asked', 0)}")

        replace_slot = st.empty()
        replace_saved = ask_replace(replace_slot)
    label_drug = None
    if label_column is not None and resistant_value is not None and panel_drugs:
        label_drug = st.selectbox(f"The cells' true labels ('{ui.md(label_column)}') are for", [None] + panel_drugs,
                                  index=panel_drugs.index(drug) + 1 if drug in panel_drugs else 0,
                                  format_func=ui.detached(lambda d: "none of these drugs" if d is None else d),
                                  key="train_panel_label_drug", placeholder="none of these drugs",
                                  help="That drug's model is evaluated on them (its target AUROC in the summary); "
                                       "they are never used for training.")
    few_drug = None
    if few_column is not None and few_resistant is not None and panel_drugs:
        # the labelled cells are one drug's labels (the cells' own drug): only that drug's model trains with them
        few_drug = st.selectbox(f"The labelled cells to train with ('{ui.md(few_column)}') are for",
                                [None] + panel_drugs,
                                index=panel_drugs.index(drug) + 1 if drug in panel_drugs else 0,
                                format_func=ui.detached(lambda d: "none of these drugs" if d is None else d),
                                key="train_panel_few_shot_drug", placeholder="none of these drugs",
                                help="That drug's model trains with them (as the single model above would); the "
                                     "other drugs are trained without them.")
    keep_below_chance = st.checkbox("Keep models at or below chance (bulk CV AUROC ≤ 0.5) in the saved panel",
                                    key="train_panel_below_chance",
                                    help="By default they are trained and installed, but left out of the saved panel.")
    if st.button("Train the panel", key="btn_train_panel", disabled=not panel_drugs):
        if unwritable := ui.library_unwritable():  # before any training: a model not saved is lost
            st.error(ui.md(unwritable), icon=":material/block:")
            ui.stop()
        from scatd_core.demo.simulate import is_simulated
        from scatd_core.labels import few_shot_from_column
        from scatd_core.panel import MIN_MODELS, check_panel_free, save_panel
        from scatd_core.train import models_to_save, train_panel

        ss[STOP], ss[RUNNING] = False, "panel"
        bar = st.progress(0.0, text="Starting…")
        user_name = auth.current_user().name if auth.current_user() else None
        try:
            if panel_name.strip():  # a bad name, or a saved panel's unless 'Replace it', refused before any training
                check_panel_free(panel_name, user_name, replace=replace_saved,
                                 hint="Choose another name, or tick 'Replace it' to replace it.")
            with jobs.computing("the panel training"):
                summary, trained = train_panel(
                    bulk["adata"], table, panel_drugs, target,
                    settings=replace(settings, seed=int(seed), folds=int(folds)),
                    adaptation=adaptation, min_lines_per_class=int(min_lines), trained_by=user_name,
                    target_labels={label_drug: label_column} if label_drug is not None else None,
                    target_resistant_value=resistant_value if label_drug is not None else None,
                    target_mask=target_mask, input_names=input_names, input_files=input_files,
                    source="the Train page's panel",
                    few_shot_labels=few_shot_from_column(target, few_column) if few_drug is not None else None,
                    few_shot_drug=few_drug, demo=is_simulated(bulk["adata"]),  # the simulated panel: demo models
                    progress=with_eta(ui.progress_to(bar)), should_stop=ui.stop_when(STOP))
            if panel_name.strip():
                kept, left_out = models_to_save(summary, trained, include_below_chance=keep_below_chance)
                if left_out:
                    st.warning(f"Left out of the saved panel, at or below chance on the bulk CV: "
                               f"{ui.md(', '.join(left_out))} (tick *Keep models at or below chance* to keep them).",
                               icon=":material/warning:")
                if len(kept) >= MIN_MODELS:
                    try:  # the summary is shown whatever happens here
                        save_panel(panel_name.strip(), [b.path.name for b in kept], user_name, replace=replace_saved)
                    except ScatdError as exc:
                        show_error(exc)
                    else:
                        # a new, unticked 'Replace it' box, drawn now in place of the ticked one
                        ss["train_panel_replace_asked"] = ss.get("train_panel_replace_asked", 0) + 1
                        ask_replace(replace_slot)
                        st.success(f"{'Replaced' if replace_saved else 'Saved'} your panel "
                                   f"'{ui.md(panel_name.strip())}'.", icon=":material/check_circle:")
                else:
                    st.warning(f"Panel '{ui.md(panel_name.strip())}' was not saved: only "
                               f"{counted(len(kept), 'drug')} {'has' if len(kept) == 1 else 'have'} a model for it, and a panel needs at least {MIN_MODELS}. The trained models are in the "
                               "library.", icon=":material/warning:")
        except ScatdError as exc:
            show_error(exc)
        else:
            ss[PANEL_RESULT] = summary
            ui.clear_library_cache()
        ss[RUNNING] = False
        bar.empty()
    if ss.get(PANEL_RESULT) is not None:
        from scatd_core.train import summary_for_reading, verdict_lines

        st.caption("Each drug's model card in brief (run the same panel again to resume an interrupted one):")
        if lines := verdict_lines(ss[PANEL_RESULT]):  # each drug's verdict, as a sentence, as scatd train-panel says it
            st.markdown("\n".join(f"- {ui.md(line)}" for line in lines))
        ui.table(summary_for_reading(ss[PANEL_RESULT]), hide_index=True)
        ui.link("Drug panel", "Score your data against them", ":material/arrow_forward:")

b_train, b_stop = st.columns([1, 1])
start = b_train.button("Train", type="primary", key="btn_train_start", disabled=too_few is not None,
                       help=("This drug's labels are not all sensitive/resistant (see above)." if other_values else
                             "This drug has too few labelled cell lines of a class (see above)." if too_few else None))
b_stop.button("Stop", key="btn_train_stop", on_click=ui.detached(lambda: ss.__setitem__(STOP, True)),
              help="Stops the run after the current epoch; nothing is saved.")

if start:
    if unwritable := ui.library_unwritable():  # before any training: a model not saved is lost
        st.error(ui.md(unwritable), icon=":material/block:")
        ui.stop()
    from scatd_core.demo.simulate import is_simulated
    from scatd_core.train import train_drug_model

    ss[STOP], ss[RUNNING] = False, True
    bar = st.progress(0.0, text="Starting…")
    # what the data show, said as soon as it is known, not only on the card at the end; cleared when the card
    # says them (a container's .empty() would only add an empty element to it, leaving them said twice)
    said_slot = st.empty()
    said = said_slot.container()
    try:
        few_shot = None
        if few_column is not None and few_resistant is not None:
            from scatd_core.labels import few_shot_from_column

            few_shot = few_shot_from_column(target, few_column)
        with jobs.computing("the training"):
            bundle, report = train_drug_model(
                bulk["adata"], table, drug, target, seed=int(seed), folds=int(folds), settings=settings,
                adaptation=adaptation, target_label_column=label_column if resistant_value is not None else None,
                target_resistant_value=resistant_value, target_mask=target_mask, few_shot_labels=few_shot,
                name=model_name.strip() or None, input_names=input_names, input_files=input_files,
                source="the Train page",
                demo=is_simulated(bulk["adata"]),  # the simulated demo panel: a demo model, marked so everywhere
                trained_by=(auth.current_user().name if auth.current_user() else None),
                min_lines_per_class=int(min_lines_single), progress=with_eta(ui.progress_to(bar)),
                notice=ui.detached(lambda message: said.warning(ui.md(message), icon=":material/warning:")),
                should_stop=ui.stop_when(STOP))
    except ScatdError as exc:
        ss[RUNNING] = False
        bar.empty()
        show_error(exc)
        ui.stop()
    ss[RUNNING] = False
    bar.empty()
    said_slot.empty()  # the card below says them again
    from scatd_core.train import report_to_json

    ss[RESULT] = {"bundle_path": str(bundle.path), "name": bundle.name, "report": report_to_json(report),
                  "predictions": report["target_predictions"], "target": target_name, "demo": bundle.is_demo}
    ui.clear_library_cache()
elif (stopped := ss.pop(RUNNING, False)):  # a run began and never ended: stopped by this page's Stop, by
    # Streamlit's own Stop beside "Running..." (which ends the run without a rerun: the first click after it
    # lands here), by another click, or by a reload; its progress bar is not drawn again
    st.info("The panel training was stopped; the drugs' models finished before it are in the model library (train "
            "the same panel again to resume)." if stopped == "panel" else
            "Training was stopped; no model was saved.", icon=":material/block:")
    ss[STOP] = False
elif ss.get(STOP):  # a click on Stop with nothing running says nothing
    ss[STOP] = False

# ------------------------------------------------------------------ results
result = ss.get(RESULT)
if result is None:
    ui.stop()
rep = result["report"]
st.divider()
st.subheader(f"Result: {ui.md(result['name'])}")
st.success(f"Saved to the model library as **{ui.md(result.get('name') or Path(result['bundle_path']).name)}** "
           f"(its folder there: {ui.md(Path(result['bundle_path']).name)}; {rep['seconds']:.0f} s).")
if result.get("demo"):
    st.info("Trained on the simulated demo panel, so it is a demo model: labelled demo (simulated data) "
            "everywhere and offered only with the demo data. It says nothing about real cells.",
            icon=":material/science:")
metrics = rep["metrics"]
tm = metrics.get("target")
from scatd_core.card import few_lines_sentence  # noqa: E402

untrusted = next((few_lines_sentence(ev) for ev in rep["card"]["evaluations"] if few_lines_sentence(ev)), None)
if untrusted:  # a lower minimum of cell lines per class: the bulk scores below cannot be trusted
    st.warning(untrusted, icon=":material/warning:")
m = st.columns(4)
m[0].metric("Bulk CV AUROC", f"{metrics['cv']['auroc']:.3f}", delta=auroc_interval_words(metrics["cv"], short=True),
            delta_color="off", delta_arrow="off", help=f"Out-of-fold over {metrics['cv']['folds']} folds; below it, its 95% bootstrap "
                                    "CI: when it includes 0.5, the cell lines do not show the model separating "
                                    "resistant from sensitive.")
cv_chance = metrics["cv"].get("auprc_chance")
if cv_chance is None:  # a result from before the chance level was recorded
    cv_chance = rep["labels"]["resistant"] / max(rep["labels"]["resistant"] + rep["labels"]["sensitive"], 1)
m[1].metric("Bulk CV AUPRC", f"{metrics['cv']['auprc']:.3f}", delta=f"chance {cv_chance:.2f}", delta_color="off",
            delta_arrow="off", help="Positive class: resistant. A ranking by chance scores the share of resistant "
                                    "cell lines; for many drugs most lines are resistant, so read the AUPRC next to it.")
if tm:
    m[2].metric("Target AUROC", f"{tm['auroc']:.3f}", delta=auroc_interval_words(tm, short=True), delta_color="off",
                delta_arrow="off", help=f"{tm['n_evaluated']} cells with labels in '{ui.md(tm['label_column'])}'"
                + (f", {tm['n_few_shot_cells_left_out']} cells used for training left out" if
                   tm["n_few_shot_cells_left_out"] else "") + "; below it, its 95% bootstrap CI.")
    t_chance = tm.get("auprc_chance", tm["n_positive"] / max(tm["n_evaluated"], 1))
    m[3].metric("Target AUPRC", f"{tm['auprc']:.3f}", delta=f"chance {t_chance:.2f}",
                delta_color="off", delta_arrow="off",
                help="Positive class: resistant. A ranking by chance scores the share of resistant cells among "
                     "those evaluated.")
else:
    m[2].metric("Target cells", f"{rep['target']['n_used']:,}")
# an AUROC interval with 0.5 in it is said once, in the model card's verdicts below (the tiles show the interval)
lab, genes = rep["labels"], rep.get("genes")
st.caption(f"{lab['sensitive']} sensitive / {lab['resistant']} resistant bulk cell lines; "
           f"{counted(lab['n_bulk_without_label'], 'bulk cell line')} without a label for this drug (pretraining only)."
           + (f" Gene panel: {genes['n_panel']:,} genes shared by bulk and target." if genes else ""))
st.markdown("**Model card**")
ui.show_card(rep["card"], key="train_card_figure")

cv = rep["cv"]
if cv.get("per_fold_head"):  # the original head: the final model's epochs were chosen on this curve
    curves = {f"fold {fold['fold']}": fold["val_auroc"] for fold in cv["per_fold_head"]}
    curves["mean"] = cv["head_curve"]
    ui.chart(pl.curve_figure(curves, "Validation AUROC per head epoch (bulk CV, frozen encoder)", "epoch",
                             "AUROC", highlight="mean", mark_x=cv["head_epochs"]), key="train_cv_curve")
    if cv.get("fold_head_epochs"):
        st.caption(f"Marked: the final model's {cv['head_epochs']} head epochs (the mean over all folds). The bulk "
                   "CV scores take each fold's epochs from the other folds' mean curve, not its own labels: "
                   + ", ".join(f"fold {k + 1}: {e}" for k, e in enumerate(cv["fold_head_epochs"])) + ".")
losses = rep["pretraining"]["loss"]
if losses:
    curves = ({f"member {k + 1}": c for k, c in enumerate(losses) if c} if isinstance(losses[0], list)
              else {"loss": losses})
    if curves:
        ui.chart(pl.curve_figure(curves, "Backbone pretraining loss", "epoch", "loss"), key="train_pretrain_loss")
        if max(len(c) for c in curves.values()) == 1:  # a point, not a curve: said why
            st.caption("One pretraining epoch gives one loss value (the point above); more epochs draw its curve.")
st.download_button("Target predictions (CSV)", export.to_csv_bytes(result["predictions"]),
                   file_name=f"{Path(result['bundle_path']).name}_target_predictions.csv", mime="text/csv",
                   help="One row per target cell: P(resistant), the model's default threshold (not calibrated), "
                        "the call at it and, where the target had labels, the known label (docs/outputs.md).")
if st.button("Use this model for prediction", key="btn_train_use_model"):
    ui.set_bundle(result["bundle_path"])
    st.success("Selected: it is the model the Predict page runs on your data.")
    ui.link("Predict", "Go to the Predict page", ":material/arrow_forward:")
