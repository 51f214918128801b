"""Geneformer in the loop: dictionaries, rank-value tokenizer, model loading, embeddings, checks.

A tiny random ``BertForMaskedLM`` with Geneformer's config keys, saved by ``save_pretrained``, and
dictionaries pickled as Geneformer ships them, drive the real loading code; the real V1
dictionaries tokenise a scanpy-bundled dataset's genes.
"""

from __future__ import annotations

import os
import pickle

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import _foundation_helpers as H
from _foundation_helpers import one_thread  # noqa: F401 (autouse fixture)
from conftest import SHARED_DATA, shared_file
from scatd_core.errors import CheckpointError, InputError, ScatdError
from scatd_core.foundation import embed_cells
from scatd_core.foundation import geneformer as G

TOL = 1e-5


@pytest.fixture
def gf(tmp_path, monkeypatch):
    root = H.gf_folder(tmp_path / "geneformer")
    monkeypatch.setenv("SCATD_GENEFORMER_DIR", str(root))
    monkeypatch.delenv("SCATD_GENEFORMER_MODEL", raising=False)
    G._PROBES.clear()
    G._MODELS.clear()
    return root


def counts(n_cells=16, seed=0, n_genes=30, symbols=True):
    ids, syms = H.gf_genes(n_genes)
    rng = np.random.default_rng(seed)
    x = rng.poisson(rng.uniform(0.1, 3.0, n_genes), size=(n_cells, n_genes)).astype(np.float32)
    a = ad.AnnData(sp.csr_matrix(x))
    a.var_names = syms if symbols else ids
    a.obs_names = [f"c{i}" for i in range(n_cells)]
    return a


def reference_tokens(x_row, medians, token_ids, limit, special=None):
    """Geneformer's tokenize_cell on one cell, written from the reference."""
    norm = x_row / x_row.sum() * 10_000 / medians
    nz = np.flatnonzero(norm)
    order = nz[np.argsort(-norm[nz], kind="stable")][:limit]
    out = token_ids[order]
    return np.concatenate([[special[0]], out, [special[1]]]) if special else out


def reference_embedding(model, tokens, mode="cell", special=False):
    """hidden_states[L-1] of the saved BertForMaskedLM (one cell, no padding), pooled as EmbExtractor."""
    with torch.no_grad():
        states = model(input_ids=torch.as_tensor(tokens)[None]).hidden_states[model.config.num_hidden_layers - 1][0]
    if mode == "cls":
        return states[0].numpy()
    return (states[1:-1] if special else states).mean(0).numpy()


def mlm(folder):
    """The saved model as Geneformer's EmbExtractor loads it."""
    return G.transformers_module().BertForMaskedLM.from_pretrained(folder, output_hidden_states=True).eval()


def test_embedding_matches_the_original_extraction(gf):
    a = counts(16)
    out, info = G.embed(a, device="cpu", batch_tokens=60)  # padded, length-sorted batches
    vocab = G.read_vocabulary("V1", gf)
    ids = np.array([vocab.tokens[g] for g in vocab.genes])
    medians = np.array([vocab.medians[g] for g in vocab.genes])
    x = a.X.toarray().astype(np.float64)
    model = mlm(gf / "gf-tiny")
    ref = np.stack([reference_embedding(model, reference_tokens(x[i], medians, ids, 2048)) for i in range(a.n_obs)])
    assert info["layers_used"] == 2 and info["version"] == "V1" and out.shape == (16, 16)
    assert np.abs(out - ref).max() < TOL


