"""Neighbours, UMAP and Leiden clusters of the cells, for the Cells page and the report.

The UMAP is computed from the model's latent space (``obsm['X_scatd']``, what the classifier
sees) or, as an option, from expression (log-normalised, highly variable genes, PCA). Clusters
are Leiden communities (igraph) of the neighbour graph of the latent space. Everything is seeded: the
same data and parameters give the same coordinates and clusters.

Cells whose input rows are not finite (cells that could not be scored have NaN latent rows)
are left out of the computation, counted in ``uns['scatd_embed']``, and get NaN coordinates and
the cluster :data:`NOT_EMBEDDED` (``"no cluster (QC-filtered or not scored)"``); they never
reach the layout, so they cannot break a plot.

Speed: inputs wider than :data:`PCA_COMPONENTS` (the 421-d latent space) are first reduced to
that many principal components, and neighbours are exact (scikit-learn's brute force, BLAS:
no search index to build or compile). Up to :data:`UMAP_FIT_MAX_CELLS` cells UMAP is fitted
on every cell. Above, it is fitted on a seeded random subsample of :data:`UMAP_FIT_MAX_CELLS`
cells; the other cells are placed into that layout as umap-learn's ``transform`` places them
(from their distances to their nearest subsample cells) and join the Leiden cluster of most of
those neighbours. This is recorded in ``uns['scatd_embed']['fit']`` and said under the plot.

The layout is umap-learn's (its fuzzy neighbour graph, spectral start, edge sampling, negative
samples and learning rate), with the optimisation run in :data:`scatd_core._layout.PARTITIONS`
groups of neighbouring cells side by side, on every core, and still reproducible: the result
does not depend on the number of threads (:mod:`scatd_core._layout`). The kernels are compiled
with numba on first use (cached on disk afterwards); :func:`warm_up` does it ahead of time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scatd_core import _keys
from scatd_core._matrix import MeanVar, log1p_cp10k, row_batches
from scatd_core._words import counted
from scatd_core.errors import InputError
from scatd_core.preprocess import detect_value_type

LATENT_KEY = _keys.LATENT
UMAP_KEY = _keys.UMAP
CLUSTER_KEY = _keys.CLUSTER
INFO_KEY = _keys.EMBED
NOT_EMBEDDED = _keys.NOT_EMBEDDED
BASES = ("latent", "expression")
#: Fewest cells a layout is computed for.
MIN_CELLS = 5
#: Said with :func:`too_few_cells`: what does without the UMAP and clusters.
NOT_NEEDED = "The predictions, the ranking and the downloads do not need them."
#: Inputs wider than this are reduced to this many principal components before the neighbour
#: search (the latent space has 421 dimensions; 50 components keep its neighbourhoods).
PCA_COMPONENTS = 50
#: Up to this many cells UMAP is fitted on all of them; above, on a seeded random subsample of
#: this many, the rest placed by ``transform``. Neighbours are exact (brute force) either way: within
#: the subsample, and from each other cell to its nearest subsample cells.
UMAP_FIT_MAX_CELLS = 30_000
_SPECTRAL_MIN_CELLS = 50  # spectral initialisation is unstable on tiny graphs
#: Default UMAP epochs: umap-learn's 500 up to this many cells, 200 above (umap-learn switches at
#: 10,000; 200 epochs already converge at a few thousand cells and halve the wait on a laptop).
FEW_CELLS_EPOCHS = 2000


@dataclass
class Embedding:
    """Coordinates and clusters for every cell (NaN / :data:`NOT_EMBEDDED` where left out)."""

    coords: np.ndarray
    clusters: pd.Categorical | None
    info: dict = field(default_factory=dict)


def finite_rows(matrix) -> np.ndarray:
    """Boolean mask of the rows of ``matrix`` whose values are all finite."""
    m = np.asarray(matrix, dtype=np.float64)
    return np.isfinite(m).all(axis=1) if m.ndim == 2 else np.isfinite(m)


def too_few_cells(adata: ad.AnnData, basis: str = "latent", latent_key: str = LATENT_KEY) -> str | None:
    """Why no UMAP and clusters can be computed for ``adata`` (too few cells), or None. Cheap: the
    number of cells and, for the latent space, of cells with finite latent rows (the scored ones),
    counted in blocks only until there are enough (pages call it on every run, on any size of data).
    :func:`compute_embedding` refuses with these words; the report and the app leave the UMAP out
    and say so (:func:`not_computed_note`)."""
    n = adata.n_obs
    if n < MIN_CELLS:
        return f"The data hold {counted(n)}; a UMAP and clusters need at least {MIN_CELLS}."
    if basis == "latent" and latent_key in adata.obsm:
        latent, n_keep = adata.obsm[latent_key], 0
        for start in range(0, n, 4096):
            n_keep += int(finite_rows(np.asarray(latent[start:start + 4096])).sum())
            if n_keep >= MIN_CELLS:
                return None
        if n_keep < MIN_CELLS:
            return (f"Only {n_keep:,} of {counted(n)} {'was' if n_keep == 1 else 'were'} scored (have coordinates "
                    "in the model's latent space); "
                    f"a UMAP and clusters need at least {MIN_CELLS}.")
    return None


def not_computed_note(adata: ad.AnnData, basis: str = "latent", latent_key: str = LATENT_KEY) -> str | None:
    """The words for a report or page without a UMAP because there are too few cells
    (:func:`too_few_cells`), or None when a UMAP can be computed."""
    reason = too_few_cells(adata, basis, latent_key)
    return None if reason is None else f"No UMAP or Leiden clusters: {reason} {NOT_NEEDED}"


def expression_pcs(adata: ad.AnnData, n_top_genes: int = 2000, n_pcs: int = 30, seed: int = 0,
                   batch_size: int = 10_000) -> tuple[np.ndarray, dict]:
    """Principal components of expression, read in batches (``adata`` may be backed).

    Counts and TPM-like values are scaled to 10,000 per cell and log1p-transformed; values
    that are already log-normalised or z-scored are used as they are. The ``n_top_genes``
    genes of highest variance are scaled to unit variance and reduced to ``n_pcs`` components.

    Returns
    -------
    ``(pcs, info)``: a cells x ``n_pcs`` array and a dict of what was done.
    """
    report = adata.uns.get("scatd_input", {})
    kind = report.get("value_type") or detect_value_type(adata.X)["kind"]
    log_normalise = kind in ("counts", "tpm_like")

    def batches():
        for _, _, block in row_batches(adata.X, batch_size):
            block = sp.csr_matrix(block, dtype=np.float64)
            yield log1p_cp10k(block, copy=False) if log_normalise else block

    n = adata.n_obs
    acc = MeanVar()
    for block in batches():
        acc.update(block)
    var = acc.var()
    varying = np.flatnonzero(var > 0)
    if varying.size < 2:
        raise InputError("Fewer than two genes vary between cells, so there is no expression space to embed.",
                         "Use the latent space instead.")
    top = varying[np.argsort(-var[varying], kind="stable")[:n_top_genes]]
    top.sort()
    scale = sp.diags(1.0 / np.sqrt(var[top]))
    matrix = sp.vstack([block[:, top] @ scale for block in batches()], format="csr")
    k = int(min(n_pcs, top.size - 1, n - 1))
    from sklearn.decomposition import PCA

    pcs = PCA(n_components=k, svd_solver="arpack", random_state=seed).fit_transform(matrix)
    info = {"value_type": kind, "log_normalised": log_normalise, "n_genes": int(top.size), "n_pcs": k}
    return np.asarray(pcs, dtype=np.float32), info


def principal_components(x: np.ndarray, seed: int = 0) -> tuple[np.ndarray, int | None]:
    """``x`` reduced to :data:`PCA_COMPONENTS` principal components when it is wider, and the
    number of components (``None``: ``x`` as it is).

    Exact PCA from the eigendecomposition of the features' covariance (float64): for many more
    cells than features (the latent space: 421 dimensions) this is one ``features x features``
    product and a small ``eigh``, ~10x faster than a randomised SVD, and exact rather than
    approximate. Signs follow scikit-learn's ``svd_flip`` on the components (each component's
    largest-magnitude loading positive), so the result matches ``sklearn.decomposition.PCA`` up
    to float rounding. ``seed`` is kept for the callers; nothing here is random.
    """
    k = min(PCA_COMPONENTS, x.shape[0] - 1)
    if x.shape[1] <= PCA_COMPONENTS or k < 2:
        return np.asarray(x, dtype=np.float32), None
    centred = np.asarray(x, dtype=np.float64)
    centred = centred - centred.mean(axis=0)
    cov = centred.T @ centred
    values, vectors = np.linalg.eigh(cov)  # ascending
    components = vectors[:, ::-1][:, :k].T  # k x features, largest variance first
    biggest = np.argmax(np.abs(components), axis=1)
    components *= np.sign(components[np.arange(k), biggest])[:, None]
    return (centred @ components.T).astype(np.float32), k


@dataclass
class Neighbours:
    """Exact k nearest neighbours, of the cells UMAP is fitted on and of the others.

    ``fitted``: positions (rows of the input) of the cells the graph spans: every cell, or a
    seeded random subsample above :data:`UMAP_FIT_MAX_CELLS`; ``indices``/``distances``: their
    neighbours among themselves (each cell its own first); ``rest``: the other cells'
    positions, ``rest_indices``/``rest_distances`` their nearest fitted cells (positions in
    ``fitted``).
    """

    fitted: np.ndarray
    indices: np.ndarray
    distances: np.ndarray
    rest: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    rest_indices: np.ndarray | None = None
    rest_distances: np.ndarray | None = None

    @property
    def subsampled(self) -> bool:
        return self.rest.size > 0


def neighbours(x: np.ndarray, n_neighbors: int, seed: int, fit_max: int | None = None) -> Neighbours:
    """Exact neighbours (scikit-learn, brute force on BLAS) of every cell up to ``fit_max``
    (:data:`UMAP_FIT_MAX_CELLS`) cells; above, within a seeded random subsample of ``fit_max``
    cells, and every other cell's nearest subsample cells."""
    from sklearn.neighbors import NearestNeighbors

    n = x.shape[0]
    fit_max = fit_max or UMAP_FIT_MAX_CELLS
    fitted = np.arange(n) if n <= fit_max else \
        np.sort(np.random.default_rng(seed).choice(n, size=fit_max, replace=False))
    search = NearestNeighbors(n_neighbors=n_neighbors, algorithm="brute").fit(x[fitted])
    dist, idx = search.kneighbors(x[fitted])
    dist[idx == np.arange(fitted.size)[:, None]] = 0.0  # not the dot-product formula's rounding
    nb = Neighbours(fitted, idx.astype(np.int64), dist.astype(np.float32))
    if fitted.size < n:
        nb.rest = np.setdiff1d(np.arange(n), fitted)
        dist, idx = search.kneighbors(x[nb.rest])
        nb.rest_indices, nb.rest_distances = idx.astype(np.int64), dist.astype(np.float32)
    return nb


