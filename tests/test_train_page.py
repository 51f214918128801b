"""The Train page (Streamlit AppTest): empty state, a tiny training run, metrics, library entry."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from scatd_app import state as S
from scatd_core.bundle import list_library

from _app_helpers import assert_charts_described
from test_train import synthetic

APP = str(Path(__file__).resolve().parents[1] / "app.py")
TIMEOUT = 120


def _page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at.switch_page("app_pages/7_Train.py")
    return at


def _page_with_training_data() -> AppTest:
    """The Train page with synthetic() bulk data and labels, its cells as the current dataset."""
    bulk, labels, target = synthetic()
    at = _page()
    at.session_state["train_bulk"] = {"adata": bulk, "name": "bulk.csv"}
    at.session_state["train_labels"] = {"table": labels, "name": "labels.csv"}
    at.session_state[S.ADATA] = target
    at.session_state[S.DATA_NAME] = "tumour.h5ad"
    at.session_state[S.LABEL_COLUMN] = "response"
    return at


def _click_on_one_thread(at: AppTest, key: str) -> None:
    """Click a training button with torch on one thread (the small networks' setting; fewer
    threads waiting on each other on a busy 2-core machine), the process's count restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        at.button(key=key).click().run()
    finally:
        torch.set_num_threads(threads)


def test_empty_state_asks_for_data():
    at = _page().run()
    assert not at.exception
    assert any("Give the bulk data" in i.value for i in at.info)


def test_train_on_current_dataset_reports_metrics_and_adds_to_library():
    at = _page_with_training_data()
    at.run()
    assert not at.exception, at.exception
    assert at.selectbox(key="train_drug").options == ["DRUGA", "OTHER"]
    # synthetic(): 48 bulk cell lines, 3 of them without a DRUGA label
    assert any("of the 48 bulk cell lines; 3 without a label for this drug" in c.value for c in at.caption), \
        [c.value for c in at.caption]
    assert at.selectbox(key="train_label_column").value == "response"
    at.radio(key="train_resistant_response").set_value("0")  # synthetic() codes 1 = sensitive, as SCAD
    at.number_input(key="train_folds").set_value(3)
    at.number_input(key="train_pretrain_epochs").set_value(3)
    at.number_input(key="train_members").set_value(2)
    _click_on_one_thread(at, "btn_train_start")
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    result = at.session_state["train_result"]
    labels_shown = [m.label for m in at.metric]
    assert labels_shown == ["Bulk CV AUROC", "Bulk CV AUPRC", "Target AUROC", "Target AUPRC"]
    # every AUPRC with its chance level (the share resistant): 45 labelled lines, about half resistant
    metrics = result["report"]["metrics"]
    assert metrics["cv"]["auprc_chance"] == pytest.approx(result["report"]["labels"]["resistant"] / 45)
    deltas = {m.label: m.delta for m in at.metric}
    assert deltas["Bulk CV AUPRC"] == f"chance {metrics['cv']['auprc_chance']:.2f}"
    assert deltas["Target AUPRC"] == f"chance {metrics['target']['auprc_chance']:.2f}"
    assert result["report"]["metrics"]["target"]["label_column"] == "response"
    # the model records the names of what it was trained on (the uploads' own names) and where
    from scatd_core.bundle import load_bundle

    prov = load_bundle(result["bundle_path"]).manifest["provenance"]
    assert (prov["bulk"]["name"], prov["labels"]["name"], prov["target"]["name"]) == ("bulk.csv", "labels.csv",
                                                                                       "tumour.h5ad")
    # named as what it is (not the published, distilled scATD-sf-dist), and each score rounded once alike
    assert load_bundle(result["bundle_path"]).title == "DRUGA · VAE on genes (trained in scATD Studio)"
    target_ev = next(e for e in result["report"]["card"]["evaluations"] if e["name"] == "target")
    assert target_ev["scores"][0]["auprc"] == pytest.approx(metrics["target"]["auprc"], abs=1e-12)
    assert prov["source"] == "trained by scATD Studio (the Train page)"
    assert "target cells (tumour.h5ad" in result["report"]["card"]["data"]["summary"]
    details = next(e for e in at.expander if e.label == "Data, genes and settings")
    assert "bulk bulk.csv" in details.markdown[0].value and "head linear" in details.markdown[0].value
    assert len(at.get("plotly_chart")) == 2  # the model card's AUROCs, pretraining losses
    assert [a.split(" ")[0] for a in assert_charts_described(at)] == ["AUROC", "Line"]
    # the model card: the baselines next to the model, and a verdict for each
    shown = at.dataframe[0].value  # the bulk CV's table; the baselines by short names, their settings said below
    assert list(shown["model"][:3]) == ["this model", "logistic regression", "gradient boosting"]
    captions = [c.value.replace("\\", "") for c in at.caption]  # markdown escapes taken off
    baselines = next(c for c in captions if c.startswith("Baselines: "))
    assert baselines.startswith("Baselines: logistic regression (C tuned by inner CV, balanced) [C chosen from 0.001, "
                                "0.003, 0.01 (the heads' C), 0.03, 0.1, 0.3, 1 by ")  # and the C chosen, said
    assert baselines.endswith("]; gradient boosting (HistGradientBoosting, balanced); logistic regression, heads' C "
                              "(C=0.01, balanced).")  # the model's head without the latent
    verdicts = [m.value for m in at.success] + [m.value for m in at.warning]
    assert sum("logistic regression" in v.lower() for v in verdicts) == 4  # tuned and heads' C; bulk CV and target
    library = [e.bundle.path for e in list_library() if e.ok]
    assert [str(p) for p in library] == [result["bundle_path"]]
    # QA: the target predictions' download held only cell_id and prob_resistant: now the threshold, the call
    # and the known label too
    download = next(b for b in at.get("download_button") if b.proto.label == "Target predictions (CSV)")
    assert "threshold" in download.proto.help and "known label" in download.proto.help
    assert {"threshold", "label", "known_label"} <= set(result["predictions"].columns)
    at.button(key="btn_train_use_model").click().run()
    assert at.session_state[S.BUNDLE_PATH] == result["bundle_path"]
    # QA: "Go to the Predict page" was said with no link to it
    link = next(p for p in at.get("page_link") if "Predict" in p.proto.label)
    assert link.proto.page == "predict"
    at.button(key="btn_train_stop").click().run()  # nothing runs: nothing to say, nothing lost
    assert not at.exception and at.session_state["train_result"] is result
    assert not any("stopped" in i.value for i in at.info) and at.session_state["train_stop"] is False
    at.session_state["train_running"] = True  # as a run left it that a Stop click interrupted
    at.button(key="btn_train_stop").click().run()
    assert "Training was stopped; no model was saved." in [i.value for i in at.info]
    assert at.session_state["train_result"] is result and "train_running" not in at.session_state


def test_a_drug_with_too_few_lines_of_a_class_is_refused_as_soon_as_it_is_chosen():
    """QA: a drug with 2 sensitive cell lines trained from the page like any other. The page now refuses it
    under its counts as soon as it is chosen (Train disabled), with the minimum the panel uses."""
    at = _page_with_training_data()
    at.run()
    assert not at.error and not at.button(key="btn_train_start").disabled
    assert at.number_input(key="train_min_lines").value == 10 == at.number_input(key="train_panel_min_lines").value
    labels = at.session_state["train_labels"]["table"]
    labels.loc[labels.index[3:40], "DRUGA"] = "resistant"  # 5 sensitive lines left of the 45 labelled
    at.run()
    assert not at.exception, at.exception
    errors = [e.value.replace("\\", "") for e in at.error]  # markdown escapes taken off
    assert any(e.startswith("**DRUGA: only 5 sensitive and 40 resistant labelled cell lines in the bulk data; a "
                            "model needs at least 10 of each.") and "Fewest labelled cell lines per class" in e
               for e in errors), errors
    assert at.button(key="btn_train_start").disabled
    at.number_input(key="train_min_lines").set_value(5).run()  # a lower minimum, asked for: allowed
    assert not at.error and not at.button(key="btn_train_start").disabled


def test_the_model_names_placeholder_is_the_name_an_empty_field_gives():
    """QA: with the default name taken, an empty Model name made a second model of the very same name; the
    placeholder now shows the name it will get, with a number added when it is taken."""
    import json

    from scatd_core.config import model_library_dir

    at = _page_with_training_data()
    at.run()
    field = next(t for t in at.text_input if t.label == "Model name")
    assert field.placeholder == "DRUGA (VAE on genes, trained)"
    folder = model_library_dir() / "an_earlier_one"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"name": "DRUGA (VAE on genes, trained)"}))
    at.run()
    assert next(t for t in at.text_input if t.label == "Model name").placeholder == "DRUGA (VAE on genes, trained) 2"


