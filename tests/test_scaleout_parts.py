"""The scale-out engine's parts that need no Ray: shards, statistics merged from parts, the store."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp

from scatd_core._matrix import MeanVar, block_moments
from scatd_core.errors import InputError
from scatd_core.scaleout import ShardStore, engine_for, parts_dir, shards_of
from scatd_core.scaleout._store import pack


def test_shards_are_whole_batches_covering_every_cell_once():
    shards = shards_of(10_000, 1024, 3000)  # rounded up to 3 batches
    assert shards[0] == (0, 3072) and shards[-1] == (9216, 10_000)
    assert all(a % 1024 == 0 for a, _ in shards)
    assert np.array_equal(np.concatenate([np.arange(a, b) for a, b in shards]), np.arange(10_000))
    assert shards_of(100, 1024) == [(0, 100)]
    with pytest.raises(InputError):
        shards_of(100, 0)


@pytest.mark.parametrize("sparse", [False, True])
def test_moments_merged_from_parts_in_order_equal_one_pass_bit_for_bit(sparse):
    rng = np.random.default_rng(0)
    blocks = [rng.lognormal(3, 2, (rng.integers(1, 300), 7)).astype(np.float32) for _ in range(9)]
    if sparse:
        blocks = [sp.csr_matrix(b * (b > 20)) for b in blocks]
    one = MeanVar()
    for b in blocks:
        one.update(b)
    parts = MeanVar()
    for k, mean, m2 in [block_moments(b) for b in blocks]:  # as workers send them, merged in order
        parts.add(k, mean, m2)
    assert parts.n == one.n
    assert np.array_equal(parts.mean, one.mean) and np.array_equal(parts.var(), one.var())
    parts.add(*block_moments(np.zeros((0, 7))))  # an empty part changes nothing
    assert np.array_equal(parts.var(), one.var())


def test_store_keeps_checksummed_parts_and_refuses_another_run(tmp_path):
    store = ShardStore(parts_dir(tmp_path / "out.csv"), {"seed": 0})
    assert store.folder == tmp_path / "out.csv.parts"
    store.save("shard-000000", pack({"x": np.arange(5)}))
    assert store.done("shard-000000") and not store.done("shard-000001")
    assert np.array_equal(store.load("shard-000000")["x"], np.arange(5))
    path = store.folder / "shard-000000.npz"
    path.write_bytes(path.read_bytes()[:-3] + b"xyz")
    assert not store.done("shard-000000")
    with pytest.raises(InputError, match="damaged"):
        store.load("shard-000000")
    ShardStore(store.folder, {"seed": 0})  # the same run: accepted
    with pytest.raises(InputError, match="different run.*seed"):
        ShardStore(store.folder, {"seed": 1})


def test_engine_choice_follows_the_config(monkeypatch):
    import scatd_core.scaleout._run as run

    monkeypatch.setattr(run, "ray_available", lambda: True)
    assert not engine_for(1000).use_ray  # default: 500,000 cells
    monkeypatch.setenv("SCATD_SCALEOUT_MIN_CELLS", "999")
    choice = engine_for(1000)
    assert choice.use_ray and choice.address is None and "local Ray instance" in choice.reason
    monkeypatch.setenv("SCATD_RAY_ADDRESS", "10.0.0.5:6379")
    monkeypatch.setenv("SCATD_SCALEOUT_WORKERS", "3")
    choice = engine_for(10)
    assert choice.use_ray and choice.address == "10.0.0.5:6379" and choice.workers == 3
    assert "administrator" in choice.reason
    monkeypatch.setattr(run, "ray_available", lambda: False)
    choice = engine_for(10)
    assert not choice.use_ray and "Ray is not installed" in choice.reason and "[ray]" in choice.reason


def test_without_ray_the_engine_says_how_to_install_it(monkeypatch, tmp_path):
    import sys

    from scatd_core.errors import ScatdError
    from scatd_core.scaleout import connect, ray_available

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    assert not ray_available()
    with pytest.raises(ScatdError, match="needs Ray") as err:
        connect()
    assert "pip install 'scatd-studio[ray]'" in err.value.hint


def test_cli_ray_without_the_foundation_model_says_what_to_install_before_any_work(small_bundles, tmp_path, capsys):
    """VAE_sf on expression: the embeddings are computed on Ray; without scFoundation installed the
    probe's message comes before Ray is started."""
    import anndata as ad
    import pandas as pd

    from conftest import small_gene_names
    from scatd_core.cli import main

    path = tmp_path / "expr.h5ad"
    ad.AnnData(X=np.ones((5, 30), dtype=np.float32), var=pd.DataFrame(index=small_gene_names(30))).write_h5ad(path)
    bundle = small_bundles["vae_sf"][0]
    assert main(["predict", "--model", str(bundle.path), "--input", str(path), "--output", str(tmp_path / "o.csv"),
                 "--engine", "ray"]) == 2
    err = capsys.readouterr().err
    assert "No scFoundation weights" in err and "convert-scfoundation" in err
    assert not (tmp_path / "o.csv.embeddings.parts").exists()


