"""The networks' training: backbone pretraining, the drug head (DAL) with MMD, seeded and deterministic."""

from __future__ import annotations

import copy
import math
import threading
from contextlib import contextmanager
from dataclasses import replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from scatd_core.errors import Cancelled, InputError
from scatd_core.labels import LABEL_MAPPING
from scatd_core.metrics import auroc
from scatd_core.nn import Architecture, DrugClassifier, ResVAE
from scatd_core.nn.layers import SpectralLinear
from scatd_core._train_settings import pretrain_lr
from scatd_core.train._settings import TrainSettings

_INIT_LOCK = threading.Lock()  # module init draws from torch's global RNG
_DETERMINISTIC_LOCK = threading.Lock()  # torch's deterministic switch is process-wide: counted
_DETERMINISTIC = {"depth": 0, "before": (False, False)}
#: Spectral-norm power iterations per training step. u and v persist between steps, so one
#: iteration tracks the largest singular value as the weights move (as in SN-GAN); the original's
#: five cost a third of the pretraining time and only matter to reproduce its training exactly.
TRAIN_POWER_ITERATIONS = 1


def _train_power_iterations(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, SpectralLinear):
            module.n_power_iterations = TRAIN_POWER_ITERATIONS


@contextmanager
def _deterministic():
    """torch's deterministic algorithms on for the block. The switch is process-wide, so trainings
    that overlap (app sessions) share it: the first turns it on, the last puts back what was there
    (each putting back "the state before" left it off under a running training, or on for good)."""
    with _DETERMINISTIC_LOCK:
        if _DETERMINISTIC["depth"] == 0:
            _DETERMINISTIC["before"] = (torch.are_deterministic_algorithms_enabled(),
                                        torch.is_deterministic_algorithms_warn_only_enabled())
            torch.use_deterministic_algorithms(True, warn_only=True)
        _DETERMINISTIC["depth"] += 1
    try:
        yield
    finally:
        with _DETERMINISTIC_LOCK:
            _DETERMINISTIC["depth"] -= 1
            if _DETERMINISTIC["depth"] == 0:
                mode, warn_only = _DETERMINISTIC["before"]
                torch.use_deterministic_algorithms(mode, warn_only=warn_only)


