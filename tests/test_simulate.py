"""The demo simulator: determinism, count statistics, label format and the planted program."""

from __future__ import annotations

import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.stats import mannwhitneyu
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from conftest import shared_file
from scatd_core.demo import simulate
from scatd_core.demo.simulate import (
    CELL_STATES, DEMO_DRUG, DRUGS, MT_GENES, RESISTANCE_PROGRAM, SIMULATED_DATA_LABEL,
    demo_genes, simulate_bulk, simulate_demo, simulate_tumour,
)


@pytest.fixture(scope="module")
def bulk_and_labels():
    return simulate_bulk(seed=0)


@pytest.fixture(scope="module")
def tumour():
    return simulate_tumour(seed=0)


def _log_normalised(counts: sp.csr_matrix) -> np.ndarray:
    dense = counts.toarray()
    return np.log1p(1e4 * dense / dense.sum(axis=1, keepdims=True))


# gene panel -------------------------------------------------------------------------------

def test_gene_panel_is_real_looking_symbols():
    genes = demo_genes()
    assert 1900 <= len(genes) <= 2100
    assert len(set(genes)) == len(genes)
    assert all(re.fullmatch(r"[A-Z0-9][A-Z0-9-]*", g) for g in genes)
    assert set(MT_GENES) <= set(genes) and len(MT_GENES) == 13
    assert set(RESISTANCE_PROGRAM) <= set(genes) and len(set(RESISTANCE_PROGRAM)) == 20
    for markers in simulate.STATE_MARKERS.values():
        assert set(markers) <= set(genes)


def test_gene_panel_symbols_are_known_hgnc_symbols():
    """Nearly all symbols are in scFoundation's vocabulary (a few non-coding ones are not, e.g. MALAT1)."""
    vocabulary = pd.read_csv(shared_file("scfoundation", "OS_scRNA_gene_index.19264.tsv"), sep="\t")
    known = set(vocabulary["gene_name"])
    unknown = [g for g in demo_genes() if g not in known]
    assert len(unknown) <= 10, unknown
    assert set(RESISTANCE_PROGRAM) <= known


def test_bulk_and_tumour_share_most_but_not_all_genes(bulk_and_labels, tumour):
    bulk, _ = bulk_and_labels
    panel = set(demo_genes())
    bulk_genes, tumour_genes = set(bulk.var_names), set(tumour.var_names)
    assert bulk_genes <= panel and tumour_genes <= panel
    assert 0.85 <= len(bulk_genes) / len(panel) <= 0.95
    assert 0.90 <= len(tumour_genes) / len(panel) <= 0.98
    assert bulk_genes - tumour_genes and tumour_genes - bulk_genes
    assert set(RESISTANCE_PROGRAM) <= bulk_genes & tumour_genes
    assert list(bulk.var_names[bulk.var["resistance_program"]]) == sorted(RESISTANCE_PROGRAM)


# determinism ------------------------------------------------------------------------------

def test_bulk_is_deterministic_per_seed(bulk_and_labels):
    bulk, labels = bulk_and_labels
    again, labels_again = simulate_bulk(seed=0)
    np.testing.assert_array_equal(bulk.X, again.X)
    pd.testing.assert_frame_equal(bulk.obs, again.obs)
    pd.testing.assert_frame_equal(labels, labels_again)
    other, other_labels = simulate_bulk(seed=1)
    assert not np.array_equal(bulk.X, other.X)
    assert not labels.equals(other_labels)


def test_tumour_is_deterministic_per_seed(tumour):
    again = simulate_tumour(seed=0)
    assert (tumour.X != again.X).nnz == 0
    pd.testing.assert_frame_equal(tumour.obs, again.obs)
    other = simulate_tumour(seed=1)
    assert tumour.X.shape == other.X.shape and (tumour.X != other.X).nnz > 0
    assert not tumour.obs_names.equals(other.obs_names)


def test_tumour_chunks_keep_cells_and_their_expected_counts(monkeypatch):
    whole = simulate_tumour(n_cells=500, seed=3)
    monkeypatch.setattr(simulate, "_CHUNK_CELLS", 120)
    chunked = simulate_tumour(n_cells=500, seed=3)
    assert (chunked.X != simulate_tumour(n_cells=500, seed=3).X).nnz == 0
    assert chunked.shape == whole.shape and sp.isspmatrix_csr(chunked.X)
    pd.testing.assert_frame_equal(whole.obs, chunked.obs)
    # same cells, same expected library sizes; only the count noise differs
    totals = [np.asarray(x.X.sum(axis=1)).ravel() for x in (whole, chunked)]
    assert np.corrcoef(*totals)[0, 1] > 0.95