class _CountingWorker:
    """Stands for a pass's worker (file opened, model loaded): counts how often one is built."""

    built: list = []
    released: list = []

    def __init__(self, job):
        self.job = job
        _CountingWorker.built.append(job)

    def __call__(self, batch):
        return {"shard": batch["shard"], "payload": np.array([f"{self.job}:{batch['start'][0]}".encode()], dtype=object)}

    def release(self):  # e.g. EmbedWorker: the backbone modules' cached models
        _CountingWorker.released.append(self.job)


def test_a_worker_process_keeps_one_pass_worker_and_frees_it_when_idle(monkeypatch):
    """run_shard (the Ray task) builds a pass's worker once per process, replaces it for another
    pass, and frees it after IDLE_RELEASE_S seconds without a shard."""
    import time

    from scatd_core.scaleout import _shard

    monkeypatch.setattr(_shard, "IDLE_RELEASE_S", 0.2)
    _CountingWorker.built.clear()
    _CountingWorker.released.clear()
    _shard._release(_shard._held.get("token"))
    assert _shard.run_shard(_CountingWorker, "job-a", "pass-1", 0, 0, 10) == b"job-a:0"
    assert _shard.run_shard(_CountingWorker, "job-a", "pass-1", 1, 10, 20) == b"job-a:10"
    assert _CountingWorker.built == ["job-a"]  # built once for the pass
    assert _shard.run_shard(_CountingWorker, "job-b", "pass-2", 0, 0, 10) == b"job-b:0"
    assert _CountingWorker.built == ["job-a", "job-b"] and _shard._held["token"] == "pass-2"
    time.sleep(0.6)
    assert "worker" not in _shard._held and _CountingWorker.released == ["job-b"]  # idle: file and model let go
    assert _shard.run_shard(_CountingWorker, "job-b", "pass-2", 1, 10, 20) == b"job-b:10"
    assert _CountingWorker.built == ["job-a", "job-b", "job-b"]
    _shard._release("pass-2")


def test_a_commands_passes_share_one_ray_instance(monkeypatch):
    """`scatd ... --engine ray` runs several passes (embeddings, statistics, prediction,
    attributions): each used to start and stop its own local Ray instance. Within
    one_connection the first pass's instance is kept for the next and shut down once, at the end;
    outside it a pass still cleans up after itself."""
    from scatd_core.scaleout import _run

    class FakeRay:
        def __init__(self):
            self.up, self.inits, self.shutdowns = False, 0, 0

        def is_initialized(self):
            return self.up

        def init(self, **kwargs):
            self.up, self.inits = True, self.inits + 1

        def shutdown(self):
            self.up, self.shutdowns = False, self.shutdowns + 1

    fake = FakeRay()
    monkeypatch.setattr(_run, "_ray", lambda: fake)

    def a_pass():
        started = _run.connect(None)
        _run.release(started)

    with _run.one_connection():
        for _ in range(3):
            a_pass()
        assert fake.inits == 1 and fake.shutdowns == 0 and fake.up
    assert fake.inits == 1 and fake.shutdowns == 1 and not fake.up
    a_pass()  # on its own: started and stopped by the pass
    assert fake.inits == 2 and fake.shutdowns == 2 and not fake.up
    fake.up = True  # a process already connected (the app's stay_connected) keeps its connection
    with _run.one_connection():
        a_pass()
    assert fake.up and fake.shutdowns == 2


