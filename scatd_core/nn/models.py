"""The scATD models: residual VAE backbones and the drug-response classifier.

Three backbones share one structure and differ in activation and spectral normalisation
(reference §2, §11):

=========  =====================  ===========  ===========  =====================
backbone   activation             ResBlock fc  shortcut     fc21/fc22, decoder fc4
=========  =====================  ===========  ===========  =====================
vae_sf     LeakyReLU(0.01)        plain        plain        plain
vae_gf     Swish, one per block   spectral     spectral     spectral
dist_vae   Swish, one per model   plain        spectral     spectral
=========  =====================  ===========  ===========  =====================

:class:`ResVAE` is the pretraining form (encoder + decoder); :class:`DrugClassifier` is the
domain-adaptive-learning (DAL) form: the backbone encoder plus the head
``fc3 (spectral) -> bn3 -> swish -> fc4 (spectral)``. Both keep the original module names, so
original ``state_dict`` files load with ``strict=True``. Note the original's name clash: ``fc4``
is the decoder output in a :class:`ResVAE` and the classifier output in a
:class:`DrugClassifier`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Mapping

import torch
from torch import nn

from scatd_core.nn.layers import (LeakyReLU, ResBlock, SpectralLinear, Swish, _cached, _frozen, folded_linear,
                                  foldable, linear_weight, make_linear)
from scatd_core.nn.sparse import sparse_linear

BACKBONES = ("dist_vae", "vae_sf", "vae_gf")


@dataclass(frozen=True)
class BackboneStyle:
    activation: str  # "leaky_relu" | "swish_per_block" | "swish_shared"
    spectral_fc: bool
    spectral_shortcut: bool
    spectral_latent: bool  # fc21, fc22 and the decoder's fc4


STYLES: dict[str, BackboneStyle] = {
    "vae_sf": BackboneStyle("leaky_relu", False, False, False),
    "vae_gf": BackboneStyle("swish_per_block", True, True, True),
    "dist_vae": BackboneStyle("swish_shared", False, True, True),
}

# Published sizes (reference §2.2-2.4): encoder dims, z_dim, decoder dims.
PUBLISHED_SIZES: dict[str, tuple[list[int], int, list[int]]] = {
    "vae_sf": ([3072, 1926, 850, 262], 421, [421, 850, 1926]),
    "vae_gf": ([512, 1415, 1250, 1050, 293], 498, [498, 650, 1450, 1415]),
    "dist_vae": ([19264, 1664, 359], 421, [421, 1664]),
}


@dataclass
class Architecture:
    """Layer sizes of a model, as read from a checkpoint's tensor shapes.

    ``encoder_dims`` is ``[input_dim, ..., hidden_dim_layer_out_Z]``; ``decoder_dims`` is
    ``[z_dim, ..., hidden_dim_layer0]`` (pretraining form only); ``head_dim`` and ``class_num``
    describe the classifier head (DAL form only). ``members`` is the number of classifiers of an
    ensemble (:class:`~scatd_core.nn.ensemble.EnsembleClassifier`; ``None`` for one model) and
    ``input_head`` whether its heads also see the model input; the other fields describe each
    member.
    """

    backbone: str
    encoder_dims: list[int]
    z_dim: int
    decoder_dims: list[int] | None = None
    head_dim: int | None = None
    class_num: int | None = None
    members: int | None = None
    input_head: bool = False

    @property
    def input_dim(self) -> int:
        return self.encoder_dims[0]

    @property
    def n_members(self) -> int:
        return self.members or 1

    @property
    def latent_dim(self) -> int:
        """Width of the model's latent: ``z_dim``, or the members' latents side by side."""
        return self.z_dim * self.n_members

    def member(self) -> "Architecture":
        """The architecture of one member (of an ensemble; the model itself otherwise)."""
        return replace(self, members=None, input_head=False)

    @property
    def kind(self) -> str:
        return "classifier" if self.head_dim is not None else "backbone"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "Architecture":
        return cls(
            backbone=str(d["backbone"]),
            encoder_dims=[int(v) for v in d["encoder_dims"]],
            z_dim=int(d["z_dim"]),
            decoder_dims=None if d.get("decoder_dims") is None else [int(v) for v in d["decoder_dims"]],
            head_dim=None if d.get("head_dim") is None else int(d["head_dim"]),
            class_num=None if d.get("class_num") is None else int(d["class_num"]),
            members=None if d.get("members") is None else int(d["members"]),
            input_head=bool(d.get("input_head", False)),
        )

    @classmethod
    def published(cls, backbone: str, kind: str = "classifier") -> "Architecture":
        enc, z, dec = PUBLISHED_SIZES[backbone]
        if kind == "classifier":
            return cls(backbone, list(enc), z, None, z // 2, 2)
        return cls(backbone, list(enc), z, list(dec))


def _activation_factory(style: BackboneStyle):
    """A callable giving the activation for each new block of one model."""
    if style.activation == "leaky_relu":
        return LeakyReLU
    if style.activation == "swish_per_block":
        return Swish
    shared = Swish()  # Dist_VAE: one beta for every block of the model
    return lambda: shared


def _init_like_original(module: nn.Module) -> None:
    """kaiming-normal (leaky_relu) for block/head hidden layers, xavier-normal for the rest."""
    for name, child in module.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(child, (nn.Linear, SpectralLinear)):
            w = linear_weight(child)
            if leaf in ("fc", "downsample", "fc3"):
                nn.init.kaiming_normal_(w, nonlinearity="leaky_relu")
            else:  # fc21, fc22, fc4 (decoder output or classifier output)
                nn.init.xavier_normal_(w)


class _EncoderMixin(nn.Module):
    """``Encoder_resblocks`` -> ``fc21`` (mu), ``fc22`` (logvar), shared by both model forms."""

    def _build_encoder(self, arch: Architecture, style: BackboneStyle, make_act) -> None:
        dims = arch.encoder_dims
        self.Encoder_resblocks = nn.ModuleList(
            ResBlock(dims[i], dims[i + 1], make_act(), style.spectral_fc, style.spectral_shortcut)
            for i in range(len(dims) - 1)
        )
        self.fc21 = make_linear(dims[-1], arch.z_dim, style.spectral_latent)
        self.fc22 = make_linear(dims[-1], arch.z_dim, style.spectral_latent)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` of ``x``; in inference (frozen weights) through :meth:`first_layer`,
        which also takes a sparse batch."""
        if self.Encoder_resblocks[0].fusable:
            return self.encode_first_layer_output(self.first_layer(x))
        h = x
        for block in self.Encoder_resblocks:
            h = block(h)
        return self.fc21(h), self.fc22(h)

    # The input reaches the encoder only through the first block's two linear maps (fc and the
    # shortcut). Stacking them makes one GEMM instead of two, lets a sparse batch skip the genes
    # it does not express, and lets integrated gradients integrate in their output space (the
    # path is linear in the input): see scatd_core.explain.
    def first_layer_weights(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(weight_t, bias, width)``: ``x @ weight_t + bias`` is ``[bn(fc(x)), shortcut(x)]`` of
        the first block (effective spectral-normalised weights, batch norm folded in, input-major),
        ``width`` the size of ``fc(x)``. Computed once per weights version (:meth:`ResBlock.fused_linear`); frozen
        models with a first-block shortcut only (:attr:`ResBlock.fusable`)."""
        first = self.Encoder_resblocks[0]
        weight_t, bias = first.fused_linear()
        return weight_t, bias, first.fc.out_features

    def first_layer(self, x: torch.Tensor) -> torch.Tensor:
        """The first block's pre-activations ``[bn(fc(x)), shortcut(x)]``: one GEMM for a dense ``x``;
        for a sparse ``x`` (torch CSC/CSR) only the expressed inputs' weights
        (:func:`scatd_core.nn.sparse.sparse_linear`)."""
        weight_t, bias, _ = self.first_layer_weights()
        if x.layout != torch.strided:
            return sparse_linear(x, weight_t, bias)
        return torch.addmm(bias.to(x.dtype), x, weight_t.to(x.dtype))

    def _trunk_from_first_layer(self, h: torch.Tensor) -> torch.Tensor:
        out = self.Encoder_resblocks[0].from_linear(h)
        for block in self.Encoder_resblocks[1:]:
            out = block(out)
        return out

    def encode_first_layer_output(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` from :meth:`first_layer`'s output ``h``."""
        out = self._trunk_from_first_layer(h)
        return self.fc21(out), self.fc22(out)

    def mean_from_first_layer(self, h: torch.Tensor) -> torch.Tensor:
        """The latent mean ``mu`` from :meth:`first_layer`'s output ``h`` (no ``logvar``)."""
        return self.fc21(self._trunk_from_first_layer(h))

    def has_fused_first_layer(self) -> bool:
        """Whether the input enters only through :meth:`first_layer` (frozen, with a first-block
        shortcut projection: :attr:`ResBlock.fusable`)."""
        return bool(self.Encoder_resblocks[0].fusable)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + eps * torch.exp(0.5 * logvar)


class ResVAE(_EncoderMixin):
    """Pretraining form: encoder, ``fc21``/``fc22``, ``Decoder_resblocks`` and ``fc4``.

    ``forward`` returns ``(recon, mu, logvar, z)`` with a sampled ``z``, as in the original.
    """

    def __init__(self, arch: Architecture):
        super().__init__()
        if arch.decoder_dims is None:
            raise ValueError("a ResVAE needs decoder_dims")
        self.arch = arch
        style = STYLES[arch.backbone]
        make_act = _activation_factory(style)
        self._build_encoder(arch, style, make_act)
        dec = arch.decoder_dims
        self.Decoder_resblocks = nn.ModuleList(
            ResBlock(dec[i], dec[i + 1], make_act(), style.spectral_fc, style.spectral_shortcut)
            for i in range(len(dec) - 1)
        )
        self.fc4 = make_linear(dec[-1], arch.input_dim, style.spectral_latent)
        _init_like_original(self)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = z
        for block in self.Decoder_resblocks:
            h = block(h)
        return self.fc4(h)  # no output non-linearity, as in the original

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, generator)
        return self.decode(z), mu, logvar, z


