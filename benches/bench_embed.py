"""Benchmark: UMAP and Leiden clusters of the latent space, 10k and 100k cells (CPU).

The input is a latent space like predict's ``obsm['X_scatd']`` (421 dimensions): a seeded
mixture of 12 Gaussian clusters with unit noise, so the timing does not depend on a model.
Each size runs in its own subprocess: ``scatd_core.embed.warm_up()`` first (numba kernels,
loaded from numba's on-disk cache after the first run on a machine; timed apart), then
``scatd_core.embed.embed`` with its defaults (PCA to 50 components, exact neighbours, UMAP
fitted on every cell up to 30,000 cells and on a random 30,000 above, the rest placed as
umap-learn's transform places them; the layout optimised in 8 groups of cells on every core,
``scatd_core._layout``; Leiden clusters). Reported: seconds per step, total, the CPU seconds
the process used for it (all threads; what the run costs whatever else the machine runs),
peak RSS.

    python benches/bench_embed.py                  # 10k and 100k cells
    python benches/bench_embed.py --cells 100000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_seconds, load_average, peak_rss_mb  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run_one(n: int) -> dict:
    import anndata as ad
    import numpy as np

    from scatd_core import embed

    t0 = time.perf_counter()
    embed.warm_up()
    warm = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(12, 421)) * 3
    latent = (centres[rng.integers(0, 12, n)] + rng.normal(size=(n, 421))).astype(np.float32)
    adata = ad.AnnData(np.zeros((n, 1), dtype=np.float32), obsm={"X_scatd": latent})
    steps, last = {}, [time.perf_counter(), "start"]

    def progress(fraction: float, message: str) -> None:
        now = time.perf_counter()
        step = last[1].split(":")[0]  # the layout's progress reports ("...: 40% of the layout") are one step
        steps[step] = round(steps.get(step, 0.0) + now - last[0], 1)
        last[:] = [now, message]

    t0, c0 = time.perf_counter(), cpu_seconds()
    embed.embed(adata, progress=progress)
    total, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    info = adata.uns["scatd_embed"]
    return {"cells": n, "warm_up_s": round(warm, 1), "embed_s": round(total, 1), "embed_cpu_s": round(cpu, 1), "steps_s": steps,
            "fit": info["fit"], "n_clusters": info["n_clusters"], "peak_rss_mb": round(peak_rss_mb()),
            "load": load_average()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--_child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        print(json.dumps(run_one(args._child)))
        return 0
    rows = []
    for n in args.cells:
        proc = subprocess.run([sys.executable, __file__, "--_child", str(n)], capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print("| cells | fitted on | UMAP + clusters s | CPU s (all threads) | steps s | first-call warm-up s | peak RSS MB "
          "| load |")
    print("|---:|---:|---:|---:|---|---:|---:|---|")
    for r in rows:
        steps = "; ".join(f"{k}: {v}" for k, v in r["steps_s"].items() if k != "start")
        print(f"| {r['cells']:,} | {r['fit']['n_fitted']:,} | **{r['embed_s']}** | {r['embed_cpu_s']} | {steps} | {r['warm_up_s']} | "
              f"{r['peak_rss_mb']:,} | {r['load'].split(' on')[0]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
