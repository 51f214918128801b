"""What ``scatd doctor`` checks: everything an administrator needs before opening the server to a lab.

:func:`diagnose` returns sections of ``{"what", "status" (ok | warning | problem), "detail"}``
items: software versions, the compute device, the configuration (file, problems, folders
writable), the model library (bundles that load, interrupted writes repaired), login (mode,
users, admins), the caches numba and matplotlib write (a sandboxed server may not let them) and
the foundation-model assets when their probe is available.
"""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from scatd_core._words import counted
from scatd_core import __version__
from scatd_core.config import settings

PACKAGES = ("torch", "anndata", "scanpy", "numpy", "scipy", "pandas", "h5py", "captum", "umap-learn",
            "streamlit", "safetensors", "argon2-cffi")


def _item(what: str, status: str, detail: str) -> dict:
    return {"what": what, "status": status, "detail": detail}


def _versions() -> list[dict]:
    items = [_item("scATD Studio", "ok", __version__), _item("Python", "ok", platform.python_version())]
    for dist in PACKAGES:
        try:
            items.append(_item(dist, "ok", version(dist)))
        except PackageNotFoundError:
            items.append(_item(dist, "problem", "not installed: pip install -r requirements.txt"))
    return items


def _device(conf) -> list[dict]:
    import torch

    want = conf["device"]
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        return [_item("device", "ok", f"CUDA: {names} (policy: {want})")]
    status = "problem" if want == "cuda" else "ok"
    return [_item("device", status, f"CPU, {torch.get_num_threads()} threads; no GPU"
                  + (" but server.device = cuda" if want == "cuda" else f" (policy: {want})"))]


def _writable(path: Path) -> bool:
    """Whether this process can write in ``path`` (or, not made yet, in its nearest existing folder):
    a file is created there and removed, as the effective account. Not ``os.access``: that asks
    about the real uid (root's, under ``sudo -u`` or a set-uid), and ignores read-only mounts and
    immutable folders root itself cannot write."""
    return _write_problem(path) is None


def _write_problem(path: Path) -> str | None:
    """What kept this process from making a file in ``path`` (as :func:`_writable` tries), e.g.
    "Permission denied" or "Read-only file system"; ``None`` when it could."""
    import tempfile

    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        fd, name = tempfile.mkstemp(prefix=".scatd-doctor-", dir=probe)
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
    os.close(fd)
    try:
        os.unlink(name)
    except OSError:
        pass
    return None


def _running_as_root() -> bool:
    return os.geteuid() == 0


#: Where the systemd unit is installed (deploy/scatd-studio.service): its ``User=`` is the service account.
UNIT_FILES = tuple(Path(d) / "scatd-studio.service" for d in ("/etc/systemd/system", "/lib/systemd/system",
                                                               "/usr/lib/systemd/system"))


def _service_user(conf) -> tuple[str | None, str]:
    """The account the server runs as, and where that was read: ``server.service_user`` (or
    ``SCATD_SERVICE_USER``), else the ``User=`` of the installed systemd unit; ``(None, "")`` when
    neither names one."""
    name = str(getattr(conf, "values", conf).get("service_user") or "").strip()
    if name:
        return name, "server.service_user"
    for unit in UNIT_FILES:
        try:
            lines = unit.read_text().splitlines()
        except OSError:
            continue
        users = [line.split("=", 1)[1].strip() for line in lines if line.strip().startswith("User=")]
        if users and users[-1]:
            return users[-1], f"User= in {unit}"
    return None, ""


def _server_environment() -> tuple[dict[str, str], list[str], Path | None]:
    """The environment the installed systemd unit gives the server (its ``Environment=`` lines),
    its ``CacheDirectory=`` names (folders systemd makes and gives to ``User=`` at start) and the
    unit file; empty when no unit is installed."""
    import shlex

    for unit in UNIT_FILES:
        try:
            lines = unit.read_text().splitlines()
        except OSError:
            continue
        env: dict[str, str] = {}
        caches: list[str] = []
        for line in (x.strip() for x in lines):
            key, _, value = line.partition("=")
            try:
                words = shlex.split(value)
            except ValueError:
                continue
            if key.strip() == "Environment":
                env.update(w.split("=", 1) for w in words if "=" in w)
            elif key.strip() == "CacheDirectory":
                caches += words
        return env, caches, unit
    return {}, [], None


