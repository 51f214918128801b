"""UMAP and Leiden clusters: fields set, non-finite rows left out and counted, seeded."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scatd_core import embed, pl
from scatd_core.errors import InputError

N_EPOCHS = 30  # enough to place points; keeps these tests quick


def _latent_data(n=240, seed=0, nan_rows=(0, 7, 13)):
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0] * 6, [6.0] * 6, [-6.0, 6.0, -6.0, 6.0, -6.0, 6.0]])
    group = np.arange(n) % 3
    latent = centres[group] + rng.normal(scale=0.5, size=(n, 6))
    latent[list(nan_rows)] = np.nan
    counts = rng.poisson(2.0, size=(n, 50)).astype(np.float32)
    counts[:, group[0]::3] += 5 * (group[:, None] == 0)
    adata = ad.AnnData(sp.csr_matrix(counts), obs=pd.DataFrame({"group": group.astype(str)},
                                                                index=[f"c{i}" for i in range(n)]))
    adata.obsm["X_scatd"] = latent.astype(np.float32)
    return adata


def test_embed_sets_fields_and_leaves_out_non_finite_rows():
    adata = _latent_data()
    assert embed.embed(adata, n_epochs=N_EPOCHS) is None
    coords = adata.obsm["X_umap"]
    assert coords.shape == (adata.n_obs, 2)
    bad = [0, 7, 13]
    assert np.isnan(coords[bad]).all() and np.isfinite(np.delete(coords, bad, axis=0)).all()
    clusters = adata.obs["scatd_cluster"]
    assert (clusters.iloc[bad] == embed.NOT_EMBEDDED).all()
    info = adata.uns["scatd_embed"]
    assert info["n_excluded"] == 3 and info["n_embedded"] == adata.n_obs - 3
    # three well separated groups are recovered as (mostly) pure clusters
    kept = np.delete(np.arange(adata.n_obs), bad)
    table = pd.crosstab(clusters.iloc[kept].astype(str), adata.obs["group"].iloc[kept])
    assert (table.max(axis=1) / table.sum(axis=1)).min() > 0.95
    assert clusters.cat.categories[0] == "1"


def test_embed_is_seeded():
    a, b = _latent_data(), _latent_data()
    embed.embed(a, n_epochs=N_EPOCHS, seed=3)
    embed.embed(b, n_epochs=N_EPOCHS, seed=3)
    assert np.allclose(a.obsm["X_umap"], b.obsm["X_umap"], equal_nan=True)
    assert list(a.obs["scatd_cluster"]) == list(b.obs["scatd_cluster"])


def test_expression_basis_places_every_cell_and_clusters_on_the_latent():
    adata = _latent_data()
    out = embed.embed(adata, basis="expression", n_epochs=N_EPOCHS, copy=True)
    assert "X_umap" not in adata.obsm  # copy=True leaves the input alone
    assert np.isfinite(out.obsm["X_umap"]).all()  # expression exists for every cell
    assert (out.obs["scatd_cluster"].iloc[[0, 7, 13]] == embed.NOT_EMBEDDED).all()
    assert out.uns["scatd_embed"]["basis"] == "expression" and "most variable genes" in out.uns["scatd_embed"]["input"]


def test_missing_latent_says_what_to_run():
    adata = ad.AnnData(np.ones((10, 3), dtype=np.float32))
    with pytest.raises(InputError, match="X_scatd") as err:
        embed.embed(adata)
    assert "predict" in err.value.hint


def test_too_few_finite_cells_is_a_clear_error():
    adata = _latent_data(n=12, nan_rows=range(9))
    with pytest.raises(InputError, match="Only 3 of 12 cells"):
        embed.embed(adata, n_epochs=N_EPOCHS)


def test_infinite_values_are_left_out_too():
    adata = _latent_data(nan_rows=())
    adata.obsm["X_scatd"][5, 2] = np.inf
    emb = embed.compute_embedding(adata, n_epochs=N_EPOCHS, clusters=False)
    assert emb.info["n_excluded"] == 1 and np.isnan(emb.coords[5]).all() and emb.clusters is None


def test_leiden_clusters_are_ordered_by_size():
    graph = sp.block_diag([np.ones((6, 6)), np.ones((3, 3))]).tocsr()
    graph.setdiag(0)
    labels = embed.leiden_clusters(graph, seed=0)
    assert list(labels[:6]) == [0] * 6 and list(labels[6:]) == [1] * 3


def test_large_data_fit_on_a_subsample_and_the_rest_transformed(monkeypatch):
    adata = _latent_data(n=300, nan_rows=(4,))
    monkeypatch.setattr(embed, "UMAP_FIT_MAX_CELLS", 120)
    embed.embed(adata, n_epochs=N_EPOCHS, seed=1)
    info = adata.uns["scatd_embed"]
    fit = info["fit"]
    assert fit["subsampled"] and fit["n_fitted"] == 120 and fit["n_transformed"] == 299 - 120
    assert "subsample" in fit["statement"] and "subsample" in info["cluster_method"]
    coords = adata.obsm["X_umap"]
    assert np.isnan(coords[4]).all() and np.isfinite(np.delete(coords, 4, axis=0)).all()
    kept = np.delete(np.arange(adata.n_obs), 4)
    table = pd.crosstab(adata.obs["scatd_cluster"].iloc[kept].astype(str), adata.obs["group"].iloc[kept])
    assert (table.max(axis=1) / table.sum(axis=1)).min() > 0.95  # transformed cells join the right clusters
    note = embed.fit_note(info)
    assert "120 of 299" in note
    from scatd_core import pl

    fig = pl.umap_figure(coords, adata.obs["group"], name="group", note=note)
    assert any(note in a.text for a in fig.layout.annotations)
    # QA: on 100,000 cells the caption under the Cells page's plot said "UMAP of 100,000 cells" only
    caption = embed.umap_caption(info)
    assert caption.startswith("UMAP of 299 cells (") and "Leiden clusters" in caption
    assert "fitted on a random 120 of them, the other 179 placed into that layout" in caption


def test_wide_inputs_are_reduced_to_principal_components():
    rng = np.random.default_rng(0)
    group = np.arange(200) % 2
    latent = rng.normal(size=(200, 80)) + 5 * group[:, None]
    adata = ad.AnnData(np.zeros((200, 1), dtype=np.float32), obsm={"X_scatd": latent.astype(np.float32)})
    embed.embed(adata, n_epochs=N_EPOCHS)
    info = adata.uns["scatd_embed"]
    assert f"{embed.PCA_COMPONENTS} principal components" in info["input"] and not info["fit"]["subsampled"]
    assert "fitted on" not in embed.umap_caption(info) and "UMAP of 200 cells" in embed.umap_caption(info)
    assert pd.crosstab(adata.obs["scatd_cluster"], group).gt(0).sum(axis=1).eq(1).all()


def test_principal_components_are_exact_pca():
    """The latent space's PCs are scikit-learn's exact PCA (full SVD), signs included; the
    randomised solver used before differed from it in its trailing components."""
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(3)
    # a flat tail of variances, like a model's latent space: where randomised SVD goes astray
    x = rng.normal(size=(1500, 120)) * np.r_[np.linspace(8, 2, 20), np.full(100, 1.0)] + 3.0
    pcs, k = embed.principal_components(x.astype(np.float32))
    ref = PCA(n_components=embed.PCA_COMPONENTS, svd_solver="full").fit_transform(x.astype(np.float32).astype(np.float64))
    assert k == embed.PCA_COMPONENTS and pcs.dtype == np.float32
    np.testing.assert_allclose(pcs, ref, atol=1e-4 * np.abs(ref).max())
    narrow, none = embed.principal_components(x[:, :30])
    assert none is None and narrow.shape == (1500, 30)


def test_names_from_the_data_are_text_in_figures():
    """Plotly renders <a href>, <b> ... in legends, ticks, hovers and titles: a category, cell id or
    column name holding them is shown as typed, and the figures' own line breaks still work."""
    coords = np.random.default_rng(0).normal(size=(40, 2))
    link = "<a href='https://evil.example'>click</a>"
    fig = pl.umap_figure(coords, pd.Series([link] * 20 + ["ok"] * 20), name="<b>column</b>",
                         cell_ids=[f"<i>cell{i}" for i in range(40)])
    shown = [t.name for t in fig.data] + [str(v) for t in fig.data for v in t.text]
    assert any("evil.example" in s for s in shown) and not [s for s in shown if "<a" in s or "<i>" in s]
    assert all("<br>" in t.hovertemplate for t in fig.data)  # the hover's own line break is kept
    summary = pd.DataFrame({"drug": ["D<b>1</b>", "D2"], "group": [link, "g2"], "fraction_resistant": [0.5, 0.2],
                            "n_called": [10, 10], "mean_prob_resistant": [0.4, 0.3]})
    dots = pl.panel_dotplot(summary, group_name="<a href='x'>g</a>", thresholds={"D<b>1</b>": 0.5, "D2": 0.5})
    texts = [str(v) for v in dots.data[0].x] + [str(v) for v in dots.data[0].y] + [dots.layout.yaxis.title.text]
    assert not [s for s in texts if "<a" in s or "<b>" in s]


