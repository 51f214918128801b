"""The UMAP layout optimised in groups of cells (scatd_core._layout): one group is umap-learn's
own optimisation, several groups give the same layout whatever the number of threads, and a
layout as faithful to the data as umap-learn's."""

from __future__ import annotations

import numba
import numpy as np
import pytest
import scipy.sparse as sp

from scatd_core import _layout, embed

N_EPOCHS = 60


def _clustered(n=600, dim=10, n_groups=6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=6.0, size=(n_groups, dim))
    group = rng.integers(0, n_groups, n)
    return (centres[group] + rng.normal(size=(n, dim))).astype(np.float32), group


def _graph(x, k=15, seed=0):
    nb = embed.neighbours(x, k, seed)
    return nb, embed._fuzzy_graph(nb)


def _distance_matrix(nb):
    """The neighbour distances as umap-learn's ``metric="precomputed"`` input (symmetric)."""
    n, k = nb.indices.shape
    d = sp.csr_matrix((nb.distances.ravel().astype(np.float64), nb.indices.ravel(), np.arange(0, n * k + 1, k)),
                      shape=(n, n))
    return d.maximum(d.T).tocsr()


@pytest.fixture
def umap_graph_kernels(monkeypatch):
    """umap-learn's graph functions call its two graph kernels compiled from disk, as ``_layout``
    does (the same code and options; umap-learn would compile them again, ~10 s)."""
    import umap.umap_

    for name in ("smooth_knn_dist", "compute_membership_strengths"):
        monkeypatch.setattr(umap.umap_, name, _layout._kernel(name))


def test_neighbour_graph_is_umap_learns(umap_graph_kernels):
    from umap.umap_ import fuzzy_simplicial_set

    x, _ = _clustered(n=400)
    nb = embed.neighbours(x, 15, 0)
    ours = _layout.fuzzy_graph(nb.indices, nb.distances)
    theirs, _, _ = fuzzy_simplicial_set(_distance_matrix(nb), 15, np.random.RandomState(0), "precomputed",
                                        knn_indices=nb.indices, knn_dists=nb.distances)
    assert ours.nnz == theirs.nnz and abs(ours - theirs.tocsr()).max() == 0


def test_graph_kernels_fall_back_to_umap_learns_without_a_writable_cache(monkeypatch):
    """With a writable cache folder the kernels are umap-learn's own code compiled with numba's disk
    cache; where numba finds none (a read-only install, no writable home), umap-learn's kernels are
    used as they are (compiled in each process), instead of failing."""
    import numba.core.caching
    import umap.umap_

    kernel = umap.umap_.smooth_knn_dist
    cached = _layout._cached(kernel)
    assert cached is not kernel and cached.py_func is kernel.py_func
    assert isinstance(cached._cache, numba.core.caching.FunctionCache)  # cached on disk
    assert cached.targetoptions.get("fastmath") == kernel.targetoptions.get("fastmath")
    monkeypatch.setattr(numba.core.caching.CacheImpl, "_locator_classes", [])
    monkeypatch.setattr(numba.core.config, "CACHE_LOCATOR_CLASSES", "", raising=False)
    with pytest.raises(RuntimeError):  # what numba does without a cache folder
        numba.njit(kernel.py_func, cache=True)
    assert _layout._cached(kernel) is kernel


def test_one_group_is_umap_learns_own_optimisation():
    from umap.umap_ import find_ab_params, simplicial_set_embedding

    x, _ = _clustered()
    _, graph = _graph(x)
    a, b = find_ab_params(1.0, 0.5)
    expected, _ = simplicial_set_embedding(
        x, graph.copy(), 2, 1.0, a, b, 1.0, 5, N_EPOCHS, "spectral", np.random.RandomState(3), "euclidean",
        {}, False, {}, False)
    ours = _layout.fit(graph, x, n_epochs=N_EPOCHS, min_dist=0.5, seed=3, partitions=1)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-3)


