"""Hyper-parameters of a training run (light: no science imports, so the command line's help
takes its defaults from here). :mod:`scatd_core.train` exports them."""

from __future__ import annotations

from dataclasses import dataclass

from scatd_core.errors import InputError

#: Drug heads: ``linear`` (the default: an ensemble of linear heads) or ``scatd`` (the original head).
HEADS = ("linear", "scatd")
#: What a linear head sees: the latent mean and the model input, or the latent mean only.
HEAD_INPUTS = ("latent+input", "latent")
#: Backbone pretraining learning rate by backbone (``TrainSettings.pretrain_lr`` None). VAE_sf has
#: no spectral norm anywhere (reference §2.2), and at the others' 2e-3 it diverged on real
#: scFoundation embeddings (SCAD sorafenib, standardised as training does: loss 1e14 and more
#: within epochs; at 5e-4 too, at 3e-4 it jumped 100-fold before falling; at 1e-4 it falls from
#: the first epoch for every seed tried). The original used 2e-5 (reference §2.9) over far more
#: batches (Panglao cells) than 100 epochs of a few hundred samples give.
PRETRAIN_LR = {"dist_vae": 2e-3, "vae_gf": 2e-3, "vae_sf": 1e-4}


def pretrain_lr(settings: "TrainSettings", backbone: str) -> float:
    """The pretraining learning rate of ``backbone`` under ``settings`` (its own, unless set)."""
    return float(settings.pretrain_lr) if settings.pretrain_lr is not None else PRETRAIN_LR.get(backbone, 2e-3)


#: Fewest labelled cell lines of the smaller class (usually the sensitive ones) a drug needs before a model is
#: trained on it: ``scatd train`` and ``scatd train-panel`` (``--min-lines``, this default) and the Train page.
#: With fewer, the bulk cross-validation's AUROC and its interval rest on a handful of lines and cannot be
#: trusted (2 sensitive lines scored a bulk AUROC of 0.95 for a model at chance on the cells).
MIN_LINES_PER_CLASS = 10

#: Most members of an ensemble (member seeds are ``seed * 1000 + k``).
MAX_MEMBERS = 999


