"""Benchmark: scFoundation and Geneformer cell embeddings at the published sizes (random weights).

For each backbone the model files are written in their official formats at the published size
with random weights (scFoundation: a ``models.ckpt`` holding an ``rde`` model of 12 layers x 768,
converted with ``scatd convert-scfoundation``; Geneformer: ``gf-12L-30M-i2048``, the model
VAE_gf reads, saved by ``save_pretrained``, with the real V1 dictionaries when
``../shared/data/geneformer`` is present). Cells are simulated counts with a fixed number of
expressed genes (the sequence length each cell sends through the encoder). Every run goes
through :func:`scatd_core.foundation.embed_cells`, the path of the app and the CLI:

- **batched**: the default (length-sorted batches of 8,192 tokens on a CPU);
- **one cell at a time**: ``batch_tokens=1``, one cell per forward pass, as the original
  ``get_embedding.py`` (scFoundation) runs.

    python benches/bench_backbones.py                       # both backbones, 200 and 1,000 genes per cell
    python benches/bench_backbones.py --backbone vae_gf --genes-per-cell 2000 --cells 8

Prints a Markdown table (cells/s batched and one at a time, the speed-up, the estimate of
``foundation.estimate_seconds``) to paste into benches/README.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import sparse_counts  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_scfoundation(folder: Path) -> None:
    """A published-size ``models.ckpt`` (key ``rde``) with random weights, converted to safetensors."""
    import torch

    from scatd_core.foundation.scfoundation import GENE_LIST, convert
    from scatd_core.nn.scfoundation import ScFoundationConfig, ScFoundationEncoder

    folder.mkdir(parents=True)
    real = SHARED / "scfoundation" / GENE_LIST
    genes = real.read_text().splitlines()[1:] if real.exists() else [f"G{i}\t{i}" for i in range(19264)]
    (folder / GENE_LIST).write_text("gene_name\tindex\n" + "\n".join(genes) + "\n")
    cfg = ScFoundationConfig()
    torch.manual_seed(0)
    state = ScFoundationEncoder(cfg).state_dict()
    config = {"model": "mae_autobin", "model_config": {"mae_autobin": {
        "encoder": {"hidden_dim": cfg.hidden_dim, "depth": cfg.depth, "heads": cfg.heads, "module_type": "transformer"},
        "seq_len": cfg.seq_len, "bin_num": cfg.bin_num, "bin_alpha": cfg.bin_alpha, "pad_token_id": cfg.pad_token_id,
        "mask_token_id": cfg.mask_token_id}}, "dataset_config": {"rnaseq": {}}}
    torch.save({"rde": {"config": config, "state_dict": {f"model.{k}": v for k, v in state.items()}}},
               folder / "models.ckpt")
    convert(folder / "models.ckpt")
    (folder / "models.ckpt").unlink()


def write_geneformer(folder: Path) -> list[str]:
    """``gf-12L-30M-i2048`` with random weights and V1 dictionaries; returns the vocabulary's genes."""
    import json
    import pickle
    import shutil

    import torch

    from scatd_core.foundation.geneformer import transformers_module

    tf = transformers_module()
    BertConfig, BertForMaskedLM = tf.BertConfig, tf.BertForMaskedLM

    folder.mkdir(parents=True)
    real = SHARED / "geneformer"
    if (real / "token_dictionary.pkl").exists():
        for name in ("token_dictionary.pkl", "gene_median_dictionary.pkl", "gene_name_id_dict.pkl"):
            shutil.copy(real / name, folder / name)
        config = json.loads((real / "gf-12L-30M-config.json").read_text())
    else:
        ids = [f"ENSG{i:011d}" for i in range(25424)]
        with open(folder / "token_dictionary.pkl", "wb") as fh:
            pickle.dump({"<pad>": 0, "<mask>": 1, **{g: i + 2 for i, g in enumerate(ids)}}, fh)
        with open(folder / "gene_median_dictionary.pkl", "wb") as fh:
            pickle.dump({g: 2.0 for g in ids}, fh)
        config = dict(hidden_size=512, num_hidden_layers=12, num_attention_heads=8, intermediate_size=1024,
                      max_position_embeddings=2048, vocab_size=25426, hidden_act="relu", pad_token_id=0,
                      model_type="bert")
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(**config)).save_pretrained(folder / "gf-12L-30M-i2048")
    from scatd_core.foundation.geneformer import read_vocabulary

    return read_vocabulary("V1", folder).genes