def test_v2_special_tokens_and_the_cls_mode(tmp_path, monkeypatch):
    root = H.gf_folder(tmp_path / "v2", v2=True)
    monkeypatch.setenv("SCATD_GENEFORMER_DIR", str(root))
    G._PROBES.clear()
    p = G.probe()
    assert p.available and "V2" in p.version
    vocab = G.read_vocabulary("V2", root)
    assert vocab.special_tokens
    a = counts(6, symbols=False)
    ids = np.array([vocab.tokens[g] for g in vocab.genes])
    medians = np.array([vocab.medians[g] for g in vocab.genes])
    special = (vocab.tokens["<cls>"], vocab.tokens["<eos>"])
    toks = [reference_tokens(r, medians, ids, 4094, special) for r in a.X.toarray().astype(np.float64)]
    assert [t.tolist() for t in G.tokenizer(a, vocab, 4096).tokenize(a.X)] == [t.tolist() for t in toks]
    model = mlm(root / "gf-tiny")
    for mode in ("cell", "cls"):
        out, _ = G.embed(a, device="cpu", emb_mode=mode)
        ref = np.stack([reference_embedding(model, t, mode, special=True) for t in toks])
        assert np.abs(out - ref).max() < TOL


def test_cls_needs_v2(gf):
    with pytest.raises(InputError, match="needs a Geneformer V2 model"):
        G.embed(counts(3), device="cpu", emb_mode="cls")


def test_tokenizer_ranks_scales_and_truncates(gf):
    vocab = G.read_vocabulary("V1", gf)
    a = counts(5, seed=2)
    tok = G.tokenizer(a, vocab, 6)  # an input size of 6 tokens: only the top 6 genes survive
    lists = tok.tokenize(a.X)
    x = a.X.toarray().astype(np.float64)
    medians = np.array([vocab.medians[g] for g in vocab.genes])
    ids = np.array([vocab.tokens[g] for g in vocab.genes])
    for i, t in enumerate(lists):
        assert t.tolist() == reference_tokens(x[i], medians, ids, 6).tolist()
    # the total count is over all genes: a gene Geneformer does not know still scales the others
    extra = ad.AnnData(sp.hstack([a.X, sp.csr_matrix(np.full((5, 1), 1000.0, dtype=np.float32))]).tocsr())
    extra.var_names = list(a.var_names) + ["UNKNOWN"]
    assert [t.tolist() for t in G.tokenizer(extra, vocab, 6).tokenize(extra.X)] == [t.tolist() for t in lists]


def test_symbols_and_ensembl_ids_and_duplicates(gf):
    vocab = G.read_vocabulary("V1", gf)
    by_symbol, by_id = counts(4), counts(4, symbols=False)
    t1 = G.tokenizer(by_symbol, vocab, 2048).tokenize(by_symbol.X)
    t2 = G.tokenizer(by_id, vocab, 2048).tokenize(by_id.X)
    assert [t.tolist() for t in t1] == [t.tolist() for t in t2]
    versioned = by_id.copy()
    versioned.var_names = [f"{g}.7" for g in by_id.var_names]
    assert [t.tolist() for t in G.tokenizer(versioned, vocab, 2048).tokenize(versioned.X)] == [t.tolist() for t in t2]


def test_values_that_are_not_counts_are_refused(gf):
    a = counts(20)
    logged = ad.AnnData(np.log1p(a.X.toarray() / a.X.toarray().sum(1, keepdims=True) * 1e4))
    logged.var_names = a.var_names
    with pytest.raises(InputError, match="log-normalised"):
        G.embed(logged, device="cpu")


def test_pytorch_model_bin_loads_with_weights_only_and_matches(gf, tmp_path):
    a = counts(6)
    want, _ = G.embed(a, device="cpu")
    model = G.transformers_module().BertForMaskedLM.from_pretrained(gf / "gf-tiny")
    (gf / "gf-tiny" / "model.safetensors").unlink()
    torch.save(model.state_dict(), gf / "gf-tiny" / "pytorch_model.bin")
    G._PROBES.clear()
    G._MODELS.clear()
    assert G.probe().files["weights"].name == "pytorch_model.bin"
    got, _ = G.embed(a, device="cpu")
    assert np.abs(got - want).max() < TOL


