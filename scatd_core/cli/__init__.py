"""The ``scatd`` command line: the same functions as the app, for scripts and servers.

One module per sub-command (``add(sub)`` registers it, ``run(args)`` runs it and returns the exit
code); heavy libraries are imported only when a command runs, so ``scatd --help`` is instant.
Every expected problem is a :class:`~scatd_core.errors.ScatdError`: it is printed as
``error: <what is wrong>`` plus a line saying what to do, and the exit code says which kind it
was (:data:`EXIT_CODES`, in ``scatd --help``): 2 for a usage error or an input that cannot be
read, 3 when the input was read but the model(s) cannot score it. Anything unexpected prints
one line too (exit 1); ``--debug`` shows the traceback for bug reports.
Every command but ``doctor`` (which lists them itself) first prints each configuration problem
(a value that was ignored, an unknown key) as one ``warning: configuration: ...`` line to stderr.
"""

from __future__ import annotations

# Only light imports here: ``scatd`` (and ``python -m scatd_core.cli``) import this module before
# :func:`main` runs, and a Ctrl+C or SIGTERM while it loads is handled only from main on; the
# sub-commands (and argparse) are imported inside main (:func:`build_parser`).
from scatd_core import __version__
from scatd_core.errors import DataNotScorable, ScatdError

#: The sub-commands' module names, in the order ``scatd --help`` lists them (:func:`commands`).
COMMAND_NAMES = ("predict", "report", "explain", "import_checkpoint", "convert_scfoundation", "models", "panel", "train",
                 "train_panel", "labels", "demo", "users", "doctor")


def commands() -> tuple:
    """The sub-command modules, in the order ``scatd --help`` lists them (imported when first asked for)."""
    import importlib

    return tuple(importlib.import_module(f"scatd_core.cli.{name}") for name in COMMAND_NAMES)


def __getattr__(name: str):
    if name == "COMMANDS":  # the sub-command modules, as this module held them before
        return commands()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: The exit codes, for scripts and pipelines (Snakemake, Nextflow): ``scatd --help`` and the README list them.
EXIT_CODES = {
    0: "success (some cells or panel drugs may be unscored: said on stderr; --strict makes that 4)",
    1: "unexpected error (a bug: run again with --debug and report it)",
    2: "usage error or bad input: a wrong option, a missing or unreadable file, an unknown model, "
       "an output that would be overwritten",
    3: "the input was read but the model(s) cannot score it: too few of the model's genes, z-scored values, "
       "no cell scorable, every drug of a panel refused",
    4: "--strict: the run finished and wrote its files, but some cells were not scored or some panel drugs "
       "were skipped (the reason is printed)",
    130: "interrupted (Ctrl-C): temporary files removed, what was written before the stop said",
    141: "the output went to a reader that stopped (| head)",
    143: "stopped by SIGTERM (a cancelled Slurm/Nextflow/Snakemake job): the same clean-up as Ctrl-C",
}


def exit_code(exc: ScatdError) -> int:
    """The exit code of an expected problem: 3 when the data were read but cannot be scored, else 2."""
    return 3 if isinstance(exc, DataNotScorable) else 2


def _exit_codes_text() -> str:
    """:data:`EXIT_CODES` as ``scatd --help`` ends: one wrapped item per code."""
    import textwrap

    return "exit codes:\n" + "\n".join(textwrap.fill(words, 96, initial_indent=f"  {code:<4} ",
                                                       subsequent_indent=" " * 7)
                                        for code, words in EXIT_CODES.items())


