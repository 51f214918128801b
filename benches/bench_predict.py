"""Benchmark: Dist_VAE prediction at the published size against the dense-GEMM limit (CPU).

The Dist_VAE classifier at the published size (19,264 input genes, encoder 19264-1664-359, z 421;
random weights, calibrated batch norm: ``_common.make_bundle``) predicts cells with ~1,500
expressed genes each (8 % non-zero, negative-binomial-like counts) from a sparse h5ad, read
into memory or backed (X stays on disk). Each configuration runs in its own subprocess, so the
peak RSS is that of one run.

The limit is measured in the same process, interleaved with the prediction (one GEMM after
every batch, or after every k-th batch spread over the run when there are more than 16
batches, from predict's progress callback, its time taken off the prediction's): a bare
torch matmul of the first layer, ``(batch x 19,264) @ (19,264 x 2 x 1,664)``, with the model's
own weights, at the prediction's batch size, so a busy machine slows both alike. ``ratio`` =
the limit's seconds for all cells / predict's seconds: 1.0 means the
whole prediction (reading, transform, the whole network) ran as fast as the first layer's
dense GEMM alone; above 1.0 the sparse first layer beats it. Each configuration also runs
with the sparse path off (``path dense``: every batch made dense for the GEMM).

    python benches/bench_predict.py                              # 10k and 100k cells, memory and backed
    python benches/bench_predict.py --cells 10000 --storage backed --paths auto
    python benches/bench_predict.py --densities                  # sparse vs dense first layer by density

``--densities`` times the first layer alone at 1,024 cells for a range of densities (sparse
product vs GEMM, same process), which is how ``scatd_core.inputs.SPARSE_MAX_DENSITY`` was set.
Prints Markdown tables for benches/README.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import N_GENES, gene_names, load_average, make_bundle, peak_rss_mb, rss_mb, sparse_counts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 2 * 1664  # the first layer: fc and shortcut, fused
#: GEMMs timed per run at most: after every batch up to this many batches, else after every k-th
#: batch, spread over the run (at 100k cells, timing one after each of the 98 batches would
#: double the benchmark's time for no better estimate).
MAX_GEMM_SAMPLES = 16


class GemmLimit:
    """The dense-GEMM limit of the first layer, timed in the same process: after every batch of
    the prediction (from its progress callback), one bare ``x @ weight_t`` at the batch size,
    with the model's own fused first-layer weights (19,264 x 2 x 1,664). Interleaving follows
    the machine's load through the run; the callback's time is taken off the prediction's."""

    def __init__(self, weight_t, batch_size: int, every: int = 1):
        import torch

        self.x = torch.rand(batch_size, weight_t.shape[0])
        self.w = weight_t
        self.batch_size = batch_size
        self.every = max(1, int(every))  # one GEMM after every ``every``-th batch
        self.seconds: list[float] = []  # one GEMM per sampled batch
        self.rows: list[int] = []  # that batch's cells
        self.all_rows = 0
        self.in_callback = 0.0
        self.done = 0
        self.calls = 0
        self.rss: list[float] = []

    def __call__(self, fraction: float, message: str, n_obs: int) -> None:
        import torch

        t_in = time.perf_counter()
        stop = round(fraction * n_obs)
        rows, self.done = stop - self.done, stop
        self.all_rows += rows
        if self.calls % self.every == 0:
            self.rows.append(rows)
            with torch.inference_mode():
                t0 = time.perf_counter()
                torch.mm(self.x, self.w)
                self.seconds.append(time.perf_counter() - t0)
        self.calls += 1
        self.rss.append(rss_mb())
        self.in_callback += time.perf_counter() - t_in

    @property
    def limit_seconds(self) -> float:
        """The GEMM's seconds for every predicted cell: each sampled batch's GEMM scaled to its
        rows, the sum scaled from the sampled batches' cells to all cells (exact when every
        batch is sampled)."""
        sampled = sum(s * r / self.batch_size for s, r in zip(self.seconds, self.rows))
        return sampled * self.all_rows / max(1, sum(self.rows))


def make_h5ad(path: Path, n_cells: int, seed: int = 0) -> None:
    import anndata as ad
    import pandas as pd

    x = sparse_counts(n_cells, N_GENES, 1500, seed, chunk=5000)
    obs = pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)])
    ad.AnnData(x, obs=obs, var=pd.DataFrame(index=gene_names())).write_h5ad(path)


