"""The Drug panel page through Streamlit's AppTest: choose models, score, explore, save, download."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from _app_helpers import assert_charts_described, make_bundle, make_dataset
from scatd_app import state
from scatd_core import panel, pl


def _chart_text(at) -> str:
    """The page's charts as text, long titles unwrapped (pl.wrap_title; plotly writes < and > escaped)."""
    return re.sub(r"(<|\\+u003c)br(>|\\+u003e)", " ", " ".join(str(c.proto) for c in at.get("plotly_chart")))
from test_app_pages import _no_component_scan, goto, h5ad_bytes, ok, start, text, upload  # noqa: F401 (fixture)

DRUGS = ("DRUGA", "DRUGB", "DRUGC")


@pytest.fixture(scope="module")
def panel_library(tmp_path_factory):
    root = tmp_path_factory.mktemp("panel_page_library")
    data = make_dataset(240, seed=0)
    for i, drug in enumerate(DRUGS):
        make_bundle(root / drug, data, drug=drug, seed=i, steps=15)
    # a model for other genes: it cannot score the uploads and must be skipped, not fail the panel
    other = data[:, :300].copy()
    other.var_names = [f"OTHER{i}" for i in range(300)]
    make_bundle(root / "OTHERGENES", other, drug="DRUGX", steps=2)
    return root


@pytest.fixture
def with_panel_library(panel_library, monkeypatch):
    monkeypatch.setenv("SCATD_MODEL_LIBRARY", str(panel_library))
    return panel_library


