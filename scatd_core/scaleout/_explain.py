"""Biomarkers on Ray: :func:`scatd_core.explain.explain` with its attribution pass on shards.

The driver does what one process does before and after the integrated gradients: it checks the
prediction, chooses the explained cells (the same stratified subsample, same seed), computes the
baseline, and afterwards ranks, runs the DE test and stores the result. Only the attribution pass
(the cost: ``n_steps`` forward and backward passes per cell) runs on the workers: the rows are cut
into shards of whole batches holding about ``shard_cells`` explained cells, each worker process builds the
attributor once and makes on its shard the calls one process makes on those rows, and the driver
merges the calls' float64 sums in input order. Every number therefore equals the single-process
result (up to the float rounding of the workers' matrix products, which is the same on one machine).
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path
from typing import Callable

import anndata as ad
import numpy as np

from scatd_core import _keys
from scatd_core.scaleout._files import matrix_in_file, open_h5, stat_data_file
from scatd_core.scaleout._run import (_ray, _require_backed, _run_pass, _workers, connect, in_app, release,
                                      stay_connected)
from scatd_core.scaleout._shard import CALL_KEYS, ExplainWorker, Job, shard_calls, shard_raw
from scatd_core.scaleout._store import ShardStore, parts_dir, shard_name

#: Explained cells per shard by default.
EXPLAIN_SHARD_CELLS = 512


def explain_shards(rows: np.ndarray, n_obs: int, batch_size: int, shard_cells: int | None = None) \
        -> list[tuple[int, int]]:
    """Row ranges ``[start, stop)`` on batch boundaries, each holding about ``shard_cells`` of the
    explained ``rows`` (sorted); batches without an explained cell are in no shard."""
    per_shard = max(1, int(shard_cells or EXPLAIN_SHARD_CELLS))
    batch_of = rows // batch_size
    shards, start_batch, count = [], None, 0
    for b, k in zip(*np.unique(batch_of, return_counts=True)):
        if start_batch is None:
            start_batch = int(b)
        count += int(k)
        if count >= per_shard:
            shards.append((start_batch * batch_size, min((int(b) + 1) * batch_size, n_obs)))
            start_batch, count = None, 0
    if start_batch is not None:
        shards.append((start_batch * batch_size, min((int(batch_of[-1]) + 1) * batch_size, n_obs)))
    return shards


def explain_ray(
    adata: ad.AnnData,
    bundle,
    *,
    output: str | Path | None = None,
    shard_cells: int | None = None,
    workers: int | None = None,
    address: str | None = None,
    batch_size: int = 512,
    device: str = "auto",
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **kwargs,
):
    """:func:`scatd_core.explain.explain` with the integrated gradients computed on Ray.

    ``adata`` is a backed h5ad annotated by a prediction with ``bundle`` (e.g. by
    :func:`~scatd_core.scaleout.predict_ray`); the other keyword arguments are those of
    ``explain`` and mean the same. The explained cells (``max_cells``: the same stratified
    subsample as one process), baseline, ranking, DE test and stored keys are those of
    ``explain`` in one process; ``info["engine"]`` says where it ran. With ``output``, each
    shard's attributions are kept, checksummed, in ``<output>.parts/``: the same call again
    skips the shards done. Returns the :class:`~scatd_core.explain.Explanation`.
    """
    from scatd_core.explain import explain
    from scatd_core.explain._explain import _Sums, stack_raw

    _require_backed(adata)
    inputs_given = kwargs.pop("inputs", None)
    store_result = kwargs.pop("store_result", True)
    engine: dict = {}
    say = progress or (lambda f, m: None)

    def integrate(inputs, attributor, rows, is_pos, is_neg, base, _say, stop):
        from scatd_core.inputs import InputSpec

        spec = InputSpec.of(bundle)
        source = inputs.source
        obsm_key = _keys.FOUNDATION_EMBEDDING.get(spec.backbone) if source.alignment is None and \
            source.description.startswith("obsm") else None
        shards = explain_shards(rows, inputs.n_obs, inputs.batch_size, shard_cells)
        settings = {"target": kwargs.get("target", "logit"), "n_steps": int(kwargs.get("n_steps", 50)),
                    "internal_batch_size": int(attributor.internal_batch_size),
                    "factorise": bool(attributor.factorised)}
        obsm_path = None
        if obsm_key is not None and not _in_file(adata.filename, f"obsm/{obsm_key}"):
            from scatd_core.scaleout._embed import write_obsm

            obsm_path = write_obsm(adata, obsm_key, Path(tmp_obsm.name))  # computed after the file was written
        # the workers read the rows of the matrix the model reads (X, adata.raw, a layer), as one process
        chosen = getattr(inputs, "matrix", None)
        matrix = None if chosen is None or chosen.name == "X" else matrix_in_file(adata, chosen.candidate.where)
        job = Job(path=str(adata.filename), var=inputs.data.var.copy(), obsm_key=obsm_key, obsm_path=obsm_path,
                  bundle_path=str(bundle.path), matrix=matrix,
                  batch_size=int(inputs.batch_size), log_normalise=bool(inputs.log_normalise), mask=inputs.mask,
                  unlog=bool(inputs.unlog),
                  moments=inputs.moments, device=device,
                  beta_mode=adata.uns[_keys.result_keys(kwargs.get("key_added")).run]["params"].get("beta_mode"),
                  explain={**settings, "baseline": np.asarray(base, dtype=np.float32), "rows": rows,
                           "is_pos": is_pos, "is_neg": is_neg})
        stat = stat_data_file(adata.filename)
        fingerprint = {"input": str(Path(adata.filename).resolve()), "input_bytes": stat.st_size,
                       "input_mtime_ns": stat.st_mtime_ns,
            "model": str(bundle.path), "weights_sha256": bundle.manifest.get("weights_sha256", ""),
            "rows_sha256": hashlib.sha256(np.ascontiguousarray(rows, dtype=np.int64).tobytes()).hexdigest(),
            "baseline_sha256": hashlib.sha256(np.asarray(base, dtype=np.float32).tobytes()).hexdigest(),
            "mask_sha256": "" if inputs.mask is None else hashlib.sha256(np.packbits(inputs.mask).tobytes()).hexdigest(),
            "batch_size": int(inputs.batch_size), "n_shards": len(shards), "device": device, **settings,
            "explain": True, "sums": ",".join(CALL_KEYS),  # parts with other sums are not mixed in
            **({"matrix": matrix} if matrix else {})}
        tmp = None
        if output is None:
            tmp = tempfile.TemporaryDirectory(prefix="scatd-explain-")
            folder = Path(tmp.name) / "parts"
        else:
            folder = parts_dir(output)
        try:
            store = ShardStore(folder, fingerprint)
            todo = [i for i in range(len(shards)) if not store.done(shard_name(i))]
            ray = _ray()
            started = connect(address)
            try:
                n_workers = _workers(ray, workers, device)
                engine.update({"name": "ray", "address": address or "local", "workers": n_workers,
                               "shards": len(shards), "shards_resumed": len(shards) - len(todo),
                               "parts": "" if output is None else str(folder)})
                _run_pass(ray, ExplainWorker, job, shards, todo, n_workers, device,
                          lambda i, payload: store.save(shard_name(i), payload), "integrated gradients",
                          len(shards) - len(todo),
                          lambda f, m: say(0.02 + 0.88 * f, m), stop, note=getattr(progress, "note", None))
            finally:
                release(started)
            sums, raw_parts = _Sums(base.size, rows.size), []
            for i in range(len(shards)):  # in input order: the same sums, added in the same order
                part = store.load(shard_name(i))
                for call in shard_calls(part):
                    sums.merge(call)
                raw = shard_raw(part)
                if raw is not None:
                    raw_parts.append(raw)
        finally:
            if tmp is not None:
                tmp.cleanup()
        return sums, stack_raw(raw_parts)

    t0 = time.perf_counter()
    tmp_obsm = tempfile.TemporaryDirectory(prefix="scatd-explain-obsm-")
    try:
        result = explain(adata, bundle, inputs=inputs_given, batch_size=batch_size, device=device, progress=progress,
                         should_stop=should_stop, _integrator=integrate, store_result=False, **kwargs)
    finally:
        tmp_obsm.cleanup()
    result.info["engine"] = engine
    result.info["seconds"]["total"] = round(time.perf_counter() - t0, 3)
    if store_result:
        from scatd_core.explain import store

        store(adata, result)
    return result


def _in_file(path, key: str) -> bool:
    with open_h5(path) as f:  # gone or unreadable: an InputError naming the file
        return key in f



def explain_in_folder(adata: ad.AnnData, bundle, folder: str | Path, token: str, choice, **kwargs):
    """:func:`explain_ray` for the app: the session's predicted data are written once to ``folder``
    (named by ``token``, what the ranking depends on, so a stopped run resumes), the ranking is
    computed on Ray and stored into ``adata`` as :func:`scatd_core.explain.explain` stores it."""
    from scatd_core.explain import store
    from scatd_core.export import write_h5ad as write_annotated

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"explain-input-{token}.h5ad"
    if not path.exists():
        partial = path.with_suffix(".partial.h5ad")
        write_annotated(adata, partial)
        partial.replace(path)
    stay_connected(choice.address)
    source = ad.read_h5ad(path, backed="r")
    try:
        with in_app(False, "gene ranking"):  # the session's own copy of the data
            result = explain_ray(source, bundle, output=folder / f"explain-{token}", address=choice.address,
                                 workers=choice.workers, store_result=False, **kwargs)
    finally:
        source.file.close()
    store(adata, result)
    return result
