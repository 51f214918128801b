"""Integrated-gradients gene rankings: which genes push a cell's prediction toward resistance.

``explain`` runs captum's :class:`~captum.attr.IntegratedGradients` on a bundle's drug
model for the cells of a predicted AnnData and aggregates the per-cell attributions into one
row per model input feature (the 19,264 genes of Dist_VAE, the embedding features of
VAE_sf/VAE_gf), next to a plain differential-expression test between the predicted groups, so
the two can be compared.

What is explained, and why
--------------------------
- **The predicted input.** Cells are read through :class:`scatd_core.inputs.ModelInput` (the
  same instance when the caller passes it), the very inputs :func:`~scatd_core.predict.predict` scored (gene alignment, transform, AdaIN for
  VAE_sf/VAE_gf). The original attribution scripts skipped AdaIN, so they explained inputs the
  model never saw at inference (reference §10, item 22); here they are the same.
- **The deterministic latent-mean path.** ``model(x)`` classifies the latent mean; the original
  sampled ``z`` inside every gradient evaluation, which made its attributions noisy and its
  convergence deltas far from 0 (reference §6.1).
- **Target** (``target=``):

  ``"logit"`` (default)
      ``logit P(resistant) = log P / (1 - P)``; for the two-class head this is the difference of
      the raw logits, ``l_resistant - l_sensitive``. Integrated gradients are *complete*: per
      cell the attributions sum to ``f(x) - f(baseline)``, so each gene's share of the change in
      the model's log-odds is additive and comparable across cells, which a probability (which
      saturates) is not. The original attributed each raw class logit separately (reference
      §6.2); a single raw logit is not identified by a softmax (adding the same amount to both
      logits leaves every prediction unchanged), so a gene could score high on it and still
      not move P(resistant) at all. The log-odds keeps the additivity the original wanted and
      is exactly the quantity the decision threshold acts on.
  ``"raw_logit"``
      The raw resistant-class logit, as the original computed it (for reproduction).
  ``"prob"``
      P(resistant) itself: attributions sum to a change in probability, which is easier to
      read but compresses cells that are already confidently classified.

- **Baselines** (``baseline=``), as the original's "general baselines" (reference §6.2):
  ``zero`` (no expression), ``mean`` (the mean model input of all scored cells; default),
  ``random`` (the mean of ``n_reference_cells`` seeded random scored cells, the original's IG
  ``random`` default, which is a noisier estimate of the same mean), ``mix``
  (``0.5 * mean + 0.5 * random``). A zero baseline rewards genes for being highly expressed at
  all; the mean baseline asks what makes a cell differ from the average cell of the dataset.

Completeness check and its tolerance
------------------------------------
Integrated gradients approximate a path integral with ``n_steps`` quadrature points (captum's
Gauss-Legendre rule). Per cell the convergence delta (captum's definition) is
``sum(attributions) - (f(x) - f(baseline))``; :func:`explain` reports the *relative*
completeness error ``|delta| / max(|f(x) - f(baseline)|, floor)`` (floor: 10% of the median
``|f(x) - f(baseline)|`` over the explained cells, so cells that barely differ from the
baseline do not divide by ~0) and warns when its median exceeds :data:`COMPLETENESS_TOLERANCE`
= 5%. A cell whose ``|f(x) - f(baseline)|`` is float rounding (at most ``OUTPUT_NOISE`` = 1e-5
of the outputs' scale) has no relative error (NaN, counted as ``n_cells_without_change``): it
would be a ratio of two rounding errors. When every explained cell's input equals the baseline
(identical cells against their mean), or the model gives every cell its output at the baseline,
there is nothing to attribute: the result says so (``info['nothing_to_attribute']``, the first
warning), its ranking has no rank, and no advice on ``n_steps`` is given. Why 5%: a ranking of genes only needs the attributions up to a small fraction of the
total change they explain, and the quadrature error is spread over the genes, not
concentrated on one; at that level the top of the ranking does not move when ``n_steps``
changes (16 and 64 steps share at least 19 of their top 20 genes on the planted-program
simulation of ``tests/test_explain.py``). With the smooth scATD networks (Swish, LeakyReLU, batch norm in
eval mode) 50 steps give far smaller errors: a median of 1e-6 and a maximum of 3e-5 for
Dist_VAE at the published size (``benches/README.md``). A large error means
``n_steps`` is too small for that model and should be raised; the tolerance is not tight on
purpose, so that it flags a real problem rather than float noise.

Direction
---------
The signed mean attribution within a predicted group depends on the baseline: with the mean
baseline a gene *lower* in resistant cells and protective when high gets a *positive*
attribution in resistant cells (its low expression pushes them toward resistance). The
``direction`` column therefore uses the sign of ``input_gradient``, the mean path gradient
(weighted by the squared distance from the baseline), which says what *higher* expression of
the gene does to the target whatever the baseline: ``resistance`` (higher expression raises
the target) or ``sensitivity``. For ``logit`` and ``prob`` that is the direction of P(resistant);
for ``raw_logit`` it is the direction of the raw resistant logit alone, which can differ from
P(resistant)'s (the sensitive logit moves too). For embedding features, "expression" is the
feature's value (:func:`direction_meaning` says it for a target and level). The signed group
means are reported too.

Speed and memory
----------------
The input reaches the network only through the first residual block's affine maps, so the
path integral is taken in their output space and mapped back exactly
(:class:`~scatd_core.explain._attribution.Attributor`): the 19,264-wide first layer runs once
per cell (on the sparse batch, as in prediction) instead of once per integration step, every
step of a chunk of cells runs in one forward and one backward pass, and the map back to the
genes is one GEMM per chunk of cells. captum's quadrature points and weights are used, so the
numbers are captum's on the whole model up to float rounding (``factorise=False`` runs captum
itself; both are tested to agree). The data are read once: the attribution pass also keeps
the explained cells' data as given, from which the kept per-cell inputs and the DE test are
computed; the ``mean`` baseline was summed during the prediction. Ranking statistics are
accumulated in float64 as batches go, so they are exact, in one compiled pass over each call's
attributions (:mod:`~scatd_core.explain._sums`). Until the top features are known, each cell
stages what gives its attributions again: with the first-layer factorisation, the gradient's
factors in first-layer space (Dist_VAE: 1,664 + 569 float32 values; the attributions of the
``keep_top`` features are then computed from them, captum's to float32 rounding), otherwise
the attributions themselves at half precision (3 significant digits), whichever is smaller:
10,000 cells stage in 89 MB for a published-size Dist_VAE (385 MB as float16 attributions of
19,264 genes). ``internal_batch_size`` bounds the interpolated rows of one pass and
their gradients to about :data:`IG_MEMORY_BUDGET` bytes. For large data, ``max_cells``
explains a subsample stratified by predicted label (stated in the result). Measured in
predict passes: ``benches/bench_explain.py``.

Where the result goes
---------------------
The ranking, the settings and the checks go to ``uns['scatd_biomarkers']``, the per-cell
attributions and input values of the top genes to ``obsm['scatd_attributions']`` and
``obsm['scatd_attribution_inputs']``, so the exported h5ad, the Report page, the HTML report and
``scatd report --explain`` all carry them (:func:`store`, :func:`from_adata`).

Layout: ``_attribution`` (captum, baselines), ``_path`` (the steps by hand), ``_sums`` (the
ranking's sums), ``_ranking`` and ``_wilcoxon`` (DE test, agreement), ``_explain`` (the steps of
:func:`explain`), ``_estimate`` (:func:`estimate`: its time and memory before it runs, from the
prediction's calibrated rates). :func:`warm_up` compiles their numba kernels ahead of time.
"""

