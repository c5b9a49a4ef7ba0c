"""The websocket gate against a real gunicorn (the gevent worker of gunicorn.conf.py, as
`make run` starts it), real Redis and the real database: the per-user cap (4429) counted in
Redis, while another account is served; foreign Origins refused (4403); sockets that follow
their token's revocation and their session's logout (4401 within 10 s)."""
import re
import threading
import time

import pytest
import requests
import websocket

from conftest import wait_for
from webapp.automation.service import AutomationService
from webapp.extensions import db
from webapp.models import ApiToken
from webapp.models.base import utcnow
from webapp.redis_conn import get_redis
from webapp.web.sockets import claims_key

pytestmark = pytest.mark.processes  # real processes (see pytest.ini)

CAP = 3


@pytest.fixture
def web(gunicorn_web):
    return gunicorn_web(WS_MAX_PER_USER=CAP, ALLOWED_ORIGINS="https://console.example.com")


@pytest.fixture
def tenants(app, factory):
    acc, user = factory.account(credits=100_000)
    site = factory.site(acc, keywords=5)
    run = AutomationService(acc.id).start(site.id)  # no worker: the run stays active
    other, ouser = factory.account(name="Other", credits=100_000)
    osite = factory.site(other, keywords=5)
    return {"token": factory.token(user), "run_id": run.id, "user_id": user.id,
            "other_token": factory.token(ouser), "other_site": osite.id}


def close_code(ws, timeout=12):
    """Read until the close frame; its code."""
    ws.settimeout(timeout)
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return int.from_bytes(data[:2], "big"), data[2:].decode(errors="replace")


def open_log(server, run_id, header=(), **kw):
    return websocket.create_connection(f"ws://{server}/ws/runs/{run_id}/logs", header=list(header), timeout=10, **kw)


def test_gate(web, tenants):
    """One server for the three checks (a gunicorn start costs seconds)."""
    cap_origin_and_another_tenant_served(web, tenants)
    # (the server notices closed clients at their next poll, within seconds)
    wait_for(lambda: get_redis().zcard(claims_key(tenants["user_id"])) == 0, timeout=15, message="claims released")
    sockets_follow_token_revocation_and_logout(web, tenants)


def cap_origin_and_another_tenant_served(web, tenants):
    auth = [f"Authorization: Bearer {tenants['token']}"]
    socks = [open_log(web, tenants["run_id"], auth) for _ in range(2 * CAP)]
    results = [None] * len(socks)

    def first(i, ws):
        ws.settimeout(10)
        opcode, data = ws.recv_data(control_frame=True)
        results[i] = ("close", int.from_bytes(data[:2], "big"), data[2:].decode()) \
            if opcode == websocket.ABNF.OPCODE_CLOSE else ("line", data.decode())
    threads = [threading.Thread(target=first, args=(i, ws)) for i, ws in enumerate(socks)]
    [t.start() for t in threads]
    # Another account's status route answers while this user holds (and exceeds) its cap.
    t0 = time.time()
    r = requests.get(f"http://{web}/api/v1/automation/current_run/?site_id={tenants['other_site']}",
                     headers={"Authorization": f"Bearer {tenants['other_token']}"}, timeout=5)
    assert r.status_code == 200 and time.time() - t0 < 2
    [t.join(15) for t in threads]
    refused = [r for r in results if r and r[0] == "close"]
    served = [r for r in results if r and r[0] == "line"]
    assert len(served) == CAP and len(refused) == CAP, results
    assert all(code == 4429 and f"at most {CAP}" in reason for _, code, reason in refused)
    assert all("Run started" in line for _, line in served)
    # Counted in Redis, across processes: CAP claims now.
    assert get_redis().zcard(claims_key(tenants["user_id"])) == CAP
    for ws in socks:
        try:
            ws.close()
        except Exception:
            pass
    # Closed sockets give their places back.
    wait_for(lambda: get_redis().zcard(claims_key(tenants["user_id"])) == 0, timeout=10, message="claims released")
    # A claim whose process died (never renewed, expired) does not count.
    get_redis().zadd(claims_key(tenants["user_id"]), {f"dead{i}": time.time() - 1 for i in range(CAP)})
    ws = open_log(web, tenants["run_id"], auth)
    ws.settimeout(10)
    assert "Run started" in ws.recv()
    ws.close()

    # Origin: a foreign page is refused; our own origin, a listed one and none are served.
    ws = open_log(web, tenants["run_id"], auth, origin="https://evil.example")
    assert close_code(ws)[0] == 4403
    for origin in (f"http://{web}", "https://console.example.com", None):
        # (the server notices a client's close within a second; its place is then free)
        wait_for(lambda: get_redis().zcard(claims_key(tenants["user_id"])) < CAP, timeout=10, message="a free place")
        kw = {"origin": origin} if origin else {"suppress_origin": True}
        ws = open_log(web, tenants["run_id"], auth, **kw)
        ws.settimeout(10)
        assert "Run started" in ws.recv(), origin
        ws.close()


def login_cookie(server, email, password="password123"):
    s = requests.Session()
    page = s.get(f"http://{server}/login")
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page.text).group(1)
    r = s.post(f"http://{server}/login", data={"email": email, "password": password, "csrf_token": token})
    assert r.status_code in (200, 302)
    return s


def sockets_follow_token_revocation_and_logout(web, tenants):
    token_ws = open_log(web, tenants["run_id"], [f"Authorization: Bearer {tenants['token']}"])
    browser = login_cookie(web, "acme@example.com")
    cookie = "; ".join(f"{c.name}={c.value}" for c in browser.cookies)
    session_ws = open_log(web, tenants["run_id"], cookie=cookie)
    for ws in (token_ws, session_ws):
        ws.settimeout(10)
        assert "Run started" in ws.recv()
    # Revoke the token and log the browser out, at the same moment.
    tok = db.session.execute(db.select(ApiToken).where(ApiToken.user_id == tenants["user_id"])).scalar_one()
    tok.revoked_at = utcnow()
    db.session.commit()
    page = browser.get(f"http://{web}/").text
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
    t0 = time.time()
    assert browser.post(f"http://{web}/logout", data={"csrf_token": csrf}).status_code in (200, 302)
    codes = {}

    def watch(name, ws):
        codes[name] = (close_code(ws, timeout=15), time.time() - t0)
    threads = [threading.Thread(target=watch, args=("token", token_ws)),
               threading.Thread(target=watch, args=("session", session_ws))]
    [t.start() for t in threads]
    [t.join(20) for t in threads]
    for name in ("token", "session"):
        (code, reason), elapsed = codes[name]
        assert code == 4401 and elapsed < 10, (name, code, reason, elapsed)
    assert "revoked" in codes["token"][0][1] and "logged out" in codes["session"][0][1]