def _fuzzy_graph(nb: Neighbours) -> sp.csr_matrix:
    """UMAP's weighted, symmetric neighbour graph of the fitted cells (umap-learn's fuzzy union)."""
    from scatd_core._layout import fuzzy_graph

    return fuzzy_graph(nb.indices, nb.distances)


def _umap(x: np.ndarray, nb: Neighbours, min_dist: float, seed: int, n_epochs: int | None,
          between: Callable[[float], None] | None = None):
    """UMAP coordinates of every cell of ``x`` (fitted on ``nb.fitted``, the rest placed as
    umap-learn's ``transform`` places them) and the fitted cells' fuzzy neighbour graph (all its
    edges, as scanpy's connectivities; the layout drops the weakest, which depends on the number
    of epochs), from the exact neighbours ``nb``. The layout is umap-learn's, optimised on every
    core (:mod:`scatd_core._layout`); ``between(fraction)`` hears how far it is every few epochs
    (and may stop it by raising)."""
    from scatd_core import _layout

    n_fit = nb.fitted.size
    if n_epochs is None:
        n_epochs = 500 if n_fit <= FEW_CELLS_EPOCHS else 200
    graph = _fuzzy_graph(nb)
    coords = np.full((n_fit + nb.rest.size, 2), np.nan)
    # the placed cells' third of the epochs, each edge of their own: about as much work per epoch
    share = nb.fitted.size / (nb.fitted.size + nb.rest.size / 3.0) if nb.subsampled else 1.0
    say = between or (lambda fraction: None)
    fitted = _layout.fit(graph, x[nb.fitted], n_epochs=n_epochs, min_dist=min_dist, seed=seed,
                         init="spectral" if n_fit >= _SPECTRAL_MIN_CELLS else "random",
                         between=lambda f: say(share * f))
    coords[nb.fitted] = fitted
    if nb.subsampled:
        say(share)
        coords[nb.rest] = _layout.place(nb.rest_indices, nb.rest_distances, fitted, n_epochs=n_epochs,
                                        min_dist=min_dist, seed=seed, between=lambda f: say(share + (1 - share) * f))
    return coords, graph


