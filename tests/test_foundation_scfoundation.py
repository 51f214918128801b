"""scFoundation in the loop: checkpoint layout, restricted loading, conversion, preprocessing, equivalence.

Every test drives the real loading code on a tiny random checkpoint generated in the official
``models.ckpt`` layout (``_foundation_helpers``); no test needs the real weights.
"""

from __future__ import annotations

import json
import math
import os

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

import _foundation_helpers as H
from _foundation_helpers import one_thread  # noqa: F401 (autouse fixture)
from conftest import shared_file
from scatd_core.errors import CheckpointError, InputError
from scatd_core.foundation import embed_cells, probe_all
from scatd_core.foundation import scfoundation as S
from scatd_core.nn.scfoundation import ScFoundationConfig, encoder_state_keys

#: float32 reference vs batched, padded, length-sorted implementation (12 matrix products deep)
TOL = 2e-5


@pytest.fixture
def sf(tmp_path, monkeypatch):
    root = H.sf_folder(tmp_path / "scfoundation")
    monkeypatch.setenv("SCATD_SCFOUNDATION_DIR", str(root))
    S._PROBES.clear()
    S._MODELS.clear()
    return root


def counts(n_cells=24, genes=None, seed=0, rate=1.0):
    genes = genes or H.sf_genes(40)
    rng = np.random.default_rng(seed)
    lam = rng.uniform(0.05, 3.0, size=len(genes)) * rate
    x = rng.poisson(lam, size=(n_cells, len(genes))).astype(np.float32)
    x[:, 0] += rng.integers(0, 3, n_cells)  # lengths vary from cell to cell
    a = ad.AnnData(sp.csr_matrix(x))
    a.var_names = genes
    a.obs_names = [f"c{i}" for i in range(n_cells)]
    return a


# ----------------------------------------------------------------------------- an independent forward

