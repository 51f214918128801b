"""Train a drug-response model on bulk cell lines and transfer it to single cells.

:func:`train_drug_model` follows scATD's domain-adaptive learning (reference §3-§4) with its
known bugs fixed (reference §10):

1. **Inputs.** The gene panel is what bulk and target share (and, with a pretrained backbone,
   what the backbone knows); it is reported. Each domain is standardised on its own: raw counts
   are log-normalised, then every gene is z-scored over the domain's samples. The target side is
   computed by :class:`scatd_core.predict.ModelInput` itself, so ``scatd predict`` on the target
   reproduces exactly what the model saw. Labels are matched to bulk samples by ID, never by
   row position.
2. **Backbone.** Without a backbone bundle, a residual VAE is pretrained on the bulk (all
   samples, labelled or not) and, with adaptation on, the target cells, with the original loss
   ``rec_beta * MSE + KLD`` (§3.2). No labels are used here.
3. **Drug head (DAL).** Per stratified fold: the encoder is frozen **in eval mode** (its
   BatchNorm statistics and spectral-norm vectors stay exactly as pretrained, unlike the
   original, §10.12) and the head ``fc3 -> bn3 -> swish -> fc4`` is trained on the latent mean
   with class-weighted cross-entropy. The head starts from a constant prediction (the two
   output rows of ``fc4`` start equal), so stopping early shrinks it towards "no signal" as an
   L2 penalty would, instead of leaving part of a random initial function (on the real-data
   benchmark this raised both bulk CV and single-cell AUROC; benches/results_transfer.md).
   Then an explicit fine-tuning phase (the original's "post-training") trains the encoder
   weights too, at a lower learning rate, with the encoder's BatchNorm kept in eval mode
   (spectral norm re-estimated as the weights move); with adaptation on, its loss adds the
   RBF-kernel MMD between bulk and target latent means (median-heuristic bandwidth, detached;
   the target sample is ``min(batch, n_target)`` cells, so small targets work, §10.17). The
   MMD is only useful there: on a frozen encoder it has no trainable input.
4. **Selection.** Every head epoch's validation AUROC is recorded; the number of head epochs
   is the argmax of the fold-mean AUROC curve (smoothed over 5 epochs), not "the last epoch"
   (§10.15). The fine-tuning length is fixed (bulk labels cannot see what it is for); a second
   CV pass measures the whole procedure. The kept model is refitted on all labelled bulk
   samples with those epoch counts: a hand-picked "best fold" would be chosen on one small
   validation split and would waste a fifth of the labels.
5. **Output.** A bundle with ``input_transform="standardize"``, ``beta_mode="separate"``,
   threshold 0.5 (class-weighted training puts the balanced decision point there; the bulk
   out-of-fold Youden threshold is recorded as a metric), data hashes, settings, CV metrics
   and, when the target has labels (used for evaluation only), target metrics.

Everything is seeded: the same data, settings, seed, device and thread count give identical
weights. Global torch RNG state is restored afterwards.
"""

from __future__ import annotations

import copy
import hashlib
import math
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import anndata as ad
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import (average_precision_score, balanced_accuracy_score, f1_score, matthews_corrcoef,
                             roc_auc_score, roc_curve)
from sklearn.model_selection import StratifiedKFold

from scatd_core.bundle import (INPUT_KINDS, Bundle, load_backbone_from_bundle, load_bundle, safe_name,
                               save_bundle, sha256_file)
from scatd_core.config import model_library_dir
from scatd_core.errors import InputError
from scatd_core.labels import LABEL_MAPPING, binary_target, drug_labels
from scatd_core.nn import BACKBONES, Architecture, DrugClassifier, ResVAE
from scatd_core.nn.layers import SpectralLinear
from scatd_core.predict import Cancelled, ModelInput, resolve_device

ProgressFn = Callable[[float, str], None]
MIN_PANEL_GENES = 10
SMOOTH_EPOCHS = 5
_INIT_LOCK = threading.Lock()  # module init draws from torch's global RNG


