"""What every sub-command shares: messages, progress, argument types and finding a bundle.

Nothing here imports torch or the science stack, so ``scatd --help`` stays instant.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from scatd_core._words import cli_words, counted, percent
from scatd_core.errors import ScatdError

#: Choices the parsers offer; the core checks them again (tests keep the two in step).
BACKBONES = ("dist_vae", "vae_sf", "vae_gf")
DEVICES = ("auto", "cpu", "cuda")
#: ``--device``'s help (predict, report, explain, train, train-panel).
DEVICE_HELP = ("where the networks run: auto (default) takes the server's setting (server.device / SCATD_DEVICE), "
               "whose own auto is the GPU when there is one, else the CPU; cuda is refused on a machine without a GPU")
ORIENTATIONS = ("auto", "cells_x_genes", "genes_x_cells")
BETA_MODES = ("shared_with_head", "separate")
BASELINES = ("zero", "mean", "random", "mix")
TARGETS = ("logit", "raw_logit", "prob")
SCFOUNDATION_KEYS = ("rde", "cell")
LEVELS = ("auto", "genes", "features")


_QUIET = {"on": False, "last_shown": False}
#: what ``--quiet`` still prints: warnings and errors (also a panel drug's "DRUG: warning: ..."), and interruptions
_LOUD = re.compile(r"^(?:[^:\n]{1,80}: )?(?:warning|error|interrupted)\b")


def quiet(on: bool) -> None:
    """``--quiet``: from now on :func:`say` prints only warnings and errors (and the indented lines
    that continue them)."""
    _QUIET.update(on=bool(on), last_shown=False)


def say(msg: str = "") -> None:
    """A message for the person at the terminal (stderr; stdout is kept for results); with
    ``--quiet`` (:func:`quiet`), only warnings and errors."""
    if _QUIET["on"]:
        loud = bool(_LOUD.match(msg)) or (_QUIET["last_shown"] and msg.startswith("  "))
        _QUIET["last_shown"] = loud
        if not loud:
            return
    print(cli_words(msg), file=sys.stderr, flush=True)


def add_pipeline_arguments(p: argparse.ArgumentParser) -> None:
    """``--strict``, ``--json`` and ``--quiet``: for scripts and pipelines (Snakemake, Nextflow)."""
    g = p.add_argument_group("pipelines")
    g.add_argument("--strict", action="store_true",
                   help="exit with code 4, not 0, when the run finished but some cells were not scored or some "
                        "drugs of a panel were skipped (the reason is printed; the files are still written)")
    g.add_argument("--json", "--summary-json", dest="summary_json", metavar="FILE",
                   help="also write a small JSON summary of the run here (version, command, input, model(s), "
                        "threshold and how it was set, cells read / scored / not scored and why, cells called "
                        "resistant, warnings, files written, exit code), also when the run fails; never one of the run's "
                        "input or output files, and an existing file only with --overwrite")
    g.add_argument("--quiet", action="store_true", help="print only warnings and errors on stderr")


def unscored_reasons(adata, key: str | None = None, label: str = "") -> list[str]:
    """Why some cells of a finished prediction were not scored (the QC filter and ``--mask`` aside:
    cells the user chose to leave out), one line per reason; ``[]`` when every usable cell was scored."""
    from scatd_core._keys import result_keys
    from scatd_core.inputs import REASON_TEXT

    info = adata.uns.get(result_keys(key).run) or {}
    n_cells = int(info.get("n_cells", 0))
    return [f"{label}{int(n):,} of {n_cells:,} cells not scored: {REASON_TEXT.get(k, k)}"
            for k, n in (info.get("not_scored") or {}).items() if int(n)]


def strict_problems(args, adata) -> list[str]:
    """What ``--strict`` refuses in a finished run: unscored cells, and a panel's skipped drugs."""
    from scatd_core import _keys

    if _keys.PANEL in adata.uns:
        from scatd_core import panel

        lines = [f"drug skipped: {line}" for line in panel.not_scored_lines(adata)]
        for m in panel.members(adata):
            lines += unscored_reasons(adata, m.key, label=f"{m.drug}: ")
        return lines
    return unscored_reasons(adata)


def finish_run(args, adata, outputs=()) -> int:
    """The end of a predict / report / explain run: its summary recorded for ``--json``, and 0, or 4
    with ``--strict`` when some cells were not scored or some drugs of a panel were skipped."""
    problems = strict_problems(args, adata)
    record_run(args, adata, outputs, problems)
    if problems and getattr(args, "strict", False):
        say("error: --strict: the run finished and its files are written, but not everything was scored:")
        for line in problems:
            say(f"  - {line}")
        return 4
    return 0


