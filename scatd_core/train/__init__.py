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

from scatd_core.train._cv import cross_validate
from scatd_core.train._data import TrainingData, prepare_training_data
from scatd_core.train._fit import fit_head, mmd_rbf, pretrain_backbone
from scatd_core.train._panel import train_panel
from scatd_core.train._run import train_drug_model
from scatd_core.train._settings import TrainSettings
from scatd_core.train.report import report_to_json

__all__ = ["train_drug_model", "TrainSettings", "TrainingData", "prepare_training_data", "cross_validate",
           "fit_head", "pretrain_backbone", "mmd_rbf", "report_to_json", "train_panel"]