def test_pickled_code_in_weights_or_dictionaries_never_runs(gf, tmp_path):
    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (gf / "gf-tiny" / "model.safetensors").unlink()
    torch.save({"bert.embeddings.word_embeddings.weight": Payload()}, gf / "gf-tiny" / "pytorch_model.bin")
    G._PROBES.clear()
    p = G.probe()
    assert "never runs code" in " ".join(x.message for x in p.problems)
    with open(gf / "gene_median_dictionary.pkl", "wb") as fh:
        pickle.dump({"ENSG00000000001": Payload()}, fh)
    G._PROBES.clear()
    p = G.probe()
    assert {"bad_dictionary"} <= {x.code for x in p.problems}
    with pytest.raises(CheckpointError):
        G.load()
    assert not marker.exists()


def test_lfs_pointers_and_missing_files_say_what_to_do(gf, tmp_path, monkeypatch):
    (gf / "gf-tiny" / "model.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:" + "b" * 64 + "\nsize 41183536\n")
    G._PROBES.clear()
    p = G.probe()
    assert [x.code for x in p.problems] == ["lfs_pointer"] and "41.2 MB" in p.problems[0].message
    monkeypatch.setenv("SCATD_GENEFORMER_DIR", str(tmp_path / "empty"))
    p = G.probe(embedding_dim=512)
    codes = {x.code for x in p.problems}
    assert codes == {"missing_model", "missing_dictionaries"}
    assert "gf-12L-30M-i2048" in p.problems[0].hint and "SCATD_GENEFORMER_DIR" in p.problems[0].hint


def test_version_and_size_mismatches(gf, tmp_path, monkeypatch):
    # a V2 model (4096 positions) beside V1 dictionaries
    H.write_gf_model(gf / "gf-tiny", 32, v2=True)
    G._PROBES.clear()
    assert "version_mismatch" in {x.code for x in G.probe().problems}
    # a vocabulary that is not the dictionaries'
    H.write_gf_model(gf / "gf-tiny", 40)
    G._PROBES.clear()
    problems = G.probe().problems
    assert [x.code for x in problems] == ["version_mismatch"] and "40 tokens" in problems[0].message
    # header shapes that contradict config.json
    H.write_gf_model(gf / "gf-tiny", 32)
    import json

    cfg = json.loads((gf / "gf-tiny" / "config.json").read_text())
    cfg["hidden_size"] = 24
    (gf / "gf-tiny" / "config.json").write_text(json.dumps(cfg))
    G._PROBES.clear()
    assert "wrong_shape" in {x.code for x in G.probe().problems}


def test_the_model_is_chosen_by_the_embedding_size_the_drug_model_needs(gf):
    H.write_gf_model(gf / "gf-wide", 32, hidden_size=24, num_attention_heads=2)
    G._PROBES.clear()
    assert G.probe(embedding_dim=24).files["model"].name == "gf-wide"
    assert G.probe(embedding_dim=16).files["model"].name == "gf-tiny"
    p = G.probe(embedding_dim=512)
    assert [x.code for x in p.problems] == ["wrong_model"]
    assert "gf-12L-30M-i2048" in p.problems[0].hint and "16-d" in p.problems[0].message


def test_embed_cells_for_geneformer(gf):
    a = counts(8)
    x = a.X.toarray()
    x[3] = 0
    a.X = sp.csr_matrix(x)
    record = embed_cells(a, "vae_gf", device="cpu")
    emb = a.obsm["X_geneformer"]
    assert emb.shape == (8, 16) and np.isnan(emb[3]).all() and np.isfinite(np.delete(emb, 3, 0)).all()
    assert record["info"]["not_embedded"] == {"no_expressed_gene": 1} and record["n_embedded"] == 7


