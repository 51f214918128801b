"""What each backbone needs before it can predict, in the order to get it: a drug model of that
backbone, the foundation model's files (VAE_sf: scFoundation, VAE_gf: Geneformer), and the time
the cells' embeddings would take on this machine.

:func:`backbone_setup` is what the Model page shows for a backbone that is not set up (and what
its label says), and what ``scatd doctor`` lists per foundation model. Nothing is run and no
weights are loaded: the files are probed (:func:`scatd_core.foundation.probe`), the cost is
:func:`scatd_core.foundation.estimate_seconds` (one layer timed at the model's size).
"""

from __future__ import annotations

from typing import Any, Sequence

from scatd_core.bundle import BACKBONE_TITLES, FIGSHARE_URL
from scatd_core.errors import ScatdError

#: The foundation model each backbone reads its cells through.
FOUNDATION = {"vae_sf": "scFoundation", "vae_gf": "Geneformer"}
#: The server setting (config key, environment variable) of each foundation model's folder.
SETTINGS = {"vae_sf": ("foundation.scfoundation_dir", "SCATD_SCFOUNDATION_DIR"),
            "vae_gf": ("foundation.geneformer_dir", "SCATD_GENEFORMER_DIR")}
#: The original scATD release's drug-model checkpoints of each backbone (README, 'Command line').
RELEASE_FILES = {"dist_vae": "checkpoint_fold5_final_epoch_150.pth", "vae_sf": "VAE_sf_dal.pth",
                 "vae_gf": "VAE_gf_dal.pth"}


def choice_label(backbone: str, title: str | None = None, setup: dict | None = None) -> str:
    """The Backbone picker's entry: the backbone's title, the foundation model it reads, and what
    it lacks (e.g. ``VAE_gf (scATD-gf) · Geneformer — not set up``)."""
    text = title or BACKBONE_TITLES.get(backbone, backbone)
    if backbone in FOUNDATION and FOUNDATION[backbone] not in text:
        text += f" · {FOUNDATION[backbone]}"
    short = (setup or {}).get("short")
    return f"{text} — {short}" if short else text


def _drug_model_step(backbone: str, bundles: Sequence[Any]) -> dict:
    from scatd_core.bundle import distinct_titles

    mine = [b for b in bundles if b.backbone == backbone]
    title = BACKBONE_TITLES[backbone]
    step = {"key": "drug_model", "title": f"A drug model for {title}", "status": "done" if mine else "missing",
            "found": list(distinct_titles(mine).values()), "missing": [], "todo": [],
            "todo_is_markdown": True}  # no server path in it: shown as written (the link, the command)
    if not mine:
        step["missing"].append(f"No installed drug model is a {title} model.")
        step["todo"].append(f"Import a {title} checkpoint of the original scATD release (e.g. "
                            f"{RELEASE_FILES[backbone]}, [figshare]({FIGSHARE_URL})) on the **Model library** page.")
        if backbone == "dist_vae":
            step["todo"].append("Or train a model for your drug on the **Train** page.")
        else:
            step["todo"].append(f"Or train one on the command line: `scatd train --backbone {backbone} ...` "
                                "(README, 'Training'); the Train page trains Dist_VAE models only.")
    return step


def _files_step(backbone: str, probe: dict | None) -> dict:
    if backbone not in FOUNDATION:
        return {"key": "files", "title": "A foundation model", "status": "done", "found": [], "missing": [],
                "todo": [], "text": "Dist_VAE reads the genes' expression itself: no foundation model is needed."}
    name = FOUNDATION[backbone]
    key, env = SETTINGS[backbone]
    found = [f"{k.replace('_', ' ')}: {v.rsplit('/', 1)[-1]}" for k, v in probe["files"].items() if v != "missing"]
    step = {"key": "files", "title": f"{name}'s files", "status": "done" if probe["available"] else "missing",
            # the files found are ticked: a problem's own sentence about them is not said again
            "found": found, "missing": [p["message"].removesuffix(f" {p['found']}") if p.get("found") else
                                        p["message"] for p in probe["problems"]],
            "todo": list(dict.fromkeys(p["hint"] for p in probe["problems"] if p["hint"])),
            "warnings": list(probe.get("warnings", [])), "location": probe["location"],
            "configured_by": probe["configured_by"],
            "setting": f"the server setting {key} (config.toml) or the environment variable {env}, "
                       "set by an administrator"}
    if probe["available"]:
        step["text"] = f"Installed: {probe['version']}; {probe['embedding_dim']:,}-d cell embeddings."
    return step


