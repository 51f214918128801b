"""Hyper-parameters of a training run."""

from __future__ import annotations

from dataclasses import dataclass

from scatd_core.errors import InputError


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