def _could_write(user: str, path: Path) -> str | None:
    """Why ``user`` could not make files in ``path`` (or its nearest existing folder); ``None`` when
    it can. Run as root, a file is made there (and removed) as that account, so ACLs, read-only
    mounts and immutable folders count; otherwise (this account cannot act as another) it is judged
    from the folders' owner and permission bits (``stat``), which do not show an ACL. The unit's
    sandbox (``ReadWritePaths=``) is not read either way."""
    import pwd
    import stat

    try:
        account = pwd.getpwnam(user)
    except KeyError:
        return f"there is no account {user} on this machine"
    if account.pw_uid == 0:
        return None
    groups = set(os.getgrouplist(user, account.pw_gid))

    def allows(st, bits: int) -> bool:  # bits: 0o2 write, 0o1 search, as for "other"
        if st.st_uid == account.pw_uid:
            return st.st_mode & (bits << 6) == bits << 6
        if st.st_gid in groups:
            return st.st_mode & (bits << 3) == bits << 3
        return st.st_mode & bits == bits

    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    failed = _write_as(account, groups, probe) if _running_as_root() else "not tried"
    if failed is None:
        return None
    try:
        for folder in reversed(probe.parents):  # every folder above must let it through
            if not allows(folder.stat(), 0o1):
                return f"{folder} does not let {user} through ({stat.filemode(folder.stat().st_mode)})"
        st = probe.stat()
    except OSError as exc:
        return f"{probe} cannot be examined ({exc.strerror or exc})"
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = f"uid {st.st_uid}"
    said = f"{probe} is {owner}'s, {stat.filemode(st.st_mode)}"
    if failed != "not tried":  # tried as that account: what stopped it (e.g. a read-only file system)
        return f"{said}: a file could not be made in it as {user} ({failed})"
    if not stat.S_ISDIR(st.st_mode) or not allows(st, 0o3):
        return said
    return None


def _write_as(account, groups: set[int], folder: Path) -> str | None:
    """Make a file in ``folder`` and remove it as ``account`` (a :mod:`pwd` entry), in a shell run
    as that account (root only): ``None`` when it could, else why not (e.g. "Permission denied")."""
    # set -C: never over an existing file
    return _shell_as(account, groups, 'set -C; f="$1/.scatd-doctor-$$"; : > "$f" && rm -f "$f"', folder)


