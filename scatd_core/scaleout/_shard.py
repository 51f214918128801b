"""What one worker does with one shard: read its rows from the h5ad, then compute.

Plain Python (no Ray here): :class:`StatisticsWorker`, :class:`PredictWorker` and the others
are the stateful workers that :func:`run_shard` (a Ray task) keeps in each worker process for the
pass it belongs to: each opens the file and loads the model once, then handles shard after
shard (on GPUs, :class:`ShardActor` holds one for the pass). They call the package's own code on
an AnnData of the shard's rows: :class:`~scatd_core.inputs.ModelInput` and
:func:`scatd_core.predict.predict`,
with the dataset statistics of the whole dataset, so a shard's numbers are those one pass would
give (shards start on a batch boundary: the same batches go through the model).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

import anndata as ad
import h5py
import numpy as np
import pandas as pd

from scatd_core._json import json_safe
from scatd_core._keys import result_keys
from scatd_core.errors import InputError, ScatdError
from scatd_core.inputs import REASON_TEXT, REASONS, DatasetStatistics, ModelInput
from scatd_core.scaleout._files import data_file_error, open_h5
from scatd_core.scaleout._store import pack

#: Cells that are not scored are counted under these reasons (ModelInput's order).
REASON_ORDER = REASONS


@dataclass(frozen=True)
class Job:
    """Everything a worker needs, put once in Ray's object store for a pass."""

    path: str  # the h5ad (readable from every worker)
    var: pd.DataFrame  # the genes as the driver read them (symbols annotated)
    obsm_key: str | None  # read the model input from this obsm entry instead of X
    bundle_path: str
    batch_size: int
    log_normalise: bool
    mask: np.ndarray | None = None
    moments: tuple[np.ndarray, np.ndarray] | None = None
    mode: str = "mean"
    n_samples: int = 50
    seed: int = 0
    device: str = "auto"
    beta_mode: str | None = None
    #: ``scatd explain`` on Ray: the explained cells and the attributor's settings (:class:`ExplainWorker`)
    explain: dict | None = None
    #: read ``obsm_key`` from this HDF5 file (embeddings computed after the h5ad was written) instead
    obsm_path: str | None = None
    #: foundation embeddings on Ray: backbone, options, cells to embed, value type (:class:`EmbedWorker`)
    embed: dict | None = None
    #: the values are already log-normalised and un-logged before the model's log1p_cp10k (DatasetStatistics)
    unlog: bool = False
    #: read the rows from this matrix of the h5ad instead of X (``"layers/counts"``, ``"raw/X"``: the raw
    #: counts a foundation model is given beside a normalised X); ``var`` then holds that matrix's genes
    matrix: str | None = None

    @property
    def statistics(self) -> DatasetStatistics:
        return DatasetStatistics(self.log_normalise, self.moments, self.unlog)


class ShardReader:
    """Rows ``[start, stop)`` of a backed h5ad as a small in-memory AnnData (X, the matrix
    ``job.matrix`` names, or one obsm entry)."""

    def __init__(self, job: Job):
        self.job = job
        self.file = open_h5(job.path)  # gone or unreadable: an InputError naming the file, not h5py's
        #: the file the rows are read from
        self.source = job.obsm_path if job.obsm_key is not None and job.obsm_path is not None else job.path
        try:
            if job.obsm_key is None:
                X = self.file[job.matrix or "X"]
                self.X = ad.io.sparse_dataset(X) if isinstance(X, h5py.Group) else X
            elif job.obsm_path is not None:
                self.obsm_file = open_h5(job.obsm_path)
                self.X = self.obsm_file[job.obsm_key]
            else:
                self.X = self.file["obsm"][job.obsm_key]
        except (OSError, KeyError) as exc:  # replaced by another file since the driver read it
            raise data_file_error(self.source, exc) from None

    def read(self, start: int, stop: int) -> ad.AnnData:
        obs = pd.DataFrame(index=pd.RangeIndex(start, stop).astype(str))
        try:
            rows = self.X[start:stop]
        except OSError as exc:  # the file was cut short or overwritten while open
            raise data_file_error(self.source, exc) from None
        if self.job.obsm_key is None:
            return ad.AnnData(X=rows, obs=obs, var=self.job.var)
        return ad.AnnData(obs=obs, var=self.job.var, obsm={self.job.obsm_key: np.asarray(rows)})


