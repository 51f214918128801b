"""Everything a user takes home from one annotated AnnData: CSV tables, h5ad, HTML report, figures."""

from __future__ import annotations

import html
import re
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from _app_helpers import BUNDLE_FOLDER, make_bundle, make_dataset, trained_library  # noqa: F401 (fixture)
from scatd_core import embed, explain, export, pl
from scatd_core._keys import FILTERED
from scatd_core.bundle import load_bundle
from scatd_core.labels import set_label_direction
from scatd_core.predict import labels_at, predict
from scatd_core.preprocess import QC_KEY, apply_qc_filter, qc_metrics


@pytest.fixture(scope="module")
def data_and_bundle(trained_library):
    return make_dataset(160, seed=2), load_bundle(trained_library / BUNDLE_FOLDER)


@pytest.fixture(scope="module")
def filtered_result(data_and_bundle):
    adata, bundle = data_and_bundle
    adata = adata.copy()
    metrics = qc_metrics(adata)
    cut = float(np.quantile(metrics["total_counts"], 0.2))
    passed = apply_qc_filter(adata, {"total_counts": {"min": cut}}, metrics)
    predict(adata, bundle, mask=QC_KEY)
    set_label_direction(adata, "response", "resistant")
    embed.embed(adata, n_epochs=20)
    explain.explain(adata, bundle, max_cells=60, n_steps=8, keep_top=10)
    return adata, bundle, passed


def test_filtered_cells_keep_their_rows(filtered_result, data_and_bundle):
    adata, bundle, passed = filtered_result
    failed = ~passed
    assert failed.sum() > 0
    assert (adata.obs["scatd_label"][failed] == FILTERED).all()
    assert adata.obs["scatd_prob_resistant"][failed].isna().all()
    assert not adata.obs["scatd_scored"][failed].any()
    assert np.isnan(adata.obsm["X_scatd"][failed]).all()
    qc = adata.uns["scatd"]["qc"]
    assert qc["n_filtered"] == failed.sum() and qc["mask"] == QC_KEY
    assert "total_counts" in qc["thresholds"]
    # the passing cells get exactly what predicting them alone gives
    alone = predict(data_and_bundle[0][passed].copy(), bundle, copy=True)
    assert np.allclose(adata.obs["scatd_prob_resistant"][passed], alone.obs["scatd_prob_resistant"])
    # filtered cells are not embedded and not clustered
    assert np.isnan(adata.obsm["X_umap"][failed]).all()


def test_copy_leaves_the_upload_untouched(data_and_bundle):
    adata, bundle = data_and_bundle
    before = list(adata.obs.columns)
    result = predict(adata, bundle, copy=True)
    assert list(adata.obs.columns) == before and "scatd" not in adata.uns
    assert result.uns["scatd"]["qc"]["n_filtered"] == 0


def test_every_cell_filtered_is_a_clear_error(data_and_bundle):
    from scatd_core.errors import InputError

    adata, bundle = data_and_bundle
    with pytest.raises(InputError, match="Every cell is removed by the QC filter"):
        predict(adata, bundle, mask=np.zeros(adata.n_obs, dtype=bool), copy=True)


def test_a_mask_column_must_be_true_false(data_and_bundle):
    """A text column of 'True'/'False' would make every cell True when cast: refused, with what to give."""
    from scatd_core.errors import InputError

    adata, bundle = data_and_bundle
    adata = adata.copy()
    adata.obs["qc_text"] = np.where(np.arange(adata.n_obs) % 2, "True", "False")
    with pytest.raises(InputError, match="is not a True/False column"):
        predict(adata, bundle, mask="qc_text", copy=True)


def test_predictions_table_one_row_per_cell(filtered_result):
    adata, _, passed = filtered_result
    table = export.predictions_table(adata, ["response", "sample", "missing_column"])
    assert len(table) == adata.n_obs and table["cell_id"].tolist() == list(adata.obs_names)
    assert list(table.columns[:7]) == ["cell_id", "prob_resistant", "label", "calibrated", "scored", "not_scored_reason",
                                       "qc_pass"]
    # why each cell was not scored, in words; empty where it was
    assert (table["not_scored_reason"][~passed] == "filtered by QC").all() and \
        (table["not_scored_reason"][table["scored"]] == "").all()
    assert {"umap_1", "umap_2", "leiden_cluster", "response", "sample"} <= set(table.columns)
    assert (table["qc_pass"] == passed).all()
    scored = table["scored"]
    thr = adata.uns["scatd"]["threshold"]["value"]
    assert ((table["prob_resistant"][scored] > thr) == (table["label"][scored] == "resistant")).all()
    assert (table["label"][~passed] == FILTERED).all()
    csv = pd.read_csv(pd.io.common.BytesIO(export.to_csv_bytes(table)))
    assert len(csv) == adata.n_obs


def test_the_known_labels_are_said_in_words_where_the_values_are_numbers(filtered_result):
    """QA on SCAD data: predictions.csv put the raw `response` (1/0, where 1 means sensitive) beside the
    predicted `label`, and metrics.csv named the label column but not which value means resistant, so
    read alone they invited taking 1 as resistant. predictions.csv has `known_label` (resistant/sensitive,
    right after the label column) and metrics.csv `label_resistant` / `label_sensitive`."""
    adata = filtered_result[0].copy()
    adata.obs["scad_response"] = np.where(adata.obs["response"].astype(str) == "resistant", 0, 1)
    adata.obs.loc[adata.obs_names[:3], "scad_response"] = np.nan  # cells without a label: no known label
    set_label_direction(adata, "scad_response", 0)
    table = export.predictions_table(adata, ["scad_response", "sample"], label_column="scad_response")
    columns = list(table.columns)
    assert columns[columns.index("scad_response") + 1] == "known_label"
    assert table["known_label"].iloc[:3].isna().all()
    rest = table.iloc[3:]
    assert (rest["known_label"] == np.where(rest["scad_response"] == 0, "resistant", "sensitive")).all()
    assert (rest["known_label"] == adata.obs["response"].astype(str).to_numpy()[3:]).all()
    csv = pd.read_csv(pd.io.common.BytesIO(export.to_csv_bytes(table)))
    assert csv["known_label"].iloc[3:].isin(["resistant", "sensitive"]).all() and csv["known_label"].iloc[:3].isna().all()
    rows = export.metrics_table(adata, "scad_response").query("section == 'evaluation'").set_index("metric")["value"]
    assert rows["label_column"] == "scad_response"
    assert (rows["label_resistant"], rows["label_sensitive"]) == ("0", "1")
    assert rows["label_direction_from"].startswith("chosen")
    assert export.report_context(adata, "scad_response")["label_resistant"] == "0"
    # no label column, or one whose direction is not known: no known_label (never a guess)
    assert "known_label" not in export.predictions_table(adata, ["scad_response"]).columns
    adata.obs["unsaid"] = adata.obs["scad_response"]
    assert "known_label" not in export.predictions_table(adata, label_column="unsaid").columns
    # a data column already named known_label is kept, as obs_known_label
    adata.obs["known_label"] = "theirs"
    table = export.predictions_table(adata, ["known_label"], label_column="scad_response")
    assert (table["obs_known_label"] == "theirs").all() and table["known_label"].iloc[3:].notna().all()


