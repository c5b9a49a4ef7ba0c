"""Security hardening (issue 11): each finding of the red-team pass reproduced, and shown fixed.
Real database (SQLite or PostgreSQL through TEST_DATABASE_URL), real Redis, nothing mocked."""
import re

import pytest
import requests
import websocket

from webapp.extensions import db
from webapp.models import User

from conftest import csrf_from


@pytest.fixture(autouse=True)
def fresh_user_per_request(app):
    """The test holds one app context that every test-client request shares, so Flask-Login's
    and Flask-WTF's per-context caches (g._login_user, g.csrf_token) would carry one client's
    user and token into the next client's request; in production each request has its own
    context. Drop them before every request."""
    from flask import g

    def _forget():
        g.pop("_login_user", None)
        g.pop("csrf_token", None)
    app.before_request_funcs.setdefault(None, []).insert(0, _forget)


# -- logout ends the session (finding 2) -------------------------------------------------------------
def _login(client, email="acme@example.com", password="password123"):
    token = csrf_from(client.get("/login").get_data(as_text=True))
    return client.post("/login", data={"email": email, "password": password, "csrf_token": token})


def _cookie(client):
    return client.get_cookie("session").value


def test_cookie_saved_before_logout_no_longer_works(app, client, factory):
    acc, _user = factory.account()
    site = factory.site(acc, keywords=3)
    _login(client)
    saved = _cookie(client)
    page = client.get("/").get_data(as_text=True)
    csrf = csrf_from(page)
    assert client.post("/logout", data={"csrf_token": csrf}).status_code == 302

    thief = app.test_client()
    thief.set_cookie("session", saved)
    r = thief.get("/")
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    r = thief.get(f"/api/v1/automation/estimate/?site_id={site.id}")
    assert r.status_code == 401
    r = thief.post(f"/api/v1/automation/run_now/?site_id={site.id}", headers={"X-CSRFToken": csrf})
    assert r.status_code == 401
    # a fresh login works again, and logging in does not revive the old cookie
    assert _login(client).status_code == 302
    assert client.get("/").status_code == 200
    assert thief.get("/").status_code == 302


def test_logout_ends_every_session_of_the_user_not_others(app, client, factory):
    factory.account()
    factory.account(name="Other")
    _login(client)
    other_tab = app.test_client()
    _login(other_tab)
    someone_else = app.test_client()
    _login(someone_else, email="other@example.com")
    client.post("/logout", data={"csrf_token": csrf_from(client.get("/").get_data(as_text=True))})
    assert other_tab.get("/").status_code == 302
    assert someone_else.get("/").status_code == 200


def test_logout_user_cli_and_password_change_end_sessions(app, client, factory, runner):
    _acc, user = factory.account()
    _login(client)
    assert client.get("/").status_code == 200
    r = runner.invoke(args=["logout-user", "ACME@example.com"])
    assert r.exit_code == 0, r.output
    assert client.get("/").status_code == 302
    assert runner.invoke(args=["logout-user", "ghost@example.com"]).exit_code == 1

    _login(client)
    assert client.get("/").status_code == 200
    u = db.session.get(User, user.id)
    u.set_password("a-new-password")
    db.session.commit()
    assert client.get("/").status_code == 302
    assert _login(client, password="a-new-password").status_code == 302


def test_logout_user_cli_can_revoke_tokens(app, client, factory, runner):
    _acc, user = factory.account()
    token = factory.token(user)
    h = {"Authorization": f"Bearer {token}"}
    assert runner.invoke(args=["logout-user", "acme@example.com"]).exit_code == 0
    assert client.get("/api/v1/sites/", headers=h).status_code == 200  # tokens kept by default
    r = runner.invoke(args=["logout-user", "acme@example.com", "--revoke-tokens"])
    assert r.exit_code == 0 and "revoked 1" in r.output
    assert client.get("/api/v1/sites/", headers=h).status_code == 401


