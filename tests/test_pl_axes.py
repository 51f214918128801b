"""Axes, colour bars and legends of :mod:`scatd_core.pl`'s figures that a QA walk found unreadable:
checked on the plotly figure objects (tick values and texts, ranges, legend positions). Fast: small
arrays, no app, no browser (the fixes were checked in a browser at 1400 and 390 px by hand)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scatd_core import pl


def _qc(totals, genes):
    return pd.DataFrame({"total_counts": np.asarray(totals, dtype=float),
                         "n_genes_by_counts": np.asarray(genes, dtype=float)})


@pytest.mark.parametrize("lo, hi", [(560, 640), (245, 270), (600, 603), (300, 700), (120, 800), (100, 1000),
                                    (1000, 16_000), (3, 5000), (10, 1e6), (1.2, 1.8), (0.01, 0.03)])
def test_a_log_count_axis_shows_three_labelled_ticks_in_view_whatever_the_span(lo, hi):
    """QA: the Data page's QC scatter of a sample whose cells have 560 to 640 counts and 245 to 270
    genes had no tick label on either axis: only 1, 2, 5 x 10^k were offered (500, 200), all outside
    the view. Every such axis now has a range and at least three labelled ticks inside it, distinct."""
    values = np.linspace(lo, hi, 30)
    fig = pl.qc_scatter(_qc(values, values[::-1]))
    for axis in (fig.layout.xaxis, fig.layout.yaxis):
        assert axis.type == "log" and axis.range is not None and axis.autorange is False
        low, high = 10 ** np.asarray(axis.range, dtype=float)
        assert low <= lo and high >= hi  # every cell in view
        vals, text = list(axis.tickvals), list(axis.ticktext)
        assert len(vals) == len(text) >= 3, (lo, hi, text)
        assert all(low <= v <= high for v in vals), (lo, hi, vals, low, high)
        assert len(set(text)) == len(text) and all(text), text  # readable: none twice ("1, 1, 2"), none empty
        assert all(abs(float(t.replace(",", "")) - v) <= 1e-9 * max(v, 1) for t, v in zip(text, vals)), (text, vals)


def test_the_qa_samples_qc_scatter_reads_round_counts():
    fig = pl.qc_scatter(_qc(np.linspace(560, 640, 50), np.linspace(245, 270, 50).round()))
    assert list(fig.layout.xaxis.ticktext) == ["550", "600", "650"]
    assert list(fig.layout.yaxis.ticktext) == ["240", "250", "260", "270"]


def _rows(bar):
    """The colour bar's tick labels as (value, line, text): a label's lines are stacked under its tick."""
    return [(float(v), i, line) for v, t in zip(bar.tickvals, bar.ticktext)
            for i, line in enumerate(str(t).split("<br>")) if line]


def _p_resistant_bars(threshold):
    rng = np.random.default_rng(0)
    prob = np.linspace(0.0, 1.0, 40)
    umap = pl.umap_figure(rng.normal(size=(40, 2)), prob, name="P(resistant)", threshold=threshold)
    dependence = pl.dependence_figure("VIM", prob, prob, prob, ["x"] * 40, [str(i) for i in range(40)],
                                      threshold=threshold)
    return {"UMAP": umap, "one gene": dependence}


@pytest.mark.parametrize("threshold", [0.0, 0.03, 0.1, 0.2, 0.41, 0.5, 0.72, 0.821, 0.9, 0.97, 1.0])
def test_the_p_resistant_colour_bar_labels_both_ends_and_the_threshold_without_overlap(threshold):
    """QA: the demo's Cells page UMAP (threshold 0.821) had a colour bar reading "0, 0.25, 0.5, threshold
    0.821", nothing at 1: every tick within 0.2 of the threshold was left out, the end too. Now 0 and 1
    are always labelled, with the threshold; near an end the threshold's label is on a second line under
    it, so that no two labels on one line overlap on a phone's plot, and each fits in the figure."""
    for where, fig in _p_resistant_bars(threshold).items():
        bar = next(t.marker.colorbar for t in fig.data if t.marker.colorbar.tickvals is not None)
        assert bar.tickangle == 0, where  # level labels: plotly slanted them all for a two-line label
        rows = _rows(bar)
        texts = [text for _, _, text in rows]
        assert "0" in texts and "1" in texts and f"threshold {threshold:.3g}" in texts, (where, texts)
        assert [v for v, _, text in rows if text == "0"] == [0.0] and [v for v, _, text in rows if text == "1"] == [1.0]
        half = {text: len(text) * pl.LABEL_CHAR_PX / 2 for text in texts}
        for line in {i for _, i, _ in rows}:
            on_line = sorted((v * pl.PHONE_PLOT_PX, text) for v, i, text in rows if i == line)
            for (x0, a), (x1, b) in zip(on_line, on_line[1:]):
                assert x1 - x0 >= half[a] + half[b] + 4, (where, threshold, a, b)
        margin = fig.layout.margin
        for v, _, text in rows:  # within the figure: plotly hides a label that runs past its edge
            assert v * pl.PHONE_PLOT_PX - half[text] >= -margin.l, (where, text)
            assert v * pl.PHONE_PLOT_PX + half[text] <= pl.PHONE_PLOT_PX + margin.r, (where, text)


@pytest.mark.parametrize("figure", ["pr", "roc"])
def test_the_curves_legends_lie_under_the_plot_off_the_curve(figure):
    """QA: the precision-recall curve's legend sat at the top right, over the curve (where a good
    model's curve runs), at phone and desktop widths; the ROC's sat inside at the bottom right, on the
    diagonal of a model no better than chance. Both lie under the plot, below the x axis's title, in
    one row from its left edge, the plot as high as before."""
    r = np.linspace(0, 1, 20)
    fig = (pl.pr_figure(pd.DataFrame({"recall": r, "precision": 1 - 0.6 * r ** 3, "threshold": 1 - r}), 0.81, 0.35)
           if figure == "pr" else pl.roc_figure(pd.DataFrame({"fpr": r, "tpr": r ** 0.5, "threshold": 1 - r}), 0.66))
    legend, margin = fig.layout.legend, fig.layout.margin
    assert legend.orientation == "h" and legend.x == 0 and legend.xanchor == "left" and legend.yanchor == "top"
    plot_height = fig.layout.height - margin.t - margin.b
    assert plot_height == 380 - 50 - 40  # as before
    assert -legend.y * plot_height >= 50  # under the ticks and the axis title "recall"
    assert margin.b >= -legend.y * plot_height + 20  # its row within the figure
