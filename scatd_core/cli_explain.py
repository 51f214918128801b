"""``scatd explain``: integrated-gradients gene rankings from the command line.

Wired into :mod:`scatd_core.cli` with ``add_explain(sub)``. It reads the data, predicts with the
model (so the predicted groups and the explained inputs are this model's), explains, and writes
``biomarkers.csv`` (one row per model gene / feature, best first) and, on request, the per-cell
attributions of the top genes.
"""

from __future__ import annotations

from pathlib import Path

from scatd_core.errors import ScatdError


def add_explain(sub) -> None:
    from scatd_core.explain import BASELINES, TARGETS

    p = sub.add_parser("explain", help="rank genes by integrated-gradients attribution (biomarkers)",
                       description="Predict, then explain the predictions with integrated gradients (captum): "
                                   "one row per model gene (Dist_VAE) or embedding feature (VAE_sf/VAE_gf), "
                                   "with a Wilcoxon DE test between the predicted groups for comparison.")
    p.add_argument("--model", required=True, help="bundle folder (or a bundle name in the model library)")
    p.add_argument("--input", required=True, help="single-cell data: h5ad, 10x h5/mtx/zip, CSV/TSV(.gz), "
                                                  "loom, or .npy embeddings")
    p.add_argument("--output", required=True, help="the ranking CSV to write (e.g. biomarkers.csv)")
    p.add_argument("--baseline", default="mean", choices=BASELINES,
                   help="IG baseline: dataset mean (default), zero, mean of random cells, or a mix")
    p.add_argument("--steps", type=int, default=50, help="integration steps (default 50)")
    p.add_argument("--target", default="logit", choices=TARGETS,
                   help="logit P(resistant) (default), the raw resistant logit (as the original), or P(resistant)")
    p.add_argument("--max-cells", type=int, help="explain a subsample of at most N cells, stratified by "
                                                 "predicted label (default: all scored cells)")
    p.add_argument("--per-cell-top", nargs=2, metavar=("K", "CSV"),
                   help="also write the per-cell attributions of the top K genes to CSV")
    p.add_argument("--seed", type=int, default=0, help="seed of the subsample and random baselines")
    p.add_argument("--threshold", type=float, help="decision threshold defining the groups (default: the bundle's)")
    p.add_argument("--no-de", action="store_true", help="skip the differential-expression comparison")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--orientation", default="auto", choices=["auto", "cells_x_genes", "genes_x_cells"],
                   help="CSV/TSV orientation (default: detected)")
    p.set_defaults(run=run_explain)


def _per_cell_arg(values) -> tuple[int, Path] | None:
    if not values:
        return None
    k, path = values
    try:
        k = int(k)
    except ValueError:
        raise ScatdError(f"--per-cell-top takes a number of genes and a file, got {k!r} {path!r}.",
                         "Example: --per-cell-top 50 per_cell.csv") from None
    if k < 1:
        raise ScatdError("--per-cell-top needs at least 1 gene.")
    return k, Path(path)


def run_explain(args) -> int:
    from scatd_core import io
    from scatd_core.cli import _Progress, _say, resolve_bundle
    from scatd_core.explain import explain
    from scatd_core.predict import predict

    per_cell = _per_cell_arg(args.per_cell_top)
    if args.steps < 2:
        raise ScatdError(f"--steps must be at least 2, got {args.steps}.")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise ScatdError(f"--threshold must be between 0 and 1, got {args.threshold}.")
    bundle = resolve_bundle(args.model)
    adata = io.read(args.input, orientation=args.orientation)
    _say(f"Read {adata.n_obs:,} cells x {adata.n_vars:,} features from {Path(args.input).name}")
    predict(adata, bundle, device=args.device, threshold=args.threshold, progress=_Progress("Predicting"))
    result = explain(adata, bundle, baseline=args.baseline, n_steps=args.steps, target=args.target,
                     max_cells=args.max_cells, seed=args.seed, device=args.device,
                     keep_top=per_cell[0] if per_cell else 0, differential_expression=not args.no_de,
                     progress=_Progress("Explaining"))
    info = result.info
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    result.ranking.to_csv(out, index=False)
    _say(info["statement"])
    comp = info["completeness"]
    _say(f"Completeness error: median {comp['median_relative_error']:.2%}, max {comp['max_relative_error']:.2%} "
         f"(tolerance {comp['tolerance']:.0%}).")
    agree = info["agreement"]
    if agree:
        overlap = agree.get("top20_overlap")
        _say(f"Attribution vs DE: Spearman {agree['spearman_abs_attribution_vs_abs_de_score']}"
             + (f", {overlap} of the top 20 shared" if overlap is not None else "") + ".")
    for w in info["warnings"]:
        _say(f"warning: {w}")
    for n in info["notes"]:
        _say(f"note: {n}")
    top = ", ".join(result.ranking["feature"].head(10))
    _say(f"Top features: {top}. Wrote {out}")
    if per_cell:
        k, path = per_cell
        path.parent.mkdir(parents=True, exist_ok=True)
        result.per_cell(k).to_csv(path)
        _say(f"Wrote per-cell attributions of the top {min(k, len(result.features))} to {path}")
    return 0
