"""Shared by the benchmarks: simulated sparse counts and a Dist_VAE bundle at the published size."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

# The benchmarks run from a checkout (``python benches/bench_x.py``): the repository's packages first.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: The published Dist_VAE input size (the scFoundation gene list).
N_GENES = 19_264


def sparse_counts(n_cells: int, n_genes: int = N_GENES, genes_per_cell: int = 1500, seed: int = 0,
                  skewed: bool = False, chunk: int = 2000):
    """CSR counts: ``genes_per_cell`` expressed genes per cell (uniform, or with a log-normal gene
    popularity when ``skewed``), negative-binomial-like values >= 1. Built in chunks of cells."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    popularity = None
    if skewed:
        popularity = rng.lognormal(0, 1.5, n_genes)
        popularity /= popularity.sum()
    chunks = []
    for start in range(0, n_cells, chunk):
        m = min(chunk, n_cells - start)
        cols = np.sort(rng.choice(n_genes, size=(m, genes_per_cell), p=popularity), axis=1)
        rows = np.repeat(np.arange(m), genes_per_cell)
        vals = rng.negative_binomial(2, 0.5, size=m * genes_per_cell).astype(np.float32) + 1
        chunks.append(sp.csr_matrix((vals, (rows, cols.ravel())), shape=(m, n_genes)))
    x = sp.vstack(chunks).tocsr()
    x.sum_duplicates()
    return x


def gene_names(n_genes: int = N_GENES) -> list[str]:
    return [f"GENE{i:05d}" for i in range(n_genes)]


def make_bundle(folder: Path, *, calibrate_cells: int = 2000):
    """A Dist_VAE drug classifier at the published size (19,264 genes, encoder 19264-1664-359,
    z 421, head 210), random weights in the original layout, ``log1p_cp10k`` input.

    Random initial batch-norm statistics make such a network's logits explode (~1e7), which no
    trained model does, so the batch-norm running statistics (and spectral-norm vectors) are
    first calibrated by forward passes in train mode over ``calibrate_cells`` simulated cells:
    the weights stay random, the activations get the scale of a trained model.
    """
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
    x = sparse_counts(calibrate_cells, seed=99, skewed=True)
    with torch.no_grad():
        for start in range(0, x.shape[0], 250):
            block = apply_input_transform(x[start:start + 250].toarray(), "log1p_cp10k")
            model(torch.from_numpy(block))
    model.eval()
    out = Path(folder) / "dist_vae_published"
    return save_bundle(out, model.state_dict(), arch, drug="BENCH", genes=gene_names(), input_transform="log1p_cp10k",
                       threshold=0.5, provenance={"source": "benchmark (random weights, calibrated batch norm)"},
                       overwrite=True)


def load_average() -> str:
    try:
        return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    except OSError:
        return ""


def peak_rss_mb() -> float:
    """High-water mark of this process's resident memory (VmHWM), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """Current resident memory (VmRSS), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int | str = "self") -> float:
    """CPU seconds (user + system, all threads) a process has used so far, from /proc/PID/stat.

    On a shared machine wall-clock seconds include the time spent waiting for a core; CPU
    seconds do not, so they show what a run costs whatever the load: with ``T`` threads kept
    busy, an idle machine would take about ``cpu / T`` to ``cpu`` seconds of wall time.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants_cpu_seconds(name_prefix: str, root: int | None = None) -> float:
    """CPU seconds used so far by the live descendants of ``root`` (default: this process) whose
    command name starts with ``name_prefix`` (e.g. ``"chrom"`` for a browser Playwright started)."""
    root = os.getpid() if root is None else root
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            name = text.split("(", 1)[1].rsplit(")", 1)[0]
            fields = text.rsplit(")", 1)[1].split()
            stats[int(entry.name)] = (int(fields[1]), name, int(fields[11]) + int(fields[12]))
    total = 0
    for pid, (ppid, name, ticks) in stats.items():
        if not name.startswith(name_prefix):
            continue
        parent = ppid
        while parent > 1 and parent != root:
            parent = stats.get(parent, (0,))[0]
        if parent == root:
            total += ticks
    return total / os.sysconf("SC_CLK_TCK")
