"""Gene-level biomarkers of VAE_sf and VAE_gf: through the foundation model back to the genes.

The drug model sees a cell embedding; the embedding was computed from the cell's expression.
Ranking genes therefore means explaining the whole path expression -> foundation model ->
embedding -> AdaIN (the prediction's statistics, fixed) -> classifier -> P(resistant):

- **VAE_sf, integrated gradients** through scFoundation. The inputs are the values of the genes a
  cell expresses (scFoundation's tokens: log-normalised expression); the path runs from the
  baseline values of those genes to the cell's, with the cell's gene set, positions and its T/S
  tokens held fixed (a gene that is not expressed is no token at all, so it has no gradient and
  gets 0). Completeness holds per cell: the attributions sum to f(cell) - f(baseline values),
  checked with the same tolerance as :func:`scatd_core.explain.explain`.
- **VAE_gf, in-silico deletion** through Geneformer, as Geneformer's own papers perturb cells:
  Geneformer's input is a rank order, not values, so there is no path to integrate along.
  For each candidate gene and each explained cell whose encoding holds it, the gene's token is
  removed, the shortened encoding re-embedded, and the attribution is f(cell) - f(cell without
  the gene): how much the gene's presence moves the prediction. Candidates are the
  ``n_genes`` genes present in most explained cells (the cost is one forward pass per cell and
  candidate it holds).

Both explain a stated subsample of the scored cells (stratified by predicted label) and produce
the ranking table of :func:`scatd_core.explain.explain` (:data:`~scatd_core.explain.RANKING_COLUMNS`),
stored the same way (:func:`scatd_core.explain.store`), so the Biomarkers page, the reports and
``biomarkers.csv`` show them as they show Dist_VAE's.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from scatd_core import _keys
from scatd_core._keys import result_keys
from scatd_core.errors import InputError
from scatd_core.explain._attribution import BASELINE_TITLES, MIX_ALPHA, N_REFERENCE_CELLS, TARGET_TITLES, TargetOutput
from scatd_core.explain._explain import (RANKING_COLUMNS, Explanation, _check, _choose_cells, _completeness, _de_rank,
                                         _nothing_to_attribute, _without_ranking,
                                         _ranking, last_stop_check, _Sums, de_table, groups_text, prediction_context, store,
                                         with_threshold)
from scatd_core.explain._ranking import agreement
from scatd_core.foundation import _work, geneformer, scfoundation
from scatd_core.inputs import ModelInput

#: Cells explained when the caller gives no ``max_cells``: every explained cell costs ``n_steps``
#: forward and backward passes of scFoundation, or one Geneformer pass per candidate gene.
DEFAULT_MAX_CELLS = 50
DEFAULT_DELETION_GENES = 100
#: Tokens per forward/backward pass of integrated gradients (activations are kept for backward).
IG_TOKENS = {"cpu": 2048, "cuda": 32768}


def attention_bytes(cfg, n_tokens: np.ndarray) -> np.ndarray:
    """Memory one integration step of one cell keeps for attention's backward pass (float32 scores, every
    layer and head): 2.3 GB at 2,000 tokens for scFoundation's 12 x 12."""
    n = np.asarray(n_tokens, dtype=np.float64)
    return cfg.depth * cfg.heads * n * n * 4.0


