"""scatd_core.preprocess: value types, backbone compatibility, QC metrics, thresholds and marks."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

from _data_helpers import make_counts
from scatd_core import preprocess
from scatd_core.errors import InputError


@pytest.fixture(scope="module")
def counts() -> ad.AnnData:
    return make_counts(n_cells=300, n_genes=80, density=0.4, seed=3)


def _log_normalized(adata):
    out = adata.copy()
    sc.pp.normalize_total(out, target_sum=1e4)
    sc.pp.log1p(out)
    return out


def _variants(counts) -> dict[str, object]:
    lognorm = _log_normalized(counts)
    scaled = ad.AnnData(X=lognorm.X.toarray())
    sc.pp.scale(scaled)
    tpm = counts.copy()
    sc.pp.normalize_total(tpm, target_sum=1e6)
    return {"counts": counts.X, "log_normalized": lognorm.X, "zscored": scaled.X, "tpm_like": tpm.X,
            "unknown": counts.X.toarray() - 100.0}


@pytest.mark.parametrize("kind", preprocess.VALUE_KINDS)
def test_detect_value_type(counts, kind):
    X = _variants(counts)[kind]
    result = preprocess.detect_value_type(X)
    assert result["kind"] == kind, result
    json.dumps(result)
    dense = X.toarray() if sp.issparse(X) else X
    assert preprocess.detect_value_type(dense)["kind"] == kind  # sparse and dense agree


def test_detect_value_type_evidence(counts):
    ev = preprocess.detect_value_type(_log_normalized(counts).X)["evidence"]
    assert abs(ev["expm1_row_sum_median"] - 1e4) < 1  # log1p of counts per 10k
    ev = preprocess.detect_value_type(counts.X)["evidence"]
    assert ev["fraction_integer"] == 1.0 and ev["has_negative"] is False and ev["min"] == 0.0


def test_detect_value_type_on_backed_data(counts, tmp_path):
    counts.write_h5ad(tmp_path / "c.h5ad")
    backed = ad.read_h5ad(tmp_path / "c.h5ad", backed="r")
    assert preprocess.detect_value_type(backed.X) == preprocess.detect_value_type(counts.X)


def test_sample_rows_is_deterministic_and_bounded():
    X = np.arange(100_000 * 10, dtype=np.float32).reshape(100_000, 10)
    a, b = preprocess.sample_rows(X, 200), preprocess.sample_rows(X, 200)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (200, 10) and a[0, 0] == 0 and a[-1, 0] == X[-1, 0]
    wide = np.zeros((5000, 50_000), dtype=np.float32)
    assert 0 < preprocess.sample_rows(wide, 2000).shape[0] <= 100  # 5M values at most


def test_row_batches_cover_every_row(counts):
    coo = counts.X.tocoo()
    parts = [(s, e, b) for s, e, b in preprocess.row_batches(coo, 64)]
    assert [p[0] for p in parts] == list(range(0, counts.n_obs, 64))
    np.testing.assert_array_equal(sp.vstack([p[2] for p in parts]).toarray(), counts.X.toarray())


def test_input_transforms_unchanged():
    batch = np.array([[1, 3, 0], [0, 0, 0]], dtype=np.float32)
    out = preprocess.apply_input_transform(batch, "log1p_cp10k")
    np.testing.assert_allclose(out[0], np.log1p(np.array([2500, 7500, 0])), rtol=1e-6)
    assert (out[1] == 0).all()
    assert preprocess.apply_input_transform(batch, "none") is batch
    with pytest.raises(ValueError):
        preprocess.apply_input_transform(batch, "zscore")


# -- backbones -------------------------------------------------------------------------------

def test_geneformer_refuses_zscored_data_with_an_explanation(counts):
    zscored = preprocess.detect_value_type(_variants(counts)["zscored"])
    problems = preprocess.check_backbone_compatibility(zscored, "geneformer")
    assert len(problems) == 1 and "z-scored" in problems[0] and "raw count" in problems[0]
    with pytest.raises(InputError, match="cannot be used with vae_gf"):
        preprocess.require_backbone_compatibility(zscored, "vae_gf")


@pytest.mark.parametrize("kind, backbone, transform, ok", [
    ("counts", "vae_gf", None, True),
    ("tpm_like", "vae_gf", None, True),
    ("log_normalized", "vae_gf", None, False),
    ("counts", "dist_vae", None, True),
    ("zscored", "dist_vae", "log1p_cp10k", False),
    ("zscored", "dist_vae", "none", False),  # an imported checkpoint: said, since no training data were negative
    ("counts", "dist_vae", "none", True),
    ("log_normalized", "dist_vae", "none", True),
    ("log_normalized", "dist_vae", "log1p_cp10k", True),  # un-logged first, not transformed twice: a note
    ("unknown", "dist_vae", None, False),  # negative, not z-scores
    ("zscored", "scfoundation", None, False),
    ("counts", "scatd-sf", None, True),
])
def test_backbone_compatibility_matrix(counts, kind, backbone, transform, ok):
    value_type = preprocess.detect_value_type(_variants(counts)[kind])
    problems = preprocess.check_backbone_compatibility(value_type, backbone, transform)
    assert (problems == []) is ok, problems
    if not ok and transform != "none" and value_type["evidence"]["has_negative"] and backbone != "vae_gf":
        assert "non-negative" in problems[0]
    if not ok and transform == "none":
        assert "takes the values as they are" in problems[0] and "z-scored" in problems[0]


def _with_bad_cells(X, rows, value):
    x = X.toarray() if sp.issparse(X) else np.array(X)
    x[rows, 3] = value
    return sp.csr_matrix(x) if sp.issparse(X) else x


@pytest.mark.parametrize("kind, value", [("counts", -1.0), ("counts", -0.001), ("log_normalized", -0.001),
                                         ("counts", np.nan), ("tpm_like", np.inf)])
def test_a_few_faulty_cells_do_not_decide_what_the_matrix_holds(counts, kind, value):
    """QA: one negative value among the sampled cells typed the whole matrix "unknown", so a model
    trained here z-scored raw counts for every cell. Up to 5% of the sampled cells (and always
    one) with values no expression has are set aside, counted, and the others decide the kind;
    more, and the matrix is judged as a whole, as before."""
    X = _variants(counts)[kind]
    one = preprocess.detect_value_type(_with_bad_cells(X, [7], value))
    assert one["kind"] == kind, one
    ev = one["evidence"]
    assert ev["n_cells_sampled"] == counts.n_obs
    if value < 0:
        assert ev["n_cells_negative"] == 1 and ev["negative_min"] == value and "n_cells_non_finite" not in ev
        assert "1 cell has negative values" in ev["reason"]
    else:
        assert ev["n_cells_non_finite"] == 1 and "1 cell has NaN or infinite values" in ev["reason"]
    assert ev["has_negative"] is False  # the other cells: what the compatibility checks read
    json.dumps(one)
    dense = _with_bad_cells(X.toarray() if sp.issparse(X) else X, [7], value)
    assert preprocess.detect_value_type(dense)["kind"] == kind  # sparse and dense agree
    few = int(preprocess.FEW_BAD_CELLS * counts.n_obs)  # 15 of 300
    assert preprocess.detect_value_type(_with_bad_cells(X, np.arange(few), value))["kind"] == kind
    many = preprocess.detect_value_type(_with_bad_cells(X, np.arange(few + 1), value))
    assert many["kind"] == "unknown" and "n_cells_negative" not in many["evidence"]  # judged as a whole


def test_zscored_and_centred_matrices_are_still_judged_as_a_whole(counts):
    zscored = _variants(counts)["zscored"]
    assert (zscored < 0).any(axis=1).mean() > 0.9  # negatives in nearly every cell: not a few faulty cells
    result = preprocess.detect_value_type(zscored)
    assert result["kind"] == "zscored" and "n_cells_negative" not in result["evidence"]
    assert preprocess.detect_value_type(_variants(counts)["unknown"])["evidence"]["reason"].startswith(
        "negative values that are")


def test_notes_say_what_a_model_does_with_faulty_cells_and_log_normalised_values(counts):
    bad = preprocess.detect_value_type(_with_bad_cells(counts.X, [7], -1.0))
    assert preprocess.check_backbone_compatibility(bad, "dist_vae", "log1p_cp10k") == []
    assert preprocess.check_backbone_compatibility(bad, "vae_gf") == []  # Geneformer's embedding is not refused
    for transform in ("log1p_cp10k", "standardize"):
        (note,) = preprocess.value_notes(bad, transform)
        assert note.startswith("Of the 300 cells sampled, 1 cell has negative values (min -1.0), which counts never "
                               "have") and "such cells are not scored; the others are" in note
    assert "scored on values unlike any it was trained on" in preprocess.value_notes(bad, "none")[-1]
    lognorm = preprocess.detect_value_type(_variants(counts)["log_normalized"])
    assert preprocess.value_notes(lognorm, "log1p_cp10k") == [preprocess.UNLOG_NOTE]
    assert preprocess.unlogs(lognorm, "log1p_cp10k") and not preprocess.unlogs(lognorm, "standardize")
    assert preprocess.value_notes(lognorm, "standardize") == []
    assert preprocess.value_notes(preprocess.detect_value_type(counts.X), "log1p_cp10k") == []
    assert preprocess.value_notes(preprocess.detect_value_type(counts.X), "none") == [preprocess.AS_GIVEN_COUNTS_NOTE]
    assert preprocess.value_notes(lognorm, "none") == []


def test_backbone_compatibility_accepts_a_kind_or_a_read_report():
    assert preprocess.check_backbone_compatibility("zscored", "vae_gf")
    report = {"value_type": "zscored", "value_type_evidence": {"has_negative": True}}
    assert preprocess.check_backbone_compatibility(report, "dist_vae")
    with pytest.raises(ValueError):
        preprocess.check_backbone_compatibility("counts", "bert")


# -- QC --------------------------------------------------------------------------------------

def test_qc_metrics_match_scanpy(counts):
    metrics = preprocess.qc_metrics(counts, batch_size=70)
    ref = counts.copy()
    ref.var["mt"] = ref.var_names.str.startswith("MT-")
    sc.pp.calculate_qc_metrics(ref, qc_vars=["mt"], percent_top=None, log1p=False, inplace=True)
    assert list(metrics.columns) == ["n_genes_by_counts", "total_counts", "pct_counts_mt"]
    assert metrics.index.equals(counts.obs_names)
    for col in metrics.columns:
        np.testing.assert_allclose(metrics[col].to_numpy(), ref.obs[col].to_numpy(), rtol=1e-5)
    assert metrics["pct_counts_mt"].max() > 0
    assert "mt" not in counts.var  # the input is not modified


_QC_AFTER_WARM_UP = """
import anndata as ad, numpy as np, pandas as pd, scipy.sparse as sp
from numba.core import dispatcher
from scatd_core import preprocess