def _as_plotly_shows(text: str) -> str:
    """What Plotly draws for ``text``: its entities decoded (plotly.js svg_text_utils.convertEntities)."""
    import html
    import re

    named = {"mu": "\u03bc", "amp": "&", "lt": "<", "gt": ">", "nbsp": "\xa0", "times": "\xd7", "plusmn": "\xb1",
             "deg": "\xb0"}
    return re.sub(r"&(#\d+|#x[\da-fA-F]+|[a-z]+);",
                  lambda m: html.unescape(m[0]) if m[1][0] == "#" else named.get(m[1], m[0]), text)


def test_names_with_ampersands_and_angle_brackets_show_as_typed():
    """QA: names were escaped for "<" but not "&", and Plotly decodes entities: a gene "A&amp;B" showed
    as "A&B", "x&lt;y" as "x<y"; html.escape's "&quot;" in a hover showed as such."""
    import json

    names = ["A&B", "A&amp;B", "x&lt;y", "<b>x</b>", "a > b"]
    ranking = pd.DataFrame({"feature": names, "mean_abs_attribution": [0.5, 0.4, 0.3, 0.2, 0.1],
                            "direction": ["resistance"] * 5, "rank": [1, 2, 3, 4, 5], "de_score": [1.0] * 5})
    fig = json.loads(pl.biomarker_bar(ranking, 5, "P(resistant)", title="Top of A&amp;B").to_json())
    assert sorted(_as_plotly_shows(y) for t in fig["data"] for y in t["y"]) == sorted(names)  # ticks, hovers
    assert sorted(map(_as_plotly_shows, fig["layout"]["yaxis"]["categoryarray"])) == sorted(names)
    assert _as_plotly_shows(fig["layout"]["title"]["text"]) == "Top of A&amp;B"
    coords = np.random.default_rng(0).normal(size=(4, 2))
    umap = json.loads(pl.umap_figure(coords, ["A&amp;B", "say \"hi\"", "A&amp;B", "x"], name='R&D "col" %{x}',
                                     categorical=True, title="A&amp;B").to_json())
    assert _as_plotly_shows(umap["layout"]["title"]["text"]) == "A&amp;B"
    assert {_as_plotly_shows(t["name"]) for t in umap["data"]} == {"A&amp;B (2)", 'say "hi" (1)', "x (1)"}
    hover = next(t["hovertemplate"] for t in umap["data"] if t["name"] == "x (1)")
    assert _as_plotly_shows(hover) == '%{text}<br>R&D "col" %{x}: x<extra></extra>'
    assert "%{x}" not in hover  # the name's "%{x}" is text, never a template field