def test_a_run_ended_by_streamlits_own_stop_is_said_stopped_on_the_next_run():
    """QA: Streamlit's own Stop (beside "Running...", the first "Stop" on the page) ends the run without a
    rerun, so the page's Stop flag was never set: the page kept a frozen progress bar and never said the
    training was stopped. Any run that began and did not end is said stopped on the next run, once."""
    at = _page_with_training_data()
    at.run()
    at.session_state["train_running"] = True  # as a run ended by Streamlit's Stop left it (train_stop not set)
    at.run()
    assert not at.exception, at.exception
    assert "Training was stopped; no model was saved." in [i.value for i in at.info]
    assert "train_running" not in at.session_state
    at.run()  # said once
    assert not any("stopped" in i.value for i in at.info)
    at.session_state["train_running"] = "panel"  # a panel training: the models finished before it were saved
    at.run()
    assert any(i.value.startswith("The panel training was stopped; the drugs' models finished before it are in the "
                                  "model library") for i in at.info)


def test_the_data_pages_qc_filter_applies_to_training_on_the_current_dataset():
    """With the QC filter on, the filtered cells are left out of training and evaluation, as the
    Predict page leaves them out, and the page says so."""
    import numpy as np

    at = _page_with_training_data()
    target = at.session_state[S.ADATA]
    qc = np.ones(target.n_obs, dtype=bool)
    qc[:6] = False
    target.obs["scatd_qc_pass"] = qc
    at.run()
    assert not at.exception, at.exception
    assert any("6 cells marked 'filtered (QC)' are left out" in c.value and "34 cells are used" in c.value
               for c in at.caption), [c.value for c in at.caption]
    at.radio(key="train_resistant_response").set_value("0")
    at.number_input(key="train_folds").set_value(3)
    at.number_input(key="train_pretrain_epochs").set_value(2)
    at.number_input(key="train_members").set_value(2)
    _click_on_one_thread(at, "btn_train_start")
    assert not at.exception, at.exception
    report = at.session_state["train_result"]["report"]
    saved = next(m.value for m in at.success if m.value.startswith("Saved to the model library"))
    assert str(at.session_state["train_result"]["bundle_path"]) not in saved  # the name, not a server path
    assert report["metrics"]["target"]["n_evaluated"] == 34
    assert report["target"]["n_used"] == 34 and report["target"]["filtered"] == 6
    # the Model page gives an ensemble's latent width per member, as the Cells page's UMAP uses them together
    at.button(key="btn_train_use_model").click().run()
    at.switch_page("app_pages/2_Model.py").run()
    assert not at.exception, at.exception
    z = report["settings"]["z_dim"]
    latent = next(m for m in at.metric if m.label == "Latent dimensions")
    assert latent.value == f"2 × {z}" and f"({2 * z} dimensions)" in latent.help


def test_demo_panel_offers_its_drugs_and_upload_target_needed():
    at = _page().run()
    at.radio[0].set_value("Simulated demo panel").run()
    assert not at.exception, at.exception
    assert "Bulk: **simulated demo panel**, 300 samples" in _in_use(at)[0]
    # no current dataset: the target must be uploaded before a drug can be chosen
    assert at.radio(key="train_target_source").options == ["Upload another dataset"]
    assert any("Give the bulk data" in i.value for i in at.info)


def test_the_simulated_demo_panel_trains_demo_models(monkeypatch):
    """QA: a model trained on the simulated demo panel was saved as a real model ("demo": false) and
    offered for real data. The page asks for demo models, for one drug and for a panel alike."""
    import scatd_core.train as training
    from scatd_core.errors import ScatdError

    asked = {}

    def fake(which):
        def train(*args, **kwargs):
            asked[which] = kwargs.get("demo")
            raise ScatdError("stopped by the test")
        return train

    monkeypatch.setattr(training, "train_drug_model", fake("model"))
    monkeypatch.setattr(training, "train_panel", fake("panel"))
    _, _, target = synthetic()
    at = _page()
    at.session_state[S.ADATA] = target
    at.session_state[S.DATA_NAME] = "tumour.h5ad"
    at.run()
    at.radio[0].set_value("Simulated demo panel").run()
    assert not at.exception, at.exception
    at.button(key="btn_train_start").click().run()
    at.multiselect(key="train_panel_drugs").set_value(["DEMOTINIB", "DEMOPLATIN"]).run()
    at.button(key="btn_train_panel").click().run()
    assert not at.exception, at.exception
    assert asked == {"model": True, "panel": True}


def test_a_logout_stops_the_training_and_log_out_is_usable_meanwhile(tmp_path, monkeypatch):
    """QA: a user logged out during a training, which ran on, holding a place in the server's queue
    (its Stop was read from session state, which the logout cleared); and while a training waited
    in the queue, Log out was greyed out (the sidebar is drawn after the page: until then it was the
    previous run's button, which Streamlit shows faded). Log out is drawn before the page runs now,
    and a logout in any tab of the session, or its expiry (both stop the session's owned work),
    stops the training at its next progress report."""
    import streamlit as st
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    import scatd_core.train as training
    from scatd_app import session
    from scatd_core import users
    from scatd_core.errors import ScatdError

    monkeypatch.setenv("SCATD_AUTH", "password")
    monkeypatch.setenv("SCATD_USERS_FILE", str(tmp_path / "users.toml"))
    monkeypatch.setenv("SCATD_WORK_DIR", str(tmp_path / "work"))
    users.add_user("alice", "a long enough password", admin=False)
    drawn = []

    def fake(*args, progress, should_stop, **kwargs):
        drawn.append("btn_logout" in get_script_run_ctx().shared.widget_user_keys_this_run)  # in this run, so far
        progress(0.1, "epoch 1")
        drawn.append(should_stop())
        session.store().cancel_work(str(st.session_state[session.SESSION_ID]))  # what a logout or expiry does
        drawn.append(should_stop())
        progress(0.2, "epoch 2")  # stops here
        drawn.append("ran on")
        raise ScatdError("ran on past the logout")

    monkeypatch.setattr(training, "train_drug_model", fake)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at.text_input(key="login_name").set_value("alice")
    at.text_input(key="login_password").set_value("a long enough password")
    at.get("form_submit_button")[0].click()
    at.run()
    at.switch_page("app_pages/7_Train.py")
    bulk, labels, target = synthetic()
    at.session_state["train_bulk"] = {"adata": bulk, "name": "bulk.csv"}
    at.session_state["train_labels"] = {"table": labels, "name": "labels.csv"}
    at.session_state[S.ADATA] = target
    at.session_state[S.DATA_NAME] = "tumour.h5ad"
    at.run()
    at.button(key="btn_train_start").click().run()
    assert not at.exception, at.exception
    assert drawn == [True, False, True]
    said = [e.value.replace("\\", "") for e in at.error]
    assert any("Stopped: this session was logged out" in m for m in said), said
    assert [b.label for b in at.sidebar.button] == ["Log out"]


def test_a_session_logged_out_while_its_training_waits_leaves_the_queue(monkeypatch):
    """A training waiting for a slot of the server's queue when its session is logged out in another
    tab (or expires) leaves the queue at once, not when a slot frees only to stop at its first report."""
    import contextlib
    import threading

    import scatd_core.train as training
    from scatd_app import jobs, session

    monkeypatch.setattr(training, "train_drug_model", lambda *a, **k: pytest.fail("started after the logout"))
    at = _page_with_training_data()
    at.run()
    sid = str(at.session_state[session.SESSION_ID])
    queue = jobs.queue()
    with contextlib.ExitStack() as held:
        for _ in range(queue.slots):  # the server busy: the training waits
            held.enter_context(queue.slot())
        logout = threading.Timer(1.0, lambda: session.store().cancel_work(sid))  # what a logout or expiry does
        logout.start()
        at.button(key="btn_train_start").click().run()
        logout.join()
        assert not queue.waiting
    said = [e.value.replace("\\", "") for e in at.error]
    assert any("Stopped: this session was logged out" in m for m in said), said


def test_uploads_are_read_once_and_streamlits_copy_let_go(monkeypatch):
    import pandas as pd

    from scatd_app import session

    released = []
    monkeypatch.setattr(session, "release_upload", lambda file_id: released.append(file_id) or True)
    _, labels, target = synthetic()
    frame = pd.DataFrame(target.X, index=target.obs_names, columns=target.var_names)
    at = _page().run()
    at.file_uploader(key="upload_train_target").upload("cells.csv", frame.to_csv().encode())
    at.file_uploader(key="upload_train_labels").upload("labels.csv", labels.to_csv().encode())
    at.run()
    assert not at.exception, at.exception
    entry, table = at.session_state["train_target"], at.session_state["train_labels"]
    assert entry["adata"].n_obs == target.n_obs and entry["name"] == "cells.csv"
    assert table["table"].shape[0] == labels.shape[0] and table["name"] == "labels.csv"
    assert sorted(released) == sorted([entry["id"], table["id"]])
    at.run()  # nothing read again
    assert len(released) == 2


