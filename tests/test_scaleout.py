"""The Ray engine gives the single-process results exactly, through lost workers and restarts.

One local Ray instance serves every test (the app's, which the first test starts; else conftest's
local_ray: 2 CPUs, a small object store, no dashboard), shut down at the end of the run: starting one,
and its worker processes (each imports torch), takes seconds. Skipped, with the reason, where Ray is not installed.
"""

from __future__ import annotations

import re
import threading
import time

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

pytest.importorskip("ray", reason="the Ray engine needs Ray: pip install 'scatd-studio[ray]'")

from _app_helpers import trained_library  # noqa: F401 (fixture)
from conftest import small_gene_names

from scatd_core import io, scaleout
from scatd_core._json import json_safe
from scatd_core.errors import Cancelled, InputError, ScatdError
from scatd_core.export import predictions_table
from scatd_core.predict import predict

N_CELLS = 12_500
BATCH = 512
SHARD = 1024  # 13 shards of 2 batches each (the last one partial): several rounds of both workers


def write_cells(path, n_cells: int, genes: list[str], seed: int = 0, dense: bool = False):
    """Sparse counts with a few cells that cannot be scored (no expression in the genes)."""
    rng = np.random.default_rng(seed)
    X = sp.random(n_cells, len(genes), density=0.3, format="csr", dtype=np.float32, random_state=rng,
                  data_rvs=lambda k: rng.integers(1, 40, k).astype(np.float32))
    for row in (7, min(BATCH * 5 + 3, n_cells - 1)):  # no expression: a cell of the first shard, one of a later
        X.data[X.indptr[row]:X.indptr[row + 1]] = 0
    X.eliminate_zeros()
    obs = pd.DataFrame({"sample": pd.Categorical(rng.choice(["p1", "p2"], n_cells))},
                       index=[f"c{i}" for i in range(n_cells)])
    adata = ad.AnnData(X=X.toarray() if dense else X, obs=obs, var=pd.DataFrame(index=genes))
    adata.write_h5ad(path)
    return path


def single_process(path, bundle, **kw):
    adata = io.read(path, backed=True)
    predict(adata, bundle, batch_size=BATCH, **kw)
    return adata


def assert_same(ray_adata, one_adata, latent=True):
    for col in ("scatd_prob_resistant", "scatd_prob_resistant_sd", "scatd_scored", "scatd_not_scored_reason",
                "scatd_label"):
        assert (col in ray_adata.obs) == (col in one_adata.obs)
        if col in one_adata.obs:
            a, b = ray_adata.obs[col], one_adata.obs[col]
            if a.dtype.kind == "f":
                np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())  # NaN where NaN, else bit-equal
            else:
                assert a.tolist() == b.tolist()
                assert list(getattr(a, "cat", a).categories if hasattr(a, "cat") else []) == \
                    list(getattr(b, "cat", b).categories if hasattr(b, "cat") else [])
    if latent:
        np.testing.assert_array_equal(ray_adata.obsm["X_scatd"], one_adata.obsm["X_scatd"])
    r, o = json_safe(dict(ray_adata.uns["scatd"])), json_safe(dict(one_adata.uns["scatd"]))
    for rec in (r, o):
        for k in ("run_at", "seconds", "engine"):
            rec.pop(k, None)
        rec["params"].pop("device")
        rec["model"].pop("path")
    assert r == o
    pd.testing.assert_frame_equal(predictions_table(ray_adata, ["sample"]), predictions_table(one_adata, ["sample"]))


@pytest.fixture(scope="module")
def cells_13_shards(tmp_path_factory):
    return write_cells(tmp_path_factory.mktemp("data") / "cells.h5ad", N_CELLS, small_gene_names(60))


