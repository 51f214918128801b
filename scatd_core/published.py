"""The published scATD models: list them on figshare, download with checks, import into the library.

The scATD authors published their checkpoints in one public figshare article
(:data:`scatd_core.bundle.FIGSHARE_ARTICLE`). :func:`list_files` asks figshare's public API which
files it holds; :func:`recognise` says what each known file is (backbone, drug, what it needs);
:func:`install` downloads the chosen ones with a size limit, progress and an MD5 check against
figshare's own checksum, then imports them with the right backbone, drug and gene list
(:func:`scatd_core.bundle.import_checkpoint`, weights only).

Without network access, :func:`manual_instructions` says what to download by hand and how to
import it. The API address can be changed (``published.figshare_api``) for a mirror or a test.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from scatd_core._words import counted
from scatd_core.bundle import (BACKBONE_TITLES, FIGSHARE_ARTICLE, FIGSHARE_URL, NameTaken, import_checkpoint,
                               load_bundle, safe_name, sha256_file, who_made)
from scatd_core.config import limits, model_library_dir, settings
from scatd_core.errors import InputError, ScatdError

#: The scFoundation gene list (the Dist_VAE input order); fetched from ``published.gene_list_url``
#: when the article does not hold it.
GENE_LIST = "OS_scRNA_gene_index.19264.tsv"
TIMEOUT_SECONDS = 20


@dataclass(frozen=True)
class Recognised:
    """What a published file is: ``kind`` 'classifier' | 'backbone' | 'genes' | 'style'."""

    kind: str
    backbone: str | None = None
    drug: str | None = None
    title: str = ""


#: Files of the article that scATD's documentation names (reference §2, §8).
KNOWN = {
    "checkpoint_fold5_final_epoch_150.pth": Recognised(
        "classifier", "dist_vae", "DOCETAXEL", "Dist_VAE drug model, docetaxel (GSE140440)"),
    "checkpoint_fold1_epoch_30.pth": Recognised(
        "backbone", "dist_vae", None, "Dist_VAE pretrained backbone (train drug models from it)"),
    "VAE_sf_checkpoint_fold1_epoch_24.pth": Recognised(
        "backbone", "vae_sf", None, "VAE_sf pretrained backbone"),
    "VAE_gf_checkpoint_fold1_epoch_39.pth": Recognised(
        "backbone", "vae_gf", None, "VAE_gf pretrained backbone"),
    GENE_LIST: Recognised("genes", None, None, "scFoundation gene list (input order of Dist_VAE)"),
}


#: What the published install adds to the display name of each model it installs (kept for it).
PUBLISHED_MARK = "published scATD"


def install_folder(what: Recognised) -> str:
    """The library folder a published checkpoint is installed to: ``DRUG_backbone``, as the
    checkpoint imported by hand without a display name (``scatd import-checkpoint FILE --backbone
    B --drug D``); ``DRUG_backbone_published`` (``-2`` ...) when another model holds that one."""
    return safe_name(f"{what.drug or 'backbone'}_{what.backbone}")


def reserved_name_problem(folder: str, name: str | None, *, kind: str, backbone: str,
                          drug: str | None) -> tuple[str, str] | None:
    """Why a model that is not a published install may not take the library ``folder`` or the
    display ``name`` (``(what, whose)``, or None when it may), so that the names the published
    install uses mean the published model:

    - ``DRUG_backbone_published`` (``-2`` ...): only the published install puts a model there,
      once the download matches figshare's checksum; never an import or a training;
    - ``DRUG_backbone`` itself: only a model of that drug and backbone (a backbone: of that
      backbone), as the published checkpoint imported by hand is (offline, nothing tells it from
      someone's own checkpoint of that drug and backbone, which takes that folder as before);
    - a display name saying "published scATD": only the published install gives one.
    """
    if name and PUBLISHED_MARK.lower() in name.lower():
        return (f"the display name {name!r} says {PUBLISHED_MARK!r}",
                "only installing the published models gives that name, once the download matches figshare's "
                "checksum")
    for what in KNOWN.values():
        if what.kind not in ("classifier", "backbone"):
            continue
        base = install_folder(what)
        if re.fullmatch(re.escape(base) + r"_published(-[0-9]+)?", folder):
            return (f"the folder name {folder} is kept for the published {what.title}",
                    "only installing the published models puts a model there, once the download matches figshare's "
                    "checksum")
        same = kind == what.kind and backbone == what.backbone and (
            kind == "backbone" or (drug or "").upper() == (what.drug or "").upper())
        if folder == base and not same:
            model = (f"a {BACKBONE_TITLES[what.backbone]} drug model of {what.drug}" if what.kind == "classifier"
                     else f"a {BACKBONE_TITLES[what.backbone]} pretrained backbone")
            return (f"the folder name {folder} is where the published {what.title} goes",
                    f"only {model} may take it (as the published checkpoint imported by hand does)")
    return None


def refuse_reserved_name(folder: str, name: str | None, *, kind: str, backbone: str, drug: str | None,
                         nothing: str, hint: str, app_hint: str) -> None:
    """Raise :class:`InputError` when :func:`reserved_name_problem` finds one (``nothing``: what was
    not done, e.g. "imported"; ``hint``/``app_hint``: what to give instead, CLI and app)."""
    kept = reserved_name_problem(folder, name, kind=kind, backbone=backbone, drug=drug)
    if kept is not None:
        raise InputError(f"{kept[0][0].upper()}{kept[0][1:]}: {kept[1]}. Nothing was {nothing}.", hint,
                         app_hint=app_hint)


@dataclass(frozen=True)
class PublishedFile:
    name: str
    size: int
    url: str
    md5: str | None

    @property
    def recognised(self) -> Recognised | None:
        return KNOWN.get(self.name)


def api_url() -> str:
    return settings()["figshare_api"]


def _get(url: str, timeout: float = TIMEOUT_SECONDS):
    request = urllib.request.Request(url, headers={"User-Agent": "scATD-Studio", "Accept": "application/json"})
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (an https URL from the configuration)


#: The app's next step when figshare cannot be listed: the page shows :func:`manual_steps` under it.
APP_BY_HAND = "Download the checkpoints by hand instead, from the addresses below, and import them."


def manual_command(name: str, what: Recognised) -> str:
    """The ``scatd import-checkpoint`` command that imports the published file ``name`` by hand, as
    :func:`install` does: its backbone, its drug (a drug model only; a pretrained backbone has
    none) and, for Dist_VAE, the gene list."""
    parts = ["scatd import-checkpoint", name, "--backbone", what.backbone]
    if what.kind == "classifier" and what.drug:
        parts += ["--drug", what.drug]
    if what.backbone == "dist_vae":
        parts += ["--genes", GENE_LIST]
    return " ".join(parts)


@dataclass(frozen=True)
class ManualSteps:
    """What to do by hand when figshare cannot be reached, in parts a page can show as links and code:
    ``links`` (label, address), ``commands`` (what the file is, its import command), ``note``."""
    links: tuple[tuple[str, str], ...]
    commands: tuple[tuple[str, str], ...]
    note: str


def manual_steps() -> ManualSteps:
    """The parts of :func:`manual_instructions`: the addresses to download from and one import command a file."""
    return ManualSteps(
        links=((f"the scATD checkpoints on figshare (article {FIGSHARE_ARTICLE})", FIGSHARE_URL),
               (f"the gene list {GENE_LIST} (for the Dist_VAE ones)", settings()["gene_list_url"])),
        commands=tuple((what.title, manual_command(name, what))
                       for name, what in KNOWN.items() if what.kind in ("classifier", "backbone")),
        note="Only the first is a drug model that predicts; the pretrained backbones are for training drug "
             "models (scatd train --backbone-bundle).")


def manual_instructions() -> str:
    """What to download by hand and how to import each file, when figshare cannot be reached (the
    command line's wording; the app shows :func:`manual_steps` as links and code)."""
    steps = manual_steps()
    commands = "; ".join(f"{title}: `{command}`" for title, command in steps.commands)
    return (f"Download the checkpoints you need by hand from {FIGSHARE_URL} and, for the Dist_VAE ones, the gene "
            f"list {GENE_LIST} ({settings()['gene_list_url']}); then import each on the Model library page "
            f"(upload) or with the command given for it, from the folder holding the files. {commands}. "
            + steps.note)


def list_files(article: int = FIGSHARE_ARTICLE, api: str | None = None) -> list[PublishedFile]:
    """The files of the article (name, size, download address, MD5), from figshare's public API."""
    url = f"{(api or api_url()).rstrip('/')}/articles/{int(article)}/files?page_size=1000"
    try:
        with _get(url) as response:
            raw = response.read(16 << 20)
        entries = json.loads(raw)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise InputError(f"figshare could not be reached ({getattr(exc, 'reason', exc)}).",
                         manual_instructions(), app_hint=APP_BY_HAND) from None
    if not isinstance(entries, list):
        raise InputError("figshare answered with something that is not a file list.", manual_instructions(),
                         app_hint=APP_BY_HAND)
    files = []
    for e in entries:
        if isinstance(e, dict) and e.get("name") and e.get("download_url"):
            files.append(PublishedFile(name=str(e["name"]), size=int(e.get("size") or 0), url=str(e["download_url"]),
                                       md5=e.get("computed_md5") or e.get("supplied_md5") or None))
    return files


def download(file: PublishedFile, folder: Path, progress: Callable[[float, str], None] | None = None) -> Path:
    """Download ``file`` into ``folder``, refusing more bytes than it declares or than the upload
    limit, and checking its MD5 against figshare's. Returns the path (complete, or nothing)."""
    cap = limits().max_upload_bytes
    if file.size > cap:
        raise InputError(f"{file.name} is {file.size / 2**20:,.0f} MB, over the server's limit of "
                         f"{cap / 2**20:,.0f} MB.", "Ask the administrator to raise limits.max_upload_mb in the configuration file "
                         "(or SCATD_MAX_UPLOAD_MB).")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / Path(file.name).name
    digest = hashlib.md5()  # noqa: S324 (figshare publishes MD5; this checks integrity, not secrecy)
    fd, tmp = tempfile.mkstemp(prefix=".download-", dir=folder)
    done = 0
    try:
        with os.fdopen(fd, "wb") as out, _get(file.url, timeout=60) as response:
            while chunk := response.read(1 << 20):
                done += len(chunk)
                if done > cap or (file.size and done > file.size):
                    raise InputError(f"{file.name} is larger than figshare says ({done:,} bytes so far); it was "
                                     "refused.", "Try again later, or download it by hand: " + FIGSHARE_URL,
                                     app_hint="Try again later, or download it by hand from figshare (the link "
                                              "above) and import it under Import an scATD checkpoint.")
                digest.update(chunk)
                out.write(chunk)
                if progress is not None and file.size:
                    progress(done / file.size, f"{file.name}: {done / 2**20:,.1f} of {file.size / 2**20:,.1f} MB")
        if file.size and done != file.size:
            raise InputError(f"The download of {file.name} stopped at {done:,} of {file.size:,} bytes.",
                             "Try again; the connection was interrupted.")
        if file.md5 and digest.hexdigest() != file.md5.lower():
            raise InputError(f"{file.name} does not match figshare's checksum (MD5); it was not used.",
                             "Try again; the download was corrupted on the way.")
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError) as exc:
        raise InputError(f"The download of {file.name} failed ({getattr(exc, 'reason', exc)}).",
                         manual_instructions()) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _gene_list(files: list[PublishedFile], folder: Path, progress) -> Path:
    published = next((f for f in files if f.name == GENE_LIST), None)
    if published is not None:
        return download(published, folder, progress)
    source = settings()["gene_list_url"]
    return download(PublishedFile(GENE_LIST, 0, source, None), folder, progress)


def _place(base: Path, url: str, sha256: str | None) -> tuple[bool, Path, list]:
    """Where the published checkpoint downloaded from ``url`` (of ``sha256`` once downloaded) is, or goes.

    ``(True, folder, [])`` when ``folder`` holds it already: installed from that address, or
    imported by hand from the same file. Else ``(False, folder, others)``: the first free folder
    of ``base``, ``base_published``, ``base_published-2`` ..., and what holds the ones before it
    (another model, e.g. someone's own checkpoint of that drug and backbone imported without a
    display name, which takes the published model's default folder ``DRUG_backbone``)."""
    others, k = [], 1
    folder = base
    while folder.exists():
        try:
            bundle = load_bundle(folder)
        except ScatdError:
            bundle = None
        prov = (bundle.manifest.get("provenance") or {}) if bundle is not None else {}
        if bundle is not None and (prov.get("source_url") == url or (sha256 and prov.get("source_sha256") == sha256)):
            return True, folder, []
        others.append((folder, bundle))
        folder = base.with_name(f"{base.name}_published" + (f"-{k}" if k > 1 else ""))
        k += 1
    return False, folder, others


def _installed_already(name: str, folder: Path, installed: list) -> NameTaken:
    bundle = load_bundle(folder)
    return NameTaken(f"{name} is installed already: the model library's {folder.name} already exists and holds it "
                     f"({who_made(bundle)}); nothing was changed" + (
                         f", and {counted(len(installed), 'model')} before it {'was' if len(installed) == 1 else 'were'} "
                         "installed." if installed else "."),
                     f"It is {folder}. To install it again, remove that model first (scatd models remove "
                     f"{folder.name} --yes).",
                     app_hint="To install it again, an administrator removes that model first "
                              "(Remove a model, below).")


def install(names: list[str], *, files: list[PublishedFile] | None = None, library: str | Path | None = None,
            user: str | None = None, progress: Callable[[float, str], None] | None = None,
            notice: Callable[[str], None] | None = None) -> list:
    """Download the named checkpoints (and the gene list Dist_VAE needs) and import them.

    Returns the installed :class:`~scatd_core.bundle.Bundle` objects. A checkpoint already
    installed (from the same address, or imported by hand from the same file: its sha256) is
    refused, said, and nothing is replaced. Each goes to the library folder ``DRUG_backbone``;
    when another model holds that folder (e.g. someone's own checkpoint of that drug and backbone,
    imported without a display name), to ``DRUG_backbone_published`` instead, and ``notice`` is
    called with what holds the folder and where the published model went.
    """
    files = files if files is not None else list_files()
    by_name = {f.name: f for f in files}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise InputError(f"The published article has no file named {', '.join(unknown)}.",
                         f"Its files: {', '.join(sorted(by_name)) or 'none'}.")
    say = progress or (lambda f, m: None)
    installed = []
    with tempfile.TemporaryDirectory(prefix="scatd-published-") as tmp:
        folder = Path(tmp)
        for i, name in enumerate(names):
            what = by_name[name].recognised
            if what is None or what.kind not in ("classifier", "backbone"):
                raise InputError(f"{name} is not a checkpoint scATD Studio recognises.",
                                 "Download it by hand and import it with its backbone and drug on the Model "
                                 "library page.")
            step = (lambda f, m, i=i: say((i + f) / len(names), m))
            # the folder is DRUG_backbone (the display name below is made here, not chosen by the user), unless
            # another model holds it
            base = Path(library or model_library_dir()) / install_folder(what)
            url = by_name[name].url
            there, out, _ = _place(base, url, None)
            if there:  # installed from figshare before: nothing to download
                raise _installed_already(name, out, installed)
            pth = download(by_name[name], folder, step)
            genes = _gene_list(files, folder, step) if what.backbone == "dist_vae" else None
            there, out, others = _place(base, url, sha256_file(pth))
            if there:  # imported by hand from the same file
                raise _installed_already(name, out, installed)
            try:
                bundle = import_checkpoint(
                    pth, what.backbone, drug=what.drug, genes=genes, out=out,
                    name=f"{what.title} ({PUBLISHED_MARK})", provenance={"source_url": url, "imported_by": user},
                    published=True)  # its folder and name are the ones kept for it
            except NameTaken:  # another install or import took the folder meanwhile
                raise NameTaken(f"The model library's {out.name} was taken by another model while {name} was being "
                                "installed; it was not installed" + (
                                    f" ({counted(len(installed), 'model')} before it "
                                    f"{'was' if len(installed) == 1 else 'were'})." if installed else "."),
                                "Try again: it then goes to a free folder, or says that it is installed already.",
                                app_hint="Try again.") from None
            installed.append(bundle)
            if others and notice is not None:
                held = "; ".join(f"{f.name} holds " + (f"another model, {b.name!r} ({who_made(b)})" if b is not None
                                                       else "a folder that is not a usable model")
                                 for f, b in others)
                notice(f"The published {what.title} was installed as {out.name}, not {base.name}: {held}. "
                       f"Choose it by its folder name {out.name}.")
    say(1.0, f"Installed {counted(len(installed), 'published model')}")
    return installed