def test_panel_page_scores_three_models_and_skips_one(with_panel_library):
    at = start()
    goto(at, "9_Panel")
    assert "Upload a dataset first." in text(at.info)
    upload(at, "tumour.h5ad", h5ad_bytes(make_dataset(200, seed=4)))
    goto(at, "9_Panel")
    assert "Choose at least two" in text(at.info)
    paths = [str(with_panel_library / n) for n in DRUGS + ("OTHERGENES",)]
    at.multiselect(key="panel_models").set_value(paths).run()
    ok(at)
    at.button(key="btn_panel_run").click().run()
    ok(at)
    assert "3 of 4 models scored 200 cells" in text(at.success)
    # the results shown are current: the run button is gone in the very run that scored them (QA: it stayed
    # under the results until the next click, as if they still needed scoring)
    assert "btn_panel_run" not in [b.key for b in at.button]
    assert "DRUGX" in text(at.warning) and "skipped" in text(at.warning)
    adata = at.session_state[state.ADATA]
    assert {"scatd_DRUGA_prob_resistant", "scatd_DRUGC_label"} <= set(adata.obs.columns)
    assert "scatd_DRUGX_prob_resistant" not in adata.obs
    # heatmap, dot plot, two rankings (sample is the grouping: the reader found it)
    assert at.selectbox(key="panel_group").value == "sample"
    assert len(at.get("plotly_chart")) == 4
    alts = assert_charts_described(at)  # what each chart shows, for a screen reader
    assert alts[0].startswith("Heatmap of P(resistant)") and alts[1].startswith("Dot plot") and "DRUGA" in alts[2]
    assert "Uncalibrated" in text(at.warning) and "compare mean P" not in text(at.warning)
    # the notes name each model's own threshold and only the ways this page offers to calibrate
    notes = text(at.warning).replace("\\", "")  # as typed, without the markdown escapes
    assert "DRUGA (its model's default, 0.5)" in notes and "0.05" not in notes
    assert "labelled cells" not in notes and "--" not in notes
    # the reader is on the Drug panel page: its controls are named, not the page (QA: "... on the Drug panel page")
    said = notes + text(at.caption) + text(at.markdown)
    assert "Drug panel page" not in said.replace("\\", "") and "press 'Calibrate every drug to it'" in notes
    # uncalibrated fractions are not a ranking of the drugs: the charts and their caption say so
    charts = " ".join(str(c.proto) for c in at.get("plotly_chart"))
    assert "best drug first" not in charts and "Whole sample: fraction called resistant" in charts
    assert "per drug, uncalibrated" in charts
    # QA: at 1280 px the half-width chart cut its title mid-word: wrapped, each line short enough
    assert all(len(line) <= 42 for line in pl.wrap_title("Whole sample: fraction called resistant per drug, "
                                                         "uncalibrated").split("<br>"))
    assert "does not rank the drugs" in text(at.caption)
    # the x-axis title fits a half-width chart; what "*" means is in the caption
    assert "fraction called resistant (* uncalibrated)" in charts and "not comparable across drugs" not in charts
    assert "* uncalibrated: called at the model's own threshold" in text(at.caption).replace("\\", "")
    assert len(at.get("download_button")) == 5  # panel.csv, the summary, the per-drug metrics, the report, the h5ad
    # QA: panel_summary.csv held every grouping the page could offer (the data's own 'cluster' too, never
    # chosen): now the Leiden clusters, the sample column and the grouping chosen to order by
    assert "per drug: whole sample, per sample" in text(at.caption)
    assert "per cluster" not in text(at.caption)
    # at uncalibrated thresholds: a count with its caveat, no subclone and no biomarker action
    assert "at uncalibrated thresholds" in text(at.markdown)
    assert "possible multi-drug-resistant subclone" not in text(at.markdown)
    assert "btn_panel_markers" not in [b.key for b in at.button]
    # each model's library folder tells two models of one drug apart
    assert list(at.dataframe[0].value["folder"]) == list(DRUGS) + ["OTHERGENES"]
    assert at.multiselect(key="panel_models").label.endswith("(two or more)")

    at.number_input(key="panel_expected_fraction").set_value(0.4).run()
    at.button(key="btn_panel_calibrate").click().run()
    ok(at)
    for drug in DRUGS:
        assert adata.uns[f"scatd_{drug}"]["threshold"]["source"] == "expected fraction"
        assert (adata.obs[f"scatd_{drug}_label"] == "resistant").mean() == pytest.approx(0.4, abs=0.02)
    assert "Uncalibrated" not in text(at.warning)
    # one fraction for every drug: the whole-sample chart says it ranks nothing (QA: "best drug first")
    charts = _chart_text(at)
    assert "Whole sample: every drug at the same expected fraction, so no ranking" in charts
    assert "Whole sample: best drug first" not in charts and "Equal by construction" in text(at.caption)
    assert "does not rank the drugs" not in text(at.caption)
    assert "equal by construction" in text(at.warning)  # one fraction for every drug: the ranking is a tie
    resisted = np.column_stack([(adata.obs[f"scatd_{d}_label"] == "resistant") for d in DRUGS]).sum(1)
    np.testing.assert_array_equal(adata.obs["scatd_panel_n_resisted"].to_numpy(), resisted)

    at.button(key="btn_panel_defaults").click().run()
    ok(at)
    assert all(adata.uns[f"scatd_{d}"]["threshold"]["source"] == "model default" for d in DRUGS)
    assert "Uncalibrated" in text(at.warning)
    # one expected fraction per drug
    at.number_input(key="panel_fraction_scatd_DRUGA").set_value(0.1)
    at.button(key="btn_panel_calibrate_each").click().run()
    ok(at)
    assert (adata.obs["scatd_DRUGA_label"] == "resistant").mean() == pytest.approx(0.1, abs=0.02)
    # the others at the per-drug inputs' starting value, the common fraction when the expander first showed
    assert (adata.obs["scatd_DRUGB_label"] == "resistant").mean() == pytest.approx(0.3, abs=0.02)
    assert "equal by construction" not in text(at.warning)
    # each drug its own fraction: the whole-sample order repeats the fractions given (QA: it was not said)
    assert "ranks nothing" in text(at.warning) and "ranks nothing" in text(at.caption)
    assert "Whole sample: the expected fractions given per drug, not a ranking" in _chart_text(at)
    at.button(key="btn_panel_calibrate").click().run()
    assert "possible multi-drug-resistant subclone" in text(at.markdown)
    at.selectbox(key="panel_group").set_value("cluster").run()
    at.selectbox(key="panel_group_value").set_value("hypoxic").run()
    ok(at)
    assert "per drug: whole sample, per sample, per cluster" in text(at.caption)  # chosen: in the summary
    at.button(key="btn_panel_umap").click().run()
    ok(at)
    assert "X_umap" in adata.obsm
    # QA: "No UMAP yet ... / Compute the UMAP" stayed above the UMAP drawn in that very run
    assert "btn_panel_umap" not in [b.key for b in at.button] and "No UMAP yet" not in text(at.caption)
    at.selectbox(key="panel_colour").set_value("P(resistant): DRUGB").run()
    ok(at)
    assert len(at.get("plotly_chart")) == 5
    at.button(key="btn_panel_markers").click().run()
    ok(at)
    markers = at.session_state[state.PANEL_MARKERS][1]
    assert len(markers) == 20 and {"gene", "logfoldchange", "pval_adj"} <= set(markers.columns)

    at.text_input(key="panel_name").input("three drugs").run()
    at.button(key="btn_panel_save").click().run()
    ok(at)
    user = at.session_state["user"].name
    assert panel.list_panels(user)["three drugs"]["models"] == list(DRUGS) + ["OTHERGENES"]
    assert panel.list_panels("someone-else") == {}

    goto(at, "1_Data")  # coming back: nothing is recomputed, the calibration is kept
    goto(at, "9_Panel")
    assert "btn_panel_run" not in [b.key for b in at.button]
    assert adata.uns["scatd_DRUGA"]["threshold"]["source"] == "expected fraction"
    # other models chosen: nothing is shown below, and the page says so truthfully
    at.multiselect(key="panel_models").set_value(paths[:2]).run()
    ok(at)
    assert "hidden until you score the models chosen above" in text(at.caption)
    assert "shown below" not in text(at.caption)