def _fit_record(nb: Neighbours) -> dict:
    """What ``uns['scatd_embed']['fit']`` says about how the layout was made."""
    if not nb.subsampled:
        return {"subsampled": False, "n_fitted": int(nb.fitted.size), "neighbours": "exact (scikit-learn)"}
    n = nb.fitted.size + nb.rest.size
    return {"subsampled": True, "n_fitted": int(nb.fitted.size), "n_transformed": int(nb.rest.size),
            "neighbours": "exact (scikit-learn), to the subsample",
            "statement": f"UMAP fitted on a random subsample of {nb.fitted.size:,} of {n:,} cells; the other "
                         f"{nb.rest.size:,} were placed into it as umap-learn's transform places them."}


def _clusters_of_all(graph: sp.spmatrix, nb: Neighbours, resolution: float, seed: int) -> np.ndarray:
    """Leiden clusters of the fitted cells; every other cell takes the cluster most of its
    nearest fitted cells have (ties: the larger cluster)."""
    fitted = leiden_clusters(graph, resolution, seed)
    out = np.empty(nb.fitted.size + nb.rest.size, dtype=int)
    out[nb.fitted] = fitted
    if nb.subsampled:
        votes = fitted[nb.rest_indices]  # rest x k cluster numbers (0 = the largest cluster)
        counts = np.zeros((votes.shape[0], int(fitted.max()) + 1), dtype=np.int64)
        np.add.at(counts, (np.repeat(np.arange(votes.shape[0]), votes.shape[1]), votes.ravel()), 1)
        out[nb.rest] = counts.argmax(axis=1)  # argmax keeps the first (largest) cluster among ties
    return out


