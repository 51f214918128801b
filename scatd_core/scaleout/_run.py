"""The driver of a distributed prediction: plan the shards, run the passes on Ray, assemble."""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import threading
from contextlib import contextmanager
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import anndata as ad
import numpy as np
import pandas as pd

import scatd_core
from scatd_core import __version__, _keys
from scatd_core._keys import NOT_SCORED, result_keys
from scatd_core._matrix import MeanVar, stored_fraction
from scatd_core._words import counted
from scatd_core.errors import Cancelled, InputError, ScatdError
from scatd_core.inputs import (EXAMPLES_PER_REASON, REASON_TEXT, InputSpec, log_normalises, mask_label, mask_reason_text,
                               model_data, model_source, needs_moments, no_cell_scored_error, unlogs_values,
                               unscorable_error)
from scatd_core.scaleout._files import in_app_words, is_data_file_error, matrix_in_file, open_h5, stat_data_file
from scatd_core.scaleout._shard import REASON_ORDER, Job, PredictWorker, StatisticsWorker
from scatd_core.scaleout._store import ShardStore, pack, parts_dir, shard_name, unpack

#: Batches per shard by default: a shard is the unit of retry and of resume.
BATCHES_PER_SHARD = 16
#: Times a shard is run again after its worker process was lost, before the run fails.
MAX_RETRIES = 3
RAY_EXTRA_HINT = "Install the extra: pip install 'scatd-studio[ray]' (or pip install ray)."


def ray_available() -> bool:
    """Whether Ray is installed."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def _ray():
    try:
        import ray
    except ImportError:
        raise ScatdError("The Ray engine needs Ray, which is not installed.", RAY_EXTRA_HINT) from None
    return ray


def connect(address: str | None = None, *, num_cpus: int | None = None, object_store_mb: int = 512) -> bool:
    """Connect to the Ray cluster at ``address``, or start a local Ray instance (``num_cpus``
    CPUs, a ``object_store_mb`` MB object store, no dashboard). Returns whether an instance was
    started or joined here (then :func:`disconnect` after use); a process already connected
    keeps its connection. The workers get this ``scatd_core`` as a runtime module, so a remote
    cluster needs only its dependencies (``pip install scatd-studio`` on its nodes)."""
    ray = _ray()
    if address:
        _check_reachable(address)
    if ray.is_initialized():
        return False
    env = {"py_modules": [str(Path(scatd_core.__file__).parent)]}
    try:
        if address:
            ray.init(address=address, runtime_env=env, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, object_store_memory=int(object_store_mb) << 20, include_dashboard=False,
                     runtime_env=env, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        hint = ("Check the address (`ray status` on the head node shows it, e.g. 10.0.0.5:6379), or leave it out "
                "to start a local instance." if address else
                "Check that this computer has memory and space in its temporary folder free for Ray, or give the "
                "address of a running Ray cluster (--address), or use --engine local.")
        raise ScatdError(f"Could not connect to {where}: {str(exc).splitlines()[0][:300]}", hint,
                         app_hint=_ADMIN_HINT) from None
    return True


#: The next step in the app, where the Ray cluster (``SCATD_RAY_ADDRESS``, ``[scaleout] address``) or
#: the local instance is the server's, set up by its administrator: not the command line's options.
_ADMIN_HINT = ("Tell the server's administrator: the Ray engine this server uses for large datasets could not be "
               "reached or started. Nothing was changed; try again later.")


_app_connection = threading.Lock()


class _Keeper:
    """One thread of the server process that lives as long as the process and makes every
    connection the app keeps (:func:`stay_connected`). A local Ray instance's processes (its GCS,
    raylet) are started by ``ray.init`` tied to the *thread* that started them (Linux's parent-death
    signal follows the thread, not the process): started from a run's thread, which ends with the
    run, they were killed a moment later, and 60 s after that Ray's client ended the whole web
    server ("Failed to connect to GCS ... The program will terminate"), for every user."""

    def __init__(self) -> None:
        import queue

        self.requests: queue.Queue = queue.Queue()
        self.thread: threading.Thread | None = None

    def _serve(self) -> None:
        while True:
            address, done = self.requests.get()
            try:
                done["result"] = connect(address)
            except BaseException as exc:  # given back to the caller's thread
                done["error"] = exc
            done["event"].set()

    def connect(self, address: str | None) -> bool:
        if self.thread is None or not self.thread.is_alive():
            self.thread = threading.Thread(target=self._serve, name="scatd-ray-connection", daemon=True)
            self.thread.start()
        done = {"event": threading.Event()}
        self.requests.put((address, done))
        done["event"].wait()
        if "error" in done:
            raise done["error"]
        return done["result"]


_KEEPER = _Keeper()


def stay_connected(address: str | None) -> None:
    """The app's connection to Ray: made by the first run of the server process (a local
    instance, or the administrator's cluster) and kept until the server stops. Runs of several
    users then share it (one run ending never disconnects another still going), and Ray's worker
    processes, each already holding torch, serve run after run instead of starting anew. The
    connection is made in a thread that lives as long as the server (:class:`_Keeper`), so that a
    local instance outlives the run that started it."""
    with _app_connection:
        _KEEPER.connect(address)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on an address nothing listens at (``ray.init`` would retry for minutes)."""
    import socket

    host_port = address.split("://", 1)[-1]
    host, _, port = host_port.rpartition(":")
    if address == "auto" or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ScatdError(f"Could not connect to the Ray cluster at {address}: {exc.strerror or exc}.",
                         "Check the address (`ray status` on the head node shows it, e.g. 10.0.0.5:6379) and that "
                         "the cluster is running (`ray start --head`), or leave it out to start a local instance.",
                         app_hint=_ADMIN_HINT) from None


