"""Integrated-gradients rankings: planted program recovered, completeness, baselines, real embeddings."""

from __future__ import annotations

import argparse

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

import original_scatd as orig
from conftest import shared_file
from scatd_core.bundle import import_checkpoint, save_bundle
from scatd_core.errors import InputError
from scatd_core.explain import (
    COMPLETENESS_TOLERANCE, explain, feature_names, stratified_subsample,
)
from scatd_core.embed import plot_coordinates
from scatd_core.nn import Architecture, build_model
from scatd_core.predict import Cancelled, predict

N_GENES, N_PLANTED, N_CELLS = 200, 20, 400


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny models: one thread is many times faster than two contending ones on a busy CI box.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def simulate_planted(n_cells=N_CELLS, n_genes=N_GENES, n_planted=N_PLANTED, seed=0):
    """Log-scale expression where ``n_planted`` genes are up by 1.2 in resistant cells.

    The other genes have gene-specific means and spreads, and 20 of them share a strong
    nuisance factor unrelated to the label (a distractor with large variance).
    """
    rng = np.random.default_rng(seed)
    planted = np.sort(rng.choice(n_genes, n_planted, replace=False))
    resistant = rng.random(n_cells) < 0.5
    x = rng.uniform(0.5, 2.5, n_genes) + rng.normal(size=(n_cells, n_genes)) * rng.uniform(0.3, 1.2, n_genes)
    nuisance = rng.choice(np.setdiff1d(np.arange(n_genes), planted), 20, replace=False)
    x[:, nuisance] += rng.normal(size=(n_cells, 1))
    x[:, planted] += 1.2 * resistant[:, None]
    genes = [f"G{i:03d}" for i in range(n_genes)]
    obs = pd.DataFrame({"truth": np.where(resistant, "resistant", "sensitive")},
                       index=[f"cell{i}" for i in range(n_cells)])
    adata = ad.AnnData(np.maximum(x, 0).astype(np.float32), obs=obs, var=pd.DataFrame(index=genes))
    return adata, {genes[i] for i in planted}


