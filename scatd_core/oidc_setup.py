"""Whether Streamlit's OpenID Connect sign-in (``auth.mode = "oidc"``) can work on this server.

Streamlit's ``st.login`` needs two things scATD Studio cannot give it at run time, so they are
checked before the server serves (:mod:`scatd_app.preflight`) and by ``scatd doctor``:

* **Authlib** (``Authlib>=1.3.2``, with ``httpx``: Streamlit's ``auth`` extra, in
  ``requirements.txt``). Without it every "Log in" ends in Streamlit's own error page.
* **The ``[auth]`` section of Streamlit's secrets file** (``.streamlit/secrets.toml``): the keys in
  :data:`REQUIRED_KEYS`, directly under ``[auth]`` (scATD Studio signs in with Streamlit's default
  provider). Without them every page shows Streamlit's error.

Streamlit reads ``~/.streamlit/secrets.toml``, then ``.streamlit/secrets.toml`` in the folder the
server was started from, then the one next to ``app.py`` (the project's checkout); a later file's
``[auth]`` replaces an earlier one's. Only key names and file paths are ever said, never a value.
No Streamlit import here: the paths are given, or :func:`default_secrets_files` gives Streamlit's.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from urllib.parse import urlparse

#: The keys of ``[auth]`` the sign-in needs, and what each is (said when one is missing).
REQUIRED_KEYS: dict[str, str] = {
    "redirect_uri": "the app's address followed by /oauth2callback (e.g. https://lab.example.org/oauth2callback), "
                    "registered at the identity provider as a redirect (callback) address",
    "cookie_secret": "a long random text that signs the sign-in cookie (e.g. the output of `openssl rand -hex 32`)",
    "client_id": "the client (application) id the identity provider gave this server",
    "client_secret": "the client secret the identity provider gave this server",
    "server_metadata_url": "the provider's discovery address, ending in /.well-known/openid-configuration",
}
#: The path Streamlit answers the identity provider's redirect at (under ``server.baseUrlPath``).
CALLBACK_PATH = "/oauth2callback"
AUTHLIB_MIN = (1, 3, 2)
#: Shorter cookie secrets are said (a warning): the secret is all that keeps a sign-in cookie from being forged.
MIN_COOKIE_SECRET = 32
PROJECT = Path(__file__).resolve().parent.parent
DOC = "see docs/admin.md, \"Signing in with OpenID Connect\""


def authlib_problem() -> str | None:
    """Why Streamlit's sign-in cannot import what it needs (Authlib's Starlette client, which needs
    httpx), or ``None`` when it can."""
    fix = ("Install it in the server's Python environment: `pip install -r requirements.txt` (with the shipped "
           "unit: `/opt/scatd-studio/.venv/bin/python -m pip install -r requirements.txt`), then restart the server")
    try:
        import authlib
    except ImportError:
        return (f"Authlib is not installed: Streamlit's OIDC sign-in (auth.mode = \"oidc\") needs Authlib>="
                f"{'.'.join(map(str, AUTHLIB_MIN))}, so every \"Log in\" would end in an error page. {fix}.")
    try:
        have = tuple(int(p) for p in str(authlib.__version__).split(".")[:3])
    except (AttributeError, ValueError):
        have = AUTHLIB_MIN
    if have < AUTHLIB_MIN:
        return (f"Authlib {authlib.__version__} is too old: Streamlit's OIDC sign-in needs Authlib>="
                f"{'.'.join(map(str, AUTHLIB_MIN))}. {fix}.")
    try:
        from authlib.integrations import starlette_client  # noqa: F401 (what Streamlit imports at "Log in")
    except ImportError as exc:
        return (f"Authlib is installed but its Starlette client cannot be imported ({exc.name or exc} is missing; "
                f"Streamlit's sign-in needs httpx too). {fix}.")
    return None


def default_secrets_files(cwd: Path | None = None, home: Path | None = None,
                          project: Path | None = None) -> list[Path]:
    """Where Streamlit (1.67) looks for ``secrets.toml`` when ``secrets.files`` is not set, in its
    order: the home folder's, the start folder's and the checkout's (next to ``app.py``)."""
    try:
        home = Path.home() if home is None else home
    except RuntimeError:  # no home folder (a container's uid)
        home = None
    files = [] if home is None else [Path(home) / ".streamlit" / "secrets.toml"]
    files += [Path(cwd or Path.cwd()) / ".streamlit" / "secrets.toml", Path(project or PROJECT) / ".streamlit" /
              "secrets.toml"]
    seen, unique = set(), []
    for f in files:
        key = os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def _read_directory(path: Path) -> dict:
    """A Kubernetes-style secrets folder, as Streamlit reads one: each subfolder a key, its files the
    values (one file: the value itself)."""
    data: dict = {}
    for sub in sorted(path.iterdir()):
        if not sub.is_dir():
            raise ValueError(f"{sub} is not a folder (a secrets folder holds one folder per secret)")
        values = {f.name: f.read_text(encoding="utf-8").strip() for f in sorted(sub.iterdir()) if f.is_file()}
        data[sub.name] = next(iter(values.values())) if len(values) == 1 else values
    return data