def _shell_as(account, groups: set[int], script: str, path: Path) -> str | None:
    """Run the shell ``script`` with ``path`` as ``$1`` as ``account`` (a :mod:`pwd` entry) and its
    ``groups`` (root only): ``None`` when it succeeded, else why not (the last error's reason, e.g.
    "Permission denied", "Read-only file system")."""
    import subprocess

    try:
        done = subprocess.run(["/bin/sh", "-c", script, "sh", str(path)], user=account.pw_uid,
                              group=account.pw_gid, extra_groups=sorted(groups), cwd="/", capture_output=True,
                              text=True, timeout=30, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"})
    except (OSError, subprocess.SubprocessError) as exc:
        return f"it could not be tried: {getattr(exc, 'strerror', None) or exc}"
    if done.returncode == 0:
        return None
    said = done.stderr.strip().splitlines()
    return said[-1].rsplit(": ", 1)[-1] if said else f"exit status {done.returncode}"


def _could_read(user: str, path: Path) -> str | None:
    """Why ``user`` could not read the file ``path``; ``None`` when it could, or ``path`` does not
    exist. Run as root, the file is opened and a byte read as that account (:func:`_read_as`), so
    ACLs count; otherwise it is judged from the owner, group and permission bits of the file and
    the folders above it, as :func:`_could_write` judges folders."""
    import pwd
    import stat

    try:
        account = pwd.getpwnam(user)
    except KeyError:
        return f"there is no account {user} on this machine"
    if account.pw_uid == 0 or not path.exists():
        return None
    groups = set(os.getgrouplist(user, account.pw_gid))

    def allows(st, bits: int) -> bool:
        if st.st_uid == account.pw_uid:
            return st.st_mode & (bits << 6) == bits << 6
        if st.st_gid in groups:
            return st.st_mode & (bits << 3) == bits << 3
        return st.st_mode & bits == bits

    failed = _read_as(account, groups, path) if _running_as_root() else "not tried"
    if failed is None:
        return None
    try:
        for folder in reversed(path.parents):
            if not allows(folder.stat(), 0o1):
                return f"{folder} does not let {user} through ({stat.filemode(folder.stat().st_mode)})"
        st = path.stat()
    except OSError as exc:
        return f"{path} cannot be examined ({exc.strerror or exc})"
    if failed == "not tried" and allows(st, 0o4):
        return None
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = f"uid {st.st_uid}"
    said = f"it is {owner}'s, {stat.filemode(st.st_mode)}"
    if failed != "not tried":  # tried as that account: what stopped it (e.g. an ACL)
        return f"{said}: it could not be read as {user} ({failed})"
    return said


def _read_as(account, groups: set[int], path: Path) -> str | None:
    """Open the file ``path`` and read one byte of it as ``account`` (a :mod:`pwd` entry), in a shell
    run as that account (root only): ``None`` when it could, else why not (e.g. "Permission denied")."""
    return _shell_as(account, groups, 'head -c 1 -- "$1" > /dev/null', path)


def _readable_by_service(conf, what: str, path: Path | None, fix: str) -> list[dict]:
    """A problem when the account the server runs as (named, and not this one) cannot read the file
    ``path``: read as that account when root runs ``scatd doctor``, else judged from its owner and
    mode (:func:`_could_read`)."""
    user, where = _service_user(conf)
    if path is None or not user or user == _account():
        return []
    why = _could_read(user, Path(path))
    if why is None:
        return []
    return [_item(what, "problem", f"{path} cannot be read by {user}, the account the server runs as ({where}): "
                  f"{why}. {fix.format(user=user, path=path)}, then check with `sudo -u {user} scatd doctor`")]


def _config_file_items(conf) -> list[dict]:
    """The configuration file, and the problems of the settings in it: a file that is missing or
    cannot be read is said once, as a warning (not "ok" first)."""
    path = conf.config_file
    about_file = [p for p in conf.problems if path is not None and p.startswith(f"The configuration file {path} ")]
    if path is None:
        first = _item("configuration file", "ok", "none (defaults and environment variables)")
    elif about_file:
        first = _item("configuration file", "warning", " ".join(about_file)
                      + " The defaults and environment variables are used.")
    else:
        first = _item("configuration file", "ok", str(path))
    return ([first] + _readable_by_service(conf, "configuration file", path,
                                           "Let it read the file: `chmod o+r {path}` or `chgrp {user} {path}`")
            + [_item("configuration", "warning", p) for p in conf.problems
               if p not in about_file and p not in conf.fatal])  # those: problems of the login section


def _folder_item(key: str, path: Path) -> dict:
    """A folder scATD Studio writes: a folder (or not yet made), writable by this account (a file
    made and removed in it)."""
    if path.exists() and not path.is_dir():
        return _item(key, "problem", f"{path} is not a folder (a file of that name is there): point {key} at a "
                     "folder, or move the file away")
    if not _writable(path):
        why = _write_problem(path)  # what stopped it, e.g. "Permission denied", "Read-only file system"
        return _item(key, "problem", f"{path} cannot be written by this account ({_account()}): a file could not "
                     f"be made in it" + (f" ({why})" if why else ""))
    return _item(key, "ok", str(path) + (" (checked as root)" if _running_as_root() else ""))


def _service_items(conf, folders: dict[str, Path]) -> list[dict]:
    """What the folder checks above say of the account the server runs as. Run as root (who may
    write anywhere) they say nothing of it: said, with the command that checks that account. When
    the configuration or the installed unit names it and it is not this account, each folder's
    owner and permissions are checked against it."""
    user, where = _service_user(conf)
    me = _account()
    items = []
    if _running_as_root():
        who = user or "SERVICE_USER"
        named = (f" ({user}: {where})" if user else
                 " (the User= of its systemd unit: scatd in deploy/scatd-studio.service; set server.service_user "
                 "to have it checked here)")
        items.append(_item("checked as", "warning",
                           f"root: root may write in any folder, so the folder checks above say nothing of the "
                           f"account the server runs as{named}. Check that account's access with "
                           f"`sudo -u {who} scatd doctor`"))
    if user and user != me:
        from scatd_core.config import WRITTEN_FOLDERS

        needed = {key for key, _toml, _env in WRITTEN_FOLDERS}  # without them the server refuses to start
        for key, path in folders.items():
            why = _could_write(user, path)
            if why is not None:
                fix = f"chown -R {user} {path}" if path.exists() else f"mkdir -p {path} && chown -R {user} {path}"
                then = ("the server does not start (`python -m scatd_app` refuses; `streamlit run app.py` shows only "
                        "an administrator's message)" if key in needed else
                        "the server starts, but importing, training and removing models are refused")
                items.append(_item(key, "problem" if key in needed else "warning",
                                   f"{path} cannot be written by {user}, the account the server runs as ({where}): "
                                   f"{why}; {then}. Give it the folder (e.g. `{fix}`), then check with "
                                   f"`sudo -u {user} scatd doctor`"))
    return items


def _configuration(conf) -> list[dict]:
    items = _config_file_items(conf)
    folders = {key: Path(conf[key]) for key in ("home", "library", "work_dir")}
    for key, path in folders.items():
        items.append(_folder_item(key, path))
    items += _service_items(conf, folders)
    if (home := _home_item(conf, folders)) is not None:
        items.append(home)
    folder = conf["import_folder"]
    if folder is not None:
        items.append(_item("import_folder", "ok" if Path(folder).is_dir() else "warning",
                           f"{folder}" + ("" if Path(folder).is_dir() else " does not exist")))
    lim = conf.limits
    items.append(_item("limits", "ok", f"uploads {lim.max_upload_mb:,} MB, decompressed {lim.max_decompressed_mb:,} MB, "
                       f"dataset memory {lim.max_dataset_mb:,} MB, {lim.max_cells:,} cells, {lim.max_genes:,} genes, "
                       f"{lim.max_annotation_columns:,} annotation columns; "
                       f"{counted(conf['max_jobs'], 'computation')} at once; idle sessions kept {conf['session_ttl_minutes']} min"
                       f" and {conf['kept_sessions_mb']:,} MB"))
    from scatd_core.demo import cell_limit_warning

    if (demo_warning := cell_limit_warning(lim.max_cells)) is not None:
        items.append(_item("demo", "warning", demo_warning))
    items.append(_memory_item(conf))
    return items


def _home_item(conf, folders: dict[str, Path]) -> dict | None:
    """This account's home folder when it cannot be written (systemd's ProtectHome=read-only, a
    service account's home): ok when none of the folders the server writes is in it (said, so a
    read-only home is not mistaken for a fault); ``None`` when it is writable, or when one of those
    folders is in it (that folder's own item says what is wrong)."""
    home = Path(os.path.expanduser("~"))
    if _writable(home):
        return None
    inside = [key for key, path in folders.items() if Path(path) == home or home in Path(path).parents]
    if inside:
        return None
    return _item("home folder", "ok", f"{home} cannot be written by this account ({_account()}): not used; the "
                 f"folders scATD Studio writes are elsewhere ({', '.join(f'{k} {p}' for k, p in folders.items())})")


#: packages whose numba kernels are compiled with ``cache=True``: scanpy's are at its import, so
#: without a folder numba can write the server stops at start ("cannot cache function ...: no
#: locator available for file ...")
NUMBA_CACHED = ("scanpy", "umap", "pynndescent", "scatd_core")
_CACHE_FIX = ("e.g. in the systemd unit CacheDirectory=scatd-studio and Environment=NUMBA_CACHE_DIR="
              "/var/cache/scatd-studio/numba MPLCONFIGDIR=/var/cache/scatd-studio/matplotlib "
              "(deploy/scatd-studio.service has them)")


def _package_dir(name: str) -> Path | None:
    from importlib.util import find_spec

    try:
        spec = find_spec(name)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin).parent if spec is not None and spec.origin else None