def _with_threads(n, fn):
    before = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        return fn()
    finally:
        numba.set_num_threads(before)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two numba threads")
def test_groups_give_the_same_layout_on_one_thread_or_several():
    x, _ = _clustered()
    _, graph = _graph(x)

    def run():
        return _layout.fit(graph, x, n_epochs=N_EPOCHS, min_dist=0.5, seed=0)

    one, two = _with_threads(1, run), _with_threads(2, run)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(run(), one)  # and from one call to the next
    assert not np.array_equal(one, _layout.fit(graph, x, n_epochs=N_EPOCHS, min_dist=0.5, seed=1))


def test_groups_keep_the_data_as_faithfully_as_umap_learn():
    from sklearn.manifold import trustworthiness
    from sklearn.metrics import silhouette_score

    x, group = _clustered(n=1500)
    _, graph = _graph(x)
    single = _layout.fit(graph, x, n_epochs=200, min_dist=0.5, seed=0, partitions=1)
    grouped = _layout.fit(graph, x, n_epochs=200, min_dist=0.5, seed=0)
    t_single, t_grouped = (trustworthiness(x, c, n_neighbors=15) for c in (single, grouped))
    s_single, s_grouped = (silhouette_score(c, group) for c in (single, grouped))
    assert t_grouped > 0.9 and t_grouped >= t_single - 0.01, (t_single, t_grouped)
    assert s_grouped >= s_single - 0.05, (s_single, s_grouped)
    assert np.isfinite(grouped).all() and grouped.dtype == np.float32


def test_placing_cells_is_umap_learns_transform_and_exact_in_groups(umap_graph_kernels):
    import warnings

    import umap

    x, _ = _clustered(n=500)
    nb = embed.neighbours(x, 15, 0, fit_max=300)
    fitted = _layout.fit(embed._fuzzy_graph(nb), x[nb.fitted], n_epochs=N_EPOCHS, min_dist=0.5, seed=0)
    grouped = _layout.place(nb.rest_indices, nb.rest_distances, fitted, n_epochs=N_EPOCHS, min_dist=0.5, seed=42)
    single = _layout.place(nb.rest_indices, nb.rest_distances, fitted, n_epochs=N_EPOCHS, min_dist=0.5, seed=42,
                           partitions=1)
    np.testing.assert_array_equal(grouped, single)  # each cell moves on its own edges: groups change nothing
    assert grouped.shape == (200, 2) and np.isfinite(grouped).all()
    # umap-learn's transform (its transform_seed is 42) into the same layout
    reducer = umap.UMAP(n_neighbors=15, metric="precomputed", precomputed_knn=(nb.indices, nb.distances),
                        n_epochs=N_EPOCHS, random_state=0, min_dist=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        reducer.fit(_distance_matrix(nb))
        reducer.embedding_ = fitted
        n, k = nb.rest_indices.shape
        rest = sp.csr_matrix((nb.rest_distances.ravel().astype(np.float64), nb.rest_indices.ravel(),
                              np.arange(0, n * k + 1, k)), shape=(n, nb.fitted.size))
        expected = reducer.transform(rest)
    # the starts agree to the last bit or so; a cell's random stream is seeded by its start, so the
    # paths differ from there: compare how well each keeps the cells' neighbours
    recall = [_neighbour_recall(placed, fitted, nb.rest_indices) for placed in (grouped, expected)]
    assert recall[0] > 0.3 and recall[0] >= recall[1] - 0.05, recall


def _neighbour_recall(placed, fitted, neighbours):
    """Mean share of each placed cell's nearest fitted cells in the data that are among its
    nearest fitted cells in the layout."""
    from sklearn.neighbors import NearestNeighbors

    k = neighbours.shape[1]
    near = NearestNeighbors(n_neighbors=k).fit(fitted).kneighbors(placed, return_distance=False)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(near, neighbours)]))


