"""Settings of a scATD Studio installation: one TOML file, overridden by environment variables.

The file is ``$SCATD_CONFIG``, else ``$SCATD_HOME/config.toml``, else ``/etc/scatd/config.toml``
(the first that exists; none is needed). Every key, its environment variable and its default:

=======================  ================================  ===========================================  ====================
TOML (section.key)       environment variable              meaning                                      default
=======================  ================================  ===========================================  ====================
paths.home               ``SCATD_HOME``                    data folder                                  ``~/.local/share/scatd``
paths.library            ``SCATD_MODEL_LIBRARY``           installed model bundles                      ``<home>/models``
paths.work_dir           ``SCATD_WORK_DIR``                per-session working folders (uploads)        ``<home>/work``
paths.import_folder      ``SCATD_IMPORT_FOLDER``           checkpoints an admin offers for import in    not set
                                                           the app (listed, never a typed path)
limits.max_upload_mb     ``SCATD_MAX_UPLOAD_MB``           largest file uploaded in the app (a file     2048
                                                           the CLI or Ray reads on the server is
                                                           bounded by memory, not by this)
limits.max_decompressed_mb ``SCATD_MAX_DECOMPRESSED_MB``   most bytes out of a .gz/.zip/.tar upload     4096
                                                           or a .pth checkpoint (uploaded in the app:
                                                           also at most the upload limit), and the
                                                           largest compressed loom matrix or h5ad X
limits.max_dataset_mb    ``SCATD_MAX_DATASET_MB``          most memory one dataset may take once read   4096
                                                           (larger h5ad files are read from disk)
limits.max_cells         ``SCATD_MAX_CELLS``               most cells in one dataset (the demo has      1,000,000
                                                           2,000)
limits.max_genes         ``SCATD_MAX_GENES``               most genes (features) in one dataset         100,000
limits.max_annotation_columns ``SCATD_MAX_ANNOTATION_COLUMNS`` most annotation columns of an h5ad's    1,000
                                                           obs (per cell) or var (per gene), raw's var
                                                           and each table in obsm/varm, checked before
                                                           they are read
limits.min_gene_coverage ``SCATD_MIN_GENE_COVERAGE``      least share of a drug model's genes the      0.1
                                                           data must have to be predicted (a number
                                                           from 0 to 1; 0 never refuses); below it the
                                                           prediction is refused, not run with a
                                                           warning (the CLI's --min-gene-coverage
                                                           sets it for one run)
server.max_jobs          ``SCATD_MAX_JOBS``                computations run at once (others queue)      2
server.session_ttl_minutes ``SCATD_SESSION_TTL_MINUTES``   idle sessions (and their files) kept for     240
server.kept_sessions_mb  ``SCATD_KEPT_SESSIONS_MB``        memory the sessions kept for a reload may    8192
                                                           hold together (datasets, results); beyond
                                                           it the longest idle are let go first
server.memory_mb         ``SCATD_SERVER_MEMORY_MB``        memory the server may use in all; a new      80 % of the machine's
                                                           dataset may take what is left of it (larger  (or its container's)
                                                           h5ad files are then read from disk)          memory
server.device            ``SCATD_DEVICE``                  ``auto`` (CUDA when present), ``cpu``,       ``auto``
                                                           ``cuda``
server.service_user      ``SCATD_SERVICE_USER``            the account the server runs as (systemd      the installed unit's
                                                           ``User=``): ``scatd doctor`` run by another  ``User=``, if any
                                                           account (root) checks the folders' owner
                                                           and permissions against it
server.trusted_proxies   ``SCATD_TRUSTED_PROXIES``         reverse proxies (addresses or networks,      none
                                                           ``["127.0.0.1"]``) whose ``X-Forwarded-For``
                                                           / ``X-Real-IP`` give the client's address
                                                           for failed-login counts and the login log
auth.mode                ``SCATD_AUTH``                    ``auto`` (a password login when the server   ``auto``
                                                           listens beyond localhost), ``password``,
                                                           ``oidc`` (Streamlit's login), ``none``
auth.users_file          ``SCATD_USERS_FILE``              users and argon2 password hashes             ``<home>/users.toml``
                                                           (``scatd users add/remove/list``)
auth.max_failures        ``SCATD_AUTH_MAX_FAILURES``       failed logins before a lock-out              5
auth.lockout_minutes     ``SCATD_AUTH_LOCKOUT_MINUTES``    failures within this many minutes lock out,  15
                                                           until this long after the first of them
auth.admins              ``SCATD_AUTH_ADMINS``             with ``oidc``: e-mail addresses of the       none
                                                           administrators (comma-separated in the env;
                                                           upper/lower case does not matter)
auth.allowed_emails      ``SCATD_AUTH_ALLOWED_EMAILS``     with ``oidc``: e-mail addresses that may     none (with neither
                                                           sign in; ``"oidc:<sub>"`` admits an account  this nor
                                                           without a confirmed address by the           allowed_domains,
                                                           provider's subject id                        nobody may sign in)
auth.allowed_domains     ``SCATD_AUTH_ALLOWED_DOMAINS``    with ``oidc``: domains whose confirmed       none
                                                           addresses may sign in (``lab.org``);
                                                           ``"*"``: anyone the provider accepts
auth.provider_name       ``SCATD_AUTH_PROVIDER_NAME``      with ``oidc``: the identity provider's name  the host of its
                                                           on the login page                            metadata URL
auth.max_login_hours     ``SCATD_AUTH_MAX_LOGIN_HOURS``    with ``oidc``: hours a sign-in lasts before  12
                                                           the server asks for a new one (Streamlit's
                                                           own cookie lasts 30 days)
scaleout.address         ``SCATD_RAY_ADDRESS``             a Ray cluster (``host:port``): the app runs  not set
                                                           every prediction there, the CLI's
                                                           ``--engine ray`` uses it
scaleout.min_cells       ``SCATD_SCALEOUT_MIN_CELLS``      datasets with more cells are predicted on    500,000
                                                           Ray (a local instance when no address),
                                                           when Ray is installed
scaleout.workers         ``SCATD_SCALEOUT_WORKERS``        Ray workers per job                          every CPU/GPU
foundation.geneformer_dir ``SCATD_GENEFORMER_DIR``         Geneformer dictionaries and model folder(s); ``<home>/geneformer``
                                                           its dictionary also maps Ensembl IDs
foundation.geneformer_model ``SCATD_GENEFORMER_MODEL``     one Geneformer model folder (config.json +   found in geneformer_dir
                                                           weights) when that folder holds several
foundation.scfoundation_dir ``SCATD_SCFOUNDATION_DIR``     scFoundation files (``models.ckpt`` or its   ``<home>/scfoundation``
                                                           conversion, the 19,264-gene list)
published.figshare_api   ``SCATD_FIGSHARE_API``            figshare's API (a mirror, or a test server)  ``https://api.figshare.com/v2``
published.gene_list_url  ``SCATD_GENE_LIST_URL``           where the scFoundation gene list is fetched  scFoundation's GitHub
                                                           from when the article lacks it
=======================  ================================  ===========================================  ====================

A value that cannot be used (not a number, not positive, an unknown choice) is listed in
:attr:`Settings.problems`, which ``scatd doctor`` shows and the app's server prints when it starts,
with what is used instead: a bad environment variable falls back to the configuration file's
value when that one is good, else to the default; a bad value in the file gives way to a good
environment variable, else to the default. An unknown section or key is listed with the nearest
known key.

The login fails closed: an ``auth.mode`` (or ``SCATD_AUTH``) that is not one of the modes above,
or an unknown key that is nearest to an ``[auth]`` key (``[Auth]``, ``mdoe``), is also listed in
:attr:`Settings.fatal`: the app refuses to start (``python -m scatd_app``) or to serve (``streamlit
run app.py``) and ``scatd doctor`` fails, rather than run with a login other than the one meant.
"""

