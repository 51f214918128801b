"""Every page through Streamlit's AppTest: the whole path on a small bundle, and every error path.

The app is run from ``app.py`` (navigation and sidebar) and pages are reached with
``switch_page``, as a user would; nothing here needs a browser.
"""

from __future__ import annotations

import functools
import json
import re
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from streamlit.testing.v1 import AppTest

import original_scatd as orig
from _app_helpers import (BUNDLE_FOLDER, assert_charts_described, make_bundle, make_dataset,  # noqa: F401
                          trained_library)  # (fixture)
from scatd_app import state, ui
from scatd_core import pl

APP = str(Path(__file__).resolve().parents[1] / "app.py")
N_CELLS = 180


@pytest.fixture(autouse=True)
def _no_component_scan(monkeypatch):
    """Every AppTest scans all installed packages for custom components (~2 s each); the app uses
    none, so the scan is skipped."""
    monkeypatch.setattr("streamlit.components.v2.manifest_scanner.scan_component_manifests", lambda: [])


@pytest.fixture
def with_library(trained_library, monkeypatch):
    monkeypatch.setenv("SCATD_MODEL_LIBRARY", str(trained_library))
    return trained_library


@pytest.fixture
def empty_library(tmp_path, monkeypatch):
    monkeypatch.setenv("SCATD_MODEL_LIBRARY", str(tmp_path / "empty"))
    return tmp_path / "empty"


def h5ad_bytes(adata: ad.AnnData) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        adata.write_h5ad(Path(tmp) / "x.h5ad")
        return (Path(tmp) / "x.h5ad").read_bytes()


@functools.lru_cache(maxsize=None)
def tumour_h5ad(n_cells: int, seed: int) -> bytes:
    """``h5ad_bytes(make_dataset(n_cells, seed=seed))``, simulated and written once per test process:
    the simulated tumour depends only on ``(n_cells, seed)`` and bytes cannot be changed by a test,
    so the ~30 uploads of the same few datasets share one file each (0.1-0.3 s each to remake)."""
    return h5ad_bytes(make_dataset(n_cells, seed=seed))


def start() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    return ok(at)


def ok(at: AppTest) -> AppTest:
    """No exception and no 'unexpected' error (app.py turns bugs into that message)."""
    assert not at.exception, [e.value for e in at.exception]
    assert "Something unexpected went wrong" not in text(at.error), text(at.error)
    return at


def goto(at: AppTest, page: str) -> AppTest:
    at.switch_page(f"app_pages/{page}.py")
    at.run()
    return ok(at)