def disconnect() -> None:
    ray = _ray()
    if ray.is_initialized():
        ray.shutdown()


_HOLD = {"depth": 0, "started": False}


@contextmanager
def one_connection():
    """Within it, a Ray instance a pass starts is kept for the next pass (a command's embedding,
    statistics, prediction and attribution passes share one instance and its warm worker
    processes, instead of starting Ray anew for each), and shut down at the end."""
    _HOLD["depth"] += 1
    try:
        yield
    finally:
        _HOLD["depth"] -= 1
        if _HOLD["depth"] == 0 and _HOLD["started"]:
            _HOLD["started"] = False
            disconnect()


def release(started: bool) -> None:
    """After a pass: disconnect what it connected (``started``), unless :func:`one_connection` holds it."""
    if not started:
        return
    if _HOLD["depth"]:
        _HOLD["started"] = True
    else:
        disconnect()


def shards_of(n_obs: int, batch_size: int, shard_cells: int | None = None) -> list[tuple[int, int]]:
    """Row ranges ``[start, stop)`` of the shards: whole batches each (so every shard sends the
    model the batches one pass would), ``shard_cells`` rounded up to a multiple of ``batch_size``."""
    if batch_size < 1:
        raise InputError("The batch size must be at least 1.")
    size = batch_size * (BATCHES_PER_SHARD if shard_cells is None else max(1, -(-int(shard_cells) // batch_size)))
    return [(start, min(start + size, n_obs)) for start in range(0, n_obs, size)]


@dataclass
class ScaleoutRun:
    """A finished distributed prediction: the annotated AnnData and where its parts are."""

    adata: ad.AnnData
    store: ShardStore
    shards: list[tuple[int, int]]
    resumed: int = 0
    computed: int = 0
    workers: int = 0
    seconds: float = 0.0

    def latent_blocks(self):
        """``(start, stop, latent rows)`` shard by shard, read back from the parts."""
        for i, (start, stop) in enumerate(self.shards):
            yield start, stop, self.store.load(shard_name(i))["latent"]


def _fingerprint(adata: ad.AnnData, bundle, mask, params: dict, shards) -> dict:
    path = Path(adata.filename)
    stat = stat_data_file(path)
    return {"input": str(path.resolve()), "input_bytes": stat.st_size, "input_mtime_ns": stat.st_mtime_ns,
            "model": str(bundle.path), "weights_sha256": bundle.manifest.get("weights_sha256", ""),
            "mask_sha256": "" if mask is None else hashlib.sha256(np.packbits(mask).tobytes()).hexdigest(),
            "n_shards": len(shards), "shard_cells": shards[0][1] - shards[0][0], **params}


def _embeddings_identity(adata: ad.AnnData, backbone: str, key: str, in_file: bool) -> str:
    """What the embeddings a prediction reads are: the record of what computed them (backbone
    files, settings, data fingerprint, cells tried) when there is one, else (embeddings the user
    brought) the input file, already in the fingerprint, or a hash of the values held here."""
    record = adata.uns.get(_keys.FOUNDATION, {}).get(backbone)
    if record is not None:
        tried = np.packbits(np.asarray(record.get("tried", ()), dtype=bool)).tobytes()
        return hashlib.sha256(json.dumps([record.get("identity"), record.get("fingerprint")]).encode()
                              + tried).hexdigest()
    if in_file:
        return "in the input file"
    values = np.ascontiguousarray(np.asarray(adata.obsm[key], dtype=np.float32))
    return hashlib.sha256(values.tobytes()).hexdigest()


def _in_file(path, key: str) -> bool:
    with open_h5(path) as f:  # gone or unreadable: an InputError naming the file
        return key in f


def _require_backed(adata: ad.AnnData) -> None:
    if not adata.isbacked or adata.is_view:
        raise InputError("The Ray engine reads an .h5ad file from disk by row blocks, and this data is not one.",
                         "Save it as .h5ad with X stored by rows (CSR or dense), e.g. "
                         "adata.X = adata.X.tocsr(); adata.write_h5ad('cells.h5ad').")


def predict_ray(
    adata: ad.AnnData,
    bundle,
    output: str | Path,
    *,
    mask: np.ndarray | str | None = None,
    mode: str = "mean",
    n_samples: int = 50,
    seed: int = 0,
    device: str = "auto",
    batch_size: int | None = None,
    beta_mode: str | None = None,
    threshold: float | None = None,
    shard_cells: int | None = None,
    workers: int | None = None,
    address: str | None = None,
    load_latent: bool = True,
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    min_gene_coverage: float | None = None,
    on_estimate: Callable[[str], None] | None = None,
) -> ScaleoutRun:
    """:func:`scatd_core.predict.predict` over the shards of a backed h5ad, on Ray.

    ``adata`` is the dataset read from disk (``scatd_core.io.read(path, backed=True)``), its
    gene IDs annotated as for one machine. The cells are cut into shards of whole batches; a
    first pass computes the dataset statistics (AdaIN, per-gene z-scores) when the model needs
    them, merged in input order exactly as one pass merges its batches; the second pass runs
    ``predict`` on every shard in Ray tasks (:func:`_run_pass`), each worker process opening the
    file and loading the model once per pass. Each shard's results go to ``<output>.parts/``
    (checksummed) as they arrive; a run started again with the same ``output`` skips the shards
    already there. A shard whose worker process was lost is run again (:data:`MAX_RETRIES`).

    Sets the fields :func:`~scatd_core.predict.predict` sets, with the same values (the latent
    ``obsm`` only if ``load_latent``; :meth:`ScaleoutRun.latent_blocks` streams it otherwise),
    and ``uns['scatd']['engine']``: Ray's address, workers, shards, shards resumed. Data with
    fewer than ``min_gene_coverage`` of the model's genes are refused before any worker starts,
    as :func:`~scatd_core.predict.predict` refuses them, and so are values the model can score in no cell
    (:func:`~scatd_core.inputs.unscorable_error`). ``on_estimate`` is given the time estimate in words
    (:func:`estimate_text`) once the workers are counted, before any shard runs.
    """
    from scatd_core.predict import _check_args, _mask_of

    _check_args(bundle, mode, n_samples, batch_size, adata)
    _require_backed(adata)
    if batch_size is None:  # as predict chooses it, for a worker's device (a GPU if this machine has one)
        import torch

        from scatd_core.predict import auto_batch_size

        gpu = device != "cpu" and torch.cuda.is_available()
        batch_size = auto_batch_size(bundle, torch.device("cuda" if gpu else "cpu"))
    mask_array = _mask_of(adata, mask)
    t0 = time.perf_counter()
    spec = InputSpec.of(bundle)
    # the matrix one process reads (X, adata.raw, a layer: scatd_core.matrices), which the workers read from the file
    data, choice = model_data(adata, spec)
    matrix = None if choice is None or choice.name == "X" else matrix_in_file(adata, choice.candidate.where)
    source = model_source(data, spec)  # refuses data the model cannot read, before any worker starts
    if source.alignment is not None:  # and too few of the model's genes (predict's own check, once for all shards)
        from scatd_core.genes import coverage_refusal
        from scatd_core.matrices import fuller_elsewhere

        refusal = coverage_refusal(data, spec.genes, min_coverage=min_gene_coverage, model_name=bundle.name,
                                   also=fuller_elsewhere(adata, choice, spec.genes))
        if refusal is not None:
            raise refusal
    problem = unscorable_error(adata, bundle)  # e.g. z-scored values for a model that log-normalises them
    if problem is not None:
        raise problem
    obsm_key = _keys.FOUNDATION_EMBEDDING.get(spec.backbone) if source.alignment is None and \
        source.description.startswith("obsm") else None
    shards = shards_of(adata.n_obs, batch_size, shard_cells)
    params = {"mode": mode, "n_samples": int(n_samples) if mode == "sample" else 0, "seed": int(seed),
              "batch_size": int(batch_size), "beta_mode": beta_mode or "", "device": device}
    in_file = obsm_key is None or _in_file(adata.filename, f"obsm/{obsm_key}")
    if obsm_key is not None:  # the parts are made from these embeddings: a run on others is a different run
        params["embeddings"] = _embeddings_identity(adata, spec.backbone, obsm_key, in_file)
    unlog = unlogs_values(data, spec)
    if unlog:  # log-normalised values un-logged first: parts made before that was done are another run's
        params["unlog"] = True
    if matrix is not None:  # parts made from another matrix of the file are another run's
        params["matrix"] = matrix
    store = ShardStore(parts_dir(output), _fingerprint(adata, bundle, mask_array, params, shards))
    obsm_path = None
    if not in_file:
        # embeddings computed after the file was written (embed_ray, or in this process): the workers read
        # them from a file beside the parts
        from scatd_core.scaleout._embed import write_obsm

        obsm_path = write_obsm(adata, obsm_key, store.folder)
    job = Job(path=str(adata.filename), var=data.var.copy(), obsm_key=obsm_key, obsm_path=obsm_path,
              bundle_path=str(bundle.path), matrix=matrix,
              batch_size=int(batch_size), log_normalise=log_normalises(data, spec), mask=mask_array, mode=mode,
              unlog=unlog,
              n_samples=int(n_samples), seed=int(seed), device=device, beta_mode=beta_mode)
    ray = _ray()
    started = connect(address)
    try:
        n_workers = _workers(ray, workers, device)
        todo = [i for i in range(len(shards)) if not store.done(shard_name(i))]
        if on_estimate is not None:
            n_run = sum(stop - start if mask_array is None else int(mask_array[start:stop].sum())
                        for start, stop in (shards[i] for i in todo))
            on_estimate(estimate_text(bundle, n_run, n_workers, len(todo), mode=mode, n_samples=n_samples,
                                      device=device, density=stored_fraction(data.X)))
        if needs_moments(spec):
            job = replace(job, moments=_statistics(ray, job, store, shards, n_workers, progress, should_stop,
                                                   mask_reason_text(mask)))
        todo = [i for i in range(len(shards)) if not store.done(shard_name(i))]  # after the statistics pass
        resumed = len(shards) - len(todo)
        _run_pass(ray, PredictWorker, job, shards, todo, n_workers, device,
                  lambda i, payload: store.save(shard_name(i), payload), "predicting", resumed, progress,
                  should_stop)
    finally:
        release(started)
    run = ScaleoutRun(adata, store, shards, resumed=resumed, computed=len(todo), workers=n_workers)
    _assemble(run, bundle, source, mask, mask_array, threshold, load_latent, address, data, choice)
    run.seconds = round(time.perf_counter() - t0, 3)
    adata.uns[result_keys().run]["seconds"] = run.seconds
    if progress is not None:
        progress(1.0, f"done · {adata.n_obs:,} cells in {len(shards)} shards ({resumed} resumed)")
    return run


def estimate_text(bundle, n_cells: int, n_workers: int, n_shards: int, *, mode: str = "mean", n_samples: int = 50,
                  device: str = "auto", density: float | None = None) -> str:
    """The time estimate of a Ray prediction, in words: one process's calibrated per-cell cost
    (:func:`~scatd_core.predict.estimate_seconds`, on this machine's device) for ``n_cells`` cells,
    shared by the workers that run at once (``n_workers``, at most one per shard of ``n_shards``)."""
    from scatd_core.predict import device_description, estimate_seconds, resolve_device

    if not n_shards:
        return "Estimated time: nothing left to predict (every shard is already done)."
    one = estimate_seconds(bundle, n_cells, mode=mode, n_samples=max(2, n_samples), device=device, density=density)
    at_once = max(1, min(n_workers, n_shards))
    return (f"Estimated time: about {max(1, round(one / at_once)):,} s for {n_cells:,} cells on "
            f"{counted(at_once, 'Ray worker')} (about {max(1, round(one)):,} s in one process on "
            f"{device_description(resolve_device(device))}, shared among them; an estimate from per-cell costs, "
            "nothing run yet; starting the workers and reading the file add to it).")


def _workers(ray, workers: int | None, device: str) -> int:
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if device == "cuda" and gpus == 0:
        raise ScatdError("CUDA was requested but the Ray cluster has no GPU.", "Use --device cpu (or auto).")
    available = gpus if device in ("cuda", "auto") and gpus else int(resources.get("CPU", 1))
    return max(1, min(int(workers), available) if workers else available)


def _remote_args(device: str, ray) -> dict:
    gpu = device == "cuda" or (device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
    return {"num_gpus": 1, "num_cpus": 1} if gpu else {"num_cpus": 1}


def _lost_process_errors(ray) -> tuple:
    """Ray's errors for a shard whose worker process (or node, or result) was lost: the shard is run
    again. An error our code raised (Ray's ``RayTaskError`` wrapping it) is not among them."""
    e = ray.exceptions
    return tuple(getattr(e, n) for n in ("WorkerCrashedError", "OutOfMemoryError", "NodeDiedError", "RayActorError",
                                         "ObjectLostError", "LocalRayletDiedError") if hasattr(e, n))


def retried_words(shard: int, total: int, attempt: int) -> str:
    """scATD's line for a shard run again after its worker process stopped (``shard`` counted from 0)."""
    return (f"shard {shard + 1} of {total}: its worker process stopped (killed, or out of memory); running the shard "
            f"again (retry {attempt} of {MAX_RETRIES})")


def _run_pass(ray, worker, job: Job, shards, todo: list[int], n_workers: int, device: str,
              on_result: Callable[[int, bytes], None], phase: str, done_before: int, progress, should_stop,
              note: Callable[[str], None] | None = None) -> None:
    """Run ``worker`` over the shards ``todo``, ``n_workers`` shards at a time, each result handed
    to ``on_result`` as it arrives (shards finish out of order).

    On CPUs a shard is a Ray task. Ray keeps its worker processes from task to task, and
    :func:`~scatd_core.scaleout._shard.run_shard` keeps the pass's worker (file and model) in
    each of them, so a pass on a running Ray instance starts no process and loads the model once
    per process. On GPUs each worker is an actor on one GPU for the pass
    (:class:`~scatd_core.scaleout._shard.ShardActor`), ended with the pass. A shard whose process
    was lost is run again (:data:`MAX_RETRIES` times), here rather than by Ray, so that it is said:
    :func:`retried_words` goes to ``note`` (by default ``progress.note``, the command line's own line,
    else the progress message), since Ray's own report of the lost worker (raylet text on the
    driver's stdout, which ``log_to_driver=False`` does not silence) says nothing of the retry. An
    error raised by our code is not retried (it would recur) and ends the pass with its message. When the pass stops (cancelled or
    failed), shards still running on tasks finish on their own and are dropped; GPU actors are
    ended."""
    total = len(shards)
    if progress is not None:
        progress(done_before / total, f"{phase} · {done_before} of {total} shards")
    if not todo:
        return
    job_ref = ray.put(job)
    resources = _remote_args(device, ray)
    if _on_actors(resources):
        from scatd_core.scaleout._shard import ShardActor

        actor_class = ray.remote(ShardActor).options(max_restarts=MAX_RETRIES, max_task_retries=MAX_RETRIES,
                                                     **resources)
        free = [actor_class.remote(worker, job_ref) for _ in range(min(n_workers, len(todo)))]
        actors = list(free)

        def submit(i):
            actor = free.pop()
            return actor.run.remote(i, *shards[i]), actor

        def release(actor):
            free.append(actor)

        def close():
            for actor in actors:
                ray.kill(actor)
    else:
        task = _shard_task(ray).options(name=worker.__name__, max_retries=0, retry_exceptions=False,  # retried here
                                        **resources)
        token = uuid.uuid4().hex

        def submit(i):
            return task.remote(worker, job_ref, token, i, *shards[i]), None

        def release(actor):
            pass

        def close():
            pass

    waiting, running, tries = list(todo), {}, {}
    done = done_before
    lost = _lost_process_errors(ray)
    note = note or getattr(progress, "note", None)
    try:
        while waiting or running:
            while waiting and len(running) < n_workers:
                i = waiting.pop(0)
                ref, actor = submit(i)
                running[ref] = (i, actor)
            ready, _ = ray.wait(list(running), num_returns=1)
            i, actor = running.pop(ready[0])
            release(actor)
            try:
                payload = ray.get(ready[0])
            except lost:
                tries[i] = tries.get(i, 0) + 1
                if tries[i] > MAX_RETRIES:
                    raise
                waiting.insert(0, i)
                words = retried_words(i, total, tries[i])
                if note is not None:
                    note(words)
                elif progress is not None:
                    progress(done / total, f"{phase} · {words}")
                continue
            on_result(i, payload)
            done += 1
            if progress is not None:
                cells = sum(b - a for a, b in shards[:done])  # approximate: shards finish out of order
                progress(done / total, f"{phase} · {done} of {total} shards (~{cells:,} cells)")
            if should_stop is not None and should_stop():
                raise Cancelled(f"Stopped after {done} of {total} shards; the finished shards are kept. Run the "
                                "same command again (same output) to resume.")
    except Cancelled:
        raise
    except Exception as exc:  # from a worker (Ray's wrapper) or from on_result (the package's own)
        raise _worker_error(exc) from None
    finally:
        # Stopped or failed: a shard still running on a task is left to finish and its result
        # dropped (one shard; its process is reused; only the driver writes parts). Cancelling it
        # (ray.cancel, force=True) raced with its completion in Ray 2.60 and aborted the driver
        # process ("Check failed" in TaskManager::CompletePendingTask, ray-project/ray#54798): the
        # CLI, or the app server of every user. GPU actors are ended by close().
        close()


def _on_actors(resources: dict) -> bool:
    """GPU passes run on actors (one per GPU, for the pass); CPU passes on reused task processes."""
    return bool(resources.get("num_gpus"))


@functools.lru_cache(maxsize=1)
def _shard_task(ray):
    from scatd_core.scaleout._shard import run_shard

    return ray.remote(run_shard)


def _worker_error(exc: BaseException) -> ScatdError:
    """The error a worker raised, as a message: the package's own error as it was raised (Ray's
    wrapper of it carries a traceback and is an instance of it too, so the innermost is taken),
    anything else as its last line with where to look."""
    seen, ours = exc, None
    while seen is not None:
        if isinstance(seen, ScatdError):
            ours = seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    if ours is not None:
        return ours
    text = [line for line in str(exc).strip().splitlines() if line.strip()]
    return ScatdError(f"The Ray job failed: {(text[-1] if text else type(exc).__name__)[:400]}",
                      f"Workers are retried {MAX_RETRIES} times; see the Ray logs (/tmp/ray/session_latest/logs) "
                      "for the cause. The finished shards are kept: run the same command again to resume.")


def _statistics(ray, job: Job, store: ShardStore, shards, n_workers, progress, should_stop,
                filtered_text: str = REASON_TEXT["filtered"]):
    """First pass: the moments of the pre-scaling values, merged in input order (as one pass does);
    ``filtered_text``: what left the masked cells out (:func:`~scatd_core.inputs.mask_reason_text`)."""
    if store.done("statistics"):
        saved = store.load("statistics")
        return saved["mean"], saved["sd"]
    parts: dict[int, dict] = {}
    acc, reasons, merged = MeanVar(), np.zeros(len(REASON_ORDER), dtype=np.int64), 0

    def merge(i: int, payload: bytes) -> None:
        nonlocal merged
        parts[i] = unpack(payload)
        while merged in parts:  # in shard order, batch by batch: the same sums as one pass
            part = parts.pop(merged)
            for k, mean, m2 in zip(part["k"], part["mean"], part["m2"]):
                acc.add(int(k), mean, m2)
            reasons[:] += part["reasons"]
            merged += 1

    _run_pass(ray, StatisticsWorker, job, shards, list(range(len(shards))), n_workers, job.device, merge,
              "dataset statistics", 0, progress, should_stop)
    if acc.n == 0:  # the cells the mask left out said as it left them out: the QC filter, or the user's column
        raise no_cell_scored_error(dict(zip(REASON_ORDER, reasons)), filtered_text)
    mean, sd = acc.mean, acc.std(correction=0)
    store.save("statistics", pack({"mean": mean, "sd": sd}))
    return mean, sd


def _assemble(run: ScaleoutRun, bundle, source, mask, mask_array, threshold, load_latent: bool, address,
              data: ad.AnnData | None = None, choice=None) -> None:
    """Write the shards' results into ``run.adata`` as :func:`~scatd_core.predict.predict` does (``data``,
    ``choice``: the matrix the model read and why, :func:`scatd_core.inputs.model_data`)."""
    from scatd_core.predict import _warnings, clear, set_threshold

    adata, n = run.adata, run.adata.n_obs
    keys = result_keys()
    clear(adata)  # as predict: what an earlier prediction left does not describe this one
    prob, scored = np.full(n, np.nan), np.zeros(n, dtype=bool)
    why = np.full(n, "", dtype=object)
    examples: dict[str, list] = {}  # the first cells not scored, per reason, as one process names them
    sd = latent = None
    usable, non_finite, reasons, record, lowered = 0, 0, np.zeros(len(REASON_ORDER), dtype=np.int64), None, []
    for i, (start, stop) in enumerate(run.shards):
        part = run.store.load(shard_name(i))
        prob[start:stop], scored[start:stop] = part["prob"], part["scored"]
        if "why" in part:
            why[start:stop] = part["why"]
        for reason, said in (json.loads(str(part["examples"])) if "examples" in part else {}).items():
            examples.setdefault(reason, []).extend((start + int(row), gene) for row, gene in said)
        if "prob_sd" in part:
            sd = np.full(n, np.nan) if sd is None else sd
            sd[start:stop] = part["prob_sd"]
        if load_latent:
            latent = np.empty((n, part["latent"].shape[1]), dtype=np.float32) if latent is None else latent
            latent[start:stop] = part["latent"]
        usable += int(part["usable"])
        non_finite += int(part["non_finite_output"])
        reasons += part["reasons"]
        shard_record = json.loads(str(part["record"]))
        if shard_record:
            record = record or shard_record
            if shard_record["params"].get("batch_size_lowered_to"):
                lowered.append(int(shard_record["params"]["batch_size_lowered_to"]))
    left_out = mask_reason_text(mask)  # the QC filter's cells, or the user's mask column's
    if left_out != REASON_TEXT["filtered"]:
        why[why == REASON_TEXT["filtered"]] = left_out
    if record is None:
        raise no_cell_scored_error(dict(zip(REASON_ORDER, reasons)), left_out)
    not_scored = {k: int(v) for k, v in zip(REASON_ORDER, reasons) if v and k != "filtered"}
    if non_finite:
        not_scored["non_finite_output"] = non_finite
    filtered = np.zeros(n, dtype=bool) if mask_array is None else ~mask_array
    adata.obs[keys.prob] = prob
    if sd is not None:
        adata.obs[keys.prob_sd] = sd
    elif keys.prob_sd in adata.obs:
        del adata.obs[keys.prob_sd]
    adata.obs[keys.scored] = scored
    adata.obs[keys.not_scored_reason] = pd.Categorical(why)
    if latent is not None:
        adata.obsm[keys.latent] = latent
    record["params"]["batch_size_lowered_to"] = min(lowered) if lowered else None
    examples = {reason: said[:EXAMPLES_PER_REASON] for reason, said in examples.items()}
    inputs = SimpleNamespace(examples=examples, n_usable=usable, transform=record["params"]["input_transform"],
                             source=source, matrix=choice, data=data if data is not None else adata)
    if choice is not None:  # the shards read their rows of the chosen matrix as their X: said as one process says it
        record["matrix"] = choice.record()
        notes = ([choice.note] if choice.note else []) + [str(n) for n in record.get("notes", [])]
        record.pop("notes", None)
        if notes:
            record["notes"] = notes
    record.update({
        "scatd_version": __version__,
        "run_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "n_cells": int(n), "n_scored": int(scored.sum()), "not_scored": not_scored,
        "qc": {"n_filtered": int(filtered.sum()), "mask": mask if isinstance(mask, str) else
               (getattr(mask, "column", None) or ("array" if mask is not None else "none")),
               "thresholds": dict(adata.uns.get(_keys.QC, {}).get("thresholds", {})) if filtered.any() else {}},
        "warnings": _warnings(bundle, inputs, not_scored, adata),
        "engine": {"name": "ray", "address": address or "local", "workers": run.workers,
                   "shards": len(run.shards), "shard_cells": run.shards[0][1] - run.shards[0][0],
                   "shards_resumed": run.resumed, "parts": str(run.store.folder)},
    })
    record.pop("threshold", None)
    adata.uns[keys.run] = record
    adata.obs[keys.label] = np.where(filtered, mask_label(mask), NOT_SCORED)  # 'filtered (QC)' or 'left out (mask)'
    thr = float(bundle.threshold if threshold is None else threshold)
    set_threshold(adata, thr, "model default" if threshold is None else "user")



def write_h5ad(run: ScaleoutRun, path: str | Path) -> Path:
    """The annotated h5ad of a run (:func:`scatd_core.export.write_h5ad`), the latent means
    streamed from the parts shard by shard when they were not loaded (memory: one shard)."""
    import h5py

    from scatd_core.export import write_h5ad as write_annotated

    path = Path(path)
    keys = result_keys()
    if keys.latent in run.adata.obsm:
        return write_annotated(run.adata, path)
    tmp = write_annotated(run.adata, path.with_name(f".{path.name}.annotated"))
    with h5py.File(tmp, "r+") as f:
        first = run.store.load(shard_name(0))["latent"]
        out = f["obsm"].create_dataset(keys.latent, shape=(run.adata.n_obs, first.shape[1]), dtype="float32",
                                       chunks=(min(run.adata.n_obs, 8192), first.shape[1]))
        out.attrs["encoding-type"], out.attrs["encoding-version"] = "array", "0.2.0"
        for start, stop, latent in run.latent_blocks():
            out[start:stop] = latent
    tmp.replace(path)
    return path


@contextmanager
def in_app(backed: bool, task: str):
    """Within it (the app's runs on Ray), the data file gone or unreadable, or the parts folder
    removed (the session's working folder cleaned up), is said in the app's words (:func:`~scatd_core.scaleout._files.in_app_words`): no server path, and what to do on its
    pages. Yields a one-item list: set its item when the run reads the session's own copy of the
    data rather than the uploaded (backed) file."""
    copied = [not backed]
    try:
        yield copied
    except InputError as exc:
        if not is_data_file_error(exc):
            raise
        raise in_app_words(exc, task, copy=copied[0]) from None


@dataclass(frozen=True)
class EngineChoice:
    """Where a prediction runs: here, or on Ray (and why, for the user)."""

    use_ray: bool
    address: str | None = None
    workers: int | None = None
    reason: str = ""


def engine_for(n_cells: int) -> EngineChoice:
    """The app's choice: Ray when an administrator set ``[scaleout] address``, or when the data
    have more than ``[scaleout] min_cells`` cells (a local Ray instance), if Ray is installed."""
    from scatd_core.config import settings

    s = settings()
    address, min_cells = s["scaleout_address"], s["scaleout_min_cells"]
    large = n_cells > min_cells
    if not (address or large):
        return EngineChoice(False)
    why = (f"the administrator set the Ray cluster {address}" if address else
           f"{n_cells:,} cells is more than the {min_cells:,} configured for one process")
    if not ray_available():
        return EngineChoice(False, reason=f"Predicting in this process: {why}, but Ray is not installed on the "
                                          f"server. {RAY_EXTRA_HINT}")
    where = f"on the Ray cluster at {address}" if address else "on a local Ray instance"
    return EngineChoice(True, address, s["scaleout_workers"],
                        f"This prediction runs {where}, shard by shard ({why}); the results are the same as in "
                        "one process, and a stopped run resumes where it stopped.")


def predict_in_folder(adata: ad.AnnData, bundle, folder: str | Path, token: str, choice: EngineChoice,
                      **kwargs) -> ScaleoutRun:
    """:func:`predict_ray` for the app: in-memory data are written once to ``folder`` (named by
    ``token``, what the prediction depends on, so a stopped run resumes), and the results are
    written into ``adata`` as :func:`~scatd_core.predict.predict` writes them."""
    from scatd_core.export import write_h5ad as write_annotated

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = _keys.FOUNDATION_EMBEDDING.get(bundle.backbone)
    with in_app(adata.isbacked and not adata.is_view, "prediction") as copied:
        if adata.isbacked and not adata.is_view and (key not in adata.obsm or _in_file(adata.filename, f"obsm/{key}")):
            source = adata
        else:
            copied[0] = True
            path = folder / f"input-{token}.h5ad"
            if not path.exists():
                write_annotated(adata, path)
            source = ad.read_h5ad(path, backed="r")
        stay_connected(choice.address)
        run = predict_ray(source, bundle, folder / f"predict-{token}", address=choice.address,
                          workers=choice.workers, **kwargs)
    if source is not adata:
        keys = result_keys()
        for col in (keys.prob, keys.prob_sd, keys.scored, keys.not_scored_reason, keys.label):
            if col in source.obs:
                adata.obs[col] = source.obs[col].values
            elif col in adata.obs:
                del adata.obs[col]
        adata.obsm[keys.latent] = source.obsm[keys.latent]
        adata.uns[keys.run] = source.uns[keys.run]
        run.adata = adata
        source.file.close()
    return run