def record_run(args, adata, outputs, problems) -> None:
    """What ``--json`` reports of a finished prediction (kept on ``args`` until the exit code is known)."""
    from scatd_core import _keys
    from scatd_core._keys import result_keys

    from scatd_core.predict import summary as counts_of

    def one(key=None):
        info = adata.uns.get(result_keys(key).run) or {}
        thr = info.get("threshold") or {}
        try:
            n_resistant = counts_of(adata, key_added=key)["n_resistant"]
        except (KeyError, TypeError):  # a backed run whose labels are not in memory
            n_resistant = None
        return {"n_scored": info.get("n_scored"), "not_scored": {k: int(v) for k, v in
                                                                 (info.get("not_scored") or {}).items() if int(v)},
                "n_filtered": (info.get("qc") or {}).get("n_filtered"),
                "n_called_resistant": n_resistant,
                "threshold": {k: thr.get(k) for k in ("value", "source", "detail", "calibrated")},
                "warnings": [cli_words(w) for w in info.get("warnings") or []]}

    summary = {"n_cells_read": int(adata.n_obs), "problems": list(problems)}
    if _keys.PANEL in adata.uns:
        from scatd_core import panel

        summary["drugs"] = {m.drug: {"model": m.folder, **one(m.key)} for m in panel.members(adata)}
        summary["drugs_skipped"] = panel.not_scored_lines(adata)
    else:
        summary.update(one())
    summary["outputs"] = [str(p) for p in outputs if p]
    args.run_summary = summary


def check_summary(args, path) -> None:
    """``--json FILE``, checked before anything runs as every other output is: refused (whatever
    ``--overwrite`` says) when it is one of the run's inputs (``--input``, ``--biomart``, ``--obs``),
    a file in a model's folder, or a file the run writes itself (the command's ``outputs(args)``:
    ``--output``, ``--h5ad``, the report's files ...); an existing file only with ``--overwrite``.
    Only a path that passed is written (:func:`write_summary` writes ``args.summary_file``): a
    refused one is left as it was, also by the refusal's own summary."""
    args.summary_file = None
    if not path:
        return
    inputs = [getattr(args, "input", None), getattr(args, "biomart", None), getattr(args, "obs", None)]
    check_output(path, "--json", inputs=inputs, existing=False)
    target = Path(path)
    for folder in _model_folders(args):
        if _inside(target, folder):
            raise ScatdError(f"--json {path} is inside the model folder {folder}; a model's files are never replaced.",
                             "Write the summary somewhere else, e.g. --json summary.json; nothing was run.")
    outputs = getattr(args, "outputs", None)
    for option, paths in (outputs(args) if callable(outputs) else {}).items():
        for other in (paths if isinstance(paths, (list, tuple)) else [paths]):
            if other and _same_file(target, Path(other)):
                raise ScatdError(f"--json and {option} name the same file {other}.",
                                 "Give the summary its own file name, e.g. --json summary.json; nothing was run.")
    check_output(path, "--json", overwrite=getattr(args, "overwrite", False))
    args.summary_file = str(path)


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.expanduser().resolve().relative_to(folder.expanduser().resolve())
    except ValueError:
        return False
    return True


def _model_folders(args) -> list[Path]:
    """The folders of the run's ``--model`` (a folder or a name in the library) and, for ``--panel``,
    every model folder of the library (never written into by a run)."""
    from scatd_core.config import model_library_dir

    library = getattr(args, "library", None)
    root = Path(library).expanduser() if library else model_library_dir()
    models = getattr(args, "model", None)
    folders = []
    for model in (models if isinstance(models, list) else [models]):
        if model:
            folders.append(Path(model).expanduser() if Path(model).expanduser().is_dir() else root / str(model))
    if getattr(args, "panel", None) and root.is_dir():
        folders += [p for p in root.iterdir() if p.is_dir()]
    return folders


def write_summary(args, code: int, exc: Exception | None = None) -> int:
    """``--json FILE``: the run's summary, written atomically (also when it failed); returns ``code``.
    Only a file :func:`check_summary` passed is written."""
    path = getattr(args, "summary_file", None)
    if not path:
        return code
    import json

    from scatd_core import __version__
    from scatd_core._output import write_file

    models = getattr(args, "model", None)
    models = models if isinstance(models, list) else [models] if models else []
    doc = {"scatd_version": __version__, "command": args.command, "argv": getattr(args, "argv", sys.argv[1:]),
           "input": getattr(args, "input", None), "models": getattr(args, "panel_models", None) or models,
           **({"panel": args.panel} if getattr(args, "panel", None) else {}),
           "n_cells_read": getattr(args, "n_cells_read", None),  # said once the input is read, also if refused then
           **getattr(args, "run_summary", {}), "exit_code": int(code),
           **({"error": getattr(exc, "message", str(exc)), "hint": getattr(exc, "hint", None)} if exc else {})}
    try:
        write_file(path, json.dumps(doc, indent=2, default=str) + "\n")
    except OSError as err:
        say(f"warning: --json {path}: not written ({err})")
    except ScatdError as err:  # a file that appeared under its name meanwhile (another run): kept as it was
        say(f"warning: --json {path}: not written: {err.message} {err.hint or ''}".rstrip())
    return code


