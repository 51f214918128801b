"""The Biomarkers page (Streamlit AppTest through app.py): empty state, computing, tables, plots."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from streamlit.testing.v1 import AppTest

from _app_helpers import assert_charts_described
from scatd_app import state as S
from scatd_core.predict import predict

APP = str(Path(__file__).resolve().parents[1] / "app.py")
PAGE = "app_pages/5_Biomarkers.py"
TIMEOUT = 120


@pytest.fixture(autouse=True)
def _fast(monkeypatch):
    # AppTest scans installed packages for custom components (the app uses none); tiny models run
    # many times faster on one thread than on two contending ones.
    monkeypatch.setattr("streamlit.components.v2.manifest_scanner.scan_component_manifests", lambda: [])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def predicted(small_bundles):
    bundle, _sd, enc, _z, genes = small_bundles["dist_vae"]
    x = np.abs(np.random.default_rng(0).normal(size=(40, enc[0]))).astype(np.float32)
    adata = ad.AnnData(x, obs=pd.DataFrame(index=[f"c{i}" for i in range(40)]), var=pd.DataFrame(index=genes))
    predict(adata, bundle)
    predict(adata, bundle, threshold=float(np.median(adata.obs["scatd_prob_resistant"])))
    return adata, bundle


def _open(adata=None, bundle=None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    if adata is not None:
        at.session_state[S.ADATA] = adata
        at.session_state[S.PREDICTION] = "token-1"
        at.session_state[S.DATA_TOKEN] = "data-1"
        at.session_state[S.BUNDLE_PATH] = str(bundle.path)
    at.switch_page(PAGE)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _button(at, label):
    return next(b for b in at.button if b.label == label)


def test_empty_state_asks_for_a_prediction():
    at = _open()
    assert any("Run a prediction first" in i.value for i in at.info)


def test_compute_shows_ranking_plots_and_downloads(predicted, monkeypatch):
    from streamlit.elements.widgets.button import ButtonMixin

    from scatd_core import export

    adata, bundle = predicted
    saved, download = [], ButtonMixin.download_button

    def recorded(self, label, data, file_name=None, *args, **kwargs):
        saved.append((label, file_name))
        return download(self, label, data, file_name, *args, **kwargs)

    monkeypatch.setattr(ButtonMixin, "download_button", recorded)  # the file names the page gives
    at = _open(adata, bundle)
    assert any("Compute gene ranking" in i.value for i in at.info)
    at.number_input(key="bio_steps").set_value(8)  # keep the test fast
    _button(at, "Compute gene ranking").click().run()
    assert not at.exception, [e.value for e in at.exception]
    from scatd_core.explain import from_adata

    expl = from_adata(adata)  # the result lives in the session's AnnData
    assert expl.ranking.shape[0] == 60 and expl.info["n_steps"] == 8
    table = at.dataframe[0].value
    assert table.shape[0] == 50 and list(table["rank"]) == list(range(1, 51))
    assert any("Integrated gradients" in c.value for c in at.caption)
    assert len(at.get("plotly_chart")) >= 3  # bar chart, dependence plot, map (+ DE comparison)
    top = list(expl.ranking["feature"][:3])
    assert all(g in assert_charts_described(at)[0] for g in top)  # the bar chart's text names the top genes
    assert len(at.get("download_button")) == 3  # the ranking, its metrics file, the per-cell values
    assert {"Cells explained", "Completeness error"} <= {m.label for m in at.metric}
    rho = next((m.value for m in at.metric if m.label == "Spearman |attr| vs |DE|"), None)
    assert rho is not None and __import__("re").fullmatch(r"-?\d\.\d{3}", rho), rho  # 3 decimals, as the others
    # QA: the one metric without help; a low value beside a large top-20 overlap looked contradictory
    spearman = next(m for m in at.metric if m.label == "Spearman |attr| vs |DE|").proto.help
    assert f"over all {expl.info['agreement']['n_features_compared']:,} genes in the data" in spearman, spearman
    assert "noise" in spearman and "A low value next to a large top-20 overlap is therefore expected" in spearman
    # search filters the table; the map falls back to PCA of the latent space, labelled so
    at.text_input(key="bio_search").set_value("GENE1").run()
    assert all("GENE1" in f for f in at.dataframe[0].value["feature"])
    assert any("PCA of the scATD latent space" in c.value for c in at.caption)
    # another threshold changes the predicted groups: the page says the ranking is for earlier settings
    from scatd_core.predict import set_threshold

    set_threshold(adata, 0.01, "user")
    at.run()
    stale = [w.value for w in at.warning if "computed at threshold" in w.value]
    assert stale and "now use 0.010" in stale[0], [w.value for w in at.warning]
    # QA: biomarkers_metrics.csv was named at the new threshold (thr0.01) beside a ranking named at its own, and
    # said nothing of it: it is named as the ranking, and its biomarkers rows give the ranking's threshold and
    # groups and say it is out of date (the Report page's metrics.csv has the same rows)
    names = {label: name for label, name in saved}
    ranked = names["biomarkers.csv"].removesuffix("_biomarkers.csv")
    assert f"_thr{float(expl.info['threshold']):.4g}" in ranked and "thr0.01" not in ranked, names
    assert names["biomarkers_metrics.csv"] == f"{ranked}_biomarkers_metrics.csv", names
    rows = export.metrics_table(adata).set_index(["section", "metric"])["value"]
    assert rows[("summary", "threshold")] == 0.01 and rows[("biomarkers", "threshold")] == expl.info["threshold"]
    assert rows[("biomarkers", "out_of_date")] is True and rows[("biomarkers", "n_explained_resistant")] == \
        expl.info["cells"]["n_resistant"]
    # and the Report page says so, as does the HTML report it offers
    at.switch_page("app_pages/6_Report.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("computed at threshold" in w.value for w in at.warning)
    assert any("out of date" in c.value for c in at.caption)
    assert "Out of date." in export.html_report(adata)
    # at the threshold it was computed at, the ranking is current again
    set_threshold(adata, expl.info["threshold"], "user")
    at.run()
    assert not any("computed at threshold" in w.value for w in at.warning)
    assert "Out of date." not in export.html_report(adata)


def test_the_page_says_the_time_and_memory_to_expect_and_waits_when_memory_is_short(predicted, monkeypatch):
    """Before the click: the expected time and memory (``explain.estimate``). With less free on
    the server than the explanation would hold (``server.memory_mb`` less what the process
    holds), nothing runs and the page says how many cells fit."""
    from scatd_core import _memory
    from scatd_core.explain import estimate, from_adata

    adata, bundle = predicted
    cost = estimate(bundle, 40, n_steps=50, keep_top=100, density=1.0)
    assert cost["bytes"] > 40 * cost["bytes_per_cell"] > 0 and cost["seconds"] > 0
    monkeypatch.setenv("SCATD_SERVER_MEMORY_MB", "1000")
    monkeypatch.setattr(_memory, "rss_bytes", lambda: (1000 << 20) - cost["bytes"] + 10 * cost["bytes_per_cell"])
    monkeypatch.setattr(_memory, "idle_footprint", lambda: 600 << 20)  # the server's own, measured at start-up
    at = _open(adata, bundle)
    assert any(c.value.startswith("Expected: about ") and "of memory while it runs" in c.value for c in at.caption)
    _button(at, "Compute gene ranking").click().run()
    assert not at.exception, [e.value for e in at.exception]
    message = " ".join(e.value for e in at.error)
    assert "Explaining 40 cells needs up to" in message and "Explain at most 30 cells" in message
    # QA: it blamed "other sessions" for memory the idle server itself holds: the numbers say which
    assert "server.memory_mb is 1,000 MB; the server itself holds 600 MB of it when idle" in message.replace("\\", "")
    assert "other sessions" not in message
    assert from_adata(adata) is None  # nothing ran
    at.number_input(key="bio_cells").set_value(30)
    at.number_input(key="bio_steps").set_value(8)
    _button(at, "Compute gene ranking").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert from_adata(adata).info["cells"]["n_explained"] == 30


def test_a_stopped_ranking_keeps_the_earlier_one_and_says_so(predicted, monkeypatch):
    """Cancel interrupts the script run with Streamlit's StopException at the next progress report:
    the Cancel button is there while it runs, gone once a run finishes, the earlier ranking stays
    and the next run of the page says the last one was stopped."""
    from streamlit.runtime.scriptrunner_utils.exceptions import StopException

    from scatd_core import explain as ex

    adata, bundle = predicted
    at = _open(adata, bundle)
    at.number_input(key="bio_steps").set_value(8)
    _button(at, "Compute gene ranking").click().run()
    first = ex.from_adata(adata).ranking.copy()
    assert "btn_cancel_explain" not in [b.key for b in at.button]  # the finished run's bar and Cancel are gone

    def stopped(*args, progress=None, **kwargs):
        progress(0.25, "integrated gradients")
        raise StopException()  # what Streamlit raises in the script thread when the user clicks Cancel

    monkeypatch.setattr(ex, "explain", stopped)
    at.number_input(key="bio_steps").set_value(12)
    _button(at, "Compute gene ranking").click().run()
    assert "btn_cancel_explain" in [b.key for b in at.button]  # on screen while it ran
    at.run()  # the rerun the click on Cancel asks for
    assert not at.exception, [e.value for e in at.exception]
    assert any("stopped before it finished" in i.value for i in at.info)
    pd.testing.assert_frame_equal(ex.from_adata(adata).ranking, first)
    assert any("earlier settings" in i.value for i in at.info)
    at.run()
    assert not any("stopped before it finished" in i.value for i in at.info)  # said once


def test_waiting_in_the_queue_shows_one_cancel_button(predicted, monkeypatch):
    """While the run waits for a free slot of the server's queue, the page shows its place in the
    queue and one Cancel (the run's own; the queue's is not drawn again inside it)."""
    import contextlib

    from streamlit.runtime.scriptrunner_utils.exceptions import StopException

    from scatd_app import jobs

    class Busy:
        @contextlib.contextmanager
        def slot(self, waiting=None):
            waiting(1, 2)  # first in the queue behind two running computations
            raise StopException()  # the user left while waiting
            yield

    adata, bundle = predicted
    at = _open(adata, bundle)
    monkeypatch.setattr(jobs, "queue", lambda: Busy())
    at.number_input(key="bio_steps").set_value(8)
    _button(at, "Compute gene ranking").click().run()
    assert any("You are number 1 in the queue" in i.value for i in at.info)
    assert [b.label for b in at.button].count("Cancel") == 1


def test_the_progress_says_the_time_left_once(predicted, monkeypatch):
    """The explanation's messages carry the time left; the page adds no second estimate."""
    from streamlit.delta_generator import DeltaGenerator

    texts = []
    real = DeltaGenerator.progress
    monkeypatch.setattr(DeltaGenerator, "progress", lambda self, value, text=None: texts.append(text) or real(
        self, value, text=text))
    adata, bundle = predicted
    at = _open(adata, bundle)
    at.number_input(key="bio_steps").set_value(8)
    _button(at, "Compute gene ranking").click().run()
    assert not at.exception, [e.value for e in at.exception]
    cells = [t for t in texts if t and " of 40 cells" in t]
    assert cells and all(t.count("elapsed") == 1 and t.count(" left") <= 1 for t in cells), cells


