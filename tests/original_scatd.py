"""An independent stand-in for the original scATD model code, written from the reference only.

It is used to *write* checkpoints with the original key layout (reference Appendix B) and to
compute the original inference independently of ``scatd_core.nn``:

- spectral norm through torch's own hook-based ``torch.nn.utils.spectral_norm``;
- Swish objects created at "module level" and shared exactly as the original files did;
- Dist_VAE inference: one Swish object for encoder blocks *and* head (the beta collision).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm


class OrigSwish(nn.Module):
    def __init__(self):
        super().__init__()
        self.beta = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        return x * torch.sigmoid(self.beta * x)


def _lin(i, o, sn):
    layer = nn.Linear(i, o)
    return spectral_norm(layer, n_power_iterations=5) if sn else layer


class OrigBlock(nn.Module):
    def __init__(self, i, o, backbone, shared_swish=None):
        super().__init__()
        sn_fc = backbone == "vae_gf"
        sn_ds = backbone in ("vae_gf", "dist_vae")
        self.fc = _lin(i, o, sn_fc)
        self.bn = nn.BatchNorm1d(o)
        self.backbone = backbone
        if backbone == "vae_gf":
            self.swish = OrigSwish()
        elif backbone == "dist_vae":
            self.swish = shared_swish
        if i != o:
            self.downsample = _lin(i, o, sn_ds)
        self.i, self.o = i, o

    def forward(self, x):
        h = self.bn(self.fc(x))
        h = F.leaky_relu(h) if self.backbone == "vae_sf" else self.swish(h)
        return h + (self.downsample(x) if self.i != self.o else x)


class OrigVAE(nn.Module):
    """Pretraining form (as RecResVAE.py)."""

    def __init__(self, backbone, enc, z, dec, shared_swish=None):
        super().__init__()
        sw = shared_swish if shared_swish is not None else OrigSwish()
        sn = backbone in ("vae_gf", "dist_vae")
        self.Encoder_resblocks = nn.ModuleList(OrigBlock(enc[k], enc[k + 1], backbone, sw) for k in range(len(enc) - 1))
        self.fc21 = _lin(enc[-1], z, sn)
        self.fc22 = _lin(enc[-1], z, sn)
        self.Decoder_resblocks = nn.ModuleList(OrigBlock(dec[k], dec[k + 1], backbone, sw) for k in range(len(dec) - 1))
        self.fc4 = _lin(dec[-1], enc[0], sn)

    def encode(self, x):
        for b in self.Encoder_resblocks:
            x = b(x)
        return self.fc21(x), self.fc22(x)


class OrigClassifier(nn.Module):
    """DAL form (as the training/inference scripts' VAEclassification)."""

    def __init__(self, backbone, enc, z, n_class=2, encoder_swish=None, head_swish=None):
        super().__init__()
        sn = backbone in ("vae_gf", "dist_vae")
        enc_sw = encoder_swish if encoder_swish is not None else OrigSwish()
        self.Encoder_resblocks = nn.ModuleList(OrigBlock(enc[k], enc[k + 1], backbone, enc_sw) for k in range(len(enc) - 1))
        self.fc21 = _lin(enc[-1], z, sn)
        self.fc22 = _lin(enc[-1], z, sn)
        self.fc3 = spectral_norm(nn.Linear(z, z // 2), n_power_iterations=5)
        self.bn3 = nn.BatchNorm1d(z // 2)
        self.swish = head_swish if head_swish is not None else OrigSwish()
        self.fc4 = spectral_norm(nn.Linear(z // 2, n_class), n_power_iterations=5)

    def encode(self, x):
        for b in self.Encoder_resblocks:
            x = b(x)
        return self.fc21(x), self.fc22(x)

    def mean_path_prob(self, x):
        """P(class 1) on the latent mean, eval mode (the original's z with eps = 0)."""
        mu, _ = self.encode(x)
        logits = self.fc4(self.swish(self.bn3(self.fc3(mu))))
        return torch.softmax(logits, dim=1)[:, 1]


def randomise(model: nn.Module, seed: int) -> None:
    """Give every parameter and buffer non-trivial values (BN stats, betas, u/v included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict(keep_vars=True).items():
            if name.endswith("num_batches_tracked"):
                t.fill_(7)
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("beta"):
                t.copy_(torch.rand((), generator=g) + 0.5)
            elif name.endswith(("weight_u", "weight_v")):
                t.copy_(F.normalize(torch.randn(t.shape, generator=g), dim=0))
            elif name.endswith(("weight_orig", "weight")) and t.ndim == 2:
                t.copy_(torch.randn(t.shape, generator=g) / t.shape[1] ** 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
        # A trained model's u and v have converged to the top singular vectors; random ones
        # could make sigma tiny and the effective weights explode.
        state = model.state_dict(keep_vars=True)
        for name, w in state.items():
            if name.endswith("weight_orig"):
                prefix = name[: -len("weight_orig")]
                u, v = state[prefix + "weight_u"], state[prefix + "weight_v"]
                for _ in range(30):
                    v.copy_(F.normalize(torch.mv(w.t(), u), dim=0))
                    u.copy_(F.normalize(torch.mv(w, v), dim=0))


def dal_checkpoint(backbone, enc, z, seed=0, backbone_beta=0.7, head_beta=1.3):
    """A DAL state dict as the original *training* script saves it (separate betas)."""
    enc_sw = OrigSwish() if backbone == "dist_vae" else None
    model = OrigClassifier(backbone, enc, z, encoder_swish=enc_sw)
    randomise(model, seed)
    with torch.no_grad():
        if backbone == "dist_vae":
            enc_sw.beta.fill_(backbone_beta)
        model.swish.beta.fill_(head_beta)
    return model.state_dict()


def original_inference_prob(backbone, enc, z, state_dict, x):
    """The original inference: strict load into its inference class, eval, latent-mean path.

    For Dist_VAE the inference class uses one Swish for encoder and head, so loading the
    checkpoint leaves the encoder with the head's beta, exactly as the original did.
    """
    if backbone == "dist_vae":
        shared = OrigSwish()
        model = OrigClassifier(backbone, enc, z, encoder_swish=shared, head_swish=shared)
    else:
        model = OrigClassifier(backbone, enc, z)
    model.load_state_dict(state_dict, strict=True)
    model.eval()
    with torch.no_grad():
        return model.mean_path_prob(torch.as_tensor(x, dtype=torch.float32)).double().numpy()


def pretraining_checkpoint(backbone, enc, z, dec, seed=0):
    sw = OrigSwish() if backbone == "dist_vae" else None
    model = OrigVAE(backbone, enc, z, dec, shared_swish=sw)
    randomise(model, seed)
    return model.state_dict()