def test_ray_out_of_reach_in_the_app_says_to_ask_the_administrator(monkeypatch):
    """QA: in the app, an administrator's Ray address (SCATD_RAY_ADDRESS) nothing listens at gave the
    command line's advice ("... or leave it out to start a local instance"); the app says to tell the
    administrator. A local instance that cannot start is not told to leave out an address it has not."""
    from types import SimpleNamespace

    from scatd_core.errors import ScatdError
    from scatd_core.scaleout import _run

    with pytest.raises(ScatdError, match="Could not connect to the Ray cluster at 127.0.0.1:1") as err:
        _run._check_reachable("127.0.0.1:1")
    assert "leave it out to start a local instance" in err.value.hint  # the command line's --address
    app = err.value.app_hint
    assert app and "administrator" in app and "leave it out" not in app and "--" not in app and "ray start" not in app

    def init(**kwargs):
        raise RuntimeError("Failed to start the raylet")

    monkeypatch.setattr(_run, "_ray", lambda: SimpleNamespace(is_initialized=lambda: False, init=init))
    with pytest.raises(ScatdError, match="Could not connect to a local Ray instance: Failed to start") as err:
        _run.connect(None)
    assert "leave it out" not in err.value.hint and "administrator" in err.value.app_hint


class _FlakyRay:
    """Just enough of Ray for _run_pass: each shard a task; the worker process of the shards in
    ``crashes`` is lost that many times before it returns."""

    def __init__(self, crashes: dict[int, int]):
        self.crashes, self.options_given = dict(crashes), {}
        self.exceptions = SimpleNamespace(WorkerCrashedError=type("WorkerCrashedError", (Exception,), {}))

    def put(self, x):
        return x

    def cluster_resources(self):
        return {"CPU": 1}

    def remote(self, fn):
        fake = self

        class Task:
            def options(self, **kwargs):
                fake.options_given = kwargs
                return self

            def remote(self, worker, job, token, i, start, stop):
                return ("ref", i, object())

        return Task()

    def wait(self, refs, num_returns=1):
        return refs[:1], refs[1:]

    def get(self, ref):
        i = ref[1]
        if self.crashes.get(i, 0) > 0:
            self.crashes[i] -= 1
            raise self.exceptions.WorkerCrashedError("The worker died unexpectedly")
        return f"part {i}".encode()


def test_a_shard_whose_worker_stopped_is_run_again_and_said_in_scatds_words(capsys):
    """QA: a killed Ray worker printed only Ray's raylet text (ANSI codes, OOM-killer advice), though
    the shard was retried and succeeded: the pass says so in its own line, on the command line's
    progress, and runs the shard again itself; a shard lost more than MAX_RETRIES times ends the run."""
    from scatd_core.cli._common import Progress
    from scatd_core.errors import ScatdError
    from scatd_core.scaleout import MAX_RETRIES
    from scatd_core.scaleout._run import _run_pass
    from scatd_core.scaleout._shard import PredictWorker

    shards, got = [(0, 10), (10, 20), (20, 30)], {}
    fake = _FlakyRay({1: 1})
    _run_pass(fake, PredictWorker, None, shards, [0, 1, 2], 1, "cpu", lambda i, payload: got.update({i: payload}),
              "predicting", 0, Progress("Predicting on Ray"), None)
    assert got == {0: b"part 0", 1: b"part 1", 2: b"part 2"} and fake.options_given["max_retries"] == 0
    err = capsys.readouterr().err
    assert ("Predicting on Ray: shard 2 of 3: its worker process stopped (killed, or out of memory); running the "
            "shard again (retry 1 of 3)") in err.splitlines()
    seen = []
    _run_pass(_FlakyRay({0: MAX_RETRIES}), PredictWorker, None, shards[:1], [0], 1, "cpu", lambda i, p: None,
              "predicting", 0, lambda f, m: seen.append(m), None)  # no note: said on the progress message
    assert seen[-2] == f"predicting · shard 1 of 1: its worker process stopped (killed, or out of memory); running " \
                       f"the shard again (retry {MAX_RETRIES} of {MAX_RETRIES})"
    with pytest.raises(ScatdError, match="The Ray job failed: The worker died unexpectedly"):
        _run_pass(_FlakyRay({0: MAX_RETRIES + 1}), PredictWorker, None, shards[:1], [0], 1, "cpu",
                  lambda i, p: None, "predicting", 0, None, None)