def test_one_scored_model_makes_no_cross_drug_claim(with_panel_library):
    at = start()
    upload(at, "tumour.h5ad", h5ad_bytes(make_dataset(120, seed=7)))
    goto(at, "9_Panel")
    at.multiselect(key="panel_models").set_value([str(with_panel_library / n) for n in ("DRUGA", "OTHERGENES")]).run()
    at.button(key="btn_panel_run").click().run()
    ok(at)
    assert "1 of 2 models scored" in text(at.success)
    assert "(model OTHERGENES) was skipped" in text(at.warning)
    assert "needs at least 2 scored drugs" in text(at.markdown)
    assert "resistant to all 1" not in text(at.markdown) and "subclone" not in text(at.markdown)
    assert "btn_panel_markers" not in [b.key for b in at.button]


def test_saved_panel_loads_and_a_bad_name_is_refused(with_panel_library):
    at = start()
    upload(at, "tumour.h5ad", h5ad_bytes(make_dataset(120, seed=5)))
    goto(at, "9_Panel")
    user = at.session_state["user"].name
    panel.save_panel("mine", ["DRUGA", "DRUGB"], user)
    goto(at, "9_Panel")
    at.selectbox(key="panel_saved").set_value("mine").run()
    at.button(key="btn_panel_load").click().run()
    ok(at)
    assert at.multiselect(key="panel_models").value == [str(with_panel_library / d) for d in ("DRUGA", "DRUGB")]
    assert not at.warning
    # DRUGB's folder holds another model than the one saved (removed, and another took its name): left out
    import json

    path = panel.panels_file(user)
    record = json.loads(path.read_text())
    record["panels"]["mine"]["identities"]["DRUGB"] = "the model that was removed"
    path.write_text(json.dumps(record))
    at.multiselect(key="panel_models").set_value([]).run()
    at.button(key="btn_panel_load").click().run()
    ok(at)
    assert at.multiselect(key="panel_models").value == [str(with_panel_library / "DRUGA")]
    assert "DRUGB: the model 'DRUGB (dist_vae)' was removed (or replaced) and another model now has its folder" \
        in text(at.warning).replace("\\", "")
    assert str(with_panel_library) not in text(at.warning)
    assert "Left out of your panel 'mine' when it was loaded" in text(at.warning)
    # QA: "Delete it" deleted in one click, said nothing, and left the panel's models chosen: it asks first now
    assert at.button(key="btn_panel_delete").disabled
    at.checkbox(key="panel_delete_sure_mine_0").check().run()
    at.button(key="btn_panel_delete").click().run()
    ok(at)
    assert panel.list_panels(user) == {}
    assert "Deleted your saved panel 'mine' (2 models: DRUGA, DRUGB); the models stay in the library; they are no " \
           "longer chosen below." in text(at.success).replace("\\", "")
    assert at.multiselect(key="panel_models").value == [] and "Left out" not in text(at.warning)
    at.multiselect(key="panel_models").set_value([str(with_panel_library / d) for d in ("DRUGA", "DRUGB")]).run()
    at.text_input(key="panel_name").input("<b>bad/name").run()
    at.button(key="btn_panel_save").click().run()
    ok(at)
    assert "not a valid panel name" in text(at.error)
    assert "<b>" not in text(at.error).replace("\\<b\\>", "")  # escaped, never HTML


