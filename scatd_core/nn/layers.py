"""Layers of the scATD residual VAEs, with the original checkpoint key names.

Pure torch, no I/O. The parameter and buffer names follow the original code exactly so that its
``state_dict`` files load with ``strict=True``:

- :class:`SpectralLinear` stores ``weight_orig``, ``bias`` and the buffers ``weight_u``,
  ``weight_v``, the layout of the hook-based ``torch.nn.utils.spectral_norm`` that scATD used.
- :class:`Swish` stores one 0-dim ``beta``.
- :class:`ResBlock` is ``act(bn(fc(x))) + shortcut(x)``, with no activation after the sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_SN_EPS = 1e-12  # the normalisation epsilon of torch's spectral_norm


class Swish(nn.Module):
    """``x * sigmoid(beta * x)`` with a trainable scalar ``beta`` (initialised to 1.0)."""

    def __init__(self, beta: float = 1.0):
        super().__init__()
        self.beta = nn.Parameter(torch.tensor(float(beta)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.beta * x)


class LeakyReLU(nn.Module):
    """Parameter-free ``F.leaky_relu`` (slope 0.01), the VAE_sf backbone activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x)


class SpectralLinear(nn.Module):
    """Linear layer whose weight is divided by its spectral norm (old torch API semantics).

    In training mode ``n_power_iterations`` power-iteration steps update ``weight_u`` and
    ``weight_v`` in place before every forward pass; in eval mode the stored vectors are used as
    they are, so an imported checkpoint computes exactly what the original computed in eval.
    """

    def __init__(self, in_features: int, out_features: int, n_power_iterations: int = 5):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.n_power_iterations = n_power_iterations
        self.weight_orig = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        self.register_buffer("weight_u", F.normalize(torch.randn(out_features), dim=0, eps=_SN_EPS))
        self.register_buffer("weight_v", F.normalize(torch.randn(in_features), dim=0, eps=_SN_EPS))
        bound = 1.0 / in_features**0.5
        nn.init.uniform_(self.bias, -bound, bound)
        nn.init.kaiming_uniform_(self.weight_orig, a=5**0.5)

    def weight(self) -> torch.Tensor:
        """The effective weight ``weight_orig / sigma``."""
        w = self.weight_orig
        u, v = self.weight_u, self.weight_v
        if self.training and self.n_power_iterations > 0:
            with torch.no_grad():
                for _ in range(self.n_power_iterations):
                    v = F.normalize(torch.mv(w.t(), u), dim=0, eps=_SN_EPS, out=self.weight_v)
                    u = F.normalize(torch.mv(w, v), dim=0, eps=_SN_EPS, out=self.weight_u)
            # clones so autograd does not see the in-place updates of the next call
            u, v = u.clone(memory_format=torch.contiguous_format), v.clone(memory_format=torch.contiguous_format)
        sigma = torch.dot(u, torch.mv(w, v))
        return w / sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, spectral_norm=True"


def make_linear(in_features: int, out_features: int, spectral: bool) -> nn.Module:
    return SpectralLinear(in_features, out_features) if spectral else nn.Linear(in_features, out_features)


def linear_weight(layer: nn.Module) -> torch.Tensor:
    """The raw (pre-normalisation) weight of a plain or spectral linear layer, for init."""
    return layer.weight_orig if isinstance(layer, SpectralLinear) else layer.weight


class ResBlock(nn.Module):
    """``act(bn(fc(x))) + downsample(x)`` (identity shortcut when in_dim == out_dim)."""

    def __init__(self, in_dim: int, out_dim: int, activation: nn.Module, spectral_fc: bool,
                 spectral_shortcut: bool):
        super().__init__()
        self.fc = make_linear(in_dim, out_dim, spectral_fc)
        self.bn = nn.BatchNorm1d(out_dim)
        # Registering the activation as a child keeps the original key `swish.beta`; a shared
        # Swish object assigned to several blocks appears under each block's key, as it did.
        if isinstance(activation, Swish):
            self.swish = activation
        else:
            self.act = activation
        self.downsample = make_linear(in_dim, out_dim, spectral_shortcut) if in_dim != out_dim else None

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return self.swish(x) if hasattr(self, "swish") else self.act(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.activation(self.bn(self.fc(x)))
        return out + (self.downsample(x) if self.downsample is not None else x)
