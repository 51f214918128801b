"""UMAP's layout, optimised on every core and still reproducible.

umap-learn places the cells by stochastic gradient descent over the edges of the neighbour
graph, one edge after another; with a seed it does so on one core (its parallel mode lets
threads race, and then the same seed gives different layouts). Here the work is split so that
threads never race:

- the cells are divided into :data:`PARTITIONS` groups of neighbouring cells (in the order of
  the spectral initialisation's first coordinate, in runs of about equal work);
- in each epoch every group runs umap-learn's update, in umap-learn's edge order, for the edges
  whose first cell (the one umap-learn moves) is its own. A group reads and moves its own cells
  as it goes; it sees every other cell where it was at the start of the epoch, and the pull it
  puts on another group's cell is added at the end of the epoch, group after group.

No group reads a value another group writes during the epoch, so the layout depends on the data,
the seed and the number of groups, never on the number of threads or their timing: the same on
a laptop and on a 64-core server. With one group it is umap-learn's own sequential
optimisation (``umap.umap_.simplicial_set_embedding``). The rest is umap-learn's: the curve
parameters ``a``, ``b`` (``find_ab_params``), the pruning of weak edges, the spectral
initialisation, the sampling schedule, the per-cell random streams of negative samples, the
gradient clipping and the learning-rate decay. Placing further cells into a finished layout
(umap-learn's ``transform``) moves only those cells, each from its own edges, so it parallelises
exactly.

The kernels are compiled by numba (cached on disk) and release the interpreter lock, so a
server keeps answering other users while a layout runs. umap-learn's own kernels for the
neighbour graph are compiled here with numba's disk cache too (:func:`fuzzy_graph`): umap-learn
compiles them again in every process (~15 s on a 2-core machine), which each server start and
each first UMAP of a process paid.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numba
import numpy as np
import scipy.sparse as sp
from umap.layouts import clip, rdist
from umap.utils import tau_rand_int

#: Groups of cells optimised side by side. Fixed, so that layouts do not depend on the machine;
#: 8 keeps 2 to 8 cores busy.
PARTITIONS = 8
#: Epochs run in one call of the compiled kernel; between two runs the caller hears how far the
#: layout is (and may stop it). The result is the same whatever the value.
EPOCHS_AT_ONCE = 10
#: umap-learn's defaults for the parts of UMAP this module runs.
SPREAD, NEGATIVE_SAMPLE_RATE, REPULSION, LEARNING_RATE = 1.0, 5.0, 1.0, 1.0


@numba.njit(parallel=True, fastmath=True, nogil=True, cache=True)
def _optimise(head_emb, tail_emb, owner, head, tail, starts, eps, n_tail, a, b, gamma, alpha0, neg_rate,
              n_epochs, first, last, next_sample, next_neg, learning_rate, move_other, rng):  # pragma: no cover - compiled
    """umap-learn's euclidean layout epochs ``first`` to ``last - 1`` of ``n_epochs``, edge groups
    ``starts[p]:starts[p+1]`` side by side.

    ``owner[v]``: the group that may read and move tail cell ``v`` live (-1: none; then it is read
    from the start-of-epoch copy and, with ``move_other``, its moves are added after the epoch).
    With ``move_other``, ``head_emb`` and ``tail_emb`` are the same array. ``next_sample``,
    ``next_neg`` (each edge's next epoch to sample, its negative samples'), ``learning_rate[0]`` and
    ``rng`` carry on from one call to the next, so consecutive ranges of epochs give the layout of
    one call (tested).
    """
    n_groups = starts.size - 1
    dim = head_emb.shape[1]
    eps_neg = eps / neg_rate
    seen = tail_emb.copy()  # every cell where it was when the epoch began
    pulls = np.zeros((n_groups if move_other else 1, n_tail, dim), dtype=np.float32)
    if first == 0:
        next_sample[:] = eps
        next_neg[:] = eps_neg
        learning_rate[0] = alpha0
    alpha = learning_rate[0]
    for n in range(first, last):
        for g in numba.prange(n_groups):
            for i in range(starts[g], starts[g + 1]):
                if next_sample[i] > n:
                    continue
                j = head[i]
                k = tail[i]
                current = head_emb[j]
                own = owner[k] == g
                other = tail_emb[k] if own else seen[k]
                dist_squared = rdist(current, other)
                if dist_squared > 0.0:
                    grad_coeff = -2.0 * a * b * pow(dist_squared, b - 1.0)
                    grad_coeff /= a * pow(dist_squared, b) + 1.0
                else:
                    grad_coeff = 0.0
                for d in range(dim):
                    grad_d = clip(grad_coeff * (current[d] - other[d]))
                    current[d] += grad_d * alpha
                    if move_other:
                        if own:
                            other[d] += -grad_d * alpha
                        else:
                            pulls[g, k, d] += -grad_d * alpha
                next_sample[i] += eps[i]
                n_neg = int((n - next_neg[i]) / eps_neg[i])
                for _ in range(n_neg):
                    k = tau_rand_int(rng[j]) % n_tail
                    other = tail_emb[k] if owner[k] == g else seen[k]
                    dist_squared = rdist(current, other)
                    if dist_squared > 0.0:
                        grad_coeff = 2.0 * gamma * b
                        grad_coeff /= (0.001 + dist_squared) * (a * pow(dist_squared, b) + 1)
                    elif j == k:
                        continue
                    else:
                        grad_coeff = 0.0
                    for d in range(dim):
                        if grad_coeff > 0.0:
                            grad_d = clip(grad_coeff * (current[d] - other[d]))
                        else:
                            grad_d = 0.0
                        current[d] += grad_d * alpha
                next_neg[i] += n_neg * eps_neg[i]
        if move_other:
            for v in numba.prange(n_tail):
                for g in range(n_groups):  # in group order: the same sums whatever the threads
                    for d in range(dim):
                        tail_emb[v, d] += pulls[g, v, d]
                        pulls[g, v, d] = 0.0
                for d in range(dim):
                    seen[v, d] = tail_emb[v, d]
        alpha = alpha0 * (1.0 - float(n) / float(n_epochs))
    learning_rate[0] = alpha
    return head_emb


def _epochs(head_emb, tail_emb, owner, head, tail, starts, eps, n_tail, a, b, gamma, alpha0, n_epochs, move_other,
            rng, between: Callable[[float], None] | None, at_once: int | None = None) -> np.ndarray:
    """:func:`_optimise` over all ``n_epochs``, :data:`EPOCHS_AT_ONCE` at a time, calling
    ``between(fraction done)`` after each run but the last."""
    at_once = at_once or EPOCHS_AT_ONCE
    next_sample, next_neg, learning_rate = np.empty_like(eps), np.empty_like(eps), np.empty(1)
    for first in range(0, n_epochs, at_once):
        last = min(first + at_once, n_epochs)
        _optimise(head_emb, tail_emb, owner, head, tail, starts, eps, n_tail, a, b, gamma, alpha0,
                  NEGATIVE_SAMPLE_RATE, n_epochs, first, last, next_sample, next_neg, learning_rate, move_other, rng)
        if between is not None and last < n_epochs:
            between(last / n_epochs)
    return head_emb


def _rng_streams(rng_state: np.ndarray, first_coordinate: np.ndarray) -> np.ndarray:
    """umap-learn's per-cell random streams: its seed state offset by the bits of each cell's
    first starting coordinate."""
    offsets = first_coordinate.astype(np.float64).view(np.int64).reshape(-1, 1)
    with np.errstate(over="ignore"):
        return np.full((first_coordinate.size, rng_state.size), rng_state, dtype=np.int64) + offsets


def _groups(head: np.ndarray, work: np.ndarray, order: np.ndarray, n_vertices: int, partitions: int):
    """Split the cells, taken in ``order``, into ``partitions`` runs of about equal ``work`` (per
    edge, counted at its first cell); returns each cell's group and the edges, grouped, in their
    order within each group."""
    per_vertex = np.bincount(head, weights=work, minlength=n_vertices)[order]
    cumulative = np.cumsum(per_vertex)
    total = cumulative[-1] if cumulative.size else 0.0
    cut = np.searchsorted(cumulative, total * np.arange(1, partitions) / partitions, side="right")
    group_in_order = np.zeros(n_vertices, dtype=np.int64)
    for c in cut:
        group_in_order[c:] += 1
    owner = np.empty(n_vertices, dtype=np.int64)
    owner[order] = group_in_order
    edge_order = np.argsort(owner[head], kind="stable")
    starts = np.searchsorted(owner[head][edge_order], np.arange(partitions + 1)).astype(np.int64)
    return owner, edge_order, starts


def _cached(kernel):
    """umap-learn's numba kernel ``kernel`` compiled with numba's disk cache (umap-learn compiles
    it again in every process, ~15 s for the two graph kernels on this machine)."""
    options = {k: v for k, v in kernel.targetoptions.items() if k != "nopython"}  # njit sets it
    try:
        return numba.njit(kernel.py_func, cache=True, locals=dict(kernel.locals), **options)
    except RuntimeError:  # numba finds no writable cache folder: compiled in this process, as umap-learn does
        return kernel


_KERNELS: dict = {}


def _kernel(name: str):
    if name not in _KERNELS:
        import umap.umap_

        _KERNELS[name] = _cached(getattr(umap.umap_, name))
    return _KERNELS[name]


def fuzzy_graph(indices: np.ndarray, distances: np.ndarray) -> sp.csr_matrix:
    """umap-learn's fuzzy neighbour graph (``fuzzy_simplicial_set`` with its defaults: local
    connectivity 1, fuzzy union) from each cell's neighbours (cells x k, itself first), with
    umap-learn's kernels compiled once per machine."""
    n, k = indices.shape
    dists = np.ascontiguousarray(distances, dtype=np.float32)
    sigmas, rhos = _kernel("smooth_knn_dist")(dists, float(k), local_connectivity=1.0)
    rows, cols, vals, _ = _kernel("compute_membership_strengths")(np.ascontiguousarray(indices, dtype=np.int64),
                                                                  dists, sigmas, rhos, False, False)
    graph = sp.coo_matrix((vals, (rows, cols)), shape=(n, n))
    graph.eliminate_zeros()
    transpose = graph.transpose()
    product = graph.multiply(transpose)
    graph = 1.0 * (graph + transpose - product) + 0.0 * product
    graph.eliminate_zeros()
    return graph.tocsr()