def test_the_spread_note_says_what_the_sd_is_over():
    """``prob_resistant_sd`` is the members' (or draws') spread, not the call's confidence. (The app's
    tables show predictions.csv's own columns: tests/test_app_pages.py checks them.)"""
    said = export.spread_note("over the 3 ensemble members")
    assert "spread between the ensemble members, not the confidence of the call" in said
    assert "between the draws" in export.spread_note("over the draws")


def test_csv_downloads_never_carry_a_spreadsheet_formula(filtered_result):
    """Cell, group and column names come from the user's data: a CSV opened in a spreadsheet must
    not run ``=HYPERLINK(...)`` or ``+cmd|...``. They are prefixed with ``'``; numbers (negative
    ones too) and ordinary names are written as they are."""
    adata, _, _ = filtered_result
    adata = adata.copy()
    names = list(adata.obs_names)
    names[0], names[1], names[2] = '=HYPERLINK("http://x","y")', "+cmd|' /C calc'!A0", "@SUM(A1)"
    adata.obs_names = names
    adata.obs["=evil"] = pd.Categorical(["-2+3"] * 5 + ["ok"] * (adata.n_obs - 5))
    from scatd_core import _keys  # centred, so negative coordinates are there whatever UMAP's layout
    adata.obsm[_keys.UMAP] = adata.obsm[_keys.UMAP] - np.nanmedian(adata.obsm[_keys.UMAP], axis=0)
    table = export.predictions_table(adata, ["sample", "=evil"])
    csv = pd.read_csv(pd.io.common.BytesIO(export.to_csv_bytes(table)))
    assert csv["cell_id"].tolist()[:3] == ["'" + n for n in names[:3]]
    assert csv["cell_id"].tolist()[3:] == names[3:]
    assert "'=evil" in csv.columns and set(csv["'=evil"]) == {"'-2+3", "ok"}
    np.testing.assert_allclose(csv["umap_1"].to_numpy(float), table["umap_1"].to_numpy(float), rtol=1e-6)  # numbers untouched
    assert (csv["umap_1"] < 0).any()
    assert table["cell_id"].tolist() == names  # the table itself is not changed
    # a signed difference with its interval (the model card's) is shown as it is; one with a name is not
    assert export._formula_mask(pd.Series(["+0.041 [-0.068, +0.159]", "-0.1 [-0.2, +0.3] x", "+1+A1"])).tolist() == \
        [False, True, True]
    plain = pd.DataFrame({"gene": ["-", "+", "-1.5", "GAPDH"], "v": [-1.0, 2.0, 3.0, 4.0]}, index=["=i", "a", "b", "c"])
    assert export.to_csv_bytes(plain) == plain.to_csv(index=False).encode()
    assert export.to_csv_bytes(plain, index=True).decode().splitlines()[1].startswith("'=i,")


def test_an_auroc_under_half_is_called_a_swapped_direction_only_beyond_chance(data_and_bundle):
    """An uninformative model scores AUROC < 0.5 half the time: that is chance, not a reason to flip
    correct labels. Only an interval entirely below 0.5 says the direction looks swapped."""
    from scatd_core import metrics

    adata, bundle = data_and_bundle
    adata = adata.copy()
    predict(adata, bundle)
    prob = adata.obs["scatd_prob_resistant"].to_numpy()
    rng = np.random.default_rng(0)
    for _ in range(50):  # random labels with AUROC just under 0.5
        adata.obs["coin"] = np.where(rng.random(adata.n_obs) < 0.5, "resistant", "sensitive")
        set_label_direction(adata, "coin", "resistant")
        evaluation, _, _ = metrics.evaluate_column(adata, "coin")
        if 0.4 < evaluation.auroc < 0.5:
            break
    assert 0.4 < evaluation.auroc < 0.5 and not evaluation.ranks_reversed
    low, high = evaluation.auroc_ci
    assert low < evaluation.auroc < high and high > 0.5
    assert any("not distinguishable from chance" in n for n in evaluation.notes)
    assert not any("wrong way round" in n for n in evaluation.notes)
    adata.obs["swapped"] = np.where(prob < np.median(prob), "resistant", "sensitive")  # truly reversed
    set_label_direction(adata, "swapped", "resistant")
    evaluation, _, _ = metrics.evaluate_column(adata, "swapped")
    assert evaluation.ranks_reversed and evaluation.auroc_ci[1] < 0.5
    assert any("wrong way round" in n for n in evaluation.notes)


def test_the_reports_auroc_interval_is_printed_as_everywhere_else(data_and_bundle, monkeypatch):
    """QA: an interval ending just under 0.5 was printed on it. The Evaluation table of report.html
    prints the ends as the notes, the Cells page and the terminal do (``metrics.interval_ends``),
    and names the method (Hanley-McNeil) beside both."""
    from scatd_core import metrics

    adata, bundle = data_and_bundle
    adata = adata.copy()
    predict(adata, bundle)
    set_label_direction(adata, "response", "resistant")
    monkeypatch.setattr(metrics, "auroc_interval", lambda *a: (0.41, 0.499996))
    text = export.html_report(adata, label_column="response")
    assert "<td>auroc_ci_low</td><td>0.410</td>" in text and "<td>auroc_ci_high</td><td>0.499996</td>" in text
    assert "upper end (Hanley-McNeil)" in text and "(95% interval 0.410-0.499996)" in text


def test_the_datas_own_columns_are_never_replaced_by_computed_ones(filtered_result):
    """The data's own 'cluster' column keeps its name and values next to the computed leiden_cluster,
    and a chosen column named like a computed one (a 'label' column of true labels) is kept as
    obs_<name>, never dropped."""
    adata, _, _ = filtered_result
    adata = adata.copy()
    adata.obs["cluster"] = np.where(np.arange(adata.n_obs) % 2, "cycling", "interferon")
    adata.obs["label"] = "true label"
    table = export.predictions_table(adata, ["cluster", "label", "sample", "sample"])
    assert (table["cluster"] == adata.obs["cluster"].to_numpy()).all()
    assert (table["obs_label"] == "true label").all() and set(table["label"]) != {"true label"}
    assert (table["leiden_cluster"] == adata.obs["scatd_cluster"].astype(str).to_numpy()).all()
    assert list(table.columns).count("sample") == 1


def test_labels_at_relabels_without_recomputing(filtered_result):
    adata, _, passed = filtered_result
    low, high = labels_at(adata, 0.0), labels_at(adata, 1.0)
    assert (low[passed] == "resistant").all() and (high[passed] == "sensitive").all()
    assert (low[~passed] == FILTERED).all()


