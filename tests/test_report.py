"""Results over every uploaded cell and their exports: CSV tables, h5ad, HTML report."""

from __future__ import annotations

import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from _app_helpers import BUNDLE_FOLDER, make_bundle, make_dataset, trained_library  # noqa: F401 (fixture)
from scatd_core.bundle import load_bundle
from scatd_core import embed, report
from scatd_core.errors import InputError
from scatd_core.predict import predict
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
    result = report.predict_all_cells(adata, bundle, passed=passed)
    embed.embed(result, n_epochs=20)
    return adata, bundle, passed, result


def test_filtered_cells_keep_their_rows(filtered_result):
    adata, bundle, passed, result = filtered_result
    assert result.n_obs == adata.n_obs and list(result.obs_names) == list(adata.obs_names)
    failed = ~passed
    assert failed.sum() > 0
    assert (result.obs["scatd_label"][failed] == report.FILTERED).all()
    assert result.obs["scatd_prob_resistant"][failed].isna().all()
    assert not result.obs["scatd_scored"][failed].any()
    assert np.isnan(result.obsm["X_scatd"][failed]).all()
    qc = result.uns["scatd"]["qc"]
    assert qc["n_filtered"] == failed.sum() and qc["n_uploaded"] == adata.n_obs
    assert "total_counts" in qc["thresholds"]
    # the passing cells get exactly what predicting them alone gives
    alone = predict(adata[passed].copy(), bundle, copy=True)
    assert np.allclose(result.obs["scatd_prob_resistant"][passed], alone.obs["scatd_prob_resistant"])
    # filtered cells are not embedded and not clustered
    assert np.isnan(result.obsm["X_umap"][failed]).all()


def test_predict_all_cells_leaves_the_upload_untouched(data_and_bundle):
    adata, bundle = data_and_bundle
    before = list(adata.obs.columns)
    result = report.predict_all_cells(adata, bundle)
    assert list(adata.obs.columns) == before and "scatd" not in adata.uns
    assert result.X is adata.X  # no copy of the expression matrix
    assert result.uns["scatd"]["qc"]["n_filtered"] == 0


def test_every_cell_filtered_is_a_clear_error(data_and_bundle):
    adata, bundle = data_and_bundle
    with pytest.raises(InputError, match="Every cell is removed by the QC filter"):
        report.predict_all_cells(adata, bundle, passed=np.zeros(adata.n_obs, dtype=bool))


def test_predictions_table_one_row_per_cell(filtered_result):
    adata, _, passed, result = filtered_result
    table = report.predictions_table(result, 0.3, ["response", "sample", "missing_column"])
    assert len(table) == adata.n_obs and table["cell_id"].tolist() == list(adata.obs_names)
    assert list(table.columns[:5]) == ["cell_id", "prob_resistant", "label", "scored", "qc_pass"]
    assert {"umap_1", "umap_2", "cluster", "response", "sample"} <= set(table.columns)
    assert (table["qc_pass"] == passed).all()
    scored = table["scored"]
    assert ((table["prob_resistant"][scored] > 0.3) == (table["label"][scored] == "resistant")).all()
    assert (table["label"][~passed] == report.FILTERED).all()
    csv = pd.read_csv(pd.io.common.BytesIO(report.to_csv_bytes(table)))
    assert len(csv) == adata.n_obs


def test_labels_at_relabels_without_recomputing(filtered_result):
    _, _, passed, result = filtered_result
    low, high = report.labels_at(result, 0.0), report.labels_at(result, 1.0)
    assert (low[passed] == "resistant").all() and (high[passed] == "sensitive").all()
    assert (low[~passed] == report.FILTERED).all()