_NUMBERS = re.compile(r"\d[\d,.]*")


class Progress:
    """``progress(fraction, message)`` for the terminal: one rewritten line on a terminal; in a
    log (stderr not a terminal), a line per 10 %, whenever the phase (the message before its first
    " · ", its numbers aside: "1,024 of 100,000 cells" and "2,048 of 100,000 cells" are one phase)
    changes, at least every :attr:`QUIET_SECONDS` while it runs, and the last line."""

    #: In a log: a line at least this often (seconds) while a slow step stays within one 10 %.
    QUIET_SECONDS = 30.0

    def __init__(self, label: str = ""):
        self.label = f"{label}: " if label else ""
        self.tty = sys.stderr.isatty()
        self.phase = None
        self.decile = -1
        self.said_at = time.monotonic()

    def __call__(self, fraction: float, message: str = "") -> None:
        pct = int(min(max(fraction, 0.0), 1.0) * 100)
        if _QUIET["on"]:  # --quiet: no progress, on a terminal either
            return
        if self.tty:
            print(f"\r{self.label}{pct:3d}% {message[:110]:<110}", end="", file=sys.stderr, flush=True)
            if fraction >= 1:
                print(file=sys.stderr)
            return
        phase, decile = _NUMBERS.sub("#", message.split(" · ")[0]), pct // 10
        now = time.monotonic()
        if phase != self.phase or decile != self.decile or fraction >= 1 or now - self.said_at >= self.QUIET_SECONDS:
            say(f"{self.label}{pct}% {message}")
            self.said_at = now
        self.phase, self.decile = phase, decile

    def note(self, message: str) -> None:
        """A line of its own (a shard run again on Ray, say), not overwritten by the progress line."""
        if self.tty:
            print(f"\r{' ' * 120}\r", end="", file=sys.stderr)
        say(f"{self.label}{message}")


class _MainNameFormatter(argparse.HelpFormatter):
    """Help that lists an option with a second spelling (:func:`add_spelled_both_ways`) under its
    main name only; the help text says the other."""

    def _format_action_invocation(self, action):
        main = getattr(action, "main_name", None)
        if main is None:
            return super()._format_action_invocation(action)
        names, action.option_strings = action.option_strings, [main]
        try:
            return super()._format_action_invocation(action)
        finally:
            action.option_strings = names


def add_spelled_both_ways(p: argparse.ArgumentParser, main: str, other: str, *, help: str, **kwargs):
    """An option that takes two spellings (``--output`` and ``--out``: ``scatd predict`` and
    ``scatd report`` once took one each, and a biologist types either): ``main`` in the help,
    with "(or ``other``)" after its text; both set the same value."""
    action = p.add_argument(main, other, dest=main.lstrip("-").replace("-", "_"), help=f"{help} (or {other})",
                            **kwargs)
    action.main_name = main
    p.formatter_class = _MainNameFormatter
    return action