def test_the_app_keeps_its_ray_connection_from_run_to_run(ray_stopped_at_the_end, small_bundles, tmp_path):
    """The app's runs share one connection, kept after each run: one user's run ending must not
    disconnect another's still going, and the worker processes serve the next run. First of the Ray
    tests (not after local_ray's start-up): the instance it starts, as the app's, serves the tests after it
    instead of a second one starting (seconds, and its workers' torch imports again)."""
    import psutil
    import ray

    ray.shutdown()  # as on a server before its first large dataset (the session's instance is gone)
    bundle = small_bundles["dist_vae"][0]
    path = write_cells(tmp_path / "c.h5ad", 3_000, small_gene_names(60), seed=4)
    choice = scaleout.EngineChoice(True, None, 2, "test")

    def ray_processes_alive() -> bool:
        mine = [p for p in psutil.Process().children() if p.name() in ("gcs_server", "raylet")]
        return len(mine) == 2 and all(p.status() != psutil.STATUS_ZOMBIE for p in mine)

    for token in ("first", "second"):
        # as in the app: each run in a thread of its own, which ends with the run; the local instance
        # the first run starts must outlive it (its GCS was killed with the thread, and 60 s later
        # Ray's client ended the whole server)
        out = {}
        thread = threading.Thread(target=lambda: out.update(run=scaleout.predict_in_folder(
            ad.read_h5ad(path), bundle, tmp_path / "runs", token, choice, batch_size=BATCH, shard_cells=1024)))
        thread.start()
        thread.join()
        run = out["run"]
        time.sleep(1.0)
        try:
            assert ray_processes_alive(), "the local Ray instance died with the run's thread"
        except AssertionError:
            ray.shutdown()  # before Ray's client ends this process for the lost GCS
            raise
        assert ray.is_initialized(), "the app's Ray connection was closed after a run"
        assert run.computed == 3
        assert_same(run.adata, single_process(path, bundle))


def test_13_shards_on_two_workers_equal_single_process(local_ray, small_bundles, cells_13_shards, tmp_path):
    bundle = small_bundles["dist_vae"][0]
    calls = []
    run = scaleout.predict_ray(io.read(cells_13_shards, backed=True), bundle, tmp_path / "out.csv", batch_size=BATCH,
                               shard_cells=SHARD, workers=2, progress=lambda f, m: calls.append((f, m)))
    assert len(run.shards) == 13 and run.computed == 13 and run.resumed == 0 and run.workers == 2
    one = single_process(cells_13_shards, bundle)
    assert one.uns["scatd"]["not_scored"] == {"no_expression": 2}
    assert_same(run.adata, one)
    assert calls[-1][0] == 1.0 and any("predicting · 5 of 13 shards" in m for _f, m in calls)
    assert run.adata.uns["scatd"]["engine"]["workers"] == 2


def test_dataset_statistics_and_sample_mode_equal_single_process(local_ray, small_bundles, tmp_path):
    """AdaIN (VAE_sf) needs the whole dataset's moments: a first distributed pass, merged in order."""
    bundle = small_bundles["vae_sf"][0]
    path = write_cells(tmp_path / "emb.h5ad", 9_000, [f"f{i}" for i in range(40)], seed=3, dense=True)
    mask = np.ones(9_000, dtype=bool)
    mask[2048:4096] = False  # a whole shard filtered, another partly
    mask[5000:5100] = False
    kw = dict(mode="sample", n_samples=4, seed=7, mask=mask)
    run = scaleout.predict_ray(io.read(path, backed=True), bundle, tmp_path / "out.csv", batch_size=BATCH,
                               shard_cells=2048, workers=2, **kw)
    assert (run.store.folder / "statistics.npz").exists()
    assert_same(run.adata, single_process(path, bundle, **kw))


def _kill_a_running_predict_task(killed: list, stop: threading.Event) -> None:
    """Kill the first Ray worker process seen running a PredictWorker shard (Ray titles a
    process ``ray::<task name>`` while it runs the task), polling until ``stop``."""
    import psutil

    while not stop.is_set() and not killed:
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if " ".join(proc.info["cmdline"] or []).startswith("ray::PredictWorker"):
                proc.kill()
                killed.append(proc.info["pid"])
                return
        time.sleep(0.005)


def test_killed_worker_still_gives_identical_results(local_ray, small_bundles, cells_13_shards, tmp_path):
    """A worker process killed while it computes a shard: Ray runs the shard again elsewhere."""
    bundle = small_bundles["dist_vae"][0]
    killed, stop = [], threading.Event()
    killer = threading.Thread(target=_kill_a_running_predict_task, args=(killed, stop), daemon=True)

    notes = []

    class Progress:  # as the command line's: the retry is said on a line of its own (QA: only Ray's raylet text)
        def __call__(self, fraction, message):
            if "predicting" in message and killer.ident is None:
                killer.start()

        note = notes.append

    try:
        run = scaleout.predict_ray(io.read(cells_13_shards, backed=True), bundle, tmp_path / "out.csv",
                                   batch_size=BATCH, shard_cells=SHARD, workers=2, progress=Progress())
    finally:
        stop.set()
    assert killed and killed[0] > 0, "no Ray worker process was seen running a shard"
    assert run.computed == 13
    assert len(notes) == 1 and notes[0].endswith(": its worker process stopped (killed, or out of memory); running "
                                                 "the shard again (retry 1 of 3)"), notes
    assert_same(run.adata, single_process(cells_13_shards, bundle))