def leiden_clusters(graph: sp.spmatrix, resolution: float = 1.0, seed: int = 0) -> np.ndarray:
    """Leiden communities (modularity) of a weighted symmetric graph.

    Uses igraph's Leiden implementation (scanpy's ``flavor="igraph"``; ~10x faster than
    leidenalg on these graphs) with a private random generator seeded by ``seed``.
    Returns 0-based community numbers, the largest community first.
    """
    import random

    import igraph as ig

    coo = sp.triu(graph, k=1).tocoo()
    g = ig.Graph(n=graph.shape[0], edges=np.column_stack([coo.row, coo.col]).tolist(),
                 edge_attrs={"weight": coo.data.tolist()})
    ig.set_random_number_generator(random.Random(seed))
    try:
        partition = g.community_leiden(objective_function="modularity", weights="weight",
                                       resolution=resolution, n_iterations=2)
    finally:
        ig.set_random_number_generator(random)
    membership = np.asarray(partition.membership, dtype=int)
    sizes = np.bincount(membership)
    rank = np.empty_like(sizes)
    rank[np.argsort(-sizes, kind="stable")] = np.arange(sizes.size)
    return rank[membership]


def compute_embedding(
    adata: ad.AnnData,
    *,
    basis: str = "latent",
    n_neighbors: int = 15,
    min_dist: float = 0.5,
    resolution: float = 1.0,
    clusters: bool = True,
    seed: int = 0,
    n_epochs: int | None = None,
    latent_key: str = LATENT_KEY,
    progress: Callable[[float, str], None] | None = None,
) -> Embedding:
    """UMAP coordinates (and Leiden clusters) of every cell, without changing ``adata``.

    See :func:`embed` for the parameters; this is the computation it stores.
    """
    if basis not in BASES:
        raise InputError(f"Unknown basis {basis!r}; use one of {', '.join(BASES)}.")
    t0 = time.perf_counter()
    say = progress or (lambda f, m: None)
    n = adata.n_obs
    latent = None
    if latent_key in adata.obsm:
        latent = np.asarray(adata.obsm[latent_key], dtype=np.float64)
    elif basis == "latent" or clusters:
        raise InputError(f"Did not find obsm['{latent_key}'] (the model's latent space).",
                         "Run the prediction (`scatd_core.predict.predict`) first.")
    from scatd_core import _layout

    info: dict = {"basis": basis, "n_cells": int(n), "n_neighbors": int(n_neighbors), "min_dist": float(min_dist),
                  "seed": int(seed), "method": "umap-learn (graph, start and updates), optimised in "
                                             f"{_layout.PARTITIONS} groups of cells side by side"}
    if basis == "latent":
        x = latent
        info["input"] = f"the model's latent space, {latent.shape[1]} dimensions"
    else:
        say(0.05, "principal components of expression")
        x, pca_info = expression_pcs(adata, seed=seed)
        info["input"] = (f"expression: {pca_info['n_genes']} most variable genes"
                         f"{', log-normalised' if pca_info['log_normalised'] else ''}, {pca_info['n_pcs']} PCs")
    keep = finite_rows(x)
    n_keep = int(keep.sum())
    info.update(n_embedded=n_keep, n_excluded=int(n - n_keep))
    reason = too_few_cells(adata, basis, latent_key)
    if reason:
        raise InputError(reason, NOT_NEEDED if n < MIN_CELLS else "Check how many cells were scored (cells without "
                         f"expression in the model's genes cannot be placed). {NOT_NEEDED}")
    if n_keep < MIN_CELLS:
        raise InputError(f"Only {n_keep:,} of {counted(n)} {'has' if n_keep == 1 else 'have'} finite {basis} "
                         "coordinates; a UMAP needs at "
                         f"least {MIN_CELLS}.",
                         "Check how many cells were scored (cells without expression in the model's genes "
                         "cannot be placed).")
    k = int(max(2, min(n_neighbors, n_keep - 1)))
    info["n_neighbors"] = k
    say(0.1, f"neighbours of {n_keep:,} cells")
    x_kept, n_pcs = principal_components(x[keep], seed)
    if n_pcs:
        info["input"] += f", reduced to {n_pcs} principal components"
    nb = neighbours(x_kept, k, seed)
    info["fit"] = _fit_record(nb)
    say(0.3, f"UMAP of {n_keep:,} cells" + (f" (fitted on {nb.fitted.size:,})" if nb.subsampled else ""))
    coords = np.full((n, 2), np.nan)
    layout = f"UMAP of {n_keep:,} cells" + (f" (fitted on {nb.fitted.size:,})" if nb.subsampled else "")
    coords[keep], graph = _umap(x_kept, nb, min_dist, seed, n_epochs,
                                between=lambda f: say(0.3 + 0.55 * f, f"{layout}: {f:.0%} of the layout"))
    labels = None
    if clusters:
        say(0.85, "Leiden clusters")
        cluster_keep = finite_rows(latent)
        if basis != "latent" or not np.array_equal(cluster_keep, keep):
            latent_kept = principal_components(latent[cluster_keep], seed)[0]
            nb = neighbours(latent_kept, int(max(2, min(n_neighbors, cluster_keep.sum() - 1))), seed)
            graph = _fuzzy_graph(nb)
        membership = _clusters_of_all(graph, nb, resolution, seed)
        names = np.full(n, NOT_EMBEDDED, dtype=object)
        names[cluster_keep] = (membership + 1).astype(str)
        order = [str(i + 1) for i in range(int(membership.max()) + 1)]
        labels = pd.Categorical(names, categories=order + ([NOT_EMBEDDED] if (~cluster_keep).any() else []))
        how = "Leiden (igraph, modularity) on the latent space's UMAP neighbour graph"
        if nb.subsampled:
            how += (f" of a random subsample of {nb.fitted.size:,} cells (seed {seed}); every other cell joins the "
                    "cluster of most of its nearest subsample cells")
        info.update(resolution=float(resolution), n_clusters=len(order), cluster_method=how,
                    n_not_clustered=int((~cluster_keep).sum()))
    info["seconds"] = round(time.perf_counter() - t0, 2)
    say(1.0, "done")
    return Embedding(coords, labels, info)