from __future__ import annotations

import difflib
import os
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

#: (section, key) -> (environment variable, kind, default); ``None`` defaults are derived or unset.
KEYS: dict[tuple[str, str], tuple[str, str, object]] = {
    ("paths", "home"): ("SCATD_HOME", "path", None),
    ("paths", "library"): ("SCATD_MODEL_LIBRARY", "path", None),
    ("paths", "work_dir"): ("SCATD_WORK_DIR", "path", None),
    ("paths", "import_folder"): ("SCATD_IMPORT_FOLDER", "path", None),
    ("limits", "max_upload_mb"): ("SCATD_MAX_UPLOAD_MB", "int", 2048),
    ("limits", "max_decompressed_mb"): ("SCATD_MAX_DECOMPRESSED_MB", "int", 4096),
    ("limits", "max_dataset_mb"): ("SCATD_MAX_DATASET_MB", "int", 4096),
    ("limits", "max_cells"): ("SCATD_MAX_CELLS", "int", 1_000_000),
    ("limits", "max_genes"): ("SCATD_MAX_GENES", "int", 100_000),
    ("limits", "max_annotation_columns"): ("SCATD_MAX_ANNOTATION_COLUMNS", "int", 1000),
    ("limits", "min_gene_coverage"): ("SCATD_MIN_GENE_COVERAGE", "fraction", 0.1),
    ("server", "max_jobs"): ("SCATD_MAX_JOBS", "int", 2),
    ("server", "session_ttl_minutes"): ("SCATD_SESSION_TTL_MINUTES", "int", 240),
    ("server", "kept_sessions_mb"): ("SCATD_KEPT_SESSIONS_MB", "int", 8192),
    ("server", "memory_mb"): ("SCATD_SERVER_MEMORY_MB", "int", None),
    ("server", "device"): ("SCATD_DEVICE", ("auto", "cpu", "cuda"), "auto"),
    ("server", "service_user"): ("SCATD_SERVICE_USER", "text", None),
    ("server", "trusted_proxies"): ("SCATD_TRUSTED_PROXIES", "list", ()),
    ("auth", "mode"): ("SCATD_AUTH", ("auto", "password", "oidc", "none"), "auto"),
    ("auth", "users_file"): ("SCATD_USERS_FILE", "path", None),
    ("auth", "max_failures"): ("SCATD_AUTH_MAX_FAILURES", "int", 5),
    ("auth", "lockout_minutes"): ("SCATD_AUTH_LOCKOUT_MINUTES", "int", 15),
    ("auth", "admins"): ("SCATD_AUTH_ADMINS", "list", ()),
    ("auth", "allowed_emails"): ("SCATD_AUTH_ALLOWED_EMAILS", "list", ()),
    ("auth", "allowed_domains"): ("SCATD_AUTH_ALLOWED_DOMAINS", "list", ()),
    ("auth", "provider_name"): ("SCATD_AUTH_PROVIDER_NAME", "text", None),
    ("auth", "max_login_hours"): ("SCATD_AUTH_MAX_LOGIN_HOURS", "int", 12),
    ("scaleout", "address"): ("SCATD_RAY_ADDRESS", "text", None),
    ("scaleout", "min_cells"): ("SCATD_SCALEOUT_MIN_CELLS", "int", 500_000),
    ("scaleout", "workers"): ("SCATD_SCALEOUT_WORKERS", "int", None),
    ("foundation", "geneformer_dir"): ("SCATD_GENEFORMER_DIR", "path", None),
    ("foundation", "geneformer_model"): ("SCATD_GENEFORMER_MODEL", "path", None),
    ("foundation", "scfoundation_dir"): ("SCATD_SCFOUNDATION_DIR", "path", None),
    ("published", "figshare_api"): ("SCATD_FIGSHARE_API", "text", "https://api.figshare.com/v2"),
    ("published", "gene_list_url"): ("SCATD_GENE_LIST_URL", "text",
                                     "https://raw.githubusercontent.com/biomap-research/scFoundation/main/model/"
                                     "OS_scRNA_gene_index.19264.tsv"),
}