def test_no_model_can_score_the_data_is_a_message(with_panel_library):
    at = start()
    data = make_dataset(80, seed=6)
    data.var_names = [f"X{i}" for i in range(data.n_vars)]
    upload(at, "nogenes.h5ad", h5ad_bytes(data))
    goto(at, "9_Panel")
    at.multiselect(key="panel_models").set_value([str(with_panel_library / d) for d in DRUGS]).run()
    at.button(key="btn_panel_run").click().run()
    ok(at)
    assert "No model of the panel could score" in text(at.error)
    assert state.PANEL not in at.session_state


def test_a_chosen_model_removed_or_replaced_is_said_and_never_scored_in_its_place(tmp_path, monkeypatch):
    """QA: the page kept the chosen models by folder only: after an administrator removed DRUGB and
    someone trained another DRUGB into its folder, the panel went on with that other model, unsaid."""
    from scatd_core.bundle import model_identity, remove_bundle

    library = tmp_path / "library"
    data = make_dataset(80, seed=1)
    for i, drug in enumerate(DRUGS):
        make_bundle(library / drug, data, drug=drug, seed=i, steps=2)
    monkeypatch.setenv("SCATD_MODEL_LIBRARY", str(library))
    at = start()
    upload(at, "tumour.h5ad", h5ad_bytes(make_dataset(60, seed=2)))
    goto(at, "9_Panel")
    paths = [str(library / d) for d in DRUGS]
    at.multiselect(key="panel_models").set_value(paths).run()
    at.button(key="btn_panel_run").click().run()
    ok(at)
    assert "3 of 3 models scored" in text(at.success)
    remove_bundle(library / "DRUGB")  # an administrator removes it; bob trains DRUGB again into its folder
    new = make_bundle(library / "DRUGB", make_dataset(80, seed=3), drug="DRUGB", seed=9, steps=2)
    goto(at, "1_Data")
    goto(at, "9_Panel")
    shown = text(at.warning).replace("\\", "")
    assert "No longer in the models you had chosen (left out)" in shown
    assert "DRUGB: the model 'DRUGB (dist_vae)' was removed (or replaced) and another model now has its folder " \
           "('DRUGB (dist_vae)'" in shown and "it is not used in its place" in shown
    assert str(library) not in shown
    assert at.multiselect(key="panel_models").value == [paths[0], paths[2]]
    assert "hidden until you score the models chosen above" in text(at.caption)  # nothing scored with the new one
    at.button(key="btn_panel_run").click().run()
    ok(at)
    assert "2 of 2 models scored" in text(at.success)
    assert [m.folder for m in panel.members(at.session_state[state.ADATA], scored_only=False)] == ["DRUGA", "DRUGC"]
    # removed, with no model in its folder: said too (it was dropped silently)
    remove_bundle(library / "DRUGC")
    at.run()
    ok(at)
    assert "DRUGC: not in the model library any more (removed)" in text(at.warning).replace("\\", "")
    assert at.multiselect(key="panel_models").value == [paths[0]]
    # choosing DRUGB again (the folder's new model) is the user's to do; then it is used, unsaid
    at.multiselect(key="panel_models").set_value([paths[0], paths[1]]).run()
    ok(at)
    at.run()
    assert "No longer in the models" not in text(at.warning)
    assert at.session_state[state.PANEL_CHOSEN][paths[1]][0] == model_identity(new)


