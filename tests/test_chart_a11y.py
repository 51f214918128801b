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
from scatd_core import export, pl

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
    assert "1 cell without coordinates is not shown" in alt
    labels = np.where(prob > 0.5, "resistant", "sensitive")
    assert "coloured by called label: resistant 39, sensitive 60." in pl.alt_text(
        pl.umap_figure(coords, labels, name="called label", categorical=True))
    # a subsample is said: the text counts every cell with coordinates, not only those drawn
    assert "Showing a random 50 of 99 cells." in pl.alt_text(pl.umap_figure(coords, prob, name="p", max_points=50))


def test_umap_notes_can_be_left_to_the_page_as_text_that_wraps():
    """QA r1: the note under a UMAP ("showing a random N of M cells") was a Plotly annotation, one
    line that never wraps: cut off on a phone. With ``notes_below`` nothing is written in the figure
    and the notes are kept, as sentences, for the page to write under it (the app's ui.chart does),
    but for a subsample's short note (one line that fits a phone), drawn in the figure too (see
    test_a_subsampled_umaps_png_and_html_say_it_is_a_subsample)."""
    coords = np.random.default_rng(0).normal(size=(99, 2))
    coords[0] = np.nan
    inside = pl.umap_figure(coords, None, max_points=50, note="UMAP fitted on a random 40 of 98 cells")
    assert "showing a random 50 of 98 cells" in inside.layout.annotations[0].text and not pl.figure_notes(inside)
    below = pl.umap_figure(coords, None, max_points=50, note="UMAP fitted on a random 40 of 98 cells",
                           notes_below=True)
    # only the subsample's short note is drawn in it, not the others' long line
    assert [a.text for a in below.layout.annotations] == ["Showing a random 50 of 98 cells"]
    assert len(inside.layout.annotations[0].text) > 60
    # the subsample, said in the figure, is not said again under it (the page said it twice)
    assert pl.figure_notes(below) == ["UMAP fitted on a random 40 of 98 cells.", "1 cell without coordinates is not "
                                      "shown."]
    assert pl.figure_notes(pl.umap_figure(coords, None, max_points=50, notes_below=True, missing_note=False)) == []
    assert pl.figure_notes(pl.umap_figure(coords[1:], None, notes_below=True)) == []  # nothing to say
    assert pl.alt_text(below).startswith("UMAP of 98 cells.")  # the text alternative is kept


def test_a_subsampled_umaps_png_and_html_say_it_is_a_subsample(monkeypatch):
    """The page's caption "Showing a random N of M cells" is not part of the figure, so the chart's PNG
    download (plotly draws the figure as it is) and a figure copied from report.html showed a share of
    the cells as if they were all. A subsample is now said in the figure too, in one short line that
    fits a phone's width (the longer notes stay under the chart as text); nothing when all are drawn."""
    coords = np.random.default_rng(0).normal(size=(99, 2))
    coords[0] = np.nan
    monkeypatch.setattr(pl, "MAX_PLOT_POINTS", 50)
    for fig in (pl.umap_figure(coords, None, notes_below=True, note="UMAP fitted on a random 40 of 98 cells"),
                pl.umap_figure(coords, np.arange(99) % 3, name="leiden", notes_below=True, missing_note=False),
                pl.count_umap_figure(coords, np.arange(99) % 3, 2, name="drugs resisted", notes_below=True)):
        assert [a.text for a in fig.layout.annotations] == ["Showing a random 50 of 98 cells"]
        note = fig.layout.annotations[0]
        assert note.yref == "paper" and note.y <= 0 and fig.layout.margin.b > 40  # under the plot, room made
        # said once: in the figure, not again in the text under the chart (nor in report.html's caption)
        assert not [n for n in pl.figure_notes(fig) if "Showing a random" in n], pl.figure_notes(fig)
        caption = re.findall(r"<figcaption>(.*?)</figcaption>", export._figure_html(fig), re.S)
        assert not [c for c in caption if "Showing a random" in c], caption
    assert len(pl.subsample_note(200_000, 12_345_678)) <= 50  # one line at a phone's width (390 px)
    whole = pl.umap_figure(coords, None, max_points=200, notes_below=True)  # every cell drawn: nothing in it
    assert not whole.layout.annotations and whole.layout.margin.b == 40