def _backed_cells(path, n_cells: int = 40):
    import anndata as ad
    import pandas as pd

    from conftest import small_gene_names
    from scatd_core import io

    X = sp.random(n_cells, 60, density=0.3, format="csr", dtype=np.float32, random_state=0)
    ad.AnnData(X=X, var=pd.DataFrame(index=small_gene_names(60))).write_h5ad(path)
    return io.read(path, backed=True)


def test_a_data_file_gone_or_unreadable_in_a_worker_is_named_with_what_to_do(small_bundles, tmp_path):
    """A Ray worker opens the h5ad by its path: gone (moved, deleted, the app's working folder
    removed) or no longer an h5ad, the worker raises an InputError naming the file and the next step,
    not h5py's OSError (which reached the user as Ray's traceback or its last line)."""
    from dataclasses import replace

    from scatd_core.scaleout._shard import Job, PredictWorker, ShardActor

    bundle = small_bundles["dist_vae"][0]
    adata = _backed_cells(tmp_path / "cells.h5ad")
    job = Job(path=str(tmp_path / "cells.h5ad"), var=adata.var.copy(), obsm_key=None, bundle_path=str(bundle.path),
              batch_size=16, log_normalise=True)
    assert PredictWorker(job).reader.read(0, 16).n_obs == 16
    gone = replace(job, path=str(tmp_path / "removed" / "cells.h5ad"))
    with pytest.raises(InputError, match=r"^The data file .*removed.cells\.h5ad is gone: the Ray workers open it") as err:
        PredictWorker(gone)
    assert "run the same command again" in err.value.hint and err.value.problem == "missing"
    actor = ShardActor(PredictWorker, gone)  # on GPUs: said by the first shard's call, as a task says it
    with pytest.raises(InputError, match="is gone"):
        actor.run(0, 0, 16)
    (tmp_path / "other.h5ad").write_bytes(b"not an HDF5 file any more")
    with pytest.raises(InputError, match=r"could not read the data file .*other\.h5ad as an h5ad \(.*\): it was "
                                         "changed") as err:
        PredictWorker(replace(job, path=str(tmp_path / "other.h5ad")))
    assert "Traceback" not in str(err.value) and err.value.problem == "unreadable"
    import pickle  # Ray sends it back pickled: the hint and the problem travel with it

    back = pickle.loads(pickle.dumps(err.value))
    assert (back.message, back.hint, back.problem) == (err.value.message, err.value.hint, "unreadable")


def test_a_data_file_removed_after_it_was_read_is_named_before_ray_starts(small_bundles, tmp_path, monkeypatch):
    """The CLI's and the app's Ray runs on a backed h5ad whose file was removed since it was read:
    the CLI (Python) says which file and what to do; the app says it without the server's path."""
    from scatd_core import scaleout
    from scatd_core.scaleout import _run

    bundle = small_bundles["dist_vae"][0]
    (tmp_path / "session").mkdir()
    adata = _backed_cells(tmp_path / "session" / "cells.h5ad")
    (tmp_path / "session" / "cells.h5ad").unlink()
    monkeypatch.setattr(_run, "connect", lambda *a, **k: pytest.fail("Ray started for a file that is gone"))
    with pytest.raises(InputError, match=r"^The data file .*cells\.h5ad is gone"):
        scaleout.predict_ray(adata, bundle, tmp_path / "o.csv", batch_size=16)
    monkeypatch.setattr(_run, "stay_connected", lambda address: None)
    choice = scaleout.EngineChoice(True, None, 1, "test")
    with pytest.raises(InputError) as err:
        scaleout.predict_in_folder(adata, bundle, tmp_path / "scaleout", "tok", choice, batch_size=16)
    assert err.value.message.startswith("The prediction on Ray could not read the uploaded data file: this "
                                        "session's working folder on the server no longer holds it")
    assert str(tmp_path) not in str(err.value) and "Load the data again on the Data page" in err.value.hint