#: Sections whose keys are prefixed with the section's name in :attr:`Settings.values`.
PREFIXED_SECTIONS = ("auth", "scaleout")


@dataclass(frozen=True)
class Limits:
    """What one dataset may take (see the module table)."""

    max_upload_mb: int
    max_cells: int
    max_decompressed_mb: int = 4096
    max_dataset_mb: int = 4096
    max_genes: int = 100_000
    max_annotation_columns: int = 1000

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb << 20

    @property
    def max_decompressed_bytes(self) -> int:
        return self.max_decompressed_mb << 20

    @property
    def max_dataset_bytes(self) -> int:
        return self.max_dataset_mb << 20


@dataclass(frozen=True)
class Settings:
    """The resolved settings (file, then environment); ``problems`` lists what was ignored.

    ``values`` is keyed by the TOML key, prefixed with the section for [auth] and [scaleout]
    (``settings()["max_cells"]``, ``settings()["auth_mode"]``, ``settings()["scaleout_address"]``).
    """

    values: dict
    config_file: Path | None
    problems: tuple[str, ...] = field(default_factory=tuple)
    #: Problems that must stop the app from serving (a login setting that cannot be read); each is
    #: also in :attr:`problems`.
    fatal: tuple[str, ...] = field(default_factory=tuple)
    #: Where each value of :attr:`values` came from (same keys): "env" (its environment variable),
    #: "file" (:attr:`config_file`) or "default"; see :meth:`set_by`.
    sources: dict = field(default_factory=dict)

    def set_by(self, key: str) -> str | None:
        """Where the setting ``key`` (a key of :attr:`values`) was given, as said to an administrator:
        its environment variable (``SCATD_GENEFORMER_DIR``), the key in the configuration file
        (``foundation.geneformer_dir in /etc/scatd/config.toml``), or ``None``: its default. The
        precedence is :func:`settings`'s: a valid environment variable over the file."""
        source = self.sources.get(key)
        (section, name), (env, _kind, _default) = next(
            ((s, k), v) for (s, k), v in KEYS.items() if (f"{s}_{k}" if s in PREFIXED_SECTIONS else k) == key)
        if source == "env":
            return env
        if source == "file":
            return f"{section}.{name} in {self.config_file}"
        return None

    def __getitem__(self, key: str):
        return self.values[key]

    @property
    def home(self) -> Path:
        return self.values["home"]

    @property
    def limits(self) -> Limits:
        v = self.values
        return Limits(max_upload_mb=v["max_upload_mb"], max_cells=v["max_cells"],
                      max_decompressed_mb=v["max_decompressed_mb"], max_dataset_mb=v["max_dataset_mb"],
                      max_genes=v["max_genes"], max_annotation_columns=v["max_annotation_columns"])