def text(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def upload(at: AppTest, name: str, data: bytes) -> AppTest:
    goto(at, "1_Data")
    at.file_uploader[0].upload(name, data)
    at.run()
    return ok(at)


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def run_prediction(at: AppTest) -> AppTest:
    goto(at, "2_Model")
    goto(at, "3_Predict")
    at.button(key="btn_run_predict").click()
    at.run()
    return ok(at)


# --------------------------------------------------------------------------------------------

def test_a_new_prediction_that_fails_or_stops_leaves_the_earlier_results_as_they_were(with_library, monkeypatch):
    """QA: Run prediction forgot the earlier prediction (its calibration, UMAP, biomarkers) before
    the new one had produced anything, so a stopped or failed run left nothing, while the page said
    "nothing was changed"; after a reload mid-run, Cells and Report crashed (KeyError 'scatd').
    Now the earlier results go only when the new ones are complete."""
    from scatd_core import predict as predict_module
    from scatd_core.errors import InputError

    at = start()
    upload(at, "tumour.h5ad", tumour_h5ad(N_CELLS, seed=7))
    run_prediction(at)
    goto(at, "4_Cells")
    at.button(key="btn_fraction").click().run()
    adata = at.session_state[state.ADATA]
    before = adata.obs["scatd_prob_resistant"].copy()
    token, threshold = at.session_state[state.PREDICTION], dict(adata.uns["scatd"]["threshold"])
    assert threshold["calibrated"] and "X_umap" in adata.obsm

    def fails(*args, **kwargs):
        kwargs["progress"](0.5, "half way")
        raise InputError("The run broke half way.")

    monkeypatch.setattr(predict_module, "score", fails)
    goto(at, "3_Predict")
    at.radio(key="predict_mode").set_value("sample").run()
    at.button(key="btn_run_predict").click().run()
    ok(at)
    assert "The run broke half way" in text(at.error)
    assert at.session_state[state.PREDICTION] == token and adata.uns["scatd"]["threshold"] == threshold
    pd.testing.assert_series_equal(adata.obs["scatd_prob_resistant"], before)
    assert "X_umap" in adata.obsm
    goto(at, "4_Cells")
    assert "Run a prediction first" not in text(at.info) and "Calibrated" in text(at.success)

    # the safety net: a token whose results are not in the data is no prediction (no crash)
    del adata.uns["scatd"]
    goto(at, "6_Report")
    assert "Run a prediction first" in text(at.info)


def test_a_stopped_umap_waits_for_a_click_and_a_new_prediction_stops_the_old_one(with_library, monkeypatch):
    """Cancel during the Cells page's UMAP (``ui.decline_embedding``, the button's callback) stops
    the computation, also one running in the background, and the page does not start it again on
    its own: it says so and offers a button. A new prediction stops a UMAP still computing for the
    old one (it was left running, holding a slot of the server's queue)."""
    import threading

    from scatd_core import embed
    from scatd_core.errors import Cancelled

    calls, release = [], threading.Event()
    real = embed.compute_embedding

    def slow(*args, **kwargs):  # the background run waits here until released, reporting as it goes
        calls.append(1)
        while not release.wait(0.05):
            kwargs["progress"](0.5, "layout")
        return real(*args, **kwargs)

    monkeypatch.setattr(embed, "compute_embedding", slow)
    at = start()
    upload(at, "tumour.h5ad", tumour_h5ad(N_CELLS, seed=7))
    run_prediction(at)
    pending = at.session_state[state.EMBEDDING_PENDING]
    assert isinstance(pending, ui.Pending) and not pending.future.done()

    # a new prediction (other settings, Run) forgets the old one: its UMAP is stopped, not left running
    at.radio(key="predict_mode").set_value("sample").run()
    at.button(key="btn_run_predict").click().run()
    ok(at)
    with pytest.raises(Cancelled):
        pending.future.result(timeout=30)
    pending = at.session_state[state.EMBEDDING_PENDING]
    assert not pending.future.done()

    # Cancel, as its callback does it (a click cannot land mid-run in AppTest)
    session = {state.EMBEDDING_PENDING: pending}
    monkeypatch.setattr(ui.st, "session_state", session)
    ui.decline_embedding(pending.token)
    monkeypatch.undo()
    assert session == {state.UMAP_DECLINED: pending.token} and pending.stop.is_set()
    with pytest.raises((Cancelled, __import__("concurrent.futures").futures.CancelledError)):
        pending.future.result(timeout=30)
    del at.session_state[state.EMBEDDING_PENDING]
    at.session_state[state.UMAP_DECLINED] = pending.token
    monkeypatch.setattr(embed, "compute_embedding", lambda *a, **k: calls.append(1) or real(*a, **k))
    calls.clear()

    goto(at, "4_Cells")
    assert calls == [] and "X_umap" not in at.session_state[state.ADATA].obsm  # not started again on its own
    assert "were stopped before they finished" in text(at.info)
    at.slider(key="cells_threshold").set_value(0.5).run()  # nor by any other click on the page
    assert calls == []
    goto(at, "6_Report")  # the report says where to compute them, not "open the Cells page"
    assert "stopped: compute them on the Cells page" in text(at.caption) and calls == []
    goto(at, "4_Cells")
    at.button(key="btn_cells_umap").click().run()
    ok(at)
    assert calls == [1] and "X_umap" in at.session_state[state.ADATA].obsm
    assert "btn_cells_umap" not in [b.key for b in at.button] and state.UMAP_DECLINED not in at.session_state
    release.set()


def test_upload_predict_results_report(with_library, monkeypatch):
    from scatd_core import embed

    calls = []
    real = embed.compute_embedding
    monkeypatch.setattr(embed, "compute_embedding",
                        lambda *a, **k: calls.append(1) or time.sleep(1.0) or real(*a, **k))

    at = start()
    assert "Try the demo" in [b.label for b in at.button]  # the demo is the landing page's first action
    assert "upload limit" not in text(at.error)
    goto(at, "1_Data")
    assert f"{ui.upload_limit_mb():,} MB" in text(at.caption)  # the limit is shown
    adata = make_dataset(N_CELLS, seed=7)
    uploaded = h5ad_bytes(adata)
    upload(at, "tumour.h5ad", uploaded)
    assert metric(at, "Cells") == f"{N_CELLS:,}" and metric(at, "Values") == "counts"
    # the upload's sha256, for metrics.csv and report.html (which file made these results)
    sha = __import__("hashlib").sha256(uploaded).hexdigest()
    assert at.session_state[state.ADATA].uns["scatd_input"]["file_sha256"] == sha
    assert at.session_state[state.LABEL_COLUMN] == "response"  # found by the reader
    assert at.session_state["label_resistant_response"] == "resistant"  # recognised from the words
    assert at.session_state[state.ADATA].uns["scatd_labels"]["response"]["resistant"] == "resistant"
    # a guess left as it was is recorded as recognised, not as the user's choice (metrics.csv says which)
    assert at.session_state[state.ADATA].uns["scatd_labels"]["response"]["how"] == "recognised from the words"
    assert at.session_state[state.SAMPLE_COLUMN] == "sample"
    assert len(at.get("plotly_chart")) == 2  # QC violins and scatter
    # each chart says what it shows to a screen reader, and offers only the buttons of use
    assert [a.split(" of ")[0] for a in assert_charts_described(at)] == ["Violin plots", "Scatter plot"]

    goto(at, "2_Model")
    assert "Coverage is good" in text(at.success)
    assert at.session_state[state.BUNDLE_PATH].endswith(BUNDLE_FOLDER)

    goto(at, "3_Predict")
    assert "Estimated time" in text(at.caption) and "CPU" in metric(at, "Device")
    at.button(key="btn_run_predict").click()
    at.run()
    ok(at)
    assert f"Predicted {N_CELLS:,} of {N_CELLS:,} cells" in text(at.success)
    assert "not calibrated" in text(at.warning)
    assert assert_charts_described(at)[0].startswith(f"Histogram of P(resistant) for {N_CELLS:,} scored cells")
    result = at.session_state[state.ADATA]
    assert result.n_obs == N_CELLS and "X_scatd" in result.obsm
    # the Cells page's UMAP is under way in the background (here it followed the prediction made
    # ahead of the click); nothing is stored before the Cells page takes it
    assert state.EMBEDDING_PENDING in at.session_state and "X_umap" not in result.obsm

    goto(at, "4_Cells")  # opened while it still runs: the page waits for it
    assert len(calls) == 1  # taken from the background run, not computed again
    assert state.EMBEDDING_PENDING not in at.session_state
    assert "X_umap" in result.obsm
    assert float(metric(at, "AUROC")) > 0.6  # the test model transfers to a new tumour
    assert len(at.get("plotly_chart")) >= 5  # UMAP, groups, ROC, PR, confusion
    alts = assert_charts_described(at)
    assert any(a.startswith("ROC curve") and f"AUROC {float(metric(at, 'AUROC')):.3f}" in a for a in alts), alts
    assert "Uncalibrated" in text(at.warning)
    resistant = int(metric(at, "Resistant").replace(",", ""))
    at.slider(key="cells_threshold").set_value(0.99).run()  # relabel without recomputing
    assert int(metric(at, "Resistant").replace(",", "")) <= resistant
    assert result.uns["scatd"]["threshold"] == {"value": 0.99, "source": "user", "calibrated": False,
                                                "detail": "set by hand on the Cells page"}
    assert "**Uncalibrated**: set by hand on the Cells page" in text(at.warning)  # a guess is not a calibration
    at.button(key="btn_youden").click().run()
    assert result.uns["scatd"]["threshold"]["source"] == "labelled cells"
    assert "Calibrated" in text(at.success)
    at.button(key="btn_mcc").click().run()
    assert result.uns["scatd"]["threshold"]["source"] == "labelled cells" and "Matthews" in text(at.success)
    at.button(key="btn_threshold_default").click().run()
    assert result.uns["scatd"]["threshold"]["source"] == "model default" and "Uncalibrated" in text(at.warning)
    # QA at 200% zoom: "Use this fraction" was cut to "Use this fract…" beside the fraction's input
    assert at.button(key="btn_fraction").label == "Apply" and "this fraction" in at.button(key="btn_fraction").help
    at.button(key="btn_fraction").click().run()
    assert result.uns["scatd"]["threshold"]["source"] == "expected fraction"
    at.selectbox(key="cells_colour").set_value("Leiden cluster").run()
    ok(at)
    # the ranking view needs no threshold: the most likely resistant cells, and how many truly are
    top = next(d.value for d in at.dataframe if "rank" in d.value.columns)
    assert list(top["rank"]) == list(range(1, 51))
    # QA: the call was shown as "label", the Data page's word for the known response: headed "called"
    # (the column stays predictions.csv's "label", below); known_label keeps the file's name
    for shown in [d for d in at.dataframe if "rank" in d.value.columns]:
        headers = json.loads(shown.proto.columns)
        assert headers["label"]["label"] == "called" and headers["known_label"]["label"] == "known_label"
    assert metric(at, "Resistant among the top 50 labelled cells").endswith("%")
    # the per-group table: the share called resistant shown in percent (a progress bar's number was
    # cut off); QA: its "Download as CSV" said 75.000000 for 75%: the data stay a fraction (0.75)
    groups = next(d for d in at.dataframe if "fraction_resistant" in d.value.columns)
    expected = groups.value["n_resistant"] / groups.value["n_called"]
    assert np.allclose(groups.value["fraction_resistant"], expected) and groups.value["fraction_resistant"].max() <= 1
    shown = json.loads(groups.proto.columns)["fraction_resistant"]
    assert shown["label"] == "% resistant" and shown["type_config"]["format"] == "percent"
    # QA: the cells table's CSV said `called` where predictions.csv says `label`, in another order:
    # the same columns as predictions.csv, the call only headed "called"
    cells = [d for d in at.dataframe if "cell_id" in d.value.columns]
    assert len(cells) == 2 and all(json.loads(d.proto.columns)["label"]["label"] == "called" for d in cells)
    cells_columns = list(cells[1].value.columns)
    assert "called" not in cells_columns and cells_columns[:3] == ["cell_id", "prob_resistant", "label"]
    assert list(cells[0].value.columns) == cells_columns  # the ranking: the same columns
    threshold = result.uns["scatd"]["threshold"]["value"]

    goto(at, "6_Report")
    assert len(at.get("download_button")) == 4  # predictions, metrics, h5ad, html (biomarkers: not computed)
    assert f"{N_CELLS:,} rows: one per uploaded cell" in text(at.caption)
    preview = next(d.value for d in at.dataframe if "rank" in d.value.columns)
    assert list(preview.columns) == cells_columns  # predictions.csv's columns, as on the Cells page
    # QA: the preview's tables were stacked untitled: each is headed by its file's name
    headings = [m.value.split("**")[1] for m in at.markdown if m.value.startswith("**") and ".csv**" in m.value]
    assert [h.rsplit("_", 1)[1] for h in headings] == ["predictions.csv", "metrics.csv"] and "tumour" in headings[0]
    # QA: "(the first 180 of 180 rows)" (and "the first 1 of 1 rows"): under 200 rows, all are shown
    assert f"predictions.csv** ({N_CELLS:,} rows)" in text(at.markdown)

    goto(at, "3_Predict")  # coming back: nothing recomputed
    assert "nothing needs recomputing" in text(at.caption)
    goto(at, "4_Cells")
    assert len(calls) == 1
    assert result.uns["scatd"]["threshold"]["value"] == threshold  # the threshold survived the page visits


def test_the_cells_page_never_rounds_an_interval_onto_0_5(with_library, monkeypatch):
    """QA: "AUROC ... is below 0.5 beyond chance (95% interval 0.453-0.500)" where the upper end was
    0.49984: the page prints the ends as every output does (``metrics.interval_ends``)."""
    from scatd_core import metrics

    at = start()
    upload(at, "tumour.h5ad", tumour_h5ad(N_CELLS, seed=7))
    run_prediction(at)
    monkeypatch.setattr(metrics, "auroc_interval", lambda *a: (0.45312, 0.49984))
    goto(at, "4_Cells")
    assert "(95% interval 0.453-0.4999)" in text(at.error)
    assert next(m for m in at.metric if m.label == "AUROC").proto.delta == "95% CI 0.45-0.4999"


def test_numeric_labels_ask_once_and_a_wrong_direction_is_flagged(with_library):
    adata = make_dataset(N_CELLS, seed=11)
    adata.obs["response"] = (adata.obs["response"] == "sensitive").astype(int)  # SCAD: 1 = sensitive
    at = start()
    upload(at, "scad.h5ad", h5ad_bytes(adata))
    assert at.session_state[state.LABEL_COLUMN] == "response"
    assert at.session_state["label_resistant_response"] is None  # never a silent default for 0/1
    assert "never guessed" in text(at.warning)
    run_prediction(at)
    goto(at, "4_Cells")
    assert "means resistant on the Data page" in text(at.info)
    goto(at, "1_Data")
    at.radio(key="label_resistant_response").set_value("1").run()  # the wrong answer
    goto(at, "4_Cells")
    assert float(metric(at, "AUROC")) < 0.5 and "Check the label direction" in text(at.error)
    goto(at, "1_Data")
    at.radio(key="label_resistant_response").set_value("0").run()  # the right one
    goto(at, "4_Cells")
    assert float(metric(at, "AUROC")) > 0.6 and "Check the label direction" not in text(at.error)
    auroc = next(m for m in at.metric if m.label == "AUROC")
    assert auroc.proto.delta.startswith("95% CI ")  # the interval beside it, whichever side of 0.5
    # the UMAP coloured by the labels: by what they mean (0 = resistant here), not by what they look like
    at.selectbox(key="cells_colour").set_value("response").run()
    umap = json.loads(next(c.proto.spec for c in at.get("plotly_chart") if "UMAP 1" in c.proto.spec))
    colours = {t["name"].rsplit(" (", 1)[0]: t["marker"]["color"]  # in the legend's order (the largest drawn first)
               for t in sorted(umap["data"], key=lambda t: t.get("legendrank", 0))}
    # QA: the legend read "0 (resistant) (60)": "0 = resistant (60)", resistant first
    assert colours == {"0 = resistant": pl.COLORS["resistant"], "1 = sensitive": pl.COLORS["sensitive"]}
    assert list(colours) == ["0 = resistant", "1 = sensitive"]
    at.button(key="btn_youden").click().run()  # fitted on these labels...
    assert at.session_state[state.ADATA].uns["scatd"]["threshold"]["source"] == "labelled cells"
    goto(at, "1_Data")
    at.radio(key="label_resistant_response").set_value("1").run()  # ...then the direction changes: dropped
    goto(at, "4_Cells")
    assert "**Uncalibrated**" in text(at.warning) and "label direction changed" in text(at.warning)
    assert at.session_state[state.ADATA].uns["scatd"]["threshold"]["source"] == "model default"


def test_a_label_answer_followed_at_once_by_another_page_is_recorded(with_library):
    """Browser walk under load: '0' clicked, then Model in the sidebar before the Data page's rerun
    had drawn the answer. The two reached the server as one rerun of the Model page (Streamlit
    merges a pending rerun into the next), so the Data page never ran with '0' and the answer was
    never written into the data: the Cells page asked for it again, no AUROC. The radio's own
    callback records it, whichever page the rerun runs."""
    from scatd_core.labels import label_direction

    adata = make_dataset(N_CELLS, seed=11)
    adata.obs["response"] = (adata.obs["response"] == "sensitive").astype(int)  # SCAD: 1 = sensitive
    at = start()
    upload(at, "scad.h5ad", h5ad_bytes(adata))
    assert at.session_state["label_resistant_response"] is None
    at.radio(key="label_resistant_response").set_value("0")
    goto(at, "2_Model")  # the click and the page change in one rerun: the Data page does not run
    assert label_direction(at.session_state[state.ADATA], "response") == "0"
    goto(at, "3_Predict")
    at.button(key="btn_run_predict").click().run()
    goto(at, "4_Cells")
    assert "means resistant on the Data page" not in text(at.info)
    assert float(metric(at, "AUROC")) > 0.6
    goto(at, "1_Data")  # and the Data page shows the answer
    assert at.radio(key="label_resistant_response").value == "0" and "never guessed" not in text(at.warning)


def test_a_qc_change_followed_at_once_by_another_page_is_applied(with_library):
    """As the label answer above: the QC toggle and bounds reached the data only when the Data page's
    code ran, so a change followed at once by another page (one rerun of that page) left the filter
    as it was: the Predict page predicted the cells just filtered (or left out those just let in), and
    a prediction made before stayed as if current. The widgets' callbacks apply the change on the
    data, and forget a prediction it makes stale, whichever page the rerun runs."""
    from scatd_core.preprocess import QC_KEY

    at = start()
    upload(at, "tumour.h5ad", tumour_h5ad(N_CELLS, seed=3))
    at.toggle(key="qc_enabled").set_value(True).run()
    at.number_input(key="qc_total_counts_min").set_value(2000.0).run()
    n_pass = int(at.session_state[state.ADATA].obs[QC_KEY].sum())
    assert 0 < n_pass < N_CELLS - 30

    at.toggle(key="qc_enabled").set_value(False)
    goto(at, "3_Predict")  # turned off, then Predict at once: the Data page does not run
    assert QC_KEY not in at.session_state[state.ADATA].obs
    assert metric(at, "Cells to predict") == f"{N_CELLS:,}"
    goto(at, "1_Data")
    at.toggle(key="qc_enabled").set_value(True)
    goto(at, "3_Predict")  # on again (the bounds as they were), then Predict at once
    assert metric(at, "Cells to predict") == f"{n_pass:,}"
    at.button(key="btn_run_predict").click().run()
    labels = at.session_state[state.ADATA].obs["scatd_label"]
    assert int((labels == "filtered (QC)").sum()) == N_CELLS - n_pass

    goto(at, "1_Data")
    at.number_input(key="qc_total_counts_min").set_value(2500.0)
    goto(at, "4_Cells")  # a bound changed, then Cells at once: the prediction made before is stale
    adata = at.session_state[state.ADATA]
    assert adata.uns["scatd_qc"]["thresholds"]["total_counts"]["min"] == 2500.0
    n_now = int(adata.obs[QC_KEY].sum())
    assert n_now < n_pass and "scatd_label" not in adata.obs
    assert "Run a prediction first" in text(at.info)
    goto(at, "3_Predict")
    assert metric(at, "Cells to predict") == f"{n_now:,}"
    goto(at, "1_Data")  # and the Data page shows the filter as it is
    assert at.toggle(key="qc_enabled").value and f"{n_now:,} of {N_CELLS:,} cells pass" in text(at.info)
    assert int(at.session_state[state.ADATA].obs[QC_KEY].sum()) == n_now


def test_an_emptied_qc_bound_is_no_bound_and_genes_detected_are_whole_numbers(with_library):
    """QA r1: with the filter on, clearing an upper bound showed "0.00" and "0 of 800 cells pass",
    though the page says "Empty = no bound" (the number input fell back to its minimum, 0). An emptied
    bound is now no bound. Genes detected were shown as 239.58 and 1101.45: they are whole numbers,
    rounded so that the same cells pass."""
    from scatd_core.preprocess import QC_KEY, suggest_qc_thresholds

    at = start()
    upload(at, "tumour.h5ad", tumour_h5ad(N_CELLS, seed=3))
    at.toggle(key="qc_enabled").set_value(True).run()
    qc = at.session_state[state.QC_METRICS][1]
    suggested = suggest_qc_thresholds(qc)["n_genes_by_counts"]
    low, high = (at.number_input(key=f"qc_n_genes_by_counts_{b}") for b in ("min", "max"))
    assert low.value == int(np.ceil(suggested["min"])) and high.value == int(np.floor(suggested["max"]))
    assert isinstance(low.value, int) and isinstance(high.value, int) and low.proto.format == "%d"
    assert at.number_input(key="qc_total_counts_max").proto.format == "%.2f"

    cut = float(np.median(qc["total_counts"]))
    at.number_input(key="qc_total_counts_min").set_value(cut).run()
    at.number_input(key="qc_total_counts_max").set_value(None).run()  # emptied: no upper bound
    ok(at)
    assert at.number_input(key="qc_total_counts_max").value is None
    genes = qc["n_genes_by_counts"]
    expected = (qc["total_counts"] >= cut) & (genes >= low.value) & (genes <= high.value)
    mito = at.number_input(key="qc_pct_counts_mt_max").value
    if mito is not None:
        expected &= ~(qc["pct_counts_mt"] > mito)
    n_pass = int(at.session_state[state.ADATA].obs[QC_KEY].sum())
    assert n_pass == int(expected.sum()) >= N_CELLS // 3
    assert f"{n_pass:,} of {N_CELLS:,} cells pass" in text(at.info)
    assert "max" not in at.session_state[state.ADATA].uns["scatd_qc"]["thresholds"]["total_counts"]


def test_the_cells_page_says_undefined_scores_lists_resistant_first_and_says_a_subsampled_umap(with_library,
                                                                                                 monkeypatch):
    """QA (Cells page): at threshold 1.0 (no cell called resistant) precision and F1 read 0.000; the
    called-label legend listed sensitive before resistant (the known labels: resistant first); on
    100k cells the caption did not say the UMAP was fitted on a random 30,000 of them.
    QA r1: above pl.MAX_PLOT_POINTS cells the plot draws a random share of them, and said so in a
    note drawn inside the figure (a Plotly annotation: one line that never wraps), cut off at a
    phone's width (390 px): now a caption of its own under the chart, which wraps, and the short line
    "Showing a random N of M cells" in the figure too (its PNG download lacked it)."""
    from scatd_core import embed

    monkeypatch.setattr(embed, "UMAP_FIT_MAX_CELLS", 120)  # 180 cells: fitted on 120, 60 placed
    monkeypatch.setattr(pl, "MAX_PLOT_POINTS", 100)  # and a random 100 of them drawn
    at = start()
    upload(at, "tumour.h5ad", tumour_h5ad(N_CELLS, seed=7))
    run_prediction(at)
    goto(at, "4_Cells")
    assert "UMAP of 180 cells (" in text(at.caption)
    assert "fitted on a random 120 of them, the other 60 placed into that layout" in text(at.caption)
    umap = json.loads(next(c.proto.spec for c in at.get("plotly_chart") if "UMAP 1" in c.proto.spec))
    # only the subsample's short line in the figure (its PNG download says it too), nothing to be cut off;
    # and said once on the page: in the figure, not again in a caption under it
    assert [a["text"] for a in umap["layout"]["annotations"]] == ["Showing a random 100 of 180 cells"]
    page_text = [str(e.value) for kind in ("caption", "markdown", "info", "warning", "text") for e in getattr(at, kind)]
    assert not [t for t in page_text if "Showing a random" in t], page_text
    at.selectbox(key="cells_colour").set_value("called label").run()
    umap = json.loads(next(c.proto.spec for c in at.get("plotly_chart") if "UMAP 1" in c.proto.spec))
    assert [t["name"].rsplit(" (", 1)[0] for t in sorted(umap["data"], key=lambda t: t.get("legendrank", 0))] == \
        ["resistant", "sensitive"]  # the legend's order
    assert float(metric(at, "Precision")) > 0  # cells called resistant: defined
    at.slider(key="cells_threshold").set_value(1.0).run()
    ok(at)
    for name in ("Precision", "F1"):
        shown = next(m for m in at.metric if m.label == name)
        assert shown.value == "—" and "Undefined: no labelled cell is called resistant" in shown.proto.help
    shown = next(m for m in at.metric if m.label == "MCC")  # not scikit-learn's 0, read as a measured chance
    assert shown.value == "—" and "Undefined: every labelled cell is called sensitive" in shown.proto.help
    assert metric(at, "Recall") == "0.000" and "precision, F1 and MCC are undefined" in text(at.caption)


def test_the_cells_page_colours_integer_clusters_as_categories_and_measurements_on_a_scale(with_library):
    """A cluster column saved as integers (leiden 0..5) was coloured on a continuous scale with a colour
    bar, as if cluster 5 were more than cluster 2: now one colour per cluster with a legend
    (pl.colour_as_categories); a measurement (n_counts) keeps its colour scale."""
    adata = make_dataset(N_CELLS, seed=5)
    adata.obs["leiden"] = np.random.default_rng(0).integers(0, 6, adata.n_obs)  # int64, as tools write it
    adata.obs["n_counts"] = np.asarray(adata.X.sum(axis=1), dtype=np.float64).ravel()
    at = start()
    upload(at, "t.h5ad", h5ad_bytes(adata))
    run_prediction(at)
    goto(at, "4_Cells")

    def umap() -> dict:
        return json.loads(next(c.proto.spec for c in at.get("plotly_chart") if "UMAP 1" in c.proto.spec))

    at.selectbox(key="cells_colour").set_value("leiden").run()
    ok(at)
    traces = sorted(umap()["data"], key=lambda t: t.get("legendrank", 0))
    assert [t["name"].rsplit(" (", 1)[0] for t in traces] == [str(i) for i in range(6)]
    assert all(t["showlegend"] and "colorbar" not in t["marker"] for t in traces)
    at.selectbox(key="cells_colour").set_value("n_counts").run()
    ok(at)
    (trace,) = umap()["data"]
    assert trace["marker"]["colorbar"]["title"]["text"] == "n_counts"


def test_the_cells_page_groups_by_the_sample_column_chosen_last(with_library):
    """A new sample column chosen on the Data page is what the Cells page groups by next (it kept
    the earlier one); a grouping chosen on the Cells page itself stays while the column does."""
    at = start()
    upload(at, "t.h5ad", tumour_h5ad(N_CELLS, seed=12))
    at.session_state[state.SAMPLE_COLUMN] = "sample"
    run_prediction(at)
    goto(at, "4_Cells")
    assert at.selectbox(key="cells_group").value == "sample"
    goto(at, "1_Data")
    at.selectbox(key=state.SAMPLE_COLUMN).set_value("cluster").run()
    goto(at, "4_Cells")
    assert at.selectbox(key="cells_group").value == "cluster"  # the new sample column
    at.selectbox(key="cells_group").set_value("sample").run()
    goto(at, "3_Predict")
    goto(at, "4_Cells")
    assert at.selectbox(key="cells_group").value == "sample"  # the user's own choice stays


def test_qc_filter_marks_cells_and_keeps_them(with_library):
    at = start()
    upload(at, "tumour.h5ad", tumour_h5ad(N_CELLS, seed=3))
    at.toggle(key="qc_enabled").set_value(True).run()
    at.number_input(key="qc_total_counts_min").set_value(2000.0).run()
    info = text(at.info)
    assert "cells pass" in info and "filtered (QC)" in info
    # QA: the bounds' headings said "n genes by counts", "pct counts mt" above plots titled otherwise
    headings = text(at.markdown)
    assert "**genes detected**" in headings and "**% mitochondrial**" in headings, headings
    assert "n genes by counts" not in headings and "pct counts mt" not in headings
    assert "min genes detected" in [n.label for n in at.number_input]
    run_prediction(at)
    result = at.session_state[state.ADATA]
    n_filtered = int((result.obs["scatd_label"] == "filtered (QC)").sum())
    assert n_filtered > 0 and result.n_obs == N_CELLS
    assert metric(at, "Filtered (QC)") == f"{n_filtered:,}"  # QA: the tile said "Filtered (qc)"
    goto(at, "4_Cells")
    assert metric(at, "Filtered (QC)") == f"{n_filtered:,}"
    # QA: "calibrate with ... labelled cells →" while the controls sit below it on a phone
    assert "→" not in text(at.warning) and "labelled cells under **Calibrate**" in text(at.warning)
    goto(at, "6_Report")
    assert f"{N_CELLS:,} rows" in text(at.caption)


def test_bad_file_shows_a_friendly_error(with_library):
    at = start()
    upload(at, "broken.h5ad", b"this is not an HDF5 file at all")
    assert "broken.h5ad" in text(at.error)
    assert state.ADATA not in at.session_state
    upload(at, "empty.csv", b"")
    assert "empty" in text(at.error).lower()


def test_an_excel_workbook_upload_reaches_the_app_and_is_refused_with_the_export_to_use(empty_library):
    """QA: the uploader refused .xlsx itself (a red icon, "...sheet files are not allowed"), so the
    export advice docs/app.md promises never showed; now the app takes it and says what to export."""
    import io as _io
    import zipfile

    buffer = _io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("xl/workbook.xml", "<workbook/>")
    at = start()
    goto(at, "1_Data")
    assert {".xlsx", ".xls"} <= {t if t.startswith(".") else "." + t for t in at.file_uploader[0].allowed_type}
    # listed so that the app can refuse them with advice: every uploader that lists them says they are not read
    listing = [u for u in at.file_uploader if ".xlsx" in {t if t.startswith(".") else "." + t for t in u.allowed_type}]
    assert listing and all("they are not read" in u.help for u in listing), [u.help for u in listing]
    upload(at, "table.xlsx", buffer.getvalue())
    shown = text(at.error).replace("\\", "")  # markdown escapes out
    assert "table.xlsx is an Excel workbook" in shown and "CSV UTF-8" in shown and "upload that file" in shown, shown
    assert state.ADATA not in at.session_state


def test_the_text_above_each_uploader_says_spreadsheets_are_taken_only_for_the_export_advice(empty_library):
    """QA (38_xlsx.png): the uploaders' own lists (Streamlit's hint) show "... XLSX, XLSM, XLS, ODS, NUMBERS"
    while the text above them named only text and binary formats (the data file's caption, "Cell metadata
    table (optional; CSV or TSV)"). Now the text above each says a spreadsheet is taken only to say how to
    save it as CSV, so the list and the text agree."""
    at = start()
    goto(at, "1_Data")
    caption = text(at.caption).replace("\\", "")
    assert "a spreadsheet (XLSX, XLS, ODS, Numbers) is taken only to tell you how to save it as CSV" in caption
    upload(at, "cells.h5ad", tumour_h5ad(40, seed=1))
    listing = [u for u in at.file_uploader if "xlsx" in {t.lstrip(".") for t in u.allowed_type}]
    assert len(listing) == 2  # the data file's and the cell metadata table's
    metadata = next(u for u in listing if u.label.startswith("Cell metadata table"))
    assert metadata.label == ("Cell metadata table (optional; CSV or TSV; a spreadsheet gets only the steps to save "
                              "it as CSV)")


def test_csv_upload_works(with_library):
    adata = make_dataset(40, seed=1)
    frame = pd.DataFrame(adata.X.toarray(), index=adata.obs_names, columns=adata.var_names)
    frame.insert(0, "response", adata.obs["response"].to_numpy())
    at = start()
    upload(at, "cells.csv", frame.to_csv().encode())
    assert not at.error
    assert metric(at, "Cells") == "40" and at.session_state[state.LABEL_COLUMN] == "response"


def test_a_csv_over_the_cell_limit_is_refused_with_its_true_count(with_library, monkeypatch):
    """QA (50_too_many_cells.png): with limits.max_cells = 5,000 'cells6000.csv has 5,001 cells'."""
    monkeypatch.setenv("SCATD_MAX_CELLS", "100")
    at = start()
    upload(at, "cells120.csv", ("cell,TP53,EGFR\n" + "".join(f"c{i},1,{i % 3}\n" for i in range(120))).encode())
    shown = text(at.error).replace("\\", "")
    assert "cells120.csv has 120 cells, over the limit of 100." in shown and "SCATD_MAX_CELLS" in shown, shown
    assert state.ADATA not in at.session_state


def test_model_and_predict_pages_say_what_the_model_does_with_log_normalised_values(with_library):
    """QA: log-normalised values given to a log1p_cp10k model were said to be 'transformed twice'
    and were. The model un-logs them first; the Model page says so before, the Predict page
    after (the words the CLI prints), and neither warns of a second transform."""
    adata = make_dataset(60, seed=2)
    x = adata.X.toarray()
    adata.X = np.log1p(x * 1e4 / x.sum(axis=1, keepdims=True)).astype(np.float32)
    at = start()
    upload(at, "lognorm.h5ad", h5ad_bytes(adata))
    # QA: the tile read "log-norm…" at 1280 px (st.metric cuts a value wider than its quarter of the page)
    tile = next(m for m in at.metric if m.label == "Values")
    assert tile.value == "log" and len(tile.value) <= 8 and tile.delta == "log-normalised"
    # the totals of the un-logged values are all 10,000 but for float rounding: said under the QC
    # plots, which draw the one total (their axis read "10.000001k")
    said = [c.value.replace("\\", "") for c in at.caption]
    note = "Total counts is 10,000 in every cell (the values are normalised to this total)"
    assert len([c for c in said if note in c]) == 1, said  # QA: under the violins, not again under the scatter
    goto(at, "2_Model")
    assert "twice" not in text(at.warning), text(at.warning)
    from scatd_core.preprocess import UNLOG_NOTE

    assert ui.md(UNLOG_NOTE) in text(at.info)
    run_prediction(at)
    assert ui.md(UNLOG_NOTE) in text(at.info) and "twice" not in text(at.warning)


def test_the_qc_of_log_normalised_values_says_once_what_the_totals_mean(empty_library):
    """A log-normalised X (log1p of CP10k, no raw): the Data page said twice that the un-logged
    totals are the normalisation total and say nothing about a cell's quality: in the caption
    above the QC plots and again in the plots' note under the violins. Said once now (the note,
    with the total read from the data); the caption keeps what QC does with the values."""
    adata = make_dataset(60, seed=2)
    x = adata.X.toarray()
    adata.X = np.log1p(x * 1e4 / x.sum(axis=1, keepdims=True)).astype(np.float32)
    at = start()
    upload(at, "lognorm.h5ad", h5ad_bytes(adata))
    said = [str(e.value).replace("\\", "") for kind in ("caption", "markdown", "info", "warning")
            for e in getattr(at, kind)]
    assert len([t for t in said if "nothing about a cell's quality" in t]) == 1, said
    assert len([t for t in said if "normalised to" in t]) == 1, said
    assert len([t for t in said if "un-logged normalised values" in t]) == 1, said  # what QC does: kept
    assert [t for t in said if t.startswith("Total counts is 10,000 in every cell (the values are normalised")]
    assert [t for t in said if "no bound is suggested for total counts" in t.lower()], said


def test_z_scored_data_get_no_qc_metrics_or_filter(with_library):
    """Per-gene z-scores: every gene is 'detected' in every cell and the sums have no QC meaning, so
    the page says so instead of drawing flat violins and offering a filter on them."""
    adata = make_dataset(60, seed=2)
    x = np.log1p(adata.X.toarray())
    z = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1)
    at = start()
    upload(at, "z.csv", pd.DataFrame(z, index=adata.obs_names, columns=adata.var_names).to_csv().encode())
    assert metric(at, "Values") == "z-scored"  # in words, not the internal "zscored"
    assert "per-gene z-scores" in text(at.info) and "no QC metrics or filter" in text(at.info)
    assert not at.get("plotly_chart") and not [t for t in at.toggle if t.key == "qc_enabled"]
    counts = start()
    upload(counts, "counts.h5ad", h5ad_bytes(adata))  # counts: the metrics and the filter, as before
    assert len(counts.get("plotly_chart")) == 2 and [t for t in counts.toggle if t.key == "qc_enabled"]


def test_counts_beside_a_log_normalised_x_are_used_for_qc_and_the_model_and_the_matrix_can_be_chosen(with_library):
    """QA: the Data page's QC of a file with log-normalised X and layers['counts'] summed the log
    values ("not counts ... judge with care"), and Dist_VAE models ignored the counts. The page now
    computes QC from the counts and says so, lists the file's matrices and offers the choice; the
    Model page says which matrix the model reads, and why."""
    adata = make_dataset(60, seed=2)
    logged = adata.copy()
    x = adata.X.toarray()
    logged.X = np.log1p(x / np.maximum(x.sum(1, keepdims=True), 1) * 1e4).astype(np.float32)
    logged.layers["counts"] = adata.X.copy()

    def plain(elements):  # without the markdown escapes of brackets
        return text(elements).replace("\\", "")

    at = start()
    upload(at, "layer_counts.h5ad", h5ad_bytes(logged))
    assert metric(at, "Values") == "log"
    assert "Computed from the raw counts in layers['counts']" in plain(at.caption)
    assert "judge the thresholds with care" not in plain(at.caption)
    assert "layers['counts'] (counts, " in plain(at.markdown)
    choice = next(s for s in at.selectbox if s.label == "Matrix for the models")
    assert choice.options[0].startswith("auto") and len(choice.options) == 3
    goto(at, "2_Model")
    said = plain(at.caption)
    assert "The model reads layers['counts'] (counts, " in said and "chosen automatically" in said
    assert "taken from layers['counts']" in plain(at.info)
    goto(at, "1_Data")
    next(s for s in at.selectbox if s.label == "Matrix for the models").set_value("X").run()
    ok(at)
    goto(at, "2_Model")
    assert "The model reads X (log-normalised, " in plain(at.caption) and "as you chose" in plain(at.caption)