def test_the_panel_draws_the_datas_own_umap_and_says_whose_it_is(with_panel_library, monkeypatch):
    """The data's own obsm['X_umap'] is drawn on the Panel page (no "Compute the UMAP"), and the
    page says it is the data's, not scATD's. QA r1: a random share of the cells drawn is said under
    the chart as a caption (it wraps), not in the figure (a line cut off on a phone); the short line
    "Showing a random N of M cells" is drawn in the figure, so that its PNG download says it, and
    only there (the page said it twice)."""
    monkeypatch.setattr(pl, "MAX_PLOT_POINTS", 100)  # 120 cells: a random 100 drawn
    adata = make_dataset(120, seed=7)
    adata.obsm["X_umap"] = np.random.default_rng(0).normal(size=(adata.n_obs, 2))
    at = start()
    upload(at, "tumour.h5ad", h5ad_bytes(adata))
    goto(at, "9_Panel")
    at.multiselect(key="panel_models").set_value([str(with_panel_library / n) for n in DRUGS[:2]]).run()
    at.button(key="btn_panel_run").click().run()
    ok(at)
    assert "btn_panel_umap" not in [b.key for b in at.button]
    captions = text(at.caption).replace("\\", "")  # as typed, without the markdown escapes
    assert "This is your data's own UMAP (obsm['X_umap'] in your file)." in captions
    assert "Showing a random" not in captions  # said once: in the figure, not again under it
    # in the figure, its PNG's: one short line, not the notes' long one
    umap = json.loads(next(c.proto.spec for c in at.get("plotly_chart") if "UMAP 1" in c.proto.spec))
    assert [a["text"] for a in umap["layout"]["annotations"]] == ["Showing a random 100 of 120 cells"]
    assert np.array_equal(at.session_state[state.ADATA].obsm["X_umap"], adata.obsm["X_umap"])


def test_saving_over_a_saved_panel_asks_first_and_names_its_drugs(with_panel_library):
    """QA: "Save panel" replaced a CLI-saved 9-drug panel 'real10' by 3 demo drugs, unasked."""
    at = start()
    upload(at, "tumour.h5ad", h5ad_bytes(make_dataset(60, seed=5)))
    user = at.session_state["user"].name
    panel.save_panel("real10", list(DRUGS), user)
    goto(at, "9_Panel")
    at.multiselect(key="panel_models").set_value([str(with_panel_library / d) for d in DRUGS[:2]]).run()
    at.text_input(key="panel_name").input("real10").run()
    at.button(key="btn_panel_save").click().run()
    ok(at)
    assert panel.list_panels(user)["real10"]["models"] == list(DRUGS)  # kept
    assert not at.success
    assert "You already have a panel named 'real10' (3 models: DRUGA, DRUGB, DRUGC); it was not replaced" \
        in text(at.error).replace("\\", "") and "tick 'Replace it'" in text(at.error)
    box = at.checkbox(key="panel_replace_real10_1")
    assert "your saved panel 'real10' (3 models: DRUGA, DRUGB, DRUGC) becomes these models" \
        in box.label.replace("\\", "")
    at.checkbox(key="panel_replace_real10_1").check().run()
    at.button(key="btn_panel_save").click().run()
    ok(at)
    assert "Replaced your panel 'real10'." in text(at.success)
    assert panel.list_panels(user)["real10"]["models"] == list(DRUGS[:2])
    # the next save under that name asks again: the box is a new one, not left ticked
    at.multiselect(key="panel_models").set_value([str(with_panel_library / d) for d in DRUGS]).run()
    assert at.checkbox(key="panel_replace_real10_2").value is False
    at.button(key="btn_panel_save").click().run()
    assert panel.list_panels(user)["real10"]["models"] == list(DRUGS[:2]) and not at.success
    # ticked, then the name retyped (another case: the same saved panel): a new, unticked box, nothing replaced
    at.checkbox(key="panel_replace_real10_2").check().run()
    at.text_input(key="panel_name").input("REAL10").run()
    assert [c.value for c in at.checkbox if (c.key or "").startswith("panel_replace_")] == [False]
    at.button(key="btn_panel_save").click().run()
    assert panel.list_panels(user)["real10"]["models"] == list(DRUGS[:2]) and not at.success