def _numba_user_cache() -> Path:
    """numba's user-wide cache folder (its fallback when a package's own folder is read-only)."""
    try:
        from numba.misc.appdirs import AppDirs

        return Path(AppDirs(appname="numba", appauthor=False).user_cache_dir)
    except ImportError:
        return Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "numba"


def _caches(env=None) -> list[dict]:
    """Whether numba and matplotlib have folders this account can write: in a sandbox (systemd's
    ProtectSystem=strict and ProtectHome=true, a container run as another user) they may not.
    Where this process's environment does not choose their folders but the installed unit gives
    them to the server (``Environment=NUMBA_CACHE_DIR=...``), the server's folders are checked:
    the server is what must start (a read-only home it does not use is no failure)."""
    env = dict(os.environ if env is None else env)
    server, caches, unit = _server_environment()
    items = []
    for var, check in (("NUMBA_CACHE_DIR", _numba_cache_item), ("MPLCONFIGDIR", _matplotlib_item)):
        chosen = server.get(var, "").strip()
        if env.get(var, "").strip() or not chosen:
            items.append(check(env))
            continue
        made = [c for c in caches if Path(chosen) == Path("/var/cache", c) or Path("/var/cache", c) in Path(chosen).parents]
        item = check({**env, var: chosen})
        if item["status"] != "ok" and made and not Path(chosen).exists():  # systemd makes it, for User=, at start
            item = _item(item["what"], "ok", f"{var}={chosen}")
        where = (f" (the server's: Environment= in {unit}" + (f"; CacheDirectory={made[0]} is made by systemd "
                 "at start" if made else "") + ")")
        own = check(env)
        if own["status"] != "ok":
            where += (f". Not set here: commands run by hand as this account ({_account()}) need it too, e.g. "
                      f"`export {var}={chosen}`")
        status = "warning" if item["status"] == "ok" and own["status"] == "problem" else item["status"]
        items.append({**item, "status": status, "detail": item["detail"] + where})
    return items