def test_a_reload_during_a_ranking_resumes_with_its_settings_and_says_it_stopped(predicted, monkeypatch):
    """A reload stops the run (Streamlit stops a disconnected session's script) and opens a new
    session that takes the kept values at once: they are kept as the run starts, with its settings
    and its running flag, so the reloaded page says the ranking stopped and shows its settings."""
    from streamlit.runtime.scriptrunner_utils.exceptions import StopException

    from scatd_app import session
    from scatd_core import explain as ex

    adata, bundle = predicted
    at = _open(adata, bundle)
    token, owner = at.session_state[session.TOKEN], at.session_state[session.OWNER]
    seen = {}

    def reloaded_meanwhile(*args, progress=None, **kwargs):
        seen.update(session.store().take(token, owner))  # what a reload now would resume with
        raise StopException()

    monkeypatch.setattr(ex, "explain", reloaded_meanwhile)
    at.number_input(key="bio_steps").set_value(12)
    _button(at, "Compute gene ranking").click().run()
    assert seen.get(S.EXPLAIN_RUNNING) is True and seen.get("bio_steps") == 12, {
        k: v for k, v in seen.items() if k in (S.EXPLAIN_RUNNING, "bio_steps")}
    monkeypatch.undo()
    session.store().put(token, owner, seen)  # the reload takes them before the stopped run ends
    reloaded = AppTest.from_file(APP, default_timeout=TIMEOUT)
    reloaded.query_params["s"] = token
    reloaded.run()
    reloaded.switch_page(PAGE)
    reloaded.run()
    assert not reloaded.exception, [e.value for e in reloaded.exception]
    assert any("stopped before it finished" in i.value for i in reloaded.info)
    assert reloaded.number_input(key="bio_steps").value == 12


