"""Sample mode: a cell's draws depend only on the seed, its row and the draw number, never on how
the cells were batched (the batch size follows the device's free memory and drops after an
out-of-memory error), on the QC mask of other cells, or on the Ray shards."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from scatd_core.inputs import InputSpec, ModelInput, needs_moments
from scatd_core.predict import NOISE_BLOCK_DRAWS, NOISE_BLOCK_ROWS, _SampleNoise, predict

N_CELLS = 160  # three noise tiles, more than a batch of 64 or 7, fewer than 1,024
SAMPLES = 12   # two groups of draws, the second only partly used


def _cells(small_bundles, backbone: str = "dist_vae", n: int = N_CELLS) -> tuple[ad.AnnData, object]:
    bundle, _, enc, _, extra = small_bundles[backbone]
    x = np.abs(np.random.default_rng(5).normal(size=(n, enc[0]))).astype(np.float32)
    var = pd.DataFrame(index=extra) if backbone == "dist_vae" else None
    return ad.AnnData(x, obs=pd.DataFrame(index=[f"c{i}" for i in range(n)]), var=var), bundle


def _run(adata, bundle, **kw) -> tuple[np.ndarray, np.ndarray]:
    out = predict(adata, bundle, mode="sample", n_samples=SAMPLES, device="cpu", copy=True, **kw)
    return out.obs["scatd_prob_resistant"].to_numpy(), out.obs["scatd_prob_resistant_sd"].to_numpy()


@pytest.mark.parametrize("backbone", ["dist_vae", "vae_sf"])
def test_the_same_seed_gives_the_same_draws_whatever_the_batch_size(small_bundles, backbone):
    adata, bundle = _cells(small_bundles, backbone)
    runs = {bs: _run(adata, bundle, seed=3, batch_size=bs) for bs in (7, 64, 1024)}
    p, sd = runs[1024]
    assert np.isfinite(p).all() and (sd > 0).all()
    for bs in (7, 64):
        np.testing.assert_allclose(runs[bs][0], p, rtol=0, atol=1e-6)
        np.testing.assert_allclose(runs[bs][1], sd, rtol=0, atol=1e-6)


def test_a_qc_mask_leaves_the_other_cells_draws_unchanged(small_bundles):
    adata, bundle = _cells(small_bundles)
    assert not needs_moments(InputSpec.of(bundle))  # no dataset statistics: a cell's input is its own
    p, sd = _run(adata, bundle, seed=3, batch_size=1024)
    mask = np.random.default_rng(1).random(N_CELLS) > 0.3
    mask[:NOISE_BLOCK_ROWS] = False  # a whole noise tile removed too
    for bs in (7, 64, 1024):
        pm, sdm = _run(adata, bundle, seed=3, batch_size=bs, mask=mask)
        assert np.isnan(pm[~mask]).all()
        np.testing.assert_allclose(pm[mask], p[mask], rtol=0, atol=1e-6)
        np.testing.assert_allclose(sdm[mask], sd[mask], rtol=0, atol=1e-6)


def test_different_seeds_give_different_draws(small_bundles):
    adata, bundle = _cells(small_bundles)
    p0, sd0 = _run(adata, bundle, seed=0, batch_size=64)
    p1, sd1 = _run(adata, bundle, seed=1, batch_size=64)
    assert (p0 != p1).mean() > 0.99 and (sd0 != sd1).mean() > 0.99
    again = _run(adata, bundle, seed=0, batch_size=64)
    assert np.array_equal(again[0], p0) and np.array_equal(again[1], sd0)


def test_an_out_of_memory_retry_gives_the_same_draws(small_bundles, monkeypatch):
    """The device ran out of memory: the batch is halved and retried, with the same numbers."""
    adata, bundle = _cells(small_bundles)
    p, sd = _run(adata, bundle, seed=2, batch_size=1024)
    model_cls = type(bundle.load_model(torch.device("cpu")))
    real_encode = model_cls.encode

    def encode(self, x):
        if x.shape[0] > 40:
            raise torch.OutOfMemoryError("CUDA out of memory.")
        return real_encode(self, x)

    monkeypatch.setattr(model_cls, "encode", encode)
    pl, sdl = _run(adata, bundle, seed=2, batch_size=1024)
    np.testing.assert_allclose(pl, p, rtol=0, atol=1e-6)
    np.testing.assert_allclose(sdl, sd, rtol=0, atol=1e-6)


def test_shards_give_the_numbers_of_one_process(small_bundles):
    """A Ray shard predicts its rows with ``ModelInput(row_offset=start)`` (scaleout._shard): cut
    anywhere, with another batch size, its cells get the draws one process gives them."""
    adata, bundle = _cells(small_bundles)
    mask = np.random.default_rng(2).random(N_CELLS) > 0.2
    p, sd = _run(adata, bundle, seed=5, batch_size=1024, mask=mask)
    parts = []
    for start, stop in ((0, 50), (50, 51), (51, 130), (130, N_CELLS)):
        shard = adata[start:stop].copy()
        inputs = ModelInput(shard, bundle, mask=mask[start:stop], batch_size=7, row_offset=start)
        parts.append(_run(shard, bundle, seed=5, inputs=inputs, mask=mask[start:stop]))
    np.testing.assert_allclose(np.concatenate([q for q, _ in parts]), p, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.concatenate([s for _, s in parts]), sd, rtol=0, atol=1e-6)


def test_the_noise_is_a_function_of_seed_row_and_draw():
    noise = _SampleNoise(7, torch.device("cpu"))
    rows = np.arange(1000, 1000 + 3 * NOISE_BLOCK_ROWS + 5)
    whole = noise(rows, 1, 6).clone()
    assert whole.shape == (len(rows), NOISE_BLOCK_DRAWS, 6)
    pieces = torch.cat([noise(rows[i:i + 7], 1, 6).clone() for i in range(0, len(rows), 7)])
    assert torch.equal(pieces, whole)
    some = np.sort(np.random.default_rng(0).choice(rows, 50, replace=False))
    assert torch.equal(noise(some, 1, 6), whole[some - rows[0]])
    # other draws, another seed: other numbers; standard normal, no tile repeated
    assert not torch.equal(noise(rows, 2, 6), whole)
    assert not torch.equal(_SampleNoise(8, torch.device("cpu"))(rows, 1, 6), whole)
    big = noise(np.arange(40 * NOISE_BLOCK_ROWS), 0, 8).clone()
    assert abs(float(big.mean())) < 0.02 and abs(float(big.std()) - 1) < 0.02
    tiles = big.reshape(40, -1)
    assert len({tuple(t[:4].tolist()) for t in tiles}) == 40
    with pytest.raises(ValueError, match="in order"):
        noise(rows[::-1].copy(), 0, 6)


def test_tile_keys_of_one_seed_are_distinct_in_their_low_32_bits():
    """Torch's CPU generator keeps a seed's low 32 bits: they must differ from tile to tile."""
    noise = _SampleNoise(123, torch.device("cpu"))
    keys = [noise.key(block, group) for block in range(3000) for group in range(20)]
    assert len({k & 0xFFFFFFFF for k in keys}) == len(keys)
    assert all(0 <= k < 2**64 for k in keys)
    assert _SampleNoise(-5, torch.device("cpu")).key(0, 0) != _SampleNoise(5, torch.device("cpu")).key(0, 0)


def test_the_run_record_says_how_the_draws_were_made(small_bundles):
    """Sample-mode results of earlier versions (draws depending on batching) cannot be told apart
    from today's by their numbers: the record says how the draws were made."""
    adata, bundle = _cells(small_bundles)
    out = predict(adata, bundle, mode="sample", n_samples=SAMPLES, device="cpu", copy=True)
    assert out.uns["scatd"]["params"]["draws"] == "per cell, from (seed, input row, draw number)"
    assert predict(adata, bundle, copy=True).uns["scatd"]["params"]["draws"] == "none"


