"""Security, second red team (issue 23, the security half): each finding reproduced and shown
fixed. Real app, real database, real Redis; the log and stdout findings start the real
processes (gunicorn, scripts/run.py)."""
import os
import re
import time

import pytest

from webapp.extensions import db
from webapp.models import User

from conftest import csrf_from


@pytest.fixture(autouse=True)
def fresh_user_per_request(app):
    """Test-client requests share the test's app context: drop Flask-Login's and Flask-WTF's
    per-context caches before each request, as a real request's own context would."""
    from flask import g

    def _forget():
        g.pop("_login_user", None)
        g.pop("csrf_token", None)
    app.before_request_funcs.setdefault(None, []).insert(0, _forget)


def _token_login(client, email="acme@example.com", password="wrong-password", addr="198.51.100.20", **kw):
    return client.post("/api/v1/auth/token", json={"email": email, "password": password},
                       environ_base={"REMOTE_ADDR": addr}, **kw)


def _form_login(client, email="acme@example.com", password="password123", addr="198.51.100.20"):
    env = {"REMOTE_ADDR": addr}
    token = csrf_from(client.get("/login", environ_base=env).get_data(as_text=True))
    return client.post("/login", data={"email": email, "password": password, "csrf_token": token}, environ_base=env)


# -- throttling without lock-outs ------------------------------------------------------------------
def test_an_attacker_elsewhere_cannot_lock_the_victim_out(app, client, factory):
    """Reproduces the finding (10 wrong passwords from anywhere locked the right one out for 15
    minutes): the attacker's address is refused, the victim's own address is not; the email's
    failures across addresses only slow its attempts down."""
    app.config.update(TRUSTED_PROXIES=(), LOGIN_SLOWDOWN_SECONDS=0.4)
    factory.account()
    attacker = "203.0.113.66"
    codes = [_token_login(client, email="ACME@example.com " if i % 2 else "acme@example.com", addr=attacker).status_code
             for i in range(12)]
    assert codes[:10] == [401] * 10 and codes[10:] == [429, 429], codes
    # the attacker, even with the right password now, is refused from its address (form too)
    assert _token_login(client, password="password123", addr=attacker).status_code == 429
    assert _form_login(client, addr=attacker).status_code == 429

    # the victim, from an address that has not failed: in, by the API and by the form
    started = time.monotonic()
    r = _token_login(client, password="password123", addr="198.51.100.20")
    assert r.status_code == 201, r.get_data(as_text=True)
    # ...after the slow-down the email's failures earned (a lower bound: holds under any load)
    assert time.monotonic() - started >= 0.4
    r = _form_login(client, addr="198.51.100.20")
    assert r.status_code == 302 and r.headers["Location"].endswith("/")
    # a wrong password from a fresh address is a plain 401, not a refusal
    assert _token_login(client, addr="192.0.2.44").status_code == 401


def test_failures_spread_over_many_addresses_slow_down_without_refusing(app, client, factory):
    app.config.update(TRUSTED_PROXIES=(), LOGIN_SLOWDOWN_EMAIL="5 per minute", LOGIN_SLOWDOWN_SECONDS=0.5)
    factory.account()
    factory.account(name="Other")
    # below the ceiling: no wait at all is imposed (an upper bound would be a wall-time
    # assertion; what is checked is that the wait starts only past the ceiling)
    for i in range(5):
        assert _token_login(client, addr=f"192.0.2.{i + 1}").status_code == 401
    started = time.monotonic()
    assert _token_login(client, addr="192.0.2.100").status_code == 401  # never 429
    assert time.monotonic() - started >= 0.5
    started = time.monotonic()
    assert _token_login(client, password="password123", addr="192.0.2.101").status_code == 201
    assert time.monotonic() - started >= 0.5
    # another email is not slowed by this one's failures (its counter stays empty)
    from limits import parse
    from webapp.security import SLOWDOWN_SCOPE, limiter
    import hashlib
    other = hashlib.sha256(b"other@example.com").hexdigest()[:32]
    assert limiter.limiter.test(parse("1 per minute"), limiter._key_prefix, SLOWDOWN_SCOPE, other)
    assert _token_login(client, email="other@example.com", password="password123", addr="192.0.2.1").status_code == 201


def test_per_address_limit_still_refuses_a_guessing_address(app, client, factory):
    app.config.update(TRUSTED_PROXIES=(), LOGIN_RATE_LIMIT_IP="4 per minute", LOGIN_SLOWDOWN_SECONDS=0)
    factory.account()
    for i in range(4):
        assert _token_login(client, email=f"guess{i}@example.com", addr="203.0.113.9").status_code == 401
    assert _token_login(client, password="password123", addr="203.0.113.9").status_code == 429
    assert _token_login(client, password="password123", addr="203.0.113.10").status_code == 201