def whole_number(minimum: int, maximum: int | None = None, why: str = ""):
    """An argparse type: a whole number of at least ``minimum`` and, when given, at most
    ``maximum`` (argparse names the option; ``why``: words after the refusal of a larger one)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum:,}, got {value:,}" + (f"; {why}" if why else ""))
        return value

    parse.__name__ = f"whole number >= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
    return parse


positive_int = whole_number(1)
at_least_two = whole_number(2)


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def fmt(v) -> str:
    return "n/a" if v is None or v != v else f"{v:.3f}"


def resolve_bundle(name_or_path: str, library: str | None = None):
    """A bundle folder, or the name of a bundle in the model library."""
    from scatd_core.bundle import list_library, load_bundle
    from scatd_core.config import model_library_dir

    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return load_bundle(path)
    root = Path(library).expanduser() if library else model_library_dir()
    candidate = root / name_or_path
    if candidate.is_dir() and "/" not in name_or_path and ".." not in name_or_path:
        return load_bundle(candidate)
    entries = [e for e in list_library(root) if e.ok]
    names = [e.path.name for e in entries]
    named = [e.path.name for e in entries if e.bundle.name == name_or_path]
    if named:  # a display name (a model trained before the folder followed it): say which folder it is
        raise ScatdError(f"No model bundle at {name_or_path!r}: --model takes the model's folder in the library, and "
                         f"'{name_or_path}' is the display name of the model in "
                         + (f"folder {named[0]}." if len(named) == 1 else f"the folders {', '.join(named)}."),
                         f"Give --model {named[0]}" + (" (or another of those folders)." if len(named) > 1 else ".")
                         + " `scatd models` lists each model's folder first.")
    raise ScatdError(f"No model bundle at {name_or_path!r}.",
                     f"Installed in {root}: {', '.join(names) if names else 'none'}. "
                     "Import one with `scatd import-checkpoint`, or train one with `scatd train`.")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return a.expanduser().resolve() == b.expanduser().resolve()


def check_library_writable(library) -> None:
    """The model library (``--library``, else the configured one) takes a new model, checked before
    training (:func:`scatd_core.bundle.library_write_problem`): a trained model that cannot be saved
    is lost."""
    from scatd_core.bundle import library_write_problem
    from scatd_core.config import model_library_dir

    if problem := library_write_problem(library):
        root = Path(library).expanduser() if library else model_library_dir()
        source = "--library" if library else "the model library (paths.library in config.toml, or SCATD_MODEL_LIBRARY)"
        raise ScatdError(f"The model library {root} cannot be written by this account: {problem}. The model would "
                         "be trained and then could not be saved, so nothing was trained.",
                         f"Give --library a folder you can write, or ask the administrator for write access to "
                         f"{source}.")


def _check_writable(folder: Path, option: str, path, *, create: bool = False) -> None:
    """``folder`` exists and takes a new file (a real try: permissions, read-only and special file
    systems all show). ``create``: ``folder`` is the output folder itself, which the command may
    create, but only inside a folder that exists. A missing folder is refused, never created: a
    typo in a folder's name (``--output /reslts/x.csv``) would otherwise put the results somewhere
    nobody looks for them."""
    folder = folder.expanduser()
    if create and not folder.exists() and not folder.is_symlink():
        folder = folder.parent
    if not folder.exists():
        raise ScatdError(f"{option} {path}: the folder {folder} does not exist: create it first or give another "
                         f"{option}.", "Nothing was run. Check the folder's name for a typo; "
                                       f"`mkdir -p {folder}` creates it.")
    existing = folder.absolute()
    if not existing.is_dir():
        raise ScatdError(f"{option} {path}: {existing} is a file, not a folder.", "Give a path inside a folder.")
    try:
        fd, probe = tempfile.mkstemp(prefix=".scatd-write-check-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ScatdError(f"{option} {path} cannot be written: nothing can be created in {existing} "
                         f"({exc.strerror or exc}).", "Give a path in a folder you can write to.") from None


#: ``--library``'s default, as :func:`scatd_core.config.settings` resolves it (the variable over the file).
LIBRARY_DEFAULT = "default: $SCATD_MODEL_LIBRARY, else paths.library in config.toml, else $SCATD_HOME/models"
LIBRARY_HELP = f"model library folder ({LIBRARY_DEFAULT})"

OVERWRITE_HELP = "replace output files that already exist (without it, an existing file is never replaced)"


def add_overwrite_argument(p: argparse.ArgumentParser, help: str = OVERWRITE_HELP) -> None:
    """``--overwrite``: the only way a command replaces a file of the user's (:func:`check_output`)."""
    p.add_argument("--overwrite", action="store_true", help=help)


def check_output(path, option: str, *, inputs=(), folder_files: tuple[str, ...] | None = None,
                 overwrite: bool = False, existing: bool = True) -> Path:
    """Refuse an output that would overwrite an input file or cannot be written, before anything
    is computed. ``folder_files``: the output is a folder these files are written into. An output
    file that exists already (or, for a folder, any of ``folder_files`` in it) is refused unless
    ``overwrite`` (``--overwrite``): a run never silently replaces a file of the user's
    (``existing=False``: not checked here; :func:`refuse_existing` does it later)."""
    if str(path).strip() == "-":
        what = "a folder name" if folder_files is not None else "a file name"
        raise ScatdError(f"{option} -: writing to standard output ('-') is not supported; give {what}.",
                         f"The results go into files (nothing was run), e.g. {option} "
                         f"{'results' if folder_files is not None else 'predictions.csv'}.")
    for source in inputs:
        if source and str(source).strip() == "-":
            raise ScatdError(f"- as an input: {STDIN_WORDS}.", "Nothing was run.")
    out = Path(path)
    targets = [out / name for name in folder_files] if folder_files is not None else [out]
    for source in (Path(p) for p in inputs if p):
        if _same_file(source, out) or any(_same_file(source, t) for t in targets):
            raise ScatdError(f"{option} {path} would overwrite the input file {source}.",
                             "Name another output, so your data stays as it is.")
    if folder_files is not None and out.exists() and not out.is_dir():
        raise ScatdError(f"{option} {path} is an existing file; {option} names the folder to write the files into.",
                         "Give a new or existing folder.")
    for target in targets:
        if target.is_dir():
            raise ScatdError(f"{option}: {target} is a folder, not a file.", "Give a file name.")
    there = [t for t in targets if t.exists() or t.is_symlink()] if existing else []
    if there and not overwrite:
        if folder_files is None:
            raise ScatdError(f"{path} already exists; choose another name or add --overwrite.",
                             f"{option} names it; nothing was run, so it is as it was.")
        names = ", ".join(t.name for t in there)
        raise ScatdError(f"{path} already holds {names} (from an earlier run); choose another folder or add "
                         "--overwrite.", f"{option} names that folder; nothing was run, so its files are as they were.")
    if folder_files is not None:  # the folder itself may be new; the folder it is in must exist
        _check_writable(out, option, path, create=True)
    else:
        _check_writable(out.parent, option, path)
    from scatd_core._output import claim

    for target in targets:  # never replaced without --overwrite, not even by a file that appears meanwhile
        claim(target, overwrite)
    return out


