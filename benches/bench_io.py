"""Benchmark: time and peak memory of :func:`scatd_core.io.read` per format, 10k and 100k cells.

Simulated sparse counts, 20,000 genes, ~5% non-zero (about 1,000 genes detected per cell),
written once per size to a temporary folder in every format that is practical at that size.
Each read runs in its own subprocess, so the peak RSS reported is that of one read alone; the
process's RSS after importing scatd_core is given too (the floor of every run). The read
includes the validation pass, value-type detection and the report.

"backed pass" rows also stream the whole matrix once in batches of 10,000 rows, as prediction
does (``adata.X[start:stop]``), to show that memory stays bounded when X is on disk.

    python benches/bench_io.py                      # 10k and 100k cells (about 8 minutes)
    python benches/bench_io.py --cells 10000        # one size

Prints a Markdown table to paste into benches/README.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the writers of every format live with the tests

N_GENES = 20_000
DENSITY = 0.05

# Peak RSS comes from /proc (VmHWM): ru_maxrss of an exec'd child starts at its parent's peak
# (Linux keeps it across fork/exec), which here would be the writer's gigabytes.
_CHILD = r"""
import json, sys, time
from scatd_core import io
from scatd_core._matrix import row_batches

def peak_mb():
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith("VmHWM")) / 1024

base = peak_mb()
path, kwargs, stream = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] == "1"
t0 = time.perf_counter()
adata = io.read(path, **kwargs)
read_s = time.perf_counter() - t0
total = 0.0
if stream:
    for _, _, block in row_batches(adata.X, 10_000):
        total += float(block.sum())
print(json.dumps({"read_s": read_s, "total_s": time.perf_counter() - t0, "backed": adata.isbacked,
                  "shape": list(adata.shape), "base_mb": base, "peak_mb": peak_mb()}))
"""


def write_formats(folder: Path, n_cells: int) -> dict[str, tuple[Path, dict, bool]]:
    """Write one dataset in each practical format; returns label -> (path, read kwargs, stream)."""
    from _data_helpers import make_counts_large, write_10x_h5, write_10x_mtx, write_zip

    adata = make_counts_large(n_cells, N_GENES, DENSITY, seed=0)
    runs: dict[str, tuple[Path, dict, bool]] = {}
    h5ad = folder / "data.h5ad"
    adata.write_h5ad(h5ad)
    runs["h5ad (backed='auto')"] = (h5ad, {}, False)
    runs["h5ad, backed=False"] = (h5ad, {"backed": False}, False)
    runs["h5ad, backed=True + batch pass"] = (h5ad, {"backed": True}, True)
    runs["10x .h5"] = (write_10x_h5(adata, folder / "data.h5"), {}, False)
    mtx = write_10x_mtx(adata, folder / "mtx")
    runs["10x mtx.gz folder"] = (mtx, {}, False)
    if n_cells <= 10_000:  # dense formats: text or loom of 100k x 20k would be 2e9 values
        runs["10x mtx.gz in .zip"] = (write_zip(mtx, folder / "data.zip"), {}, False)
        runs["CSV (dense text)"] = (_write_csv(adata, folder / "data.csv"), {}, False)
        adata.write_loom(folder / "data.loom")
        runs["loom"] = (folder / "data.loom", {}, False)
    return runs


def _write_csv(adata, path: Path) -> Path:
    """A cells x genes counts CSV, written row by row (pandas' writer is far slower at this size)."""
    import numpy as np

    X = adata.X.tocsr()
    with path.open("w") as fh:
        fh.write("cell," + ",".join(adata.var_names) + "\n")
        for start in range(0, X.shape[0], 1000):
            block = X[start:start + 1000].toarray().astype(np.int32)
            for name, row in zip(adata.obs_names[start:start + 1000], block):
                fh.write(name + "," + ",".join(map(str, row.tolist())) + "\n")
    return path


def file_mb(path: Path) -> float:
    size = sum(p.stat().st_size for p in path.rglob("*")) if path.is_dir() else path.stat().st_size
    return size / 2**20


def run(path: Path, kwargs: dict, stream: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), json.dumps(kwargs), "1" if stream else "0"],
                         capture_output=True, text=True, cwd=ROOT, check=False)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="*", default=[10_000, 100_000])
    args = parser.parse_args()
    print(f"{N_GENES:,} genes, {DENSITY:.0%} non-zero, float32 counts; python {sys.version.split()[0]}\n")
    print("| cells | format | file MB | read s | read + pass s | backed | peak RSS MB | RSS after imports MB |")
    print("|---:|---|---:|---:|---:|---|---:|---:|")
    for n_cells in args.cells:
        with tempfile.TemporaryDirectory(prefix="scatd-bench-io-") as tmp:
            t0 = time.perf_counter()
            runs = write_formats(Path(tmp), n_cells)
            print(f"<!-- {n_cells:,} cells written in {time.perf_counter() - t0:.0f} s -->", file=sys.stderr)
            for label, (path, kwargs, stream) in runs.items():
                r = run(path, kwargs, stream)
                if "error" in r:
                    print(f"| {n_cells:,} | {label} | {file_mb(path):,.0f} | error: {r['error']} | | | | |")
                    continue
                total = f"{r['total_s']:.1f}" if stream else ""
                print(f"| {n_cells:,} | {label} | {file_mb(path):,.0f} | {r['read_s']:.1f} | {total} | "
                      f"{'yes' if r['backed'] else 'no'} | {r['peak_mb']:,.0f} | {r['base_mb']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