def test_end_sessions_and_deactivation(app, client, factory):
    from webapp.security import end_sessions
    _acc, user = factory.account()
    _login(client)
    end_sessions(user)
    assert client.get("/").status_code == 302
    _login(client)
    user = db.session.get(User, user.id)
    user.active = False
    db.session.commit()
    assert client.get("/").status_code == 302


def test_websocket_refused_with_cookie_saved_before_logout(app, factory, live_server):
    from webapp.automation.service import AutomationService
    acc, _user = factory.account(credits=100_000)
    site = factory.site(acc, keywords=3)
    run = AutomationService(acc.id).start(site.id)
    s = requests.Session()
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', s.get(f"{live_server}/login").text).group(1)
    s.post(f"{live_server}/login", data={"email": "acme@example.com", "password": "password123", "csrf_token": token})
    cookie = "; ".join(f"{c.name}={c.value}" for c in s.cookies)
    url = live_server.replace("http://", "ws://") + f"/ws/runs/{run.id}/logs"
    ws = websocket.create_connection(url, cookie=cookie, timeout=10)
    ws.close()
    csrf = csrf_from(s.get(f"{live_server}/").text)
    assert s.post(f"{live_server}/logout", data={"csrf_token": csrf}, allow_redirects=False).status_code == 302
    assert ws_close_code(url, cookie=cookie) == 4401


def ws_close_code(url, **kw):
    """The close code the server sends first (a bug that lets the socket open fails here)."""
    ws = websocket.create_connection(url, timeout=10, **kw)
    try:
        opcode, data = ws.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE, (opcode, data[:80])
        return int.from_bytes(data[:2], "big")
    finally:
        try:
            ws.close()
        except Exception:
            pass


# -- throttling (finding 1) ------------------------------------------------------------------------
def _token_login(client, email="acme@example.com", password="wrong-password", **kw):
    return client.post("/api/v1/auth/token", json={"email": email, "password": password}, **kw)


def test_failed_logins_per_email_throttled_on_token_route_and_form(app, client, factory):
    app.config.update(LOGIN_RATE_LIMIT_EMAIL="3 per minute", LOGIN_RATE_LIMIT_IP="100 per minute")
    factory.account()
    factory.account(name="Other")
    for _ in range(3):
        assert _token_login(client).status_code == 401
    r = _token_login(client, password="password123")  # even the right password waits now
    assert r.status_code == 429 and r.json["success"] is False and "Too many failed sign-in attempts" in r.json["error"]
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    # the form shares the counter, and says so readably
    r = _login(client, email="ACME@example.com")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) <= 60
    assert "Too many failed sign-in attempts" in r.get_data(as_text=True)
    # another account from the same address is not locked out by this one
    assert _token_login(client, email="other@example.com", password="password123").status_code == 201
    # successes never count
    for _ in range(5):
        assert _token_login(client, email="other@example.com", password="password123").status_code == 201
    # the counter lives in Redis, so every web process sees it
    from webapp.redis_conn import get_redis
    assert any(b"login-email" in k for k in get_redis().keys("*"))


def test_failed_logins_per_address_and_trusted_proxy(app, client, factory):
    import ipaddress
    app.config.update(LOGIN_RATE_LIMIT_EMAIL="100 per minute", LOGIN_RATE_LIMIT_IP="4 per minute",
                      TRUSTED_PROXIES=())  # clients connect directly
    factory.account()
    for i in range(4):
        assert _token_login(client, email=f"guess{i}@example.com").status_code == 401
    assert _token_login(client, email="acme@example.com", password="password123").status_code == 429
    # a header the client sets itself does not give it a new address...
    spoof = {"X-Forwarded-For": "203.0.113.9"}
    assert _token_login(client, email="acme@example.com", password="password123", headers=spoof).status_code == 429
    # ...but another real address is not affected
    other = {"REMOTE_ADDR": "198.51.100.7"}
    assert _token_login(client, password="password123", environ_base=other).status_code == 201

    # behind a trusted proxy (10.0.0.5), the hop it appended to X-Forwarded-For is the client;
    # what the client wrote into the header itself (left of it) changes nothing
    app.config["TRUSTED_PROXIES"] = (ipaddress.ip_network("10.0.0.0/24"),)
    via = {"REMOTE_ADDR": "10.0.0.5"}
    for i in range(4):
        assert _token_login(client, email=f"guess{i}@example.com", environ_base=via,
                            headers={"X-Forwarded-For": f"6.6.6.{i}, 192.0.2.1"}).status_code == 401
    assert _token_login(client, password="password123", environ_base=via,
                        headers={"X-Forwarded-For": "192.0.2.1"}).status_code == 429
    assert _token_login(client, password="password123", environ_base=via,
                        headers={"X-Forwarded-For": "192.0.2.2, 10.0.0.7"}).status_code == 201
    # an untrusted peer's X-Forwarded-For is ignored: it is counted as itself
    assert _token_login(client, password="password123", environ_base={"REMOTE_ADDR": "192.0.2.1"},
                        headers={"X-Forwarded-For": "192.0.2.99"}).status_code == 429