preprocess.warm_up()
compiled = []
original = dispatcher.Dispatcher.compile
def compile(self, sig):
    compiled.append(self.py_func.__qualname__)
    return original(self, sig)
dispatcher.Dispatcher.compile = compile
rng = np.random.default_rng(0)
counts = sp.random(300, 50, density=0.2, format="csr", dtype=np.float32, random_state=rng)
counts.data = np.ceil(counts.data * 20)
var_names = [f"MT-{i}" if i < 3 else f"G{i}" for i in range(50)]
for X in (counts, counts.astype(np.int32), counts.astype(np.int64), counts.toarray(), counts.log1p()):
    preprocess.qc_metrics(ad.AnnData(X, var=pd.DataFrame(index=var_names)))
print(compiled)
"""


def test_qc_warm_up_compiles_what_an_upload_uses():
    """The server's start-up thread compiles the QC kernels of every common matrix layout: the
    first user's upload (sparse counts, float or integer, or log-normalised) compiles nothing.
    Before, the warm-up used a dense matrix only, and the first sparse upload waited 2-3 s of
    numba compile. Its own process: in this one earlier tests have compiled them already."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _QC_AFTER_WARM_UP], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_qc_metrics_backed_and_without_mito_genes(counts, tmp_path):
    counts.write_h5ad(tmp_path / "c.h5ad")
    backed = ad.read_h5ad(tmp_path / "c.h5ad", backed="r")
    pd.testing.assert_frame_equal(preprocess.qc_metrics(backed), preprocess.qc_metrics(counts))
    no_mt = counts[:, ~counts.var_names.str.startswith("MT-")].copy()
    assert preprocess.qc_metrics(no_mt)["pct_counts_mt"].isna().all()