def embed(
    adata: ad.AnnData,
    *,
    basis: str = "latent",
    n_neighbors: int = 15,
    min_dist: float = 0.5,
    resolution: float = 1.0,
    clusters: bool = True,
    seed: int = 0,
    n_epochs: int | None = None,
    key_added: str = UMAP_KEY,
    cluster_key: str = CLUSTER_KEY,
    progress: Callable[[float, str], None] | None = None,
    copy: bool = False,
) -> ad.AnnData | None:
    """Compute a UMAP of the cells and Leiden clusters of the latent space.

    Parameters
    ----------
    adata
        Annotated by :func:`scatd_core.predict.predict` (needs ``obsm['X_scatd']``).
    basis
        ``"latent"`` (default): the model's latent means. ``"expression"``: principal
        components of log-normalised expression (:func:`expression_pcs`).
    n_neighbors, min_dist
        UMAP parameters (``n_neighbors`` is capped to the number of cells minus one).
    resolution
        Leiden resolution; higher gives more clusters.
    clusters
        Also compute Leiden clusters (always on the latent space).
    seed
        Seeds neighbours, layout and clustering.
    n_epochs
        UMAP optimisation epochs (default: 500 up to :data:`FEW_CELLS_EPOCHS` cells, else 200).
    progress
        Called with (fraction done, message), also every few epochs of the layout; an exception
        it raises stops the computation there.
    copy
        Return an annotated copy instead of writing into ``adata``.

    Returns
    -------
    The annotated AnnData if ``copy``, else ``None``. Sets the following fields:

    - ``adata.obsm[key_added]``: UMAP coordinates, NaN for cells left out;
    - ``adata.obs[cluster_key]``: Leiden cluster (``"1"``, ``"2"``, ... largest first;
      :data:`NOT_EMBEDDED` for cells without a latent), when ``clusters``;
    - ``adata.uns['scatd_embed']``: parameters, cells embedded and left out, timing.
    """
    result = compute_embedding(adata, basis=basis, n_neighbors=n_neighbors, min_dist=min_dist,
                               resolution=resolution, clusters=clusters, seed=seed, n_epochs=n_epochs,
                               progress=progress)
    if copy:
        adata = adata.to_memory() if adata.isbacked else adata.copy()
    store(adata, result, key_added=key_added, cluster_key=cluster_key)
    return adata if copy else None