def test_each_models_warnings_are_next_to_its_drug_not_under_a_green_tick(with_panel_library):
    """QA: models with 3 of 141 genes in the data calling 80-100% resistant under a green
    "9 of 9 models scored"; their warnings were in uns['scatd_<DRUG>']['warnings'] only."""
    data = make_dataset(60, seed=11)[:, :300].copy()
    at = start()
    upload(at, "few.h5ad", h5ad_bytes(data))
    goto(at, "9_Panel")
    at.multiselect(key="panel_models").set_value([str(with_panel_library / d) for d in DRUGS[:2]]).run()
    at.button(key="btn_panel_run").click().run()
    ok(at)
    assert not at.success
    shown = text(at.warning).replace("\\", "")
    assert "2 of 2 models scored 60 cells" in shown and "2 of the 2 scored models warn" in shown
    assert "DRUGA**: Only 15.8% of the model's genes are in the data" in shown
    assert "Only 15.8%" in str(at.dataframe[0].value["warnings"].iloc[1])


def test_without_a_grouping_column_the_heatmap_says_how_the_cells_are_ordered(with_panel_library):
    """QA: with no cluster or sample column the heatmap's axis read "cells, ordered by all cells"."""
    data = make_dataset(60, seed=11)
    data.obs = data.obs[[]]  # no grouping column to order the heatmap by
    at = start()
    upload(at, "nogroups.h5ad", h5ad_bytes(data))
    goto(at, "9_Panel")
    at.multiselect(key="panel_models").set_value([str(with_panel_library / d) for d in DRUGS[:2]]).run()
    at.button(key="btn_panel_run").click().run()
    ok(at)
    assert "panel_group" not in [s.key for s in at.selectbox]
    charts = _chart_text(at)
    assert "cells, by mean P(resistant)" in charts and "by all cells" not in charts


def test_the_same_models_in_another_order_keep_their_results(with_panel_library):
    """QA: loading a saved panel with the same models in another order hid the results ("scored
    earlier with other models")."""
    at = start()
    upload(at, "tumour.h5ad", h5ad_bytes(make_dataset(60, seed=5)))
    goto(at, "9_Panel")
    paths = [str(with_panel_library / d) for d in DRUGS]
    at.multiselect(key="panel_models").set_value(paths).run()
    at.button(key="btn_panel_run").click().run()
    ok(at)
    at.multiselect(key="panel_models").set_value(paths[::-1]).run()
    ok(at)
    assert "btn_panel_run" not in [b.key for b in at.button]
    assert "hidden until you score" not in text(at.caption)
    assert "3 of 3 models scored" in text(at.success)
    at.multiselect(key="panel_models").set_value(paths[:2]).run()  # other models: hidden, as before
    assert "hidden until you score the models chosen above" in text(at.caption)


def test_where_a_prediction_would_run_on_ray_the_page_says_the_panel_does_not(with_panel_library, monkeypatch):
    """QA: the Drug panel never uses Ray and said nothing of it (the README says the app predicts
    large datasets on Ray)."""
    from scatd_core.scaleout import _run

    monkeypatch.setenv("SCATD_SCALEOUT_MIN_CELLS", "50")
    monkeypatch.setattr(_run, "ray_available", lambda: True)
    at = start()
    upload(at, "tumour.h5ad", h5ad_bytes(make_dataset(60, seed=5)))
    goto(at, "9_Panel")
    at.multiselect(key="panel_models").set_value([str(with_panel_library / d) for d in DRUGS[:2]]).run()
    ok(at)
    assert "not on Ray (the Predict page would send these 60 cells to Ray)" in text(at.caption).replace("\\", "")


def _path_of(node, label: str, path=()):
    """Where the expander labelled ``label`` is in the page's element tree: the browser keeps an
    expander open only while it stays in the same place."""
    for i, child in (getattr(node, "children", None) or {}).items():
        if getattr(child, "type", None) == "expander" and str(getattr(child, "label", "")).startswith(label):
            return path + (i,)
        found = _path_of(child, label, path + (i,))
        if found:
            return found
    return None


