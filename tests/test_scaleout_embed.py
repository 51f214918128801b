"""Foundation embeddings on Ray (``embed_ray``, ``scatd predict --engine ray`` on expression) equal one process.

Tiny scFoundation / Geneformer checkpoints in the official formats (tests/_foundation_helpers.py);
a local Ray instance (2 CPUs, a small object store, no dashboard), started once for the module.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

pytest.importorskip("ray", reason="the Ray engine needs Ray: pip install 'scatd-studio[ray]'")

import _foundation_helpers as H
from _foundation_helpers import one_thread  # noqa: F401 (autouse fixture)
from test_foundation_product import _bundle, _log_normalised, gf_counts, sf_counts

from scatd_core import _keys, io, scaleout
from scatd_core.foundation import cells_to_embed, embed_cells, ensure_embeddings
from scatd_core.foundation._embed import cached

N_CELLS = 4_500  # 3 shards of whole 2,048-cell chunks


@pytest.fixture
def assets(tmp_path, monkeypatch):
    return H.install_assets(tmp_path, monkeypatch)


def assert_same_record(dist, one, dist_adata, one_adata, key):
    np.testing.assert_allclose(np.asarray(dist_adata.obsm[key]), np.asarray(one_adata.obsm[key]), rtol=1e-6,
                               atol=1e-7)
    assert np.array_equal(np.isnan(dist_adata.obsm[key]), np.isnan(one_adata.obsm[key]))
    d, o = dict(dist), dict(one)
    for rec in (d, o):
        rec.pop("seconds")
        rec.pop("device")
    np.testing.assert_array_equal(d.pop("tried"), o.pop("tried"))
    assert json.loads(json.dumps(d, default=str)) == json.loads(json.dumps(o, default=str))


@pytest.mark.parametrize("backbone", ["vae_sf", "vae_gf"])
def test_embeddings_on_two_workers_equal_single_process(local_ray, assets, tmp_path, backbone):
    if backbone == "vae_sf":
        bundle, data = _bundle(tmp_path, "vae_sf", 4 * H.SF_HIDDEN), sf_counts(N_CELLS, seed=2)
    else:
        bundle, data = _bundle(tmp_path, "vae_gf", H.GF_CONFIG["hidden_size"], seed=1), gf_counts(N_CELLS, seed=2)
    x = data.X.tolil()
    x[5] = 0  # a cell without an expressed gene: not embedded, with the reason
    x[7, 0] = x[2_100, 1] = -2.0  # cells with a negative value in two shards: not embedded, their rows kept
    data.X = sp.csr_matrix(x)
    path = tmp_path / "counts.h5ad"
    data.write_h5ad(path)
    mask = np.ones(N_CELLS, dtype=bool)
    mask[100:300] = False
    one_adata = io.read(path)
    one = ensure_embeddings(one_adata, bundle, mask=mask, device="cpu")
    dist_adata = io.read(path, backed=True)
    seen = []
    dist = scaleout.embed_ray(dist_adata, bundle, mask=mask, device="cpu", shard_cells=2048, workers=2,
                              output=tmp_path / "o.csv", progress=lambda f, m: seen.append(m))
    assert any("embeddings · 1 of 3 shards" in m for m in seen)
    assert (tmp_path / "o.csv.embeddings.parts" / "shard-000002.sha256").exists()
    key = _keys.FOUNDATION_EMBEDDING[backbone]
    assert one["info"]["not_embedded"] == {"no_expressed_gene": 1, "negative_values": 2}
    assert_same_record(dist, one, dist_adata, one_adata, key)  # with the rows of the faulty cells, by reason
    assert list(dist["not_embedded_rows"]["negative_values"]) == [7, 2_100]
    # the same call again: already there, nothing recomputed
    assert scaleout.embed_ray(dist_adata, bundle, mask=mask, device="cpu") is dist_adata.uns[_keys.FOUNDATION][backbone]


def test_cli_predict_engine_ray_embeds_on_ray_and_writes_the_single_process_table(local_ray, assets, tmp_path,
                                                                                   capsys):
    from scatd_core.cli import main

    bundle = _bundle(tmp_path, "vae_sf", 4 * H.SF_HIDDEN)
    path = tmp_path / "counts.h5ad"
    sf_counts(3_000, seed=4).write_h5ad(path)
    common = ["predict", "--model", str(bundle.path), "--input", str(path), "--device", "cpu"]
    assert main(common + ["--output", str(tmp_path / "one.csv")]) == 0
    capsys.readouterr()
    assert main(common + ["--output", str(tmp_path / "ray.csv"), "--engine", "ray", "--workers", "2",
                          "--shard-cells", "2048"]) == 0
    err = capsys.readouterr().err
    assert "Embedding on Ray" in err and "scFoundation embeddings: 3,000 of 3,000 cells" in err
    one, dist = pd.read_csv(tmp_path / "one.csv"), pd.read_csv(tmp_path / "ray.csv")
    pd.testing.assert_frame_equal(one, dist, rtol=1e-6)


def test_cli_explain_engine_ray_on_expression_embeds_predicts_and_explains_as_one_process(local_ray, assets,
                                                                                          tmp_path, capsys):
    from scatd_core.cli import main

    bundle = _bundle(tmp_path, "vae_sf", 4 * H.SF_HIDDEN)
    path = tmp_path / "counts.h5ad"
    sf_counts(2_500, seed=5).write_h5ad(path)
    common = ["explain", "--model", str(bundle.path), "--input", str(path), "--device", "cpu", "--level", "features",
              "--max-cells", "200", "--steps", "8"]
    assert main(common + ["--output", str(tmp_path / "one.csv")]) == 0
    capsys.readouterr()
    assert main(common + ["--output", str(tmp_path / "ray.csv"), "--engine", "ray", "--workers", "2"]) == 0
    err = capsys.readouterr().err
    assert "Embedding on Ray" in err and "Predicting on Ray" in err and "Explaining on Ray" in err
    one, dist = pd.read_csv(tmp_path / "one.csv"), pd.read_csv(tmp_path / "ray.csv")
    assert one["feature"].tolist() == dist["feature"].tolist()
    pd.testing.assert_frame_equal(one, dist, rtol=1e-6)
    # gene-level biomarkers through the foundation model stay in one process: said before any work
    assert main(common[:-6] + ["--output", str(tmp_path / "g.csv"), "--engine", "ray"]) == 2
    assert "do not run on Ray" in capsys.readouterr().err


def test_predictions_made_from_other_embeddings_are_not_resumed(local_ray, assets, tmp_path, capsys):
    """The QA's run: rde, then --scfoundation-key cell (refused: the embeddings parts are of the old
    key, and the message names the prediction parts too), the embeddings parts deleted: the
    prediction parts of the rde embeddings are refused, not resumed."""
    from scatd_core.cli import main

    bundle = _bundle(tmp_path, "vae_sf", 4 * H.SF_HIDDEN)
    path = tmp_path / "counts.h5ad"
    sf_counts(300, seed=4).write_h5ad(path)
    common = ["predict", "--model", str(bundle.path), "--input", str(path), "--device", "cpu", "--engine", "ray",
              "--workers", "2", "--batch-size", "32", "--shard-cells", "64", "--output", str(tmp_path / "ray.csv"),
              "--keep-parts"]
    assert main(common) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(common + ["--scfoundation-key", "cell", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "ray.csv.embeddings.parts holds the parts of a different run" in err
    assert "ray.csv.parts (made from its results)" in err
    import shutil

    shutil.rmtree(tmp_path / "ray.csv.embeddings.parts")
    assert main(common + ["--scfoundation-key", "cell", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "ray.csv.parts holds the parts of a different run (changed: embeddings)" in err
    shutil.rmtree(tmp_path / "ray.csv.parts")
    assert main(common + ["--scfoundation-key", "cell", "--overwrite"]) == 0
    err = capsys.readouterr().err
    assert "0 already done" not in err and "resumed" not in err.split("Ray:")[-1].splitlines()[0]
    one = tmp_path / "one.csv"
    assert main(["predict", "--model", str(bundle.path), "--input", str(path), "--device", "cpu",
                 "--batch-size", "32", "--scfoundation-key", "cell", "--output", str(one)]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(one), pd.read_csv(tmp_path / "ray.csv"), rtol=1e-6)


def test_cli_report_engine_ray_on_expression_embeds_on_ray_with_its_parts_in_the_report_folder(local_ray, assets,
                                                                                                tmp_path, capsys):
    """`scatd report --engine ray` with a VAE_sf model on counts: the embeddings on Ray too (report has
    --out, not --output), their parts in <out>/ray/ with the prediction's, the single-process table."""
    from scatd_core.cli import main

    bundle = _bundle(tmp_path, "vae_sf", 4 * H.SF_HIDDEN)
    path = tmp_path / "counts.h5ad"
    sf_counts(2_100, seed=6).write_h5ad(path)
    common = ["report", "--model", str(bundle.path), "--input", str(path), "--device", "cpu", "--no-umap"]
    assert main(common + ["--out", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    assert main(common + ["--out", str(tmp_path / "ray"), "--engine", "ray", "--workers", "2",
                          "--shard-cells", "2048", "--keep-parts"]) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "Embedding on Ray" in err and "scFoundation embeddings: 2,100 of 2,100 cells" in err
    assert (tmp_path / "ray" / "ray" / "predictions.embeddings.parts" / "shard-000001.sha256").exists()
    one, dist = pd.read_csv(tmp_path / "one" / "predictions.csv"), pd.read_csv(tmp_path / "ray" / "predictions.csv")
    pd.testing.assert_frame_equal(one, dist, rtol=1e-6)


# ----------------------------------------------------------------------------- counts beside a normalised X

def _normalised_with_counts(backbone: str, n: int, where: str):
    """Cells with log1p(CP10k) in X and their raw counts in ``layers['counts']`` or in ``adata.raw``
    (then with 5 more genes than X, as a file of HVGs keeps them); returns (data, counts alone)."""
    counts = sf_counts(n, seed=7) if backbone == "vae_sf" else gf_counts(n, seed=7)
    data = _log_normalised(counts)
    if where == "layers":
        data.layers["counts"] = counts.X.copy()
    else:
        data.raw = counts
        data = data[:, :-5].copy()
    return data, counts


@pytest.mark.parametrize("backbone, where", [("vae_sf", "layers"), ("vae_gf", "raw")])
def test_ray_embeds_the_counts_beside_a_normalised_x_as_one_process(local_ray, assets, tmp_path, backbone, where):
    """One process gives the backbone the raw counts beside a log-normalised X; the Ray workers read the
    same matrix from the file (not X), so the embeddings and the record (with its note) are the same."""
    width = 4 * H.SF_HIDDEN if backbone == "vae_sf" else H.GF_CONFIG["hidden_size"]
    bundle = _bundle(tmp_path, backbone, width, seed=int(backbone == "vae_gf"))
    data, counts = _normalised_with_counts(backbone, 300, where)  # one shard: several are tested above
    path = tmp_path / "logged.h5ad"
    data.write_h5ad(path)
    one_adata = io.read(path)
    one = ensure_embeddings(one_adata, bundle, device="cpu")
    dist_adata = io.read(path, backed=True)
    dist = scaleout.embed_ray(dist_adata, bundle, device="cpu", shard_cells=2048, workers=2)
    given = dist["info"]["expression"]
    assert given["matrix"] == ("layers['counts']" if where == "layers" else "adata.raw")
    assert "is given the raw counts in" in given["note"] and "warning" not in given
    key = _keys.FOUNDATION_EMBEDDING[backbone]
    assert_same_record(dist, one, dist_adata, one_adata, key)
    # the embeddings of the counts themselves (X = counts), not of the log values
    alone = counts.copy()
    embed_cells(alone, backbone, device="cpu", **({"embedding_dim": width} if backbone == "vae_gf" else {}))
    np.testing.assert_allclose(np.asarray(dist_adata.obsm[key]), alone.obsm[key], rtol=1e-5, atol=1e-6)


def test_cli_predict_engine_ray_on_log_x_with_counts_says_so_and_writes_the_single_process_table(
        local_ray, assets, tmp_path, capsys):
    from scatd_core.cli import main

    bundle = _bundle(tmp_path, "vae_sf", 4 * H.SF_HIDDEN)
    path = tmp_path / "logged.h5ad"
    _normalised_with_counts("vae_sf", 300, "layers")[0].write_h5ad(path)
    common = ["predict", "--model", str(bundle.path), "--input", str(path), "--device", "cpu"]
    assert main(common + ["--output", str(tmp_path / "one.csv")]) == 0
    capsys.readouterr()
    assert main(common + ["--output", str(tmp_path / "ray.csv"), "--engine", "ray", "--workers", "2",
                          "--shard-cells", "64"]) == 0
    err = capsys.readouterr().err
    assert "X holds log-normalized values, so scFoundation is given the raw counts in layers['counts'] instead" in err
    assert "embeds X as it is" not in err and "given log-normalised values" not in err
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "one.csv"), pd.read_csv(tmp_path / "ray.csv"), rtol=1e-6)