def test_api_limit_per_token_with_headers(app, client, factory):
    app.config.update(API_RATE_LIMIT="5 per minute")
    _acc, user = factory.account()
    a, b = factory.token(user), factory.token(user)
    for i in range(5):
        r = client.get("/api/v1/sites/", headers={"Authorization": f"Bearer {a}"})
        assert r.status_code == 200
        assert r.headers["X-RateLimit-Limit"] == "5" and r.headers["X-RateLimit-Remaining"] == str(4 - i)
        assert "X-RateLimit-Reset" in r.headers and "Retry-After" not in r.headers
    r = client.get("/api/v1/sites/", headers={"Authorization": f"Bearer {a}"})
    assert r.status_code == 429 and r.json["success"] is False and "Rate limit exceeded" in r.json["error"]
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    assert client.get("/api/v1/sites/", headers={"Authorization": f"Bearer {b}"}).status_code == 200


def test_throttling_holds_without_redis(app_env, factory, monkeypatch):
    """Redis unreachable: no 500 from the limiter, and failed logins are still counted (in the
    process's memory) until it is back."""
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:9/0")  # nothing listens on port 9
    from webapp import create_app
    app = create_app({"TESTING": True})
    app.config.update(LOGIN_RATE_LIMIT_EMAIL="2 per minute")
    with app.app_context():
        factory.app = app
        factory.account()
        c = app.test_client()
        assert _token_login(c).status_code == 401
        assert _token_login(c).status_code == 401
        assert _token_login(c, password="password123").status_code == 429
    # the next app (its Redis reachable) counts in Redis again, not in that process memory
    monkeypatch.setenv("REDIS_URL", app_env["REDIS_URL"])
    healthy = create_app({"TESTING": True})
    with healthy.app_context():
        c = healthy.test_client()
        assert _token_login(c, password="password123").status_code == 201
        from webapp.redis_conn import get_redis
        assert _token_login(c).status_code == 401 and get_redis().keys("*login-email*")


# -- headers (finding 3) ---------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/login", "/", "/api/v1/sites/", "/static/css/app.css", "/nope", "/healthz",
                                  "/api/v1/openapi.json"])
def test_security_headers_on_every_response(client, path):
    r = client.get(path)
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert r.headers["X-Frame-Options"] == "DENY" and r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Referrer-Policy"] == "same-origin"
    assert "Strict-Transport-Security" not in r.headers


def test_secure_cookies_and_hsts_from_env(app_env, monkeypatch, factory):
    monkeypatch.setenv("SECURE_COOKIES", "1")
    from webapp import create_app
    app = create_app({"TESTING": True})
    with app.app_context():
        factory.app = app
        factory.account()
        c = app.test_client()
        r = c.get("/login")
        assert r.headers["Strict-Transport-Security"].startswith("max-age=")
        r = _login(c)
        cookie = [h for h in r.headers.getlist("Set-Cookie") if h.startswith("session=")][0]
        assert "Secure" in cookie and "HttpOnly" in cookie