def test_saving_lists_the_panel_at_once_and_the_save_expander_keeps_its_place(with_panel_library):
    """QA: a just-saved panel was missing from "Your saved panels" until the next click; and pressing
    Enter in the name box while a "Left out of the panel" warning showed collapsed the expander (the
    warning went, and the expander moved up a place: a new one to the browser, closed)."""
    import json

    at = start()
    upload(at, "tumour.h5ad", h5ad_bytes(make_dataset(60, seed=5)))
    goto(at, "9_Panel")
    user = at.session_state["user"].name
    at.multiselect(key="panel_models").set_value([str(with_panel_library / d) for d in DRUGS[:2]]).run()
    at.text_input(key="panel_name").input("first").run()
    at.button(key="btn_panel_save").click().run()
    ok(at)
    assert "Saved your panel 'first'." in text(at.success)
    assert at.selectbox(key="panel_saved").options == ["first"]  # listed in the run that saved it
    path = panel.panels_file(user)
    record = json.loads(path.read_text())
    record["panels"]["first"]["identities"]["DRUGB"] = "the model that was removed"
    path.write_text(json.dumps(record))
    at.selectbox(key="panel_saved").set_value("first").run()
    at.button(key="btn_panel_load").click().run()
    ok(at)
    assert "Left out of your panel 'first'" in text(at.warning)
    where = _path_of(at._tree, "Save these models")
    assert where is not None
    at.text_input(key="panel_name").input("second").run()  # Enter in the name box: a rerun
    ok(at)
    assert _path_of(at._tree, "Save these models") == where and "btn_panel_save" in [b.key for b in at.button]


def test_the_panel_page_gives_the_auroc_of_the_drug_whose_labels_were_chosen(with_panel_library):
    """QA: the page gave no per-drug AUROC against the data's label column; it must be the number a
    single-drug prediction of that model on the same cells gives (the Cells page's)."""
    from scatd_core.bundle import load_bundle
    from scatd_core.metrics import evaluate_column
    from scatd_core.predict import predict

    data = make_dataset(120, seed=6)
    alone = data.copy()
    predict(alone, load_bundle(with_panel_library / "DRUGB"))
    expected = evaluate_column(alone, "response")[0].auroc
    at = start()
    upload(at, "tumour.h5ad", h5ad_bytes(data))
    goto(at, "9_Panel")
    at.multiselect(key="panel_models").set_value([str(with_panel_library / d) for d in DRUGS[:2]]).run()
    at.button(key="btn_panel_run").click().run()
    ok(at)
    assert at.session_state[state.LABEL_COLUMN] == "response"
    at.selectbox(key="panel_label_drug").set_value("DRUGB").run()
    ok(at)
    [auroc] = [m for m in at.metric if "AUROC of DRUGB" in m.label]
    assert auroc.value == f"{expected:.3f}"
    assert panel.label_evaluation(at.session_state[state.ADATA])["auroc"] == pytest.approx(expected)