def test_a_training_upload_takes_only_what_the_servers_memory_budget_leaves(monkeypatch):
    """As on the Data page: the Train page reads its uploads into memory only when the server's
    budget (server.memory_mb) has room for them, and says why not."""
    import pandas as pd

    from scatd_core import _memory

    _, _, target = synthetic()
    frame = pd.DataFrame(target.X, index=target.obs_names, columns=target.var_names)
    monkeypatch.setenv("SCATD_SERVER_MEMORY_MB", "1000")
    monkeypatch.setattr(_memory, "rss_bytes", lambda: 1000 << 20)  # nothing free
    monkeypatch.setattr(_memory, "idle_footprint", lambda: None)  # not measured: the whole process counts
    at = _page().run()
    at.file_uploader(key="upload_train_target").upload("cells.csv", frame.to_csv().encode())
    at.run()
    assert not at.exception, at.exception
    assert "train_target" not in at.session_state
    assert any("free for a new dataset now: none (of its 1,000 MB" in e.value.replace("\\", "") for e in at.error)
    monkeypatch.setattr(_memory, "rss_bytes", lambda: 100 << 20)  # memory freed: read on the next run
    at.run()
    assert at.session_state["train_target"]["adata"].n_obs == target.n_obs


def test_original_head_settings_and_few_labelled_cells_column():
    bulk, labels, target = synthetic()
    target.obs["some_labels"] = [0, 0, 1, 1] + [None] * (target.n_obs - 4)
    at = _page()
    at.session_state["train_bulk"] = {"adata": bulk, "name": "bulk.csv"}
    at.session_state["train_labels"] = {"table": labels, "name": "labels.csv"}
    at.session_state[S.ADATA] = target
    at.session_state[S.DATA_NAME] = "tumour.h5ad"
    at.run()
    assert not at.exception, at.exception
    assert "train_epochs" not in [n.key for n in at.number_input]  # the original head's settings stay hidden
    at.radio(key="train_head").set_value("scatd").run()
    assert {"train_epochs", "train_finetune_epochs", "train_mmd_weight"} <= {n.key for n in at.number_input}
    at.selectbox(key="train_few_shot_column").set_value("some_labels").run()
    at.radio(key="train_resistant_some_labels").set_value("0").run()
    assert any("4 labelled cells" in c.value for c in at.caption)
    at.number_input(key="train_pretrain_epochs").set_value(2)
    at.button(key="btn_train_start").click().run()
    assert not at.exception, at.exception
    assert any("default linear head" in e.value for e in at.error)  # few-shot needs the linear head


def test_train_a_panel_of_drugs_saves_it_for_the_user():
    from scatd_core.panel import list_panels

    bulk, labels, target = synthetic()
    labels["OTHER"] = labels["DRUGA"].map({"resistant": "sensitive", "sensitive": "resistant"})
    labels["ALLSENSITIVE"] = "sensitive"  # no resistant line: skipped, with the reason
    at = _page()
    at.session_state["train_bulk"] = {"adata": bulk, "name": "bulk.csv"}
    at.session_state["train_labels"] = {"table": labels, "name": "labels.csv"}
    at.session_state[S.ADATA] = target
    at.session_state[S.DATA_NAME] = "tumour.h5ad"
    at.run()
    at.selectbox(key="train_label_column").set_value("response").run()
    at.radio(key="train_resistant_response").set_value("0")  # synthetic() codes 1 = sensitive, as SCAD
    for key, value in (("train_folds", 2), ("train_pretrain_epochs", 2), ("train_members", 2),
                       ("train_panel_min_lines", 2)):
        at.number_input(key=key).set_value(value)
    at.multiselect(key="train_panel_drugs").set_value(["DRUGA", "OTHER", "ALLSENSITIVE"])
    at.text_input(key="train_panel_name").input("my two").run()  # the button is enabled once drugs are chosen
    # the cells' true labels evaluate the drug chosen above (DRUGA) unless another is chosen
    assert at.selectbox(key="train_panel_label_drug").value == "DRUGA"
    _click_on_one_thread(at, "btn_train_panel")
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    summary = at.session_state["train_panel_result"]
    assert list(summary["drug"]) == ["DRUGA", "OTHER", "ALLSENSITIVE"]
    assert list(summary["status"]) == ["trained", "trained", "skipped"]
    assert "0 resistant" in summary["note"].iloc[2]
    assert 0 <= summary["target_auroc"].iloc[0] <= 1 and summary["target_auroc"].iloc[1:].isna().all()
    trained = list(summary["bundle"].iloc[:2])
    entries = {e.path.name: e for e in list_library() if e.ok}
    assert sorted(entries) == sorted(trained)
    # the panel is trained with the page's settings: the ensemble of 2 linear-head members chosen above
    assert all(entries[name].bundle.manifest["training"]["settings"]["members"] == 2 for name in trained)
    prov = entries[trained[0]].bundle.manifest["provenance"]
    assert prov["source"] == "trained by scATD Studio (the Train page's panel)" and prov["bulk"]["name"] == "bulk.csv"
    assert list_panels(at.session_state["user"].name)["my two"]["models"] == trained


def test_kept_widget_values_log_no_duplicated_default_warning(monkeypatch):
    """The Train page's widgets have defaults and are kept across pages (state.keep_widget_state):
    no warning with a stack trace in the server's log on the next run."""
    from streamlit.elements.lib import policies

    logged = []
    monkeypatch.setattr(policies, "_shown_default_value_warning", False)
    monkeypatch.setattr(policies._LOGGER, "warning", lambda message, *args, **kw: logged.append(message % args))
    at = _page_with_training_data()
    at.run()
    at.run()
    assert not at.exception, at.exception
    assert at.selectbox(key="train_label_column").value == "response"
    assert not [m for m in logged if "set via the Session State API" in m], logged


def test_original_head_result_says_its_cv_epochs_come_from_the_other_folds():
    at = _page_with_training_data()
    at.run()
    at.radio(key="train_head").set_value("scatd").run()
    at.radio(key="train_resistant_response").set_value("0")
    for key, value in {"train_folds": 3, "train_pretrain_epochs": 2, "train_epochs": 6,
                       "train_finetune_epochs": 1}.items():
        at.number_input(key=key).set_value(value)
    _click_on_one_thread(at, "btn_train_start")
    assert not at.exception, at.exception
    cv = at.session_state["train_result"]["report"]["cv"]
    caption = next(c.value for c in at.caption if "other folds' mean curve" in c.value)
    assert f"final model's {cv['head_epochs']} head epochs" in caption
    assert all(f"fold {k + 1}: {e}" in caption for k, e in enumerate(cv["fold_head_epochs"]))


def test_train_panel_name_is_checked_first_and_an_unsaved_panel_is_said(monkeypatch):
    """A bad panel name is refused before any training; a panel with fewer than two usable models
    (one left out below chance) is not saved, and the page says so."""
    import pandas as pd

    from scatd_core.panel import list_panels

    calls = []

    def fake_train_panel(*a, **k):
        calls.append(k)
        bundle = type("B", (), {"drug": "DRUGA", "path": Path("/nowhere/druga_model")})()
        summary = pd.DataFrame([{"drug": "DRUGA", "status": "trained", "below_chance": True, "bundle": "druga_model",
                                 "verdict": "Below chance"}])
        return summary, [bundle]

    monkeypatch.setattr("scatd_core.train.train_panel", fake_train_panel)
    at = _page_with_training_data()
    at.run()
    at.multiselect(key="train_panel_drugs").set_value(["DRUGA"])
    at.text_input(key="train_panel_name").input("bad/name").run()
    at.button(key="btn_train_panel").click().run()
    assert not at.exception, at.exception
    assert "not a valid panel name" in " ".join(e.value for e in at.error) and calls == []
    at.text_input(key="train_panel_name").input("mine").run()
    at.button(key="btn_train_panel").click().run()
    assert not at.exception, at.exception
    warnings = " ".join(w.value for w in at.warning)
    assert len(calls) == 1 and "at or below chance on the bulk CV: DRUGA" in warnings
    assert "was not saved: only 0 drugs have a model for it" in warnings
    assert "mine" not in list_panels(at.session_state["user"].name)