def test_clusters_are_the_same_whichever_space_the_umap_is_drawn_in():
    """Leiden runs on the latent space's whole neighbour graph in both bases: the clusters (their
    colours, the per-cluster table, leiden_cluster in every download) do not change when the user
    switches the Cells page's Space control. QA: the latent basis clustered the graph the layout had
    pruned (which depends on the number of epochs), ARI 0.69 between the two views."""
    rng = np.random.default_rng(4)
    n = 600
    centres = rng.normal(scale=1.5, size=(8, 6))  # overlapping groups: weak edges matter
    latent = centres[np.arange(n) % 8] + rng.normal(size=(n, 6))
    counts = rng.poisson(2.0, size=(n, 50)).astype(np.float32)
    adata = ad.AnnData(sp.csr_matrix(counts), obs=pd.DataFrame(index=[f"c{i}" for i in range(n)]))
    adata.obsm["X_scatd"] = latent.astype(np.float32)
    by_latent = embed.compute_embedding(adata, basis="latent", n_epochs=N_EPOCHS, seed=0)
    by_expression = embed.compute_embedding(adata, basis="expression", n_epochs=N_EPOCHS, seed=0)
    assert list(by_latent.clusters) == list(by_expression.clusters)
    assert by_latent.info["n_clusters"] > 2


def test_too_few_cells_for_a_umap_says_so():
    adata = _latent_data(n=3, nan_rows=())
    with pytest.raises(InputError, match="The data hold 3 cell"):
        embed.embed(adata, n_epochs=N_EPOCHS)


def test_too_few_cells_is_said_cheaply_before_any_layout():
    """The report and the pages ask on every run whether a UMAP can be computed at all: the
    words compute_embedding refuses with, from a count of finite latent rows that stops as soon
    as there are enough."""
    assert embed.too_few_cells(_latent_data(n=4, nan_rows=())) == (
        "The data hold 4 cells; a UMAP and clusters need at least 5.")
    few = _latent_data(n=12, nan_rows=range(9))
    assert embed.too_few_cells(few).startswith("Only 3 of 12 cells were scored")
    assert embed.too_few_cells(_latent_data(n=12, nan_rows=range(11))).startswith("Only 1 of 12 cells was scored")
    assert embed.too_few_cells(few, basis="expression") is None  # expression places every cell
    assert embed.not_computed_note(few).endswith(embed.NOT_NEEDED)
    late = _latent_data(n=5000, nan_rows=range(4096))  # the finite rows come after the first block
    assert embed.too_few_cells(late) is None and embed.not_computed_note(late) is None


def test_the_datas_own_umap_is_kept_aside_never_overwritten_and_comes_back_when_scatds_goes():
    """QA: scATD's UMAP replaced the data's own obsm['X_umap'] without a word, and clearing a
    prediction deleted a UMAP scATD never made. The data's own is kept as obsm['X_umap_original']
    (said in the prediction's notes); a second UMAP of scATD's never moves there; removing
    scATD's puts the data's back."""
    from scatd_core.predict import clear

    adata = _latent_data()
    theirs = np.random.default_rng(1).normal(size=(adata.n_obs, 2))
    adata.obsm["X_umap"] = theirs.copy()
    clear(adata, derived_only=True)  # what a new prediction does: the data's own UMAP is not scATD's to remove
    assert np.array_equal(adata.obsm["X_umap"], theirs)
    adata.uns["scatd"] = {"notes": ["values un-logged"]}  # a prediction's record, with a note of its own
    embed.embed(adata, n_epochs=N_EPOCHS, clusters=False)
    note = embed.original_umap_note("X_umap_original")
    assert np.array_equal(adata.obsm["X_umap_original"], theirs) and not np.allclose(adata.obsm["X_umap"], theirs)
    assert adata.uns["scatd_embed"]["original_umap"] == "X_umap_original"
    assert list(adata.uns["scatd"]["notes"]) == ["values un-logged", note]
    ours = adata.obsm["X_umap"].copy()
    embed.embed(adata, basis="expression", n_epochs=N_EPOCHS, clusters=False)  # scATD's again, another space
    assert np.array_equal(adata.obsm["X_umap_original"], theirs) and set(adata.obsm) == {"X_scatd", "X_umap",
                                                                                         "X_umap_original"}
    assert not np.allclose(adata.obsm["X_umap"], ours, equal_nan=True)
    assert adata.uns["scatd_embed"]["original_umap"] == "X_umap_original"
    assert list(adata.uns["scatd"]["notes"]) == ["values un-logged", note]  # said once
    clear(adata, derived_only=True)
    assert np.array_equal(adata.obsm["X_umap"], theirs) and "X_umap_original" not in adata.obsm
    assert "scatd_embed" not in adata.uns and list(adata.uns["scatd"]["notes"]) == ["values un-logged"]