def test_qc_metrics_use_the_raw_counts_beside_a_normalised_or_scaled_x(counts):
    """QA: the Data page's QC of a file with log-normalised X and layers['counts'] summed the log
    values ("not counts ... judge with care") although the counts were in the file."""
    expected = preprocess.qc_metrics(counts)
    logged = _log_normalized(counts)
    logged.layers["counts"] = counts.X.copy()
    metrics = preprocess.qc_metrics(logged)
    pd.testing.assert_frame_equal(metrics, expected)
    assert metrics.attrs["matrix"] == "layers['counts']" and metrics.attrs["value_type"] == "counts"
    scaled = logged.copy()  # scanpy's way: the counts in .raw, X the scaled values of some genes
    del scaled.layers["counts"]
    scaled.raw = counts.copy()
    scaled = scaled[:, :40].copy()
    x = np.asarray(scaled.X.todense()) if hasattr(scaled.X, "todense") else np.asarray(scaled.X)
    scaled.X = x - x.mean(0)
    metrics = preprocess.qc_metrics(scaled)
    pd.testing.assert_frame_equal(metrics, expected)
    assert metrics.attrs["matrix"] == "adata.raw"
    assert preprocess.qc_metrics(counts).attrs["matrix"] == "X"


def test_qc_metrics_read_the_models_matrix_also_backed_and_chosen(counts, tmp_path):
    """QA r1: QC must read the matrix the models read. A z-scored X beside log-normalised values in
    adata.raw (scanpy's usual file, no counts) had no QC at all, though the models read raw; a matrix
    chosen for the models (uns['scatd_matrix']) was ignored. A backed file's raw is read in row blocks."""
    from scatd_core import matrices

    logged = _log_normalized(counts)
    x = np.asarray(logged.X.todense()) if hasattr(logged.X, "todense") else np.asarray(logged.X)
    scaled = ad.AnnData(X=((x - x.mean(0)) / np.maximum(x.std(0), 1e-6)).astype(np.float32),
                        obs=counts.obs.copy(), var=counts.var.copy())
    scaled.raw = logged.copy()
    metrics = preprocess.qc_metrics(scaled)
    pd.testing.assert_frame_equal(metrics, preprocess.qc_metrics(logged))
    assert metrics.attrs["matrix"] == "adata.raw" and metrics.attrs["value_type"] == "log_normalized"
    assert matrices.choose(scaled, "log1p_cp10k").name == "raw"  # the same matrix as the models'
    source, chosen = matrices.qc_candidate(scaled)
    said = matrices.qc_words(source, chosen, "zscored")
    assert said.startswith("Computed from the log-normalised values in adata.raw (X holds z-scored values).")
    assert "un-logged" in said and "judge its thresholds with care" not in said

    scaled.layers["counts"] = counts.X.copy()  # counts first, unless another matrix is chosen for the models
    assert preprocess.qc_metrics(scaled).attrs["matrix"] == "layers['counts']"
    scaled.uns["scatd_matrix"] = "raw"
    metrics = preprocess.qc_metrics(scaled)
    assert metrics.attrs["matrix"] == "adata.raw" and metrics.attrs["chosen_by_user"]
    assert "(the matrix chosen for the models; X holds z-scored values)" in matrices.qc_words(
        *matrices.qc_candidate(scaled), "zscored")
    scaled.uns["scatd_matrix"] = "X"  # z-scores chosen: no QC meaning, the counts still
    assert preprocess.qc_metrics(scaled).attrs["matrix"] == "layers['counts']"

    del scaled.layers["counts"], scaled.uns["scatd_matrix"]
    scaled.write_h5ad(tmp_path / "s.h5ad")
    backed = ad.read_h5ad(tmp_path / "s.h5ad", backed="r")
    pd.testing.assert_frame_equal(preprocess.qc_metrics(backed, batch_size=70), preprocess.qc_metrics(logged),
                                  check_dtype=False)