def _predicted_cells(bundle, genes, n, seed=0, n_resistant=None):
    x = np.abs(np.random.default_rng(seed).normal(size=(n, len(genes)))).astype(np.float32)
    adata = ad.AnnData(x, obs=pd.DataFrame(index=[f"c{i}" for i in range(n)]), var=pd.DataFrame(index=genes))
    predict(adata, bundle)
    prob = np.sort(adata.obs["scatd_prob_resistant"].to_numpy())
    predict(adata, bundle, threshold=float(prob[-n_resistant - 1] if n_resistant else np.median(prob)))
    return adata


def test_cells_to_explain_keeps_the_users_choice_not_the_cap_of_smaller_data(small_bundles):
    bundle, _sd, _enc, _z, genes = small_bundles["dist_vae"]
    at = _open(_predicted_cells(bundle, genes, 30), bundle)
    assert at.number_input(key="bio_cells").value == 30  # capped to these data
    at.session_state[S.ADATA] = bigger = _predicted_cells(bundle, genes, 80, seed=1)  # new data, same session
    at.session_state[S.PREDICTION] = "token-2"
    at.run()
    assert at.number_input(key="bio_cells").value == 80  # the default again, not the cap of the 30 cells
    at.number_input(key="bio_cells").set_value(25)
    at.number_input(key="bio_steps").set_value(4)
    _button(at, "Compute gene ranking").click().run()
    assert not at.exception, [e.value for e in at.exception]
    from scatd_core.explain import from_adata

    assert from_adata(bigger).info["cells"]["n_explained"] == 25
    at.session_state[S.ADATA] = _predicted_cells(bundle, genes, 20, seed=2)
    at.session_state[S.PREDICTION] = "token-3"
    at.run()
    assert at.number_input(key="bio_cells").value == 20
    at.session_state[S.ADATA] = _predicted_cells(bundle, genes, 90, seed=3)
    at.session_state[S.PREDICTION] = "token-4"
    at.run()
    assert at.number_input(key="bio_cells").value == 25  # what the user chose