class _Worker:
    """Shared by the workers: the job, the file and the bundle, opened once per process and pass."""

    def __init__(self, job: Job):
        from scatd_core.bundle import load_bundle

        self.job = job
        self.reader = ShardReader(job)
        self.bundle = load_bundle(job.bundle_path)

    def __call__(self, batch: dict) -> dict:
        payloads = []
        for start, stop in zip(batch["start"], batch["stop"]):
            t0 = time.perf_counter()
            arrays = self.compute(self.reader.read(int(start), int(stop)), int(start))
            arrays["seconds"] = np.asarray(time.perf_counter() - t0)  # reading and computing this shard
            payloads.append(pack(arrays))
        return {"shard": np.asarray(batch["shard"]), "payload": np.array(payloads, dtype=object)}

    def shard_mask(self, start: int, n: int) -> np.ndarray | None:
        return None if self.job.mask is None else self.job.mask[start:start + n]

    def inputs(self, shard: ad.AnnData, start: int) -> ModelInput:
        return ModelInput(shard, self.bundle, mask=self.shard_mask(start, shard.n_obs),
                          batch_size=self.job.batch_size, statistics=self.job.statistics, row_offset=start)


#: A worker process frees the last pass's worker (its open file, its model) after this many
#: seconds without a shard of that pass.
IDLE_RELEASE_S = 30.0
_held: dict = {}  # in a Ray worker process: {"token", "worker", "timer"} of the pass it last served
_held_lock = threading.Lock()


def run_shard(worker_class: type, job: Job, token: str, shard: int, start: int, stop: int) -> bytes:
    """One shard of one pass, in a Ray worker process (a plain Ray task).

    The worker for the pass ``token`` (the file opened, the model loaded) is built on the
    process's first shard of that pass and kept for the next ones; Ray reuses its worker
    processes from pass to pass, so a pass costs no process start once the cluster is warm. A
    process holds one pass's worker at a time: another pass's shard replaces it, and
    :data:`IDLE_RELEASE_S` seconds without a shard free it (the file closed, the model dropped)."""
    with _held_lock:
        timer = _held.pop("timer", None)
        if timer is not None:
            timer.cancel()
        if _held.get("token") != token:
            _held.clear()  # the previous pass's file and model go before this pass's are opened
            _held.update(token=token, worker=worker_class(job))
        worker = _held["worker"]
    try:
        return _one_shard(worker, shard, start, stop)
    finally:
        with _held_lock:
            if _held.get("token") == token:
                timer = threading.Timer(IDLE_RELEASE_S, _release, args=(token,))
                timer.daemon = True
                _held["timer"] = timer
                timer.start()


def _one_shard(worker, shard: int, start: int, stop: int) -> bytes:
    """A pass's worker on the rows ``start:stop``: the shard's serialised result."""
    out = worker({"shard": [shard], "start": [start], "stop": [stop]})
    return bytes(out["payload"][0])


class ShardActor:
    """One GPU worker of a pass (a Ray actor on one GPU): the pass's worker built once, shard after
    shard. GPU passes use actors, not :func:`run_shard`'s reused task processes: a process that
    has started CUDA stays on the GPU it started on, and Ray hands a reused process any GPU."""

    def __init__(self, worker_class: type, job: Job):
        # The package's own error (e.g. the data file gone) is raised by the first shard's call, as a
        # task raises it: raised here, Ray would restart the actor and report only its own text.
        try:
            self.worker, self.error = worker_class(job), None
        except ScatdError as exc:
            self.worker, self.error = None, exc

    def run(self, shard: int, start: int, stop: int) -> bytes:
        if self.error is not None:
            raise self.error
        return _one_shard(self.worker, shard, start, stop)


def _release(token: str) -> None:
    import gc

    with _held_lock:
        if _held.get("token") != token:
            return
        worker = _held.pop("worker", None)
        _held.clear()
        if hasattr(worker, "release"):
            worker.release()
        del worker
        gc.collect()


class StatisticsWorker(_Worker):
    """First pass: the per-batch moments of the pre-scaling values (merged in order by the driver)."""

    def compute(self, shard: ad.AnnData, start: int) -> dict[str, np.ndarray]:
        return shard_moments(self.inputs(shard, start))


class PredictWorker(_Worker):
    """Second pass: :func:`scatd_core.predict.predict` on the shard; the model is loaded once."""

    def __init__(self, job: Job):
        super().__init__(job)
        from scatd_core.predict import resolve_device

        self.bundle.load_model(resolve_device(job.device), job.beta_mode)  # once per process and pass

    def compute(self, shard: ad.AnnData, start: int) -> dict[str, np.ndarray]:
        return predict_shard(shard, self.bundle, self.inputs(shard, start), self.job)