def build_parser():
    """The ``scatd`` argument parser, every sub-command in it (this imports their modules)."""
    import argparse

    parser = argparse.ArgumentParser(prog="scatd", description="scATD Studio: single-cell drug-resistance "
                                     "prediction with the scATD models.",
                                     epilog=_exit_codes_text(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"scatd {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in commands():
        command.add(sub)
    return parser


def _one_ray_connection(args):
    """``--engine ray``: one Ray instance for all the command's passes (started by the first)."""
    import contextlib

    if getattr(args, "engine", "local") != "ray":
        return contextlib.nullcontext()
    from scatd_core.scaleout import one_connection

    return one_connection()


def _remove_parts(args) -> None:
    """After a successful ``--engine ray`` command: its shard parts, kept so that a stopped run
    resumes, are no longer needed once every output is written (``--keep-parts`` keeps them)."""
    import sys

    from scatd_core._words import counted
    from scatd_core.cli._common import say

    store = sys.modules.get("scatd_core.scaleout._store")
    if store is None or getattr(args, "engine", "local") != "ray" or getattr(args, "keep_parts", False):
        return
    folders, nbytes = store.remove_opened()
    if folders:
        from scatd_core._memory import size_text

        say(f"Removed the Ray shard parts ({counted(folders, 'folder')}, {size_text(nbytes)}); --keep-parts keeps "
            "them.")


def main(argv: list[str] | None = None) -> int:
    """Run one ``scatd`` command; its exit code (:data:`EXIT_CODES`). A Ctrl+C or SIGTERM at any point
    from here on (also while the commands' modules load or the arguments are read) is one line,
    ``interrupted: ...``, and exit 130 or 143, never a traceback; ``--json`` is written for it once
    the arguments are read and its file checked."""
    previous = _stop_on_sigterm()  # first: SIGTERM stops as Ctrl+C does, from here on
    args = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "run", None):
            parser.print_help()
            return 2
        return _run(args, argv)
    except KeyboardInterrupt as exc:  # before the command started (loading, reading the arguments)
        return _interrupted(args, exc, [])
    finally:
        _restore_sigterm(previous)


def _run(args, argv) -> int:
    import sys

    from scatd_core.cli._common import check_summary, quiet, say

    args.argv = list(sys.argv[1:] if argv is None else argv)  # what --json records: this command's own arguments
    requested = getattr(args, "summary_json", None)  # written only once checked (check_summary, below)
    if str(requested or "").strip() == "-":  # not a file called '-' (nor stdout)
        say("error: --json -: writing the summary to standard output ('-') is not supported; give a file name.")
        say("Nothing was run: e.g. --json summary.json.")
        return 2
    from scatd_core._output import user_outputs

    written: list = []
    with user_outputs() as written:  # a file named without --overwrite (--json too): never replaced
        try:
            check_summary(args, requested)  # before anything runs: never an input, another output or a kept file
            quiet(getattr(args, "quiet", False))
            if args.command != "doctor":
                from scatd_core.config import settings

                for problem in settings().problems:
                    say(f"warning: configuration: {problem}")
            if "scatd_core.scaleout._store" in sys.modules:  # only this command's parts are its to remove
                sys.modules["scatd_core.scaleout._store"].OPENED.clear()
            with _one_ray_connection(args):
                code = int(args.run(args) or 0)
            if code == 0:
                _remove_parts(args)
            return _summary(args, code)
        except ScatdError as exc:
            say(f"error: {exc.message}")
            if exc.hint:
                say(exc.hint)
            return _summary(args, exit_code(exc), exc)
        except KeyboardInterrupt as exc:  # Ctrl+C, or SIGTERM (a cancelled Slurm/Nextflow job): the same clean-up
            return _interrupted(args, exc, written)
        except BrokenPipeError:  # the output went to a reader that stopped (| head): as other Unix tools, quietly
            import os

            try:  # no second error when Python flushes stdout at exit
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):
                pass
            return 141
        except Exception as exc:  # a bug: one line for the user, the traceback with --debug
            if args.debug:
                raise
            said = f"unexpected {type(exc).__name__}: {exc}"
            say(f"error: {said}")
            say("This is a bug in scATD Studio; run again with --debug and report the output.")
            return _summary(args, 1, ScatdError(said, "a bug in scATD Studio: run again with --debug and report it"))


def _summary(args, code: int, exc: Exception | None = None) -> int:
    from scatd_core.cli._common import write_summary

    return write_summary(args, code, exc)


def _interrupted(args, exc: KeyboardInterrupt, written: list) -> int:
    """Ctrl+C (130) or SIGTERM (143): one line saying what was written before the stop (the
    command's own words when it has them), and ``--json`` when it was given and checked."""
    import sys

    words = getattr(args, "interrupted", None) if args is not None else None
    left = (f"written before the stop: {', '.join(str(p) for p in written)}; the others were not written"
            if written else "nothing was written")
    how = " (SIGTERM: the job was stopped)" if isinstance(exc, Terminated) else ""
    said = f"interrupted{how}: {words(args) if callable(words) else left}"
    code = 143 if isinstance(exc, Terminated) else 130
    if args is None or "scatd_core.cli._common" not in sys.modules:  # still loading: the line alone
        print(said, file=sys.stderr, flush=True)
        return code
    from scatd_core.cli._common import say

    say(said)
    return _summary(args, code, ScatdError(said))  # --json: why too


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``scancel``, a Nextflow or Slurm time limit): stopped as by Ctrl+C, so the
    same clean-up runs (no temporary file left, what was written said), exit code 143 (128 + 15)."""


def _on_sigterm(signum, frame):
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one does not stop the clean-up half way
    raise Terminated


def _stop_on_sigterm():
    """SIGTERM raises :class:`Terminated` in the command (only in the main thread, where signals go)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _on_sigterm)


def _restore_sigterm(previous) -> None:
    import signal

    if previous is not None:
        signal.signal(signal.SIGTERM, previous)