def test_cells_with_negative_or_non_finite_values_are_left_out_by_reason(gf):
    """Geneformer ranks values > 0 and divides by the cell's total: a negative value was dropped
    without a word, an infinite one ranked the cell's genes by dictionary order. Both are left out
    and named (any gene counts: the total is over all of them); the other cells are as before."""
    a = counts(40)
    clean = a.copy()
    embed_cells(clean, "vae_gf", device="cpu")
    x = a.X.toarray()
    x[3, 2], x[5, 1], x[6, 0] = -4, np.nan, np.inf
    a.X = sp.csr_matrix(x)
    record = embed_cells(a, "vae_gf", device="cpu")
    assert record["info"]["not_embedded"] == {"non_finite": 2, "negative_values": 1} and record["n_embedded"] == 37
    assert {k: v.tolist() for k, v in record["not_embedded_rows"].items()} == {"non_finite": [5, 6],
                                                                              "negative_values": [3]}
    emb = a.obsm["X_geneformer"]
    assert np.isnan(emb[[3, 5, 6]]).all()
    others = np.setdiff1d(np.arange(40), [3, 5, 6])
    np.testing.assert_allclose(emb[others], clean.obsm["X_geneformer"][others], rtol=1e-5, atol=1e-5)
    assert "negative" in G.NOT_EMBEDDED["negative_values"] and "NaN or infinite" in G.NOT_EMBEDDED["non_finite"]


def test_swapped_token_and_median_dictionaries_are_named_as_swapped(gf):
    tokens, medians = gf / "token_dictionary.pkl", gf / "gene_median_dictionary.pkl"
    t, m = tokens.read_bytes(), medians.read_bytes()
    tokens.write_bytes(m)
    medians.write_bytes(t)
    G._PROBES.clear()
    with pytest.raises(CheckpointError) as err:
        G.read_vocabulary("V1", gf)
    message = err.value.message
    assert message.startswith("These two files look swapped: token_dictionary.pkl holds gene medians")
    assert "gene_median_dictionary.pkl holds token ids" in message and "<pad> = 0" in message
    assert "different" not in message and "gene_median_dictionary.pkl" in err.value.hint
    problems = G.probe().problems
    assert [p.code for p in problems] == ["bad_dictionary"] and "look swapped" in problems[0].message
    # dictionaries of different releases are still said as such
    tokens.write_bytes(t)
    medians.write_bytes(pickle.dumps({**pickle.loads(m), "ENSG99999999999": 1.5}))
    with pytest.raises(CheckpointError, match="different Geneformer releases"):
        G.read_vocabulary("V1", gf)


@pytest.mark.parametrize("first, second, held_by_first, held_by_second", [
    ("token_dictionary.pkl", "gene_name_id_dict.pkl", "gene symbols mapped to Ensembl IDs", "token ids"),
    ("gene_median_dictionary.pkl", "gene_name_id_dict.pkl", "gene symbols mapped to Ensembl IDs", "gene medians"),
    ("token_dictionary.pkl", "gene_median_dictionary.pkl", "gene medians", "token ids"),
])
def test_every_pair_of_swapped_dictionaries_is_named_as_swapped(gf, first, second, held_by_first, held_by_second):
    a, b = (gf / first).read_bytes(), (gf / second).read_bytes()
    (gf / first).write_bytes(b)
    (gf / second).write_bytes(a)
    G._PROBES.clear()
    with pytest.raises(CheckpointError) as err:
        G.read_vocabulary("V1", gf)
    message = err.value.message
    assert message.startswith("These two files look swapped: ") and "different" not in message
    assert f"{first} holds {held_by_first}" in message and f"{second} holds {held_by_second}" in message
    assert first in err.value.hint and second in err.value.hint and "refused" not in message
    assert [p.code for p in G.probe().problems] == ["bad_dictionary"]
    # the gene-name route of every upload says the same of gene_name_id_dict.pkl, not "refused to load numpy"
    from scatd_core import genes

    problems = []
    names = genes.default_symbol_dictionary(problems)
    if "gene_name_id_dict.pkl" in (first, second):
        assert names is None and len(problems) == 1 and "refused" not in problems[0]
        assert f"gene_name_id_dict.pkl holds {held_by_second}" in problems[0] and "looks swapped" in problems[0]
    else:
        assert names is not None and not problems