def test_interrupted_then_resumed_run_gives_identical_results(local_ray, small_bundles, cells_13_shards, tmp_path):
    bundle = small_bundles["dist_vae"][0]
    out = tmp_path / "out.csv"
    seen = []
    with pytest.raises(Cancelled, match="resume"):
        scaleout.predict_ray(io.read(cells_13_shards, backed=True), bundle, out, batch_size=BATCH, shard_cells=SHARD,
                             workers=2, progress=lambda f, m: seen.append(m), should_stop=lambda: len(seen) >= 4)
    parts = scaleout.parts_dir(out)
    done = sorted(p.name for p in parts.glob("shard-*.sha256"))
    assert 3 <= len(done) < 13
    first = parts / done[0].replace(".sha256", ".npz")
    first.write_bytes(first.read_bytes()[:-10] + b"0123456789")  # a damaged part is recomputed
    run = scaleout.predict_ray(io.read(cells_13_shards, backed=True), bundle, out, batch_size=BATCH, shard_cells=SHARD,
                               workers=2)
    assert run.resumed == len(done) - 1 and run.computed == 13 - run.resumed
    assert_same(run.adata, single_process(cells_13_shards, bundle))
    with pytest.raises(InputError, match="different run.*seed"):
        scaleout.predict_ray(io.read(cells_13_shards, backed=True), bundle, out, batch_size=BATCH, shard_cells=SHARD,
                             seed=1)


def test_streamed_h5ad_equals_the_single_process_one(local_ray, small_bundles, tmp_path):
    bundle = small_bundles["dist_vae"][0]
    path = write_cells(tmp_path / "c.h5ad", 5_000, small_gene_names(60), seed=5)
    run = scaleout.predict_ray(io.read(path, backed=True), bundle, tmp_path / "o.csv", batch_size=BATCH,
                               shard_cells=2048, load_latent=False)
    assert "X_scatd" not in run.adata.obsm
    written = ad.read_h5ad(scaleout.write_h5ad(run, tmp_path / "o.h5ad"))
    one = single_process(path, bundle)
    np.testing.assert_array_equal(written.obsm["X_scatd"], one.obsm["X_scatd"])
    np.testing.assert_array_equal(written.X.toarray(), ad.read_h5ad(path).X.toarray())
    from scatd_core.export import write_h5ad

    assert_same(written, ad.read_h5ad(write_h5ad(one, tmp_path / "one.h5ad")))  # as one process writes it


