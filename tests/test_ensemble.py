"""Ensembles of drug classifiers: linear heads in the original layout, stacked bundles, predict, explain."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import original_scatd as orig
from conftest import SMALL
from scatd_core import explain
from scatd_core.bundle import load_bundle, save_bundle
from scatd_core.errors import BundleError
from scatd_core.nn import Architecture, DrugClassifier, EnsembleClassifier
from scatd_core.nn.ensemble import unstack_state
from scatd_core.predict import estimate_seconds, predict

import anndata as ad
import pandas as pd

N_GENES = 24


def _member(arch: Architecture, seed: int) -> DrugClassifier:
    torch.manual_seed(seed)
    model = DrugClassifier(arch)
    orig.randomise(model, seed)  # BN statistics, u/v and betas away from their initial values
    g = torch.Generator().manual_seed(seed)
    model.set_linear_head(torch.randn(arch.z_dim, generator=g), float(torch.randn((), generator=g)))
    return model.eval()


def _ensemble(n_members=3, input_head=True, backbone="dist_vae") -> EnsembleClassifier:
    enc, z, _ = SMALL[backbone]
    enc = [N_GENES] + enc[1:] if backbone == "dist_vae" else enc
    arch = Architecture(backbone, enc, z, None, z // 2, 2, members=n_members, input_head=input_head)
    model = EnsembleClassifier(arch)
    for k in range(n_members):
        model.members[k].load_state_dict(_member(arch.member(), 20 + k).state_dict())
    if input_head:
        with torch.no_grad():
            model.input_weight.zero_()
            model.input_weight[:, 1] = torch.randn(n_members, arch.input_dim, generator=torch.Generator().manual_seed(3))
    return model.eval()


@pytest.mark.parametrize("backbone", ["dist_vae", "vae_sf", "vae_gf"])
def test_linear_head_is_the_logistic_model_in_the_original_layout(backbone):
    enc, z, _ = SMALL[backbone]
    arch = Architecture(backbone, enc, z, None, z // 2, 2)
    model = _member(arch, 5)
    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(z, generator=g), 0.7
    model.set_linear_head(w, b)
    x = torch.randn(9, enc[0], generator=g)
    with torch.no_grad():
        mu = model.encode(x)[0]
        logits = model(x)
    torch.testing.assert_close(logits[:, 1] - logits[:, 0], mu @ w + b, atol=1e-5, rtol=1e-5)
    # the original classifier (separate head Swish: the function that was trained) computes the same
    sd = model.state_dict()
    original = orig.OrigClassifier(backbone, enc, z, encoder_swish=orig.OrigSwish() if backbone == "dist_vae" else None)
    original.load_state_dict(sd, strict=True)
    original.eval()
    with torch.no_grad():
        p_orig = original.mean_path_prob(x)
    torch.testing.assert_close(p_orig, torch.sigmoid(mu @ w + b), atol=1e-6, rtol=1e-5)


def test_zero_weight_head_predicts_its_bias():
    enc, z, _ = SMALL["vae_sf"]
    model = _member(Architecture("vae_sf", enc, z, None, z // 2, 2), 1)
    model.set_linear_head(torch.zeros(z), -1.5)
    with torch.no_grad():
        logits = model(torch.randn(4, enc[0]))
    torch.testing.assert_close(logits[:, 1] - logits[:, 0], torch.full((4,), -1.5))


def test_ensemble_averages_member_logits_and_first_layer_form_agrees():
    model = _ensemble()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(7, N_GENES, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        members = torch.stack([m(x) + x @ model.input_weight[k].T for k, m in enumerate(model.members)])
        torch.testing.assert_close(model(x), members.mean(0))
        mu, _ = model.encode(x)
        assert mu.shape == (7, model.arch.latent_dim) == (7, 3 * model.arch.z_dim)
        torch.testing.assert_close(model.classifier(mu, x), members.mean(0))
        torch.testing.assert_close(model.logits_from_first_layer(model.first_layer(x)), members.mean(0),
                                   atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="also take the model input"):
        model.classifier(mu)


def test_stacked_weights_hold_each_member_in_the_original_layout():
    model = _ensemble()
    state = model.stacked_state_dict()
    single = DrugClassifier(model.arch.member()).state_dict()
    assert set(state) == set(single) | {"input_weight"}
    assert all(state[k].shape == (3, *single[k].shape) for k in single)
    members, input_weight = unstack_state(state, 3)
    for k, m in enumerate(model.members):
        assert all(torch.equal(members[k][key], v) for key, v in m.state_dict().items())
    assert torch.equal(input_weight, model.input_weight)


def _bundle(tmp_path, model, name="ens"):
    genes = [f"G{i}" for i in range(N_GENES)]
    return save_bundle(tmp_path / name, model.stacked_state_dict(), model.arch, drug="DRUGX", genes=genes,
                       input_transform="standardize", threshold=0.5, extra={"card": {"model": {"description": "x"}}})


def _cells(n=30, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 1.0, (n, N_GENES)).astype(np.float32)
    return ad.AnnData(x, obs=pd.DataFrame(index=[f"c{i}" for i in range(n)]),
                      var=pd.DataFrame(index=[f"G{i}" for i in range(N_GENES)]))


def test_ensemble_bundle_predicts_mean_logit_with_member_spread(tmp_path):
    model = _ensemble()
    bundle = load_bundle(_bundle(tmp_path, model).path)
    assert bundle.architecture.members == 3 and bundle.summary()["members"] == 3
    cells = _cells()
    predict(cells, bundle, device="cpu")
    x = (cells.X - cells.X.mean(0)) / cells.X.std(0)  # "standardize": per-gene z-scores over the cells
    with torch.no_grad():
        xt = torch.from_numpy(x.astype(np.float32))
        each = torch.softmax(torch.stack([m(xt) + xt @ model.input_weight[k].T for k, m in enumerate(model.members)]),
                             dim=2)[:, :, 1].double().numpy()
        mean_logit = torch.softmax(model(xt), dim=1)[:, 1].double().numpy()
    np.testing.assert_allclose(cells.obs["scatd_prob_resistant"], mean_logit, atol=1e-5)
    np.testing.assert_allclose(cells.obs["scatd_prob_resistant_sd"], each.std(0, ddof=1), atol=1e-5)
    assert cells.obsm["X_scatd"].shape == (30, 3 * model.arch.z_dim)
    run = cells.uns["scatd"]
    assert run["params"]["prob_resistant_sd"] == "over the 3 ensemble members"
    assert run["model"]["members"] == 3 and json.loads(run["model"]["card_json"])["model"]["description"] == "x"
    with pytest.raises(BundleError, match="shared_with_head"):
        predict(_cells(), bundle, device="cpu", beta_mode="shared_with_head")
    one = load_bundle(_bundle(tmp_path, _ensemble(1), "one").path)
    assert estimate_seconds(bundle, 1000, device="cpu") == pytest.approx(3 * estimate_seconds(one, 1000, device="cpu"))


def test_ensemble_without_input_head_and_sample_mode(tmp_path):
    model = _ensemble(input_head=False)
    bundle = load_bundle(_bundle(tmp_path, model).path)
    cells = _cells()
    predict(cells, bundle, device="cpu", mode="sample", n_samples=5, seed=1)
    assert np.isfinite(cells.obs["scatd_prob_resistant_sd"]).all()
    assert cells.uns["scatd"]["params"]["prob_resistant_sd"] == "over the draws"


def test_sample_mode_computes_the_input_heads_term_once_per_batch(tmp_path, monkeypatch):
    """The input's term of the heads is the same for every draw of a cell: sample mode computes it
    once per batch (it was once per draw, a dense input x weights product each time), with the
    numbers of the heads given the input at every draw."""
    from scatd_core.predict import _SampleNoise

    model = _ensemble()
    bundle = load_bundle(_bundle(tmp_path, model).path)
    calls = []
    original = EnsembleClassifier.input_logits
    monkeypatch.setattr(EnsembleClassifier, "input_logits",
                        lambda self, x: calls.append(x.shape[0]) or original(self, x))
    cells = _cells()
    predict(cells, bundle, device="cpu", mode="sample", n_samples=7, seed=4, batch_size=16)
    assert calls == [16, 14]  # 30 cells in two batches: once each, not 7 times
    # by hand, each draw through the whole head with the input, from the same noise of (seed, row, draw)
    x = (cells.X - cells.X.mean(0)) / cells.X.std(0)  # "standardize": per-gene z-scores over the cells
    xt = torch.from_numpy(x.astype(np.float32))
    with torch.no_grad():
        mu, logvar = model.encode(xt)
        noise = _SampleNoise(4, torch.device("cpu"))(np.arange(30), 0, mu.shape[1])
        draws = torch.stack([torch.softmax(model.classifier(mu + noise[:, s] * torch.exp(0.5 * logvar), xt), dim=1)[:, 1]
                             for s in range(7)]).double().numpy()
    np.testing.assert_allclose(cells.obs["scatd_prob_resistant"], draws.mean(0), atol=1e-5)
    np.testing.assert_allclose(cells.obs["scatd_prob_resistant_sd"], draws.std(0, ddof=1), atol=1e-5)


def test_corrupt_ensemble_weights_are_named(tmp_path):
    model = _ensemble()
    path = _bundle(tmp_path, model).path
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["architecture"]["members"] = 4  # the weights hold 3
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="wrong shapes"):
        load_bundle(path).load_model("cpu")


def test_explain_an_ensemble_factorised_equals_plain(tmp_path):
    bundle = load_bundle(_bundle(tmp_path, _ensemble()).path)
    cells = _cells(40)
    predict(cells, bundle, device="cpu")
    fast = explain.explain(cells, bundle, n_steps=16, differential_expression=False, device="cpu",
                           store_result=False)
    plain = explain.explain(cells, bundle, n_steps=16, differential_expression=False, device="cpu",
                            factorise=False, store_result=False)
    assert fast.info["first_layer_factorised"] and not plain.info["first_layer_factorised"]
    np.testing.assert_allclose(fast.ranking["mean_abs_attribution"], plain.ranking["mean_abs_attribution"],
                               rtol=1e-3, atol=1e-6)
    assert fast.info["completeness"]["max_relative_error"] < 1e-3
