"""What every page shares: the sidebar, friendly errors, loaders and session helpers.

Caching rules:

- ``st.cache_resource`` only for what every user may share: model bundles (their torch models
  load once per process) and the model library listing;
- everything computed on a user's data (QC metrics, the model input, the UMAP) is kept in that
  user's ``st.session_state``, keyed by this session's data token, so no session can ever see
  another's data, file names or results, even when two users upload the same bytes.

Session values live under the keys of :mod:`scatd_app.state`.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import contextvars
import functools
import gc
import html
import json
import re
import threading
import time
import uuid
from pathlib import Path

import anndata as ad
import numpy as np
import streamlit as st

from scatd_app import state
from scatd_core._words import counted, percent
from scatd_core import __version__
from scatd_core.config import limits, model_library_dir
from scatd_core.errors import MemoryShortage, ScatdError

# Pages in the order of the user's path: (file, title, icon). app.py builds the navigation from it.
ANALYSIS_PAGES = (
    ("app_pages/1_Data.py", "Data", ":material/upload_file:"),
    ("app_pages/2_Model.py", "Model", ":material/model_training:"),
    ("app_pages/3_Predict.py", "Predict", ":material/play_circle:"),
    ("app_pages/4_Cells.py", "Cells", ":material/scatter_plot:"),
    ("app_pages/5_Biomarkers.py", "Biomarkers", ":material/genetics:"),
    ("app_pages/6_Report.py", "Report", ":material/download:"),
    ("app_pages/9_Panel.py", "Drug panel", ":material/grid_view:"),
)
MODEL_PAGES = (
    ("app_pages/8_Models.py", "Model library", ":material/inventory_2:"),
    ("app_pages/7_Train.py", "Train a model", ":material/school:"),
)
PAGE = {title: path for path, title, _ in ANALYSIS_PAGES + MODEL_PAGES}


#: Characters with a markdown meaning anywhere in a line (after ``html.escape``, so ``<``/``>`` are gone):
#: emphasis, code, links and images, headings, tables, strikethrough, LaTeX and Streamlit's
#: ``:color[...]``/``:icon:`` directives.
_MD_SPECIAL = frozenset("\\`*_[]()!#$:~|")
#: Every line break Python, CommonMark or a browser knows: a name is shown on one line.
_LINE_BREAKS = re.compile(r"[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]+")
#: What makes a block when a line starts with it (the text may begin a line of the markdown it goes
#: into): an indent (code block), list items and setext heading underlines, ordered list items.
_INDENT, _BLOCK_MARK, _NUMBERED = re.compile(r"^\s"), re.compile(r"^([-+=])"), re.compile(r"^(\d+)\.")
#: Where GitHub-flavoured markdown makes a link of plain text (``https://``, ``www.``, e-mail
#: addresses; Streamlit renders GFM, and it finds them after escapes are resolved): an invisible
#: word joiner is put in, so the text looks the same and never becomes a link.
_AUTOLINK = re.compile(r"(?i)(?<=https)(?=\\?:)|(?<=http)(?=\\?:)|(?<=ftp)(?=\\?:)|(?<=www)(?=\.)|(?<=@)")
LINK_BREAK = "\u2060"  # the word joiner: invisible, and no line break there either


def md(text) -> str:
    """A string made safe for ``st.markdown`` and every markdown label (widget labels, radio
    options, captions, spinners, tabs, expanders, metrics): HTML escaped, line breaks made spaces,
    and markdown syntax (emphasis, links, images, code, headings, lists, tables, LaTeX, Streamlit's
    ``:color[...]``/``:icon:`` directives) and what GFM links by itself (URLs, ``www.`` names,
    e-mail addresses) shown as typed. Every user-supplied string (file, drug,
    gene, sample, model and column names, values) goes through it."""
    flat = _LINE_BREAKS.sub(" ", html.escape(str(text), quote=False))
    escaped = "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in flat)
    escaped = _AUTOLINK.sub(LINK_BREAK, escaped)
    return _INDENT.sub("&#32;", _NUMBERED.sub(r"\1\\.", _BLOCK_MARK.sub(r"\\\1", escaped)))


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

def show_error(exc: BaseException) -> None:
    """A friendly ``st.error``: what is wrong and what to do; never a traceback. An unexpected
    error (not a :class:`ScatdError`) goes to the server's log with its traceback, once (a copy
    kept to show again, :func:`error_copy`, has none), so the administrator can find what a user
    reports."""
    if not isinstance(exc, ScatdError) and exc.__traceback__ is not None:
        import logging

        logging.getLogger("scatd").error("unexpected error shown to a user: %s: %s", type(exc).__name__, exc,
                                         exc_info=exc)
    if isinstance(exc, ScatdError):
        hint = exc.app_hint or exc.hint
        # a message of several lines (one per drug of a panel, "- DRUG: why"): its first line, then one item a line
        first, *rest = str(getattr(exc, "app_message", None) or exc.message).split("\n")
        items = "".join(f"\n- {md(line.removeprefix('- '))}" for line in rest if line.strip())
        st.error(f"**{md(first)}**" + (f"\n{items}" if items else "") + (f"\n\n{md(hint)}" if hint else ""),
                 icon=":material/error:")
    else:
        st.error(f"**Something unexpected went wrong** ({type(exc).__name__}: {md(str(exc)[:300])}).\n\n"
                 "Nothing was changed. Try again; if it happens again, report it with the file type and "
                 "this message.", icon=":material/error:")


def md_link(label, url: str) -> str:
    """A markdown link to an address of the configuration (never a user's text): ``label`` shown
    as typed (:func:`md`), the address clean to copy (no word joiner; spaces, brackets and angle
    brackets percent-encoded so the link stays one)."""
    from urllib.parse import quote

    return f"[{md(label)}]({quote(str(url), safe=':/?#@!$&*+,;=%~-._')})"


def show_manual_steps(steps) -> None:
    """What to download by hand and how to import it (:func:`scatd_core.published.manual_steps`):
    the addresses as real links, each command as a code block (with its copy button)."""
    with st.container(border=True):
        st.markdown("**Download by hand**\n" + "".join(f"\n- {md_link(label, url)}" for label, url in steps.links)
                    + "\n\nThen import each file below (**Import an scATD checkpoint**), or on the server, from "
                      "the folder holding the files, with its command:")
        for title, command in steps.commands:
            st.caption(md(title))
            st.code(command, language="bash", wrap_lines=True)
        st.caption(md(steps.note))


# --------------------------------------------------------------------------------------------
# Upload limit: the widget shows it, the server enforces it
# --------------------------------------------------------------------------------------------

def upload_limit_mb() -> int:
    return limits().max_upload_mb


def sync_upload_limit() -> None:
    """Make the server accept uploads up to ``SCATD_MAX_UPLOAD_MB`` (Streamlit reads
    ``server.maxUploadSize`` on every request; equivalent to ``--server.maxUploadSize``), and only
    for signed-in sessions, bounded per session (:func:`scatd_app.uploads.install`)."""
    from streamlit import config

    from scatd_app import uploads

    uploads.install()
    wanted = upload_limit_mb()
    if config.get_option("server.maxUploadSize") != wanted:
        config.set_option("server.maxUploadSize", wanted, "SCATD_MAX_UPLOAD_MB")


# --------------------------------------------------------------------------------------------
# Shared (process-wide) loaders: models only
# --------------------------------------------------------------------------------------------

def _library_signature() -> tuple:
    """The library folder, and each bundle's manifest and weights file as they stand (modified,
    size): a weights file damaged or replaced after the library was listed is checked again."""
    root = model_library_dir()
    if not root.is_dir():
        return (str(root),)

    def stamp(path: Path) -> tuple:
        try:
            st = path.stat()
        except OSError:
            return ()
        return st.st_mtime_ns, st.st_size

    return (str(root),) + tuple(sorted((p.parent.name, stamp(p), stamp(p.parent / "weights.safetensors"))
                                       for p in root.glob("*/manifest.json")))


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
    return _bundle(str(folder), tuple(_mtime(folder / name) for name in ("manifest.json", "weights.safetensors")))


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:  # missing, or not readable by this account: load_bundle says which
        return None


@st.cache_resource(show_spinner=False)
def device_text() -> str:
    from scatd_core.errors import DeviceError
    from scatd_core.predict import device_description, resolve_device

    try:
        return device_description(resolve_device("auto"))
    except DeviceError:  # server.device = cuda without a GPU: each run says so; the sidebar just shows it
        return "no GPU (server.device: cuda)"


_START_UP: threading.Thread | None = None
_START_UP_LOCK = threading.Lock()
#: How long a process that exits waits for its start-up warm-up to finish.
WARM_UP_EXIT_WAIT_S = 120.0


def start_up(wait: bool = False) -> threading.Thread:
    """Once per server process: finish interrupted library writes, then compile (or load from
    numba's disk cache) the numba kernels of the QC metrics (scanpy), the sparse first layer and
    umap-learn, import transformers (Geneformer; once, under its lock), build a tiny model the way a model is loaded (torch's one-off imports) and time
    the rates of the prediction's time estimate, in the background, so the first upload,
    prediction and UMAP do not wait for them. ``app.py`` calls it on every run (only the first
    starts anything); ``python -m scatd_app`` calls it with ``wait=True`` before the server
    listens, so that not even the first user shares the machine with it.

    The libraries are imported here, in the script thread, first: importing scipy/scikit-learn
    in one thread while another imports torch can leave scipy.stats half initialised.

    The libraries' objects (~450,000 once imported, ~570,000 with the compiled kernels) are then
    moved out of the garbage collector's reach (:func:`gc.freeze`). Streamlit runs a full
    collection after every page run; it holds the interpreter lock and, walking all those
    objects, took ~0.3 s each time, stalling every user's page and background computation. It now
    walks only what was made since (the sessions' data), which it still collects. What is frozen
    is never collected again, so the freeze comes when no user's data can exist: right after the
    imports, and, when started before the server listens (``wait=True``), after the warm-up too.
    Under ``streamlit run app.py`` the warm-up runs while the first user works, so it does not
    freeze (their upload, whose AnnData is only freed by the collector, would stay in memory).
    """
    global _START_UP
    with _START_UP_LOCK:
        if _START_UP is None:
            _START_UP = _begin_start_up(freeze_after_warm_up=wait)
    if wait:
        _START_UP.join()
    return _START_UP


def _begin_start_up(freeze_after_warm_up: bool) -> threading.Thread:
    import logging

    from scatd_core._memory import note_idle_footprint
    from scatd_core.bundle import clean_library

    for done in clean_library():
        logging.getLogger("scatd").warning("model library: %s", done)
    import scanpy  # noqa: F401
    import scipy.stats  # noqa: F401
    import sklearn  # noqa: F401
    import torch  # noqa: F401
    import umap  # noqa: F401

    from scatd_core import embed, explain, predict, preprocess
    from scatd_core.foundation import geneformer
    from scatd_core.nn import models, sparse

    gc.collect()  # the libraries, imported: frozen before any user's data exists (see start_up)
    gc.freeze()
    note_idle_footprint()  # what the server holds for itself, before any user's data: not the sessions'

    def warm_up() -> None:
        preprocess.warm_up()  # QC kernels: the first sparse upload's QC would wait seconds for them
        geneformer.warm_up()  # transformers, imported once: the Model page's Geneformer check needs it
        models.warm_up()
        sparse.warm_up()
        embed.warm_up()
        predict.warm_up()  # the rates of the Predict page's time estimate
        explain.warm_up()
        if freeze_after_warm_up:  # nobody is connected yet (python -m scatd_app)
            gc.collect()  # the warm-up's own garbage first
            gc.freeze()
            note_idle_footprint()  # the compiled kernels are the server's too

    thread = threading.Thread(target=warm_up, name="scatd-warm-up", daemon=True)
    thread.start()
    # A daemon thread still inside compiled code (numba, torch) when the interpreter exits is
    # torn down mid-call, which aborts the process ("terminate called without an active
    # exception"); a process that ends early (a stopped server, a short test run) waits for it.
    atexit.register(thread.join, WARM_UP_EXIT_WAIT_S)
    return thread


# --------------------------------------------------------------------------------------------
# Per-session computations on the user's data
# --------------------------------------------------------------------------------------------

def token_of(*parts) -> str:
    """A short hash of JSON-able values (settings), for telling results apart within a session."""
    import hashlib

    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:24]


def qc_metrics(adata: ad.AnnData):
    """Per-cell QC metrics of the session's dataset, from the matrix the models read (computed once per
    upload and matrix choice)."""
    from scatd_core._keys import MATRIX
    from scatd_core.preprocess import qc_metrics as compute

    ss = st.session_state
    token = (ss.get(state.DATA_TOKEN), str(adata.uns.get(MATRIX, "auto")))
    cached = ss.get(state.QC_METRICS)
    if cached is None or cached[0] != token:
        with st.spinner("Computing QC metrics…"):
            cached = ss[state.QC_METRICS] = (token, compute(adata))
    return cached[1]


def qc_mask(adata: ad.AnnData) -> np.ndarray | None:
    """The QC filter's mask when the filter is on (Data page), else ``None``."""
    from scatd_core._keys import QC_PASS

    return adata.obs[QC_PASS].to_numpy(dtype=bool) if QC_PASS in adata.obs else None


#: The Data page's QC widgets: the toggle, and a number input per metric and bound (``qc_<metric>_<bound>``;
#: no minimum for the mitochondrial percentage).
QC_ENABLED = "qc_enabled"


def qc_bound_keys() -> list[tuple[str, str, str]]:
    """``(metric, bound, widget key)`` of each of the Data page's QC number inputs, in its order."""
    from scatd_core.preprocess import QC_METRICS

    return [(metric, bound, f"qc_{metric}_{bound}") for metric in QC_METRICS for bound in ("min", "max")
            if not (metric == "pct_counts_mt" and bound == "min")]


def qc_bound_format(metric: str) -> dict:
    """The Data page's number input of a QC bound: whole numbers for genes detected (a cell's count of
    genes is one), two decimals for the others."""
    if metric == "n_genes_by_counts":
        return {"min_value": 0, "step": 1, "format": "%d"}
    return {"min_value": 0.0, "format": "%.2f"}


def qc_bound_value(metric: str, bound: str, value):
    """A suggested QC bound as its number input shows it: genes detected as a whole number that lets
    the same cells pass (a minimum rounded up, a maximum down); ``None`` (no bound) stays ``None``."""
    if value is None:
        return None
    if metric == "n_genes_by_counts":
        return int(np.ceil(value) if bound == "min" else np.floor(value))
    return float(value)


def apply_qc_choice() -> np.ndarray | None:
    """Put the Data page's QC filter, as its toggle and bounds stand in the session, on the session's
    data (or take it off), and forget a prediction the change makes stale. Returns the mask of the
    cells that pass, or ``None`` when the filter is off.

    The page runs it, and so do the toggle's and the bounds' ``on_change``: a change followed at once
    by another page reaches the server as one rerun of that page, in which the Data page's code
    never runs, and the filter would stay as it was on the page the user goes to."""
    from scatd_core.preprocess import QC_METRICS, apply_qc_filter, remove_qc_filter

    ss = st.session_state
    adata = ss.get(state.ADATA)
    if adata is None or QC_ENABLED not in ss:  # no data, or data without the filter (z-scores, embeddings)
        return None
    before = qc_mask(adata)
    passed = None
    if ss[QC_ENABLED]:
        thresholds: dict[str, dict[str, float]] = {metric: {} for metric in QC_METRICS}  # empty = no bound
        for metric, bound, key in qc_bound_keys():
            if ss.get(key) is not None:
                thresholds[metric][bound] = float(ss[key])
        passed = apply_qc_filter(adata, thresholds, qc_metrics(adata))
    else:
        remove_qc_filter(adata)
    if (before is None) != (passed is None) or (before is not None and (before != passed).any()):
        state.invalidate("prediction")
    return passed


def prediction_token(bundle, settings: dict) -> str:
    """What a prediction depends on: this upload, its gene-ID mapping and QC mask, the model, the settings."""
    from scatd_core._keys import INPUT_REPORT, MATRIX

    ss = st.session_state
    adata = ss[state.ADATA]
    mask = qc_mask(adata)
    mask_token = "all" if mask is None else token_of(np.packbits(mask).tobytes().hex())
    mapping = adata.uns.get(INPUT_REPORT, {}).get("gene_ids", {})
    return token_of(ss.get(state.DATA_TOKEN), mask_token, mapping, str(bundle.path),
                    bundle.manifest.get("weights_sha256", ""), settings, str(adata.uns.get(MATRIX, "auto")))


def qc_source(adata: ad.AnnData):
    """``(matrix, chosen by the user)`` the Data page's QC is computed from: the models' matrix
    (:func:`scatd_core.matrices.qc_candidate`)."""
    from scatd_core.matrices import qc_candidate

    return qc_candidate(adata)


def matrix_words(choice) -> str:
    """"The model reads adata.raw (log-normalised, 2,932 genes), chosen automatically" for the Model page."""
    from scatd_core.matrices import describe

    how = "as you chose on the Data page" if choice.chosen_by_user else "chosen automatically"
    return f"The model reads {describe(choice.candidate)}, {how}."


#: What the Data page's matrix choice offers first: every model reads the matrix that suits it best
AUTO_MATRIX = "auto: the best suited for each model"


def matrix_choice(adata: ad.AnnData) -> None:
    """The Data page's card line on the file's matrices (X, adata.raw, layers) and, when it has
    more than one, the choice of the one the models read (``uns['scatd_matrix']``; automatic by
    default). A new choice clears the prediction made on another matrix; when QC then reads another
    matrix (:func:`qc_source`), its bounds are suggested again and its filter is off."""
    from scatd_core import matrices
    from scatd_core._keys import MATRIX

    now = adata.uns.get(MATRIX)
    found = matrices.candidates(adata, also=str(now) if now is not None else None)  # a chosen layer is listed too
    if len(found) < 2:
        return
    st.markdown("**Matrices in the file:** " + md("; ".join(matrices.describe(c) for c in found)) + ". "
                "Each model reads the matrix that suits it (raw counts first, then log-normalised values; scaled "
                "or z-scored values only when nothing else is there); the Model page says which matrix each model "
                "reads, and why.")
    options = [AUTO_MATRIX, *(c.name for c in found)]
    picked = st.selectbox("Matrix for the models", options, index=options.index(now) if now in options else 0,
                          format_func=lambda o: o if o == AUTO_MATRIX else
                          matrices.describe(next(c for c in found if c.name == o)),
                          help="X, adata.raw or a layer of the file. The file itself is not changed.")
    chosen = None if picked == AUTO_MATRIX else picked
    if chosen != now:
        qc_before = matrices.qc_candidate(adata)[0].name
        if chosen is None:
            adata.uns.pop(MATRIX, None)
        else:
            adata.uns[MATRIX] = chosen
        if matrices.qc_candidate(adata)[0].name != qc_before:  # QC now reads other values: its bounds are
            from scatd_core.preprocess import remove_qc_filter  # suggested again for them, the filter off

            for key in [k for k in st.session_state.keys() if str(k).startswith("qc_")]:
                del st.session_state[key]
            remove_qc_filter(adata)
        st.session_state.pop(state.INPUTS, None)
        state.invalidate("prediction")
        st.rerun()


def model_inputs(adata: ad.AnnData, bundle):
    """The session's :class:`~scatd_core.inputs.ModelInput` of its data for ``bundle`` (built once
    per data, QC mask and model; predict and explain both read through it)."""
    from scatd_core.inputs import ModelInput
    from scatd_core.predict import auto_batch_size, resolve_device

    ss = st.session_state
    token = prediction_token(bundle, {})
    cached = ss.get(state.INPUTS)
    if cached is None or cached[0] != token:
        batch_size = auto_batch_size(bundle, resolve_device("auto"))
        cached = ss[state.INPUTS] = (token, ModelInput(adata, bundle, mask=qc_mask(adata), batch_size=batch_size))
    return cached[1]


# --------------------------------------------------------------------------------------------
# Long runs: a progress bar with a Cancel button, and a word when the last one was stopped
# --------------------------------------------------------------------------------------------

CANCEL_HELP = "Stops the run; nothing is changed."


@contextlib.contextmanager
def long_run(flag: str, text: str, cancel_key: str, cancel_help: str = CANCEL_HELP, on_cancel=None):
    """A progress bar (yielded) with a Cancel button under it, for one computation of a page.

    A click on Cancel, like any other click or leaving the page, interrupts the script run with
    Streamlit's control exception (a ``BaseException``): the computation stops at its next
    progress report, the session flag ``flag`` stays set, and the next run of the page says so
    (:func:`say_if_stopped`). When the computation ends, normally or with an error, the bar and
    the button go away and the flag is cleared. The session is kept with the flag set as the run
    starts, so a reload meanwhile (which stops the run) resumes with its settings and says so.
    ``on_cancel`` (a :func:`detached` function) runs when Cancel is clicked, before the next run
    of the page: where leaving the page and Cancel must differ."""
    from scatd_app import session

    box = st.empty()
    with box.container():
        bar = st.progress(0.0, text=text)
        st.button("Cancel", icon=":material/stop:", key=cancel_key, help=cancel_help, on_click=on_cancel)
    st.session_state[flag] = True
    session.save_now()
    try:
        yield bar
    except Exception:
        st.session_state[flag] = False
        box.empty()
        raise
    st.session_state[flag] = False
    box.empty()


def say_if_stopped(flag: str, text: str) -> bool:
    """Whether the last run behind ``flag`` (see :func:`long_run`) was stopped before it
    finished; if so, say ``text`` once."""
    if not st.session_state.pop(flag, False):
        return False
    st.info(text, icon=":material/block:")
    return True


#: A foundation-model run longer than this on a CPU is only started after the user confirms it.
LONG_CPU_SECONDS = 120


def embedding_estimate(adata: ad.AnnData, bundle, mask: np.ndarray | None) -> dict:
    """How long the foundation-model embeddings still to compute would take (one pass over the
    data; kept per data, QC mask and backbone in the session)."""
    from scatd_core.foundation import cells_to_embed, estimate_seconds

    ss = st.session_state
    token = token_of(ss.get(state.DATA_TOKEN), None if mask is None else np.packbits(mask).tobytes().hex(),
                     bundle.backbone, bundle.architecture.input_dim, cells_to_embed(adata, bundle, mask))
    cached = ss.get(state.EMBED_ESTIMATE)
    if cached is None or cached[0] != token:
        options = {"embedding_dim": bundle.architecture.input_dim} if bundle.backbone == "vae_gf" else {}
        with st.spinner("Counting the genes each cell sends to the foundation model…"):
            cached = ss[state.EMBED_ESTIMATE] = (token, estimate_seconds(adata, bundle.backbone, mask=mask, **options))
    return cached[1]


def without_server_paths(text: str, *folders) -> str:
    """``text`` with each of the server's ``folders`` (and anything under them) named from the
    folder's own name on: what a user who does not administer the server is shown."""
    import os

    for folder in folders:
        if not folder:
            continue
        for form in {str(folder), os.path.realpath(str(folder))}:
            form = form.rstrip("/")
            if len(form) > 1:
                text = text.replace(form, Path(form).name or form)
    return text


def library_unwritable() -> str | None:
    """Why a model trained now could not be saved in the server's model library (checked before
    training: a model trained for minutes and then not saved is lost), or ``None``. Only an
    administrator (or the one user of an app without a login) sees the server's paths."""
    from scatd_core.bundle import library_write_problem
    from scatd_core.config import model_library_dir

    from scatd_app import auth

    if not (problem := library_write_problem()):
        return None
    user = auth.current_user()
    if user is None or not user.admin:
        problem = without_server_paths(problem, model_library_dir(), model_library_dir().parent)
    return (f"This server's model library cannot be written by the app ({problem}), so a trained model could not be "
            "saved: nothing was trained. Ask the administrator to give the app's account write access to it "
            "(scatd doctor on the server says what to fix).")


def show_probe(entry: dict) -> None:
    """One backbone's probe (:func:`scatd_core.foundation.probe_all`): installed or not, version,
    embedding size, and every problem with what to do. Only an administrator (or the one user of
    an app without a login) sees the server's paths; others see folders and files by name."""
    from scatd_core.bundle import BACKBONE_TITLES
    from scatd_core.config import config_file, scatd_home

    from scatd_app import auth

    user = auth.current_user()
    if user is None or not user.admin:
        folders = (entry["location"], str(Path(entry["location"]).parent), str(scatd_home()))
        entry = {**entry, "location": without_server_paths(str(entry["location"]), *folders),
                 # "set by foundation.geneformer_dir in /etc/scatd/config.toml": the file by its name
                 "configured_by": without_server_paths(str(entry["configured_by"]), config_file(), *folders),
                 "version": without_server_paths(str(entry.get("version") or ""), *folders),
                 "problems": [{k: without_server_paths(str(v), *folders) for k, v in p.items()}
                              for p in entry["problems"]],
                 "warnings": [without_server_paths(str(w), *folders) for w in entry.get("warnings", [])]}
    title = f"**{md(entry['name'])}** (for {BACKBONE_TITLES.get(entry['backbone'], entry['backbone'])})"
    if entry["available"]:
        st.success(f"{title}: installed. {md(entry['version'])}; {entry['embedding_dim']:,}-d cell embeddings.",
                   icon=":material/check_circle:")
    else:  # the errors first, then the warnings: all there is to fix, in one go
        st.warning(f"{title}: not ready. Looked in {md(entry['location'])} (set by {md(entry['configured_by'])}).",
                   icon=":material/warning:")
        for problem in entry["problems"]:
            st.markdown(f"- {md(problem['message'])}  \n  **What to do:** {md(problem['hint'])}")
    for warning in entry.get("warnings", []):  # usable, but limited (e.g. an optional dictionary missing)
        st.warning(f"{title}: {md(warning)}", icon=":material/warning:")


def show_backbone_setup(setup: dict) -> None:
    """A backbone that cannot be used yet (:func:`scatd_core.backbone_setup.backbone_setup`): in
    order, its drug model, its foundation model's files and the time its embeddings would take
    here, each with what is there and what is missing. Only an administrator (or the one user of
    an app without a login) sees the server's paths."""
    from pathlib import Path as _Path

    from scatd_core._progress import duration
    from scatd_core.config import config_file, scatd_home

    from scatd_app import auth

    user = auth.current_user()
    hide = user is None or not user.admin
    location = (setup["probe"] or {}).get("location")
    folders = ((location, str(_Path(location).parent)) if location else ()) + (str(scatd_home()),)

    def say(text: str) -> str:
        return md(without_server_paths(str(text), *folders) if hide else str(text))

    st.warning(f"**{md(setup['title'])} is not set up on this server yet.** Nothing can be run with it until the "
               "steps below are done; what is already there is ticked.", icon=":material/construction:")
    for n, step in enumerate(setup["steps"], 1):
        done = step["status"] == "done"
        with st.container(border=True):
            st.markdown(f"**{n} · {md(step['title'])}**: " + (":green[done]" if done else
                                                               ":orange[to do]" if step["status"] == "missing" else
                                                               ":blue[estimate]" if step["status"] == "estimate" else
                                                               ":gray[not known yet]"))
            if step.get("text") and step["key"] != "cost":
                st.caption(say(step["text"]))
            for item in step.get("found", []):
                st.markdown(f":material/check: {say(item)}")
            for item in step.get("missing", []):
                st.markdown(f":material/close: {say(item)}")
            if step.get("todo"):
                st.markdown("**What to do:**\n" + "\n".join(f"- {t if step.get('todo_is_markdown') else say(t)}"
                                                             for t in step["todo"]))
            if step["key"] == "drug_model" and not done:
                link("Model library", "Model library: import a checkpoint", ":material/inventory_2:")
            if step["key"] == "files" and not done:
                set_by = without_server_paths(str(step["configured_by"]), config_file()) if hide else \
                    str(step["configured_by"])  # the configuration file by its name: it is a server path
                st.caption(f"Looked in {say(step['location'])} (set by {say(set_by)}); the folder is "
                           f"{md(step['setting'])}.")
                for warning in step.get("warnings", []):
                    st.caption(f"Also: {say(warning)}")
            if step["key"] == "cost":
                if step["status"] == "estimate":
                    per = step["seconds"] / max(step["n_cells"], 1)
                    st.markdown(f"About **{duration(step['seconds'])}** for {step['n_cells']:,} cells on this machine's "
                                f"{md(step['device'])} (~{per:.2g} s per cell)."
                                + (f" Estimated from {md(step['assumed'])}." if step.get("assumed") else ""))
                    if step.get("coverage_warning"):
                        st.caption(say(step["coverage_warning"]))
                else:
                    st.caption(say(step["text"]))


def embedding_step(adata: ad.AnnData, bundle) -> bool:
    """The Model page's step for VAE_sf/VAE_gf on an expression matrix: what the foundation model
    needs, how long the embeddings take, and (after a confirmation for a long CPU run) computing
    them with progress. Returns whether the data are ready to predict."""
    from scatd_core import _keys, foundation
    from scatd_core._progress import duration

    from scatd_core.foundation._embed import stored_width_note

    dim = bundle.architecture.input_dim
    entry = foundation.probe(bundle.backbone, embedding_dim=dim).to_dict()
    name = entry["name"]
    mask = qc_mask(adata)
    width_note = stored_width_note(adata, bundle, installed=entry["available"])
    if width_note:  # embeddings of another width stored in the file: not used
        (st.info if entry["available"] else st.warning)(width_note, icon=":material/info:")
    if foundation.cells_to_embed(adata, bundle, mask) == 0:
        record = adata.uns[_keys.FOUNDATION][bundle.backbone]
        st.success(f"{name} embeddings of your cells are computed ({record['n_embedded']:,} cells, "
                   f"{record['info']['embedding_dim']:,}-d, on {record['device']} in {duration(record['seconds'])}). "
                   "They are kept with the data and in the downloadable h5ad.", icon=":material/check_circle:")
        if not entry["available"]:  # as the CLI: the stored embeddings are used without the backbone
            st.info(foundation.stored_note(record, name), icon=":material/info:")
        for reason in ("non_finite", "negative_values", "non_finite_output"):  # values or weights at fault
            failed = int(record["info"].get("not_embedded", {}).get(reason, 0))
            if failed:
                st.warning(f"{counted(failed)} not embedded: {foundation.not_embedded_text(bundle.backbone, reason)}.",
                           icon=":material/warning:")
        return True
    st.markdown(f"This model reads {name} cell embeddings ({dim:,}-d). They are computed here from your expression "
                f"matrix, then aligned to the bulk statistics (AdaIN) as in scATD.")
    show_probe(entry)
    if not entry["available"]:
        from scatd_core.backbone_setup import backbone_setup

        cost = backbone_setup(bundle.backbone, [bundle], adata)["steps"][2]  # what it would cost here, once installed
        if cost["status"] == "estimate":
            st.caption(f"Once installed: about {duration(cost['seconds'])} for {cost['n_cells']:,} cells on this "
                       f"machine's {md(cost['device'])}" + (f" (estimated from {md(cost['assumed'])})."
                                                           if cost.get("assumed") else "."))
        else:
            st.caption(md(cost["text"]))
        st.info(f"Or upload {name} embeddings computed elsewhere: a .npy (cells x {dim:,}) or an h5ad with them in "
                f"obsm['{_keys.FOUNDATION_EMBEDDING[bundle.backbone]}'].", icon=":material/info:")
        return False
    try:
        est = embedding_estimate(adata, bundle, mask)
    except ScatdError as exc:
        show_error(exc)
        return False
    text = (f"{est['n_cells']:,} cells ({est['n_tokens']:,} gene tokens) to embed: about "
            f"{duration(est['seconds'])} on {est['device']}.")
    given = est.get("expression") or {}
    if given.get("note"):
        st.info(given["note"], icon=":material/info:")
    if given.get("warning"):
        st.warning(given["warning"], icon=":material/warning:")
    cov = est.get("gene_coverage") or {}
    if cov:
        line = (f"Gene coverage: {name} knows {cov['n_matched']:,} of the data's {cov['n_data_genes']:,} genes "
                f"({percent(cov['n_matched'] / max(cov['n_data_genes'], 1))}; {cov['n_matched']:,} of its {cov['n_model_genes']:,}).")
        if cov.get("warning"):
            st.warning(cov["warning"], icon=":material/warning:")
        else:
            st.caption(line)
    long = est["seconds"] > LONG_CPU_SECONDS and not est["device"].startswith("CUDA")
    if long:
        st.warning(text + " That is a long run on a CPU (a GPU server takes a small fraction of it). The page shows "
                   "the progress and the time left; keep it open until it is done.", icon=":material/hourglass:")
    else:
        st.info(text, icon=":material/schedule:")
    say_if_stopped(state.EMBED_RUNNING, f"The {name} embeddings were stopped before they finished; nothing was "
                   "changed.")
    agreed = not long or st.checkbox(f"Run it on the CPU anyway (about {duration(est['seconds'])})",
                                     key="model_embed_confirm")
    if st.button(f"Compute {name} embeddings", type="primary", disabled=not agreed, icon=":material/play_arrow:",
                 key="btn_embed"):
        from scatd_app import jobs  # the shared queue: embeddings are the heaviest computation of all

        try:
            with long_run(state.EMBED_RUNNING, f"Loading {md(name)}…", "btn_cancel_embed") as bar, \
                    jobs.computing(f"the {name} embeddings", cancel_button=False):
                foundation.ensure_embeddings(adata, bundle, mask=mask,
                                             progress=progress_to(bar))
        except Exception as exc:  # ScatdError: a message for the user; anything else: still no traceback
            show_error(exc)
            return False
        st.rerun()
    return False


class Pending:
    """A UMAP computing in the background for the session's prediction (settings token
    ``token``): its future (an :class:`~scatd_core.embed.Embedding`), how far it is, and a flag
    that stops it between two runs of layout epochs (:meth:`report` is its progress callback)."""

    def __init__(self, token: str, stop: threading.Event | None = None):
        self.token = token
        self.stop = stop or threading.Event()
        self.future: concurrent.futures.Future | None = None
        self.fraction, self.message = 0.0, "Waiting for a free slot…"

    def report(self, fraction: float, message: str) -> None:
        from scatd_core.errors import Cancelled

        if self.stop.is_set():
            raise Cancelled("The UMAP was stopped.")
        self.fraction, self.message = fraction, message

    def cancel(self) -> None:
        self.stop.set()
        if self.future is not None:
            self.future.cancel()


def decline_embedding(token: str) -> None:
    """Cancel was clicked during the UMAP for ``token``: stop it, also in the background, and
    do not start it again on its own (the Cells page offers a button instead)."""
    ss = st.session_state
    ss[state.UMAP_DECLINED] = token
    pending = ss.pop(state.EMBEDDING_PENDING, None)
    if pending is not None:
        pending.cancel()


def embedding_declined(basis: str) -> bool:
    """Whether the user stopped the UMAP of the session's prediction in ``basis`` (then it is only
    computed again when asked: :func:`embedding` with ``asked=True``)."""
    ss = st.session_state
    return ss.get(state.EMBEDDING) != token_of(ss.get(state.PREDICTION), basis) and \
        ss.get(state.UMAP_DECLINED) == token_of(ss.get(state.PREDICTION), basis)


def embedding(adata: ad.AnnData, basis: str, *, asked: bool = False):
    """The UMAP and clusters of the session's prediction (computed once per prediction and basis)
    and stored in the AnnData; taken from the background run :func:`start_embedding` began when
    there is one for them (waiting for it to finish). A progress bar with a Cancel button shows
    meanwhile; leaving the page stops the wait (a run computing here stops too, and starts again
    on the next visit), Cancel stops the computation and returns ``None`` until it is ``asked``
    for again (:func:`embedding_declined`)."""
    from scatd_core.embed import compute_embedding, store
    from scatd_core.errors import Cancelled

    from scatd_app import jobs

    ss = st.session_state
    token = token_of(ss.get(state.PREDICTION), basis)
    if ss.get(state.EMBEDDING) != token:
        if asked:
            ss.pop(state.UMAP_DECLINED, None)
        elif ss.get(state.UMAP_DECLINED) == token:
            return None
        ss.pop(state.UMAP_RUNNING, None)  # an earlier run left by leaving the page: computed again, no word
        cancel = dict(on_cancel=functools.partial(decline_embedding, token), cancel_key="btn_cancel_umap",
                      cancel_help="Stops the UMAP and clusters; the rest of the page stays. A button computes "
                                  "them later.")
        pending = ss.get(state.EMBEDDING_PENDING)
        result = None
        if pending is not None and pending.token == token:
            with long_run(state.UMAP_RUNNING, "Computing the UMAP and clusters (started when the prediction "
                          "finished)…", **cancel) as bar:
                while not pending.future.done():  # a Streamlit call in the loop: leaving the page interrupts the wait
                    progress_to(bar)(pending.fraction, pending.message)
                    concurrent.futures.wait([pending.future], timeout=0.25)  # returns as soon as it is done
            ss.pop(state.EMBEDDING_PENDING, None)
            try:
                result = pending.future.result()  # raises what the run raised (the next visit computes afresh)
            except (Cancelled, concurrent.futures.CancelledError):  # computed ahead, it gave way: computed now
                result = None
        elif pending is not None:
            ss.pop(state.EMBEDDING_PENDING).cancel()  # a run for other settings
        if result is None:
            with long_run(state.UMAP_RUNNING, "Computing the UMAP and clusters…", **cancel) as bar, \
                    jobs.computing("the UMAP", cancel_button=False):
                result = compute_embedding(adata, basis=basis, seed=0, progress=progress_to(bar))
        store(adata, result)
        ss[state.EMBEDDING] = token
    from scatd_core._keys import EMBED

    return adata.uns[EMBED]


@st.cache_resource(show_spinner=False)
def _background() -> concurrent.futures.ThreadPoolExecutor:
    """The server's threads for work started ahead of the page that shows it, each with the
    process's torch thread count (not whatever count was in force when it started)."""
    from scatd_core._threads import default_threads, set_this_thread

    return concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="scatd-ahead",
                                                 initializer=set_this_thread, initargs=(default_threads(),))


def start_embedding(adata: ad.AnnData, basis: str = "latent") -> None:
    """Start the UMAP and clusters of a new prediction in the background, in the server's job
    queue like any computation, so that the Cells page (and the report, which includes them)
    finds them ready or partly done. Nothing is stored until :func:`embedding` takes the result;
    a new prediction or dataset stops the run (:class:`Pending`)."""
    from scatd_core.embed import compute_embedding, too_few_cells

    from scatd_app import jobs, session

    ss = st.session_state
    token = token_of(ss.get(state.PREDICTION), basis)
    pending = ss.get(state.EMBEDDING_PENDING)
    if ss.get(state.EMBEDDING) == token or (pending is not None and pending.token == token) \
            or ss.get(state.UMAP_DECLINED) == token or too_few_cells(adata, basis):
        return
    queue = jobs.queue()
    pending = Pending(token)

    def run():
        with queue.slot():
            return compute_embedding(adata, basis=basis, seed=0, progress=pending.report)

    pending.future = _background().submit(run)
    ss[state.EMBEDDING_PENDING] = pending
    session.own(pending)  # stopped when the user logs out or the session expires


def predict_settings() -> dict:
    """The Predict page's settings as they stand (its widgets' values, or their defaults)."""
    ss = st.session_state
    mode = ss.get("predict_mode", PREDICT_DEFAULTS["predict_mode"])
    n_samples = ss.get("predict_samples", PREDICT_DEFAULTS["predict_samples"])
    seed = ss.get("predict_seed", PREDICT_DEFAULTS["predict_seed"])
    return {"mode": mode, "n_samples": int(n_samples) if mode == "sample" else 0, "seed": int(seed)}


#: A prediction computed ahead is followed by its UMAP (whose layout cannot be interrupted once
#: begun) only up to this many cells: seconds of work, not minutes.
AHEAD_UMAP_MAX_CELLS = 30_000

#: The Predict page's widgets and their first values.
PREDICT_DEFAULTS = {"predict_mode": "mean", "predict_samples": 50, "predict_seed": 0}


class Ahead:
    """A prediction computing in the background before the user asked for it
    (:func:`start_prediction_ahead`): its settings token, its future (a
    :class:`~scatd_core.predict.Scores`), its progress, and a flag that stops it."""

    def __init__(self, token: str, bundle_path: str):
        from scatd_core._progress import with_eta

        self.token, self.bundle_path = token, bundle_path
        self.stop = threading.Event()
        # set when its owner clicks Run and waits for it: it then no longer gives way to others queued
        # after that click (it holds its slot already; giving way sent the first to click to the back)
        self.claimed = threading.Event()
        self.future: concurrent.futures.Future | None = None
        self.embedding: Pending | None = None  # its UMAP, started when it finished (stopped with it)
        self.scores = None  # set by take_prediction_ahead
        self.fraction, self.message = 0.0, "Starting…"
        self.report = with_eta(self._progress)

    def _progress(self, fraction: float, message: str) -> None:
        self.fraction, self.message = fraction, message

    def alive(self) -> bool:
        """Under way, or done with a result or an error of its own (not stopped or given way)."""
        from scatd_core.errors import Cancelled

        if self.stop.is_set() or self.future is None or self.future.cancelled():
            return False
        return not (self.future.done() and isinstance(self.future.exception(), Cancelled))

    def cancel(self) -> None:
        """Stop it (between two batches, or two steps of its UMAP) or, when it has not started, drop it."""
        self.stop.set()
        for future in (self.future, self.embedding and self.embedding.future):
            if future is not None:
                future.cancel()


def start_prediction_ahead(adata: ad.AnnData | None, bundle) -> None:
    """Start the prediction the Predict page would run now (same data, QC mask, model and
    settings) in the background, so that "Run prediction" finds it done or under way. Called by
    the Data page (with :func:`settled_model`), the Model page and the Predict page.

    Only when it costs nobody anything and the data fit: the session has no prediction yet, the data
    have enough of the model's genes (:func:`scatd_core.genes.coverage_refusal` says nothing), the
    model reads the data as they are (no foundation-model embeddings to compute first), the data are predicted in this
    process (not on Ray), and the server's job queue has a free slot with nobody waiting. The run
    stops between two batches as soon as another computation waits for a slot, or when the data,
    QC mask, model or settings change; nothing is written into the data until the user asks
    (:func:`take_prediction_ahead`)."""
    from scatd_core import foundation, scaleout
    from scatd_core.embed import MIN_CELLS
    from scatd_core.errors import Cancelled
    from scatd_core.predict import score

    from scatd_app import jobs, session

    ss = st.session_state
    if adata is None or bundle is None or state.has_prediction() or bundle.kind != "classifier":
        return
    mask = qc_mask(adata)
    settings = predict_settings()
    token = prediction_token(bundle, settings)
    if ss.get(state.AHEAD_DECLINED) == token:
        return  # the user stopped this very prediction: not started again on their behalf
    ahead = ss.get(state.PREDICT_AHEAD)
    if ahead is not None:
        if ahead.token == token and ahead.alive():
            return
        ss.pop(state.PREDICT_AHEAD).cancel()  # for other choices, or it gave way to another computation
    queue = jobs.queue()
    if not queue.free() or foundation.cells_to_embed(adata, bundle, mask) or scaleout.engine_for(adata.n_obs).use_ray:
        return
    try:
        inputs = model_inputs(adata, bundle)
    except ScatdError:
        return  # the pages show the problem; nothing to start
    if inputs.source.alignment is not None:
        from scatd_core.genes import coverage_refusal

        if coverage_refusal(inputs.data, bundle.genes) is not None:  # on the matrix the model reads
            return  # too few of the model's genes: refused, as the Model page says; never run on the user's behalf
    ahead = Ahead(token, str(bundle.path))
    executor = _background()

    def give_way() -> bool:
        return ahead.stop.is_set() or (queue.contended() and not ahead.claimed.is_set())

    def run():
        with queue.slot_if_free() as held:
            if not held:
                raise Cancelled("The server became busy before the prediction could start.")
            scores = score(adata, bundle, inputs=inputs, mask=mask, mode=settings["mode"],
                           n_samples=max(2, settings["n_samples"]), seed=settings["seed"], progress=ahead.report,
                           should_stop=give_way)
        if MIN_CELLS <= scores.n_obs <= AHEAD_UMAP_MAX_CELLS and not give_way():  # too few: none (Cells says so)
            umap = Pending(token_of(token, "latent"), stop=ahead.stop)
            umap.future = executor.submit(embed_ahead, scores, umap)
            ahead.embedding = umap  # set before this future completes
        return scores

    def embed_ahead(scores, umap: Pending):
        import pandas as pd

        from scatd_core.embed import LATENT_KEY, compute_embedding

        def between_steps(fraction: float, message: str) -> None:
            if give_way():
                raise Cancelled("The UMAP computed ahead gave way to another computation.")
            umap.report(fraction, message)

        with queue.slot_if_free() as held:
            if not held:
                raise Cancelled("The server became busy before the UMAP could start.")
            latent_only = ad.AnnData(obs=pd.DataFrame(index=pd.RangeIndex(scores.n_obs).astype(str)),
                                     obsm={LATENT_KEY: scores.latent})
            return compute_embedding(latent_only, basis="latent", seed=0, progress=between_steps)

    ahead.future = executor.submit(run)
    ss[state.PREDICT_AHEAD] = ahead
    session.own(ahead)  # stopped (its UMAP too) when the user logs out or the session expires


def offered_models(demo_data: bool) -> list:
    """The drug models the Model page offers: every installed classifier that can predict (not one
    lacking its AdaIN statistics) with the demo data, the real ones (not the demo model) with any other data."""
    classifiers = [e.bundle for e in library_entries() if e.ok and e.bundle.kind == "classifier"
                   and e.bundle.prediction_problem is None]
    return classifiers if demo_data else [b for b in classifiers if not b.is_demo]


def model_names(entries=None) -> dict[str, str]:
    """The name each model of the library is shown by, keyed by ``str(path)``
    (:func:`scatd_core.bundle.display_names` over the whole library): the Models page's table, card
    picker, Remove picker and messages, the Model page's picker and heading, the Drug panel, the
    Predict page and the sidebar all say it, so one model never has two names."""
    from scatd_core.bundle import display_names

    return display_names([e.bundle for e in (library_entries() if entries is None else entries) if e.ok])


def model_title(bundle) -> str:
    """``bundle``'s name as every page shows it (:func:`model_names`), e.g. ``GEFITINIB (VAE on genes,
    trained) 2``, or ``DRUG · backbone`` with its folder name added when another installed model
    reads the same, so the Predict page and the sidebar say which one is used."""
    from scatd_core.bundle import display_names

    try:
        others = [e.bundle for e in library_entries() if e.ok
                  and Path(e.bundle.path).resolve() != Path(bundle.path).resolve()]
    except (ScatdError, OSError):  # the library cannot be listed: the model's own name
        others = []
    return display_names([*others, bundle])[str(bundle.path)]


def model_user() -> str | None:
    """Whose models are "yours" in the library: the logged-in user's name; ``None`` without a
    login (one user at the machine: every model is theirs)."""
    from scatd_app import auth

    if auth.mode() == "none":
        return None
    user = auth.current_user()
    return user.name if user is not None else ""


def default_model(bundles, adata=None) -> str | None:
    """The path of the model chosen for the user before they choose, or None: of ``bundles``, those
    :func:`scatd_core.bundle.chosen_by_default_for` lets be (a published model, the demo or the
    user's own; never another user's), and of them, with data (``adata``), the one that can best
    score them (:func:`scatd_core.inputs.fit_for_data`: values its input transform takes, then
    gene coverage; with the demo data the demo model first); ties: the first listed. Never a model
    with fewer of its genes in the data than the prediction needs
    (:func:`scatd_core.genes.min_gene_coverage`): it would be refused, so the user chooses."""
    from scatd_core.bundle import chosen_by_default_for

    user = model_user()
    allowed = [b for b in bundles if chosen_by_default_for(b, user)]
    if adata is not None and allowed:
        from scatd_core.genes import min_gene_coverage
        from scatd_core.inputs import fit_for_data

        demo_data = bool(st.session_state.get(state.IS_DEMO))
        fits = _fits_for_data(adata, allowed, fit_for_data)
        minimum = min_gene_coverage()
        # a gene-expression model below the minimum coverage would be refused (an embedding model's 0.0 is
        # another width: still chosen when it is the only one, so the page says why it cannot score)
        allowed = [b for b in allowed if b.input_kind != "expression" or not b.genes
                   or fits[str(b.path)][1] >= minimum]
        allowed.sort(key=lambda b: (b.is_demo == demo_data, *fits[str(b.path)]), reverse=True)
    return str(allowed[0].path) if allowed else None


def model_fits(adata, bundles) -> dict[str, tuple[int, float]]:
    """``{path: scatd_core.inputs.fit_for_data(adata, bundle)}`` of ``bundles``, kept in the session
    as :func:`default_model` keeps them (each model judged once per upload and library)."""
    from scatd_core.inputs import fit_for_data

    return _fits_for_data(adata, bundles, fit_for_data)


def _fits_for_data(adata, bundles, fit) -> dict[str, tuple[int, float]]:
    """``{path: fit(adata, bundle)}`` of ``bundles``. For the session's dataset they are kept in the
    session (:data:`state.MODEL_FITS`) per upload, gene-ID mapping and model library as it stands: a
    rerun of the Model page (each click) does not judge every model again; a new upload, another
    gene-ID mapping, or a model added to or changed in the library does."""
    from scatd_core._keys import INPUT_REPORT

    ss = st.session_state
    if adata is not ss.get(state.ADATA) or ss.get(state.DATA_TOKEN) is None:  # other data: judged each time
        return {str(b.path): _fit_for_data(adata, b, fit) for b in bundles}
    report = adata.uns.get(INPUT_REPORT, {})
    token = token_of(ss.get(state.DATA_TOKEN), report.get("gene_ids", {}), report.get("value_type"),
                     _library_signature())
    cached = ss.get(state.MODEL_FITS)
    if cached is None or cached[0] != token:
        cached = ss[state.MODEL_FITS] = (token, {})
    fits = cached[1]
    for b in bundles:
        if str(b.path) not in fits:
            fits[str(b.path)] = _fit_for_data(adata, b, fit)
    return {str(b.path): fits[str(b.path)] for b in bundles}


def _fit_for_data(adata, bundle, fit) -> tuple[int, float]:
    """``fit(adata, bundle)``; a model whose fit cannot be judged ranks last, its problem said when chosen."""
    try:
        return fit(adata, bundle)
    except (ScatdError, ValueError):
        return -1, 0.0


def settled_model():
    """The model the session's next prediction will use, when no choice is left: the chosen one,
    or, before the user has chosen, the only model the Model page offers for these data (its
    default) when it may be chosen for them (not another user's model). ``None`` when the user
    still has a choice to make."""
    demo_data = bool(st.session_state.get(state.IS_DEMO))
    chosen = current_bundle()
    if chosen is not None:
        return None if chosen.is_demo and not demo_data else chosen  # the Model page drops the demo model for real data
    offered = offered_models(demo_data)
    return get_bundle(str(offered[0].path)) if len(offered) == 1 and \
        default_model(offered, st.session_state.get(state.ADATA)) else None


def decline_prediction_ahead(token: str) -> None:
    """The user stopped the prediction for ``token``: stop it in the background too, and do not
    start it ahead again (a click on Run prediction still runs it)."""
    ss = st.session_state
    ss[state.AHEAD_DECLINED] = token
    ahead = ss.pop(state.PREDICT_AHEAD, None)
    if ahead is not None:
        ahead.cancel()


def prediction_ahead(token: str) -> Ahead | None:
    """The background prediction for ``token``, if one is under way or done (not stopped)."""
    ahead = st.session_state.get(state.PREDICT_AHEAD)
    return ahead if ahead is not None and ahead.token == token and ahead.alive() else None


def take_prediction_ahead(token: str, bar) -> Ahead | None:
    """The background prediction for ``token``, finished (waiting for it, its progress in
    ``bar``), its :class:`~scatd_core.predict.Scores` in ``.scores``; or ``None`` when there is
    none to take (none started, other settings, not started yet, or stopped): the caller then
    predicts as usual. An error of the run (a :class:`~scatd_core.errors.ScatdError`) is raised
    as the run raised it. Its UMAP, if one followed it, is handed on by :func:`adopt_ahead_embedding`."""
    from scatd_core.errors import Cancelled

    ahead = st.session_state.pop(state.PREDICT_AHEAD, None)
    if ahead is None:
        return None
    if ahead.token != token or not ahead.alive() or ahead.future.cancel():  # .cancel(): not started yet
        ahead.cancel()
        return None
    ahead.claimed.set()  # the owner asked for it now: it keeps its slot, whoever queues after this click
    try:
        while not ahead.future.done():  # a Streamlit call in the loop: Cancel or leaving interrupts the wait
            progress_to(bar)(ahead.fraction, ahead.message)
            concurrent.futures.wait([ahead.future], timeout=0.1)  # returns as soon as it is done
    except BaseException:
        ahead.cancel()  # the user stopped the run: stop the computation too
        raise
    try:
        ahead.scores = ahead.future.result()
    except Cancelled:
        return None
    return ahead


def adopt_ahead_embedding(ahead: Ahead, token: str) -> None:
    """After the prediction ``ahead`` was stored as the session's prediction ``token``: the UMAP
    that followed it in the background becomes the Cells page's pending UMAP (as if
    :func:`start_embedding` had started it)."""
    umap = ahead.embedding
    if umap is None or umap.future.cancelled():
        return
    from scatd_app import session

    umap.token = token_of(token, "latent")
    st.session_state[state.EMBEDDING_PENDING] = umap
    session.own(umap)  # on its own now (the prediction it followed is taken)


# --------------------------------------------------------------------------------------------
# Session data
# --------------------------------------------------------------------------------------------

def set_data(adata: ad.AnnData, name: str, *, demo: bool = False) -> None:
    """Make ``adata`` the session's dataset; everything about the previous dataset is forgotten."""
    from scatd_core._keys import INPUT_REPORT

    state.invalidate("data")
    ss = st.session_state
    ss[state.ADATA], ss[state.DATA_NAME], ss[state.DATA_TOKEN] = adata, name, uuid.uuid4().hex
    ss[state.IS_DEMO] = demo
    if not demo:  # own data loaded: a demo asked for before is not loaded over them
        ss.pop(state.DEMO_WANTED, None)
    if not demo and ss.get(state.BUNDLE_PATH):  # the demo model is never kept for real data (the Model page
        try:                                     # drops it too): not shown beside them in the sidebar either
            chosen = get_bundle(ss[state.BUNDLE_PATH])
        except ScatdError:
            chosen = None
        if chosen is not None and chosen.is_demo:
            set_bundle(None)
    for key in [k for k in ss.keys() if str(k).startswith(("qc_", "label_"))]:
        del ss[key]
    ss[state.LABEL_COLUMN], ss[state.SAMPLE_COLUMN] = _default_columns(adata.uns.get(INPUT_REPORT, {}))


def _default_columns(report: dict, among=None) -> tuple[str | None, str | None]:
    """The label column (a two-valued one named like response or label) and the sample column (named like
    sample, batch, patient ...) the Data page starts with, from the read report (``among``: only these)."""
    labels = [c for c, v in (report.get("label_columns") or {}).items() if v.get("binary")
              and (among is None or c in among)]
    groups = [c for c in list(report.get("group_columns") or []) if among is None or c in among]
    sample_like = [c for c in groups if c.lower() in ("sample", "sample_id", "samples", "batch", "batch_id",
                                                      "patient", "donor", "orig.ident")]
    return (labels[0] if labels else None), (sample_like[0] if sample_like else None)


def report_columns(adata: ad.AnnData) -> tuple[str | None, str | None]:
    """The Data page's label column (``None`` while the user has not said which value means
    resistant: no evaluation) and sample column, as metrics.csv uses them (Report, Biomarkers)."""
    from scatd_core.labels import label_direction

    ss = st.session_state
    label_column = ss.get(state.LABEL_COLUMN) if ss.get(state.LABEL_COLUMN) in adata.obs else None
    if label_column and label_direction(adata, label_column) is None:
        label_column = None  # no evaluation until the user says which value means resistant
    sample_column = ss.get(state.SAMPLE_COLUMN) if ss.get(state.SAMPLE_COLUMN) in adata.obs else None
    return label_column, sample_column


def set_bundle(path: str | None) -> None:
    """Choose the model; a different model forgets the prediction made with another."""
    ss = st.session_state
    if ss.get(state.BUNDLE_PATH) != path:
        ahead = ss.pop(state.PREDICT_AHEAD, None)
        ss[state.BUNDLE_PATH] = path
        ss.pop(state.BUNDLE_IDENTITY, None)
        if path:
            _remember_identity(path)
        state.invalidate("prediction")
        if ahead is not None and path is not None and Path(ahead.bundle_path).resolve() == Path(path).resolve():
            ss[state.PREDICT_AHEAD] = ahead  # started for this very model (the only one offered): kept
        elif ahead is not None:
            ahead.cancel()


def demo_module():
    """``scatd_core.demo`` (the built-in demo, built locally on first use)."""
    from scatd_core import demo

    return demo


def stop_when(flag: str):
    """A ``should_stop`` for scatd_core: true once the page's Stop set session ``flag``, or once
    this session was logged out (in any of its tabs) or expired, which session state cannot say
    (a logout clears it): :func:`scatd_app.session.stop_on_logout`."""
    from scatd_app import session

    logged_out = session.stop_on_logout()
    ss = st.session_state
    return lambda: bool(ss.get(flag)) or logged_out()


def progress_to(bar):
    """A ``progress(fraction, message)`` callback for scatd_core that moves ``bar`` (an
    ``st.progress``); the messages can name drugs, models and files, so they are escaped. Each
    report also tells the idle-session clean-up that the session is busy (a computation longer
    than ``server.session_ttl_minutes`` keeps the session's files). A report after this session was
    logged out (in any of its tabs) or expired raises :class:`~scatd_core.errors.Cancelled`: the
    computation stops there and frees its place in the server's queue."""
    from scatd_app import session
    from scatd_core.errors import Cancelled

    busy = session.keep_alive()
    logged_out = session.stop_on_logout()

    def report(fraction: float, message: str) -> None:
        if logged_out():
            raise Cancelled(session.LOGGED_OUT_STOP)
        busy()
        bar.progress(min(max(fraction, 0.0), 1.0), text=md(message))

    return report


class _SharedBuild:
    """One server-wide build (the demo, the demo panel) run in a server thread: see :func:`shared_build`."""

    def __init__(self):
        self.future: concurrent.futures.Future | None = None
        self.progress: tuple[float, str, float] = (0.0, "", time.monotonic())  # fraction, message, when
        self.stop = threading.Event()  # set when the server stops (:func:`stop_shared_builds`)

    def report(self, fraction: float, message: str) -> None:
        """The build's progress callback; stops the build (raises) once the server is stopping."""
        from scatd_core.errors import Cancelled

        if self.stop.is_set():
            raise Cancelled("The server is stopping: the build was stopped before it finished; it is started "
                            "again on the next click.")
        self.progress = (fraction, message, time.monotonic())


_BUILDS: dict[str, _SharedBuild] = {}
_BUILDS_LOCK = threading.Lock()


def shared_build(name: str, work, bar, what: str, poll_seconds: float = 0.5):
    """Run ``work(progress)`` (e.g. ``demo.ensure``) once for the whole server in a server thread,
    in the job queue like any computation, and follow it in ``bar``; returns its result.

    The build belongs to the server, not to the page: a user who leaves the page (which stops the
    page's run, and so this wait) does not stop it, and whoever clicks again, this user or another,
    follows the same build instead of starting it afresh (before, leaving the Overview page during
    the demo's first build lost it without a word). A finished build (done or failed) is started
    again on the next call; ``work`` returns at once when its files are already there."""
    from scatd_app import jobs, session
    from scatd_core._progress import ticking

    with _BUILDS_LOCK:
        build = _BUILDS.setdefault(name, _SharedBuild())
        if build.future is None or build.future.done():
            build.progress = (0.0, f"Waiting for the server to start {what}…", time.monotonic())
            build.stop.clear()

            def run():
                with jobs.queue().slot():
                    return work(build.report)

            build.future = _background().submit(run)
        future = build.future
    busy = session.keep_alive()
    while True:
        try:
            return future.result(timeout=poll_seconds)
        except concurrent.futures.TimeoutError:
            busy()
            fraction, message, at = build.progress
            # a long step reports seldom: its elapsed time keeps ticking between reports (QA: it froze for minutes)
            message = ticking(message, fraction, time.monotonic() - at)
            bar.progress(min(max(fraction, 0.0), 1.0),
                         text=md(message) + " (it goes on if you leave this page)")


def stop_shared_builds() -> list[str]:
    """Stop the server-wide builds running now (the server is stopping): each stops at its next
    progress report instead of holding the process's exit until it ends (Python joins the worker
    threads before it exits: a SIGTERM during the demo's first build waited minutes). Their names."""
    with _BUILDS_LOCK:
        running = {name: b for name, b in _BUILDS.items() if b.future is not None and not b.future.done()}
    for build in running.values():
        build.stop.set()
    return list(running)


def building(name: str) -> bool:
    """Whether the server-wide build ``name`` (:func:`shared_build`: ``"demo"``, ``"demo panel"``)
    is running now."""
    with _BUILDS_LOCK:
        build = _BUILDS.get(name)
        return build is not None and build.future is not None and not build.future.done()


def build_status(name: str) -> tuple[float, str] | None:
    """``(fraction, message)`` of the server-wide build ``name`` (:func:`shared_build`) while it runs,
    its elapsed time moved on since its last report; ``None`` when none runs."""
    from scatd_core._progress import ticking

    with _BUILDS_LOCK:
        build = _BUILDS.get(name)
        if build is None or build.future is None or build.future.done():
            return None
        fraction, message, at = build.progress
    return min(max(fraction, 0.0), 1.0), ticking(message, fraction, time.monotonic() - at)


def demo_build_line(*, asked: bool = False) -> str | None:
    """One line saying that the demo is being built for this server and how far it is, while it is
    (started by any session: it goes on whoever left its page); ``None`` otherwise. ``asked``: for
    the page run of the session that asked for it, which waits for it and then opens it."""
    status = build_status("demo")
    if status is None:
        return None
    fraction, message = status
    return (f"The demo is being built for this server ({fraction:.0%}: {md(message)}). "
            + ("It opens on this page when it is ready; if you open another page meanwhile, the Data page "
               "opens it." if asked else "It goes on while you work; *Try the demo* opens it when it is ready."))


#: Seconds between two redraws of the demo build's status line (:func:`demo_build_note`).
DEMO_NOTE_SECONDS = 2.0


def demo_build_note(where=None) -> bool:
    """:func:`demo_build_line` as a small status line in ``where`` (the page), unless this session
    already has the demo. Whether it was drawn.

    The line is drawn again every :data:`DEMO_NOTE_SECONDS` (a fragment on a timer), so it follows
    the build's steps and time left while the user reads the page; it said the step and percentage
    of the moment the page was drawn until the user clicked something. Once the build is over it
    says nothing more."""
    if demo_build_line() is None or st.session_state.get(state.IS_DEMO):
        return False
    if where is None or where is st:
        _live_demo_note()
    else:
        with where:
            _live_demo_note()
    return True


@st.fragment(run_every=DEMO_NOTE_SECONDS)
def _live_demo_note() -> None:
    line = demo_build_line()
    if line is not None:
        st.caption(f":material/hourglass_top: {line}")


@st.fragment(run_every=DEMO_NOTE_SECONDS)
def demo_build_progress() -> None:
    """The Overview's line under "The demo is being built for this server": how far the build is and
    its current step (``55%: Training the demo model: ... · about 2.1 min left``), drawn again every
    :data:`DEMO_NOTE_SECONDS` while it runs, as :func:`demo_build_note`."""
    status = build_status("demo")
    if status is not None:
        st.caption(f":material/hourglass_top: {status[0]:.0%}: {md(status[1])}")


def use_demo(bar) -> None:
    """Load the demo dataset (building it on first use, in the server's thread: :func:`shared_build`)
    and choose the demo model."""
    from scatd_app import jobs

    demo = demo_module()
    problem = demo.cell_limit_problem()  # said before the (long) build, not after it
    if problem is not None:
        raise problem
    shared_build("demo", lambda report: demo.ensure(progress=report), bar, "the demo")
    with jobs.computing("the demo"):
        adata = demo.load_data(progress=progress_to(bar))
    set_data(adata, "demo (simulated data)", demo=True)
    clear_library_cache()
    set_bundle(str(demo.bundle_path()))


#: Session key: [file id, orientation, error] of an unreadable upload (not kept for a reload; the
#: error is a copy without its traceback, whose frames would keep the page and the upload alive).
FAILED_UPLOAD = "failed_upload"


def error_copy(exc: BaseException) -> BaseException:
    """``exc`` without its traceback, to keep in the session and show again: a kept exception's
    frames would keep the page and the upload alive (see :data:`FAILED_UPLOAD`)."""
    if isinstance(exc, ScatdError):
        return ScatdError(exc.message, exc.hint, app_hint=exc.app_hint, app_message=exc.app_message)
    return RuntimeError(f"{type(exc).__name__}: {str(exc)[:300]}")


def _say_earlier_data_kept() -> None:
    """After a failed upload: the data loaded before is still the session's (nothing was lost)."""
    ss = st.session_state
    if ss.get(state.ADATA) is not None:
        st.info(f"Your earlier data ({md(ss.get(state.DATA_NAME, 'data'))}) is still loaded.",
                icon=":material/info:")


def read_upload(uploaded, orientation: str) -> None:
    """Make the Data page's upload the session's data when it is new or its orientation changed.

    The upload is read from the session's folder (:func:`scatd_app.session.keep_upload`); once
    read, the server drops its in-memory copy (the uploader still shows the file but gives None)
    and the file on disk serves a new reading in another orientation, also after a reload. An
    unreadable file shows its error and stops the page; its copy on disk is deleted at once (one
    for memory, which a "Try again" reads, is kept) and it is not read again on the page's next
    runs, only in another orientation.
    """
    from scatd_app import session

    ss = st.session_state
    kept, source, note = ss.get(state.UPLOAD), None, None
    done = ss.get("data_upload") or [None, None]
    failed = ss.get(FAILED_UPLOAD)
    waiting = _waiting_upload()
    forgotten = ss.get(FORGOTTEN_UPLOAD)
    if forgotten and (uploaded is None or uploaded.file_id == forgotten[0]):
        # "Forget it" on a first refusal: said once the uploader lets the file go, else while it shows it
        st.info(f"{md(forgotten[1])} was forgotten: its copy on the server was deleted.", icon=":material/check:")
        if uploaded is None:
            ss.pop(FORGOTTEN_UPLOAD, None)
        return
    if forgotten:  # another file since
        ss.pop(FORGOTTEN_UPLOAD, None)
    if uploaded is not None:
        if failed and failed[:2] == [uploaded.file_id, orientation]:
            show_error(failed[2])  # read once: the same file gives the same error
            _say_earlier_data_kept()
            stop()
        if done[:2] != [uploaded.file_id, orientation]:
            if waiting and waiting["id"] != uploaded.file_id:  # replaced by another file: the kept one goes
                kept = forget_waiting_upload()
            note = reading_note(uploaded.name)  # at once: copying a large file takes a while too
            try:
                source = session.keep_upload(uploaded)
            except Exception as exc:  # InputError: too large, unsupported, disk full
                note.empty()
                show_error(exc)
                stop()
    else:
        source = _kept_upload_to_read_again(orientation)
        if source is None and waiting:
            source = _offer_waiting_upload(waiting)
    if source is None:
        return
    try:
        adata = _read_source(source, orientation, note)
    except Exception as exc:  # io promises InputError only; still never show a traceback
        if isinstance(exc, MemoryShortage) and (exc.hint or "").startswith(KEPT):  # the buttons below, named
            exc.app_hint = (KEPT + "click Try again once memory is free, or Forget it to delete the server's copy. "
                            "Meanwhile: " + exc.hint[len(KEPT):])
        show_error(exc)
        if isinstance(exc, MemoryShortage):  # the file is kept; a rerun reads it again
            if not waiting or waiting["id"] != source["id"]:
                ss[WAITING_UPLOAD] = {"id": source["id"], "previous": kept if source is not kept else None}
            if uploaded is not None:  # else drawn with the kept file's offer (_offer_waiting_upload)
                left, right = st.columns(2)
                left.button("Try again", key="btn_data_read_again", icon=":material/refresh:")
                right.button("Forget it", key="btn_data_forget_upload", icon=":material/delete:",
                             on_click=_forget_refused_upload, args=(uploaded.file_id, source["name"]))
        elif source is not kept:  # a new file that cannot be read: nothing of it stays on the server's disk
            session.drop_upload(source, previous=kept)
            if uploaded is not None:
                ss[FAILED_UPLOAD] = [uploaded.file_id, orientation, error_copy(exc)]
        _say_earlier_data_kept()
        stop()
    _use_reading(adata, source, orientation)
    if uploaded is not None:
        session.release_upload(uploaded.file_id)


#: How a refusal for memory of a kept upload begins (scatd_core.io's ``check_memory``).
KEPT = "Your file is kept: "

#: Session key: ``[file id, name]`` of an upload forgotten at its first refusal for memory (its uploader
#: may still hold it: it is not read again).
FORGOTTEN_UPLOAD = "forgotten_upload"


#: Session key: how many times "Forget it" emptied the Data page's uploader: part of the uploader's key
#: (:func:`data_uploader_key`), so that a fresh, empty uploader replaces the one showing the forgotten file.
DATA_UPLOADER_RESETS = "uploader_resets"


def data_uploader_key() -> str:
    """The key of the Data page's data file uploader (a new one, empty, after each "Forget it")."""
    return f"upload_data_{st.session_state.get(DATA_UPLOADER_RESETS, 0)}"


def _forget_refused_upload(file_id: str, name: str) -> None:
    """"Forget it" under a first refusal for memory: the kept copy is deleted, the uploader's copy let
    go, and the uploader replaced by an empty one (else it still shows the file's name and size)."""
    from scatd_app import session

    ss = st.session_state
    forget_waiting_upload()
    session.release_upload(file_id)
    ss[FORGOTTEN_UPLOAD] = [file_id, name]
    ss[DATA_UPLOADER_RESETS] = ss.get(DATA_UPLOADER_RESETS, 0) + 1


#: Session key: ``{"id", "previous"}`` of the kept upload (``state.UPLOAD``) that was refused for lack of
#: memory: offered again (its name and size, Try again, Forget it) when the Data page is shown again
#: with an empty uploader; ``previous`` is the upload the session's data came from before, if any.
WAITING_UPLOAD = "waiting_upload"


def _waiting_upload() -> dict | None:
    """The kept upload refused for lack of memory, while its copy is still on the server's disk."""
    ss = st.session_state
    waiting, kept = ss.get(WAITING_UPLOAD), ss.get(state.UPLOAD)
    if not waiting:
        return None
    if not kept or kept["id"] != waiting["id"] or not Path(kept["path"]).is_file():
        ss.pop(WAITING_UPLOAD, None)
        return None
    return waiting


def forget_waiting_upload() -> dict | None:
    """Delete the kept copy of the upload refused for lack of memory (forgotten, or replaced by
    another file); the upload the session's data came from is the kept one again. Returns it."""
    from scatd_app import session

    ss = st.session_state
    waiting, kept = ss.pop(WAITING_UPLOAD, None), ss.get(state.UPLOAD)
    if not waiting or not kept or kept["id"] != waiting["id"] or (ss.get("data_upload") or [None])[0] == kept["id"]:
        return kept  # (the session's data were read from that very file: it stays)
    session.drop_upload(kept, previous=waiting.get("previous"))
    return ss.get(state.UPLOAD)


def _offer_waiting_upload(waiting: dict) -> dict | None:
    """On a return to the Data page (its uploader empty): the file refused for lack of memory is
    still kept; offer to read it again or to forget it. The kept upload when Try again is clicked."""
    from scatd_core._memory import size_text

    kept = st.session_state[state.UPLOAD]
    size = size_text(Path(kept["path"]).stat().st_size)
    said = st.empty()
    slot = st.empty()  # the buttons: cleared once the file is forgotten (nothing left to try again)
    left, right = slot.container().columns(2)
    again = left.button("Try again", key="btn_data_read_again", icon=":material/refresh:")
    if right.button("Forget it", key="btn_data_forget_waiting", icon=":material/delete:"):
        forget_waiting_upload()
        slot.empty()
        said.info(f"{md(kept['name'])} was forgotten: its copy on the server was deleted.", icon=":material/check:")
        return None
    if again:
        return kept
    said.warning(f"Your file {md(kept['name'])} ({size}) is kept: there was not enough free memory to read it. "
                 "Try again to read it now, or Forget it to delete the server's copy.", icon=":material/info:")
    return None


def _kept_upload_to_read_again(orientation: str) -> dict | None:
    """The session's kept upload when its data were read in another orientation than ``orientation``
    and reading it again would give other data; else ``None`` (an orientation that changes nothing
    is recorded as the one shown, and the data stay, with all computed from them)."""
    ss = st.session_state
    kept = ss.get(state.UPLOAD)
    done = ss.get("data_upload") or [None, None]
    if not kept or ss.get(state.IS_DEMO) or done[0] != kept["id"] or done[1] == orientation:
        return None
    read_with = done[2] if len(done) > 2 else done[1]  # the option the data were read with
    if _orientation_changes_nothing(ss.get(state.ADATA), orientation, read_with):
        ss["data_upload"] = [done[0], orientation, read_with]
        return None
    return kept


def _read_source(source: dict, orientation: str, note=None) -> ad.AnnData:
    """Read an upload kept on disk (:func:`scatd_app.session.keep_upload`) in ``orientation``
    (``note``: its :func:`reading_note`, when already drawn)."""
    from scatd_app import session
    from scatd_core import io

    note = note or reading_note(source["name"])
    try:
        return io.read(source["path"], name=source["name"], orientation=orientation,
                       max_bytes=limits().max_upload_bytes,  # an upload: the upload limit applies
                       **session.room_for_a_dataset(st.session_state.get(session.TOKEN)))
    finally:
        note.empty()


class _NoNote:
    """A :func:`reading_note` that says nothing (a read in a widget's callback)."""

    def empty(self) -> None:
        pass


_NO_NOTE = _NoNote()


def reading_note(name: str):
    """Say "Reading NAME…" now, before the file is read (an ``st.empty`` to empty when it is). Not
    ``st.spinner``: that one is drawn by another thread only after half a second, and during the
    demo's first build (both cores busy) the page showed nothing for half a minute after an upload."""
    note = st.empty()
    note.info(f"Reading {md(name)}…", icon=":material/hourglass_top:")
    return note


def _use_reading(adata: ad.AnnData, source: dict, orientation: str) -> None:
    """Make a reading of the kept upload ``source`` the session's data."""
    from scatd_app import session

    ss = st.session_state
    ss.pop(FAILED_UPLOAD, None)
    ss.pop(WAITING_UPLOAD, None)
    set_data(adata, source["name"])
    ss["data_upload"] = [source["id"], orientation, orientation]  # [file, option shown, option read with]
    session.forget_other_uploads()


def read_again_in_orientation(key: str = "data_orientation") -> None:
    """The Data page's orientation radio's ``on_change``: the kept upload read again in the orientation
    chosen (radio ``key``), with its cell metadata table added again. A change followed at once by
    another page reaches the server as one rerun of that page, in which the Data page's code (its
    :func:`read_upload`) never runs: that page would show the earlier reading. A reading that fails
    changes nothing here; the Data page reads the file again when it is shown, and says why."""
    ss = st.session_state
    orientation = ss.get(key)
    source = _kept_upload_to_read_again(orientation)
    if source is None:
        return
    try:  # no "Reading…" note: a callback's elements would be drawn above the page
        adata = _read_source(source, orientation, _NO_NOTE)
    except Exception:  # said on the Data page (read there again)
        return
    _use_reading(adata, source, orientation)
    add_cell_metadata(adata, None, cell_metadata_key(), say=False)


def _orientation_changes_nothing(adata, orientation: str, read_with: str | None) -> bool:
    """Whether reading the session's data again in ``orientation`` would give the same data: its
    format fixes the orientation (loom, 10x), the data were read with this very option
    (``read_with``: back to "detect" after trying the orientation detected), or in the orientation
    now chosen. Reading again would otherwise forget the prediction and everything computed from it."""
    from scatd_core._keys import INPUT_REPORT

    if adata is None:
        return False
    report = adata.uns.get(INPUT_REPORT, {})
    if bool(report.get("orientation_fixed", False)) or orientation == read_with:
        return True
    return orientation != "auto" and orientation == report.get("orientation")


#: Session key: [file id, error] of a cell metadata table that could not be read (not kept for a reload).
CELL_METADATA_FAILED = "cell_metadata_failed"


def cell_metadata_key() -> str:
    """The key of the Data page's cell metadata uploader: one per dataset upload (or the demo), so
    that new data start with an empty uploader while the same upload read again keeps its table."""
    ss = st.session_state
    source = "demo" if ss.get(state.IS_DEMO) else str((ss.get("data_upload") or ["none"])[0])
    return f"upload_cell_metadata_{source}"


#: Session key: the columns a removed cell metadata table took with it (said once on the Data page).
CELL_METADATA_REMOVED = "cell_metadata_removed"


def remove_cell_metadata_if_cleared(key: str | None = None) -> None:
    """The cell metadata uploader's ``on_change`` (and, with no ``key``, the Remove button's
    ``on_click``): when the user removed the table (the uploader ``key`` is empty now), its columns
    leave the data too (and a threshold fitted on their labels,
    :func:`scatd_core.io.remove_cell_metadata`); a callback, so that leaving the page keeps them
    (Streamlit empties an uploader the page did not show, while the columns stay with the data)."""
    from scatd_core import io

    ss = st.session_state
    if key is not None and ss.get(key) is not None:
        return
    ss.pop(state.CELL_METADATA, None)
    ss.pop(CELL_METADATA_FAILED, None)
    adata = ss.get(state.ADATA)
    if adata is not None:
        removed = io.remove_cell_metadata(adata)
        if removed:
            ss[CELL_METADATA_REMOVED] = removed


def add_cell_metadata(adata: ad.AnnData, uploaded, source: str, *, say: bool = True) -> None:
    """The Data page's cell metadata table: read once per upload (then Streamlit's copy is let go),
    added to the data's obs, and added again to a new reading of the same upload (another
    orientation); forgotten with the upload it was given for (``source``: :func:`cell_metadata_key`).
    Says what was matched, or why nothing could be; a label or sample column it brings is chosen
    when none is. ``say=False``: a table that does not fit the data is said only on the page's next
    run (from a callback)."""
    from scatd_app import session
    from scatd_core import io

    ss = st.session_state
    meta = ss.get(state.CELL_METADATA)
    if meta is not None and meta["source"] != source:  # other data: the table went with the data it was for
        ss.pop(state.CELL_METADATA, None)
        meta = None
    if uploaded is not None and (meta is None or meta["id"] != uploaded.file_id):
        failed = ss.get(CELL_METADATA_FAILED)
        if failed and failed[0] == uploaded.file_id:
            show_error(failed[1])  # read once: the same file gives the same error
            return
        try:
            table = io.read_cell_metadata(uploaded.getvalue(), uploaded.name)
        except Exception as exc:  # io promises InputError; still never a traceback
            ss[CELL_METADATA_FAILED] = [uploaded.file_id, error_copy(exc)]
            show_error(exc)
            return
        ss.pop(CELL_METADATA_FAILED, None)
        meta = ss[state.CELL_METADATA] = {"id": uploaded.file_id, "name": uploaded.name, "table": table,
                                          "source": source, "token": None, "problem": None}
        session.release_upload(uploaded.file_id)
    if meta is None:
        return
    if meta["token"] != ss.get(state.DATA_TOKEN):  # not yet added to these data
        meta["token"], meta["problem"] = ss.get(state.DATA_TOKEN), None
        try:
            record = io.add_cell_metadata(adata, meta["table"], meta["name"])
        except ScatdError as exc:
            meta["problem"] = error_copy(exc)
        else:
            from scatd_core._keys import INPUT_REPORT

            label, sample = _default_columns(adata.uns.get(INPUT_REPORT, {}), among=set(record["columns"]))
            if ss.get(state.LABEL_COLUMN) not in adata.obs:
                ss[state.LABEL_COLUMN] = label
            if ss.get(state.SAMPLE_COLUMN) not in adata.obs:
                ss[state.SAMPLE_COLUMN] = sample
    if meta["problem"] is not None and say:
        show_error(meta["problem"])


def demo_button(key: str, progress_area, *, primary: bool = False) -> bool:
    """The "Try the demo" button; on a click, loads the demo (progress in ``progress_area``).
    Returns whether the demo is now the session's data. Where the server's cell limit is below the
    demo's cells, the button is disabled and says so (before any build)."""
    problem = demo_module().cell_limit_problem()
    if problem is not None:
        st.button("Try the demo", key=key, icon=":material/science:", disabled=True, help=problem.message)
        st.caption(f"{problem.message} {problem.app_hint}")
        return False
    joining = building("demo")  # started by another click (this user's or another's): this one follows it
    if not st.button("Try the demo", key=key, icon=":material/science:", type="primary" if primary else "secondary",
                     on_click=_want_demo,  # also when another page follows at once: the Data page then goes on
                     help=("The demo is being built for this server now: a click joins that build, shows its "
                           "progress and opens the demo when it is ready." if joining else
                           "A simulated tumour and a model trained on simulated cell lines, labelled demo (simulated "
                           "data). Built once per server on first use (about a minute on 2 CPU cores, longer on a "
                           "busy server; a progress bar shows each step), then instant.")):
        return False
    return _load_demo(progress_area, "Joining the demo's build in progress…" if joining else "Preparing the demo…")


def _want_demo() -> None:
    st.session_state[state.DEMO_WANTED] = True


class _AlsoInSidebar:
    """A progress bar that also redraws the sidebar's line about the demo's build
    (:func:`demo_build_line`) each time it moves (:func:`_load_demo`)."""

    def __init__(self, bar, note):
        self.bar, self.note = bar, note

    def progress(self, *args, **kwargs):
        self.bar.progress(*args, **kwargs)
        line = demo_build_line(asked=True)
        if line is None:
            self.note.empty()
        else:
            self.note.caption(f":material/hourglass_top: {line}")

    def empty(self):
        self.bar.empty()
        self.note.empty()


def _load_demo(progress_area, first_text: str) -> bool:
    """Load the demo (:func:`use_demo`, progress in ``progress_area``); whether it is now the session's data.
    The wish (:data:`state.DEMO_WANTED`) ends either way: loaded, or its error shown.

    The sidebar is drawn before the wait (:func:`sidebar_before_wait`), with the build's progress:
    drawn only after the page, it said "no data yet" and nothing of the build in the tab that asked
    for the demo, for as long as the build took, while other tabs' sidebars showed it."""
    note = sidebar_before_wait()
    bar = progress_area.progress(0.0, text=first_text)
    if note is not None:
        bar = _AlsoInSidebar(bar, note)
    try:
        use_demo(bar)
    except ScatdError as exc:
        st.session_state.pop(state.DEMO_WANTED, None)
        bar.empty()
        show_error(exc)
        return False
    st.session_state.pop(state.DEMO_WANTED, None)
    bar.empty()
    return True


def resume_demo(progress_area) -> bool:
    """The Data page without data: when *Try the demo* was clicked and its run was left (another page
    opened at once), follow the demo's build from here (progress in ``progress_area``) and load the
    demo when it is done, as the click would have. Whether the demo is now the session's data."""
    ss = st.session_state
    if not ss.get(state.DEMO_WANTED) or ss.get(state.ADATA) is not None:
        return False
    return _load_demo(progress_area, "The demo you asked for is being prepared…")


# --------------------------------------------------------------------------------------------
# Page furniture
# --------------------------------------------------------------------------------------------

#: What a page says in place of a download made from the session's data file when that file is gone.
WORKING_COPY_GONE = ("Your upload's working copy on the server was removed after the session was idle, so this "
                     "file cannot be made. Upload your data again on the Data page, then download it.")


#: Said under an annotated h5ad download of data too large to carry their matrix
WITHOUT_X = (". These data are too large to download through the browser with their expression matrix, so this "
             "file carries the annotations only (X left empty); `scatd report` on the server writes the whole file.")


def data_download(where, label: str, data, adata: ad.AnnData, **options) -> bool:
    """``where.download_button(label, data, **options)`` (``where``: ``st`` or a container) for a
    download made from the dataset's own file (the annotated h5ad copies the file a large dataset
    is read from). Where that file is gone (the session's working folder was removed after the
    session was idle), the download would bring nothing: a disabled button and
    :data:`WORKING_COPY_GONE` instead. Whether the download is offered."""
    from scatd_core.export import source_missing

    if source_missing(adata):
        where.button(label, disabled=True, icon=options.get("icon"), key=f"{options['key']}_gone")
        where.warning(WORKING_COPY_GONE, icon=":material/folder_off:")
        return False
    where.download_button(label, data, **options)
    return True


def link(title: str, label: str | None = None, icon: str | None = None) -> None:
    """A link to one of the app's pages by title (see :data:`PAGE`)."""
    st.page_link(PAGE[title], label=label or title, icon=icon)


def chart(fig, *, key: str, where=None, alt: str | None = None, filename: str | None = None, said=()):
    """A plotly figure, as every page shows one: with its text alternative (``alt``, else the one
    its builder in :mod:`scatd_core.pl` attached), which Streamlit gives the chart as its
    accessible name (``role="figure"``, ``aria-label``) for a screen reader, and a toolbar of
    the buttons of use only (:func:`scatd_core.pl.chart_config`: download as PNG, named
    ``filename`` or as the builder named it; reset axes; zoom and pan where they show more).
    The notes its builder left to be written under it (:func:`scatd_core.pl.figure_notes`, e.g.
    "UMAP fitted on a random 30,000 of 250,000 cells ...") follow it as a caption, which wraps at any width
    (a note drawn in the figure is one line, cut off on a phone); those in ``said`` (written under the
    chart beside it already) are not said again."""
    from scatd_core import pl

    shown = (where or st).plotly_chart(fig, key=key, alt=alt or pl.alt_text(fig),
                                       config=pl.chart_config(fig, filename))
    if notes := [n for n in pl.figure_notes(fig) if n not in said]:
        (where or st).caption(md(" ".join(notes)))
    return shown


def table(data, *, where=None, **options):
    """Show a table, as ``st.dataframe(data, **options)`` (``where``: ``st``, the default, or a
    container), with every text a spreadsheet would run as a formula (``= + - @``, e.g. a cell
    named ``=HYPERLINK(...)`` in the user's data) shown with a leading ``'``
    (:func:`scatd_core.export.spreadsheet_safe`), as in the app's CSV downloads: whatever copy of
    the table leaves the page (Streamlit's own "Download as CSV" of the table, a copy of its cells)
    is safe to open in a spreadsheet. Both are kept: copying a gene list from a table is what a
    biologist does. Every page shows its tables with this, never with ``st.dataframe`` itself
    (``tests/test_app_pages.py`` checks)."""
    from scatd_core.export import spreadsheet_safe

    return (st if where is None else where).dataframe(spreadsheet_safe(data, index=True), **options)


def cells_table(cells, *, where=None, **options):
    """A per-cell table of the results (Cells, Report): the rows of ``predictions.csv``
    (:func:`scatd_core.export.predictions_table`) with its column names and order, so the table's
    own "Download as CSV" gives the same columns as predictions.csv. Only the headers shown differ:
    the model's call ``label`` is headed "called" ("label" on the Data page means the known
    response); ``known_label`` keeps its name."""
    from scatd_core.export import KNOWN_LABEL_COLUMN

    config = {"label": st.column_config.TextColumn(
                  "called", help="The model's call at the decision threshold: the column 'label' of "
                                 "predictions.csv (and of this table's CSV)."),
              KNOWN_LABEL_COLUMN: st.column_config.TextColumn(
                  KNOWN_LABEL_COLUMN, help="The known response: what the cell's label means, resistant or "
                                           "sensitive (the column 'known_label' of predictions.csv and of this table's CSV)."),
              "prob_resistant_sd": st.column_config.NumberColumn(
                  "prob_resistant_sd", help="Spread of P(resistant) between the ensemble members (or the draws "
                                            "in sample mode): how much they agree, not how sure the call is.")}
    config.update(options.pop("column_config", {}))
    return table(cells, where=where, column_config=config, **options)


#: The biomarker ranking's columns the app shows first (the rest follow, as in biomarkers.csv):
#: at 1280 px the key ones were pushed off the table's right edge by 20 columns.
BIOMARKER_KEY_COLUMNS = ("rank", "feature", "mean_abs_attribution", "direction", "de_score", "logfoldchange",
                         "de_pval_adj")


#: Why the signed mean attribution is hidden against the mean-cell baseline (Biomarkers page).
MEAN_BASELINE_SIGNED_MEAN = (
    "**mean attribution** (signed) is not shown: against a baseline at the average cell (as this one is) it is "
    "close to 0 for every gene by construction (cells above and below the average cancel out), which does not "
    "mean the gene has no net effect. Read **direction** for what more of the gene does, and the per-group "
    "columns (**mean attribution, resistant / sensitive**) for how it pushes each predicted group; "
    "biomarkers.csv keeps the column.")


#: What a table shows where a column has no value for any row (Streamlit writes an empty number as "None").
NO_VALUE = "—"

#: The biomarker table's help for the log fold change (empty, "—", where it is not computed).
LOG_FOLD_CHANGE_HELP = ("log2 fold change of the expression, predicted resistant vs sensitive, on a log-expression "
                        "scale (counts: log1p of counts per 10k). '—' (empty in biomarkers.csv) where it is not "
                        "computed: z-scored values or embedding features are not on such a scale, so a fold change "
                        "would mean nothing; the DE score still compares the groups.")


def biomarker_table(ranking, hide_signed_mean: bool = False, **options):
    """A biomarker ranking (Biomarkers, Report): the key columns first and narrow, named as the
    figures name them (``mean |attribution|``); biomarkers.csv keeps its own names and order.
    ``hide_signed_mean``: leave out the signed ``mean_attribution``, ~0 for every feature against
    a baseline at the average cell (:func:`scatd_core.explain.signed_mean_near_zero`; say
    :data:`MEAN_BASELINE_SIGNED_MEAN` with the table)."""
    if hide_signed_mean:
        ranking = ranking.drop(columns="mean_attribution", errors="ignore")
    first = [c for c in BIOMARKER_KEY_COLUMNS if c in ranking]
    view = ranking[first + [c for c in ranking.columns if c not in first]]
    number = st.column_config.NumberColumn
    lfc = number("log fold change", format="%.3g", width="small", help=LOG_FOLD_CHANGE_HELP)
    if "logfoldchange" in view and view["logfoldchange"].isna().all():  # not on a log scale: a dash, not "None"
        view = view.assign(logfoldchange=NO_VALUE)
        lfc = st.column_config.TextColumn("log fold change", width="small", help=LOG_FOLD_CHANGE_HELP)
    config = {"rank": number("rank", width=60,
                             help="1 = the largest mean |attribution|; empty for genes absent from the data"),
              "mean_abs_attribution": number("mean |attribution|", format="%.4g", width="small"),
              "direction": st.column_config.TextColumn("direction", width="small"),
              "de_score": number("DE score", format="%.3g", width="small"),
              "logfoldchange": lfc,
              "mean_attribution": number(
                  "mean attribution", format="%.3g",
                  help="Signed mean over the explained cells. Against a baseline at the average cell it is "
                       "close to 0 for every gene by construction (cells above and below the average cancel "
                       "out), so ~0 does not mean 'no net effect'. Read mean |attribution| for importance, "
                       "'direction' for the sign and the per-group means (resistant / sensitive) for each "
                       "group."),
              "mean_attribution_resistant": number("mean attribution, resistant", format="%.3g",
                                                   help="Signed mean over the explained cells predicted resistant."),
              "mean_attribution_sensitive": number("mean attribution, sensitive", format="%.3g",
                                                   help="Signed mean over the explained cells predicted sensitive."),
              "de_pval_adj": number("DE p (adj.)", format="%.2e", width="small"),
              "de_pval": number("DE p", format="%.2e")}
    config.update(options.pop("column_config", {}))
    return table(view, column_config=config, **options)


def group_table(groups, **options) -> None:
    """A per-group table (Cells, Drug panel): words for the counts, and the share called resistant
    shown as a percentage that always shows whole (a progress bar's number was cut to "10" for
    100% in the page's narrow column). Only the display is a percentage: the data, and so the
    table's own "Download as CSV", keep ``fraction_resistant`` a fraction (0.75), as metrics.csv."""
    view = groups.copy()
    # the share resistant first, then the counts: in the Drug panel's half-width column "% resistant"
    # was past the right edge
    counts = [c for c in ("n_cells", "n_called", "n_resistant") if c in view]
    view = view[[c for c in view.columns if c not in counts] + counts]
    table(view, hide_index=True, column_config={
        "n_cells": st.column_config.NumberColumn("cells", width="small"),
        "n_called": st.column_config.NumberColumn("scored", width="small", help="cells with a call (not 'not scored' "
                                                                                "or 'filtered (QC)')"),
        "n_resistant": st.column_config.NumberColumn("resistant", width="small", help="cells called resistant"),
        "fraction_resistant": st.column_config.NumberColumn("% resistant", format="percent",
                                                            help="share of the scored cells called resistant "
                                                                 "(a fraction, 0-1, in the CSV)"),
        "mean_prob_resistant": st.column_config.NumberColumn("mean P", format="%.3f",
                                                             help="mean P(resistant) of the scored cells"),
    }, **options)


def detached(func):
    """``func``, holding only the page's names its code uses, taken now; for every function a
    page hands to a widget (callbacks, format functions, a download's deferred data).

    Streamlit keeps a widget's callbacks and format functions in the session's state, and a keyed
    widget's also after the user has gone to another page. A function defined in a page refers
    to the page's whole namespace, so it would keep everything the page's last run assigned
    alive for the session's life: on the Data page, the upload's bytes (up to the upload limit,
    besides the data read from them). The copy returned looks its global names up in a dict of
    just the names in its code (nested code included) that the page had defined by now, so a
    name the page assigns later is not seen: hand functions over where their names exist."""
    import builtins
    import types

    if not isinstance(func, types.FunctionType):
        raise TypeError(f"detached() takes a Python function, not {type(func).__name__}")
    names, codes = set(), [func.__code__]
    while codes:
        code = codes.pop()
        names.update(code.co_names)
        codes.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    page = func.__globals__
    scope = {n: page[n] for n in names if n in page}
    scope["__builtins__"] = page.get("__builtins__", builtins)
    copy = types.FunctionType(func.__code__, scope, func.__name__, func.__defaults__, func.__closure__)
    copy.__kwdefaults__, copy.__qualname__, copy.__doc__ = func.__kwdefaults__, func.__qualname__, func.__doc__
    return copy


class PageEnd(Exception):
    """Raised by :func:`stop`: the page has said all it has to say (caught by ``app.py``)."""


#: Set by app.py while it runs the page, so :func:`stop` knows app.py will catch :class:`PageEnd`
#: (a page run on its own, e.g. by Streamlit's AppTest, ends with ``st.stop()`` instead).
IN_APP = contextvars.ContextVar("scatd_in_app", default=False)


def stop() -> None:
    """End the page here, like ``st.stop()``, but so that ``app.py`` still draws the sidebar after
    it (``st.stop()`` also stops everything drawn after the page)."""
    if IN_APP.get():
        raise PageEnd
    st.stop()


def capped_choice(key: str, default: int, cap: int) -> int:
    """Set the number widget ``key`` to the user's choice, at most ``cap`` (its ``max_value`` for
    the data now), and return it. The choice itself is kept apart (``<key>_chosen``) and changes
    only when the user edits the widget: a cap from smaller data is not taken for a choice, and
    larger data later show the choice (or the default) again."""
    ss = st.session_state
    chosen, shown = f"{key}_chosen", f"{key}_shown"
    if key in ss and ss[key] != ss.get(shown):  # edited by the user since this function set it
        ss[chosen] = ss[key]
    value = min(int(ss.get(chosen, default)), int(cap))
    ss[key] = ss[shown] = value
    return value


def ahead_text() -> str | None:
    """What the pages that show a prediction (Cells, Biomarkers, Report) say while none is in place
    but the one the Predict page would run now is computing in the background, or done there
    (:func:`start_prediction_ahead`); None when there is none for the data, model and settings now."""
    ss = st.session_state
    ahead = ss.get(state.PREDICT_AHEAD)
    if ahead is None or not ahead.alive() or ss.get(state.ADATA) is None:
        return None
    try:  # the chosen model, or before a choice the only one offered, which it was started with
        bundle = get_bundle(ss.get(state.BUNDLE_PATH) or ahead.bundle_path)
        if ahead.token != prediction_token(bundle, predict_settings()):
            return None  # for other data, model or settings: the Predict page stops it
    except Exception:  # noqa: BLE001 (the model cannot be loaded now: the usual words, and its page says why)
        return None
    if ahead.future.done():
        if ahead.future.exception() is not None:
            return None  # its error is shown on the click, as the Predict page says
        return "The prediction was computed in the background: Run prediction on the Predict page shows it at once."
    done = f" ({ahead.fraction:.0%} done)" if ahead.fraction > 0 else ""
    return (f"The prediction is computing in the background, started when the data and model were ready{done}: "
            "Run prediction on the Predict page shows it as soon as it is complete.")


def need(what: str) -> None:
    """Stop the page with a pointer to the step that provides ``what`` (data, model, result)."""
    steps = {"data": ("Data", "Upload a dataset first."),
             "model": ("Model", "Choose a model first."),
             "result": ("Predict", "Run a prediction first.")}
    title, text = steps[what]
    if what == "result":
        text = ahead_text() or text
    st.info(text, icon=":material/info:")
    link(title, f"Go to {title}", ":material/arrow_forward:")
    stop()


def current_bundle():
    """The chosen bundle, or None (a bundle that cannot be loaded any more is shown as an error, and
    another model that took its folder since it was chosen is said and never used in its place)."""
    from scatd_core.bundle import MANIFEST, folder_taken_words, model_identity

    ss = st.session_state
    path = ss.get(state.BUNDLE_PATH)
    if not path:
        return None
    try:
        removed = not (Path(path) / MANIFEST).is_file()  # (or replaced under another name) since it was chosen
    except OSError:
        removed = False  # not readable by this account: get_bundle says so
    if removed:
        st.warning(f"The model you had chosen ({md(Path(path).name)}) is no longer in the model library: an "
                   "administrator removed it. Choose another model on the Model page; results already computed "
                   "with it stay as they are.", icon=":material/inventory_2:")
        _drop_chosen_model()
        return None
    try:
        bundle = get_bundle(path)
    except ScatdError as exc:
        show_error(exc)
        _drop_chosen_model()
        return None
    chosen = ss.get(state.BUNDLE_IDENTITY)
    if not chosen or chosen[0] != path:
        _remember_identity(path, bundle)
    elif chosen[1] != model_identity(bundle):  # removed, and another model took its folder since it was chosen
        st.warning(f"The model you had chosen ({md(Path(path).name)}) is no longer in the model library: "
                   f"{md(folder_taken_words(chosen[2], bundle))}. It is not used in its place: choose the model to "
                   "use on the Model page; results already computed with the earlier one stay as they are.",
                   icon=":material/inventory_2:")
        _drop_chosen_model()
        return None
    return bundle


def _remember_identity(path: str, bundle=None) -> None:
    """Record which model ``path`` holds now (:data:`state.BUNDLE_IDENTITY`), so that another model
    taking the folder later is noticed by :func:`current_bundle`."""
    from scatd_core.bundle import model_identity

    if bundle is None:
        try:
            bundle = get_bundle(path)
        except (ScatdError, OSError):
            return  # said when the model is used (current_bundle)
    if bundle is not None:
        st.session_state[state.BUNDLE_IDENTITY] = (path, model_identity(bundle), bundle.name)


def model_identities(bundles) -> dict[str, tuple[str, str]]:
    """``{path: (identity, name)}`` of library ``bundles`` (:func:`scatd_core.bundle.model_identity`):
    what the Panel page records of the models chosen (:data:`state.PANEL_CHOSEN`)."""
    from scatd_core.bundle import model_identity

    return {str(b.path): (model_identity(b), b.name) for b in bundles}


def _drop_chosen_model() -> None:
    """Forget the chosen model that can no longer be loaded, keeping the results computed with it
    (their record names the model): a prediction ahead for it stops."""
    ss = st.session_state
    ss.pop(state.BUNDLE_PATH, None)
    ss.pop(state.BUNDLE_IDENTITY, None)
    ahead = ss.pop(state.PREDICT_AHEAD, None)
    if ahead is not None:
        ahead.cancel()


#: Set by app.py while it runs the page: the sidebar's slot (an ``st.empty``), filled after the page
#: (:func:`sidebar`), or before a long wait (:func:`sidebar_before_wait`) and again after the page.
SIDEBAR = contextvars.ContextVar("scatd_sidebar", default=None)


def sidebar_before_wait():
    """Draw the sidebar now, before the page waits for the demo's build (it is drawn again after the
    page): the placeholder where the build's line goes, for the wait to redraw; ``None`` when the page
    runs outside app.py (no sidebar)."""
    slot = SIDEBAR.get()
    return None if slot is None else sidebar(slot, waiting=True)


def sidebar(container, *, waiting: bool = False):
    """Current data, model, device and progress along the path (every page, drawn after it ran), in
    ``container`` (an ``st.empty``: drawn again, it replaces what it showed). ``waiting``: drawn before
    the page follows the demo's build (:func:`sidebar_before_wait`): returns the placeholder of the
    build's line, which the wait redraws (a fragment is not rerun while the page runs)."""
    from scatd_core._keys import BIOMARKERS, INPUT_REPORT, UMAP

    ss = st.session_state
    adata = ss.get(state.ADATA)
    predicted = state.has_prediction()
    note = None
    with container.container():
        st.caption("SESSION")
        if adata is not None:  # an embedding file's columns are features, not genes (as the Data card says)
            embedding_file = adata.uns.get(INPUT_REPORT, {}).get("format") == "npy"
            st.markdown(f":material/dataset: **{md(ss.get(state.DATA_NAME))}**  \n"
                        f"{adata.n_obs:,} cells × {adata.n_vars:,} {'embedding features' if embedding_file else 'genes'}")
        else:
            st.markdown(":material/dataset: no data yet")
        bundle = None
        if ss.get(state.BUNDLE_PATH):
            try:
                bundle = get_bundle(ss[state.BUNDLE_PATH])
            except ScatdError:
                bundle = None
        if bundle is not None:
            st.markdown(f":material/model_training: **{md(model_title(bundle))}**")
            if bundle.is_demo:
                st.badge("demo model (simulated data)", color="orange")
        else:
            st.markdown(":material/model_training: no model chosen")
        st.markdown(f":material/memory: {device_text()}")
        if waiting:
            note = st.empty()
            line = demo_build_line(asked=True)
            if line is not None:
                note.caption(f":material/hourglass_top: {line}")
        else:
            demo_build_note()  # on every page, while the demo is being built
        done = [adata is not None, bundle is not None, predicted, predicted and UMAP in adata.obsm,
                predicted and BIOMARKERS in adata.uns,
                # the Report page opened with these results (its downloads do not rerun the page)
                predicted and ss.get(state.REPORT_SEEN) is not None and ss.get(state.REPORT_SEEN) == ss.get(
                    state.PREDICTION)]
        names = ["Data", "Model", "Predict", "Cells", "Biomarkers", "Report"]
        steps = " → ".join(f"**{n} ✓**" if d else n for n, d in zip(names, done))
        st.caption("PROGRESS")
        st.markdown(steps)
        st.caption(f"scATD Studio {__version__}")
        preload_elements()
    return note


def account(container, user=None) -> None:
    """Who is logged in, and the Log out button: drawn before the page runs (below :func:`sidebar`'s
    part), so that it stays usable during a long computation or a wait in the server's queue. Drawn
    after the page, as the rest of the sidebar, it was the previous run's button meanwhile, which
    Streamlit shows faded, as if it could not be used. A logout stops the session's computations
    (:func:`scatd_app.session.stop_on_logout`)."""
    from scatd_app import auth

    if user is not None and auth.mode() != "none":
        with container:
            st.caption(f"Logged in as {md(user.name)}" + (" (admin)" if user.admin else ""))
            st.button("Log out", key="btn_logout", on_click=auth.logout)


#: Streamlit's page elements that the browser loads only when a page first shows one (each a
#: JavaScript module of Streamlit's front end, ``static/js/<Name>.<hash>.js``), in the order the
#: user's path needs them: the Data page's uploader, its QC charts (plotly.js, 4.7 MB), tables,
#: then the Predict, Cells and Report pages' controls.
PRELOADED_ELEMENTS = ("FileUploader", "Radio", "Spinner", "Metric", "Json", "Checkbox", "PlotlyChart",
                      "Selectbox", "DataFrame", "Slider", "NumberInput", "Progress", "ButtonGroup",
                      "DownloadButton", "Multiselect", "TextInput")


@functools.cache
def element_modules() -> tuple[str, ...]:
    """File names of :data:`PRELOADED_ELEMENTS`' modules in the installed Streamlit (an element
    whose module is not found, e.g. renamed by a newer Streamlit, is left out)."""
    import streamlit

    folder = Path(streamlit.__file__).parent / "static" / "static" / "js"
    names = []
    for element in PRELOADED_ELEMENTS:
        found = sorted(folder.glob(f"{element}.*.js"))
        if len(found) == 1 and re.fullmatch(r"[A-Za-z]+\.[\w-]+\.js", found[0].name):
            names.append(found[0].name)
    return tuple(names)


def preload_elements() -> None:
    """Let the browser fetch and start the code of the elements the pages show while the user is
    still on the first page, instead of when a page first shows one: plotly.js alone is 4.7 MB,
    fetched and compiled when the first chart (the Data page's QC) is drawn. The modules are
    imported from the folder of Streamlit's own entry module, so its front end reuses them, one
    after the other in the order the pages need them; nothing is shown. Measured effect in
    ``benches/README.md`` (upload → report in a real browser)."""
    names = element_modules()
    if not names:
        return
    script = (
        "<script>(() => {"
        "const entry = document.querySelector('script[type=module][src*=\"/static/js/index.\"]');"
        "if (!entry || window.__scatdPreloaded) return; window.__scatdPreloaded = true;"
        f"(async () => {{ for (const name of {json.dumps(list(names))}) "
        "{ try { await import(new URL(name, entry.src).href); } catch (e) { /* shown when used */ } } })();"
        "})();</script>")
    st.html(script, unsafe_allow_javascript=True)


#: The library table's short names of the model card's baselines (its AUROC columns' help says them)
BASELINE_SHORT = {"logistic regression": "LR", "gradient boosting": "GB"}


def _card_cell(bundle, evaluation: str) -> str | None:
    """This model's AUROC in one evaluation of a bundle's model card, then each baseline's with its
    short name, e.g. ``0.832 (LR 0.836, GB 0.684)`` (None without one): every number says whose it is
    (``0.832 / 0.836 / 0.684`` had no key, and a card with one baseline put GB's where LR's was read)."""
    card = bundle.manifest.get("card") or {}
    ev = next((e for e in card.get("evaluations", []) if e["name"] == evaluation), None)
    if ev is None or not ev.get("scores"):
        return None

    def auroc(r) -> str:
        return "—" if r.get("auroc") is None else f"{r['auroc']:.3f}"

    def short(name: str) -> str:
        return next((v for k, v in BASELINE_SHORT.items() if str(name).startswith(k)), str(name))

    own, *baselines = ev["scores"][:3]
    named = ", ".join(f"{short(r.get('model'))} {auroc(r)}" for r in baselines)
    return auroc(own) + (f" ({named})" if named else "")


BETA_WORDS = {"shared_with_head": "shared with head", "separate": "separate"}
#: The import form's words for the Swish modes (the first is the default: the original's inference)
BETA_IMPORT_WORDS = {"shared_with_head": "shared with head (as the original's inference; reproduces published "
                                         "predictions)",
                     "separate": "separate (each block's own trained beta; the corrected function)"}


def labels_cell(mapping) -> str | None:
    """The label direction in a few characters, e.g. ``resistant=1`` (the reported class)."""
    if not mapping:
        return None
    return f"resistant={mapping['resistant']}" if "resistant" in mapping else \
        ", ".join(f"{k}={v}" for k, v in mapping.items())


def library_frame(entries):
    """The model library as a table: one row per bundle (broken ones with their problem).

    What tells models apart: display name, source file and the start of its sha256, label
    direction, Swish mode (Dist_VAE), number of genes, AdaIN statistics (VAE_sf/VAE_gf); a model
    that cannot predict as installed says why under ``problem``. Backbones have no threshold.
    Trained models show their model card's AUROCs (this model / logistic regression / gradient
    boosting) on the bulk cross-validation and, when the target had labels, on the target cells.
    """
    import pandas as pd

    rows, shown = [], model_names(entries)
    for e in entries:
        if not e.ok:
            rows.append({"name": None, "drug": None, "backbone": None, "kind": "unusable", "members": None,
                         "demo": False, "genes": None, "AdaIN stats": None, "labels": None, "Swish beta": None,
                         "source": None, "source file": None, "sha256": None, "by": None, "created": None,
                         "bulk CV AUROC": None, "target AUROC": None,
                         "threshold": None, "folder": e.path.name, "problem": e.problem})
            continue
        s = e.bundle.summary()
        prov = e.bundle.manifest.get("provenance", {})
        rows.append({"name": s["name"], "display name": shown[str(e.path)], "drug": s["drug"],
                     "backbone": s["backbone"],
                     "backbone title": e.bundle.backbone_title, "kind": s["kind"],
                     "members": s["members"], "demo": s["demo"], "genes": s["n_genes"],
                     "AdaIN stats": None if s["style"] is None or s["kind"] != "classifier" else
                     ("yes" if s["style"] else "no"),
                     "labels": labels_cell(s["label_mapping"]),
                     "Swish beta": BETA_WORDS.get(s["beta_mode"]) if s["backbone"] == "dist_vae"
                     and s["kind"] == "classifier" else None,
                     "source": s["source"], "source file": s["source_file"],
                     "sha256": (s["source_sha256"] or "")[:12] or None,
                     "by": prov.get("imported_by") or prov.get("trained_by"),
                     "created": (s["created"] or "")[:10],
                     "bulk CV AUROC": _card_cell(e.bundle, "bulk_cv"),
                     "target AUROC": _card_cell(e.bundle, "target"),
                     "threshold": s["threshold"], "folder": e.path.name, "problem": s["problem"]})
    table = pd.DataFrame(rows)
    for column in ("source file", "sha256", "genes", "AdaIN stats", "Swish beta", "bulk CV AUROC", "target AUROC"):
        if column in table and table[column].isna().all():
            table = table.drop(columns=[column])  # e.g. no imported model, or no embedding model: nothing to say
    if "demo" in table and not table["demo"].astype(bool).any():  # no demo model: a column of empty boxes
        table = table.drop(columns=["demo"])  # (a demo model's name says "demo (simulated data)" too)
    if "by" in table and table["by"].isna().all():
        return table.drop(columns=["by"])  # no logins, nothing recorded
    if "by" in table:  # the demo and imported files record nobody: blank, not "None"
        table["by"] = table["by"].fillna("")
    return table


def show_card(card: dict, key: str) -> None:
    """A model card: what the model is and was trained on, its scores next to the baselines'
    (table and figure), the verdicts, and what its default threshold means."""
    from scatd_core import pl
    from scatd_core.card import (INTERVAL, baseline_settings, card_details, description, evaluation_heading,
                                 evaluation_table, few_shot_line, verdicts)

    st.markdown(md(description(card)))
    st.caption(md(card["data"]["summary"]))
    if few_shot_line(card):
        st.caption(md(few_shot_line(card)))
    details = card_details(card)
    if details:
        with st.expander("Data, genes and settings"):
            st.markdown("\n".join(f"- {md(line)}" for line in details))
    # a table per evaluation under a line saying it (one table with them all as columns was cut at 1280 px)
    settings = baseline_settings(card)
    config = {"model": st.column_config.TextColumn("model", help=("Baselines: " + "; ".join(settings))
                                                   if settings else None),
              "AUROC (95% CI)": st.column_config.TextColumn("AUROC (95% CI)", help=f"In brackets: the {INTERVAL}"),
              "AUPRC (95% CI)": st.column_config.TextColumn(
                  "AUPRC (95% CI)", help=f"Positive class: resistant. In brackets: the {INTERVAL}"),
              "this model minus it (AUROC)": st.column_config.TextColumn(
                  "this model minus it (AUROC)", help=f"This model's AUROC minus the baseline's, with its {INTERVAL}: "
                                                      "above 0 where this model is better")}
    for ev in card["evaluations"]:
        st.markdown(md(evaluation_heading(ev)))
        table(evaluation_table(ev), hide_index=True, column_config=config)
        if ev.get("note"):
            st.caption(md(ev["note"]))
    if settings:
        st.caption(md("Baselines: " + "; ".join(settings) + "."))
    chart(pl.card_figure(card), key=key)
    if len(card["evaluations"]) > 1 or settings:  # what the chart's short rows leave to the tables above
        st.caption("The chart: one panel per evaluation (as the tables above), the models by their short names"
                   + ("; the baselines' settings are said above the chart." if settings else "."))
    for ev in card["evaluations"]:
        for text in verdicts(ev):  # with the model's own AUROC interval when it includes 0.5
            if text.startswith("This model beats"):
                st.success(md(text), icon=":material/check_circle:")
            else:  # a baseline not told apart or better, or a model within chance: said plainly
                st.warning(md(text), icon=":material/balance:")
    st.caption(md(card["calibration"]))
    for w in card.get("warnings", []):
        st.warning(md(w))


#: The library table's columns shown first (at 1280 px the rest scroll): what tells models apart
LIBRARY_KEY_COLUMNS = ("name", "drug", "backbone", "threshold", "bulk CV AUROC", "target AUROC", "demo", "problem")
#: The library's kinds of model in words
KIND_WORDS = {"classifier": "drug model", "backbone": "backbone only (no drug)", "unusable": "cannot be used"}


def library_view(frame):
    """The library table as the pages show it (:func:`library_frame` keeps the stored values):
    backbones by their titles and kinds in words (not ``dist_vae``, ``classifier``), nothing shown
    as "None", and the columns that tell models apart first."""
    from scatd_core.bundle import BACKBONE_TITLES, short_backbone_title

    view = frame.copy()
    if "display name" in view:  # the name every picker and message says (model_names), not the stored one
        view["name"] = view.pop("display name").where(lambda n: n.notna(), view["name"])
    if "backbone" in view:  # its short title (Dist_VAE; VAE on genes: trained here): the narrow column cut it
        titles = view.pop("backbone title") if "backbone title" in view else view["backbone"].map(BACKBONE_TITLES.get)
        view["backbone"] = [short_backbone_title(t if isinstance(t, str) else BACKBONE_TITLES.get(b, b))
                            if isinstance(b, str) else "" for b, t in zip(view["backbone"], titles)]
    elif "backbone title" in view:
        view = view.drop(columns=["backbone title"])
    if "kind" in view:
        view["kind"] = view["kind"].map(lambda k: KIND_WORDS.get(k, k))
    for column in view.columns:
        if view[column].dtype == object:
            view[column] = view[column].map(lambda v: "" if v is None or v == "None" else v)
    first = [c for c in LIBRARY_KEY_COLUMNS if c in view]
    return view[first + [c for c in view.columns if c not in first]]


def panel_models_table(models) -> None:
    """The Drug panel's models (:func:`scatd_core.export.panel_models_table`) as the page shows them:
    what each drug's calls rest on first (status, threshold, calibrated, cells, coverage), then
    which model it was; backbones by their titles."""
    import pandas as pd

    from scatd_core.bundle import BACKBONE_TITLES

    first = ["drug", "status", "threshold", "calibrated", "threshold set by", "cells scored", "gene coverage"]
    view = models[[c for c in first if c in models] + [c for c in models.columns if c not in first]].copy()
    if "backbone" in view:
        view["backbone"] = view["backbone"].map(lambda b: BACKBONE_TITLES.get(b, b) if isinstance(b, str) else "")
    for column in ("threshold", "cells scored"):  # a drug not scored has none: an empty cell, not "None"
        if column in view:
            view[column] = pd.to_numeric(view[column], errors="coerce")
    table(view, hide_index=True, column_config={
        "threshold": st.column_config.NumberColumn("threshold", format="%.3g", width="small"),
        "calibrated": st.column_config.CheckboxColumn("calibrated", width="small"),
        "cells scored": st.column_config.NumberColumn("cells scored", format="%d", width="small"),
        "seconds": st.column_config.NumberColumn("seconds", format="%.1f", width="small")})


def name_column_width(names) -> int:
    """Pixels for the library table's name column: wide enough for the longest name (trained models'
    names such as ``GEFITINIB_dist_vae_scad_fewshot_20261202_173355_seed0`` were cut at 1280 px in a
    "medium" column), within 160 to 480 px; the column is pinned, so the other columns scroll past it."""
    longest = max((len(str(n)) for n in names), default=0)
    return int(min(max(7 * longest + 24, 160), 480))  # 7.5 px a character left 80 px blank after a 35-character name


#: The library's AUROC columns' key to the baselines' short names
AUROC_KEY = "; ".join(f"{v}: {k}" for k, v in BASELINE_SHORT.items())


def show_library(entries) -> None:
    from scatd_core.bundle import BACKBONE_HELP

    frame = library_frame(entries)
    if not frame["problem"].notna().any():
        frame = frame.drop(columns="problem")
    view = library_view(frame)
    table(view, hide_index=True, column_config={
        "name": st.column_config.TextColumn("name", width=name_column_width(view.get("name", [])), pinned=True,
                                            help="The model's name in the library (its folder there)"),
        # sized to its short names ('small' cut "VAE on genes" at 1280 px)
        "backbone": st.column_config.TextColumn("backbone", help=BACKBONE_HELP),
        "bulk CV AUROC": st.column_config.TextColumn(
            "bulk CV AUROC", help=f"This model's AUROC in the bulk cross-validation, then the baselines' in brackets "
                                  f"({AUROC_KEY}); the model card has the intervals"),
        "target AUROC": st.column_config.TextColumn(
            "target AUROC", help=f"This model's AUROC on the labelled target cells (when the training data had "
                                 f"labels), then the baselines' in brackets ({AUROC_KEY})"),
        "demo": st.column_config.CheckboxColumn("demo", help="A demo model, trained on simulated data"),
        "threshold": st.column_config.NumberColumn("threshold", format="%.3g"),
        "genes": st.column_config.NumberColumn("genes", format="%d"),
        "sha256": st.column_config.TextColumn("sha256", help="The first 12 characters of the source file's sha256"),
        "labels": st.column_config.TextColumn("labels", help="The class whose probability is P(resistant)"),
        "Swish beta": st.column_config.TextColumn(
            "Swish beta", help="Dist_VAE: 'shared with head' reproduces the original inference of imported models"),
        "AdaIN stats": st.column_config.TextColumn(
            "AdaIN stats", help="VAE_sf/VAE_gf: the bulk embeddings' statistics the model's inference needs"),
    })