def test_start_positions_are_umap_learns():
    from umap.umap_ import init_graph_transform

    rng = np.random.default_rng(0)
    n, m, k = 400, 120, 15
    idx = np.stack([rng.choice(m, k, replace=False) for _ in range(n)])
    val = rng.random((n, k)).astype(np.float32)
    val[::7, 3] = 1.0  # fully joined to one fitted cell: starts there
    val[5] = 0.0  # no neighbours: NaN
    graph = sp.csr_matrix((val.ravel(), idx.ravel(), np.arange(0, n * k + 1, k)), shape=(n, m))
    graph.eliminate_zeros()
    fitted = rng.normal(size=(m, 2)).astype(np.float32)
    theirs = init_graph_transform(graph, fitted)
    ours = _layout._start_positions(graph.indptr, graph.indices, graph.data, fitted)
    assert np.isnan(ours[5]).all() and np.array_equal(np.isnan(ours), np.isnan(theirs))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(ours[::7][1:], fitted[idx[::7, 3]][1:])


def test_the_layout_runs_in_pieces_that_give_one_runs_result_and_can_stop_it(monkeypatch):
    """The epochs run a few at a time (so that a page can show progress and Cancel can stop a
    UMAP of 100k cells): any size of piece gives the same layout to the bit, fitted and placed;
    ``between`` hears the fraction done, and what it raises stops the layout there."""
    x, _ = _clustered(n=500)
    nb = embed.neighbours(x, 15, 0, fit_max=300)
    graph = embed._fuzzy_graph(nb)

    def run(at_once, between=None):
        monkeypatch.setattr(_layout, "EPOCHS_AT_ONCE", at_once)
        fitted = _layout.fit(graph, x[nb.fitted], n_epochs=N_EPOCHS, min_dist=0.5, seed=0, between=between)
        placed = _layout.place(nb.rest_indices, nb.rest_distances, fitted, n_epochs=N_EPOCHS, min_dist=0.5,
                               seed=0, between=between)
        return fitted, placed

    whole = run(N_EPOCHS)
    heard = []
    for at_once in (1, 7):
        pieces = run(at_once, heard.append)
        for a, b in zip(whole, pieces):
            np.testing.assert_array_equal(a, b)
    assert heard[:2] == [1 / N_EPOCHS, 2 / N_EPOCHS] and all(0 < f < 1 for f in heard)

    class Stop(Exception):
        pass

    epochs_run = []

    def stop_after_three(fraction):
        epochs_run.append(fraction)
        if len(epochs_run) == 3:
            raise Stop

    monkeypatch.setattr(_layout, "EPOCHS_AT_ONCE", 10)
    with pytest.raises(Stop):
        _layout.fit(graph, x[nb.fitted], n_epochs=N_EPOCHS, min_dist=0.5, seed=0, between=stop_after_three)
    assert epochs_run == [10 / N_EPOCHS, 20 / N_EPOCHS, 30 / N_EPOCHS]


def test_compute_embedding_reports_the_layout_and_stops_when_told():
    """compute_embedding's progress hears the layout every few epochs (the Cells page's bar) and
    an exception it raises there stops the UMAP: Cancel and a new prediction use this."""
    import anndata as ad

    from scatd_core.errors import Cancelled

    x, _ = _clustered(n=400)
    adata = ad.AnnData(np.zeros((400, 1), dtype=np.float32), obsm={embed.LATENT_KEY: x})
    heard = []
    result = embed.compute_embedding(adata, seed=0, n_epochs=N_EPOCHS, progress=lambda f, m: heard.append((f, m)))
    layout = [(f, m) for f, m in heard if "of the layout" in m]
    assert len(layout) == N_EPOCHS // _layout.EPOCHS_AT_ONCE - 1
    assert all(0.3 < f < 0.85 for f, _ in layout) and layout == sorted(layout)
    assert np.isfinite(result.coords).all()

    def cancel_in_layout(fraction, message):
        if "of the layout" in message:
            raise Cancelled("stopped")

    with pytest.raises(Cancelled):
        embed.compute_embedding(adata, seed=0, n_epochs=N_EPOCHS, progress=cancel_in_layout)