from scatd_core._explain_settings import MAX_STEPS, MIN_STEPS
from scatd_core.explain._attribution import (BASELINE_TITLES, BASELINES, IG_MEMORY_BUDGET, N_REFERENCE_CELLS,
                                             TARGET_TITLES, TARGETS, auto_internal_batch_size,
                                             direction_meaning, zero_baseline_meaning)
from scatd_core.explain._estimate import estimate
from scatd_core.explain._explain import (COMPLETENESS_TOLERANCE, RANKING_COLUMNS, Explanation, completeness_text,
                                         explain, feature_names, from_adata, out_of_date,
                                         signed_mean_near_zero, store, stratified_subsample)


def warm_up() -> None:
    """Compile (or load from numba's disk cache) the kernels of the ranking's sums and of the DE
    test on tiny inputs, e.g. in a background thread at start-up, so the first explanation of a
    server does not wait for them."""
    import numpy as np
    import scipy.sparse as sp

    from scatd_core.explain._sums import column_sums
    from scatd_core.explain._wilcoxon import wilcoxon

    values = np.arange(12, dtype=np.float32).reshape(4, 3)
    column_sums(values, values, np.zeros(3, dtype=np.float32), np.array([1, 0, 1, -1]))
    wilcoxon(sp.csr_matrix(values), np.array([True, False, True, False]))


__all__ = ["warm_up", "explain", "estimate", "Explanation", "from_adata", "out_of_date", "store", "feature_names",
           "stratified_subsample", "completeness_text", "signed_mean_near_zero",
           "BASELINES", "TARGETS", "TARGET_TITLES", "BASELINE_TITLES", "N_REFERENCE_CELLS", "COMPLETENESS_TOLERANCE",
           "IG_MEMORY_BUDGET", "RANKING_COLUMNS", "auto_internal_batch_size", "direction_meaning",
           "zero_baseline_meaning", "MIN_STEPS", "MAX_STEPS"]