def test_qc_of_log_normalised_values_gives_the_counts_mito_share_and_genes(counts, tmp_path):
    """QA r1: on the scanpy tutorial's file (normalize_total, log1p, raw = the log values, scale) QC read
    the log values of adata.raw: '% mitochondrial' was the share of the log values (8.89 % for a cell
    with 47.8 % mitochondrial counts; suggested max 4.74). The values are un-logged first, block by
    block: each cell's counts were scaled by one factor, so the share is the counts' and the genes
    detected too; the totals are then all 10,000 (no suggested bound for them)."""
    from scatd_core import matrices

    adata = counts.copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    adata.raw = adata
    sc.pp.highly_variable_genes(adata, n_top_genes=40)
    adata = adata[:, adata.var["highly_variable"]].copy()
    sc.pp.scale(adata)
    adata.write_h5ad(tmp_path / "tutorial.h5ad")
    expected = preprocess.qc_metrics(counts)
    assert expected["pct_counts_mt"].max() > 5
    for read in (ad.read_h5ad(tmp_path / "tutorial.h5ad"), ad.read_h5ad(tmp_path / "tutorial.h5ad", backed="r")):
        metrics = preprocess.qc_metrics(read, batch_size=70)
        assert metrics.attrs["matrix"] == "adata.raw" and metrics.attrs["unlogged"]
        np.testing.assert_allclose(metrics["pct_counts_mt"], expected["pct_counts_mt"], rtol=1e-5)
        np.testing.assert_array_equal(metrics["n_genes_by_counts"], expected["n_genes_by_counts"])
        np.testing.assert_allclose(metrics["total_counts"], 1e4, rtol=1e-4)
        suggested = preprocess.suggest_qc_thresholds(metrics)
        assert "total_counts" not in suggested and suggested["pct_counts_mt"]["max"] > 5
    said = matrices.qc_words(*matrices.qc_candidate(adata), "zscored")
    assert said.startswith("Computed from the log-normalised values in adata.raw (X holds z-scored values).")
    assert "% mitochondrial is computed on the un-logged normalised values" in said
    assert "about the same in every cell" in said
    assert not preprocess.qc_metrics(counts).attrs["unlogged"]