def shard_moments(inputs: ModelInput) -> dict[str, np.ndarray]:
    """The per-batch :func:`~scatd_core._matrix.block_moments` of a shard, stacked."""
    ks, means, m2s = [], [], []
    for k, mean, m2 in inputs.batch_moments():
        if k:
            ks.append(k)
            means.append(mean)
            m2s.append(m2)
    d = inputs.spec.input_dim
    return {"k": np.asarray(ks, dtype=np.int64), "mean": np.asarray(means, dtype=np.float64).reshape(-1, d),
            "m2": np.asarray(m2s, dtype=np.float64).reshape(-1, d),
            "reasons": np.asarray([inputs.reasons[r] for r in REASON_ORDER], dtype=np.int64)}


def predict_shard(shard: ad.AnnData, bundle, inputs: ModelInput, job: Job) -> dict[str, np.ndarray]:
    """Predict one shard; the arrays the driver assembles (a shard without a usable cell, which
    :func:`~scatd_core.predict.predict` refuses, gets its rows unscored with the reasons)."""
    from scatd_core.predict import not_scored_reasons, predict

    n = shard.n_obs
    keys = result_keys()
    record = {}
    mask = inputs.mask
    if mask is not None and not mask.any():  # every cell filtered: nothing to run
        usable, reasons = 0, {**dict.fromkeys(REASON_ORDER, 0), "filtered": n}
        prob, scored = np.full(n, np.nan), np.zeros(n, dtype=bool)
        latent = np.full((n, bundle.architecture.latent_dim), np.nan, dtype=np.float32)
        sd = np.full(n, np.nan) if job.mode == "sample" or bundle.architecture.n_members > 1 else None
        why = np.full(n, REASON_TEXT["filtered"])
    else:
        try:
            predict(shard, bundle, mask=mask, inputs=inputs, mode=job.mode, n_samples=job.n_samples, seed=job.seed,
                    device=job.device, batch_size=job.batch_size, beta_mode=job.beta_mode,
                    min_gene_coverage=0.0)  # the gene coverage was judged by predict_ray, on the whole dataset
        except InputError:
            if not inputs.scanned or inputs.usable.any():
                raise
            shard.obs[keys.prob] = np.nan
            shard.obs[keys.scored] = False
            shard.obsm[keys.latent] = np.full((n, bundle.architecture.latent_dim), np.nan, dtype=np.float32)
            if job.mode == "sample" or bundle.architecture.n_members > 1:  # an ensemble: the members' spread
                shard.obs[keys.prob_sd] = np.nan
        else:
            record = json_safe(shard.uns[keys.run])
        usable, reasons = int(inputs.usable.sum()), inputs.reasons
        prob = shard.obs[keys.prob].to_numpy(dtype=np.float64)
        scored = shard.obs[keys.scored].to_numpy(dtype=bool)
        latent = np.asarray(shard.obsm[keys.latent], dtype=np.float32)
        sd = shard.obs[keys.prob_sd].to_numpy(dtype=np.float64) if keys.prob_sd in shard.obs else None
        why = (shard.obs[keys.not_scored_reason].astype(str).to_numpy() if keys.not_scored_reason in shard.obs else
               np.asarray(not_scored_reasons(inputs, scored, bundle.input_kind == "embedding")).astype(str))
    examples = {} if mask is not None and not mask.any() else inputs.examples  # rows of this shard
    out = {"why": np.asarray(why, dtype=str), "examples": np.asarray(json.dumps(examples)), "prob": prob, "scored": scored, "latent": latent, "usable": np.asarray(usable),
           "reasons": np.asarray([reasons[r] for r in REASON_ORDER], dtype=np.int64),
           "non_finite_output": np.asarray(int(record.get("not_scored", {}).get("non_finite_output", 0))),
           "record": np.asarray(json.dumps(record))}
    if sd is not None:
        out["prob_sd"] = sd
    return out



class ExplainWorker(_Worker):
    """Integrated gradients of the explained cells of a shard: the attributor (model and
    baseline) is built once per process and pass; the shard's calls are those one process makes on these
    rows (:func:`scatd_core.explain._explain.attribution_calls`), sent back for the driver to
    merge in order."""

    def __init__(self, job: Job):
        super().__init__(job)
        from scatd_core.explain._attribution import Attributor
        from scatd_core.predict import resolve_device

        e = job.explain
        dev = resolve_device(job.device)
        model = self.bundle.load_model(dev, job.beta_mode)
        self.attributor = Attributor(model, e["target"], self.bundle.positive_index, e["baseline"], e["n_steps"],
                                     e["internal_batch_size"], dev, factorise=e["factorise"])

    def compute(self, shard: ad.AnnData, start: int) -> dict[str, np.ndarray]:
        return explain_shard(self.inputs(shard, start), self.attributor, self.job.explain, start)