def reference_embedding(state: dict, cfg: dict, counts_row: np.ndarray, resolution: str = "a5") -> np.ndarray:
    """scFoundation's per-cell path as get_embedding.py runs it (batch of one, no padding), written
    from the reference with torch primitives only (no nn.TransformerEncoderLayer)."""
    sd = {k: v.double() for k, v in state.items()}
    x = counts_row.astype(np.float64)
    total = x.sum()
    values = np.log1p(x / total * 1e4)
    mode, number = resolution[0], float(resolution[1:])
    s = math.log10(total)
    t = {"t": number, "f": math.log10(total * number), "a": s + number}[mode]
    full = np.concatenate([values, [t, s]])
    keep = np.flatnonzero(full > 0)
    v = torch.tensor(full[keep], dtype=torch.float64)[:, None]
    h = F.leaky_relu(v @ sd["token_emb.mlp.weight"].T + sd["token_emb.mlp.bias"], 0.1)
    w = torch.softmax(cfg["bin_alpha"] * h + h @ sd["token_emb.mlp2.weight"].T + sd["token_emb.mlp2.bias"], dim=-1)
    z = w @ sd["token_emb.emb.weight"] + sd["pos_emb.weight"][torch.tensor(keep)]
    d, heads = z.shape[1], cfg["heads"]
    for i in range(cfg["depth"]):
        p = f"encoder.transformer_encoder.{i}."
        qkv = z @ sd[p + "self_attn.in_proj_weight"].T + sd[p + "self_attn.in_proj_bias"]
        q, k, vv = qkv.split(d, dim=1)
        split = lambda m: m.reshape(m.shape[0], heads, d // heads).transpose(0, 1)  # noqa: E731
        att = torch.softmax(split(q) @ split(k).transpose(1, 2) / math.sqrt(d // heads), dim=-1) @ split(vv)
        att = att.transpose(0, 1).reshape(-1, d) @ sd[p + "self_attn.out_proj.weight"].T + sd[p + "self_attn.out_proj.bias"]
        z = F.layer_norm(z + att, (d,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-5)
        ff = torch.relu(z @ sd[p + "linear1.weight"].T + sd[p + "linear1.bias"]) @ sd[p + "linear2.weight"].T \
            + sd[p + "linear2.bias"]
        z = F.layer_norm(z + ff, (d,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-5)
    z = F.layer_norm(z, (d,), sd["encoder.norm.weight"], sd["encoder.norm.bias"], 1e-5)
    return torch.cat([z[-1], z[-2], z[:-2].max(dim=0).values, z[:-2].mean(dim=0)]).numpy()


def test_encoder_matches_an_independent_forward_on_the_same_state_dict(sf):
    ckpt = torch.load(sf / "models" / "models.ckpt", weights_only=True)["rde"]
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items()}
    cfg = {**ckpt["config"]["model_config"]["mae_autobin"]["encoder"], "bin_alpha": 1.0}
    a = counts(12)
    out, info = S.embed(a, device="cpu", batch_tokens=120)  # several padded, length-sorted batches
    x = a.X.toarray()
    lengths = (x > 0).sum(axis=1)
    assert lengths.min() < lengths.max()  # the batches really mix lengths
    ref = np.stack([reference_embedding(state, cfg, x[i]) for i in range(a.n_obs)])
    assert out.shape == (12, 4 * H.SF_HIDDEN) and info["n_embedded"] == 12
    assert np.abs(out - ref).max() < TOL
    # the same numbers whatever the batching
    one_by_one, _ = S.embed(a, device="cpu", batch_tokens=1)
    assert np.abs(one_by_one - out).max() < TOL


@pytest.mark.parametrize("resolution", ["t4", "f1", "a5"])
def test_total_count_tokens(sf, resolution):
    ckpt = torch.load(sf / "models" / "models.ckpt", weights_only=True)["rde"]
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items()}
    cfg = {**ckpt["config"]["model_config"]["mae_autobin"]["encoder"], "bin_alpha": 1.0}
    a = counts(5, seed=3)
    out, _ = S.embed(a, device="cpu", resolution=resolution)
    ref = np.stack([reference_embedding(state, cfg, a.X.toarray()[i], resolution) for i in range(5)])
    assert np.abs(out - ref).max() < TOL


def test_state_dict_keys_are_the_originals(sf):
    cfg = ScFoundationConfig(seq_len=42, hidden_dim=16, depth=2, heads=2, bin_num=10)
    keys = encoder_state_keys(cfg)
    assert keys[:2] == ["token_emb.mlp.weight", "token_emb.mlp.bias"]
    assert "pos_emb.weight" in keys and "encoder.norm.bias" in keys
    assert "encoder.transformer_encoder.1.self_attn.in_proj_weight" in keys
    # the published size: 154 tensors on the cell-embedding path, 99,941,692 parameters (backbones.md A.3)
    published = ScFoundationConfig()
    with torch.device("meta"):
        from scatd_core.nn.scfoundation import ScFoundationEncoder

        model = ScFoundationEncoder(published)
    assert len(model.state_dict()) == 154
    assert sum(p.numel() for p in model.parameters()) == 99_941_692
    assert published.embedding_dim == 3072


# ----------------------------------------------------------------------------- files and probe

def test_probe_reports_missing_files_with_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("SCATD_SCFOUNDATION_DIR", str(tmp_path / "nothing"))
    p = S.probe()
    assert not p.available
    codes = {x.code for x in p.problems}
    assert codes == {"missing_weights", "missing_gene_list"}
    hint = " ".join(x.hint for x in p.problems)
    assert "models.ckpt" in hint and "SCATD_SCFOUNDATION_DIR" in hint and "OS_scRNA_gene_index.19264.tsv" in hint
    with pytest.raises(CheckpointError, match="No scFoundation weights"):
        S.load()


def test_probe_of_a_complete_folder(sf):
    p = S.probe()
    assert p.available and p.embedding_dim == 64 and not p.problems
    assert "'rde' model (2 layers x 16" in p.version
    entries = {d["backbone"]: d for d in probe_all()}
    assert entries["vae_sf"]["available"] and entries["vae_sf"]["embedding_dim"] == 64
    assert entries["vae_sf"]["ok"] and "64-d cell embeddings" in entries["vae_sf"]["detail"]
    assert set(entries["vae_gf"]) >= {"available", "version", "embedding_dim", "problems", "location"}
    assert not entries["vae_gf"]["ok"] and "What to do:" in entries["vae_gf"]["detail"]


def test_git_lfs_pointer_is_named_with_its_size(sf):
    ckpt = sf / "models" / "models.ckpt"
    ckpt.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "a" * 64 + "\nsize 1480000000\n")
    p = S.probe()
    assert [x.code for x in p.problems] == ["lfs_pointer"]
    assert "1,480.0 MB" in p.problems[0].message and "git lfs pull" in p.problems[0].hint
    with pytest.raises(CheckpointError, match="Git LFS pointer"):
        S.load()


def test_pickled_code_in_the_checkpoint_is_refused_and_never_runs(sf, tmp_path):
    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"rde": {"config": Payload(), "state_dict": {}}}, sf / "models" / "models.ckpt")
    p = S.probe()
    assert [x.code for x in p.problems] == ["bad_checkpoint"]
    assert "never runs code" in p.problems[0].message and "posix.system" in p.problems[0].message
    with pytest.raises(CheckpointError):
        S.read_checkpoint(sf / "models" / "models.ckpt")
    assert not marker.exists()