def read_auth(files: list[Path]) -> tuple[dict | None, Path | None, list[str]]:
    """The ``[auth]`` section Streamlit would use (the last file's that has one), the file it comes
    from, and what could not be read (one line each, naming the file; never a value)."""
    auth, source, problems = None, None, []
    for path in map(Path, files):
        try:
            if path.is_dir():
                data = _read_directory(path)
            elif path.suffix != ".toml":
                continue
            else:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            continue
        except OSError as exc:
            problems.append(f"The secrets file {path} cannot be read by this account: {exc.strerror or exc}.")
            continue
        except (UnicodeDecodeError, tomllib.TOMLDecodeError, ValueError) as exc:
            problems.append(f"The secrets file {path} is not valid TOML ({exc}): Streamlit would read none of it.")
            continue
        if isinstance(data.get("auth"), dict):
            auth, source = data["auth"], path
    return auth, source, problems


def secrets_check(files: list[Path]) -> list[tuple[str, str]]:
    """``(status, line)`` pairs about the sign-in's ``[auth]`` section: ``"problem"`` (the sign-in
    cannot work: the server must not start) or ``"warning"``; empty when it is complete."""
    auth, source, unreadable = read_auth(files)
    out = [("problem", line) for line in unreadable]
    where = ", ".join(map(str, files))
    if auth is None:
        out.append(("problem", f"auth.mode is \"oidc\" but no [auth] section was found in Streamlit's secrets "
                               f"(looked in: {where}), so nobody could sign in. Put a secrets.toml with an [auth] "
                               f"section ({', '.join(REQUIRED_KEYS)}) in the project's .streamlit folder, readable "
                               f"by the server's account only (chmod 600); {DOC}."))
        return out
    for key, what in REQUIRED_KEYS.items():
        value = auth.get(key)
        if not isinstance(value, str) or not value.strip():
            said = "is empty" if key in auth else "is missing"
            out.append(("problem", f"[auth] {key} {said} in {source}: it is {what}. Without it nobody can sign in; "
                                   f"{DOC}."))
    providers = sorted(k for k, v in auth.items() if isinstance(v, dict) and k != "client_kwargs")
    if providers and any(p == "problem" for p, _ in out):
        out.append(("warning", f"{source} has provider sections ([auth.{'], [auth.'.join(providers)}]): scATD "
                               f"Studio signs in with Streamlit's default provider, so client_id, client_secret and "
                               f"server_metadata_url go directly under [auth]."))
    uri = auth.get("redirect_uri")
    if isinstance(uri, str) and uri.strip():
        parsed = urlparse(uri.strip())
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            out.append(("problem", f"[auth] redirect_uri = {uri.strip()!r} in {source} is not a web address: it is "
                                   f"{REQUIRED_KEYS['redirect_uri']}."))
        elif not parsed.path.rstrip("/").endswith(CALLBACK_PATH):
            out.append(("problem", f"[auth] redirect_uri = {uri.strip()!r} in {source} does not end in "
                                   f"{CALLBACK_PATH}: Streamlit takes the identity provider's answer only at that "
                                   f"path (e.g. {parsed.scheme}://{parsed.netloc}{CALLBACK_PATH}, or "
                                   f"{parsed.scheme}://{parsed.netloc}/scatd{CALLBACK_PATH} under "
                                   f"--server.baseUrlPath scatd), and the provider must have it registered."))
        elif parsed.scheme == "http" and parsed.hostname not in ("localhost", "127.0.0.1", "::1"):
            out.append(("warning", f"[auth] redirect_uri in {source} is plain http: the sign-in cookie and the "
                                   f"provider's answer cross the network in clear; serve the app over HTTPS "
                                   f"(docs/admin.md, \"Behind a reverse proxy\")."))
    secret = auth.get("cookie_secret")
    if isinstance(secret, str) and secret.strip() and len(secret.strip()) < MIN_COOKIE_SECRET:
        out.append(("warning", f"[auth] cookie_secret in {source} is shorter than {MIN_COOKIE_SECRET} characters: "
                               f"whoever guesses it can forge anyone's sign-in. Use e.g. `openssl rand -hex 32` "
                               f"(everyone then signs in again)."))
    if source is not None and source.is_file():
        try:
            mode = source.stat().st_mode
        except OSError:
            mode = 0
        if mode & 0o077:
            out.append(("warning", f"{source} can be read by other accounts on this machine "
                                   f"({stat.filemode(mode)}): it holds the client secret and the cookie secret. "
                                   f"`chmod 600 {source}` (owned by the account the server runs as)."))
    return out


def setup_problems(files: list[Path] | None = None) -> list[str]:
    """What stops the OIDC sign-in from working (Authlib, the ``[auth]`` keys): one line each, for the
    administrator at the server (it names files, never a secret)."""
    lines = [why] if (why := authlib_problem()) else []
    lines += [line for status, line in secrets_check(default_secrets_files() if files is None else files)
              if status == "problem"]
    return lines
