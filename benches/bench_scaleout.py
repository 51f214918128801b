"""Benchmark: the Ray engine (``scatd predict --engine ray``) against one process, and the
1M-cell run with bounded memory.

A Dist_VAE classifier with random weights in the original layout (``--genes`` inputs, encoder
genes-256-64, z 32), on simulated sparse counts (``--genes-per-cell`` expressed genes per cell)
written chunk by chunk straight into a CSR h5ad (the generator never holds the matrix). Every
run is its own subprocess (a fresh local Ray instance for the Ray runs, started as the CLI
does); peak memory is ``VmHWM`` of the driver and the largest of the Ray worker processes.

    python benches/bench_scaleout.py --cells 50000 --workers 1 2          # scaling table
    python benches/bench_scaleout.py --done-when --cells 1000000           # the 1M-cell run

The scaling table gives cells/s for one process and for Ray with 1 and 2 workers (each run
starting its own local Ray instance, as the CLI does), then a second run on a Ray instance that
is already up (the app server's case, and a cluster's), Ray's overhead (its time over one
process's, with 1 worker) and the measured cost of one shard on one
worker, from which the 1M-cell projection on N workers is computed. ``--done-when`` runs the
1M-cell file through ``scatd predict --engine ray`` and checks that its first 50k rows equal
the single-process table of a 50k-cell file holding the same cells.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's scatd_core

CHUNK = 10_000  # cells generated per chunk (its own seed: a file's first k chunks are those of a bigger file)


def vmhwm_mb(pid: int | str = "self") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def make_bundle(folder: Path, n_genes: int) -> Path:
    import torch

    from scatd_core.bundle import save_bundle
    from scatd_core.nn import Architecture, build_model

    torch.manual_seed(0)
    arch = Architecture("dist_vae", [n_genes, 256, 64], 32, None, 16, 2)
    out = folder / "dist_vae_bench"
    save_bundle(out, build_model(arch).state_dict(), arch, drug="BENCH", genes=[f"GENE{i:05d}" for i in range(n_genes)],
                input_transform="log1p_cp10k", provenance={"source": "benchmark (random weights)"})
    return out


def make_h5ad(path: Path, n_cells: int, n_genes: int, genes_per_cell: int, seed: int = 0) -> None:
    """CSR counts written chunk by chunk with h5py (anndata's on-disk layout)."""
    import anndata as ad
    import h5py
    import pandas as pd
    from anndata.io import write_elem

    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"], f.attrs["encoding-version"] = "anndata", "0.1.0"
        write_elem(f, "obs", pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)]))
        write_elem(f, "var", pd.DataFrame(index=[f"GENE{i:05d}" for i in range(n_genes)]))
        for group in ("obsm", "varm", "layers", "obsp", "varp", "uns"):
            write_elem(f, group, {})
        x = f.create_group("X")
        x.attrs["encoding-type"], x.attrs["encoding-version"] = "csr_matrix", "0.1.0"
        x.attrs["shape"] = (n_cells, n_genes)
        nnz = n_cells * genes_per_cell
        data = x.create_dataset("data", shape=(nnz,), dtype="float32", chunks=(1 << 18,))
        indices = x.create_dataset("indices", shape=(nnz,), dtype="int32", chunks=(1 << 18,))
        x.create_dataset("indptr", data=np.arange(n_cells + 1, dtype=np.int64) * genes_per_cell)
        for k, start in enumerate(range(0, n_cells, CHUNK)):
            m = min(CHUNK, n_cells - start)
            rng = np.random.default_rng([seed, k])
            # distinct increasing columns per row: cumulative gaps of 1..n_genes/genes_per_cell
            cols = np.cumsum(rng.integers(1, n_genes // genes_per_cell + 1, (m, genes_per_cell)), axis=1) - 1
            lo, hi = start * genes_per_cell, (start + m) * genes_per_cell
            indices[lo:hi] = cols.ravel().astype(np.int32)
            data[lo:hi] = rng.negative_binomial(2, 0.5, size=hi - lo).astype(np.float32) + 1
    ad.read_h5ad(path, backed="r").file.close()  # anndata can open it


class WorkerMemory(threading.Thread):
    """Polls the Ray worker processes of this run; keeps the largest VmHWM seen."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.stop = 0.0, threading.Event()

    def run(self):
        import psutil

        while not self.stop.is_set():
            for proc in psutil.process_iter(["pid", "cmdline"]):
                title = " ".join(proc.info["cmdline"] or [])
                if title.startswith("ray::") and any(w in title for w in ("Worker", "IDLE", "ShardActor")):
                    self.peak = max(self.peak, vmhwm_mb(proc.info["pid"]))
            self.stop.wait(0.5)


def child(argv: list[str], warm: bool = False) -> dict:
    """One run in this process: ``scatd`` with ``argv``; timings of the shards from its progress.
    ``warm``: a local Ray instance is started first and a first run (another output) is made on it,
    then the measured run reuses the instance and its worker processes (the app's case: the server
    stays connected from one prediction to the next)."""
    from scatd_core.cli import _common, main

    stamps = []
    base = _common.Progress

    class Timed(base):
        def __call__(self, fraction, message=""):
            if "predicting" in message:
                stamps.append(time.perf_counter())
            super().__call__(fraction, message)

    _common.Progress = Timed
    import scatd_core.cli.predict as cli_predict

    cli_predict.Progress = Timed
    if warm:
        from scatd_core import scaleout

        scaleout.connect(num_cpus=2)
        out = argv.index("--output") + 1
        assert main(argv[:out] + [argv[out] + ".first.csv"] + argv[out + 1:]) == 0
        stamps.clear()
    memory = WorkerMemory()
    memory.start()
    t0 = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - t0
    memory.stop.set()
    memory.join()
    assert code == 0, f"scatd exited with {code}"
    parts = Path(argv[argv.index("--output") + 1] + ".parts")
    shard_seconds = [float(np.load(p)["seconds"]) for p in sorted(parts.glob("shard-*.npz"))]
    # stamps: the pass's start (0 of n shards), then one per finished shard
    pass_seconds = stamps[-1] - stamps[0] if len(stamps) > 1 else None
    return {"seconds": seconds, "pass_seconds": pass_seconds, "shards": len(shard_seconds),
            "shard_seconds": float(np.mean(shard_seconds)) if shard_seconds else None,
            "driver_vmhwm_mb": vmhwm_mb(), "worker_vmhwm_mb": memory.peak}


def run(argv: list[str], warm: bool = False) -> dict:
    out = subprocess.run([sys.executable, __file__, "--_child", json.dumps(argv)] + (["--_warm"] if warm else []),
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"run failed: {argv}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def same_rows(a: Path, b: Path, n: int, ignore: tuple[str, ...] = ()) -> bool:
    import pandas as pd

    x, y = pd.read_csv(a, nrows=n).drop(columns=list(ignore)), pd.read_csv(b, nrows=n).drop(columns=list(ignore))
    return len(x) == len(y) == n and x.equals(y)


def scaling(tmp: Path, bundle: Path, args) -> None:
    h5ad = tmp / f"cells_{args.cells}.h5ad"
    make_h5ad(h5ad, args.cells, args.genes, args.genes_per_cell)
    base = ["predict", "--model", str(bundle), "--input", str(h5ad), "--device", args.device, "--batch-size",
            str(args.batch_size)]
    one = run(base + ["--output", str(tmp / "one.csv")])
    rows = [("1 process", None, one)]
    for w in args.workers:
        res = run(base + ["--output", str(tmp / f"ray{w}.csv"), "--engine", "ray", "--workers", str(w),
                          "--shard-cells", str(args.shard_cells)])
        assert same_rows(tmp / f"ray{w}.csv", tmp / "one.csv", args.cells), "Ray result differs from one process"
        rows.append((f"Ray, {w} worker(s)", w, res))
    w = max(args.workers)
    res = run(base + ["--output", str(tmp / "warm.csv"), "--engine", "ray", "--workers", str(w), "--shard-cells",
                      str(args.shard_cells)], warm=True)
    assert same_rows(tmp / "warm.csv", tmp / "one.csv", args.cells), "Ray result differs from one process"
    rows.append((f"Ray, {w} worker(s), Ray already running (a second run)", w, res))
    print(f"\n{args.cells:,} cells x {args.genes:,} genes ({args.genes_per_cell} expressed per cell), batch "
          f"{args.batch_size}, shards of {args.shard_cells:,} cells; load average before: {os.getloadavg()[0]:.1f}")
    print("| engine | seconds (total) | cells/s (total) | predict pass (s) | cells/s (pass) | vs 1 process | "
          "driver VmHWM (MB) | worker VmHWM (MB) | same result |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, w, r in rows:
        pass_s = r["pass_seconds"] or r["seconds"]
        print(f"| {name} | {r['seconds']:.1f} | {args.cells / r['seconds']:,.0f} | {pass_s:.1f} | "
              f"{args.cells / pass_s:,.0f} | {r['seconds'] / one['seconds']:.2f}x | {r['driver_vmhwm_mb']:.0f} | "
              f"{r['worker_vmhwm_mb']:.0f} | {'yes' if w else 'reference'} |")
    one_worker = next(r for _n, w, r in rows if w == 1)  # the first: a fresh Ray instance
    # timed in the worker: reading the shard's rows and predict() on them
    per_shard = one_worker["shard_seconds"]
    startup = one_worker["seconds"] - per_shard * one_worker["shards"]
    n_shards = math.ceil(1_000_000 / args.shard_cells)
    print(f"\nMeasured: {per_shard:.2f} s per shard of {args.shard_cells:,} cells on one worker ({args.device}); "
          f"the rest of a 1-worker run (Ray start, worker processes, statistics, assembly, writing) {startup:.1f} s.")
    print(f"Projected 1M cells ({n_shards} shards): " + ", ".join(
        f"{n} workers {startup + math.ceil(n_shards / n) * per_shard:,.0f} s" for n in (1, 2, 4, 8, 16, 32)))


def done_when(tmp: Path, bundle: Path, args) -> None:
    big, small = tmp / "cells_big.h5ad", tmp / "cells_50k.h5ad"
    t0 = time.perf_counter()
    make_h5ad(big, args.cells, args.genes, args.genes_per_cell)
    make_h5ad(small, 50_000, args.genes, args.genes_per_cell)
    print(f"wrote {args.cells:,} cells ({big.stat().st_size / 2**20:,.0f} MB) in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr)
    base = ["predict", "--model", str(bundle), "--device", args.device, "--batch-size", str(args.batch_size)]
    res = run(base + ["--input", str(big), "--output", str(tmp / "big.csv"), "--h5ad", str(tmp / "big.h5ad"),
                      "--engine", "ray", "--shard-cells", str(args.shard_cells)])
    one = run(base + ["--input", str(small), "--output", str(tmp / "small.csv")])
    # "rank" (a cell's rank by P(resistant) among all the file's cells) depends on the other cells
    same = same_rows(tmp / "big.csv", tmp / "small.csv", 50_000, ignore=("rank",))
    print(f"\n{args.cells:,} cells x {args.genes:,} genes, file {big.stat().st_size / 2**20:,.0f} MB; "
          f"load average: {os.getloadavg()[0]:.1f}")
    print("| run | seconds | cells/s | driver VmHWM (MB) | worker VmHWM (MB) |")
    print("|---|---:|---:|---:|---:|")
    print(f"| `scatd predict --engine ray`, {args.cells:,} cells | {res['seconds']:.0f} | "
          f"{args.cells / res['seconds']:,.0f} | {res['driver_vmhwm_mb']:.0f} | {res['worker_vmhwm_mb']:.0f} |")
    print(f"| `scatd predict` (one process), 50k cells | {one['seconds']:.0f} | {50_000 / one['seconds']:,.0f} | "
          f"{one['driver_vmhwm_mb']:.0f} | - |")
    print(f"\nFirst 50,000 rows of the 1M-cell table equal the single-process table of the 50k subset (every "
          f"column but the dataset-wide rank): {same}")
    if not same:
        sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=50_000)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--genes-per-cell", type=int, default=100)
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--shard-cells", type=int, default=16_384)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: one GPU per Ray worker")
    parser.add_argument("--done-when", action="store_true", help="the 1M-cell run (use --cells 1000000)")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    parser.add_argument("--_warm", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        print(json.dumps(child(json.loads(args._child), args._warm)))
        return
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        tmp = Path(tmp)
        bundle = make_bundle(tmp, args.genes)
        (done_when if args.done_when else scaling)(tmp, bundle, args)


if __name__ == "__main__":
    main()