@numba.njit(nogil=True, cache=True)
def _start_positions(indptr, indices, data, fitted):  # pragma: no cover - compiled
    """Where umap-learn's ``transform`` starts each new cell (``init_graph_transform``, without
    its Python loop over the cells; float32, equal to within rounding): the mean of the cell's
    fitted neighbours' positions weighted by the graph, or the position of the first neighbour it
    is fully joined to (weight 1); NaN without neighbours."""
    n = indptr.size - 1
    out = np.zeros((n, fitted.shape[1]), dtype=np.float32)
    for row in range(n):
        lo, hi = indptr[row], indptr[row + 1]
        if hi == lo:
            out[row, :] = np.nan
            continue
        total = np.float32(0.0)
        for e in range(lo, hi):
            total += data[e]
        for e in range(lo, hi):
            if data[e] == 1:
                out[row, :] = fitted[indices[e], :]
                break
            share = np.float32(data[e] / total)
            for d in range(fitted.shape[1]):
                out[row, d] += share * fitted[indices[e], d]
    return out


def ab_params(min_dist: float) -> tuple[float, float]:
    """umap-learn's curve parameters for ``min_dist`` (and spread 1)."""
    from umap.umap_ import find_ab_params

    a, b = find_ab_params(SPREAD, min_dist)
    return float(a), float(b)


