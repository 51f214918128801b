"""The sparse Wilcoxon rank-sum test gives scanpy's rank_genes_groups numbers."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scatd_core.explain._ranking import differential_expression
from scatd_core.explain._wilcoxon import benjamini_hochberg


def _scanpy(matrix, groups, pos, neg, log_scale):
    import scanpy as sc

    n_cols = matrix.shape[1]
    tmp = ad.AnnData(matrix, obs=pd.DataFrame({"group": pd.Categorical(groups, categories=[neg, pos])},
                                             index=[str(i) for i in range(len(groups))]),
                     var=pd.DataFrame(index=[str(j) for j in range(n_cols)]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(tmp, "group", groups=[pos], reference=neg, method="wilcoxon", n_genes=n_cols,
                                tie_correct=True)
        df = sc.get.rank_genes_groups_df(tmp, group=pos)
    df.index = df["names"].astype(int)
    return df.reindex(range(n_cols))


def _data(seed: int, n_cells: int = 300, n_genes: int = 60, dense: bool = False):
    rng = np.random.default_rng(seed)
    counts = rng.negative_binomial(1, 0.6, size=(n_cells, n_genes)).astype(np.float64)
    counts[:, :5] *= rng.random((n_cells, 5)) < 0.05      # nearly empty genes
    counts[:, 5] = 0                                        # an empty gene
    counts[:, 6] = 3                                        # a constant gene
    groups = np.where(np.arange(n_cells) < n_cells // 3, "resistant", "sensitive")
    rng.shuffle(groups)
    counts[groups == "resistant", 7] += 4                   # a marker of the first group
    values = np.log1p(counts)
    values[:, 8] -= 0.7                                     # negative values and ties
    values[:, 9] = np.round(rng.normal(size=n_cells), 1)    # many ties around zero
    return (values if dense else sp.csr_matrix(values)), groups


@pytest.mark.parametrize("seed,dense", [(0, False), (1, False), (2, True)])
def test_the_sparse_wilcoxon_test_gives_scanpys_numbers(seed, dense):
    matrix, groups = _data(seed, dense=dense)
    ours = differential_expression(matrix, groups, "resistant", "sensitive", log_scale=True)
    ref = _scanpy(matrix, groups, "resistant", "sensitive", True)
    np.testing.assert_array_equal(ours["de_score"].to_numpy(), ref["scores"].to_numpy(dtype=float))
    np.testing.assert_allclose(ours["de_pval"].to_numpy(), ref["pvals"].to_numpy(dtype=float), rtol=1e-12, atol=0)
    np.testing.assert_allclose(ours["de_pval_adj"].to_numpy(), ref["pvals_adj"].to_numpy(dtype=float), rtol=1e-12)
    np.testing.assert_allclose(ours["logfoldchange"].to_numpy(), ref["logfoldchanges"].to_numpy(dtype=float),
                               rtol=1e-5, atol=1e-6)
    assert ours.loc[7, "de_score"] > 5                     # the marker is found
    assert ours.loc[5, "de_score"] == 0 and ours.loc[5, "de_pval"] == 1


def test_cells_of_neither_group_are_left_out():
    matrix, groups = _data(3)
    groups = groups.copy()
    groups[::7] = "filtered"
    ours = differential_expression(matrix, groups, "resistant", "sensitive", log_scale=False)
    keep = groups != "filtered"
    ref = _scanpy(matrix[keep], groups[keep], "resistant", "sensitive", False)
    np.testing.assert_array_equal(ours["de_score"].to_numpy(), ref["scores"].to_numpy(dtype=float))
    assert ours["logfoldchange"].isna().all()


def test_benjamini_hochberg_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests

    p = np.random.default_rng(0).random(500) ** 3
    p[:10] = p[10]  # ties
    np.testing.assert_allclose(benjamini_hochberg(p), multipletests(p, method="fdr_bh")[1], rtol=1e-13)
