"""What every page shares: the sidebar, friendly errors, cached loaders and session helpers.

Caching rules (so that moving between pages recomputes nothing):

- ``st.cache_resource`` for objects that must not be copied: model bundles (their torch models
  load once per process), the model library listing, the store of prediction results;
- ``st.cache_data`` for computations on the data, keyed on content tokens (the upload's sha256,
  the result token), with the heavy objects passed as ``_``-prefixed arguments so Streamlit
  does not hash them.

Per-session values live in ``st.session_state`` under the keys of :mod:`scatd_app.state`.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import threading
import time
from collections import OrderedDict
from pathlib import Path

import anndata as ad
import numpy as np
import streamlit as st

from scatd_app import state
from scatd_core import __version__
from scatd_core.config import limits, model_library_dir
from scatd_core.errors import ScatdError

# Pages in the order of the user's path: (file, title, icon). app.py builds the navigation from it.
ANALYSIS_PAGES = (
    ("pages/1_Data.py", "Data", ":material/upload_file:"),
    ("pages/2_Model.py", "Model", ":material/model_training:"),
    ("pages/3_Predict.py", "Predict", ":material/play_circle:"),
    ("pages/4_Cells.py", "Cells", ":material/scatter_plot:"),
    ("pages/5_Biomarkers.py", "Biomarkers", ":material/genetics:"),
    ("pages/6_Report.py", "Report", ":material/download:"),
)
MODEL_PAGES = (
    ("pages/8_Models.py", "Model library", ":material/inventory_2:"),
    ("pages/7_Train.py", "Train a model", ":material/school:"),
)
PAGE = {title: path for path, title, _ in ANALYSIS_PAGES + MODEL_PAGES}

# Session keys used by these pages only (the shared ones are in scatd_app.state).
POSITIVE_CLASS = "label_positive"      # which value of LABEL_COLUMN means resistant
PREDICT_RUNNING = "predict_running"    # set while a prediction runs; still set after an interrupted run
RESULTS_KEPT = 4                       # prediction results kept in memory across sessions
# Widget values that must survive a visit to another page (Streamlit forgets the state of widgets
# that are not drawn). Buttons and uploaders never use these prefixes: their values cannot be set.
KEPT_WIDGET_KEYS = (state.LABEL_COLUMN, state.SAMPLE_COLUMN, state.THRESHOLD, POSITIVE_CLASS)
KEPT_WIDGET_PREFIXES = ("qc_", "data_", "model_", "predict_", "cells_", "report_")


def keep_widget_state() -> None:
    """Turn the kept widgets' values into plain session values (call before the page runs)."""
    ss = st.session_state
    for key in list(ss.keys()):
        if key in KEPT_WIDGET_KEYS or str(key).startswith(KEPT_WIDGET_PREFIXES):
            ss[key] = ss[key]


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

def show_error(exc: BaseException) -> None:
    """A friendly ``st.error``: what is wrong and what to do; never a traceback."""
    if isinstance(exc, ScatdError):
        st.error(f"**{exc.message}**" + (f"\n\n{exc.hint}" if exc.hint else ""), icon=":material/error:")
    else:
        st.error(f"**Something unexpected went wrong** ({type(exc).__name__}: {str(exc)[:300]}).\n\n"
                 "Nothing was changed. Try again; if it happens again, report it with the file type and "
                 "this message.", icon=":material/error:")


# --------------------------------------------------------------------------------------------
# Upload limit: the widget shows it, the server enforces it
# --------------------------------------------------------------------------------------------

def upload_limit_mb() -> int:
    return limits().max_upload_mb


def sync_upload_limit() -> None:
    """Make the server accept uploads up to ``SCATD_MAX_UPLOAD_MB``.

    Streamlit's upload endpoint reads ``server.maxUploadSize`` on every request, so setting it
    here (app start) lets the environment variable decide without a launcher. Equivalent to
    ``streamlit run app.py --server.maxUploadSize <MB>``.
    """
    from streamlit import config

    wanted = upload_limit_mb()
    if config.get_option("server.maxUploadSize") != wanted:
        config.set_option("server.maxUploadSize", wanted, "SCATD_MAX_UPLOAD_MB")


