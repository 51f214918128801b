"""Benchmark: integrated-gradients gene rankings with Dist_VAE at the published size (CPU).

Dist_VAE classifier at the published size (19,264 input genes, encoder 19264-1664-359, z 421,
head 210) with random weights in our layout (``build_model(Architecture.published(...))``).
Random initial batch-norm statistics make such a network's logits explode (~1e7), which no
trained model does, so the batch-norm running statistics (and spectral-norm vectors) are first
calibrated by forward passes in train mode over 2,000 simulated cells: the weights stay random,
the activations get the scale of a trained model. Genes are a synthetic list ``GENE00000`` ...,
the input transform is ``log1p_cp10k``.

Cells: sparse counts (CSR, ~1,500 expressed genes per cell, negative-binomial-like values).
Each configuration runs in its own subprocess: simulate, predict (threshold = median P so both
predicted groups exist), then :func:`scatd_core.explain.explain` with n_steps 50, the default
mean baseline and the Wilcoxon DE comparison, on all cells. Reported: seconds of predict, of the
integrated-gradients loop and of the whole ``explain`` call, and the peak RSS of the process.

    python benches/bench_explain.py                       # 1k and 10k cells (~15 min on 2 busy cores)
    python benches/bench_explain.py --cells 1000          # one size
    python benches/bench_explain.py --plain-cells 16      # also time captum on the whole model

``--plain-cells N`` also runs the plain form (``factorise=False``: captum on the whole model,
no first-layer factorisation) on N cells, to report the speed-up, and checks that both forms
agree. Prints a Markdown table; ``--write FILE`` also writes it with the command and machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import N_GENES, sparse_counts  # noqa: E402


def make_counts(n_cells: int, seed: int = 0, genes_per_cell: int = 1500):
    return sparse_counts(n_cells, N_GENES, genes_per_cell, seed, skewed=True)


def gene_names() -> list[str]:
    return [f"GENE{i:05d}" for i in range(N_GENES)]


def make_bundle(folder: Path) -> Path:
    import torch

    from scatd_core.bundle import save_bundle
    from scatd_core.nn import Architecture, build_model
    from scatd_core.preprocess import apply_input_transform

    torch.manual_seed(0)
    arch = Architecture.published("dist_vae", "classifier")
    model = build_model(arch)
    for m in model.modules():  # cumulative averages over the calibration batches
        if isinstance(m, torch.nn.BatchNorm1d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    x = make_counts(2000, seed=99)
    with torch.no_grad():
        for start in range(0, x.shape[0], 250):
            block = apply_input_transform(x[start:start + 250].toarray(), "log1p_cp10k")
            model(torch.from_numpy(block))
    model.eval()
    out = folder / "dist_vae_published"
    save_bundle(out, model.state_dict(), arch, drug="BENCH", genes=gene_names(), input_transform="log1p_cp10k",
                threshold=0.5, provenance={"source": "benchmark (random weights, calibrated batch norm)"})
    return out


def run_one(bundle_path: str, n_cells: int, n_steps: int, plain_cells: int) -> dict:
    import resource

    import anndata as ad
    import pandas as pd
    import torch

    from scatd_core.bundle import load_bundle
    from scatd_core.explain import explain
    from scatd_core.predict import predict

    bundle = load_bundle(bundle_path)
    adata = ad.AnnData(make_counts(n_cells, seed=n_cells), obs=pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)]),
                       var=pd.DataFrame(index=gene_names()))
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    predict(adata, bundle, device="cpu")
    predict(adata, bundle, device="cpu", threshold=float(np.median(adata.obs["scatd_prob_resistant"])))
    predict_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    explain(adata[:20].copy(), bundle, n_steps=4, device="cpu")  # once per process: scanpy's numba kernels
    warm_up_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    e = explain(adata, bundle, n_steps=n_steps, device="cpu")
    explain_s = time.perf_counter() - t0
    ig_s = e.info["seconds"]["integrated_gradients"]
    out = {
        "cells": n_cells, "n_steps": n_steps, "threads": torch.get_num_threads(),
        "predict_s": round(predict_s, 1), "first_call_warm_up_s": round(warm_up_s, 1), "ig_s": ig_s,
        "explain_s": round(explain_s, 1), "ms_per_cell_ig": round(1000 * ig_s / n_cells, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "rss_after_data_mb": round(rss_data),
        "completeness_median": e.info["completeness"]["median_relative_error"],
        "completeness_max": e.info["completeness"]["max_relative_error"],
        "internal_batch_size": e.info["internal_batch_size"],
        "de": e.info["differential_expression"]["method"] != "none",
    }
    if plain_cells:
        sub = adata[:plain_cells].copy()
        kw = dict(n_steps=n_steps, device="cpu", keep_top=None, differential_expression=False, baseline="zero")
        fast = explain(sub, bundle, **kw)
        plain = explain(sub, bundle, factorise=False, **kw)
        scale = float(np.abs(plain.attributions).max())
        same_order = [plain.features.index(f) for f in fast.features]  # near-ties may rank differently
        difference = np.abs(fast.attributions - plain.attributions[:, same_order]).max()
        out.update(plain_cells=plain_cells,
                   plain_ms_per_cell=round(1000 * plain.info["seconds"]["integrated_gradients"] / plain_cells, 1),
                   factorised_ms_per_cell_same_cells=round(
                       1000 * fast.info["seconds"]["integrated_gradients"] / plain_cells, 1),
                   max_abs_difference_over_max_attr=float(difference / scale))
    return out


def _load() -> str:
    try:
        return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the start"
    except OSError:
        return ""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cells", type=int, nargs="*", default=[1000, 10000])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--plain-cells", type=int, default=0)
    p.add_argument("--write", help="also write the Markdown results to this file")
    p.add_argument("--child", nargs=4, metavar=("BUNDLE", "CELLS", "STEPS", "PLAIN"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        b, n, s, pc = args.child
        print(json.dumps(run_one(b, int(n), int(s), int(pc))))
        return 0
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {_load()}"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bundle = make_bundle(Path(tmp))
        for i, n in enumerate(args.cells):
            plain = args.plain_cells if i == 0 else 0
            child = [sys.executable, __file__, "--child", str(bundle), str(n), str(args.steps), str(plain)]
            proc = subprocess.run(child, capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return proc.returncode
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    lines = ["| cells | n_steps | predict s | IG loop s | explain s (IG + DE + I/O) | ms/cell (IG) | peak RSS MB "
             "| completeness median / max |",
             "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['cells']:,} | {r['n_steps']} | {r['predict_s']} | {r['ig_s']:.1f} | {r['explain_s']} | "
                     f"{r['ms_per_cell_ig']} | {r['peak_rss_mb']:,} | {r['completeness_median']:.1e} / "
                     f"{r['completeness_max']:.1e} |")
    plain = [r for r in rows if "plain_cells" in r]
    for r in plain:
        lines.append("")
        lines.append(f"Plain captum on the whole model (`factorise=False`), {r['plain_cells']} cells: "
                     f"{r['plain_ms_per_cell']} ms/cell vs {r['factorised_ms_per_cell_same_cells']} ms/cell factorised "
                     f"(max |difference| / max |attribution| = {r['max_abs_difference_over_max_attr']:.1e}).")
    text = "\n".join(lines)
    print(text)
    if args.write:
        cmd = "python benches/bench_explain.py " + " ".join(argv if argv is not None else sys.argv[1:])
        Path(args.write).write_text(f"Command: `{cmd.strip()}`\n\nMachine: {machine}; torch threads "
                                    f"{rows[0]['threads']}.\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