@dataclass
class TrainSettings:
    """Hyper-parameters of :func:`train_drug_model` (defaults sized for a laptop CPU).

    - Backbone ``[n_inputs, *hidden_dims] -> z_dim`` (decoder mirrored). The original Dist_VAE
      used ``[19264, 1664, 359] -> 421``; a gene panel of hundreds to a few thousand genes and a
      few hundred cell lines need far less, and ``(256, 128) -> 64`` keeps a run to about half a
      minute on one CPU thread for a few hundred genes.
    - ``rec_beta`` 1000 as the original README (VAE_sf): the loss is nearly an auto-encoder's,
      and the latent keeps the expression signal (a linear model on it does as well as on the
      genes; with ``rec_beta`` 10 it did clearly worse).
    - ``epochs``: the most head epochs (frozen encoder); the CV picks how many the model gets.
      Then ``finetune_epochs`` fine-tune the encoder too (the original's post-training), a fixed
      number: what they are for, alignment with the target, bulk labels cannot measure.
    - ``lr`` (head; high because the head starts from a constant prediction) and
      ``finetune_lr`` (everything, fine-tuning), AdamW with ``weight_decay``, constant (the
      original's cosine schedule restarted periodically, §10.19).
    """

    hidden_dims: tuple[int, ...] = (256, 128)
    z_dim: int = 64
    pretrain_epochs: int = 200
    pretrain_lr: float = 1e-3
    rec_beta: float = 1000.0
    epochs: int = 50
    finetune_epochs: int = 20
    lr: float = 1e-2
    finetune_lr: float = 3e-4
    weight_decay: float = 1e-2
    batch_size: int = 64
    mmd_weight: float = 1.0
    folds: int = 5
    seed: int = 0
    threshold: float = 0.5

    def check(self) -> None:
        if self.epochs < 1 or self.pretrain_epochs < 0 or self.finetune_epochs < 0:
            raise InputError("Head epochs must be at least 1; pretraining and fine-tuning epochs not negative.",
                             f"Got epochs={self.epochs}, finetune_epochs={self.finetune_epochs}.")
        if self.folds < 2:
            raise InputError("Cross-validation needs at least 2 folds.", "Use --folds 2 or more (default 5).")
        if self.batch_size < 4:
            raise InputError("The batch size must be at least 4.")
        if not 0.0 < self.threshold < 1.0:
            raise InputError(f"The threshold must be between 0 and 1, got {self.threshold}.")


# --------------------------------------------------------------------------- small utilities

@contextmanager
def _deterministic():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


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


def _data_sha256(adata: ad.AnnData) -> str:
    """Hash of names and values (float32), for provenance when no file is at hand."""
    h = hashlib.sha256()
    h.update("\n".join(map(str, adata.obs_names)).encode())
    h.update(b"\0")
    h.update("\n".join(map(str, adata.var_names)).encode())
    X = adata.X
    for start in range(0, adata.n_obs, 4096):
        block = X[start:start + 4096]
        block = block.toarray() if hasattr(block, "toarray") else np.asarray(block)
        h.update(np.ascontiguousarray(block, dtype=np.float32).tobytes())
    return h.hexdigest()


def _frame_sha256(df: pd.DataFrame) -> str:
    return hashlib.sha256(df.to_csv().encode()).hexdigest()


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


def _auroc(y: np.ndarray, p: np.ndarray) -> float:
    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def classification_metrics(y_resistant: np.ndarray, prob: np.ndarray, threshold: float) -> dict:
    """AUROC/AUPRC (positive class: resistant) and thresholded metrics, JSON-safe."""
    y = np.asarray(y_resistant).astype(int)
    pred = (np.asarray(prob) > threshold).astype(int)
    out = {"n": int(y.size), "n_resistant": int(y.sum()), "n_sensitive": int((1 - y).sum()),
           "auroc": _auroc(y, prob),
           "auprc": float(average_precision_score(y, prob)) if 0 < y.sum() < y.size else float("nan"),
           "threshold": float(threshold),
           "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
           "f1": float(f1_score(y, pred, zero_division=0)),
           "mcc": float(matthews_corrcoef(y, pred)),
           "fraction_predicted_resistant": float(pred.mean())}
    return out