def test_stored_embeddings_are_keyed_to_the_matrix_embedded_not_to_x_alone(assets):
    """Embeddings made from a log-normalised X are not reused once the raw counts are there (they are
    made from the counts), nor those made from the counts once the counts are gone; the same X
    throughout. Changed counts beside the same X are embedded again too."""
    data, counts = _normalised_with_counts("vae_sf", 30, "layers")
    logged = data.copy()
    del logged.layers["counts"]
    from_x = embed_cells(logged, "vae_sf", device="cpu")
    assert from_x["info"]["expression"]["matrix"] == "X"
    logged.layers["counts"] = counts.X.copy()  # the same X, now with its counts
    # the app's check, which remembers the key per AnnData object, sees the counts too
    assert cells_to_embed(logged, SimpleNamespace(input_kind="embedding", backbone="vae_sf")) == 30
    assert cached(logged, "vae_sf") is None
    from_counts = embed_cells(logged, "vae_sf", device="cpu")
    assert from_counts["info"]["expression"]["matrix"] == "layers['counts']"
    assert from_counts["fingerprint"] != from_x["fingerprint"]
    assert cached(logged, "vae_sf") is from_counts
    alone = counts.copy()
    embed_cells(alone, "vae_sf", device="cpu")
    np.testing.assert_allclose(logged.obsm["X_scfoundation"], alone.obsm["X_scfoundation"], rtol=1e-5, atol=1e-6)
    edited = logged.copy()
    edited.layers["counts"] = counts.X.copy() * 2  # other counts, the same X
    assert cached(edited, "vae_sf") is None
    del logged.layers["counts"]  # the counts gone: the record made from them is not reused for X
    assert cached(logged, "vae_sf") is None
    # X holding counts: keyed as before (records stored by earlier versions stay valid)
    assert alone.uns[_keys.FOUNDATION]["vae_sf"]["fingerprint"] == _x_only_fingerprint(alone)