def explain_genes(adata, bundle, *, inputs: ModelInput | None = None, baseline: str = "mean", n_steps: int = 50,
                  target: str = "logit", max_cells: int | None = DEFAULT_MAX_CELLS, seed: int = 0,
                  n_reference_cells: int = N_REFERENCE_CELLS, n_genes: int = DEFAULT_DELETION_GENES,
                  keep_top: int | None = 100, differential_expression: bool = True, device: str = "auto",
                  key_added: str | None = None, store_result: bool = True, progress=None,
                  should_stop=None) -> Explanation:
    """Rank genes for a VAE_sf or VAE_gf prediction through scFoundation / Geneformer.

    Parameters
    ----------
    adata
        The predicted dataset: its expression (X) and the embeddings computed from it by
        :func:`scatd_core.foundation.embed_cells` (the CLI and app do this when predicting).
    bundle
        The VAE_sf / VAE_gf drug model that made the predictions.
    inputs
        The prediction's :class:`~scatd_core.inputs.ModelInput` (its AdaIN statistics are used).
    baseline
        VAE_sf: ``"mean"`` (each gene's mean model-input value over the scored cells),
        ``"zero"``, ``"random"`` or ``"mix"``, as :func:`scatd_core.explain.explain`. VAE_gf: the
        baseline is the cell without the gene (deletion); only ``"mean"`` (the default) is accepted.
    n_steps
        VAE_sf: integration steps (captum, Gauss-Legendre).
    target
        ``"logit"`` (logit P(resistant)), ``"raw_logit"`` or ``"prob"``.
    max_cells
        Explain a random subsample of at most this many scored cells, stratified by predicted
        label (default 50; ``None`` also means 50: every cell is costly).
    n_genes
        VAE_gf: candidate genes tested by deletion.
    keep_top, differential_expression, device, key_added, store_result, progress, should_stop
        As :func:`scatd_core.explain.explain`.

    Notes
    -----
    Cost. VAE_sf: each cell takes ``n_steps`` forward and backward passes of scFoundation over
    its expressed genes, and the backward pass keeps every layer's attention weights: about
    ``depth x heads x genes^2 x 4`` bytes per integration step (2.3 GB at 2,000 genes, 9 GB at 4,000) for one cell.
    VAE_gf: one Geneformer pass per candidate gene a cell holds. Use a GPU for many cells.

    Returns
    -------
    An :class:`~scatd_core.explain.Explanation` with one row per gene (VAE_sf: the 19,264
    scFoundation genes; VAE_gf: the candidate genes), features named by gene symbol. With
    ``store_result`` it sets the fields :func:`scatd_core.explain.explain` sets:
    ``adata.uns['scatd_biomarkers']``, ``adata.obsm['scatd_attributions']``,
    ``adata.obsm['scatd_attribution_inputs']`` (model-input values: log-normalised expression for
    VAE_sf, Geneformer's median-scaled expression for VAE_gf) and ``adata.obs['scatd_explained']``.
    """
    from scatd_core.predict import device_description

    keys = result_keys(key_added)
    max_cells = DEFAULT_MAX_CELLS if max_cells is None else int(max_cells)
    _check(adata, bundle, keys, baseline, target, n_steps, max_cells, n_reference_cells, seed)
    if bundle.backbone not in ("vae_sf", "vae_gf"):
        raise InputError(f"{bundle.name} reads genes directly; use scatd_core.explain.explain.")
    if bundle.backbone == "vae_gf" and baseline != "mean":
        raise InputError("VAE_gf genes are ranked by in-silico deletion: the baseline is the cell without the gene, "
                         "so the baseline setting does not apply.", "Leave the baseline at its default.")
    if int(n_genes) < 1:
        raise InputError("n_genes must be at least 1.")
    options = _embedding_options(adata, bundle)
    t0 = time.perf_counter()
    say = progress or (lambda f, m: None)
    say(0.0, "reading the model input")
    dev, model, labels, inputs, pos, neg = prediction_context(adata, bundle, keys, device, inputs)
    info_pred = adata.uns[keys.run]
    scored = np.flatnonzero(inputs.usable & adata.obs[keys.scored].to_numpy(dtype=bool))
    if scored.size == 0:
        raise InputError("No scored cell to explain.", "Check the prediction's warnings on the Predict page.")
    rows, how, population = _choose_cells(labels, scored, max_cells, seed, pos, neg)
    is_pos, is_neg = labels[rows] == pos, labels[rows] == neg
    warn = [] if is_pos.any() and is_neg.any() else [
        f"All explained cells are predicted {pos if is_pos.any() else neg}: group comparisons (signed means per "
        "group, DE) are not available."]
    head = _Head(model, inputs, target, bundle.positive_index, dev)
    run = _ScFoundationIG if bundle.backbone == "vae_sf" else _GeneformerDeletion
    from scatd_core.foundation._embed import counts_source

    part = run(counts_source(adata, bundle.backbone)[0], inputs, rows, is_pos, is_neg, head, options, dev, say, should_stop)
    part.run(baseline=baseline, n_steps=int(n_steps), seed=seed, n_reference=n_reference_cells, n_genes=int(n_genes))
    rows, is_pos, is_neg = part.rows, part.is_pos, part.is_neg  # cells beyond the memory limit may have been left out
    sums = part.sums
    n_pos, n_neg = int(is_pos.sum()), int(is_neg.sum())
    ranking, order = _ranking(part.names, sums, n_pos, n_neg, part.base,
                              None if population is None else (population[pos], population[neg]), part.in_data)
    kept = order if keep_top is None else order[: int(keep_top)]
    nothing = _nothing_to_attribute(sums, part.f_base, part.base, part.baseline_title,
                                    TARGET_TITLES[target]) if part.complete else None
    if nothing:
        warn.insert(0, nothing)
    if part.complete:
        completeness, rel = _completeness(sums, part.f_base, n_steps, warn, nothing)
    else:
        completeness, rel = {}, np.full(rows.size, np.nan)
    say(0.92, "differential expression between the predicted groups")
    present = np.flatnonzero(part.in_data)
    de_cols, de_info = de_table(part.raw[:, present], present, len(part.names), part.value_kind,
                                is_pos, is_neg, pos, neg, differential_expression)
    ranking = pd.concat([ranking, de_cols], axis=1)
    ranking["de_rank"] = _de_rank(ranking)
    ranking["in_data"] = part.in_data
    ranking = with_threshold(ranking, info_pred["threshold"])
    ranking = ranking.iloc[order].reset_index(drop=True)[list(RANKING_COLUMNS)]
    if nothing:
        ranking = _without_ranking(ranking)
    cells = pd.DataFrame({"row": rows, "label": labels[rows], "prob_resistant": adata.obs[keys.prob].to_numpy()[rows],
                          "target": sums.f_x, "baseline_target": part.f_base, "attribution_sum": sums.attr_sum,
                          "delta": sums.delta if part.complete else np.nan, "relative_error": rel},
                         index=pd.Index(adata.obs_names[rows].astype(str), name="cell_id"))
    info = {
        "method": part.method(n_steps), "target": target, "target_title": TARGET_TITLES[target],
        "baseline": baseline if part.complete else "deletion", "baseline_title": part.baseline_title,
        "baseline_cells": [str(adata.obs_names[i]) for i in part.reference_cells],
        "baseline_target": float(np.mean(part.f_base)), "n_steps": int(n_steps) if part.complete else 0,
        "seed": int(seed), "threshold": info_pred["threshold"]["value"], "prediction_key": keys.prefix,
        "threshold_calibrated": bool(info_pred["threshold"].get("calibrated")),
        "threshold_detail": info_pred["threshold"].get("detail", ""),
        "positive_label": pos, "negative_label": neg,
        "model": {"name": bundle.name, "backbone": bundle.backbone, "drug": bundle.drug or "",
                  "weights_sha256": bundle.manifest.get("weights_sha256", "")},
        "foundation": {"model": part.model_name, "settings": options, "embedding_check": part.consistency},
        "features": {"level": "gene", "n": len(part.names), "n_in_data": int(part.in_data.sum()),
                     "n_kept_per_cell": int(kept.size)},
        "cells": {"n_scored": int(scored.size), "n_explained": int(rows.size), "n_resistant": n_pos,
                  "n_sensitive": n_neg, "subsampled": bool(rows.size < scored.size), "how": how},
        "completeness": completeness, "differential_expression": de_info,
        "agreement": agreement(ranking) if de_info["method"] != "none" and not nothing else {},
        **({"nothing_to_attribute": nothing} if nothing else {}),
        "device": device_description(dev),
        "seconds": {"attribution": round(part.seconds, 3), "total": round(time.perf_counter() - t0, 3)},
        "warnings": warn + part.warnings, "notes": part.notes,
    }
    info["statement"] = (f"{info['method']} of {info['target_title']} with respect to {len(part.names):,} genes; "
                         f"baseline: {part.baseline_title}; cells: {how}. "
                         + groups_text(info_pred["threshold"], pos, neg))
    result = Explanation(ranking=ranking, cells=cells, features=[part.names[j] for j in kept],
                         attributions=sums.kept_attributions(kept, None),  # attributions staged in float16
                         inputs=part.x[:, kept].astype(np.float32), baseline=part.base, info=info)
    last_stop_check(say, should_stop, store_result)
    # the last report, before the store: a stop that lands on it leaves the AnnData as it was, and
    # none can land after the store (the app said "stopped, the ranking shown before is kept" then)
    say(1.0, f"done in {info['seconds']['total']:.0f} s")
    if store_result:
        store(adata, result)
    return result