def test_train_panel_asks_before_replacing_a_saved_panel_and_says_each_verdict(monkeypatch):
    """QA: "Save them as your panel named" replaced a saved panel of that name unasked (whatever the
    case of the name); it is refused before any training unless 'Replace it' is ticked. The summary
    says each drug's verdict as a sentence (the column was off-screen), below_chance as words, and
    has no empty cv_auroc_sd column."""
    import json

    import pandas as pd

    from scatd_core import panel

    calls, saves = [], []
    bundles = [type("B", (), {"drug": d, "path": Path(f"/nowhere/{d.lower()}_model")})() for d in ("DRUGA", "OTHER")]

    def fake_train_panel(*a, **k):
        calls.append(k)
        summary = pd.DataFrame([{"drug": "DRUGA", "status": "trained", "below_chance": False,
                                 "bundle": "druga_model", "verdict": "Better than logistic regression."},
                                {"drug": "OTHER", "status": "trained", "below_chance": False,
                                 "bundle": "other_model", "verdict": ""}])
        return summary, bundles

    monkeypatch.setattr("scatd_core.train.train_panel", fake_train_panel)
    monkeypatch.setattr("scatd_core.panel.save_panel", lambda *a, **k: saves.append((a, k)))
    at = _page_with_training_data()
    at.run()
    user = at.session_state["user"].name
    path = panel.panels_file(user)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"panels": {"keepme": {"models": ["a", "b"], "drugs": {"a": "DRUGA", "b": "DRUGB"}}}}))
    at.multiselect(key="train_panel_drugs").set_value(["DRUGA", "OTHER"])
    at.text_input(key="train_panel_name").input("Keepme").run()
    box = at.checkbox(key="train_panel_replace_keepme_1")
    assert "your saved panel 'keepme' (2 models: DRUGA, DRUGB) becomes the trained models" in box.label.replace("\\", "")
    at.button(key="btn_train_panel").click().run()
    assert not at.exception, at.exception
    error = " ".join(e.value for e in at.error).replace("\\", "")
    assert "You already have a panel named 'Keepme'" in error and "2 models: DRUGA, DRUGB" in error
    assert "tick 'Replace it'" in error and calls == [] and saves == []  # refused before any training
    at.checkbox(key="train_panel_replace_keepme_1").check().run()
    at.button(key="btn_train_panel").click().run()
    assert not at.exception, at.exception
    assert len(calls) == 1 and saves[0][0][0] == "Keepme" and saves[0][1]["replace"] is True
    assert "Replaced your panel 'Keepme'." in " ".join(s.value for s in at.success)
    assert "- DRUGA: Better than logistic regression." in " ".join(m.value for m in at.markdown).replace("\\", "")
    shown = at.dataframe[-1].value
    assert "verdict" not in shown.columns and list(shown["below_chance"]) == ["no", "no"]
    at.run()
    assert at.checkbox(key="train_panel_replace_keepme_2").value is False  # asked again next time


def test_train_panel_replace_box_is_unticked_after_a_replace_and_when_the_name_changes(monkeypatch):
    """QA r1: after a panel training replaced a saved panel, the 'Replace it' box stayed ticked on
    the page (and stayed ticked when the name was retyped in another case), so the next training
    looked set to replace again unasked. It is unticked as soon as the replace is done, and
    whenever the panel name is changed: each replace is ticked for itself."""
    import json

    import pandas as pd

    from scatd_core import panel

    calls, saves = [], []
    bundles = [type("B", (), {"drug": d, "path": Path(f"/nowhere/{d.lower()}_model")})() for d in ("DRUGA", "OTHER")]

    def fake_train_panel(*a, **k):
        calls.append(k)
        return pd.DataFrame([{"drug": d, "status": "trained", "below_chance": False, "bundle": b.path.name,
                              "verdict": ""} for d, b in zip(("DRUGA", "OTHER"), bundles)]), bundles

    def replace_boxes():
        return [c for c in at.checkbox if (c.key or "").startswith("train_panel_replace_")]

    monkeypatch.setattr("scatd_core.train.train_panel", fake_train_panel)
    monkeypatch.setattr("scatd_core.panel.save_panel", lambda *a, **k: saves.append((a, k)))
    at = _page_with_training_data()
    at.run()
    path = panel.panels_file(at.session_state["user"].name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"panels": {name: {"models": ["a", "b"], "drugs": {"a": "DRUGA", "b": "DRUGB"}}
                                           for name in ("keepme", "other")}}))
    at.multiselect(key="train_panel_drugs").set_value(["DRUGA", "OTHER"])
    at.text_input(key="train_panel_name").input("keepme").run()
    replace_boxes()[0].check().run()
    at.button(key="btn_train_panel").click().run()
    assert not at.exception, at.exception
    assert len(saves) == 1 and saves[0][1]["replace"] is True
    assert "Replaced your panel 'keepme'." in " ".join(s.value for s in at.success)
    assert [b.value for b in replace_boxes()] == [False]  # unticked on the page the replace is said on
    at.button(key="btn_train_panel").click().run()  # the same name again, not ticked again: refused
    assert "tick 'Replace it'" in " ".join(e.value for e in at.error) and len(calls) == 1 and len(saves) == 1
    at.text_input(key="train_panel_name").input("other").run()  # another saved panel: asked afresh
    assert [b.value for b in replace_boxes()] == [False]
    replace_boxes()[0].check().run()
    at.text_input(key="train_panel_name").input("OTHER").run()  # the name changed (its case only): unticked
    assert [b.value for b in replace_boxes()] == [False]
    at.button(key="btn_train_panel").click().run()
    assert "tick 'Replace it'" in " ".join(e.value for e in at.error) and len(calls) == 1 and len(saves) == 1


def test_train_panel_trains_the_chosen_drug_with_the_labelled_cells(monkeypatch):
    """The panel trained on the Train page ignored the 'Labelled cells to train with' column chosen
    above; it now asks which drug of the panel those labels are for (the drug chosen above by
    default), and only that drug's model trains with them."""
    import pandas as pd

    calls = []

    def fake_train_panel(*a, **k):
        calls.append(k)
        return pd.DataFrame(columns=["drug", "status", "below_chance", "bundle", "verdict"]), []

    monkeypatch.setattr("scatd_core.train.train_panel", fake_train_panel)
    bulk, labels, target = synthetic()
    target.obs["some_labels"] = [0, 0, 1, 1] + [None] * (target.n_obs - 4)
    at = _page()
    at.session_state["train_bulk"] = {"adata": bulk, "name": "bulk.csv"}
    at.session_state["train_labels"] = {"table": labels, "name": "labels.csv"}
    at.session_state[S.ADATA] = target
    at.session_state[S.DATA_NAME] = "tumour.h5ad"
    at.run()
    at.multiselect(key="train_panel_drugs").set_value(["DRUGA", "OTHER"]).run()
    assert "train_panel_few_shot_drug" not in [s.key for s in at.selectbox]  # no labelled cells chosen: not asked
    at.button(key="btn_train_panel").click().run()
    assert calls[-1]["few_shot_labels"] is None and calls[-1]["few_shot_drug"] is None
    at.selectbox(key="train_few_shot_column").set_value("some_labels").run()
    at.radio(key="train_resistant_some_labels").set_value("0").run()
    assert at.selectbox(key="train_panel_few_shot_drug").value == "DRUGA"  # the drug chosen above
    at.selectbox(key="train_panel_few_shot_drug").set_value("OTHER").run()
    at.button(key="btn_train_panel").click().run()
    assert not at.exception, at.exception
    few = calls[-1]["few_shot_labels"]
    assert calls[-1]["few_shot_drug"] == "OTHER" and few.name == "some_labels" and len(few) == 4
    at.selectbox(key="train_panel_few_shot_drug").select_index(0).run()  # none of these drugs
    at.button(key="btn_train_panel").click().run()
    assert calls[-1]["few_shot_labels"] is None and calls[-1]["few_shot_drug"] is None


def test_upload_errors_name_the_users_files_not_the_pages_copies():
    import pandas as pd

    at = _page().run()
    at.file_uploader(key="upload_train_labels").upload("my labels.csv", b"cell_line,DrugA\nCL1,sensitive,x,y,z\n")
    at.run()
    assert not at.exception, at.exception
    error = " ".join(e.value for e in at.error)
    assert "my labels.csv" in error and "upload0" not in error
    # GDSC IC50 build: a drug listed twice is named, in the user's file
    ic50 = pd.DataFrame([[1.0, 2.0], [0.5, 0.1], [1.0, 2.0]], index=["GDSC:1003", "GDSC:1005", "GDSC:1003"],
                        columns=["CL1", "CL2"])
    at.file_uploader(key="upload_train_ic50").upload("GDSC_IC50.csv", ic50.to_csv().encode())
    at.file_uploader(key="upload_train_thred").upload("IC50_thred.txt", b"Camptothecin\tVinblastine\n1.0\t0.2\n")
    at.file_uploader(key="upload_train_druglist").upload(
        "drugs.csv", b"drug_id,Name,Synonyms\n1003,Camptothecin,\n1005,Vinblastine,\n")
    at.run()
    at.button[[b.label for b in at.button].index("Build labels")].click().run()
    assert not at.exception, at.exception
    error = at.error[-1].value.replace("\\", "")
    assert "GDSC_IC50.csv lists drug GDSC:1003 twice (rows 1 and 3)" in error and "upload" not in error