def test_a_saved_panels_drug_not_loaded_is_named_in_the_results_and_the_csv(with_panel_library):
    """QA: a saved panel's drug whose model is gone vanished from the results and panel.csv."""
    import json

    import pandas as pd

    from scatd_core import export

    at = start()
    upload(at, "tumour.h5ad", h5ad_bytes(make_dataset(100, seed=7)))
    goto(at, "9_Panel")
    user = at.session_state["user"].name
    panel.save_panel("three", list(DRUGS), user)
    path = panel.panels_file(user)
    record = json.loads(path.read_text())
    record["panels"]["three"]["identities"]["DRUGC"] = "the model that was removed"
    path.write_text(json.dumps(record))
    goto(at, "9_Panel")
    at.selectbox(key="panel_saved").set_value("three").run()
    at.button(key="btn_panel_load").click().run()
    at.button(key="btn_panel_run").click().run()
    ok(at)
    said = text(at.warning).replace("\\", "")
    assert "DRUGC** of your saved panel was not loaded, so not scored: model DRUGC: the model" in said
    assert "3 drugs requested, 2 scored; not scored: DRUGC." in text(at.caption).replace("\\", "")
    # QA: the caption said the reason was in every download (panel.csv says only 'drug not scored' now)
    assert "why, once per drug, in panel_drugs.csv" in text(at.caption).replace("\\", "")
    # QA: the models table showed a literal "None" for a drug with no threshold
    shown = [df.value for df in at.dataframe if "threshold" in df.value.columns]
    assert shown and all(pd.api.types.is_float_dtype(df["threshold"]) for df in shown)
    table = pd.read_csv(__import__("io").BytesIO(export.to_csv_bytes(panel.panel_table(at.session_state[state.ADATA]))))
    assert table["DRUGC_prob_resistant"].isna().all() and not table["DRUGC_scored"].any()
    assert (table["DRUGC_not_scored_reason"] == "drug not scored").all()  # why: once, in the per-drug metrics
    # QA: no per-drug metrics download; now panel_drugs.csv, the table `scatd predict --drug-metrics` writes
    assert "panel_drugs.csv" in [b.proto.label for b in at.get("download_button")]
    drugs = export.panel_drug_metrics(at.session_state[state.ADATA], app=True).set_index("drug")
    assert list(drugs.index) == list(DRUGS) and drugs.loc["DRUGC", "status"] == "not loaded"
    assert drugs.loc["DRUGC", "not_scored_reason"].startswith("model DRUGC: the model")


def test_when_every_drug_is_refused_the_page_lists_one_drug_a_line(with_panel_library):
    """QA: every reason joined by "; " into one very long line."""
    data = make_dataset(60, seed=8)[:, :100].copy()  # 5% of the models' genes: each refuses them
    at = start()
    upload(at, "few.h5ad", h5ad_bytes(data))
    goto(at, "9_Panel")
    at.multiselect(key="panel_models").set_value([str(with_panel_library / d) for d in DRUGS[:2]]).run()
    at.button(key="btn_panel_run").click().run()
    [error] = [e.value for e in at.error]
    lines = error.split("\n")
    assert lines[0] == "**No model of the panel could score these data \\(2 drugs requested, none scored\\)\\:**"
    assert lines[1] == "" and [line[:10] for line in lines[2:4]] == ["- DRUGA\\: ", "- DRUGB\\: "]  # a list
    assert "this server" in lines[2]  # each reason as the app says it (the server's setting)


def test_with_one_model_for_these_data_the_page_says_a_panel_needs_two_and_how_to_get_more(tmp_path, monkeypatch):
    """QA: with one drug model for real data (and the demo's), the picker offered that one and the page said
    "Choose at least two drug models": a dead end, nothing said a second could not be chosen or how to get one."""
    library = tmp_path / "library"
    data = make_dataset(60, seed=1)
    make_bundle(library / "DRUGA", data, drug="DRUGA", steps=2)
    make_bundle(library / "DEMOTINIB_demo", data, drug="DEMOTINIB", steps=2, demo=True)
    monkeypatch.setenv("SCATD_MODEL_LIBRARY", str(library))
    at = start()
    upload(at, "tumour.h5ad", h5ad_bytes(make_dataset(40, seed=2)))
    goto(at, "9_Panel")
    shown = text(at.warning).replace("\\", "")
    assert "Only one drug model in the library can be chosen for these data: DRUGA" in shown
    assert "A panel needs at least 2 (three or more make a useful panel), so there is nothing to choose yet" in shown
    assert "The demo models (simulated data) are offered with the demo data only" in shown
    assert "Model library page" in shown and "Train a model page" in shown
    assert "Choose at least two" not in text(at.info)
    links = [link.label for link in at.get("page_link")]
    assert any("Model library" in label for label in links) and any("Train" in label for label in links)
    # none at all: the same two ways to get one
    (library / "DRUGA").rename(tmp_path / "away")
    at.run()
    ok(at)
    assert "No drug model for your own data is installed yet" in text(at.warning)
    links = [link.label for link in at.get("page_link")]
    assert any("Model library" in label for label in links) and any("Train" in label for label in links)