def write_scanpy_cells(path, n_cells: int, genes: list[str], where: str, seed: int = 3):
    """A large-file layout of a usual scanpy file: X z-scored; beside it the log-normalised values in
    adata.raw (``where="raw"``) or the raw counts in layers['counts'] (``"layer"``). Returns the counts."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(3.0, size=(n_cells, len(genes))).astype(np.float32) + 1
    obs = pd.DataFrame({"sample": pd.Categorical(rng.choice(["p1", "p2"], n_cells))},
                       index=[f"c{i}" for i in range(n_cells)])
    adata = ad.AnnData(((counts - counts.mean(0)) / counts.std(0)).astype(np.float32), obs=obs,
                       var=pd.DataFrame(index=genes))
    if where == "raw":
        log = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4).astype(np.float32)
        adata.raw = ad.AnnData(sp.csr_matrix(log), obs=obs[[]], var=pd.DataFrame(index=genes))
    else:
        adata.layers["counts"] = sp.csr_matrix(counts)
    adata.write_h5ad(path)
    return counts


def _log_model(small_bundles, tmp_path):
    from scatd_core.bundle import save_bundle

    bundle, sd, _enc, _z, genes = small_bundles["dist_vae"]
    return save_bundle(tmp_path / "log_model", sd, bundle.architecture, drug="TESTDRUG", genes=genes,
                       input_transform="log1p_cp10k", beta_mode="separate")


@pytest.mark.parametrize("where", ["raw", "layer"])
def test_a_backed_file_is_read_from_the_matrix_the_rule_chooses_in_one_process(small_bundles, tmp_path, where):
    """QA: a file read in parts (backed) gave the models X only: z-scored X beside log-normalised
    adata.raw (or layers['counts']) was refused ("No cell can be scored") where the same file in memory
    was read from .raw. Backed, one process reads the same matrix (.raw in row blocks), with the same note."""
    bundle = _log_model(small_bundles, tmp_path)
    counts = write_scanpy_cells(tmp_path / "c.h5ad", 300, small_gene_names(60), where)
    backed, memory = io.read(tmp_path / "c.h5ad", backed=True), io.read(tmp_path / "c.h5ad", backed=False)
    assert backed.isbacked
    predict(backed, bundle, batch_size=128)
    predict(memory, bundle, batch_size=128)
    assert backed.uns["scatd"]["matrix"] == memory.uns["scatd"]["matrix"]
    assert backed.uns["scatd"]["matrix"]["where"] == ("adata.raw" if where == "raw" else "layers['counts']")
    assert list(backed.uns["scatd"]["notes"]) == list(memory.uns["scatd"]["notes"])
    np.testing.assert_array_equal(backed.obs["scatd_prob_resistant"], memory.obs["scatd_prob_resistant"])
    reference = ad.AnnData(counts, var=pd.DataFrame(index=small_gene_names(60)))
    predict(reference, bundle)
    np.testing.assert_allclose(backed.obs["scatd_prob_resistant"], reference.obs["scatd_prob_resistant"], atol=1e-5)


@pytest.mark.parametrize("where", ["raw", "layer"])
def test_ray_reads_the_matrix_one_process_reads_from_the_file(local_ray, small_bundles, tmp_path, where):
    """Ray workers read X only: the same file gave Ray "No cell can be scored" while one process read
    adata.raw / layers['counts']. They read the chosen matrix's rows from the file: the same results,
    record, notes and warnings as one process."""
    bundle = _log_model(small_bundles, tmp_path)
    write_scanpy_cells(tmp_path / "c.h5ad", 3000, small_gene_names(60), where)
    run = scaleout.predict_ray(io.read(tmp_path / "c.h5ad", backed=True), bundle, tmp_path / "o.csv",
                               batch_size=BATCH, shard_cells=2048, workers=2)
    one = single_process(tmp_path / "c.h5ad", bundle)
    assert run.adata.uns["scatd"]["matrix"]["where"] == ("adata.raw" if where == "raw" else "layers['counts']")
    assert any("The model input is taken from" in n for n in run.adata.uns["scatd"]["notes"])
    assert_same(run.adata, one)


def test_in_memory_data_and_bad_address_are_refused_with_a_reason(small_bundles, tmp_path):
    bundle = small_bundles["dist_vae"][0]
    adata = ad.AnnData(X=np.ones((4, 60), dtype=np.float32), var=pd.DataFrame(index=small_gene_names(60)))
    with pytest.raises(InputError, match="reads an .h5ad file from disk"):
        scaleout.predict_ray(adata, bundle, tmp_path / "o.csv")
    path = write_cells(tmp_path / "c.h5ad", 100, small_gene_names(60))
    with pytest.raises(ScatdError, match="Could not connect to the Ray cluster at 127.0.0.1:1"):
        scaleout.predict_ray(io.read(path, backed=True), bundle, tmp_path / "o.csv", address="127.0.0.1:1")


def test_too_few_model_genes_are_refused_before_any_worker_starts(small_bundles, tmp_path):
    """As predict refuses data with under 10% of the model's genes (genes.coverage_refusal), so does a Ray
    run, before it connects (the address here is unreachable), unless the minimum is lowered."""
    bundle = small_bundles["dist_vae"][0]
    genes = small_gene_names(60)
    path = write_cells(tmp_path / "c.h5ad", 100, genes[:3] + [f"OTHER{i}" for i in range(57)])  # 3 of 60: 5%
    with pytest.raises(InputError, match=r"Too few of the model's genes .* only 3 of the model's 60 genes \(5.0%\)"):
        scaleout.predict_ray(io.read(path, backed=True), bundle, tmp_path / "o.csv", address="127.0.0.1:1")
    with pytest.raises(ScatdError, match="Could not connect to the Ray cluster"):  # past the check with the override
        scaleout.predict_ray(io.read(path, backed=True), bundle, tmp_path / "o.csv", address="127.0.0.1:1",
                             min_gene_coverage=0.01)


def test_z_scored_values_alone_are_refused_before_any_worker_starts(small_bundles, tmp_path):
    """As one process refuses z-scored values for a model that log-normalises them (inputs.unscorable_error),
    so does a Ray run, before it connects (the address is unreachable), instead of failing after every shard."""
    bundle = _log_model(small_bundles, tmp_path)
    write_scanpy_cells(tmp_path / "c.h5ad", 200, small_gene_names(60), "layer")
    scaled = ad.read_h5ad(tmp_path / "c.h5ad")
    del scaled.layers["counts"]
    scaled.write_h5ad(tmp_path / "scaled.h5ad")
    with pytest.raises(InputError, match="this matrix is z-scored"):
        scaleout.predict_ray(io.read(tmp_path / "scaled.h5ad", backed=True), bundle, tmp_path / "o.csv",
                             address="127.0.0.1:1")


def test_cli_engine_ray_writes_the_single_process_table_and_h5ad(local_ray, small_bundles, tmp_path, capsys):
    from scatd_core.cli import main

    bundle = small_bundles["dist_vae"][0]
    path = write_cells(tmp_path / "c.h5ad", 6_000, small_gene_names(60), seed=2)
    common = ["predict", "--model", str(bundle.path), "--input", str(path), "--batch-size", "1024"]
    assert main(common + ["--output", str(tmp_path / "one.csv"), "--h5ad", str(tmp_path / "one.h5ad")]) == 0
    one_estimate = re.search(r"Estimated time: about ([\d,]+) s for 6,000 cells on (CPU \(\d+ threads?\))",
                             capsys.readouterr().err)
    assert one_estimate is not None
    ray_args = common + ["--output", str(tmp_path / "ray.csv"), "--h5ad", str(tmp_path / "ray.h5ad"),
                         "--engine", "ray", "--shard-cells", "2048", "--workers", "2"]
    assert main(ray_args + ["--keep-parts"]) == 0
    err = capsys.readouterr().err
    # QA: a Ray run printed no estimate; it prints one process's, shared among the workers, before any shard runs
    said = (f"for 6,000 cells on 2 Ray workers (about {one_estimate[1]} s in one process on {one_estimate[2]}, "
            "shared among them; an estimate from per-cell costs, nothing run yet")
    assert said in err and err.index(said) < err.index("Predicting on Ray"), err
    assert "Ray: 2 workers, 3 shards (parts kept in" in err and "0 already done" not in err and "Predicting on Ray: 100%" in err
    assert "Removed the Ray shard parts" not in err and (tmp_path / "ray.csv.parts" / "run.json").is_file()
    assert (tmp_path / "ray.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()
    one, dist = ad.read_h5ad(tmp_path / "one.h5ad"), ad.read_h5ad(tmp_path / "ray.h5ad")
    np.testing.assert_array_equal(dist.obsm["X_scatd"], one.obsm["X_scatd"])
    assert_same(dist, one)
    assert main(ray_args + ["--overwrite"]) == 0  # run again: every shard is already there; then the parts are removed
    err = capsys.readouterr().err
    assert "3 shards (3 already done" in err and "Removed the Ray shard parts (1 folder," in err
    assert not (tmp_path / "ray.csv.parts").exists()
    assert (tmp_path / "ray.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()


def test_cli_engine_ray_says_a_mask_column_left_its_cells_out(local_ray, small_bundles, tmp_path, capsys):
    """--mask keep on Ray: the cells it leaves out say 'left out by the mask column 'keep'' (not
    'filtered by QC') and are labelled 'left out (mask)' (not 'filtered (QC)'), byte for byte as the
    single-process table, and the run records the column."""
    from scatd_core.cli import main

    bundle = small_bundles["dist_vae"][0]
    path = write_cells(tmp_path / "c.h5ad", 3_000, small_gene_names(60), seed=4)
    data = ad.read_h5ad(path)
    data.obs["keep"] = np.arange(3_000) % 7 != 0
    data.write_h5ad(path)
    common = ["predict", "--model", str(bundle.path), "--input", str(path), "--batch-size", "1024", "--mask", "keep"]
    assert main(common + ["--output", str(tmp_path / "one.csv")]) == 0
    assert main(common + ["--output", str(tmp_path / "ray.csv"), "--h5ad", str(tmp_path / "ray.h5ad"),
                          "--engine", "ray", "--shard-cells", "2048", "--workers", "2"]) == 0
    capsys.readouterr()
    table = pd.read_csv(tmp_path / "ray.csv", keep_default_na=False)
    left_out = ~data.obs["keep"].to_numpy()
    assert set(table["not_scored_reason"][left_out]) == {"left out by the mask column 'keep'"}
    assert set(table["label"][left_out]) == {"left out (mask)"} and "filtered (QC)" not in set(table["label"])
    assert (tmp_path / "ray.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()
    back = ad.read_h5ad(tmp_path / "ray.h5ad")
    assert back.uns["scatd"]["qc"]["mask"] == "keep" and set(back.obs["scatd_label"][left_out]) == {"left out (mask)"}


def test_no_cell_left_to_score_on_ray_says_what_left_them_out(local_ray, small_bundles, tmp_path):
    """AdaIN's statistics pass finds no cell to score: the cells --mask keep left out are said as the
    column left them out (not 'filtered by QC': no QC ran), and so is where to look, as one process
    says it; the QC filter's cells are still 'filtered by QC'."""
    bundle = small_bundles["vae_sf"][0]
    x = np.full((300, 40), 1e31, dtype=np.float32)  # the kept cells' values are beyond what a model takes
    x[:100] = np.random.default_rng(5).normal(size=(100, 40))
    keep = np.arange(300) >= 100
    path = tmp_path / "emb.h5ad"
    ad.AnnData(x, obs=pd.DataFrame({"keep": keep, "scatd_qc_pass": keep}, index=[f"c{i}" for i in range(300)]),
               var=pd.DataFrame(index=[f"f{i}" for i in range(40)])).write_h5ad(path)
    for mask, said, where in (("keep", "left out by the mask column 'keep': 100", "the mask column"),
                              ("scatd_qc_pass", "filtered by QC: 100", "the QC filter")):
        with pytest.raises(InputError) as ray_err:
            scaleout.predict_ray(io.read(path, backed=True), bundle, tmp_path / f"{mask}.csv", mask=mask,
                                 batch_size=BATCH, shard_cells=2048, workers=2)
        with pytest.raises(InputError) as one_err:
            single_process(path, bundle, mask=mask)
        for err in (ray_err.value, one_err.value):
            assert str(err).startswith("No cell can be scored (") and said in str(err), str(err)
            assert where in err.hint, err.hint
        assert ("filtered by QC" in str(ray_err.value)) == (mask == "scatd_qc_pass")