def test_templates_have_no_inline_script_or_style():
    from pathlib import Path
    for path in (Path(__file__).resolve().parent.parent / "templates").rglob("*.html"):
        html = path.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), path
        assert not re.search(r"<style|\sstyle=|\son[a-z]+=", html), path


# -- hostile input (finding 4, 5) --------------------------------------------------------------------
@pytest.fixture
def tenant(app, factory):
    acc, user = factory.account(credits=100_000)
    site = factory.site(acc, keywords=3)
    return {"acc": acc, "site": site, "h": {"Authorization": f"Bearer {factory.token(user)}"}}


def test_deeply_nested_json_is_400_on_every_json_route(app, client, tenant):
    deep = "[" * 1000 + "]" * 1000
    routes = []
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/") and rule.methods & {"POST", "PUT", "PATCH"}:
            path = re.sub(r"<[^>]+>", "1", rule.rule) + f"?site_id={tenant['site'].id}&run_id=1"
            for method in sorted(rule.methods & {"POST", "PUT", "PATCH"}):
                routes.append((method, path))
    assert len(routes) >= 8
    for method, path in routes:
        r = client.open(path, method=method, data=deep, content_type="application/json", headers=tenant["h"])
        assert r.status_code == 400, (method, path, r.status_code)
        assert "nested more than" in r.json["error"], (path, r.json)
    # also from a body that is not declared as JSON but parsed as such
    from webapp.validation import json_depth_exceeds
    assert json_depth_exceeds(deep) and not json_depth_exceeds('{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}')


@pytest.mark.parametrize("bad", ["\\ud800", "a\\u0000b"])
def test_surrogates_and_nul_refused_before_the_database(app, client, tenant, bad):
    from webapp.models import Keyword, Site
    h = {**tenant["h"], "Content-Type": "application/json"}
    sites_before = db.session.execute(db.select(db.func.count()).select_from(Site)).scalar()
    r = client.post("/api/v1/sites/", data='{"name": "x%s"}' % bad, headers=h)
    assert r.status_code == 400 and "name" in r.json["errors"], r.json
    kw_before = db.session.execute(db.select(db.func.count()).select_from(Keyword)).scalar()
    r = client.post(f"/api/v1/planner/keywords/bulk?site_id={tenant['site'].id}",
                    data='{"keywords": [{"keyword": "ok"}, {"keyword": "k%s"}]}' % bad, headers=h)
    assert r.status_code == 400 and r.json["success"] is False
    r = client.post(f"/api/v1/automation/run_now/?site_id={tenant['site'].id}", data='{"reason": "%s"}' % bad, headers=h)
    assert r.status_code == 400 and "reason" in r.json["errors"]
    db.session.rollback()
    assert db.session.execute(db.select(db.func.count()).select_from(Site)).scalar() == sites_before
    assert db.session.execute(db.select(db.func.count()).select_from(Keyword)).scalar() == kw_before


def test_nul_in_web_forms_and_csv_is_400(app, client, tenant):
    _login(client)
    site = tenant["site"]
    csrf = csrf_from(client.get(f"/sites/{site.id}/keywords").get_data(as_text=True))
    r = client.post(f"/sites/{site.id}/keywords", data={"keywords": "good\nba\x00d", "csrf_token": csrf})
    assert r.status_code == 400 and "NUL" in r.get_data(as_text=True)
    h = {**tenant["h"], "Content-Type": "text/csv"}
    r = client.post(f"/api/v1/planner/keywords/bulk?site_id={site.id}", data="keyword\nx\x00y\n", headers=h)
    assert r.status_code == 400


