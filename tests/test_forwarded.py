"""Red team: with no trusted proxy a client on the server's own machine sent a new X-Forwarded-For
with each login and was never locked out per address (and the log named the spoofed addresses):
the web server under Streamlit (uvicorn) believes X-Forwarded-For from 127.0.0.1 itself
(FORWARDED_ALLOW_IPS, default "127.0.0.1,::1") before scATD's own client_address sees the peer."""

from __future__ import annotations

import asyncio
import types

import pytest

ENV = "FORWARDED_ALLOW_IPS"  # unset in every test, the launcher's setting undone after it (conftest)


def _uvicorn_client(peer: str, forwarded: str) -> str:
    """The client address a real uvicorn (configured as the server would be now, from the
    environment, as Streamlit configures it: no proxy options) hands the app for a connection from
    ``peer`` that sends ``X-Forwarded-For: forwarded``."""
    import uvicorn

    seen = {}

    async def app(scope, receive, send):
        seen["client"] = scope["client"][0]

    config = uvicorn.Config(app)
    config.load()
    scope = {"type": "http", "client": (peer, 50000), "headers": [(b"x-forwarded-for", forwarded.encode())],
             "scheme": "http", "path": "/", "method": "GET"}
    asyncio.run(config.loaded_app(scope, None, None))
    return seen["client"]


def _launch(monkeypatch) -> tuple[int, dict]:
    """``python -m scatd_app`` with Streamlit's server replaced: what uvicorn would see."""
    import streamlit.web.cli

    from scatd_app import preflight, ui, uploads
    from scatd_app.__main__ import main as serve

    seen = {}

    def fake_main(*a, **k):
        import os

        seen["env"] = os.environ.get(ENV)
        seen["client"] = _uvicorn_client("127.0.0.1", "10.8.0.1")
        seen["proxied"] = _uvicorn_client("10.0.0.2", "10.8.0.1")
        return 0

    monkeypatch.setattr(preflight, "_REPORTED", set())
    monkeypatch.setattr(streamlit.web.cli, "main", fake_main)
    monkeypatch.setattr(ui, "start_up", lambda **k: None)
    monkeypatch.setattr(uploads, "install", lambda: True)
    return serve([]), seen


def test_the_launcher_makes_uvicorn_trust_no_proxy_without_trusted_proxies(monkeypatch):
    monkeypatch.delenv("SCATD_TRUSTED_PROXIES", raising=False)
    rc, seen = _launch(monkeypatch)
    assert rc == 0 and seen["env"] == ""
    assert seen["client"] == "127.0.0.1"  # the spoofed header from 127.0.0.1 is not applied


def test_the_launcher_makes_uvicorn_trust_exactly_the_trusted_proxies(monkeypatch):
    monkeypatch.setenv("SCATD_TRUSTED_PROXIES", "10.0.0.0/24")
    rc, seen = _launch(monkeypatch)
    assert rc == 0 and seen["env"] == "10.0.0.0/24"
    assert seen["client"] == "127.0.0.1" and seen["proxied"] == "10.8.0.1"


def test_the_launcher_keeps_an_administrators_forwarded_allow_ips_and_doctor_says_it_differs(monkeypatch):
    from scatd_core.config import settings
    from scatd_core.doctor import _login

    monkeypatch.setenv(ENV, "10.0.0.2")
    monkeypatch.delenv("SCATD_TRUSTED_PROXIES", raising=False)
    rc, seen = _launch(monkeypatch)
    assert rc == 0 and seen["env"] == "10.0.0.2" and seen["proxied"] == "10.8.0.1"
    said = [i for i in _login(settings()) if i["what"] == "FORWARDED_ALLOW_IPS"]
    assert said and said[0]["status"] == "warning"
    assert "server.trusted_proxies" in said[0]["detail"] and "10.0.0.2" in said[0]["detail"]
    monkeypatch.setenv("SCATD_TRUSTED_PROXIES", "10.0.0.2")  # the same: nothing to say
    assert not [i for i in _login(settings()) if i["what"] == "FORWARDED_ALLOW_IPS"]


def test_a_peer_uvicorn_took_from_x_forwarded_for_is_not_believed(monkeypatch):
    """`streamlit run app.py` (uvicorn's default trust, 127.0.0.1 and ::1) with no trusted proxy: the
    peer Streamlit reports is the spoofed header's; it is counted as the local connection instead."""
    import streamlit.runtime.context as st_context

    from scatd_app import auth
    from scatd_core.client_address import client_address

    monkeypatch.delenv("SCATD_TRUSTED_PROXIES", raising=False)
    spoofed = _uvicorn_client("127.0.0.1", "10.8.0.7")
    assert spoofed == "10.8.0.7"  # what uvicorn does by default
    monkeypatch.setattr(st_context, "_get_client_context", lambda: types.SimpleNamespace(remote_ip=spoofed))
    monkeypatch.setattr(auth.st, "context", types.SimpleNamespace(ip_address=spoofed,
                                                                  headers={"X-Forwarded-For": "10.8.0.7"}))
    assert auth._client() == "127.0.0.1"
    # a direct connection with no header, or uvicorn trusting exactly the proxies scATD trusts: as before
    assert client_address("10.8.0.7", {}, [], forwarded_allow_ips="127.0.0.1,::1") == "10.8.0.7"
    assert client_address("10.8.0.7", {"X-Forwarded-For": "10.8.0.7"}, [], forwarded_allow_ips="") == "10.8.0.7"
    assert client_address("10.8.0.7", {"X-Forwarded-For": "10.8.0.7"}, ["127.0.0.1"],
                          forwarded_allow_ips="127.0.0.1") == "10.8.0.7"
    assert client_address("10.8.0.7", {"X-Forwarded-For": "10.8.0.7"}, [], forwarded_allow_ips="*") == "unknown"


@pytest.mark.parametrize("trusted", ["", "127.0.0.1", "10.0.0.1/24, ::1"])
def test_the_value_given_to_uvicorn_names_exactly_the_trusted_proxies(trusted):
    from uvicorn.middleware.proxy_headers import _TrustedHosts

    from scatd_core.client_address import uvicorn_allow_ips

    entries = [e for e in trusted.split(",") if e.strip()]
    hosts = _TrustedHosts(uvicorn_allow_ips(entries))
    assert ("127.0.0.1" in hosts) == ("127.0.0.1" in trusted)
    assert ("10.0.0.9" in hosts) == ("10.0.0.1/24" in trusted)
    assert ("::1" in hosts) == ("::1" in trusted)
    assert "10.8.0.1" not in hosts