def _cost_step(backbone: str, adata, dim: int | None, device: str) -> dict:
    step = {"key": "cost", "title": "Time to compute the embeddings on this machine"}
    if backbone not in FOUNDATION:
        return {**step, "status": "done", "text": "No embeddings to compute: Dist_VAE reads the expression itself."}
    if adata is None:
        return {**step, "status": "no_data", "text": "Upload data on the Data page to see how long the "
                f"{FOUNDATION[backbone]} embeddings of your cells would take here."}
    from scatd_core import foundation
    from scatd_core.foundation._embed import OPTIONS

    options = {"embedding_dim": dim} if "embedding_dim" in OPTIONS[backbone] else {}
    try:
        est = foundation.estimate_seconds(adata, backbone, device=device, published_if_absent=True, **options)
    except ScatdError as exc:
        return {**step, "status": "unknown", "text": "Cannot be estimated until these are fixed (the cost depends "
                f"on how many of each cell's genes {FOUNDATION[backbone]} reads): {exc.message}"}
    return {**step, "status": "estimate", "seconds": float(est["seconds"]), "n_cells": int(est["n_cells"]),
            "device": est["device"], "assumed": est.get("assumed"),
            "coverage_warning": est["gene_coverage"].get("warning")}


def backbone_setup(backbone: str, bundles: Sequence[Any] = (), adata=None, *, device: str = "auto",
                   estimate: bool = True) -> dict:
    """What ``backbone`` needs before it can predict here, as three steps in order.

    ``bundles``: the drug models that may be used (the Model page's offered models, or the
    library's classifiers); ``adata``: the uploaded data, for the cost (``None``: none yet).

    Returns ``backbone``, ``title``, ``ready`` (a drug model and the files are there), ``short``
    (``"not set up"``, ``"no drug model"`` or ``None``: for the backbone's label), ``probe`` (the
    foundation model's probe, :func:`scatd_core.foundation.probe_all`'s form; ``None`` for
    Dist_VAE) and ``steps``: ``drug_model``, ``files``, ``cost``, each with ``key``, ``title``,
    ``status`` (``done`` / ``missing``; the cost: ``estimate``, ``unknown``, ``no_data``,
    ``done``), and what applies of ``found``, ``missing``, ``todo``, ``text``, ``setting``,
    ``seconds``, ``n_cells``, ``device``, ``assumed``.
    """
    if backbone not in BACKBONE_TITLES:
        raise ValueError(f"unknown backbone {backbone!r}")
    mine = [b for b in bundles if b.backbone == backbone]
    dim = mine[0].architecture.input_dim if mine else None
    probe = None
    if backbone in FOUNDATION:
        from scatd_core import foundation
        from scatd_core.nn.models import PUBLISHED_SIZES

        width = dim if dim is not None else (PUBLISHED_SIZES[backbone][0][0] if backbone == "vae_gf" else None)
        probe = foundation.probe(backbone, embedding_dim=width if backbone == "vae_gf" else None).to_dict()
        dim = width
    steps = [_drug_model_step(backbone, bundles), _files_step(backbone, probe)]
    if estimate:
        steps.append(_cost_step(backbone, adata, dim, device))
    files_ok = steps[1]["status"] == "done"
    short = None if files_ok and mine else "no drug model" if files_ok else "not set up"
    return {"backbone": backbone, "title": BACKBONE_TITLES[backbone], "ready": files_ok and bool(mine),
            "short": short, "probe": probe, "steps": steps}