def test_reason_length_is_the_same_for_form_and_api(app, client, tenant):
    from webapp.models import AutomationRun
    site = tenant["site"]
    long_reason = "r" * 501
    r = client.post(f"/api/v1/automation/run_now/?site_id={site.id}", json={"reason": long_reason}, headers=tenant["h"])
    assert r.status_code == 400 and "at most 500" in r.json["error"]
    _login(client)
    page = client.get(f"/sites/{site.id}/automation").get_data(as_text=True)
    r = client.post(f"/sites/{site.id}/automation/run", data={"reason": long_reason, "csrf_token": csrf_from(page)})
    assert r.status_code == 400 and "at most 500" in r.get_data(as_text=True)
    assert db.session.execute(db.select(AutomationRun)).first() is None
    # 500 characters is fine on both, and a long pause reason is stored, not a database error
    r = client.post(f"/api/v1/automation/run_now/?site_id={site.id}", json={"reason": "s" * 500}, headers=tenant["h"])
    assert r.status_code == 201
    run_id = r.json["data"]["run_id"]
    r = client.post(f"/runs/{run_id}/pause", data={"reason": "p" * 500, "csrf_token": csrf_from(page)})
    assert r.status_code == 302
    db.session.expire_all()
    run = db.session.get(AutomationRun, run_id)
    assert run.status == "paused" and run.pause_reason == "p" * 255


HUGE = "99999999999999999999999"


def test_huge_and_foreign_ids_in_web_paths_are_404(app, client, tenant):
    _login(client)
    csrf = csrf_from(client.get("/").get_data(as_text=True))
    for path in (f"/runs/{HUGE}", f"/runs/{HUGE}/log.txt", f"/sites/{HUGE}/automation",
                 f"/sites/{HUGE}/automation/panel/run", f"/sites/{HUGE}/keywords", f"/runs/{2**31}",
                 "/runs/\u0662", "/sites/\u0662/automation", f"/media/images/{HUGE}.png"):
        assert client.get(path).status_code == 404, path
    assert client.post(f"/runs/{HUGE}/cancel", data={"csrf_token": csrf}).status_code == 404


def test_websocket_bad_ids_close_4404(app, tenant, live_server, factory):
    token = tenant["h"]["Authorization"]
    base = live_server.replace("http://", "ws://")
    for bad in (HUGE, "abc", "%D9%A2", "0", "-1", str(2**31)):
        for kind in ("logs", "processing"):
            assert ws_close_code(f"{base}/ws/runs/{bad}/{kind}", header=[f"Authorization: {token}"]) == 4404, bad
    assert ws_close_code(f"{base}/ws/runs/{HUGE}/logs") == 4401  # not logged in comes first


def test_login_next_with_control_characters_or_backslash(client, factory):
    factory.account()
    for nxt in ("/x%0d%0aSet-Cookie:%20a=b", "/%5C%5Cevil.example", "/\\evil.example"):
        csrf = csrf_from(client.get(f"/login?next={nxt}").get_data(as_text=True))
        r = client.post(f"/login?next={nxt}", data={"email": "acme@example.com", "password": "password123",
                                                    "csrf_token": csrf})
        assert r.status_code == 302 and r.headers["Location"] == "/", (nxt, r.headers.get("Location"))
        client.post("/logout", data={"csrf_token": csrf_from(client.get("/").get_data(as_text=True))})


def test_ids_are_ascii_digits_or_400(client, tenant):
    from urllib.parse import quote
    for value in ["1_0", "+2", "\u0662", " 2", "2 ", "0x2", "2.0", "", "1e3", "-1", "99999999999999999999"]:
        r = client.get(f"/api/v1/automation/estimate/?site_id={quote(value)}", headers=tenant["h"])
        assert r.status_code == 400 and "site_id" in r.json["error"], (value, r.json)


def test_well_formed_missing_id_is_404_and_empty_lines_is_400(client, tenant):
    r = client.get("/api/v1/automation/estimate/?site_id=2147483647", headers=tenant["h"])
    assert r.status_code == 404
    site = tenant["site"]
    from webapp.automation.service import AutomationService
    run = AutomationService(tenant["acc"].id).start(site.id)
    r = client.get(f"/api/v1/automation/logs/?run_id={run.id}&lines=", headers=tenant["h"])
    assert r.status_code == 400 and "lines" in r.json["error"]
    assert client.get(f"/api/v1/automation/logs/?run_id={run.id}", headers=tenant["h"]).status_code == 200