def test_cli_report_engine_ray_writes_the_single_process_report(local_ray, small_bundles, tmp_path, capsys):
    """`scatd report --engine ray`: prediction and attributions on Ray, the same files as one process."""
    from scatd_core.cli import main

    bundle = small_bundles["dist_vae"][0]
    path = write_cells(tmp_path / "c.h5ad", 2_500, small_gene_names(60), seed=4)
    common = ["report", "--model", str(bundle.path), "--input", str(path), "--batch-size", "1024",
              "--sample-column", "sample", "--explain", "--max-cells", "300", "--steps", "8",
              "--no-umap"]  # the UMAP is made here from the same latent either way
    assert main(common + ["--out", str(tmp_path / "one")]) == 0
    assert main(common + ["--out", str(tmp_path / "ray"), "--engine", "ray", "--shard-cells", "1024",
                          "--workers", "2"]) == 0
    err = capsys.readouterr().err
    assert "Predicting on Ray: 100%" in err and "Explaining on Ray" in err
    assert (tmp_path / "ray" / "predictions.csv").read_bytes() == (tmp_path / "one" / "predictions.csv").read_bytes()
    ray_metrics, one_metrics = ([line for line in (tmp_path / d / "metrics.csv").read_bytes().splitlines()
                                 if not line.startswith(b"summary,run_at,")] for d in ("ray", "one"))
    assert ray_metrics == one_metrics  # byte for byte but for when each ran (metrics.csv's run_at)
    # attributions: the same to float rounding (the workers run one torch thread, this process two)
    one, dist = (pd.read_csv(tmp_path / d / "biomarkers.csv") for d in ("one", "ray"))
    assert one["feature"].tolist() == dist["feature"].tolist()
    pd.testing.assert_frame_equal(one, dist, rtol=1e-6)
    one, dist = ad.read_h5ad(tmp_path / "one" / "annotated.h5ad"), ad.read_h5ad(tmp_path / "ray" / "annotated.h5ad")
    np.testing.assert_array_equal(dist.obsm["X_scatd"], one.obsm["X_scatd"])
    np.testing.assert_array_equal(dist.X.toarray(), one.X.toarray())
    assert (tmp_path / "ray" / "report.html").stat().st_size > 10_000
    assert not (tmp_path / "ray" / "ray").exists() and "Removed the Ray shard parts (2 folders," in err