# --------------------------------------------------------------------------------------------
# Cached loaders
# --------------------------------------------------------------------------------------------

def _library_signature() -> tuple:
    root = model_library_dir()
    if not root.is_dir():
        return (str(root),)
    return (str(root),) + tuple(sorted((p.parent.name, p.stat().st_mtime_ns) for p in root.glob("*/manifest.json")))


@st.cache_resource(show_spinner=False, max_entries=4)
def _library(signature: tuple):
    from scatd_core.bundle import list_library

    return list_library(signature[0])


def library_entries():
    """The model library (cached; refreshed when a bundle is added, removed or changed)."""
    return _library(_library_signature())


def clear_library_cache() -> None:
    _library.clear()


@st.cache_resource(show_spinner="Loading the model…", max_entries=8)
def _bundle(path: str, stamp: tuple):
    from scatd_core.bundle import load_bundle

    return load_bundle(path)


def get_bundle(path: str | None):
    """The bundle at ``path`` (cached per process; reloaded when its files change)."""
    if not path:
        return None
    folder = Path(path)
    stamp = tuple(p.stat().st_mtime_ns for p in (folder / "manifest.json", folder / "weights.safetensors")
                  if p.exists())
    return _bundle(str(folder), stamp)


@st.cache_resource(show_spinner=False)
def device_text() -> str:
    from scatd_core.predict import device_description, resolve_device

    return device_description(resolve_device("auto"))


@st.cache_data(show_spinner="Computing QC metrics…", max_entries=8)
def qc_metrics(token: str, _adata: ad.AnnData):
    from scatd_core.preprocess import qc_metrics as compute

    return compute(_adata)


@st.cache_data(show_spinner="Checking gene coverage…", max_entries=16)
def coverage(token: str, bundle_path: str, _adata: ad.AnnData, _genes: list[str]) -> dict:
    from scatd_core.genes import coverage_report

    return coverage_report(_adata, _genes)


@st.cache_data(show_spinner=False, max_entries=8)
def embedding(result_token: str, basis: str, n_neighbors: int, min_dist: float, resolution: float, seed: int,
              _result: ad.AnnData):
    from scatd_core.embed import compute_embedding

    return compute_embedding(_result, basis=basis, n_neighbors=n_neighbors, min_dist=min_dist,
                             resolution=resolution, seed=seed)


@st.cache_data(show_spinner=False, max_entries=16)
def estimate_seconds(token: str, bundle_path: str, mode: str, n_samples: int, n_cells: int,
                     _adata: ad.AnnData, _bundle) -> float:
    """Predicted run time, from timing the same prediction on up to 256 cells."""
    from scatd_core.predict import predict

    n = min(256, _adata.n_obs)
    part = _adata[:n].to_memory() if _adata.isbacked else _adata[:n].copy()
    predict(part, _bundle, mode=mode, n_samples=n_samples)  # first call loads the model: not timed
    t0 = time.perf_counter()
    predict(part, _bundle, mode=mode, n_samples=n_samples)
    return (time.perf_counter() - t0) * n_cells / n


@st.cache_resource(show_spinner=False)
def results() -> OrderedDict:
    """Prediction results by result token, shared by sessions (the newest :data:`RESULTS_KEPT`)."""
    return OrderedDict()


def keep_result(token: str, result: ad.AnnData) -> None:
    store = results()
    store[token] = result
    store.move_to_end(token)
    while len(store) > RESULTS_KEPT:
        store.popitem(last=False)


def session_copy(result: ad.AnnData) -> ad.AnnData:
    """A per-session copy of a stored result sharing X (pages annotate it with UMAP, clusters)."""
    from scatd_core.report import shallow_copy

    return shallow_copy(result)


