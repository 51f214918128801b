"""What an explanation will cost before it runs: seconds and memory, from calibrated rates.

The same rates as the prediction's estimate (:func:`scatd_core.predict.estimate_seconds`: the
device's GEMM rate and the sparse first layer's, timed once per process), applied to the
products integrated gradients computes per cell with the first-layer factorisation
(:class:`~scatd_core.explain._attribution.Attributor`): the first layer once, ``n_steps``
forward and backward passes through the rest of the network, and the map back to the inputs.
The widths are taken from the architecture before the merging the by-hand path does, so the
products are counted generously; :data:`ESTIMATE_OVERHEAD`, measured by
``benches/bench_explain.py`` (it prints explain's seconds next to this estimate), brings them to
the measured time, and :data:`SECONDS_PER_STORED_VALUE` adds what grows with the cells' data (most
of a small model's time).

Memory: what grows with the cells explained (the gradient factors staged per cell until the top
genes are known, at most float16 attributions of every input; the cells' data as given, read for
the kept inputs and the DE test, with the DE test's copies, :data:`BYTES_PER_STORED_VALUE`; the
kept per-cell attributions and inputs) plus what does not (the interpolation buffers,
:data:`IG_MEMORY_BUDGET`, and the map back's weights). captum's Gauss-Legendre points come from a
steps x steps matrix (8 * steps^2 bytes, about 0.1 s to solve): at most 2 MB at
:data:`~scatd_core._explain_settings.MAX_STEPS` (500), immaterial beside the 256 MB buffers, so it
is not counted; more steps are refused before anything runs.
"""

from __future__ import annotations

from scatd_core.explain._attribution import IG_MEMORY_BUDGET

#: Bytes per stored value of the explained cells' data at the explanation's peak, the DE test:
#: the data as read (float32 values, int32 indices), their float64 copy put on the log scale in
#: place, and the test's column-major float64 copy (measured with ``tracemalloc``).
BYTES_PER_STORED_VALUE = 40
#: Seconds per stored value of the explained cells spent outside the products: the model input's
#: scaling, the DE test, the ranking's sums. Measured on the 2-core machine: ~0.19 us on the demo
#: model (2,000 cells, 35 % of values stored, 50 and 200 steps: the time a run takes at no steps)
#: and ~0.17 us on the published-size one (10,000 cells, 8 %: its parts, ``bench_explain.py --parts``).
SECONDS_PER_STORED_VALUE = 1.7e-7
#: Measured explain seconds, less the stored values' part, over :func:`estimate`'s products at the
#: probed rates (``benches/bench_explain.py``, published-size Dist_VAE, 10,000 cells, 50 steps).
ESTIMATE_OVERHEAD = 0.87


def estimate(bundle, n_cells: int, *, n_steps: int = 50, keep_top: int = 100, density: float | None = None,
             device: str = "auto") -> dict:
    """Expected cost of :func:`scatd_core.explain.explain` on ``n_cells`` cells, without running it.

    ``density``: the fraction of stored values of the data (``scatd_core._matrix.stored_fraction``;
    an expression model on a CPU reads sparse data sparsely). Returns ``{"seconds", "bytes",
    "bytes_per_cell"}``; ``bytes`` is what the explanation holds at its peak beyond the data and
    the model already in memory (an upper bound: the staged factors are counted at their widest).
    """
    from scatd_core.inputs import SPARSE_MAX_DENSITY
    from scatd_core.predict import _flop_rate, _sparse_rate, layer_flops, resolve_device

    dev = resolve_device(device)
    arch = bundle.architecture
    members = arch.n_members
    first, rest, head = layer_flops(arch)
    rest += head
    width = 2 * arch.encoder_dims[1]  # the first layer's output (fc and shortcut): the factors at their widest
    back = first  # the map back to the inputs: the first layer's product, transposed
    sparse = (density is not None and bundle.input_kind == "expression" and dev.type == "cpu"
              and density <= SPARSE_MAX_DENSITY)
    rate = _flop_rate(dev)
    per_cell = members * (2 * int(n_steps) * rest + back) / rate
    per_cell += members * (density * first / _sparse_rate(dev) if sparse else first / rate)
    n_in = arch.input_dim
    staged = min(4 * members * width, 2 * n_in)  # factors (float32) or float16 attributions, the fewer bytes
    stored = density * n_in if sparse else n_in
    bytes_per_cell = int(staged + BYTES_PER_STORED_VALUE * stored + 8 * int(keep_top) + 64)
    fixed = IG_MEMORY_BUDGET + 4 * n_in * members * width // 2
    values = n_in if density is None else density * n_in  # what the cells store, whatever the path
    per_cell = ESTIMATE_OVERHEAD * per_cell + SECONDS_PER_STORED_VALUE * values
    return {"seconds": int(n_cells) * per_cell,
            "bytes": int(fixed + int(n_cells) * bytes_per_cell), "bytes_per_cell": bytes_per_cell}