@contextmanager
def _init_rng(seed: int):
    """Module initialisation (which draws from torch's global RNG) from ``seed``, leaving the
    caller's RNG state as it was; the lock keeps concurrent trainings (app sessions) apart."""
    with _INIT_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """A shuffled split of ``range(n)`` into near-equal batches of >= 2 (BatchNorm needs 2)."""
    perm = torch.randperm(n, generator=gen)
    k = max(1, math.ceil(n / batch_size))
    k = min(k, max(1, n // 2))
    return list(torch.tensor_split(perm, k))


def mmd_rbf(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared MMD between samples ``x`` and ``y`` (sizes may differ) with one RBF kernel.

    ``k(a, b) = exp(-||a - b||^2 / (2 m^2))`` with ``m`` the median pairwise distance of the
    pooled sample (median heuristic), **detached** so the bandwidth is not optimised (§10.17).
    Biased (V-statistic) estimator ``mean Kxx + mean Kyy - 2 mean Kxy``, always >= 0.
    """
    z = torch.cat([x, y], dim=0)
    d2 = (z.unsqueeze(1) - z.unsqueeze(0)).pow(2).sum(-1)  # no sqrt: finite gradient at 0
    with torch.no_grad():
        n = z.shape[0]
        iu = torch.triu_indices(n, n, offset=1, device=z.device)
        off = d2[iu[0], iu[1]]
        med2 = off.median() if off.numel() else torch.tensor(1.0, device=z.device)
        gamma = 1.0 / (2.0 * med2.clamp_min(1e-12))
    k = torch.exp(-gamma * d2)
    nx = x.shape[0]
    return k[:nx, :nx].mean() + k[nx:, nx:].mean() - 2.0 * k[:nx, nx:].mean()




# --------------------------------------------------------------------------- backbone

def _restrict_backbone(vae: ResVAE, keep: np.ndarray) -> ResVAE:
    """The backbone on a subset of its input genes, computing exactly what the full one does
    (in eval mode) when the other genes are 0.

    Input columns of the first encoder block and output rows of the decoder are cut. For a
    spectral-normed layer the effective weight is ``W / (u^T W v)`` with the stored ``u, v``; the
    cut would change that denominator, so the kept vector is rescaled to preserve it.
    """
    keep_t = torch.as_tensor(np.asarray(keep), dtype=torch.long)
    state = {k: v.clone() for k, v in vae.state_dict().items()}

    def cut(prefix: str, axis: int) -> None:
        if f"{prefix}.weight" in state:  # plain Linear
            w = state[f"{prefix}.weight"]
            state[f"{prefix}.weight"] = w.index_select(axis, keep_t)
            if axis == 0:
                state[f"{prefix}.bias"] = state[f"{prefix}.bias"][keep_t]
            return
        w, u, v = (state[f"{prefix}.{s}"] for s in ("weight_orig", "weight_u", "weight_v"))
        sigma = torch.dot(u, torch.mv(w, v))
        w2 = w.index_select(axis, keep_t)
        if axis == 1:
            v2, u2 = v[keep_t], u
        else:
            u2, v2 = u[keep_t], v
            state[f"{prefix}.bias"] = state[f"{prefix}.bias"][keep_t]
        sigma2 = torch.dot(u2, torch.mv(w2, v2))
        if abs(float(sigma2)) < 1e-12:
            raise InputError("The backbone's input layer has no weight on the shared genes.",
                             "Use a backbone trained on genes the data contain.")
        if axis == 1:
            u2 = u2 * (sigma / sigma2)
        else:
            v2 = v2 * (sigma / sigma2)
        state[f"{prefix}.weight_orig"], state[f"{prefix}.weight_u"], state[f"{prefix}.weight_v"] = w2, u2, v2

    cut("Encoder_resblocks.0.fc", 1)
    if vae.Encoder_resblocks[0].downsample is not None:
        cut("Encoder_resblocks.0.downsample", 1)
    cut("fc4", 0)
    arch = replace(vae.arch, encoder_dims=[int(len(keep))] + list(vae.arch.encoder_dims[1:]))
    with _init_rng(0):  # every parameter is overwritten below
        small = ResVAE(arch)
    small.load_state_dict(state, strict=True)
    return small


def _new_backbone(backbone: str, n_inputs: int, s: TrainSettings) -> ResVAE:
    dims = [n_inputs, *[int(h) for h in s.hidden_dims]]
    arch = Architecture(backbone, dims, int(s.z_dim), [int(s.z_dim), *reversed(dims[1:])])
    with _init_rng(s.seed):
        vae = ResVAE(arch)
    _train_power_iterations(vae)
    return vae


def _refuse_non_finite(loss: torch.Tensor, what: str, epoch: int, epochs: int, hint: str) -> None:
    """Stop with a clear message when a training loss is no longer a finite number (the weights
    have diverged: every later step and every prediction would be NaN)."""
    if not bool(torch.isfinite(loss.detach()).all()):
        raise InputError(f"Training stopped: {what} diverged in epoch {epoch}/{epochs} (its loss became "
                         f"{float(loss.detach()):g}), so no model was saved.", hint)


def pretrain_backbone(vae: ResVAE, bulk_x: np.ndarray, target_x: np.ndarray | None, s: TrainSettings,
                      device: torch.device, *, tick: Callable[[str], None] | None = None,
                      should_stop: Callable[[], bool] | None = None, member: str = "") -> list[float]:
    """Pretrain ``vae`` in place with ``rec_beta * MSE + KLD`` (reference §3.2); returns the loss per epoch.

    Each epoch holds every bulk sample plus ``min(n_target, n_bulk)`` target cells drawn anew,
    so a large target neither swamps the bulk nor makes epochs long. The learning rate is the
    backbone's own unless ``s.pretrain_lr`` sets one (:data:`scatd_core._train_settings.PRETRAIN_LR`).
    A loss that is not finite stops the training with an :class:`InputError` naming the backbone
    (``member``: which member of an ensemble, e.g. "backbone 3 of 10").
    """
    backbone = vae.arch.backbone
    what = f"pretraining the {backbone} backbone" + (f" ({member})" if member else "")
    hint = ("Check that the inputs are what this backbone expects (finite values of the size it was made for: "
            + ("scFoundation cell embeddings" if backbone == "vae_sf" else
               "Geneformer cell embeddings" if backbone == "vae_gf" else "expression") + "), "
            "try another --seed, or train without pretraining (--pretrain-epochs 0).")
    gen = _generator(s.seed * 7919 + 1)
    xb = torch.from_numpy(bulk_x).to(device)
    xt = torch.from_numpy(target_x).to(device) if target_x is not None and len(target_x) else None
    vae.to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=pretrain_lr(s, backbone), weight_decay=s.weight_decay)
    history = []
    for epoch in range(s.pretrain_epochs):
        parts = [xb]
        if xt is not None:
            parts.append(xt[torch.randperm(len(xt), generator=gen)[:min(len(xt), len(xb))].to(device)])
        data = torch.cat(parts)
        total, count = 0.0, 0
        for idx in _batches(len(data), s.batch_size, gen):
            x = data[idx.to(device)]
            mu, logvar = vae.encode(x)
            eps = torch.randn(mu.shape, generator=gen).to(device)
            recon = vae.decode(mu + eps * torch.exp(0.5 * logvar))
            kld = -0.5 * torch.mean(1 + logvar - mu.pow(2) - logvar.exp())
            loss = s.rec_beta * F.mse_loss(recon, x) + kld
            _refuse_non_finite(loss, what, epoch + 1, s.pretrain_epochs, hint)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        history.append(total / count)
        if tick is not None:
            tick(f"Pretraining backbone · epoch {epoch + 1}/{s.pretrain_epochs} · loss {history[-1]:.4f}")
        if should_stop is not None and should_stop():
            raise Cancelled("Training cancelled; no model was saved.")
    vae.eval()
    return history


# --------------------------------------------------------------------------- drug head (DAL)

def _set_phase(model: DrugClassifier, finetune: bool) -> None:
    """Train mode for the head; the encoder frozen in eval mode, or (fine-tuning) trainable
    weights with BatchNorm still in eval mode and spectral norm re-estimated as weights move."""
    model.train()
    for module in model.encoder_modules():
        module.eval()
        for p in module.parameters():
            p.requires_grad_(finetune)
        if finetune:
            for m in module.modules():
                if isinstance(m, SpectralLinear):
                    m.train()


def _make_classifier(vae: ResVAE, seed: int) -> DrugClassifier:
    """A new head on a copy of ``vae``'s encoder."""
    with _init_rng(seed):
        model = DrugClassifier.from_backbone(copy.deepcopy(vae), class_num=2)
    _train_power_iterations(model)
    with torch.no_grad():
        # Equal output rows: the head starts at P = 0.5 for every sample, so early stopping
        # shrinks towards "no signal" (like L2) rather than towards a random initial function.
        model.fc4.weight_orig[1].copy_(model.fc4.weight_orig[0])
        model.fc4.bias[1].copy_(model.fc4.bias[0])
    return model


def _probabilities(model: DrugClassifier, x: torch.Tensor) -> np.ndarray:
    was = model.training
    model.eval()
    with torch.no_grad():
        p = torch.softmax(model(x), dim=1)[:, LABEL_MAPPING["resistant"]]
    model.train(was)
    return p.double().cpu().numpy()


def fit_head(vae: ResVAE, x: np.ndarray, y: np.ndarray, target_x: np.ndarray | None, s: TrainSettings,
             device: torch.device, *, head_epochs: int, finetune_epochs: int, seed: int, adaptation: bool,
             val: tuple[np.ndarray, np.ndarray] | None = None, tick: Callable[[str], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> tuple[DrugClassifier, dict]:
    """Train a drug classifier on a copy of ``vae``'s encoder.

    ``head_epochs`` train the head on the frozen encoder, then ``finetune_epochs`` fine-tune the
    encoder too (with MMD to ``target_x`` when ``adaptation``). With ``val``, the validation
    AUROC and probabilities of every epoch are recorded.
    """
    frozen_epochs = head_epochs
    epochs = head_epochs + finetune_epochs
    model = _make_classifier(vae, seed).to(device)
    gen = _generator(seed)
    xt_all = torch.from_numpy(x).to(device)
    yt_all = torch.from_numpy(y).to(device)
    tgt = torch.from_numpy(target_x).to(device) if adaptation and target_x is not None and len(target_x) else None
    counts = np.bincount(y, minlength=2).astype(np.float64)
    weights = torch.tensor(len(y) / (2.0 * np.maximum(counts, 1.0)), dtype=torch.float32, device=device)
    xv = torch.from_numpy(val[0]).to(device) if val is not None else None
    hist = {"loss": [], "mmd": [], "val_auroc": [], "val_prob": []}
    opt = None
    for epoch in range(epochs):
        finetune = epoch >= frozen_epochs
        if opt is None or epoch == frozen_epochs:
            _set_phase(model, finetune)
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=s.finetune_lr if finetune else s.lr, weight_decay=s.weight_decay)
            if not finetune:  # encoder fixed: its latent means can be computed once
                with torch.no_grad():
                    mu_all = model.encode(xt_all)[0]
        total = mmd_total = 0.0
        batches = _batches(len(y), s.batch_size, gen)
        for idx in batches:
            idx = idx.to(device)
            mu = model.encode(xt_all[idx])[0] if finetune else mu_all[idx]
            loss = F.cross_entropy(model.classifier(mu), yt_all[idx], weight=weights)
            if finetune and tgt is not None and s.mmd_weight > 0:
                pick = torch.randperm(len(tgt), generator=gen)[:min(len(idx), len(tgt))].to(device)
                mmd = mmd_rbf(mu, model.encode(tgt[pick])[0])
                loss = loss + s.mmd_weight * mmd
                mmd_total += float(mmd.detach())
            _refuse_non_finite(loss, f"training the {model.arch.backbone} drug head"
                               + (" (fine-tuning the encoder)" if finetune else ""), epoch + 1, epochs,
                               "Check that the inputs are finite values; try another --seed, fewer "
                               "--finetune-epochs, or the default linear heads (--head linear).")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        hist["loss"].append(total / len(batches))
        hist["mmd"].append(mmd_total / len(batches))
        msg = f"epoch {epoch + 1}/{epochs} · loss {hist['loss'][-1]:.4f}"
        if xv is not None:
            p = _probabilities(model, xv)
            hist["val_prob"].append(p)
            hist["val_auroc"].append(auroc(val[1], p))
            msg += f" · val AUROC {hist['val_auroc'][-1]:.3f}"
        if tick is not None:
            tick(msg)
        if should_stop is not None and should_stop():
            raise Cancelled("Training cancelled; no model was saved.")
    model.eval()
    return model, hist