# -- auth header details (finding 6) ---------------------------------------------------------------
def test_bearer_scheme_any_case_and_401_messages(client, tenant):
    raw = tenant["h"]["Authorization"].split(" ", 1)[1]
    for scheme in ("bearer", "BEARER", "Bearer"):
        assert client.get("/api/v1/sites/", headers={"Authorization": f"{scheme} {raw}"}).status_code == 200
    cases = [({}, "missing"), ({"Authorization": "Basic YTpi"}, "Malformed"),
             ({"Authorization": "Bearer"}, "Malformed"), ({"Authorization": "Bearer ac_nope"}, "Invalid or revoked")]
    for headers, word in cases:
        r = client.get("/api/v1/sites/", headers=headers)
        assert r.status_code == 401 and word in r.json["error"], (headers, r.json)
        assert r.headers["WWW-Authenticate"].startswith("Bearer")


# -- private files and Redis (finding 7) -------------------------------------------------------------
def _mode(path):
    import os
    return os.stat(path).st_mode & 0o777


def test_files_created_private(app, app_env, tenant):
    from pathlib import Path
    from conftest import drain
    from webapp.automation.service import AutomationService
    from webapp.config import persistent_secret_key
    instance = Path(app.instance_path)
    assert _mode(instance) == 0o700
    key = persistent_secret_key(instance)
    assert key and _mode(instance / "secret_key") == 0o600
    AutomationService(tenant["acc"].id).start(tenant["site"].id)
    drain(app, max_jobs=3)
    logs = [p for p in Path(app_env["LOG_DIR"]).rglob("*")]
    assert logs and all(_mode(p) == (0o700 if p.is_dir() else 0o600) for p in logs), [(p, oct(_mode(p))) for p in logs]
    db_uri = app.config["SQLALCHEMY_DATABASE_URI"]
    if db_uri.startswith("sqlite"):
        fresh = instance / "automation.db"
        import sqlite3
        sqlite3.connect(fresh).execute("create table t (x)").connection.close()
        assert _mode(fresh) == 0o600


@pytest.mark.processes
def test_embedded_redis_private(tmp_path):
    import os
    import redis
    from webapp.redis_conn import start_embedded
    url, proc = start_embedded(tmp_path / "inst")
    try:
        assert _mode(tmp_path / "inst" / "redis.url") == 0o600
        assert _mode(tmp_path / "inst" / "redis" / "redis.conf") == 0o600
        password = redis.connection.parse_url(url)["password"]
        assert password and len(password) >= 32
        cmdline = open(f"/proc/{proc.pid}/cmdline", "rb").read().decode()
        assert password not in cmdline
        port = redis.connection.parse_url(url)["port"]
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=port, retry=None).ping()
        r = redis.Redis.from_url(url)
        assert r.ping() and r.config_get("bind")["bind"] == "127.0.0.1"
    finally:
        proc.terminate()
        proc.wait(10)
    assert os.environ.get("REDIS_URL") is None or True


# -- /status (finding 8) ---------------------------------------------------------------------------
def test_status_details_only_for_users_and_operators(app, client, factory):
    factory.account()
    anon = client.get("/status").json
    assert "workers" not in anon and isinstance(anon["worker_count"], int) and "runs" in anon
    app.config["STATUS_TOKEN"] = "op-token-123"
    assert "workers" in client.get("/status", headers={"Authorization": "Bearer op-token-123"}).json
    assert "workers" not in client.get("/status", headers={"Authorization": "Bearer wrong"}).json
    _login(client)
    assert "workers" in client.get("/status").json


def test_review_form_ids_are_ascii_digits(app, client, tenant):
    _login(client)
    site = tenant["site"]
    csrf = csrf_from(client.get(f"/sites/{site.id}/review").get_data(as_text=True))
    for act, extra in (("approve:selected", {"ids": "\u0662"}), ("approve:\u0662", {})):
        r = client.post(f"/sites/{site.id}/review", data={"act": act, "csrf_token": csrf, **extra})
        assert r.status_code == 400, (act, r.status_code)
