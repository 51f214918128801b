"""The app's charts for a screen reader and a keyboard: each figure of :mod:`scatd_core.pl` carries a
short text alternative with its key numbers, and the app shows every chart through one helper
(``ui.chart``) that gives Streamlit that text (the chart's accessible name) and a short toolbar.

Fast: small arrays, no AppTest (the pages' tests check their charts with ``assert_charts_described``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from _app_helpers import USELESS_BUTTONS
from scatd_core import pl

REPO = Path(__file__).resolve().parents[1]


def test_histogram_says_how_many_cells_are_called_resistant_at_the_threshold():
    prob = np.r_[np.full(612, 0.8), np.full(1388, 0.2), [np.nan]]  # a NaN: not scored, not counted
    alt = pl.alt_text(pl.probability_histogram(prob, 0.41, "Distribution of P(resistant)", calibrated=True))
    assert alt == ("Histogram of P(resistant) for 2,000 scored cells: 612 (30.6%) above the threshold 0.41 "
                   "(calibrated), called resistant; median P(resistant) 0.2.")


def test_biomarker_bar_names_the_top_genes_in_order_and_their_directions():
    ranking = pd.DataFrame({"feature": [f"G{i}" for i in range(30)], "mean_abs_attribution": np.linspace(1, 0.1, 30),
                            "direction": ["resistance", "sensitivity", "none"] * 10, "rank": range(1, 31),
                            "de_score": np.zeros(30), "in_data": True})
    alt = pl.alt_text(pl.biomarker_bar(ranking, 20, "P(resistant) logit"))
    assert alt.startswith("Bar chart of the top 20 genes by mean |attribution| (P(resistant) logit): G0, G1, G2,")
    assert "G9 and 10 more" in alt and "G10" not in alt  # at most ALT_MAX_NAMED names: the table has them all
    assert "7 toward resistant, 7 toward sensitive, 6 toward neither" in alt


def test_umap_text_counts_the_calls_or_the_categories():
    rng = np.random.default_rng(0)
    coords = rng.normal(size=(100, 2))
    coords[0] = np.nan  # no coordinates: not drawn, not counted
    prob = np.r_[np.full(40, 0.9), np.full(60, 0.1)]
    alt = pl.alt_text(pl.umap_figure(coords, prob, name="P(resistant)", threshold=0.5))
    assert alt.startswith("UMAP of 99 cells, coloured by P(resistant): 39 (39.4%) above the threshold 0.5")
    assert "1 cell(s) without coordinates are not shown" in alt
    labels = np.where(prob > 0.5, "resistant", "sensitive")
    assert "coloured by called label: resistant 39, sensitive 60." in pl.alt_text(
        pl.umap_figure(coords, labels, name="called label", categorical=True))
    # a subsample is said: the text counts every cell with coordinates, not only those drawn
    assert "Showing a random 50 of 99 cells." in pl.alt_text(pl.umap_figure(coords, prob, name="p", max_points=50))


def test_evaluation_figures_give_their_numbers():
    roc = pd.DataFrame({"fpr": [0, 0.5, 1], "tpr": [0, 0.8, 1], "threshold": [1, 0.5, 0]})
    assert "AUROC 0.812" in pl.alt_text(pl.roc_figure(roc, 0.8123))
    pr = pd.DataFrame({"recall": [0, 1], "precision": [1, 0.3], "threshold": [1, 0]})
    assert "AUPRC 0.700, against 0.30 by chance" in pl.alt_text(pl.pr_figure(pr, 0.7, 0.3))
    assert pl.alt_text(pl.confusion_figure(np.array([[50, 10], [5, 35]]))) == (
        "Confusion matrix of 100 cells: of 40 truly resistant, 35 called resistant and 5 called sensitive; "
        "of 60 truly sensitive, 50 called sensitive and 10 called resistant.")


def test_panel_figures_and_model_card_name_drugs_and_scores():
    ranking = pd.DataFrame({"drug": ["DA", "DB"], "fraction_resistant": [0.1, 0.5], "mean_prob_resistant": [0.2, 0.5],
                            "calibrated": [True, False]})
    assert "lowest first: DA 10%, DB 50% (uncalibrated)." in pl.alt_text(pl.drug_ranking_figure(ranking, "Whole",
                                                                      thresholds={"DA": 0.5, "DB": 0.4}))
    prob = np.c_[np.full(10, 0.2), np.full(10, 0.6)]
    assert "mean P(resistant) per drug: DA 0.2, DB 0.6" in pl.alt_text(pl.panel_heatmap(
        prob, ["DA", "DB"], None, None, thresholds={"DA": 0.5, "DB": 0.4}))
    card = {"evaluations": [{"title": "Bulk CV", "scores": [
        {"model": "this model", "auroc": 0.81, "auroc_ci": [0.75, 0.86]},
        {"model": "logistic regression", "auroc": None, "auroc_ci": None}]}]}
    assert "Bulk CV: this model 0.81 (0.75 to 0.86)." in pl.alt_text(pl.card_figure(card))


def test_qc_text_gives_whole_counts_not_exponents():
    qc = pd.DataFrame({"n_genes_by_counts": [1510.0, 1510.0], "total_counts": [4490.0, 4490.0],
                       "pct_counts_mt": [2.0, 4.0]})
    alt = pl.alt_text(pl.qc_violin(qc, ["n_genes_by_counts", "total_counts", "pct_counts_mt"],
                                   np.array([True, False])))
    assert "genes detected 1,510, total counts 4,490, % mitochondrial 3" in alt and "e+03" not in alt
    assert "1 (50.0%) cell fails the QC filter" in alt  # one cell: "cell fails", not "cells fail"


def test_a_figure_without_a_text_is_named_by_its_title():
    assert pl.alt_text(go.Figure(layout=dict(title="Some chart"))) == "Chart: Some chart"
    assert pl.alt_text(go.Figure()) == "Chart"


@pytest.mark.parametrize("fig, zoom", [
    (pl.umap_figure(np.random.default_rng(0).normal(size=(20, 2)), None), True),
    (pl.probability_histogram(np.linspace(0, 1, 20), 0.5), False),
])
def test_toolbar_keeps_download_and_reset_and_zoom_only_where_of_use(fig, zoom):
    config = pl.chart_config(fig)
    dropped = set(config["modeBarButtonsToRemove"])
    assert USELESS_BUTTONS <= dropped and config["displaylogo"] is False
    assert not {"toImage", "resetScale2d"} & dropped  # download as PNG and reset axes stay
    assert ({"zoom2d", "pan2d"} & dropped == set()) == zoom
    assert config["toImageButtonOptions"]["format"] == "png"
    assert re.fullmatch(r"scatd_[a-z0-9_]+", config["toImageButtonOptions"]["filename"])
    assert pl.chart_config(fig, "P(resistant): DRUG A")["toImageButtonOptions"]["filename"] == \
        "scatd_p_resistant_drug_a"


def test_ui_chart_gives_streamlit_the_text_and_the_config():
    from scatd_app import ui

    class Where:
        def plotly_chart(self, fig, **kwargs):
            self.kwargs = kwargs

    where, fig = Where(), pl.roc_figure(pd.DataFrame({"fpr": [0, 1], "tpr": [0, 1], "threshold": [1, 0]}), 0.5)
    ui.chart(fig, key="k", where=where)
    assert where.kwargs["key"] == "k" and where.kwargs["alt"] == pl.alt_text(fig)
    assert where.kwargs["config"] == pl.chart_config(fig)
    ui.chart(fig, key="k", where=where, alt="Said otherwise", filename="roc of sample A")
    assert where.kwargs["alt"] == "Said otherwise"
    assert where.kwargs["config"]["toImageButtonOptions"]["filename"] == "scatd_roc_of_sample_a"


def test_every_page_shows_its_charts_through_ui_chart():
    """A direct ``st.plotly_chart`` would have no text alternative and the long toolbar."""
    sources = sorted((REPO / "app_pages").glob("*.py")) + [REPO / "app.py", *sorted((REPO / "scatd_app").glob("*.py"))]
    direct = [f"{p.name}:{i}" for p in sources for i, line in enumerate(p.read_text().splitlines(), 1)
              if "plotly_chart(" in line and not (p.name == "ui.py" and "(where or st).plotly_chart(" in line)]
    assert direct == []
    assert sum(p.read_text().count("ui.chart(") for p in sources) >= 20