def run_one(bundle_path: str, h5ad: str, storage: str, path: str, batch_size: int) -> dict:
    import anndata as ad
    import torch

    from scatd_core import inputs as inputs_module
    from scatd_core.bundle import load_bundle
    from scatd_core.nn.sparse import warm_up
    from scatd_core.predict import estimate_seconds, predict

    if path == "dense":
        inputs_module.SPARSE_MAX_DENSITY = 0.0  # every batch dense: the GEMM path only
    bundle = load_bundle(bundle_path)
    weight_t = bundle.load_model("cpu").first_layer_weights()[0]  # loading the model is not prediction
    warm_up()
    rss_before = rss_mb()
    t0 = time.perf_counter()
    adata = ad.read_h5ad(h5ad, backed="r" if storage == "backed" else None)
    read_s = time.perf_counter() - t0
    n = adata.n_obs
    # at most MAX_GEMM_SAMPLES GEMMs, spread over the run (every batch up to that many batches)
    limit = GemmLimit(weight_t, batch_size, every=-(-(-(-n // batch_size)) // MAX_GEMM_SAMPLES))
    t0 = time.perf_counter()
    predict(adata, bundle, device="cpu", batch_size=batch_size, progress=lambda f, m: limit(f, m, n))
    seconds = time.perf_counter() - t0 - limit.in_callback
    assert adata.obs["scatd_scored"].all()
    limit_s = limit.limit_seconds
    settled = limit.rss[len(limit.rss) // 10:]  # after the first batches' one-time allocations
    return {
        "cells": n, "storage": storage, "path": path, "batch_size": batch_size, "threads": torch.get_num_threads(),
        "read_s": round(read_s, 2), "predict_s": round(seconds, 2), "cells_per_s": round(n / seconds),
        "limit_s": round(limit_s, 2), "limit_cells_per_s": round(n / limit_s), "ratio": round(limit_s / seconds, 3),
        "gemm_s_spread": [round(min(limit.seconds), 3), round(max(limit.seconds), 3)],
        "gemm_samples": len(limit.seconds),
        "estimate_s": round(estimate_seconds(bundle, n, device="cpu", density=1500 / N_GENES), 2)
        if path == "auto" else None,
        "rss_before_mb": round(rss_before), "peak_rss_mb": round(peak_rss_mb()),
        "rss_growth_in_loop_mb": round(max(settled) - min(settled)) if settled else 0,
        "precision": adata.uns["scatd"]["params"]["precision"], "load": load_average(),
    }


def densities(batch_size: int = 1024, reps: int = 3) -> list[dict]:
    """First layer alone: sparse product vs dense GEMM by density, interleaved in one process."""
    import numpy as np
    import scipy.sparse as sp
    import torch

    from scatd_core.nn.sparse import batch_tensor, sparse_linear, warm_up

    warm_up()
    rng = np.random.default_rng(0)
    w = torch.randn(N_GENES, WIDTH) * 0.01
    b = torch.zeros(WIDTH)
    rows = []
    for d in (0.02, 0.04, 0.08, 0.16, 0.24, 0.32, 0.48):
        x = sp.random(batch_size, N_GENES, density=d, format="csr", dtype=np.float32, random_state=rng)
        xs, xd = batch_tensor(x, torch.device("cpu")), torch.from_numpy(x.toarray())
        ts, td = [], []
        with torch.inference_mode():
            for _ in range(reps):
                t0 = time.perf_counter()
                sparse_linear(batch_tensor(x, torch.device("cpu")), w, b)  # includes CSR -> CSC
                ts.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                torch.addmm(b, xd, w)
                td.append(time.perf_counter() - t0)
        del xs
        rows.append({"density": d, "sparse_s": round(statistics.median(ts), 3), "dense_s": round(statistics.median(td), 3),
                     "dense_over_sparse": round(statistics.median(td) / statistics.median(ts), 2)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--storage", nargs="*", default=["memory", "backed"], choices=["memory", "backed"])
    parser.add_argument("--paths", nargs="*", default=["auto", "dense"], choices=["auto", "dense"],
                        help="auto: the sparse first layer where batches are sparse enough; dense: GEMM only")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--densities", action="store_true", help="only the sparse-vs-dense first-layer table")
    parser.add_argument("--_child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        print(json.dumps(run_one(*args._child, args.batch_size)))
        return 0
    print(f"Machine: {platform.machine()}, {load_average()} at the start", flush=True)
    if args.densities:
        rows = densities(args.batch_size)
        print("| density | sparse product s | dense GEMM s | GEMM / sparse |")
        print("|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['density']:.0%} | {r['sparse_s']} | {r['dense_s']} | {r['dense_over_sparse']} |")
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = make_bundle(tmp).path
        for n in args.cells:
            h5ad = tmp / f"cells_{n}.h5ad"
            make_h5ad(h5ad, n)
            for storage in args.storage:
                for path in args.paths:
                    child = [sys.executable, __file__, "--batch-size", str(args.batch_size), "--_child", str(bundle),
                             str(h5ad), storage, path]
                    proc = subprocess.run(child, capture_output=True, text=True, cwd=ROOT)
                    if proc.returncode != 0:
                        print(proc.stderr, file=sys.stderr)
                        return proc.returncode
                    res = json.loads(proc.stdout.strip().splitlines()[-1])
                    res["file_mb"] = round(h5ad.stat().st_size / 2**20)
                    rows.append(res)
                    print(json.dumps(res), file=sys.stderr, flush=True)
            h5ad.unlink()
    print("| cells | X | first layer | predict s | cells/s | GEMM-limit cells/s | ratio to limit | estimate s "
          "| peak RSS MB | RSS growth in loop MB | load |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        first = "sparse where ≤ density limit" if r["path"] == "auto" else "dense GEMM only"
        est = "" if r["estimate_s"] is None else r["estimate_s"]
        print(f"| {r['cells']:,} | {'backed' if r['storage'] == 'backed' else 'in memory'} | {first} | {r['predict_s']} "
              f"| {r['cells_per_s']:,} | {r['limit_cells_per_s']:,} | **{r['ratio']:.2f}** | {est} | "
              f"{r['peak_rss_mb']:,} | {r['rss_growth_in_loop_mb']} | {r['load'].split(' on')[0]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