# -- the API bucket is the parsed token --------------------------------------------------------------
def test_api_bucket_keys_the_parsed_token_not_the_raw_header(app, client, factory):
    app.config.update(API_RATE_LIMIT="4 per minute")
    _acc, user = factory.account()
    tok = factory.token(user)
    spellings = [f"Bearer {tok}", f"bearer {tok}", f"BEARER {tok}", f"Bearer  {tok}"]
    for header in spellings:
        r = client.get("/api/v1/sites/", headers={"Authorization": header})
        assert r.status_code == 200, (header, r.status_code)
    for header in spellings:  # one bucket: every spelling is over it now
        r = client.get("/api/v1/sites/", headers={"Authorization": header})
        assert r.status_code == 429, header
    # a garbage header does not buy a fresh bucket per variation: it is counted per address
    codes = [client.get("/api/v1/sites/", headers={"Authorization": f"Basic x{i}"},
                        environ_base={"REMOTE_ADDR": "192.0.2.9"}).status_code for i in range(6)]
    assert codes[:4] == [401] * 4 and codes[4:] == [429, 429], codes


# -- webhook targets: every encoding of an inward address ------------------------------------------
INWARD = ["http://[2002:7f00:1::]:8089/",          # 6to4 of 127.0.0.1 (the finding)
          "http://[2002:a00:1::1]/",               # 6to4 of 10.0.0.1
          "http://[64:ff9b::7f00:1]/",             # NAT64 of 127.0.0.1
          "http://[64:ff9b::a9fe:a9fe]/",          # NAT64 of the metadata service
          "http://[64:ff9b:1::a00:1]/",            # local-use NAT64
          "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",  # Teredo
          "http://[::127.0.0.1]/",                 # IPv4-compatible
          "http://[::ffff:10.0.0.1]/",             # IPv4-mapped
          "http://[::ffff:0:7f00:1]/",             # IPv4-translated
          "http://[fec0::1]/",                     # site-local
          "http://127.1/", "http://0x7f000001/", "http://2130706433/", "http://017700000001/",  # inet_aton forms
          "http://localhost./", "http://10.0.0.1./"]


def _hooks_api(client, token, site_id, url):
    return client.post(f"/api/v1/sites/{site_id}/webhooks/", json={"url": url},
                       headers={"Authorization": f"Bearer {token}"})


@pytest.mark.parametrize("url", INWARD)
def test_inward_encodings_refused_when_saved(client, factory, url):
    acc, user = factory.account()
    site = factory.site(acc)
    r = _hooks_api(client, factory.token(user), site.id, url)
    assert r.status_code == 400 and "url" in r.json["errors"], r.json


def test_public_forms_still_accepted(client, factory):
    acc, user = factory.account()
    site = factory.site(acc)
    token = factory.token(user)
    for url in ("https://8.8.8.8/hook", "https://[2606:4700:4700::1111]/hook", "https://[64:ff9b::808:808]/",
                "https://hooks.example.com/x"):
        assert _hooks_api(client, token, site.id, url).status_code == 201, url


def _deliver_test_event(app, client, token, site_id, hook_id):
    from conftest import drain
    h = {"Authorization": f"Bearer {token}"}
    assert client.post(f"/api/v1/sites/{site_id}/webhooks/{hook_id}/test/", headers=h).status_code in (200, 201, 202)
    drain(app)
    r = client.get(f"/api/v1/sites/{site_id}/webhooks/{hook_id}/deliveries/", headers=h)
    return r.json["data"]["deliveries"][0]


@pytest.mark.parametrize("url", ["http://[2002:7f00:1::]:8089/", "http://[64:ff9b::7f00:1]/", "http://localhost:9/"])
def test_inward_targets_refused_at_delivery_without_showing_addresses(app, client, factory, url):
    """Saved while private targets were allowed (or a name that later resolves inward): the
    delivery checks again, and the attempt's error names the kind, not the DNS answer."""
    app.config["WEBHOOK_ALLOW_PRIVATE"] = True
    acc, user = factory.account()
    site = factory.site(acc)
    token = factory.token(user)
    r = _hooks_api(client, token, site.id, url)
    assert r.status_code == 201, r.json
    app.config["WEBHOOK_ALLOW_PRIVATE"] = False
    d = _deliver_test_event(app, client, token, site.id, r.json["data"]["webhook"]["id"])
    error = d["attempts"][0]["error"]
    assert d["status"] == "failed" and "refused" in error and d["attempts"][0]["status_code"] is None, d
    from urllib.parse import urlsplit
    rest = error.replace(urlsplit(url).hostname, "<host>")  # the URL's own host may be named
    for address in ("127.0.0.1", "::1", "7f00"):
        assert address not in rest, error


def test_connection_errors_do_not_show_the_address_connected_to(app, client, factory):
    """`localhost` resolves to 127.0.0.1 (and maybe ::1); nothing listens on port 9: the
    error says the connection failed, not where it went."""
    import socket
    app.config["WEBHOOK_ALLOW_PRIVATE"] = True
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    acc, user = factory.account()
    site = factory.site(acc)
    token = factory.token(user)
    r = _hooks_api(client, token, site.id, f"http://localhost:{port}/hook")
    d = _deliver_test_event(app, client, token, site.id, r.json["data"]["webhook"]["id"])
    error = d["attempts"][0]["error"]
    assert "connection failed" in error.lower(), error
    assert "127.0.0.1" not in error and "::1" not in error and "HTTPConnection" not in error, error