def test_metrics_table_sections(filtered_result):
    _, _, _, result = filtered_result
    evaluation = report.evaluate_result(result, "response", "resistant")[0]
    groups = {"sample": report.group_table(result, "sample")}
    table = report.metrics_table(result, None, evaluation, groups)
    assert {"summary", "evaluation"} <= set(table["section"])
    assert any(s.startswith("sample=") for s in table["section"])
    auroc = table.query("metric == 'auroc'")["value"].iloc[0]
    assert 0.0 <= auroc <= 1.0
    n_cells = table.query("section == 'summary' and metric == 'n_cells'")["value"].iloc[0]
    assert n_cells == result.n_obs and isinstance(n_cells, int)


def test_h5ad_opens_with_scatd_fields(filtered_result, tmp_path):
    _, _, _, result = filtered_result
    path = report.write_h5ad(result, tmp_path / "out.h5ad")
    back = ad.read_h5ad(path)
    assert {"scatd_prob_resistant", "scatd_label", "scatd_scored", QC_KEY, "scatd_cluster"} <= set(back.obs)
    assert {"X_scatd", "X_umap"} <= set(back.obsm)
    assert back.uns["scatd"]["model"]["drug"] == "TESTDRUG"
    assert report.h5ad_bytes(result)[:8] == b"\x89HDF\r\n\x1a\n"


def test_html_report_is_self_contained(filtered_result):
    _, bundle, _, result = filtered_result
    text = report.html_report(result, label_column="response", positive="resistant", group_columns=["sample"],
                              data_name="<script>alert(1)</script>.h5ad")
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;alert(1)" in text
    assert not re.search(r"<script[^>]+src=", text)  # nothing fetched from the network
    assert text.count("plotly.js v") <= 2 and "Plotly.newPlot" in text  # library inlined once
    for needle in ("TESTDRUG", "weights sha256", "mode", "seed", "scATD Studio", "AUROC", "Leiden cluster",
                   "filtered", bundle.manifest["weights_sha256"]):
        assert needle.lower() in text.lower(), needle
    assert "class='demo'" not in text  # no demo banner for a real model


def test_html_report_labels_demo_models_and_reports_evaluation_problems(data_and_bundle, tmp_path):
    adata, _ = data_and_bundle
    demo_bundle = make_bundle(tmp_path / "demo", adata, steps=2, demo=True)
    result = report.predict_all_cells(adata, demo_bundle)
    result.obs["one_class"] = "resistant"
    text = report.html_report(result, label_column="one_class", positive="resistant")
    assert "class='demo'" in text and "demo (simulated data)" in text
    assert "Every labelled cell is" in text  # shown in the report, not raised


def test_write_report_writes_the_four_files(filtered_result, tmp_path):
    adata, _, _, result = filtered_result
    paths = report.write_report(result, tmp_path / "rep", label_column="response", positive="resistant",
                                group_columns=["sample"])
    assert all(p.is_file() for p in paths.values())
    assert len(pd.read_csv(paths["predictions"])) == adata.n_obs


def test_file_stem():
    assert report.file_stem("my tumour.csv.gz", "Gefitinib") == "my_tumour_Gefitinib"
    assert report.file_stem(None, None) == "data"


def test_umap_figure_never_breaks_on_missing_coordinates():
    coords = np.array([[0.0, 1.0], [np.nan, 2.0], [np.inf, 0.0], [1.0, 1.0], [2.0, 0.5]])
    fig = report.umap_figure(coords, np.array([0.1, 0.2, 0.3, np.nan, 0.9]), name="P")
    drawn = sum(len(t.x) for t in fig.data)
    assert drawn == 3  # two cells without coordinates left out
    assert "2 cell(s) without coordinates" in fig.layout.annotations[0].text
    labels = report.umap_figure(coords, ["a", "b", None, "a", "b"], categorical=True)
    assert sum(len(t.x) for t in labels.data) == 3
    big = report.umap_figure(np.random.default_rng(0).normal(size=(500, 2)), max_points=100)
    assert len(big.data[0].x) == 100 and "random 100 of 500" in big.layout.annotations[0].text
