"""Tiny foundation-model files in the official formats, generated at test time (nothing real is shipped).

- scFoundation: a ``models.ckpt`` laid out as the official one (keys ``cell``/``rde``/``gene``,
  each ``{'config': {'model': 'mae_autobin', 'model_config': {...}, 'dataset_config':
  {'rnaseq': {...}}}, 'state_dict': {'model.<name>': tensor}}``, decoder tensors included), with
  random weights, and its gene list TSV.
- Geneformer: a random ``BertForMaskedLM`` with Geneformer's config keys saved by
  ``save_pretrained`` (``config.json`` + ``model.safetensors``), and its dictionaries pickled as
  Geneformer ships them (token ids as numpy int16).
"""

from __future__ import annotations

import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """The test models are tiny: one thread is as fast, and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

SF_HIDDEN, SF_DEPTH, SF_HEADS, SF_BINS = 16, 2, 2, 10


def sf_genes(n: int = 40) -> list[str]:
    return [f"SFG{i}" for i in range(n)]


def write_sf_gene_list(path: Path, genes: list[str]) -> Path:
    path.write_text("gene_name\tindex\n" + "".join(f"{g}\t{i}\n" for i, g in enumerate(genes)))
    return path


def sf_state(genes: list[str], seed: int = 0, hidden: int = SF_HIDDEN, depth: int = SF_DEPTH,
             bins: int = SF_BINS) -> dict[str, torch.Tensor]:
    """Random tensors of the whole MAE (encoder path + decoder parts the app must ignore), no prefix."""
    g = torch.Generator().manual_seed(seed)
    seq = len(genes) + 2
    sd = {"token_emb.mlp.weight": (1, bins), "token_emb.mlp.bias": (bins,), "token_emb.mlp2.weight": (bins, bins),
          "token_emb.mlp2.bias": (bins,), "token_emb.emb.weight": (bins, hidden),
          "token_emb.emb_mask.weight": (1, hidden), "token_emb.emb_pad.weight": (1, hidden),
          "pos_emb.weight": (seq + 1, hidden), "encoder.norm.weight": (hidden,), "encoder.norm.bias": (hidden,),
          "decoder_embed.weight": (8, hidden), "decoder_embed.bias": (8,), "norm.weight": (8,), "norm.bias": (8,),
          "to_final.weight": (1, 8), "to_final.bias": (1,),
          "decoder.performer.net.layers.0.0.fn.fast_attention.projection_matrix": (5, 4)}
    sd["token_emb.mlp.weight"] = (bins, 1)
    for i in range(depth):
        p = f"encoder.transformer_encoder.{i}."
        sd.update({p + "self_attn.in_proj_weight": (3 * hidden, hidden), p + "self_attn.in_proj_bias": (3 * hidden,),
                   p + "self_attn.out_proj.weight": (hidden, hidden), p + "self_attn.out_proj.bias": (hidden,),
                   p + "linear1.weight": (4 * hidden, hidden), p + "linear1.bias": (4 * hidden,),
                   p + "linear2.weight": (hidden, 4 * hidden), p + "linear2.bias": (hidden,),
                   p + "norm1.weight": (hidden,), p + "norm1.bias": (hidden,),
                   p + "norm2.weight": (hidden,), p + "norm2.bias": (hidden,)})
    out = {}
    for k, shape in sd.items():
        t = torch.randn(shape, generator=g)
        if k.endswith("norm.weight") or ".norm1.weight" in k or ".norm2.weight" in k:
            t = 1.0 + 0.1 * t
        elif k.endswith(("bias", "norm.bias")):
            t = 0.1 * t
        elif "linear" in k or "proj" in k or "mlp2" in k:
            t = t / np.sqrt(shape[-1])
        out[k] = t
    return out


def sf_config(n_genes: int, hidden: int = SF_HIDDEN, depth: int = SF_DEPTH, heads: int = SF_HEADS,
              bins: int = SF_BINS) -> dict:
    """The nested config of one models.ckpt entry (what convertconfig flattens)."""
    seq = n_genes + 2
    return {"model": "mae_autobin",
            "model_config": {"mae_autobin": {
                "encoder": {"hidden_dim": hidden, "depth": depth, "heads": heads, "dim_head": hidden // heads,
                            "seq_len": seq, "module_type": "transformer", "norm_first": False},
                "decoder": {"hidden_dim": 8, "depth": 1, "heads": 2, "dim_head": 4, "module_type": "performer",
                            "seq_len": seq, "norm_first": False},
                "n_class": 104, "pad_token_id": 103, "mask_token_id": 102, "bin_num": bins, "bin_alpha": 1.0,
                "seq_len": seq}},
            "dataset_config": {"rnaseq": {"rawcount": True, "mask_prob": 0.3}}}


def write_sf_checkpoint(path: Path, genes: list[str], keys=("cell", "rde", "gene"), seed: int = 0) -> Path:
    payload = {}
    for i, key in enumerate(keys):
        state = sf_state(genes, seed + i)
        payload[key] = {"config": sf_config(len(genes)), "state_dict": {f"model.{k}": v for k, v in state.items()}}
    torch.save(payload, path)
    return path


def sf_folder(root: Path, n_genes: int = 40, seed: int = 0) -> Path:
    """A folder as the official ``model/`` layout: gene list, ``models/models.ckpt``."""
    root.mkdir(parents=True, exist_ok=True)
    genes = sf_genes(n_genes)
    write_sf_gene_list(root / "OS_scRNA_gene_index.19264.tsv", genes)
    (root / "models").mkdir(exist_ok=True)
    write_sf_checkpoint(root / "models" / "models.ckpt", genes, seed=seed)
    return root


# ----------------------------------------------------------------------------- Geneformer

GF_CONFIG = {  # Geneformer's config.json keys (V1), at a tiny size
    "architectures": ["BertForMaskedLM"], "attention_probs_dropout_prob": 0.02, "hidden_act": "relu",
    "hidden_dropout_prob": 0.02, "hidden_size": 16, "initializer_range": 0.02, "intermediate_size": 32,
    "layer_norm_eps": 1e-12, "max_position_embeddings": 2048, "model_type": "bert", "num_attention_heads": 2,
    "num_hidden_layers": 3, "pad_token_id": 0, "position_embedding_type": "absolute", "type_vocab_size": 2,
    "use_cache": True}


def gf_genes(n: int = 30) -> tuple[list[str], list[str]]:
    """``(Ensembl IDs, symbols)`` of a tiny vocabulary."""
    return [f"ENSG{i:011d}" for i in range(1, n + 1)], [f"GFG{i}" for i in range(1, n + 1)]


def write_gf_dictionaries(folder: Path, n_genes: int = 30, v2: bool = False, seed: int = 0) -> dict:
    ids, symbols = gf_genes(n_genes)
    specials = ["<pad>", "<mask>"] + (["<cls>", "<eos>"] if v2 else [])
    tokens = {t: np.int16(i) for i, t in enumerate(specials + ids)}
    rng = np.random.default_rng(seed)
    medians = {g: float(m) for g, m in zip(ids, rng.uniform(0.5, 5.0, n_genes))}
    names = dict(zip(symbols, ids))
    suffix = "_gc104M" if v2 else ""
    folder.mkdir(parents=True, exist_ok=True)
    for name, obj in (("token_dictionary", tokens), ("gene_median_dictionary", medians),
                      ("gene_name_id_dict", names)):
        with open(folder / f"{name}{suffix}.pkl", "wb") as fh:
            pickle.dump(obj, fh)
    return {"tokens": tokens, "medians": medians, "names": names}


_SAVED = tempfile.TemporaryDirectory(prefix="scatd-test-geneformer-")  # lives as long as the test process
_SAVED_MODELS: dict[tuple, Path] = {}


def write_gf_model(folder: Path, vocab_size: int, v2: bool = False, seed: int = 0, **overrides) -> Path:
    """A random BertForMaskedLM saved by ``save_pretrained`` (each distinct model is saved once per
    test process and copied: transformers' saving is slow)."""
    key = (vocab_size, v2, seed, tuple(sorted(overrides.items())))
    if key not in _SAVED_MODELS:
        from scatd_core.foundation.geneformer import transformers_module

        tf = transformers_module()
        torch.manual_seed(seed)
        cfg = dict(GF_CONFIG, vocab_size=vocab_size, max_position_embeddings=4096 if v2 else 2048, **overrides)
        _SAVED_MODELS[key] = Path(_SAVED.name) / f"model{len(_SAVED_MODELS)}"
        tf.BertForMaskedLM(tf.BertConfig(**cfg)).eval().save_pretrained(_SAVED_MODELS[key])
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(_SAVED_MODELS[key], folder)
    return folder


def gf_folder(root: Path, n_genes: int = 30, v2: bool = False, seed: int = 0, **overrides) -> Path:
    """Dictionaries in ``root``, the model in ``root/gf-tiny``."""
    d = write_gf_dictionaries(root, n_genes, v2, seed)
    write_gf_model(root / "gf-tiny", len(d["tokens"]), v2, seed, **overrides)
    return root


def install_assets(tmp_path: Path, monkeypatch) -> dict:
    """Tiny scFoundation and Geneformer folders in the official layouts, configured through the
    environment, with the backbones' probe and model caches emptied: ``{"sf": ..., "gf": ...}``."""
    from scatd_core.foundation import geneformer, scfoundation

    sf = sf_folder(tmp_path / "scfoundation")
    gf = gf_folder(tmp_path / "geneformer")
    monkeypatch.setenv("SCATD_SCFOUNDATION_DIR", str(sf))
    monkeypatch.setenv("SCATD_GENEFORMER_DIR", str(gf))
    monkeypatch.delenv("SCATD_GENEFORMER_MODEL", raising=False)
    for module in (scfoundation, geneformer):
        module._PROBES.clear()
        module._MODELS.clear()
    return {"sf": sf, "gf": gf}