def train_classifier(adata, seed=0):
    """A small Dist_VAE-style DrugClassifier trained on the labels (input noise as regulariser)."""
    torch.manual_seed(seed)
    arch = Architecture("dist_vae", [adata.n_vars, 64, 32], 16, None, 8, 2)
    model = build_model(arch)
    x = torch.from_numpy(np.asarray(adata.X))
    y = torch.from_numpy((adata.obs["truth"] == "resistant").to_numpy().astype(np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(30):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 100):
            b = perm[i:i + 100]
            xb = x[b] + 0.5 * torch.randn(x[b].shape, generator=gen)
            loss = torch.nn.functional.cross_entropy(model(xb), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return arch, model


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    adata, truth = simulate_planted()
    arch, model = train_classifier(adata)
    bundle = save_bundle(tmp_path_factory.mktemp("planted") / "bundle", model.state_dict(), arch, drug="TESTDRUG",
                         genes=list(adata.var_names), input_transform="none", threshold=0.5)
    predict(adata, bundle)
    accuracy = (adata.obs["scatd_label"].astype(str) == adata.obs["truth"]).mean()
    assert accuracy > 0.9, accuracy
    return adata, bundle, truth


@pytest.fixture(scope="module")
def planted_result(planted):
    adata, bundle, _ = planted
    return explain(adata, bundle, n_steps=50)


def test_planted_program_tops_the_ranking(planted, planted_result):
    _, _, truth = planted
    r = planted_result.ranking
    top = r.head(20)
    assert top["feature"].isin(truth).sum() >= 15
    assert list(r["rank"]) == list(range(1, N_GENES + 1))
    assert r["mean_abs_attribution"].is_monotonic_decreasing
    # planted genes raise P(resistant), are higher in predicted-resistant cells and DE agrees
    hits = top[top["feature"].isin(truth)]
    assert (hits["direction"] == "resistance").all()
    assert (hits["mean_input_resistant"] > hits["mean_input_sensitive"]).all()
    assert (hits["logfoldchange"] > 0).all() and (hits["de_pval_adj"] < 1e-3).all()
    agree = planted_result.info["agreement"]
    assert agree["top20_overlap"] >= 10 and agree["top20_direction_agrees_with_de"] >= 0.9
    assert -1 <= agree["spearman_abs_attribution_vs_abs_de_score"] <= 1
    # the ranking against DE, as the Biomarkers page plots it: both directions, decades on a log axis
    from scatd_core import pl

    fig = pl.attribution_vs_de(r, "resistant", "sensitive")
    assert {t.name for t in fig.data} == {"resistant", "sensitive"}  # the words of every other legend
    assert sum(len(t.x) for t in fig.data) == int((r["in_data"] & np.isfinite(r["de_score"])).sum())
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis.exponentformat == "power"


def test_completeness_within_tolerance(planted_result):
    comp = planted_result.info["completeness"]
    assert comp["ok"] and comp["median_relative_error"] <= COMPLETENESS_TOLERANCE
    assert comp["max_relative_error"] <= COMPLETENESS_TOLERANCE
    cells = planted_result.cells
    # completeness: attributions sum to f(x) - f(baseline) up to the reported delta
    np.testing.assert_allclose(cells["attribution_sum"] - (cells["target"] - cells["baseline_target"]),
                               cells["delta"], atol=1e-4)
    assert not planted_result.info["warnings"]


def test_top_of_ranking_is_stable_when_steps_change(planted):
    """The 5% tolerance is enough for the ranking: 16 vs 64 steps give the same top genes."""
    adata, bundle, _ = planted
    coarse = explain(adata, bundle, n_steps=16, max_cells=150, differential_expression=False, keep_top=0)
    fine = explain(adata, bundle, n_steps=64, max_cells=150, differential_expression=False, keep_top=0)
    assert coarse.info["completeness"]["median_relative_error"] <= COMPLETENESS_TOLERANCE
    shared = set(coarse.ranking["feature"].head(20)) & set(fine.ranking["feature"].head(20))
    assert len(shared) >= 19


@pytest.mark.parametrize("target", ["raw_logit", "prob"])
def test_other_targets_are_complete(planted, target):
    adata, bundle, truth = planted
    e = explain(adata, bundle, target=target, n_steps=32, max_cells=120, differential_expression=False)
    assert e.info["completeness"]["median_relative_error"] <= COMPLETENESS_TOLERANCE
    if target == "prob":
        assert ((e.cells["target"] - e.cells["prob_resistant"]).abs() < 1e-5).all()
        assert e.ranking.head(20)["feature"].isin(truth).sum() >= 15


@pytest.mark.parametrize("backbone", ["dist_vae", "vae_sf", "vae_gf"])
@pytest.mark.parametrize("baseline", ["zero", "mean"])
def test_first_layer_factorisation_equals_plain_captum(small_bundles, backbone, baseline):
    """The default (factorised) attributions are captum's IG on the whole model, to rounding."""
    bundle, _sd, enc, _z, extra = small_bundles[backbone]
    x = np.abs(np.random.default_rng(6).normal(size=(30, enc[0]))).astype(np.float32)
    adata = ad.AnnData(x, var=pd.DataFrame(index=extra) if backbone == "dist_vae" else None)
    predict(adata, bundle)
    kw = dict(baseline=baseline, n_steps=20, keep_top=None, differential_expression=False)
    fast = explain(adata, bundle, **kw)
    plain = explain(adata, bundle, factorise=False, **kw)
    assert fast.info["first_layer_factorised"] and not plain.info["first_layer_factorised"]
    scale = np.abs(plain.attributions).max()
    same_order = [plain.features.index(f) for f in fast.features]  # near-ties may rank differently
    np.testing.assert_allclose(fast.attributions, plain.attributions[:, same_order], atol=2e-3 * scale)  # float16
    r_fast, r_plain = fast.ranking.set_index("feature"), plain.ranking.set_index("feature")
    np.testing.assert_allclose(r_fast["mean_abs_attribution"], r_plain.loc[r_fast.index, "mean_abs_attribution"],
                               rtol=1e-4, atol=1e-7 * scale)
    np.testing.assert_allclose(fast.cells["delta"], plain.cells["delta"], atol=1e-4)
    np.testing.assert_allclose(fast.cells["target"], plain.cells["target"], atol=1e-5)


def _small(small_bundles, n=40, seed=3):
    bundle, _sd, enc, _z, genes = small_bundles["dist_vae"]
    rng = np.random.default_rng(seed)
    x = np.abs(rng.normal(size=(n, enc[0]))).astype(np.float32)
    adata = ad.AnnData(x, obs=pd.DataFrame(index=[f"c{i}" for i in range(n)]), var=pd.DataFrame(index=genes))
    return adata, _predict_two_groups(adata, bundle)


def _predict_two_groups(adata, bundle):
    """Predict with the median probability as threshold, so both predicted groups exist."""
    predict(adata, bundle)
    predict(adata, bundle, threshold=float(np.median(adata.obs["scatd_prob_resistant"])))
    return bundle


@pytest.mark.parametrize("baseline", ["zero", "mean", "random", "mix"])
def test_baselines(small_bundles, baseline):
    adata, bundle = _small(small_bundles)
    e = explain(adata, bundle, baseline=baseline, n_steps=8, n_reference_cells=5, seed=1)
    n_genes = adata.n_vars
    assert e.baseline.shape == (n_genes,) and e.baseline.dtype == np.float32
    assert e.ranking.shape[0] == n_genes and e.attributions.shape == (adata.n_obs, 60) == e.inputs.shape
    mean = np.asarray(adata.X).mean(axis=0)
    picked = [int(c[1:]) for c in e.info["baseline_cells"]]
    random_mean = np.asarray(adata.X)[picked].mean(axis=0) if picked else None
    expected = {"zero": np.zeros(n_genes), "mean": mean, "random": random_mean,
                "mix": None if random_mean is None else 0.5 * mean + 0.5 * random_mean}[baseline]
    np.testing.assert_allclose(e.baseline, expected, atol=1e-5)
    assert len(picked) == (5 if baseline in ("random", "mix") else 0)
    assert baseline in e.info["statement"] or e.info["baseline_title"] in e.info["statement"]


def test_the_note_on_embedding_features_names_the_real_option(small_bundles):
    """The note for VAE_sf/VAE_gf rankings points to `--level genes` (there is no --gene-level)."""
    bundle, _sd, enc, _z, _extra = small_bundles["vae_sf"]
    adata = ad.AnnData(np.abs(np.random.default_rng(6).normal(size=(20, enc[0]))).astype(np.float32))
    predict(adata, bundle)
    notes = " ".join(explain(adata, bundle, n_steps=4, keep_top=None, differential_expression=False).info["notes"])
    assert "`scatd explain --level genes`" in notes and "--gene-level" not in notes


def test_zero_input_difference_gives_zero_attribution(small_bundles):
    bundle, _sd, enc, _z, genes = small_bundles["dist_vae"]
    rng = np.random.default_rng(5)
    x = np.abs(rng.normal(size=(30, enc[0]))).astype(np.float32)
    x[:, 7] = 2.5  # constant gene: equal to the mean baseline in every cell
    keep = [g for g in genes if g != "GENE11"]  # a model gene absent from the data
    adata = ad.AnnData(x[:, [genes.index(g) for g in keep]], var=pd.DataFrame(index=keep))
    _predict_two_groups(adata, bundle)
    e = explain(adata, bundle, baseline="mean", n_steps=8, keep_top=None)
    row = e.ranking.set_index("feature")
    assert row.loc["GENE7", "mean_abs_attribution"] == 0.0 and row.loc["GENE7", "direction"] == "none"
    assert row.loc["GENE11", "mean_abs_attribution"] == 0.0 and not row.loc["GENE11", "in_data"]
    assert np.isnan(row.loc["GENE11", "de_score"]) and np.isfinite(row.loc["GENE1", "de_score"])
    assert (e.feature_values("GENE7")[1] == 0).all()
    assert any("absent from the data" in n for n in e.info["notes"])
    # a zero baseline and a cell at zero give zero everywhere
    e0 = explain(adata, bundle, baseline="zero", n_steps=8, keep_top=None, differential_expression=False)
    zero_in = np.asarray(adata.X)[:, keep.index("GENE3")] == 0
    assert not zero_in.any() or (e0.feature_values("GENE3")[1][zero_in] == 0).all()
    assert e0.ranking.set_index("feature").loc["GENE11", "mean_abs_attribution"] == 0.0


def test_deterministic_with_seed(small_bundles):
    adata, bundle = _small(small_bundles, n=60)
    a = explain(adata, bundle, baseline="random", max_cells=25, seed=7, n_steps=8)
    b = explain(adata, bundle, baseline="random", max_cells=25, seed=7, n_steps=8)
    c = explain(adata, bundle, baseline="random", max_cells=25, seed=8, n_steps=8)
    pd.testing.assert_frame_equal(a.ranking, b.ranking)
    pd.testing.assert_frame_equal(a.cells, b.cells)
    np.testing.assert_array_equal(a.attributions, b.attributions)
    assert list(a.cells.index) != list(c.cells.index) or a.info["baseline_cells"] != c.info["baseline_cells"]


def test_stratified_subsample_keeps_shares_and_is_stated(small_bundles):
    labels = np.array(["resistant"] * 300 + ["sensitive"] * 100)
    idx = stratified_subsample(labels, 40, seed=0)
    assert idx.size == 40 and np.all(np.diff(idx) > 0)
    assert (labels[idx] == "resistant").sum() == 30
    assert stratified_subsample(np.array(["a"] * 99 + ["b"]), 10).size == 10
    assert "b" in np.array(["a"] * 99 + ["b"])[stratified_subsample(np.array(["a"] * 99 + ["b"]), 10)]

    adata, bundle = _small(small_bundles, n=60)
    lab = adata.obs["scatd_label"].astype(str)
    e = explain(adata, bundle, max_cells=20, n_steps=8, seed=2)
    cells = e.info["cells"]
    assert cells["subsampled"] and cells["n_explained"] == 20 and cells["n_scored"] == 60
    assert "stratified by predicted label" in cells["how"] and "stratified" in e.info["statement"]
    for group in ("resistant", "sensitive"):
        share = (lab == group).mean() * 20
        assert abs((e.cells["label"] == group).sum() - share) <= 1
    assert e.per_cell(5).shape == (20, 7)


def test_progress_cancel_and_errors(small_bundles):
    adata, bundle = _small(small_bundles)
    seen = []
    explain(adata, bundle, n_steps=4, progress=lambda f, m: seen.append((f, m)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("cells" in m for _, m in seen)
    with pytest.raises(Cancelled):
        explain(adata, bundle, n_steps=4, should_stop=lambda: True)
    with pytest.raises(InputError, match="Run `scatd_core.predict.predict"):
        explain(ad.AnnData(np.asarray(adata.X), var=adata.var), bundle)
    with pytest.raises(InputError, match="baseline"):
        explain(adata, bundle, baseline="median")
    other = small_bundles["vae_sf"][0]
    with pytest.raises(InputError, match="made with"):
        explain(adata, other)


def test_map_coordinates_fallback(small_bundles):
    adata, _ = _small(small_bundles)
    coords, how = plot_coordinates(adata)
    assert coords.shape == (adata.n_obs, 2) and "PCA" in how and np.isfinite(coords).all()
    adata.obsm["X_umap"] = np.ones((adata.n_obs, 2))
    assert plot_coordinates(adata)[1] == "UMAP"


def test_real_scfoundation_embeddings_end_to_end(tmp_path):
    emb = np.load(shared_file("scfoundation", "scad_sorafenib_sc_embedding.npy"))
    assert emb.shape == (120, 3072)
    enc, z = [3072, 64, 32], 16
    torch.save(orig.dal_checkpoint("vae_sf", enc, z, seed=3), tmp_path / "sf.pth")
    ref = np.random.default_rng(0).normal(0.1, 1.5, size=(60, 3072))
    np.save(tmp_path / "bulk.npy", ref)
    bundle = import_checkpoint(tmp_path / "sf.pth", "vae_sf", drug="SORAFENIB", out=tmp_path / "b",
                               style_reference=tmp_path / "bulk.npy")
    adata = ad.AnnData(emb.astype(np.float32))
    predict(adata, bundle)
    e = explain(adata, bundle, n_steps=50, keep_top=10)
    r = e.ranking
    assert r.shape[0] == 3072 and set(r["feature"]) == set(feature_names(bundle))
    assert r["feature"].iloc[0].startswith("scFoundation_") and r["mean_abs_attribution"].iloc[0] > 0
    assert e.info["features"]["level"] == "embedding feature" and any("foundation model" in n for n in e.info["notes"])
    assert e.info["completeness"]["median_relative_error"] <= COMPLETENESS_TOLERANCE
    # the explained inputs are the AdaIN-aligned inputs the prediction used (the original skipped AdaIN)
    x = emb.astype(np.float64)
    adain = ref.std(0) * (x - x.mean(0)) / (x.std(0) + 1e-8) + ref.mean(0)
    j = int(e.features[0].split("_")[1])
    np.testing.assert_allclose(e.inputs[:, 0], adain[:, j], rtol=1e-5, atol=1e-5)
    if e.info["cells"]["n_resistant"] >= 2 and e.info["cells"]["n_sensitive"] >= 2:
        assert np.isnan(r["logfoldchange"]).all() and np.isfinite(r["de_score"]).all()


def test_cli_explain_writes_ranking_and_per_cell(planted, tmp_path, capsys):
    from scatd_core.cli import explain as cli_explain

    adata, bundle, truth = planted
    data = ad.AnnData(np.asarray(adata.X)[:120], obs=pd.DataFrame(index=adata.obs_names[:120]), var=adata.var)
    data.write_h5ad(tmp_path / "cells.h5ad")
    parser = argparse.ArgumentParser()
    cli_explain.add(parser.add_subparsers())
    args = parser.parse_args(["explain", "--model", str(bundle.path), "--input", str(tmp_path / "cells.h5ad"),
                              "--output", str(tmp_path / "biomarkers.csv"), "--steps", "16", "--threshold", "0.5",
                              "--per-cell-top", "5", str(tmp_path / "per_cell.csv")])
    assert args.run(args) == 0
    ranking = pd.read_csv(tmp_path / "biomarkers.csv")
    assert len(ranking) == N_GENES and ranking["rank"].iloc[0] == 1
    per_cell = pd.read_csv(tmp_path / "per_cell.csv", index_col=0)
    assert per_cell.shape == (120, 7) and list(per_cell.columns[2:]) == list(ranking["feature"].head(5))
    err = capsys.readouterr().err
    assert "Completeness error" in err and "Explaining 120 cells: about " in err and " of memory" in err


def test_the_estimate_counts_each_cell_and_step_and_reads_sparse_data_sparsely():
    """``explain.estimate`` (the Biomarkers page's expected time and memory, checked against
    measured runs by benches/bench_explain.py): linear in the cells and the steps, cheaper on
    sparse data, and the per-cell memory of a published-size Dist_VAE is its staged factors
    (2 x 1,664 float32 at most, fewer bytes than float16 attributions of 19,264 genes) plus its
    stored values with the DE test's copies of them."""
    from types import SimpleNamespace

    from scatd_core.explain import IG_MEMORY_BUDGET, estimate

    published = SimpleNamespace(architecture=Architecture("dist_vae", [19264, 1664, 359], 421, None, 210, 2),
                                input_kind="expression")
    one = estimate(published, 1000, density=0.078, device="cpu")
    two = estimate(published, 2000, density=0.078, device="cpu")
    assert two["bytes"] - one["bytes"] == 1000 * one["bytes_per_cell"]
    assert one["bytes"] - 1000 * one["bytes_per_cell"] == IG_MEMORY_BUDGET + 4 * 19264 * 1664
    assert one["bytes_per_cell"] == int(4 * 2 * 1664 + 40 * 0.078 * 19264 + 8 * 100 + 64)
    assert two["seconds"] == pytest.approx(2 * one["seconds"])
    steps = [estimate(published, 1000, n_steps=n, density=0.078, device="cpu")["seconds"] for n in (25, 50, 100)]
    assert steps[2] - steps[1] == pytest.approx(2 * (steps[1] - steps[0]))  # each step costs the same
    assert estimate(published, 1000, density=1.0, device="cpu")["seconds"] > one["seconds"]
    assert estimate(published, 1000, density=1.0, device="cpu")["bytes_per_cell"] == int(
        4 * 2 * 1664 + 40 * 19264 + 8 * 100 + 64)  # dense data: every value of the cell
    # a small model's time is mostly what grows with the cells' stored values (input scaling, DE test, sums)
    from scatd_core.explain._estimate import SECONDS_PER_STORED_VALUE

    small = SimpleNamespace(architecture=Architecture("dist_vae", [1700, 128, 64], 32, None, 16, 2),
                            input_kind="expression")
    more, fewer = (estimate(small, 2000, density=d, device="cpu")["seconds"] for d in (0.35, 0.30))  # both dense
    assert more - fewer == pytest.approx(2000 * 0.05 * 1700 * SECONDS_PER_STORED_VALUE)
    assert fewer > 2000 * 0.30 * 1700 * SECONDS_PER_STORED_VALUE
    wide = SimpleNamespace(architecture=Architecture("dist_vae", [500, 1664, 359], 421, None, 210, 2),
                           input_kind="expression")
    assert estimate(wide, 10, density=1.0, device="cpu")["bytes_per_cell"] == 2 * 500 + 40 * 500 + 8 * 100 + 64


def test_the_zero_baseline_is_named_for_what_it_is_for_each_model(small_bundles):
    """A zero model input is "no expression" only for models on expression as given or log-normalised;
    for a model that z-scores its genes it is every gene at its mean, for VAE_sf/VAE_gf an all-zero embedding."""
    from types import SimpleNamespace

    from scatd_core.explain import zero_baseline_meaning

    adata, bundle = _small(small_bundles)
    e = explain(adata, bundle, baseline="zero", n_steps=4, keep_top=None, differential_expression=False)
    assert e.info["baseline_title"] == "zero model input: no expression at all"
    standardised = SimpleNamespace(input_kind="expression", manifest={"input_transform": "standardize"})
    assert "at its mean" in zero_baseline_meaning(standardised) and "not an absence" in zero_baseline_meaning(
        standardised)
    sf, _sd, enc, _z, _extra = small_bundles["vae_sf"]
    emb = ad.AnnData(np.abs(np.random.default_rng(6).normal(size=(20, enc[0]))).astype(np.float32))
    predict(emb, sf)
    title = explain(emb, sf, baseline="zero", n_steps=4, keep_top=None, differential_expression=False).info[
        "baseline_title"]
    assert "all-zero cell embedding" in title and "no expression" not in title


def test_a_small_group_keeps_its_cells_up_to_a_minimum_and_the_size_stays():
    from scatd_core.explain._explain import MIN_GROUP_CELLS, subsample_plan

    take, share = subsample_plan([1980, 20], 100)
    assert list(take) == [80, 20] and list(share) == [99, 1]  # kept whole, the stated size kept
    take, share = subsample_plan([9950, 50], 100)
    assert list(take) == [100 - MIN_GROUP_CELLS, MIN_GROUP_CELLS] and list(share) == [99, 1]
    assert list(subsample_plan([300, 100], 40)[0]) == [30, 10]  # a group over its minimum: its share
    assert list(subsample_plan([1990, 10], 12)[0]) == [9, 3]  # at most a quarter of a small subsample
    labels = np.array(["resistant"] * 20 + ["sensitive"] * 1980)
    idx = stratified_subsample(labels, 100, seed=0)
    assert idx.size == 100 and (labels[idx] == "resistant").sum() == 20


def test_a_rare_group_is_explained_with_a_de_test_and_the_overall_means_weighted(small_bundles):
    adata, bundle = _small(small_bundles, n=120)
    prob = adata.obs["scatd_prob_resistant"].to_numpy()
    predict(adata, bundle, threshold=float(np.sort(prob)[-7]))  # the 6 most likely cells called resistant
    is_res = (adata.obs["scatd_label"] == "resistant").to_numpy()
    assert is_res.sum() == 6
    e = explain(adata, bundle, max_cells=24, n_steps=8, keep_top=None, seed=1, store_result=False)
    cells = e.info["cells"]
    assert cells["n_explained"] == 24 and cells["n_resistant"] == 6 and cells["n_sensitive"] == 18
    assert "resistant 6 of 6, all of them where a proportional share is 1" in cells["how"]
    assert "weight each group by its share of the scored cells" in e.info["statement"]
    assert e.info["differential_expression"]["method"] != "none"
    # overall means: each group's mean weighted by its share of the scored cells (6 of 120, 114 of 120)
    table = e.ranking.set_index("feature")
    a = pd.DataFrame(e.attributions, columns=e.features, index=e.cells.index)
    pos = (e.cells["label"] == "resistant").to_numpy()
    want = 6 / 120 * a[pos].abs().mean() + 114 / 120 * a[~pos].abs().mean()
    np.testing.assert_allclose(table.loc[want.index, "mean_abs_attribution"], want, rtol=2e-3, atol=1e-7)
    plain = a.abs().mean()  # what an unweighted mean over the enriched subsample gives
    assert not np.allclose(table.loc[plain.index, "mean_abs_attribution"], plain, rtol=2e-2)
    want = 6 / 120 * a[pos].mean() + 114 / 120 * a[~pos].mean()
    np.testing.assert_allclose(table.loc[want.index, "mean_attribution"], want, rtol=2e-3, atol=1e-6)
    np.testing.assert_allclose(table.loc[want.index, "mean_attribution_resistant"], a[pos].mean(), rtol=2e-3,
                               atol=1e-6)  # a group's own mean, unweighted


def test_no_de_test_says_why(small_bundles):
    adata, bundle = _small(small_bundles, n=40)
    prob = adata.obs["scatd_prob_resistant"].to_numpy()
    predict(adata, bundle, threshold=float(np.sort(prob)[-2]))  # one cell called resistant
    e = explain(adata, bundle, n_steps=4, store_result=False)
    de = e.info["differential_expression"]
    assert de["method"] == "none" and "1 resistant and 39 sensitive" in de["reason"]


def _identical_cells(small_bundles, n=12):
    bundle, _sd, enc, _z, genes = small_bundles["dist_vae"]
    row = np.abs(np.random.default_rng(4).normal(size=enc[0])).astype(np.float32)
    adata = ad.AnnData(np.tile(row, (n, 1)), obs=pd.DataFrame(index=[f"c{i}" for i in range(n)]),
                       var=pd.DataFrame(index=genes))
    predict(adata, bundle)
    return adata, bundle


def test_cells_that_all_equal_the_baseline_have_nothing_to_attribute(small_bundles):
    """QA: identical cells against the mean baseline (which then equals every cell) gave a ranking
    of genes in alphabetical order with attribution 0, and could warn "did not converge well ...
    Increase n_steps". There is nothing to attribute, and more steps cannot help: said so, no rank."""
    adata, bundle = _identical_cells(small_bundles)
    e = explain(adata, bundle, baseline="mean", n_steps=8)
    said = e.info["nothing_to_attribute"]
    assert said.startswith("Nothing to attribute: the model input of every explained cell equals the baseline")
    assert e.info["warnings"][0] == said and "More integration steps cannot change this" in said
    assert not any("Increase n_steps" in w or "raise n_steps" in w for w in e.info["warnings"])
    assert e.ranking["rank"].isna().all() and (e.ranking["mean_abs_attribution"] == 0).all()
    assert e.info["agreement"] == {} and e.info["completeness"]["nothing_to_attribute"]
    # against no expression (zero baseline) the same cells have something to attribute
    zero = explain(adata, bundle, baseline="zero", n_steps=8)
    assert "nothing_to_attribute" not in zero.info and zero.ranking["rank"].tolist()[:3] == [1, 2, 3]


def test_a_model_that_gives_every_cell_the_baselines_output_has_nothing_to_attribute(small_bundles, tmp_path):
    """The model's output is the same at every cell and at the baseline (here its last batch norm
    scales by 0): each cell's attributions add up to 0, so there is no ranking to give."""
    _bundle, _sd, enc, z, genes = small_bundles["dist_vae"]
    sd = orig.dal_checkpoint("dist_vae", enc, z, seed=10)
    sd["bn3.weight"].zero_()
    torch.save(sd, tmp_path / "flat.pth")
    (tmp_path / "genes.txt").write_text("\n".join(genes) + "\n")
    flat = import_checkpoint(tmp_path / "flat.pth", "dist_vae", drug="FLAT", out=tmp_path / "flat",
                             genes=tmp_path / "genes.txt")
    x = np.abs(np.random.default_rng(2).normal(size=(10, enc[0]))).astype(np.float32)
    adata = ad.AnnData(x, obs=pd.DataFrame(index=[f"c{i}" for i in range(10)]), var=pd.DataFrame(index=genes))
    predict(adata, flat)
    e = explain(adata, flat, baseline="zero", n_steps=8)
    assert e.info["nothing_to_attribute"].startswith("Nothing to attribute: the model gives every explained cell "
                                                     "the same logit P(resistant) as the baseline")
    assert e.ranking["rank"].isna().all() and not any("n_steps" in w for w in e.info["warnings"])


def test_cells_whose_output_does_not_change_make_no_completeness_ratio():
    """A cell whose f(x) - f(baseline) is float rounding divided its rounding-sized delta by a 1e-6
    floor: a ratio of two tiny numbers that could read 30% and advise more steps. Such cells now
    have no relative error (NaN), are counted, and the summary is over the cells that change."""
    from scatd_core.explain._explain import _completeness, _Sums

    sums = _Sums(n_features=3, n_cells=10)
    sums.f_x = np.r_[np.full(6, 0.2 + 2e-7), np.linspace(0.5, 1.5, 4)]  # 6 cells at the baseline's output
    sums.delta = np.r_[np.full(6, 3e-7), np.full(4, 1e-4)]
    warn = []
    out, rel = _completeness(sums, 0.2, 8, warn)
    assert not warn and out["ok"] and out["n_cells_without_change"] == 6
    assert np.isnan(rel[:6]).all() and np.all(rel[6:] < 1e-3)
    assert out["median_relative_error"] < 1e-3 and out["max_relative_error"] < 1e-3
    # a real convergence problem on the cells that change is still flagged, with the advice
    sums.delta = np.r_[np.full(6, 3e-7), np.full(4, 0.2)]
    warn = []
    out, _ = _completeness(sums, 0.2, 8, warn)
    assert not out["ok"] and "Increase n_steps (e.g. to 16)" in warn[0]


def test_cli_explain_says_there_is_nothing_to_attribute(small_bundles, tmp_path, capsys):
    from scatd_core.cli import main

    adata, bundle = _identical_cells(small_bundles)
    ad.AnnData(adata.X, obs=pd.DataFrame(index=adata.obs_names), var=adata.var).write_h5ad(tmp_path / "same.h5ad")
    code = main(["explain", "--model", str(bundle.path), "--input", str(tmp_path / "same.h5ad"),
                 "--output", str(tmp_path / "biomarkers.csv"), "--steps", "8"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "warning: Nothing to attribute: the model input of every explained cell equals the baseline" in err
    assert "No ranking: there is nothing to attribute" in err
    assert "Top features" not in err and "n_steps" not in err and "Completeness error" not in err
    ranking = pd.read_csv(tmp_path / "biomarkers.csv")
    assert len(ranking) == adata.n_vars and ranking["rank"].isna().all()
    metrics = pd.read_csv(tmp_path / "biomarkers_metrics.csv")
    assert "nothing_to_attribute" in set(metrics["metric"])


def test_a_negative_seed_is_an_input_error(small_bundles):
    adata, bundle = _small(small_bundles)
    with pytest.raises(InputError, match="seed must be a whole number, 0 or more"):
        explain(adata, bundle, n_steps=4, seed=-1)


def test_direction_is_worded_by_the_explained_output_and_the_feature_level():
    from scatd_core import pl
    from scatd_core.explain import direction_meaning

    ranking = pd.DataFrame({"rank": [1, 2], "feature": ["A", "B"], "mean_abs_attribution": [0.2, 0.1],
                            "direction": ["resistance", "sensitivity"], "de_score": [1.0, -1.0]})
    legend = pl.biomarker_bar(ranking, 2, "logit P(resistant)").layout.legend.title.text
    assert legend == "higher expression pushes P(resistant) toward"
    legend = pl.biomarker_bar(ranking, 2, "raw resistant logit", target="raw_logit").layout.legend.title.text
    assert legend == "higher expression pushes the raw resistant logit toward"
    legend = pl.biomarker_bar(ranking, 2, "P(resistant)", target="prob",
                              level="embedding feature").layout.legend.title.text
    assert legend == "a higher feature value pushes P(resistant) toward"
    raw = direction_meaning("raw_logit", "gene")
    assert "raw resistant logit" in raw and "need not be the direction of P(resistant)" in raw
    assert "expression" not in direction_meaning("logit", "embedding feature")
    assert "P(resistant)" in direction_meaning("logit", "gene")


class _StopNow(BaseException):
    """What the app's progress report raises once Cancel was pressed (Streamlit's StopException)."""


def test_a_run_cancelled_during_the_de_test_keeps_the_ranking_stored_before(small_bundles):
    """Cancel pressed while the DE test runs (the last stage): the app's next progress report
    stops the run, and it must come before the result is stored, so the ranking shown before
    (here: 4 steps) is kept, not overwritten by the cancelled run's (8 steps)."""
    adata, bundle = _small(small_bundles)
    explain(adata, bundle, n_steps=4)
    before = adata.uns["scatd_biomarkers"]["info"]["n_steps"], adata.obsm["scatd_attributions"].copy()
    stage = []

    def report(fraction, message):  # Cancel pressed as the DE stage begins: any later report stops
        if stage:
            raise _StopNow
        if message.startswith("differential expression"):
            stage.append(fraction)

    with pytest.raises(_StopNow):
        explain(adata, bundle, n_steps=8, progress=report)
    assert stage and adata.uns["scatd_biomarkers"]["info"]["n_steps"] == before[0] == 4
    pd.testing.assert_frame_equal(adata.obsm["scatd_attributions"], before[1])
    # should_stop turning true during the test: Cancelled, nothing stored either
    stop = []
    with pytest.raises(Cancelled, match="nothing was changed"):
        explain(adata, bundle, n_steps=8, should_stop=lambda: bool(stop),
                progress=lambda f, m: stop.append(1) if m.startswith("differential") else None)
    assert adata.uns["scatd_biomarkers"]["info"]["n_steps"] == 4


def test_genes_absent_from_the_data_have_no_rank_and_come_last(small_bundles):
    """A model gene the data lack is 0 in every cell: attribution 0 by construction, so no rank
    (empty in biomarkers.csv), listed after every gene in the data; present genes ranked 1..n."""
    bundle, _sd, enc, _z, genes = small_bundles["dist_vae"]
    x = np.abs(np.random.default_rng(5).normal(size=(30, enc[0]))).astype(np.float32)
    x[:, 7] = 2.5  # in the data, constant: attribution 0 against the mean, ranked like the absent ones were
    absent = {"GENE0", "GENE11"}
    keep = [g for g in genes if g not in absent]
    adata = ad.AnnData(x[:, [genes.index(g) for g in keep]], var=pd.DataFrame(index=keep))
    _predict_two_groups(adata, bundle)
    e = explain(adata, bundle, n_steps=4, keep_top=None, differential_expression=False)
    r = e.ranking
    assert list(r["feature"].tail(2)) == ["GENE0", "GENE11"] and not r["in_data"].tail(2).any()
    assert r["rank"].tail(2).isna().all()
    assert list(r["rank"].head(len(keep))) == list(range(1, len(keep) + 1))
    assert r.set_index("feature").loc["GENE7", "rank"] == len(keep)  # a tie at 0: in the model's gene order
    assert "GENE0" not in e.features[:len(keep)]
    from scatd_core.export import to_csv_bytes

    lines = to_csv_bytes(r).decode().splitlines()
    assert lines[-1].startswith(",GENE11,") and lines[1].startswith("1,")


def test_the_signed_mean_is_flagged_near_zero_against_a_baseline_at_the_average_cell(small_bundles):
    """Against the mean baseline each cell's attribution is its distance from the average times the
    path gradient: the distances cancel, so the signed mean is ~0 for every gene (the app hides it
    and says why); not against 'no expression'. A z-scoring model's zero is its mean too."""
    from types import SimpleNamespace

    from scatd_core.explain import signed_mean_near_zero
    from scatd_core.explain._attribution import zero_is_mean

    adata, bundle = _small(small_bundles)
    mean = explain(adata, bundle, n_steps=8, keep_top=None, differential_expression=False)
    zero = explain(adata, bundle, baseline="zero", n_steps=8, keep_top=None, differential_expression=False)
    top = mean.ranking.head(10)
    assert (top["mean_attribution"].abs() < 0.2 * top["mean_abs_attribution"]).all()
    assert signed_mean_near_zero(mean.info) and not signed_mean_near_zero(zero.info)
    assert signed_mean_near_zero({"baseline": "mean"}) and not signed_mean_near_zero({"baseline": "deletion"})
    z_scoring = SimpleNamespace(input_kind="expression", manifest={"input_transform": "standardize"})
    assert zero_is_mean(z_scoring) and not zero_is_mean(bundle)


def test_more_steps_than_the_maximum_are_refused_before_anything_runs(small_bundles, monkeypatch):
    """QA: `scatd explain --steps 1000000` crashed with "MemoryError: Unable to allocate 7.28 TiB" (captum's
    Gauss-Legendre points come from a steps x steps matrix); the app capped its field at 500, the API
    nothing. One maximum, in scatd_core, refused with a clear message before the quadrature is built."""
    from scatd_core.explain import MAX_STEPS, _attribution

    adata, bundle = _small(small_bundles, n=10)
    built = []
    monkeypatch.setattr(_attribution, "quadrature", lambda n: built.append(n) or (_ for _ in ()).throw(MemoryError))
    for steps in (MAX_STEPS + 1, 1_000_000):
        with pytest.raises(InputError, match=f"at most {MAX_STEPS:,} steps, got {steps:,}") as caught:
            explain(adata, bundle, n_steps=steps)
        assert "the default 50 usually suffice" in caught.value.hint
    assert not built and "scatd_biomarkers" not in adata.uns
    assert MAX_STEPS == 500  # the app's Integration steps field takes its maximum from here


def test_metrics_biomarker_rows_record_the_ranking_threshold_groups_and_settings(small_bundles):
    """QA: after the threshold changed (Cells page -> Calibrate), biomarkers_metrics.csv gave the new
    threshold and groups in its summary rows while its biomarkers rows came from the old ones, and
    nothing said the ranking was out of date; nor did it (app or CLI) say which baseline, explained
    output, steps, seed, method and completeness made the ranking. The biomarkers rows now do."""
    from scatd_core.export import metrics_table
    from scatd_core.predict import set_threshold

    adata, bundle = _small(small_bundles, n=30)
    result = explain(adata, bundle, n_steps=6, baseline="random", target="prob", seed=4)
    info = result.info

    def rows():
        table = metrics_table(adata)
        part = table[table["section"] == "biomarkers"]
        return dict(zip(part["metric"], part["value"]))

    now = rows()
    cells = info["cells"]
    assert now["threshold"] == info["threshold"] and now["out_of_date"] is False and "out_of_date_reason" not in now
    assert (now["n_explained_resistant"], now["n_explained_sensitive"]) == (cells["n_resistant"], cells["n_sensitive"])
    assert now["method"].startswith("Integrated gradients (captum") and "6 steps" in now["method"]
    assert (now["explained_output"], now["explained_output_meaning"]) == ("prob", "P(resistant)")
    assert now["baseline"] == "random" and now["baseline_meaning"] == "mean of 10 random scored cells (seed 4)"
    assert (now["n_steps"], now["seed"]) == (6, 4)
    comp = info["completeness"]
    assert now["completeness_median_relative_error"] == comp["median_relative_error"]
    assert now["completeness_max_relative_error"] == comp["max_relative_error"]
    assert now["completeness_tolerance"] == comp["tolerance"] and now["completeness_ok"] == comp["ok"]
    # the threshold moves afterwards: the summary gives the calls now, the biomarkers rows the ranking's own
    then = float(info["threshold"])
    set_threshold(adata, float(np.quantile(adata.obs["scatd_prob_resistant"], 0.8)), "user")
    later = rows()
    summary = metrics_table(adata).query("section == 'summary'").set_index("metric")["value"]
    assert float(summary["threshold"]) != then and later["threshold"] == then
    assert (later["n_explained_resistant"], later["n_explained_sensitive"]) == (cells["n_resistant"],
                                                                               cells["n_sensitive"])
    assert later["out_of_date"] is True and f"computed at threshold {then:.3f}" in later["out_of_date_reason"]