def store(adata: ad.AnnData, result: Embedding, *, key_added: str = UMAP_KEY,
          cluster_key: str = CLUSTER_KEY) -> None:
    """Write an :class:`Embedding` into ``adata`` (the fields listed in :func:`embed`). A UMAP the
    data brought in ``obsm['X_umap']`` is kept as ``obsm['X_umap_original']``
    (:func:`keep_data_umap`), recorded in ``uns['scatd_embed']['original_umap']`` and said in the
    prediction's notes (:func:`original_umap_note`)."""
    if result.coords.shape[0] != adata.n_obs:
        raise ValueError(f"embedding of {result.coords.shape[0]} cells for {adata.n_obs} cells")
    kept = keep_data_umap(adata) if key_added == UMAP_KEY else None
    adata.obsm[key_added] = result.coords
    if result.clusters is not None:
        adata.obs[cluster_key] = pd.Categorical(result.clusters, categories=result.clusters.categories)
    info = dict(result.info)
    if kept:
        info["original_umap"] = kept
    adata.uns[INFO_KEY] = info
    if kept:
        _set_note(adata, original_umap_note(kept), True)


#: Where :func:`store` keeps a UMAP the data brought (scanpy plots it with ``basis="umap_original"``)
ORIGINAL_UMAP_KEY = _keys.UMAP_ORIGINAL


def original_umap_note(key: str) -> str:
    """What the reports, the CLI and the Cells page say when the data's own UMAP was kept as ``key``."""
    return (f"Your data's own UMAP (obsm['{UMAP_KEY}'] in your file) is kept, unchanged, as "
            f"obsm['{key}'] in the annotated h5ad; obsm['{UMAP_KEY}'] there is now scATD's UMAP "
            f"(in scanpy, basis='{key[2:]}' plots yours).")


def is_data_umap(adata: ad.AnnData) -> bool:
    """Whether ``obsm['X_umap']`` is the data's own: scATD records every UMAP it makes in
    ``uns['scatd_embed']``."""
    return UMAP_KEY in adata.obsm and INFO_KEY not in adata.uns


def keep_data_umap(adata: ad.AnnData) -> str | None:
    """Before scATD writes its UMAP into ``obsm['X_umap']``: the key the data's own UMAP is kept
    under, or None when the data brought none. The data's own (:func:`is_data_umap`) is copied
    to ``obsm['X_umap_original']`` now (``_2``, ``_3``... when that key is taken); over an earlier
    UMAP of scATD's, where that one's record says the data's is: scATD's own UMAP never goes there."""
    if is_data_umap(adata):
        key, n = ORIGINAL_UMAP_KEY, 2
        while key in adata.obsm:
            key, n = f"{ORIGINAL_UMAP_KEY}_{n}", n + 1
        adata.obsm[key] = adata.obsm[UMAP_KEY]
        return key
    kept = (adata.uns.get(INFO_KEY) or {}).get("original_umap")
    return str(kept) if kept is not None and str(kept) in adata.obsm else None