def test_a_bad_upload_is_read_once_its_error_shown_again(monkeypatch):
    from scatd_core import io, labels

    calls = {"data": 0, "labels": 0}
    read_bytes, read_label_table = io.read_bytes, labels.read_label_table

    def counted_bytes(*a, **k):
        calls["data"] += 1
        return read_bytes(*a, **k)

    def counted_labels(*a, **k):
        calls["labels"] += 1
        return read_label_table(*a, **k)

    monkeypatch.setattr(io, "read_bytes", counted_bytes)
    monkeypatch.setattr(labels, "read_label_table", counted_labels)
    at = _page().run()
    at.file_uploader(key="upload_train_target").upload("cells.csv", b"title\nc,A,B\nx,1,2\ny,3,4\n")
    at.file_uploader(key="upload_train_labels").upload("labels.csv", b"cell_line,DrugA\nCL1,sensitive,x,y\n")
    at.run()
    first = [e.value for e in at.error]
    assert calls == {"data": 1, "labels": 1} and len(first) == 2
    at.run()
    assert calls == {"data": 1, "labels": 1}  # not read again
    assert [e.value for e in at.error] == first and not at.exception
    assert "cells.csv" in " ".join(first) and "labels.csv" in " ".join(first)


def test_a_failed_target_upload_says_the_earlier_target_is_still_used():
    """QA: after a target upload that failed (NaN values), the uploader showed the new file with its
    error while the earlier target was silently still used, and trained on. The page now names the
    target in use, as it names the bulk data and labels, and says the earlier one is still used."""
    import numpy as np
    import pandas as pd

    _, _, target = synthetic()
    frame = pd.DataFrame(target.X, index=target.obs_names, columns=target.var_names)
    at = _page().run()
    at.file_uploader(key="upload_train_target").upload("labels_RS.csv", frame.to_csv().encode())
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    caption = " ".join(c.value for c in at.caption).replace("\\", "")
    assert f"Target: **labels_RS.csv**, {target.n_obs:,} cells × {target.n_vars:,} genes" in caption
    bad = frame.copy()
    bad.iloc[0, 0] = np.nan
    at.file_uploader(key="upload_train_target").upload("with_nan.csv", bad.to_csv().encode())
    at.run()
    assert not at.exception, at.exception
    assert at.error and "with_nan.csv" in " ".join(e.value for e in at.error).replace("\\", "")
    said = " ".join(i.value for i in at.info).replace("\\", "")
    assert "Your earlier target (labels_RS.csv) is still used." in said
    assert at.session_state["train_target"]["name"] == "labels_RS.csv"
    assert "Target: **labels_RS.csv**" in " ".join(c.value for c in at.caption).replace("\\", "")
    at.run()  # shown again on the next run, with the error
    assert "is still used" in " ".join(i.value for i in at.info)


def test_the_datas_warnings_are_said_while_training_and_kept_when_it_fails(monkeypatch):
    """QA: a warning about the data (duplicated bulk IDs, a tiny target) came only with the card at
    the end of a run; it is said as soon as training knows it, and stays when the run fails."""
    from scatd_core import train
    from scatd_core.errors import ScatdError

    def failing(*args, notice=None, **kwargs):
        notice("4 bulk samples have a duplicated ID, e.g. ACH-1 (copy renamed ACH-1-1).")
        raise ScatdError("The run failed for this test.")

    monkeypatch.setattr(train, "train_drug_model", failing)
    at = _page_with_training_data()
    at.run()
    at.radio(key="train_resistant_response").set_value("0")
    at.button(key="btn_train_start").click().run()
    assert not at.exception, at.exception
    shown = [w.value.replace("\\", "") for w in at.warning]  # (as markdown: escaped)
    assert any("4 bulk samples have a duplicated ID" in w for w in shown), shown
    assert any("The run failed for this test" in e.value for e in at.error)


def test_a_warning_said_while_training_is_said_once_when_the_card_says_it(tmp_path, monkeypatch):
    """QA at 1280 px: a data warning said during the run (bulk and target sharing few genes) stayed
    above the result after the run, and the card said it again."""
    import pandas as pd

    from test_card import _card

    from scatd_core import train

    few = "Bulk and target share only 28 genes, so the model sees a small part of the transcriptome."
    report = {"seconds": 3.0, "labels": {"sensitive": 20, "resistant": 25, "n_bulk_without_label": 0},
              "metrics": {"cv": {"auroc": 0.8, "auroc_ci": [0.7, 0.9], "auprc": 0.8, "auprc_chance": 0.556,
                                 "folds": 5}},
              "target": {"n_used": 40}, "card": {**_card(), "warnings": [few]}, "cv": {},
              "pretraining": {"loss": []}, "target_predictions": pd.DataFrame({"cell_id": ["c1"],
                                                                               "prob_resistant": [0.5]})}

    class Saved:
        path, name, is_demo = tmp_path / "M", "M", False

    def trained(*args, notice=None, **kwargs):
        notice(few)
        return Saved(), report

    monkeypatch.setattr(train, "train_drug_model", trained)
    at = _page_with_training_data()
    at.run()
    at.radio(key="train_resistant_response").set_value("0")
    at.button(key="btn_train_start").click().run()
    assert not at.exception, at.exception
    shown = [w.value.replace("\\", "") for w in at.warning]
    assert sum(few in w for w in shown) == 1, shown


def test_on_a_lab_server_the_page_says_what_other_users_will_see_of_the_model(tmp_path, monkeypatch):
    from scatd_core import users

    shared = "goes into this server's shared model library"
    at = _page_with_training_data()
    at.run()
    assert not at.exception and not any(shared in c.value for c in at.caption)  # one user, no login: nothing to say
    monkeypatch.setenv("SCATD_AUTH", "password")
    monkeypatch.setenv("SCATD_USERS_FILE", str(tmp_path / "users.toml"))
    users.add_user("bob", "bob's long password", admin=False)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at.text_input(key="login_name").set_value("bob")
    at.text_input(key="login_password").set_value("bob's long password")
    at.get("form_submit_button")[0].click()
    at.run()
    bulk, labels, target = synthetic()
    at.session_state["train_bulk"] = {"adata": bulk, "name": "bulk.csv"}
    at.session_state["train_labels"] = {"table": labels, "name": "labels.csv"}
    at.session_state[S.ADATA] = target
    at.switch_page("app_pages/7_Train.py")
    at.run()
    assert not at.exception, at.exception
    assert any(shared in c.value and "names you, the files that trained it" in c.value for c in at.caption)


def test_the_label_tables_orientation_is_checked_as_soon_as_bulk_and_labels_are_both_given():
    """QA: a transposed label table (cell lines as columns) offered its cell lines as drugs and was
    refused only when a training started; the page checks it against the bulk's IDs at once."""
    at = _page_with_training_data()
    labels = at.session_state["train_labels"]["table"]
    at.session_state["train_labels"] = {"table": labels.T, "name": "labels.csv"}
    at.run()
    assert not at.exception, at.exception
    (error,) = at.error
    assert "The label table labels.csv looks transposed (cell lines as columns)" in error.value.replace("\\", "")
    assert any("cell lines as rows" in i.value for i in at.info)
    assert not [s for s in at.selectbox if s.key == "train_drug"]  # no drug to choose from a transposed table
    at.session_state["train_labels"] = {"table": labels.assign(**{"ACH-000005": None}), "name": "labels.csv"}
    at.run()
    assert not at.exception and not at.error, at.exception
    shown = [w.value.replace("\\", "") for w in at.warning]
    assert any("column ACH-000005 was taken as drugs" in w for w in shown), shown