def test_qc_of_a_z_scored_x_reads_the_models_matrix_also_backed_and_chosen(with_library, monkeypatch):
    """QA r1: the Data page's QC must read the matrix the models read, not X's z-scores. Counts in
    adata.raw (also of a file read from disk in parts, backed): QC numbers are those of the counts. A
    z-scored X beside log-normalised values in adata.raw (no counts) had no QC at all, though the models
    read raw; a matrix chosen for the models was ignored by QC. The caption says which matrix."""
    from scatd_core.preprocess import qc_metrics

    adata = make_dataset(60, seed=2)
    x = adata.X.toarray()
    logged = np.log1p(x / np.maximum(x.sum(1, keepdims=True), 1) * 1e4).astype(np.float32)
    z = ((logged - logged.mean(0)) / np.where(logged.std(0) > 0, logged.std(0), 1)).astype(np.float32)
    scaled = ad.AnnData(X=z, obs=adata.obs.copy(), var=adata.var.copy())
    scaled.raw = adata.copy()  # the counts
    expected = qc_metrics(adata)
    assert expected["total_counts"].to_numpy() == pytest.approx(x.sum(1))

    def plain(elements):  # without the markdown escapes of brackets
        return text(elements).replace("\\", "")

    def shown(at):
        return at.session_state[state.QC_METRICS][1]

    monkeypatch.setattr("scatd_core.io._hdf5.BACKED_MIN_CELLS", 10)  # read from disk in parts
    at = start()
    upload(at, "scaled.h5ad", h5ad_bytes(scaled))
    assert at.session_state[state.ADATA].isbacked
    pd.testing.assert_frame_equal(shown(at), expected, check_dtype=False)
    assert "Computed from the raw counts in adata.raw (X holds z-scored values)." in plain(at.caption)
    assert len(at.get("plotly_chart")) == 2 and [t for t in at.toggle if t.key == "qc_enabled"]
    monkeypatch.undo()

    scaled.raw = ad.AnnData(X=logged, obs=adata.obs.copy(), var=adata.var.copy())  # log-normalised, no counts
    at = start()
    upload(at, "scaled_log.h5ad", h5ad_bytes(scaled))
    assert "no QC metrics or filter" not in text(at.info)
    of_logs = qc_metrics(ad.AnnData(X=logged, obs=adata.obs, var=adata.var))
    pd.testing.assert_frame_equal(shown(at), of_logs, check_dtype=False)
    assert "Computed from the log-normalised values in adata.raw (X holds z-scored values)." in plain(at.caption)
    assert "% mitochondrial is computed on the un-logged normalised values" in plain(at.caption)  # QA r1

    scaled.layers["counts"] = adata.X.copy()  # counts too: QC reads them, until raw is chosen for the models
    at = start()
    upload(at, "scaled_both.h5ad", h5ad_bytes(scaled))
    pd.testing.assert_frame_equal(shown(at), expected, check_dtype=False)
    at.toggle(key="qc_enabled").set_value(True).run()
    next(s for s in at.selectbox if s.label == "Matrix for the models").set_value("raw").run()
    ok(at)
    pd.testing.assert_frame_equal(shown(at), of_logs, check_dtype=False)
    assert "adata.raw (the matrix chosen for the models; X holds z-scored values)" in plain(at.caption)
    assert not at.toggle(key="qc_enabled").value  # bounds in counts mean nothing for log values: suggested again
    assert "scatd_qc_pass" not in at.session_state[state.ADATA].obs


def test_a_backed_files_raw_is_not_read_again_to_be_judged_on_each_rerun_of_the_data_page(with_library, monkeypatch):
    """QA: for a file read from disk (backed) whose adata.raw the models read, every rerun of the Data
    page judged raw again, reading ~500 cells from the file. Judged once per upload; a new upload is."""
    from scatd_core import preprocess

    adata = make_dataset(60, seed=2)
    x = adata.X.toarray()
    logged = np.log1p(x / np.maximum(x.sum(1, keepdims=True), 1) * 1e4).astype(np.float32)
    scaled = ad.AnnData(X=((logged - logged.mean(0)) / np.where(logged.std(0) > 0, logged.std(0), 1)).astype(
        np.float32), obs=adata.obs.copy(), var=adata.var.copy())
    scaled.raw = adata.copy()  # the counts: what the models and QC read
    judged = []
    real = preprocess.detect_value_type
    monkeypatch.setattr(preprocess, "detect_value_type", lambda m, **kw: judged.append(m.shape) or real(m, **kw))
    monkeypatch.setattr("scatd_core.io._hdf5.BACKED_MIN_CELLS", 10)  # read from disk in parts
    at = start()
    upload(at, "scaled.h5ad", h5ad_bytes(scaled))
    assert at.session_state[state.ADATA].isbacked and judged
    assert "Computed from the raw counts in adata.raw" in text(at.caption).replace("\\", "")
    judged.clear()
    at.run()  # a rerun (any widget)
    ok(at)
    goto(at, "1_Data")
    assert judged == [], judged
    upload(at, "scaled2.h5ad", h5ad_bytes(scaled))  # another upload is judged
    assert at.session_state[state.ADATA].isbacked and at.session_state[state.DATA_NAME] == "scaled2.h5ad"
    assert judged


def test_the_model_page_does_not_rank_z_scored_genes_by_expression(with_library):
    """QA on SCAD's z-scored CSVs: 'Most expressed data genes the model does not use' ranked them by mean
    z-score (B4GALT5 0.83, LCN2 0.80), which is not expression. For centred values the page says so and
    lists the genes by name, without means."""
    adata = make_dataset(60, seed=2)
    x = np.log1p(adata.X.toarray())
    x = np.hstack([x, np.random.default_rng(0).normal(size=(adata.n_obs, 2))])
    z = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1)
    z[:, -2] += 0.83
    at = start()
    upload(at, "z.csv", pd.DataFrame(z, index=adata.obs_names,
                                     columns=list(adata.var_names) + ["ZZ_EXTRA", "B4GALT5"]).to_csv().encode())
    goto(at, "2_Model")
    labels = [e.label for e in at.expander]
    assert "Data genes the model does not use" in labels and "Most expressed data genes the model does not use" \
        not in labels, labels
    assert "cannot tell which genes are most expressed" in text(at.caption)
    shown = next(d.value for d in at.dataframe if "gene" in d.value.columns)
    assert list(shown.columns) == ["gene"] and shown["gene"].tolist() == ["B4GALT5", "ZZ_EXTRA"]


def test_an_upload_is_read_from_the_sessions_folder_and_again_in_another_orientation(with_library, monkeypatch):
    """The server keeps an upload on disk, not in memory: once read, Streamlit's copy is let go
    (the uploader then gives None, as here after ``clear``) and a new orientation reads the file
    in the session's folder; a new upload replaces it there."""
    from scatd_app import session
    from scatd_core.config import work_dir

    released = []
    monkeypatch.setattr(session, "release_upload", lambda file_id: released.append(file_id) or True)
    adata = make_dataset(40, seed=1)
    frame = pd.DataFrame(adata.X.toarray(), index=adata.obs_names, columns=adata.var_names)
    at = start()
    upload(at, "cells.csv", frame.to_csv().encode())
    assert metric(at, "Cells") == "40" and metric(at, "Genes") == f"{adata.n_vars:,}"
    folder = work_dir() / "sessions" / at.session_state[session.SESSION_ID]
    files = list(folder.glob("scatd-upload-*/*"))
    assert [f.name for f in files] == ["upload.csv"] and files[0].read_bytes() == frame.to_csv().encode()
    # QA: the sessions' folders were 0755 (anyone on the server could list them): this account's only
    assert [oct(p.stat().st_mode & 0o777) for p in (folder.parent, folder, files[0].parent, files[0])] == \
        ["0o700", "0o700", "0o700", "0o600"]
    kept = at.session_state[state.UPLOAD]
    assert kept["path"] == str(files[0]) and kept["name"] == "cells.csv"
    assert released == [kept["id"]]  # read once, then Streamlit's in-memory copy is let go

    at.file_uploader[0].clear()
    at.run()
    ok(at)
    assert metric(at, "Cells") == "40"  # nothing read again, nothing lost
    at.radio(key="data_orientation").set_value("genes_x_cells")
    at.run()
    ok(at)
    assert metric(at, "Cells") == f"{adata.n_vars:,}" and metric(at, "Genes") == "40"  # read again, transposed
    assert at.session_state["data_upload"] == [kept["id"], "genes_x_cells", "genes_x_cells"]

    # choosing the orientation the data were read in (or one a 10x/loom file fixes) keeps them and
    # what was computed from them (QA: any click on the radio read the file again and started over)
    data = at.session_state[state.ADATA]
    data.uns["scatd_input"]["orientation_fixed"] = True
    at.radio(key="data_orientation").set_value("cells_x_genes").run()
    ok(at)
    assert at.session_state[state.ADATA] is data and metric(at, "Cells") == f"{adata.n_vars:,}"
    del data.uns["scatd_input"]["orientation_fixed"]
    at.radio(key="data_orientation").set_value("genes_x_cells").run()  # as read: nothing to do
    assert at.session_state[state.ADATA] is data
    # read with "detect", tried the orientation detected, back to "detect": the same reading (QA)
    at.radio(key="data_orientation").set_value("auto").run()
    read_by_detection = at.session_state[state.ADATA]
    assert read_by_detection is not data  # (it was read with "rows are genes": detect reads again)
    detected = read_by_detection.uns["scatd_input"]["orientation"]
    at.radio(key="data_orientation").set_value(detected).run()
    at.radio(key="data_orientation").set_value("auto").run()
    assert at.session_state[state.ADATA] is read_by_detection

    at.radio(key="data_orientation").set_value("auto")
    upload(at, "other.csv", frame.iloc[:25].to_csv().encode())
    assert metric(at, "Cells") == "25"
    files = list(folder.glob("scatd-upload-*/*"))
    assert len(files) == 1 and files[0].read_bytes() == frame.iloc[:25].to_csv().encode()  # the first is gone
    assert len(released) == 2


def _page_namespaces_alive() -> list[str]:
    """The pages whose last run's variables are still in memory (``gc`` after a collection).

    The app's start-up thread ends with ``gc.freeze()`` (``scatd_app.ui.start_up``), which hides
    every object existing then from ``gc.get_objects``; on a cold numba cache it may end during
    this test. So what is frozen is first given back to the collector (and frozen again after)."""
    import gc

    gc.unfreeze()
    gc.collect()
    pages = Path(APP).parent / "app_pages"
    return sorted({Path(o["__file__"]).stem for o in gc.get_objects()  # namespaces are plain dicts
                   if type(o) is dict and isinstance(o.get("__file__"), str)
                   and Path(o["__file__"]).resolve().parent == pages.resolve()})


def test_a_page_left_behind_keeps_nothing_in_memory(with_library):
    """Streamlit keeps a widget's callbacks and format functions in the session's state, keyed
    widgets' also after the user has gone to another page; a function defined in a page would
    keep that page's whole namespace alive: on the Data page the upload's bytes. Pages hand
    Streamlit detached functions (``ui.detached``), so once the user has moved on, no page but
    the current one has variables in memory, and no copy of the upload is left."""
    from streamlit.runtime.uploaded_file_manager import UploadedFile

    data = tumour_h5ad(N_CELLS, seed=7)
    at = start()
    upload(at, "tumour.h5ad", data)
    run_prediction(at)
    for page in ("4_Cells", "5_Biomarkers", "6_Report", "9_Panel", "7_Train", "8_Models", "1_Data", "2_Model"):
        goto(at, page)
    assert "Coverage is good" in text(at.success)
    import gc

    try:
        assert _page_namespaces_alive() in ([], ["2_Model"])
        assert not [o for o in gc.get_objects() if _is_upload_of(o, UploadedFile, len(data))]
    finally:
        gc.freeze()  # as the app's start-up left it


def _is_upload_of(obj, kind, size: int) -> bool:
    """Whether ``obj`` is an upload of ``size`` bytes; False for a weak proxy whose object is gone
    (``gc.get_objects`` can hold one, and ``isinstance`` on it raises ReferenceError)."""
    try:
        return isinstance(obj, kind) and obj.size == size
    except ReferenceError:
        return False


def test_pages_hand_streamlit_only_detached_functions():
    """Every function a page gives a widget (callback, format function, download data) is
    wrapped in ``ui.detached``, also on paths the walk above does not reach."""
    import ast

    found = []
    for path in sorted((Path(APP).parent / "app_pages").glob("*.py")):
        tree = ast.parse(path.read_text())
        defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}

        def bare(node) -> bool:
            return isinstance(node, ast.Lambda) or (isinstance(node, ast.Name) and node.id in defined)

        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            given = [k.value for k in call.keywords if k.arg in ("format_func", "on_change", "on_click", "data")]
            given += [e for k in call.keywords if k.arg == "args" and isinstance(k.value, ast.Tuple)
                      for e in k.value.elts]
            if getattr(call.func, "attr", None) == "download_button" and len(call.args) > 1:
                given.append(call.args[1])
            if getattr(call.func, "attr", None) == "data_download" and len(call.args) > 2:  # ui.data_download
                given.append(call.args[2])
            found += [f"{path.name}:{v.lineno}" for v in given if bare(v)]
    assert not found, found


def test_every_table_is_shown_through_ui_table_never_st_dataframe():
    """QA: Streamlit's own "Download as CSV" of an ``st.dataframe`` writes the table as it is, a
    cell named =HYPERLINK(...) unescaped. Pages and ``scatd_app`` show tables only through
    ``ui.table`` (spreadsheet-safe), the one place that calls ``dataframe``: that download and a
    copy of the cells are safe to open in a spreadsheet (both kept: a biologist copies gene lists)."""
    import ast

    root = Path(APP).parent
    found = []
    for path in sorted([root / "app.py", *(root / "app_pages").glob("*.py"), *(root / "scatd_app").glob("*.py")]):
        tree = ast.parse(path.read_text())

        def visit(node, function: str | None) -> None:
            for child in ast.iter_child_nodes(node):
                name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
                if isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute):
                    attr, owner = child.func.attr, getattr(child.func.value, "id", None)
                    shows = attr in ("dataframe", "data_editor") or (attr == "table" and owner == "st")
                    if shows and (path.relative_to(root).as_posix(), function) != ("scatd_app/ui.py", "table"):
                        found.append(f"{path.relative_to(root)}:{child.lineno} .{attr}(")
                visit(child, name)

        visit(tree, None)
    assert not found, found


