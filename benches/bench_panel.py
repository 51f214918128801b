"""Benchmark: one panel run against N Dist_VAE models vs N separate runs (CPU).

N Dist_VAE drug models of the size ``scatd train`` / ``scatd train-panel`` produce (encoder
genes-256-128, z 64, ``standardize`` transform: per-gene z-scores over the dataset, which need a
statistics pass over the data), all on the same 19,264 genes, random weights; cells with ~1,500
expressed genes (negative-binomial-like counts) in a sparse h5ad.

- **separate**: N times what ``scatd predict --model X`` does: read the h5ad, build the model
  input (alignment + statistics pass), one batch pass;
- **panel**: what ``scatd predict --model A --model B ...`` does: read once, one alignment and
  statistics pass for the group of models sharing genes, one batch pass per model
  (:func:`scatd_core.panel.predict_panel`);
- **single**: one separate run, for the time per model.

All in one process, one after the other (same load, same warm caches for torch). Prints a
Markdown table to paste into benches/README.md.

    nice -n 5 python benches/bench_panel.py                     # 10,000 cells x 10 models
    python benches/bench_panel.py --cells 2000 --models 3       # quick
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for scatd_core
from _common import N_GENES, sparse_counts  # noqa: E402


def make_bundles(folder: Path, n_models: int, n_genes: int) -> list[Path]:
    import torch

    from scatd_core.bundle import save_bundle
    from scatd_core.nn import Architecture, build_model

    genes = [f"GENE{i:05d}" for i in range(n_genes)]
    out = []
    for k in range(n_models):
        torch.manual_seed(k)
        arch = Architecture("dist_vae", [n_genes, 256, 128], 64, None, 64, 2)
        model = build_model(arch)
        out.append(save_bundle(folder / f"drug{k}", model.state_dict(), arch, drug=f"DRUG{k}", genes=genes,
                               input_transform="standardize", threshold=0.5,
                               provenance={"source": "benchmark (random weights)"}).path)
    return out


def make_h5ad(path: Path, n_cells: int, n_genes: int) -> None:
    import anndata as ad
    import pandas as pd

    x = sparse_counts(n_cells, n_genes, seed=0, chunk=5000)
    ad.AnnData(x, obs=pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)]),
               var=pd.DataFrame(index=[f"GENE{i:05d}" for i in range(n_genes)])).write_h5ad(path)


def separate(h5ad: Path, bundle) -> tuple[float, object]:
    from scatd_core import io
    from scatd_core.predict import predict

    t0 = time.perf_counter()
    adata = io.read(h5ad)
    predict(adata, bundle, device="cpu")
    return time.perf_counter() - t0, adata


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=10_000)
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--genes", type=int, default=N_GENES)
    args = parser.parse_args()

    import numpy as np
    import torch

    from scatd_core import io
    from scatd_core.bundle import load_bundle
    from scatd_core.panel import predict_panel

    with tempfile.TemporaryDirectory(prefix="scatd-bench-panel-") as tmp:
        tmp = Path(tmp)
        os.environ["SCATD_HOME"] = str(tmp / "home")
        h5ad = tmp / "cells.h5ad"
        make_h5ad(h5ad, args.cells, args.genes)
        bundles = [load_bundle(p) for p in make_bundles(tmp / "lib", args.models, args.genes)]
        for b in bundles:
            b.load_model("cpu")  # weights read once, as the app's cache does, for both ways alike
        separate(h5ad, bundles[0])  # warm-up (imports, first allocations); not counted

        times, singles = [], []
        for b in bundles:
            seconds, single = separate(h5ad, b)
            times.append(seconds)
            singles.append(single.obs["scatd_prob_resistant"].to_numpy())
        t_separate = sum(times)

        t0 = time.perf_counter()
        adata = io.read(h5ad)
        t_read = time.perf_counter() - t0
        members = predict_panel(adata, bundles, device="cpu")
        t_panel = time.perf_counter() - t0
        for m, p in zip(members, singles):  # the panel gives exactly the separate runs' numbers
            assert m.scored and np.array_equal(adata.obs[f"{m.key}_prob_resistant"].to_numpy(), p)
        info = adata.uns["scatd_panel"]
        per_model = [m.seconds for m in members]

    single = float(np.median(times))
    load = os.getloadavg()[0]
    print(f"\n{args.cells:,} cells x {args.genes:,} genes, {args.models} Dist_VAE models "
          f"({args.genes}-256-128, z 64, standardize); torch threads {torch.get_num_threads()}; "
          f"load average (1 min) at the end {load:.1f}\n")
    print("| run | seconds | per model (s) | vs one separate run |")
    print("|---|---:|---:|---:|")
    print(f"| one separate run (median of {args.models}) | {single:.1f} | {single:.1f} | 1.00 |")
    print(f"| {args.models} separate runs | {t_separate:.1f} | {t_separate / args.models:.1f} | "
          f"{t_separate / single:.2f} |")
    print(f"| panel of {args.models} (read {t_read:.1f} s + align/statistics {info['align_seconds']:.1f} s once) | "
          f"{t_panel:.1f} | {np.mean(per_model):.1f} (first {per_model[0]:.1f}, others "
          f"{np.mean(per_model[1:]):.1f}) | {t_panel / single:.2f} |")
    print(f"\npanel / separate = {t_panel / t_separate:.2f}; every panel column equals its separate run exactly.")


if __name__ == "__main__":
    main()