def test_the_result_tiles_show_the_auroc_intervals_and_say_when_one_includes_chance(tmp_path):
    """QA (Sorafenib): the tile said "Bulk CV AUROC 0.621" without its interval [0.41, 0.83], which
    includes 0.5; the Cells page warns then, and so does the Train page's result now, once (in the card)."""
    import pandas as pd

    from test_card import _card, _overlapping

    from scatd_core.card import verdict

    bulk_cv = _overlapping(0.01, 0.2, 0.1, name="logistic regression", where="bulk_cv")
    bulk_cv["scores"][0].update(auroc=0.621, auroc_ci=[0.412, 0.829])
    target = _overlapping(-0.1, 0.3, 0.1)  # 0.668 [0.55, 0.78]: above chance
    for ev in (bulk_cv, target):
        ev["verdicts"] = [verdict(ev, ev["scores"][1])]
    report = {"seconds": 3.0, "labels": {"sensitive": 20, "resistant": 25, "n_bulk_without_label": 0},
              "metrics": {"cv": {"auroc": 0.621, "auroc_ci": [0.412, 0.829], "auprc": 0.6, "auprc_chance": 0.556,
                                 "folds": 5},
                          "target": {"auroc": 0.668, "auroc_ci": [0.55, 0.78], "auprc": 0.6, "auprc_chance": 0.5,
                                     "n_evaluated": 100, "n_positive": 50, "label_column": "response",
                                     "n_few_shot_cells_left_out": 0}},
              "card": {**_card(), "evaluations": [bulk_cv, target]}, "cv": {}, "pretraining": {"loss": []}}
    at = _page_with_training_data()
    at.session_state["train_result"] = {"bundle_path": str(tmp_path / "SORAFENIB"), "name": "Sorafenib",
                                        "report": report, "target": "tumour.h5ad",
                                        "predictions": pd.DataFrame({"cell_id": ["c1"], "prob_resistant": [0.5]})}
    at.run()
    assert not at.exception, at.exception
    deltas = {m.label: m.delta for m in at.metric}
    # short enough for the tile at 1280 px (the long form was cut); the help names the bootstrap
    assert deltas["Bulk CV AUROC"] == "95% CI 0.41-0.83"
    assert deltas["Target AUROC"] == "95% CI 0.55-0.78"
    warned = [w.value for w in at.warning]
    # said once, among the model card's verdicts (QA at 1280 px: the page said it under the tiles as well)
    assert sum(w.startswith("On bulk cell lines, 5-fold cross-validation, this model's AUROC 0.621 is not "
                            "distinguishable from chance") for w in warned) == 1, warned
    assert not any("AUROC 0.668 is not distinguishable" in w for w in warned)


def test_the_resistant_answer_stays_changeable_and_the_caption_says_where_it_came_from():
    """QA: once 0 was clicked as resistant, the radio disappeared and the caption said "as said on the
    Data page or recognised from the words" (neither true): a mis-click flipped the card's evaluation
    with no way back but a new upload. The radio stays, with the current answer, and says whose it is."""
    from scatd_core.labels import label_direction, set_label_direction

    at = _page_with_training_data()
    at.run()
    assert not at.exception, at.exception
    radio = at.radio(key="train_resistant_response")
    assert radio.value is None
    radio.set_value("1").run()  # the mis-click
    target = at.session_state[S.ADATA]
    assert label_direction(target, "response") == "1"
    assert at.radio(key="train_resistant_response").value == "1"  # still there, to be changed
    at.radio(key="train_resistant_response").set_value("0").run()
    assert not at.exception, at.exception
    assert label_direction(target, "response") == "0" and at.radio(key="train_resistant_response").value == "0"
    captions = [c.value for c in at.caption]
    assert any(c.startswith("Resistant = '0': it is your answer on this page") for c in captions), captions
    assert not any("recognised from the" in c for c in captions), captions
    # answered on the Data page (the same dataset): said so, and shown in the radio
    set_label_direction(target, "response", "1")
    at.run()
    assert at.radio(key="train_resistant_response").value == "1"
    assert any(c.startswith("Resistant = '1': it is your answer on the Data page") for c in
               [c.value for c in at.caption]), [c.value for c in at.caption]


def test_an_answer_changed_here_is_the_data_pages_answer_too():
    """The current dataset's answer is one: changed on this page, the Data page shows it (its kept radio
    value put the old answer back on the data before)."""
    from scatd_core.labels import label_direction

    at = _page_with_training_data()
    at.switch_page("app_pages/1_Data.py").run()
    assert not at.exception, at.exception
    at.radio(key="label_resistant_response").set_value("1").run()
    target = at.session_state[S.ADATA]
    assert label_direction(target, "response") == "1"
    at.switch_page("app_pages/7_Train.py").run()
    assert at.radio(key="train_resistant_response").value == "1"
    assert any(c.value.startswith("Resistant = '1': it is your answer on the Data page") for c in at.caption)
    at.radio(key="train_resistant_response").set_value("0").run()
    at.switch_page("app_pages/1_Data.py").run()
    assert not at.exception, at.exception
    assert label_direction(target, "response") == "0" and at.radio(key="label_resistant_response").value == "0"


def test_a_resistant_value_recognised_from_the_words_is_said_so_and_can_be_changed():
    at = _page_with_training_data()
    target = at.session_state[S.ADATA]
    target.obs["call"] = target.obs["response"].map({0: "resistant", 1: "sensitive"}).astype(str)
    at.session_state[S.LABEL_COLUMN] = "call"
    at.run()
    assert not at.exception, at.exception
    assert at.radio(key="train_resistant_call").value == "resistant"
    assert any(c.value.startswith("Resistant = 'resistant': it was recognised from the words") for c in at.caption)


def _labels_with_provenance(tmp_path, labels):
    """``labels`` written as scatd labels-from-ic50 writes them: labels.csv and labels.provenance.json."""
    from scatd_core.labels import write_ic50_provenance, write_label_table

    labels = labels.copy()
    labels.attrs["report"] = {
        "files": {"ic50": "GDSC_IC50.csv", "thresholds": "IC50_thred.txt", "drug_list": "drug_list.csv"},
        "files_sha256": {"ic50": "a" * 64, "thresholds": "b" * 64, "drug_list": "c" * 64},
        "thresholds": {"DRUGA": {"gdsc_id": 1, "threshold": -0.05346, "matched_by": "name",
                                 "threshold_name": "DrugA"}}, "no_threshold": ["OTHER"]}
    path = write_label_table(labels, tmp_path / "labels.csv")
    return path.read_bytes(), write_ic50_provenance(labels, path).read_bytes()


def test_an_uploaded_label_table_without_its_provenance_file_says_its_ic50_rule_is_unknown(tmp_path):
    """QA: a label table uploaded without its labels.provenance.json trained a model whose card had no
    IC50 rule and said nothing about it; the page's caption named only the table. Both say the rule that
    turned IC50s into the labels is unknown (labels as uploaded); with the provenance file, neither does."""
    from scatd_core import card as cards

    at = _page_with_training_data()
    labels = at.session_state["train_labels"]["table"]
    at.run()  # a table with its own record (built here, or the demo's): nothing said
    assert not any("is unknown (labels as uploaded)" in c.value for c in at.caption)
    del at.session_state["train_labels"]
    table_bytes, provenance_bytes = _labels_with_provenance(tmp_path, labels)
    at.file_uploader(key="upload_train_labels").upload("labels.csv", table_bytes)
    at.run()
    assert not at.exception, at.exception
    caption = next(c.value for c in at.caption if "Labels: **labels.csv**" in c.value)
    assert "the rule that turned IC50s into these labels is unknown (labels as uploaded)" in caption
    assert "Give its .provenance.json above" in caption
    at.file_uploader(key="upload_train_labels_provenance").upload("labels.provenance.json", provenance_bytes)
    at.run()
    caption = next(c.value for c in at.caption if "Labels: **labels.csv**" in c.value)
    assert "is unknown" not in caption and "made by scatd labels-from-ic50" in caption.replace("\\", "")
    # the card of a model trained on such a table
    entry = {"name": "labels.csv", "sha256": "d" * 64, "of": "table", "ic50_rule": "unknown"}
    assert cards._input("labels", entry) == ("labels labels.csv (sha256 dddddddddddd of the table; the rule that "
                                             "turned IC50s into these labels is unknown (labels as uploaded))")