def test_the_downloads_say_how_many_cells_the_ranking_explained(predicted):
    """QA: biomarkers.csv has the standard ranking columns only, so a ranking of a subsample (the
    page explains at most 2,000 cells by default) lost that when downloaded. Beside the download the
    page says how many of the scored cells were explained, and offers biomarkers_metrics.csv (as
    ``scatd explain --output`` writes it) whose 'biomarkers' rows record it; the Report page too."""
    from scatd_core import export
    from scatd_core.explain import from_adata

    adata, bundle = predicted
    at = _open(adata, bundle)
    at.number_input(key="bio_cells").set_value(12)
    at.number_input(key="bio_steps").set_value(4)
    _button(at, "Compute gene ranking").click().run()
    assert not at.exception, [e.value for e in at.exception]
    cells = from_adata(adata).info["cells"]
    assert cells["subsampled"] and cells["n_scored"] == 40
    said = [c.value for c in at.caption if c.value.startswith("Ranked from")]
    assert said and f"{cells['n_explained']:,} of the 40 scored cells: a subsample" in said[0], said
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels[:2] == ["biomarkers.csv", "biomarkers_metrics.csv"], labels
    rows = export.metrics_table(adata).set_index(["section", "metric"])["value"]
    assert rows[("biomarkers", "n_cells_explained")] == cells["n_explained"] and rows[("biomarkers", "subsampled")]
    at.switch_page("app_pages/6_Report.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(f"from {cells['n_explained']:,} of 40 scored cells (a subsample)" in c.value for c in at.caption)


def test_the_page_says_why_there_is_no_de_test(small_bundles):
    bundle, _sd, _enc, _z, genes = small_bundles["dist_vae"]
    at = _open(_predicted_cells(bundle, genes, 30, n_resistant=1), bundle)
    at.number_input(key="bio_steps").set_value(4)
    _button(at, "Compute gene ranking").click().run()
    assert not at.exception, [e.value for e in at.exception]
    said = [i.value for i in at.info if "No differential-expression test" in i.value]
    assert said and "1 resistant and 29 sensitive" in said[0]


def test_compute_umap_draws_the_map_on_the_umap_at_once(predicted):
    adata, bundle = predicted
    at = _open(adata, bundle)
    at.number_input(key="bio_steps").set_value(4)
    _button(at, "Compute gene ranking").click().run()
    assert any(c.value.startswith("Map: PCA") for c in at.caption)
    at.button(key="btn_bio_umap").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not any(c.value.startswith("Map:") for c in at.caption)
    assert "btn_bio_umap" not in [b.key for b in at.button]


def _invalidate_page():
    import streamlit as st

    from scatd_app import state

    level = st.session_state.get("level")
    if level:
        state.invalidate(level)
    st.write(sorted(k for k in st.session_state if str(k).startswith(("running_", "predict_running"))))


@pytest.mark.parametrize("level", ["data", "prediction"])
def test_new_data_or_prediction_forget_that_an_earlier_run_was_stopped(level):
    at = AppTest.from_function(_invalidate_page)
    flags = (S.PREDICT_RUNNING, S.EXPLAIN_RUNNING, S.PANEL_RUNNING, S.EMBED_RUNNING, S.UMAP_RUNNING,
             S.PANEL_UMAP_RUNNING)
    for flag in flags:
        at.session_state[flag] = True
    at.session_state["level"] = level
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    left = {f for f in flags if f in at.session_state}
    kept = {S.PREDICT_RUNNING, S.EMBED_RUNNING, S.PANEL_RUNNING, S.PANEL_UMAP_RUNNING}  # about the data
    assert left == (set() if level == "data" else kept)


def test_integration_steps_go_down_to_two_as_on_the_command_line(predicted):
    """The page takes 2 integration steps or more, as `scatd explain --steps` does (was 4 or more)."""
    adata, bundle = predicted
    at = _open(adata, bundle)
    assert at.number_input(key="bio_steps").min == 2
    at.number_input(key="bio_steps").set_value(2)
    _button(at, "Compute gene ranking").click().run()
    assert not at.exception, [e.value for e in at.exception]
    from scatd_core.explain import from_adata

    assert from_adata(adata).info["n_steps"] == 2


def test_identical_cells_show_nothing_to_attribute_not_a_ranking(small_bundles):
    """QA: cells that all equal the baseline listed genes alphabetically with attribution 0 as a
    ranking and advised raising n_steps. The page now says there is nothing to attribute, and shows
    no ranking, no completeness figure and no advice on the steps."""
    bundle, _sd, enc, _z, genes = small_bundles["dist_vae"]
    row = np.abs(np.random.default_rng(4).normal(size=enc[0])).astype(np.float32)
    adata = ad.AnnData(np.tile(row, (12, 1)), obs=pd.DataFrame(index=[f"c{i}" for i in range(12)]),
                       var=pd.DataFrame(index=genes))
    predict(adata, bundle)
    at = _open(adata, bundle)
    at.number_input(key="bio_steps").set_value(8)
    _button(at, "Compute gene ranking").click().run()
    assert not at.exception, [e.value for e in at.exception]
    warnings = " ".join(w.value for w in at.warning)
    assert "Nothing to attribute" in warnings and "equals the baseline" in warnings and "n_steps" not in warnings
    assert not at.dataframe and not at.get("plotly_chart")
    assert all(m.label != "Completeness error" for m in at.metric)



def test_cancel_during_the_de_test_keeps_the_earlier_ranking(predicted, monkeypatch):
    """Cancel pressed while the DE test runs (the bar at 'differential expression'): Streamlit
    raises StopException at the run's next progress report, which comes before the result is
    stored, so the cancelled run stores nothing and the ranking shown before stays (8 steps, not 12)."""
    from streamlit.runtime.scriptrunner_utils.exceptions import StopException

    from scatd_core import explain as ex

    adata, bundle = predicted
    at = _open(adata, bundle)
    at.number_input(key="bio_steps").set_value(8)
    _button(at, "Compute gene ranking").click().run()
    first = ex.from_adata(adata).ranking.copy()
    real = ex.explain

    def cancelled_at_de(*args, progress=None, **kwargs):
        stage = []

        def report(fraction, message):
            if stage:
                raise StopException()  # the click on Cancel, seen at the first report after it
            progress(fraction, message)
            if message.startswith("differential expression"):
                stage.append(fraction)

        return real(*args, progress=report, **kwargs)

    monkeypatch.setattr(ex, "explain", cancelled_at_de)
    at.number_input(key="bio_steps").set_value(12)
    _button(at, "Compute gene ranking").click().run()
    at.run()  # the rerun the click on Cancel asks for
    assert not at.exception, [e.value for e in at.exception]
    assert any("stopped before it finished" in i.value for i in at.info)
    assert ex.from_adata(adata).info["n_steps"] == 8
    pd.testing.assert_frame_equal(ex.from_adata(adata).ranking, first)


@pytest.mark.parametrize("when", ["at the last report", "after the store"])
def test_a_cancel_at_the_end_never_says_kept_over_the_new_ranking(predicted, monkeypatch, when):
    """QA: Cancel clicked as the run ended landed on its "done" report, after the ranking was stored:
    the page said "stopped ... the ranking shown before is kept" above the new ranking (500 steps).
    A stop at the last report keeps the earlier ranking; one after the store (the page's next
    Streamlit call) shows the new ranking without saying it was kept."""
    from streamlit.runtime.scriptrunner_utils.exceptions import StopException

    from scatd_core import explain as ex

    adata, bundle = predicted
    at = _open(adata, bundle)
    at.number_input(key="bio_steps").set_value(8)
    _button(at, "Compute gene ranking").click().run()
    real = ex.explain

    def cancelled_late(*args, progress=None, **kwargs):
        def report(fraction, message):
            if when == "at the last report" and fraction >= 1.0:
                raise StopException()
            progress(fraction, message)

        return real(*args, progress=report, **kwargs)

    monkeypatch.setattr(ex, "explain", cancelled_late)
    if when == "after the store":  # the page's next Streamlit call after explain returned raises
        import contextlib

        from scatd_app import jobs

        computing = jobs.computing

        @contextlib.contextmanager
        def stopped_on_exit(*args, **kwargs):
            with computing(*args, **kwargs):
                yield
            raise StopException()

        monkeypatch.setattr(jobs, "computing", stopped_on_exit)
    at.number_input(key="bio_steps").set_value(12)
    _button(at, "Compute gene ranking").click().run()
    at.run()  # the rerun the click on Cancel asks for
    assert not at.exception, [e.value for e in at.exception]
    said_kept = any("stopped before it finished" in i.value for i in at.info)
    steps = ex.from_adata(adata).info["n_steps"]
    assert (steps, said_kept) == ((8, True) if when == "at the last report" else (12, False)), (steps, said_kept)


@pytest.mark.parametrize("baseline", ["mean", "zero"])
def test_the_signed_mean_attribution_is_hidden_against_the_mean_baseline(predicted, baseline):
    """Against the mean baseline the signed mean attribution is ~0 for every gene by construction:
    the table leaves it out and says why (pointing to direction and the per-group means);
    against another baseline it is shown. biomarkers.csv keeps it either way."""
    adata, bundle = predicted
    at = _open(adata, bundle)
    at.number_input(key="bio_steps").set_value(4)
    at.selectbox(key="bio_baseline").set_value(baseline)
    _button(at, "Compute gene ranking").click().run()
    assert not at.exception, [e.value for e in at.exception]
    columns = list(at.dataframe[0].value.columns)
    said = [c.value for c in at.caption if "is not shown" in c.value]
    assert "mean_attribution_resistant" in columns and "mean_attribution_sensitive" in columns
    if baseline == "mean":
        assert "mean_attribution" not in columns
        assert said and "direction" in said[0] and "resistant / sensitive" in said[0]
    else:
        assert "mean_attribution" in columns and not said
    from scatd_core import explain as ex

    assert "mean_attribution" in ex.from_adata(adata).ranking.columns


def _tables_script():
    import numpy as np
    import pandas as pd

    from scatd_app import ui

    ranking = pd.DataFrame({"rank": [1, 2], "feature": ["G1", "G2"], "mean_abs_attribution": [0.2, 0.1],
                            "direction": ["resistance", "sensitivity"], "de_score": [2.0, -1.0],
                            "logfoldchange": [np.nan, np.nan], "de_pval_adj": [0.01, 0.2]})
    ui.biomarker_table(ranking, hide_index=True)  # z-scored data: no log fold change
    ui.biomarker_table(ranking.assign(logfoldchange=[1.5, np.nan]), hide_index=True)  # counts: one gene not in data


def test_a_log_fold_change_not_computed_shows_a_dash_and_says_why():
    """QA: for z-scored data the table's "log fold change" read Python's "None" in every row: a dash now,
    the column's help saying why (the data are not on a log-expression scale); numbers stay numbers."""
    import json

    at = AppTest.from_function(_tables_script, default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    none, some = at.dataframe[0], at.dataframe[1]
    assert list(none.value["logfoldchange"]) == ["—", "—"]
    config = json.loads(none.proto.columns)["logfoldchange"]
    assert config["label"] == "log fold change" and "not on such a scale" in config["help"]
    assert some.value["logfoldchange"].iloc[0] == 1.5 and "z-scored" in json.loads(some.proto.columns)[
        "logfoldchange"]["help"]