def test_cli_engine_ray_refuses_other_formats_with_a_reason(small_bundles, tmp_path, capsys):
    from scatd_core.cli import main

    bundle = small_bundles["dist_vae"][0]
    csv = tmp_path / "c.csv"
    pd.DataFrame(np.ones((3, 60)), columns=small_gene_names(60), index=["a", "b", "c"]).to_csv(csv)
    assert main(["predict", "--model", str(bundle.path), "--input", str(csv), "--output", str(tmp_path / "o.csv"),
                 "--engine", "ray"]) == 2
    assert "The Ray engine reads an .h5ad file from disk" in capsys.readouterr().err


def test_predict_page_sends_a_large_dataset_to_ray_and_shows_progress(local_ray, trained_library, monkeypatch):
    from _app_helpers import make_dataset
    from test_app_pages import goto, h5ad_bytes, ok, start, text, upload

    from scatd_app import state

    monkeypatch.setenv("SCATD_MODEL_LIBRARY", str(trained_library))
    monkeypatch.setenv("SCATD_SCALEOUT_MIN_CELLS", "100")  # 180 cells is "large" here
    at = start()
    upload(at, "tumour.h5ad", h5ad_bytes(make_dataset(180, seed=7)))
    goto(at, "2_Model")
    goto(at, "3_Predict")
    assert "runs on a local Ray instance" in text(at.info) and "more than the 100 configured" in text(at.info)
    at.button(key="btn_run_predict").click()
    at.run()
    ok(at)
    assert "Predicted 180 of 180 cells" in text(at.success)
    result = at.session_state[state.ADATA]
    assert result.uns["scatd"]["engine"]["name"] == "ray" and "X_scatd" in result.obsm
    one = result.copy()
    from scatd_core.bundle import list_library, load_bundle

    mask = one.obs["scatd_qc_pass"].to_numpy(dtype=bool) if "scatd_qc_pass" in one.obs else None
    predict(one, load_bundle(next(e.path for e in list_library(trained_library) if e.ok)), mask=mask)
    np.testing.assert_array_equal(result.obs["scatd_prob_resistant"], one.obs["scatd_prob_resistant"])