def prune(graph: sp.spmatrix, n_epochs: int) -> sp.coo_matrix:
    """umap-learn's pruning: the edges too weak to be sampled once in ``n_epochs`` epochs are
    dropped (a copy; ``graph`` is left as it is)."""
    graph = graph.tocoo(copy=True)
    graph.sum_duplicates()
    graph.data[graph.data < graph.data.max() / float(n_epochs)] = 0.0
    graph.eliminate_zeros()
    return graph


def fit(graph: sp.spmatrix, points: np.ndarray, *, n_epochs: int, min_dist: float, seed: int,
        init: str = "spectral", partitions: int = PARTITIONS, between: Callable[[float], None] | None = None) -> np.ndarray:
    """2-D layout of the fuzzy neighbour graph ``graph`` (umap-learn's ``fuzzy_simplicial_set``)
    of ``points`` (cells x dimensions, euclidean; where the graph falls apart, its pieces start
    where their centroids lie): umap-learn's ``simplicial_set_embedding`` (euclidean output) with
    the optimisation split into ``partitions`` groups (see the module). ``partitions=1`` is
    umap-learn's own. ``between(fraction)`` is called between runs of :data:`EPOCHS_AT_ONCE`
    epochs (the fraction of the epochs done): an exception it raises stops the layout there.
    """
    from umap.spectral import spectral_layout
    from umap.umap_ import INT32_MAX, INT32_MIN, make_epochs_per_sample, noisy_scale_coords

    random_state = np.random.RandomState(seed)
    graph = prune(graph, n_epochs)
    n = graph.shape[1]
    if init == "random":
        emb = random_state.uniform(low=-10.0, high=10.0, size=(n, 2)).astype(np.float32)
    else:
        with warnings.catch_warnings():  # "graph is not fully connected": its pieces are laid out apart
            warnings.simplefilter("ignore", UserWarning)
            emb = spectral_layout(points, graph, 2, random_state, metric="euclidean", metric_kwds={})
        emb = noisy_scale_coords(emb, random_state, max_coord=10, noise=0.0001)
    eps = make_epochs_per_sample(graph.data, n_epochs)
    rng_state = random_state.randint(INT32_MIN, INT32_MAX, 3).astype(np.int64)
    emb = (10.0 * (emb - emb.min(0)) / (emb.max(0) - emb.min(0))).astype(np.float32, order="C")
    head, tail = graph.row.astype(np.int64), graph.col.astype(np.int64)
    owner, edge_order, starts = _groups(head, 1.0 / eps, np.argsort(emb[:, 0], kind="stable"), n, partitions)
    a, b = ab_params(min_dist)
    rng = _rng_streams(rng_state, emb[:, 0])
    return _epochs(emb, emb, owner, head[edge_order], tail[edge_order], starts, eps[edge_order], n, a, b,
                   REPULSION, LEARNING_RATE, n_epochs, True, rng, between)


