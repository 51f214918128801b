"""Biomarkers on Ray (``explain_ray``, ``scatd explain --engine ray``) equal ``explain`` in one process.

A local Ray instance (2 CPUs, a small object store, no dashboard), started once for the module.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("ray", reason="the Ray engine needs Ray: pip install 'scatd-studio[ray]'")

from conftest import small_gene_names
from test_scaleout import write_cells

from scatd_core import _keys, io, scaleout
from scatd_core._json import json_safe
from scatd_core.errors import Cancelled
from scatd_core.explain import explain
from scatd_core.predict import predict

BATCH = 256
RTOL = 1e-6


def predicted(path, bundle, mask=None):
    adata = io.read(path, backed=True)
    predict(adata, bundle, batch_size=BATCH, mask=mask)
    return adata


def assert_same_explanation(dist, one, dist_adata, one_adata):
    r, o = dist.ranking, one.ranking
    assert r["feature"].tolist() == o["feature"].tolist() and r["rank"].tolist() == o["rank"].tolist()
    for col in r.columns:
        if r[col].dtype.kind == "f":
            np.testing.assert_allclose(r[col].to_numpy(), o[col].to_numpy(), rtol=RTOL, atol=1e-12, err_msg=col)
        else:
            assert r[col].astype(str).tolist() == o[col].astype(str).tolist(), col
    # delta (f(x) - f(baseline) - sum of attributions) is a float32 rounding residual itself: compared absolutely
    residual = ["delta", "relative_error"]
    pd.testing.assert_frame_equal(dist.cells.drop(columns=residual), one.cells.drop(columns=residual), rtol=RTOL,
                                  atol=1e-12)
    np.testing.assert_allclose(dist.cells[residual].to_numpy(), one.cells[residual].to_numpy(), rtol=0, atol=1e-6)
    assert dist.features == one.features
    np.testing.assert_allclose(dist.attributions, one.attributions, rtol=1e-3, atol=1e-6)  # float16-staged values
    np.testing.assert_array_equal(dist.inputs, one.inputs)
    np.testing.assert_array_equal(dist.baseline, one.baseline)
    di, oi = json_safe(dict(dist.info)), json_safe(dict(one.info))
    assert di.pop("engine")["name"] == "ray"
    for info in (di, oi):
        info.pop("seconds")
        info.pop("device")
        info.pop("completeness")
        info.pop("agreement")
    assert di == oi
    for name in ("median_relative_error", "max_relative_error"):
        assert dist.info["completeness"][name] == pytest.approx(one.info["completeness"][name], rel=1e-4, abs=1e-9)
    for key in (_keys.ATTRIBUTIONS, _keys.ATTRIBUTION_INPUTS):
        assert list(dist_adata.obsm[key].columns) == list(one_adata.obsm[key].columns)
        np.testing.assert_allclose(np.asarray(dist_adata.obsm[key]), np.asarray(one_adata.obsm[key]), rtol=1e-3,
                                   atol=1e-6)
    assert dist_adata.obs[_keys.EXPLAINED].tolist() == one_adata.obs[_keys.EXPLAINED].tolist()
    assert set(dist_adata.uns[_keys.BIOMARKERS]) == set(one_adata.uns[_keys.BIOMARKERS])


def test_subsample_on_two_workers_equals_single_process(local_ray, small_bundles, tmp_path):
    bundle = small_bundles["dist_vae"][0]
    path = write_cells(tmp_path / "c.h5ad", 3_000, small_gene_names(60), seed=4)
    # 200 of 3,000 cells in 4 shards of 50: a subsample spread over both workers, two shards each
    kw = dict(max_cells=200, seed=3, n_steps=8, keep_top=20, batch_size=BATCH)
    one_adata = predicted(path, bundle)
    one = explain(one_adata, bundle, **kw)
    dist_adata = predicted(path, bundle)
    calls = []
    dist = scaleout.explain_ray(dist_adata, bundle, shard_cells=50, workers=2,
                                progress=lambda f, m: calls.append((f, m)), **kw)
    assert dist.info["engine"]["workers"] == 2 and dist.info["engine"]["shards"] >= 4
    assert dist.info["cells"]["subsampled"] and dist.info["cells"]["n_explained"] == 200
    assert any("integrated gradients · 2 of" in m for _f, m in calls) and calls[-1][0] == 1.0
    assert_same_explanation(dist, one, dist_adata, one_adata)


def test_ray_explains_the_matrix_one_process_reads(local_ray, small_bundles, tmp_path):
    """z-scored X beside log-normalised adata.raw in a large file: the workers integrate the rows of
    adata.raw, as one process does (they read X, so no cell had a model input)."""
    from test_scaleout import _log_model, write_scanpy_cells

    bundle = _log_model(small_bundles, tmp_path)
    path = tmp_path / "c.h5ad"
    write_scanpy_cells(path, 1_000, small_gene_names(60), "raw")
    kw = dict(max_cells=120, seed=3, n_steps=8, keep_top=20, batch_size=BATCH)
    one_adata = predicted(path, bundle)
    one = explain(one_adata, bundle, **kw)
    dist_adata = predicted(path, bundle)
    dist = scaleout.explain_ray(dist_adata, bundle, shard_cells=100, workers=2, **kw)
    assert one_adata.uns["scatd"]["matrix"]["where"] == "adata.raw"
    assert_same_explanation(dist, one, dist_adata, one_adata)


def test_dataset_statistics_random_baseline_and_a_mask_equal_single_process(local_ray, small_bundles, tmp_path):
    """VAE_sf (AdaIN moments of the whole dataset), QC-filtered cells, the captum path (not factorised)."""
    bundle = small_bundles["vae_sf"][0]
    path = write_cells(tmp_path / "emb.h5ad", 2_000, [f"f{i}" for i in range(40)], seed=3, dense=True)
    mask = np.ones(2_000, dtype=bool)
    mask[300:700] = False
    kw = dict(max_cells=150, seed=1, n_steps=8, baseline="random", keep_top=None, batch_size=BATCH)
    one_adata = predicted(path, bundle, mask=mask)
    one = explain(one_adata, bundle, **kw)
    dist_adata = predicted(path, bundle, mask=mask)
    dist = scaleout.explain_ray(dist_adata, bundle, shard_cells=40, workers=2, **kw)
    assert_same_explanation(dist, one, dist_adata, one_adata)


def test_interrupted_then_resumed_explanation_equals_single_process(local_ray, small_bundles, tmp_path):
    bundle = small_bundles["dist_vae"][0]
    path = write_cells(tmp_path / "c.h5ad", 2_000, small_gene_names(60), seed=6)
    kw = dict(max_cells=300, n_steps=8, batch_size=BATCH)
    out = tmp_path / "biomarkers.csv"
    seen = []
    with pytest.raises(Cancelled, match="resume"):
        scaleout.explain_ray(predicted(path, bundle), bundle, output=out, shard_cells=50, workers=2,
                             progress=lambda f, m: seen.append(m), should_stop=lambda: len(seen) >= 3, **kw)
    parts = scaleout.parts_dir(out)
    done = len(list(parts.glob("shard-*.sha256")))
    assert done >= 1
    dist_adata = predicted(path, bundle)
    dist = scaleout.explain_ray(dist_adata, bundle, output=out, shard_cells=50, workers=2, **kw)
    assert dist.info["engine"]["shards_resumed"] == done
    one_adata = predicted(path, bundle)
    assert_same_explanation(dist, explain(one_adata, bundle, **kw), dist_adata, one_adata)


def test_cli_explain_engine_ray_writes_the_single_process_ranking(local_ray, small_bundles, tmp_path, capsys):
    from scatd_core.cli import main

    bundle = small_bundles["dist_vae"][0]
    path = write_cells(tmp_path / "c.h5ad", 2_500, small_gene_names(60), seed=2)
    common = ["explain", "--model", str(bundle.path), "--input", str(path), "--max-cells", "300", "--steps", "8",
              "--device", "cpu"]
    assert main(common + ["--output", str(tmp_path / "one.csv")]) == 0
    capsys.readouterr()
    assert main(common + ["--output", str(tmp_path / "ray.csv"), "--engine", "ray", "--workers", "2",
                          "--shard-cells", "100"]) == 0
    err = capsys.readouterr().err
    assert "Explaining on Ray" in err and "Ray: 2 workers" in err
    one, dist = pd.read_csv(tmp_path / "one.csv"), pd.read_csv(tmp_path / "ray.csv")
    assert one["feature"].tolist() == dist["feature"].tolist()
    pd.testing.assert_frame_equal(one, dist, rtol=RTOL)