def _numba_cache_item(env) -> dict:
    me = _account()
    crash = ("numba cannot cache its compiled functions and the server stops at start "
             "(\"cannot cache function ...: no locator available\")")
    chosen = env.get("NUMBA_CACHE_DIR", "").strip()
    if chosen:
        if _writable(Path(chosen)):
            return _item("numba cache", "ok", f"NUMBA_CACHE_DIR={chosen}")
        return _item("numba cache", "problem", f"NUMBA_CACHE_DIR={chosen} cannot be written by this account ({me}): "
                     f"{crash}. Make it writable, or set NUMBA_CACHE_DIR to a folder that is, {_CACHE_FIX}")
    dirs = [d for d in map(_package_dir, NUMBA_CACHED) if d is not None]
    read_only = [d for d in dirs if not _writable(d / "__pycache__")]
    if not read_only:
        return _item("numba cache", "ok", "next to the installed packages (NUMBA_CACHE_DIR is not set)")
    user = _numba_user_cache()
    if _writable(user):
        return _item("numba cache", "ok", f"{user} (NUMBA_CACHE_DIR is not set; the package folders are read-only)")
    return _item("numba cache", "problem", f"NUMBA_CACHE_DIR is not set, and neither the package folders "
                 f"({', '.join(map(str, read_only))}) nor {user} can be written by this account ({me}): {crash}. "
                 f"Set NUMBA_CACHE_DIR to a folder this account can write, {_CACHE_FIX}")


def _matplotlib_item(env) -> dict:
    import tempfile

    chosen = env.get("MPLCONFIGDIR", "").strip()
    home = os.path.expanduser("~")
    folders = [Path(chosen)] if chosen else [
        Path(env.get("XDG_CONFIG_HOME") or f"{home}/.config") / "matplotlib",
        Path(env.get("XDG_CACHE_HOME") or f"{home}/.cache") / "matplotlib"]
    blocked = [f for f in folders if not _writable(f)]
    what = f"MPLCONFIGDIR={chosen}" if chosen else " and ".join(map(str, folders))
    if not blocked:
        return _item("matplotlib folder", "ok", what)
    why = (f"{', '.join(map(str, blocked))} cannot be written by this account ({_account()})"
           + ("" if chosen else " and MPLCONFIGDIR is not set"))
    if _writable(Path(tempfile.gettempdir())):
        return _item("matplotlib folder", "warning", f"{why}: matplotlib uses a new temporary folder at every start "
                     f"(slower starts, a warning in the log). Set MPLCONFIGDIR to a folder this account can write, "
                     f"{_CACHE_FIX}")
    return _item("matplotlib folder", "problem", f"{why}, nor the temporary folder {tempfile.gettempdir()}: "
                 f"matplotlib stops the server at start. Set MPLCONFIGDIR to a folder this account can write, "
                 f"{_CACHE_FIX}")


def _memory_item(conf) -> dict:
    from scatd_core._memory import TYPICAL_IDLE_BYTES, machine_bytes
    from scatd_core.config import DEFAULT_MEMORY_SHARE, server_memory_bytes
    from scatd_core.demo import DEMO_MEMORY_BYTES

    budget, machine = server_memory_bytes(), machine_bytes()
    if budget is None:
        return _item("server memory", "warning", "the machine's memory cannot be read here; set server.memory_mb "
                     "so that new datasets are bounded by what the server has free")
    how = "server.memory_mb" if conf["memory_mb"] else f"{DEFAULT_MEMORY_SHARE:.0%} of the machine's or container's"
    text = f"{budget >> 20:,} MB" + (f" ({how}; this machine gives {machine >> 20:,} MB)" if machine else "")
    if machine and budget > machine:
        return _item("server memory", "warning",
                     text + ": more than the machine has, so it cannot keep the server within its memory")
    needed = TYPICAL_IDLE_BYTES + DEMO_MEMORY_BYTES
    if budget < needed:
        left = ("nothing is left for the users' data: every dataset read into memory is refused, even the demo's"
                if budget <= TYPICAL_IDLE_BYTES else
                f"only about {(budget - TYPICAL_IDLE_BYTES) >> 20:,} MB is left for the users' data, less than "
                f"one demo session takes (about {DEMO_MEMORY_BYTES >> 20:,} MB)")
        return _item("server memory", "warning",
                     text + f": the server itself holds about {TYPICAL_IDLE_BYTES >> 20:,} MB of it when idle (its "
                     f"libraries), so {left}. Set server.memory_mb to at least {needed >> 20:,} MB, or leave it "
                     "unset")
    if budget < conf.limits.max_dataset_bytes:
        return _item("server memory", "warning",
                     text + f": less than one dataset's limit ({conf.limits.max_dataset_mb:,} MB)")
    return _item("server memory", "ok", text)