def refuse_existing(args, outputs: dict[str, object]) -> None:
    """An output file of ``{option: path}`` that exists already is refused unless ``args.overwrite``
    (:func:`check_output`'s check alone: a command checks its arguments first, then this, then works)."""
    for option, path in outputs.items():
        if path:
            check_output(path, option, overwrite=getattr(args, "overwrite", False))


def check_outputs(args, outputs: dict[str, object], inputs=None, *, existing: bool = True) -> None:
    """:func:`check_output` for each ``{option: path}`` given (files, not folders), against
    ``inputs`` (default ``--input``, ``--biomart`` and ``--obs``); two options may not name the same file.
    An existing file is replaced only with ``args.overwrite`` (``--overwrite``)."""
    if inputs is None:
        inputs = [getattr(args, "input", None), getattr(args, "biomart", None), getattr(args, "obs", None)]
    given = {option: Path(path) for option, path in outputs.items() if path}
    for option, path in given.items():
        check_output(path, option, inputs=inputs, overwrite=getattr(args, "overwrite", False), existing=existing)
    options = list(given)
    for i, first in enumerate(options):
        for second in options[i + 1:]:
            if _same_file(given[first], given[second]):
                raise ScatdError(f"{first} and {second} name the same file {given[first]}.",
                                 "Give each output its own file name.")


STDIN_WORDS = ("reading from standard input ('-') is not supported; give a file name (a pipe or process "
               "substitution can be saved to a file first)")


def input_file(text: str) -> str:
    """An input file option's value: ``-`` (standard input) is refused by the option, not read as a
    file named "-" ("- was not found")."""
    if text.strip() == "-":
        raise argparse.ArgumentTypeError(STDIN_WORDS)
    return text


def add_data_arguments(p: argparse.ArgumentParser, output: bool = True, several: bool = False) -> None:
    """``--model``, ``--input`` and the reading options shared by predict, explain and report
    (``several``: ``--model`` may be repeated, for a panel of models)."""
    if several:
        p.add_argument("--model", action="append", help="bundle folder, or the name of its folder in the model "
                                                        "library (`scatd models` lists it first); repeat it to score a panel of models in one run")
    else:
        p.add_argument("--model", required=True, help="bundle folder, or the name of its folder in the model library "
                                                                 "(`scatd models` lists it first)")
    p.add_argument("--input", required=True, type=input_file, help="single-cell data: h5ad, 10x h5/mtx/zip, CSV/TSV(.gz), "
                                                  "loom, or .npy embeddings")
    p.add_argument("--orientation", default="auto", choices=ORIENTATIONS,
                   help="CSV/TSV orientation (default: detected)")
    p.add_argument("--biomart", type=input_file, help="a BioMart table (Gene stable ID, Gene name) to map Ensembl IDs to symbols")
    p.add_argument("--matrix", default="auto", metavar="X|raw|layer:NAME",
                   help="which matrix of an h5ad the models read: X, raw (adata.raw) or layer:NAME (e.g. "
                        "layer:counts); default auto: the one that suits the model best (the raw counts in "
                        "layers['counts'] or adata.raw when X holds scaled or z-scored values), said when it is not X")
    p.add_argument("--min-gene-coverage", type=probability, metavar="FRACTION",
                   help="least share of the model's genes the data must have, from 0 to 1 (default: the server's "
                        "limits.min_gene_coverage, 0.1 unless set); below it the prediction is refused. Lower it only "
                        "if you know the calls mean something with so many genes missing (filled with 0); 0 never "
                        "refuses")
    p.add_argument("--device", default="auto", choices=DEVICES, help=DEVICE_HELP)
    p.add_argument("--mask", metavar="COLUMN",
                   help="True/False obs column of the input: score only its True cells (e.g. scatd_qc_pass in an "
                        "annotated.h5ad from the app, whose QC filter it records); the others keep their row, "
                        "labelled 'filtered (QC)' for scatd_qc_pass, 'left out (mask)' for a column of your own")
    g = p.add_argument_group("VAE_sf / VAE_gf models on an expression file (the embeddings are computed first)")
    g.add_argument("--max-genes", type=positive_int,
                   help="scFoundation: most expressed genes per cell (default 8000; a cell with more is refused)")
    g.add_argument("--scfoundation-key", default="rde", choices=SCFOUNDATION_KEYS,
                   help="scFoundation model of models.ckpt: rde (scATD's; default) or cell")


