"""The gene ranking next to a plain differential-expression test, and how the two agree."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scatd_core._matrix import log1p_cp10k

TOP_OVERLAP = (20, 100)


def log_scale(matrix, kind: str, per_cell_totals: np.ndarray | None):
    """The DE matrix on a natural-log scale where that is meaningful, and whether it is."""
    if kind == "counts":  # log1p of counts per 10k over the model's genes, as the model input
        return log1p_cp10k(matrix, per_cell_totals), True
    if kind == "tpm_like":
        out = matrix.copy()
        if sp.issparse(out):
            out.data = np.log1p(out.data)
            return out, True
        return np.log1p(out), True
    return matrix, kind == "log_normalized"


def differential_expression(matrix, groups: np.ndarray, pos: str, neg: str, log_scale: bool) -> pd.DataFrame:
    """Wilcoxon rank-sum test, ``pos`` vs ``neg`` (scanpy ``rank_genes_groups``), per column."""
    import scanpy as sc

    n_cols = matrix.shape[1]
    tmp = ad.AnnData(matrix, obs=pd.DataFrame({"group": pd.Categorical(groups, categories=[neg, pos])},
                                             index=[str(i) for i in range(len(groups))]),
                     var=pd.DataFrame(index=[str(j) for j in range(n_cols)]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(tmp, "group", groups=[pos], reference=neg, method="wilcoxon",
                                n_genes=n_cols, tie_correct=True)
        df = sc.get.rank_genes_groups_df(tmp, group=pos)
    df.index = df["names"].astype(int)
    df = df.reindex(range(n_cols))
    return pd.DataFrame({
        "logfoldchange": df["logfoldchanges"].to_numpy(dtype=float) if log_scale else np.nan,
        "de_score": df["scores"].to_numpy(dtype=float),
        "de_pval": df["pvals"].to_numpy(dtype=float),
        "de_pval_adj": df["pvals_adj"].to_numpy(dtype=float),
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