# count statistics -------------------------------------------------------------------------

def test_tumour_counts_look_like_umi_counts(tumour):
    X = tumour.X
    assert sp.isspmatrix_csr(X) and X.dtype == np.float32
    assert X.data.min() >= 0 and np.array_equal(X.data, np.round(X.data))
    assert tumour.shape[0] == 2000
    library = np.asarray(X.sum(axis=1)).ravel()
    assert library.min() > 0
    assert 0.3 < library.std() / library.mean() < 1.0   # log-normal library sizes
    assert 2000 < np.median(library) < 5000
    zero_fraction = 1.0 - X.nnz / (X.shape[0] * X.shape[1])
    assert 0.5 < zero_fraction < 0.95
    # negative binomial: over-dispersed relative to Poisson within a homogeneous group
    group = ((tumour.obs["cluster"] == "epithelial") & (tumour.obs["response"] == "sensitive")
             & (tumour.obs["sample"] == "P1")).to_numpy()
    scaled = X[group].toarray() / library[group, None] * np.median(library[group])
    mean, var = scaled.mean(axis=0), scaled.var(axis=0)
    expressed = mean > 1.0
    assert np.median(var[expressed] / mean[expressed]) > 1.5


def test_tumour_mitochondrial_and_obs(tumour):
    mt = tumour.var_names.str.startswith("MT-")
    assert mt.sum() == 13
    library = np.asarray(tumour.X.sum(axis=1)).ravel()
    mt_fraction = np.asarray(tumour.X[:, mt].sum(axis=1)).ravel() / library
    assert 0.02 < np.median(mt_fraction) < 0.08
    assert (mt_fraction > 0.15).mean() > 0.01       # some damaged cells for QC to find
    obs = tumour.obs
    assert list(obs["sample"].cat.categories) == ["P1", "P2", "P3"]
    assert list(obs["cluster"].cat.categories) == list(CELL_STATES)
    assert obs["cluster"].value_counts().min() > 100
    assert list(obs["response"].cat.categories) == ["sensitive", "resistant"]
    assert 0.2 < (obs["response"] == "resistant").mean() < 0.4
    assert tumour.obs_names.is_unique
    assert tumour.uns["simulation"]["label"] == SIMULATED_DATA_LABEL


def test_tumour_parameters_change_what_they_say():
    deep = simulate_tumour(n_cells=300, seed=0, median_counts=6000, n_samples=2,
                           resistant_fraction=0.6)
    assert list(deep.obs["sample"].cat.categories) == ["P1", "P2"]
    assert np.median(np.asarray(deep.X.sum(axis=1)).ravel()) > 4000
    assert (deep.obs["response"] == "resistant").mean() > 0.45


# labels -----------------------------------------------------------------------------------

def test_labels_table_format(bulk_and_labels, tmp_path):
    bulk, labels = bulk_and_labels
    assert list(labels.columns) == list(DRUGS) and labels.columns[0] == DEMO_DRUG
    assert labels.index.equals(bulk.obs_names)
    assert set(np.unique(labels.to_numpy())) == {"sensitive", "resistant"}
    sensitive = (labels == "sensitive").mean()
    assert sensitive.between(0.15, 0.4).all(), sensitive
    path = tmp_path / "labels.csv"
    labels.to_csv(path)
    raw = pd.read_csv(path)
    assert list(raw.iloc[:, 0]) == list(bulk.obs_names)   # first column: cell-line ids
    assert list(raw.columns[1:]) == list(DRUGS)


def test_missing_labels_are_nan():
    _, labels = simulate_bulk(n_cell_lines=200, seed=0, missing_label_fraction=0.2)
    missing = labels.isna().mean()
    assert missing.between(0.1, 0.3).all()
    assert set(labels.stack().unique()) == {"sensitive", "resistant"}


def test_bulk_values_are_log_tpm(bulk_and_labels):
    bulk, _ = bulk_and_labels
    assert bulk.X.dtype == np.float32 and not sp.issparse(bulk.X)
    assert bulk.X.min() >= 0 and bulk.X.max() < 18
    assert 2 < np.median(bulk.X) < 7
    assert bulk.obs["tissue"].nunique() == 8