def _embedding_options(adata, bundle) -> dict:
    """The settings the stored embeddings were computed with; they must still match the files."""
    from scatd_core.foundation._embed import cached

    record = adata.uns.get(_keys.FOUNDATION, {}).get(bundle.backbone)
    if record is None:
        raise InputError(f"Gene-level biomarkers explain embeddings computed here from the expression, but this "
                         f"dataset's obsm['{_keys.FOUNDATION_EMBEDDING[bundle.backbone]}'] was brought in.",
                         "Predict from the expression matrix (the counts) so the embeddings are computed here, or "
                         "rank the embedding features instead.")
    options = json.loads(record["identity"])["options"]
    if cached(adata, bundle.backbone, **options) is None:
        raise InputError("The embeddings were computed from other data or with other foundation-model files.",
                         "Predict again, so the embeddings match the files installed now.")
    return options


class _Head:
    """Embedding -> AdaIN (the prediction's statistics) -> classifier -> the explained output."""

    def __init__(self, model, inputs: ModelInput, target: str, positive_index: int, device):
        # AdaIN is affine per feature; its slope and offset are read off ModelInput's own scaling,
        # so the explained inputs go through exactly the transform the prediction used.
        dim = inputs.spec.input_dim
        offset = inputs._scale(np.zeros((1, dim)))[0]
        slope = inputs._scale(np.ones((1, dim)))[0] - offset
        self.offset = torch.from_numpy(offset).to(device)
        self.slope = torch.from_numpy(slope).to(device)
        self.output = TargetOutput(model, target, positive_index)

    def __call__(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.output(embedding.float() * self.slope + self.offset)


def _read_rows(adata, rows: np.ndarray):
    """The explained cells' rows of X (sorted ``rows``), CSR or dense."""
    from scatd_core._matrix import as_block, row_sliceable

    return as_block(row_sliceable(adata.X)[rows])


class _Part:
    """What both methods produce for the shared ranking steps."""

    complete = True
    warnings: list
    notes: list

    def __init__(self, adata, inputs, rows, is_pos, is_neg, head, options, device, say, should_stop):
        self.adata, self.inputs, self.rows = adata, inputs, rows
        self.is_pos, self.is_neg, self.head, self.options = is_pos, is_neg, head, options
        self.device, self.say, self.should_stop = device, say, should_stop
        self.reference_cells: list[int] = []
        self.warnings, self.notes = [], []
        self.seconds = 0.0


class _ScFoundationIG(_Part):
    model_name = scfoundation.NAME

    def run(self, *, baseline: str, n_steps: int, seed: int, n_reference: int, n_genes: int) -> None:
        from captum.attr import IntegratedGradients

        encoder, genes = scfoundation.load(key=self.options["key"], device=self.device)
        cfg = encoder.config
        wanted = np.zeros(self.adata.n_obs, dtype=bool)
        wanted[self.rows] = True
        plan = scfoundation.plan(self.adata, wanted, genes, self.options["resolution"], self.options["max_genes"])
        self._within_memory(cfg, plan.n_expressed)
        values, _ = plan.prepared.values(_read_rows(self.adata, self.rows))
        self.names, self.value_kind = genes, plan.prepared.value_kind
        self.base = self._baseline(plan, baseline, seed, n_reference)
        self.baseline_title = BASELINE_TITLES[baseline].format(k=len(self.reference_cells), seed=seed).replace(
            "model input", "log-normalised expression").replace("no expression", "every expressed gene at value 0")
        n, f = self.rows.size, len(genes)
        self.sums = _Sums(f, n)
        self.x = np.zeros((n, f), dtype=np.float32)
        self.f_base = np.zeros(n)
        self.raw = sp.csr_matrix(_read_rows(self.adata, self.rows)) @ plan.prepared.alignment.matrix
        self.in_data = np.asarray(np.abs(plan.prepared.alignment.matrix).sum(axis=0)).ravel() > 0
        base_t = torch.from_numpy(self.base.astype(np.float32)).to(self.device)

        def forward(vals, positions, n_expressed):
            return self.head(encoder(vals, positions, n_expressed))

        ig = IntegratedGradients(forward)
        lengths = plan.n_expressed[self.rows] + 2
        budget = IG_TOKENS.get(self.device.type, IG_TOKENS["cpu"])
        work = _work.Work(scfoundation.flops_per_cell(cfg, lengths).sum() * 3 * n_steps, n,
                          "integrated gradients through scFoundation", self.say, self.should_stop, 0.02, 0.88)
        stored = self.adata.obsm[_keys.FOUNDATION_EMBEDDING["vae_sf"]]
        diffs = []
        t0 = time.perf_counter()
        for at in range(n):  # one cell per call: captum multiplies it by n_steps
            work.check()
            cell = self.rows[at:at + 1]
            tok = scfoundation.make_tokens(values[at], plan.t[cell], plan.s[cell], cfg)
            vals, positions, n_expr = tok.tensors(self.device)
            k = int(n_expr[0])
            start = vals.clone()
            start[0, :k] = base_t[positions[0, :k]]  # T and S keep the cell's values
            attr, delta = ig.attribute(vals, baselines=start, additional_forward_args=(positions, n_expr),
                                       n_steps=n_steps, internal_batch_size=max(1, budget // vals.shape[1]),
                                       return_convergence_delta=True)
            with torch.no_grad():
                embedding = encoder(vals, positions, n_expr)
                out = float(self.head(embedding)[0])
                self.f_base[at] = float(forward(start, positions, n_expr)[0])
            diffs.append(float(np.abs(embedding[0].cpu().numpy() - stored[cell[0]]).max()))
            cols = positions[0, :k].cpu().numpy()
            a = np.zeros((1, f))
            a[0, cols] = attr[0, :k].detach().double().cpu().numpy()
            self.x[at, cols] = vals[0, :k].cpu().numpy()
            present = np.zeros((1, f), dtype=bool)
            present[0, cols] = True
            self.sums.add(np.array([at]), self.x[at:at + 1], a, delta.detach().double().cpu().numpy(), np.array([out]),
                          self.base, self.is_pos, self.is_neg, present)
            work.step(1, scfoundation.flops_per_cell(cfg, lengths[at:at + 1]).sum() * 3 * n_steps)
        self.seconds = time.perf_counter() - t0
        self.consistency = {"max_abs_difference_from_stored_embedding": round(max(diffs), 6)}
        self.notes.append("Genes a cell does not express are no scFoundation token, so they get no attribution in that "
                          "cell; T and S (total-count tokens) are held at the cell's values.")

    def _within_memory(self, cfg, n_expressed: np.ndarray) -> None:
        """On the CPU, keep only the cells whose integrated-gradients passes fit the server's memory limit.

        Attention keeps ``depth x heads x tokens^2`` float32 scores per integration step for the
        backward pass (2.3 GB for one cell of 2,000 genes, 9 GB at 4,000), and a pass holds
        ``IG_TOKENS // tokens`` steps. The limit is the memory one dataset may take
        (``limits.max_dataset_mb``); cells above it are left out and the result says how many;
        when none fits, nothing runs.
        """
        from scatd_core.config import limits

        if self.device.type != "cpu":
            return
        budget = limits().max_dataset_bytes
        tokens = n_expressed[self.rows].astype(np.float64) + 2
        need = attention_bytes(cfg, tokens) * np.maximum(1, IG_TOKENS["cpu"] // tokens)
        fits = need <= budget
        if fits.all():
            return
        if not fits.any():
            raise InputError(
                f"Integrated gradients through scFoundation would need about {need.min() / 2**30:.1f} GB of memory "
                f"even for the smallest of the {self.rows.size:,} chosen cells ({int(tokens.min()) - 2:,} expressed "
                f"genes), above this server's limit of {budget / 2**30:.1f} GB (limits.max_dataset_mb).",
                "Explain cells with fewer expressed genes (Data page: an upper bound on genes detected), or ask the "
                "administrator to raise limits.max_dataset_mb on a server with more memory.")
        self.warnings.append(
            f"{int((~fits).sum()):,} of the {self.rows.size:,} chosen cells were left out: with "
            f"{int(tokens[~fits].min()) - 2:,} or more expressed genes, integrated gradients through scFoundation "
            f"need more than this server's memory limit ({budget / 2**30:.1f} GB, limits.max_dataset_mb).")
        self.rows, self.is_pos, self.is_neg = self.rows[fits], self.is_pos[fits], self.is_neg[fits]

    def _baseline(self, plan, kind: str, seed: int, n_reference: int) -> np.ndarray:
        """The baseline value of every gene: 0, its mean over the scored cells, or over random ones."""
        from scatd_core._matrix import MeanVar

        if kind == "zero":
            return np.zeros(len(plan.prepared.genes))
        usable = np.flatnonzero(self.inputs.usable)
        mean = None
        if kind in ("mean", "mix"):
            acc = MeanVar()
            for start in range(0, usable.size, 2048):
                acc.update(plan.prepared.values(_read_rows(self.adata, usable[start:start + 2048]))[0])
            mean = acc.mean
            if kind == "mean":
                return mean
        drawn = np.sort(np.random.default_rng(seed).choice(usable, size=min(n_reference, usable.size), replace=False))
        self.reference_cells = [int(i) for i in drawn]
        reference = np.asarray(plan.prepared.values(_read_rows(self.adata, drawn))[0].mean(axis=0)).ravel()
        return reference if kind == "random" else MIX_ALPHA * mean + (1 - MIX_ALPHA) * reference

    @staticmethod
    def method(n_steps: int) -> str:
        import captum

        return (f"Integrated gradients through scFoundation, AdaIN and the classifier (captum {captum.__version__}, "
                f"Gauss-Legendre, {int(n_steps)} steps)")


class _GeneformerDeletion(_Part):
    model_name = geneformer.NAME
    complete = False
    baseline_title = "the cell without the gene (its token removed from the rank-value encoding)"

    def run(self, *, baseline: str, n_steps: int, seed: int, n_reference: int, n_genes: int) -> None:
        opts = self.options
        bert, vocab, folder = geneformer.load(embedding_dim=opts["embedding_dim"], device=self.device,
                                              emb_layer=opts["emb_layer"])
        tok = geneformer.tokenizer(self.adata, vocab, folder.input_size)
        block = _read_rows(self.adata, self.rows)
        lists = tok.tokenize(block)
        counts, totals = tok.aligned(block)
        first = 1 if vocab.special_tokens else 0
        genes_of = [t[first: t.size - first] for t in lists]  # gene tokens only (no <cls>/<eos>)
        position = {int(t): j for j, t in enumerate(tok.token_ids)}
        candidates = self._candidates(genes_of, n_genes, position)
        self.names = vocab.symbols([tok.genes[j] for j in candidates])
        self.value_kind = tok.value_kind
        cand_col = {int(tok.token_ids[j]): c for c, j in enumerate(candidates)}
        n, f = self.rows.size, len(candidates)
        scale = np.divide(geneformer.TARGET_SUM, totals, out=np.zeros_like(totals), where=totals > 0)
        dense = counts[:, candidates].toarray()
        self.x = (dense * scale[:, None] / tok.medians[candidates][None, :]).astype(np.float32)
        self.raw, self.in_data, self.base = dense, np.ones(f, dtype=bool), np.zeros(f)
        self.sums = _Sums(f, n)
        self.f_base = np.full(n, np.nan)
        n_used = bert.config.num_hidden_layers
        per_cell = [sum(int(t) in cand_col for t in g) for g in genes_of]
        work = _work.Work(sum(geneformer.flops_per_cell(folder.config, n_used, np.array([lists[i].size]))[0] * (k + 1)
                              for i, k in enumerate(per_cell)), n, "in-silico deletion through Geneformer",
                          self.say, self.should_stop, 0.02, 0.88)
        budget = _work.batch_tokens(self.device)
        emb_mode = opts["emb_mode"]
        stored = self.adata.obsm[_keys.FOUNDATION_EMBEDDING["vae_gf"]]
        diffs = []
        t0 = time.perf_counter()
        for at in range(n):
            work.check()
            tokens = lists[at]
            cell_emb = geneformer.embed_tokens(bert, [tokens], vocab, emb_mode, self.device)
            diffs.append(float(np.abs(cell_emb[0].cpu().numpy() - stored[self.rows[at]]).max()))
            with torch.no_grad():
                out = float(self.head(cell_emb)[0])
            where = [i for i, t in enumerate(tokens) if int(t) in cand_col and first <= i < tokens.size - first]
            a = np.zeros((1, f))
            per_batch = max(1, budget // max(tokens.size - 1, 1))
            for s in range(0, len(where), per_batch):
                work.check()
                chunk = where[s:s + per_batch]
                deleted = [np.delete(tokens, i) for i in chunk]
                emb = geneformer.embed_tokens(bert, deleted, vocab, emb_mode, self.device)
                with torch.no_grad():
                    without = self.head(emb).double().cpu().numpy()
                a[0, [cand_col[int(tokens[i])] for i in chunk]] = out - without
            present = np.zeros((1, f), dtype=bool)
            present[0, [cand_col[int(tokens[i])] for i in where]] = True
            self.sums.add(np.array([at]), self.x[at:at + 1], a, np.array([np.nan]), np.array([out]), self.base,
                          self.is_pos, self.is_neg, present)
            work.step(1, geneformer.flops_per_cell(folder.config, n_used, np.array([tokens.size]))[0] * (len(where) + 1))
        self.seconds = time.perf_counter() - t0
        self.consistency = {"max_abs_difference_from_stored_embedding": round(max(diffs), 6)}
        self.notes.append(f"{f:,} candidate genes (those present in most explained cells) were each deleted from every "
                          "explained cell whose encoding holds them; a gene absent from a cell (or cut off beyond "
                          f"the model's {folder.input_size:,} tokens) has no effect there (0). Deletion effects do not "
                          "add up to the prediction, so there is no completeness check.")

    def _candidates(self, genes_of: list[np.ndarray], n_genes: int, position: dict) -> list[int]:
        """Vocabulary positions of the ``n_genes`` genes present in most cells (ties: better mean rank)."""
        count, rank_sum = {}, {}
        for g in genes_of:
            for r, t in enumerate(g):
                t = int(t)
                count[t] = count.get(t, 0) + 1
                rank_sum[t] = rank_sum.get(t, 0) + r
        best = sorted(count, key=lambda t: (-count[t], rank_sum[t] / count[t], t))[:n_genes]
        return [position[t] for t in best]

    @staticmethod
    def method(n_steps: int) -> str:
        return ("In-silico deletion through Geneformer, AdaIN and the classifier (a gene's token removed from the "
                "rank-value encoding, the cell re-embedded; attribution = f(cell) - f(cell without the gene))")