def test_a_count_of_drugs_resisted_is_drawn_as_whole_numbers_not_a_colour_bar():
    """QA: the Panel UMAP's "number of drugs resisted" had a colour bar reading 0, 0.5, 1 ...;
    one colour per count (0..n, light to dark red) and grey for cells no drug scored."""
    coords = np.random.default_rng(0).normal(size=(12, 2))
    counts = np.array([0, 0, 1, 1, 1, 2, 2, 3, 3, 3, np.nan, np.nan])
    fig = pl.count_umap_figure(coords, counts, 3, name="drugs resisted")
    listed = sorted(fig.data, key=lambda t: t.legendrank)  # the legend's order (the largest drawn first)
    assert [t.name for t in listed] == ["0 (2)", "1 (3)", "2 (2)", "3 (3)", f"{pl.NO_COUNT} (2)"]
    assert not any(getattr(t.marker, "colorbar", None) and t.marker.colorbar.title.text for t in fig.data)
    colours = [t.marker.color for t in listed]
    assert len(set(colours)) == 5 and colours[-1] == pl.COLORS[pl.NOT_SCORED]
    assert fig.layout.legend.title.text == "drugs resisted"


def test_the_confusion_matrix_is_grey_never_the_sensitive_blue():
    """QA: the confusion matrix's darkest blue was 'called resistant' while blue means sensitive."""
    fig = pl.confusion_figure(np.array([[5, 1], [2, 7]]))
    scale = [c for _, c in fig.data[0].colorscale]
    assert all(len({c[1:3], c[3:5], c[5:7]}) == 1 for c in scale)  # greys only


def test_the_confusion_matrix_lists_resistant_first():
    """QA: the confusion matrix listed sensitive first (top row, left column) while every other figure
    and table lists resistant first. Rows and columns are now resistant, then sensitive, and each count
    stays in its cell (given as sklearn's [[tn, fp], [fn, tp]])."""
    fig = pl.confusion_figure(np.array([[5, 1], [2, 7]]), "resistant", "sensitive")
    heat = fig.data[0]
    assert list(heat.x) == ["called resistant", "called sensitive"]
    assert list(heat.y) == ["true resistant", "true sensitive"]
    assert np.asarray(heat.z).tolist() == [[7, 2], [1, 5]]  # tp, fn / fp, tn
    assert np.asarray(heat.text).tolist() == np.asarray(heat.z).tolist()
    assert fig.layout.yaxis.autorange == "reversed"  # the first row (true resistant) drawn on top


def test_a_category_order_is_written_as_its_categories_are():
    """QA: a gene named '<img src=x ...>' was escaped on its bar but not in the axis's category order,
    so Plotly drew an empty row at its rank and its bar again above the best gene: the chart's top
    genes were wrong. The order list is escaped as the bars are: each gene once, in rank order."""
    ranking = pd.DataFrame({"feature": ["VIM", "<b>X", "SOX2"], "mean_abs_attribution": [0.3, 0.2, 0.1],
                            "direction": ["resistance"] * 3, "rank": [1, 2, 3], "de_score": [1.0, 1.0, 1.0]})
    fig = pl.biomarker_bar(ranking, 3, "P(resistant)")
    order = list(fig.layout.yaxis.categoryarray)
    assert order == ["SOX2", "&lt;b>X", "VIM"]  # the best gene on top, each name as drawn on its bar
    assert set(order) == {str(y) for t in fig.data for y in t.y}


# ---------------------------------------------------------------- colours and text of the figures

def _rgb(colour: str) -> np.ndarray:
    """A plotly colour ('#rrggbb' or 'rgb(r, g, b)') as 0..1 floats."""
    if colour.startswith("#"):
        return np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)]) / 255
    return np.array([float(v) for v in colour[colour.index("(") + 1:-1].split(",")[:3]]) / 255


def _luminance(colour: str) -> float:
    c = _rgb(colour)
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return float(lin @ [0.2126, 0.7152, 0.0722])


def _contrast_on_white(colour: str) -> float:
    return 1.05 / (_luminance(colour) + 0.05)  # WCAG 2 contrast ratio against #ffffff


def _scale_colour(scale, at: float) -> str:
    from plotly.colors import sample_colorscale

    return sample_colorscale([[float(p), c] for p, c in scale], [at])[0]


def test_p_resistant_turns_from_blue_to_red_at_the_threshold_in_use():
    """QA: P(resistant) was drawn with RdBu_r from 0 to 1 (white at 0.5) whatever the threshold, so at a
    calibrated 0.72 cells called sensitive were orange and red, and cells near 0.5 white on white.
    Now blue below the threshold, red above, a visible grey at it, and the colour bar marks it."""
    coords = np.random.default_rng(0).normal(size=(40, 2))
    prob = np.linspace(0.0, 1.0, 40)
    figures = {"UMAP": pl.umap_figure(coords, prob, name="P(resistant)", color_range=(0, 1), threshold=0.72),
               "one gene": pl.dependence_figure("VIM", prob, prob, prob, ["x"] * 40, [str(i) for i in range(40)],
                                                threshold=0.72)}
    for where, fig in figures.items():
        marker = [t for t in fig.data if t.marker.colorscale][0].marker
        assert (marker.cmin, marker.cmax) == (0, 1), where
        below, at, above = (_rgb(_scale_colour(marker.colorscale, v)) for v in (0.65, 0.72, 0.8))
        assert below[2] > below[0] and above[0] > above[2], where  # 0.65 is blue (sensitive), 0.8 red
        assert np.ptp(at) < 0.02 and _contrast_on_white(_scale_colour(marker.colorscale, 0.72)) > 1.5, where
        bar = marker.colorbar
        assert 0.72 in bar.tickvals and bar.ticktext[list(bar.tickvals).index(0.72)] == "threshold 0.72", where
        assert "red: called resistant" in bar.title.text and "blue: called sensitive" in bar.title.text, where


