"""The address a login comes from, for the throttle of failed logins and the log (``scatd.auth``).

Behind a reverse proxy every connection comes from the proxy (nginx on ``127.0.0.1``), so the
person's own address is only in the headers the proxy adds (``X-Forwarded-For``, ``X-Real-IP``).
Anyone can send those headers, so they are believed only from a proxy the administrator names in
``server.trusted_proxies`` (``SCATD_TRUSTED_PROXIES``: addresses or networks, e.g.
``["127.0.0.1"]``) and only when the connection itself comes from one of them; otherwise the
address of the connection is the client's. Nothing here imports Streamlit.

The web server under Streamlit, uvicorn, applies ``X-Forwarded-For`` itself, before this module
sees the connection, for the addresses in the environment variable ``FORWARDED_ALLOW_IPS``
(uvicorn's default: ``127.0.0.1,::1``; Streamlit passes no proxy option). ``python -m scatd_app``
sets it to ``server.trusted_proxies`` (:func:`uvicorn_allow_ips`; empty, which uvicorn takes as no
one, when none), unless the administrator set it. Where uvicorn still believes a proxy scATD does
not (``streamlit run app.py``), :func:`client_address` does not believe the address uvicorn took
from the header either.
"""

from __future__ import annotations

import ipaddress
import os

UNKNOWN = "unknown"
#: The environment variable uvicorn reads the proxies it believes from, and its default.
FORWARDED_ALLOW_IPS = "FORWARDED_ALLOW_IPS"
UVICORN_DEFAULT = "127.0.0.1,::1"


def _ip(text) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(str(text).strip().strip("[]"))
    except ValueError:
        return None


def networks(entries) -> tuple[list, list[str]]:
    """``server.trusted_proxies`` as networks, and the entries that are not an address or network."""
    nets, bad = [], []
    for entry in entries or ():
        try:
            nets.append(ipaddress.ip_network(str(entry).strip(), strict=False))
        except ValueError:
            bad.append(str(entry))
    return nets, bad


def _trusted(ip, nets) -> bool:
    return ip is not None and any(ip.version == n.version and ip in n for n in nets)


def uvicorn_allow_ips(trusted) -> str:
    """``FORWARDED_ALLOW_IPS`` for uvicorn that believes exactly ``server.trusted_proxies``
    (``trusted``: its entries): ``"127.0.0.1,10.0.0.0/24"``; ``""`` when none (uvicorn then
    believes no one: an empty name matches no connection)."""
    return ",".join(str(net) for net in networks(trusted)[0])


def uvicorn_trust(environ=None) -> str:
    """What uvicorn believes in this process: ``FORWARDED_ALLOW_IPS``, else its default."""
    return (os.environ if environ is None else environ).get(FORWARDED_ALLOW_IPS, UVICORN_DEFAULT)


def _header(headers, name: str) -> str:
    value = headers.get(name) or headers.get(name.lower()) or ""
    return ",".join(value) if isinstance(value, (list, tuple)) else str(value)


def _hop_address(hop: str):
    """An ``X-Forwarded-For`` entry's address (uvicorn also accepts ``host:port``, ``[v6]:port``)."""
    hop = hop.strip()
    if hop.startswith("[") and "]" in hop:
        return _ip(hop[1:hop.index("]")])
    if hop.count(":") == 1:
        hop = hop.split(":")[0]
    return _ip(hop)


def _unforwarded(peer_ip, headers, nets, allow: str):
    """The connection's own address where uvicorn may have replaced it by one from
    ``X-Forwarded-For`` for a proxy (``allow``: its ``FORWARDED_ALLOW_IPS``) that scATD does not
    trust: then the connection came from one of those, whatever address the header names; its
    first entry stands for it (``unknown`` for ``*``). ``peer_ip`` as it was otherwise: no header,
    the peer not in it, or one of uvicorn's proxies trusted here too (then the connection may have
    come from that one: uvicorn's address is taken, as it was)."""
    entries = [e.strip() for e in allow.split(",") if e.strip()]
    if not entries:
        return peer_ip
    hops = {_hop_address(hop) for hop in _header(headers, "X-Forwarded-For").split(",") if hop.strip()}
    if peer_ip not in hops:
        return peer_ip
    if "*" in entries:
        return peer_ip if nets else UNKNOWN
    theirs = []
    for entry in entries:
        try:
            theirs.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:  # a literal (a unix socket's path): no address of ours
            continue
    if any(n.version == t.version and n.overlaps(t) for n in theirs for t in nets):
        return peer_ip
    return _ip(str(theirs[0].network_address)) if theirs else peer_ip


def client_address(peer: str | None, headers, trusted, forwarded_allow_ips: str | None = None) -> str:
    """The client's address: ``peer`` (the connection's), unless ``peer`` is a trusted proxy
    (``trusted``: :func:`networks`' list, or the setting's entries); then the last address of
    ``X-Forwarded-For`` that is not a trusted proxy (the one the proxy nearest to us saw; the ones
    before it the client may have written itself), else ``X-Real-IP``. A header that is not an
    address is ignored. ``trusted``: the entries of ``server.trusted_proxies``; ``headers``: a
    mapping with ``get`` (either case of the names). ``forwarded_allow_ips``: what uvicorn
    believes (:func:`uvicorn_trust`); a peer uvicorn may have taken from the header for a proxy
    that ``trusted`` does not name is not believed (:func:`_unforwarded`). ``None``: uvicorn
    rewrote nothing."""
    nets = networks(trusted)[0]
    headers = headers or {}
    peer_ip = _ip(peer) if peer else None
    if peer_ip is None:
        return str(peer) if peer else UNKNOWN
    if forwarded_allow_ips is not None:
        peer_ip = _unforwarded(peer_ip, headers, nets, forwarded_allow_ips)
        if peer_ip == UNKNOWN:
            return UNKNOWN
    if not _trusted(peer_ip, nets):
        return str(peer_ip)

    def header(name: str) -> str:
        return _header(headers, name)

    hops = [_ip(part) for part in header("X-Forwarded-For").split(",") if part.strip()]
    for ip in reversed(hops):
        if ip is None:
            break  # garbage: nothing before it can be trusted either
        if not _trusted(ip, nets):
            return str(ip)
    real = _ip(header("X-Real-IP")) if header("X-Real-IP").strip() else None
    if real is not None:
        return str(real)
    return str(peer_ip)