def test_missing_key_lists_what_the_file_holds(sf):
    H.write_sf_checkpoint(sf / "models" / "models.ckpt", H.sf_genes(40), keys=("cell", "gene"))
    with pytest.raises(CheckpointError, match=r"no model 'rde' \(it holds: cell, gene\)"):
        S.read_checkpoint(sf / "models" / "models.ckpt")
    S._PROBES.clear()
    assert S.probe(key="cell").available


def test_shapes_that_contradict_the_config_are_caught(sf):
    genes = H.sf_genes(40)
    state = H.sf_state(genes)
    state["pos_emb.weight"] = state["pos_emb.weight"][:30]
    torch.save({"rde": {"config": H.sf_config(40), "state_dict": {f"model.{k}": v for k, v in state.items()}}},
               sf / "models" / "models.ckpt")
    p = S.probe()
    assert p.problems[0].code == "bad_checkpoint" and "pos_emb.weight is (30, 16), expected (43, 16)" in p.problems[0].message


def _malformed(change):
    """A models.ckpt payload of one 'rde' entry, changed by ``change(config, state)``."""
    cfg, state = H.sf_config(40), {f"model.{k}": v for k, v in H.sf_state(H.sf_genes(40)).items()}
    encoder = cfg["model_config"]["mae_autobin"]["encoder"]
    entry = {"config": cfg, "state_dict": state}
    change(entry, cfg["model_config"]["mae_autobin"], encoder)
    return {"rde": entry}