def place(indices: np.ndarray, distances: np.ndarray, fitted: np.ndarray, *, n_epochs: int, min_dist: float,
          seed: int, partitions: int = PARTITIONS, between: Callable[[float], None] | None = None) -> np.ndarray:
    """Coordinates of further cells in the finished layout ``fitted``, from their nearest fitted
    cells (``indices``, ``distances``: cells x k): umap-learn's ``transform`` (its graph to the
    fitted cells, its start at the weighted mean of those cells, a third of the epochs at a
    quarter of the learning rate; the fitted cells stay where they are). Each cell moves along
    its own edges only, so the groups give exactly the sequential result. The starts are computed
    in compiled code (umap-learn loops over the cells in Python) and may differ from umap-learn's
    in the last bit; each cell's random stream is seeded from its start, so its path then
    differs too, keeping the neighbours as well (tested). ``between`` as for :func:`fit`."""
    from umap.umap_ import INT32_MAX, INT32_MIN, make_epochs_per_sample

    k = indices.shape[1]
    dists = np.ascontiguousarray(distances, dtype=np.float32)
    sigmas, rhos = _kernel("smooth_knn_dist")(dists, float(k), local_connectivity=0.0)
    rows, cols, vals, _ = _kernel("compute_membership_strengths")(np.ascontiguousarray(indices, dtype=np.int64),
                                                                  dists, sigmas, rhos, False, True)
    graph = sp.coo_matrix((vals, (rows, cols)), shape=(indices.shape[0], fitted.shape[0]))
    csr = graph.tocsr()
    csr.eliminate_zeros()
    emb = _start_positions(csr.indptr, csr.indices, csr.data.astype(np.float32),
                           np.ascontiguousarray(fitted, dtype=np.float32))
    epochs = max(1, int(n_epochs // 3))
    graph.data[graph.data < graph.data.max() / float(epochs)] = 0.0
    graph.eliminate_zeros()
    eps = make_epochs_per_sample(graph.data, epochs)
    head, tail = graph.row.astype(np.int64), graph.col.astype(np.int64)
    n_new = emb.shape[0]
    _, edge_order, starts = _groups(head, 1.0 / eps, np.arange(n_new), n_new, partitions)
    rng_state = np.random.RandomState(seed).randint(INT32_MIN, INT32_MAX, 3).astype(np.int64)
    rng = _rng_streams(rng_state, emb[:, 0])
    never = np.full(fitted.shape[0], -1, dtype=np.int64)
    return _epochs(emb, np.ascontiguousarray(fitted, dtype=np.float32), never, head[edge_order],
                   tail[edge_order], starts, eps[edge_order], fitted.shape[0], *ab_params(min_dist), REPULSION,
                   LEARNING_RATE / 4.0, epochs, False, rng, between)
