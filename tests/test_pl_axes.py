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
