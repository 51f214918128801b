"""Idle sessions on a shared server (AppTest): what counts as idle, what the clean-up removes, what
a page says when a file it needs was removed, and the work that ends with a session."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from _app_helpers import make_dataset, trained_library  # noqa: F401 (fixture)
from test_app_pages import APP, goto, h5ad_bytes, ok, run_prediction, text, upload
from test_app_pages import _no_component_scan, with_library  # noqa: F401 (fixtures)
from test_panel_page import panel_library, with_panel_library  # noqa: F401 (fixtures)
from scatd_app import session, state
from scatd_core.errors import Cancelled


@pytest.fixture
def fresh_store(monkeypatch, tmp_path):
    """A store of its own (no other test's sessions) and a work folder of its own."""
    kept = session.SessionStore()
    monkeypatch.setattr(session, "store", lambda: kept)
    monkeypatch.setenv("SCATD_WORK_DIR", str(tmp_path / "work"))
    return kept


def _app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    return ok(at)


def _folder(at: AppTest):
    from scatd_core.config import work_dir

    return work_dir() / "sessions" / at.session_state[session.SESSION_ID]


def _age(kept: session.SessionStore, at: AppTest, hours: float = 10) -> None:
    """Make ``at``'s session look idle for ``hours``: its reload copy's clock and its folder's time."""
    sid = at.session_state[session.SESSION_ID]
    for record in kept._records.values():
        if record.values.get(session.SESSION_ID) == sid:
            record.touched -= hours * 3600
    past = time.time() - hours * 3600
    os.utime(_folder(at), (past, past))


def _sweep_by_another_user(kept: session.SessionStore) -> AppTest:
    kept._last_sweep = 0.0  # the clean-up is due (it runs at most once a minute)
    return _app()


@pytest.mark.usefixtures("with_library")
def test_a_session_open_in_a_tab_keeps_its_folder_however_long_idle(fresh_store, monkeypatch):
    """QA: an open tab idle longer than session_ttl_minutes (or running a training that long) lost
    its working folder when another user's page run swept, because only the last page run's end
    counted. A session Streamlit still has connected is alive; a closed one still expires."""
    bob = _app()
    upload(bob, "tumour.h5ad", h5ad_bytes(make_dataset(50, seed=4)))
    bob_id = bob.session_state[session.SESSION_ID]
    assert any(_folder(bob).iterdir())
    # each run says which of Streamlit's sessions (a browser tab) shows it: AppTest gives every
    # session the same id, so bob's tab gets a name of its own here
    assert fresh_store._browsers == {"test session id": bob_id}
    fresh_store.attach("bob's tab", bob_id)
    shown = {"bob's tab": True}  # whether bob's tab is open, as Streamlit would answer

    def connected(browsers):
        return {b for b in browsers if shown.get(b)}

    monkeypatch.setattr(session, "_connected", connected, raising=False)
    _age(fresh_store, bob)
    _sweep_by_another_user(fresh_store)
    assert _folder(bob).is_dir() and any(_folder(bob).iterdir())
    assert bob_id in fresh_store.live_ids()  # its reload copy too

    shown["bob's tab"] = False  # the tab was closed: idle from now on, and removed after the TTL
    _sweep_by_another_user(fresh_store)
    assert _folder(bob).is_dir()  # the clock started when it was last seen open
    _age(fresh_store, bob)
    _sweep_by_another_user(fresh_store)
    assert not _folder(bob).exists() and bob_id not in fresh_store.live_ids()


def test_asking_streamlit_which_tabs_are_open(monkeypatch):
    from streamlit.runtime import Runtime

    class Runtime_:
        def is_active_session(self, browser):
            return browser == "open-tab"

    monkeypatch.setattr(Runtime, "_instance", Runtime_())
    kept = session.SessionStore()
    kept.attach("open-tab", "s1")
    kept.attach("closed-tab", "s2")
    assert kept.connected_ids() == {"s1"}
    assert kept._browsers == {"open-tab": "s1"}  # a closed tab is let go (it attaches again if it comes back)

    class Unsure:
        def is_active_session(self, browser):
            return object()  # not an answer (e.g. a test's stand-in for the runtime)

    monkeypatch.setattr(Runtime, "_instance", Unsure())
    assert kept.connected_ids() is None
    monkeypatch.setattr(Runtime, "_instance", object())  # a Streamlit without that call
    assert kept.connected_ids() is None
    monkeypatch.setattr(Runtime, "_instance", None)  # no server in this process
    assert kept.connected_ids() is None


def test_progress_reports_keep_a_busy_session_alive(fresh_store):
    """A training (or prediction, UMAP, attributions) longer than the TTL: its progress reports
    reset the session's clock and its folder's time, even with its tab closed meanwhile."""
    def page():
        import os
        import time

        import streamlit as st

        from scatd_app import session, ui

        st.session_state[session.SESSION_ID] = "busy"
        session.store().put("token", "u", {session.SESSION_ID: "busy"})
        session.store()._records["token"].touched -= 36_000
        past = time.time() - 36_000
        os.utime(session.folder(), (past, past))
        session._LAST_KEPT_ALIVE.pop("busy", None)
        ui.progress_to(st.progress(0.0))(0.5, "Epoch 7 of 150")

    at = AppTest.from_function(page, default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    from scatd_core.config import work_dir

    assert time.monotonic() - fresh_store._records["token"].touched < 60
    assert time.time() - (work_dir() / "sessions" / "busy").stat().st_mtime < 60


def _backed_upload(at: AppTest, monkeypatch, adata) -> None:
    """Upload ``adata`` so that it is read from disk (backed), from the session's folder."""
    from scatd_core import _memory

    x_bytes = sum(a.nbytes for a in (adata.X.data, adata.X.indices, adata.X.indptr))
    monkeypatch.setenv("SCATD_SERVER_MEMORY_MB", "1000")
    monkeypatch.setattr(_memory, "rss_bytes", lambda: (1000 << 20) - x_bytes // 2)  # room for obs, not X
    upload(at, "tumour.h5ad", h5ad_bytes(adata))
    assert at.session_state[state.ADATA].isbacked


@pytest.mark.usefixtures("with_library")
def test_a_download_whose_file_was_removed_says_so(fresh_store, monkeypatch):
    """QA: after the session's folder was removed, the annotated .h5ad download of a dataset read
    from disk did nothing in the browser (FileNotFoundError in the deferred download, only in the
    server's log). The page now says what happened and what to do."""
    import shutil

    at = _app()
    _backed_upload(at, monkeypatch, make_dataset(60, seed=3))
    run_prediction(at)
    goto(at, "6_Report")
    assert "annotated .h5ad" in [b.proto.label for b in at.get("download_button")]
    shutil.rmtree(_folder(at))  # removed while the page kept the data (the file stays open)
    goto(at, "6_Report")
    assert "annotated .h5ad" not in [b.proto.label for b in at.get("download_button")]
    assert at.button(key="btn_dl_h5ad_gone").disabled
    assert "working copy on the server was removed after the session was idle" in text(at.warning)
    assert "Upload your data again on the Data page" in text(at.warning)
    assert str(_folder(at).parent) not in text(at.warning)
    assert {"predictions.csv", "report.html"} <= {b.proto.label for b in at.get("download_button")}  # from memory: kept


@pytest.mark.usefixtures("with_library")
def test_data_too_large_to_download_with_their_matrix_get_the_annotations(fresh_store, monkeypatch):
    """The annotated h5ad download is made in the server's memory at every click: above
    export.MAX_DOWNLOAD_BYTES (a constant that nothing used) it carries the annotations only, and
    the page says so and where the whole file comes from."""
    import io

    import anndata as ad
    import h5py

    from scatd_core import export

    at = _app()
    _backed_upload(at, monkeypatch, make_dataset(60, seed=3))
    run_prediction(at)
    goto(at, "6_Report")
    assert "annotations only" not in text(at.caption)
    monkeypatch.setattr(export, "MAX_DOWNLOAD_BYTES", 1000)
    goto(at, "6_Report")
    assert "carries the annotations only (X left empty); `scatd report` on the server" in text(at.caption)
    adata = at.session_state[state.ADATA]
    assert not export.h5ad_download_has_x(adata)
    with h5py.File(io.BytesIO(export.h5ad_bytes(adata, with_x=False)), "r") as f:  # what the button then brings
        assert ad.io.read_elem(f["obs"]).shape[0] == 60 and "X" not in f


def test_the_annotated_h5ad_of_a_removed_file_is_a_clear_error(tmp_path):
    import anndata as ad

    from scatd_core import export
    from scatd_core.errors import InputError

    path = tmp_path / "cells.h5ad"
    make_dataset(30, seed=1).write_h5ad(path)
    adata = ad.read_h5ad(path, backed="r")
    assert not export.source_missing(adata)
    path.unlink()
    assert export.source_missing(adata) and not export.source_missing(make_dataset(10, seed=1))
    with pytest.raises(InputError, match="cells.h5ad these data are read from is gone"):
        export.h5ad_bytes(adata)
    adata.file.close()


def _blocking_score(monkeypatch):
    """``predict.score`` stand-in that runs until it is told to stop (or the test ends)."""
    from scatd_core import predict as predict_module
    from scatd_core.errors import Cancelled

    started, release = threading.Event(), threading.Event()

    def score(*args, should_stop=None, **kwargs):
        started.set()
        while not release.is_set():
            if should_stop is not None and should_stop():
                raise Cancelled("stopped")
            time.sleep(0.02)
        raise Cancelled("the test ended")

    monkeypatch.setattr(predict_module, "score", score)
    return started, release


@pytest.mark.usefixtures("with_library")
def test_logging_out_stops_the_prediction_started_ahead(tmp_path, monkeypatch):
    """The prediction (and its UMAP) computed ahead for a user ran on after they logged out, on
    their data, holding one of the server's job slots."""
    from scatd_core import users

    monkeypatch.setenv("SCATD_AUTH", "password")
    monkeypatch.setenv("SCATD_USERS_FILE", str(tmp_path / "users.toml"))
    monkeypatch.setenv("SCATD_WORK_DIR", str(tmp_path / "work"))
    users.add_user("alice", "a long enough password", admin=False)
    started, release = _blocking_score(monkeypatch)
    try:
        at = _app()
        at.text_input(key="login_name").set_value("alice")
        at.text_input(key="login_password").set_value("a long enough password")
        at.get("form_submit_button")[0].click()
        at.run()
        upload(at, "tumour.h5ad", h5ad_bytes(make_dataset(40, seed=4)))
        ahead = at.session_state[state.PREDICT_AHEAD]
        assert started.wait(30) and not ahead.future.done()
        at.button(key="btn_logout").click()
        at.run()
        assert ahead.stop.is_set()
        assert ahead.future.exception(timeout=30) is not None  # it stopped (Cancelled), not left running
    finally:
        release.set()


@pytest.mark.usefixtures("with_library")
def test_an_expired_session_stops_its_work_started_ahead(fresh_store, monkeypatch):
    """A session whose tab was closed and that stayed idle past the TTL: its work started in the
    background is stopped when the clean-up forgets it."""
    monkeypatch.setattr(session, "_connected", lambda browsers: set(), raising=False)  # no tab open
    started, release = _blocking_score(monkeypatch)
    try:
        bob = _app()
        upload(bob, "tumour.h5ad", h5ad_bytes(make_dataset(40, seed=4)))
        ahead = bob.session_state[state.PREDICT_AHEAD]
        assert started.wait(30)
        _sweep_by_another_user(fresh_store)
        assert not ahead.stop.is_set()  # idle for less than the TTL: kept
        _age(fresh_store, bob)
        _sweep_by_another_user(fresh_store)
        assert ahead.stop.is_set() and ahead.future.exception(timeout=30) is not None
    finally:
        release.set()


def test_kept_work_is_held_weakly():
    import gc

    class Work:
        cancelled = 0

        def cancel(self):
            Work.cancelled += 1

    kept = session.SessionStore()
    work, other = Work(), Work()
    kept.own("s1", work)
    kept.own("s1", other)
    del other
    gc.collect()
    assert kept.cancel_work("s1") == 1 and Work.cancelled == 1  # the one still held anywhere
    assert kept.cancel_work("s1") == 0
    np.testing.assert_equal(Work.cancelled, 1)


@pytest.mark.usefixtures("with_panel_library")
def test_the_panel_h5ad_whose_file_was_removed_says_so(monkeypatch):
    """The Drug panel page's annotated .h5ad, as the Report page's."""
    import shutil
    from pathlib import Path

    from test_panel_page import DRUGS

    library = Path(os.environ["SCATD_MODEL_LIBRARY"])
    at = _app()
    _backed_upload(at, monkeypatch, make_dataset(80, seed=4))
    goto(at, "9_Panel")
    at.multiselect(key="panel_models").set_value([str(library / n) for n in DRUGS[:2]]).run()
    at.button(key="btn_panel_run").click().run()
    ok(at)
    assert "annotated .h5ad" in [b.proto.label for b in at.get("download_button")]
    shutil.rmtree(_folder(at))
    goto(at, "9_Panel")
    assert "annotated .h5ad" not in [b.proto.label for b in at.get("download_button")]
    assert at.button(key="btn_dl_panel_h5ad_gone").disabled
    assert "Upload your data again on the Data page" in text(at.warning)
    assert len(at.get("download_button")) == 4  # panel.csv, the summary, the per-drug metrics, the report: from memory


def test_the_demo_build_goes_on_when_its_page_is_left(monkeypatch):
    """QA: leaving the Overview page during the demo's first build (minutes on a busy server) stopped
    the build without a word, since it ran in the page's run; it now runs in a server thread, and
    the next click (this user's or another's) follows the same build instead of starting afresh."""
    from scatd_app import ui

    release, calls, seen = threading.Event(), [], []

    def work(report):
        calls.append(1)
        report(0.5, "Training the demo model: epoch 3")
        assert release.wait(20)
        return "built"

    class Left(Exception):
        """What Streamlit raises in a page's run that was stopped (the user went to another page)."""

    class LeftPage:
        def progress(self, fraction, text):
            raise Left

    class Watching:
        def progress(self, fraction, text):
            seen.append((fraction, text))

    monkeypatch.setattr(ui, "_BUILDS", {})
    assert not ui.building("test")
    with pytest.raises(Left):
        ui.shared_build("test", work, LeftPage(), "a test build", poll_seconds=0.05)
    assert ui.building("test")  # the Model page says the demo is being built meanwhile
    timer = threading.Timer(0.5, release.set)
    timer.start()
    try:
        assert ui.shared_build("test", work, Watching(), "a test build", poll_seconds=0.05) == "built"
    finally:
        timer.cancel()
    assert calls == [1] and not ui.building("test")  # one build, followed from two page runs
    assert any(f == 0.5 and "epoch 3" in t and "goes on if you leave this page" in t for f, t in seen), seen
    release.clear()  # a finished build is run again on the next call (it returns at once when its files are there)
    release.set()
    assert ui.shared_build("test", work, Watching(), "a test build", poll_seconds=0.05) == "built" and calls == [1, 1]


def test_the_demo_builds_elapsed_time_keeps_ticking_while_a_long_step_runs(monkeypatch):
    """QA: under load the demo build's line read "... 6.1 min elapsed · about 1.8 min left" unchanged for
    4 minutes (a long step reports seldom); the wait now moves the elapsed time on between reports and
    estimates the time left again from it."""
    from scatd_app import ui

    seen = []

    def work(report):
        report(0.5, "Training the demo model: epoch 3 · 10 s elapsed · about 10 s left")
        time.sleep(1.4)  # a step that reports nothing for a while
        return "built"

    class Watching:
        def progress(self, fraction, text):
            seen.append(text)

    monkeypatch.setattr(ui, "_BUILDS", {})
    assert ui.shared_build("test", work, Watching(), "a test build", poll_seconds=0.05) == "built"
    assert any("epoch 3 · 11 s elapsed · about 9 s left" in t for t in seen), seen  # the time left counts down
    assert not any("10 s elapsed" in t for t in seen[-3:]), seen  # the last lines are not the report's
    # the elapsed time keeps its unit's precision; a message without one is left alone
    from scatd_core._progress import ticking

    assert ticking("Step · 6.1 min elapsed · about 1.8 min left", 0.77, 60) == \
        "Step · 7.1 min elapsed · about 48 s left"  # counted down, not estimated again (it grew: 2.2 min)
    # once the count is spent (the step runs longer than estimated), estimated again from the elapsed time
    assert ticking("Step · 6.1 min elapsed · about 1.8 min left", 0.77, 240) == \
        "Step · 10.1 min elapsed · about 3.0 min left"
    assert ticking("Step · 5 s elapsed", 0.0, 3) == "Step · 8 s elapsed"
    assert ticking("Waiting for the server", 0.0, 30) == "Waiting for the server"


def test_a_stopping_server_stops_the_work_started_ahead_for_sessions(monkeypatch, capsys):
    """A server stopped (SIGTERM from systemd, Ctrl-C) while a UMAP ran ahead for a user waited for it
    to end (Python joins the worker threads before it exits): 34-46 s on the 2-core machine, a
    30,000-cell UMAP or prediction longer. `python -m scatd_app` now stops every session's
    background work when Streamlit's server returns, so each stops at its next batch."""
    import concurrent.futures

    from scatd_app import ui

    pending = ui.Pending("token")
    started = threading.Event()

    def work():
        started.set()
        while True:  # a layout reporting its epochs: stops only when told
            pending.report(0.5, "Layout")
            time.sleep(0.01)

    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    pending.future = executor.submit(work)
    kept = session.SessionStore()
    kept.own("s1", pending)
    started.wait(10)

    _serve_until_stopped(monkeypatch)
    assert pending.stop.is_set()
    assert isinstance(pending.future.exception(timeout=10), Cancelled)
    executor.shutdown()
    assert "stopped 1 computation started ahead for users' sessions" in capsys.readouterr().err
    assert kept.cancel_work("s1") == 0  # nothing left to stop


def test_a_stopping_server_stops_the_demos_build(monkeypatch, capsys):
    """QA: a SIGTERM during the demo's first build (a server-wide build, not a session's work) left the
    server running minutes after 'Stopping...' (Python joined the build's thread). `python -m
    scatd_app` now stops the running builds too, at their next progress report."""
    import concurrent.futures

    from scatd_app import ui

    build = ui._SharedBuild()
    started = threading.Event()

    def work(report):
        started.set()
        while True:  # a training reporting its epochs
            report(0.1, "Learning from the bulk cell lines")
            time.sleep(0.01)

    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    build.future = executor.submit(work, build.report)
    monkeypatch.setitem(ui._BUILDS, "demo", build)
    started.wait(10)
    assert ui.build_status("demo") is not None

    _serve_until_stopped(monkeypatch)
    assert isinstance(build.future.exception(timeout=10), Cancelled)
    executor.shutdown()
    assert "stopped the build of the demo (started again on the next click)" in capsys.readouterr().err
    assert ui.build_status("demo") is None and ui.stop_shared_builds() == []


def _serve_until_stopped(monkeypatch) -> None:
    """`python -m scatd_app` run to its end, its server (streamlit's cli.main) stopping at once as a
    SIGTERM ends it: click's standalone mode ends it with a SystemExit."""
    import streamlit.web.cli

    from scatd_app import preflight, ui, uploads
    from scatd_app.__main__ import main as serve

    def streamlit_main(*args, **kwargs):
        raise SystemExit(0)

    monkeypatch.setattr(preflight, "_REPORTED", set())
    monkeypatch.setattr(streamlit.web.cli, "main", streamlit_main)
    monkeypatch.setattr(ui, "start_up", lambda **k: None)
    monkeypatch.setattr(uploads, "install", lambda: True)
    with pytest.raises(SystemExit):
        serve([])