class DrugClassifier(_EncoderMixin):
    """DAL form: backbone encoder + head ``fc3 -> bn3 -> swish -> fc4``; logits over classes.

    ``forward(x)`` classifies the latent mean ``mu`` (deterministic, the recommended default);
    ``forward(x, sample=True)`` classifies a re-parameterised draw as the original always did.
    """

    def __init__(self, arch: Architecture):
        super().__init__()
        if arch.head_dim is None or arch.class_num is None:
            raise ValueError("a DrugClassifier needs head_dim and class_num")
        self.arch = arch
        style = STYLES[arch.backbone]
        self._build_encoder(arch, style, _activation_factory(style))
        self.fc3 = SpectralLinear(arch.z_dim, arch.head_dim)
        self.bn3 = nn.BatchNorm1d(arch.head_dim)
        self.swish = Swish()
        self.fc4 = SpectralLinear(arch.head_dim, arch.class_num)
        _init_like_original(self)

    @classmethod
    def from_backbone(cls, backbone: ResVAE, head_dim: int | None = None, class_num: int = 2,
                      seed: int | None = None) -> "DrugClassifier":
        """A new classifier whose encoder **is** the backbone's encoder (same module objects)."""
        arch = Architecture(backbone.arch.backbone, list(backbone.arch.encoder_dims), backbone.arch.z_dim,
                            None, head_dim or backbone.arch.z_dim // 2, class_num)
        if seed is not None:
            torch.manual_seed(seed)
        model = cls(arch)
        model.Encoder_resblocks = backbone.Encoder_resblocks
        model.fc21 = backbone.fc21
        model.fc22 = backbone.fc22
        return model

    def classifier(self, z: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits of latent points ``z``; frozen, ``bn3`` is folded into ``fc3`` (one GEMM).
        ``x`` (the model input) is not used by this head; it is accepted so that callers treat this
        model and an ensemble whose heads see the input alike."""
        if foldable(self.bn3) and _frozen(self.fc3, self.bn3):
            weight, bias = _cached(self, "head", lambda: folded_linear(self.fc3, self.bn3), (self.fc3, self.bn3))
            return self.fc4(self.swish(torch.nn.functional.linear(z, weight, bias)))
        return self.fc4(self.swish(self.bn3(self.fc3(z))))

    def set_linear_head(self, w: torch.Tensor, b: float, positive_index: int = 1) -> None:
        """Make the head compute the linear model ``logit(positive) - logit(other) = w . z + b``
        exactly, in the original layout (binary heads).

        ``fc3``'s first row is ``w / |w|`` and its stored ``u = e0``, ``v = w / |w|`` make its
        spectral norm 1; ``bn3`` (running mean 0, running variance ``1 - eps``) scales that unit
        by ``2 |w|`` and zeroes the others; the head Swish with ``beta = 0`` is ``x / 2``; ``fc4``
        (``u = e_positive``, ``v = e0``: norm 1) copies the unit into the positive logit, whose
        bias is ``b``. The other logit is 0.
        """
        if self.arch.class_num != 2:
            raise ValueError("a linear head needs a binary classifier")
        w = torch.as_tensor(w, dtype=torch.float32).reshape(-1)
        norm = float(w.norm())
        direction = w / norm if norm > 0 else torch.nn.functional.one_hot(torch.tensor(0), w.numel()).float()
        e0 = torch.zeros(self.arch.head_dim)
        e0[0] = 1.0
        with torch.no_grad():
            self.fc3.weight_orig.zero_()
            self.fc3.weight_orig[0] = direction
            self.fc3.bias.zero_()
            self.fc3.weight_u.copy_(e0)
            self.fc3.weight_v.copy_(direction)
            self.bn3.running_mean.zero_()
            self.bn3.running_var.fill_(1.0 - self.bn3.eps)
            self.bn3.num_batches_tracked.zero_()
            self.bn3.weight.zero_()
            self.bn3.weight[0] = 2.0 * norm
            self.bn3.bias.zero_()
            self.swish.beta.fill_(0.0)
            self.fc4.weight_orig.zero_()
            self.fc4.weight_orig[positive_index, 0] = 1.0
            self.fc4.bias.zero_()
            self.fc4.bias[positive_index] = float(b)
            self.fc4.weight_u.zero_()
            self.fc4.weight_u[positive_index] = 1.0
            self.fc4.weight_v.copy_(e0)

    def logits_from_first_layer(self, h: torch.Tensor) -> torch.Tensor:
        """Class logits of the latent mean, from :meth:`first_layer`'s output ``h``."""
        return self.classifier(self.mean_from_first_layer(h))

    def forward(self, x: torch.Tensor, sample: bool = False,
                generator: torch.Generator | None = None) -> torch.Tensor:
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, generator) if sample else mu
        return self.classifier(z)

    def encoder_modules(self) -> list[nn.Module]:
        return [self.Encoder_resblocks, self.fc21, self.fc22]

    def tie_encoder_beta_to_head(self) -> None:
        """Make the encoder blocks use the head's Swish, as the original Dist_VAE inference did.

        The original inference script built encoder and head on one module-level Swish, so on
        loading a DAL checkpoint the encoder silently took the classifier's beta (reference
        §2.6). Published Dist_VAE predictions were made that way; this reproduces them.
        """
        for block in self.Encoder_resblocks:
            if hasattr(block, "swish"):
                block.swish = self.swish


def build_model(arch: Architecture):
    """The module ``arch`` describes: a :class:`ResVAE`, a :class:`DrugClassifier` or an ensemble."""
    if arch.members:
        from scatd_core.nn.ensemble import EnsembleClassifier

        return EnsembleClassifier(arch)
    return DrugClassifier(arch) if arch.kind == "classifier" else ResVAE(arch)


def warm_up() -> None:
    """Build a tiny classifier on the meta device, as :meth:`~scatd_core.bundle.Bundle.load_model`
    builds every model before loading its weights by assignment. torch runs meta-device
    initialisers through its Python reference kernels, whose first call in a process imports
    ``torch._dynamo`` (~2 s); done here (e.g. in a background thread at start-up), a server's
    first prediction does not wait for it."""
    import torch

    with torch.device("meta"):
        build_model(Architecture("dist_vae", [8, 6, 4], 4, None, 4, 2))