def test_biomarkers_page_explains_a_large_dataset_on_ray_with_the_single_process_ranking(local_ray, small_bundles,
                                                                                          monkeypatch):
    """The Biomarkers page on a dataset above [scaleout] min_cells: the integrated gradients run on
    Ray and the stored ranking is the one explain gives in one process."""
    from test_biomarkers_page import _button, _open

    from scatd_core.explain import explain, from_adata

    monkeypatch.setattr("streamlit.components.v2.manifest_scanner.scan_component_manifests", lambda: [])
    monkeypatch.setenv("SCATD_SCALEOUT_MIN_CELLS", "30")  # 40 cells is "large" here
    bundle, _sd, enc, _z, genes = small_bundles["dist_vae"]
    x = np.abs(np.random.default_rng(0).normal(size=(40, enc[0]))).astype(np.float32)
    adata = ad.AnnData(x, obs=pd.DataFrame(index=[f"c{i}" for i in range(40)]), var=pd.DataFrame(index=genes))
    predict(adata, bundle)
    predict(adata, bundle, threshold=float(np.median(adata.obs["scatd_prob_resistant"])))
    one = adata.copy()
    at = _open(adata, bundle)
    assert "run on Ray" in " ".join(i.value for i in at.info)
    at.number_input(key="bio_steps").set_value(8)
    _button(at, "Compute gene ranking").click().run()
    assert not at.exception, [e.value for e in at.exception]
    got = from_adata(at.session_state["adata"])
    assert got.info["engine"]["name"] == "ray"
    settings = {k: got.info[k] for k in ("baseline", "target", "n_steps", "seed")}
    want = explain(one, bundle, max_cells=got.info["cells"]["n_explained"], keep_top=len(got.features), **settings)
    pd.testing.assert_frame_equal(got.ranking, want.ranking, rtol=1e-6, atol=1e-9)


def test_a_worker_error_is_one_clear_message(local_ray, small_bundles, tmp_path, monkeypatch):
    """What a worker raises reaches the user as a message, not a Ray traceback: the package's own
    errors as they were raised, anything else by its last line with where to look."""
    bundle = small_bundles["dist_vae"][0]
    path = write_cells(tmp_path / "c.h5ad", 3_000, small_gene_names(60), seed=2)

    def progress(fraction, message):
        if "predicting" in message and fraction == 0:  # removed once read: every worker fails to open it
            path.unlink()

    with pytest.raises(InputError) as err:
        scaleout.predict_ray(io.read(path, backed=True), bundle, tmp_path / "out.csv", batch_size=BATCH,
                             shard_cells=2048, workers=2, progress=progress)
    assert str(err.value).startswith(f"The data file {path} is gone") and "Traceback" not in str(err.value)
    assert "run the same command again" in err.value.hint and err.value.problem == "missing"
    # anything else a worker raises: its last line, with where to look
    from ray.exceptions import RayTaskError

    from scatd_core.scaleout import _run

    odd = RayTaskError("PredictWorker", "Traceback (most recent call last): ...\nRuntimeError: odd",
                       RuntimeError("odd")).as_instanceof_cause()
    said = _run._worker_error(odd)
    assert said.message.startswith("The Ray job failed:") and "resume" in said.hint
    # the package's own error, raised in a worker, arrives as itself, without Ray's traceback
    boom = InputError("Shard rows are not what the driver read.", "Write the file again.")
    wrapped = RayTaskError("PredictWorker", "Traceback (most recent call last): ...", boom).as_instanceof_cause()
    assert isinstance(wrapped, InputError) and str(wrapped) != str(boom)
    assert _run._worker_error(wrapped) is boom


