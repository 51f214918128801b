"""Benchmark: Dist_VAE inference at the published size on sparse h5ad inputs (CPU).

Dist_VAE classifier at the published size (19,264 input genes, encoder 19264-1664-359,
z 421, random weights in the original layout), cells with ~1,500 expressed genes each
(negative-binomial-like counts) written to a sparse (CSR) h5ad. Each configuration runs in its
own subprocess, which reads the h5ad backed (X stays on disk) and predicts in batches, so the
peak RSS reported is that of one prediction run alone.

    python benches/bench_predict.py                 # 1k, 10k, 50k cells
    python benches/bench_predict.py --cells 1000    # one size

Prints a Markdown table (cells, seconds, cells/s, peak RSS) to paste into benches/README.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import sparse_counts  # noqa: E402


def make_bundle(folder: Path) -> Path:
    import torch

    from scatd_core.bundle import save_bundle
    from scatd_core.nn import Architecture, build_model

    torch.manual_seed(0)
    arch = Architecture.published("dist_vae", "classifier")
    model = build_model(arch)
    genes = [f"GENE{i:05d}" for i in range(arch.input_dim)]
    out = folder / "dist_vae_published"
    save_bundle(out, model.state_dict(), arch, drug="BENCH", genes=genes, input_transform="log1p_cp10k",
                provenance={"source": "benchmark (random weights)"})
    return out


def make_h5ad(path: Path, n_cells: int, n_genes: int = 19264, genes_per_cell: int = 1500, seed: int = 0) -> None:
    import anndata as ad
    import pandas as pd

    x = sparse_counts(n_cells, n_genes, genes_per_cell, seed, chunk=5000)
    obs = pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)])
    var = pd.DataFrame(index=[f"GENE{i:05d}" for i in range(n_genes)])
    ad.AnnData(x, obs=obs, var=var).write_h5ad(path)


def run_one(bundle: str, h5ad: str, batch_size: int) -> dict:
    import anndata as ad
    import torch

    from scatd_core.bundle import load_bundle
    from scatd_core.predict import predict

    bundle_obj = load_bundle(bundle)
    t0 = time.perf_counter()
    adata = ad.read_h5ad(h5ad, backed="r")
    predict(adata, bundle_obj, device="cpu", batch_size=batch_size)
    seconds = time.perf_counter() - t0
    assert adata.obs["scatd_scored"].all()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"cells": adata.n_obs, "seconds": seconds, "cells_per_s": adata.n_obs / seconds,
            "peak_rss_mb": peak_kb / 1024, "threads": torch.get_num_threads(), "batch_size": batch_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="*", default=[1000, 10000, 50000])
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        print(json.dumps(run_one(args._child[0], args._child[1], args.batch_size)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = make_bundle(tmp)
        rows = []
        for n in args.cells:
            h5ad = tmp / f"cells_{n}.h5ad"
            make_h5ad(h5ad, n)
            out = subprocess.run([sys.executable, __file__, "--batch-size", str(args.batch_size),
                                  "--_child", str(bundle), str(h5ad)], capture_output=True, text=True, check=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            res["file_mb"] = h5ad.stat().st_size / 2**20
            rows.append(res)
            print(json.dumps(res), file=sys.stderr, flush=True)
            h5ad.unlink()
    print("| cells | h5ad size (MB) | seconds | cells/s | peak RSS (MB) | torch threads | batch |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['cells']:,} | {r['file_mb']:.0f} | {r['seconds']:.1f} | {r['cells_per_s']:.0f} | "
              f"{r['peak_rss_mb']:.0f} | {r['threads']} | {r['batch_size']} |")


if __name__ == "__main__":
    main()
