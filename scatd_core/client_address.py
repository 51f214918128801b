"""The address a login comes from, for the throttle of failed logins and the log (``scatd.auth``).

Behind a reverse proxy every connection comes from the proxy (nginx on ``127.0.0.1``), so the
person's own address is only in the headers the proxy adds (``X-Forwarded-For``, ``X-Real-IP``).
Anyone can send those headers, so they are believed only from a proxy the administrator names in
``server.trusted_proxies`` (``SCATD_TRUSTED_PROXIES``: addresses or networks, e.g.
``["127.0.0.1"]``) and only when the connection itself comes from one of them; otherwise the
address of the connection is the client's. Nothing here imports Streamlit.
"""

from __future__ import annotations

import ipaddress

UNKNOWN = "unknown"


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


def client_address(peer: str | None, headers, trusted) -> str:
    """The client's address: ``peer`` (the connection's), unless ``peer`` is a trusted proxy
    (``trusted``: :func:`networks`' list, or the setting's entries); then the last address of
    ``X-Forwarded-For`` that is not a trusted proxy (the one the proxy nearest to us saw; the ones
    before it the client may have written itself), else ``X-Real-IP``. A header that is not an
    address is ignored. ``trusted``: the entries of ``server.trusted_proxies``; ``headers``: a
    mapping with ``get`` (either case of the names)."""
    nets = networks(trusted)[0]
    peer_ip = _ip(peer) if peer else None
    if peer_ip is None:
        return str(peer) if peer else UNKNOWN
    if not _trusted(peer_ip, nets):
        return str(peer_ip)
    headers = headers or {}

    def header(name: str) -> str:
        value = headers.get(name) or headers.get(name.lower()) or ""
        return ",".join(value) if isinstance(value, (list, tuple)) else str(value)

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
