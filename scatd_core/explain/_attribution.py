"""Integrated gradients on captum: the explained output, the baselines and the attributor."""

from __future__ import annotations

import numpy as np
import torch

from scatd_core.inputs import ModelInput
from scatd_core.nn.sparse import batch_tensor

BASELINES = ("zero", "mean", "random", "mix")
TARGETS = ("logit", "raw_logit", "prob")
N_REFERENCE_CELLS = 10     # the original's IG ``random`` baseline: the mean of 10 drawn cells
MIX_ALPHA = 0.5            # the original's ``mix``: alpha * mean + (1 - alpha) * random mean
IG_MEMORY_BUDGET = 256 << 20
TARGET_TITLES = {"logit": "logit P(resistant)", "raw_logit": "raw resistant logit", "prob": "P(resistant)"}
BASELINE_TITLES = {"zero": "zero (no expression)", "mean": "mean model input of the scored cells",
                   "random": "mean of {k} random scored cells (seed {seed})",
                   "mix": "0.5 x mean + 0.5 x mean of {k} random scored cells (seed {seed})"}


def zero_is_mean(bundle) -> bool:
    """Whether a zero model input is every gene at its mean (a model that z-scores its genes)."""
    return getattr(bundle, "input_kind", "expression") == "expression" and \
        bundle.manifest.get("input_transform") == "standardize"


def zero_baseline_meaning(bundle) -> str:
    """What the ``zero`` baseline is for this model: a zero model input is "no expression" only for
    models that take expression as it is or log-normalise it; a model that z-scores its genes
    reads 0 as every gene at its mean (so ``zero`` is then practically the ``mean`` baseline), and
    an embedding model as an all-zero aligned embedding."""
    if getattr(bundle, "input_kind", "expression") != "expression":
        return "an all-zero cell embedding (after AdaIN), not an absence of expression"
    if zero_is_mean(bundle):
        return ("every gene at its mean over the dataset (this model z-scores its genes), practically the "
                "'mean' baseline; not an absence of expression")
    return "no expression at all"


def direction_meaning(target: str, level: str = "gene") -> str:
    """What the ranking's ``direction`` says for this ``target`` and feature ``level`` (``"gene"``
    or ``"embedding feature"``): the sign of the fitted input gradient of the explained output."""
    higher = "higher expression" if level == "gene" else "a higher value of the embedding feature"
    if target == "raw_logit":
        return (f"whether {higher} raises (resistance) or lowers (sensitivity) the raw resistant logit, the "
                "explained output (the sign of its mean path gradient); the other logit moves too, so this need not "
                "be the direction of P(resistant)")
    return f"what {higher} does to P(resistant) (the sign of the mean path gradient of {TARGET_TITLES[target]})"


def baseline_title(baseline: str, bundle, k: int, seed: int) -> str:
    """:data:`BASELINE_TITLES` for this model (``zero`` as :func:`zero_baseline_meaning` says)."""
    if baseline == "zero":
        return f"zero model input: {zero_baseline_meaning(bundle)}"
    return BASELINE_TITLES[baseline].format(k=k, seed=seed)


class TargetOutput(torch.nn.Module):
    """The scalar per cell that is explained, from a function giving the class logits."""

    def __init__(self, logits, target: str, positive_index: int):
        super().__init__()
        self.logits, self.target, self.k = logits, target, positive_index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.logits(x)
        if self.target == "raw_logit":
            return logits[:, self.k]
        others = torch.cat([logits[:, :self.k], logits[:, self.k + 1:]], dim=1)
        log_odds = logits[:, self.k] - torch.logsumexp(others, dim=1)
        return log_odds if self.target == "logit" else torch.sigmoid(log_odds)