def _library(conf) -> list[dict]:
    from scatd_core.bundle import UNREADABLE_PROBLEM, clean_library, list_library
    from scatd_core.errors import ScatdError

    root = Path(conf["library"])
    if root.exists() and not root.is_dir():
        return [_item("readable", "problem", f"{root} is not a folder: paths.library (SCATD_MODEL_LIBRARY) must "
                      "name the model library's folder")]
    unwritable = None
    try:  # repairing interrupted writes takes the library's lock: it writes
        items = [_item("repaired", "warning", done) for done in clean_library(root)]
    except (OSError, ScatdError) as exc:  # e.g. a read-only folder: said as "writable", reading is checked next
        unwritable = exc.message if isinstance(exc, ScatdError) else f"{exc.strerror or exc or type(exc).__name__}"
        items = []
    try:
        entries = list_library(root)
    except (OSError, ScatdError) as exc:
        why = exc.message if isinstance(exc, ScatdError) else f"{exc.strerror or type(exc).__name__}"
        return [_item("readable", "problem", f"{root}: {why}; the account running scATD Studio ({_account()}) "
                      "needs to read and write it: check its owner and permissions")]
    if unwritable is not None:
        items.append(_item("writable", "warning", f"{root} cannot be written by this account ({_account()}): "
                           f"{unwritable}. Predictions work; the app, training and imports need to write here "
                           "(and interrupted writes cannot be repaired): check its owner and permissions, or mount "
                           "it writable"))
    ok = [e for e in entries if e.ok]
    demo = f" ({sum(e.bundle.is_demo for e in ok)} demo)" if ok else ""
    items.append(_item("bundles", "ok" if ok else "warning",
                       f"{counted(len(ok), 'usable model')} in {root}{demo}" + ("" if ok else
                       ": nothing can be predicted. Get the published ones with `scatd models fetch`, import a "
                       "checkpoint with `scatd import-checkpoint`, train one with `scatd train`, or build the demo "
                       "with `scatd demo`")))
    # one damaged or unreadable model is never a failure of the whole library (the others are used): a FAIL
    # would keep the unit's server from starting (ExecStartPre) for every user. Nobody can pick a damaged
    # model (the app does not offer it, predict refuses it), so it is a warning that says what to do.
    items += [_item(e.path.name, "warning", e.problem if e.unreadable else
                    f"{e.problem.rstrip('.')}. It is not offered in the app and refused by `scatd predict`: re-import "
                    f"(`scatd import-checkpoint ... --replace`) or re-train it, or remove it with "
                    f"`scatd models remove {e.path.name} --yes`") for e in entries if not e.ok]
    items.append(_readability(root, [e for e in entries if e.problem == UNREADABLE_PROBLEM], entries))
    return items


def _account() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def _owner_only(folder: Path) -> bool:
    """Whether only the folder's owner may read it or one of its files (``tempfile``'s 0700/0600,
    what scATD Studio wrote before it followed the umask)."""
    try:
        return any(not (p.stat().st_mode & 0o044) for p in (folder, *folder.iterdir()) if not p.is_symlink())
    except OSError:
        return False


def _readability(root: Path, unreadable: list, entries: list) -> dict:
    """Whether this account can read every model, and whether the other accounts that use the library
    can read the ones this account can: a model only its owner can read is unusable to them (the
    server's service account, an administrator's own with the command line)."""
    me = _account()
    if unreadable:
        names = ", ".join(e.path.name for e in unreadable)
        return _item("readable", "warning",
                     f"{counted(len(unreadable), 'model')} cannot be read by this account ({me}): {names}. Made by "
                     f"another account without read permission for this one: make "
                     f"{'it' if len(unreadable) == 1 else 'them'} readable, e.g. "
                     f"chmod -R go+rX {root}/NAME (as their owner or root)")
    owners = set()
    for e in entries:
        try:
            owners.add(e.path.stat().st_uid)
        except OSError:
            pass
    private = [e.path.name for e in entries if _owner_only(e.path)]
    if private and (len(owners) > 1 or owners - {os.geteuid()}):
        return _item("readable", "warning",
                     f"{counted(len(private), 'model')} can be read by {'its' if len(private) == 1 else 'their'} owner "
                     f"only: {', '.join(private)}; the other accounts that use this library cannot use "
                     f"{'it. Make it' if len(private) == 1 else 'them. Make them'} readable, e.g. "
                     f"chmod -R go+rX {root}/NAME (as their owner or root)")
    return _item("readable", "ok", f"every model can be read by this account ({me})")


