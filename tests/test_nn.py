"""scatd_core.nn: exact original key layouts, sizes, spectral norm and Swish semantics."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils import spectral_norm

import original_scatd as orig
from conftest import SMALL
from scatd_core.errors import CheckpointError
from scatd_core.nn import Architecture, DrugClassifier, ResVAE, SpectralLinear, build_model, infer_architecture
from scatd_core.nn.state import model_from_state_dict

# reference Appendix B: key counts, and parameter counts of the pretraining forms (§2.2-2.4)
KEY_COUNTS = {("vae_sf", "backbone"): 51, ("vae_sf", "classifier"): 45, ("vae_gf", "backbone"): 110,
              ("vae_gf", "classifier"): 78, ("dist_vae", "backbone"): 48, ("dist_vae", "classifier"): 46}
PARAMS = {"vae_sf": 25_707_290, "vae_gf": 15_910_575, "dist_vae": 99_098_861}


@pytest.mark.parametrize("backbone", ["vae_sf", "vae_gf", "dist_vae"])
@pytest.mark.parametrize("kind", ["backbone", "classifier"])
def test_published_key_layout_matches_original(backbone, kind):
    ours = build_model(Architecture.published(backbone, kind)).state_dict()
    enc, z, dec = {"vae_sf": ([3072, 1926, 850, 262], 421, [421, 850, 1926]),
                   "vae_gf": ([512, 1415, 1250, 1050, 293], 498, [498, 650, 1450, 1415]),
                   "dist_vae": ([19264, 1664, 359], 421, [421, 1664])}[backbone]
    if kind == "backbone":
        theirs = orig.OrigVAE(backbone, enc, z, dec, shared_swish=orig.OrigSwish()).state_dict()
    else:
        theirs = orig.OrigClassifier(backbone, enc, z).state_dict()
    assert len(ours) == KEY_COUNTS[(backbone, kind)]
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}


@pytest.mark.parametrize("backbone", ["vae_sf", "vae_gf", "dist_vae"])
def test_published_parameter_counts(backbone):
    model = build_model(Architecture.published(backbone, "backbone"))
    # Dist_VAE shares one Swish beta across blocks: parameters() counts it once, as the original
    assert sum(p.numel() for p in model.parameters()) == PARAMS[backbone]


def test_appendix_b_spot_keys():
    sd = build_model(Architecture.published("dist_vae", "classifier")).state_dict()
    assert "Encoder_resblocks.0.fc.weight" in sd and "Encoder_resblocks.0.fc.weight_orig" not in sd
    assert tuple(sd["Encoder_resblocks.0.downsample.weight_orig"].shape) == (1664, 19264)
    assert tuple(sd["fc3.weight_orig"].shape) == (210, 421) and tuple(sd["fc4.weight_orig"].shape) == (2, 210)
    assert sd["swish.beta"].shape == torch.Size([])
    gf = build_model(Architecture.published("vae_gf", "backbone")).state_dict()
    assert tuple(gf["fc4.weight_orig"].shape) == (512, 1415) and "Decoder_resblocks.2.swish.beta" in gf
    sf = build_model(Architecture.published("vae_sf", "backbone")).state_dict()
    assert not any("swish" in k or "weight_orig" in k for k in sf)


def test_spectral_linear_matches_torch_hook_api_in_train_and_eval():
    torch.manual_seed(3)
    ref = spectral_norm(torch.nn.Linear(7, 5), n_power_iterations=5)
    ours = SpectralLinear(7, 5)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(4, 7)
    for training in (True, True, False):
        ref.train(training)
        ours.train(training)
        assert torch.allclose(ref(x), ours(x), atol=1e-6)
        assert torch.allclose(ref.weight_u, ours.weight_u) and torch.allclose(ref.weight_v, ours.weight_v)


def test_eval_mode_uses_stored_u_and_v():
    layer = SpectralLinear(6, 4).eval()
    u0, v0 = layer.weight_u.clone(), layer.weight_v.clone()
    layer(torch.randn(3, 6))
    assert torch.equal(u0, layer.weight_u) and torch.equal(v0, layer.weight_v)


@pytest.mark.parametrize("backbone", list(SMALL))
def test_architecture_read_from_shapes(backbone):
    enc, z, dec = SMALL[backbone]
    arch = infer_architecture(orig.pretraining_checkpoint(backbone, enc, z, dec), backbone)
    assert (arch.encoder_dims, arch.z_dim, arch.decoder_dims, arch.kind) == (enc, z, dec, "backbone")
    arch = infer_architecture(orig.dal_checkpoint(backbone, enc, z), backbone)
    assert (arch.encoder_dims, arch.z_dim, arch.head_dim, arch.class_num) == (enc, z, z // 2, 2)


@pytest.mark.parametrize("given,actual", [("dist_vae", "vae_gf"), ("vae_sf", "dist_vae"), ("vae_gf", "vae_sf")])
def test_wrong_backbone_is_named(given, actual):
    enc, z, _ = SMALL[actual]
    with pytest.raises(CheckpointError, match=f"This is a {actual} checkpoint.*not {given}"):
        infer_architecture(orig.dal_checkpoint(actual, enc, z), given)


def test_missing_and_unexpected_keys_are_named():
    enc, z, _ = SMALL["dist_vae"]
    sd = orig.dal_checkpoint("dist_vae", enc, z)
    del sd["bn3.running_mean"]
    sd["extra.thing"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"missing keys: bn3\.running_mean.*unexpected keys: extra\.thing"):
        model_from_state_dict(sd, "dist_vae")


def test_dist_vae_shared_swish_and_head_swish():
    enc, z, dec = SMALL["dist_vae"]
    vae = ResVAE(Architecture("dist_vae", enc, z, dec))
    betas = {id(b.swish) for b in list(vae.Encoder_resblocks) + list(vae.Decoder_resblocks)}
    assert len(betas) == 1  # one Swish for the whole Dist_VAE backbone
    clf = DrugClassifier.from_backbone(vae)
    assert clf.Encoder_resblocks is vae.Encoder_resblocks  # transfer learning shares the encoder
    assert clf.swish is not clf.Encoder_resblocks[0].swish
    clf.tie_encoder_beta_to_head()
    assert all(b.swish is clf.swish for b in clf.Encoder_resblocks)
    gf = ResVAE(Architecture("vae_gf", *SMALL["vae_gf"]))
    assert len({id(b.swish) for b in gf.Encoder_resblocks}) == len(gf.Encoder_resblocks)


def test_mean_path_is_deterministic_and_sample_path_is_not():
    enc, z, _ = SMALL["vae_gf"]
    model, _ = model_from_state_dict(orig.dal_checkpoint("vae_gf", enc, z), "vae_gf")
    model.eval()
    x = torch.randn(5, enc[0])
    assert torch.equal(model(x), model(x))
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(model(x, sample=True, generator=g1), model(x, sample=True, generator=g2))
    assert not torch.equal(model(x), model(x, sample=True))


def test_model_warm_up_leaves_nothing_for_the_first_model_load_to_import(tmp_path):
    """The app's start-up builds a tiny model the way bundles are loaded (meta device), so the
    first real load in a process imports nothing more from torch (its meta-device kernels import
    torch._dynamo on first use, ~2 s of a server's first prediction)."""
    import subprocess
    import sys
    from pathlib import Path

    from _app_helpers import make_bundle, make_dataset

    make_bundle(tmp_path / "b", make_dataset(60, seed=0), steps=2)
    code = (
        "import sys\n"
        "from scatd_core.bundle import load_bundle\n"
        "from scatd_core.nn import models\n"
        "before = {m for m in sys.modules if m.startswith('torch')}\n"
        "models.warm_up()\n"
        "warmed = {m for m in sys.modules if m.startswith('torch')}\n"
        f"load_bundle({str(tmp_path / 'b')!r}).load_model('cpu')\n"
        "new = sorted(m for m in sys.modules if m.startswith('torch') and m not in warmed)\n"
        "assert len(warmed - before) > 10, 'the warm-up imported nothing: nothing to test'\n"
        "assert not new, new[:10]\n")
    repo = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo)
    assert res.returncode == 0, res.stderr[-2000:]