def test_metrics_table_sections(filtered_result):
    adata, _, _ = filtered_result
    table = export.metrics_table(adata, "response", ["sample"])
    assert {"summary", "evaluation"} <= set(table["section"])
    assert any(s.startswith("sample=") for s in table["section"])
    auroc = table.query("metric == 'auroc'")["value"].iloc[0]
    assert 0.5 < auroc <= 1.0
    n_cells = table.query("section == 'summary' and metric == 'n_cells'")["value"].iloc[0]
    assert n_cells == adata.n_obs and isinstance(n_cells, int)
    assert table.query("metric == 'calibrated'")["value"].iloc[0] is False
    assert table.query("metric == 'threshold_fitted_on_these_labels'")["value"].iloc[0] is False


def test_every_metrics_csv_row_has_an_id_unique_in_the_file(filtered_result):
    """QA: metrics.csv named `threshold` in its summary, evaluation and biomarkers sections (three
    thresholds: the calls now, the scores', the ranking's) and `note` twice in the summary, so a table
    keyed by the metric's name (R's setNames, Excel's lookups) had duplicates. Each row has an `id`,
    `section:metric`, unique in the file; a metric said twice in a section is numbered from its second."""
    import io

    adata = filtered_result[0].copy()
    adata.uns["scatd"] = {**adata.uns["scatd"], "notes": ["first note", "second note"]}
    table = export.metrics_table(adata, "response", ["sample"])
    assert list(table.columns) == ["section", "metric", "value", "id"]
    assert table["id"].is_unique and not table.duplicated(["section", "metric"]).any()
    assert (table["id"] == table["section"] + ":" + table["metric"]).all()
    by_id = table.set_index("id")["value"]
    assert {"summary:threshold", "evaluation:threshold", "biomarkers:threshold"} <= set(by_id.index)
    assert by_id["summary:note"] == "first note" and by_id["summary:note_2"] == "second note"
    assert any(i.startswith("sample=") and i.endswith(":n_cells") for i in by_id.index)
    back = pd.read_csv(io.BytesIO(export.to_csv_bytes(table)), index_col="id")  # as a biologist reads it back
    assert back.index.is_unique and back.loc["summary:n_cells", "value"] == str(adata.n_obs)


def test_the_report_says_no_label_meaning_its_words_say_and_no_brackets_in_brackets(filtered_result):
    """QA: report.html said "In 'response', resistant means resistant and sensitive sensitive." and
    "(the model's default (0.5))". The meaning is said only where the values are not the words
    themselves (test_cli: 0/1 still are), and the default threshold's detail holds no number."""
    from scatd_core.predict import set_threshold

    adata = filtered_result[0].copy()
    set_threshold(adata, 0.5, "model default")
    assert adata.uns["scatd"]["threshold"]["detail"] == "the model's default"
    text = export.html_report(adata, label_column="response")
    assert "<code>resistant</code> means resistant" not in text
    assert "(the model&#x27;s default)." in text and "default (0.5)" not in text


def test_scores_at_a_threshold_fitted_on_the_same_labels_are_flagged(filtered_result):
    from scatd_core.predict import calibrate

    adata = filtered_result[0].copy()
    calibrate(adata, label_column="response", method="youden")
    table = export.metrics_table(adata, "response")
    assert table.query("metric == 'threshold_fitted_on_these_labels'")["value"].iloc[0] is True
    html = export.html_report(adata, label_column="response")
    assert "fitted on these same labels" in html and "optimistic" in html
    adata.obs["other"] = adata.obs["response"]  # another column: not the one the threshold was fitted on
    assert export.metrics_table(adata, "other").query(
        "metric == 'threshold_fitted_on_these_labels'")["value"].iloc[0] is False
    calibrate(adata, expected_fraction=0.3)  # set again without labels: no longer fitted on them
    assert "optimistic" not in export.html_report(adata, label_column="response")
    summary = export.metrics_table(adata).query("section == 'summary'").set_index("metric")["value"]
    assert summary["threshold_source"] == "expected fraction"  # where it came from, in the file too
    assert "expected 30%" in summary["threshold_detail"]


def test_h5ad_opens_with_every_result(filtered_result, tmp_path):
    adata, _, _ = filtered_result
    path = export.write_h5ad(adata, tmp_path / "out.h5ad")
    back = ad.read_h5ad(path)
    assert {"scatd_prob_resistant", "scatd_label", "scatd_scored", QC_KEY, "scatd_cluster",
            "scatd_explained"} <= set(back.obs)
    assert {"X_scatd", "X_umap", "scatd_attributions", "scatd_attribution_inputs"} <= set(back.obsm)
    assert back.uns["scatd"]["model"]["drug"] == "TESTDRUG"
    assert back.uns["scatd_labels"]["response"]["resistant"] == "resistant"
    ranking = back.uns["scatd_biomarkers"]["ranking"]
    assert list(ranking["feature"][:5]) == list(adata.uns["scatd_biomarkers"]["ranking"]["feature"][:5])
    again = explain.from_adata(back)
    assert again.features == explain.from_adata(adata).features
    assert np.allclose(again.attributions, explain.from_adata(adata).attributions)
    assert export.h5ad_bytes(adata)[:8] == b"\x89HDF\r\n\x1a\n"


def test_html_report_is_self_contained(filtered_result):
    adata, bundle, _ = filtered_result
    text = export.html_report(adata, label_column="response", group_columns=["sample"],
                              data_name="<script>alert(1)</script>.h5ad")
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;alert(1)" in text
    assert not re.search(r"<script[^>]+src=", text)  # nothing fetched from the network
    assert text.count("plotly.js v") <= 2 and "Plotly.newPlot" in text  # library inlined once
    # each figure is named by its text alternative, as in the app (a screen reader says what it shows)
    named = re.findall(r"<figure class='chart' role='figure' aria-label='([^']+)'>", text)
    assert len(named) == text.count("Plotly.newPlot") >= 3
    assert any(label.startswith("Histogram of P(resistant)") for label in named), named
    assert '"modeBarButtonsToRemove"' in text and '"displaylogo": false' in text
    # QA: the report's toolbar had plotly.js's "Share chart..." (uploads the chart to Plotly Cloud)
    removed = re.findall(r'"modeBarButtonsToRemove": \[[^\]]*\]', text)
    assert len(removed) == len(named) and all('"sendChartToCloud"' in r for r in removed)
    for needle in ("TESTDRUG", "weights sha256", "mode", "seed", "scATD Studio", "AUROC", "Leiden cluster",
                   "filtered", bundle.manifest["weights_sha256"], "Biomarkers", "not calibrated",
                   str(adata.uns["scatd_biomarkers"]["ranking"]["feature"][0])):
        assert needle.lower() in text.lower(), needle
    assert "class='demo'" not in text  # no demo banner for a real model
    # what a biologist reads: the positive class, each score's meaning, the groups' columns, names not codes
    for needle in ("Resistant is the positive class", "chance that a resistant cell gets a higher P(resistant)",
                   "<th>scored</th>", "resistant / scored", "Dist_VAE (scATD-sf-dist)",
                   "of the scored cells called resistant", "no cluster (QC-filtered or not scored)"):
        assert needle in text, needle
    assert "not embedded" not in text and str(bundle.path.parent) not in text  # no server path in the report
    assert "&lt;NA&gt;" not in text and ">nan<" not in text
    software = text.split("<h2>Software</h2>")[1].split("</table>")[0]  # what the results depend on, with versions
    for library in ("torch", "numpy", "scipy", "pandas", "scanpy", "leidenalg", "numba", "captum", "scikit-learn"):
        assert f"<th>{library}</th>" in software, library