def _login(conf) -> list[dict]:
    from scatd_core.users import list_users

    mode = conf["auth_mode"]
    proxy = ("; behind a reverse proxy (the app listening on localhost), other machines reach it without a "
             "login: set auth.mode = \"password\"")
    items = [_item("mode", "ok" if mode in ("password", "oidc") else "warning",
                   {"auto": "password login when the server listens beyond localhost, none on localhost" + proxy,
                    "password": "password login always", "oidc": "Streamlit's OIDC login",
                    "none": "no login (only safe on a single-user machine)" + proxy}[mode])]
    items = [_item("setting", "problem", line) for line in conf.fatal] + items  # the app will not start
    items += _forwarded(conf)
    if mode in ("auto", "password"):
        from scatd_core.users import ownership_note

        path = Path(conf["auth_users_file"])
        # the server's account must read the file: root (who reads anything) would say "ok" below
        access = _readable_by_service(conf, "users file", path, "Give it to that account: `chown {user} {path}` "
                                      "(its mode 0600 stays; later changes by root keep its owner)")
        if not access and (note := ownership_note(path)):
            access = [_item("users file", "warning", note)]
        try:
            users = list_users()
        except Exception as exc:  # a broken users file is a problem to report, not a crash
            return items + access + [_item("users", "problem", str(exc).replace("\n", " "))]
        admins = [u.name for u in users if u.admin]
        status = "ok" if admins else ("problem" if mode == "password" else "warning")
        items.append(_item("users", status, f"{counted(len(users), 'user')}, admins: {', '.join(admins) or 'none'} "
                           f"({conf['auth_users_file']})" + ("" if admins else
                                                             "; add one with `scatd users add NAME --admin`")))
        items += access
    if mode == "oidc":  # who may sign in and who is admin: the [auth] keys, never the users file
        from scatd_core.oidc_access import setup_problems

        items += [_item(what, status, detail) for what, status, detail in setup_problems(conf)]
        try:
            listed = list_users()
        except Exception:  # a broken users file does not matter for an OIDC login
            listed = []
        if listed:
            items.append(_item("users file", "ok", f"{counted(len(listed), 'user')} in {conf['auth_users_file']}: not used "
                               "for sign-in while auth.mode is oidc"))
        items += _oidc_setup(conf)
    return items


def _forwarded(conf, environ=None) -> list[dict]:
    """A warning when the administrator's ``FORWARDED_ALLOW_IPS`` (the proxies the web server under
    Streamlit, uvicorn, believes ``X-Forwarded-For`` from) is not ``server.trusted_proxies``: the
    server keeps it, and the address of a failed login is taken from a header scATD would not believe."""
    from scatd_core.client_address import FORWARDED_ALLOW_IPS, networks, uvicorn_allow_ips

    env = os.environ if environ is None else environ
    if FORWARDED_ALLOW_IPS not in env:
        return []  # python -m scatd_app sets it to server.trusted_proxies
    given = env[FORWARDED_ALLOW_IPS]
    entries = [e.strip() for e in given.split(",") if e.strip()]
    nets, literals = networks([e for e in entries if e != "*"])
    ours = set(networks(conf["trusted_proxies"])[0])
    if "*" not in entries and not literals and set(nets) == ours:
        return []
    wanted = uvicorn_allow_ips(conf["trusted_proxies"])
    return [_item(FORWARDED_ALLOW_IPS, "warning",
                  f"the environment sets FORWARDED_ALLOW_IPS={given!r}, but server.trusted_proxies is "
                  f"{wanted.replace(',', ', ') or 'empty'}: the web server under Streamlit (uvicorn) takes a "
                  "client's address from X-Forwarded-For sent by those addresses, which counts failed logins "
                  "and names them in the login log. Set FORWARDED_ALLOW_IPS to the same proxies "
                  f"(FORWARDED_ALLOW_IPS={wanted!r}), or remove it: `python -m scatd_app` then sets it from "
                  "server.trusted_proxies")]


