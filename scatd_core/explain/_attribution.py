"""Integrated gradients on captum: the explained output, the baselines and the attributor."""

from __future__ import annotations

import numpy as np
import torch

from scatd_core.inputs import ModelInput

BASELINES = ("zero", "mean", "random", "mix")
TARGETS = ("logit", "raw_logit", "prob")
N_REFERENCE_CELLS = 10     # the original's IG ``random`` baseline: the mean of 10 drawn cells
MIX_ALPHA = 0.5            # the original's ``mix``: alpha * mean + (1 - alpha) * random mean
IG_MEMORY_BUDGET = 256 << 20
TARGET_TITLES = {"logit": "logit P(resistant)", "raw_logit": "raw resistant logit", "prob": "P(resistant)"}
BASELINE_TITLES = {"zero": "zero (no expression)", "mean": "mean model input of the scored cells",
                   "random": "mean of {k} random scored cells (seed {seed})",
                   "mix": "0.5 x mean + 0.5 x mean of {k} random scored cells (seed {seed})"}


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
    """Integrated gradients of the explained output w.r.t. the model input, with captum.

    Plain form: captum's ``IntegratedGradients`` on the whole model. Factorised form (default,
    exact): the input enters the network only through the first residual block's linear maps
    (:meth:`~scatd_core.nn.models.DrugClassifier.first_layer`), so along the straight IG path
    their outputs ``h`` move on a straight line too, and ``d f / d x = W^T d f / d h``. captum
    integrates the path gradient in ``h`` space (``multiply_by_inputs=False`` gives the average
    gradient over the path), and the attribution of input *i* is
    ``(x - baseline)_i * (W^T avg_grad_h)_i``: the same quadrature, the same numbers up to float
    rounding (tested), but the 19,264-wide first layer is applied once per cell instead of once
    per step.
    """

    def __init__(self, model, target: str, positive_index: int, baseline: np.ndarray, n_steps: int,
                 internal_batch_size: int | None, device: torch.device, factorise: bool = True):
        from captum.attr import IntegratedGradients

        self.n_steps = int(n_steps)
        self.device = device
        self.forward = TargetOutput(model, target, positive_index)
        self.base = torch.from_numpy(np.asarray(baseline, dtype=np.float32)[None, :]).to(device)
        self.factorised = bool(factorise and model.has_fused_first_layer())
        if self.factorised:
            self.model = model
            self.tail = TargetOutput(model.logits_from_first_layer, target, positive_index)
            self.ig = IntegratedGradients(self.tail, multiply_by_inputs=False)
            width = model.first_layer_parts()[0].shape[0]
            with torch.no_grad():
                self.h_base = model.first_layer(self.base)
        else:
            self.ig = IntegratedGradients(self.forward)
            width = self.base.shape[1]
        self.internal_batch_size = int(internal_batch_size or auto_internal_batch_size(width))
        with torch.no_grad():
            self.f_base = float(self.forward(self.base)[0])

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(attributions, convergence deltas, f(x))`` of a batch of model inputs."""
        xt = torch.from_numpy(x).to(self.device)
        if not self.factorised:
            attr, delta = self.ig.attribute(xt, baselines=self.base, n_steps=self.n_steps,
                                            internal_batch_size=self.internal_batch_size,
                                            return_convergence_delta=True)
            with torch.no_grad():
                out = self.forward(xt)
        else:
            with torch.no_grad():
                h = self.model.first_layer(xt)
            grad_h = self.ig.attribute(h, baselines=self.h_base, n_steps=self.n_steps,
                                       internal_batch_size=self.internal_batch_size)
            with torch.no_grad():
                w = self.model.first_layer_parts()[0]
                attr = (xt - self.base) * (grad_h @ w)
                out = self.tail(h)  # = forward(x), without the wide first layer again
                delta = attr.sum(dim=1) - (out - self.f_base)
        return (attr.detach().double().cpu().numpy(), delta.detach().double().cpu().numpy(),
                out.detach().double().cpu().numpy())


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