def test_suggest_qc_thresholds_median_k_mad():
    values = np.array([100, 110, 120, 130, 140, 150, 10_000], dtype=float)
    metrics = pd.DataFrame({"total_counts": values, "n_genes_by_counts": values / 2,
                            "pct_counts_mt": [1, 2, 3, 4, 5, 6, 90.0]})
    th = preprocess.suggest_qc_thresholds(metrics, k=3)
    logs = np.log1p(values)
    mad = 1.4826 * np.median(np.abs(logs - np.median(logs)))
    assert th["total_counts"]["max"] == pytest.approx(np.expm1(np.median(logs) + 3 * mad), rel=1e-3)
    assert th["total_counts"]["min"] == pytest.approx(np.expm1(np.median(logs) - 3 * mad), rel=1e-3)
    assert th["pct_counts_mt"] == {"max": pytest.approx(4 + 3 * 1.4826 * 2.0, rel=1e-3)}
    assert th["k"] == 3.0 and "MAD" in th["method"]
    json.dumps(th)
    loose = preprocess.suggest_qc_thresholds(metrics, k=5)
    assert loose["total_counts"]["max"] > th["total_counts"]["max"]


def test_suggest_qc_thresholds_skip_metrics_without_spread():
    metrics = pd.DataFrame({"total_counts": [1e4] * 5, "n_genes_by_counts": [10, 20, 30, 40, 50],
                            "pct_counts_mt": [np.nan] * 5})
    th = preprocess.suggest_qc_thresholds(metrics)
    assert "total_counts" not in th and "pct_counts_mt" not in th and "n_genes_by_counts" in th