def test_the_gene_across_cells_plot_has_its_colour_bar_under_the_plot():
    """QA: at 390 px the one-gene plot's vertical colour bar (three-line title) took ~40% of the
    width; as the panel's figures, it lies under the plot, across its width, and no tick label
    stands next to the threshold's."""
    prob = np.linspace(0.0, 1.0, 40)
    for threshold in (0.728, 0.9, 0.5):
        fig = pl.dependence_figure("VIM", prob, prob, prob, ["x"] * 40, [str(i) for i in range(40)],
                                   threshold=threshold)
        bar = fig.data[0].marker.colorbar
        assert bar.orientation == "h" and bar.len == 1 and bar.lenmode == "fraction" and bar.y < 0, bar
        assert fig.layout.margin.b >= pl.COLORBAR_ROOM and fig.layout.margin.r <= 20  # room below, none beside
        vals = list(bar.tickvals)
        said = bar.ticktext[vals.index(threshold)]
        assert said.split("<br>")[-1] == f"threshold {threshold:g}"
        # beside no other label: those near it ("1" at 0.9) are on the line above (tests/test_pl_axes.py)
        assert all(abs(v - threshold) >= 0.2 for v in vals if v != threshold and "<br>" not in said), vals
        assert "red: called resistant, blue: called sensitive" in bar.title.text


def test_the_gene_map_has_its_colour_bar_under_the_plot():
    """QA: at 390 px the Biomarkers page's gene map kept a vertical colour bar beside it, which squeezed
    the map; as the gene-across-cells plot's, it lies under the plot, across its width."""
    coords = np.random.default_rng(0).normal(size=(40, 2))
    values = np.linspace(-1.0, 1.0, 40)
    for what in ("attribution", "model input"):
        fig = pl.feature_map(coords, values, "VIM", what, "UMAP", [str(i) for i in range(40)])
        bar = fig.data[0].marker.colorbar
        assert bar.orientation == "h" and bar.len == 1 and bar.lenmode == "fraction" and bar.y < 0, what
        assert fig.layout.margin.b >= pl.COLORBAR_ROOM and fig.layout.margin.r <= 20, what  # room below, none beside
        assert bar.title.text == what


def test_the_reports_umap_of_p_resistant_marks_the_threshold_of_its_calls(monkeypatch):
    from scatd_core import export
    from scatd_core._keys import result_keys

    n = 30
    adata = ad.AnnData(np.zeros((n, 1), dtype=np.float32), obs=pd.DataFrame(index=[f"c{i}" for i in range(n)]))
    keys = result_keys(None)
    adata.obs[keys.prob] = np.linspace(0, 1, n)
    adata.obs[keys.label] = pd.Categorical(np.where(adata.obs[keys.prob] > 0.72, "resistant", "sensitive"))
    adata.obsm["X_umap"] = np.random.default_rng(0).normal(size=(n, 2))
    drawn = []
    monkeypatch.setattr(export, "_figure_html", lambda fig: drawn.append(fig) or "")
    export._prediction_figures(adata, keys, {"threshold": {"value": 0.72, "calibrated": True}})
    umap = [f for f in drawn if "P(resistant)" in (f.layout.title.text or "") and "UMAP" in f.layout.title.text][0]
    assert "threshold 0.72" in umap.data[0].marker.colorbar.ticktext


def test_the_histogram_of_p_resistant_is_blue_below_the_threshold_and_red_above():
    """QA: every bar was blue (#6c8ebf) while blue means sensitive in every other figure. The cells
    called sensitive (P <= threshold) are stacked in blue, those called resistant in red; a bin the
    threshold cuts holds both, each bin's height is still all of its cells."""
    p = np.array([0.10, 0.30, 0.721, 0.722, 0.728, 0.729, 0.90, 0.95, 1.0])
    fig = pl.probability_histogram(p, 0.725)
    colours = {t.marker.color for t in fig.data}
    assert colours == {pl.COLORS["sensitive"], pl.COLORS["resistant"]}
    sensitive, resistant = ([t for t in fig.data if t.marker.color == pl.COLORS[c]][0] for c in ("sensitive", "resistant"))
    assert fig.layout.barmode == "stack" and sum(sensitive.y) == 4 and sum(resistant.y) == 5
    cut = int(np.argmin(np.abs(np.asarray(sensitive.x) - 0.73)))  # the bin [0.72, 0.74)
    assert sensitive.y[cut] == 2 and resistant.y[cut] == 2  # split by the cells' calls
    assert not any(np.asarray(resistant.y)[np.asarray(resistant.x) < 0.72]) and not any(
        np.asarray(sensitive.y)[np.asarray(sensitive.x) > 0.74])
    assert fig.layout.shapes[0].x0 == 0.725  # the threshold line is kept
    assert "called resistant (P > 0.725)" in {t.name for t in fig.data}


