"""``python -m scatd_app [streamlit options]``: start scATD Studio with everything loaded first.

``streamlit run app.py`` starts serving at once and loads the libraries and compiled kernels when
the first user opens the app, alongside that user's first pages and upload (on a 2-core machine,
~5 CPU seconds). Here they are loaded before the server listens: the first user finds the server
as warm as every later one (``benches/bench_e2e.py --launcher module``). The options are
``streamlit run``'s, e.g. ``--server.address 0.0.0.0 --server.port 8501`` on a lab server.

The web server under Streamlit (uvicorn) is made to believe ``X-Forwarded-For`` from exactly the
proxies of ``server.trusted_proxies`` (none by default), not from every connection from
``127.0.0.1`` (its default): ``FORWARDED_ALLOW_IPS``, unless the administrator set it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app.py"


def _believe_only_trusted_proxies() -> None:
    """uvicorn replaces the connection's address by ``X-Forwarded-For``'s for the addresses in
    ``FORWARDED_ALLOW_IPS`` (default ``127.0.0.1,::1``: anyone on this machine could pick the address
    its failed logins are counted under). Set it to ``server.trusted_proxies`` (empty: no one),
    unless the administrator set it (``scatd doctor`` says when it differs)."""
    from scatd_core.client_address import FORWARDED_ALLOW_IPS, uvicorn_allow_ips
    from scatd_core.config import settings

    if FORWARDED_ALLOW_IPS not in os.environ:
        os.environ[FORWARDED_ALLOW_IPS] = uvicorn_allow_ips(settings()["trusted_proxies"])


def _read_config_as_run_will(args: list[str]) -> None:
    """Parse Streamlit's configuration as ``streamlit run app.py ARGS`` will: its config.toml files
    (the app's folder's too), then the options given on the command line. The checks below read it
    (``secrets.files``, the upload limit) before the server starts; parsed then without the options,
    ``streamlit run``'s own parse with them (``--server.port 8777``) changed the [server] section, and
    Streamlit logged at every start "An update to the [server] config option section was detected. To
    have these changes be reflected, please restart streamlit.", for nothing. Parsed the same way
    twice, nothing changes. Options click cannot read are left to ``streamlit run`` to refuse."""
    import click
    from streamlit import config
    from streamlit.web import bootstrap, cli

    try:
        with cli.main_run.make_context("run", [str(APP), *args]) as context:
            flags = {k: v for k, v in context.params.items() if k not in ("target", "args")}
    except (click.ClickException, click.exceptions.Exit):
        return
    config._main_script_path = str(APP)  # as `streamlit run` sets it before parsing: the app's .streamlit/
    bootstrap.load_config_options(flag_options=flags)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not APP.is_file():
        print(f"scATD Studio: {APP} is missing; run from a checkout of the project (pip install -e .).", file=sys.stderr)
        return 2
    from streamlit.web import cli

    if {"-h", "--help"} & set(args):  # streamlit run's options; nothing to load for that
        print("python -m scatd_app [OPTIONS]: loads scATD Studio, then runs `streamlit run app.py [OPTIONS]`, "
              "with these options:\n")
        return cli.main(["run", "--help"], prog_name="streamlit")
    _read_config_as_run_will(args)
    from scatd_app import preflight

    preflight.report()
    if refusals := preflight.refusals(secrets_files=preflight.secrets_files(args)):
        for line in refusals:
            print(f"scATD Studio: {line}", file=sys.stderr)
        print("scATD Studio will not start until this is fixed (see `scatd doctor`).", file=sys.stderr)
        return 2
    if folders := preflight.folder_refusals():
        for line in folders:
            print(f"scATD Studio: {line}", file=sys.stderr)
        print("scATD Studio will not start: every upload and the demo would fail.", file=sys.stderr)
        return 2
    _believe_only_trusted_proxies()
    started = time.perf_counter()
    print("scATD Studio: loading the libraries and compiled kernels before serving…", file=sys.stderr, flush=True)
    from scatd_app import ui, uploads

    uploads.install()  # before the server listens: no upload is kept for a session without a user
    ui.start_up(wait=True)
    print(f"scATD Studio: ready in {time.perf_counter() - started:.1f} s; starting the server.", file=sys.stderr,
          flush=True)
    try:
        return cli.main(["run", str(APP), *args], prog_name="streamlit")
    finally:  # the server stopped (SIGTERM, Ctrl-C): work started ahead for a session must not hold the exit
        from scatd_app import session

        if builds := ui.stop_shared_builds():
            print(f"scATD Studio: stopped the build of {' and '.join(f'the {b}' for b in builds)} (started again "
                  "on the next click).", file=sys.stderr, flush=True)
        if stopped := session.cancel_all_work():
            print(f"scATD Studio: stopped {stopped} computation{'s' if stopped != 1 else ''} started ahead "
                  "for users' sessions.", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