@st.cache_resource(show_spinner=False)
def warm_up_umap() -> threading.Thread:
    """Compile umap-learn's kernels in the background once per server, so the first UMAP is quick.

    The libraries are imported here, in the script thread, first: importing scipy/scikit-learn
    in one thread while another imports torch can leave scipy.stats half initialised.
    """
    import scipy.stats  # noqa: F401
    import sklearn  # noqa: F401
    import torch  # noqa: F401
    import umap  # noqa: F401

    from scatd_core.embed import warm_up

    thread = threading.Thread(target=warm_up, name="scatd-umap-warm-up", daemon=True)
    thread.start()
    return thread


# --------------------------------------------------------------------------------------------
# Tokens and session data
# --------------------------------------------------------------------------------------------

def token_of(*parts) -> str:
    """A short content hash of bytes and/or JSON-able values."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, (bytes, bytearray, memoryview)) else
                 json.dumps(part, sort_keys=True, default=str).encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:24]


def qc_mask_token(adata: ad.AnnData) -> str:
    from scatd_core.preprocess import QC_KEY

    if QC_KEY not in adata.obs:
        return "all"
    return token_of(np.packbits(adata.obs[QC_KEY].to_numpy(dtype=bool)).tobytes())


def set_data(adata: ad.AnnData, name: str, token: str) -> None:
    """Make ``adata`` the session's dataset; results of the previous dataset are forgotten."""
    from scatd_core.io import REPORT_KEY

    ss = st.session_state
    ss[state.ADATA], ss[state.DATA_NAME], ss[state.DATA_TOKEN] = adata, name, token
    for key in (state.RESULT, state.RESULT_TOKEN, state.THRESHOLD, state.EXPLAIN, POSITIVE_CLASS):
        ss.pop(key, None)
    report = adata.uns.get(REPORT_KEY, {})
    labels = [c for c, v in (report.get("label_columns") or {}).items() if v.get("binary")]
    ss[state.LABEL_COLUMN] = labels[0] if labels else None
    groups = list(report.get("group_columns") or [])
    sample_like = [c for c in groups if c.lower() in ("sample", "sample_id", "samples", "batch", "batch_id",
                                                      "patient", "donor", "orig.ident")]
    ss[state.SAMPLE_COLUMN] = sample_like[0] if sample_like else None


def set_result(result: ad.AnnData, token: str, threshold: float) -> None:
    ss = st.session_state
    if ss.get(state.RESULT_TOKEN) != token:
        ss[state.RESULT] = session_copy(result)
        ss[state.RESULT_TOKEN] = token
        ss[state.THRESHOLD] = float(threshold)
        ss.pop(state.EXPLAIN, None)


def demo_module():
    """``scatd_core.demo`` when it is installed and offers the demo, else None.

    Used through ``available() -> bool``, ``load_data(progress=...) -> AnnData`` (builds the
    demo data and model on first use) and ``ensure(progress=...)`` / ``bundle_path()``.
    """
    try:
        demo = importlib.import_module("scatd_core.demo")
    except ImportError:
        return None
    if not all(callable(getattr(demo, name, None)) for name in ("available", "load_data")):
        return None
    try:
        return demo if demo.available() else None
    except Exception:  # a broken demo install must not break the Data page
        return None


def use_demo(demo, bar) -> None:
    """Load the demo dataset (building it on first use, with progress) and choose its model."""
    adata = demo.load_data(progress=lambda fraction, message: bar.progress(min(1.0, fraction), text=message))
    set_data(adata, "demo (simulated data)", "demo")
    if callable(getattr(demo, "bundle_path", None)) and Path(demo.bundle_path()).is_dir():
        st.session_state[state.BUNDLE_PATH] = str(demo.bundle_path())
    clear_library_cache()