def test_apply_qc_filter_marks_and_never_drops(counts):
    adata = counts.copy()
    metrics = preprocess.qc_metrics(adata)
    cut = float(np.median(metrics["total_counts"]))
    mask = preprocess.apply_qc_filter(adata, {"total_counts": {"min": cut}, "k": 3, "method": "x"}, metrics)
    assert adata.n_obs == counts.n_obs
    np.testing.assert_array_equal(mask, metrics["total_counts"].to_numpy() >= cut)
    np.testing.assert_array_equal(adata.obs[preprocess.QC_KEY].to_numpy(), mask)
    assert adata.uns["scatd_qc"]["n_fail"] == int((~mask).sum()) > 0
    suggested = preprocess.suggest_qc_thresholds(metrics)
    assert preprocess.apply_qc_filter(adata, suggested).sum() >= 0.9 * adata.n_obs


def test_qc_scatter_keeps_cells_a_log_axis_would_drop():
    """z-scored data sum to negative values and empty cells to 0: the scatter is linear then."""
    from scatd_core import pl

    rng = np.random.default_rng(0)
    z = ad.AnnData(rng.normal(size=(40, 30)).astype(np.float32))
    z.var_names = [f"G{i}" for i in range(30)]
    fig = pl.qc_scatter(preprocess.qc_metrics(z))
    assert fig.layout.xaxis.type == "linear" and fig.layout.xaxis.title.text == "sum of values"
    assert (np.asarray(fig.data[0].x) < 0).any()   # the cells whose values sum below 0 are drawn

    counts = ad.AnnData(rng.poisson(2, size=(40, 30)).astype(np.float32))
    counts.var_names = z.var_names
    fig = pl.qc_scatter(preprocess.qc_metrics(counts))
    assert fig.layout.xaxis.type == "log" and fig.layout.xaxis.title.text == "total counts"
    counts.X[0] = 0                                 # one empty cell: on a log axis it would vanish
    assert pl.qc_scatter(preprocess.qc_metrics(counts)).layout.xaxis.type == "linear"


def test_qc_plots_of_normalised_totals_read_one_total_not_float_noise(counts):
    """Log-normalised values are un-logged for QC: every cell's total is then the 10,000 it was
    normalised to, but for float rounding (9999.9995 ... 10000.0004). The violin's axis zoomed onto
    that rounding and read "10.000001k"; now the totals are drawn as the one total, on an axis
    spanning whole numbers around it, and the note under the plot (and the hover) says every cell has
    that total because the values are normalised. Totals that truly differ are drawn as they are."""
    from scatd_core import pl

    metrics = preprocess.qc_metrics(_log_normalized(counts))
    totals = metrics["total_counts"].to_numpy()
    assert metrics.attrs["unlogged"] and 0 < np.ptp(totals) < 1e-2  # float noise around 10,000
    violin = pl.qc_violin(metrics, preprocess.QC_METRICS)
    shown = next(t for t in violin.data if t.type == "violin" and t.name == "total_counts")
    assert set(np.asarray(shown.y, dtype=float)) == {10_000.0}
    assert preprocess.QC_METRICS.index("total_counts") == 1
    axis = violin.layout.yaxis2  # the second panel's
    assert axis.range is not None and axis.range[0] < 10_000 < axis.range[1] and np.diff(axis.range)[0] >= 100
    note = "Total counts is 10,000 in every cell (the values are normalised to this total)"
    assert any(n.startswith(note) for n in pl.figure_notes(violin)), pl.figure_notes(violin)
    assert "10,000 in every cell" in shown.hovertemplate
    scatter = pl.qc_scatter(metrics)
    assert set(np.asarray(scatter.data[0].x, dtype=float)) == {10_000.0}
    assert scatter.layout.xaxis.type == "linear" and np.diff(scatter.layout.xaxis.range)[0] >= 100
    assert any(n.startswith(note) for n in pl.figure_notes(scatter))

    raw = preprocess.qc_metrics(counts)  # counts: totals differ, drawn as they are, nothing said
    violin = pl.qc_violin(raw, preprocess.QC_METRICS)
    shown = next(t for t in violin.data if t.type == "violin" and t.name == "total_counts")
    np.testing.assert_array_equal(shown.y, raw["total_counts"].to_numpy())
    said = pl.figure_notes(violin) + pl.figure_notes(pl.qc_scatter(raw))
    assert not [n for n in said if "otal counts" in n], said  # (these cells all have 32 genes: said so)
    np.testing.assert_array_equal(raw["total_counts"], preprocess.qc_metrics(counts)["total_counts"])  # unchanged