def test_the_report_fits_a_phone_tables_scroll_and_the_biomarker_legend_is_under_the_bars(filtered_result):
    """QA at 390 px: the tables made the page ~712 px wide, the biomarker chart's legend covered its top
    bars and long gene names were cut. Each table scrolls in its own box; the legend is under the plot."""
    adata, _, _ = filtered_result
    text = export.html_report(adata, label_column="response", group_columns=["sample"])
    assert text.count("<table") == text.count("<div class='table-scroll'><table") > 5
    assert re.search(r"\.table-scroll\{[^}]*overflow-x:auto", text)
    ranking = pd.DataFrame(adata.uns["scatd_biomarkers"]["ranking"])
    fig = pl.biomarker_bar(ranking, 10, "P(resistant)").to_plotly_json()["layout"]
    assert fig["legend"]["orientation"] == "h" and fig["legend"]["y"] < 0 and fig["legend"]["yanchor"] == "top"
    assert fig["yaxis"]["automargin"] is True  # whole gene names


def test_the_reports_umap_notes_are_text_under_the_plot_that_wraps(filtered_result, monkeypatch):
    """QA r1: a UMAP's note ("N cells without coordinates are not shown; showing a random N of M
    cells") was a Plotly annotation, one line that never wraps: cut off on a phone. report.html
    writes it as the figure's caption, under the plot, and draws in the figure only the subsample's
    short line (so that a PNG or copy of it says it)."""
    adata, _, passed = filtered_result
    monkeypatch.setattr(pl, "MAX_PLOT_POINTS", 50)
    text = export.html_report(adata, label_column="response", group_columns=["sample"])
    n_out, n_in = int((~passed).sum()), int(passed.sum())
    # the subsample is said once, in the figure (below), not again in the caption
    caption = f"<figcaption>{n_out} cells without coordinates are not shown.</figcaption></figure>"
    assert text.count(caption) == 2  # under both UMAPs
    assert "are not shown; showing a random" not in text  # the notes' long line, drawn in the figure
    assert text.count(f'"text":"Showing a random 50 of {n_in} cells"') == 2  # but the subsample's short one
    assert re.search(r"figure\.chart figcaption\{", text)


def test_html_report_labels_demo_models_and_reports_evaluation_problems(data_and_bundle, tmp_path):
    adata, _ = data_and_bundle
    demo_bundle = make_bundle(tmp_path / "demo", adata, steps=2, demo=True)
    result = predict(adata, demo_bundle, copy=True)
    result.obs["one_class"] = "resistant"
    text = export.html_report(result, label_column="one_class")
    assert "class='demo'" in text and "demo (simulated data)" in text
    assert "is not known" in text or "exactly two" in text or "Every labelled cell" in text  # shown, not raised


def test_a_report_without_the_umap_says_it_was_not_computed_and_how_to_include_it(filtered_result):
    """QA r1: report.html downloaded from the app before the Cells page was opened had no UMAP or clusters
    and never said why (the Report page says "open the Cells page first"). The file says it in its own
    words, and how to include them (the Cells page, or scatd report without --no-umap)."""
    adata = filtered_result[0].copy()  # (the fixture is shared)
    assert html.escape(export.UMAP_NOT_COMPUTED) not in export.html_report(adata)  # computed: nothing to say
    embed.forget_umap(adata)
    assert "X_umap" not in adata.obsm
    text = export.html_report(adata)
    said = f"<p class='warn'>{html.escape(export.UMAP_NOT_COMPUTED)}</p>"
    assert text.count(said) == 1 and "UMAP (" not in text
    for needle in ("were not computed for this report", "open the Cells page in the app", "without --no-umap"):
        assert needle in export.UMAP_NOT_COMPUTED
    adata.obsm["X_umap"] = np.zeros((adata.n_obs, 2))  # the file's own UMAP only: shown, and scATD's said missing
    text = export.html_report(adata)
    assert html.escape(export.DATA_UMAP_ONLY) in text and html.escape(export.UMAP_NOT_COMPUTED) not in text


def test_the_report_builds_from_an_annotated_h5ad_read_back(data_and_bundle, tmp_path):
    """A demo prediction written with export and read back with anndata: the lists in uns come back as
    numpy arrays (the input's empty warnings too), whose truth value is an error. The report still builds."""
    from scatd_core import io

    adata, _ = data_and_bundle
    adata.write_h5ad(tmp_path / "tumour.h5ad")
    data = io.read(tmp_path / "tumour.h5ad")  # records its warnings (none) in uns
    bundle = make_bundle(tmp_path / "demo", data, steps=2, demo=True)
    predict(data, bundle)
    data.uns["scatd"]["model"]["provenance"]["files"] = ["bulk.csv", "labels.csv"]  # a list, an array once read
    back = ad.read_h5ad(export.write_h5ad(data, tmp_path / "annotated.h5ad"))
    assert isinstance(back.uns["scatd_input"]["warnings"], np.ndarray) and back.uns["scatd_input"]["warnings"].size == 0
    text = export.html_report(back, label_column="response", group_columns=["sample"])
    assert "class='demo'" in text and "AUROC" in text
    data_table = text.split("<h2>Data</h2>")[1].split("</table>")[0]
    assert "<th>input warnings</th><td>—</td>" in data_table  # none, not an empty array
    assert "<th>provenance: files</th><td>[&quot;bulk.csv&quot;, &quot;labels.csv&quot;]</td>" in text
    assert set(export.metrics_table(back, "response", ["sample"])["section"]) >= {"summary", "evaluation"}