MALFORMED = {
    "state_dict is a number": (lambda e, m, enc: e.update(state_dict=5), "'state_dict' is a int"),
    "state_dict is a list": (lambda e, m, enc: e.update(state_dict=[1, 2]), "'state_dict' is a list"),
    "config is a string": (lambda e, m, enc: e.update(config="x"), "config is a str"),
    "dataset_config is a list": (lambda e, m, enc: e["config"].update(dataset_config=[1]), "'dataset_config'"),
    "rnaseq is a number": (lambda e, m, enc: e["config"].update(dataset_config={"rnaseq": 5}), "'dataset_config'"),
    "no heads": (lambda e, m, enc: enc.update(heads=0), "heads is 0"),
    "heads do not divide": (lambda e, m, enc: enc.update(heads=3), "not divisible"),
    "negative width": (lambda e, m, enc: enc.update(hidden_dim=-4), "hidden_dim is -4"),
    "huge width": (lambda e, m, enc: enc.update(hidden_dim=10 ** 12), "no encoder that can be built"),
    "more layers than tensors": (lambda e, m, enc: enc.update(depth=10 ** 9), "holds 2"),
    "infinite bins": (lambda e, m, enc: m.update(bin_num=float("inf")), "infinity"),
    "integer tensors": (lambda e, m, enc: e.update(state_dict={k: v.long() for k, v in e["state_dict"].items()}),
                        "not floating-point"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_checkpoints_are_checkpoint_errors_not_bugs(sf, tmp_path, capsys, case):
    """convert-scfoundation on a file that is not laid out as scFoundation's says so (exit 2)."""
    from scatd_core.cli import main

    change, expected = MALFORMED[case]
    torch.save(_malformed(change), tmp_path / "bad.ckpt")
    assert main(["convert-scfoundation", str(tmp_path / "bad.ckpt"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert expected in err and "unexpected" not in err and len(err.strip().splitlines()) == 2  # message + hint


def test_a_mangled_converted_config_is_a_problem_of_the_probe(sf):
    S.convert(sf / "models" / "models.ckpt")
    config = sf / "models" / "scfoundation_rde.json"
    record = json.loads(config.read_text())
    record["config"]["hidden_dim"] = "wide"
    config.write_text(json.dumps(record))
    p = S.probe()
    assert [x.code for x in p.problems] == ["bad_weights"] and "mangled config" in p.problems[0].message


def test_gene_list_must_match_the_model(sf):
    H.write_sf_gene_list(sf / "OS_scRNA_gene_index.19264.tsv", H.sf_genes(39))
    assert [x.code for x in S.probe().problems] == ["gene_list_mismatch"]
    (sf / "OS_scRNA_gene_index.19264.tsv").write_text("gene_name\tindex\nB\t1\nA\t0\n")
    with pytest.raises(CheckpointError, match="re-sorted"):
        S.read_gene_list(sf / "OS_scRNA_gene_index.19264.tsv")


def _full_size_folder(root, genes):
    """A tiny model (16 wide, 2 layers) that takes the published list's 19,264 genes, with ``genes``."""
    root.mkdir(parents=True)
    H.write_sf_gene_list(root / "OS_scRNA_gene_index.19264.tsv", genes)
    H.write_sf_checkpoint(root / "models.ckpt", sorted(genes), keys=("rde",))
    S._PROBES.clear()
    return root


def test_a_reordered_published_gene_list_is_refused_and_another_list_warned(tmp_path, monkeypatch):
    official = S.read_gene_list(shared_file("scfoundation", "OS_scRNA_gene_index.19264.tsv"))
    # the published genes sorted A-Z and renumbered: each gene's row no longer the model's position for it
    folder = _full_size_folder(tmp_path / "sorted", sorted(official))
    monkeypatch.setenv("SCATD_SCFOUNDATION_DIR", str(folder))
    p = S.probe()
    assert not p.available and [x.code for x in p.problems] == ["gene_list_reordered"]
    assert "another order than the published list" in p.problems[0].message
    assert "unmodified OS_scRNA_gene_index.19264.tsv" in p.problems[0].hint
    with pytest.raises(CheckpointError, match="another order"):
        S.convert(folder / "models.ckpt")  # nor is its sha256 recorded as the right one
    # other genes of the same number: usable (weights trained on that list), but said
    other = official[:-1] + ["NOT_A_SCFOUNDATION_GENE"]
    folder = _full_size_folder(tmp_path / "other", other)
    monkeypatch.setenv("SCATD_SCFOUNDATION_DIR", str(folder))
    p = S.probe()
    assert p.available and len(p.warnings) == 1 and "1 of its rows holds another gene than the published" in p.warnings[0]
    assert "(index 19,263: expected a gene this list lacks, found NOT_A_SCFOUNDATION_GENE)" in p.warnings[0]
    assert "Warning: " in p.summary()
    # the published list as published: nothing said
    folder = _full_size_folder(tmp_path / "official", official)
    monkeypatch.setenv("SCATD_SCFOUNDATION_DIR", str(folder))
    p = S.probe()
    assert p.available and not p.warnings
    assert S.gene_list_sha256(official) == S.OFFICIAL_GENES_SHA256 and S.official_list_problem(official) is None


def test_the_packaged_fingerprint_is_that_of_the_published_gene_list():
    official = S.read_gene_list(shared_file("scfoundation", "OS_scRNA_gene_index.19264.tsv"))
    assert S.published_fingerprint().tobytes() == S.gene_fingerprint(official).tobytes()
    assert len(set(S.published_fingerprint().tolist())) == S.OFFICIAL_N_GENES  # one number per gene, no two alike


def test_a_gene_list_with_other_genes_says_how_many_rows_differ_and_which(tmp_path):
    """QA: a 19,264-gene list with other genes was only warned about ("not the published list"),
    without saying how many rows or which. Now: the count and the first 5 rows, expected vs found;
    warned up to 5% of the rows (e.g. symbols renamed), refused above (another or shifted list)."""
    official = S.read_gene_list(shared_file("scfoundation", "OS_scRNA_gene_index.19264.tsv"))
    edited = list(official)
    edited[3] = "RENAMED3"  # a newer symbol at the same row
    edited[10], edited[20] = official[20], official[10]  # two rows swapped
    edited[100:103] = ["RENAMED100", "RENAMED101", "RENAMED102"]
    p = S.official_list_problem(edited)
    assert p.code == "gene_list_differs" and "but 6 of its rows hold another gene" in p.message
    assert (f"(the first 5: index 3: expected a gene this list lacks, found RENAMED3; index 10: expected "
            f"{official[10]}, found {official[20]}, published at index 20; index 20: expected {official[20]}, found "
            f"{official[10]}, published at index 10; index 100: expected a gene this list lacks, found RENAMED100; "
            "index 101: ") in p.message
    assert "RENAMED102" not in p.message and "2 of these rows hold a published gene of another row" in p.message
    assert "renamed genes to newer symbols" in p.hint
    # a row removed near the top and a gene added at the end: every later row holds its neighbour's gene
    shifted = official[:50] + official[51:] + ["ADDED"]
    p = S.official_list_problem(shifted)
    assert p.code == "gene_list_too_different" and p.code in S.REFUSED_LIST_PROBLEMS
    assert "but 19,214 of its rows hold another gene" in p.message
    assert f"index 50: expected a gene this list lacks, found {official[51]}, published at index 51" in p.message
    assert "19,213 of these rows hold a published gene of another row" in p.message
    assert "more than 963 rows (5%)" in p.message and "unmodified OS_scRNA_gene_index.19264.tsv" in p.hint
    # the threshold: 963 rows differing is warned, 964 refused
    at_most = official[:-963] + [f"NEW{i}" for i in range(963)]
    assert S.official_list_problem(at_most).code == "gene_list_differs"
    assert S.official_list_problem(official[:-964] + [f"NEW{i}" for i in range(964)]).code == "gene_list_too_different"
    # the probe refuses it, and convert does not record it as the right list
    folder = _full_size_folder(tmp_path / "shifted", shifted)
    p = S.probe(folder)
    assert not p.available and [x.code for x in p.problems] == ["gene_list_too_different"] and not p.warnings
    with pytest.raises(CheckpointError, match="19,214 of its rows hold another gene"):
        S.convert(folder / "models.ckpt")


def test_a_probe_with_errors_says_its_warnings_too_errors_first(tmp_path, monkeypatch):
    """QA: with an error, the probe's warnings were not said: the user fixed the error and only then
    learnt of the warning. The error raised names every problem, then every warning."""
    official = S.read_gene_list(shared_file("scfoundation", "OS_scRNA_gene_index.19264.tsv"))
    folder = tmp_path / "no-weights"
    folder.mkdir()
    H.write_sf_gene_list(folder / S.GENE_LIST, official[:-1] + ["RENAMED"])  # warned; and no models.ckpt
    monkeypatch.setenv("SCATD_SCFOUNDATION_DIR", str(folder))
    S._PROBES.clear()
    p = S.probe()
    assert [x.code for x in p.problems] == ["missing_weights"] and len(p.warnings) == 1
    with pytest.raises(CheckpointError) as caught:
        p.require()
    message = caught.value.message
    assert message.index("No scFoundation weights") < message.index("Warning: OS_scRNA_gene_index.19264.tsv lists "
                                                                     "19,264 genes but 1 of its rows holds")
    assert "found RENAMED" in message and "models.ckpt" in caught.value.hint
    assert p.summary().index("No scFoundation weights") < p.summary().index("Warning: ")


def test_an_encoder_other_than_the_published_one_is_said(sf, tmp_path):
    p = S.probe()  # 2 layers x 16: its 64-d embeddings fit no published VAE_sf model, which says so
    assert "(2 layers x 16" in p.version and "the published scFoundation model has 12 layers x 768" in p.version
    assert not p.warnings
    cfg = ScFoundationConfig(seq_len=42, hidden_dim=768, depth=1, heads=12)  # the published width, one layer
    out = S.Probe("vae_sf", S.NAME, str(sf), "test", version="scFoundation 'rde' model (1 layer x 768)")
    S._check_architecture(out, cfg)
    assert len(out.warnings) == 1 and "1 layer x 768" in out.warnings[0]
    assert "the published one has 12 layers x 768, 12 attention heads" in out.warnings[0]
    out = S.Probe("vae_sf", S.NAME, str(sf), "test", version="v")
    S._check_architecture(out, ScFoundationConfig(seq_len=42, hidden_dim=768, depth=12, heads=12))
    assert out.version == "v" and not out.warnings


def test_convert_writes_safetensors_and_config_that_give_the_same_embeddings(sf):
    a = counts(12)
    before, _ = S.embed(a, device="cpu")
    weights, config = S.convert(sf / "models" / "models.ckpt")
    assert weights.parent == sf / "models" and weights.name == "scfoundation_rde.safetensors"
    record = json.loads(config.read_text())
    assert record["key"] == "rde" and record["n_tensors"] == len(encoder_state_keys(S.ScFoundationConfig.from_dict(
        record["config"]))) and record["gene_list_sha256"] and len(record["source_sha256"]) == 64
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as fh:
        assert not any(k.startswith(("decoder", "to_final")) for k in fh.keys())
    # the app reads the conversion when it is there (here beside models.ckpt, in models/)
    p = S.probe()
    assert p.available and "converted from models.ckpt" in p.version
    after, _ = S.embed(a, device="cpu")
    assert np.array_equal(before, after)
    # a gene list edited after the conversion is caught
    genes = H.sf_genes(40)
    genes[0], genes[1] = genes[1], genes[0]
    H.write_sf_gene_list(sf / "OS_scRNA_gene_index.19264.tsv", genes)
    assert [x.code for x in S.probe().problems] == ["gene_list_mismatch"]


def test_the_cell_and_rde_models_differ(sf):
    a = counts(4)
    rde, _ = S.embed(a, device="cpu", key="rde")
    cell, _ = S.embed(a, device="cpu", key="cell")
    assert np.abs(rde - cell).max() > 1e-3


# ----------------------------------------------------------------------------- preprocessing

def test_genes_are_matched_by_name_in_list_order_and_duplicates_summed(sf):
    a = counts(6)
    shuffled = a[:, np.random.default_rng(1).permutation(a.n_vars)].copy()
    extra = ad.AnnData(sp.hstack([shuffled.X, sp.csr_matrix(np.ones((6, 3), dtype=np.float32))]).tocsr())
    extra.var_names = list(shuffled.var_names) + ["NOT_A_GENE1", "NOT_A_GENE2", "NOT_A_GENE3"]
    base, _ = S.embed(a, device="cpu")
    out, info = S.embed(extra, device="cpu")
    assert np.abs(out - base).max() < TOL
    assert info["gene_coverage"]["n_extra_ignored"] == 3
    # a gene split over two columns of the same name counts as their sum
    x = a.X.toarray()
    split = np.hstack([x, x[:, :1]])
    split[:, 0] = 0
    dup = ad.AnnData(split)
    dup.var_names = list(a.var_names) + [a.var_names[0]]
    out, _ = S.embed(dup, device="cpu")
    assert np.abs(out - base).max() < TOL


def test_log_normalised_values_are_used_as_given(sf):
    a = counts(6)
    x = a.X.toarray().astype(np.float64)
    logged = np.log1p(x / x.sum(axis=1, keepdims=True) * 1e4)
    b = ad.AnnData(logged.astype(np.float32))
    b.var_names = a.var_names
    prepared = S.prepare(b, H.sf_genes(40))
    assert not prepared.normalise and prepared.value_kind == "log_normalized"
    values, totals = prepared.values(b.X)
    assert np.allclose(values.toarray(), logged, atol=1e-5)
    assert np.allclose(totals, logged.sum(axis=1), rtol=1e-5)  # the original's pre_normalized=T total


def test_scaled_data_and_unknown_genes_are_refused(sf):
    a = counts(8)
    z = ad.AnnData((a.X.toarray() - a.X.toarray().mean(0)) / (a.X.toarray().std(0) + 1))
    z.var_names = a.var_names
    with pytest.raises(InputError, match="counts or log-normalised"):
        S.embed(z, device="cpu")
    b = a.copy()
    b.var_names = [f"X{i}" for i in range(b.n_vars)]
    with pytest.raises(InputError, match="None of the 40 genes"):
        S.embed(b, device="cpu")


def test_cells_with_negative_or_non_finite_values_are_left_out_by_reason(sf):
    """scFoundation keeps only values > 0: a cell with a negative value would be embedded from its
    other genes without a word, one with NaN was called "no expressed gene". Both are left out and
    named; a faulty value outside scFoundation's genes changes nothing; the other cells are as before."""
    a = counts(100, genes=H.sf_genes(40) + ["NOTINLIST"])
    clean, _ = S.embed(a, device="cpu")
    x = a.X.toarray()
    x[3, 2], x[5, 1], x[6, 0] = -4, np.nan, np.inf
    x[7, 40] = -2  # a gene scFoundation does not read
    b = ad.AnnData(sp.csr_matrix(x))
    b.var_names = a.var_names
    faulty = {}
    out, info = S.embed(b, device="cpu", faulty=faulty)
    assert info["not_embedded"] == {"non_finite": 2, "negative_values": 1}
    assert {k: v.tolist() for k, v in faulty.items()} == {"non_finite": [5, 6], "negative_values": [3]}
    assert np.isnan(out[[3, 5, 6]]).all()
    others = np.setdiff1d(np.arange(100), [3, 5, 6])
    np.testing.assert_allclose(out[others], clean[others], rtol=1e-5, atol=1e-5)
    assert "NaN or infinite" in S.NOT_EMBEDDED["non_finite"] and "negative" in S.NOT_EMBEDDED["negative_values"]


def test_a_z_scored_matrix_is_refused_in_plain_words(sf):
    a = counts(30)
    x = a.X.toarray()
    z = ad.AnnData((x - x.mean(0)) / (x.std(0) + 1e-3))
    z.var_names = a.var_names
    with pytest.raises(InputError) as err:
        S.embed(z, device="cpu")
    assert "these values look z-scored (centred and scaled per gene)" in err.value.message
    assert "zscored" not in err.value.message and "drops every value <= 0" in err.value.message
    assert "raw counts" in err.value.hint


def test_cells_that_cannot_be_embedded_and_the_gene_cap(sf):
    a = counts(6)
    x = a.X.toarray()
    x[1] = 0
    x[2] = 0
    x[2, 5] = 1  # total count 1: S = log10(1) = 0 would vanish
    b = ad.AnnData(x)
    b.var_names = a.var_names
    out, info = S.embed(b, device="cpu")
    assert np.isnan(out[1]).all() and np.isnan(out[2]).all() and np.isfinite(out[[0, 3, 4, 5]]).all()
    assert info["not_embedded"] == {"no_expressed_gene": 1, "total_at_most_1": 1}
    with pytest.raises(InputError, match=r"(?s)express more than 5 of scFoundation.s genes .*QC filter"):
        S.embed(b, device="cpu", max_genes=5)
    with pytest.raises(InputError, match="Unknown scFoundation resolution"):
        S.embed(b, device="cpu", resolution="x4")


def test_embed_cells_writes_obsm_and_caches_per_data_and_settings(sf, monkeypatch):
    a = counts(10)
    mask = np.arange(10) < 6
    record = embed_cells(a, "vae_sf", mask=mask, device="cpu")
    emb = a.obsm["X_scfoundation"]
    assert emb.shape == (10, 64) and np.isfinite(emb[:6]).all() and np.isnan(emb[6:]).all()
    assert a.uns["scatd_foundation"]["vae_sf"]["info"]["key"] == "rde" and record["n_embedded"] == 6
    calls = []
    real = S.embed

    def counting(adata, wanted, **kw):
        calls.append(int(np.asarray(wanted).sum()))
        return real(adata, wanted, **kw)

    monkeypatch.setattr(S, "embed", counting)
    embed_cells(a, "vae_sf", mask=mask, device="cpu")
    assert calls == []  # cached
    embed_cells(a, "vae_sf", device="cpu")
    assert calls == [4]  # only the cells not embedded yet
    full = a.obsm["X_scfoundation"].copy()
    fresh = counts(10)
    embed_cells(fresh, "vae_sf", device="cpu")
    assert np.abs(fresh.obsm["X_scfoundation"] - full).max() < TOL
    embed_cells(a, "vae_sf", device="cpu", resolution="t4")  # other settings: everything again
    assert calls[-1] == 10
    changed = counts(10, seed=5)
    changed.obsm["X_scfoundation"] = a.obsm["X_scfoundation"]
    changed.uns["scatd_foundation"] = a.uns["scatd_foundation"]
    embed_cells(changed, "vae_sf", device="cpu", resolution="t4")  # other data: everything again
    assert calls[-1] == 10
    # the record survives an h5ad round trip
    a.write_h5ad(sf.parent / "a.h5ad")
    back = ad.read_h5ad(sf.parent / "a.h5ad")
    calls.clear()
    embed_cells(back, "vae_sf", device="cpu", resolution="t4")
    assert calls == []


# ----------------------------------------------------------------------------- real reference data

def test_the_real_gene_list_is_read_in_its_order():
    genes = S.read_gene_list(shared_file("scfoundation", "OS_scRNA_gene_index.19264.tsv"))
    assert len(genes) == 19264 == ScFoundationConfig().n_genes
    assert genes[:3] == ["A1BG", "A1CF", "A2M"]


def test_real_scfoundation_embeddings_have_the_pooled_layout():
    """The 120 real SCAD cell embeddings are [S, T, max over genes, mean over genes]: the max block
    is never below the mean block, which holds for no other pair of blocks."""
    emb = np.load(shared_file("scfoundation", "scad_sorafenib_sc_embedding.npy"))
    assert emb.shape == (120, 3072) and emb.dtype == np.float32
    s_tok, t_tok, largest, mean = np.split(emb, 4, axis=1)
    assert (largest >= mean - 1e-6).all()
    assert not (s_tok >= mean).all() and not (t_tok >= mean).all() and not (mean >= largest).all()


def test_every_problem_is_told_with_what_to_do_not_by_its_code(tmp_path, monkeypatch):
    monkeypatch.setenv("SCATD_SCFOUNDATION_DIR", str(tmp_path / "nothing"))
    S._PROBES.clear()
    with pytest.raises(CheckpointError) as info:
        S.probe().require()
    err = info.value
    assert "missing_gene_list" not in str(err) and "more problem" not in str(err)
    assert "No scFoundation weights" in err.message and "OS_scRNA_gene_index.19264.tsv not found" in err.message
    assert "models.ckpt" in err.hint and "OS_scRNA_gene_index.19264.tsv" in err.hint


@pytest.mark.parametrize("payload, words", [
    # plain fc layers, no swish: the VAE_sf layout (it was called a Dist_VAE model)
    ({"Encoder_resblocks.0.fc.weight": torch.zeros(4, 8), "Decoder_resblocks.0.fc.weight": torch.zeros(8, 4)},
     "it is a VAE_sf model (a drug model or backbone that reads scFoundation embeddings)"),
    ({"state_dict": {"module.Encoder_resblocks.0.fc.weight": torch.zeros(4, 8)}, "epoch": 3}, "it is a VAE_sf model"),
    ({"Encoder_resblocks.0.fc.weight": torch.zeros(4, 8), "Encoder_resblocks.0.swish.beta": torch.ones(1)},
     "it is a Dist_VAE model"),
    ({"Encoder_resblocks.0.fc.weight_orig": torch.zeros(4, 8), "Encoder_resblocks.0.swish.beta": torch.ones(1)},
     "it is a VAE_gf model (a drug model or backbone that reads Geneformer embeddings)"),
    ({"fc.weight": torch.zeros(4, 8)}, "it is a model's state dict"),
    ({"epoch": 3}, "holds no model with a config"),
])
def test_a_drug_model_given_to_convert_scfoundation_is_not_a_models_ckpt(sf, tmp_path, capsys, payload, words):
    from scatd_core.cli import main

    torch.save(payload, tmp_path / "VAE.pth")
    assert main(["convert-scfoundation", str(tmp_path / "VAE.pth"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "VAE.pth is not an scFoundation models.ckpt" in err and words in err
    assert "--key" not in err and "unexpected" not in err
    if "VAE" in words:
        assert "scatd import-checkpoint" in err
        backbone = {"VAE_sf": "vae_sf", "Dist_VAE": "dist_vae", "VAE_gf": "vae_gf"}[words.split()[3]]
        assert f"--backbone {backbone})" in err


def test_convert_names_the_folder_to_configure_and_writes_readable_files(tmp_path, monkeypatch, capsys):
    """The official layout (gene list in model/, models.ckpt in model/models/): the note names
    model/ as an absolute path, and the files get the umask's permissions, not 0600."""
    from scatd_core.cli import main

    root = H.sf_folder(tmp_path / "work" / "sf")
    monkeypatch.setenv("SCATD_SCFOUNDATION_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.chdir(tmp_path)
    old = os.umask(0o022)
    try:
        assert main(["convert-scfoundation", "work/sf/models/models.ckpt"]) == 0
    finally:
        os.umask(old)
    err = capsys.readouterr().err
    assert f"SCATD_SCFOUNDATION_DIR={root.resolve()} or move" in err
    for name in ("scfoundation_rde.safetensors", "scfoundation_rde.json"):
        assert (root / "models" / name).stat().st_mode & 0o777 == 0o644
    S._PROBES.clear()
    monkeypatch.setenv("SCATD_SCFOUNDATION_DIR", str(root.resolve()))
    assert S.probe().available  # the folder named is one the loader finds everything from
    # already configured there: no note
    assert main(["convert-scfoundation", str(root / "models" / "models.ckpt")]) == 0
    assert "note:" not in capsys.readouterr().err