def test_whole_number_cluster_columns_are_coloured_as_categories_measurements_on_a_scale():
    """A cluster column written as integers (leiden 0..7, as many tools save it) was drawn on a
    continuous colour scale, as if cluster 7 were "more" than cluster 3. Whole numbers with few
    distinct values, or in a column named as clusters or cell types, are categories: one colour each
    and a legend (listed 0, 1, 2 ... 10, not 0, 1, 10, 2); real measurements stay on a colour scale."""
    rng = np.random.default_rng(0)
    n = 300
    leiden = rng.integers(0, 12, n)
    assert pl.colour_as_categories(leiden, "leiden")
    assert pl.colour_as_categories(leiden.astype(float), "louvain")  # 0.0, 1.0 ... as a float column holds them
    assert pl.colour_as_categories(pd.Series(leiden, dtype="Int64"), "group")  # few whole values, any name
    assert pl.colour_as_categories(rng.integers(0, 80, n), "cell_type")  # named as categories: up to 100
    assert pl.colour_as_categories(np.array(["a", "b"] * 5), "x") and pl.colour_as_categories([True, False], "x")
    assert not pl.colour_as_categories(rng.poisson(3000, n).astype(float), "n_counts")
    assert not pl.colour_as_categories(rng.integers(0, 30, n), "n_genes")  # a count, whatever its few values
    assert not pl.colour_as_categories(rng.uniform(0, 20, n), "pct_mito")
    assert not pl.colour_as_categories(rng.uniform(0, 1, n), "P(resistant)")
    assert not pl.colour_as_categories(rng.integers(0, 40, 40), "age")  # as many values as cells: a measurement
    assert not pl.colour_as_categories(np.r_[leiden, 0.5], "leiden")  # not whole numbers
    assert not pl.colour_as_categories(np.full(5, np.nan), "leiden")  # no value at all

    coords = rng.normal(size=(n, 2))
    values = leiden.astype(float)
    values[0] = np.nan
    fig = pl.umap_figure(coords, values, name="leiden")  # the choice made when not given
    names = [t.name.rsplit(" (", 1)[0] for t in sorted(fig.data, key=lambda t: t.legendrank)]
    assert names == [str(i) for i in range(12)] + ["NA"] and all(t.showlegend for t in fig.data)
    assert not any(t.marker.colorbar.title.text for t in fig.data)  # no colour bar
    assert "coloured by leiden: 0 " in pl.alt_text(fig)
    scale = pl.umap_figure(coords, rng.uniform(0, 20, n), name="pct_mito")
    assert len(scale.data) == 1 and scale.data[0].marker.colorbar.title.text == "pct_mito"


#: Obs columns named with a cluster-ish word that hold a measurement (a colour scale, whatever their values) ...
_MEASURED_CLUSTERS = ["cluster_size", "cluster_sizes", "leiden_score", "n_clusters_nearby", "clusters_nearby",
                      "celltype_fraction", "cells_per_cluster", "cluster_distance", "leiden_confidence",
                      "label_confidence", "n_cells_in_cluster", "cluster_count", "total_clusters", "mean_cluster",
                      "louvain_frac", "annotation_pct", "sample_depth", "num_clusters", "number_of_clusters"]
#: ... and columns named as categories (one colour each, up to 100 whole-number values).
_NAMED_CATEGORIES = ["cluster", "clusters", "leiden", "louvain", "louvain_0.5", "leiden_res_1.0", "RNA_snn_res.0.8",
                     "seurat_clusters", "subcluster", "cell_type", "celltype", "major_celltype", "annotation",
                     "label", "cluster_id", "cluster_number", "sample", "batch", "donor_id", "phase", "group"]


@pytest.mark.parametrize("values", ["few", "many"])
@pytest.mark.parametrize("name", _MEASURED_CLUSTERS + _NAMED_CATEGORIES)
def test_a_cluster_word_in_a_measurements_name_does_not_make_it_categories(name, values):
    """A whole-number column whose name merely contained a cluster-ish word (cluster_sizes,
    cells_per_cluster, leiden_confidence, clusters_nearby) was coloured as categories, as were its
    few values. The name says categories only when it is, or ends with, such a word (cluster,
    leiden_res_1.0, cell_type, donor_id ...); a measurement's word (size, score, fraction, n_ ...)
    wins, and a cluster word elsewhere in a name says a measurement about clusters."""
    rng = np.random.default_rng(1)
    data = rng.integers(0, 8, 300) if values == "few" else rng.integers(0, 90, 300)
    assert pl.colour_as_categories(data, name) == (name in _NAMED_CATEGORIES), (name, values)
    assert pl.colour_as_categories(data.astype(float), name) == (name in _NAMED_CATEGORIES)  # as floats too
    assert pl.colour_as_categories(data.astype(str), name)  # text: categories, whatever its name