def read_input(args, backed="auto"):
    """The ``--input`` file as an AnnData with its gene IDs annotated (and ``--biomart`` applied);
    ``backed=True``: an .h5ad's X stays on disk whatever its size."""
    from scatd_core import genes, io

    adata = io.read(args.input, orientation=args.orientation, backed=backed)
    args.n_cells_read = int(adata.n_obs)  # --json: also when the data are refused after this
    if args.biomart:  # its warning on unmapped Ensembl IDs goes when the table maps them
        genes.annotate_gene_ids(adata, biomart=args.biomart)
    features = "embedding features" if adata.uns[io.REPORT_KEY].get("format") == "npy" else "genes"
    say(f"Read {adata.n_obs:,} cells x {adata.n_vars:,} {features} from {Path(args.input).name}")
    ids = adata.uns[io.REPORT_KEY].get("gene_ids") or {}
    mapping = genes.id_mapping_text({k: v for k, v in ids.items() if k != "hint"})  # the hint: a warning below
    if mapping:  # as the Data page counts them: symbols by route (file columns, dictionary, --biomart)
        say(f"Gene identifiers: {mapping}")
    for w in adata.uns[io.REPORT_KEY].get("warnings", []):
        say(f"warning: {w}")
    if features == "genes":
        say_matrices(adata, getattr(args, "matrix", None))
    if getattr(args, "obs", None):  # before --label-column, --sample-column and --mask are checked
        for i, line in enumerate(io.cell_metadata_messages(io.add_cell_metadata(adata, args.obs))):
            say(("--obs " if i == 0 else "      ") + line)  # the first names the table
    return adata


def say_matrices(adata, choice: str | None) -> None:
    """Say what X holds (as the app's Data page) and the file's other matrices (adata.raw, count
    layers); record ``--matrix`` (checked: the file must have it) for the models to read."""
    from scatd_core import _keys, matrices
    from scatd_core.errors import InputError
    from scatd_core.preprocess import value_kind_words

    name = matrices.parse_choice(choice)
    found = matrices.candidates(adata, also=name)  # the count layers, adata.raw and a layer named by --matrix
    x = found[0]
    others = [c for c in found[1:] if c.name != "X"]
    say(f"Values: {value_kind_words(x.kind)} (X)" + ("; also " + ", ".join(matrices.describe(c) for c in others)
                                                      if others else "") + ".")
    rest = [str(k) for k in adata.layers.keys() if f"layer:{k}" not in {c.name for c in found}]
    if rest:
        say(f"note: {len(rest):,} other {'layer is' if len(rest) == 1 else 'layers are'} not looked at unless named "
            f"with --matrix layer:NAME (e.g. {', '.join(rest[:3])}).")
    if name is None:
        adata.uns.pop(_keys.MATRIX, None)  # --matrix auto: no choice, whatever the data held
    if name is not None:
        if name not in [c.name for c in found]:
            have = ", ".join(c.name for c in found)
            raise InputError(f"--matrix {choice}: the file has no such matrix (it has: {have}).",
                             f"Give one of them ({matrices.CHOICE_HELP}), or leave out --matrix.")
        adata.uns[_keys.MATRIX] = name
        c = next(c for c in found if c.name == name)
        say(f"--matrix {choice}: the models read {matrices.describe(c)}.")


def cell_mask(adata, args):
    """``--mask COLUMN`` as a boolean array over the cells (``None`` without it), checked and said."""
    if not getattr(args, "mask", None):
        return None
    from scatd_core._keys import QC_PASS, columns_text
    from scatd_core.predict import _mask_of

    columns = columns_text(adata.obs.columns, also=[QC_PASS])  # the app's QC filter is a mask; the rest is its own
    aside = any(str(c).startswith("scatd_") and str(c) != QC_PASS for c in adata.obs.columns)
    its = "its columns, scATD Studio's scatd_* aside" if aside else "its columns"  # not "no column" when there are
    mask = _mask_of(adata, args.mask, subject="The input",
                    missing_hint=f"Name a True/False column of its cell annotations ({its}: {columns}), "
                                 "or leave out --mask.",
                    nothing_left=f"obs['{args.mask}'] is False for every cell, so --mask leaves nothing to score.",
                    nothing_left_hint="Name another column, or leave out --mask.")
    from scatd_core.inputs import column_mask, mask_label, mask_reason_text

    say(f"--mask {args.mask}: scoring {int(mask.sum()):,} of {adata.n_obs:,} cells; the others keep their row, "
        f'labelled "{mask_label(args.mask)}", marked "{mask_reason_text(args.mask)}".')
    return column_mask(mask, args.mask)  # recorded by the run as the mask's name (uns['scatd']['qc']['mask'])