def auto_internal_batch_size(width: int) -> int:
    """Interpolated inputs per forward pass so that the interpolated inputs (``width`` values
    each), their gradients and the widest activations stay within :data:`IG_MEMORY_BUDGET`."""
    return int(max(1, min(8192, IG_MEMORY_BUDGET // (3 * 4 * max(width, 1)))))


class Attributor:
    """Integrated gradients of the explained output w.r.t. the model input.

    Plain form (``factorise=False``): captum's ``IntegratedGradients`` on the whole model.

    Factorised form (default, exact): the input enters the network only through the first
    residual block's affine maps (:meth:`~scatd_core.nn.models.DrugClassifier.first_layer`,
    ``h = x @ W + b``), so along the straight IG path ``h`` moves on a straight line too, and
    ``d f / d x = W d f / d h``. The path gradient is therefore integrated in ``h`` space
    (3,328 values per cell for Dist_VAE instead of 19,264) and mapped back once per cell: the
    attribution of input *i* is ``(x - baseline)_i * (W avg_grad_h)_i``, with captum's
    quadrature (the same Gauss-Legendre points and weights, :func:`quadrature`). ``h`` is
    computed once per cell (sparse inputs through the sparse product) and every step of a
    chunk of cells runs in one forward and one backward pass: the steps' inputs are
    ``path_s + p`` for one zero leaf ``p`` per cell, so autograd returns
    ``sum_s w_s grad f(path_s)`` directly. For scATD's classifiers (``by_hand``, the default)
    the steps' forward and backward passes and the map back are computed by hand with merged
    linear maps (:mod:`scatd_core.explain._path`); autograd does it for anything else. The same
    numbers as captum on the whole model up to float rounding (tested).
    """

    def __init__(self, model, target: str, positive_index: int, baseline: np.ndarray, n_steps: int,
                 internal_batch_size: int | None, device: torch.device, factorise: bool = True,
                 by_hand: bool = True):
        self.n_steps = int(n_steps)
        self.device = device
        self.forward = TargetOutput(model, target, positive_index)
        self.base = torch.from_numpy(np.asarray(baseline, dtype=np.float32)[None, :]).to(device)
        self.factorised = bool(factorise and model.has_fused_first_layer())
        if self.factorised:
            self.model = model
            self.tail = TargetOutput(model.logits_from_first_layer, target, positive_index)
            weight_t = model.first_layer_weights()[0]
            width = weight_t.shape[1]
            weights, alphas = quadrature(self.n_steps)
            self.step_weights = torch.tensor(weights, dtype=torch.float32, device=device)
            self.alphas = torch.tensor(alphas, dtype=torch.float32, device=device)
            with torch.no_grad():
                self.h_base = model.first_layer(self.base)
            from scatd_core.explain._path import PathGradient, supported

            self.by_hand = None
            if by_hand and supported(model, target):
                self.by_hand = PathGradient(model, target, positive_index, self.h_base, self.alphas,
                                            self.step_weights)
        else:
            from captum.attr import IntegratedGradients

            self.ig = IntegratedGradients(self.forward)
            width = self.base.shape[1]
        self.internal_batch_size = int(internal_batch_size or auto_internal_batch_size(width))
        with torch.no_grad():
            self.f_base = float(self.forward(self.base)[0])

    def first_layer(self, x) -> torch.Tensor | None:
        """The first layer's outputs of a batch of model inputs (float32 array or CSR matrix), for
        :meth:`__call__` on slices of the batch (one wide product per batch, not per call); None
        where the attribution is not factorised."""
        if not self.factorised:
            return None
        with torch.no_grad():
            return self.model.first_layer(batch_tensor(x, self.device))

    def __call__(self, x, h: torch.Tensor | None = None, with_factors: bool = False):
        """``(attributions float32, convergence deltas, f(x))`` of a batch of model inputs
        (a float32 array, or a CSR matrix for the sparse first layer); ``h``: their first-layer
        outputs when already computed (:meth:`first_layer`). With ``with_factors``, a fourth
        item: the gradients' factors (cells x :meth:`factor_width`, float32), from which
        :meth:`attributions_of` gives any inputs' attributions again, or None where the
        attribution is not factorised."""
        dense = torch.from_numpy(x.toarray() if hasattr(x, "toarray") else x).to(self.device)
        factors = None
        if not self.factorised:
            attr, delta = self.ig.attribute(dense, baselines=self.base, n_steps=self.n_steps,
                                            internal_batch_size=self.internal_batch_size,
                                            return_convergence_delta=True)
            with torch.no_grad():
                out = self.forward(dense)
        else:
            if h is None:
                h = self.first_layer(x)
            if self.by_hand is not None:
                with torch.no_grad():
                    grad, factors = self.by_hand.input_gradient(h, with_factors=True)
                    attr = grad.mul_(dense - self.base)
            else:
                factors = self.path_gradient(h)
                with torch.no_grad():
                    weight_t = self.model.first_layer_weights()[0]
                    attr = (dense - self.base) * torch.mm(factors, weight_t.t())
            with torch.no_grad():
                out = self.tail(h)  # = forward(x), without the wide first layer again
                delta = attr.sum(dim=1, dtype=torch.float64) - (out.double() - self.f_base)
        result = (attr.detach().float().cpu().numpy(), delta.detach().double().cpu().numpy(),
                  out.detach().double().cpu().numpy())
        if not with_factors:
            return result
        return (*result, None if factors is None else factors.detach().float().cpu().numpy())

    def factor_width(self) -> int | None:
        """Values per cell of the gradients' factors (see :meth:`__call__`), or None where the
        attribution is not factorised."""
        if not self.factorised:
            return None
        if self.by_hand is not None:
            return self.by_hand.factor_width()
        return int(self.model.first_layer_weights()[0].shape[1])

    def attributions_of(self, factors: np.ndarray, inputs: np.ndarray, features: np.ndarray) -> np.ndarray:
        """The attributions of the input ``features`` (columns) of cells with gradient factors
        ``factors`` (from :meth:`__call__`) and model inputs ``inputs`` (cells x len(features)):
        the same numbers as the full call's, up to float32 rounding."""
        index = torch.as_tensor(np.asarray(features, dtype=np.int64), device=self.device)
        with torch.no_grad():
            if self.by_hand is not None:
                rows = self.by_hand.basis_rows(index)
            else:
                rows = self.model.first_layer_weights()[0][index]
            grad = torch.mm(torch.from_numpy(np.ascontiguousarray(factors, dtype=np.float32)).to(self.device),
                            rows.t())
            x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32)).to(self.device)
            attr = grad.mul_(x - self.base[0, index])
        return attr.float().cpu().numpy()

    def path_gradient(self, h: torch.Tensor) -> torch.Tensor:
        """``sum_s w_s grad_h f(h_base + alpha_s (h - h_base))`` per row of ``h`` (the average
        path gradient in first-layer space), in chunks of at most ``internal_batch_size``
        interpolated rows."""
        steps, width = self.n_steps, h.shape[1]
        per_chunk = max(1, self.internal_batch_size // steps)
        weights = self.step_weights[:, None]
        out = torch.empty_like(h)
        for s in range(0, h.shape[0], per_chunk):
            hc = h[s:s + per_chunk]
            with torch.no_grad():
                path = torch.addcmul(self.h_base, self.alphas[:, None, None], (hc - self.h_base)[None])
            leaf = torch.zeros_like(hc, requires_grad=True)
            f = self.tail((path + leaf).reshape(steps * hc.shape[0], width))
            out[s:s + per_chunk], = torch.autograd.grad(f, leaf, grad_outputs=weights.expand(steps, hc.shape[0])
                                                        .reshape(-1))
        return out


def quadrature(n_steps: int) -> tuple[list[float], list[float]]:
    """captum's Gauss-Legendre step weights and points on [0, 1] for ``n_steps`` steps."""
    from captum.attr._utils.approximation_methods import approximation_parameters

    weights, alphas = approximation_parameters("gausslegendre")
    return list(weights(n_steps)), list(alphas(n_steps))


def baseline_vector(inputs: ModelInput, kind: str, n_reference: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """The baseline model input and the rows of the cells it was drawn from (random/mix)."""
    if kind == "zero":
        return np.zeros(inputs.spec.input_dim, dtype=np.float32), []
    mean = inputs.input_mean() if kind in ("mean", "mix") else None
    if kind == "mean":
        return mean.astype(np.float32), []
    usable = np.flatnonzero(inputs.usable)
    drawn = np.sort(np.random.default_rng(seed).choice(usable, size=min(n_reference, usable.size), replace=False))
    reference = np.vstack([inputs.rows(int(i), int(i) + 1)[1] for i in drawn]).astype(np.float64).mean(axis=0)
    vector = reference if kind == "random" else MIX_ALPHA * mean + (1 - MIX_ALPHA) * reference
    return vector.astype(np.float32), [int(i) for i in drawn]
