"""Benchmark: reading a genes x cells CSV is linear in the number of columns.

A large experiment exported as a table has one column per cell. Writes CSVs with 50 gene rows
and 10k, 100k and 1M cell columns (~5% non-zero counts), then times :func:`scatd_core.io.read`
on each in its own subprocess (peak memory = that process's ``VmHWM``). Linear parsing means
seconds per million columns stays roughly constant from row to row; the old reader spent
103 s on 100k columns and over 600 s on 1M (a per-column dtype lookup per chunk).

    python benches/bench_wide_csv.py                    # 10k, 100k, 1M columns
    python benches/bench_wide_csv.py --columns 100000   # one size
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
N_GENES = 50

_CHILD = r"""
import json, sys, time
from scatd_core import io

def peak_mb():
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith("VmHWM")) / 1024

base = peak_mb()
t0 = time.perf_counter()
adata = io.read(sys.argv[1], max_cells=2_000_000)
print(json.dumps({"read_s": time.perf_counter() - t0, "shape": list(adata.shape),
                  "base_mb": base, "peak_mb": peak_mb()}))
"""


def write_csv(path: Path, n_cells: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    genes = [f"GENE{i}" for i in range(N_GENES)]
    with open(path, "w") as fh:
        fh.write("gene," + ",".join(f"cell_{j}" for j in range(n_cells)) + "\n")
        for g in genes:
            row = rng.poisson(0.05, n_cells)
            fh.write(g + "," + ",".join(map(str, row.tolist())) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--columns", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.columns:
            path = Path(tmp) / f"wide_{n}.csv"
            write_csv(path, n)
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True,
                                 cwd=ROOT, timeout=3600)
            wall = time.perf_counter() - t0
            if out.returncode:
                print(out.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"read failed for {n} columns")
            res = json.loads(out.stdout.strip().splitlines()[-1])
            res.update(columns=n, file_mb=path.stat().st_size / 1e6, wall_s=wall)
            print(json.dumps(res), flush=True)
            rows.append(res)
            path.unlink()
    print("\n| columns (cells) | genes | file MB | read s | s per 100k columns | peak RSS MB | shape read |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['columns']:,} | {N_GENES} | {r['file_mb']:.0f} | {r['read_s']:.1f} | "
              f"{r['read_s'] / r['columns'] * 1e5:.2f} | {r['peak_mb']:.0f} | {r['shape'][0]:,} x {r['shape'][1]:,} |")


if __name__ == "__main__":
    main()