def add_label_arguments(p: argparse.ArgumentParser, use: str = "for evaluation") -> None:
    p.add_argument("--obs", metavar="FILE", type=input_file,
                   help="a cell metadata table (CSV/TSV: the cell IDs in the first column or in one named cell_id or "
                        "barcode, then columns such as response or sample) whose columns are added to the data's "
                        "obs, for --label-column, --sample-column and --mask (10x and matrix files carry none); "
                        "a name the data already has gets _meta appended")
    p.add_argument("--label-column", help=f"obs column with known responses, {use}")
    p.add_argument("--label-resistant",
                   help="the value of --label-column meaning resistant (needed unless the values are words "
                        "like resistant/sensitive; SCAD's 'response' is 1 = sensitive, so give 0)")


def drug_and_column(text: str, option: str, example: str) -> tuple[str, str]:
    """``DRUG=COLUMN`` (a label column and the drug whose response it records: ``train-panel
    --target-labels``, a panel's ``predict --label-column``) as ``(drug, column)``."""
    drug, sep, column = str(text).partition("=")
    if not sep or not drug.strip() or not column.strip():
        raise ScatdError(f"{option} {text!r} is not DRUG=COLUMN.", f"e.g. {option} {example}.")
    return drug.strip(), column.strip()


def check_columns(adata, args) -> None:
    """``--label-column`` and ``--sample-column`` name columns of the data's obs (checked before
    anything is computed, so a typo is not silently ignored)."""
    for option in ("label_column", "sample_column"):
        column = getattr(args, option, None)
        if column and column not in adata.obs:
            drug, _, named = str(column).partition("=")
            if option == "label_column" and named and named.strip() in adata.obs:  # a panel's DRUG=COLUMN
                raise ScatdError(f"--label-column {column} names a drug ({drug.strip()}): that form is for a panel "
                                 "(--model given more than once, or --panel).",
                                 f"With one model, give the column alone: --label-column {named.strip()}.")
            from scatd_core._keys import columns_text

            raise ScatdError(f"The data has no column {column!r} for --{option.replace('_', '-')}.",
                             f"Its columns: {columns_text(adata.obs.columns)}.")  # not the tool's own


def apply_label_direction(adata, args) -> str | None:
    """Record ``--label-resistant`` for ``--label-column`` (or check the words say it); the column."""
    from scatd_core.labels import label_direction, set_label_direction

    column = getattr(args, "label_column", None)
    if not column:
        return None
    check_columns(adata, args)
    resistant = args.label_resistant if args.label_resistant is not None else label_direction(adata, column)
    if resistant is None:
        from scatd_core.labels import label_counts

        values = ", ".join(f"{k} ({v})" for k, v in label_counts(adata.obs[column]).items())
        raise ScatdError(f"Which value of {column!r} means resistant? Its values: {values}.",
                         "Say it with --label-resistant VALUE.")
    how = "chosen"
    if args.label_resistant is None:
        say_label_direction(adata, column, resistant, "--label-resistant")
        from scatd_core._keys import LABEL_DIRECTIONS

        stored = adata.uns.get(LABEL_DIRECTIONS, {}).get(str(column))  # recorded with the data (the app)
        how = stored.get("how", "chosen") if isinstance(stored, dict) else "recognised from the words"
    set_label_direction(adata, column, resistant, how=how)
    return column


def say_label_direction(adata, column: str, resistant, option: str) -> None:
    """Tell which value of a label column was taken to mean resistant when the user did not say
    (recorded with the data, e.g. by the app, or recognised from its words), and how to say otherwise."""
    from scatd_core._keys import LABEL_DIRECTIONS
    from scatd_core.labels import label_counts

    recorded = str(column) in adata.uns.get(LABEL_DIRECTIONS, {})
    others = [str(v) for v in label_counts(adata.obs[column]).index if str(v) != str(resistant)]
    say(f"Labels {column!r}: {resistant!r} taken to mean resistant"
        + (f", {others[0]!r} sensitive" if len(others) == 1 else "")
        + (f" (as recorded in the data's uns['{LABEL_DIRECTIONS}']" if recorded else " (from the words")
        + f"; give {option} VALUE to say otherwise).")