def _x_only_fingerprint(adata) -> str:
    """The key earlier versions gave any data: names and a hash of X."""
    import hashlib

    from scatd_core.foundation._embed import FINGERPRINT_VERSION, _hash_x

    h = hashlib.sha256()
    for names in (adata.obs_names, adata.var_names):
        h.update("\x00".join(map(str, names)).encode("utf-8"))
        h.update(b"\x01")
    h.update(_hash_x(adata.X).encode())
    return f"{FINGERPRINT_VERSION}:{h.hexdigest()[:32]}"


def test_counts_not_in_the_file_the_ray_workers_read_are_refused_with_a_reason(tmp_path):
    from scatd_core.errors import InputError
    from scatd_core.scaleout._files import matrix_in_file

    data, counts = _normalised_with_counts("vae_sf", 10, "layers")
    data.write_h5ad(tmp_path / "with.h5ad")
    del data.layers["counts"]
    data.write_h5ad(tmp_path / "without.h5ad")
    assert matrix_in_file(io.read(tmp_path / "with.h5ad", backed=True), "layers['counts']") == "layers/counts"
    assert matrix_in_file(io.read(tmp_path / "with.h5ad", backed=True), "X") is None
    with pytest.raises(InputError, match=r"The matrix layers\['counts'\] is not in the file without.h5ad"):
        matrix_in_file(io.read(tmp_path / "without.h5ad", backed=True), "layers['counts']")
