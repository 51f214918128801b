"""Scale-out: the same prediction over the shards of a large h5ad, on a Ray cluster.

``scatd predict --engine ray`` and the app (datasets above ``[scaleout] min_cells``, or whenever
an administrator set ``[scaleout] address``) run :func:`predict_ray`: the cells of a backed
h5ad are cut into shards of whole batches and :func:`scatd_core.predict.predict` runs on each
in Ray tasks, ``workers`` at a time (each worker process opens the file and loads the model
once per pass, and Ray keeps its processes from pass to pass, so only the first pass on a Ray
instance pays for starting them; on GPUs, one actor per GPU for the pass). Dataset statistics (AdaIN, per-gene z-scores) come from a first distributed
pass, merged in input order, so every number equals the single-process result. Each shard's
results are written checksummed to ``<output>.parts/`` as they arrive: a run started again
with the same output skips them, and a shard whose worker process was lost is run again on another.

:func:`explain_ray` does the same for biomarkers (``scatd explain --engine ray``): the explained
cells (the same stratified subsample as one process) are cut into shards, each task computes
their integrated gradients with the package's own attributor, and the driver merges the
per-call sums in input order, so ranking, cells table and stored keys equal ``explain``'s.
:func:`embed_ray` computes missing scFoundation / Geneformer embeddings the same way (shards of
whole chunks, the backbone loaded once per worker process, rows assembled in input order).

Ray (core; Ray Data is not needed) is an optional extra (``pip install 'scatd-studio[ray]'``);
nothing here imports it until a run starts.
"""

from scatd_core.scaleout._run import (MAX_RETRIES, EngineChoice, ScaleoutRun, connect, disconnect, engine_for,
                                      one_connection, predict_in_folder, predict_ray, ray_available, shards_of,
                                      stay_connected, write_h5ad)
from scatd_core.scaleout._embed import embed_ray, embed_shards
from scatd_core.scaleout._explain import explain_in_folder, explain_ray, explain_shards
from scatd_core.scaleout._store import ShardStore, parts_dir

__all__ = ["predict_ray", "embed_ray", "embed_shards", "explain_ray", "explain_in_folder", "explain_shards", "predict_in_folder", "engine_for", "EngineChoice", "write_h5ad", "ScaleoutRun", "ShardStore", "parts_dir", "shards_of", "connect",
           "disconnect", "one_connection", "stay_connected", "ray_available", "MAX_RETRIES"]