def test_a_dictionary_copied_over_another_is_named(gf):
    (gf / "gene_name_id_dict.pkl").write_bytes((gf / "token_dictionary.pkl").read_bytes())
    with pytest.raises(CheckpointError) as err:
        G.read_vocabulary("V1", gf)
    assert err.value.message.startswith("A dictionary file holds another dictionary's content: gene_name_id_dict.pkl "
                                        "holds token ids") and "(what token_dictionary.pkl holds)" in err.value.message


def test_numpy_values_in_dictionaries_are_plain_numbers_only(tmp_path):
    from scatd_core import genes

    path = tmp_path / "d.pkl"
    path.write_bytes(pickle.dumps({"A": np.int16(3), "B": np.float64(1.5), "C": np.bool_(True)}))
    assert genes.load_pickled_dict(path, allow_numpy_scalars=True) == {"A": 3, "B": 1.5, "C": True}
    for value in (np.array([(1, 2.0)], dtype=[("x", "i4"), ("y", "f8")])[0], np.str_("TP53"), np.void(b"ab")):
        path.write_bytes(pickle.dumps({"A": value}))
        with pytest.raises(InputError, match="refused"):
            genes.load_pickled_dict(path, allow_numpy_scalars=True)
    # an object-typed numpy scalar, as a crafted pickle would build one (numpy.dtype('O') then scalar(dtype, obj))
    crafted = (b"\x80\x04}\x94\x8c\x01A\x94\x8c\x15numpy.core.multiarray\x94\x8c\x06scalar\x94\x93\x94\x8c\x05numpy"
               b"\x94\x8c\x05dtype\x94\x93\x94\x8c\x02O8\x94\x89\x88\x87\x94R\x94\x8c\x01x\x94\x86\x94R\x94s.")
    path.write_bytes(crafted)
    with pytest.raises(InputError, match="refused"):
        genes.load_pickled_dict(path, allow_numpy_scalars=True)


# ----------------------------------------------------------------------------- real V1 dictionaries

def test_real_v1_dictionaries_tokenise_a_scanpy_dataset():
    import scanpy as sc

    shared_file("geneformer", "token_dictionary.pkl")
    vocab = G.read_vocabulary("V1", SHARED_DATA / "geneformer")
    assert vocab.version == "V1" and len(vocab.tokens) == 25_426 and len(vocab.medians) == 25_424
    assert not vocab.special_tokens and vocab.names is not None
    pbmc = sc.datasets.pbmc68k_reduced()  # bundled with scanpy: no network
    raw = pbmc.raw.to_adata()
    a = ad.AnnData(sp.csr_matrix(np.expm1(raw.X.toarray()).astype(np.float32)))  # back to a linear scale
    a.var_names = raw.var_names
    tok = G.tokenizer(a, vocab, 2048)
    assert tok.alignment.n_matched > 0.9 * a.n_vars  # symbols reach Ensembl through gene_name_id_dict
    lists = tok.tokenize(a.X[:50])
    medians = np.array([vocab.medians[g] for g in tok.genes])
    aligned = (a.X[:50] @ tok.alignment.matrix).toarray()
    totals = np.asarray(a.X[:50].sum(axis=1)).ravel()
    column = {int(t): j for j, t in enumerate(tok.token_ids)}
    for i, t in enumerate(lists):
        assert 0 < t.size <= 2048 and t.min() >= 2  # no <pad>/<mask>
        norm = aligned[i] / totals[i] * 10_000 / medians
        ranked = norm[[column[int(x)] for x in t]]
        assert np.all(np.diff(ranked) <= 0) and t.size == int((norm > 0).sum())  # descending, every expressed gene
    cd3e = vocab.tokens[vocab.names["CD3E"]]
    assert any(cd3e in t for t in lists)


def test_real_configs_are_v1_and_give_the_published_sizes(tmp_path):
    import json

    for name, hidden, layers in (("gf-12L-30M-config.json", 512, 12), ("gf-6L-30M-config.json", 256, 6)):
        folder = G.ModelFolder(tmp_path, json.loads(shared_file("geneformer", name).read_text()), None)
        assert (folder.version, folder.hidden_size, folder.n_layers, folder.input_size) == ("V1", hidden, layers, 2048)
        assert [p.code for p in G.check_model(folder, None)] == ["missing_weights"]