def test_an_uploaded_label_tables_provenance_file_gives_the_card_its_ic50_threshold(tmp_path, monkeypatch):
    """QA: a table of scatd labels-from-ic50 uploaded here gave a card saying only "labels labels.csv
    (sha256 ... of the table)", where the CLI's said "(from ln(IC50) (GDSC_IC50.csv) with threshold
    -0.05346: below it sensitive)". Its provenance file may be uploaded too: checked strictly (plain
    JSON, its keys, written for this very table), then the model records the threshold."""
    import json

    import scatd_core.train as train
    from scatd_core import card as cards
    from scatd_core.errors import ScatdError
    from scatd_core.train._run import _ic50_origin

    at = _page_with_training_data()
    labels = at.session_state["train_labels"]["table"]
    del at.session_state["train_labels"]
    table_bytes, provenance_bytes = _labels_with_provenance(tmp_path, labels)
    at.run()
    at.file_uploader(key="upload_train_labels").upload("labels.csv", table_bytes)
    # refused, with what is wrong, and nothing used: another table's, an unknown key, not JSON, too big
    record = json.loads(provenance_bytes)
    for bad, said in ((dict(record, labels_sha256="0" * 64), "written for another label table"),
                      (dict(record, command="rm -rf /"), "keys a provenance file does not (command)"),
                      (b"{'kind': 1}", "not plain JSON"), (b" " * (5 << 20), "more than a provenance file's")):
        data = bad if isinstance(bad, bytes) else json.dumps(bad).encode()
        at.file_uploader(key="upload_train_labels_provenance").upload("labels.provenance.json", data)
        at.run()
        assert not at.exception, at.exception
        errors = [e.value.replace("\\", "") for e in at.error]  # as said, without markdown's escapes
        assert any(said in e for e in errors), (said, errors)
        assert "report" not in at.session_state["train_labels"]["table"].attrs
    from scatd_app import session as app_session

    released = []  # QA (a browser): the accepted file was released, so the next run's uploader gave None and the
    # page took the provenance off again; the card never had the threshold. It stays (it is small)
    monkeypatch.setattr(app_session, "release_upload", lambda file_id: released.append(file_id) or True)
    at.file_uploader(key="upload_train_labels_provenance").upload("labels.provenance.json", provenance_bytes)
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert released == [], "the labels' provenance upload was released: the next run would take it off again"
    assert any("made by scatd labels-from-ic50 from GDSC_IC50.csv" in c.value.replace("\\", "") for c in at.caption), \
        [c.value for c in at.caption]
    given = {}

    def train_drug_model(bulk, table, drug, *args, **kw):  # what the training is given; no training
        given.update(report=table.attrs.get("report"), drug=drug)
        raise ScatdError("stopped here")

    monkeypatch.setattr(train, "train_drug_model", train_drug_model)
    at.radio(key="train_resistant_response").set_value("0")
    at.button(key="btn_train_start").click().run()
    assert given["drug"] == "DRUGA"
    entry = {"name": "labels.csv", "sha256": "d" * 64, "of": "table", **_ic50_origin(given["report"], "DRUGA")}
    assert cards._input("labels", entry) == ("labels labels.csv (sha256 dddddddddddd of the table; from ln(IC50) "
                                             "(GDSC_IC50.csv) with threshold -0.05346: below it sensitive)")


def test_an_uploaded_label_table_is_recorded_as_scatd_train_records_the_same_file(tmp_path, monkeypatch, capsys):
    """QA: one label table, two ids: scatd train recorded the file's sha256, the Train page a hash of the
    table it had parsed ("of the table"), so the cards (and uns) of two models trained on the same file
    named two different tables. The page records the file, by the sha256 of the uploaded bytes: the
    same record as the command line's, for one model and for a panel."""
    import scatd_core.train._run as run
    from scatd_core.bundle import sha256_file
    from scatd_core.cli import main
    from scatd_core.errors import InputError

    recorded = []

    def name_inputs(provenance, names):  # what a model would record of its inputs; no training after it
        real(provenance, names)
        recorded.append(dict(provenance["labels"]))
        raise InputError("stopped here")

    real = run._name_inputs
    monkeypatch.setattr(run, "_name_inputs", name_inputs)
    at = _page_with_training_data()
    bulk, labels = at.session_state["train_bulk"]["adata"], at.session_state["train_labels"]["table"]
    path = tmp_path / "labels.tsv"  # as a lab may keep it: tab-separated, NA for not screened
    labels.to_csv(path, sep="\t", na_rep="NA")
    bulk.write_h5ad(tmp_path / "bulk.h5ad")
    at.session_state[S.ADATA].write_h5ad(tmp_path / "cells.h5ad")
    assert main(["train", "--bulk", str(tmp_path / "bulk.h5ad"), "--bulk-labels", str(path), "--drug", "DRUGA",
                 "--target", str(tmp_path / "cells.h5ad")]) == 2
    assert "stopped here" in capsys.readouterr().err
    cli = recorded.pop()
    assert cli == {"file": "labels.tsv", "sha256": sha256_file(path)}
    del at.session_state["train_labels"]
    at.run()
    at.file_uploader(key="upload_train_labels").upload("labels.tsv", path.read_bytes())
    at.run()
    at.radio(key="train_resistant_response").set_value("0")
    at.button(key="btn_train_start").click().run()
    assert not at.exception, at.exception
    assert recorded.pop() == cli  # not a hash of the parsed table ("of the table")
    at.multiselect(key="train_panel_drugs").set_value(["DRUGA"]).run()
    at.button(key="btn_train_panel").click().run()
    assert not at.exception, at.exception
    assert recorded.pop() == cli


def test_uploaded_bulk_and_target_files_are_recorded_as_scatd_train_records_the_same_files(tmp_path, monkeypatch,
                                                                                           capsys):
    """QA: one bulk file, two ids: scatd train recorded the bulk and target files' sha256, the Train page
    a hash of the values it had read ("of its values"), so the cards of two models trained on the same
    files named other data (only the bulk's values_sha256 agreed). The page records each uploaded file
    by the sha256 of its bytes: the same record as scatd train's and scatd train-panel's, for one model
    and for a panel, the bulk's values_sha256 kept."""
    import pandas as pd

    import scatd_core.train._run as run
    from scatd_core.bundle import sha256_file
    from scatd_core.cli import main
    from scatd_core.errors import InputError

    recorded = []

    def name_inputs(provenance, names):  # what a model would record of its inputs; no training after it
        real(provenance, names)
        recorded.append({key: dict(provenance[key]) for key in ("bulk", "target")})
        raise InputError("stopped here")

    real = run._name_inputs
    monkeypatch.setattr(run, "_name_inputs", name_inputs)
    at = _page_with_training_data()
    bulk, labels = at.session_state["train_bulk"]["adata"], at.session_state["train_labels"]["table"]
    bulk_path, cells_path, labels_path = tmp_path / "bulk.csv", tmp_path / "cells.h5ad", tmp_path / "labels.csv"
    pd.DataFrame(bulk.X, index=bulk.obs_names, columns=bulk.var_names).to_csv(bulk_path)
    at.session_state[S.ADATA].write_h5ad(cells_path)
    labels.to_csv(labels_path)
    files = ["--bulk", str(bulk_path), "--bulk-labels", str(labels_path), "--target", str(cells_path)]
    assert main(["train", *files, "--drug", "DRUGA"]) == 2
    assert "stopped here" in capsys.readouterr().err
    cli = recorded.pop()
    assert cli["bulk"]["file"] == "bulk.csv" and cli["bulk"]["sha256"] == sha256_file(bulk_path)
    assert cli["bulk"]["values_sha256"] != cli["bulk"]["sha256"]
    assert cli["target"] == {"file": "cells.h5ad", "sha256": sha256_file(cells_path)}
    main(["train-panel", *files, "--drugs", "DRUGA"])  # the drug's model stops: the panel says it failed
    capsys.readouterr()
    assert recorded.pop() == cli
    del at.session_state["train_bulk"]
    at.run()
    at.file_uploader(key="upload_train_bulk").upload("bulk.csv", bulk_path.read_bytes())
    at.radio(key="train_target_source").set_value("Upload")
    at.run()
    at.file_uploader(key="upload_train_target").upload("cells.h5ad", cells_path.read_bytes())
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    at.button(key="btn_train_start").click().run()
    assert not at.exception, at.exception
    assert recorded.pop() == cli  # not hashes of the values read ("of its values")
    at.multiselect(key="train_panel_drugs").set_value(["DRUGA"]).run()
    at.button(key="btn_train_panel").click().run()
    assert not at.exception, at.exception
    assert recorded.pop() == cli


def test_a_drug_with_values_other_than_sensitive_or_resistant_is_refused_as_soon_as_it_is_chosen():
    """QA: a drug column holding 'intermediate' was counted as 'without a label' and Train stayed enabled; the
    refusal came only after clicking Train, and pointed to the CLI. Now it is said under the counts as soon as
    the drug is chosen (Train disabled), pointing to the page's own expander."""
    at = _page_with_training_data()
    labels = at.session_state["train_labels"]["table"]
    weird = ["sensitive"] * 12 + ["resistant"] * 12 + ["intermediate"] * 5 + ["NA"] * 4 + [""] * 4
    labels["WEIRD"] = (weird + [None] * len(labels))[:len(labels)]
    at.run()
    at.selectbox(key="train_drug").set_value("WEIRD").run()
    assert not at.exception, at.exception
    errors = [e.value.replace("\\", "") for e in at.error]
    assert any(e.startswith("**Drug WEIRD: values other than sensitive/resistant: 'intermediate'.**")
               and "No label table? Build one from GDSC ln(IC50) values" in e and "scatd labels-from-ic50" not in e
               for e in errors), errors
    assert at.button(key="btn_train_start").disabled
    counts = next(c.value.replace("\\", "") for c in at.caption if c.value.startswith("WEIRD"))
    n_without = len(labels) - 29
    assert counts == (f"WEIRD: 12 sensitive and 12 resistant of the {len(labels)} bulk cell lines, 5 with another "
                      f"value ('intermediate'); {n_without} without a label for this drug (used for pretraining "
                      "only)."), counts
    at.selectbox(key="train_drug").set_value("DRUGA").run()
    assert not at.error and not at.button(key="btn_train_start").disabled


