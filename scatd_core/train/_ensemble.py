"""The default recipe: backbones from several seeds, each with a class-balanced linear head.

Every member is an scATD :class:`~scatd_core.nn.models.DrugClassifier` (original key layout)
whose head computes a logistic regression on the frozen latent mean
(:meth:`~scatd_core.nn.models.DrugClassifier.set_linear_head`); with ``head_inputs =
"latent+input"`` the regression also sees the model input (the standardised genes), through the
ensemble's ``input_weight``. Heads are fitted to convergence (L-BFGS) with a fixed L2 penalty,
so nothing is chosen on the bulk cross-validation, whose folds hold a handful of sensitive
lines. The ensemble predicts with the mean of its members' logits.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression

from scatd_core.nn import Architecture, EnsembleClassifier, ResVAE
from scatd_core.train._fit import _init_rng, _new_backbone, pretrain_backbone
from scatd_core.train._settings import TrainSettings

#: Member k of a run with seed s is pretrained from seed ``s * MEMBER_SEED_STRIDE + k``.
MEMBER_SEED_STRIDE = 1000
#: Convergence tolerance of the heads' L-BFGS (tight: the heads are fitted to convergence).
HEAD_TOL = 1e-8
#: L-BFGS iterations of the entropy refinement (semi-supervised heads).
ENTROPY_ITERATIONS = 50


def member_seeds(seed: int, n_members: int) -> list[int]:
    return [int(seed) * MEMBER_SEED_STRIDE + k for k in range(n_members)]


def pretrain_members(data, s: TrainSettings, dev: torch.device, *, adaptation: bool,
                     tick: Callable[[int], Callable[[str], None]] | None = None,
                     should_stop: Callable[[], bool] | None = None) -> tuple[list[ResVAE], list[list[float]]]:
    """``s.members`` backbones pretrained on the bulk (and, with ``adaptation``, the target) from
    different seeds; returns them (eval mode) and their loss curves."""
    backbones, losses = [], []
    for k, seed in enumerate(member_seeds(s.seed, s.members)):
        sk = replace(s, seed=seed)
        vae = _new_backbone(data.backbone, data.bulk_x.shape[1], sk)
        losses.append(pretrain_backbone(vae, data.bulk_all, data.target_x if adaptation else None, sk, dev,
                                        tick=tick(k) if tick else None, should_stop=should_stop,
                                        member=f"backbone {k + 1} of {s.members}, seed {seed}"))
        backbones.append(vae.eval())
    return backbones, losses


def latent_means(vae, x: np.ndarray, dev: torch.device) -> np.ndarray:
    """The backbone's latent means of model inputs ``x`` (float64)."""
    with torch.no_grad():
        return vae.encode(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(dev))[0].double().cpu().numpy()


@dataclass
class LinearHead:
    """``logit(resistant) - logit(sensitive) = latent @ w_latent + inputs @ w_input + bias``."""

    w_latent: np.ndarray
    w_input: np.ndarray | None
    bias: float

    def logit(self, latent: np.ndarray, inputs: np.ndarray | None) -> np.ndarray:
        out = latent @ self.w_latent + self.bias
        return out + inputs @ self.w_input if self.w_input is not None else out


def balanced_weights(y: np.ndarray) -> np.ndarray:
    """Per-sample weights giving both classes the same total weight (mean weight 1)."""
    counts = np.bincount(y, minlength=2).astype(np.float64)
    return (len(y) / (2.0 * np.maximum(counts, 1.0)))[y]


