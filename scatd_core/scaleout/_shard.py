"""What one worker does with one shard: read its rows from the h5ad, then compute.

Plain Python (no Ray here): :class:`StatisticsWorker` and :class:`PredictWorker` are the
stateful classes Ray Data runs as actors (``map_batches``); each opens the file and loads the
model once, then handles shard after shard. Both call the package's own code on an AnnData of
the shard's rows: :class:`~scatd_core.inputs.ModelInput` and :func:`scatd_core.predict.predict`,
with the dataset statistics of the whole dataset, so a shard's numbers are those one pass would
give (shards start on a batch boundary: the same batches go through the model).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import anndata as ad
import h5py
import numpy as np
import pandas as pd

from scatd_core._json import json_safe
from scatd_core._keys import result_keys
from scatd_core.errors import InputError
from scatd_core.inputs import REASONS, DatasetStatistics, ModelInput
from scatd_core.scaleout._store import pack

#: Cells that are not scored are counted under these reasons (ModelInput's order).
REASON_ORDER = REASONS


@dataclass(frozen=True)
class Job:
    """Everything a worker needs, sent once to each actor."""

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

    @property
    def statistics(self) -> DatasetStatistics:
        return DatasetStatistics(self.log_normalise, self.moments)


class ShardReader:
    """Rows ``[start, stop)`` of a backed h5ad as a small in-memory AnnData (X or one obsm entry)."""

    def __init__(self, job: Job):
        self.job = job
        self.file = h5py.File(job.path, "r")
        if job.obsm_key is None:
            X = self.file["X"]
            self.X = ad.io.sparse_dataset(X) if isinstance(X, h5py.Group) else X
        else:
            self.X = self.file["obsm"][job.obsm_key]

    def read(self, start: int, stop: int) -> ad.AnnData:
        obs = pd.DataFrame(index=pd.RangeIndex(start, stop).astype(str))
        if self.job.obsm_key is None:
            return ad.AnnData(X=self.X[start:stop], obs=obs, var=self.job.var)
        return ad.AnnData(obs=obs, var=self.job.var, obsm={self.job.obsm_key: np.asarray(self.X[start:stop])})


class _Worker:
    """Shared by both workers: the job, the file and the bundle, opened once per actor."""

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


class StatisticsWorker(_Worker):
    """First pass: the per-batch moments of the pre-scaling values (merged in order by the driver)."""

    def compute(self, shard: ad.AnnData, start: int) -> dict[str, np.ndarray]:
        return shard_moments(self.inputs(shard, start))


class PredictWorker(_Worker):
    """Second pass: :func:`scatd_core.predict.predict` on the shard; the model is loaded once."""

    def __init__(self, job: Job):
        super().__init__(job)
        from scatd_core.predict import resolve_device

        self.bundle.load_model(resolve_device(job.device), job.beta_mode)  # once per actor

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
    from scatd_core.predict import predict

    n = shard.n_obs
    keys = result_keys()
    record = {}
    mask = inputs.mask
    if mask is not None and not mask.any():  # every cell filtered: nothing to run
        usable, reasons = 0, {**dict.fromkeys(REASON_ORDER, 0), "filtered": n}
        prob, scored = np.full(n, np.nan), np.zeros(n, dtype=bool)
        latent = np.full((n, bundle.architecture.latent_dim), np.nan, dtype=np.float32)
        sd = np.full(n, np.nan) if job.mode == "sample" or bundle.architecture.n_members > 1 else None
    else:
        try:
            predict(shard, bundle, mask=mask, inputs=inputs, mode=job.mode, n_samples=job.n_samples, seed=job.seed,
                    device=job.device, batch_size=job.batch_size, beta_mode=job.beta_mode)
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
        sd = shard.obs[keys.prob_sd].to_numpy(dtype=np.float64) if job.mode == "sample" else None
    out = {"prob": prob, "scored": scored, "latent": latent, "usable": np.asarray(usable),
           "reasons": np.asarray([reasons[r] for r in REASON_ORDER], dtype=np.int64),
           "non_finite_output": np.asarray(int(record.get("not_scored", {}).get("non_finite_output", 0))),
           "record": np.asarray(json.dumps(record))}
    if sd is not None:
        out["prob_sd"] = sd
    return out