def test_other_label_values_say_how_to_reach_the_label_builder_and_the_demo_panel_never_uses_them():
    """QA: with *Simulated demo panel* chosen (a label table uploaded before in Upload mode was kept), the
    refusal of 'intermediate' pointed to the 'No label table?' expander "above", which only Upload mode
    shows. The demo panel's mode now uses the demo's own labels (the user's table is kept for Upload
    mode), so that table is not refused there; in Upload mode the refusal points to the expander above."""
    at = _page_with_training_data()
    labels = at.session_state["train_labels"]["table"]
    labels["WEIRD"] = (["sensitive"] * 12 + ["resistant"] * 12 + ["intermediate"] * 5 + [None] * len(labels))[
        :len(labels)]
    at.run()
    at.radio[0].set_value("Simulated demo panel").run()
    assert not at.exception, at.exception
    assert "WEIRD" not in at.selectbox(key="train_drug").options  # the demo's labels, not the uploaded table
    assert not any("values other than sensitive/resistant" in e.value for e in at.error)
    assert at.session_state["train_labels"]["table"] is labels  # kept for Upload mode
    at.radio[0].set_value("Upload").run()  # the expander is shown: the message points to it, "above"
    at.selectbox(key="train_drug").set_value("WEIRD").run()
    assert not at.exception, at.exception
    said = next(e.value.replace("\\", "") for e in at.error if "values other than sensitive/resistant" in e.value)
    assert "'No label table? Build one from GDSC ln(IC50) values' above" in said and "choose 'Upload'" not in said, said
    assert at.button(key="btn_train_start").disabled


def _in_use(at: AppTest) -> tuple[str, str]:
    """What the page says it uses: its Bulk and Labels lines (markdown escapes removed)."""
    said = [c.value.replace("\\", "") for c in at.caption]
    return (next((c for c in said if c.startswith(":material/dataset: Bulk:")), ""),
            next((c for c in said if c.startswith(":material/label: Labels:")), ""))


@pytest.mark.parametrize("first", ["demo panel", "own bulk"])
def test_the_demo_panel_mode_uses_the_demos_labels_and_keeps_the_users_uploads(first):
    """QA: in *Simulated demo panel* mode, a label table uploaded before in Upload mode was kept (only
    the bulk was the demo's), so the demo's simulated cell lines could be trained with the user's labels;
    and switching to the demo panel after uploading one's own bulk and labels replaced both, so Upload
    mode then showed the demo's. The demo panel mode now uses the demo's bulk and labels, and says so;
    Upload mode uses the user's uploads, kept across the switches."""
    bulk, labels, target = synthetic()
    at = _page()
    at.session_state[S.ADATA], at.session_state[S.DATA_NAME] = target, "tumour.h5ad"  # the target cells
    at.run()
    if first == "demo panel":
        at.radio[0].set_value("Simulated demo panel").run()
        at.radio[0].set_value("Upload").run()
    else:
        frame = bulk.to_df()
        at.file_uploader(key="upload_train_bulk").upload("my bulk.csv", frame.to_csv().encode()).run()
    at.file_uploader(key="upload_train_labels").upload("my labels.csv", labels.to_csv().encode()).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "my labels.csv" in _in_use(at)[1]
    at.radio[0].set_value("Simulated demo panel").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    bulk_line, labels_line = _in_use(at)
    assert "Bulk: **simulated demo panel**, 300 samples" in bulk_line, bulk_line
    assert "Labels: **simulated demo labels**" in labels_line and "my labels" not in labels_line, labels_line
    drugs = at.selectbox(key="train_drug").options
    assert "DEMOTINIB" in drugs and "DRUGA" not in drugs, drugs
    kept = " ".join(c.value for c in at.caption).replace("\\", "")
    assert "my labels.csv" in kept and "choose 'Upload' under Bulk data" in kept, kept  # not lost, and said so
    at.radio[0].set_value("Upload").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    bulk_line, labels_line = _in_use(at)
    assert "Labels: **my labels.csv**" in labels_line, labels_line
    if first == "demo panel":  # no bulk of the user's yet: the demo's is not used in Upload mode
        assert bulk_line == "" and any("Give the bulk data" in i.value for i in at.info)
    else:
        assert "Bulk: **my bulk.csv**" in bulk_line, bulk_line
        assert at.selectbox(key="train_drug").options == ["DRUGA", "OTHER"]


def test_a_failed_bulk_or_labels_upload_says_the_earlier_file_is_still_used():
    """QA: after a valid bulk table and label table, a bad replacement (bulk with NaN, an empty labels CSV)
    showed its error while the captions still named the earlier files, without saying they are still used;
    the NaN message called a bulk row a cell and told log-TPM to be filled with 0."""
    import numpy as np
    import pandas as pd

    bulk, labels, _ = synthetic()
    frame = pd.DataFrame(bulk.X, index=bulk.obs_names, columns=bulk.var_names)
    at = _page().run()
    at.file_uploader(key="upload_train_bulk").upload("ccle.csv", frame.to_csv().encode())
    at.file_uploader(key="upload_train_labels").upload("ALL_label.csv", labels.to_csv().encode())
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert not at.info or not any("still used" in i.value for i in at.info)
    bad = frame.copy()
    bad.iloc[2, 0] = np.nan
    at.file_uploader(key="upload_train_bulk").upload("bulk_nan.csv", bad.to_csv().encode())
    at.file_uploader(key="upload_train_labels").upload("empty.csv", b"")
    at.run()
    assert not at.exception, at.exception
    errors = " ".join(e.value for e in at.error).replace("\\", "")
    assert f"first in cell line '{frame.index[2]}'" in errors and "with 0" not in errors, errors
    said = " ".join(i.value for i in at.info).replace("\\", "")
    assert "Your earlier bulk data (ccle.csv) are still used." in said, said
    assert "Your earlier label table (ALL_label.csv) is still used." in said, said
    captions = " ".join(c.value for c in at.caption).replace("\\", "")
    assert "Bulk: **ccle.csv**" in captions and "Labels: **ALL_label.csv**" in captions
    at.run()  # said again on the next run, with the errors
    assert "still used" in " ".join(i.value for i in at.info)


def test_a_label_table_of_one_drug_is_counted_in_the_singular():
    """QA: "Labels: labels_sorafenib.csv, 107 cell lines × 1 drugs"."""
    at = _page_with_training_data()
    labels = at.session_state["train_labels"]["table"]
    at.session_state["train_labels"] = {"table": labels.iloc[:1, :1], "name": "one.csv"}
    at.run()
    assert not at.exception, at.exception
    caption = next(c.value for c in at.caption if "Labels: **one.csv**" in c.value)
    assert "1 cell line × 1 drug" in caption and "drugs" not in caption and "lines ×" not in caption


def test_a_model_library_the_app_cannot_write_is_said_before_any_training(monkeypatch):
    """QA: with a model library the server's account cannot write, a training ran for minutes and
    failed when saving (the model lost). Both Train buttons now say so before training; the
    server's paths are said to an administrator (the one user of an app without a login) only."""
    import tempfile

    from scatd_app import auth
    from scatd_core.config import model_library_dir

    library = model_library_dir()
    library.mkdir(parents=True, exist_ok=True)
    real = tempfile.mkstemp

    def read_only(*a, dir=None, **k):
        if dir is not None and Path(dir) == library:
            raise PermissionError(13, "Permission denied")
        return real(*a, dir=dir, **k)

    def no_training(*a, **k):
        raise AssertionError("trained with a library that cannot take the model")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    monkeypatch.setattr("scatd_core.train.train_drug_model", no_training)
    monkeypatch.setattr("scatd_core.train.train_panel", no_training)
    at = _page_with_training_data()
    at.run()
    at.radio(key="train_resistant_response").set_value("0")
    at.button(key="btn_train_start").click().run()
    assert not at.exception, at.exception
    said = " ".join(e.value for e in at.error).replace("\\", "")
    assert "model library cannot be written by the app" in said and "nothing was trained" in said, said
    assert str(library) in said and "Permission denied" in said  # an administrator sees where
    at.multiselect(key="train_panel_drugs").set_value(["DRUGA"]).run()
    monkeypatch.setattr(auth, "current_user", lambda: auth.User("someone", admin=False))  # a lab server's user
    at.button(key="btn_train_panel").click().run()
    assert not at.exception, at.exception
    said = " ".join(e.value for e in at.error).replace("\\", "")
    assert "model library cannot be written by the app" in said and str(library.parent) not in said, said
