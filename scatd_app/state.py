"""Every value the pages share through ``st.session_state``, and the one invalidation chain.

The session's dataset is one AnnData (:data:`ADATA`) that the steps annotate in place, scanpy
style: the prediction (``obs['scatd_*']``, ``uns['scatd']``), the UMAP and clusters, the
biomarkers. What is derived from it lives in that AnnData, so "what is current" is one question:
which data, QC mask and model produced the prediction in it (:data:`PREDICTION`).

==================  ==========================================================================
key                 value
==================  ==========================================================================
ADATA               the current dataset (``anndata.AnnData``), annotated in place
DATA_NAME           its display name (the uploaded file's name, or "demo (simulated data)")
DATA_TOKEN          identifies this upload in this session (never shared between sessions)
UPLOAD              the Data page's last upload, on disk: ``{"id", "name", "path"}``
                    (:func:`scatd_app.session.keep_upload`; kept for a reload)
IS_DEMO             whether the dataset is the built-in demo
DEMO_WANTED         set when *Try the demo* is clicked, until the demo is loaded (or fails): the Data page
                    follows a build the click started, also after the user left the page meanwhile
LABEL_COLUMN        obs column holding true labels, for evaluation (or None)
SAMPLE_COLUMN       obs column holding the sample / batch (or None)
CELL_METADATA       the Data page's cell metadata table: ``{"id", "name", "table", "source", "token",
                    "problem"}`` (the upload, its rows, the dataset upload it was given for, the data
                    token it was last added to, and why it could not be); forgotten with that upload
BUNDLE_PATH         path (str) of the chosen model bundle
BUNDLE_IDENTITY     ``(path, identity, name)`` of the model chosen there (:func:`scatd_core.bundle.model_identity`):
                    another model that takes the folder later is never used in its place
PREDICTION          token of (data, QC mask, model, settings) of the prediction in ADATA, or None
REPORT_SEEN         the PREDICTION token of the results the Report page was last opened with (the
                    sidebar's progress ticks "Report" for them)
INPUTS              ``(token, ModelInput)``: the model input of ADATA for the chosen model (its token
                    names the data, QC mask and model, so it is rebuilt when any changes)
EMBEDDING           settings token of the UMAP stored in ADATA
EMBEDDING_PENDING   the UMAP started in the background after a prediction (:class:`scatd_app.ui.Pending`)
UMAP_DECLINED       settings token of a UMAP the user stopped: not started again until asked
PREDICT_AHEAD       the prediction started in the background before the user asked for it
                    (:class:`scatd_app.ui.Ahead`), taken by the Predict page's Run button
BIOMARKERS          settings token of the biomarkers stored in ADATA
PANEL               token of (data, QC mask, models, settings) of the panel prediction in ADATA
PANEL_CHOSEN        ``{path: (identity, name)}``: which model each folder chosen on the Panel page held when
                    it was chosen (:func:`scatd_core.bundle.model_identity`): one removed, or another model
                    in its folder since, is said and left out, never used in its place
PANEL_MARKERS       ``(panel token, table)``: top genes of the cells resistant to every drug
EMBED_ESTIMATE      ``(token, estimate)``: the time foundation-model embeddings of ADATA would take
MODEL_FITS          ``(token, {path: fit})``: how well each model can score ADATA
                    (:func:`scatd_core.inputs.fit_for_data`), by which the Model page chooses its default;
                    the token names the upload, its gene-ID mapping and the model library as it stands
==================  ==========================================================================

The chain (:func:`invalidate`): new data forgets everything; a new QC mask, model or gene-ID
mapping forgets the prediction and what came from it (UMAP, clusters, biomarkers).
"""

from __future__ import annotations

import streamlit as st

ADATA = "adata"
DATA_NAME = "data_name"
DATA_TOKEN = "data_token"
UPLOAD = "data_kept_upload"
IS_DEMO = "is_demo"
DEMO_WANTED = "demo_wanted"
LABEL_COLUMN = "label_column"
SAMPLE_COLUMN = "sample_column"
CELL_METADATA = "cell_metadata"
BUNDLE_PATH = "bundle_path"
BUNDLE_IDENTITY = "model_chosen_identity"  # kept for a reload with BUNDLE_PATH (its "model_" prefix)
PREDICTION = "prediction_token"
REPORT_SEEN = "report_seen"
INPUTS = "model_inputs"
EMBEDDING = "embedding_token"
EMBEDDING_PENDING = "embedding_pending"
UMAP_DECLINED = "umap_declined"
# (not "predict_...": that prefix marks widget values, kept across pages and for a reload)
PREDICT_AHEAD = "ahead_prediction"
AHEAD_DECLINED = "ahead_declined"  # token of a prediction the user stopped: not started ahead again
BIOMARKERS = "biomarkers_token"
PANEL = "panel_token"
PANEL_CHOSEN = "panel_models_identity"  # kept for a reload with the chosen models (its "panel_" prefix)
PANEL_MARKERS = "panel_markers"
EMBED_ESTIMATE = "embed_estimate"
MODEL_FITS = "fits_for_data"  # (data and library token, {bundle path: fit_for_data}): the default model's ranking
QC_METRICS = "qc_metrics"            # ((data token, matrix choice), per-cell QC metrics)
PREDICT_RUNNING = "predict_running"  # set while a prediction runs; still set after an interrupted run
# the same for the other long runs (ui.long_run sets and clears them)
EXPLAIN_RUNNING = "running_explain"
PANEL_RUNNING = "running_panel"
EMBED_RUNNING = "running_embed"
UMAP_RUNNING = "running_umap"
PANEL_UMAP_RUNNING = "running_panel_umap"