# the planted program ----------------------------------------------------------------------

def test_program_is_up_in_resistant_bulk_lines(bulk_and_labels):
    bulk, labels = bulk_and_labels
    resistant = (labels[DEMO_DRUG] == "resistant").to_numpy()
    program = bulk[:, list(RESISTANCE_PROGRAM)].X
    difference = program[resistant].mean(axis=0) - program[~resistant].mean(axis=0)
    assert (difference > 0.5).all(), dict(zip(RESISTANCE_PROGRAM, difference.round(2)))
    score = program.mean(axis=1)
    assert mannwhitneyu(score[resistant], score[~resistant], alternative="greater").pvalue < 1e-10


def test_program_is_up_in_resistant_cells(tumour):
    resistant = (tumour.obs["response"] == "resistant").to_numpy()
    expression = _log_normalised(tumour.X)
    lfc = expression[resistant].mean(axis=0) - expression[~resistant].mean(axis=0)
    in_program = tumour.var["resistance_program"].to_numpy()
    assert (lfc[in_program] > 0.2).all()
    top = set(tumour.var_names[np.argsort(-lfc)[:20]])
    assert len(top & set(RESISTANCE_PROGRAM)) >= 15
    score = expression[:, in_program].mean(axis=1)
    assert 0.85 < roc_auc_score(resistant, score) < 0.99


def test_bulk_labels_are_learnable_but_not_trivial(bulk_and_labels):
    bulk, labels = bulk_and_labels
    y = (labels[DEMO_DRUG] == "resistant").to_numpy()
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=1000))
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    probability = cross_val_predict(model, bulk[:, list(RESISTANCE_PROGRAM)].X, y, cv=folds,
                                    method="predict_proba")[:, 1]
    assert 0.75 <= roc_auc_score(y, probability) <= 0.97


def test_without_program_effect_labels_are_not_predictable_from_it():
    bulk, labels = simulate_bulk(seed=0, program_strength=0.0)
    y = (labels[DEMO_DRUG] == "resistant").to_numpy()
    score = bulk[:, list(RESISTANCE_PROGRAM)].X.mean(axis=1)
    assert abs(roc_auc_score(y, score) - 0.5) < 0.12


# API --------------------------------------------------------------------------------------

def test_simulate_demo_and_h5ad_round_trip(tmp_path):
    bulk, labels, tumour = simulate_demo(seed=0)
    assert bulk.n_obs == 300 and tumour.n_obs == 2000 and labels.shape == (300, len(DRUGS))
    for data in (bulk, tumour):
        path = tmp_path / "data.h5ad"
        data.write_h5ad(path)
        back = ad.read_h5ad(path)
        assert back.uns["simulation"]["demo_drug"] == DEMO_DRUG
        assert list(back.uns["simulation"]["resistance_program"]) == list(RESISTANCE_PROGRAM)
        pd.testing.assert_frame_equal(back.obs, data.obs)


def test_the_docstring_example_and_the_recorded_simulator_name_real_functions(bulk_and_labels, tumour):
    """The module's example imported from scatd_core.simulate, and the data recorded that name as the
    simulator: there is no such module (ModuleNotFoundError), the simulator is scatd_core.demo.simulate."""
    import importlib

    example = next(line[4:] for line in simulate.__doc__.splitlines() if line.startswith(">>> from"))
    exec(example, {})  # noqa: S102 (the docstring's own import line)
    for data, function in ((bulk_and_labels[0], "simulate_bulk"), (tumour, "simulate_tumour")):
        module, _, name = data.uns["simulation"]["simulator"].rpartition(".")
        assert name == function and getattr(importlib.import_module(module), name) is getattr(simulate, function)


@pytest.mark.parametrize("call", [
    lambda: simulate_bulk(n_cell_lines=0),
    lambda: simulate_bulk(missing_label_fraction=1.0),
    lambda: simulate_tumour(n_cells=0),
    lambda: simulate_tumour(resistant_fraction=1.5),
    lambda: simulate_tumour(median_counts=-1),
    lambda: simulate_tumour(batch_strength=-0.1),
])
def test_invalid_parameters_are_refused(call):
    with pytest.raises(ValueError):
        call()
