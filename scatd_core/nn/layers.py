"""Layers of the scATD residual VAEs, with the original checkpoint key names.

Pure torch, no I/O. The parameter and buffer names follow the original code exactly so that its
``state_dict`` files load with ``strict=True``:

- :class:`SpectralLinear` stores ``weight_orig``, ``bias`` and the buffers ``weight_u``,
  ``weight_v``, the layout of the hook-based ``torch.nn.utils.spectral_norm`` that scATD used.
- :class:`Swish` stores one 0-dim ``beta``.
- :class:`ResBlock` is ``act(bn(fc(x))) + shortcut(x)``, with no activation after the sum.

Frozen weights (eval mode, no gradient to the weights: inference and attribution) are used
through values computed once per weights version: a spectral layer's normalised weight, and a
block's ``fc`` and shortcut stacked into one matrix so that both are one GEMM
(:meth:`ResBlock.fused_linear`). Training recomputes everything on every pass, as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_SN_EPS = 1e-12  # the normalisation epsilon of torch's spectral_norm


def _frozen(*modules: nn.Module) -> bool:
    """Eval mode and no parameter asking for a gradient: values derived from the weights can be reused."""
    return all(not m.training and not any(p.requires_grad for p in m.parameters()) for m in modules)


def _cached(owner: nn.Module, name: str, build, sources: tuple[nn.Module, ...] | None = None):
    """``build()``, computed once per version of the parameters and buffers of ``sources``
    (default: ``owner``) and kept on ``owner`` under ``name``.

    The key holds each tensor's identity, in-place version counter, storage, device and dtype, so
    loading other weights, ``.to(...)`` or an optimiser step all rebuild it; the cache keeps those
    tensors alive, so an identity cannot be reused by a new tensor while it is the key. The value
    is an ordinary tensor (not an inference tensor) even when first built under
    ``torch.inference_mode``, so autograd can use it later (attribution). It lives outside the
    state dict.
    """
    tensors = tuple(t for m in (sources or (owner,)) for t in (*m.parameters(), *m.buffers()))
    key = tuple((id(t), t._version, t.data_ptr(), t.device, t.dtype) for t in tensors)
    slot = f"_frozen_{name}"
    cached = owner.__dict__.get(slot)
    if cached is not None and cached[0] == key:
        return cached[1]
    owner.__dict__.pop(slot, None)  # free the old value before building the new one
    with torch.inference_mode(False), torch.no_grad():
        value = build()
    owner.__dict__[slot] = (key, value, tensors)
    return value


def batch_norm_scale(bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` with ``bn(y) == y * scale + shift`` in eval mode (running statistics)."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def foldable(bn: nn.BatchNorm1d) -> bool:
    """Whether eval-mode ``bn`` is a fixed affine map (it has running statistics)."""
    return bn.track_running_stats and bn.running_mean is not None


def folded_linear(layer: nn.Module, bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight, bias)`` of ``bn(layer(x))`` as one linear map (eval mode; exact up to rounding)."""
    scale, shift = batch_norm_scale(bn)
    return linear_weight_effective(layer) * scale[:, None], layer.bias * scale + shift


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
        """The effective weight ``weight_orig / sigma`` (computed once while the layer is frozen)."""
        if _frozen(self):
            return _cached(self, "weight", self._normalised_weight)
        return self._normalised_weight()

    def _normalised_weight(self) -> torch.Tensor:
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


def linear_weight_effective(layer: nn.Module) -> torch.Tensor:
    """The weight a plain or spectral linear layer multiplies by (after spectral normalisation),
    computed afresh: a caller that keeps it (:meth:`ResBlock.fused_linear`) needs no second copy."""
    return layer._normalised_weight() if isinstance(layer, SpectralLinear) else layer.weight


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

    @property
    def fusable(self) -> bool:
        """Frozen, with a shortcut layer and batch-norm running statistics: the block's linear
        part (``bn(fc(x))`` and the shortcut) is one affine map, one GEMM."""
        return self.downsample is not None and foldable(self.bn) and _frozen(self)

    def fused_linear(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weight_t, bias)`` with ``x @ weight_t + bias == [bn(fc(x)), downsample(x)]``.

        The eval-mode batch norm is folded into ``fc`` (exact up to float rounding), so nothing
        between the GEMM and the activation remains. ``weight_t`` is input-major
        (``in_dim x 2 out_dim``, contiguous): one row per input feature, the layout both a dense
        GEMM and a sparse (per expressed gene) product read well. Computed once per weights
        version (see :func:`_cached`); only for a :attr:`fusable` block.
        """
        def build():
            w_fc, b_fc = folded_linear(self.fc, self.bn)
            w = torch.cat([w_fc, linear_weight_effective(self.downsample)], dim=0)
            return w.t().contiguous(), torch.cat([b_fc, self.downsample.bias]).contiguous()

        return _cached(self, "linear", build)

    def from_linear(self, h: torch.Tensor) -> torch.Tensor:
        """The block's output from ``h = [bn(fc(x)), downsample(x)]`` (see :meth:`fused_linear`)."""
        main, shortcut = h.split(self.fc.out_features, dim=1)  # one gradient copy back, not two
        return self.activation(main) + shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fusable:
            weight_t, bias = self.fused_linear()
            return self.from_linear(torch.addmm(bias.to(x.dtype), x, weight_t.to(x.dtype)))
        out = self.activation(self.bn(self.fc(x)))
        return out + (self.downsample(x) if self.downsample is not None else x)