def test_the_h5ad_holds_what_the_report_was_made_with_and_a_download_no_server_path(filtered_result, tmp_path):
    adata, bundle, _ = filtered_result
    paths = export.write_report(adata, tmp_path / "rep", label_column="response", group_columns=["sample"])
    written = ad.read_h5ad(paths["h5ad"])
    context = written.uns["scatd_report"]
    assert context["label_column"] == "response" and list(context["group_columns"]) == ["sample"]
    metrics_csv = pd.read_csv(paths["metrics"])
    auroc = float(metrics_csv.query("section == 'evaluation' and metric == 'auroc'")["value"].iloc[0])
    assert context["evaluation"]["auroc"] == pytest.approx(auroc)
    # scatd report's metrics.csv is the Report page's download (its id column included), byte for byte
    assert paths["metrics"].read_bytes() == export.to_csv_bytes(export.metrics_table(adata, "response", ["sample"]))
    assert metrics_csv["id"].is_unique
    assert "scatd_report" not in adata.uns  # the session's data are left as they were
    assert written.uns["scatd"]["model"]["path"] == str(bundle.path)  # the CLI's own file: the full path
    download = tmp_path / "download.h5ad"
    download.write_bytes(export.h5ad_bytes(adata, context=export.report_context(adata, "response", ["sample"])))
    downloaded = ad.read_h5ad(download)
    assert downloaded.uns["scatd"]["model"]["path"] == bundle.path.name  # from a server: its folder's name only
    assert downloaded.uns["scatd_report"]["evaluation"]["auroc"] == pytest.approx(auroc)
    assert adata.uns["scatd"]["model"]["path"] == str(bundle.path)
    groups = set(metrics_csv["section"])
    assert any(s.startswith("leiden_cluster=") for s in groups) and not any(s.startswith("scatd_cluster") for s in groups)
    assert "n_called" in set(metrics_csv["metric"])


def test_write_report_writes_every_file(filtered_result, tmp_path):
    adata, _, _ = filtered_result
    paths = export.write_report(adata, tmp_path / "rep", label_column="response", group_columns=["sample"])
    assert set(paths) == {"predictions", "metrics", "biomarkers", "h5ad", "html"}
    assert all(p.is_file() for p in paths.values())
    assert len(pd.read_csv(paths["predictions"])) == adata.n_obs
    assert len(pd.read_csv(paths["biomarkers"])) == len(adata.uns["scatd_biomarkers"]["ranking"])


def test_write_report_without_a_ranking_removes_an_earlier_biomarkers_csv(filtered_result, tmp_path):
    """A report folder written again without biomarkers kept the earlier run's biomarkers.csv, as
    if it were this run's; it is removed (only that file name, only a regular file)."""
    adata, _, _ = filtered_result
    plain = adata.copy()
    del plain.uns["scatd_biomarkers"]
    folder = tmp_path / "rep"
    assert "biomarkers" in export.write_report(adata, folder)
    (folder / "notes.txt").write_text("mine")
    paths = export.write_report(plain, folder)
    assert "biomarkers" not in paths and not (folder / "biomarkers.csv").exists()
    assert (folder / "notes.txt").read_text() == "mine"
    # a link or a folder of that name is not this writer's: left alone
    (tmp_path / "elsewhere.csv").write_text("x")
    (folder / "biomarkers.csv").symlink_to(tmp_path / "elsewhere.csv")
    export.write_report(plain, folder)
    assert (folder / "biomarkers.csv").is_symlink() and (tmp_path / "elsewhere.csv").read_text() == "x"
    (folder / "biomarkers.csv").unlink()
    (folder / "biomarkers.csv").mkdir()
    export.write_report(plain, folder)
    assert (folder / "biomarkers.csv").is_dir()


def test_file_stem():
    assert export.file_stem("my tumour.csv.gz", "Gefitinib") == "my_tumour_Gefitinib"
    assert export.file_stem(None, None) == "data"
    assert export.file_stem("demo (simulated data)", "panel") == "demo_simulated_data_panel"  # no "__"


def test_download_names_say_which_model_and_threshold_made_them():
    """QA: the app's stem was {data}_{drug}: a run at 0.5 then a calibrated one, or two models of
    one drug, gave files of the same name with different contents; the panel's named neither the
    saved panel nor its drugs."""
    def run(folder, threshold):
        return {"model": {"path": f"/srv/library/{folder}", "drug": "GEFITINIB"}, "threshold": {"value": threshold}}

    names = {export.file_stem("tumour.h5ad", run=run("gefitinib_vae_sf", 0.5)),
             export.file_stem("tumour.h5ad", run=run("gefitinib_vae_sf", 0.2731)),
             export.file_stem("tumour.h5ad", run=run("gefitinib_dist_vae", 0.5)),
             export.file_stem("tumour.h5ad", run=run("my model", 0.5))}
    assert len(names) == 4
    assert export.file_stem("tumour.h5ad", run=run("gefitinib_vae_sf", 0.2731)) == "tumour_gefitinib_vae_sf_thr0.2731"
    assert export.file_stem("tumour.h5ad", run=run("my model", 0.5)) == "tumour_GEFITINIB_my_model_thr0.5"
    long = export.file_stem("x" * 300 + ".h5ad", run={"model": {"path": "/a/" + "y" * 300, "drug": "z" * 300},
                                                       "threshold": {"value": 0.05}})
    assert len(long) < 160 and long.endswith("_thr0.05") and re.fullmatch(r"[A-Za-z0-9._-]+", long)
    assert export.panel_stem("tumour.h5ad", "My panel / 2") == "tumour_panel_My_panel_2"
    assert export.panel_stem("tumour.h5ad", None, ["CISPLATIN", "GEFITINIB"]) == "tumour_panel_CISPLATIN-GEFITINIB"
    many = export.panel_stem("t", None, ["CISPLATIN", "GEFITINIB", "PACLITAXEL", "DOCETAXEL", "ERLOTINIB", "X" * 40])
    assert many == "t_panel_CISPLATIN-GEFITINIB-PACLITAXEL+3"


