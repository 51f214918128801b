"""Benchmark: integrated-gradients gene rankings with Dist_VAE at the published size, in predict passes (CPU).

The Dist_VAE classifier at the published size (19,264 input genes, encoder 19264-1664-359, z 421,
head 210; random weights, batch norm calibrated on simulated cells: ``_common.make_bundle``),
sparse counts with ~1,500 expressed genes per cell (skewed gene popularity), ``log1p_cp10k``.
Each size runs in its own subprocess: predict (default path: the sparse first layer where the
batches are sparse enough), the threshold set to the median P so both predicted groups exist,
then :func:`scatd_core.explain.explain` with n_steps 50, the default mean baseline and the
Wilcoxon DE comparison, on **all** cells, the prediction's ModelInput passed as the app does.

``passes`` = explain's seconds / predict's seconds, both measured in the same process.
``estimate s`` is :func:`scatd_core.explain.estimate` (the Biomarkers page's expected time) for the
same cells, computed before the run; ``explain's own peak MB`` is the process's resident memory
at its highest during explain less what it held before (the peak is reset just before), next to
the estimate's memory in brackets.
``dense passes`` divides by a prediction with the sparse path off (every batch dense, the GEMM
path), the unit the issue's "today ~11 passes" was measured in.

    python benches/bench_explain.py                       # 1k and 10k cells
    python benches/bench_explain.py --cells 10000         # one size
    python benches/bench_explain.py --plain-cells 16      # also time captum on the whole model
    python benches/bench_explain.py --cells 10000 --parts # and where the explanation's time goes

``--parts`` also times the parts of the explanation of the largest size (each function's wall
seconds, summed over its calls, in the same run): the first layer, the steps forward and
backward, the map back, the ranking's sums, staging, the DE test.

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
from _common import N_GENES, gene_names, load_average, make_bundle, peak_rss_mb, rss_mb, sparse_counts  # noqa: E402


def make_counts(n_cells: int, seed: int = 0, genes_per_cell: int = 1500):
    return sparse_counts(n_cells, N_GENES, genes_per_cell, seed, skewed=True)


def arithmetic(model, x, n_steps: int) -> dict:
    """The multiply-adds of the attribution as computed (merged maps, by hand:
    ``scatd_core.explain._path``), per part, and the seconds they take at the GEMM rate measured
    here on the same shapes: the floor of this computation on this machine."""
    import time

    import torch

    from scatd_core.explain._path import _merged

    weight_t, _, m0 = model.first_layer_weights()
    merged = _merged(model, "logit", 1)
    n_in = weight_t.shape[0]
    width_next = merged["next_weight_t"].shape[1]
    hidden, head = merged["a"].shape[1], merged["a"].shape[0]
    gemms = {  # (rows per cell, inner, outer, times per cell): forward and backward per step
        "steps": [(n_steps, m0, width_next, 2), (n_steps, hidden, head, 2)],
        "map back": [(1, m0, n_in, 1), (1, width_next, n_in, 1)],
    }
    nnz = x.nnz / x.shape[0]
    out = {"first layer (sparse)": 2 * nnz * 2 * m0}
    rate_s = {}
    for part, shapes in gemms.items():
        flops, seconds = 0.0, 0.0
        for rows, k, n, times in shapes:
            m = rows * (1024 // rows if rows > 1 else 256)
            a, b = torch.randn(m, k), torch.randn(k, n)
            torch.mm(a, b)
            t0 = time.perf_counter()
            for _ in range(3):
                torch.mm(a, b)
            dt = (time.perf_counter() - t0) / 3
            flops += 2 * rows * k * n * times
            seconds += dt / m * rows * times
        out[part] = flops
        rate_s[part] = seconds
    return {"flops_per_cell": {k: round(v / 1e6, 1) for k, v in out.items()},
            "floor_ms_per_cell": round(1000 * sum(rate_s.values()), 3),
            "gemm_gflops": round(sum(out[k] for k in gemms) / sum(rate_s.values()) / 1e9, 1)}


#: (module, attribute path, label) of the functions whose seconds ``--parts`` reports.
PARTS = (
    ("scatd_core.explain._attribution", "Attributor.first_layer", "first layer (sparse, per batch)"),
    ("scatd_core.explain._path", "_Member.forward", "steps forward"),
    ("scatd_core.explain._path", "_Member.backward", "steps backward"),
    ("scatd_core.explain._path", "PathGradient.input_gradient", "path gradient (steps + map back)"),
    ("scatd_core.explain._sums", "column_sums", "ranking sums (one pass)"),
    ("scatd_core.explain._explain", "_Sums.partial", "per-call results (sums + half-precision staging)"),
    ("scatd_core.explain._explain", "_Sums.merge", "merging calls (staged rows)"),
    ("scatd_core.explain._explain", "_de_columns", "DE test and group means"),
)


def time_parts() -> dict:
    """Wrap :data:`PARTS` with timers; returns the dict their seconds accumulate in."""
    import functools
    import importlib

    seconds = {label: 0.0 for _, _, label in PARTS}
    for module_name, path, label in PARTS:
        owner = importlib.import_module(module_name)
        *outer, name = path.split(".")
        for part in outer:
            owner = getattr(owner, part)
        original = getattr(owner, name)
        is_static = isinstance(owner.__dict__.get(name), staticmethod)

        def timed(*args, _f=original, _label=label, **kwargs):
            t0 = time.perf_counter()
            try:
                return _f(*args, **kwargs)
            finally:
                seconds[_label] += time.perf_counter() - t0

        functools.update_wrapper(timed, original)
        setattr(owner, name, staticmethod(timed) if is_static else timed)
    # _explain imported column_sums by name: it calls the timed one too
    importlib.import_module("scatd_core.explain._explain").column_sums = \
        importlib.import_module("scatd_core.explain._sums").column_sums
    return seconds


def run_one(bundle_path: str, n_cells: int, n_steps: int, plain_cells: int, parts: bool = False) -> dict:
    import anndata as ad
    import pandas as pd
    import torch

    from scatd_core import inputs as inputs_module
    from scatd_core.bundle import load_bundle
    from scatd_core._matrix import stored_fraction
    from scatd_core.explain import estimate, explain
    from scatd_core.inputs import ModelInput
    from scatd_core.nn.sparse import warm_up
    from scatd_core.predict import predict, set_threshold

    bundle = load_bundle(bundle_path)
    bundle.load_model("cpu").first_layer_weights()
    warm_up()
    adata = ad.AnnData(make_counts(n_cells, seed=n_cells), obs=pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)]),
                       var=pd.DataFrame(index=gene_names()))
    t0 = time.perf_counter()
    small = predict(adata[:40].copy(), bundle, device="cpu", copy=True)
    set_threshold(small, float(np.median(small.obs["scatd_prob_resistant"])), "user")
    explain(small, bundle, n_steps=4, device="cpu")  # once per process: scanpy's numba kernels, imports
    warm_up_s = time.perf_counter() - t0
    inputs = ModelInput(adata, bundle, batch_size=1024)
    t0 = time.perf_counter()
    predict(adata, bundle, inputs=inputs, device="cpu")
    predict_s = time.perf_counter() - t0
    set_threshold(adata, float(np.median(adata.obs["scatd_prob_resistant"])), "user")
    part_seconds = time_parts() if parts else None
    est = estimate(bundle, n_cells, n_steps=n_steps, density=stored_fraction(adata.X), device="cpu")
    before_mb = rss_mb()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here: explain's own peak
    t0 = time.perf_counter()
    e = explain(adata, bundle, inputs=inputs, n_steps=n_steps, device="cpu")
    explain_s = time.perf_counter() - t0
    explain_extra_mb = peak_rss_mb() - before_mb
    limit = inputs_module.SPARSE_MAX_DENSITY
    inputs_module.SPARSE_MAX_DENSITY = 0.0  # every batch dense: the GEMM path
    t0 = time.perf_counter()
    predict(adata.copy(), bundle, device="cpu")
    dense_predict_s = time.perf_counter() - t0
    inputs_module.SPARSE_MAX_DENSITY = limit
    seconds = e.info["seconds"]
    floor = arithmetic(bundle.load_model("cpu"), adata.X, n_steps)
    out = {
        "cells": n_cells, "n_steps": n_steps, "threads": torch.get_num_threads(),
        "predict_s": round(predict_s, 1), "dense_predict_s": round(dense_predict_s, 1),
        "explain_s": round(explain_s, 1), "estimate_s": round(est["seconds"], 1),
        "explain_extra_mb": round(explain_extra_mb), "estimate_mb": round(est["bytes"] / 2**20),
        "ig_s": seconds["integrated_gradients"],
        "de_s": seconds["differential_expression"], "passes": round(explain_s / predict_s, 2),
        "dense_passes": round(explain_s / dense_predict_s, 2), "first_call_warm_up_s": round(warm_up_s, 1),
        "ms_per_cell_ig": round(1000 * seconds["integrated_gradients"] / n_cells, 1),
        "peak_rss_mb": round(max(peak_rss_mb(), before_mb)),
        "completeness_median": e.info["completeness"]["median_relative_error"],
        "completeness_max": e.info["completeness"]["max_relative_error"],
        "internal_batch_size": e.info["internal_batch_size"], "load": load_average(),
        "de": e.info["differential_expression"]["method"] != "none",
        **floor, "floor_passes": round(floor["floor_ms_per_cell"] * n_cells / 1000 / predict_s, 2),
    }
    if part_seconds is not None:
        out["parts_s"] = {k: round(v, 2) for k, v in part_seconds.items()}
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cells", type=int, nargs="*", default=[1000, 10000])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--plain-cells", type=int, default=0)
    p.add_argument("--parts", action="store_true", help="also time the parts of the largest size's explanation")
    p.add_argument("--write", help="also write the Markdown results to this file")
    p.add_argument("--child", nargs=5, metavar=("BUNDLE", "CELLS", "STEPS", "PLAIN", "PARTS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        b, n, s, pc, parts = args.child
        print(json.dumps(run_one(b, int(n), int(s), int(pc), parts == "1")))
        return 0
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {load_average()} at the start"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bundle = make_bundle(Path(tmp)).path
        for i, n in enumerate(args.cells):
            plain = args.plain_cells if i == 0 else 0
            parts = int(args.parts and n == max(args.cells))
            child = [sys.executable, __file__, "--child", str(bundle), str(n), str(args.steps), str(plain), str(parts)]
            proc = subprocess.run(child, capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return proc.returncode
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    lines = ["| cells | n_steps | predict s | explain s | estimate s | IG s | DE s | **passes** (explain / predict) "
             "| dense predict s | dense passes | GEMM floor passes | GEMM GFLOPS | peak RSS MB "
             "| explain's own peak MB (estimate) | completeness median / max | load |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['cells']:,} | {r['n_steps']} | {r['predict_s']} | {r['explain_s']} | {r['estimate_s']} | "
                     f"{r['ig_s']:.1f} | "
                     f"{r['de_s']:.1f} | **{r['passes']}** | {r['dense_predict_s']} | {r['dense_passes']} | "
                     f"{r['floor_passes']} | {r['gemm_gflops']} | "
                     f"{r['peak_rss_mb']:,} | {r['explain_extra_mb']:,} ({r['estimate_mb']:,}) | "
                     f"{r['completeness_median']:.1e} / {r['completeness_max']:.1e} | "
                     f"{r['load'].split(' on')[0]} |")
    for r in rows:
        if "parts_s" in r:
            lines += ["", f"Where the {r['cells']:,}-cell explanation's {r['explain_s']} s go (wall seconds of each "
                      "function, summed over its calls; nested parts are inside the ones above them):", "",
                      "| part | s |", "|---|---:|"]
            lines += [f"| {k} | {v} |" for k, v in r["parts_s"].items()]
            lines.append(f"| GEMM floor at this run's rate | {round(r['floor_ms_per_cell'] * r['cells'] / 1000, 1)} |")
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