def test_a_config_json_with_other_heads_than_the_published_model_is_warned(gf, tmp_path, monkeypatch):
    import json

    for name in ("gf-12L-30M-config.json", "gf-6L-30M-config.json"):  # the known configs are the published ones
        config = json.loads(shared_file("geneformer", name).read_text())
        assert G.published_config_note(G.ModelFolder(tmp_path / "m", config, None)) is None
        sizes = (config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"],
                 config["max_position_embeddings"])
        assert G.PUBLISHED_CONFIGS[sizes][1] == config["num_attention_heads"]
    config = json.loads(shared_file("geneformer", "gf-12L-30M-config.json").read_text())
    note = G.published_config_note(G.ModelFolder(tmp_path / "gf-12L-30M-i2048", {**config, "num_attention_heads": 4},
                                                 None))
    assert "gives 4 attention heads where gf-12L-30M-i2048 has 8" in note and "VAE_gf" in note
    # the probe says it (the tiny model's sizes taken as published, with 4 heads where its config.json gives 2)
    monkeypatch.setitem(G.PUBLISHED_CONFIGS, (3, 16, 32, 2048), ("gf-tiny-published", 4))
    G._PROBES.clear()
    p = G.probe()
    assert p.available and len(p.warnings) == 1 and "gives 2 attention heads where gf-tiny-published has 4" in p.warnings[0]
    assert "Warning: gf-tiny/config.json describes the published gf-tiny-published" in p.summary()


@pytest.mark.parametrize("change, words", [
    ({"num_attention_heads": 7}, "7 attention heads for a hidden size of 16"),
    ({"intermediate_size": 48}, "intermediate.dense.weight is (32, 16) but config.json makes it (48, 16)"),
])
def test_a_config_json_that_does_not_fit_the_weights_is_named_before_loading(gf, change, words):
    import json

    path = gf / "gf-tiny" / "config.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), **change)))
    G._PROBES.clear()
    G._MODELS.clear()
    problems = G.probe().problems
    assert [p.code for p in problems] == ["wrong_shape"]
    assert words in problems[0].message and "config.json" in problems[0].message
    # and loading past the probe says the same, not transformers' ValueError / RuntimeError
    with pytest.raises(CheckpointError, match="does not match gf-tiny/config.json"):
        G._load_bert(G.model_folders()[0], 2, "cpu")


def test_a_missing_gene_name_dictionary_is_named_for_symbol_data(gf):
    (gf / "gene_name_id_dict.pkl").unlink()
    G._PROBES.clear()
    p = G.probe()
    assert p.available and "gene_name_id_dict.pkl" in p.warnings[0] and "gene_name_id_dict.pkl" in p.summary()
    assert p.to_dict()["warnings"] == p.warnings
    with pytest.raises(CheckpointError, match="gene_name_id_dict.pkl") as err:
        G.embed(counts(4), device="cpu")
    assert "symbol" in err.value.message and err.value.app_hint
    out, info = G.embed(counts(4, symbols=False), device="cpu")  # Ensembl IDs need no dictionary
    assert info["n_embedded"] == 4
    from scatd_core import doctor

    item = next(i for i in doctor._foundation() if i["what"] == "vae_gf")
    assert item["status"] == "warning" and "Warning: Geneformer's gene-name dictionary (gene_name_id_dict.pkl" in item["detail"]


def _without_transformers():
    """Take ``transformers`` out of sys.modules (as in a fresh server process); returns what to put back."""
    import sys

    saved = {k: m for k, m in sys.modules.items() if k == "transformers" or k.startswith("transformers.")}
    for k in saved:
        del sys.modules[k]
    return saved


def _put_back(saved):
    import sys

    for k in [k for k in sys.modules if k == "transformers" or k.startswith("transformers.")]:
        del sys.modules[k]
    sys.modules.update(saved)