def test_metrics_csv_records_the_model_the_mode_and_the_data_file(filtered_result, tmp_path, monkeypatch):
    """QA: metrics.csv carried no provenance: which model (name, weights sha256, drug), the mode
    and what prob_resistant_sd is over, when and with which version, and which file."""
    import hashlib

    from scatd_core import io

    adata, bundle, _ = filtered_result
    adata = adata.copy()
    path = tmp_path / "cells.h5ad"
    make_dataset(20, seed=1).write_h5ad(path)
    adata.uns["scatd_input"] = dict(io.read(path).uns["scatd_input"])  # as read: the file's sha256 recorded
    summary = export.metrics_table(adata).query("section == 'summary'").set_index("metric")["value"]
    assert summary["model"] == bundle.name and summary["drug"] == "TESTDRUG"
    assert summary["weights_sha256"] == bundle.manifest["weights_sha256"] and summary["model_folder"] == BUNDLE_FOLDER
    assert summary["mode"] == "mean" and summary["prob_resistant_sd"] == adata.uns["scatd"]["params"]["prob_resistant_sd"]
    assert summary["run_at"] == adata.uns["scatd"]["run_at"] and "T" in summary["run_at"]
    assert summary["scatd_version"] == adata.uns["scatd"]["scatd_version"]
    data = export.metrics_table(adata).query("section == 'data'").set_index("metric")["value"]
    assert data["file"] == "cells.h5ad" and data["file_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert data["file_sha256"] in export.html_report(adata)
    monkeypatch.setattr(io, "SHA256_MAX_BYTES", path.stat().st_size - 1)  # a file too large to hash when read
    big = dict(io.read(path).uns["scatd_input"])
    assert "file_sha256" not in big and "sha256sum" in big["file_sha256_skipped"]
    adata.uns["scatd_input"] = big
    data = export.metrics_table(adata).query("section == 'data'").set_index("metric")["value"]
    assert data["file_sha256"] == big["file_sha256_skipped"]
    sampled = predict(make_dataset(30, seed=4), bundle, mode="sample", n_samples=4, copy=True)
    summary = export.metrics_table(sampled).query("section == 'summary'").set_index("metric")["value"]
    assert summary["mode"] == "sample" and summary["n_samples"] == 4 and summary["prob_resistant_sd"] == "over the draws"


def test_the_h5ad_says_which_calls_are_which_and_draws_them_in_the_apps_colours(filtered_result, tmp_path):
    """QA: obs['scatd_label'] kept an unused 'not scored' category and no colours (an empty legend
    entry in scanpy's default colours); biomarkers computed at an older threshold were exported
    unmarked."""
    from scatd_core.predict import set_threshold

    adata, _, _ = filtered_result
    adata = adata.copy()
    back = ad.read_h5ad(export.write_h5ad(adata, tmp_path / "a.h5ad"))
    labels = back.obs["scatd_label"]
    assert "not scored" not in labels.cat.categories and set(labels.cat.categories) == set(labels.astype(str))
    colours = dict(zip(labels.cat.categories, back.uns["scatd_label_colors"]))
    assert colours["resistant"] == pl.COLORS["resistant"] and colours["sensitive"] == pl.COLORS["sensitive"]
    assert colours[FILTERED] == pl.COLORS[FILTERED]
    assert "not scored" in adata.obs["scatd_label"].cat.categories  # the session's data left as they were
    record = back.uns["scatd_columns"]["prediction"]
    assert "scatd_label" in list(record["columns"]) and record["threshold"] == pytest.approx(
        adata.uns["scatd"]["threshold"]["value"]) and record["model"] == adata.uns["scatd"]["model"]["name"]
    assert "out_of_date" not in back.uns["scatd_biomarkers"]["info"]
    set_threshold(adata, 0.9, "user")  # the biomarkers were computed at the earlier threshold
    back = ad.read_h5ad(export.write_h5ad(adata, tmp_path / "b.h5ad"))
    assert "computed at threshold" in back.uns["scatd_biomarkers"]["info"]["out_of_date"]
    assert back.uns["scatd_columns"]["prediction"]["threshold"] == pytest.approx(0.9)
    assert "out_of_date" not in adata.uns["scatd_biomarkers"]["info"]


def test_the_reports_footer_names_the_files_as_written(filtered_result):
    """QA: report.html's footer named predictions.csv ... annotated.h5ad while the app's downloads
    are {stem}_predictions.csv etc."""
    adata, _, _ = filtered_result
    names = ["t_x_predictions.csv", "t_x_metrics.csv", "t_x_biomarkers.csv", "t_x_annotated.h5ad"]
    footer = export.html_report(adata, files=names).split("<footer>")[1]
    assert "t_x_predictions.csv (one row per uploaded cell)" in footer and "t_x_annotated.h5ad" in footer
    assert " predictions.csv" not in footer
    plain = adata.copy()
    del plain.uns["scatd_biomarkers"]
    footer = export.html_report(plain).split("<footer>")[1]  # scatd report's names: no biomarkers.csv without them
    assert "predictions.csv" in footer and "biomarkers.csv" not in footer


def test_umap_figure_never_breaks_on_missing_coordinates():
    coords = np.array([[0.0, 1.0], [np.nan, 2.0], [np.inf, 0.0], [1.0, 1.0], [2.0, 0.5]])
    fig = pl.umap_figure(coords, np.array([0.1, 0.2, 0.3, np.nan, 0.9]), name="P")
    drawn = sum(len(t.x) for t in fig.data)
    assert drawn == 3  # two cells without coordinates left out
    assert "2 cells without coordinates" in fig.layout.annotations[0].text
    labels = pl.umap_figure(coords, ["a", "b", None, "a", "b"], categorical=True)
    assert sum(len(t.x) for t in labels.data) == 3
    big = pl.umap_figure(np.random.default_rng(0).normal(size=(500, 2)), max_points=100)
    assert len(big.data[0].x) == 100 and "random 100 of 500" in big.layout.annotations[0].text


def test_probability_histogram_counts_every_cell_including_exact_0_and_1():
    p = np.array([0.0, 0.0, 1.0, 1.0, 1.0, 0.5, 0.999, np.nan])
    fig = pl.probability_histogram(p, 0.5)
    bars = fig.data[0]
    counts = np.sum([t.y for t in fig.data], axis=0)  # called sensitive + called resistant, stacked
    assert counts.sum() == 7  # every scored cell, none outside the axis
    assert counts[0] == 2 and counts[-1] == 4  # exact 0 in the first bin, exact 1 (and 0.999) in the last
    assert max(bars.x) + bars.width / 2 == pytest.approx(1.0) and min(bars.x) - bars.width / 2 == pytest.approx(0.0)


def test_the_histograms_threshold_says_where_it_came_from():
    """QA: a threshold set by hand (or with --threshold) was labelled "model default, uncalibrated"."""
    from scatd_core.predict import threshold_origin

    p = np.linspace(0, 1, 21)

    def label(record):
        fig = pl.probability_histogram(p, record["value"], calibrated=record["calibrated"],
                                       source=threshold_origin(record))
        return fig.layout.annotations[0].text

    by_hand = {"value": 0.3, "source": "user", "calibrated": False, "detail": "set by hand on the Cells page"}
    assert label(by_hand) == "threshold 0.3 (set by hand, uncalibrated)"
    assert label({**by_hand, "detail": "set with --threshold"}) == "threshold 0.3 (set with --threshold, uncalibrated)"
    assert label({**by_hand, "source": "model default"}) == "threshold 0.3 (model default, uncalibrated)"
    assert label({**by_hand, "source": "expected fraction", "calibrated": True}) == "threshold 0.3 (calibrated)"
    alt = pl.alt_text(pl.probability_histogram(p, 0.3, calibrated=False, source="set by hand"))
    assert "threshold 0.3 (set by hand, uncalibrated)" in alt


def test_counts_of_one_say_cell_and_de_scores_have_three_significant_figures():
    """QA: hovers read "1 cells called resistant" and "DE score 11.938429832458496"."""
    hist = pl.probability_histogram(np.array([0.01, 0.011, 0.9]), 0.5)
    hovers = [str(h) for t in hist.data for h in t.hovertext]
    assert "1 cell called resistant" in hovers and "2 cells called sensitive" in hovers and "0 cells called resistant" in hovers
    assert not [h for h in hovers if h.startswith("1 cells")] and "%{hovertext}" in hist.data[0].hovertemplate
    confusion = pl.confusion_figure(np.array([[5, 1], [0, 3]]), "resistant", "sensitive")
    assert {"1 cell", "0 cells", "3 cells", "5 cells"} == {str(v) for row in confusion.data[0].customdata for v in row}
    summary = pd.DataFrame({"drug": ["D1", "D2"], "group": ["g", "g"], "fraction_resistant": [1.0, 0.5],
                            "n_called": [1, 4], "mean_prob_resistant": [0.7, 0.4]})
    dots = pl.panel_dotplot(summary, group_name="sample", thresholds={"D1": 0.5, "D2": 0.5})
    assert [row[1] for row in dots.data[0].customdata] == ["1 cell", "4 cells"]
    assert "most resistant: g with D1, 100% of 1 cell;" in pl.alt_text(dots)
    ranking = pd.DataFrame({"feature": ["A", "B"], "mean_abs_attribution": [0.3, 0.2], "direction": ["resistance"] * 2,
                            "rank": [1, 2], "de_score": [11.938429832458496, np.nan]})
    bars = pl.biomarker_bar(ranking, 2, "P(resistant)")
    assert sorted(str(row[1]) for row in bars.data[0].customdata) == ["11.9", "n/a"]


def test_the_reports_data_table_names_the_file_as_metrics_csv_does(filtered_result):
    """QA: the demo's report named its file "demo (simulated data)" where metrics.csv says demo_tumour.h5ad."""
    adata, _, _ = filtered_result
    adata = adata.copy()
    adata.uns["scatd_input"] = {"file_name": "demo_tumour.h5ad", "file_sha256": "ab" * 32}
    text = export.html_report(adata, data_name="demo (simulated data)")
    assert "<th>file</th><td>demo_tumour.h5ad</td>" in text.split("<h2>Data</h2>")[1]
    assert "on demo (simulated data)</h1>" in text  # the title names the data as given
    rows = export.metrics_table(adata)
    assert rows[(rows["section"] == "data") & (rows["metric"] == "file")]["value"].tolist() == ["demo_tumour.h5ad"]


def test_a_rankings_downloads_are_named_with_the_threshold_it_was_computed_at(filtered_result):
    """QA: a ranking computed at 0.5 was downloaded as ..._thr0.3_biomarkers.csv once the threshold moved to 0.3."""
    from scatd_core.predict import set_threshold

    adata, _, _ = filtered_result
    adata = adata.copy()
    computed_at = float(adata.uns["scatd_biomarkers"]["info"]["threshold"])
    assert export.biomarkers_stem("t.h5ad", adata) == export.file_stem("t.h5ad", run=adata.uns["scatd"])
    set_threshold(adata, 0.3, "user")
    assert export.file_stem("t.h5ad", run=adata.uns["scatd"]).endswith("_thr0.3")
    assert export.biomarkers_stem("t.h5ad", adata).endswith(f"_thr{computed_at:.4g}") and computed_at != 0.3


@pytest.mark.parametrize("mode", ["mean", "sample"])
def test_device_out_of_memory_lowers_the_batch_and_says_so(data_and_bundle, monkeypatch, mode):
    """A forward pass over more than 16 cells raises OutOfMemoryError (as a full GPU would):
    the batch is halved until it fits, every cell is still scored, and the run says so."""
    import torch

    from scatd_core.predict import lowered_batch_message, summary

    adata, bundle = data_and_bundle
    reference = predict(adata, bundle, copy=True, batch_size=16, mode=mode, n_samples=5)
    model_cls = type(bundle.load_model(torch.device("cpu")))
    real_encode = model_cls.encode
    sizes = []

    def encode(self, x):
        sizes.append(x.shape[0])
        if x.shape[0] > 16:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_encode(self, x)

    monkeypatch.setattr(model_cls, "encode", encode)
    out = predict(adata, bundle, copy=True, batch_size=100, mode=mode, n_samples=5)
    assert sizes[:4] == [100, 50, 25, 12] and max(sizes[4:]) == 12  # halved until it fitted, then kept
    assert out.uns["scatd"]["params"]["batch_size_lowered_to"] == 12
    counts = summary(out)
    assert counts["batch_size_lowered_to"] == 12 and "lowered to 12 cells" in lowered_batch_message(counts)
    rows = export.metrics_table(out).set_index("metric")["value"]
    assert rows["batch_size_lowered_to"] == 12  # metrics.csv has the row only when the batch was lowered
    assert "batch_size_lowered_to" not in set(export.metrics_table(reference)["metric"])
    assert out.obs["scatd_scored"].sum() == reference.obs["scatd_scored"].sum() > 0
    if mode == "mean":  # deterministic: the same probabilities whatever the batching
        np.testing.assert_allclose(out.obs["scatd_prob_resistant"], reference.obs["scatd_prob_resistant"],
                                   rtol=1e-5, atol=1e-6)
    assert lowered_batch_message(summary(reference)) is None

    monkeypatch.setattr(model_cls, "encode", lambda self, x: (_ for _ in ()).throw(torch.OutOfMemoryError("oom")))
    from scatd_core.errors import DeviceError
    with pytest.raises(DeviceError, match="out of memory on a single cell"):
        predict(adata, bundle, copy=True, batch_size=4)


def test_a_new_prediction_drops_what_was_computed_from_the_earlier_one(data_and_bundle, tmp_path):
    """An annotated h5ad predicted again (e.g. `scatd report` with another model): the earlier
    prediction's UMAP, clusters and biomarkers are not written out as this prediction's."""
    adata, bundle = data_and_bundle
    cells = adata.copy()
    predict(cells, bundle)
    embed.embed(cells, n_epochs=20)
    explain.explain(cells, bundle, n_steps=4, max_cells=20, differential_expression=False)
    assert "X_umap" in cells.obsm and explain.from_adata(cells) is not None
    predict(cells, bundle, threshold=0.3)
    assert "X_umap" not in cells.obsm and "scatd_cluster" not in cells.obs and explain.from_adata(cells) is None
    paths = export.write_report(cells, tmp_path / "again")
    assert "biomarkers" not in paths and "umap_1" not in pd.read_csv(paths["predictions"]).columns


def test_values_the_model_does_not_expect_are_a_warning_of_the_prediction(capsys, tmp_path):
    """The Model page's warnings on the kind of values reach every prediction's warnings (and so
    the command line, the Predict page and the reports): TPM-like values for a model that z-scores
    log values (every model trained here)."""
    from test_ensemble import _bundle, _cells, _ensemble

    from scatd_core.cli import main

    bundle = _bundle(tmp_path, _ensemble())
    logs = _cells(n=60, seed=3)
    predict(logs, bundle)
    assert not any("TPM" in w for w in logs.uns["scatd"]["warnings"])
    tpm = logs.copy()
    tpm.X = np.expm1(np.clip(tpm.X, 0, None) * 3).astype(np.float32)  # linear scale, maximum far above 30
    predict(tpm, bundle)
    assert any("TPM-like" in w for w in tpm.uns["scatd"]["warnings"]), tpm.uns["scatd"]["warnings"]
    tpm.write_h5ad(tmp_path / "tpm.h5ad")
    assert main(["predict", "--model", str(bundle.path), "--input", str(tmp_path / "tpm.h5ad"), "--output",
                 str(tmp_path / "tpm.csv")]) == 0
    assert "TPM-like" in capsys.readouterr().err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the policy on a machine without a GPU")
def test_the_servers_device_policy_is_what_auto_means(data_and_bundle, monkeypatch, capsys, tmp_path):
    """server.device / SCATD_DEVICE is the default device of the app and the command line."""
    from scatd_core.cli import main
    from scatd_core.errors import DeviceError
    from scatd_core.predict import resolve_device

    monkeypatch.setenv("SCATD_DEVICE", "cpu")
    assert resolve_device("auto").type == "cpu"
    monkeypatch.setenv("SCATD_DEVICE", "cuda")
    with pytest.raises(DeviceError, match="server.device"):
        resolve_device("auto")
    assert resolve_device("cpu").type == "cpu"  # an explicit choice is kept
    adata, bundle = data_and_bundle
    adata.write_h5ad(tmp_path / "cells.h5ad")
    assert main(["predict", "--model", str(bundle.path), "--input", str(tmp_path / "cells.h5ad"), "--output",
                 str(tmp_path / "out.csv")]) == 2
    assert "SCATD_DEVICE" in capsys.readouterr().err


def test_the_datas_own_umap_is_never_exported_as_scatds(filtered_result):
    """QA: once the data's own obsm['X_umap'] survived a prediction, predictions.csv wrote it as
    umap_1/umap_2 and report.html titled it "UMAP (latent)", as if scATD had computed it."""
    adata = filtered_result[0].copy()
    adata.uns.pop("scatd_embed", None)
    adata.obsm["X_umap"] = np.random.default_rng(0).normal(size=(adata.n_obs, 2))  # the data's own
    assert "umap_1" not in export.predictions_table(adata).columns
    page = export.html_report(adata)
    assert "UMAP (the data" in page and "UMAP (latent)" not in page


def test_writing_the_h5ad_never_swaps_the_sessions_obs_or_uns(filtered_result, tmp_path, monkeypatch):
    """A download is made in another thread while the page may write to the session's data: the
    export swapped adata.obs (and uns) for its trimmed copy while it wrote, so a threshold moved
    meanwhile went into the copy and was lost. The session's objects stay in place throughout."""
    adata = filtered_result[0].copy()
    obs, uns = adata.obs, adata.uns
    seen = []
    import anndata.io

    real = anndata.io.write_elem

    def watching(store, key, elem, *args, **kwargs):  # the AnnData is written as the session has it
        if isinstance(elem, ad.AnnData):
            seen.append(elem.obs is obs and elem.uns is uns)
        return real(store, key, elem, *args, **kwargs)

    monkeypatch.setattr(anndata.io, "write_elem", watching)
    back = ad.read_h5ad(export.write_h5ad(adata, tmp_path / "a.h5ad", context={"x": 1}))
    assert seen == [True] and adata.obs is obs and adata.uns is uns
    assert "not scored" not in back.obs["scatd_label"].cat.categories and back.uns["scatd_report"] == {"x": 1}
    assert "scatd_report" not in adata.uns and "not scored" in adata.obs["scatd_label"].cat.categories


def test_undefined_precision_is_empty_in_metrics_csv_and_a_dash_in_the_report(filtered_result):
    """QA: with no cell called resistant (threshold 1.0) metrics.csv and the report said precision
    0 and F1 0. Now their values are empty (—) and a note says why."""
    from scatd_core.predict import set_threshold

    adata = filtered_result[0].copy()
    set_threshold(adata, 1.0, "user")
    table = export.metrics_table(adata, "response")
    evaluation = table[table["section"] == "evaluation"].set_index("metric")["value"]
    assert pd.isna(evaluation["precision"]) and pd.isna(evaluation["f1"]) and evaluation["recall"] == 0.0
    assert "precision and f1 are empty (undefined)" in evaluation["note"] and "0 of 0" in evaluation["note"]
    # MCC too (QA: it read 0, scikit-learn's convention, as if a measured chance)
    assert pd.isna(evaluation["mcc"]) and "mcc is empty (undefined): every labelled cell is called sensitive" \
        in evaluation["note"]
    rows = export.to_csv_bytes(table).decode().splitlines()
    assert all(f"evaluation,{m},,evaluation:{m}" in rows for m in ("precision", "f1", "mcc"))  # empty, never 0
    page = export.html_report(adata, label_column="response")
    assert "<td>precision</td><td>—</td><td>undefined: no labelled cell is called resistant" in page
    assert "<td>mcc</td><td>—</td><td>undefined: every labelled cell is called sensitive" in page
    assert "precision, F1 and MCC are undefined" in page
    # a threshold moved by hand is said as such, not "the model's threshold" (QA)
    assert "a threshold set by hand, <b>not calibrated</b>" in page and "the model's threshold" not in page


OUTPUTS_MD = Path(__file__).resolve().parents[1] / "docs" / "outputs.md"


def _doc_section(title: str) -> str:
    """The text of docs/outputs.md's section whose heading starts with ``title``."""
    text = OUTPUTS_MD.read_text(encoding="utf-8")
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 3)
    return text[start:end if end > 0 else None]