def _oidc_setup(conf, files=None) -> list[dict]:
    """With ``auth.mode = "oidc"``: Authlib, the ``[auth]`` keys of Streamlit's secrets (their names,
    never their values), whether the server's account can read that file, how long a sign-in lasts
    and the record of ended sign-ins (:mod:`scatd_core.oidc_setup`, :mod:`scatd_core.logins`)."""
    from scatd_core import logins, oidc_setup

    files = oidc_setup.default_secrets_files() if files is None else files
    items = []
    if why := oidc_setup.authlib_problem():
        items.append(_item("Authlib", "problem", why))
    else:
        try:
            items.append(_item("Authlib", "ok", version("Authlib")))
        except PackageNotFoundError:
            items.append(_item("Authlib", "ok", "importable"))
    found = oidc_setup.secrets_check(files)
    _auth, source, _ = oidc_setup.read_auth(files)
    if not any(status == "problem" for status, _ in found):
        items.append(_item("secrets", "ok", f"[auth] in {source}: {', '.join(oidc_setup.REQUIRED_KEYS)} set"))
    items += [_item("secrets", status, line) for status, line in found]
    items += _readable_by_service(conf, "secrets", source, "Give it to that account: `chown {user} {path}` and "
                                  "`chmod 600 {path}`")
    hours = conf["auth_max_login_hours"]
    items.append(_item("sign-in length", "ok", f"a sign-in lasts at most {counted(hours, 'hour')} (auth.max_login_hours); "
                       "Streamlit's own cookie would last 30 days"))
    items.append(logins.doctor_item(Path(conf["home"])))
    return items


#: A foundation model's problems that leave it merely not installed (it is optional: a warning) or
#: installed for other drug models than the published ones (another embedding size: a warning).
#: Any other (its files there but unusable: dictionaries of the other Geneformer generation,
#: damaged weights, a missing package) is an error, with what to do.
FOUNDATION_WARNINGS = {"missing_model", "missing_weights", "missing_gene_list", "missing_dictionaries",
                       "wrong_model"}


def _foundation(conf=None) -> list[dict]:
    """Each foundation-model backbone: its files (found, missing, what to do) and its drug models, as the
    Model page says them (:func:`scatd_core.backbone_setup.backbone_setup`)."""
    try:
        from scatd_core.backbone_setup import FOUNDATION, backbone_setup  # the foundation-model backbones
    except ImportError:
        return []
    from scatd_core.bundle import list_library

    conf = conf or settings()
    try:
        bundles = [e.bundle for e in list_library(Path(conf["library"])) if e.ok and e.bundle.kind == "classifier"]
    except Exception:  # the library's own problems are the "model library" section's
        bundles = []
    items = []
    for backbone in FOUNDATION:
        setup = backbone_setup(backbone, bundles, estimate=False)
        p = setup["probe"]
        codes = {x["code"] for x in p.get("problems", [])}
        status = ("ok" if p.get("ok") and not p.get("warnings") else
                  "problem" if codes - FOUNDATION_WARNINGS else "warning")
        models = setup["steps"][0]
        drug = (f" Drug models of this backbone: {', '.join(models['found'])}." if models["found"] else
                " No drug model of this backbone is installed (import one with `scatd import-checkpoint "
                f"--backbone {backbone}`, or train one with `scatd train --backbone {backbone}`).")
        items.append(_item(backbone, status, p.get("detail", "") + drug))
    return items


def _gene_ids(conf) -> list[dict]:
    """Whether users' Ensembl IDs can be mapped to the symbols the drug models use: Geneformer's
    gene-name dictionary (gene_name_id_dict.pkl) in foundation.geneformer_dir, readable."""
    from scatd_core.genes import default_symbol_dictionary

    problems: list[str] = []
    found = default_symbol_dictionary(problems)
    if found is not None:
        return [_item("Ensembl IDs -> symbols", "ok", f"Geneformer's gene dictionary ({len(found):,} symbols) maps "
                      "the Ensembl IDs of users' data to the symbols the drug models use")]
    if problems:
        return [_item("Ensembl IDs -> symbols", "warning", " ".join(problems))]
    return [_item("Ensembl IDs -> symbols", "warning",
                  f"not configured: mapping the Ensembl IDs of users' data (files without a symbol column) to the "
                  f"symbols the drug models use needs Geneformer's gene_name_id_dict.pkl in {conf['geneformer_dir']} "
                  "(foundation.geneformer_dir, SCATD_GENEFORMER_DIR); without it users must give a BioMart table "
                  "(the Data page, or --biomart on the command line)")]


def diagnose() -> dict:
    conf = settings()
    sections = {"software": _versions(), "device": _device(conf), "configuration": _configuration(conf),
                "model library": _library(conf), "login": _login(conf), "caches": _caches(),
                "gene identifiers": _gene_ids(conf)}
    foundation = _foundation(conf)
    if foundation:
        sections["foundation models"] = foundation
    flat = [i for items in sections.values() for i in items]
    return {"sections": sections, "n_problems": sum(i["status"] == "problem" for i in flat),
            "n_warnings": sum(i["status"] == "warning" for i in flat)}