def test_a_umaps_legend_and_colour_bar_are_under_the_plot_so_it_keeps_its_width_on_a_phone():
    """At a phone's 390 px the Cells page's UMAP kept about 155 of its 358 px: a vertical colour bar with
    a three-line title (P(resistant)), or a legend of 12 clusters, beside the plot. The server does not
    know the browser's width, so at every width the legend runs across under the plot, from its left
    edge, and a colour bar is thin and horizontal under it (as the feature map's), both under the axis
    title and under the subsample's note where it is drawn."""
    rng = np.random.default_rng(0)
    coords = rng.normal(size=(300, 2))
    clusters = pl.umap_figure(coords, rng.integers(0, 12, 300), name="leiden")
    legend = clusters.layout.legend
    assert legend.orientation == "h" and legend.x == 0 and legend.xanchor == "left"
    assert legend.yanchor == "top" and legend.y < 0
    assert all(t.showlegend for t in clusters.data)
    for fig in (pl.umap_figure(coords, rng.uniform(0, 1, 300), name="P(resistant)", threshold=0.4),
                pl.umap_figure(coords, rng.uniform(0, 20, 300), name="pct_mito")):
        (bar,) = [t.marker.colorbar for t in fig.data if t.marker.colorbar.title.text]
        assert bar.orientation == "h" and bar.y < 0 and bar.yanchor == "top" and bar.thickness <= 10
        assert fig.layout.margin.b >= pl.UMAP_KEY_PX + pl.COLORBAR_ROOM  # room made under the plot
    # with "no value" cells (grey, in the legend) the colour bar is still the one under the plot
    values = rng.uniform(0, 20, 300)
    values[:5] = np.nan
    grey = pl.umap_figure(coords, values, name="pct_mito")
    (bar,) = [t.marker.colorbar for t in grey.data if t.marker.colorbar.title.text]
    assert bar.orientation == "h" and bar.y < 0
    assert grey.layout.legend.orientation == "h" and grey.layout.legend.y >= 1  # "no value": above, out of its way
    # under the subsample's note (drawn 38 px under the plot) when there is one: further down
    sub = pl.umap_figure(coords, rng.integers(0, 12, 300), name="leiden", max_points=100)
    assert sub.layout.annotations and sub.layout.legend.y < legend.y


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
    prob = np.c_[np.full(10, 0.2), np.full(10, 0.64)]
    assert ("per drug, P(resistant): DA mean 0.200, threshold 0.500, 0.0% of 10 cells called resistant; "
            "DB mean 0.640, threshold 0.400, 100.0% of 10 cells called resistant.") in pl.alt_text(pl.panel_heatmap(
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


def _panel_inputs():
    prob = np.r_[np.c_[np.full(6, 0.3), np.full(6, 0.8)], np.c_[np.full(4, 0.7), np.full(4, 0.5)]]  # 10 cells
    summary = pd.DataFrame({"group": ["s1", "s1", "s2", "s2"], "drug": ["DA", "DB", "DA", "DB"],
                            "fraction_resistant": [0.0, 1.0, 1.0, 0.0], "n_called": [6, 6, 4, 4],
                            "mean_prob_resistant": [0.3, 0.8, 0.7, 0.5]})
    ranking = pd.DataFrame({"drug": ["DA", "DB"], "fraction_resistant": [0.4, 0.6], "mean_prob_resistant": [0.46, 0.68],
                            "calibrated": [True, True]})
    return prob, summary, ranking, {"DA": 0.64, "DB": 0.72}


def test_panel_colour_bars_lie_under_the_plot_with_a_one_line_title():
    """QA: the drug ranking's colour bar, beside the plot with a four-line title, was a 20 px bar whose
    tick labels overprinted the title, and the dot plot's and the heatmap's left the plot 50-75 px wide
    at 390 px. Each is now horizontal, across the plot's width, under the x axis (in a bottom margin of its
    own), its title one line above it; grey is still each drug's threshold."""
    prob, summary, ranking, thr = _panel_inputs()
    figs = {"heatmap": pl.panel_heatmap(prob, ["DA", "DB"], ["s1"] * 6 + ["s2"] * 4, "sample", thresholds=thr),
            "dots": pl.panel_dotplot(summary, "sample", "Fraction resistant per sample", thresholds=thr),
            "ranking": pl.drug_ranking_figure(ranking, "Whole sample: fraction called resistant per drug",
                                              thresholds=thr)}
    for name, fig in figs.items():
        trace = fig.data[0]
        bar = trace.colorbar if trace.type == "heatmap" else trace.marker.colorbar
        assert bar.orientation == "h" and bar.len == 1 and bar.yanchor == "top", name
        assert "<br>" not in bar.title.text and bar.title.side == "top", name
        assert list(bar.ticktext) == ["0", "each drug's threshold", "1"] and list(bar.tickvals) == [0, 0.5, 1]
        margin, height = fig.layout.margin, fig.layout.height
        plot_height = height - margin.t - margin.b
        below = -bar.y * plot_height  # pixels between the plot's bottom and the bar's title
        assert below >= 40, name  # under the x axis's title
        assert margin.b - below >= pl.COLORBAR_ROOM, name  # and all of it inside the figure
    assert "blue sensitive, red resistant" in figs["heatmap"].data[0].colorbar.title.text
    assert figs["dots"].data[0].marker.colorbar.title.text == "mean P(resistant): blue below, red above"
    # the drug names under the dot plot at a set angle, so the bar under them is placed for their height
    assert figs["dots"].layout.xaxis.tickangle == -45


def test_panel_text_alternatives_give_each_drugs_threshold_and_its_share_called_resistant():
    """QA: the dot plot's alt said "its colour the mean P(resistant)", with no threshold, though the colour
    is relative to each drug's; the heatmap's gave a mean per drug only ("0.64": 3 decimals now)."""
    prob, summary, _, thr = _panel_inputs()
    dots = pl.alt_text(pl.panel_dotplot(summary, "sample", thresholds=thr))
    assert ("its colour the mean P(resistant) relative to each drug's threshold (blue below it, red above it); "
            "thresholds: DA 0.640, DB 0.720;") in dots
    heat = pl.alt_text(pl.panel_heatmap(prob, ["DA", "DB"], ["s1"] * 6 + ["s2"] * 4, "sample", thresholds=thr))
    assert ("DA mean 0.460, threshold 0.640, 40.0% of 10 cells called resistant; "
            "DB mean 0.680, threshold 0.720, 60.0% of 10 cells called resistant.") in heat
    assert "blue below it (called sensitive), red above it (called resistant)" in heat


def test_the_panel_heatmaps_png_is_named_by_its_grouping():
    """QA: the panel report's heatmaps by sample and by cluster both downloaded as scatd_panel_heatmap.png."""
    prob, _, _, thr = _panel_inputs()
    groups = ["s1"] * 6 + ["s2"] * 4
    names = {pl.chart_config(pl.panel_heatmap(prob, ["DA", "DB"], groups, g, thresholds=thr))
             ["toImageButtonOptions"]["filename"] for g in ("sample", "Leiden cluster")}
    assert names == {"scatd_panel_heatmap_sample", "scatd_panel_heatmap_leiden_cluster"}
    assert pl.chart_config(pl.panel_heatmap(prob, ["DA", "DB"], None, None, thresholds=thr))[
        "toImageButtonOptions"]["filename"] == "scatd_panel_heatmap"


def test_the_attribution_vs_de_alt_counts_features_by_where_they_are_higher_not_as_cells():
    """QA: "for 1,700 features: 842 resistant, 858 sensitive" read as counts of cells. The colour is the
    direction a higher value pushes P(resistant) (the input gradient's sign); where a feature is higher is
    the Wilcoxon score's sign. Both are said as what they are."""
    ranking = pd.DataFrame({"feature": ["G1", "G2", "G3"], "in_data": [True, True, True],
                            "de_score": [2.5, -1.0, 0.5], "mean_abs_attribution": [0.3, 0.2, 0.1],
                            "direction": ["resistance", "sensitivity", "sensitivity"]})
    alt = pl.alt_text(pl.attribution_vs_de(ranking, "resistant", "sensitive"))
    assert ("for 3 features (2 higher in resistant cells and 1 higher in sensitive cells); coloured by where a "
            "higher value pushes P(resistant): toward resistant for 1, toward sensitive for 2;") in alt


def test_the_model_card_chart_wraps_its_labels_and_title_for_a_phone():
    """QA: at 390 px "Target cells (2,000 cells, GSE117872 HN120) / logistic regression ..." and the title
    were cut, and the legend beside the plot took a third of its width."""
    card = {"evaluations": [{"title": "Target cells (2,000 cells, GSE117872 HN120)", "scores": [
        {"model": "this model", "auroc": 0.77, "auroc_ci": [0.7, 0.83]},
        {"model": "logistic regression on highly variable genes", "auroc": 0.62, "auroc_ci": [0.55, 0.7]}]}]}
    fig = pl.card_figure(card)
    labels = [y for trace in fig.data for y in trace.y]
    assert "logistic regression on<br>highly variable genes" in labels
    assert all(len(line) <= pl.CARD_LABEL_WIDTH for label in labels for line in label.split("<br>"))
    titles = [a.text for a in fig.layout.annotations]
    assert "Target cells (2,000 cells, GSE117872<br>HN120)" in titles, titles
    assert fig.layout.title.text == "AUROC of the model and the baselines<br>(95% bootstrap CI)"
    assert fig.layout.margin.t >= 70 and fig.layout.xaxis.nticks == 5 and fig.layout.legend.orientation == "h"


def test_the_model_card_chart_groups_its_rows_by_evaluation_with_short_model_names():
    """QA: every row repeated a 3-5 line label ("Target cells ('response', labels used for evaluation only)
    logistic regression (C tuned by inner CV, balanced)"). Now one panel per evaluation, titled once, and
    the models by their short names (their settings are said beside the chart, as the tables say them)."""
    scores = [{"model": "this model", "auroc": 0.8, "auroc_ci": [0.7, 0.9]},
              {"model": "logistic regression (C tuned by inner CV, balanced)", "auroc": 0.7, "auroc_ci": [0.6, 0.8]},
              {"model": "gradient boosting (100 trees, depth 3)", "auroc": 0.6, "auroc_ci": [0.5, 0.7]}]
    card = {"evaluations": [{"title": "Bulk cross-validation (5 folds)", "scores": scores},
                            {"title": "Target cells ('response', labels used for evaluation only)", "scores": scores}]}
    fig = pl.card_figure(card)
    rows = {y for trace in fig.data for y in trace.y}
    assert rows == {"this model", "logistic regression", "gradient boosting"}, rows
    titles = [a.text.replace("<br>", " ") for a in fig.layout.annotations]
    assert titles[:2] == ["Bulk cross-validation (5 folds)",
                          "Target cells ('response', labels used for evaluation only)"], titles
    assert [t.name for t in fig.data if t.showlegend is not False] == ["baselines", "this model"]
    assert fig.layout.xaxis.range == fig.layout.xaxis2.range  # one AUROC scale for both panels
    assert "Bulk cross-validation (5 folds): this model 0.80" in pl.alt_text(fig)


def test_qc_and_umap_number_ticks_group_thousands():
    """QA: the genes-detected violin read "1000 | 1200" and an n_counts colour bar "2000 ... 16000" while the
    page writes 1,000 and 16,000: their ticks group thousands (small values as they are: 0.0006)."""
    rng = np.random.default_rng(0)
    qc = pd.DataFrame({"n_genes_by_counts": rng.integers(200, 1300, 50).astype(float),
                       "total_counts": rng.integers(1000, 16000, 50).astype(float),
                       "pct_counts_mt": rng.random(50) * 20})
    fig = pl.qc_violin(qc, ["n_genes_by_counts", "total_counts", "pct_counts_mt"])
    assert [fig.layout[f"yaxis{i or ''}"].tickformat for i in (0, 2, 3)] == [",~g"] * 3
    umap = pl.umap_figure(rng.random((50, 2)), qc["total_counts"].to_numpy(), name="n_counts", categorical=False)
    bars = [t.marker.colorbar for t in umap.data if t.marker is not None and t.marker.colorbar.title.text]
    assert bars and all(b.tickformat == ",~g" for b in bars)


def test_a_curve_of_one_value_is_drawn_as_a_visible_marker():
    """QA: with Pretraining epochs = 1 the 'Backbone pretraining loss' chart was empty (a line of one point
    draws nothing). Short curves are drawn with markers, and the description says one epoch gave one value."""
    fig = pl.curve_figure({"loss": [0.71]}, "Backbone pretraining loss", "epoch", "loss")
    assert "markers" in fig.data[0].mode and list(fig.data[0].y) == [0.71]
    assert pl.alt_text(fig) == ("Line chart, Backbone pretraining loss: 1 line of loss over 1 epoch; loss 0.71; one "
                                "epoch gives one value.")
    folds = pl.curve_figure({"fold 1": [0.6], "mean": [0.6]}, "Validation AUROC", "epoch", "AUROC", highlight="mean")
    assert all("markers" in t.mode for t in folds.data)
    long = pl.curve_figure({"loss": list(np.linspace(1, 0.1, 200))}, "Loss", "epoch", "loss")
    assert long.data[0].mode == "lines"  # a long curve stays a line