def dataset(genes: list[str], n_cells: int, genes_per_cell: int, seed: int = 0):
    import anndata as ad

    x = sparse_counts(n_cells, len(genes), genes_per_cell, seed)
    a = ad.AnnData(x)
    a.var_names = genes
    a.obs_names = [f"cell{i}" for i in range(n_cells)]
    return a


def run(backbone: str, adata, options: dict) -> dict:
    from scatd_core.foundation import embed_cells, estimate_seconds

    estimate = estimate_seconds(adata, backbone, device="cpu", **options)
    out = {"estimate_s": estimate["seconds"], "tokens": estimate["n_tokens"] / max(estimate["n_cells"], 1)}
    for label, tokens in (("batched", None), ("single", 1)):
        t0, c0 = time.perf_counter(), time.process_time()
        embed_cells(adata, backbone, device="cpu", batch_tokens=tokens, recompute=True, **options)
        out[label], out[f"{label}_cpu"] = time.perf_counter() - t0, time.process_time() - c0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", choices=["vae_sf", "vae_gf"], nargs="*", default=["vae_sf", "vae_gf"])
    parser.add_argument("--genes-per-cell", type=int, nargs="*", default=[200, 1000])
    parser.add_argument("--cells", type=int, default=None, help="cells per run (default: 32 at <=200 genes, else 12)")
    args = parser.parse_args()

    import torch

    from scatd_core.foundation import embed_cells

    rows = []
    with tempfile.TemporaryDirectory(prefix="scatd-bench-backbones-") as tmp:
        tmp = Path(tmp)
        for backbone in args.backbone:
            t0 = time.perf_counter()
            if backbone == "vae_sf":
                write_scfoundation(tmp / "scfoundation")
                os.environ["SCATD_SCFOUNDATION_DIR"] = str(tmp / "scfoundation")
                from scatd_core.foundation.scfoundation import read_gene_list

                genes = read_gene_list(tmp / "scfoundation" / "OS_scRNA_gene_index.19264.tsv")
                options, name = {}, "scFoundation (rde, 12 x 768, 100 M parameters), pool all -> 3072"
            else:
                genes = write_geneformer(tmp / "geneformer")
                os.environ["SCATD_GENEFORMER_DIR"] = str(tmp / "geneformer")
                options, name = {"embedding_dim": 512}, "Geneformer gf-12L-30M-i2048 (12 x 512), mean -> 512"
            print(f"{name}: files written in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            for per_cell in args.genes_per_cell:
                n = args.cells or (32 if per_cell <= 200 else 12)
                adata = dataset(genes, n, per_cell)
                embed_cells(adata[:2].copy(), backbone, device="cpu", **options)  # load the model once
                r = run(backbone, adata, options)
                rows.append((name, n, per_cell, r))
                print(f"  {per_cell} genes/cell: batched {n / r['batched']:.2f} cells/s, one at a time "
                      f"{n / r['single']:.2f} cells/s", file=sys.stderr)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; load average {os.getloadavg()[0]:.1f}")
    print()
    print("| backbone | cells | tokens/cell | batched cells/s | one-at-a-time cells/s | speed-up (wall) | "
          "speed-up (CPU time) | estimate / measured |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, n, per_cell, r in rows:
        print(f"| {name} | {n} | {r['tokens']:.0f} | {n / r['batched']:.2f} | {n / r['single']:.2f} | "
              f"{r['single'] / r['batched']:.2f}x | {r['single_cpu'] / r['batched_cpu']:.2f}x | "
              f"{r['estimate_s'] / r['batched']:.2f} |")


if __name__ == "__main__":
    main()