def test_every_column_and_metric_of_the_downloads_is_in_docs_outputs(filtered_result):
    """QA: docs/outputs.md's "every column" of predictions.csv lacked known_label, and metrics.csv's
    evaluation rows (specificity, the confusion matrix, auprc_chance ...) were not documented. Each
    column and each metric a real download holds is named in its section (a group's section, e.g.
    sample=P1, and the reasons cells were not scored are documented by pattern)."""
    adata = filtered_result[0].copy()
    table = export.predictions_table(adata, ["sample"], label_column="response")
    first_cells = re.findall(r"^\| ([^|]+) \|", _doc_section("predictions.csv"), re.M)  # the table's column names
    documented = {name for cell in first_cells for name in re.findall(r"`([^`]+)`", cell)}
    assert set(table.columns) - {"response", "sample"} <= documented, set(table.columns) - documented
    metrics_doc = _doc_section("metrics.csv")
    named = set(re.findall(r"`([^`]+)`", metrics_doc))
    rows = export.metrics_table(adata, "response", ["sample"])
    for section, metric in rows[["section", "metric"]].itertuples(index=False):
        if "=" in section or section == "not scored":
            continue
        assert section in named and metric in named, (section, metric)
    # the data's own UMAP kept aside is said in the umap section, where the doc puts it
    note = embed.original_umap_note("X_umap_original")
    adata.uns["scatd_embed"] = {**adata.uns["scatd_embed"], "original_umap": "X_umap_original"}
    adata.uns["scatd"]["notes"] = [*adata.uns["scatd"].get("notes", []), note]
    rows = export.metrics_table(adata, "response")
    said = rows[rows["value"].astype(str) == note]
    assert list(zip(said["section"], said["metric"])) == [("umap", "note")]
