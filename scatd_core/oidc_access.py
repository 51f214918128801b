"""Who may sign in with OpenID Connect (``auth.mode = "oidc"``), and as whom.

The identity provider says who someone is; this server decides whether they may come in:

- **The identity** is the e-mail address, in lower case (``Alice@Lab.org`` and ``alice@lab.org``
  are one user, with one set of saved panels and sessions), and only when the provider vouches for
  it: the ``email_verified`` claim is ``true`` (the JSON value, or the text ``"true"`` in any
  case). An absent claim, ``false``, ``"FALSE"`` or anything else is not a verified address: an
  account at a provider that lets anyone type any address (the "nOAuth" problem) cannot become
  ``admin@lab.org``. Without a verified address the identity is the provider's subject id,
  ``oidc:<sub>``, never an administrator.
- **Who may sign in** is said by the administrator and fails closed: ``auth.allowed_emails`` (whole
  addresses) and ``auth.allowed_domains`` (``lab.org`` admits every verified address ending in
  ``@lab.org``, not ``@sub.lab.org``; ``"*"`` admits every verified address the provider gives:
  with Google, or a multi-tenant Microsoft Entra app, anyone in the world). With neither set, every
  sign-in is refused. A subject identity (no verified address) is admitted only when
  ``auth.allowed_emails`` names it, ``"oidc:<sub>"`` as the refusal reports it; ``"*"`` never admits
  one.
- **Administrators** are the verified addresses in ``auth.admins`` (compared in lower case); they
  must be admitted like anyone else (``scatd doctor`` warns when one is not).

Nothing here imports Streamlit: ``scatd_app.auth`` passes ``st.user``'s claims in, ``scatd doctor``
and ``scatd users`` describe the same settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from scatd_core.users import User

SUBJECT_PREFIX = "oidc:"
EVERYONE = "*"


def normal_email(text) -> str | None:
    """An e-mail address as this server compares it (trimmed, lower case), or ``None`` when ``text``
    is not one (not text, no ``@``, nothing before or after it)."""
    if not isinstance(text, str):
        return None
    email = text.strip().casefold()
    local, at, domain = email.rpartition("@")
    return email if at and local and domain and not any(c.isspace() for c in email) else None


def email_verified(claims) -> bool:
    """Whether the provider vouches for the e-mail address: ``email_verified`` is ``true`` (or the
    text "true" in any case); absent, ``false``, ``"FALSE"``, 1 or anything else is not."""
    value = claims.get("email_verified")
    return value is True or (isinstance(value, str) and value.strip().casefold() == "true")


def _entries(values) -> list[str]:
    """``auth.allowed_emails`` / ``auth.admins`` as compared: addresses in lower case, ``oidc:``
    subject ids exactly as written after the prefix (the provider's ids are case-sensitive)."""
    out = []
    for value in values or ():
        text = str(value).strip()
        if text[:len(SUBJECT_PREFIX)].casefold() == SUBJECT_PREFIX:
            out.append(SUBJECT_PREFIX + text[len(SUBJECT_PREFIX):].strip())
        elif text:
            out.append(text.casefold())
    return out


def _domains(values) -> list[str]:
    """``auth.allowed_domains`` as compared: lower case, without a leading ``@``."""
    return [d for d in (str(v).strip().casefold().lstrip("@") for v in values or ()) if d]


@dataclass(frozen=True)
class Policy:
    """Who may sign in (:func:`policy`)."""

    emails: tuple[str, ...]   # whole addresses (lower case) and ``oidc:<sub>`` ids
    domains: tuple[str, ...]  # lower case, ``*`` for every verified address
    admins: tuple[str, ...]   # lower case

    @property
    def empty(self) -> bool:
        return not self.emails and not self.domains

    @property
    def everyone(self) -> bool:
        return EVERYONE in self.domains

    def admits(self, identity: str) -> bool:
        """Whether ``identity`` (a normal e-mail address, or ``oidc:<sub>``) may sign in."""
        if identity in self.emails:
            return True
        if identity.startswith(SUBJECT_PREFIX):
            return False  # only by name: "*" and domains are about verified addresses
        return self.everyone or identity.rpartition("@")[2] in self.domains


def policy(conf) -> Policy:
    """The allow-list and administrators of the settings ``conf`` (:func:`scatd_core.config.settings`)."""
    return Policy(emails=tuple(dict.fromkeys(_entries(conf["auth_allowed_emails"]))),
                  domains=tuple(dict.fromkeys(_domains(conf["auth_allowed_domains"]))),
                  admins=tuple(dict.fromkeys(e for e in _entries(conf["auth_admins"])
                                             if not e.startswith(SUBJECT_PREFIX))))


@dataclass(frozen=True)
class Decision:
    """The outcome of one OIDC identity: ``user`` when it may come in; else why not, for the
    server's log (``reason``) and for the person (``message``, plain text, no setting values)."""

    identity: str
    user: User | None
    reason: str = ""
    message: str = ""


def contact(conf) -> str:
    """Whom a refused person is told to ask: the administrators' addresses (``auth.admins``)."""
    admins = policy(conf).admins
    return (f"an administrator of this server ({', '.join(admins)})" if admins else
            "the person who runs this server")


def decide(claims, conf) -> Decision:
    """Whether the identity that ``claims`` (``st.user``: the provider's ID-token claims) names may
    sign in, and as which user (see the module's rules)."""
    rules = policy(conf)
    email = normal_email(claims.get("email"))
    verified = email is not None and email_verified(claims)
    if verified:
        identity = email
    else:
        subject = claims.get("sub")
        identity = f"{SUBJECT_PREFIX}{str(subject).strip()}" if subject not in (None, "") else ""
    ask = contact(conf)
    if rules.empty:
        return Decision(identity, None, "nobody may sign in: neither auth.allowed_emails nor auth.allowed_domains "
                        "is set",
                        "Nobody can sign in to this server yet: its administrator has not said who may. Ask "
                        f"{ask} to list your e-mail address (or your institute's domain) as allowed.")
    if not verified:
        claim = claims.get("email_verified")
        why = (("the identity provider gave no e-mail address" if claims.get("email") in (None, "") else
                "the identity provider gave an e-mail address this server cannot read") if email is None else
               f"the identity provider did not confirm the e-mail address {email!r} (email_verified is "
               f"{'absent' if claim is None else repr(claim)[:40]})")
        if identity and rules.admits(identity):
            return Decision(identity, User(identity, False))
        admit = f"ask {ask} to admit your account" + (f" by its identifier {identity}." if identity else ".")
        if email:
            message = (f"This account is not allowed on this server: your identity provider did not confirm that "
                       f"the e-mail address {email} belongs to you, and this server admits only confirmed "
                       f"addresses. Confirm (verify) the address with your provider and log in again, or {admit}")
        else:
            message = ("This account is not allowed on this server: your identity provider gave no e-mail address "
                       f"for it that this server can use, and this server admits only confirmed addresses. Please "
                       f"{admit}")
        return Decision(identity, None, why + ("" if identity else "; no subject id either"), message)
    if not rules.admits(identity):
        return Decision(identity, None, "not in auth.allowed_emails and its domain not in auth.allowed_domains",
                        f"This account ({identity}) is not allowed on this server. Ask {ask} to add your "
                        "e-mail address to the people who may sign in, or log out and log in with an account "
                        "that is allowed.")
    return Decision(identity, User(identity, identity in rules.admins))


def provider_name(conf, metadata_url: str | None = None) -> str:
    """What the login page calls the identity provider: ``auth.provider_name``, else the host of
    its metadata address (``accounts.google.com``), else "your organisation's sign-in"."""
    if conf["auth_provider_name"]:
        return str(conf["auth_provider_name"])
    try:
        host = urlsplit(str(metadata_url or "")).hostname
    except ValueError:
        host = None
    return host or "your organisation's sign-in service"


def who_may_sign_in(conf) -> str:
    """One sentence for the login page: who may sign in (domains are named; single addresses are
    not, so the page tells no stranger who has an account)."""
    rules = policy(conf)
    if rules.empty:
        return ("Nobody can sign in yet: this server's administrator has not said who may (allowed addresses "
                "or domains).")
    if rules.everyone:
        return "Anyone with an account there whose e-mail address it has confirmed may sign in."
    others = [e for e in rules.emails if e.rpartition("@")[2] not in rules.domains]
    if rules.domains:
        domains = ", ".join("@" + d for d in rules.domains)
        return (f"People with a confirmed e-mail address ending in {domains} may sign in"
                + (", and a few others this server's administrator listed." if others else "."))
    return "Only the people this server's administrator listed may sign in."


def where_configured(conf) -> str:
    """Where the [auth] keys are set: the configuration file in use, or the standard one."""
    path = conf.config_file or "/etc/scatd/config.toml"
    return (f"in the [auth] section of {path} (or the environment variables SCATD_AUTH_ALLOWED_EMAILS, "
            "SCATD_AUTH_ALLOWED_DOMAINS, SCATD_AUTH_ADMINS)")


def summary_lines(conf) -> list[str]:
    """For ``scatd users`` in OIDC mode: who signs in, who is admin, where that is set."""
    rules = policy(conf)
    if rules.empty:
        allowed = "nobody: neither auth.allowed_emails nor auth.allowed_domains is set, so every sign-in is refused"
    elif rules.everyone:
        allowed = "anyone the identity provider accepts with a confirmed e-mail address (auth.allowed_domains = [\"*\"])"
    else:
        allowed = "; ".join(part for part in (
            ("addresses " + ", ".join(rules.emails)) if rules.emails else "",
            ("domains " + ", ".join(rules.domains)) if rules.domains else "") if part)
    return ["This server signs in with OIDC (auth.mode = \"oidc\"): the users file is not used for sign-in, "
            "and an admin role in it makes nobody an administrator.",
            f"Who may sign in (auth.allowed_emails, auth.allowed_domains): {allowed}.",
            f"Administrators (auth.admins): {', '.join(rules.admins) or 'none'}.",
            f"Both are set {where_configured(conf)}."]


def setup_problems(conf) -> list[tuple[str, str, str]]:
    """``(what, status, detail)`` for ``scatd doctor`` in OIDC mode: the administrators, who may sign
    in ("problem" when nobody may), and entries that cannot work."""
    rules = policy(conf)
    items = [("admins", "ok" if rules.admins else "warning",
              ", ".join(rules.admins) or "no auth.admins: nobody can replace or remove shared models in the app")]
    if rules.empty:
        items.append(("allowed", "problem", "neither auth.allowed_emails nor auth.allowed_domains is set: every "
                      "sign-in is refused. Say who may sign in, e.g. allowed_domains = [\"lab.org\"] or "
                      "allowed_emails = [\"alice@lab.org\"] (allowed_domains = [\"*\"] lets in anyone the identity "
                      f"provider accepts), {where_configured(conf)}"))
    elif rules.everyone:
        items.append(("allowed", "warning", "auth.allowed_domains = [\"*\"]: anyone with an account at the identity "
                      "provider and a confirmed e-mail address may sign in (with Google or a multi-tenant Microsoft "
                      "Entra app: anyone in the world)"))
    else:
        items.append(("allowed", "ok", "; ".join(part for part in (
            ("addresses: " + ", ".join(rules.emails)) if rules.emails else "",
            ("domains: " + ", ".join(rules.domains)) if rules.domains else "") if part)))
    odd = [e for e in rules.emails if not e.startswith(SUBJECT_PREFIX) and normal_email(e) is None]
    if odd:
        items.append(("allowed", "warning", f"auth.allowed_emails has entries that are not e-mail addresses: "
                      f"{', '.join(odd)} (a domain goes in auth.allowed_domains; a subject id is written "
                      "\"oidc:<id>\")"))
    odd = [d for d in rules.domains if d != EVERYONE and ("@" in d or "." not in d)]
    if odd:
        items.append(("allowed", "warning", f"auth.allowed_domains has entries that are not domains: {', '.join(odd)} "
                      "(write lab.org; a whole address goes in auth.allowed_emails)"))
    if EVERYONE in rules.emails:
        items.append(("allowed", "warning", "auth.allowed_emails = \"*\" admits nobody: to let everyone in, "
                      "write allowed_domains = [\"*\"]"))
    locked_out = [a for a in rules.admins if not rules.empty and not rules.admits(a)]
    if locked_out:
        items.append(("admins", "warning", f"{', '.join(locked_out)} cannot sign in: not in auth.allowed_emails "
                      "and not of a domain in auth.allowed_domains"))
    return items


def startup_lines(conf) -> list[str]:
    """What the server prints to its log when it starts in OIDC mode: the problems and warnings of
    :func:`setup_problems` (nobody may sign in, everyone may, entries that cannot work)."""
    if conf["auth_mode"] != "oidc":
        return []
    return [f"login: {what}: {detail}" for what, status, detail in setup_problems(conf) if status != "ok"]