def _cvd(colour: str, kind: str) -> np.ndarray:
    """``colour`` in CIELAB as a reader with ``kind`` sees it (Machado et al. 2009, severity 1)."""
    m = {"protanopia": [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216],
                        [-0.003882, -0.048116, 1.051998]],
         "deuteranopia": [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413],
                          [-0.011820, 0.042940, 0.968881]]}[kind]
    c = _rgb(colour)
    lin = np.clip(np.asarray(m) @ np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4), 0, 1)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ lin
    t = xyz / [0.95047, 1.0, 1.08883]
    f = np.where(t > 0.008856, np.cbrt(t), 7.787 * t + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_cluster_colours_stay_apart_for_red_green_colour_blind_readers():
    """QA: clusters 0 and 1 were tab10's orange and green, one colour under protanopia (ΔE 4.6).
    The first 8 categories stay clearly apart (CIELAB ΔE >= 15) under simulated protanopia and
    deuteranopia, and none takes the resistant red, the sensitive blue or a no-value grey."""
    from itertools import combinations

    colours = list(pl._palette([str(i) for i in range(8)]).values())
    assert len(set(colours)) == 8
    assert not {pl.COLORS["resistant"], pl.COLORS["sensitive"], pl.COLORS[pl.NOT_SCORED]} & set(colours)
    for kind in ("protanopia", "deuteranopia"):
        for a, b in combinations(colours, 2):
            assert np.linalg.norm(_cvd(a, kind) - _cvd(b, kind)) >= 15, (kind, a, b)
    palette = pl._palette(["resistant", "sensitive", "0"])  # responses keep their red and blue
    assert palette["resistant"] == pl.COLORS["resistant"] and palette["sensitive"] == pl.COLORS["sensitive"]


def test_figure_text_is_dark_enough_to_read_in_the_app_and_the_report():
    """QA: in the app, tick, axis and colour-bar text came out rgb(128,132,149) (Streamlit's chart
    theme rewrites the template): 3.7:1 on white, under WCAG AA's 4.5:1. The colour is set on the
    figure itself (which Streamlit keeps), on a white background."""
    coords = np.random.default_rng(0).normal(size=(20, 2))
    ranking = pd.DataFrame({"feature": ["VIM"], "mean_abs_attribution": [0.3], "direction": ["resistance"],
                            "rank": [1], "de_score": [1.0]})
    for fig in (pl.umap_figure(coords, np.linspace(0, 1, 20), name="P"),
                pl.probability_histogram(np.linspace(0, 1, 20), 0.5), pl.biomarker_bar(ranking, 1, "P(resistant)"),
                pl.panel_heatmap(np.random.default_rng(0).random((20, 2)), ["A", "B"], ["g"] * 20, "group",
                                 thresholds={"A": 0.5, "B": 0.5})):
        lay = fig.layout
        for colour in (lay.font.color, lay.xaxis.tickfont.color, lay.yaxis.tickfont.color,
                       lay.xaxis.title.font.color, lay.yaxis.title.font.color, lay.legend.font.color):
            assert colour is not None and _contrast_on_white(colour) >= 4.5
        assert lay.paper_bgcolor == "white" and lay.plot_bgcolor == "white"  # the app's dark theme too


def test_the_biomarker_chart_says_what_its_colour_means_when_every_gene_has_one_direction():
    """QA: with every gene pushing toward resistant there was one trace, and Plotly shows no legend for
    one trace: nothing said what red meant. Each direction drawn is in the legend, under its title."""
    ranking = pd.DataFrame({"feature": ["VIM", "CD44"], "mean_abs_attribution": [0.3, 0.2],
                            "direction": ["resistance"] * 2, "rank": [1, 2], "de_score": [1.0, 2.0],
                            "in_data": [True, True]})
    for fig in (pl.biomarker_bar(ranking, 2, "P(resistant)"), pl.attribution_vs_de(ranking, "resistant", "sensitive")):
        assert [t.name for t in fig.data] == ["resistant"] and fig.data[0].showlegend is True
        assert fig.layout.showlegend is not False and fig.layout.legend.title.text
    one = pl.umap_figure(np.zeros((3, 2)), ["resistant"] * 3, name="called", categorical=True)
    assert one.data[0].showlegend is True  # every cell called resistant: the legend still says so


def test_a_panel_heatmap_without_groups_says_how_its_cells_are_ordered_axis_and_hover():
    """The Drug panel page without a cluster or sample column: its axis read "cells, ordered by all
    cells" and each cell's hover "cells all cells"; no group is said where there is none."""
    prob = np.random.default_rng(0).random((30, 2))
    thresholds = {"DRUGA": 0.5, "DRUGB": 0.5}
    fig = pl.panel_heatmap(prob, ["DRUGA", "DRUGB"], None, None, thresholds=thresholds)
    # short enough for a 390 px screen (QA: "... ordered by their mean P(resistant) over the dr" was cut there)
    assert fig.layout.xaxis.title.text == "cells, by mean P(resistant)"
    assert "all cells" not in fig.data[0].hovertemplate and "P(resistant)" in fig.data[0].hovertemplate
    grouped = pl.panel_heatmap(prob, ["DRUGA", "DRUGB"], ["P1"] * 15 + ["P2"] * 15, "sample", thresholds=thresholds)
    assert grouped.layout.xaxis.title.text == "cells, by sample"
    assert "sample %{customdata[0]}" in grouped.data[0].hovertemplate


def _names_over_the_heatmap(fig, n_cells: int) -> list[tuple[float, float, str]]:
    """(middle, width along the axis, text) of each group name at the plot width of a 390 px column
    (~300 px), 11 px text: 6.5 px a character across, a 15 px line upright."""
    px = 300 / n_cells
    return [(a.x * px, (15 if a.textangle == -90 else len(a.text) * 6.5 + 6), a.text)
            for a in fig.layout.annotations if a.yref == "paper" and a.y == 1.0]


def test_the_panel_heatmaps_group_names_do_not_overprint_at_390_px_and_stay_across_when_they_fit():
    """QA: at 390 px the Drug panel heatmap's cluster names overprinted each other ("1" over "10" ...).
    Where a name does not fit over its group, the names are written upright, a line's height apart at
    least (a narrow group beside a named one unnamed, said under the plot; its cells' hover names it),
    long names shortened with the whole name in their hover; names that fit stay across, as before."""
    rng = np.random.default_rng(0)
    sizes = [300, 40, 25, 200, 10, 10, 80, 150, 60, 5, 120, 30]
    groups = sum(([f"{i}" for _ in range(k)] for i, k in enumerate(sizes)), [])
    thresholds = {"DRUGA": 0.5, "DRUGB": 0.5}
    fig = pl.panel_heatmap(rng.random((len(groups), 2)), list(thresholds), groups, "leiden", thresholds=thresholds)
    names = _names_over_the_heatmap(fig, len(groups))
    assert len(names) >= 8  # most groups named
    for (m1, w1, t1), (m2, w2, t2) in zip(names, names[1:]):
        assert m2 - m1 >= (w1 + w2) / 2, (t1, t2)  # no two names over each other at 390 px
    notes = [a.text for a in fig.layout.annotations if a.yref == "paper" and a.y == 0]
    assert any(f"{len(sizes) - len(names)} narrow groups unnamed: hover a cell for its leiden" in n for n in notes)
    assert fig.layout.margin.t >= 20 + 2 * 6.5  # room above the plot for the upright names
    long = ["patient_01_post_treatment_<b>biopsy"] * 20 + ["P2"] * 80
    fig = pl.panel_heatmap(rng.random((100, 2)), list(thresholds), long, "sample", thresholds=thresholds)
    cut = [a for a in fig.layout.annotations if a.hovertext]
    assert [a.text for a in cut] == ["patient_01_post_treatme…"]
    assert cut[0].hovertext == "patient_01_post_treatment_&lt;b>biopsy"  # the whole name, shown as typed
    wide = pl.panel_heatmap(rng.random((100, 2)), list(thresholds), ["A"] * 50 + ["B"] * 50, "sample",
                            thresholds=thresholds)  # names that fit: across, as before
    assert [(a.text, a.textangle) for a in wide.layout.annotations if a.y == 1.0] == [("A", 0), ("B", 0)]


def test_an_ensembles_tiny_spread_is_drawn_tiny_and_its_hover_keeps_its_digits():
    """QA: the demo's uncertainty (sd of P) colour bar stretched to 0-0.0016, so a spread of 0.0016
    was bright yellow, and the hover read 0.001 (0.0004 would read 0.000)."""
    sd = np.array([0.0004, 0.0016, 0.001])
    assert pl.sd_colour_range(sd) == (0.0, pl.SD_COLOUR_FLOOR)
    assert pl.sd_colour_range(np.array([0.01, 0.2, np.nan])) == (0.0, 0.2)
    assert pl.sd_colour_range(np.array([np.nan])) == (0.0, pl.SD_COLOUR_FLOOR)
    fig = pl.umap_figure(np.random.default_rng(0).random((3, 2)), sd, name="uncertainty (sd of P)",
                         categorical=False, color_range=pl.sd_colour_range(sd), colorscale="Viridis")
    assert fig.data[0].marker.cmax == pl.SD_COLOUR_FLOOR and ":.3~g}" in fig.data[0].hovertemplate


def test_the_drug_ranking_says_what_its_bar_colour_means():
    """QA: the ranking's bars were shaded by mean P(resistant) with no colour bar, so a lighter bar
    for a longer one (92% called resistant, lighter than 85%) looked like a contradiction."""
    ranking = pd.DataFrame({"drug": ["A", "B"], "fraction_resistant": [0.85, 0.92], "mean_prob_resistant": [0.7, 0.6],
                            "calibrated": [True, True]})
    bar = pl.drug_ranking_figure(ranking, thresholds={"A": 0.5, "B": 0.5}).data[0]
    assert bar.marker.showscale and bar.marker.colorbar.title.text == "mean P(resistant): blue below, red above"
    assert "each drug's threshold" in bar.marker.colorbar.ticktext  # the grey in the middle


def test_panel_figures_colour_each_drug_relative_to_the_threshold_its_calls_use():
    """QA: the panel's heatmap, dot plot and ranking coloured P(resistant) on one scale whose grey was 0.5,
    while each drug is called at its own threshold: a cell with P = 0.6, which DRUGA's threshold 0.72 calls
    sensitive, was drawn red. Each drug's values are now drawn relative to its threshold (the grey)."""
    thresholds = {"DRUGA": 0.72, "DRUGB": 0.3}
    prob = np.array([[0.6, 0.4], [0.9, 0.1], [np.nan, 0.3]])  # cells x drugs; DRUGA did not score the third
    assert pl.relative_to_threshold(np.array([0.0, 0.36, 0.72, 0.86, 1.0, np.nan]), 0.72) == pytest.approx(
        [0.0, 0.25, 0.5, 0.75, 1.0, np.nan], nan_ok=True)
    fig = pl.panel_heatmap(prob, ["DRUGA", "DRUGB"], ["g"] * 3, "sample", thresholds=thresholds)
    z = np.asarray(fig.data[0].z, dtype=float)  # drugs x cells, cells in the order drawn
    custom = np.asarray(fig.data[0].customdata, dtype=object)
    a_06 = [j for j in range(3) if custom[0, j, 1] == 0.6][0]
    assert z[0, a_06] < 0.5 and custom[0, a_06, 2] == 0.72 and custom[0, a_06, 3] == "called sensitive"
    b_04 = [j for j in range(3) if custom[1, j, 1] == 0.4][0]
    assert z[1, b_04] > 0.5 and custom[1, b_04, 3] == "called resistant"  # P 0.4 above DRUGB's 0.3: red side
    assert "threshold %{customdata[2]" in fig.data[0].hovertemplate and "%{customdata[1]" in fig.data[0].hovertemplate
    bar = fig.data[0].colorbar
    assert list(bar.tickvals) == [0, 0.5, 1] and "each drug's threshold" in bar.ticktext
    assert bar.title.text == "P(resistant): blue sensitive, red resistant"
    # not scored: its own darker grey, not the threshold's light grey (nor white)
    assert len(fig.data) == 2 and fig.data[1].colorscale[0][1] == pl.COLORS["not scored"] != pl.PROB_NEUTRAL
    assert np.isfinite(np.asarray(fig.data[1].z, dtype=float)).sum() == 1
    assert any("not scored" in a.text for a in fig.layout.annotations)
    with pytest.raises(ValueError, match="No threshold given for DRUGB"):
        pl.panel_heatmap(prob, ["DRUGA", "DRUGB"], None, None, thresholds={"DRUGA": 0.72})
    summary = pd.DataFrame({"group": ["g", "g"], "drug": ["DRUGA", "DRUGB"], "fraction_resistant": [0.1, 0.9],
                            "n_called": [10, 10], "mean_prob_resistant": [0.6, 0.4]})
    dots = pl.panel_dotplot(summary, "sample", thresholds=thresholds).data[0]
    assert dots.marker.color[0] < 0.5 < dots.marker.color[1]
    assert "each drug's threshold" in dots.marker.colorbar.ticktext and "threshold %{customdata[3]" in dots.hovertemplate
    ranking = summary.drop(columns="group").assign(calibrated=True)
    bars = pl.drug_ranking_figure(ranking, thresholds=thresholds).data[0]
    assert bars.marker.color[0] < 0.5 < bars.marker.color[1]


def test_the_smaller_called_group_is_drawn_on_top_and_the_legend_keeps_its_order():
    """QA at 100k cells: "Colour by: called label" drew the sensitive cells last, on top of the
    resistant ones (legend: resistant 31,867; the map looked all blue). The largest group is drawn
    first and the smaller ones over it; the legend and the hover stay one trace per group."""
    rng = np.random.default_rng(0)
    labels = np.array(["resistant"] * 30 + ["sensitive"] * 70 + ["not scored"] * 5, dtype=object)
    rng.shuffle(labels)
    fig = pl.umap_figure(rng.normal(size=(labels.size, 2)), pd.Series(labels), name="called", categorical=True,
                         colors={"resistant": "red", "sensitive": "blue"})
    assert [t.name for t in fig.data] == ["sensitive (70)", "resistant (30)", "not scored (5)"]  # drawing order
    listed = [t.name for t in sorted(fig.data, key=lambda t: t.legendrank)]
    assert listed == ["not scored (5)", "resistant (30)", "sensitive (70)"]  # the legend: as before, by name
    assert all(len(t.text) == int(t.name.split("(")[1][:-1]) and "called: " in t.hovertemplate for t in fig.data)


def test_numbered_groups_are_listed_in_number_order_in_the_umap_legend_and_the_bar_chart():
    """QA: Leiden clusters were listed 1, 10, 11, 12, 2, 3 ... in the UMAP legend (sorted as text)
    while the per-group bar chart listed them 1, 2, 3 ...: one natural order for both."""
    from scatd_core._words import natural_order
    from scatd_core.metrics import group_fractions

    clusters = np.array([str(i % 13) for i in range(130)], dtype=object)
    fig = pl.umap_figure(np.random.default_rng(1).normal(size=(130, 2)), clusters, name="Leiden cluster",
                         categorical=True)
    legend = [t.name.split(" ")[0] for t in sorted(fig.data, key=lambda t: t.legendrank or 0)]  # as listed
    assert legend == [str(i) for i in range(13)]
    bars = list(group_fractions(np.zeros(130), clusters)["group"])
    assert bars == legend == natural_order(clusters)
    assert natural_order(["b", "10", "2", "a", "-1", "2.5"]) == ["-1", "2", "2.5", "10", "a", "b"]
    assert "coloured by Leiden cluster: 0 10, 1 10, 2 10, 3 10" in pl.alt_text(fig)  # the text alternative too


def test_the_umaps_note_is_under_the_axis_title_not_over_it():
    """QA at 100k cells: "UMAP fitted on a random 30,000 of 100,000 cells; ..." overprinted the x-axis
    title "UMAP 1" (the note sat 8% of the plot's height below it, where the title is). It starts
    below the title, in a bottom margin made for it."""
    fig = pl.umap_figure(np.random.default_rng(0).normal(size=(40, 2)), np.linspace(0, 1, 40), name="P",
                         note="UMAP fitted on a random 30 of 40 cells; the others placed into that layout")
    note = next(a for a in fig.layout.annotations if "fitted on" in a.text)
    assert (note.yref, note.y, note.yanchor) == ("paper", 0, "top") and note.yshift <= -pl.NOTE_SHIFT
    assert pl.NOTE_SHIFT >= 34  # the axis title without tick labels takes about 30 pixels below the plot
    assert fig.layout.margin.b >= pl.NOTE_SHIFT + 14  # the note's 11-pixel line fits in the margin
    plain = pl.umap_figure(np.random.default_rng(0).normal(size=(40, 2)), np.linspace(0, 1, 40), name="P")
    # no note: no room made for one, only for the colour bar under the plot (at the top of that room)
    assert not plain.layout.annotations and plain.layout.margin.b == pl.UMAP_KEY_PX + pl.COLORBAR_ROOM
    assert fig.layout.margin.b > plain.layout.margin.b  # with the note: the colour bar under it
