"""Foundation-model embeddings on Ray: :func:`scatd_core.foundation.embed_cells` on shards.

The costly part of VAE_sf / VAE_gf on a large dataset is the backbone (scFoundation or
Geneformer) itself. :func:`embed_ray` cuts the cells to embed into shards of whole
:data:`~scatd_core.foundation._work.CHUNK_CELLS` chunks, runs the backbone module's own ``embed``
on each in a Ray task (the model loaded once per worker process), and assembles the rows in input
order into the ``obsm`` entry and the ``uns`` record :func:`~scatd_core.foundation.embed_cells`
writes: the same cells of the same matrix (X, or the raw counts beside a normalised X) in the same
batches, so the same numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import anndata as ad
import numpy as np

from scatd_core import _keys
from scatd_core.scaleout._files import matrix_in_file, stat_data_file
from scatd_core.scaleout._run import _ray, _require_backed, _run_pass, _workers, connect, release
from scatd_core.scaleout._shard import FAULTY_PREFIX, EmbedWorker, Job
from scatd_core.scaleout._store import ShardStore, parts_dir, shard_name

#: Chunks of :data:`~scatd_core.foundation._work.CHUNK_CELLS` cells per shard by default.
CHUNKS_PER_SHARD = 4


def embed_shards(todo: np.ndarray, shard_cells: int | None = None) -> list[tuple[int, int]]:
    """Row ranges ``[start, stop)`` of whole chunks (``shard_cells`` rounded up to a multiple of
    ``CHUNK_CELLS``) holding a cell to embed."""
    from scatd_core.foundation._work import CHUNK_CELLS

    n = todo.size
    size = CHUNK_CELLS * (CHUNKS_PER_SHARD if shard_cells is None else max(1, -(-int(shard_cells) // CHUNK_CELLS)))
    return [(a, min(a + size, n)) for a in range(0, n, size) if todo[a:a + size].any()]


def _value_report(adata: ad.AnnData) -> dict:
    """The value type the backbones read (the input report's, else detected on the whole data, as
    one process does), given to every shard."""
    from scatd_core.preprocess import detect_value_type

    report = adata.uns.get(_keys.INPUT_REPORT, {})
    if report.get("value_type"):
        return {"value_type": report["value_type"], "value_type_evidence": report.get("value_type_evidence") or {}}
    detected = detect_value_type(adata.X)
    return {"value_type": detected["kind"], "value_type_evidence": detected.get("evidence") or {}}


def embed_ray(adata: ad.AnnData, bundle, *, mask: np.ndarray | None = None, device: str = "auto",
              batch_tokens: int | None = None, output: str | Path | None = None, shard_cells: int | None = None,
              workers: int | None = None, address: str | None = None,
              progress: Callable[[float, str], None] | None = None,
              should_stop: Callable[[], bool] | None = None, **options) -> dict | None:
    """:func:`scatd_core.foundation.ensure_embeddings` with the backbone run on Ray.

    ``adata`` is a backed h5ad of expression; ``bundle`` a VAE_sf/VAE_gf drug model. Does nothing
    (returns ``None``) when the bundle needs no embeddings from these data, and returns the stored
    record when they are already there for these settings. Otherwise sets
    ``obsm['X_scfoundation' | 'X_geneformer']`` and ``uns['scatd_foundation'][backbone]`` as
    ``embed_cells`` does, with the same values: from the same matrix (X, or the raw counts in
    ``layers['counts']`` / ``layers['raw_counts']`` / ``adata.raw`` beside a normalised X, which the
    workers read from the file; :func:`~scatd_core.foundation._embed.counts_source`), recorded with
    the same note. With ``output``, each shard's embeddings are kept,
    checksummed, in ``<output>.embeddings.parts/`` (a run started again skips them).
    """
    from scatd_core.foundation._embed import (_identity, _options, cached, check_size, counts_source,
                                              needs_embedding, stored_without_backbone)

    if not needs_embedding(adata, bundle):
        return None
    _require_backed(adata)
    backbone = bundle.backbone
    if backbone == "vae_gf":
        options.setdefault("embedding_dim", bundle.architecture.input_dim)
    stored = stored_without_backbone(adata, bundle, mask=mask, **options)
    if stored is not None:  # the backbone is not installed here, and every cell has its embedding
        return stored
    check_size(bundle)
    options = _options(backbone, options)
    n = adata.n_obs
    wanted = np.ones(n, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    key = _keys.FOUNDATION_EMBEDDING[backbone]
    record = cached(adata, backbone, **options)
    tried = np.asarray(record["tried"], dtype=bool) if record is not None else np.zeros(n, dtype=bool)
    todo = wanted & ~tried
    if record is not None and not todo.any():
        return record
    t0 = time.perf_counter()
    identity = _identity(backbone, options)
    shards = embed_shards(todo, shard_cells)
    if not shards:  # nothing to embed (every cell masked out): as one process records it
        from scatd_core.foundation import embed_cells

        return embed_cells(adata, backbone, mask=mask, device=device, batch_tokens=batch_tokens, **options)
    environment = {k: v for k, v in os.environ.items() if k.startswith("SCATD_")}
    # the matrix one process gives the backbone: X, or the raw counts beside a normalised X
    source, given = counts_source(adata, backbone)
    matrix = matrix_in_file(adata, given["matrix"])
    job = Job(path=str(adata.filename), var=source.var.copy(), obsm_key=None,
              bundle_path=str(bundle.path), batch_size=1, log_normalise=False, device=device, matrix=matrix,
              embed={"backbone": backbone, "options": options, "todo": todo, "report": _value_report(source),
                     "batch_tokens": batch_tokens, "environment": environment})
    stat = stat_data_file(adata.filename)
    fp = {"input": str(Path(adata.filename).resolve()), "input_bytes": stat.st_size,
          "input_mtime_ns": stat.st_mtime_ns, "identity": json.dumps(identity, sort_keys=True),
          "todo_sha256": hashlib.sha256(np.packbits(todo).tobytes()).hexdigest(), "n_shards": len(shards), "device": device,
          "batch_tokens": batch_tokens or 0, "embedding": True, **({"matrix": matrix} if matrix else {})}
    tmp = tempfile.TemporaryDirectory(prefix="scatd-embed-") if output is None else None
    folder = Path(tmp.name) / "parts" if tmp is not None else parts_dir(f"{output}.embeddings")
    say = progress or (lambda f, m: None)
    try:
        related = () if output is None else (parts_dir(output), parts_dir(f"{output}.predictions"))
        store = ShardStore(folder, fp, related)
        left = [i for i in range(len(shards)) if not store.done(shard_name(i))]
        ray = _ray()
        started = connect(address)
        try:
            n_workers = _workers(ray, workers, device)
            _run_pass(ray, EmbedWorker, job, shards, left, n_workers, device,
                      lambda i, payload: store.save(shard_name(i), payload), "embeddings", len(shards) - len(left),
                      say, should_stop)
        finally:
            release(started)
        embeddings = np.array(adata.obsm[key], dtype=np.float32) if record is not None else None
        info, lengths, embedded, not_embedded = None, [], 0, {}
        faulty = {}  # as one process keeps them: the rows of the cells left out for NaN, infinite or negative values
        if record is not None:
            from scatd_core.foundation._embed import faulty_rows_of

            faulty = {reason: rows[~todo[rows]] for reason, rows in faulty_rows_of(record).items()}
        for i, (start, stop) in enumerate(shards):
            part = store.load(shard_name(i))
            for name in part:
                if name.startswith(FAULTY_PREFIX):
                    reason = name[len(FAULTY_PREFIX):]
                    faulty[reason] = np.union1d(faulty.get(reason, np.zeros(0, dtype=np.int64)),
                                                np.asarray(part[name], dtype=np.int64) + start)
            new = part["embedding"]
            if embeddings is None:
                embeddings = np.full((n, new.shape[1]), np.nan, dtype=np.float32)
            rows = np.flatnonzero(todo[start:stop]) + start
            embeddings[rows] = new[rows - start]
            shard_info = json.loads(str(part["info"]))
            info = info or shard_info
            lengths.append(part["lengths"])
            embedded += int(shard_info["n_embedded"])
            for reason, count in shard_info["not_embedded"].items():
                not_embedded[reason] = not_embedded.get(reason, 0) + int(count)
    finally:
        if tmp is not None:
            tmp.cleanup()
    all_lengths = np.concatenate(lengths) if lengths else np.zeros(0)
    median_key = "median_expressed_genes" if backbone == "vae_sf" else "median_tokens"
    info.update({"n_embedded": embedded, "not_embedded": not_embedded,
                 median_key: int(np.median(all_lengths)) if all_lengths.size else 0})
    seconds = float(record["seconds"]) if record is not None else 0.0
    from scatd_core.foundation._embed import require_some_finite, store_embeddings

    info["expression"] = given  # what the backbone was given, with the same note as one process
    from scatd_core.foundation._embed import probe

    # a model other than the published one: kept with the embeddings, as one process keeps it
    info["model_warnings"] = list(probe(backbone, embedding_dim=options.get("embedding_dim")).embedding_warnings)

    return require_some_finite(store_embeddings(adata, backbone, embeddings, info, identity, tried | todo, device,
                                                seconds + time.perf_counter() - t0, faulty=faulty), backbone)


def write_obsm(adata: ad.AnnData, key: str, folder: Path) -> str:
    """``adata.obsm[key]`` (computed here, not in the h5ad the workers read) into an HDF5 file in
    ``folder``, for the workers to read by row blocks; returns its path."""
    import h5py

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.h5"
    tmp = folder / f".{key}.h5.tmp"
    values = np.asarray(adata.obsm[key], dtype=np.float32)
    with h5py.File(tmp, "w") as f:
        f.create_dataset(key, data=values, chunks=(min(max(values.shape[0], 1), 8192), values.shape[1]))
    tmp.replace(path)
    return str(path)