def test_the_advice_for_a_data_file_gone_is_what_keeps_the_finished_shards(small_bundles, tmp_path):
    """QA: "Put the file back at that path ... the shards already finished are kept", but a copy put back
    was refused ("holds the parts of a different run (changed: input_mtime_ns)") and every shard lost.
    The advice names what the resume check accepts: the very same file, moved back or copied with cp -p."""
    import os
    import shutil

    from scatd_core.scaleout import _files, _run

    path = tmp_path / "cells.h5ad"
    adata = _backed_cells(path)
    adata.file.close()
    bundle, shards = small_bundles["dist_vae"][0], [(0, 16), (16, 40)]
    parts = tmp_path / "o.csv.parts"
    ShardStore(parts, _run._fingerprint(adata, bundle, None, {}, shards)).save("shard-000000", pack({"a": np.arange(3)}))
    shutil.move(path, tmp_path / "away.h5ad")
    hint = _files.data_file_error(path, FileNotFoundError(2, "gone")).hint
    assert "mv" in hint and "cp -p" in hint and "give its new location" not in hint
    assert "a copy that does not keep the modification time (cp without -p)" in hint and "another path" in hint

    def resumes() -> bool:
        return ShardStore(parts, _run._fingerprint(adata, bundle, None, {}, shards)).done("shard-000000")

    shutil.move(tmp_path / "away.h5ad", path)  # mv back: kept
    assert resumes()
    shutil.copy2(path, tmp_path / "copy.h5ad")
    path.unlink()
    shutil.copy2(tmp_path / "copy.h5ad", path)  # cp -p back: kept
    assert resumes()
    path.unlink()
    shutil.copyfile(tmp_path / "copy.h5ad", path)  # a copy with a new modification time: another run, as said
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    with pytest.raises(InputError, match="holds the parts of a different run"):
        resumes()
    unreadable = _files.data_file_error(tmp_path / "copy.h5ad", OSError("truncated")).hint
    assert "cp -p" in unreadable and "write it again" not in unreadable


def test_the_biomarkers_page_says_a_removed_working_folder_in_its_words(small_bundles, tmp_path, monkeypatch):
    """explain_in_folder: the worker's error about the session's copy of the data, in the app's words."""
    import anndata as ad
    import pandas as pd

    from conftest import small_gene_names
    from scatd_core import scaleout
    from scatd_core.scaleout import _explain, _files, _run

    monkeypatch.setattr(_run, "stay_connected", lambda address: None)

    def explain_ray(source, bundle, **kwargs):  # as when a worker finds the copy gone
        raise _files.data_file_error(tmp_path / "gone" / "explain-input-tok.h5ad", FileNotFoundError(2, "gone"))

    monkeypatch.setattr(_explain, "explain_ray", explain_ray)
    adata = ad.AnnData(X=np.ones((4, 60), dtype=np.float32), var=pd.DataFrame(index=small_gene_names(60)))
    with pytest.raises(InputError) as err:
        scaleout.explain_in_folder(adata, small_bundles["dist_vae"][0], tmp_path / "scaleout", "tok",
                                   scaleout.EngineChoice(True, None, 1, "test"))
    assert err.value.message.startswith("The gene ranking on Ray could not read the copy of the data it reads")
    assert "Run the gene ranking again" in err.value.hint and str(tmp_path) not in str(err.value)


def test_a_parts_folder_removed_during_a_run_is_said_not_blamed_on_ray(tmp_path):
    """The parts folder removed while the run goes on (the app's session working folder cleaned
    up): the driver's next save says so, as the CLI and the app word it (it was "The Ray job
    failed: [Errno 2] ..." with a pointer to Ray's logs)."""
    import shutil

    from scatd_core.scaleout._run import in_app

    store = ShardStore(tmp_path / "session" / "o.csv.parts", {"input": "x"})
    store.save("shard-000000", pack({"a": np.arange(3)}))
    shutil.rmtree(tmp_path / "session")
    with pytest.raises(InputError, match=r"^Could not keep the results of this run in .*o\.csv\.parts: the folder "
                                         "was removed while the run went on") as err:
        store.save("shard-000001", pack({"a": np.arange(3)}))
    assert "run the same command again" in err.value.hint
    with pytest.raises(InputError, match="folder was removed"):
        store.load("shard-000000")
    with pytest.raises(InputError) as err, in_app(False, "prediction"):
        store.save("shard-000001", pack({"a": np.arange(3)}))
    assert err.value.message.startswith("The prediction on Ray could not keep its results: this session's working "
                                        "folder on the server was removed while it ran")
    assert err.value.hint == "Run the prediction again." and str(tmp_path) not in str(err.value)