def test_deferred_downloads_read_nothing_from_the_session():
    """QA: the app's report.html named the demo "demo_tumour.h5ad" where the CLI's says "demo
    (simulated data)": Streamlit makes a download's deferred data when it is clicked, in a thread
    without the script's context, where the session state reads empty. Pages read what such a
    function needs when they run and hand it the values (Report, Cells, Biomarkers, Panel...)."""
    import ast

    def reads_session(node) -> bool:
        return any((isinstance(n, ast.Name) and n.id == "ss") or (isinstance(n, ast.Attribute)
                                                                    and n.attr == "session_state")
                   for n in ast.walk(node))

    found = []
    for path in sorted((Path(APP).parent / "app_pages").glob("*.py")):
        tree = ast.parse(path.read_text())
        defined = {n.name: n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            if getattr(call.func, "attr", None) != "download_button":
                continue
            data = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "data"),
                                                                None)
            if isinstance(data, ast.Call) and getattr(data.func, "attr", None) == "detached" and data.args:
                data = data.args[0]
            todo, seen = [data], set()
            while todo:  # the deferred function, and the page's functions it calls
                node = todo.pop()
                if isinstance(node, ast.Name) and node.id in defined and node.id not in seen:
                    seen.add(node.id)
                    node = defined[node.id]
                if not isinstance(node, (ast.Lambda, ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                if reads_session(node):
                    found.append(f"{path.name}:{node.lineno}")
                todo += [n.func for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    assert not found, found


def test_detached_functions_hold_only_the_names_they_use():
    big = np.zeros(10)
    scope = {"__builtins__": __builtins__, "big": big, "other": object(), "np": np}
    exec("f = lambda k=2: [np.sum(big) * k for _ in range(1)]\nlate = lambda: later", scope)
    f = ui.detached(scope["f"])
    assert set(f.__globals__) == {"__builtins__", "big", "np"} and f() == [0.0] and f(k=3) == [0.0]
    late = ui.detached(scope["late"])
    scope["later"] = 1
    with pytest.raises(NameError):  # a name the page assigns after handing the function over
        late()
    with pytest.raises(TypeError):
        ui.detached(len)


def test_the_first_page_has_the_browser_load_the_later_pages_elements(empty_library):
    """The sidebar's script imports Streamlit's own modules of the elements the pages show
    (uploader, charts, tables...) while the user is on the first page; only names of files in
    the installed Streamlit's front end, nothing from the user."""
    import json
    import re

    import streamlit

    names = ui.element_modules()
    assert any(n.startswith("PlotlyChart.") for n in names) and any(n.startswith("FileUploader.") for n in names)
    folder = Path(streamlit.__file__).parent / "static" / "static" / "js"
    assert all((folder / n).is_file() and re.fullmatch(r"[A-Za-z]+\.[\w-]+\.js", n) for n in names)
    at = start()
    scripts = [h.value for h in at.sidebar.html]
    assert len(scripts) == 1 and json.dumps(list(names)) in scripts[0]
    upload(at, "tumour.h5ad", tumour_h5ad(30, seed=1))
    assert [h.value for h in at.sidebar.html] == scripts  # the same script on every page


def test_no_model_installed_says_how_to_get_one(empty_library):
    at = start()
    assert "No real drug model is installed" in text(at.info)
    upload(at, "tumour.h5ad", tumour_h5ad(30, seed=1))
    goto(at, "2_Model")
    assert "No drug model is installed" in text(at.warning)
    page = text(at.markdown)
    assert "figshare" in page and "Import a checkpoint" in page and "Train a model" in page
    goto(at, "3_Predict")
    assert "Choose a model first" in text(at.info)
    goto(at, "8_Models")
    assert "library is empty" in text(at.info)


def test_the_demo_model_is_never_chosen_for_real_data(empty_library):
    from _app_helpers import make_bundle

    make_bundle(empty_library / "DEMOTINIB_demo", make_dataset(60, seed=2), steps=2, demo=True)
    at = start()
    upload(at, "patients.h5ad", tumour_h5ad(40, seed=3))
    goto(at, "2_Model")
    assert "Only the demo model is installed" in text(at.warning)
    assert at.session_state.get(state.BUNDLE_PATH) is None
    goto(at, "9_Panel")  # QA: said "No drug model is installed yet" with the demo model installed
    assert "No drug model for your own data is installed yet: the demo models" in text(at.warning).replace("\\", "")
    goto(at, "3_Predict")
    assert "Choose a model first" in text(at.info)
    # the demo model chosen with the demo data is let go as soon as real data replace them, so the
    # sidebar never shows it beside real cells
    at.session_state[state.BUNDLE_PATH] = str(empty_library / "DEMOTINIB_demo")
    at.session_state[state.IS_DEMO] = True
    upload(at, "patients2.h5ad", tumour_h5ad(40, seed=4))
    assert at.session_state.get(state.BUNDLE_PATH) is None
    assert "no model chosen" in text(at.sidebar.markdown)


def test_removing_a_model_says_so_and_asks_again_for_the_next_one(empty_library):
    """QA: after "Remove" the success message was lost in the rerun and the confirmation box stayed
    ticked, so the next model in the list could be removed with one more click. The confirmation is
    now cleared after a removal and when another model is chosen, and the removal is said."""
    import shutil

    make_bundle(empty_library / "DRUGA_model", make_dataset(40, seed=2), steps=1)
    for name in ("DRUGB_model", "DRUGC_model"):
        shutil.copytree(empty_library / "DRUGA_model", empty_library / name)
    at = goto(start(), "8_Models")
    first = at.selectbox(key="models_remove_choice").value
    second = next(str(p) for p in sorted(empty_library.iterdir()) if p.is_dir() and str(p) != first)
    at.checkbox(key="models_remove_sure").check()
    at.run()
    at.selectbox(key="models_remove_choice").set_value(second)  # another model chosen: asked again
    at.run()
    assert at.checkbox(key="models_remove_sure").value is False and at.button(key="btn_remove_model").disabled

    at.checkbox(key="models_remove_sure").check()
    at.run()
    at.button(key="btn_remove_model").click()
    at.run()
    ok(at)
    assert not Path(second).exists()
    assert any(t.startswith("Removed ") and "from the library" in t for t in text(at.success).splitlines())
    assert at.checkbox(key="models_remove_sure").value is False and at.button(key="btn_remove_model").disabled
    assert len(at.selectbox(key="models_remove_choice").options) == 2
    at.run()  # said once
    assert "Removed " not in text(at.success)


def test_a_model_removed_by_someone_else_is_never_replaced_by_another_in_the_removal(empty_library):
    """QA (data loss): an admin chose model A and ticked the confirmation; another admin removed A
    before the click; the choice fell back to the first model B with the box still ticked, and
    "Remove" deleted B, never chosen. The tick is now for A only: nothing is removed and it is said."""
    import shutil

    make_bundle(empty_library / "DRUGA_model", make_dataset(40, seed=2), steps=1)
    for name in ("DRUGB_model", "DRUGC_model"):
        shutil.copytree(empty_library / "DRUGA_model", empty_library / name)
    at = goto(start(), "8_Models")
    options = at.selectbox(key="models_remove_choice").options
    first = at.selectbox(key="models_remove_choice").value
    chosen = next(str(p) for p in sorted(empty_library.iterdir()) if p.is_dir() and str(p) != first)
    at.selectbox(key="models_remove_choice").set_value(chosen)
    at.run()
    at.checkbox(key="models_remove_sure").check()
    at.run()
    assert not at.button(key="btn_remove_model").disabled
    shutil.rmtree(chosen)  # another admin removes it (`scatd models remove`, or the app)
    at.button(key="btn_remove_model").click()
    at.run()
    ok(at)
    left = sorted(str(p) for p in empty_library.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(left) == 2 and first in left  # nothing else removed
    said = text(at.warning).replace("\\", "")
    assert f"({Path(chosen).name}) is no longer in the library (removed by someone else); nothing was removed." in said
    assert len(options) == 3 and "Removed " not in text(at.success)
    assert at.checkbox(key="models_remove_sure").value is False and at.button(key="btn_remove_model").disabled
    at.run()  # said once
    assert "no longer in the library" not in text(at.warning)


def test_a_model_whose_weights_are_damaged_is_listed_as_broken_not_offered(empty_library):
    """QA: a model whose weights.safetensors was truncated (its manifest untouched) stayed on the
    Model library page and in the Model picker as usable ("Coverage is good") and failed only at
    Run prediction. The library now checks the weights' header, and notices a weights file changed
    after it was listed."""
    from _app_helpers import make_bundle

    folder = empty_library / "TESTDRUG_model"
    make_bundle(folder, make_dataset(40, seed=2), steps=1)
    at = start()
    upload(at, "cells.h5ad", tumour_h5ad(40, seed=3))
    goto(at, "2_Model")
    assert "No drug model is installed yet" not in text(at.warning)
    weights = folder / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])  # damaged after the library was listed
    goto(at, "2_Model")
    assert "No drug model is installed yet" in text(at.warning)
    problems = " ".join(str(p) for p in at.dataframe[0].value["problem"])
    assert "weights file weights.safetensors is truncated" in problems
    goto(at, "8_Models")
    assert "is truncated" in " ".join(str(v) for df in at.dataframe for v in df.value.get("problem", []))


def test_the_library_table_leaves_by_blank_where_nobody_is_recorded(tmp_path, monkeypatch):
    import json

    from _app_helpers import make_bundle
    from scatd_core.bundle import list_library

    from scatd_app import ui

    cells = make_dataset(40, seed=6)
    make_bundle(tmp_path / "demo_model", cells, steps=1, demo=True)
    mine = make_bundle(tmp_path / "mine", cells, steps=1, drug="MINE")
    manifest = json.loads((mine.path / "manifest.json").read_text())
    manifest["provenance"]["trained_by"] = "alice"
    (mine.path / "manifest.json").write_text(json.dumps(manifest))
    table = ui.library_frame(list_library(tmp_path))
    assert sorted(table["by"]) == ["", "alice"]  # the demo records nobody: blank, not "None"


def _made_by(bundle, **who) -> None:
    """Record ``trained_by=...`` or ``imported_by=...`` in ``bundle``'s provenance."""
    manifest = json.loads((bundle.path / "manifest.json").read_text())
    manifest["provenance"].update(who)
    (bundle.path / "manifest.json").write_text(json.dumps(manifest))


def test_which_models_may_be_chosen_for_a_user_before_they_choose(tmp_path):
    from scatd_core.bundle import Bundle, chosen_by_default_for

    def model(name="TESTDRUG · Dist_VAE", demo=False, **who) -> Bundle:
        return Bundle(tmp_path / "m", {"name": name, "demo": demo, "provenance": {"source": "test", **who}})

    alices, imported = model(trained_by="alice"), model(imported_by="alice")
    assert not chosen_by_default_for(alices, "bob") and not chosen_by_default_for(imported, "bob")
    assert chosen_by_default_for(alices, "alice") and chosen_by_default_for(imported, "alice")
    published = model("TESTDRUG · Dist_VAE (published scATD)", imported_by="alice")  # whoever installed it
    assert all(chosen_by_default_for(b, "bob") for b in (model(), model(demo=True), published))
    # a demo model alice trained on the simulated panel is hers, as any model she trained: not chosen for bob
    assert not chosen_by_default_for(model(demo=True, trained_by="alice"), "bob")
    assert chosen_by_default_for(model(demo=True, trained_by="alice"), "alice")
    assert chosen_by_default_for(alices, None)  # no login: one user, whose every model is
    # QA: a model the administrator installed with `scatd import-checkpoint` (as root) or trained with
    # `scatd train` was "another user's model" to every user: it is the lab's, made on the server's shell
    from scatd_core.bundle import who_made
    rooted = model(imported_by="root", via="command line")
    assert chosen_by_default_for(rooted, "bob") and who_made(rooted) == "imported with the server's command line by root"
    shell = Bundle(tmp_path / "m", {"name": "X", "provenance": {"source": "trained by scATD Studio (scatd train)",
                                                                 "trained_by": "root"}})
    assert chosen_by_default_for(shell, "bob")
    app_made = Bundle(tmp_path / "m", {"name": "X", "provenance": {"source": "trained by scATD Studio (the Train page)",
                                                                    "trained_by": "alice"}})
    assert not chosen_by_default_for(app_made, "bob")


def test_another_users_model_is_offered_but_never_chosen_for_you(tmp_path, monkeypatch):
    """QA: the library's only model, trained by alice, was chosen for bob (and predicted with, in the
    background) though he chose none. It is offered to him, said to be alice's, and used once he
    chooses it; without a login (one user) it is chosen as before."""
    from _app_helpers import make_bundle
    from scatd_core import users

    library = tmp_path / "library"
    alices = make_bundle(library / "ALICEDRUG_model", make_dataset(40, seed=2), steps=1, drug="ALICEDRUG")
    _made_by(alices, trained_by="alice")
    monkeypatch.setenv("SCATD_MODEL_LIBRARY", str(library))
    monkeypatch.setenv("SCATD_AUTH", "password")
    monkeypatch.setenv("SCATD_USERS_FILE", str(tmp_path / "users.toml"))
    monkeypatch.setenv("SCATD_WORK_DIR", str(tmp_path / "work"))
    users.add_user("bob", "a long enough password", admin=False)
    at = start()
    at.text_input(key="login_name").set_value("bob")
    at.text_input(key="login_password").set_value("a long enough password")
    at.get("form_submit_button")[0].click()
    at.run()
    upload(at, "tumour.h5ad", tumour_h5ad(40, seed=4))
    assert at.session_state.get(state.PREDICT_AHEAD) is None  # nothing predicted with alice's model for bob
    goto(at, "2_Model")
    assert at.session_state.get(state.BUNDLE_PATH) is None
    said = text(at.info)
    assert "Nothing is chosen for you here" in said and "trained by alice" in said and "ALICEDRUG" in said, said
    goto(at, "3_Predict")
    assert "Choose a model first" in text(at.info)
    goto(at, "2_Model")
    at.selectbox(key="model_bundle").set_value(str(alices.path)).run()
    ok(at)
    assert at.session_state[state.BUNDLE_PATH] == str(alices.path)
    _settled(*filter(None, [at.session_state.get(state.PREDICT_AHEAD)]))
    # no login: the person at the machine is the only user, whose every model is (chosen as before)
    monkeypatch.setenv("SCATD_AUTH", "none")
    assert ui.model_user() is None and ui.default_model([alices]) == str(alices.path)


def _z_scored(adata: ad.AnnData) -> ad.AnnData:
    """``adata`` with X log-normalised and z-scored per gene (as SCAD's CSVs hold it)."""
    x = np.asarray(adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X, dtype=np.float64)
    x = np.log1p(x / np.maximum(x.sum(axis=1, keepdims=True), 1) * 1e4)
    sd = x.std(axis=0)
    out = adata.copy()
    out.X = ((x - x.mean(axis=0)) / np.where(sd > 0, sd, 1)).astype(np.float32)
    return out


def _as_is_bundle(folder: Path, genes, drug: str = "ASIS"):
    """An untrained Dist_VAE bundle over ``genes`` that takes the values as they are (input transform none)."""
    from scatd_core.bundle import save_bundle
    from scatd_core.nn import build_model
    from scatd_core.nn.models import Architecture

    arch = Architecture("dist_vae", [len(genes), 16], 8, None, 4, 2)
    torch.manual_seed(0)
    return save_bundle(folder, build_model(arch).state_dict(), arch, drug=drug, genes=[str(g) for g in genes],
                       input_transform="none", threshold=0.5, provenance={"source": "tests (untrained)"})


def test_the_model_chosen_by_default_can_score_the_data(tmp_path, monkeypatch):
    """QA (first hour): with z-scored data the Model page chose a model whose input is log1p of counts
    (no cell can be scored: negative values) over one that takes the values as they are. The default
    is now the model that can score the data, then the one with more of its genes in the data."""
    monkeypatch.setenv("SCATD_MODEL_LIBRARY", str(tmp_path / "library"))
    data = _z_scored(make_dataset(120, seed=3))
    make_bundle(tmp_path / "library" / "a_log1p", make_dataset(120, seed=3), steps=1, drug="LOGDRUG")  # listed first
    _as_is_bundle(tmp_path / "library" / "b_as_is", data.var_names)
    at = start()
    upload(at, "scad.h5ad", h5ad_bytes(data))
    goto(at, "2_Model")
    assert Path(at.session_state[state.BUNDLE_PATH]).name == "b_as_is"


def test_the_model_page_judges_each_model_once_for_its_default(tmp_path, monkeypatch):
    """QA: the Model page judged every model against the data (inputs.fit_for_data: value type, gene
    matching) each time it chose a default: twice on a visit (for the backbone, then for the model). It
    is kept in the session (see the next test): each model is judged once."""
    from scatd_core import inputs

    monkeypatch.setenv("SCATD_MODEL_LIBRARY", str(tmp_path / "library"))
    data = _z_scored(make_dataset(120, seed=3))
    make_bundle(tmp_path / "library" / "a_log1p", make_dataset(120, seed=3), steps=1, drug="LOGDRUG")
    _as_is_bundle(tmp_path / "library" / "b_as_is", data.var_names)
    judged = []
    real = inputs.fit_for_data
    monkeypatch.setattr(inputs, "fit_for_data", lambda adata, bundle: judged.append(bundle.path.name)
                        or real(adata, bundle))
    at = start()
    upload(at, "scad.h5ad", h5ad_bytes(data))
    goto(at, "2_Model")
    assert sorted(judged) == ["a_log1p", "b_as_is"]  # each model once
    assert Path(at.session_state[state.BUNDLE_PATH]).name == "b_as_is"
    at.run()  # a rerun (a click)
    ok(at)
    assert len(judged) == 2


def test_the_default_models_ranking_is_kept_per_upload_and_library(tmp_path, monkeypatch):
    """The fit of each model to the session's data is kept per (upload, library as it stands): asked
    again, the default is not judged again; a new upload, or a model added to the library, is (and a
    better model added becomes the default). Data other than the session's are judged each time."""
    import streamlit as st

    from scatd_core import inputs
    from scatd_core.bundle import load_bundle

    monkeypatch.setenv("SCATD_MODEL_LIBRARY", str(tmp_path / "library"))
    counts = make_dataset(60, seed=1)
    genes = list(counts.var_names)
    data = _z_scored(counts)
    half_genes = genes[: len(genes) // 2] + [f"NOTINDATA{i}" for i in range(len(genes) // 2)]
    log_model = load_bundle(make_bundle(tmp_path / "library" / "log", counts, steps=1).path)
    half = load_bundle(_as_is_bundle(tmp_path / "library" / "half", half_genes).path)
    judged = []
    real = inputs.fit_for_data
    monkeypatch.setattr(inputs, "fit_for_data", lambda adata, bundle: judged.append(bundle.path.name)
                        or real(adata, bundle))
    session = {state.ADATA: data, state.DATA_TOKEN: "upload-1"}
    monkeypatch.setattr(st, "session_state", session)
    assert ui.default_model([log_model, half], data) == str(half.path)
    assert ui.default_model([log_model, half], data) == str(half.path)  # asked again (a rerun)
    assert sorted(judged) == ["half", "log"]  # judged once
    whole = load_bundle(_as_is_bundle(tmp_path / "library" / "whole", genes).path)  # a better model, added
    assert ui.default_model([log_model, half, whole], data) == str(whole.path)
    assert sorted(judged[2:]) == ["half", "log", "whole"]  # the library changed: all judged again
    session[state.DATA_TOKEN] = "upload-2"  # a new upload
    ui.default_model([log_model, half, whole], data)
    assert len(judged) == 8
    assert ui.default_model([half, log_model], counts) == str(log_model.path)  # not the session's data
    assert len(judged) == 10


def test_models_are_ranked_by_whether_they_can_score_the_data_then_by_coverage(tmp_path):
    from scatd_core.bundle import load_bundle
    from scatd_core.inputs import fit_for_data

    counts = make_dataset(60, seed=1)
    genes = list(counts.var_names)
    log_model = load_bundle(make_bundle(tmp_path / "log", counts, steps=1).path)
    absent = [f"NOTINDATA{i}" for i in range(len(genes) // 2)]  # half its genes are not in the data
    half, whole = (load_bundle(_as_is_bundle(tmp_path / n, g).path)
                   for n, g in (("half", genes[:len(absent)] + absent), ("all", genes)))
    z = _z_scored(counts)
    assert fit_for_data(z, log_model) == (0, 1.0)  # log1p of negative values: nothing scored
    assert fit_for_data(z, whole) == (1, 1.0) and fit_for_data(z, half) == (1, pytest.approx(0.5, abs=0.01))
    assert fit_for_data(counts, log_model) == (2, 1.0)  # counts: what it takes
    assert ui.default_model([log_model, half, whole], z) == str(whole.path)
    assert ui.default_model([log_model, half], z) == str(half.path)  # less coverage, but it scores
    assert ui.default_model([half, log_model], counts) == str(log_model.path)
    assert ui.default_model([log_model, half, whole]) == str(log_model.path)  # no data: the first, as before


def test_a_model_below_the_minimum_gene_coverage_is_never_chosen_by_default(tmp_path, monkeypatch):
    from scatd_core.bundle import load_bundle

    counts = make_dataset(60, seed=1)
    genes = list(counts.var_names)
    few = load_bundle(_as_is_bundle(tmp_path / "few", genes[:5] + [f"NOTINDATA{i}" for i in range(95)]).path)
    whole = load_bundle(_as_is_bundle(tmp_path / "all", genes).path)
    assert ui.default_model([few], counts) is None  # 5% of its genes: refused, so the user chooses
    assert ui.default_model([few, whole], counts) == str(whole.path)
    monkeypatch.setenv("SCATD_MIN_GENE_COVERAGE", "0.01")  # the server's setting
    assert ui.default_model([few], counts) == str(few.path)


def test_a_foundation_model_is_chosen_by_default_only_when_it_takes_the_embeddings_width(tmp_path):
    """QA: with a 3,072-wide .npy (scFoundation) the Model page chose a VAE_gf model (512-d): every
    VAE_sf/VAE_gf model ranked alike. A model whose input width is not the embeddings' now ranks
    below one that takes them; a width no model takes is named by the foundation model that gives it."""
    from scatd_core.bundle import import_checkpoint, load_bundle
    from scatd_core.inputs import InputSpec, embedding_width_error, fit_for_data
    from scatd_core.io import read

    def vae(backbone, width, seed):
        enc = {"vae_sf": [width, 40, 24], "vae_gf": [width, 30, 20, 14]}[backbone]
        torch.save(orig.dal_checkpoint(backbone, enc, 10, seed=seed), tmp_path / f"{backbone}.pth")
        np.save(tmp_path / f"{backbone}_ref.npy", np.random.default_rng(seed).normal(size=(40, width)))
        return load_bundle(import_checkpoint(tmp_path / f"{backbone}.pth", backbone, drug="TESTDRUG",
                                             out=tmp_path / f"b_{backbone}",
                                             style_reference=tmp_path / f"{backbone}_ref.npy").path)

    sf, gf = vae("vae_sf", 96, 0), vae("vae_gf", 48, 1)
    rng = np.random.default_rng(0)
    for width, fits in ((96, sf), (48, gf)):
        np.save(tmp_path / f"emb{width}.npy", rng.normal(size=(30, width)).astype(np.float32))
        data = read(tmp_path / f"emb{width}.npy")
        other = gf if fits is sf else sf
        assert fit_for_data(data, other) == (0, 0.0) and fit_for_data(data, fits)[0] > 0
        assert ui.default_model([other, fits], data) == str(fits.path)  # whichever is listed first
    # 768-d embeddings, which no model here takes: the message says which foundation model gives them
    np.save(tmp_path / "emb768.npy", rng.normal(size=(30, 768)).astype(np.float32))
    error = embedding_width_error(read(tmp_path / "emb768.npy"), InputSpec.of(gf))
    assert "768 is the width of Geneformer cell embeddings of Geneformer-V2-104M (12 layers)" in error.message
    assert "takes 48-d Geneformer cell embeddings, but the data has 768 features" in error.message
    assert "Only a model trained on 768-d embeddings takes these" in error.app_hint


def test_low_and_zero_gene_coverage(with_library):
    adata = make_dataset(N_CELLS, seed=4)
    low = adata[:, :300].copy()  # 300 of the model's 1,900 genes
    at = start()
    upload(at, "subset.h5ad", h5ad_bytes(low))
    goto(at, "2_Model")
    assert "Low gene coverage" in text(at.warning)
    run_prediction(at)
    assert "of the model's genes are in the data" in text(at.warning)  # predict's own warning

    renamed = adata.copy()
    renamed.var_names = [f"ENSG{i:011d}" for i in range(renamed.n_vars)]
    at = start()
    upload(at, "ensembl.h5ad", h5ad_bytes(renamed))
    goto(at, "2_Model")
    assert at.selectbox(key="model_bundle").value is None  # no gene matches: not chosen for the user
    at.selectbox(key="model_bundle").set_value(at.selectbox(key="model_bundle").options[0]).run()
    assert "None of the" in text(at.error) and "Ensembl" in text(at.error)
    goto(at, "3_Predict")
    at.button(key="btn_run_predict").click().run()
    assert "None of the" in text(at.error) and not at.exception  # no traceback


def test_too_few_model_genes_are_refused_never_chosen_nor_run_ahead(with_library):
    """QA: mouse symbols matched 2 of a model's 2,932 genes; the Model page chose that model (most genes
    matched), showed Coverage 0.1%, and the prediction had already been computed in the background. Below
    the minimum the model is not chosen for the user, nothing runs ahead, and the page and Predict refuse."""
    few = make_dataset(N_CELLS, seed=4)[:, :50].copy()  # 50 of the model's 1,900 genes (2.6%)
    at = start()
    upload(at, "few.h5ad", h5ad_bytes(few))
    assert at.session_state.get(state.PREDICT_AHEAD) is None  # the only model: not settled, not run ahead
    goto(at, "2_Model")
    assert at.selectbox(key="model_bundle").value is None and "Choose the drug model" in text(at.info)
    at.selectbox(key="model_bundle").set_value(at.selectbox(key="model_bundle").options[0]).run()
    ok(at)
    shown = text(at.error).replace("\\", "")
    assert "Too few of the model's genes are in the data to predict: only 50 of the model's 1,900 genes (2.6%)" \
        in shown and "limits.min_gene_coverage" in shown
    assert "give the full gene matrix" not in shown  # the app's words ("upload"), not the command line's
    assert metric(at, "Coverage") == "2.6%" and not at.success
    assert at.session_state.get(state.PREDICT_AHEAD) is None
    goto(at, "3_Predict")
    at.button(key="btn_run_predict").click().run()
    assert "Too few of the model's genes" in text(at.error) and not at.exception


def test_unlabelled_and_single_class_data(with_library):
    adata = make_dataset(N_CELLS, seed=5)
    unlabelled = adata.copy()
    del unlabelled.obs["response"]
    at = start()
    upload(at, "unlabelled.h5ad", h5ad_bytes(unlabelled))
    assert at.session_state[state.LABEL_COLUMN] is None
    # 'none' is the value and what the selector shows (Streamlit shows the placeholder for None)
    assert at.selectbox(key=state.LABEL_COLUMN).proto.placeholder == "none (unlabelled data)"
    run_prediction(at)
    goto(at, "4_Cells")
    assert "No label column is chosen" in text(at.info)
    goto(at, "6_Report")
    assert len(at.get("download_button")) == 4

    one_class = adata.copy()
    one_class.obs["response"] = "resistant"
    one_class.obs["response_binary"] = np.where(np.arange(N_CELLS) % 2, "resistant", "sensitive")
    at = start()
    upload(at, "oneclass.h5ad", h5ad_bytes(one_class))
    at.selectbox(key=state.LABEL_COLUMN).set_value("response").run()
    assert "holds 1 values" in text(at.warning)
    run_prediction(at)
    goto(at, "4_Cells")
    assert "need cells of exactly two classes" in text(at.info)


def test_monte_carlo_mode_adds_uncertainty(with_library):
    at = start()
    upload(at, "tumour.h5ad", tumour_h5ad(60, seed=6))
    goto(at, "2_Model")
    goto(at, "3_Predict")
    at.radio(key="predict_mode").set_value("sample").run()
    at.slider(key="predict_samples").set_value(10).run()
    at.button(key="btn_run_predict").click().run()
    ok(at)
    result = at.session_state[state.ADATA]
    assert "scatd_prob_resistant_sd" in result.obs and result.uns["scatd"]["params"]["n_samples"] == 10
    goto(at, "4_Cells")
    assert "uncertainty (sd of P)" in at.selectbox(key="cells_colour").options


def test_a_finished_prediction_leaves_no_cancel_button(with_library):
    at = start()
    upload(at, "tumour.h5ad", tumour_h5ad(40, seed=8))
    run_prediction(at)
    assert "btn_cancel_predict" not in [b.key for b in at.button]
    assert state.PREDICT_RUNNING not in at.session_state or not at.session_state[state.PREDICT_RUNNING]


def test_interrupted_run_is_reported(with_library):
    at = start()
    upload(at, "tumour.h5ad", tumour_h5ad(40, seed=8))
    goto(at, "2_Model")
    at.session_state[state.PREDICT_RUNNING] = True
    goto(at, "3_Predict")
    assert "stopped before it finished" in text(at.info)


def test_cells_colour_choice_is_there_before_the_umap_and_survives_its_failure(with_library, monkeypatch):
    from scatd_core import embed
    from scatd_core.errors import InputError

    def fail(*args, **kwargs):
        raise InputError("The UMAP could not be computed (test).", "Try the expression space.")

    monkeypatch.setattr(embed, "compute_embedding", fail)
    at = start()
    upload(at, "tumour.h5ad", tumour_h5ad(N_CELLS, seed=3))
    run_prediction(at)
    goto(at, "4_Cells")
    assert "The UMAP could not be computed (test)." in text(at.error).replace("\\", "")  # markdown-escaped
    colour = at.selectbox(key="cells_colour")
    assert colour.options[:3] == ["P(resistant)", "called label", "Leiden cluster"] and "response" in colour.options
    colour.set_value("Leiden cluster").run()
    ok(at)  # no clusters to colour by: nothing breaks, the error stays
    assert "The UMAP could not be computed (test)." in text(at.error).replace("\\", "")  # markdown-escaped
    assert not at.get("plotly_chart") or all("UMAP" not in str(c.proto) for c in at.get("plotly_chart"))


def test_too_few_cells_for_a_umap_is_said_as_information_not_an_error(with_library):
    """QA: on 2-4 cells the Cells page showed the UMAP's refusal as an error and the Report page
    said "open the Cells page first to include the UMAP and clusters", which could never happen.
    Now the Cells page says why there is none (no error) and the Report page says so too."""
    at = start()
    upload(at, "three.h5ad", h5ad_bytes(make_dataset(40, seed=8)[:3].copy()))
    run_prediction(at)
    goto(at, "4_Cells")
    assert not at.error, text(at.error)
    said = text(at.info).replace("\\", "")
    assert "No UMAP or Leiden clusters: The data hold 3 cells" in said and "do not need them" in said
    assert state.EMBEDDING_PENDING not in at.session_state or at.session_state[state.EMBEDDING_PENDING] is None
    goto(at, "6_Report")
    captions = text(at.caption)
    assert "no UMAP or clusters: too few cells" in captions and "open the Cells page first" not in captions


def test_the_report_pages_link_to_the_biomarkers_is_full_width_not_cut(with_library):
    """QA at a 1400 px window: the link beside the disabled biomarkers.csv button was cut to "Compute
    biomarkers fi" in its fifth-of-the-page column. The column says briefly why the button is off; the
    link is under the downloads, full width."""
    at = start()
    upload(at, "cells.h5ad", tumour_h5ad(40, seed=8))
    run_prediction(at)
    goto(at, "6_Report")
    biomarkers_column = at.columns[2]
    assert "not computed yet" in text(biomarkers_column.caption)
    assert not biomarkers_column.get("page_link")  # nothing there to cut
    links = [link for link in at.get("page_link") if "Compute the biomarkers" in link.label]
    assert len(links) == 1 and "biomarkers.csv" in links[0].label
    assert not any("Compute the biomarkers" in link.label for column in at.columns for link in column.get("page_link"))


def test_pages_without_data_point_to_the_step(with_library):
    at = start()
    goto(at, "3_Predict")
    assert "Upload a dataset first" in text(at.info)
    for page in ("4_Cells", "6_Report"):
        goto(at, page)
        assert "Run a prediction first" in text(at.info)


def _dist_vae_import_folder(tmp_path, monkeypatch):
    """The administrator's import folder with a small Dist_VAE classifier (drug.pth) and its genes."""
    enc, z = [30, 16, 8], 6
    folder = tmp_path / "import"
    folder.mkdir()
    torch.save(orig.dal_checkpoint("dist_vae", enc, z, seed=1), folder / "drug.pth")
    (folder / "genes.txt").write_text("\n".join(f"G{i}" for i in range(enc[0])) + "\n")
    monkeypatch.setenv("SCATD_IMPORT_FOLDER", str(folder))
    return folder


def test_import_checkpoint_page(empty_library, tmp_path, monkeypatch):
    folder = _dist_vae_import_folder(tmp_path, monkeypatch)

    at = start()
    goto(at, "8_Models")
    assert not [t for t in at.text_input if "path" in t.label.lower()]  # no browser field becomes a server path
    at.selectbox(key="import_from_folder").set_value("drug.pth")
    at.text_input(key="import_drug").set_value("Gefitinib")
    at.selectbox(key="import_side_from_folder").set_value("genes.txt")
    at.get("form_submit_button")[0].click()
    at.run()
    assert not at.exception and "Imported" in text(at.success), text(at.error)
    manifest = empty_library / "Gefitinib_dist_vae" / "manifest.json"
    assert manifest.is_file() and '"imported_by"' in manifest.read_text()
    before = manifest.read_bytes()
    at.get("form_submit_button")[0].click()  # the same name again: refused, nothing replaced
    at.run()
    assert "already exists" in text(at.error) and manifest.read_bytes() == before

    at.selectbox(key="import_from_folder").set_value(None)
    at.file_uploader(key="upload_pth").upload("bad.pth", b"not a checkpoint")
    at.text_input(key="import_drug").set_value("Other")
    at.get("form_submit_button")[0].click()
    at.run()
    assert "bad.pth is not a readable PyTorch checkpoint" in text(at.error) and not at.exception  # its own name

    # an uploaded checkpoint: once imported, Streamlit's in-memory copy is let go (not after a failure)
    from scatd_app import session

    released = []
    monkeypatch.setattr(session, "release_upload", lambda file_id: released.append(file_id) or True)
    at.get("form_submit_button")[0].click()
    at.run()
    assert "not a readable PyTorch checkpoint" in text(at.error) and released == []
    at.file_uploader(key="upload_pth").upload("drug.pth", (folder / "drug.pth").read_bytes())
    at.get("form_submit_button")[0].click()
    at.run()
    assert not at.exception and "Imported" in text(at.success), text(at.error)
    assert (empty_library / "Other_dist_vae" / "manifest.json").is_file() and len(released) == 1
    from scatd_core.bundle import load_bundle

    assert load_bundle(empty_library / "Other_dist_vae").manifest["provenance"]["source_file"] == "drug.pth"


def test_replace_a_model_of_the_same_name_replaces_the_one_that_differs_only_by_case(empty_library, tmp_path,
                                                                                     monkeypatch):
    """QA: with Cisplatin_demo in the library, importing 'cisplatin_demo' was refused naming Cisplatin_demo (one
    folder on a macOS or Windows disk), but 'Replace a model of the same name' then made a second folder
    cisplatin_demo beside it. Replace replaces the model named in the refusal, in its folder."""
    _dist_vae_import_folder(tmp_path, monkeypatch)
    at = start()
    goto(at, "8_Models")
    at.selectbox(key="import_from_folder").set_value("drug.pth")
    at.selectbox(key="import_side_from_folder").set_value("genes.txt")
    at.text_input(key="import_drug").set_value("Cisplatin")
    at.text_input(key="import_name").set_value("Cisplatin_demo")
    at.get("form_submit_button")[0].click()
    at.run()
    assert not at.exception and "Imported" in text(at.success), text(at.error)
    at.text_input(key="import_drug").set_value("CISPLATIN")
    at.text_input(key="import_name").set_value("cisplatin_demo")
    at.get("form_submit_button")[0].click()
    at.run()
    assert "Cisplatin_demo" in text(at.error).replace("\\", "")  # the clash, by its folder
    at.checkbox(key="import_replace").check()
    at.get("form_submit_button")[0].click()
    at.run()
    assert not at.exception and "Imported" in text(at.success), text(at.error)
    assert "It replaced the model Cisplatin_demo there" in text(at.success).replace("\\", "")  # which one it was
    assert sorted(p.name for p in empty_library.iterdir() if not p.name.startswith(".")) == ["Cisplatin_demo"]
    from scatd_core.bundle import load_bundle

    replaced = load_bundle(empty_library / "Cisplatin_demo")
    assert replaced.name == "cisplatin_demo" and replaced.drug == "CISPLATIN"


def test_a_checkpoint_of_another_backbone_says_what_to_choose_on_the_form(empty_library, tmp_path, monkeypatch):
    """QA: a VAE_sf checkpoint imported as Dist_VAE said "Import it with --backbone vae_sf" on the
    page, a flag of the CLI; the page names its own Backbone choice."""
    folder = _dist_vae_import_folder(tmp_path, monkeypatch)
    enc, z = [30, 16, 8], 6
    torch.save(orig.dal_checkpoint("vae_sf", enc, z, seed=1), folder / "sf.pth")
    at = start()
    goto(at, "8_Models")
    at.selectbox(key="import_from_folder").set_value("sf.pth")
    at.text_input(key="import_drug").set_value("Gefitinib")
    at.get("form_submit_button")[0].click()
    at.run()
    shown = text(at.error).replace("\\", "")  # markdown escapes out
    assert "This is a vae_sf checkpoint" in shown and "--backbone" not in shown, shown
    assert "Choose Backbone: VAE_sf (scATD-sf) on the import form" in shown, shown


@pytest.mark.parametrize("admin", [False, True])
def test_foundation_probe_shows_server_paths_to_administrators_only(admin, tmp_path, monkeypatch):
    """The Model page's check of the foundation models names the folders it looked in: an
    ordinary user of a lab server sees them by name, not the server's paths (the threat model:
    nothing of the server's layout for users); an administrator sees where to put the files."""
    folder = tmp_path / "srv" / "models" / "scfoundation"
    monkeypatch.setenv("SCATD_SCFOUNDATION_DIR", str(folder))
    monkeypatch.setenv("SCATD_TEST_ADMIN", "1" if admin else "")
    at = AppTest.from_function(_probe_page)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    shown = text(at.warning) + text(at.markdown)
    assert "scfoundation" in shown and "not ready" in shown
    assert ("/srv/models/scfoundation" in shown) == admin and ("pytest-of" in shown) == admin, shown


def _probe_page():
    import os

    import streamlit as st

    from scatd_app import auth, ui
    from scatd_core import foundation
    from scatd_core.users import User

    st.session_state[auth.USER] = User("someone", admin=bool(os.environ.get("SCATD_TEST_ADMIN")))
    ui.show_probe(foundation.probe("vae_sf").to_dict())


def test_show_error_never_shows_a_traceback():
    at = AppTest.from_function(_errors_page)
    at.run()
    shown = text(at.error)
    assert "**Bad thing.**" in shown and "Do this." in shown
    assert "unexpected" in shown and "Traceback" not in shown
    assert not at.exception


def _errors_page():
    from scatd_app import ui
    from scatd_core.errors import InputError

    ui.show_error(InputError("Bad thing.", "Do this."))
    ui.show_error(KeyError("x"))


def test_an_unexpected_error_shown_to_a_user_is_in_the_server_log_with_its_traceback(caplog):
    """QA (admin): "Something unexpected went wrong" reached the user, and nothing of it the server's log
    (journalctl), so the administrator had no traceback to find. A user's own mistake (ScatdError) and a
    kept copy shown again (no traceback) are not logged."""
    import logging

    from scatd_app import ui
    from scatd_core.errors import InputError

    def fail():
        return {}["missing key"]

    try:
        fail()
    except KeyError as exc:
        caught = exc
    with caplog.at_level(logging.ERROR, logger="scatd"):
        ui.show_error(caught)
        ui.show_error(ui.error_copy(caught))
        try:
            raise InputError("Bad thing.", "Do this.")
        except InputError as exc:
            ui.show_error(exc)
    (record,) = [r for r in caplog.records if r.name == "scatd"]
    assert "unexpected error shown to a user: KeyError" in record.getMessage()
    assert "in fail" in caplog.text and "Traceback" in caplog.text


def test_upload_limit_comes_from_configuration(with_library, monkeypatch):
    from streamlit import config

    monkeypatch.setenv("SCATD_MAX_UPLOAD_MB", "123")
    at = start()
    assert config.get_option("server.maxUploadSize") == 123  # what the server enforces
    goto(at, "1_Data")
    assert "Up to 123 MB per file" in text(at.caption)
    # the administrator may have set it in the configuration file or the environment: both are named
    assert "limits.max_upload_mb in the configuration file, or SCATD_MAX_UPLOAD_MB" in text(at.caption)
    assert at.file_uploader[0].proto.max_upload_size_mb == 123  # what the widget enforces


def test_demo_button_loads_the_demo_and_its_model(with_library, monkeypatch):
    from scatd_core import demo

    built = []  # the build runs in the server's thread (ui.shared_build), then the page reads the demo
    monkeypatch.setattr(demo, "ensure", lambda library=None, progress=None: (progress(0.5, "building"),
                                                                           built.append(1))[1])
    monkeypatch.setattr(demo, "load_data", lambda progress=None: make_dataset(50, seed=9))
    monkeypatch.setattr(demo, "bundle_path", lambda library=None: with_library / BUNDLE_FOLDER)
    at = start()
    goto(at, "1_Data")
    at.button(key="btn_demo").click().run()
    ok(at)
    assert at.session_state[state.DATA_NAME] == "demo (simulated data)" and metric(at, "Cells") == "50"
    assert at.session_state[state.BUNDLE_PATH] == str(with_library / BUNDLE_FOLDER) and built == [1]
    # the Report page's heading names the demo once, though the data's and the model's names both carry it
    run_prediction(at)
    at.session_state[state.ADATA].uns["scatd"]["model"]["name"] = "DEMOTINIB · demo (simulated data)"
    goto(at, "6_Report")
    heading = next(m.value for m in at.markdown if "· model" in m.value).replace("\\", "")  # markdown escapes
    assert heading.count("demo (simulated data)") == 1 and "DEMOTINIB" in heading
    # QA: the sidebar's progress never ticked "Report": it does once the page is opened with these results
    progress = next(m.value for m in at.sidebar.markdown if "Biomarkers" in m.value)
    assert "**Report ✓**" in progress and "**Predict ✓**" in progress


def test_the_data_page_follows_a_demo_build_left_at_once_and_loads_the_demo(with_library, monkeypatch):
    """QA: "Try the demo" then another page at once: the Data page said only "No data yet" while the
    demo's build went on, and did not load the demo when it finished (until the button was clicked
    again). The click's wish is kept: the Data page follows the build and loads the demo."""
    import threading

    from scatd_core import demo

    release = threading.Event()
    monkeypatch.setattr(ui, "_BUILDS", {})
    monkeypatch.setattr(demo, "ensure", lambda library=None, progress=None: release.wait(30))
    monkeypatch.setattr(demo, "load_data", lambda progress=None: make_dataset(50, seed=9))
    monkeypatch.setattr(demo, "bundle_path", lambda library=None: with_library / BUNDLE_FOLDER)

    class Left:  # the click's page run, stopped by the page change at its first progress report
        def progress(self, *args, **kwargs):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ui.shared_build("demo", lambda report: demo.ensure(progress=report), Left(), "the demo", poll_seconds=0.05)
    assert ui.building("demo")
    at = start()
    at.session_state[state.DEMO_WANTED] = True  # as the click's callback left it
    threading.Timer(1.0, release.set).start()  # the build ends while the Data page shows it
    goto(at, "1_Data")
    assert at.session_state[state.DATA_NAME] == "demo (simulated data)" and metric(at, "Cells") == "50"
    assert "No data yet" not in text(at.info) and state.DEMO_WANTED not in at.session_state
    assert at.session_state[state.BUNDLE_PATH] == str(with_library / BUNDLE_FOLDER)


def test_the_demo_button_says_a_cell_limit_below_the_demo_before_any_build(with_library, monkeypatch):
    """QA: with limits.max_cells = 1,500 the demo (2,000 cells) was refused only after its long build:
    the button is disabled and says why, naming the setting, before anything is built."""
    monkeypatch.setenv("SCATD_MAX_CELLS", "1500")
    at = start()
    goto(at, "1_Data")
    button = at.button(key="btn_demo")
    assert button.disabled and "limits.max_cells = 1,500" in button.help
    said = text(at.caption)
    assert "below the demo's 2,000 simulated cells" in said and "SCATD_MAX_CELLS" in said
    assert "try the demo" not in text(at.info)  # QA: "Upload a file above, or try the demo." under it
    landing = AppTest.from_file(APP, default_timeout=120).run()
    assert "Try the demo" not in " ".join(h.value for h in landing.subheader)  # nor the overview's heading


def test_the_overview_ticks_your_own_datas_steps_never_the_demos(with_library):
    """QA: the overview's "Your own data, in three steps" ticked its steps for the demo data."""
    for demo in (True, False):
        at = AppTest.from_file(APP, default_timeout=120)
        at.session_state[state.ADATA] = make_dataset(20, seed=1)
        at.session_state[state.IS_DEMO] = demo
        at.run()
        ok(at)
        ticked = [p for p in at.get("page_link") if "check_circle" in str(p.proto)]
        assert ("The demo is loaded: these steps are ticked once your own data are." in text(at.caption)) is demo
        assert len(ticked) == (0 if demo else 1)  # the data step, for your own data


def test_a_bug_in_a_page_is_a_message_not_a_traceback(with_library, monkeypatch):
    def broken(entries):
        raise RuntimeError("boom")

    monkeypatch.setattr(ui, "library_frame", broken)
    at = start()
    at.switch_page("app_pages/2_Model.py")
    at.run()
    assert not at.exception
    assert "Something unexpected went wrong" in text(at.error) and "boom" in text(at.error)


def test_model_library_shows_each_trained_models_card(empty_library):
    from test_card import _full_card
    from test_ensemble import _ensemble

    from scatd_core.bundle import save_bundle

    model = _ensemble()
    save_bundle(empty_library / "carded", model.stacked_state_dict(), model.arch, drug="DRUGX",
                genes=[f"G{i}" for i in range(model.arch.input_dim)], input_transform="standardize", threshold=0.5,
                name="Lab model", extra={"card": _full_card()})
    at = start()
    goto(at, "8_Models")
    assert at.selectbox(key="model_card_choice").options[0] == "Lab model"  # its display name, as given
    details = next(e for e in at.expander if e.label == "Data, genes and settings").markdown[0].value
    assert "bulk ccle.csv" in details and "sha256 aaaaaaaaaaaa of its values" in details
    assert "head linear, folds 5, seed 3" in details
    library = at.dataframe[0].value
    assert library["members"].tolist() == [3]
    # each number says whose it is (QA: "0.832 / 0.836 / 0.684" had no key); this card's target has one baseline
    assert re.fullmatch(r"\d\.\d{3} \(GB \d\.\d{3}\)", library["target AUROC"].iloc[0]), library["target AUROC"]
    config = json.loads(at.dataframe[0].proto.columns)
    assert "LR: logistic regression" in config["bulk CV AUROC"]["help"]
    assert config["backbone"].get("width") is None  # sized to 'VAE on genes', not cut to 'VAE on gene'
    assert "(model / LR / GB)" not in " ".join(library.columns)
    assert at.selectbox(key="model_card_choice").value.endswith("carded")
    card_table = at.dataframe[1].value
    assert list(card_table["model"]) == ["this model", "gradient boosting"]
    assert "This model beats gradient boosting" in text(at.success)
    assert len(at.get("plotly_chart")) == 1


LONG_NAME = "GEFITINIB_dist_vae_scad_fewshot_20261202_173355_seed0"


def _long_named_carded_model(library: Path) -> None:
    """A trained model with a long name (as the Train page names them) and a card with a bulk CV
    (against logistic regression) and a target evaluation (against gradient boosting)."""
    from test_card import _full_card, _overlapping
    from test_ensemble import _ensemble

    from scatd_core.bundle import save_bundle

    card = _full_card()
    card["evaluations"].insert(0, _overlapping(0.01, 0.2, 0.1, name="logistic regression (C=0.1, balanced)",
                                               where="bulk_cv"))
    model = _ensemble()
    save_bundle(library / LONG_NAME, model.stacked_state_dict(), model.arch, drug="GEFITINIB",
                genes=[f"G{i}" for i in range(model.arch.input_dim)], input_transform="standardize", threshold=0.5,
                name=LONG_NAME, extra={"card": card})


def test_the_library_tables_name_column_shows_a_long_name_whole(empty_library):
    """QA at 1280 px: the library's "medium" name column cut trained models' long names."""
    _long_named_carded_model(empty_library)
    at = start()
    for page in ("8_Models", "2_Model"):
        goto(at, page)
        name = json.loads(at.dataframe[0].proto.columns)["name"]
        assert name["width"] >= 7 * len(LONG_NAME) and name["pinned"], (page, name)  # whole, and kept in view
    assert ui.name_column_width([LONG_NAME]) <= 480 and ui.name_column_width(["short"]) == 160


def test_the_card_shows_a_short_score_table_per_evaluation(empty_library):
    """QA at 1280 px: the card's score table (seven columns, the evaluation's title in each row) was cut
    on the right. Now a table per evaluation under a line saying it, with four short columns."""
    _long_named_carded_model(empty_library)
    at = start()
    goto(at, "8_Models")
    bulk, target = at.dataframe[1].value, at.dataframe[2].value
    assert list(bulk.columns) == ["model", "AUROC (95% CI)", "AUPRC (95% CI)", "this model minus it (AUROC)"]
    assert list(bulk["model"]) == ["this model", "logistic regression"] and bulk.iloc[0, 3] == ""
    assert bulk.iloc[1, 3] == "+0.100 [+0.010, +0.200]"  # signed, and no spreadsheet quote before it
    assert list(target["model"]) == ["this model", "gradient boosting"]
    said = text(at.markdown).replace("\\", "")
    assert ("Bulk cell lines, 5-fold cross-validation: 100 cell lines (50 resistant); AUPRC by chance 0.500 "
            "(the share resistant)") in said
    assert "Baselines: logistic regression (C=0.1, balanced)." in text(at.caption).replace("\\", "")
    # QA: the chart repeated the evaluation and the whole name on every row; its short rows are said once
    assert ("The chart: one panel per evaluation (as the tables above), the models by their short names; the "
            "baselines' settings are said above the chart.") in text(at.caption).replace("\\", "")


def test_ensemble_spread_is_the_cells_uncertainty(empty_library):
    """A trained ensemble predicts in mean mode with a per-cell sd over its members, shown on the Cells page."""
    from test_ensemble import _bundle, _cells, _ensemble

    _bundle(empty_library, _ensemble(), name="ensemble")
    at = start()
    cells = _cells(n=60, seed=3)
    cells.X = np.abs(cells.X)
    upload(at, "tumour.h5ad", h5ad_bytes(cells))
    run_prediction(at)
    result = at.session_state[state.ADATA]
    assert result.uns["scatd"]["params"]["mode"] == "mean"
    assert (result.obs["scatd_prob_resistant_sd"] > 0).all()
    goto(at, "4_Cells")
    at.selectbox(key="cells_colour").set_value("uncertainty (sd of P)").run()
    ok(at)
    assert "over the 3 ensemble members" in text(at.caption)


# --------------------------------------------------------------------------------------------
# The prediction computed ahead, while the user reads the Model and Predict pages
# --------------------------------------------------------------------------------------------

def _ahead(at: AppTest, timeout: float = 120):
    """The session's background prediction, once it has finished."""
    ahead = at.session_state[state.PREDICT_AHEAD]
    ahead.future.exception(timeout=timeout)  # waits; a Cancelled is a result here too
    return ahead


def _settled(*aheads, timeout: float = 120) -> None:
    """Wait until these background predictions and the UMAPs that followed them have ended."""
    import concurrent.futures

    futures = [f for a in aheads for f in (a.future, a.embedding and a.embedding.future) if f is not None]
    concurrent.futures.wait(futures, timeout=timeout)


def test_prediction_computed_ahead_is_what_run_prediction_shows(with_library, monkeypatch):
    """With one model in the library, the upload starts the prediction in the background; the
    Model page keeps that run; Run prediction writes its result (computed once), the same numbers
    as a prediction made on the click."""
    from scatd_core import embed
    from scatd_core import predict as predict_module
    from scatd_core.bundle import load_bundle

    adata = make_dataset(N_CELLS, seed=7)
    expected = make_dataset(N_CELLS, seed=7)  # predicted on a click, and its UMAP on the Cells page, as before
    predict_module.predict(expected, load_bundle(with_library / BUNDLE_FOLDER))
    embed.embed(expected, seed=0)
    calls, umaps = [], []
    real = predict_module.score
    monkeypatch.setattr(predict_module, "score", lambda *a, **k: calls.append(1) or real(*a, **k))
    real_umap = embed.compute_embedding
    monkeypatch.setattr(embed, "compute_embedding", lambda *a, **k: umaps.append(1) or real_umap(*a, **k))
    at = start()
    upload(at, "tumour.h5ad", h5ad_bytes(adata))
    assert state.BUNDLE_PATH not in at.session_state or not at.session_state[state.BUNDLE_PATH]
    ahead = _ahead(at)  # the library's only model: nothing to choose, so it starts with the upload
    assert ahead.future.result().n_obs == N_CELLS and calls == [1]
    assert "scatd_prob_resistant" not in at.session_state[state.ADATA].obs  # nothing written before the click
    goto(at, "2_Model")  # its default is that model: the same run
    assert at.session_state[state.PREDICT_AHEAD] is ahead and calls == [1]

    goto(at, "3_Predict")
    assert "Computed in the background as soon as the data and model were ready" in text(at.caption)
    at.button(key="btn_run_predict").click().run()
    ok(at)
    assert calls == [1]  # taken, not computed again
    assert f"Predicted {N_CELLS:,} of {N_CELLS:,} cells" in text(at.success)
    assert state.PREDICT_AHEAD not in at.session_state
    result = at.session_state[state.ADATA]

    for column in ("scatd_prob_resistant", "scatd_label", "scatd_scored"):
        pd.testing.assert_series_equal(result.obs[column], expected.obs[column], check_names=False)
    np.testing.assert_array_equal(result.obsm["X_scatd"], expected.obsm["X_scatd"])
    assert result.uns["scatd"]["params"] == expected.uns["scatd"]["params"]
    # the UMAP followed the prediction in the background; the Cells page takes it
    assert at.session_state[state.EMBEDDING_PENDING] is ahead.embedding
    goto(at, "4_Cells")
    assert umaps == [1]
    np.testing.assert_array_equal(result.obsm["X_umap"], expected.obsm["X_umap"])
    pd.testing.assert_series_equal(result.obs["scatd_cluster"], expected.obs["scatd_cluster"], check_names=False)

    goto(at, "2_Model")  # a prediction is in place: nothing more is computed ahead
    goto(at, "3_Predict")
    assert calls == [1] and state.PREDICT_AHEAD not in at.session_state


def test_upload_starts_the_prediction_before_its_qc_metrics_and_plots(with_library, monkeypatch):
    """The prediction computed ahead starts as soon as the upload is read, before the Data page's
    QC metrics and plots (0.7-1 s of a 10k-cell page run, `benches/bench_e2e.py`), and that run is
    kept to the end of the page; a QC filter switched on (a new mask) starts one for it."""
    import streamlit as st

    from scatd_app import ui

    seen = []
    real = ui.qc_metrics

    def qc_metrics(adata):
        seen.append(st.session_state.get(state.PREDICT_AHEAD))
        return real(adata)

    monkeypatch.setattr(ui, "qc_metrics", qc_metrics)
    at = start()
    upload(at, "tumour.h5ad", tumour_h5ad(N_CELLS, seed=7))
    ahead = at.session_state[state.PREDICT_AHEAD]
    assert seen and seen[0] is ahead  # under way before the first QC metric was computed
    assert _ahead(at) is ahead and ahead.alive()
    at.toggle(key=ui.QC_ENABLED).set_value(True).run()
    ok(at)
    assert ahead.stop.is_set() and at.session_state[state.PREDICT_AHEAD] is not ahead
    _settled(ahead, at.session_state[state.PREDICT_AHEAD])


def test_predict_uses_the_only_model_without_a_visit_to_the_model_page(with_library, monkeypatch):
    """Straight from the upload to Predict: the library's only model is the one used (as the
    background run did), not a request to choose one."""
    from scatd_core import predict as predict_module

    calls = []
    real = predict_module.score
    monkeypatch.setattr(predict_module, "score", lambda *a, **k: calls.append(1) or real(*a, **k))
    at = start()
    upload(at, "tumour.h5ad", tumour_h5ad(N_CELLS, seed=7))
    ahead = _ahead(at)
    goto(at, "3_Predict")
    assert "Choose a model first" not in text(at.info) + text(at.warning)
    assert at.session_state[state.BUNDLE_PATH] == ahead.bundle_path
    assert "Computed in the background as soon as the data and model were ready" in text(at.caption)
    at.button(key="btn_run_predict").click().run()
    ok(at)
    assert calls == [1] and f"Predicted {N_CELLS:,} of {N_CELLS:,} cells" in text(at.success)
    _settled(ahead)


def test_cells_report_and_biomarkers_say_a_prediction_computing_in_the_background(with_library, monkeypatch):
    """QA: the Cells page said "Run a prediction first." while the prediction was computing in the background
    (started ahead; the Predict page said so). Now Cells, Biomarkers and Report say it is computing, and that
    Run prediction on the Predict page shows it; once done, that Run prediction shows it at once."""
    import threading

    from scatd_core import predict as predict_module

    gate = threading.Event()
    real = predict_module.score
    monkeypatch.setattr(predict_module, "score", lambda *a, **k: gate.wait(60) and real(*a, **k))
    at = start()
    upload(at, "tumour.h5ad", tumour_h5ad(N_CELLS, seed=7))
    ahead = at.session_state[state.PREDICT_AHEAD]
    try:
        for page in ("4_Cells", "5_Biomarkers", "6_Report"):
            goto(at, page)
            shown = text(at.info)
            assert "Run a prediction first" not in shown, page
            assert ("The prediction is computing in the background, started when the data and model were ready" in shown
                    and "Run prediction on the Predict page shows it as soon as it is complete" in shown), (page, shown)
    finally:
        gate.set()
    _settled(ahead)
    goto(at, "4_Cells")
    assert ("The prediction was computed in the background: Run prediction on the Predict page shows it at once"
            in text(at.info))


def test_prediction_ahead_follows_the_settings_and_gives_way(with_library, monkeypatch):
    """Other settings stop the run and start one for them; a busy server starts none; a
    computation waiting for the server stops a running one, and the click then predicts as usual."""
    import threading

    from scatd_app import jobs
    from scatd_core import predict as predict_module

    queue = jobs.queue()
    deadline = time.monotonic() + 120
    while (queue.running or queue.waiting) and time.monotonic() < deadline:  # earlier tests' background UMAPs
        time.sleep(0.05)
    assert queue.free() and queue.running == 0
    at = start()
    upload(at, "tumour.h5ad", tumour_h5ad(N_CELLS, seed=3))
    goto(at, "2_Model")
    first = _ahead(at)
    goto(at, "3_Predict")
    at.radio(key="predict_mode").set_value("sample").run()
    ok(at)
    assert first.stop.is_set()  # for the old settings: stopped and dropped
    second = at.session_state[state.PREDICT_AHEAD]
    assert second is not first and second.token != first.token

    # a busy server: another computation holds every slot, so nothing is started ahead
    second.cancel()
    del at.session_state[state.PREDICT_AHEAD]
    _settled(first, second)  # stopped at their next batch or UMAP step, or never started
    _settled(first, second)  # a UMAP submitted while the first wait ran
    with queue._cond:
        queue.running += queue.slots
    try:
        goto(at, "2_Model")
        goto(at, "3_Predict")
        assert state.PREDICT_AHEAD not in at.session_state
        assert "in the background" not in text(at.caption)
    finally:
        with queue._cond:
            queue.running -= queue.slots

    # a run under way gives way as soon as a computation waits for a slot
    started, calls = threading.Event(), []
    real = predict_module.score

    def slow_score(*args, **kwargs):
        calls.append(1)
        started.set()
        while not kwargs["should_stop"]():
            time.sleep(0.01)
        return real(*args, **kwargs)  # raises Cancelled at its first batch

    monkeypatch.setattr(predict_module, "score", slow_score)
    goto(at, "2_Model")
    assert started.wait(60)
    ticket = object()
    with queue._cond:
        queue.waiting.append(ticket)
    try:
        ahead = _ahead(at)
    finally:
        with queue._cond:
            queue.waiting.remove(ticket)
    from scatd_core.errors import Cancelled

    assert isinstance(ahead.future.exception(), Cancelled) and not ahead.alive()
    assert queue.running == 0  # its slot is free again
    monkeypatch.setattr(predict_module, "score", real)
    goto(at, "3_Predict")  # the server is free again: started anew for the page's settings
    assert at.session_state[state.PREDICT_AHEAD] is not ahead
    at.button(key="btn_run_predict").click().run()
    ok(at)
    assert f"Predicted {N_CELLS:,} of {N_CELLS:,} cells" in text(at.success)
    at.session_state[state.EMBEDDING_PENDING].future.result(timeout=120)  # the UMAP started after the results
    assert queue.running == 0 and queue.waiting == []  # every slot given back


def test_a_prediction_ahead_its_owner_waits_for_keeps_its_slot(with_library, monkeypatch):
    """Once its owner has clicked Run and waits for it (take_prediction_ahead claims it), a
    background prediction no longer gives way to computations queued after that click: giving way
    threw its work away and sent the first to click to the back of the queue."""
    import threading

    from scatd_app import jobs, ui
    from scatd_core import predict as predict_module

    queue = jobs.queue()
    deadline = time.monotonic() + 120
    while (queue.running or queue.waiting) and time.monotonic() < deadline:  # earlier tests' background work
        time.sleep(0.05)
    started, release, real = threading.Event(), threading.Event(), predict_module.score

    def slow_score(*args, **kwargs):
        started.set()
        while not release.is_set() and not kwargs["should_stop"]():
            time.sleep(0.01)
        return real(*args, **kwargs)  # raises Cancelled at its first batch if it gave way

    monkeypatch.setattr(predict_module, "score", slow_score)
    at = start()
    upload(at, "tumour.h5ad", tumour_h5ad(N_CELLS, seed=3))  # the data settled: started ahead
    assert started.wait(60)
    ahead = at.session_state[state.PREDICT_AHEAD]
    assert ahead.claimed.is_set() is False
    ahead.claimed.set()  # what take_prediction_ahead does as the owner's click waits for it
    ticket = object()
    with queue._cond:
        queue.waiting.append(ticket)  # someone clicks after the owner
    try:
        time.sleep(0.3)
        assert not ahead.future.done() and ahead.alive()  # still running: it did not give way
        release.set()
        assert ahead.future.result(timeout=120).n_obs == N_CELLS
    finally:
        release.set()
        with queue._cond:
            queue.waiting.remove(ticket)
    _settled(ahead)
    import inspect

    assert "ahead.claimed.set()" in inspect.getsource(ui.take_prediction_ahead)


def test_a_model_removed_while_chosen_is_said_without_a_server_path(tmp_path, monkeypatch):
    import shutil

    library = tmp_path / "library"
    make_bundle(library / "gone_drug", make_dataset(60, seed=1), steps=2, drug="GONEDRUG")
    monkeypatch.setenv("SCATD_MODEL_LIBRARY", str(library))
    at = start()
    upload(at, "tumour.h5ad", tumour_h5ad(60, seed=2))
    at.session_state[state.BUNDLE_PATH] = str(library / "gone_drug")
    goto(at, "3_Predict")
    assert not at.error
    at.button(key="btn_run_predict").click().run()
    ok(at)
    shutil.rmtree(library / "gone_drug")  # an administrator removes it
    goto(at, "5_Biomarkers")
    shown = text(at.warning).replace("\\", "")  # markdown-escaped
    assert "no longer in the model library" in shown and "gone_drug" in shown
    assert str(library) not in shown + text(at.error) and not at.exception
    assert at.session_state.get(state.BUNDLE_PATH) in (None, "")
    # "results already computed with it stay as they are": they do (QA: they were forgotten)
    assert state.PREDICTION in at.session_state and "scatd" in at.session_state[state.ADATA].uns
    goto(at, "6_Report")
    assert "Run a prediction first" not in text(at.info) and not at.exception


def test_another_model_that_took_the_chosen_models_folder_is_never_used_in_its_place(tmp_path, monkeypatch):
    """QA: an administrator removes the model a session had chosen and another model of the same
    default name takes its folder: the session went on with that other model, unsaid."""
    from scatd_core.bundle import remove_bundle

    library = tmp_path / "library"
    data = make_dataset(60, seed=1)
    make_bundle(library / "DRUGA_dist_vae_trained", data, steps=2, drug="DRUGA")
    make_bundle(library / "other_drug", data, steps=2, drug="OTHERDRUG")
    monkeypatch.setenv("SCATD_MODEL_LIBRARY", str(library))
    at = start()
    upload(at, "tumour.h5ad", tumour_h5ad(60, seed=2))
    at.session_state[state.BUNDLE_PATH] = str(library / "DRUGA_dist_vae_trained")
    goto(at, "3_Predict")
    at.button(key="btn_run_predict").click().run()
    ok(at)
    goto(at, "5_Biomarkers")
    assert not at.warning and at.session_state[state.BUNDLE_PATH] == str(library / "DRUGA_dist_vae_trained")
    remove_bundle(library / "DRUGA_dist_vae_trained")  # an administrator removes it; bob trains DRUGA again
    make_bundle(library / "DRUGA_dist_vae_trained", make_dataset(60, seed=3), steps=3, drug="DRUGA")
    goto(at, "5_Biomarkers")
    shown = text(at.warning).replace("\\", "")
    assert "The model you had chosen (DRUGA_dist_vae_trained) is no longer in the model library: the model " \
           "'DRUGA (dist_vae)' was removed (or replaced) and another model now has its folder" in shown
    assert "not used in its place" in shown and str(library) not in shown + text(at.error)
    assert at.session_state.get(state.BUNDLE_PATH) in (None, "")
    assert state.PREDICTION in at.session_state  # the results computed with the earlier model stay
    goto(at, "2_Model")  # choosing it again (the same folder, the new model) is the user's to do
    assert at.session_state[state.BUNDLE_PATH] == at.session_state["model_bundle"]
    goto(at, "5_Biomarkers")
    assert "no longer in the model library" not in text(at.warning)


def test_prediction_ahead_waits_for_the_users_choice_of_model(with_library, tmp_path, monkeypatch):
    """With two drug models in the library, nothing starts before the Model page has one chosen."""
    import shutil

    from _app_helpers import make_bundle

    library = tmp_path / "library"
    shutil.copytree(with_library, library)
    make_bundle(library / "other_drug", make_dataset(120, seed=1), drug="OTHERDRUG", steps=5)
    monkeypatch.setenv("SCATD_MODEL_LIBRARY", str(library))
    at = start()
    upload(at, "tumour.h5ad", tumour_h5ad(N_CELLS, seed=2))
    assert state.PREDICT_AHEAD not in at.session_state
    goto(at, "2_Model")
    ahead = _ahead(at)
    assert Path(ahead.bundle_path).resolve() == Path(at.session_state[state.BUNDLE_PATH]).resolve()
    assert ahead.future.result().n_obs == N_CELLS


def test_start_up_runs_once_per_process_and_can_be_waited_for():
    """app.py calls ui.start_up() on every run and `python -m scatd_app` waits for it before the
    server listens: one warm-up per process, which both see."""
    from scatd_app import ui

    from scatd_core.foundation import geneformer

    first = ui.start_up(wait=True)
    assert not first.is_alive()
    assert ui.start_up() is first and ui.start_up(wait=True) is first
    # transformers was imported by the warm-up (through its one locked helper), not by a page
    assert getattr(geneformer, "_TRANSFORMERS", None) is not None


def _small_checkpoints(folder: Path) -> None:
    """Original-layout checkpoints offered in an import folder: a Dist_VAE classifier (drug.pth, genes.txt),
    a VAE_sf classifier (sf.pth) with its bulk embeddings (bulk.npy), a Dist_VAE pretraining one (pre.pth)."""
    folder.mkdir()
    torch.save(orig.dal_checkpoint("dist_vae", [30, 16, 8], 6, seed=1), folder / "drug.pth")
    (folder / "genes.txt").write_text("\n".join(f"G{i}" for i in range(30)) + "\n")
    torch.save(orig.dal_checkpoint("vae_sf", [40, 30, 20, 14], 11, seed=2), folder / "sf.pth")
    np.save(folder / "bulk.npy", np.random.default_rng(0).normal(size=(20, 40)))
    torch.save(orig.pretraining_checkpoint("dist_vae", [30, 16, 8], 6, [6, 16], seed=3), folder / "pre.pth")


def test_the_app_import_offers_the_swish_mode_the_cli_offers(empty_library, tmp_path, monkeypatch):
    """`scatd import-checkpoint --beta-mode separate` has its field on the import form: the default
    reproduces the original's inference, 'separate' runs the function as trained."""
    _dist_vae_import_folder(tmp_path, monkeypatch)
    at = start()
    goto(at, "8_Models")
    assert at.selectbox(key="import_beta_mode").value == "shared_with_head"
    _import_from_folder(at, "drug.pth", "Gefitinib", "genes.txt", name="as trained", beta="separate")
    _import_from_folder(at, "drug.pth", "Gefitinib", "genes.txt", name="as published")  # the form keeps the choice
    modes = {json.loads((d / "manifest.json").read_text())["name"]: json.loads((d / "manifest.json").read_text())
             ["beta_mode"] for d in empty_library.iterdir() if (d / "manifest.json").is_file()}
    assert modes == {"as trained": "separate", "as published": "separate"}
    _import_from_folder(at, "drug.pth", "Gefitinib", "genes.txt", name="reproduced", beta="shared_with_head")
    assert json.loads((empty_library / "reproduced" / "manifest.json").read_text())["beta_mode"] == "shared_with_head"
    at.selectbox(key="model_import_backbone").set_value("vae_sf")
    at.run()
    assert at.selectbox(key="import_beta_mode").disabled  # a Dist_VAE setting only


def _import_from_folder(at: AppTest, pth: str, drug: str, side: str | None, name: str = "",
                        backbone: str = "dist_vae", beta: str | None = None) -> AppTest:
    at.selectbox(key="model_import_backbone").set_value(backbone)
    at.run()
    if beta is not None:  # a form's field: sent with the form (after the backbone's rerun)
        at.selectbox(key="import_beta_mode").set_value(beta)
    at.selectbox(key="import_from_folder").set_value(pth)
    at.text_input(key="import_drug").set_value(drug)
    at.text_input(key="import_name").set_value(name)
    at.selectbox(key="import_side_from_folder").set_value(side)
    at.get("form_submit_button")[0].click()
    at.run()
    return ok(at)


def test_the_app_refuses_an_embedding_classifier_without_its_bulk_embeddings(empty_library, tmp_path, monkeypatch):
    _small_checkpoints(tmp_path / "import")
    monkeypatch.setenv("SCATD_IMPORT_FOLDER", str(tmp_path / "import"))
    at = start()
    goto(at, "8_Models")
    _import_from_folder(at, "sf.pth", "Cisplatin", None, backbone="vae_sf")
    shown = text(at.error)
    assert "needs the bulk embeddings" in shown and "Bulk embeddings for AdaIN" in shown and "--" not in shown
    assert not text(at.success)
    assert not [p for p in empty_library.glob("*") if not p.name.startswith(".")]  # nothing installed
    _import_from_folder(at, "sf.pth", "Cisplatin", "bulk.npy", backbone="vae_sf")
    assert "Imported" in text(at.success), text(at.error)


def test_a_model_without_adain_statistics_is_marked_and_not_offered(empty_library, tmp_path):
    import io

    from scatd_core.bundle import NO_STYLE_PROBLEM, import_checkpoint, list_library

    _small_checkpoints(tmp_path / "import")
    folder = tmp_path / "import"
    import_checkpoint(folder / "sf.pth", "vae_sf", drug="NOSTYLE", library=empty_library)  # as the CLI allows
    import_checkpoint(folder / "sf.pth", "vae_sf", drug="STYLED", library=empty_library,
                      style_reference=folder / "bulk.npy")
    table = ui.library_frame(list_library(empty_library)).set_index("drug")
    assert table.loc["NOSTYLE", "problem"] == NO_STYLE_PROBLEM and table.loc["NOSTYLE", "AdaIN stats"] == "no"
    assert table.loc["STYLED", "problem"] is None and table.loc["STYLED", "AdaIN stats"] == "yes"
    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(1).normal(size=(30, 40)).astype(np.float32))
    at = start()
    upload(at, "cells.npy", buffer.getvalue())
    goto(at, "2_Model")
    assert at.selectbox(key="model_bundle").options == ["STYLED · VAE_sf (scATD-sf)"]  # shown by title
    assert "Not offered for prediction" in text(at.warning) and "NOSTYLE" in text(at.warning)
    assert "no AdaIN statistics" in text(at.warning)


def test_the_drug_panel_counts_only_the_models_that_can_score(empty_library, tmp_path):
    """QA: "Score 2 models" was offered for a panel whose model without AdaIN statistics could only be
    skipped. The button now counts the models that can score, and says before the run which will be
    skipped and why; the run then scores that many."""
    import io

    from scatd_core.bundle import import_checkpoint

    _small_checkpoints(tmp_path / "import")
    folder = tmp_path / "import"
    import_checkpoint(folder / "sf.pth", "vae_sf", drug="NOSTYLE", library=empty_library)
    import_checkpoint(folder / "sf.pth", "vae_sf", drug="STYLED", library=empty_library,
                      style_reference=folder / "bulk.npy")
    import_checkpoint(folder / "sf.pth", "vae_sf", drug="STYLED2", library=empty_library,
                      style_reference=folder / "bulk.npy")
    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(1).normal(size=(30, 40)).astype(np.float32))
    at = start()
    upload(at, "cells.npy", buffer.getvalue())
    goto(at, "9_Panel")
    paths = sorted(str(p) for p in empty_library.iterdir() if not p.name.startswith("."))
    at.multiselect(key="panel_models").set_value(paths).run()
    ok(at)
    assert at.button(key="btn_panel_run").label == "Score 2 of 3 models"
    assert "NOSTYLE · VAE_sf (scATD-sf) · skipped: no AdaIN statistics (bulk embeddings)" in \
        at.multiselect(key="panel_models").options
    said = text(at.warning).replace("\\", "")
    assert "1 of the 3 models chosen will be skipped when the panel is scored" in said
    assert "NOSTYLE" in said and "no AdaIN statistics" in said
    at.button(key="btn_panel_run").click().run()
    ok(at)
    said = text(at.warning).replace("\\", "")  # (the two models warn about their own predictions)
    assert "2 of 3 models scored 30 cells" in said and "NOSTYLE" in said and "was skipped" in said
    nostyle = [p for p in paths if "NOSTYLE" in p]
    at.multiselect(key="panel_models").set_value([p for p in paths if "STYLED" in p and p not in nostyle]).run()
    ok(at)
    assert at.button(key="btn_panel_run").label == "Score 2 models"  # none known to be skipped: as before


def test_a_second_model_of_a_drug_goes_by_its_display_name(empty_library, tmp_path, monkeypatch):
    _small_checkpoints(tmp_path / "import")
    monkeypatch.setenv("SCATD_IMPORT_FOLDER", str(tmp_path / "import"))
    at = start()
    goto(at, "8_Models")
    _import_from_folder(at, "drug.pth", "DOCETAXEL", "genes.txt")
    assert "Imported" in text(at.success), text(at.error)
    _import_from_folder(at, "drug.pth", "DOCETAXEL", "genes.txt", name="DOCETAXEL GSE140440")
    assert "Imported" in text(at.success), text(at.error)
    assert sorted(p.name.split("-")[0] for p in empty_library.iterdir() if not p.name.startswith(".")) == \
        ["DOCETAXEL_GSE140440", "DOCETAXEL_dist_vae"]
    _import_from_folder(at, "drug.pth", "DOCETAXEL", "genes.txt", name="DOCETAXEL GSE140440")
    shown = text(at.error).replace("\\", "")  # markdown escapes
    assert "A model named 'DOCETAXEL GSE140440' already exists" in shown and "another display name" in shown
    assert str(empty_library) not in shown and "scatd " not in shown and "--" not in shown  # no server path, no CLI


def test_the_chosen_one_of_two_models_of_a_drug_is_named_on_the_predict_page_sidebar_and_card(empty_library, tmp_path):
    """QA: with two models of one drug, the Predict page said "Model: DOCETAXEL" and the sidebar
    "DOCETAXEL / dist_vae", not which of them; the Model library's card opened on the first model, not on
    the chosen one. Both name it as the Model page lists it, and the card opens on it."""
    from scatd_core.bundle import import_checkpoint

    _small_checkpoints(tmp_path / "import")
    folder = tmp_path / "import"
    for name in (None, "DOCETAXEL GSE140440"):
        import_checkpoint(folder / "drug.pth", "dist_vae", drug="DOCETAXEL", genes=folder / "genes.txt",
                          library=empty_library, name=name)
    folders = sorted(str(p) for p in empty_library.iterdir() if p.name.startswith("DOCETAXEL_"))
    first, second = folders  # DOCETAXEL_GSE140440-..., DOCETAXEL_dist_vae: the card list's order
    counts = np.random.default_rng(0).poisson(2.0, size=(40, 30))
    at = start()
    upload(at, "cells.csv", pd.DataFrame(counts, index=[f"c{i}" for i in range(40)],
                                         columns=[f"G{i}" for i in range(30)]).to_csv().encode())
    goto(at, "2_Model")
    at.selectbox(key="model_bundle").set_value(second).run()
    ok(at)
    # the other one is called "DOCETAXEL GSE140440", as it was named: this one's title tells it apart
    # (scatd_core.bundle.display_names); its default name "DOCETAXEL (dist_vae)" says nothing more
    title = "DOCETAXEL · Dist_VAE (scATD-sf-dist)"
    assert sorted(at.selectbox(key="model_bundle").options) == ["DOCETAXEL GSE140440", title]
    goto(at, "3_Predict")
    assert ui.md(title) in text(at.caption), text(at.caption)
    assert ui.md(title) in text(at.sidebar.markdown), text(at.sidebar.markdown)
    goto(at, "8_Models")
    assert at.selectbox(key="model_card_choice").value == second
    at.selectbox(key="model_card_choice").set_value(first).run()  # another card chosen here stays
    assert ok(at).selectbox(key="model_card_choice").value == first


def test_the_library_and_the_model_page_tell_imported_models_apart(empty_library, tmp_path):
    from scatd_core.bundle import import_checkpoint, list_library, sha256_file

    _small_checkpoints(tmp_path / "import")
    folder = tmp_path / "import"
    import_checkpoint(folder / "drug.pth", "dist_vae", drug="DOCETAXEL", genes=folder / "genes.txt",
                      library=empty_library, provenance={"imported_by": "alice"})
    import_checkpoint(folder / "pre.pth", "dist_vae", genes=folder / "genes.txt", library=empty_library)
    table = ui.library_frame(list_library(empty_library)).set_index("kind")
    for column in ("name", "source file", "sha256", "labels", "Swish beta", "genes"):
        assert column in table.columns, column
    row = table.loc["classifier"]
    assert row["name"] == "DOCETAXEL (dist_vae)" and row["source file"] == "drug.pth"
    assert row["sha256"] == sha256_file(folder / "drug.pth")[:12] and row["labels"] == "resistant=1"
    assert row["Swish beta"] == "shared with head" and row["genes"] == 30
    assert pd.isna(table.loc["backbone", "threshold"]) and row["threshold"] == 0.05  # no threshold for a backbone
    at = start()
    goto(at, "8_Models")
    assert len(at.selectbox(key="model_card_choice").options) == 2  # imported models have a card
    card = text(at.markdown)
    assert "Imported from drug.pth" in card.replace("\\", "") and "by alice" in card
    goto(at, "2_Model")
    captions = text(at.caption).replace("\\", "")
    assert "Input transform: none. The expression values go into the model as they are" in captions
    assert "from drug.pth (sha256 " in captions


def test_data_page_calls_npy_values_embedding_features_not_z_scored():
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(1).normal(size=(30, 40)).astype(np.float32))
    at = upload(start(), "cells.npy", buffer.getvalue())
    values = {m.label: m.value for m in at.metric}
    assert values["Values"] == "embedded" and values["Gene IDs"] == "none"  # short: a long value is cut
    assert next(m for m in at.metric if m.label == "Values").delta == "cell embeddings"
    assert values["Embedding features"] == "40"
    assert "30 cells × 40 embedding features" in text(at.sidebar.markdown)  # not "genes", as the card


def test_a_bad_upload_says_the_earlier_data_is_still_loaded(with_library):
    adata = make_dataset(40, seed=1)
    frame = pd.DataFrame(adata.X.toarray(), index=adata.obs_names, columns=adata.var_names)
    at = upload(start(), "cells.csv", frame.to_csv().encode())
    at.file_uploader[0].upload("bad.csv", b"title\nc,A,B\nx,1,2\ny,3,4\n")
    at.run()
    assert "bad.csv" in text(at.error) and not at.exception
    assert "Your earlier data (cells.csv) is still loaded" in text(at.info)
    at.run()  # the error again, from the record: the same words
    assert "bad.csv" in text(at.error) and "Your earlier data (cells.csv) is still loaded" in text(at.info)


def test_the_model_page_shows_a_missing_gene_name_dictionary(tmp_path, monkeypatch):
    import _foundation_helpers as H

    root = H.gf_folder(tmp_path / "geneformer")
    (root / "gene_name_id_dict.pkl").unlink()
    monkeypatch.setenv("SCATD_GENEFORMER_DIR", str(root))
    monkeypatch.delenv("SCATD_GENEFORMER_MODEL", raising=False)
    monkeypatch.setenv("SCATD_TEST_ADMIN", "")
    at = AppTest.from_function(_gf_probe_page)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "installed" in text(at.success)
    shown = text(at.warning).replace("\\", "")
    assert "gene_name_id_dict.pkl" in shown and "not in geneformer," in shown and "pytest-of" not in shown


def _gf_probe_page():
    import os

    import streamlit as st

    from scatd_app import auth, ui
    from scatd_core import foundation
    from scatd_core.users import User

    st.session_state[auth.USER] = User("someone", admin=bool(os.environ.get("SCATD_TEST_ADMIN")))
    ui.show_probe(foundation.probe("vae_gf").to_dict())


def test_tables_show_formula_like_names_escaped_and_the_datas_own_umap_is_kept(with_library):
    """QA: Streamlit's own "Download as CSV" of a shown table wrote a cell named =HYPERLINK(...)
    as it is (the app's downloads escape it), and the Cells page's UMAP replaced the data's own
    obsm['X_umap'] in the annotated h5ad without a word. Every table is shown spreadsheet-safe
    (a leading '), the data's UMAP is kept as obsm['X_umap_original'], and the Cells page says so."""
    from scatd_core import export

    adata = make_dataset(N_CELLS, seed=7)
    formula = '=HYPERLINK("http://x","y")'
    adata.obs_names = [formula, *adata.obs_names[1:]]
    theirs = np.random.default_rng(0).normal(size=(N_CELLS, 2))
    adata.obsm["X_umap"] = theirs
    at = start()
    upload(at, "tumour.h5ad", h5ad_bytes(adata))
    run_prediction(at)
    result = at.session_state[state.ADATA]
    assert np.array_equal(result.obsm["X_umap"], theirs)  # predicting computes no UMAP: the data's stays
    for page in ("4_Cells", "6_Report"):
        goto(at, page)
        shown = [str(v) for d in at.dataframe for v in d.value.astype(str).to_numpy().ravel() if "HYPERLINK" in str(v)]
        assert shown and all(v == "'" + formula for v in shown), (page, shown)
        if page == "4_Cells":
            assert "kept, unchanged, as obsm\\['X\\_umap\\_original'\\]" in text(at.caption)
    assert np.array_equal(result.obsm["X_umap_original"], theirs) and not np.allclose(result.obsm["X_umap"], theirs)
    with tempfile.TemporaryDirectory() as tmp:  # the Report page's annotated h5ad
        (Path(tmp) / "a.h5ad").write_bytes(export.h5ad_bytes(result))
        back = ad.read_h5ad(Path(tmp) / "a.h5ad")
    assert np.array_equal(back.obsm["X_umap_original"], theirs) and "X_umap" in back.obsm


def test_the_library_table_shows_titles_and_words_not_internal_values():
    """QA: the Model and Model library tables showed "dist_vae", "classifier" and "None", and the
    columns that tell models apart were past the right edge at 1280 px."""
    frame = pd.DataFrame({"name": ["DEMOTINIB · demo (simulated data)", None], "drug": ["DEMOTINIB", None],
                          "backbone": ["dist_vae", None], "kind": ["classifier", "unusable"], "members": [3, None],
                          "source": ["trained", None], "threshold": [0.5, None], "folder": ["a", "b"],
                          "problem": [None, "damaged"]})
    view = ui.library_view(frame)
    assert list(view.columns[:4]) == ["name", "drug", "backbone", "threshold"]
    assert list(view["backbone"]) == ["Dist_VAE", ""] and view["kind"][0] == "drug model"
    assert "None" not in view.astype(str).to_numpy().ravel().tolist() and list(frame["backbone"])[0] == "dist_vae"


def test_the_model_page_titles_the_card_with_the_models_name(empty_library):
    """QA: the Model page titled a model trained as SF_emb_p0 "Sorafenib · VAE_sf (scATD-sf)",
    without its name; it now uses the name first, as the Models page does."""
    import json

    from _app_helpers import make_bundle

    folder = empty_library / "TESTDRUG_model"
    make_bundle(folder, make_dataset(40, seed=2), steps=1)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["name"] = "SF_emb_p0"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    at = start()
    upload(at, "cells.h5ad", tumour_h5ad(40, seed=3))
    goto(at, "2_Model")
    at.session_state[state.BUNDLE_PATH] = str(folder)
    goto(at, "2_Model")
    assert any(str(s.value) == "SF\\_emb\\_p0" for s in at.subheader), [s.value for s in at.subheader]  # as given


def _cells_table_script():
    import pandas as pd

    from scatd_app import ui

    cells = pd.DataFrame({"cell_id": ["c1", "c2"], "prob_resistant": [0.8, 0.2], "label": ["resistant", "sensitive"],
                          "response": [0, 1], "known_label": ["resistant", "sensitive"]})
    ui.cells_table(cells, hide_index=True)


def test_the_cells_tables_known_response_column_is_named_as_in_predictions_csv():
    """QA: the Cells table and the Report preview, under a heading naming the predictions CSV, showed
    its column known_label as "known response": the file's name now, the help saying what it holds."""
    at = AppTest.from_function(_cells_table_script, default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    config = json.loads(at.dataframe[0].proto.columns)
    assert config["known_label"]["label"] == "known_label" and "known response" in config["known_label"]["help"]
    assert config["label"]["label"] == "called" and "'label' of predictions.csv" in config["label"]["help"]


def test_the_data_pages_label_direction_question_is_plain_words(with_library):
    """Accessibility: the radio's label "Which value of 'response' means **resistant**?" put the
    asterisks into its accessible name; plain words now."""
    adata = make_dataset(60, seed=11)
    adata.obs["response"] = (adata.obs["response"] == "sensitive").astype(int)
    at = start()
    upload(at, "scad.h5ad", h5ad_bytes(adata))
    radio = at.radio(key="label_resistant_response")
    assert radio.label == "Which value of 'response' means resistant?" and "*" not in radio.label


def test_the_model_pages_metrics_are_a_readable_table_with_one_interval_per_score(empty_library):
    """QA: "Metrics recorded with the model" was a raw JSON tree, with two intervals for one AUROC (the card's
    bootstrap auroc_ci and a Hanley-McNeil auroc_ci_low/high): now a table, each score with one interval."""
    import json

    from _app_helpers import make_bundle

    folder = empty_library / "GEF_trained"
    make_bundle(folder, make_dataset(60, seed=2), steps=2)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["metrics"] = {  # as a model trained before 2026-12-03 recorded them
        "cv": {"folds": 5, "auroc": 0.8123, "auroc_ci": [0.7011, 0.9042], "auroc_ci_method": "95% bootstrap CI: ..."},
        "target": {"label_column": "response", "auroc": 0.7861, "auroc_ci": [0.6777, 0.8944],
                   "auroc_ci_low": 0.6763, "auroc_ci_high": 0.8976, "auroc_ci_low_high_method": "Hanley-McNeil",
                   "n_evaluated": 120, "resistant_value_given": True}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    at = start()
    upload(at, "patients.h5ad", tumour_h5ad(40, seed=3))
    goto(at, "2_Model")
    assert not at.get("json")
    shown = next(d.value for d in at.dataframe if "measure" in d.value.columns)
    rows = {(r.evaluation, r.measure): r.value for r in shown.itertuples()}
    assert rows[("Target cells (labels 'response')", "auroc")] == "0.786 (95% bootstrap CI 0.677 to 0.895)"
    assert rows[("Bulk cell lines, cross-validation", "auroc")] == "0.812 (95% bootstrap CI 0.701 to 0.905)"
    assert rows[("Target cells (labels 'response')", "n evaluated")] == "120"
    assert not any("ci low" in m or "method" in m for _, m in rows)


def test_the_gene_ids_tile_says_symbols_taken_from_a_var_column(with_library):
    """QA: var_names gene0, gene1 ... with the symbols in var['gene_symbols']: the tile said 'unknown'
    while the text below said every symbol was taken from that column and the model found its genes."""
    data = make_dataset(n_cells=60, seed=4)
    generic = ad.AnnData(data.X.copy(), obs=data.obs.copy(),
                         var=pd.DataFrame({"gene_symbols": list(data.var_names)},
                                          index=[f"gene{i}" for i in range(data.n_vars)]))
    at = upload(start(), "generic.h5ad", h5ad_bytes(generic))
    assert metric(at, "Gene IDs") == "symbol"
    tile = next(m for m in at.metric if m.label == "Gene IDs")
    assert "var['gene_symbols']" in tile.help


def test_the_gene_ids_tile_shows_mouse_symbols_whole():
    """QA: the Gene IDs tile read 'mouse sym…' (st.metric cuts a value wider than its tile); the tile
    says 'mouse', with 'mouse gene symbols' whole under it."""
    from scatd_core.preprocess import TILE_MAX_CHARS

    data = make_dataset(n_cells=60, seed=4)
    mouse = ad.AnnData(data.X.copy(), obs=data.obs.copy(),
                       var=pd.DataFrame(index=[g.capitalize() for g in data.var_names]))
    at = upload(start(), "mouse.h5ad", h5ad_bytes(mouse))
    tile = next(m for m in at.metric if m.label == "Gene IDs")
    assert tile.value == "mouse" and len(tile.value) <= TILE_MAX_CHARS
    assert "mouse gene symbols" in str(tile.proto.delta)


def _hold_a_demo_build(monkeypatch, release, calls=None):
    """A demo build started on another page and held (until ``release``) at a reported step, as
    ui.shared_build runs it for the server: the page that started it was left at once."""
    import threading

    from scatd_core import demo

    def ensure(library=None, progress=None):
        if calls is not None:
            calls.append(1)
        progress(0.55, "Training the demo model: Scoring the baselines · 4.5 min elapsed · about 3.9 min left")
        assert release.wait(30)

    monkeypatch.setattr(ui, "_BUILDS", {})
    monkeypatch.setattr(demo, "ensure", ensure)

    class Left:  # the click's page run, stopped by the page change at its first progress report
        def progress(self, *args, **kwargs):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ui.shared_build("demo", lambda report: demo.ensure(progress=report), Left(), "the demo", poll_seconds=0.05)
    for _ in range(200):  # the build has reported its step
        if "Scoring" in ui._BUILDS["demo"].progress[1]:
            break
        threading.Event().wait(0.01)
    assert ui.building("demo")


def test_an_upload_during_the_demo_build_is_acknowledged_at_once_and_the_build_stays_in_view(with_library,
                                                                                                 monkeypatch):
    """QA: during the demo's first build, an upload on the Data page showed nothing for ~35 s (the old
    progress line, unchanged), then the file's card, and the demo's progress was gone from the page
    though the build went on. The page now says "Reading NAME…" before reading the file (not
    Streamlit's spinner, drawn only after half a second by another thread), and, with the data
    read, still says that the demo is being built, how far, and how to open it."""
    import threading

    from streamlit.runtime.scriptrunner import get_script_run_ctx

    from scatd_app import session
    from scatd_core import io

    release = threading.Event()
    _hold_a_demo_build(monkeypatch, release)
    drawn_before_reading = []
    real_read = io.read

    def read(*args, **kwargs):  # what the page had sent to the browser when the reading began
        runner = get_script_run_ctx()._enqueue.__self__
        drawn_before_reading.append(" ".join(str(m) for m in runner.forward_msgs()))
        return real_read(*args, **kwargs)

    monkeypatch.setattr(io, "read", read)
    real_keep = session.keep_upload

    def keep_upload(uploaded):  # the file's copy to the session's folder: said already
        drawn_before_reading.append(" ".join(
            str(m) for m in get_script_run_ctx()._enqueue.__self__.forward_msgs()))
        return real_keep(uploaded)

    monkeypatch.setattr(session, "keep_upload", keep_upload)
    try:
        at = start()
        at.session_state[state.DEMO_WANTED] = False  # (not following the build: the run would wait for it)
        upload(at, "tumour.h5ad", tumour_h5ad(N_CELLS, seed=7))
        assert metric(at, "Cells") == f"{N_CELLS}"
        assert len(drawn_before_reading) == 2 and all("Reading tumour.h5ad" in d for d in drawn_before_reading)
        said = text(at.caption)
        assert "The demo is being built for this server" in said and "Scoring the baselines" in said, said
        assert "55%" in said and "Try the demo" in said  # how far, and how to open it
        assert "The demo is being built for this server" in text(at.sidebar.caption)  # on every page
    finally:
        release.set()
    for _ in range(500):
        if not ui.building("demo"):
            break
        threading.Event().wait(0.01)
    at.run()
    assert "being built" not in text(at.caption) + text(at.sidebar.caption)  # once built, the line goes


def test_the_model_page_without_a_model_points_to_the_sidebar_for_the_demo_builds_progress(empty_library,
                                                                                         monkeypatch):
    """The Model page without a model, during the demo's first build, sent the user to *Try the
    demo* on the Data page for its progress; every page's sidebar shows it now, and the page says so."""
    import threading

    release = threading.Event()
    _hold_a_demo_build(monkeypatch, release)
    try:
        at = start()
        at.session_state[state.DEMO_WANTED] = False  # (not following the build: the run would wait for it)
        upload(at, "tumour.h5ad", tumour_h5ad(30, seed=1))
        goto(at, "2_Model")
        said = text(at.info)
        assert "The demo (its data and model) is being built for this server" in said, said
        assert "progress is shown in the sidebar" in said and "on the Data page" not in said, said
        assert "55%" in text(at.sidebar.caption)  # where it points: the build's progress, there
        assert "No drug model is installed" in text(at.warning)
    finally:
        release.set()


def test_the_demo_buttons_help_gives_no_time_nobody_measured(empty_library):
    """The demo button's help promised "1-2 minutes on 2 idle CPU cores" (no measurement says so; a
    QA build on a busy 2-core machine took ~8 minutes): it says what was measured, about a minute
    (40 s on a quiet 2-core machine since gradient boosting's genes are binned beforehand, 2026-12-04),
    longer on a busy server, with its progress shown."""
    at = start()
    help_text = at.button(key="btn_landing_demo").help
    assert "about a minute on 2 CPU cores" in help_text and "longer on a busy server" in help_text, help_text
    assert "1-2 minutes" not in help_text and "progress" in help_text


def test_the_overview_says_the_demo_is_being_built_and_its_button_joins_that_build(with_library, monkeypatch):
    """QA: while the demo was being built, a new session's Overview showed the ordinary "Try the
    demo" card; a click then waited 262 s behind "Preparing the demo…" as if it started a build. The
    Overview now says the demo is being built for this server, with its progress, and that it opens
    when ready; a click follows the same build (built once) and opens the demo."""
    import threading

    from scatd_core import demo

    release, calls = threading.Event(), []
    _hold_a_demo_build(monkeypatch, release, calls)
    monkeypatch.setattr(demo, "load_data", lambda progress=None: make_dataset(50, seed=9))
    monkeypatch.setattr(demo, "bundle_path", lambda library=None: with_library / BUNDLE_FOLDER)
    try:
        at = start()  # a new session
        headings = " ".join(h.value for h in at.subheader)
        assert "The demo is being built for this server" in headings, headings
        said = text(at.markdown) + text(at.caption)
        assert "Scoring the baselines" in said and "min elapsed · about" in said and "55%" in said, said
        assert "opens when it is ready" in said
        assert "joins" in at.button(key="btn_landing_demo").help
    finally:
        threading.Timer(1.0, release.set).start()  # the build ends while the click follows it
    at.button(key="btn_landing_demo").click().run()
    ok(at)
    assert calls == [1]  # joined the build in progress, not a second one
    assert at.session_state[state.DATA_NAME] == "demo (simulated data)"
    assert "being built" not in text(at.caption) + text(at.sidebar.caption)


def _sidebar_while_following_the_build(monkeypatch, release) -> list[str]:
    """Arranges that, while a page run of this session follows the held demo build (its first waits
    in ui.shared_build), the text the run has sent to the browser's sidebar so far is recorded (then
    the build is released). Returns the list it is recorded in."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    from scatd_app import session

    seen, real_keep_alive = [], session.keep_alive

    def keep_alive(*args, **kwargs):
        touch = real_keep_alive(*args, **kwargs)

        def busy():
            ctx = get_script_run_ctx()
            if ctx is not None and ui.building("demo") and not seen:
                msgs = ctx._enqueue.__self__.forward_msgs()
                seen.append(" ".join(str(m.delta.new_element) for m in msgs if m.WhichOneof("type") == "delta"
                                     and list(m.metadata.delta_path[:1]) == [1]))  # 1: the sidebar
                release.set()
            return touch()

        return busy

    monkeypatch.setattr(session, "keep_alive", keep_alive)
    return seen


@pytest.mark.parametrize("where", ["Overview", "Data"])
def test_the_session_that_asked_for_the_demo_sees_its_build_in_the_sidebar(with_library, monkeypatch, where):
    """QA: the tab that pressed *Try the demo* never showed the build in its sidebar (other tabs did):
    the Overview, and the Data page opened meanwhile, follow the build before the sidebar is drawn
    (after the page), so it kept saying "no data yet / no model chosen" until the demo was loaded. The
    sidebar is drawn before the wait now, with the build's progress, and once more when it is over."""
    import threading

    from scatd_core import demo

    release = threading.Event()
    _hold_a_demo_build(monkeypatch, release)
    monkeypatch.setattr(demo, "load_data", lambda progress=None: make_dataset(50, seed=9))
    monkeypatch.setattr(demo, "bundle_path", lambda library=None: with_library / BUNDLE_FOLDER)
    try:
        at = start()
        seen = _sidebar_while_following_the_build(monkeypatch, release)
        if where == "Overview":
            at.button(key="btn_landing_demo").click().run()
        else:
            at.session_state[state.DEMO_WANTED] = True  # clicked, then the Data page opened at once
            goto(at, "1_Data")
        ok(at)
    finally:
        release.set()
    assert len(seen) == 1 and "The demo is being built for this server (55%" in seen[0], seen
    assert "Scoring the baselines" in seen[0] and "It opens on this page when it is ready" in seen[0], seen
    assert at.session_state[state.DATA_NAME] == "demo (simulated data)"  # then loaded, and said once
    sidebar = (text(at.sidebar.markdown) + text(at.sidebar.caption)).replace("\\", "")  # markdown escapes
    assert "demo (simulated data)" in sidebar and "being built" not in sidebar and "no data yet" not in sidebar
    assert sidebar.count("SESSION") == 1, sidebar


def _runs_messages(monkeypatch) -> list:
    """The script runners AppTest starts from now on: their ``forward_msgs()`` are what each run sent
    to the browser (elements, and the timers of fragments that redraw themselves)."""
    from streamlit.testing.v1.local_script_runner import LocalScriptRunner

    runners, real = [], LocalScriptRunner.__init__

    def init(self, *args, **kwargs):
        real(self, *args, **kwargs)
        runners.append(self)

    monkeypatch.setattr(LocalScriptRunner, "__init__", init)
    return runners


def _redrawn_lines(runner, words: str) -> list[float]:
    """For each text element of ``runner``'s last run that contains ``words``: the interval in seconds
    at which the browser redraws it (its fragment's timer), or 0.0 when it is drawn once (static)."""
    msgs = runner.forward_msgs()
    timers = {m.auto_rerun.fragment_id: m.auto_rerun.interval for m in msgs if m.WhichOneof("type") == "auto_rerun"}
    return [timers.get(m.delta.fragment_id, 0.0) for m in msgs
            if m.WhichOneof("type") == "delta" and words in str(m.delta.new_element)]


def test_the_demo_builds_status_lines_follow_the_build_without_a_click(with_library, monkeypatch):
    """QA: the demo build's status line (the Overview's card, the sidebar of every page, the Data page)
    was drawn once with the page: it kept saying the step and percentage of that moment ("55%:
    Training the demo model: ...") until the user clicked something, while the build went on. Each is
    now drawn again every few seconds (a fragment on a timer), with the build's current step."""
    import threading

    runners = _runs_messages(monkeypatch)
    release = threading.Event()
    _hold_a_demo_build(monkeypatch, release)
    try:
        at = start()  # the Overview, during the build
        assert "55%: Training the demo model" in text(at.caption) and "Scoring the baselines" in text(at.caption)
        overview = _redrawn_lines(runners[-1], "55%: Training the demo model")
        sidebar = _redrawn_lines(runners[-1], "The demo is being built for this server (55%")
        assert overview and sidebar and all(0 < s <= 5 for s in overview + sidebar), (overview, sidebar)
        at.session_state[state.DEMO_WANTED] = False  # (not following the build: the run would wait for it)
        upload(at, "tumour.h5ad", tumour_h5ad(30, seed=1))  # the Data page's line, under its card
        data_page = _redrawn_lines(runners[-1], "The demo is being built for this server (55%")
        assert len(data_page) == 2 and all(0 < s <= 5 for s in data_page), data_page  # the page's and the sidebar's
    finally:
        release.set()


def test_a_model_has_one_name_in_the_table_the_pickers_the_card_and_the_removal(empty_library):
    """QA: two GEFITINIB models (one trained in the app, one with `scatd train`) read "GEFITINIB (VAE on
    genes, trained) 2" in the library table and card, but "GEFITINIB · VAE on genes (trained in scATD
    Studio)" in the Model page's picker and the Remove picker, two entries alike, and "Removed GEFITINIB ·
    VAE on genes (trained in scATD Studio) from the library.". One name per model everywhere now
    (scatd_core.bundle.display_names)."""
    import shutil

    first = empty_library / "Gefitinib_dist_vae_trained"
    make_bundle(first, make_dataset(40, seed=2), steps=1, drug="Gefitinib")
    second = Path(shutil.copytree(first, empty_library / "GEFITINIB_dist_vae_trained-2"))
    names = {str(first): "Gefitinib (VAE on genes, trained)", str(second): "GEFITINIB (VAE on genes, trained) 2"}
    for folder, drug, via in ((first, "Gefitinib", "the Train page"), (second, "GEFITINIB", "scatd train")):
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest.update(drug=drug, name=names[str(folder)])
        manifest["provenance"]["source"] = f"trained by scATD Studio ({via})"
        (folder / "manifest.json").write_text(json.dumps(manifest))
    at = goto(start(), "8_Models")
    assert sorted(at.dataframe[0].value["name"]) == sorted(names.values())
    remove = at.selectbox(key="models_remove_choice")
    assert sorted(remove.options) == sorted(names.values())
    at.selectbox(key="models_remove_choice").set_value(str(second))
    at.run()
    at.checkbox(key="models_remove_sure").check()
    at.run()
    at.button(key="btn_remove_model").click()
    at.run()
    ok(at)
    assert "Removed GEFITINIB (VAE on genes, trained) 2 from the library." in text(at.success).replace("\\", "")

    make_bundle(second, make_dataset(40, seed=2), steps=1, drug="GEFITINIB")  # back, for the Model page
    manifest = json.loads((second / "manifest.json").read_text())
    manifest.update(name=names[str(second)])
    manifest["provenance"]["source"] = "trained by scATD Studio (scatd train)"
    (second / "manifest.json").write_text(json.dumps(manifest))
    goto(at, "2_Model")
    assert sorted(at.selectbox(key="model_bundle").options) == sorted(names.values())
    backbones = at.selectbox(key="model_backbone").options  # every backbone; the others say they are not set up
    assert backbones[0] == "VAE on genes" and all(b.endswith("not set up") for b in backbones[1:]), backbones  # short
    assert "trained in scATD Studio" in at.selectbox(key="model_backbone").help
    at.selectbox(key="model_bundle").set_value(str(second))
    at.run()
    assert any(str(s.value).replace("\\", "") == "GEFITINIB (VAE on genes, trained) 2" for s in at.subheader)


def test_an_import_whose_folder_differs_from_a_models_only_by_case_is_refused_naming_that_folder(tmp_path):
    """GEFITINIB imported without a name beside Gefitinib's (GEFITINIB_dist_vae beside Gefitinib_dist_vae:
    one folder on a macOS or Windows disk) is refused like a taken folder, naming the folder that holds it."""
    from scatd_core.bundle import NameTaken, import_checkpoint

    _small_checkpoints(tmp_path / "import")
    folder, lib = tmp_path / "import", tmp_path / "lib"
    import_checkpoint(folder / "drug.pth", "dist_vae", drug="Gefitinib", genes=folder / "genes.txt", library=lib)
    with pytest.raises(NameTaken) as refused:
        import_checkpoint(folder / "drug.pth", "dist_vae", drug="GEFITINIB", genes=folder / "genes.txt", library=lib)
    assert "(folder Gefitinib_dist_vae)" in str(refused.value) or "folder Gefitinib_dist_vae " in str(refused.value)
    assert sorted(p.name for p in lib.iterdir() if not p.name.startswith(".")) == ["Gefitinib_dist_vae"]


def test_when_no_model_fits_the_data_the_model_page_says_so_before_one_is_chosen(empty_library):
    """QA: with one model in the library whose genes the data lack, the Model page only said "Choose the drug
    model to use."; the coverage refusal came only once it was chosen. Now each model's coverage is said up
    front, when no model in the library fits."""
    from _app_helpers import make_bundle
    from scatd_core.inputs import no_model_fits

    one = make_bundle(empty_library / "DRUGA", make_dataset(60, seed=2), drug="DRUGA", steps=1)
    make_bundle(empty_library / "DRUGB", make_dataset(60, seed=3), drug="DRUGB", steps=1)
    full = make_dataset(40, seed=4)
    few = full[:, :100].copy()  # 5.3% of the models' genes
    at = start()
    upload(at, "few_genes.h5ad", h5ad_bytes(few))
    goto(at, "2_Model")
    assert at.session_state.get(state.BUNDLE_PATH) is None  # nothing chosen
    shown = text(at.warning).replace("\\", "")
    assert "No drug model in the library fits these data: each has too few of its genes in them" in shown
    n = full.n_vars
    assert [line[:5] for line in shown.split("\n") if line.startswith("- ")] == ["- DRU", "- DRU"]  # a list
    for drug in ("DRUGA", "DRUGB"):
        assert f"- {drug}" in shown
    assert shown.count(f"only 100 of the model's {n:,} genes (5.3%) are in the data") == 2
    assert shown.count("upload the full gene matrix") == 1  # the likely cause and what to do, once
    # one model alone: said of it
    statement, lines, _ = no_model_fits(few, [one], {str(one.path): "DRUGA"})
    assert statement.startswith("The only drug model in the library does not fit these data")
    assert lines == [f"DRUGA: only 100 of the model's {n:,} genes (5.3%) are in the data"]
    upload(at, "all_genes.h5ad", h5ad_bytes(full))
    goto(at, "2_Model")
    assert "fits these data" not in text(at.warning) and "does not fit these data" not in text(at.warning)