@pytest.mark.parametrize("sparse", [True, False])
def test_one_spike_in_log_values_does_not_make_the_matrix_linear(counts, sparse):
    """QA (session 36, known): one value above 30 among log-normalised values, if it fell among
    the sampled cells, typed the matrix TPM-like, so a log1p_cp10k model log-transformed log
    values for every cell; outside the sample it changed nothing. A few such cells (<= 5%) are
    now faults of those cells, counted and said; more, and the matrix is linear as before."""
    X = _variants(counts)["log_normalized"]
    X = X if sparse == sp.issparse(X) else (sp.csr_matrix(X) if sparse else X.toarray())
    one = preprocess.detect_value_type(_with_bad_cells(X, [7], 41.5))
    assert one["kind"] == "log_normalized", one
    ev = one["evidence"]
    assert ev["n_cells_above_log_scale"] == 1 and ev["above_log_scale_max"] == 41.5 and ev["max"] <= 30
    assert ev["n_cells_sampled"] == counts.n_obs and "1 cell has values above 30" in ev["reason"]
    json.dumps(one)
    assert preprocess.unlogs(one, "log1p_cp10k")
    notes = preprocess.value_notes(one, "log1p_cp10k")
    assert notes[0] == preprocess.UNLOG_NOTE and "1 cell has values above 30 (max 41.5)" in notes[1]
    few = int(preprocess.FEW_BAD_CELLS * counts.n_obs)
    assert preprocess.detect_value_type(_with_bad_cells(X, np.arange(few), 41.5))["kind"] == "log_normalized"
    many = preprocess.detect_value_type(_with_bad_cells(X, np.arange(few + 1), 41.5))
    assert many["kind"] == "tpm_like" and "n_cells_above_log_scale" not in many["evidence"]
    # a linear matrix (values above 30 in most cells) is judged as before
    assert preprocess.detect_value_type(_variants(counts)["tpm_like"])["kind"] == "tpm_like"


def test_the_data_card_says_value_kinds_layout_and_evidence_in_words():
    """QA: the Data card showed "Values: zscored", "orientation: cells_x_genes (as stored in the file
    (cells x genes))" and the evidence as a raw JSON dump."""
    from scatd_core.genes import id_evidence_text
    from scatd_core.preprocess import orientation_text, value_evidence_text, value_kind_words

    assert [value_kind_words(k) for k in ("zscored", "log_normalized", "tpm_like", "counts")] == [
        "z-scored", "log-normalised", "TPM-like", "counts"]
    from scatd_core.preprocess import TILE_MAX_CHARS, VALUE_KINDS, value_kind_tile

    # the Data page's tile: never cut ("log-norm…" at 1280 px), the whole words under a shortened value
    assert value_kind_tile("log_normalized") == ("log", "log-normalised")
    assert value_kind_tile("zscored") == ("z-scored", None)
    assert all(len(value_kind_tile(k)[0]) <= TILE_MAX_CHARS for k in (*VALUE_KINDS, "some_new_kind"))
    said = orientation_text({"orientation": "cells_x_genes", "orientation_reason": "as stored in the file (cells x genes)"})
    assert said == "one row per cell (cells x genes), as stored in the file" and "_" not in said
    text = value_evidence_text({"n_cells_sampled": 500, "min": 0.0, "max": 812.0, "fraction_zero": 0.91,
                                "fraction_integer": 1.0, "row_sum_median": 2345.0})
    assert text == ("500 cells sampled; values from 0 to 812; 91% zeros; 100% of the non-zero values whole numbers; "
                    "median total per cell 2,345.")
    genes = id_evidence_text({"n": 2000, "human_symbol": 0.97, "ensembl": 0.0, "numeric": 0.01})
    assert genes == ("Of 2,000 gene names looked at, 97.0% look like human gene symbols, 1.0% look like plain "
                     "numbers.")
    # QA: a small non-zero share read "0%" (and nearly all "100%"): never rounded to either
    few = id_evidence_text({"n": 4000, "human_symbol": 0.99975, "numeric": 0.00025})
    assert few == "Of 4,000 gene names looked at, >99.9% look like human gene symbols, <0.1% look like plain numbers."