def test_two_sessions_importing_transformers_at_once_both_succeed(gf, monkeypatch):
    """Two sessions opening the Model page at once both checked Geneformer's config.json, each
    importing transformers for the first time: one failed with "cannot import name 'BertConfig'"."""
    import threading

    model = G.model_folders()[0]
    shapes = {G._bert_key(k): v for k, v in G._weight_shapes(model.weights).items() if G._bert_key(k) is not None}
    saved = _without_transformers()
    monkeypatch.setattr(G, "_TRANSFORMERS", None, raising=False)
    try:
        n = 4
        barrier, results, errors = threading.Barrier(n), [], []

        def session(check):
            barrier.wait()
            try:
                results.append(check())
            except Exception as exc:  # noqa: BLE001 (what the test looks for)
                errors.append(repr(exc))

        checks = [lambda: G.config_mismatch(model, shapes)] * (n - 2) + [lambda: G.transformers_module().BertModel] * 2
        threads = [threading.Thread(target=session, args=(c,)) for c in checks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, "\n".join(errors)
        assert results.count(None) == n - 2  # config.json checked: it fits the weights
        assert [r.__name__ for r in results if r is not None] == ["BertModel"] * 2
    finally:
        _put_back(saved)


def test_a_missing_transformers_package_is_named(gf, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_transformers(name, *args, **kwargs):
        if name == "transformers" or name.startswith("transformers."):
            raise ImportError("No module named 'transformers'")
        return real_import(name, *args, **kwargs)

    saved = _without_transformers()
    monkeypatch.setattr(G, "_TRANSFORMERS", None)
    monkeypatch.setattr(builtins, "__import__", no_transformers)
    try:
        with pytest.raises(ScatdError, match="Geneformer needs the transformers package") as info:
            G.transformers_module()
        assert "pip install" in info.value.hint
        G._PROBES.clear()
        problems = G.probe().problems
        assert [p.code for p in problems] == ["missing_package"] and "transformers" in problems[0].message
        G.warm_up()  # the app's start-up: no error of its own
    finally:
        monkeypatch.undo()
        _put_back(saved)
        G._PROBES.clear()


def test_transformers_is_imported_in_one_place_only():
    """The helper is the only way scATD imports transformers (so the lock covers every first import)."""
    import re

    from conftest import REPO

    found = []
    for folder in ("scatd_core", "scatd_app", "app_pages", "tests", "benches"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if re.match(r"\s*(from\s+transformers[\s.]|import\s+transformers\b)", line):
                    found.append(f"{path.relative_to(REPO)}:{i}")
    assert found == ["scatd_core/foundation/geneformer.py:" + str(
        next(i for i, line in enumerate((REPO / "scatd_core/foundation/geneformer.py").read_text().splitlines(), 1)
             if line.strip() == "import transformers"))]


def test_doctor_calls_a_geneformer_with_the_other_generations_dictionaries_an_error(gf):
    """`scatd doctor` called a Geneformer that cannot run (a V2 model beside V1 dictionaries, or the
    reverse) a warning; it is an error now, which says what to do. Not installed stays a warning."""
    from scatd_core.doctor import _foundation

    H.write_gf_model(gf / "gf-tiny", 32, v2=True)  # a V2 model (4096 positions) beside V1 dictionaries
    G._PROBES.clear()
    item = next(i for i in _foundation() if i["what"] == "vae_gf")
    assert item["status"] == "problem", item
    assert "is Geneformer V2 but only V1 dictionaries" in item["detail"]
    assert "What to do: Put the Geneformer V2 dictionaries (token_dictionary_gc104M.pkl" in item["detail"]
    assert "or replace the model with a Geneformer V1 model" in item["detail"]
    for path in (gf / "gf-tiny").iterdir():  # no model at all: not installed, a warning
        path.unlink()
    (gf / "gf-tiny").rmdir()
    G._PROBES.clear()
    assert next(i for i in _foundation() if i["what"] == "vae_gf")["status"] == "warning"
