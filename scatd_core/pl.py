"""Every figure of scATD Studio (plotly), for the app's pages and the HTML report alike.

Figures take plain arrays and tables (or an AnnData's fields), never Streamlit objects, so a page
and ``report.html`` show the same thing. Large scatter plots switch to WebGL and, above
:data:`MAX_PLOT_POINTS`, draw a seeded random subsample that the plot states.
"""

from __future__ import annotations

import html
import re
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from scatd_core._keys import FILTERED, MASKED, NOT_EMBEDDED, NOT_SCORED, OLD_NOT_EMBEDDED
from scatd_core._words import counted, natural_order
from scatd_core.embed import finite_rows

#: Above this many points, scatter plots use WebGL (``Scattergl``) so the browser stays fluid.
WEBGL_MIN_POINTS = 3000
#: At most this many points are drawn in one scatter plot (a seeded random subsample above it,
#: stated under the plot): more would make the page slow to load without showing more.
MAX_PLOT_POINTS = 200_000
#: The cells a mask left out (the QC filter's, or a mask column's of one's own) share one light grey
COLORS = {"resistant": "#d62728", "sensitive": "#1f77b4", NOT_SCORED: "#9e9e9e", FILTERED: "#cfcfcf",
          MASKED: "#cfcfcf"}
DIRECTION_COLORS = {"resistance": COLORS["resistant"], "sensitivity": COLORS["sensitive"], "none": "#999999"}
#: The legends' words for biomarkers.csv's ``direction`` values: the words every other figure uses
DIRECTION_NAMES = {"resistance": "resistant", "sensitivity": "sensitive", "none": "neither"}
#: The colour of P(resistant) at the threshold: a light grey, visible on white (RdBu's centre was
#: near-white, so the cells hardest to call vanished into the background).
PROB_NEUTRAL = "#c8c8c8"
#: P(resistant)'s colours from 0 up to the threshold (dark to light blue: called sensitive) and from
#: the threshold up to 1 (light to dark red: called resistant): RdBu's, without its near-white centre.
_PROB_BLUES = ("#053061", "#2166ac", "#4393c3", "#92c5de")
_PROB_REDS = ("#f4a582", "#d6604d", "#b2182b", "#67001f")


def prob_colorscale(threshold: float = 0.5) -> list[list]:
    """The colour scale of P(resistant) over [0, 1]: blue below ``threshold`` (called sensitive), red
    above it (called resistant), :data:`PROB_NEUTRAL` grey at it. A fixed scale centred on 0.5 drew
    cells that a threshold of 0.72 calls sensitive in orange and red."""
    t = float(np.clip(threshold, 0.0, 1.0))
    stops = [[t * i / len(_PROB_BLUES), c] for i, c in enumerate(_PROB_BLUES)] if t > 0 else []
    stops.append([t, PROB_NEUTRAL])
    if t < 1:
        stops += [[t + (1 - t) * i / len(_PROB_REDS), c] for i, c in enumerate(_PROB_REDS, start=1)]
    return stops


#: P(resistant) drawn without a threshold in use: neutral grey at 0.5. A panel's several drugs, each
#: with its own threshold, are drawn relative to their thresholds instead (:func:`relative_to_threshold`).
PROB_SCALE = prob_colorscale(0.5)