def test_an_ensembles_member_spread_comes_back_from_ray(local_ray, tmp_path):
    """Models trained here are ensembles: their per-cell spread over the members
    (obs['scatd_prob_resistant_sd']) is in Ray's results as in one process's."""
    from test_ensemble import _bundle, _cells, _ensemble

    bundle = _bundle(tmp_path, _ensemble(n_members=3))
    _cells(n=3_000, seed=5).write_h5ad(tmp_path / "cells.h5ad")
    run = scaleout.predict_ray(io.read(tmp_path / "cells.h5ad", backed=True), bundle, tmp_path / "out.csv",
                               batch_size=BATCH, shard_cells=2 * BATCH, workers=2)
    one = single_process(tmp_path / "cells.h5ad", bundle)
    assert one.uns["scatd"]["params"]["prob_resistant_sd"] == "over the 3 ensemble members"
    # dense (standardised) inputs go through BLAS, whose sums depend on the threads a worker has:
    # the same to float rounding, not to the bit (the sparse first layer of log1p models is)
    for col in ("scatd_prob_resistant", "scatd_prob_resistant_sd"):
        np.testing.assert_allclose(run.adata.obs[col], one.obs[col], rtol=0, atol=1e-6)
    assert list(run.adata.obs["scatd_label"]) == list(one.obs["scatd_label"])


def test_a_ray_prediction_drops_what_an_earlier_one_left(local_ray, small_bundles, tmp_path):
    """As predict does: an annotated h5ad predicted again on Ray keeps no earlier UMAP of scATD's or
    biomarkers; the data's own UMAP, kept aside by scATD's, is back in obsm['X_umap']."""
    bundle = small_bundles["dist_vae"][0]
    path = write_cells(tmp_path / "c.h5ad", 3_000, small_gene_names(60), seed=4)
    annotated = ad.read_h5ad(path)
    annotated.obsm["X_umap"] = np.zeros((annotated.n_obs, 2), dtype=np.float32)
    annotated.obsm["X_umap_original"] = np.ones((annotated.n_obs, 2), dtype=np.float32)
    annotated.uns["scatd_embed"] = {"basis": "latent", "original_umap": "X_umap_original"}
    annotated.uns["scatd_biomarkers"] = {"info": {"threshold": 0.5}}
    annotated.write_h5ad(tmp_path / "annotated.h5ad")
    run = scaleout.predict_ray(io.read(tmp_path / "annotated.h5ad", backed=True), bundle, tmp_path / "out.csv",
                               batch_size=BATCH, shard_cells=2 * BATCH, workers=1)
    assert "scatd_embed" not in run.adata.uns and "scatd_biomarkers" not in run.adata.uns
    assert (np.asarray(run.adata.obsm["X_umap"]) == 1).all() and "X_umap_original" not in run.adata.obsm
    assert run.adata.obs["scatd_scored"].any()


def test_gpu_passes_run_on_actors_with_the_same_result(local_ray, small_bundles, tmp_path, monkeypatch):
    """A GPU pass runs each worker as an actor on one GPU for the pass (a reused task process would
    stay on the GPU it first used). No GPU here: the actor path is run on CPUs, with the
    statistics pass and the predict pass, and must give the single-process numbers. Last of the file:
    the actors' processes stand in for the idle task workers (Ray keeps as many as it has CPUs), so
    the task passes after it would start theirs again."""
    from scatd_core.scaleout import _run

    monkeypatch.setattr(_run, "_on_actors", lambda resources: True)
    bundle = small_bundles["vae_sf"][0]
    path = write_cells(tmp_path / "emb.h5ad", 5_000, [f"f{i}" for i in range(40)], seed=6, dense=True)
    run = scaleout.predict_ray(io.read(path, backed=True), bundle, tmp_path / "out.csv", batch_size=BATCH,
                               shard_cells=1024, workers=2)
    assert run.computed == 5 and (run.store.folder / "statistics.npz").exists()
    assert_same(run.adata, single_process(path, bundle))
    import psutil

    def actors_alive() -> int:
        return sum("ShardActor" in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))

    deadline = time.time() + 20
    while actors_alive() and time.time() < deadline:  # ray.kill ends them asynchronously
        time.sleep(0.2)
    assert not actors_alive(), "the pass's actors outlived it"