def test_one_draw_per_cell_is_the_original_stochastic_inference(small_bundles):
    """The spec (2.8) asks for the original's seeded stochastic inference: one draw of z per cell,
    no mean over draws and so no sd (QA: sample mode refused fewer than 2 samples)."""
    adata, bundle = _cells(small_bundles)
    one = predict(adata, bundle, mode="sample", n_samples=1, seed=3, device="cpu", copy=True)
    p = one.obs["scatd_prob_resistant"].to_numpy()
    assert np.isfinite(p).all() and "scatd_prob_resistant_sd" not in one.obs
    assert one.uns["scatd"]["params"]["prob_resistant_sd"].startswith("none (one draw per cell")
    again = predict(adata, bundle, mode="sample", n_samples=1, seed=3, device="cpu", batch_size=7, copy=True)
    np.testing.assert_allclose(again.obs["scatd_prob_resistant"].to_numpy(), p, rtol=0, atol=1e-6)
    mean = predict(adata, bundle, device="cpu", copy=True).obs["scatd_prob_resistant"].to_numpy()
    other = predict(adata, bundle, mode="sample", n_samples=1, seed=4, device="cpu", copy=True)
    assert not np.allclose(p, mean) and not np.allclose(p, other.obs["scatd_prob_resistant"].to_numpy())
    from scatd_core.errors import InputError

    with pytest.raises(InputError, match="at least 1 sample"):
        predict(adata, bundle, mode="sample", n_samples=0, copy=True)