CALL_KEYS = ("abs", "attr_pos", "attr_neg", "x_pos", "x_neg", "ad", "dd", "abs_pos", "ad_pos", "dd_pos")


def explain_shard(inputs: ModelInput, attributor, e: dict, start: int) -> dict[str, np.ndarray]:
    """The attribution calls of one shard, stacked: per call its float64 sums (``CALL_KEYS``)
    and size; per cell its position, staged attributions, f(x), sum and delta; and the cells'
    data as given (CSR arrays or dense)."""
    import scipy.sparse as sp

    from scatd_core.explain._explain import attribution_calls, stack_raw

    rows = e["rows"]
    n = inputs.n_obs
    lo, hi = np.searchsorted(rows, [start, start + n])
    position = np.full(n, -1, dtype=np.int64)
    position[rows[lo:hi] - start] = np.arange(lo, hi)
    calls, raws = [], []
    for kind, value in attribution_calls(inputs, attributor, position, e["is_pos"], e["is_neg"],
                                         e["baseline"].astype(np.float64)):
        (raws if kind == "raw" else calls).append(value)
    out = {"n_calls": np.asarray(len(calls)), "sizes": np.asarray([c["at"].size for c in calls], dtype=np.int64)}
    for key in CALL_KEYS:
        out[key] = np.stack([c[key] for c in calls]) if calls else np.zeros((0, attributor.base.shape[1]))
    for key in ("at", "staged", "f_x", "attr_sum", "delta"):
        out[key] = np.concatenate([c[key] for c in calls]) if calls else np.zeros(0)
    if raws:
        raw = stack_raw(raws)
        if sp.issparse(raw):
            raw = raw.tocsr()
            out.update(raw_data=raw.data, raw_indices=raw.indices, raw_indptr=raw.indptr,
                       raw_shape=np.asarray(raw.shape, dtype=np.int64))
        else:
            out["raw"] = np.asarray(raw)
    return out


def shard_calls(part: dict[str, np.ndarray]):
    """The calls of an :func:`explain_shard` result, one :meth:`_Sums.partial` dict each, in order."""
    offset = 0
    for k, size in enumerate(part["sizes"]):
        sl = slice(offset, offset + int(size))
        offset += int(size)
        call = {key: part[key][k] for key in CALL_KEYS}
        call.update({key: part[key][sl] for key in ("at", "staged", "f_x", "attr_sum", "delta")})
        yield call


def shard_raw(part: dict[str, np.ndarray]):
    """The explained cells' data of an :func:`explain_shard` result (``None``: none)."""
    import scipy.sparse as sp

    if "raw_data" in part:
        return sp.csr_matrix((part["raw_data"], part["raw_indices"], part["raw_indptr"]),
                             shape=tuple(int(v) for v in part["raw_shape"]))
    return part.get("raw")


#: A part's arrays named so hold the rows (in its shard) of the cells an embedding left out for
#: NaN, infinite or negative values, one array per reason (``faulty_negative_values`` ...).
FAULTY_PREFIX = "faulty_"


class EmbedWorker(_Worker):
    """Foundation-model embeddings of a shard's cells, with the package's own ``embed`` (the
    model is loaded once per process and pass: the backbone modules cache it until its files change).
    Shards start on a :data:`~scatd_core.foundation._work.CHUNK_CELLS` boundary, so the cells
    go through the model in the batches one process forms."""

    def __init__(self, job: Job):
        import os

        os.environ.update(job.embed["environment"])  # where the foundation model is, as the driver found it
        super().__init__(job)

    def compute(self, shard: ad.AnnData, start: int) -> dict[str, np.ndarray]:
        from scatd_core import _keys
        from scatd_core.foundation._embed import _module

        e = self.job.embed
        shard.uns[_keys.INPUT_REPORT] = dict(e["report"])
        wanted = e["todo"][start:start + shard.n_obs]
        lengths: list = []
        faulty: dict = {}  # rows (in the shard) of the cells left out for NaN, infinite or negative values
        new, info = _module(e["backbone"]).embed(shard, wanted, device=self.job.device, batch_tokens=e["batch_tokens"],
                                                 lengths=lengths, faulty=faulty, **e["options"])
        out = {"embedding": new, "lengths": np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64),
               "info": np.asarray(json.dumps(json_safe(info)))}
        out.update({f"{FAULTY_PREFIX}{reason}": np.asarray(rows, dtype=np.int64) for reason, rows in faulty.items()})
        return out

    def release(self) -> None:
        """Idle: the backbone modules' cached models (hundreds of MB) go too."""
        import sys

        for name in ("scatd_core.foundation.scfoundation", "scatd_core.foundation.geneformer"):
            module = sys.modules.get(name)
            if module is not None:
                module._MODELS.clear()