def config_file() -> Path | None:
    """The TOML file in use, or ``None``."""
    return _config_search()[0]


def _config_search() -> tuple[Path | None, list[Path]]:
    """The TOML file in use (or ``None``), and the places it may be that this process cannot look
    into: a folder on the way it may not search (a home hidden by systemd's ``ProtectHome=`` from a
    unit without ``SCATD_CONFIG``) raised a bare PermissionError before."""
    if os.environ.get("SCATD_CONFIG"):
        return Path(os.environ["SCATD_CONFIG"]).expanduser(), []
    hidden: list[Path] = []
    for candidate in (_default_home() / "config.toml", Path("/etc/scatd/config.toml")):
        try:
            if candidate.is_file():
                return candidate, hidden
        except PermissionError:
            hidden.append(candidate)
    return None, hidden


def _default_home() -> Path:
    if os.environ.get("SCATD_HOME"):
        return Path(os.environ["SCATD_HOME"]).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share") / "scatd"


def _shown(raw) -> str:
    """A value as it was written in the TOML file (``true``, ``1.5``, ``["/a", "/b"]``)."""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, (list, tuple)):
        return "[" + ", ".join(_shown(x) for x in raw) + "]"
    if isinstance(raw, str):
        return '"' + raw + '"'
    return str(raw)


def _parse(raw, kind, name: str, problems: list[str]):
    """``raw`` (a TOML value, or an environment variable's text) as ``kind``; ``None`` with a problem
    when it is not one: never converted from another type (``5`` is not a folder, ``1.5`` not a
    whole number, ``true`` not a number). The problem says what is wrong; :func:`settings` adds
    what is used instead (:func:`_used_instead`)."""
    if kind == "list":  # a TOML list, or comma-separated text in the environment
        items = raw if isinstance(raw, (list, tuple)) else [raw]
        if not all(isinstance(x, str) for x in items):
            problems.append(f"{name} = {_shown(raw)} should be text or a list of texts "
                            f'(e.g. ["a@lab.org", "b@lab.org"])')
            return None
        items = [x for item in items for x in item.split(",")] if not isinstance(raw, (list, tuple)) else items
        return tuple(x.strip() for x in items if x.strip())
    if kind in ("path", "text") and not isinstance(raw, str):
        expected = ('a folder or file path in quotes (e.g. "/srv/scatd")' if kind == "path" else
                    'text in quotes')
        problems.append(f"{name} = {_shown(raw)} should be {expected}")
        return None
    if kind == "path":
        return Path(raw).expanduser() if raw.strip() else None
    if kind == "text":
        return raw.strip() or None
    if kind == "int":
        if isinstance(raw, bool) or not isinstance(raw, (int, str)):
            problems.append(f"{name} = {_shown(raw)} should be a whole number (e.g. 2)")
            return None
        try:
            value = int(raw)
        except ValueError:
            problems.append(f"{name} = {raw!r} is not a whole number")
            return None
        if value <= 0:
            problems.append(f"{name} = {value} must be positive")
            return None
        return value
    if kind == "fraction":
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            problems.append(f"{name} = {_shown(raw)} should be a number from 0 to 1 (e.g. 0.1)")
            return None
        try:
            value = float(raw)
        except ValueError:
            problems.append(f"{name} = {raw!r} is not a number")
            return None
        if not 0 <= value <= 1:
            problems.append(f"{name} = {value:g} is not between 0 and 1 (a share: 0.1 is 10%)")
            return None
        return value
    if not isinstance(raw, str):
        problems.append(f"{name} = {_shown(raw)} should be one of {', '.join(kind)} in quotes")
        return None
    value = raw.strip().lower()
    if value not in kind:
        problems.append(f"{name} = {raw!r} is not one of {', '.join(kind)}")
        return None
    return value