def _say_gene_coverage(adata, bundle, options: dict) -> None:
    """Before embedding: the counts the foundation model is given (X, or the file's raw counts
    when X is normalised; on either engine), how many of the data's genes it knows, with the
    low-coverage warning (nothing when the backbone is not installed: the run says why)."""
    from scatd_core.foundation import _embed

    state = _embed.probe(bundle.backbone, embedding_dim=bundle.architecture.input_dim)
    if not state.available:
        return
    given = _embed.counts_source(adata, bundle.backbone)[1]
    if given.get("note"):
        say(given["note"])
    if given.get("warning"):
        say(f"warning: {given['warning']}")
    extra = {"embedding_dim": bundle.architecture.input_dim} if bundle.backbone == "vae_gf" else {}
    cov = _embed.gene_coverage(adata, bundle.backbone, **extra, **{k: v for k, v in options.items() if k == "key"})
    say(f"Gene coverage: the foundation model knows {cov['n_matched']:,} of the data's {cov['n_data_genes']:,} "
        f"genes ({percent(cov['n_matched'] / max(cov['n_data_genes'], 1))}; of its {cov['n_model_genes']:,}).")
    if cov["warning"]:
        say(f"warning: {cov['warning']}")
    for warning in state.warnings:  # usable files, but not all as published (as `scatd doctor` and the Model page say)
        say(f"warning: {warning}")


def _say_embedding_estimate(adata, bundle, device: str, options: dict) -> None:
    """Before embedding: how long it should take (the Model page's estimate,
    :func:`scatd_core.foundation.estimate_seconds`); nothing when nothing is left to embed or the
    backbone cannot run (the run says why)."""
    from scatd_core._progress import duration
    from scatd_core.foundation import estimate_seconds

    extra = {"embedding_dim": bundle.architecture.input_dim} if bundle.backbone == "vae_gf" else {}
    try:
        est = estimate_seconds(adata, bundle.backbone, device=device, **extra, **options)
    except ScatdError:
        return
    if est["n_cells"]:
        say(f"Estimated embedding time: about {duration(est['seconds'])} for {est['n_cells']:,} cells "
            f"({est['n_tokens']:,} gene tokens) on {est['device']} (nothing run yet).")


def prepare_embeddings(adata, bundle, args) -> None:
    """VAE_sf/VAE_gf on an expression file: compute the foundation-model embeddings first (a no-op
    for Dist_VAE and for embedding files); cached in the AnnData, so an annotated h5ad skips it."""
    from scatd_core.foundation import ensure_embeddings, needs_embedding

    if not needs_embedding(adata, bundle):
        return
    from scatd_core.foundation._embed import probe, stored_width_note

    # embeddings of another width stored in the file: not used (without the backbone, the error says so)
    note = stored_width_note(adata, bundle)
    if note and probe(bundle.backbone, embedding_dim=bundle.architecture.input_dim).available:
        say(note)
    options = {}
    if bundle.backbone == "vae_sf":
        options["key"] = args.scfoundation_key
        if args.max_genes:
            options["max_genes"] = args.max_genes
    _say_gene_coverage(adata, bundle, options)
    from scatd_core._keys import FOUNDATION

    before = (adata.uns.get(FOUNDATION) or {}).get(bundle.backbone)  # embeddings stored with the data, if any
    before_seconds = before.get("seconds") if isinstance(before, dict) else None
    if getattr(args, "engine", "local") == "ray":
        from scatd_core import scaleout
        from scatd_core.config import settings

        # parts beside the prediction's: <output>.embeddings.parts/ (predict, explain); scatd report, which
        # has --out and keeps its prediction's parts in <out>/ray/predictions.parts/, in <out>/ray/ too
        output = getattr(args, "output", None) or Path(args.out) / "ray" / "predictions"
        record = scaleout.embed_ray(adata, bundle, device=args.device, output=output,
                                    shard_cells=args.shard_cells, workers=args.workers or settings()["scaleout_workers"],
                                    address=args.address or settings()["scaleout_address"],
                                    progress=Progress("Embedding on Ray"), **options)
    else:
        _say_embedding_estimate(adata, bundle, args.device, options)
        record = ensure_embeddings(adata, bundle, device=args.device, progress=Progress("Embedding"), **options)
    if record.get("note"):  # the backbone is not installed here: the embeddings stored with the data
        say(record["note"])
        return
    info = record["info"]
    cov = info["gene_coverage"]
    # the seconds are those the stored embeddings took in all: none were computed now when they are unchanged
    reused = before_seconds is not None and record.get("seconds") == before_seconds
    say(f"{info['model']} embeddings: {record['n_embedded']:,} of {adata.n_obs:,} cells "
        f"({cov['n_matched']:,} of the model's {cov['n_model_genes']:,} genes in the data) "
        + (f"reused from those stored with the data (computed earlier on {record['device']} in "
           f"{record['seconds']:.0f} s); none computed now." if reused else
           f"on {record['device']}, {record['seconds']:.0f} s."))
    from scatd_core.foundation._embed import not_embedded_text

    if cov.get("warning"):
        say(f"warning: {cov['warning']}")
    for reason, count in info["not_embedded"].items():
        say(f"warning: {counted(count)} not embedded: {not_embedded_text(bundle.backbone, reason)}.")