def relative_to_threshold(prob, threshold) -> np.ndarray:
    """P(resistant) on a scale whose midpoint 0.5 is ``threshold`` (one value, or one per column of
    ``prob``): ``0.5 * P / t`` below it, ``0.5 + 0.5 * (P - t) / (1 - t)`` from it up, so 0 stays 0, 1
    stays 1 and every drug's threshold falls on the grey of :data:`PROB_SCALE`. A panel drawn on one
    scale centred on 0.5 showed a cell with P = 0.6, which a threshold of 0.72 calls sensitive, in red.
    NaN (not scored) stays NaN."""
    p = np.asarray(prob, dtype=np.float64)
    t = np.broadcast_to(np.clip(np.asarray(threshold, dtype=np.float64), 0.0, 1.0), p.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        below = np.where(t > 0, 0.5 * p / t, 0.5)
        above = np.where(t < 1, 0.5 + 0.5 * (p - t) / (1 - t), 1.0)
    return np.where(np.isnan(p), np.nan, np.clip(np.where(p < t, below, above), 0.0, 1.0))


def relative_colorbar(title: str = "P(resistant): blue sensitive, red resistant",
                      thickness: int = 10) -> dict:
    """The colour bar of values drawn by :func:`relative_to_threshold`: 0, each drug's threshold (the
    grey midpoint) and 1, with what red and blue mean in its one-line title. Horizontal, under the
    plot (in the margin :data:`COLORBAR_ROOM` the figure keeps for it at the bottom), across the
    plot's width: a vertical bar beside the plot took its width in a narrow column (at 390 px a dot
    plot was 50 px wide) and its tick labels overprinted its four-line title. Placed by
    :func:`colorbar_below` once the figure's height and margins are set."""
    return dict(orientation="h", thickness=thickness, len=1, lenmode="fraction", x=0.5, xanchor="center",
                y=-0.3, yanchor="top", ypad=0, tickmode="array", tickvals=[0.0, 0.5, 1.0],
                ticktext=["0", "each drug's threshold", "1"], title=dict(text=title, side="top"))


#: Pixels kept under the x axis for a horizontal :func:`relative_colorbar` (its title, bar and ticks).
COLORBAR_ROOM = 70
#: The width of a tick label's character (12 px text, a little over) and of a plot on a phone (its
#: narrowest): what a colour bar's end label needs beside the plot (:func:`colorbar_below`).
LABEL_CHAR_PX = 6
PHONE_PLOT_PX = 300


def colorbar_below(fig: go.Figure, under_px: int, trace: int = 0) -> go.Figure:
    """Put the horizontal colour bar (:func:`relative_colorbar`) of the first trace (or of ``trace``)
    ``under_px`` pixels under the plot (below the x axis's labels and title), in a bottom margin grown by
    :data:`COLORBAR_ROOM` for it. Plotly places a colour bar in fractions of the plot's height
    (its pixel placement, ``yref="container"``, drew the title over the bar), so the figure's height and
    top margin are set first."""
    bottom = int(under_px) + COLORBAR_ROOM
    fig.update_layout(margin=dict(b=bottom))
    plot_height = max(float(fig.layout.height) - float(fig.layout.margin.t) - bottom, 1.0)
    bar = "colorbar" if fig.data[trace].type == "heatmap" else "marker.colorbar"
    fig.data[trace][f"{bar}.y"] = -float(under_px) / plot_height
    # room beside the plot for a tick label near an end ("threshold 0.97"): plotly hides a label that
    # would run past the figure's edge
    vals, text = fig.data[trace][f"{bar}.tickvals"], fig.data[trace][f"{bar}.ticktext"]
    if vals is not None and text is not None:
        half = [max(map(len, str(s).split("<br>"))) * LABEL_CHAR_PX / 2 + 2 for s in text]
        right = max([h - (1 - float(v)) * PHONE_PLOT_PX for v, h in zip(vals, half)], default=0)
        left = max([h - float(v) * PHONE_PLOT_PX for v, h in zip(vals, half)], default=0)
        margin = fig.layout.margin
        fig.update_layout(margin=dict(r=max(int(margin.r if margin.r is not None else 20), int(np.ceil(right))),
                                      l=max(int(margin.l if margin.l is not None else 40), int(np.ceil(left)))))
    return fig


def _drug_thresholds(drugs: Sequence[str], thresholds) -> np.ndarray:
    """``thresholds`` (a mapping drug -> threshold) in the order of ``drugs``."""
    missing = [d for d in drugs if d not in thresholds]
    if missing:
        raise ValueError(f"No threshold given for {', '.join(map(str, missing))}: each drug's P(resistant) is drawn "
                         "relative to the threshold its calls use.")
    return np.array([float(thresholds[d]) for d in drugs], dtype=np.float64)


def prob_colorbar(threshold: float | None, title: str = "P(resistant)", thickness: int = 14,
                  horizontal: bool = False) -> dict:
    """A P(resistant) colour bar that marks the ``threshold`` (a tick "threshold 0.72" at the grey)
    and says in its title what red and blue mean; without a threshold, 0 to 1 and the title.
    ``horizontal``: across the plot's width under it (as :func:`relative_colorbar`; place it with
    :func:`colorbar_below`), its title on two lines and no other tick label near the threshold's."""
    bar = dict(thickness=thickness, tickformat="~g", tickmode="array")
    if horizontal:
        # level labels (a label on a second line does not overlap its neighbour, but plotly, measuring
        # both lines, slanted every label for it)
        bar.update(orientation="h", len=1, lenmode="fraction", x=0.5, xanchor="center", y=-0.3, yanchor="top",
                   ypad=0, tickangle=0)
    if threshold is None:
        return {**bar, "title": dict(text=title, side="top"), "tickvals": [0, 0.25, 0.5, 0.75, 1]}
    t = float(np.clip(threshold, 0.0, 1.0))
    gap = 0.2 if horizontal else 0.08  # side by side, "threshold 0.72" is wider than a tick's spacing
    # both ends always labelled (the demo's threshold 0.821 took "1" off the bar, which then read
    # "0, 0.25, 0.5, threshold 0.821"); a quarter near the threshold is left out, no label over its
    ticks = [v for v in (0.25, 0.5, 0.75) if abs(v - t) >= gap]
    said = f"threshold {t:.3g}"
    if horizontal and min(t, 1.0 - t) < gap:
        # near an end, on a second line, under the end's label: side by side they overlapped
        vals = sorted({0.0, 1.0, t, *ticks})
        text = [f"{v:g}<br>{said}" if v == t and v in (0.0, 1.0) else f"<br>{said}" if v == t else f"{v:g}"
                for v in vals]
    else:
        vals = sorted({0.0, 1.0, *ticks} - {t} | {t})
        text = [said if v == t else f"{v:g}" for v in vals]
    meaning = ("<br>red: called resistant, blue: called sensitive" if horizontal
               else "<br>red: called resistant<br>blue: called sensitive")
    return {**bar, "tickvals": vals, "ticktext": text, "title": dict(text=f"{title}{meaning}", side="top")}


#: Text of every figure (ticks, axis and colour-bar titles, legends): 9.7:1 on white. Streamlit's own
#: chart theme drew it rgb(128,132,149), 3.7:1, under WCAG AA's 4.5:1 for 12 px text.
FONT_COLOR = "#444444"
#: Bins of the P(resistant) histogram over [0, 1], both ends included.
HISTOGRAM_BINS = 50


def layout(fig: go.Figure, title: str | None = None, height: int = 420) -> go.Figure:
    """The figures' shared look: white, dark grey text, light grid. Set on the figure itself (not only
    through the template), so that Streamlit's chart theme, which rewrites the template, keeps it
    (and a figure in the app's dark theme stays readable: white, as in report.html)."""
    text = dict(color=FONT_COLOR)
    fig.update_layout(title=title, height=height, margin=dict(l=40, r=20, t=50 if title else 20, b=40),
                      template="plotly_white", legend=dict(itemsizing="constant", font=text, title_font=text),
                      font=text, title_font=text, paper_bgcolor="white", plot_bgcolor="white",
                      hoverlabel=dict(bgcolor="white", font=text))
    lines = dict(gridcolor="#e5e5e5", zerolinecolor="#e5e5e5", tickcolor="#e5e5e5")  # Streamlit's dark theme drew black
    fig.update_xaxes(tickfont=text, title_font=text, **lines)
    fig.update_yaxes(tickfont=text, title_font=text, **lines)
    return plain_text(fig)


#: Plotly renders a few HTML tags in every text it draws (legends, titles, tick labels, hover
#: labels, annotations), links included, and decodes entities (``&amp;``, ``&lt;``, ``&#39;`` ...):
#: every "&" and every "<" that does not start one of the figures' own line breaks is written as an
#: entity, so names from the data show as typed ("A&B", "A&amp;B", "<b>x" and "a > b" alike).
_TAG = re.compile(r"<(?!br>)")
_TRACE_TEXT = ("name", "legendgroup", "x", "y", "text", "hovertext", "customdata")


def _escape(text: str) -> str:
    """``text`` as Plotly shows it literally, the figures' own ``<br>`` kept (see :data:`_TAG`)."""
    return _TAG.sub("&lt;", text.replace("&", "&amp;"))


def text_for_plotly(text) -> str:
    """``text`` (a name from the data) for a Plotly string that :func:`plain_text` does not see, e.g.
    a hover template: "&" and "<" as the entities Plotly decodes (``html.escape`` also writes
    ``&quot;``, which Plotly shows as such), and "%" of a template field kept from being one."""
    return _escape(str(text)).replace("%{", "%&#123;")


def _plain(value):
    if isinstance(value, str):
        return _escape(value)
    if isinstance(value, (list, tuple, np.ndarray, pd.Series, pd.Index)):
        arr = np.asarray(value, dtype=object) if not isinstance(value, np.ndarray) else value
        if arr.dtype.kind in "OU" and any(isinstance(v, str) and ("<" in v or "&" in v) for v in arr.ravel()):
            out = np.empty(arr.shape, dtype=object)
            out.ravel()[:] = [_plain(v) for v in arr.ravel()]
            return out
    return value


def plain_text(fig: go.Figure) -> go.Figure:
    """Every text of ``fig`` that can come from the data (trace names, categories, hover texts,
    axis, legend and colour-bar titles, annotations) with its "&" and "<" written as entities (the
    figures' own ``<br>`` kept): a cell, gene, group or column name holding ``<a href=...>`` or
    ``<b>`` is shown as typed, never as a link or markup. Applied by :func:`layout`."""
    for trace in fig.data:
        for prop in _TRACE_TEXT:
            if prop in trace and trace[prop] is not None:
                cleaned = _plain(trace[prop])
                if cleaned is not trace[prop]:
                    trace[prop] = cleaned
        for bar in ("colorbar", "marker.colorbar"):
            try:
                title = trace[f"{bar}.title.text"]
            except (KeyError, ValueError):
                continue
            if isinstance(title, str) and ("<" in title or "&" in title):
                trace[f"{bar}.title.text"] = _plain(title)
    lay = fig.layout
    if isinstance(lay.title.text, str):
        lay.title.text = _plain(lay.title.text)
    for axis in [k for k in lay.to_plotly_json() if k.startswith(("xaxis", "yaxis"))]:
        if isinstance(lay[axis].title.text, str):
            lay[axis].title.text = _plain(lay[axis].title.text)
        for prop in ("categoryarray", "ticktext"):  # the order of categories written as the categories are:
            values = lay[axis][prop]  # a raw "<b>X" here and "&lt;b>X" on the bar drew that bar twice, out of order
            if values is not None:
                cleaned = _plain(values)
                if cleaned is not values:
                    lay[axis][prop] = cleaned
    if isinstance(lay.legend.title.text, str):
        lay.legend.title.text = _plain(lay.legend.title.text)
    for note in lay.annotations:
        if isinstance(note.text, str):
            note.text = _plain(note.text)
        if isinstance(note.hovertext, str):  # (a group name shortened on the panel heatmap: whole in its hover)
            note.hovertext = _plain(note.hovertext)
    return fig


# --------------------------------------------------------------------------------------------
# Text alternatives and the chart toolbar
# --------------------------------------------------------------------------------------------

#: Plotly's toolbar buttons the app leaves out (each one is a stop in the keyboard's tab order):
#: zoom in / out steps, autoscale (reset axes does it), box and lasso selection (nothing is
#: selected), spike lines and the hover-mode switches.
DROPPED_BUTTONS = ("zoomIn2d", "zoomOut2d", "autoScale2d", "select2d", "lasso2d", "toggleSpikelines",
                   "hoverClosestCartesian", "hoverCompareCartesian",
                   # never a way to send the data to a third party: the names of the "Share chart" button
                   # in older and newer plotly.js
                   "sendDataToCloud", "sendChartToCloud", "editInChartStudio")
#: Also left out of charts where zooming shows nothing more (bars, violins, a 2 x 2 matrix).
ZOOM_BUTTONS = ("zoom2d", "pan2d")
#: Categories (genes, groups, drugs ...) named one by one in a text alternative, at most.
ALT_MAX_NAMED = 10


def describe(fig: go.Figure, alt: str, filename: str, zoom: bool = True) -> go.Figure:
    """Attach to ``fig`` (in ``layout.meta``) its text alternative ``alt`` (what the chart shows,
    with its key numbers, for a screen reader), the stem of its PNG download's file name, and
    whether zooming and panning are of use on it (:func:`chart_config`)."""
    meta = fig.layout.meta if isinstance(fig.layout.meta, dict) else {}
    fig.update_layout(meta={**meta, "alt": " ".join(str(alt).split()), "filename": file_stem(filename),
                            "zoom": bool(zoom)})
    return fig


def alt_text(fig: go.Figure) -> str:
    """The text alternative of ``fig`` (set by its builder, :func:`describe`); never empty: a
    figure without one is named by its title."""
    meta = fig.layout.meta if isinstance(fig.layout.meta, dict) else {}
    if str(meta.get("alt") or "").strip():
        return str(meta["alt"])
    title = fig.layout.title.text
    return f"Chart: {html.unescape(str(title)).replace('<br>', ' ')}" if title else "Chart"


def file_stem(text: str | None) -> str:
    """``text`` as a file name's stem: letters, digits and ``_`` only, ``scatd_`` first, at most 80
    characters ("P(resistant): DRUG A" -> ``scatd_p_resistant_drug_a``)."""
    stem = re.sub(r"[^A-Za-z0-9]+", "_", str(text or "")).strip("_").lower()
    stem = stem if stem.startswith("scatd") else f"scatd_{stem}".rstrip("_")
    return stem[:80].rstrip("_")


def chart_config(fig: go.Figure, filename: str | None = None) -> dict:
    """Plotly's ``config`` for ``fig`` in the app: the toolbar keeps download as PNG (named
    ``filename``, else the builder's name for it), reset axes and, where of use, zoom and pan
    (:data:`DROPPED_BUTTONS`, :data:`ZOOM_BUTTONS`)."""
    meta = fig.layout.meta if isinstance(fig.layout.meta, dict) else {}
    drop = list(DROPPED_BUTTONS) + ([] if meta.get("zoom", True) else list(ZOOM_BUTTONS))
    return {"displaylogo": False, "modeBarButtonsToRemove": drop, "showSendToCloud": False,
            "toImageButtonOptions": {"format": "png", "scale": 2,
                                     "filename": file_stem(filename or meta.get("filename") or "chart")}}


def _n(count) -> str:
    return f"{int(count):,}"


def _share(part, whole) -> str:
    return f"{int(part):,} ({100 * part / whole:.1f}%)" if whole else f"{int(part):,}"


def _named(items: Sequence[str], max_named: int = ALT_MAX_NAMED, sep: str = ", ") -> str:
    """``a, b, c`` or ``a, b, ... and 12 more`` (``sep`` between the items)."""
    items = [str(i) for i in items]
    more = len(items) - max_named
    return sep.join(items[:max_named]) + (f" and {more:,} more" if more > 0 else "")


def _g(value) -> str:
    """A number in 3 significant digits, a large one whole with thousands separators (1,510, not
    1.51e+03); ``n/a`` when missing."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "n/a"
    if not np.isfinite(v):
        return "n/a"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def _scatter_trace(n_points: int):
    return go.Scattergl if n_points >= WEBGL_MIN_POINTS else go.Scatter


#: The top of the colour scale of an ensemble's spread of P(resistant) at least: the members of a model
#: agreeing to within 0.0016 were drawn bright yellow when the scale stretched to the largest spread.
SD_COLOUR_FLOOR = 0.05


def sd_colour_range(sd) -> tuple[float, float]:
    """The colour range of a spread of P(resistant) (the sd between ensemble members or draws): from
    0 to the largest spread, and at least to :data:`SD_COLOUR_FLOOR`, so that tiny spreads look tiny."""
    sd = np.asarray(sd, dtype=np.float64)
    top = float(np.nanmax(sd)) if np.isfinite(sd).any() else 0.0
    return 0.0, max(SD_COLOUR_FLOOR, top)


#: A whole-number column with at most this many distinct values (each held by 2 cells or more on
#: average) is coloured as categories (:func:`colour_as_categories`): cluster numbers, samples 1..8.
MAX_NUMBER_CATEGORIES = 50
#: A column named so holds a measurement (counts, genes, shares, scores, P(resistant) ...): on a
#: colour scale, whatever its values (short words only as whole words: "stage" is no "age"; "per":
#: cells_per_cluster).
_MEASURE_NAME = re.compile(r"(?<![a-z])(n|total|pct|frac|log1p|mean|median|std|sd|age|time|dose|sizes?|area|depth|"
                           r"auc|ic50|p|per|dist|distance|ratio|density|entropy)(?![a-z])|count|genes|umi|mito|percent|"
                           r"fraction|concentration|score|prob|confidence|nfeature|^(num|nb|number)(?![a-z])", re.IGNORECASE)
#: A column whose name is, or ends with, one of these words (and not a measurement's) holds categories:
#: clusters, cell types, samples ...; coloured as such when its values are whole numbers, up to 100 of
#: them (as many as the Cells page offers of a text column).
_CATEGORY_WORD = re.compile(r"(sub)?clusters?|leiden|louvain|(cell)?types?|annotations?|labels?|samples?|"
                            r"batch(es)?|donors?|patients?|clones?|phase|groups?|kmeans", re.IGNORECASE)
#: Elsewhere in a name, such a word says a measurement about clusters, cell types ... (cells_per_cluster,
#: cluster_distance, leiden_confidence): not categories, whatever its values.
_CATEGORY_MENTION = re.compile(r"cluster|leiden|louvain|cell.?type|annotation|label", re.IGNORECASE)
#: Last words of a category's name after its word: cluster_id, donor_name, batch_no, cluster_number
#: (first, they say a count: num_clusters, number_of_clusters).
_ID_WORDS = {"id", "ids", "name", "names", "no", "nr", "num", "number", "code", "key", "idx", "index"}
#: A clustering's resolution after its name: leiden_res_1.0, RNA_snn_res.0.8 (Seurat), louvain_0.5.
_RESOLUTION_WORDS = {"res", "resolution", "r"}


def _named_as_categories(name: str) -> bool:
    """Whether ``name`` is, or ends with, a category's word (:data:`_CATEGORY_WORD`): "leiden",
    "louvain_0.5", "leiden_res_1.0", "RNA_snn_res.0.8", "seurat_clusters", "cell_type", "donor_id";
    not "cluster_distance" or "cells_per_cluster" (the word not last)."""
    words = [w for w in re.split(r"[^0-9a-z]+", str(name).lower()) if w]
    n_words = len(words)
    while words and words[-1].isdigit():  # louvain_0.5: its resolution
        words.pop()
    if words and words[-1] in _RESOLUTION_WORDS and len(words) < n_words:  # leiden_res_1.0, RNA_snn_res.0.8
        return True
    while len(words) > 1 and words[-1] in _ID_WORDS:
        words.pop()
    return bool(words) and (bool(_CATEGORY_WORD.fullmatch(words[-1]))
                            or (len(words) > 1 and words[-2] == "cell" and words[-1] in ("type", "types")))


def colour_as_categories(values, name: str = "") -> bool:
    """Whether a column ``values`` (named ``name``) is coloured as categories (one colour each, a
    legend) rather than on a colour scale. Text, categories and booleans are; numbers are when they
    are whole, ``name`` does not say a measurement (n_counts, pct_mito, cluster_size, leiden_score,
    P(resistant) ...), and either ``name`` says categories (it is, or ends with, cluster, leiden,
    louvain, cell type, sample ...: up to 100 values; :func:`_named_as_categories`) or, naming no
    cluster, cell type or label elsewhere (cells_per_cluster, leiden_confidence: a measurement about
    them), they take at most :data:`MAX_NUMBER_CATEGORIES` values, each held by 2 cells or more on
    average. A cluster column saved as integers (leiden 0..7) was drawn on a colour scale, as if
    cluster 7 were more than cluster 3; a measurement whose name merely contained "cluster"
    (cluster_sizes, clusters_nearby) was drawn as categories."""
    series = pd.Series(values) if not isinstance(values, pd.Series) else values
    if not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        return True
    v = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    v = v[np.isfinite(v)]
    if v.size == 0 or not np.array_equal(v, np.round(v)):
        return False
    k = np.unique(v).size
    if _MEASURE_NAME.search(str(name)):
        return False
    if _named_as_categories(str(name)):
        return k <= 100
    if _CATEGORY_MENTION.search(str(name)):
        return False
    return k <= MAX_NUMBER_CATEGORIES and 2 * k <= v.size


def _category_values(values):
    """``values`` as :func:`umap_figure` names its categories: whole numbers written as such
    ("3", not "3.0"), a missing one as NaN; any other values as they are."""
    series = pd.Series(values) if not isinstance(values, pd.Series) else values
    if not pd.api.types.is_float_dtype(series):
        return values
    v = series.to_numpy(dtype=np.float64, na_value=np.nan)
    finite = np.isfinite(v)
    if not np.array_equal(v[finite], np.round(v[finite])):
        return values
    out = np.full(v.size, np.nan, dtype=object)
    out[finite] = [str(int(x)) for x in v[finite]]
    return out


def umap_figure(coords: np.ndarray, values: Sequence | None = None, *, name: str = "",
                categorical: bool | None = None, cell_ids: Sequence[str] | None = None,
                color_range: tuple[float, float] | None = None, colorscale: str | list = PROB_SCALE,
                title: str | None = None, point_size: float | None = None,
                max_points: int | None = None, note: str | None = None,
                colors: dict[str, str] | None = None, threshold: float | None = None,
                notes_below: bool = False, missing_note: bool = True) -> go.Figure:
    """UMAP scatter coloured by ``values`` (numbers: a colour scale; text: one trace per value,
    coloured by ``colors`` where it names the value).

    ``threshold``: the values are P(resistant) called at it: blue below, red above, grey at it,
    with the threshold marked on the colour bar (:func:`prob_colorscale`, :func:`prob_colorbar`).

    ``note`` is written under the plot (how the layout was made, e.g.
    :func:`scatd_core.embed.fit_note`). Points with non-finite coordinates are left out and
    counted in a note under the plot;
    cells with a non-finite colour value are drawn in grey. WebGL above
    :data:`WEBGL_MIN_POINTS` points; a seeded random subsample of ``max_points`` (default
    :data:`MAX_PLOT_POINTS`) above that, said in the note.

    ``notes_below``: the notes are not drawn in the figure (a Plotly annotation is one line that
    never wraps: cut off on a phone) but kept in ``layout.meta`` for the page to write under the
    chart as text, which wraps (:func:`figure_notes`; the app's ``ui.chart`` does); a subsample
    is said in the figure instead, in one short line (:func:`subsample_note`), so that its PNG
    download and a copy of it say so too, and only there: the page said it twice, in the figure and
    again in the text under it.
    ``missing_note=False``: the cells without coordinates are not counted in the notes (the page
    says so itself).
    """
    max_points = MAX_PLOT_POINTS if max_points is None else int(max_points)
    coords = np.asarray(coords, dtype=np.float64)
    ok = finite_rows(coords)
    drawable = ok.copy()  # before any subsample: what the text alternative counts
    n_out = int((~ok).sum())
    n_drawable = int(ok.sum())
    if n_drawable > max_points:
        keep = np.random.default_rng(0).choice(np.flatnonzero(ok), size=max_points, replace=False)
        ok = np.zeros_like(ok)
        ok[keep] = True
    xy = coords[ok]
    ids = np.asarray(cell_ids if cell_ids is not None else np.arange(coords.shape[0]).astype(str))[ok]
    size = point_size or (3 if xy.shape[0] > 20_000 else 4 if xy.shape[0] > 3000 else 6)
    Trace = _scatter_trace(xy.shape[0])
    fig = go.Figure()
    if values is None:
        fig.add_trace(Trace(x=xy[:, 0], y=xy[:, 1], mode="markers", marker=dict(size=size, color="#555"),
                            text=ids, hovertemplate="%{text}<extra></extra>", showlegend=False))
    else:
        numeric = not colour_as_categories(values, name) if categorical is None else not categorical
        if not numeric:
            values = _category_values(values)
        vals = pd.Series(np.asarray(values, dtype=object)[ok])
        if numeric:
            v = pd.to_numeric(vals, errors="coerce").to_numpy(dtype=np.float64)
            has = np.isfinite(v)
            if (~has).any():
                fig.add_trace(Trace(x=xy[~has, 0], y=xy[~has, 1], mode="markers", name="no value",
                                    marker=dict(size=size, color=COLORS[NOT_SCORED]), text=ids[~has],
                                    hovertemplate="%{text}: no value<extra></extra>"))
            lo, hi = color_range or (float(np.nanmin(v)) if has.any() else 0.0,
                                     float(np.nanmax(v)) if has.any() else 1.0)
            # the colour bar under the plot, across its width, thin (as feature_map's): beside it (with
            # P(resistant)'s three-line title) it left the map 155 of a phone's 358 px
            if threshold is not None:
                colorscale, lo, hi = prob_colorscale(threshold), 0.0, 1.0
                colorbar = prob_colorbar(threshold, name, thickness=10, horizontal=True)
            else:  # 0.0006, not plotly's "600µ"; 16,000, not "16000", as the page writes numbers
                colorbar = dict(title=dict(text=name, side="top"), thickness=10, tickformat=",~g", orientation="h",
                                len=1, lenmode="fraction", x=0.5, xanchor="center", y=-0.3, yanchor="top", ypad=0)
            fig.add_trace(Trace(x=xy[has, 0], y=xy[has, 1], mode="markers", name=name, showlegend=False,
                                marker=dict(size=size, color=v[has], colorscale=colorscale, cmin=lo, cmax=hi,
                                            colorbar=colorbar),
                                text=ids[has], customdata=v[has],
                                # 3 significant digits: a spread of 0.0004 read 0.000 with .3f
                                hovertemplate="%{text}<br>" + text_for_plotly(name) + ": %{customdata:.3~g}<extra></extra>"))
        else:
            text = vals.astype(str).where(vals.notna(), "NA")
            cats = pd.Series(values).astype("category").cat.categories if hasattr(values, "cat") else None
            order = [str(c) for c in cats if str(c) in set(text)] if cats is not None else natural_order(text)
            order += natural_order(set(text) - set(order))
            palette = {**_palette(order), **(colors or {})}
            sizes = text.value_counts()
            # the largest group drawn first, the smallest last, on top: a minority (e.g. the cells called
            # resistant) is not hidden under the majority's points; the legend keeps ``order`` (legendrank)
            for rank, cat in sorted(enumerate(order), key=lambda rc: (-int(sizes.get(rc[1], 0)), rc[0])):
                m = (text == cat).to_numpy()
                fig.add_trace(Trace(x=xy[m, 0], y=xy[m, 1], mode="markers", name=f"{cat} ({int(m.sum()):,})",
                                    marker=dict(size=size, color=palette[cat]), text=ids[m], showlegend=True,
                                    legendrank=1000 + rank,
                                    hovertemplate="%{text}<br>" + text_for_plotly(f"{name}: {cat}") + "<extra></extra>"))
    fig.update_xaxes(title="UMAP 1", showticklabels=False, zeroline=False, showgrid=False)
    fig.update_yaxes(title="UMAP 2", showticklabels=False, zeroline=False, showgrid=False, scaleanchor=None)
    notes = [note] if note else []
    if n_out and missing_note:
        notes.append(f"{counted(n_out)} without coordinates {'is' if n_out == 1 else 'are'} not shown")
    subsampled = n_drawable > max_points
    if subsampled:
        said = subsample_note(max_points, n_drawable)
        notes.append(said[0].lower() + said[1:])
    # under the axis title "UMAP 1" (NOTE_SHIFT pixels below the plot), in a margin. With the notes
    # below the chart, a subsample is said in the figure all the same, in one short line that fits a
    # phone: its PNG download (plotly draws the figure as it is) and a copy of report.html's figure
    # showed a share of the cells as if they were all
    drawn = "; ".join(notes) if not notes_below else said if subsampled else ""
    if drawn:
        fig.add_annotation(text=drawn, showarrow=False, xref="paper", yref="paper", x=0, y=0,
                           xanchor="left", yanchor="top", yshift=-NOTE_SHIFT, font=dict(size=11, color="#666"))
    alt = _umap_alt(values, drawable, name, categorical, threshold)
    alt += "".join(f" {n[0].upper()}{n[1:]}." for n in notes[1 if note else 0:])
    fig = layout(fig, title, height=520)
    if drawn:
        fig.update_layout(margin=dict(b=NOTE_SHIFT + 24))
    under = UMAP_KEY_PX + (NOTE_SHIFT - 14 if drawn else 0)  # under the axis title "UMAP 1" (and the note)
    bars = [i for i, t in enumerate(fig.data) if t.marker.colorbar.orientation == "h"]
    if bars:
        colorbar_below(fig, under, trace=bars[0])
        # the "no value" cells' one entry above the plot, out of the colour bar's way
        fig.update_layout(legend=dict(orientation="h", x=0, xanchor="left", y=1, yanchor="bottom"))
    elif values is not None and len(fig.data):
        umap_legend_below(fig, under)
    fig = describe(fig, alt, f"umap_{name or 'cells'}")
    below = notes[:-1] if notes_below and subsampled else notes  # the subsample: said in the figure, not again
    if below and notes_below:
        fig.update_layout(meta={**fig.layout.meta, "notes": [f"{n[0].upper()}{n[1:]}." for n in below]})
    return fig


#: How far (pixels) below a UMAP's plot area its legend or colour bar starts: under the x-axis title
#: "UMAP 1" (and, where drawn, the subsample's note).
UMAP_KEY_PX = 44


def umap_legend_below(fig: go.Figure, under_px: int) -> go.Figure:
    """A UMAP's legend of categories across the width under the plot, from its left edge, ``under_px``
    pixels below it (rows as the width allows; plotly grows the bottom margin for them): beside the plot
    a legend of 14 clusters left the map 217 of a phone's 358 px. The server does not know the
    browser's width, so the legend is below at every width."""
    top = int(fig.layout.margin.t if fig.layout.margin.t is not None else 20)
    bottom = max(int(fig.layout.margin.b or 0), under_px + 30)
    plot_height = max(float(fig.layout.height) - top - bottom, 1.0)
    fig.update_layout(margin=dict(b=bottom), legend=dict(orientation="h", x=0, xanchor="left",
                                                         y=-under_px / plot_height, yanchor="top"))
    return fig


def subsample_note(n_shown: int, n_all: int) -> str:
    """What a scatter plot drawing a random ``n_shown`` of ``n_all`` cells says of it, in the figure
    (once: not again under it): "Showing a random 200,000 of 250,000 cells" (one line at a phone's width)."""
    return f"Showing a random {int(n_shown):,} of {int(n_all):,} cells"


def figure_notes(fig: go.Figure) -> list[str]:
    """The notes a figure built with ``notes_below`` (:func:`umap_figure`) leaves to be written under
    it, as sentences (e.g. "1 cell without coordinates is not shown."; not a subsample, said in the
    figure itself: :func:`subsample_note`); none for any other figure."""
    meta = fig.layout.meta if isinstance(fig.layout.meta, dict) else {}
    return [str(n) for n in meta.get("notes") or []]


#: How far (pixels) below a UMAP's plot area its note starts: clear of the x-axis title "UMAP 1"
#: (about 30 pixels tall there, the axis without tick labels).
NOTE_SHIFT = 38


def _umap_alt(values, drawable: np.ndarray, name: str, categorical: bool | None, threshold: float | None) -> str:
    """What :func:`umap_figure` shows, in words: the cells drawn and how they are coloured."""
    alt = f"UMAP of {counted(drawable.sum())}"
    if values is None:
        return alt + "."
    numeric = not colour_as_categories(values, name) if categorical is None else not categorical
    if not numeric:
        values = _category_values(values)
    every = pd.Series(values)
    vals = pd.Series(np.asarray(values, dtype=object)[drawable])
    if numeric:
        v = pd.to_numeric(vals, errors="coerce").to_numpy(dtype=np.float64)
        has = np.isfinite(v)
        if threshold is not None:
            alt += (f", coloured by {name}: {_share((v[has] > threshold).sum(), has.sum())} above the threshold "
                    f"{threshold:.3g}, called resistant (red), the others sensitive (blue)")
        elif has.any():
            alt += (f", coloured by {name} from {_g(v[has].min())} to {_g(v[has].max())} "
                    f"(median {_g(np.median(v[has]))})")
        if (~has).any():
            alt += f"; {int((~has).sum()):,} without a value (grey)"
        return alt + "."
    text = vals.astype(str).where(vals.notna(), "NA")
    counts = text.value_counts()
    cats = every.astype("category").cat.categories if hasattr(values, "cat") else natural_order(counts.index)
    order = [str(c) for c in cats if str(c) in counts.index]
    order += natural_order(set(counts.index) - set(order))
    return alt + f", coloured by {name}: " + _named([f"{c} {int(counts[c]):,}" for c in order]) + "."


#: The category of :func:`count_umap_figure` for cells with no count (scored by no drug).
NO_COUNT = "scored by no drug"


def count_umap_figure(coords: np.ndarray, counts: Sequence, n_max: int, *, name: str,
                      cell_ids: Sequence[str] | None = None, title: str | None = None,
                      notes_below: bool = False) -> go.Figure:
    """UMAP coloured by a small whole count (the number of drugs a cell resists, 0..``n_max``):
    one colour per count, light to dark red, listed 0, 1, 2 ... in the legend (a continuous colour
    bar read 0, 0.5, 1 ... for a count); a missing count (NaN) is :data:`NO_COUNT`, grey."""
    from plotly.colors import sample_colorscale

    n_max = max(int(n_max), 1)
    values = pd.to_numeric(pd.Series(np.asarray(counts, dtype=object)), errors="coerce")
    text = values.map(lambda v: NO_COUNT if pd.isna(v) else str(int(v)))
    order = [str(i) for i in range(n_max + 1)]
    order += sorted(set(text) - set(order) - {NO_COUNT}, key=lambda v: float(v)) + [NO_COUNT]
    shades = sample_colorscale("Reds", [0.12 + 0.88 * i / n_max for i in range(n_max + 1)])
    colors = {**dict(zip(order, shades)), NO_COUNT: COLORS[NOT_SCORED]}
    fig = umap_figure(coords, pd.Series(pd.Categorical(text, categories=order)), name=name, categorical=True,
                      cell_ids=cell_ids, title=title, colors=colors, notes_below=notes_below)
    return fig.update_layout(legend=dict(title=dict(text=name)))


#: Colours of other categories (Leiden clusters, samples ...), in this order. Never the resistant red,
#: the sensitive blue (which mean a response) or a grey (no value). The first 8 stay apart for
#: readers with red-green colour blindness (protanopia, deuteranopia): Okabe & Ito's palette
#: (2008) without its blue and vermillion, then Paul Tol's indigo and wine, with Okabe-Ito's yellow
#: 8th (faint on white). Then 6 more of Tol's "muted" colours, which may resemble one of the first 8
#: for such readers; above 14 categories the colours repeat (hover a cell to read its category).
_QUALITATIVE = ("#E69F00", "#56B4E9", "#009E73", "#CC79A7", "#000000", "#332288", "#882255", "#F0E442",
                "#117733", "#999933", "#AA4499", "#88CCEE", "#44AA99", "#DDCC77")
#: How many of :data:`_QUALITATIVE`'s colours stay apart under red-green colour blindness.
N_COLOURBLIND_SAFE = 8


def _palette(categories: Iterable[str]) -> dict[str, str]:
    out, i = {}, 0
    for cat in categories:
        word = cat.lower()
        if cat in COLORS:
            out[cat] = COLORS[cat]
        # the meaning said in words (labels.shown_labels: "0 = resistant"; earlier "0 (resistant)"),
        # never guessed from values such as 1/0, true/false or R/S (a cell-cycle phase "S" is not sensitive)
        elif word in ("resistant", "non-responder") or word.endswith(("(resistant)", "= resistant")):
            out[cat] = COLORS["resistant"]
        elif word in ("sensitive", "responder") or word.endswith(("(sensitive)", "= sensitive")):
            out[cat] = COLORS["sensitive"]
        elif cat in ("NA", NOT_EMBEDDED, OLD_NOT_EMBEDDED):
            out[cat] = COLORS[NOT_SCORED]
        else:
            out[cat] = _QUALITATIVE[i % len(_QUALITATIVE)]
            i += 1
    return out


def label_colors(categories: Iterable[str]) -> list[str]:
    """The colours the app draws these categories in (resistant red, sensitive blue, not scored
    grey ...), in their order: ``uns['<column>_colors']`` of an exported h5ad, for scanpy."""
    categories = list(categories)
    palette = _palette(categories)
    return [palette[c] for c in categories]


def probability_histogram(prob: np.ndarray, threshold: float, title: str | None = None,
                          calibrated: bool | None = None, source: str | None = None) -> go.Figure:
    """Histogram of P(resistant) over the scored cells, with the threshold marked.

    The threshold's label says whether it is ``calibrated`` and, when given, where it came from:
    ``source``, a few words (:func:`scatd_core.predict.threshold_origin`: "model default", "set by
    hand", "set with --threshold"), e.g. "threshold 0.3 (set by hand, uncalibrated)".

    :data:`HISTOGRAM_BINS` equal bins over [0, 1]; the last bin is closed, so probabilities of
    exactly 0 and 1 are counted like any other (numpy's binning, drawn as bars). Two stacked
    traces: the cells called sensitive (P <= threshold) in blue, those called resistant
    (P > threshold) in red, so a bin that the threshold cuts is split by its cells' calls.
    """
    p = np.asarray(prob, dtype=np.float64)
    p = np.clip(p[np.isfinite(p)], 0.0, 1.0)
    edges = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)
    centres, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    labels = [f"[{a:.2f}, {b:.2f}{']' if i == HISTOGRAM_BINS - 1 else ')'}" for i, (a, b) in
              enumerate(zip(edges[:-1], edges[1:]))]
    fig = go.Figure()
    resistant = p > threshold  # the calls' own rule (predict.relabel)
    for called, cells in (("sensitive", p[~resistant]), ("resistant", p[resistant])):
        counts, _ = np.histogram(cells, bins=edges)
        rule = "≤" if called == "sensitive" else ">"
        fig.add_trace(go.Bar(x=centres, y=counts, width=width, marker_color=COLORS[called], customdata=labels,
                             name=f"called {called} (P {rule} {threshold:.3g})", showlegend=True,
                             hovertext=[f"{counted(c)} called {called}" for c in counts],  # 1 cell, 2 cells
                             hovertemplate="P in %{customdata}: %{hovertext}<extra></extra>"))
    if calibrated:
        note = " (calibrated)"
    elif calibrated is None:
        note = f" ({source})" if source else ""
    else:
        note = f" ({source}, uncalibrated)" if source and source != "calibrated" else " (uncalibrated)"
    fig.add_vline(x=threshold, line=dict(color=COLORS["resistant"], dash="dash"),
                  annotation_text=f"threshold {threshold:.3g}{note}",
                  # near an edge the label goes inwards, else it is cut off by the plot's border
                  annotation_position=threshold_label_side(threshold))
    fig.update_xaxes(title="P(resistant)", range=[0, 1])
    fig.update_yaxes(title="cells")
    fig.update_layout(bargap=0.02, barmode="stack", legend=dict(orientation="h", x=0, y=-0.3, yanchor="top"))
    if p.size:
        alt = (f"Histogram of P(resistant) for {counted(p.size, 'scored cell')}: {_share(resistant.sum(), p.size)} above the "
               f"threshold {threshold:.3g}{note}, called resistant; median P(resistant) {_g(np.median(p))}.")
    else:
        alt = "Histogram of P(resistant): no scored cells."
    return describe(layout(fig, title, height=340), alt, "p_resistant_histogram", zoom=False)


def threshold_label_side(threshold: float) -> str:
    """Where a threshold line's label sits: right of the line near 0, left near 1, else centred."""
    return "top right" if threshold < 0.3 else ("top left" if threshold > 0.7 else "top")


def composition_figure(table: pd.DataFrame, group_name: str, title: str | None = None) -> go.Figure:
    """Bar chart of the fraction called resistant per group (from :func:`scatd_core.metrics.group_table`)."""
    text = [f"{r:,}/{c:,}" for r, c in zip(table["n_resistant"], table["n_called"])]
    fig = go.Figure(go.Bar(x=table["group"].astype(str), y=table["fraction_resistant"], text=text,
                           textposition="outside", marker_color=COLORS["resistant"],
                           hovertemplate="%{x}: %{y:.1%} resistant (%{text})<extra></extra>"))
    fig.update_yaxes(title="fraction resistant", range=[0, 1.1], tickformat=".0%")
    fig.update_xaxes(title=group_name, type="category")
    alt = f"Bar chart of the fraction of cells called resistant per {group_name}: " + _named(
        [f"{g} {f:.0%} ({r:,} of {c:,})" if f == f else f"{g} n/a" for g, f, r, c in
         zip(table["group"].astype(str), table["fraction_resistant"].astype(float), table["n_resistant"],
             table["n_called"])]) + "."
    return describe(layout(fig, title, height=360), alt, f"fraction_resistant_by_{group_name}", zoom=False)


#: The ROC and precision-recall curves' legends lie under the plot, from its left edge: this far
#: (pixels) below it, under the x axis's ticks and title, in a bottom margin this high, the figure
#: this much taller for it (its plot as high as before).
CURVE_LEGEND_PX = 56
CURVE_BOTTOM_PX = 80
CURVE_HEIGHT = 380 + CURVE_BOTTOM_PX - 40


def _curve_legend_below(fig: go.Figure) -> go.Figure:
    """``fig`` (laid out by :func:`layout`) with its legend in one row under the plot: at the top right
    the precision-recall curve's legend covered the curve, where a good model's curve runs, at every
    width (and the ROC's, inside at the bottom right, the diagonal of a model no better than chance)."""
    plot_height = CURVE_HEIGHT - float(fig.layout.margin.t) - CURVE_BOTTOM_PX
    return fig.update_layout(margin=dict(b=CURVE_BOTTOM_PX),
                             legend=dict(orientation="h", x=0, xanchor="left", y=-CURVE_LEGEND_PX / plot_height,
                                         yanchor="top"))


def roc_figure(roc: pd.DataFrame, auroc: float, title: str | None = None) -> go.Figure:
    fig = go.Figure([
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#bbb", dash="dot"), showlegend=False,
                   hoverinfo="skip"),
        go.Scatter(x=roc["fpr"], y=roc["tpr"], mode="lines", name=f"AUROC {auroc:.3f}",
                   line=dict(color=COLORS["resistant"], width=2), customdata=roc["threshold"],
                   hovertemplate="FPR %{x:.3f}, TPR %{y:.3f}<br>threshold %{customdata:.3f}<extra></extra>"),
    ])
    fig.update_xaxes(title="false positive rate", range=[0, 1])
    fig.update_yaxes(title="true positive rate", range=[0, 1.02])
    alt = (f"ROC curve: true positive rate against false positive rate over {len(roc):,} thresholds; "
           f"AUROC {auroc:.3f} (0.5 is chance, the dotted diagonal).")
    return describe(_curve_legend_below(layout(fig, title or "ROC curve", height=CURVE_HEIGHT)), alt, "roc_curve")