def _used_instead(source: str, value, env: str) -> str:
    """What a setting whose value could not be used falls back to, as said after its problem:
    ``source`` is "env" (its valid environment variable), "file" (the configuration file's
    valid value) or "default" (``value`` ``None``: a default derived from other settings)."""
    shown = (f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else
             "none" if value == () else _shown(value if not isinstance(value, Path) else str(value)))
    if source == "env":
        return f"{env} ({shown}) is used instead"
    if source == "file":
        return f"the configuration file's value ({shown}) is used instead"
    return "the default is used" if value is None else f"the default ({shown}) is used"


def _nearest_key(section: str, key: str) -> tuple[str, str] | None:
    """The known (section, key) nearest to a misspelled one (``[Auth] mdoe`` -> ``auth.mode``)."""
    names = {f"{s}.{k}": (s, k) for s, k in KEYS}
    wanted = f"{section}.{key}".lower()
    close = difflib.get_close_matches(wanted, list(names), n=1, cutoff=0.6)
    if not close:  # a known key under a misspelled section, or a misspelled key of a known section
        same_key = [name for name, (_s, k) in names.items() if k == key.lower()]
        close = same_key[:1] or difflib.get_close_matches(wanted, [n for n in names if n.startswith(
            section.lower() + ".")], n=1, cutoff=0.0)
    return names[close[0]] if close else None


def _read_file(path: Path | None, problems: list[str], fatal: list[str] | None = None) -> dict:
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems.append(f"The configuration file {path} does not exist (SCATD_CONFIG).")
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        problems.append(f"The configuration file {path} could not be read: {exc}.")
        return {}
    known = {}
    for section, table in data.items():
        if not isinstance(table, dict):
            problems.append(f"{path.name}: '{section}' should be a [section]; ignored.")
            continue
        for key, value in table.items():
            if (section, key) not in KEYS:
                near = _nearest_key(section, key)
                hint = f" (did you mean {near[0]}.{near[1]}?)" if near else ""
                message = f"{path.name}: unknown key {section}.{key}{hint}; ignored."
                problems.append(message)
                if fatal is not None and (section.lower() == "auth" or (near and near[0] == "auth")):
                    fatal.append(f"{message} A login setting that is not understood could leave the app without "
                                 f"the login meant; fix it in {path}.")
            else:
                known[(section, key)] = value
    return known


