"""The fast paths give the numbers of the plain ones: sparse first layer, fused and folded
layers, one pass over X for predict + explain, reduced precision only within tolerance."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from scatd_core import inputs as inputs_module
from scatd_core import predict as predict_module
from scatd_core.bundle import save_bundle
from scatd_core.explain import explain
from scatd_core.inputs import ModelInput
from scatd_core.nn import Architecture, build_model
from scatd_core.nn.sparse import batch_tensor, sparse_linear
from scatd_core.predict import estimate_seconds, predict, reduced_precision

N_GENES = 300


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny models: one thread is many times faster than two contending ones on a busy CI box.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _counts(n_cells: int, n_genes: int = N_GENES, density: float = 0.08, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    x = sp.random(n_cells, n_genes, density=density, format="csr", dtype=np.float32, random_state=rng)
    x.data = np.floor(x.data * 20) + 1
    return x


def _trained_like(arch: Architecture, seed: int = 0) -> torch.nn.Module:
    """Random weights with batch-norm statistics of real activations (not the initial 0 / 1)."""
    torch.manual_seed(seed)
    model = build_model(arch)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.momentum = None
            m.reset_running_stats()
    model.train()
    with torch.no_grad():
        x = torch.from_numpy(np.log1p(_counts(400, arch.input_dim, seed=seed + 1).toarray()))
        model(x)
    return model.eval()


@pytest.fixture(scope="module")
def log_bundle(tmp_path_factory):
    arch = Architecture("dist_vae", [N_GENES, 48, 24], 12, None, 6, 2)
    model = _trained_like(arch)
    return save_bundle(tmp_path_factory.mktemp("fast") / "b", model.state_dict(), arch, drug="TESTDRUG",
                       genes=[f"G{i}" for i in range(N_GENES)], input_transform="log1p_cp10k", threshold=0.5)


def _adata(x) -> ad.AnnData:
    n = x.shape[0]
    return ad.AnnData(x, obs=pd.DataFrame(index=[f"c{i}" for i in range(n)]),
                      var=pd.DataFrame(index=[f"G{i}" for i in range(x.shape[1])]))


# ------------------------------------------------------------------------ the sparse product

@pytest.mark.parametrize("density", [0.0, 0.01, 0.08, 0.5])
def test_sparse_first_layer_equals_dense(density):
    rng = np.random.default_rng(1)
    x = sp.random(70, 500, density=density, format="csr", dtype=np.float32, random_state=rng) * 5
    w = torch.randn(500, 300) * 0.05
    b = torch.randn(300)
    dense = torch.addmm(b, torch.from_numpy(x.toarray()), w)
    got = sparse_linear(batch_tensor(x, torch.device("cpu")), w, b)
    np.testing.assert_allclose(got.numpy(), dense.numpy(), atol=1e-5 * max(1.0, float(dense.abs().max())))


def test_sparse_first_layer_same_numbers_whatever_the_threads():
    x = sp.random(64, 400, density=0.1, format="csr", dtype=np.float32, random_state=2)
    w, b = torch.randn(400, 520), torch.randn(520)
    one = sparse_linear(batch_tensor(x, torch.device("cpu")), w, b, threads=1)
    for threads in (2, 3):
        assert torch.equal(one, sparse_linear(batch_tensor(x, torch.device("cpu")), w, b, threads=threads))


def test_sparse_first_layer_same_numbers_whatever_the_block_width(monkeypatch):
    """The output-column block width is a speed setting only: every output sums the same genes
    in the same order."""
    from scatd_core.nn import sparse

    x = sp.random(96, 300, density=0.1, format="csr", dtype=np.float32, random_state=3)
    w, b = torch.randn(300, 1100), torch.randn(1100)
    results = []
    for width in (8, 256, 1024, 4096):
        monkeypatch.setattr(sparse, "BLOCK_COLUMNS", width)
        results.append(sparse_linear(batch_tensor(x, torch.device("cpu")), w, b, threads=2))
    assert all(torch.equal(results[0], r) for r in results[1:])


def test_sparse_first_layer_same_numbers_whatever_the_gene_tile(monkeypatch):
    """The gene tile (how many genes' weights a thread keeps in cache while every cell adds them) is
    a speed setting only: every output value sums its cell's genes in gene order, eight at a time
    or one at a time, whatever the tile, the block width and the threads."""
    from scatd_core.nn import sparse

    x = sp.random(90, 700, density=0.12, format="csr", dtype=np.float32, random_state=4)
    w, b = torch.randn(700, 600), torch.randn(600)
    results = []
    for tile_bytes, width, threads in ((1 << 20, 1024, 1), (4 * 8 * 304, 1024, 2), (4 * 40 * 8, 8, 3),
                                       (4 * 700 * 600, 4096, 1)):
        monkeypatch.setattr(sparse, "TILE_BYTES", tile_bytes)
        monkeypatch.setattr(sparse, "BLOCK_COLUMNS", width)
        results.append(sparse_linear(batch_tensor(x, torch.device("cpu")), w, b, threads=threads))
    assert all(torch.equal(results[0], r) for r in results[1:])
    dense = torch.addmm(b, torch.from_numpy(x.toarray()), w)
    np.testing.assert_allclose(results[0].numpy(), dense.numpy(), atol=1e-5 * float(dense.abs().max()))


def test_sparse_first_layer_adds_every_value_of_rows_out_of_order(monkeypatch):
    """A CSR batch whose rows list their genes out of order (torch tensors built by hand) still
    has every stored value added: sorted first, so the numbers equal the sorted batch's."""
    from scatd_core.nn import sparse
    from scatd_core.nn.sparse import csr_tensor

    monkeypatch.setattr(sparse, "TILE_BYTES", 4 * 8 * 48)  # tiles of 8 genes: values spread over tiles
    x = sp.random(12, 64, density=0.4, format="csr", dtype=np.float32, random_state=5)
    w, b = torch.randn(64, 48), torch.randn(48)
    shuffled_indices, shuffled_data = x.indices.copy(), x.data.copy()
    rng = np.random.default_rng(0)
    for i in range(x.shape[0]):
        lo, hi = x.indptr[i], x.indptr[i + 1]
        order = lo + rng.permutation(hi - lo)
        shuffled_indices[lo:hi], shuffled_data[lo:hi] = x.indices[order], x.data[order]
    assert not sp.csr_matrix((shuffled_data, shuffled_indices, x.indptr), shape=x.shape).has_sorted_indices
    got = sparse_linear(csr_tensor(x.indptr, shuffled_indices, shuffled_data, x.shape), w, b, threads=2)
    assert torch.equal(got, sparse_linear(batch_tensor(x, torch.device("cpu")), w, b, threads=2))
    dense = torch.addmm(b, torch.from_numpy(x.toarray()), w)
    np.testing.assert_allclose(got.numpy(), dense.numpy(), atol=1e-5 * float(dense.abs().max()))


def test_sparse_first_layer_adds_repeated_entries_of_a_cell():
    """A gene column that names the same cell twice (unsummed duplicates) adds both values, also
    where the cells are taken four at a time."""
    from scatd_core.nn.sparse import csc_tensor

    # gene 0: cells 1, 1, 2, 1, 3 (three entries of cell 1); gene 1: cell 0 twice
    indptr = np.array([0, 5, 7], dtype=np.int64)
    indices = np.array([1, 1, 2, 1, 3, 0, 0], dtype=np.int64)
    data = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 0.5, 0.25], dtype=np.float32)
    w, b = torch.randn(2, 40), torch.zeros(40)
    dense = np.zeros((4, 2), dtype=np.float32)
    np.add.at(dense, (indices, np.repeat([0, 1], [5, 2])), data)
    got = sparse_linear(csc_tensor(indptr, indices, data, (4, 2)), w, b, threads=1)
    np.testing.assert_allclose(got.numpy(), dense @ w.numpy(), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------ fused / folded layers

SMALL_ARCH = {"dist_vae": ([N_GENES, 64, 40], 16), "vae_sf": ([40, 30, 20, 14], 11), "vae_gf": ([24, 30, 20, 12], 9)}


@pytest.mark.parametrize("backbone", sorted(SMALL_ARCH))
def test_fused_and_folded_layers_equal_the_plain_modules(backbone):
    dims, z = SMALL_ARCH[backbone]
    arch = Architecture(backbone, dims, z, None, z // 2, 2)
    model = _trained_like(arch, seed=3)
    x = torch.from_numpy(np.log1p(_counts(25, arch.input_dim, density=0.3, seed=4).toarray()))
    with torch.no_grad():
        plain = model(x)  # parameters require grad: the unfused path
    for p in model.parameters():
        p.requires_grad_(False)
    assert model.Encoder_resblocks[0].fusable
    with torch.inference_mode():
        fused = model(x)
        via_first_layer = model.logits_from_first_layer(model.first_layer(x))
    np.testing.assert_allclose(fused.numpy(), plain.numpy(), atol=1e-5)
    np.testing.assert_allclose(via_first_layer.numpy(), plain.numpy(), atol=1e-5)


def test_cached_weights_follow_new_weights():
    arch = Architecture("dist_vae", [30, 20, 10], 6, None, 3, 2)
    a, b = _trained_like(arch, seed=0), _trained_like(arch, seed=1)
    for m in (a, b):
        for p in m.parameters():
            p.requires_grad_(False)
    x = torch.rand(5, 30)
    with torch.inference_mode():
        before = a(x)
        expected = b(x)
        a.load_state_dict(b.state_dict())  # in place: versions change, the caches rebuild
        after = a(x)
    assert not torch.allclose(before, expected)
    np.testing.assert_allclose(after.numpy(), expected.numpy(), atol=1e-6)


def _frozen_model(arch: Architecture, seed: int) -> torch.nn.Module:
    model = _trained_like(arch, seed=seed)
    if arch.members and arch.input_head:
        with torch.no_grad():
            model.input_weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(seed))
    for p in model.parameters():
        p.requires_grad_(False)
    return model


BY_HAND_CASES = {
    "dist_vae": Architecture("dist_vae", [N_GENES, 64, 40], 16, None, 8, 2),
    "vae_sf": Architecture("vae_sf", [40, 30, 20, 14], 11, None, 5, 2),          # LeakyReLU, 3 blocks
    "vae_gf": Architecture("vae_gf", [24, 30, 20, 26, 12], 9, None, 4, 2),      # Swish per block, 4 blocks
    "one_block": Architecture("dist_vae", [50, 20], 7, None, 3, 2),
    "ensemble": Architecture("dist_vae", [60, 24, 12], 6, None, 3, 2, members=3, input_head=True),
}


@pytest.mark.parametrize("target", ["logit", "raw_logit", "prob"])
@pytest.mark.parametrize("case", sorted(BY_HAND_CASES))
def test_path_gradient_by_hand_equals_autograd(case, target):
    """The hand-written steps (merged maps, folded map back) give autograd's attributions."""
    from scatd_core.explain._attribution import Attributor
    from scatd_core.explain._path import supported

    arch = BY_HAND_CASES[case]
    model = _frozen_model(arch, seed=11)
    if case == "ensemble":  # the default trained form: linear heads (head Swish beta 0) on one member
        model.members[1].set_linear_head(torch.randn(arch.z_dim), 0.3)
    assert supported(model, target)
    rng = np.random.default_rng(5)
    x = np.log1p(_counts(23, arch.input_dim, density=0.3, seed=6).toarray()).astype(np.float32)
    base = rng.random(arch.input_dim).astype(np.float32) * 0.5
    kw = dict(model=model, target=target, positive_index=1, baseline=base, n_steps=13, internal_batch_size=13 * 5,
              device=torch.device("cpu"))
    by_hand = Attributor(**kw)
    autograd = Attributor(**kw, by_hand=False)
    assert by_hand.by_hand is not None and autograd.by_hand is None
    by_hand.by_hand.rows_per_chunk = 13 * 4  # several chunks, the last one short
    a1, d1, f1 = by_hand(x)
    a2, d2, f2 = autograd(x)
    scale = float(np.abs(a2).max())
    assert scale > 0
    np.testing.assert_allclose(a1, a2, atol=2e-5 * scale)
    np.testing.assert_allclose(f1, f2, atol=1e-6)
    np.testing.assert_allclose(d1, d2, atol=2e-4 * max(1.0, float(np.abs(f2).max())))
    # the gradients' factors give any inputs' attributions again (what explain stages per cell)
    cols = np.array([arch.input_dim - 1, 0, 3, 7])
    for attributor in (by_hand, autograd):
        a, _d, _f, factors = attributor(x, with_factors=True)
        assert factors.shape == (x.shape[0], attributor.factor_width()) and factors.dtype == np.float32
        np.testing.assert_array_equal(a, a1 if attributor is by_hand else a2)
        again = attributor.attributions_of(factors, x[:, cols], cols)
        np.testing.assert_allclose(again, a[:, cols], rtol=1e-5, atol=1e-6 * scale)
    plain = Attributor(**kw, factorise=False)
    assert plain.factor_width() is None and plain(x[:2], with_factors=True)[3] is None


def test_explain_stages_gradient_factors_not_float16_attributions(log_bundle, monkeypatch):
    """Where the gradients' factors are fewer bytes than the attributions (Dist_VAE: 2,233 values
    against 19,264 genes), explain stages them per cell and computes the top features'
    attributions from them again: the same ranking, and per-cell attributions that are captum's
    to float32 rounding instead of float16's."""
    from scatd_core.explain import _explain

    adata = _adata(_counts(70, density=0.15, seed=9))
    predict(adata, log_bundle, threshold=0.5)
    predict(adata, log_bundle, threshold=float(np.median(adata.obs["scatd_prob_resistant"])))
    kw = dict(n_steps=12, keep_top=40, differential_expression=False, store_result=False)
    staged = []
    real = _explain._Sums.merge
    monkeypatch.setattr(_explain._Sums, "merge", lambda self, part: staged.append(part["staged"].dtype)
                        or real(self, part))
    factors = explain(adata, log_bundle, **kw)
    assert set(staged) == {np.dtype(np.float32)}
    staged.clear()
    monkeypatch.setattr(_explain, "stage_factors", lambda attributor, n: False)
    halves = explain(adata, log_bundle, **kw)
    assert set(staged) == {np.dtype(np.float16)}
    pd.testing.assert_frame_equal(factors.ranking, halves.ranking)
    assert factors.features == halves.features
    # captum on the whole model, the explained cells' attributions of the kept genes, unstaged
    from scatd_core.explain._attribution import Attributor
    from scatd_core.explain._explain import prediction_context
    from scatd_core._keys import result_keys

    dev, model, *_ = prediction_context(adata, log_bundle, result_keys(None), "cpu", None)
    captum_ig = Attributor(model, "logit", log_bundle.positive_index, factors.baseline, 12, None, dev, factorise=False)
    inputs = ModelInput(adata, log_bundle)
    x = np.vstack([inputs.rows(s, t)[1] for s, t in inputs.ranges()])[factors.cells["row"].to_numpy()]
    kept = [int(f[1:]) for f in factors.features]
    expected = captum_ig(np.ascontiguousarray(x, dtype=np.float32))[0][:, kept]
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(factors.attributions, expected, atol=2e-6 * scale)
    np.testing.assert_allclose(halves.attributions, expected, atol=1e-3 * scale)  # float16's rounding
    assert np.abs(halves.attributions - expected).max() > 10 * np.abs(factors.attributions - expected).max()


def test_path_gradient_falls_back_to_autograd_for_other_models():
    from scatd_core.explain._path import supported

    arch = Architecture("dist_vae", [30, 20, 10], 6, None, 3, 3)  # three classes: autograd
    assert not supported(_frozen_model(arch, seed=1), "logit")
    model = _trained_like(Architecture("dist_vae", [30, 20, 10], 6, None, 3, 2), seed=1)  # not frozen
    assert not supported(model, "logit")


# ------------------------------------------------------------------------ predict

def test_predict_sparse_path_equals_dense_path(log_bundle, monkeypatch):
    x = sp.vstack([_counts(250, density=0.08), _counts(50, density=0.6, seed=9)], format="csr")  # last batch dense
    sparse_run, dense_run = _adata(x.copy()), _adata(x.copy())
    seen = []
    original = predict_module.batch_tensor

    def record(x, device):
        seen.append(sp.issparse(x))
        return original(x, device)

    monkeypatch.setattr(predict_module, "batch_tensor", record)
    predict(sparse_run, log_bundle, batch_size=50)
    assert seen == [True] * 5 + [False]  # chosen per batch by density
    monkeypatch.setattr(inputs_module, "SPARSE_MAX_DENSITY", 0.0)
    predict(dense_run, log_bundle, batch_size=50)
    np.testing.assert_allclose(sparse_run.obs["scatd_prob_resistant"], dense_run.obs["scatd_prob_resistant"], atol=1e-5)
    np.testing.assert_allclose(sparse_run.obsm["X_scatd"], dense_run.obsm["X_scatd"], atol=1e-5)


def test_predict_equals_the_reference_computation(log_bundle):
    """P(resistant) is softmax of the plain modules' forward on log1p CP10k of the counts."""
    x = _counts(120, density=0.1, seed=5)
    adata = _adata(x)
    predict(adata, log_bundle, batch_size=32)
    dense = x.toarray().astype(np.float64)
    totals = dense.sum(axis=1, keepdims=True)
    model_input = np.log1p(np.divide(dense * 1e4, totals, out=np.zeros_like(dense), where=totals > 0))
    model = build_model(log_bundle.architecture)
    model.load_state_dict(log_bundle.load_model("cpu").state_dict())
    model.eval()  # parameters require grad: the unfused, unfolded modules
    with torch.no_grad():
        p = torch.softmax(model(torch.from_numpy(model_input.astype(np.float32))), dim=1)[:, log_bundle.positive_index]
    np.testing.assert_allclose(adata.obs["scatd_prob_resistant"], p.numpy(), atol=1e-5)


def test_one_pass_over_x_for_predict_and_the_mean_baseline(log_bundle, monkeypatch):
    keep = np.ones(200)
    keep[7] = 0  # a cell that cannot be scored does not enter the mean
    x = (sp.diags(keep) @ _counts(200, density=0.1, seed=6)).astype(np.float32).tocsr()
    x.eliminate_zeros()
    adata = _adata(x)
    inputs = ModelInput(adata, log_bundle, batch_size=64)
    reads = []
    original = inputs.source.raw
    monkeypatch.setattr(inputs.source, "raw", lambda start, stop: reads.append((start, stop)) or original(start, stop))
    predict(adata, log_bundle, inputs=inputs)
    assert len(reads) == 4  # the prediction: every batch once
    mean = inputs.input_mean()
    assert len(reads) == 4  # the mean model input was summed during the prediction
    usable = inputs.usable
    assert not usable[7] and usable.sum() == 199
    expected = np.vstack([inputs.rows(s, e)[1] for s, e in inputs.ranges()]).astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(mean, expected, rtol=1e-6, atol=1e-9)


def test_explain_reads_x_once_and_keeps_its_numbers(log_bundle, monkeypatch):
    x = _counts(160, density=0.12, seed=7)
    adata = _adata(x)
    inputs = ModelInput(adata, log_bundle, batch_size=64)
    predict(adata, log_bundle, inputs=inputs)
    predict(adata, log_bundle, inputs=inputs, threshold=float(np.median(adata.obs["scatd_prob_resistant"])))
    reads = []
    original = inputs.source.raw
    monkeypatch.setattr(inputs.source, "raw", lambda start, stop: reads.append((start, stop)) or original(start, stop))
    e = explain(adata, log_bundle, inputs=inputs, n_steps=16, keep_top=25)
    assert len(reads) == 3  # one pass: attributions, kept inputs and the DE test's data
    # the kept inputs are the model inputs the prediction used
    all_inputs = np.vstack([inputs.rows(s, t)[1] for s, t in inputs.ranges()])
    columns = [int(f[1:]) for f in e.features]
    np.testing.assert_array_equal(e.inputs, all_inputs[e.cells["row"].to_numpy()][:, columns])
    # the DE test ran on the data as given: group means of the counts
    pos = (e.cells["label"] == "resistant").to_numpy()
    means = x[e.cells["row"].to_numpy()][pos].toarray().astype(np.float64).mean(axis=0)
    ranking = e.ranking.set_index("feature").loc[[f"G{i}" for i in range(N_GENES)]]
    np.testing.assert_allclose(ranking["mean_data_resistant"], means, rtol=1e-10)
    assert e.info["completeness"]["ok"]


def test_explain_sparse_batches_equal_dense_batches(log_bundle, monkeypatch):
    x = _counts(90, density=0.1, seed=8)
    runs = []
    for limit in (inputs_module.SPARSE_MAX_DENSITY, 0.0):
        monkeypatch.setattr(inputs_module, "SPARSE_MAX_DENSITY", limit)
        adata = _adata(x.copy())
        predict(adata, log_bundle, batch_size=40)
        runs.append(explain(adata, log_bundle, n_steps=12, keep_top=None, differential_expression=False))
    fast, dense = runs
    r_fast, r_dense = fast.ranking.set_index("feature"), dense.ranking.set_index("feature").loc[fast.ranking["feature"]]
    scale = float(r_dense["mean_abs_attribution"].abs().max())
    np.testing.assert_allclose(r_fast["mean_abs_attribution"], r_dense["mean_abs_attribution"], atol=1e-5 * scale)
    np.testing.assert_allclose(fast.cells["target"], dense.cells["target"], atol=1e-5)


@pytest.mark.parametrize("with_present", [False, True])
@pytest.mark.parametrize("n_genes", [1, 700, 1500])  # one column block, several, a ragged last block
def test_attribution_sums_in_one_pass_equal_numpy(with_present, n_genes, monkeypatch):
    from scatd_core.explain import _sums
    from scatd_core.explain._explain import _Sums

    rng = np.random.default_rng(n_genes)
    n = 37
    a = rng.normal(size=(n, n_genes)).astype(np.float32)
    x = (rng.random((n, n_genes)) < 0.1).astype(np.float32) * rng.gamma(2.0, 2.0, (n, n_genes)).astype(np.float32)
    base = rng.random(n_genes).astype(np.float32)
    is_pos = rng.random(n) < 0.4
    is_neg = ~is_pos & (rng.random(n) < 0.8)      # some cells are in neither group
    present = rng.random((n, n_genes)) < 0.7 if with_present else None
    at = rng.permutation(n)
    part = _Sums.partial(at, x, a, np.zeros(n), np.ones(n), base, is_pos, is_neg, present)
    # the sums in float64 with numpy, one pass each
    pos, neg = is_pos[at][:, None], (~is_pos[at] & is_neg[at])[:, None]
    a64, x64 = a.astype(np.float64), x.astype(np.float64)
    d = (x64 - base.astype(np.float64)) * (present if with_present else 1)
    expected = {"abs": np.abs(a64).sum(0), "attr_pos": (a64 * pos).sum(0), "attr_neg": (a64 * neg).sum(0),
                "x_pos": (x64 * pos).sum(0), "x_neg": (x64 * neg).sum(0), "ad": (a64 * d).sum(0),
                "dd": (d ** 2).sum(0), "abs_pos": (np.abs(a64) * pos).sum(0), "ad_pos": (a64 * d * pos).sum(0),
                "dd_pos": (d ** 2 * pos).sum(0)}
    for name, value in expected.items():
        np.testing.assert_allclose(part[name], value, rtol=1e-10, atol=1e-10, err_msg=name)
    np.testing.assert_allclose(part["attr_sum"], a64.sum(1), rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(part["staged"], a.astype(np.float16))
    np.testing.assert_array_equal(part["at"], at)
    # the compiled kernel gives the interpreted function's numbers (block split included)
    monkeypatch.setattr(_sums, "BLOCK_COLUMNS", 64)
    compiled = _sums.column_sums(a, x, base, np.where(is_pos, 1, np.where(is_neg, 0, -1)), present)
    monkeypatch.setattr(_sums, "_kernel", lambda: _sums._column_sums)
    plain = _sums.column_sums(a, x, base, np.where(is_pos, 1, np.where(is_neg, 0, -1)), present)
    for name in _sums.SUMS:
        np.testing.assert_allclose(compiled[0][name], plain[0][name], rtol=1e-12, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(compiled[1], plain[1], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="shapes do not match"):
        _sums.column_sums(a, x[:, :-1] if n_genes > 1 else x[:-1], base, is_pos.astype(int))


# ------------------------------------------------------------------------ precision and the estimate

def test_reduced_precision_only_within_tolerance(log_bundle):
    model = log_bundle.load_model("cpu")
    x = torch.from_numpy(np.log1p(_counts(64, density=0.2, seed=10).toarray() * 30).astype(np.float32))
    assert reduced_precision(model, x, 1) == "float32"  # a CPU runs float32 unless asked
    assert reduced_precision(model, x, 1, dtype=torch.bfloat16, tolerance=0.5) == "bfloat16"
    assert reduced_precision(model, x, 1, dtype=torch.bfloat16, tolerance=1e-9) == "float32"


def test_estimate_follows_cells_and_density(log_bundle):
    dense = estimate_seconds(log_bundle, 10_000, device="cpu")
    assert dense > 0
    assert estimate_seconds(log_bundle, 20_000, device="cpu") == pytest.approx(2 * dense, rel=1e-9)
    assert estimate_seconds(log_bundle, 10_000, device="cpu", density=0.9) == pytest.approx(dense, rel=1e-9)
    assert estimate_seconds(log_bundle, 10_000, mode="sample", n_samples=50, device="cpu") > dense


def test_warm_up_times_the_estimates_rates_once(log_bundle, monkeypatch):
    """The server's start-up thread times the estimate's rates, so the Predict page's first estimate
    measures nothing; later calls reuse them."""
    from scatd_core import predict as predict_module

    monkeypatch.setattr(predict_module, "_RATES", {})
    predict_module.warm_up("cpu")
    rates = dict(predict_module._RATES)
    assert set(rates) == {("cpu", "gemm"), ("cpu", "sparse")} and all(r > 0 for r in rates.values())
    estimate_seconds(log_bundle, 10_000, device="cpu", density=0.05)
    predict_module.warm_up("cpu")
    assert predict_module._RATES == rates


def test_explain_warm_up_compiles_the_kernels_an_explanation_uses(log_bundle):
    """The server's start-up thread compiles the ranking sums' and the DE test's kernels for the
    argument types an explanation passes, so the first explanation compiles nothing."""
    from scatd_core import explain as explain_module
    from scatd_core.explain import _sums, _wilcoxon

    explain_module.warm_up()
    kernels = (_sums._KERNEL, _wilcoxon._KERNEL)
    compiled = [list(k.signatures) for k in kernels]
    assert all(compiled)
    adata = _adata(_counts(60, density=0.1, seed=9))
    predict(adata, log_bundle, threshold=0.5)
    predict(adata, log_bundle, threshold=float(np.median(adata.obs["scatd_prob_resistant"])))
    e = explain(adata, log_bundle, n_steps=8, keep_top=10)
    assert e.info["differential_expression"]["method"] != "none"
    assert [list(k.signatures) for k in kernels] == compiled


# ------------------------------------------------------------------------ library size of counts

N_OTHER = 200  # genes of the data that the model does not read


def _whole_transcriptome(n_cells: int, layout: str = "sparse", seed: int = 12) -> tuple[ad.AnnData, ad.AnnData]:
    """The same cells as counts and as log1p(CP10k over all their genes): the model's genes G0...
    with ``N_OTHER`` genes it lacks, columns shuffled; ``layout`` "dense", "sparse", or
    "duplicated" (sparse, G5's counts split over two columns of that name, summed by the model)."""
    dense = _counts(n_cells, N_GENES + N_OTHER, density=0.1, seed=seed).toarray()
    names = [f"G{i}" for i in range(N_GENES)] + [f"X{i}" for i in range(N_OTHER)]
    if layout == "duplicated":
        half = np.floor(dense[:, 5] / 2)
        dense[:, 5] -= half
        dense, names = np.hstack([dense, half[:, None]]), names + ["G5"]
    order = np.random.default_rng(seed).permutation(len(names))
    dense, names = dense[:, order], [names[i] for i in order]
    lognorm = np.log1p(dense * 1e4 / dense.sum(axis=1, keepdims=True)).astype(np.float32)
    wrap = (lambda m: m) if layout == "dense" else sp.csr_matrix
    obs, var = pd.DataFrame(index=[f"c{i}" for i in range(n_cells)]), pd.DataFrame(index=names)
    return (ad.AnnData(wrap(dense.astype(np.float32)), obs=obs, var=var),
            ad.AnnData(wrap(lognorm), obs=obs.copy(), var=var.copy()))


def _model_counts(adata: ad.AnnData) -> tuple[np.ndarray, np.ndarray]:
    """(counts of the model's genes G0..., summed over duplicated names; each cell's total over all genes)."""
    x = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    x = x.astype(np.float64)
    names = np.asarray(adata.var_names)
    model = np.stack([x[:, names == f"G{i}"].sum(axis=1) for i in range(N_GENES)], axis=1)
    return model, x.sum(axis=1, keepdims=True)


def _zscored(x: np.ndarray) -> np.ndarray:
    sd = x.std(axis=0)
    return np.divide(x - x.mean(axis=0), sd, out=np.zeros_like(x), where=sd > 0)


def _standardize_spec(library_size: str | None) -> inputs_module.InputSpec:
    extra = {} if library_size is None else {"library_size": library_size}
    return inputs_module.InputSpec(backbone="dist_vae", input_kind="expression", input_dim=N_GENES,
                                   transform="standardize", genes=[f"G{i}" for i in range(N_GENES)], **extra)


def _all_rows(mi: ModelInput) -> np.ndarray:
    return np.vstack([mi.rows(s, e)[1] for s, e in mi.ranges()])


@pytest.mark.parametrize("layout", ["sparse", "dense", "duplicated"])
def test_standardize_scales_counts_by_the_library_size_its_manifest_records(layout):
    """A model trained here now (library_size "all genes") scales each cell's counts by its total
    over every gene of the data, so the counts and their log1p(CP10k) over all genes are the
    same model input; a model without the record (trained earlier) keeps scaling them by their
    total over its own genes."""
    counts, lognorm = _whole_transcriptome(150, layout)
    model, totals = _model_counts(counts)
    whole = _zscored(np.log1p(model * 1e4 / totals))
    mi = ModelInput(counts, _standardize_spec("all genes"), batch_size=64)
    assert mi.log_normalise
    np.testing.assert_allclose(_all_rows(mi), whole, atol=3e-5)
    from_lognorm = ModelInput(lognorm, _standardize_spec("all genes"), batch_size=64)
    assert not from_lognorm.log_normalise  # used as given
    same = np.arange(N_GENES) != (5 if layout == "duplicated" else -1)  # log values of duplicates: summed as given
    np.testing.assert_allclose(_all_rows(from_lognorm)[:, same], _all_rows(mi)[:, same], atol=3e-5)
    older = ModelInput(counts, _standardize_spec(None), batch_size=64)
    assert older.spec.library_size == "model genes"
    np.testing.assert_allclose(_all_rows(older), _zscored(np.log1p(model * 1e4 / model.sum(axis=1, keepdims=True))),
                               atol=3e-5)
    assert np.abs(_all_rows(older) - whole).max() > 0.05  # the two differ: the test tells them apart
    # the input of rows given as data, by a ModelInput given the statistics (no pass made): their totals are read
    given = ModelInput(counts, _standardize_spec("all genes"), batch_size=64, statistics=mi.statistics())
    rows = np.arange(70, 90)
    raw = given.source.raw(70, 90)
    np.testing.assert_allclose(given.model_input_of(raw, rows=rows), whole[rows], atol=3e-5)
    with pytest.raises(ValueError, match="row indices"):
        given.model_input_of(raw)


def test_a_cell_whose_library_size_is_not_finite_is_not_scored():
    counts, _ = _whole_transcriptome(40)
    x = counts.X.toarray()
    x[3, list(counts.var_names).index("X7")] = np.nan  # outside the model's genes
    counts.X = sp.csr_matrix(x)
    counts.uns["scatd_input"] = {"value_type": "counts"}  # as read (a sample of the cells found counts)
    mi = ModelInput(counts, _standardize_spec("all genes"))
    assert not mi.usable[3] and mi.usable.sum() == 39 and mi.not_scored() == {"non_finite": 1}
    assert ModelInput(counts, _standardize_spec(None)).usable[3]  # scaled by the model's genes: no NaN in them


@pytest.mark.parametrize("layout", ["sparse", "dense"])
def test_a_negative_value_outside_the_models_genes_leaves_its_cell_out_when_its_library_size_sums_it(layout):
    """QA r1: a negative value in a gene the model does not read shrank the cell's library size
    (summed over all genes) and the cell was scored on it, without a word. Now the cell is not
    scored (negative_values, naming that gene); a model whose library size is over its own genes
    scores it as before."""
    counts, lognorm = _whole_transcriptome(40, layout)
    column = list(counts.var_names).index("X7")  # not a model gene
    for adata in (counts, lognorm):
        x = adata.X.toarray() if sp.issparse(adata.X) else np.array(adata.X)
        x[3, column] = -5.0
        adata.X = sp.csr_matrix(x) if layout == "sparse" else x
    mi = ModelInput(counts, _standardize_spec("all genes"))
    assert not mi.usable[3] and mi.usable.sum() == 39 and mi.not_scored() == {"negative_values": 1}
    assert mi.examples["negative_values"] == [(3, "X7")]
    assert ModelInput(counts, _standardize_spec(None)).usable[3]  # scaled by the model's genes: as before
    # log-normalised values un-logged for a log1p_cp10k model scaling by all genes: the same
    spec = inputs_module.InputSpec(backbone="dist_vae", input_kind="expression", input_dim=N_GENES,
                                   transform="log1p_cp10k", genes=[f"G{i}" for i in range(N_GENES)],
                                   library_size="all genes")
    unlogged = ModelInput(lognorm, spec)
    assert unlogged.unlog and not unlogged.usable[3] and unlogged.not_scored() == {"negative_values": 1}


def test_a_negative_value_outside_the_models_genes_is_said_and_left_out_in_memory_and_backed(whole_library_bundle,
                                                                                             tmp_path):
    """QA r1: a -5000 in a gene the model does not read changed its cell's P(resistant) (its
    library size, over all genes, shrank) while the run said every cell was scored. Now the cell
    is not scored, the warning names the gene, and the other cells get what they get without it,
    from memory and from a file read in parts (backed) alike."""
    from scatd_core import io

    counts, _ = _whole_transcriptome(90, seed=15)
    x = counts.X.toarray()
    x[7, list(counts.var_names).index("X3")] = -5000.0
    bad = ad.AnnData(sp.csr_matrix(x), obs=counts.obs.copy(), var=counts.var.copy())
    path = tmp_path / "bad.h5ad"
    bad.write_h5ad(path)
    clean = ad.AnnData(sp.csr_matrix(np.delete(x, 7, axis=0)), obs=counts.obs.drop(index="c7"),
                       var=counts.var.copy())
    predict(clean, whole_library_bundle, device="cpu")
    for adata in (bad, io.read(path, backed=True)):
        predict(adata, whole_library_bundle, device="cpu")
        info = adata.uns["scatd"]
        assert info["not_scored"] == {"negative_values": 1} and not adata.obs["scatd_scored"].iloc[7]
        assert "1 cell was not scored: negative values, which a log transform cannot take; e.g. cell 'c7' " \
               "(gene X3)." in info["warnings"]
        np.testing.assert_allclose(adata.obs["scatd_prob_resistant"].drop(index="c7"),
                                   clean.obs["scatd_prob_resistant"], atol=1e-6)


@pytest.fixture(scope="module")
def whole_library_bundle(tmp_path_factory):
    arch = Architecture("dist_vae", [N_GENES, 48, 24], 12, None, 6, 2)
    return save_bundle(tmp_path_factory.mktemp("fast") / "w", _trained_like(arch, seed=3).state_dict(), arch,
                       drug="TESTDRUG", genes=[f"G{i}" for i in range(N_GENES)], input_transform="standardize",
                       library_size="all genes", threshold=0.5)


def test_counts_and_their_lognorm_over_all_genes_get_the_same_predictions_and_explanation(whole_library_bundle,
                                                                                          monkeypatch):
    counts, lognorm = _whole_transcriptome(160, seed=13)
    explained = {}
    for name, adata in (("counts", counts), ("lognorm", lognorm)):
        inputs = ModelInput(adata, whole_library_bundle, batch_size=64)
        predict(adata, whole_library_bundle, inputs=inputs)
        predict(adata, whole_library_bundle, inputs=inputs,
                threshold=float(np.median(counts.obs["scatd_prob_resistant"])))
        reads = []
        original = inputs.source.raw
        monkeypatch.setattr(inputs.source, "raw",
                            lambda start, stop, **kw: reads.append((start, stop)) or original(start, stop, **kw))
        e = explain(adata, whole_library_bundle, inputs=inputs, n_steps=16, keep_top=25)
        assert len(reads) == 3  # one pass: attributions, kept inputs and the DE test's data
        all_inputs = np.vstack([inputs.rows(s, t)[1] for s, t in inputs.ranges()])
        columns = [int(f[1:]) for f in e.features]
        np.testing.assert_array_equal(e.inputs, all_inputs[e.cells["row"].to_numpy()][:, columns])
        explained[name] = e
    assert counts.uns["scatd"]["params"]["library_size"] == "all genes"
    assert lognorm.uns["scatd"]["params"]["library_size"] is None  # nothing scaled
    np.testing.assert_allclose(counts.obs["scatd_prob_resistant"], lognorm.obs["scatd_prob_resistant"], atol=1e-5)
    a, b = (explained[k].ranking.set_index("feature").sort_index() for k in ("counts", "lognorm"))
    np.testing.assert_allclose(a["mean_abs_attribution"], b["mean_abs_attribution"], rtol=1e-3, atol=1e-6)
    # the DE test puts the counts on the model's scale: log1p CP10k over all the cell's genes, as the lognorm upload
    assert explained["counts"].info["differential_expression"]["data_scale"] == \
        "log1p of counts per 10k (over all the cell's genes)"
    np.testing.assert_allclose(a["de_score"], b["de_score"], atol=0.01)  # rank ties of float32 rounding apart


def test_a_panel_does_not_share_one_input_between_models_scaling_counts_differently(whole_library_bundle, tmp_path):
    """Two models on the same genes, one scaling counts over all the data's genes and one (trained
    before that was recorded) over its own: a panel aligns the data for each, and each model gets
    the numbers it gets alone."""
    from scatd_core.panel import predict_panel
    from scatd_core.predict import result_keys

    arch = whole_library_bundle.architecture
    older = save_bundle(tmp_path / "older", whole_library_bundle.load_model("cpu").state_dict(), arch,
                        drug="OLDERDRUG", genes=whole_library_bundle.genes, input_transform="standardize",
                        threshold=0.5)
    assert "library_size" not in older.manifest
    counts, _ = _whole_transcriptome(90, seed=14)
    team = predict_panel(counts, [whole_library_bundle, older], device="cpu")
    assert [m.status for m in team] == ["scored", "scored"] and team[0].input_group != team[1].input_group
    for member, bundle in zip(team, (whole_library_bundle, older)):
        alone = counts.copy()
        predict(alone, bundle, device="cpu")
        np.testing.assert_allclose(counts.obs[result_keys(member.key).prob], alone.obs["scatd_prob_resistant"],
                                   atol=1e-6)


# ------------------------------------------------------------------------ faulty cells, log-normalised values
def test_one_negative_value_leaves_out_its_cell_wherever_it_sits(whole_library_bundle):
    """QA: one negative value among the ~2,000 cells the value type is read from made the whole
    matrix "unknown", so a model trained here z-scored raw counts for every cell (labels flipped);
    the same value in a cell outside that sample left out just that cell. Now its cell is not
    scored either way, and every other cell gets what it gets without that cell."""
    from scatd_core import export
    from scatd_core._matrix import sample_rows

    counts, _ = _whole_transcriptome(2100, seed=21)
    x = counts.X.toarray()
    sampled, unsampled = 10, 255  # sample_rows reads 8 blocks of 250 rows: 0-249, 264-513, ...
    rows = np.asarray(sample_rows(np.arange(2100)[:, None], 2000)).ravel()
    assert sampled in rows and unsampled not in rows
    x[unsampled] = x[sampled]  # the same cell twice: either copy may be the faulty one
    column = list(counts.var_names).index("G3")
    runs = {}
    for name, row in (("sampled", sampled), ("unsampled", unsampled)):
        bad = x.copy()
        bad[row, column] = -1.0
        adata = ad.AnnData(sp.csr_matrix(bad), obs=counts.obs.copy(), var=counts.var.copy())
        predict(adata, whole_library_bundle, device="cpu")
        info = adata.uns["scatd"]
        assert info["not_scored"] == {"negative_values": 1} and info["params"]["log_normalised"]
        assert not adata.obs["scatd_scored"].iloc[row] and adata.obs["scatd_scored"].sum() == 2099
        # the warning names the cell and its negative gene (it said only how many cells)
        said = f"1 cell was not scored: negative values, which a log transform cannot take; e.g. cell 'c{row}' " \
               "(gene G3)."
        assert said in info["warnings"]
        table = export.metrics_table(adata).set_index(["section", "metric"])["value"]
        assert table[("not scored", "negative_values")] == 1  # metrics.csv says how many and why
        # predictions.csv says why each cell was not scored (empty where it was)
        reasons = export.predictions_table(adata)["not_scored_reason"]
        assert reasons.iloc[row] == "negative values, which a log transform cannot take"
        assert (reasons.drop(index=row) == "").all()
        runs[name] = adata
    a, b = runs["sampled"], runs["unsampled"]
    assert [w for w in a.uns["scatd"]["warnings"] if "; e.g. cell" not in w] == \
        [w for w in b.uns["scatd"]["warnings"] if "; e.g. cell" not in w]
    others = np.setdiff1d(np.arange(2100), [sampled, unsampled])
    np.testing.assert_allclose(a.obs["scatd_prob_resistant"].to_numpy()[others],
                               b.obs["scatd_prob_resistant"].to_numpy()[others], atol=1e-6)
    assert (a.obs["scatd_label"].to_numpy()[others] == b.obs["scatd_label"].to_numpy()[others]).all()
    # and what they get is what they get without the faulty cell at all
    clean = ad.AnnData(sp.csr_matrix(np.delete(x, unsampled, axis=0)), obs=counts.obs.drop(index=f"c{unsampled}"),
                       var=counts.var.copy())
    predict(clean, whole_library_bundle, device="cpu")
    np.testing.assert_allclose(b.obs["scatd_prob_resistant"].drop(index=f"c{unsampled}"),
                               clean.obs["scatd_prob_resistant"], atol=1e-6)


@pytest.mark.parametrize("layout", ["sparse", "dense"])
def test_log_normalised_values_get_the_input_of_their_counts(log_bundle, layout, capsys):
    """QA: values already log-normalised, given to a log1p_cp10k model (the published models,
    imported checkpoints), were scaled and log-transformed a second time with only a warning.
    The model un-logs them first, so whatever total they were normalised to (10,000 over all the
    cell's genes, a million, the median total) they get the input, and the calls, of their counts,
    and the prediction says so."""
    from scatd_core import export
    from scatd_core.cli.predict import report_prediction

    counts, lognorm = _whole_transcriptome(150, layout, seed=5)
    dense = counts.X.toarray() if sp.issparse(counts.X) else np.asarray(counts.X)
    totals = dense.sum(axis=1, keepdims=True)
    wrap = (lambda m: m) if layout == "dense" else sp.csr_matrix
    cpm = ad.AnnData(wrap(np.log1p(dense * 1e6 / totals).astype(np.float32)), obs=counts.obs.copy(),
                     var=counts.var.copy())
    median = ad.AnnData(wrap(np.log1p(dense * np.median(totals) / totals).astype(np.float32)), obs=counts.obs.copy(),
                        var=counts.var.copy())
    predict(counts, log_bundle, device="cpu")
    reference = counts.obs["scatd_prob_resistant"].to_numpy()
    assert "notes" not in counts.uns["scatd"]  # counts: nothing to say (and their numbers unchanged)
    model, _ = _model_counts(counts)
    expected = np.log1p(model * 1e4 / model.sum(axis=1, keepdims=True))
    for adata in (lognorm, cpm, median):
        predict(adata, log_bundle, device="cpu")
        np.testing.assert_allclose(adata.obs["scatd_prob_resistant"], reference, atol=1e-5)
        mi = ModelInput(adata, log_bundle, batch_size=64)
        assert mi.unlog and mi.log_normalise
        np.testing.assert_allclose(_all_rows(mi), expected, atol=2e-5)
        from scatd_core._words import cli_words
        from scatd_core.preprocess import UNLOG_NOTE

        info = adata.uns["scatd"]
        assert info["notes"] == [UNLOG_NOTE] and info["n_scored"] == 150
        assert not any("twice" in w for w in info["warnings"])
    table = export.metrics_table(median)
    assert UNLOG_NOTE in table.query("section == 'summary' and metric == 'note'")["value"].tolist()
    report_prediction(median)
    assert f"note: {cli_words(UNLOG_NOTE)}" in capsys.readouterr().err  # in the command line's words ("give")
    # a value beyond 1e30 once un-logged: that cell is left out, not scored on an infinity
    x = lognorm.X.toarray() if sp.issparse(lognorm.X) else np.array(lognorm.X)
    x[4, list(lognorm.var_names).index("G0")] = 80.0
    lognorm.X = wrap(x)
    mi = ModelInput(lognorm, log_bundle, statistics=inputs_module.DatasetStatistics(True, unlog=True))
    assert not mi.usable[4] and mi.not_scored() == {"overflow": 1}