@dataclass
class _Design:
    """The heads' features: the latent mean standardised over the labelled bulk (each seed's
    latent has its own scale, and the L2 penalty should not depend on it), then the model input
    (already standardised per gene), when the head sees it."""

    mean: np.ndarray
    sd: np.ndarray

    @classmethod
    def of(cls, bulk_latent: np.ndarray) -> "_Design":
        sd = bulk_latent.std(axis=0)
        return cls(bulk_latent.mean(axis=0), np.where(sd > 1e-12, sd, 1.0))

    def features(self, latent: np.ndarray, inputs: np.ndarray | None) -> np.ndarray:
        z = (latent - self.mean) / self.sd
        return z if inputs is None else np.hstack([z, inputs])

    def head(self, coef: np.ndarray, intercept: float, with_inputs: bool) -> LinearHead:
        """The head on the raw latent mean (the standardisation folded into weights and bias)."""
        n = self.mean.size
        w_latent = coef[:n] / self.sd
        return LinearHead(w_latent, coef[n:].copy() if with_inputs else None,
                          float(intercept - np.dot(w_latent, self.mean)))


def _logistic(features: np.ndarray, y: np.ndarray, weights: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """Weighted L2 logistic regression (``c`` = inverse strength), L-BFGS to convergence."""
    model = LogisticRegression(C=float(c), max_iter=10_000, tol=HEAD_TOL)
    model.fit(features, y, sample_weight=weights)
    return model.coef_[0].astype(np.float64), float(model.intercept_[0])


def _entropy_refined(coef: np.ndarray, intercept: float, features: np.ndarray, y: np.ndarray, weights: np.ndarray,
                     unlabelled: np.ndarray, unlabelled_weight: float, c: float) -> tuple[np.ndarray, float]:
    """Minimise ``c * (weighted cross-entropy + unlabelled_weight * sum of the unlabelled samples'
    prediction entropies) + |coef|^2 / 2`` from ``(coef, intercept)`` (L-BFGS, float64)."""
    x = torch.from_numpy(features)
    t = torch.from_numpy(y.astype(np.float64))
    w = torch.from_numpy(weights)
    xu = torch.from_numpy(unlabelled)
    beta = torch.tensor(coef, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor([intercept], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([beta, bias], max_iter=ENTROPY_ITERATIONS, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        opt.zero_grad()
        ce = F.binary_cross_entropy_with_logits(x @ beta + bias, t, weight=w, reduction="sum")
        fu = xu @ beta + bias
        p = torch.sigmoid(fu)
        entropy = -(p * F.logsigmoid(fu) + (1 - p) * F.logsigmoid(-fu)).sum()
        value = c * (ce + unlabelled_weight * entropy) + 0.5 * beta.pow(2).sum()
        value.backward()
        return value

    opt.step(loss)
    return beta.detach().numpy(), float(bias.detach()[0])


def fit_linear_head(latent: np.ndarray, inputs: np.ndarray | None, y: np.ndarray, c: float) -> LinearHead:
    """A class-balanced logistic regression on ``[latent, inputs]`` with L2 strength ``1 / c``,
    fitted to convergence (features: :class:`_Design`)."""
    design = _Design.of(latent)
    coef, intercept = _logistic(design.features(latent, inputs), y, balanced_weights(y), c)
    return design.head(coef, intercept, inputs is not None)


@dataclass
class FewShot:
    """Labelled target cells used for training: rows of the training target, classes (1 = resistant)."""

    rows: np.ndarray
    y: np.ndarray
    ids: list[str]

    @property
    def n_labelled(self) -> int:
        return int(len(self.rows))

    @property
    def n_resistant(self) -> int:
        return int(self.y.sum())

    @property
    def n_sensitive(self) -> int:
        return int(len(self.y) - self.y.sum())


def fit_heads(bulk: list[np.ndarray], inputs: np.ndarray | None, y: np.ndarray, s: TrainSettings, *,
              target: tuple[list[np.ndarray], np.ndarray | None] | None = None,
              few: FewShot | None = None) -> list[LinearHead]:
    """One head per member (``bulk[k]``: member k's latent means of the labelled bulk samples).

    With ``few`` labelled target cells (and ``target``: the members' latent means and inputs of
    every target cell), each head is fitted semi-supervised (:func:`fit_semi_supervised_head`).
    """
    if few is None:
        return [fit_linear_head(z, inputs, y, s.head_c) for z in bulk]
    latents, target_inputs = target
    return [fit_semi_supervised_head(zb, inputs, y, zt, target_inputs, few, s) for zb, zt in zip(bulk, latents)]


def fit_semi_supervised_head(bulk: np.ndarray, bulk_inputs: np.ndarray | None, y: np.ndarray, target: np.ndarray,
                             target_inputs: np.ndarray | None, few: FewShot, s: TrainSettings) -> LinearHead:
    """A head fitted on the bulk and a few labelled target cells together, then refined on the
    unlabelled target cells (semi-supervised, in the spirit of SSDA4Drug).

    1. One logistic regression over the labelled bulk samples and the labelled target cells:
       each set class-balanced, the target cells weighing ``s.few_shot_weight`` times the bulk
       in total, so a handful of cells can move a head fitted on hundreds of cell lines.
    2. With ``s.entropy_weight > 0``, entropy minimisation on the unlabelled target cells
       (weighing ``s.entropy_weight`` times the bulk in total), from that solution: the decision
       boundary moves away from dense regions of the target, the cluster assumption behind
       SSDA4Drug's minimax entropy.
    """
    design = _Design.of(bulk)
    features = np.vstack([design.features(bulk, bulk_inputs),
                          design.features(target[few.rows], None if target_inputs is None else target_inputs[few.rows])])
    labels = np.concatenate([y, few.y])
    weights = np.concatenate([balanced_weights(y),
                              balanced_weights(few.y) * (s.few_shot_weight * len(y) / len(few.y))])
    coef, intercept = _logistic(features, labels, weights, s.head_c)
    unlabelled = np.setdiff1d(np.arange(len(target)), few.rows)
    if s.entropy_weight > 0 and unlabelled.size:
        rest = design.features(target[unlabelled], None if target_inputs is None else target_inputs[unlabelled])
        coef, intercept = _entropy_refined(coef, intercept, features, labels, weights, rest,
                                           s.entropy_weight * len(y) / unlabelled.size, s.head_c)
    return design.head(coef, intercept, bulk_inputs is not None)


def ensemble_logit(heads: list[LinearHead], latents: list[np.ndarray], inputs: np.ndarray | None) -> np.ndarray:
    """The ensemble's logit: the mean of the members' logits (what :class:`EnsembleClassifier` computes)."""
    return np.mean([h.logit(z, inputs) for h, z in zip(heads, latents)], axis=0)


def build_ensemble(backbones: list[ResVAE], heads: list[LinearHead], positive_index: int = 1) -> EnsembleClassifier:
    """The saved model: each backbone's encoder with its head in the original layout."""
    with_inputs = heads[0].w_input is not None
    member_arch = backbones[0].arch
    arch = Architecture(member_arch.backbone, list(member_arch.encoder_dims), member_arch.z_dim, None,
                        max(2, member_arch.z_dim // 2), 2, members=len(backbones), input_head=with_inputs)
    with _init_rng(0):  # every weight is set below; the seed only makes the unused init reproducible
        ensemble = EnsembleClassifier(arch)
    for k, (vae, head) in enumerate(zip(backbones, heads)):
        member = ensemble.members[k]
        member.load_state_dict({**member.state_dict(), **{key: v for key, v in vae.state_dict().items()
                                                          if key.startswith(("Encoder_resblocks", "fc21", "fc22"))}})
        member.set_linear_head(torch.from_numpy(head.w_latent).float(), head.bias, positive_index)
        if with_inputs:
            with torch.no_grad():
                ensemble.input_weight[k].zero_()
                ensemble.input_weight[k, positive_index] = torch.from_numpy(head.w_input).float()
    ensemble.eval()
    for p in ensemble.parameters():
        p.requires_grad_(False)
    return ensemble