def settings() -> Settings:
    """The current settings: defaults, then the TOML file, then environment variables."""
    problems: list[str] = []
    fatal: list[str] = []
    path, hidden = _config_search()
    if hidden:
        where = " or ".join(str(h) for h in hidden)
        message = (f"Could not look for a configuration file at {where}: permission denied (a folder on the way is "
                   "hidden from this account, e.g. a home under systemd's ProtectHome=)")
        if path is not None:
            problems.append(f"{message}; {path} is used.")
        else:  # a login configured there cannot be seen: fail closed rather than serve without it
            message += (": set SCATD_CONFIG to the configuration file (e.g. Environment=SCATD_CONFIG=/etc/scatd/"
                        "config.toml in the unit), or SCATD_HOME to a folder this account can read.")
            problems.append(message)
            fatal.append(message)
    from_file = _read_file(path, problems, fatal)
    values: dict = {}
    sources: dict = {}
    for (section, key), (env, kind, default) in KEYS.items():
        wrong: list[str] = []  # this setting's values that cannot be used (the file's, the environment's)
        value = source = None
        if (section, key) in from_file:
            value = _parse(from_file[(section, key)], kind, f"{section}.{key}", wrong)
            source = "file" if value is not None else None
        raw = os.environ.get(env, "").strip()
        if raw:
            parsed = _parse(raw, kind, env, wrong)
            if parsed is not None:
                value, source = parsed, "env"
        if wrong and (section, key) == ("auth", "mode"):
            # one message, said wherever it is shown: the login fails closed, the server does not start
            for line in wrong:
                message = f"{line}: the app will not start rather than run without the login meant."
                problems.append(message)
                fatal.append(message)
        else:
            used = _used_instead(source or "default", value if source else default, env)
            problems += [f"{line}; {used}." for line in wrong]
        name = f"{section}_{key}" if section in PREFIXED_SECTIONS else key
        values[name] = default if value is None else value
        sources[name] = source if value is not None else "default"
    from scatd_core.client_address import networks

    if bad := networks(values["trusted_proxies"])[1]:
        problems.append(f"server.trusted_proxies has entries that are not addresses or networks ({', '.join(bad)}): "
                        "they are ignored (write e.g. \"127.0.0.1\" or \"10.0.0.0/24\")")
    home = values["home"] or _default_home()
    values["home"] = home
    values["library"] = values["library"] or home / "models"
    values["work_dir"] = values["work_dir"] or home / "work"
    values["auth_users_file"] = values["auth_users_file"] or home / "users.toml"
    values["geneformer_dir"] = values["geneformer_dir"] or home / "geneformer"
    values["scfoundation_dir"] = values["scfoundation_dir"] or home / "scfoundation"
    if fatal:  # fail closed: whatever asks for the mode anyway gets a password login, never none
        values["auth_mode"] = "password"
    return Settings(values=values, config_file=path, problems=tuple(dict.fromkeys(problems)),
                    fatal=tuple(dict.fromkeys(fatal)), sources=sources)


#: The folders the app writes in for every user (the demo, drug panels, uploads): they must be writable.
WRITTEN_FOLDERS = (("home", "paths.home", "SCATD_HOME"), ("work_dir", "paths.work_dir", "SCATD_WORK_DIR"))


def unwritable_folders(conf: Settings | None = None) -> list[str]:
    """What keeps this account from writing in :data:`WRITTEN_FOLDERS` (each made when missing, then
    a file written and removed in it): one line per folder, naming it and how to fix it (for the
    administrator at the server: it names paths)."""
    import getpass

    conf = conf or settings()
    lines = []
    for key, toml_key, env in WRITTEN_FOLDERS:
        folder = Path(conf[key])
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".scatd-write-check-", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            try:
                account = getpass.getuser()
            except Exception:  # no name for this uid (a container)
                account = f"uid {os.getuid()}"
            lines.append(f"The folder {folder} ({toml_key}) cannot be written by this account ({account}): "
                         f"{exc.strerror or exc}. Give the account write access to it (e.g. `chown -R {account} "
                         f"{folder}`), or set {toml_key} (or {env}) to a folder it can write.")
    return lines


# ----------------------------------------------------------------------------- shortcuts

#: Share of the machine's (or container's) memory the server uses when ``server.memory_mb`` is not set.
DEFAULT_MEMORY_SHARE = 0.8


def server_memory_bytes() -> int | None:
    """The memory the server may use in all (``server.memory_mb``; default
    :data:`DEFAULT_MEMORY_SHARE` of what the machine or its container gives the process), or
    ``None`` where neither is known."""
    from scatd_core._memory import machine_bytes

    mb = settings()["memory_mb"]
    if mb:
        return int(mb) << 20
    total = machine_bytes()
    return int(total * DEFAULT_MEMORY_SHARE) if total else None


def scatd_home() -> Path:
    return settings().home


def model_library_dir() -> Path:
    return settings()["library"]


def work_dir() -> Path:
    return settings()["work_dir"]


def import_folder() -> Path | None:
    return settings()["import_folder"]


def geneformer_dir() -> Path:
    """Folder of the Geneformer assets (dictionaries, model folders); see :mod:`scatd_core.foundation`."""
    return settings()["geneformer_dir"]


def geneformer_model_dir() -> Path | None:
    """One Geneformer model folder chosen explicitly, or ``None``: found in :func:`geneformer_dir`."""
    return settings()["geneformer_model"]


def scfoundation_dir() -> Path:
    """Folder of the scFoundation assets (``models.ckpt`` or its conversion, the gene list)."""
    return settings()["scfoundation_dir"]


def limits() -> Limits:
    return settings().limits