#: Widget values that must survive a visit to another page (Streamlit forgets the state of
#: widgets that are not drawn). Buttons and uploaders never use these prefixes (their values
#: cannot be set): their keys start with ``btn_`` / ``upload_`` (tests/test_app_server.py checks the
#: source; :func:`keep_widget_state` skips them anyway).
KEPT_WIDGET_KEYS = (LABEL_COLUMN, SAMPLE_COLUMN)
KEPT_WIDGET_PREFIXES = ("qc_", "data_", "model_", "predict_", "cells_", "report_", "bio_", "train_", "label_",
                         "panel_")

#: What each level of the chain forgets (each level includes the ones after it).
#: The *_RUNNING flags say "the last run was stopped" on the page's next run: forgotten with what that
#: run computed, so new data or a new prediction never hear of an earlier one's stop. (The prediction's
#: own flag only with the data: the Predict page forgets the prediction while its run holds the flag.)
_CHAIN = {
    "data": (ADATA, DATA_NAME, DATA_TOKEN, IS_DEMO, LABEL_COLUMN, SAMPLE_COLUMN, QC_METRICS, INPUTS, EMBED_ESTIMATE,
             MODEL_FITS, PANEL, PANEL_MARKERS, PREDICT_RUNNING, EMBED_RUNNING, PANEL_RUNNING, PANEL_UMAP_RUNNING),
    "prediction": (PREDICTION, REPORT_SEEN, PREDICT_AHEAD, EMBEDDING, EMBEDDING_PENDING, UMAP_DECLINED, BIOMARKERS,
                   EXPLAIN_RUNNING, UMAP_RUNNING),
}


def keep_widget_state() -> None:
    """Turn the kept widgets' values into plain session values (call before the page runs).

    Streamlit logs a warning, with a stack trace, for a widget given a default (``value=``,
    ``index=``) whose key was also written this run. Here that is the design: the default
    applies to a new session, the kept value afterwards. That one warning is switched off."""
    from streamlit import config

    if not config.get_option("global.disableWidgetStateDuplicationWarning"):
        config.set_option("global.disableWidgetStateDuplicationWarning", True, "scatd_app.state")
    ss = st.session_state
    for key in list(ss.keys()):
        if (key in KEPT_WIDGET_KEYS or str(key).startswith(KEPT_WIDGET_PREFIXES)) and not _value_cannot_be_set(key):
            ss[key] = ss[key]


#: Streamlit's value types of the widgets whose value a script may not set (buttons, download and
#: form submit buttons, file uploaders, camera and audio inputs, chat inputs): setting one's key and
#: drawing it raises StreamlitValueAssignmentNotAllowedError.
_UNSETTABLE_VALUE_TYPES = frozenset({"trigger_value", "string_trigger_value", "json_trigger_value",
                                     "file_uploader_state_value", "chat_input_value"})
#: ... and their value converters' classes (an empty uploader's value has no value type)
_UNSETTABLE_SERDES = frozenset({"ButtonSerde", "FileUploaderSerde", "CameraInputSerde", "AudioInputSerde",
                                "ChatInputSerde"})


def _value_cannot_be_set(key: str) -> bool:
    """Whether ``key`` is a button-like widget's (see :data:`_UNSETTABLE_VALUE_TYPES`).

    A second line of defence: such widgets' keys start with ``btn_`` / ``upload_``, never with a
    kept prefix (tests/test_app_server.py checks the source). Streamlit has no public way to ask a
    widget's kind, so this asks its session state; where that fails, the key is kept as before."""
    try:
        from streamlit.runtime.state import get_session_state

        inner = get_session_state()._state
        metadata = inner.get_widget_metadata(inner.get_widget_id_from_key(key))
    except Exception:
        return False
    if metadata is None:
        return False
    serde = type(getattr(metadata.deserializer, "__self__", None)).__name__
    return metadata.value_type in _UNSETTABLE_VALUE_TYPES or serde in _UNSETTABLE_SERDES


def invalidate(level: str, *, keep_result: bool = False) -> None:
    """Forget ``level`` (``"data"`` or ``"prediction"``) and everything derived from it.

    Forgetting the prediction also removes it (and its UMAP, clusters and biomarkers) from the
    session's AnnData, so no page can show results that do not match the current choices. With
    ``keep_result`` the prediction's own columns stay (a new prediction was just written there)
    and only what came from the earlier one goes.
    """
    from scatd_core.predict import clear

    ss = st.session_state
    levels = list(_CHAIN)
    for name in levels[levels.index(level):]:
        for key in _CHAIN[name]:
            value = ss.pop(key, None)
            if key in (PREDICT_AHEAD, EMBEDDING_PENDING) and value is not None:
                value.cancel()  # a prediction or UMAP computing for what is now forgotten: stop it
    adata = ss.get(ADATA)
    if adata is not None:
        clear(adata, derived_only=keep_result)


def prediction_current(token: str) -> bool:
    """Whether the session's AnnData holds the prediction made with ``token``."""
    return st.session_state.get(PREDICTION) == token


def has_panel() -> bool:
    ss = st.session_state
    return ss.get(ADATA) is not None and ss.get(PANEL) is not None and "scatd_panel" in ss[ADATA].uns


def has_prediction() -> bool:
    """Whether the session holds a prediction (its token, and its results in the data)."""
    from scatd_core._keys import RUN

    ss = st.session_state
    return ss.get(ADATA) is not None and ss.get(PREDICTION) is not None and RUN in ss[ADATA].uns
