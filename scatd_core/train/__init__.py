"""Train a drug-response model on bulk cell lines and transfer it to single cells.

:func:`train_drug_model` follows scATD's domain-adaptive learning (reference §3-§4) with its
known bugs fixed (reference §10). Two recipes share the inputs and the backbone pretraining:

1. **Inputs.** The gene panel is what bulk and target share (and, with a pretrained backbone,
   what the backbone knows); it is reported. Each domain is standardised on its own: raw counts
   are log-normalised (each sample scaled to 10,000 over all the genes of its data, not only the
   panel's: the bundle records ``library_size: "all genes"``), then every gene is z-scored over
   the domain's samples. The target side is
   computed by :class:`scatd_core.inputs.ModelInput` itself, so ``scatd predict`` on the target
   reproduces exactly what the model saw. Labels are matched to bulk samples by ID, never by
   row position.
2. **Backbones.** Without a backbone bundle, residual VAEs are pretrained on the bulk (all
   samples, labelled or not) and, with adaptation on, the target cells, with the original loss
   ``rec_beta * MSE + KLD`` (§3.2). No labels are used here. Spectral norm runs one power
   iteration per step (u and v persist between steps and track the norm as the weights move;
   the original's five only matter to reproduce its training exactly).
3. **Default head: an ensemble of linear heads** (:mod:`scatd_core.train._ensemble`).
   ``members`` backbones from seeds ``seed * 1000 + k``; each gets a class-balanced logistic
   regression on its frozen latent mean and the standardised genes, with a fixed L2 penalty,
   fitted to convergence: nothing is chosen on the bulk cross-validation, whose folds hold a
   handful of sensitive lines and whose AUROC ran against the target's on the real data
   (benches/results_transfer.md). Seeing the genes, a head can never do much worse than a
   logistic regression on them. The heads are written in the original layout
   (:meth:`~scatd_core.nn.models.DrugClassifier.set_linear_head`), the members stacked in one
   bundle (:class:`~scatd_core.nn.ensemble.EnsembleClassifier`); predictions average the
   members' logits and their spread is each cell's uncertainty. With a few labelled target
   cells, the heads are fitted on the bulk and those cells together and refined by entropy
   minimisation on the unlabelled cells (semi-supervised, in the spirit of SSDA4Drug).
4. **Original head** (``head="scatd"``): per stratified fold, the encoder frozen **in eval
   mode** (unlike the original, §10.12), the head ``fc3 -> bn3 -> swish -> fc4`` trained on the
   latent mean with class-weighted cross-entropy from a constant prediction (so stopping early
   shrinks it towards "no signal"); its number of epochs is the argmax of the fold-mean
   validation AUROC curve (smoothed over 5 epochs), not "the last epoch" (§10.15); the CV
   estimate takes each fold's predictions at the epoch chosen on the *other* folds' curves, so
   it is not selected on the labels it is scored on. Then a fixed
   number of fine-tuning epochs train the encoder too (BatchNorm still in eval mode), with the
   RBF-kernel MMD between bulk and target latent means when adapting (median-heuristic
   bandwidth, detached; ``min(batch, n_target)`` target cells, so small targets work, §10.17).
   A second CV pass measures the whole procedure; the kept model is refitted on all labelled
   bulk samples.
5. **Output.** A bundle with ``input_transform="standardize"``, ``beta_mode="separate"``,
   threshold 0.5 (class-balanced training puts the balanced decision point there; calls with it
   are marked uncalibrated), data hashes, settings, and a **model card**
   (:mod:`scatd_core.card`): bulk CV and, when the target has labels (evaluation only), target
   AUROC/AUPRC with bootstrap intervals next to a logistic regression and gradient boosting
   trained on the same inputs in the same run (and, with labelled target cells, a logistic
   regression on those cells alone), with a plain verdict for each.

Everything is seeded: the same data, settings, seed, device and thread count give identical
weights. Global torch RNG state is restored afterwards.
"""

from __future__ import annotations

from scatd_core.train._cv import cross_validate, cv_splits
from scatd_core.train._data import TrainingData, prepare_training_data
from scatd_core.train._fit import fit_head, mmd_rbf, pretrain_backbone
from scatd_core.train._panel import models_to_save, train_panel, summary_for_reading, verdict_lines
from scatd_core.train._run import default_model_name, free_model_name, train_drug_model
from scatd_core._train_settings import MIN_LINES_PER_CLASS
from scatd_core.train._settings import HEAD_INPUTS, HEADS, TrainSettings
from scatd_core.train.report import report_to_json

__all__ = ["train_drug_model", "TrainSettings", "HEADS", "HEAD_INPUTS", "TrainingData", "prepare_training_data",
           "cross_validate", "cv_splits", "fit_head", "pretrain_backbone", "mmd_rbf", "report_to_json", "train_panel",
           "models_to_save", "verdict_lines", "summary_for_reading", "default_model_name", "free_model_name", "MIN_LINES_PER_CLASS"]