def pr_figure(pr: pd.DataFrame, auprc: float, prevalence: float, title: str | None = None) -> go.Figure:
    fig = go.Figure([
        go.Scatter(x=[0, 1], y=[prevalence, prevalence], mode="lines", line=dict(color="#bbb", dash="dot"),
                   name=f"chance ({prevalence:.2f})", hoverinfo="skip"),
        go.Scatter(x=pr["recall"], y=pr["precision"], mode="lines", name=f"AUPRC {auprc:.3f}",
                   line=dict(color=COLORS["resistant"], width=2), customdata=pr["threshold"],
                   hovertemplate="recall %{x:.3f}, precision %{y:.3f}<br>threshold %{customdata:.3f}"
                                 "<extra></extra>"),
    ])
    fig.update_xaxes(title="recall", range=[0, 1])
    fig.update_yaxes(title="precision", range=[0, 1.02])
    alt = (f"Precision-recall curve: precision against recall over {len(pr):,} thresholds; AUPRC {auprc:.3f}, "
           f"against {prevalence:.2f} by chance (the share of resistant cells, the dotted line).")
    return describe(_curve_legend_below(layout(fig, title or "Precision-recall curve", height=CURVE_HEIGHT)), alt,
                    "precision_recall_curve")


def confusion_figure(confusion: np.ndarray, positive_label: str = "resistant",
                     negative_label: str = "sensitive", title: str | None = None) -> go.Figure:
    """The confusion matrix of :class:`scatd_core.metrics.Evaluation` (rows: true sensitive, true resistant;
    columns: called sensitive, called resistant), drawn resistant first (top row, left column) as every
    other figure and table lists them."""
    cm = np.asarray(confusion)[::-1, ::-1]
    names = [positive_label, negative_label]
    fig = go.Figure(go.Heatmap(z=cm, x=[f"called {n}" for n in names], y=[f"true {n}" for n in names],
                               # greys: blue means sensitive in every other figure
                               colorscale=[[0.0, "#f7f7f7"], [1.0, "#9a9a9a"]], showscale=False, text=cm,
                               texttemplate="%{text:,}", customdata=np.vectorize(counted, otypes=[object])(cm),
                               hovertemplate="%{y}, %{x}: %{customdata}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    alt = f"Confusion matrix of {counted(cm.sum())}"
    if cm.shape == (2, 2):  # the matrix as given (sensitive first), whatever order it is drawn in
        cm = np.asarray(confusion)
        alt += (f": of {int(cm[1].sum()):,} truly {positive_label}, {int(cm[1, 1]):,} called {positive_label} and "
                f"{int(cm[1, 0]):,} called {negative_label}; of {int(cm[0].sum()):,} truly {negative_label}, "
                f"{int(cm[0, 0]):,} called {negative_label} and {int(cm[0, 1]):,} called {positive_label}")
    return describe(layout(fig, title or "Confusion matrix", height=320), alt + ".", "confusion_matrix", zoom=False)


def qc_violin(metrics: pd.DataFrame, columns: Sequence[str], passed: np.ndarray | None = None,
              title: str | None = None) -> go.Figure:
    """Violin per QC metric (one panel each); cells failing the filter drawn as red points. A metric
    with one value in every cell but for float rounding (:func:`one_value`: the totals of normalised
    values) is drawn at that value, on an axis of whole numbers around it, and said in a note under
    the plot (:func:`figure_notes`) and in its hover: its axis zoomed onto the rounding read "10.000001k"."""
    from plotly.subplots import make_subplots

    cols = [c for c in columns if c in metrics and metrics[c].notna().any()]
    from scatd_core.preprocess import qc_metric_name

    fig = make_subplots(rows=1, cols=max(1, len(cols)), subplot_titles=[qc_metric_name(c) for c in cols])
    notes = []
    for i, col in enumerate(cols, start=1):
        values = metrics[col].to_numpy(dtype=np.float64)
        same = one_value(values)
        extra = {}
        if same is not None:
            values = np.where(np.isfinite(values), same, values)
            notes.append(_one_value_note(metrics, col, values, same))
            extra = dict(hovertemplate=text_for_plotly(f"{qc_metric_name(col)}: {_g(same)} in every cell"
                                                       + (" (normalised values)" if "normalised" in notes[-1] else ""))
                                       + "<extra></extra>", hoveron="violins")
        fig.add_trace(go.Violin(y=values, name=col, box_visible=True, meanline_visible=False, points=False,
                                line_color="#4c72b0", fillcolor="rgba(76,114,176,0.25)", showlegend=False,
                                spanmode="hard", **extra), row=1, col=i)
        if passed is not None and (~passed).any():
            failed = values[~passed]
            fig.add_trace(go.Scatter(x=[col] * failed.size, y=failed, mode="markers", showlegend=False,
                                     marker=dict(size=3, color=COLORS["resistant"], opacity=0.5),
                                     hovertemplate="filtered: %{y}<extra></extra>"), row=1, col=i)
        fig.update_xaxes(showticklabels=False, row=1, col=i)
        if same is not None:
            fig.update_yaxes(**_one_value_axis(same), row=1, col=i)
        else:  # 1,200 genes, not "1200", as the page writes numbers (QA)
            fig.update_yaxes(tickformat=",~g", row=1, col=i)
    medians = [f"{qc_metric_name(c)} {_g(np.nanmedian(metrics[c].to_numpy(dtype=np.float64)))}"
               for c in cols]
    alt = (f"Violin plots of {', '.join(qc_metric_name(c) for c in cols) or 'no QC metric'} "
           f"over {counted(len(metrics))}" + (f"; medians: {', '.join(medians)}" if medians else ""))
    if passed is not None:
        failed = int((~np.asarray(passed, dtype=bool)).sum())
        fails = "cell fails" if failed == 1 else "cells fail"
        alt += f"; {_share(failed, len(metrics))} {fails} the QC filter" + (" (red points)" if failed else "")
    fig = describe(layout(fig, title, height=340), alt + "." + "".join(f" {n}" for n in notes), "qc_violins",
                   zoom=False)
    return _with_notes(fig, notes)


#: Values that differ by less than this share of their size differ only by float rounding: the totals
#: of normalised values (9999.9995 ... 10000.0004 for 10,000), which a plot's axis would zoom onto.
FLAT_SPREAD = 1e-5


def one_value(values) -> float | None:
    """The one value every finite value of ``values`` has but for float rounding (they differ by at
    most :data:`FLAT_SPREAD` of it), rounded to 6 significant digits (10,000, not 9999.9995); ``None``
    when they differ more, are fewer than 2 or are all 0."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return None
    mid = float(np.median(v))
    if mid == 0 or float(np.ptp(v)) > FLAT_SPREAD * abs(mid):
        return None
    return float(f"{mid:.6g}")


def qc_notes_say_totals(metrics: pd.DataFrame) -> bool:
    """Whether the QC plots of ``metrics`` (:func:`qc_violin`, :func:`qc_scatter`) say in their note
    what the totals are: one value in every cell (the total normalised values were scaled to)."""
    return "total_counts" in metrics and one_value(metrics["total_counts"]) is not None


def _one_value_note(metrics: pd.DataFrame, col: str, values: np.ndarray, same: float) -> str:
    """The note under a QC plot for a metric with one value (:func:`one_value`): the totals of
    normalised values (un-logged, or differing only by rounding) are said to be normalised."""
    from scatd_core.preprocess import qc_metric_name

    name = qc_metric_name(col)
    note = f"{name[0].upper()}{name[1:]} is {_g(same)} in every cell"
    raw = metrics[col].to_numpy(dtype=np.float64)
    rounded = bool(np.any(raw[np.isfinite(raw)] != same))
    if col == "total_counts" and (metrics.attrs.get("unlogged") or rounded):
        return note + (" (the values are normalised to this total), so it says nothing about a cell's quality "
                       "here.")
    return note + "."


def _one_value_axis(same: float) -> dict:
    """An axis around ``same`` (±5%) with whole-number ticks where the value is large: an axis fitted to
    values equal but for rounding read "10.000001k"."""
    pad = max(abs(same) * 0.05, 1.0)
    return dict(range=[same - pad, same + pad], tickformat=",.0f" if abs(same) >= 100 else "~g",
                autorange=False)


def _with_notes(fig: go.Figure, notes: Sequence[str]) -> go.Figure:
    """``fig`` with ``notes`` kept for the page to write under it (:func:`figure_notes`)."""
    if notes:
        meta = fig.layout.meta if isinstance(fig.layout.meta, dict) else {}
        fig.update_layout(meta={**meta, "notes": list(notes)})
    return fig


def _log_ticks(values: np.ndarray) -> dict:
    """A log axis's range (the data's, 5% of it more on each side) and at least three readable ticks
    within it, whatever the span: 1 x 10^k over more than three decades, 1, 2, 5 x 10^k where they
    give three, else round numbers a round step apart (560, 580 ... 640). Only 1, 2, 5 x 10^k were
    offered: totals of 560 to 640 per cell had none in view and the QC scatter's axes read nothing."""
    v = values[np.isfinite(values) & (values > 0)]
    if v.size == 0:
        return {}
    a, b = np.log10(v.min()), np.log10(v.max())
    pad = max((b - a) * 0.05, 0.01)
    lo, hi = 10 ** (a - pad), 10 ** (b + pad)

    def inside(ticks):
        return [t for t in ticks if lo <= t <= hi]

    decades = range(int(np.floor(a - pad)), int(np.ceil(b + pad)) + 1)
    ticks, step = inside([10.0 ** k for k in decades]), None
    if len(ticks) < 3:
        ticks = inside([m * 10.0 ** k for k in decades for m in (1, 2, 5)])
    if len(ticks) < 3:  # under a decade or so: round numbers, the widest round step that gives three
        steps = (m * 10.0 ** k for k in range(decades.start - 3, decades.stop) for m in (1, 2, 2.5, 5))
        for step in sorted(steps, reverse=True):
            first = np.ceil(lo / step) * step
            ticks = inside([first + i * step for i in range(int((hi - first) / step) + 1)])
            if len(ticks) >= 3:
                break
    if step is None:
        text = [f"{t:,.0f}" if t >= 1 else f"{t:g}" for t in ticks]
    else:  # as many decimals as the step has: 1.25, 1.5 (2.5 x 10^-1), 0.02
        digits = max(0, -int(np.floor(np.log10(step) + 1e-9)) + (1 if f"{step:.1e}".startswith("2.5") else 0))
        ticks = [round(t, digits) for t in ticks]
        text = [f"{t:,.{digits}f}" for t in ticks]
    return {"tickvals": ticks, "ticktext": text, "range": [a - pad, b + pad], "autorange": False}


def _count_axis(values: np.ndarray, title: str, signed_title: str) -> dict:
    """A log axis when every value is positive; linear otherwise, so that no cell is left off the plot
    (z-scored data sum to negative values, empty cells to 0, and a log axis drops both)."""
    v = values[np.isfinite(values)]
    if v.size and (v > 0).all():
        return dict(title=title, type="log", **_log_ticks(v))
    return dict(title=signed_title if v.size and (v < 0).any() else title, type="linear")


def qc_scatter(metrics: pd.DataFrame, passed: np.ndarray | None = None, title: str | None = None) -> go.Figure:
    """Total counts vs genes detected, coloured by mitochondrial share, filtered cells marked. A metric
    with one value in every cell but for rounding (the totals of normalised values) is drawn at that
    value on a linear axis around it, and said under the plot (as :func:`qc_violin` does)."""
    x = metrics["total_counts"].to_numpy(dtype=np.float64, copy=True)  # (copies: one value may be set below)
    y = metrics["n_genes_by_counts"].to_numpy(dtype=np.float64, copy=True)
    notes, axes = [], []
    for col, values in (("total_counts", x), ("n_genes_by_counts", y)):
        same = one_value(values)
        if same is not None:
            values[np.isfinite(values)] = same
            notes.append(_one_value_note(metrics, col, values, same))
        axes.append(same)
    mt = metrics["pct_counts_mt"].to_numpy(dtype=np.float64) if "pct_counts_mt" in metrics else None
    Trace = _scatter_trace(x.size)
    keep = np.ones(x.size, dtype=bool) if passed is None else np.asarray(passed, dtype=bool)
    has_mt = mt is not None and np.isfinite(mt).any()
    sums = "sum %{x:,.2f}" if (x[np.isfinite(x)] < 0).any() else "counts %{x:,.0f}"
    marker = dict(size=4, color=mt[keep] if has_mt else "#4c72b0", colorscale="Viridis",
                  colorbar=dict(title=dict(text="% mito", side="top"), thickness=12) if has_mt else None)
    fig = go.Figure(Trace(x=x[keep], y=y[keep], mode="markers", marker=marker, name="kept",
                          hovertemplate=sums + ", genes %{y:,}<extra></extra>"))
    if (~keep).any():
        fig.add_trace(Trace(x=x[~keep], y=y[~keep], mode="markers", name=f"filtered ({int((~keep).sum()):,})",
                            marker=dict(size=5, color=COLORS["resistant"], symbol="x"),
                            hovertemplate="filtered: " + sums + ", genes %{y:,}<extra></extra>"))
    for update, values, same, title_, signed in ((fig.update_xaxes, x, axes[0], "total counts", "sum of values"),
                                                 (fig.update_yaxes, y, axes[1], "genes detected", "genes detected")):
        if same is not None:
            update(title=title_ if same >= 0 else signed, type="linear", **_one_value_axis(same))
        else:
            update(**_count_axis(values, title_, signed))
    fig.update_layout(legend=dict(orientation="h", y=1.08))
    alt = f"Scatter plot of genes detected against total counts for {counted(x.size)}"
    if x.size:
        alt += f" (medians {_g(np.nanmedian(x))} counts, {_g(np.nanmedian(y))} genes)"
    if has_mt:
        alt += ", coloured by the share of mitochondrial counts"
    if (~keep).any():
        alt += f"; {_share((~keep).sum(), x.size)} fail the QC filter (red crosses)"
    fig = describe(layout(fig, title, height=380), alt + "." + "".join(f" {n}" for n in notes), "qc_counts_and_genes")
    return _with_notes(fig, notes)


# --------------------------------------------------------------------------------------------
# Biomarkers
# --------------------------------------------------------------------------------------------

#: The biomarker chart's legend sits under the plot, from its left edge: this far (pixels)
#: below the plot, under the x axis's ticks and two-line title, in a bottom margin this high, the
#: chart this much taller for it.
BIOMARKER_AXIS_PX, BIOMARKER_BOTTOM_PX, BIOMARKER_LEGEND_PX = 68, 125, 85


def biomarker_bar(ranking: pd.DataFrame, n: int, target_title: str, title: str | None = None, *,
                  target: str = "logit", level: str = "gene") -> go.Figure:
    """The ``n`` best features by mean |attribution|, coloured by ``direction``: what a higher
    value (expression for genes) does to the explained ``target``, P(resistant) for ``logit``
    and ``prob``, the raw resistant logit for ``raw_logit``."""
    bars = ranking.head(n).iloc[::-1]
    fig = go.Figure()
    for direction, colour in DIRECTION_COLORS.items():
        part = bars[bars["direction"] == direction]
        if part.empty:
            continue
        # in the legend even when every gene has one direction: what red (or blue) means is always said
        fig.add_trace(go.Bar(x=part["mean_abs_attribution"], y=part["feature"], orientation="h", name=DIRECTION_NAMES[direction],
                             marker_color=colour, showlegend=True,
                             # the DE score in 3 significant digits (it printed 11.938429832458496)
                             customdata=np.column_stack([part["rank"].to_numpy(dtype=object),
                                                         [_g(v) for v in part["de_score"]]]),
                             hovertemplate="%{y}: %{x:.4g}<br>rank %{customdata[0]}, DE score %{customdata[1]}"
                                           "<extra></extra>"))
    fig.update_xaxes(title=f"mean |attribution|<br>({target_title})")  # two lines: fits a phone's narrow plot
    fig.update_yaxes(categoryorder="array", categoryarray=list(bars["feature"]), automargin=True)  # whole names
    fig.update_xaxes(automargin=True)
    higher = "higher expression" if level == "gene" else "a higher feature value"
    moved = "the raw resistant logit" if target == "raw_logit" else "P(resistant)"
    # the legend under the plot, its title above its entries: at the top right it covered the best bars on a phone
    fig.update_layout(legend=dict(title=dict(text=f"{higher} pushes {moved} toward", side="top"), orientation="h",
                                  x=0, xanchor="left", yanchor="top"), barmode="overlay")
    top = ranking.head(n)
    pushes = ", ".join(f"{int((top['direction'] == d).sum()):,} toward {DIRECTION_NAMES[d]}"
                       for d in DIRECTION_COLORS if (top["direction"] == d).any())
    alt = (f"Bar chart of the top {len(top):,} {level}s by mean |attribution| ({target_title}): "
           f"{_named(top['feature'].astype(str))}. {higher.capitalize()} pushes {moved}: {pushes}.")
    height, top_margin = max(300, 22 * n) + BIOMARKER_LEGEND_PX, 50 if title else 20
    fig = layout(fig, title, height=height)
    plot_height = height - top_margin - BIOMARKER_BOTTOM_PX
    fig.update_layout(margin=dict(b=BIOMARKER_BOTTOM_PX), legend_y=-BIOMARKER_AXIS_PX / plot_height)
    return describe(fig, alt, f"top_{len(top)}_{level}s", zoom=False)


def dependence_figure(feature: str, values: np.ndarray, attributions: np.ndarray, prob: np.ndarray,
                      labels: Sequence[str], cell_ids: Sequence[str], baseline: float | None = None,
                      threshold: float | None = None) -> go.Figure:
    """One feature across the explained cells: model input vs attribution, coloured by P(resistant)
    (blue below ``threshold``, the one behind the explained cells' calls, red above it)."""
    Trace = _scatter_trace(len(values))
    fig = go.Figure(Trace(x=values, y=attributions, mode="markers",
                          marker=dict(size=5, color=prob, cmin=0, cmax=1,
                                      colorscale=prob_colorscale(0.5 if threshold is None else threshold),
                                      colorbar=prob_colorbar(threshold, thickness=12, horizontal=True)),
                          text=[f"{c} ({lab})" for c, lab in zip(cell_ids, labels)],
                          hovertemplate="%{text}<br>input %{x:.3g}, attribution %{y:.3g}<extra></extra>"))
    fig.add_hline(y=0, line_dash="dot", line_color="grey")
    if baseline is not None:
        fig.add_vline(x=float(baseline), line_dash="dot", line_color="grey", annotation_text="baseline")
    fig.update_xaxes(title=f"{feature}: model input")
    fig.update_yaxes(title=f"{feature}: attribution")
    x, a = np.asarray(values, dtype=np.float64), np.asarray(attributions, dtype=np.float64)
    alt = (f"Scatter plot of {feature}'s attribution against its model input for {counted(x.size, 'explained cell')}, "
           "coloured by P(resistant)")
    both = np.isfinite(x) & np.isfinite(a)
    if both.any():
        alt += f"; attributions from {_g(a[both].min())} to {_g(a[both].max())}"
    if both.sum() > 2 and np.ptp(x[both]) > 0 and np.ptp(a[both]) > 0:
        alt += f"; Spearman correlation of input and attribution {pd.Series(x[both]).corr(pd.Series(a[both]), method='spearman'):.2f}"
    # the colour bar under the plot, across its width: beside it, it took ~40% of a 390 px column
    fig = colorbar_below(layout(fig, None, height=490), 64)  # under the x axis and its title, its two-line title too
    return describe(fig, alt + ".", f"{feature}_dependence")


def feature_map(coords: np.ndarray, values: np.ndarray, feature: str, what: str, axis: str,
                cell_ids: Sequence[str]) -> go.Figure:
    """The explained cells on the map, coloured by one feature's attribution or model input."""
    ok = finite_rows(coords)
    v = np.asarray(values, dtype=np.float64)
    symmetric = what == "attribution"
    lim = float(np.nanmax(np.abs(v))) if symmetric and v.size and np.isfinite(v).any() else None
    Trace = _scatter_trace(int(ok.sum()))
    scale = PROB_SCALE if symmetric else "Viridis"  # an attribution of 0 in grey, not white on white
    fig = go.Figure(Trace(x=coords[ok, 0], y=coords[ok, 1], mode="markers",
                          marker=dict(size=5, color=v[ok], colorscale=scale,
                                      cmin=-lim if lim else None, cmax=lim if lim else None,
                                      colorbar=dict(title=dict(text=what, side="top"), thickness=12,
                                                    orientation="h", len=1, lenmode="fraction", x=0.5,
                                                    xanchor="center", y=-0.3, yanchor="top", ypad=0)),
                          text=np.asarray(cell_ids)[ok], hovertemplate="%{text}: %{marker.color:.3g}<extra></extra>"))
    fig.update_xaxes(title=f"{axis} 1", showticklabels=False)
    fig.update_yaxes(title=f"{axis} 2", showticklabels=False)
    where = "UMAP" if axis == "UMAP" else f"Map ({axis} 1 and 2)"
    alt = f"{where} of {counted(ok.sum(), 'explained cell')} coloured by {feature}'s {what}"
    if np.isfinite(v[ok]).any():
        alt += f", from {_g(np.nanmin(v[ok]))} to {_g(np.nanmax(v[ok]))}"
    # the colour bar under the plot, across its width, as the gene-across-cells plot's: beside it, it squeezed
    # the map in a 390 px column
    fig = colorbar_below(layout(fig, f"{feature}: {what}", height=530), 40)  # under the axis title; the map as tall
    return describe(fig, alt + ".", f"{feature}_{what}_map")


def attribution_vs_de(ranking: pd.DataFrame, positive: str, negative: str) -> go.Figure:
    """Mean |attribution| against the Wilcoxon score, for the features present in the data."""
    part = ranking[ranking["in_data"] & np.isfinite(ranking["de_score"].astype(float))]
    fig = go.Figure()
    for direction, colour in DIRECTION_COLORS.items():
        d = part[part["direction"] == direction]
        if d.empty:
            continue
        fig.add_trace(_scatter_trace(len(d))(
            x=d["de_score"], y=d["mean_abs_attribution"], mode="markers", name=DIRECTION_NAMES[direction],
            marker=dict(size=5, color=colour), text=d["feature"], showlegend=True,
            hovertemplate="%{text}<br>DE score %{x:.3g}, mean |attribution| %{y:.3g}<extra></extra>"))
    fig.update_layout(legend_title_text="direction")  # biomarkers.csv's direction, in the legends' words
    log_y = bool(len(part) and (part["mean_abs_attribution"] > 0).all())
    fig.update_xaxes(title=f"Wilcoxon score ({positive} vs {negative})")
    fig.update_yaxes(title="mean |attribution|", type="log" if log_y else "linear",
                     **(dict(dtick=1, exponentformat="power") if log_y else {}))  # 10^-3, not "1m" or "100µ"
    # the colour is biomarkers.csv's direction, the sign of the model's input gradient (where a higher value
    # pushes P(resistant)), not where the feature is higher: that is the Wilcoxon score's sign (QA: "842
    # resistant, 858 sensitive" read as counts of cells)
    pushes = ", ".join(f"toward {DIRECTION_NAMES[d]} for {int((part['direction'] == d).sum()):,}"
                       for d in DIRECTION_COLORS if (part["direction"] == d).any())
    score = part["de_score"].astype(float)
    higher = [f"{int(n):,} higher in {name} cells" for n, name in ((score.gt(0).sum(), positive),
                                                                   (score.lt(0).sum(), negative)) if n]
    alt = (f"Scatter plot of mean |attribution| against the Wilcoxon score ({positive} vs {negative}) "
           f"for {counted(len(part), 'feature')}" + (f" ({' and '.join(higher)})" if higher else "")
           + (f"; coloured by where a higher value pushes P(resistant): {pushes}" if pushes else ""))
    if len(part):
        best = part.loc[part["mean_abs_attribution"].astype(float).idxmax()]
        alt += f"; the highest attribution: {best['feature']} (DE score {_g(best['de_score'])})"
    return describe(layout(fig, None, height=420), alt + ".", "attribution_vs_de")


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------

#: Curves of at most this many values are drawn with their points marked (:func:`curve_figure`).
SHORT_CURVE = 20


def curve_figure(curves: dict[str, Sequence[float]], title: str, x_title: str, y_title: str,
                 highlight: str | None = None, mark_x: float | None = None) -> go.Figure:
    """Lines over epochs (e.g. validation AUROC per fold, or a loss); ``highlight`` drawn bold."""
    fig = go.Figure()
    for name, ys in curves.items():
        bold = name == highlight
        # a short curve with its points marked: a line of one point draws nothing (QA: 1 pretraining epoch gave
        # an empty chart)
        fig.add_trace(go.Scatter(x=list(range(1, len(ys) + 1)), y=list(ys),
                                 mode="lines+markers" if len(ys) <= SHORT_CURVE else "lines", name=name,
                                 line=dict(width=3 if bold else 1, color="black" if bold else None),
                                 marker=dict(size=9 if len(ys) == 1 else 6),
                                 opacity=1.0 if bold else 0.6))
    if mark_x is not None:
        fig.add_vline(x=mark_x, line_dash="dot", annotation_text="chosen")
    fig.update_xaxes(title=x_title)
    fig.update_yaxes(title=y_title)
    return describe(layout(fig, title, height=350), _curve_alt(curves, title, x_title, y_title, highlight, mark_x),
                    title)


def _curve_alt(curves: dict, title: str, x_title: str, y_title: str, highlight: str | None,
               mark_x: float | None) -> str:
    """:func:`curve_figure` in words: its lines, each from its first to its last value, and the
    best value (the lowest of a loss, else the highest) and where."""
    names = sorted(curves, key=lambda k: k != highlight)  # the highlighted line first
    longest = max((len(ys) for ys in curves.values()), default=0)
    alt = f"Line chart, {title}: {counted(len(curves), 'line')} of {y_title} over {counted(longest, x_title)}"
    low = "loss" in y_title.lower()
    parts = []
    for name in names[:4]:
        ys = np.asarray(curves[name], dtype=np.float64)
        if not np.isfinite(ys).any():
            continue
        best = int(np.nanargmin(ys) if low else np.nanargmax(ys))
        parts.append(f"{name} from {_g(ys[0])} to {_g(ys[-1])}, {'lowest' if low else 'highest'} {_g(ys[best])} "
                     f"at {x_title} {best + 1}")
    if longest == 1:  # a single point each: its value, and why there is no curve
        parts = [f"{name} {_g(curves[name][0])}" for name in names[:4] if len(curves[name])]
        parts.append(f"one {x_title} gives one value")
    if parts:
        alt += "; " + "; ".join(parts) + ("; and more lines" if len(names) > 4 else "")
    if mark_x is not None:
        alt += f"; {x_title} {_g(mark_x)} is marked as chosen"
    return alt + "."



# --------------------------------------------------------------------------------------------
# Panels of drug models
# --------------------------------------------------------------------------------------------

#: Cells drawn in the panel heatmap at most (a seeded subsample, stratified by group, above it).
MAX_HEATMAP_CELLS = 3000
#: The plot's width in a 390 px phone column (the page's padding and the figure's margins taken off):
#: the panel heatmap's group names are laid out to be readable there (:func:`_group_name_layout`).
NARROW_PLOT_PX = 300
#: Pixels per character of an 11 px group name (a generous average) and of one line of it.
_NAME_CHAR_PX, _NAME_LINE_PX = 6.5, 15
#: Characters of a group name written upright on the heatmap (longer ones end in "…"; the hover has it all).
MAX_UPRIGHT_NAME_CHARS = 24


def _group_name_layout(names: Sequence[str], starts: np.ndarray, ends: np.ndarray, n: int) -> tuple[bool, list[bool]]:
    """How the panel heatmap names its groups: ``(upright, named)``. Across, as before, when every name fits
    over its group at :data:`NARROW_PLOT_PX`; else written upright (a line's height each), naming a group
    only when its middle is a line's height from the last named one's there (at 390 px the names of
    narrow groups overprinted each other). Upright names are also read on wide screens."""
    px = NARROW_PLOT_PX / max(n, 1)
    if all(len(name) * _NAME_CHAR_PX + 6 <= (e - s) * px for name, s, e in zip(names, starts, ends)):
        return False, [True] * len(names)
    named, last = [], None
    for s, e in zip(starts, ends):
        middle = (s + e - 1) / 2 * px
        named.append(last is None or middle - last >= _NAME_LINE_PX)
        last = middle if named[-1] else last
    return True, named


def _short_name(name: str, limit: int = MAX_UPRIGHT_NAME_CHARS) -> str:
    return name if len(name) <= limit else name[: limit - 1].rstrip() + "…"


def _heatmap_rows(groups: np.ndarray, prob: np.ndarray, max_cells: int) -> np.ndarray:
    """Cells to draw, ordered by group (in the order given) then by mean P(resistant) within it."""
    rng = np.random.default_rng(0)
    n = len(groups)
    keep = np.arange(n) if n <= max_cells else np.sort(rng.choice(n, size=max_cells, replace=False))
    rows = prob[keep]
    scored = np.isfinite(rows)
    n_scored = scored.sum(axis=1)
    mean = np.where(scored, rows, 0.0).sum(axis=1) / np.maximum(n_scored, 1)  # (nanmean warns on all-NaN rows)
    mean = np.where(n_scored > 0, mean, -1.0)  # cells no model scored: last in their group
    return keep[np.lexsort((-mean, groups[keep]))]


def panel_heatmap(prob: np.ndarray, drugs: Sequence[str], groups: Sequence | None, group_name: str | None,
                  group_order: Sequence[str] | None = None, title: str | None = None,
                  max_cells: int = MAX_HEATMAP_CELLS, *, thresholds: Mapping[str, float]) -> go.Figure:
    """Cells x drugs heatmap of P(resistant): cells ordered by ``groups`` (cluster / sample), then by
    their mean P within each group; group boundaries marked and named. ``groups=None``: one group,
    the cells ordered by their mean P only (said so on the axis, no group in the hover). Above
    ``max_cells`` a seeded random subsample is drawn (stated under the plot).

    Each drug's row is coloured relative to the threshold its calls use (``thresholds``: drug ->
    threshold; :func:`relative_to_threshold`): blue, called sensitive; red, called resistant; light
    grey at the threshold. The hover gives the cell's P, the drug's threshold and the call. Cells a
    drug's model did not score are a darker grey (:data:`COLORS`), said under the plot."""
    prob = np.asarray(prob, dtype=np.float64)
    thr = _drug_thresholds(drugs, thresholds)
    grouped = groups is not None
    if not grouped:
        groups, group_name = np.full(prob.shape[0], "all cells", dtype=object), ""
    labels = pd.Series(np.asarray(groups, dtype=object)).astype(str).to_numpy()
    order = list(group_order) if group_order is not None else natural_order(labels)
    rank = {g: i for i, g in enumerate(order)}
    codes = np.array([rank.get(g, len(rank)) for g in labels])
    rows = _heatmap_rows(codes, prob, max_cells)
    raw = prob[rows].T  # drugs x cells
    z = relative_to_threshold(raw, thr[:, None])
    called = np.where(raw > thr[:, None], "called resistant", "called sensitive")
    shape = raw.shape
    custom = np.stack([np.broadcast_to(labels[rows], shape).astype(object), raw.astype(object),
                       np.broadcast_to(thr[:, None], shape).astype(object), called.astype(object)], axis=-1)
    where = (text_for_plotly(group_name) + " %{customdata[0]}<br>") if grouped else ""
    fig = go.Figure(go.Heatmap(z=z, y=list(drugs), x=np.arange(len(rows)), zmin=0, zmax=1, colorscale=PROB_SCALE,
                               colorbar=relative_colorbar(), customdata=custom, hoverongaps=False,
                               hovertemplate="%{y}<br>" + where + "P(resistant) %{customdata[1]:.3f}<br>"
                                             "threshold %{customdata[2]:.3g}: %{customdata[3]}<extra></extra>"))
    missing = np.isnan(raw)
    if missing.any():  # not scored: a darker grey than the threshold's, with its own hover
        fig.add_trace(go.Heatmap(z=np.where(missing, 0.0, np.nan), y=list(drugs), x=np.arange(len(rows)),
                                 colorscale=[[0, COLORS[NOT_SCORED]], [1, COLORS[NOT_SCORED]]], showscale=False,
                                 zmin=0, zmax=1, hoverongaps=False, customdata=custom,
                                 hovertemplate="%{y}<br>" + where + "not scored by this drug's model<extra></extra>"))
    drawn = codes[rows]
    starts = np.flatnonzero(np.r_[True, drawn[1:] != drawn[:-1]])
    ends = np.r_[starts[1:], len(rows)]
    names = [str(labels[rows][s]) for s in starts]
    upright, named = _group_name_layout(names, starts, ends, len(rows))
    for s, e, name, shown in zip(starts, ends, names, named):
        if s:
            fig.add_vline(x=s - 0.5, line=dict(color="#222", width=1))
        if not shown:  # too narrow to name at 390 px beside its neighbour's name: its cells' hover names it
            continue
        text = _short_name(name) if upright else name
        fig.add_annotation(x=(s + e - 1) / 2, y=1.0, yref="paper", yanchor="bottom", showarrow=False, text=text,
                           textangle=-90 if upright else 0, font=dict(size=11),  # escaped by layout
                           hovertext=name if text != name else None)
    names_px = int(max(len(_short_name(n)) for n in names) * _NAME_CHAR_PX) + 4 if upright else 0
    # short enough for a 390 px screen ("cells, ordered by their mean P(resistant) over the drugs" was cut there)
    fig.update_xaxes(title=f"cells, by {group_name}" if grouped else "cells, by mean P(resistant)",
                     showticklabels=False, showgrid=False)
    fig.update_yaxes(title="", autorange="reversed", type="category")
    notes = ["dark grey: not scored by that drug's model"] if missing.any() else []
    if len(rows) < len(labels):
        notes.append(f"showing a random {len(rows):,} of {len(labels):,} cells")
    if not all(named):
        notes.append(f"{counted(named.count(False), 'narrow group')} unnamed: hover a cell for its {group_name}")
    fig = layout(fig, title, height=max(220, 50 + 34 * len(drugs)) + COLORBAR_ROOM + names_px)
    if names_px:  # the upright names above the plot, in a top margin of their own
        fig.update_layout(margin=dict(t=int(fig.layout.margin.t) + names_px))
    if notes:  # under the axis title, in a margin of its own (at y=-0.12 a short figure drew it over the title)
        fig.add_annotation(text="; ".join(notes), showarrow=False, xref="paper", yref="paper", x=0, y=0,
                           yanchor="top", yshift=-38, font=dict(size=11, color="#666"))
    colorbar_below(fig, 66 if notes else 44)  # under the axis title and the notes
    scored = np.isfinite(prob)

    def per_drug(j: int, drug: str) -> str:
        p = prob[scored[:, j], j]
        if not len(p):
            return f"{drug} not scored (threshold {thr[j]:.3f})"
        return (f"{drug} mean {p.mean():.3f}, threshold {thr[j]:.3f}, "
                f"{100 * (p > thr[j]).mean():.1f}% of {counted(len(p))} called resistant")

    alt = (f"Heatmap of P(resistant) for {counted(len(labels))} by {counted(len(drugs), 'drug')}, the cells ordered by "
           + (f"{group_name} ({len(starts):,} groups)" if grouped else "their mean P(resistant)")
           + "; each drug's colours are relative to its own threshold: blue below it (called sensitive), red above "
             f"it (called resistant); per drug, P(resistant): {_named([per_drug(j, d) for j, d in enumerate(drugs)], sep='; ')}")
    if len(rows) < len(labels):
        alt += f"; a random {len(rows):,} of the cells are drawn"
    # one file name per grouping: the panel report's heatmaps by sample and by cluster were both
    # scatd_panel_heatmap.png, so saving the second overwrote the first
    return describe(fig, alt + ".", f"panel_heatmap_{group_name}" if grouped else "panel_heatmap")


def panel_dotplot(summary: pd.DataFrame, group_name: str, title: str | None = None, *,
                  thresholds: Mapping[str, float]) -> go.Figure:
    """Per group and drug: dot size = fraction called resistant, colour = mean P(resistant) relative to
    that drug's threshold (``thresholds``: drug -> threshold; :func:`relative_to_threshold`): red, the
    mean above the threshold its calls use, blue, below it (from :func:`scatd_core.panel.group_summary`)."""
    frac = summary["fraction_resistant"].astype(float).fillna(0.0)
    drugs = summary["drug"].astype(str)
    thr = _drug_thresholds(list(drugs), {str(k): v for k, v in thresholds.items()})
    mean = summary["mean_prob_resistant"].astype(float).to_numpy()
    fig = go.Figure(go.Scatter(
        x=drugs, y=summary["group"].astype(str), mode="markers",
        marker=dict(size=6 + 34 * frac, color=relative_to_threshold(mean, thr), cmin=0, cmax=1,
                    colorscale=PROB_SCALE, line=dict(color="#444", width=0.5),
                    colorbar=relative_colorbar("mean P(resistant): blue below, red above")),
        customdata=np.c_[summary["fraction_resistant"].astype(float).to_numpy(dtype=object),
                         [counted(n) for n in summary["n_called"]], mean.astype(object), thr.astype(object)],
        hovertemplate="%{x} · %{y}<br>%{customdata[0]:.1%} of %{customdata[1]} resistant"
                      "<br>mean P %{customdata[2]:.3f} (threshold %{customdata[3]:.3g})<extra></extra>"))
    fig.update_xaxes(title="drug (dot size: fraction called resistant)", type="category")
    fig.update_yaxes(title=group_name, type="category", autorange="reversed")
    n_groups = summary["group"].nunique()
    alt = (f"Dot plot of {counted(summary['drug'].nunique(), 'drug')} in {counted(n_groups, 'group')} by {group_name}: "
           "the dot's "
           "size is the fraction of cells called resistant, its colour the mean P(resistant) relative to each "
           "drug's threshold (blue below it, red above it); thresholds: "
           + _named([f"{d} {t:.3f}" for d, t in dict(zip(drugs, thr)).items()]))
    known = summary[summary["fraction_resistant"].astype(float).notna()]
    if len(known):
        def said(row) -> str:
            return (f"{row['group']} with {row['drug']}, {float(row['fraction_resistant']):.0%} of "
                    f"{counted(row['n_called'])}")
        order = known["fraction_resistant"].astype(float)
        alt += f"; most resistant: {said(known.loc[order.idxmax()])}; least: {said(known.loc[order.idxmin()])}"
    # the drug names under the plot at 45 degrees (Plotly turned them upright, or not, with the width; a
    # colour bar under them needs their height known): room for them, their axis title and the colour bar
    fig.update_xaxes(tickangle=-45)
    names_px = int(0.72 * 7 * min(max((len(d) for d in drugs), default=1), 30)) + 24
    fig = colorbar_below(layout(fig, title, height=max(180, 80 + 36 * n_groups) + names_px + COLORBAR_ROOM),
                         44 + names_px)
    return describe(fig, alt + ".", f"panel_dotplot_{group_name}", zoom=False)


#: What a "*" after a drug in :func:`drug_ranking_figure` means (said beside the chart).
UNCALIBRATED_MARK = ("* uncalibrated: called at the model's own threshold, so its fraction does not compare with "
                     "the other drugs'.")


def drug_ranking_figure(ranking: pd.DataFrame, title: str | None = None, *,
                        thresholds: Mapping[str, float]) -> go.Figure:
    """Fraction called resistant per drug, best (lowest) first, coloured by mean P(resistant) relative
    to the drug's threshold (``thresholds``: drug -> threshold; :func:`relative_to_threshold`), from
    :func:`scatd_core.panel.drug_ranking`; uncalibrated calls are marked."""
    names = [f"{d}{'' if c else ' *'}" for d, c in zip(ranking["drug"].astype(str), ranking["calibrated"])]
    thr = _drug_thresholds(list(ranking["drug"].astype(str)), {str(k): v for k, v in thresholds.items()})
    mean = ranking["mean_prob_resistant"].astype(float).to_numpy()
    fig = go.Figure(go.Bar(
        y=names, x=ranking["fraction_resistant"].astype(float), orientation="h",
        # the colour is the drug's mean P(resistant) against its threshold, said on its colour bar (QA: with
        # no legend, a lighter bar for a longer one read as a contradiction)
        marker=dict(color=relative_to_threshold(mean, thr), cmin=0, cmax=1, colorscale=PROB_SCALE,
                    showscale=True, colorbar=relative_colorbar("mean P(resistant): blue below, red above")),
        text=[f"{f:.0%}" if f == f else "n/a" for f in ranking["fraction_resistant"].astype(float)],
        textposition="outside", customdata=np.c_[mean, thr],
        hovertemplate="%{y}: %{x:.1%} resistant, mean P %{customdata[0]:.3f} (threshold %{customdata[1]:.3g})"
                      "<extra></extra>"))
    # short enough for a half-width chart (the Drug panel page); what "*" means is in its caption
    # (UNCALIBRATED_MARK) and in the report's note above the chart
    note = "" if ranking["calibrated"].all() else " (* uncalibrated)"
    fig.update_xaxes(title=f"fraction called resistant{note}", range=[0, 1.1], tickformat=".0%")
    fig.update_yaxes(autorange="reversed", type="category")
    fig = layout(fig, wrap_title(title), height=max(180, 90 + 34 * len(ranking)) + COLORBAR_ROOM)
    if title and "<br>" in fig.layout.title.text:
        fig.update_layout(margin=dict(t=70))  # room for the title's second line
    colorbar_below(fig, 60)  # under the x axis's labels and title
    said = [f"{d} {f:.0%}" if f == f else f"{d} n/a" for d, f in
            zip(ranking["drug"].astype(str), ranking["fraction_resistant"].astype(float))]
    said = [t + ("" if c else " (uncalibrated)") for t, c in zip(said, ranking["calibrated"])]
    alt = (f"{title + ': b' if title else 'B'}ar chart of the fraction of cells called resistant per drug, "
           f"lowest first: {_named(said)}.")
    return describe(fig, alt, f"drug_ranking_{title or ''}", zoom=False)


def wrap_title(title: str | None, width: int = 42) -> str | None:
    """``title`` in lines of at most ``width`` characters (words kept whole), joined by ``<br>``:
    a half-width chart at 1280 px cut a long title mid-word ("... per drug, uncalib")."""
    import textwrap

    if not title or len(title) <= width:
        return title
    return "<br>".join(textwrap.wrap(title, width, break_long_words=False, break_on_hyphens=False))


#: Characters per line of the model card chart's row labels (:func:`card_figure`).
CARD_LABEL_WIDTH = 24


def card_figure(card: dict, title: str | None = "AUROC of the model and the baselines (95% bootstrap CI)") -> go.Figure:
    """A model card's AUROCs with their bootstrap intervals: one panel per evaluation (bulk
    cross-validation, target cells), titled once, its models by their short names on the rows
    (:func:`scatd_core.card.short_model_names`; the settings are said beside the chart), this model
    in black, one AUROC scale for all."""
    from plotly.subplots import make_subplots

    from scatd_core.card import short_model_names

    panels = []  # (evaluation title, [(label, auroc, plus, minus, mine)])
    for ev in card.get("evaluations", []):
        short = short_model_names(ev)
        rows_ev = []
        for r in ev["scores"]:
            if r["auroc"] is None:
                continue
            lo, hi = r["auroc_ci"]
            # QA: the evaluation and the model's whole name on every row took 3-5 lines each; now the evaluation
            # is the panel's title and the model its short name (wrapped for a phone)
            rows_ev.append((wrap_title(short[r["model"]], CARD_LABEL_WIDTH), r["auroc"], hi - r["auroc"],
                            r["auroc"] - lo, r["model"] == "this model"))
        if rows_ev:
            panels.append((wrap_title(str(ev["title"]), 40), rows_ev))
    rows = [r for _, rows_ev in panels for r in rows_ev]
    lines = [max(r[0].count("<br>") + 1 for r in rows_ev) for _, rows_ev in panels]
    row_px = [(15 * n + 15) * len(rows_ev) + 10 for n, (_, rows_ev) in zip(lines, panels)]
    gap = 40 + 14 * max([t.count("<br>") for t, _ in panels], default=0)  # room for the next panel's title
    if panels:
        fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, row_heights=row_px,
                            vertical_spacing=min(gap / max(sum(row_px) + gap * (len(panels) - 1), 1), 0.5),
                            subplot_titles=[t for t, _ in panels])
    else:
        fig = go.Figure()
    shown = set()
    for k, (_, rows_ev) in enumerate(panels, start=1):
        for mine in (False, True):
            sel = [r for r in rows_ev if r[4] == mine]
            if not sel:
                continue
            name = "this model" if mine else "baselines"
            fig.add_trace(go.Scatter(
                x=[r[1] for r in sel], y=[r[0] for r in sel], mode="markers", name=name, legendgroup=name,
                showlegend=name not in shown,
                marker=dict(size=11 if mine else 9, color="black" if mine else "#6c8ebf"),
                error_x=dict(type="data", array=[r[2] for r in sel], arrayminus=[r[3] for r in sel], thickness=1.5),
                hovertemplate="%{y}: AUROC %{x:.3f}<extra></extra>"), row=k, col=1)
            shown.add(name)
        fig.update_yaxes(categoryorder="array", categoryarray=[r[0] for r in reversed(rows_ev)], automargin=True,
                         row=k, col=1)
        fig.add_vline(x=0.5, line=dict(color="#bbb", dash="dot"), row=k, col=1)
    for note in fig.layout.annotations:  # the panels' titles: left, over their rows' labels
        note.update(x=0, xanchor="left", align="left", font=dict(size=13, color=FONT_COLOR))
    lowest = min([r[1] - r[3] for r in rows], default=0.3)  # a model ranking the wrong way round stays in view
    fig.update_xaxes(range=[min(0.3, max(0.0, lowest - 0.05)), 1.0], nticks=5, automargin=True)
    fig.update_xaxes(title="AUROC", row=max(len(panels), 1), col=1)
    said = []
    for ev in card.get("evaluations", []):
        scores = [f"{r['model']} {r['auroc']:.2f} ({r['auroc_ci'][0]:.2f} to {r['auroc_ci'][1]:.2f})"
                  for r in ev["scores"] if r["auroc"] is not None]
        if scores:
            said.append(f"{ev['title']}: " + ", ".join(scores))
    alt = ("AUROC of the model and the baselines with 95% bootstrap intervals (0.5 is chance). "
           + ("; ".join(said) if said else "No AUROC to show") + ".")
    title = wrap_title(title, 36)
    fig = layout(fig, title, height=150 + (sum(row_px) or 40) + gap * max(len(panels) - 1, 0))
    # the legend under the plot, not beside it (at 390 px it took a third of the width); the title's lines
    first = 18 * (panels[0][0].count("<br>") + 1) + 6 if panels else 0  # the first panel's title, under the chart's
    fig.update_layout(legend=dict(orientation="h", x=0, xanchor="left", yref="container", y=0, yanchor="bottom"),
                      margin=dict(b=80, t=(30 + 22 * (title.count("<br>") + 1) if title else 20) + first),
                      height=fig.layout.height + first)
    return describe(fig, alt, "model_card_auroc", zoom=False)