# --------------------------------------------------------------------------------------------
# Page furniture
# --------------------------------------------------------------------------------------------

def link(title: str, label: str | None = None, icon: str | None = None) -> None:
    """A link to one of the app's pages by title (see :data:`PAGE`)."""
    st.page_link(PAGE[title], label=label or title, icon=icon)


def need(what: str) -> None:
    """Stop the page with a pointer to the step that provides ``what`` (data, model, result)."""
    steps = {"data": ("Data", "Upload a dataset first."),
             "model": ("Model", "Choose a model first."),
             "result": ("Predict", "Run a prediction first.")}
    title, text = steps[what]
    st.info(text, icon=":material/info:")
    link(title, f"Go to {title}", ":material/arrow_forward:")
    st.stop()


def current_bundle():
    """The chosen bundle, or None (a bundle that cannot be loaded any more is shown as an error)."""
    path = st.session_state.get(state.BUNDLE_PATH)
    if not path:
        return None
    try:
        return get_bundle(path)
    except ScatdError as exc:
        show_error(exc)
        st.session_state.pop(state.BUNDLE_PATH, None)
        return None


def sidebar(container) -> None:
    """Current data, model, device and progress along the path, in ``container`` (every page)."""
    ss = st.session_state
    adata = ss.get(state.ADATA)
    bundle_path = ss.get(state.BUNDLE_PATH)
    result = ss.get(state.RESULT)
    with container:
        st.caption("SESSION")
        if adata is not None:
            st.markdown(f":material/dataset: **{ss.get(state.DATA_NAME)}**  \n"
                        f"{adata.n_obs:,} cells × {adata.n_vars:,} genes")
        else:
            st.markdown(":material/dataset: no data yet")
        bundle = None
        if bundle_path:
            try:
                bundle = get_bundle(bundle_path)
            except ScatdError:
                bundle = None
        if bundle is not None:
            st.markdown(f":material/model_training: **{bundle.drug or bundle.name}**  \n{bundle.backbone}")
            if bundle.is_demo:
                st.badge("demo (simulated data)", color="orange")
        else:
            st.markdown(":material/model_training: no model chosen")
        st.markdown(f":material/memory: {device_text()}")
        done = [adata is not None, bundle is not None, result is not None,
                result is not None and "X_umap" in result.obsm,
                ss.get(state.EXPLAIN) is not None]
        names = ["Data", "Model", "Predict", "Cells", "Biomarkers"]
        steps = " → ".join(f"**{n} ✓**" if d else n for n, d in zip(names, done))
        st.caption("PROGRESS")
        st.markdown(steps + " → Report")
        st.caption(f"scATD Studio {__version__}")


def library_frame(entries):
    """The model library as a table: one row per bundle (broken ones with their problem)."""
    import pandas as pd

    rows = []
    for e in entries:
        if not e.ok:
            rows.append({"drug": None, "backbone": None, "kind": "unusable", "demo": False, "source": None,
                         "created": None, "metrics": None, "threshold": None, "folder": e.path.name,
                         "problem": e.problem})
            continue
        s = e.bundle.summary()
        shown = {k: v for k, v in (s["metrics"] or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        rows.append({"drug": s["drug"], "backbone": s["backbone"], "kind": s["kind"], "demo": s["demo"],
                     "source": s["source"], "created": (s["created"] or "")[:10],
                     "metrics": ", ".join(f"{k} {v:.3g}" for k, v in list(shown.items())[:4]) or None,
                     "threshold": s["threshold"], "folder": e.path.name, "problem": None})
    return pd.DataFrame(rows)


def show_library(entries) -> None:
    frame = library_frame(entries)
    if not frame["problem"].notna().any():
        frame = frame.drop(columns="problem")
    st.dataframe(frame, hide_index=True, column_config={
        "demo": st.column_config.CheckboxColumn("demo (simulated data)"),
        "threshold": st.column_config.NumberColumn("threshold", format="%.3g"),
    })