@dataclass
class TrainSettings:
    """Hyper-parameters of :func:`train_drug_model` (defaults sized for a laptop CPU).

    Backbones (both heads):

    - ``[n_inputs, *hidden_dims] -> z_dim`` (decoder mirrored). The original Dist_VAE used
      ``[19264, 1664, 359] -> 421``; a gene panel of hundreds to a few thousand genes and a few
      hundred cell lines need far less.
    - ``rec_beta`` 1000 as the original README (VAE_sf): the loss is nearly an auto-encoder's,
      and the latent keeps the expression signal (with ``rec_beta`` 10 a linear model on it did
      clearly worse).
    - ``pretrain_epochs`` with AdamW at ``pretrain_lr``, batches of ``batch_size``: 100 epochs of
      batches of 128 at 2e-3 gave the linear heads the same target AUROC as 200 epochs of 64 at
      1e-3, in a third of the time (benches/results_transfer.md). ``pretrain_lr`` ``None`` (the
      default) is the backbone's own rate, :data:`PRETRAIN_LR`: 2e-3, but 1e-4 for ``vae_sf``,
      whose layers have no spectral norm (reference §2.2): at 2e-3 its loss on real scFoundation
      embeddings (3,072 values per cell) rose to 1e14 and NaN within a few epochs, at 1e-4 it falls
      smoothly. The original trained VAE_sf at 2e-5 over many batches of Panglao cells; 100 epochs
      of one to a few batches need a larger step.

    Default head, ``head="linear"`` (:mod:`scatd_core.train._ensemble`): ``members`` backbones
    from different seeds, each with a class-balanced logistic regression (L2, ``head_c``) on the
    latent mean and, with ``head_inputs="latent+input"``, the standardised genes;
    with a few labelled target cells, ``few_shot_weight`` is their total weight relative to the
    bulk's and ``entropy_weight`` that of the entropy of the unlabelled target cells.

    Original head, ``head="scatd"``: ``epochs`` is the most head epochs on the frozen encoder
    (the CV picks how many), then ``finetune_epochs`` fine-tune the encoder too (the original's
    post-training) with the MMD to the target at ``mmd_weight``; ``lr`` (head) and
    ``finetune_lr``, AdamW with ``weight_decay``, constant (the original's cosine schedule
    restarted periodically, reference §10.19).

    ``threads``: torch CPU threads while training. One: the networks are small, and two threads
    on two busy cores ran ten times slower than one (they mostly wait for each other). The model
    card's gradient-boosting baseline runs on as many OpenMP threads (it took 6-10 times the CPU
    time on two busy cores as on one, for the same predictions).
    """

    hidden_dims: tuple[int, ...] = (256, 128)
    z_dim: int = 64
    pretrain_epochs: int = 100
    pretrain_lr: float | None = None  # None: PRETRAIN_LR of the backbone
    rec_beta: float = 1000.0
    head: str = "linear"
    members: int = 10
    head_c: float = 0.01
    head_inputs: str = "latent+input"
    few_shot_weight: float = 3.0
    entropy_weight: float = 1.0
    epochs: int = 50
    finetune_epochs: int = 20
    lr: float = 1e-2
    finetune_lr: float = 3e-4
    weight_decay: float = 1e-2
    batch_size: int = 128
    mmd_weight: float = 1.0
    folds: int = 5
    seed: int = 0
    threshold: float = 0.5
    threads: int = 1

    def check(self) -> None:
        if self.head not in HEADS:
            raise InputError(f"Unknown head {self.head!r}; choose one of {', '.join(HEADS)}.")
        if self.head_inputs not in HEAD_INPUTS:
            raise InputError(f"Unknown head inputs {self.head_inputs!r}; choose one of {', '.join(HEAD_INPUTS)}.")
        if not 1 <= self.members <= MAX_MEMBERS:
            raise InputError(f"An ensemble needs 1 to {MAX_MEMBERS} members; got {self.members}.")
        if self.head_c <= 0 or self.few_shot_weight <= 0 or self.entropy_weight < 0:
            raise InputError("The head's C and the few-shot weight must be positive, the entropy weight not negative.",
                             f"Got C={self.head_c}, few-shot weight={self.few_shot_weight}, "
                             f"entropy weight={self.entropy_weight}.")
        if self.epochs < 1 or self.pretrain_epochs < 0 or self.finetune_epochs < 0:
            raise InputError("Head epochs must be at least 1; pretraining and fine-tuning epochs not negative.",
                             f"Got epochs={self.epochs}, finetune_epochs={self.finetune_epochs}.")
        if self.folds < 2:
            raise InputError("Cross-validation needs at least 2 folds.", "Use --folds 2 or more (default 5).")
        if not 0 <= int(self.seed) < 2 ** 32:
            raise InputError(f"The seed must be between 0 and {2 ** 32 - 1:,}; got {self.seed}.",
                             "Any whole number in that range gives a reproducible run.")
        if self.threads < 1:
            raise InputError(f"Training needs at least 1 thread; got {self.threads}.")
        if self.batch_size < 4:
            raise InputError("The batch size must be at least 4.")
        if not 0.0 < self.threshold < 1.0:
            raise InputError(f"The threshold must be between 0 and 1, got {self.threshold}.")


#: Settings only the original head uses, and only the linear heads use.
_SCATD_ONLY = ("epochs", "finetune_epochs", "lr", "finetune_lr", "mmd_weight")
_LINEAR_ONLY = ("members", "head_c", "head_inputs", "few_shot_weight", "entropy_weight")
#: Settings of the backbone pretraining (none run when a pretrained backbone is given).
_PRETRAINING = ("pretrain_epochs", "pretrain_lr", "rec_beta", "hidden_dims", "z_dim")


def unused_settings(head: str, *, backbone_given: bool = False, adaptation: bool = True,
                    few_shot: bool = False, pretrain_epochs: int | None = None) -> dict[str, str]:
    """The settings a run with these choices does not use, each with the reason (a phrase).

    A run records only the settings it used (the others are listed as not used), and the
    command line says when an option it was given has no effect."""
    out: dict[str, str] = {}
    if head == "linear":
        out.update({k: "the default linear heads are fitted to convergence, without epochs, learning rates or MMD "
                       "(they belong to --head scatd)" for k in _SCATD_ONLY})
        if not few_shot:
            out.update({k: "it weighs labelled target cells, and none were given"
                        for k in ("few_shot_weight", "entropy_weight")})
    else:
        out.update({k: "it belongs to the default linear heads, not the original head (--head scatd)"
                    for k in _LINEAR_ONLY})
        if not adaptation:
            out["mmd_weight"] = "without adaptation the fine-tuning uses no MMD to the target"
    if pretrain_epochs == 0 and not backbone_given:
        out.update({k: "no pretraining epochs were run (--pretrain-epochs 0): the backbones keep their random "
                       "initial weights" for k in ("pretrain_lr", "rec_beta")})
    if backbone_given:
        out.update({k: "the given pretrained backbone is used as it is, not pretrained" for k in _PRETRAINING})
        if head == "linear":
            out["members"] = "a given backbone makes an ensemble of one member"
            out["weight_decay"] = out["batch_size"] = "the given pretrained backbone is used as it is, not pretrained"
    return out