def _youden(y: np.ndarray, p: np.ndarray) -> float:
    fpr, tpr, thr = roc_curve(y, p)
    j = int(np.argmax(tpr - fpr))
    return float(min(max(thr[j], 0.0), 1.0))


# --------------------------------------------------------------------------- model inputs

def _input_bundle(backbone: str, n_inputs: int, genes: list[str] | None) -> Bundle:
    """A transient bundle describing the model input, so ModelInput computes it exactly."""
    kind = INPUT_KINDS[backbone]
    manifest = {"name": "training input", "backbone": backbone, "kind": "classifier",
                "input_transform": "standardize" if kind == "expression" else "none",
                "architecture": Architecture(backbone, [n_inputs, 1], 1, None, 1, 2).to_dict()}
    bundle = Bundle(Path("(training input)"), manifest, genes=genes)
    if kind == "embedding":  # placeholder statistics; replaced by the bulk's own below
        bundle.style_mean, bundle.style_std = np.zeros(n_inputs), np.ones(n_inputs)
    return bundle


def _inputs(adata: ad.AnnData, bundle: Bundle) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(usable row indices, model input float32, not-scored counts)`` through ModelInput."""
    mi = ModelInput(adata, bundle, batch_size=4096)
    rows, parts = [], []
    for _stop, idx, x in mi.batches():
        rows.append(idx)
        parts.append(x)
    return np.concatenate(rows), np.concatenate(parts), {**mi.reasons, "log_normalised": bool(mi.log_normalise)}


@dataclass
class TrainingData:
    """Standardised model inputs of both domains and the bulk labels (what training sees)."""

    backbone: str
    features: list[str] | None  # the gene panel (expression backbones), in model input order
    bulk_all: np.ndarray  # every usable bulk sample, for pretraining
    bulk_x: np.ndarray  # labelled bulk samples
    bulk_y: np.ndarray  # 1 = resistant
    bulk_ids: list[str]
    target_x: np.ndarray
    target_rows: np.ndarray  # target cells that could be used (indices into the target)
    target_ids: list[str]
    style_mean: np.ndarray | None = None
    style_std: np.ndarray | None = None
    report: dict = field(default_factory=dict)


def prepare_training_data(bulk: ad.AnnData, labels, drug: str, target: ad.AnnData, *,
                          backbone: str = "dist_vae", backbone_genes: list[str] | None = None) -> TrainingData:
    """Match labels to bulk samples by ID, find the gene panel and standardise each domain.

    Raises :class:`InputError` naming what does not fit (no shared IDs, too few shared genes,
    a class with too few cell lines...).
    """
    dl = drug_labels(labels, drug)
    bulk_names = [str(n) for n in bulk.obs_names]
    labelled = dl.labels.reindex([n for n in bulk_names if n in dl.labels.index])
    if labelled.empty:
        raise InputError(
            f"None of the {len(dl.labels)} cell lines labelled for {dl.drug} (e.g. "
            f"{', '.join(map(str, dl.labels.index[:3]))}) is among the {bulk.n_obs} bulk samples (e.g. "
            f"{', '.join(bulk_names[:3])}).",
            "The label table's first column must use the bulk data's sample IDs (e.g. both DepMap ACH- IDs).")
    report: dict = {"drug": dl.drug, "labels": {
        "n_labelled_in_bulk": int(len(labelled)), "n_missing_label": int(dl.n_missing),
        "n_bulk_without_label": int(bulk.n_obs - len(labelled)),
        "n_labels_not_in_bulk": int(len(dl.labels) - len(labelled)),
        "sensitive": int((labelled == "sensitive").sum()), "resistant": int((labelled == "resistant").sum()),
    }}
    kind = INPUT_KINDS[backbone]
    if kind == "expression":
        bulk_genes = [str(g) for g in bulk.var_names]
        target_genes = set(map(str, target.var_names))
        order = backbone_genes if backbone_genes is not None else bulk_genes
        allowed = set(bulk_genes) & target_genes
        panel = list(dict.fromkeys(g for g in order if g in allowed))
        report["genes"] = {"n_bulk": len(bulk_genes), "n_target": len(target_genes),
                           "n_backbone": len(backbone_genes) if backbone_genes is not None else None,
                           "n_panel": len(panel), "examples_bulk_only": sorted(set(bulk_genes) - target_genes)[:10],
                           "examples_target_only": sorted(target_genes - set(bulk_genes))[:10]}
        if len(panel) < MIN_PANEL_GENES:
            raise InputError(
                f"Bulk and target share only {len(panel)} genes"
                + (" that the backbone knows" if backbone_genes is not None else "")
                + f" (bulk e.g. {', '.join(bulk_genes[:3])}; target e.g. "
                f"{', '.join(map(str, target.var_names[:3]))}).",
                "Both need the same gene identifiers (HGNC symbols); convert Ensembl IDs first.")
        spec = _input_bundle(backbone, len(panel), panel)
    else:
        n_feat = bulk.n_vars
        spec = _input_bundle(backbone, n_feat, None)
        panel = None
        report["features"] = {"n": n_feat}

    b_rows, b_x, b_reasons = _inputs(bulk, spec)
    style_mean = style_std = None
    if kind == "embedding":  # AdaIN target = the bulk's own statistics, as the original inference
        style_mean, style_std = b_x.astype(np.float64).mean(0), b_x.astype(np.float64).std(0)
        spec.style_mean, spec.style_std = style_mean, style_std
        b_rows, b_x, b_reasons = _inputs(bulk, spec)
    t_rows, t_x, t_reasons = _inputs(target, spec)
    pos = {n: i for i, n in enumerate(bulk_names)}
    usable = set(b_rows.tolist())
    keep = [pos[n] for n in labelled.index if pos[n] in usable]
    where = {r: i for i, r in enumerate(b_rows.tolist())}
    bulk_x = b_x[[where[r] for r in keep]]
    y = labelled.loc[[bulk_names[r] for r in keep]].map(LABEL_MAPPING).to_numpy(dtype=np.int64)
    report["labels"]["n_unusable_bulk"] = int(len(labelled) - len(keep))
    report["bulk"] = {"n_samples": int(bulk.n_obs), "n_used_for_pretraining": int(len(b_rows)), **b_reasons}
    report["target"] = {"n_cells": int(target.n_obs), "n_used": int(len(t_rows)), **t_reasons}
    n_min = int(min((y == 0).sum(), (y == 1).sum()))
    if n_min < 2:
        raise InputError(f"{dl.drug}: only {int((y == 0).sum())} sensitive and {int((y == 1).sum())} resistant "
                         "labelled cell lines in the bulk data; at least 2 of each are needed.",
                         "Choose a drug with more labelled cell lines of both classes.")
    return TrainingData(backbone, panel, b_x, bulk_x, y, [bulk_names[r] for r in keep], t_x, t_rows,
                        [str(target.obs_names[i]) for i in t_rows], style_mean, style_std, report)


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
        return ResVAE(arch)


def pretrain_backbone(vae: ResVAE, bulk_x: np.ndarray, target_x: np.ndarray | None, s: TrainSettings,
                      device: torch.device, *, tick: Callable[[str], None] | None = None,
                      should_stop: Callable[[], bool] | None = None) -> list[float]:
    """Pretrain ``vae`` in place with ``rec_beta * MSE + KLD`` (reference §3.2); returns the loss per epoch.

    Each epoch holds every bulk sample plus ``min(n_target, n_bulk)`` target cells drawn anew,
    so a large target neither swamps the bulk nor makes epochs long.
    """
    gen = _generator(s.seed * 7919 + 1)
    xb = torch.from_numpy(bulk_x).to(device)
    xt = torch.from_numpy(target_x).to(device) if target_x is not None and len(target_x) else None
    vae.to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=s.pretrain_lr, weight_decay=s.weight_decay)
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
            hist["val_auroc"].append(_auroc(val[1], p))
            msg += f" · val AUROC {hist['val_auroc'][-1]:.3f}"
        if tick is not None:
            tick(msg)
        if should_stop is not None and should_stop():
            raise Cancelled("Training cancelled; no model was saved.")
    model.eval()
    return model, hist


def _smooth(curve: np.ndarray, width: int = SMOOTH_EPOCHS) -> np.ndarray:
    """Centred moving average (shrinking at the ends)."""
    out = np.empty_like(curve)
    h = width // 2
    for i in range(len(curve)):
        out[i] = np.nanmean(curve[max(0, i - h):i + h + 1])
    return out


def _fold_record(k: int, tr, va, hist: dict) -> dict:
    return {"fold": k + 1, "n_train": int(len(tr)), "n_val": int(len(va)),
            "loss": [round(v, 5) for v in hist["loss"]], "mmd": [round(v, 6) for v in hist["mmd"]],
            "val_auroc": [round(v, 4) for v in hist["val_auroc"]]}


def cross_validate(base_vae: ResVAE, data: TrainingData, s: TrainSettings, device: torch.device, *,
                   adaptation: bool, tick: Callable[[str], Callable[[str], None]] | None = None,
                   should_stop: Callable[[], bool] | None = None) -> dict:
    """Stratified K-fold DAL on the labelled bulk, in two passes.

    1. The head is trained on the frozen encoder for up to ``s.epochs`` epochs per fold; the
       number of head epochs is the argmax of the fold-mean validation AUROC curve (smoothed).
    2. Each fold's head is retrained for that many epochs and then fine-tuned (with MMD when
       ``adaptation``) for ``s.finetune_epochs``: the fine-tuning length is fixed, not chosen on
       the bulk, because its purpose (alignment with the target) is invisible to bulk labels; this
       pass measures what the whole procedure gives on held-out bulk samples.

    Returns the CV summary: ``head_epochs``, AUROC per fold (mean, sd) and out-of-fold
    AUROC/AUPRC/Youden threshold of the final procedure, the head-phase curve and every fold's
    per-epoch loss, MMD and AUROC.
    """
    skf = StratifiedKFold(n_splits=s.folds, shuffle=True, random_state=s.seed)
    splits = list(skf.split(data.bulk_x, data.bulk_y))
    val = {k: (data.bulk_x[va], data.bulk_y[va]) for k, (_tr, va) in enumerate(splits)}
    curves, head_folds, head_probs = [], [], []
    for k, (tr, va) in enumerate(splits):
        _model, hist = fit_head(base_vae, data.bulk_x[tr], data.bulk_y[tr], data.target_x, s, device,
                                head_epochs=s.epochs, finetune_epochs=0, seed=s.seed * 1000 + k + 1,
                                adaptation=adaptation, val=val[k], should_stop=should_stop,
                                tick=tick(f"Fold {k + 1}/{s.folds} (head) · ") if tick else None)
        curves.append(hist["val_auroc"])
        head_probs.append(hist["val_prob"])
        head_folds.append(_fold_record(k, tr, va, hist))
    curve = np.nanmean(np.array(curves, dtype=np.float64), axis=0)
    head_epochs = int(np.nanargmax(_smooth(curve))) + 1
    at_head = np.array([c[head_epochs - 1] for c in curves])
    if s.finetune_epochs == 0:  # the head pass is the whole procedure
        final_folds, at_end = head_folds, at_head
        oof = np.zeros(len(data.bulk_y))
        for k, (_tr, va) in enumerate(splits):
            oof[va] = head_probs[k][head_epochs - 1]
    else:
        final_folds, oof, at_end = [], np.zeros(len(data.bulk_y)), []
        for k, (tr, va) in enumerate(splits):
            _model, hist = fit_head(base_vae, data.bulk_x[tr], data.bulk_y[tr], data.target_x, s, device,
                                    head_epochs=head_epochs, finetune_epochs=s.finetune_epochs,
                                    seed=s.seed * 1000 + k + 1, adaptation=adaptation, val=val[k],
                                    should_stop=should_stop,
                                    tick=tick(f"Fold {k + 1}/{s.folds} (head + fine-tuning) · ") if tick else None)
            oof[va] = hist["val_prob"][-1]
            at_end.append(hist["val_auroc"][-1])
            final_folds.append(_fold_record(k, tr, va, hist))
        at_end = np.array(at_end)
    return {"folds": s.folds, "head_epochs": head_epochs, "finetune_epochs": s.finetune_epochs,
            "selection": f"head epochs: argmax of the fold-mean validation AUROC curve smoothed over "
                         f"{SMOOTH_EPOCHS} epochs; then {s.finetune_epochs} fine-tuning epochs",
            "auroc_mean": float(np.nanmean(at_end)), "auroc_sd": float(np.nanstd(at_end)),
            "auroc_per_fold": [float(v) for v in at_end],
            "head_auroc_mean": float(np.nanmean(at_head)), "head_auroc_sd": float(np.nanstd(at_head)),
            "oof_auroc": _auroc(data.bulk_y, oof), "oof_auprc": float(average_precision_score(data.bulk_y, oof)),
            "youden_threshold": _youden(data.bulk_y, oof),
            "head_curve": [round(float(v), 4) for v in curve], "per_fold_head": head_folds,
            "per_fold": final_folds}


# --------------------------------------------------------------------------- the whole run

def _read_if_path(obj, what: str):
    """An AnnData and a provenance entry for an AnnData or a file path."""
    if isinstance(obj, ad.AnnData):
        return obj, {"sha256": _data_sha256(obj), "of": "values"}
    from scatd_core import io

    path = Path(obj)
    adata = io.read(path)
    if adata.isbacked:
        adata = adata.to_memory()
    return adata, {"file": path.name, "sha256": sha256_file(path)}


def _default_out(drug: str, backbone: str, library) -> Path:
    root = Path(library) if library else model_library_dir()
    base = root / safe_name(f"{drug}_{backbone}_trained")
    out, k = base, 2
    while out.exists():
        out, k = base.with_name(f"{base.name}-{k}"), k + 1
    return out


def train_drug_model(
    bulk, labels, drug: str, target, *,
    backbone: str = "dist_vae",
    backbone_bundle: str | Path | Bundle | None = None,
    seed: int = 0,
    folds: int | None = None,
    epochs: int | None = None,
    settings: TrainSettings | None = None,
    adaptation: bool = True,
    device: str = "auto",
    target_label_column: str | None = None,
    target_sensitive_value=None,
    out: str | Path | None = None,
    library: str | Path | None = None,
    name: str | None = None,
    overwrite: bool = False,
    demo: bool = False,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[Bundle, dict]:
    """Train a drug-response model on labelled bulk samples, adapted to a target single-cell set.

    Parameters
    ----------
    bulk
        Cell lines x genes (AnnData or a file :func:`scatd_core.io.read` reads): log-TPM-like
        values are used as given, raw counts are log-normalised; each gene is then z-scored
        over the bulk samples.
    labels
        Label table (path or DataFrame; cell lines x drugs, ``sensitive`` / ``resistant``, see
        :mod:`scatd_core.labels`), matched to ``bulk`` by sample ID.
    drug
        Drug column, matched case-insensitively.
    target
        The single cells the model adapts to (AnnData or a file). Standardised exactly as
        :func:`scatd_core.predict.predict` will standardise it. Its labels, if any, are never
        used for training, only for ``target_label_column`` metrics.
    backbone
        ``"dist_vae"`` (expression; the default) or ``"vae_sf"`` / ``"vae_gf"`` (cell embeddings
        in X or obsm, with AdaIN to the bulk statistics at prediction).
    backbone_bundle
        A pretrained backbone bundle to start from (``kind == "backbone"``); without it a
        backbone is pretrained on the bulk (+ target) expression.
    seed, folds, epochs
        Override the fields of ``settings`` (default :class:`TrainSettings`).
    adaptation
        Use the target during training (pretraining + MMD in fine-tuning). ``False`` trains on
        the bulk alone, the no-adaptation baseline.
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    target_label_column, target_sensitive_value
        An obs column of ``target`` with true labels, for evaluation only; text
        sensitive/resistant, or any two values with ``target_sensitive_value`` naming the
        sensitive one (SCAD's ``response``: 1).
    demo
        Mark the bundle as the built-in demo (trained on simulated data).
    out, library, name, overwrite
        Bundle folder (default: a new folder ``<drug>_<backbone>_trained[-k]`` in the library),
        display name, whether to replace an existing bundle.
    progress
        Called with (fraction done, message) after every epoch.
    should_stop
        Polled after every epoch; returning True raises :class:`scatd_core.predict.Cancelled`
        and nothing is saved.

    Returns
    -------
    ``(bundle, report)``: the saved bundle, and a dict with the gene panel, label counts, the
    per-epoch histories, CV and target metrics, and ``target_predictions`` (a DataFrame: cell,
    prob_resistant), the numbers ``scatd predict`` gives on the target.
    """
    t0 = time.perf_counter()
    if backbone not in BACKBONES:
        raise InputError(f"Unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}.")
    s = replace(settings or TrainSettings(), seed=int(seed))
    if folds is not None:
        s = replace(s, folds=int(folds))
    if epochs is not None:
        s = replace(s, epochs=int(epochs))
    s.check()
    dev = resolve_device(device)
    warnings: list[str] = []

    bulk_ad, bulk_prov = _read_if_path(bulk, "bulk")
    target_ad, target_prov = _read_if_path(target, "target")
    if isinstance(labels, pd.DataFrame):
        labels_prov = {"sha256": _frame_sha256(labels), "of": "table"}
    else:
        labels_prov = {"file": Path(labels).name, "sha256": sha256_file(labels)}

    base_vae = None
    bb_bundle = None
    if backbone_bundle is not None:
        bb_bundle = backbone_bundle if isinstance(backbone_bundle, Bundle) else load_bundle(backbone_bundle)
        if bb_bundle.backbone != backbone:
            raise InputError(f"The backbone bundle {bb_bundle.name} is a {bb_bundle.backbone} model, not {backbone}.",
                             f"Use --backbone {bb_bundle.backbone}, or another backbone bundle.")
        base_vae = load_backbone_from_bundle(bb_bundle)
    data = prepare_training_data(bulk_ad, labels, drug, target_ad, backbone=backbone,
                                 backbone_genes=bb_bundle.genes if bb_bundle is not None else None)
    report = dict(data.report)
    if target_ad.n_obs < 50:
        warnings.append(f"The target has only {target_ad.n_obs} cells; its per-gene standardisation is unreliable.")
    if bb_bundle is not None:
        if data.features is not None:
            index = {g: i for i, g in enumerate(bb_bundle.genes)}
            base_vae = _restrict_backbone(base_vae, np.array([index[g] for g in data.features]))
        pretrained_on = bb_bundle.manifest.get("input_transform")
        if data.features is not None and pretrained_on != "standardize":
            warnings.append(f"The backbone {bb_bundle.name} was pretrained on '{pretrained_on}' inputs; this model "
                            "standardises each domain, which only the fine-tuning phase can adapt the encoder to.")

    n_min = int(min((data.bulk_y == 0).sum(), (data.bulk_y == 1).sum()))
    if n_min < s.folds:
        warnings.append(f"Only {n_min} cell lines in the smaller class: {n_min} folds instead of {s.folds}.")
        s = replace(s, folds=n_min)
    pre_epochs = s.pretrain_epochs if base_vae is None else 0
    # an estimate until the CV has chosen the number of head epochs
    total_units = pre_epochs + s.folds * s.epochs + (s.folds + 1) * (s.epochs + s.finetune_epochs)
    done = [0]

    def tick(prefix: str) -> Callable[[str], None]:
        def f(msg: str) -> None:
            done[0] += 1
            if progress is not None:
                progress(min(done[0] / total_units, 1.0), f"{prefix}{msg}")
        return f

    with _deterministic():
        pretrain_hist: list[float] = []
        if base_vae is None:
            base_vae = _new_backbone(backbone, data.bulk_x.shape[1], s)
            pretrain_hist = pretrain_backbone(base_vae, data.bulk_all, data.target_x if adaptation else None, s,
                                              dev, tick=tick(""), should_stop=should_stop)
        base_vae = base_vae.to(dev).eval()

        cv = cross_validate(base_vae, data, s, dev, adaptation=adaptation, tick=tick, should_stop=should_stop)
        head_epochs = cv["head_epochs"]
        total_units = done[0] + head_epochs + s.finetune_epochs  # the refit is all that is left

        model, refit_hist = fit_head(base_vae, data.bulk_x, data.bulk_y, data.target_x, s, dev,
                                     head_epochs=head_epochs, finetune_epochs=s.finetune_epochs,
                                     seed=s.seed * 1000, adaptation=adaptation,
                                     tick=tick(f"Final model on {len(data.bulk_y)} cell lines · "),
                                     should_stop=should_stop)
        target_prob = _probabilities(model, torch.from_numpy(data.target_x).to(dev))
        bulk_latent = model.encode(torch.from_numpy(data.bulk_x).to(dev))[0].detach()
        tgt_latent = model.encode(torch.from_numpy(data.target_x).to(dev))[0].detach()
        n_cap = 512  # the latent MMD diagnostic on at most 512 x 512 samples
        latent_mmd = float(mmd_rbf(bulk_latent[:n_cap], tgt_latent[:n_cap]))
        model = model.cpu()

    target_pred = pd.DataFrame({"cell_id": data.target_ids, "prob_resistant": target_prob})
    metrics = {"cv": {k: v for k, v in cv.items() if k not in ("head_curve", "per_fold_head", "per_fold")},
               "latent_mmd_bulk_vs_target": latent_mmd}
    if target_label_column is not None:
        if target_label_column not in target_ad.obs:
            raise InputError(f"The target has no obs column {target_label_column!r}.",
                             f"Its columns: {', '.join(map(str, target_ad.obs.columns)) or 'none'}.")
        truth = binary_target(target_ad.obs[target_label_column].to_numpy()[data.target_rows], target_sensitive_value)
        known = ~np.isnan(truth)
        if known.sum() and len(np.unique(truth[known])) == 2:
            metrics["target"] = {"label_column": target_label_column,
                                 **classification_metrics(truth[known], target_prob[known], s.threshold)}
        else:
            warnings.append(f"The target column {target_label_column!r} does not hold both classes; no target metrics.")

    seconds = time.perf_counter() - t0
    settings_dict = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(s).items()}
    provenance = {
        "source": "trained by scATD Studio (scatd train)",
        "bulk": bulk_prov, "labels": labels_prov, "target": target_prov,
        "backbone_bundle": ({"name": bb_bundle.name, "weights_sha256": bb_bundle.manifest.get("weights_sha256")}
                            if bb_bundle is not None else None),
        "seed": s.seed, "adaptation": bool(adaptation), "device": str(dev), "threads": torch.get_num_threads(),
        "seconds": round(seconds, 1),
    }
    training = {"settings": settings_dict, "drug_column": data.report["drug"], "labels": data.report["labels"],
                "genes": data.report.get("genes"), "bulk": data.report["bulk"], "target": data.report["target"],
                "pretraining_loss": [round(v, 5) for v in pretrain_hist], "cv_head_curve": cv["head_curve"],
                "warnings": warnings}
    if out is None:
        out = _default_out(data.report["drug"], backbone, library)
    bundle = save_bundle(
        out, model.state_dict(), model.arch, drug=data.report["drug"], genes=data.features,
        style_mean=data.style_mean, style_std=data.style_std,
        input_transform="standardize" if data.features is not None else "none",
        label_mapping=LABEL_MAPPING, threshold=s.threshold, beta_mode="separate", provenance=provenance,
        metrics=metrics, name=name or f"{data.report['drug']} ({backbone}, trained)", extra={"training": training},
        overwrite=overwrite, demo=demo)
    report.update(settings=settings_dict, pretraining={"loss": pretrain_hist}, cv=cv, metrics=metrics,
                  refit={"head_epochs": head_epochs, "finetune_epochs": s.finetune_epochs,
                         "loss": refit_hist["loss"]}, warnings=warnings, seconds=seconds,
                  bundle_path=str(bundle.path), target_predictions=target_pred)
    if progress is not None:
        progress(1.0, f"Saved {bundle.name} to {bundle.path}")
    return bundle, report
