"""The gene ranking next to a plain differential-expression test, and how the two agree."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scatd_core._matrix import log1p_cp10k

TOP_OVERLAP = (20, 100)


def log_scale(matrix, kind: str, per_cell_totals: np.ndarray | None, copy: bool = True):
    """The DE matrix on a natural-log scale where that is meaningful, and whether it is.
    ``copy=False``: a float ``matrix`` is transformed in place."""
    if kind == "counts":  # log1p of counts per 10k of the cells' totals (as the model input scales them)
        return log1p_cp10k(matrix, per_cell_totals, copy=copy), True
    if kind == "tpm_like":
        out = matrix.copy() if copy else matrix
        if sp.issparse(out):
            np.log1p(out.data, out=out.data)
            return out, True
        return np.log1p(out, out=out), True
    return matrix, kind == "log_normalized"


def differential_expression(matrix, groups: np.ndarray, pos: str, neg: str, log_scale: bool) -> pd.DataFrame:
    """Wilcoxon rank-sum test, ``pos`` vs ``neg``, per column: the numbers of scanpy's
    ``rank_genes_groups(method="wilcoxon", reference=neg, tie_correct=True)`` (scores and log2 fold
    changes in float32 as scanpy stores them), with the zeros of sparse columns ranked as one tie
    group instead of sorted (:mod:`scatd_core.explain._wilcoxon`)."""
    from scatd_core.explain._wilcoxon import group_means, wilcoxon

    groups = np.asarray(groups)
    keep = (groups == pos) | (groups == neg)
    if not keep.all():
        matrix, groups = matrix[keep], groups[keep]
    first = groups == pos
    scores, pvals, pvals_adj = wilcoxon(matrix, first, tie_correct=True)
    if log_scale:
        mean_pos, mean_neg = group_means(matrix, first)
        with np.errstate(divide="ignore", invalid="ignore"):
            lfc = np.log2((np.expm1(mean_pos) + 1e-9) / (np.expm1(mean_neg) + 1e-9)).astype(np.float32)
    return pd.DataFrame({
        "logfoldchange": lfc.astype(float) if log_scale else np.nan,
        "de_score": scores.astype(np.float32).astype(float),
        "de_pval": pvals,
        "de_pval_adj": pvals_adj,
    })


def agreement(ranking: pd.DataFrame) -> dict:
    """How the attribution ranking and the DE test agree, over features present in the data."""
    from scipy.stats import spearmanr

    ok = ranking[ranking["in_data"] & np.isfinite(ranking["de_score"])]
    if len(ok) < 3:
        return {}
    rho = spearmanr(ok["mean_abs_attribution"], ok["de_score"].abs()).statistic
    by_attr = ok.sort_values("rank")
    by_de = ok.sort_values("de_rank")
    out = {"n_features_compared": int(len(ok)), "spearman_abs_attribution_vs_abs_de_score": round_or_none(rho)}
    for n in TOP_OVERLAP:
        if len(ok) >= n:
            shared = set(by_attr["feature"].head(n)) & set(by_de["feature"].head(n))
            out[f"top{n}_overlap"] = len(shared)
    top = by_attr.head(TOP_OVERLAP[0])
    signed = top[(top["input_gradient"] != 0) & (top["de_score"] != 0)]
    if len(signed):
        out[f"top{TOP_OVERLAP[0]}_direction_agrees_with_de"] = round_or_none(
            float((np.sign(signed["input_gradient"]) == np.sign(signed["de_score"])).mean()))
    return out


def round_or_none(x, digits: int = 4):
    return None if x is None or not np.isfinite(x) else round(float(x), digits)