def forget_umap(adata: ad.AnnData) -> None:
    """Remove scATD's UMAP and its record (``uns['scatd_embed']``), and put the data's own UMAP,
    when :func:`store` kept it aside, back in ``obsm['X_umap']``. A UMAP scATD did not make is
    never removed."""
    info = adata.uns.pop(INFO_KEY, None)
    if info is None:  # no UMAP of scATD's: obsm['X_umap'], if any, is the data's own
        return
    kept = info.get("original_umap")
    adata.obsm.pop(UMAP_KEY, None)
    if kept is not None and str(kept) in adata.obsm:
        adata.obsm[UMAP_KEY] = adata.obsm[str(kept)]
        del adata.obsm[str(kept)]
        _set_note(adata, original_umap_note(str(kept)), False)


def _set_note(adata: ad.AnnData, note: str, present: bool) -> None:
    """Add ``note`` to (or remove it from) the notes of the prediction (``uns['scatd']['notes']``:
    metrics.csv, report.html, ``scatd`` on the terminal), when there is one."""
    run = adata.uns.get(_keys.DEFAULT_PREFIX)
    if not isinstance(run, dict):
        return
    notes = [str(n) for n in run.get("notes", [])]
    if present and note not in notes:
        run["notes"] = [*notes, note]
    elif not present and note in notes:
        notes.remove(note)
        if notes:
            run["notes"] = notes
        else:
            run.pop("notes", None)


def warm_up() -> None:
    """Compile (or load from numba's cache) the layout's and umap-learn's kernels on tiny
    problems, the subsampled path included (once per process)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2 * _SPECTRAL_MIN_CELLS, 4)).astype(np.float32)
    leiden_clusters(_umap(x, neighbours(x, 5, 0), 0.5, 0, 5)[1])
    _umap(x, neighbours(x, 5, 0, fit_max=x.shape[0] // 2), 0.5, 0, 5)  # and the placing of the rest


def fit_note(info: dict) -> str | None:
    """A short note for the plot when the layout was fitted on a subsample (``info``:
    ``uns['scatd_embed']``), else ``None``."""
    fit = info.get("fit") or {}
    if not fit.get("subsampled"):
        return None
    n = fit["n_fitted"] + fit["n_transformed"]
    return f"UMAP fitted on a random {fit['n_fitted']:,} of {counted(n)}; the others placed into that layout"


def umap_caption(info: dict) -> str:
    """The sentence under the Cells page's UMAP (``info``: ``uns['scatd_embed']``): how many cells,
    from which input, and, when the layout was fitted on a subsample (above
    :data:`UMAP_FIT_MAX_CELLS` cells), that it was: a random share of the cells made the layout and
    the others were placed into it, so where they sit is less exact."""
    text = f"UMAP of {counted(info['n_embedded'])} ({info['input']})"
    fit = info.get("fit") or {}
    if fit.get("subsampled"):
        text += (f": fitted on a random {int(fit['n_fitted']):,} of them, the other {int(fit['n_transformed']):,} "
                 "placed into that layout next to their nearest fitted cells")
    return text + f"; {info.get('n_clusters', 0)} Leiden clusters on the latent space."


def plot_coordinates(adata: ad.AnnData, latent_key: str = LATENT_KEY) -> tuple[np.ndarray, str]:
    """2-D coordinates of every cell for plots: ``obsm['X_umap']`` when computed, else the first
    two principal components of the latent space ``obsm['X_scatd']`` (NaN rows stay NaN)."""
    if UMAP_KEY in adata.obsm:
        return np.asarray(adata.obsm[UMAP_KEY])[:, :2], "UMAP"
    if latent_key not in adata.obsm:
        raise InputError("The dataset has neither obsm['X_umap'] nor the latent obsm['X_scatd'].",
                         "Run the prediction first.")
    z = np.asarray(adata.obsm[latent_key], dtype=np.float64)
    ok = np.isfinite(z).all(axis=1)
    coords = np.full((z.shape[0], 2), np.nan)
    if ok.sum() >= 2:
        centred = z[ok] - z[ok].mean(axis=0)
        _u, _s, vt = np.linalg.svd(centred, full_matrices=False)
        pcs = centred @ vt[:2].T
        coords[ok, : pcs.shape[1]] = pcs
    return coords, "PCA of the scATD latent space (no UMAP computed)"
