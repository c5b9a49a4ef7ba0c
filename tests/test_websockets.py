"""Websockets with a real client against a real HTTP server of the app: lines arrive in
order after they are written, a reconnect with ?after=N resumes without loss or repeat,
and unauthorised or foreign connections are closed with 4401 / 4404."""
import json
import re
import time

import pytest
import requests
import websocket

from webapp.automation.logger import AutomationLogger
from webapp.automation.service import AutomationService
from webapp.automation.state import build_state, publish_state
from webapp.extensions import db
from webapp.models import AutomationRun
from webapp.redis_conn import get_redis




@pytest.fixture
def server(live_server):
    return live_server.removeprefix("http://")


@pytest.fixture
def setup(app, factory):
    acc, user = factory.account(credits=100_000)
    site = factory.site(acc, keywords=5)
    run = AutomationService(acc.id, actor="user:t").start(site.id)
    other, _ = factory.account(name="Other", credits=100_000)
    osite = factory.site(other, keywords=5)
    orun = AutomationService(other.id).start(osite.id)
    return {"token": factory.token(user), "run_id": run.id, "other_run": orun.id,
            "run": db.session.get(AutomationRun, run.id)}


def session_cookie(server):
    s = requests.Session()
    page = s.get(f"http://{server}/login")
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page.text).group(1)
    s.post(f"http://{server}/login", data={"email": "acme@example.com", "password": "password123", "csrf_token": token})
    return "; ".join(f"{c.name}={c.value}" for c in s.cookies)


def recv_lines(ws, n, timeout=5):
    out = []
    ws.settimeout(timeout)
    while len(out) < n:
        out.append(ws.recv())
    return out


def test_log_tail_live_in_order_and_resume(app, server, setup):
    logger = AutomationLogger(app.config["LOG_DIR"], setup["run"], get_redis())
    run_id = setup["run_id"]
    ws = websocket.create_connection(f"ws://{server}/ws/runs/{run_id}/logs",
                                     header=[f"Authorization: Bearer {setup['token']}"])
    first = recv_lines(ws, 1)
    assert "Run started" in first[0]  # the last lines of the file come first
    for i in range(20):
        logger.log(f"line {i} ✓", stage=4)
    got = recv_lines(ws, 20)
    assert [g.split("] ", 1)[1] for g in got] == [f"line {i} ✓" for i in range(20)]
    ws.close()
    # Client saw lines 1..21; lines written while it is away arrive on resume, none repeated.
    for i in range(20, 25):
        logger.log(f"line {i}", stage=4)
    ws = websocket.create_connection(f"ws://{server}/ws/runs/{run_id}/logs?after=21",
                                     header=[f"Authorization: Bearer {setup['token']}"])
    got = recv_lines(ws, 5)
    assert [g.split("] ", 1)[1] for g in got] == [f"line {i}" for i in range(20, 25)]
    logger.log("after resume", stage=5)
    assert recv_lines(ws, 1)[0].endswith("after resume")
    ws.settimeout(1.5)
    with pytest.raises(websocket.WebSocketTimeoutException):
        ws.recv()  # nothing repeated
    ws.close()


def _hub_subscriptions():
    """Pattern subscriptions on this test's Redis database: the live hub's connection."""
    r = get_redis()
    number = int(r.connection_pool.connection_kwargs.get("db") or 0)
    return sum(1 for c in r.client_list() if int(c.get("psub", 0)) > 0 and int(c.get("db", -1)) == number)


def test_the_live_hub_is_subscribed_only_while_a_socket_waits(app, server, setup):
    """A web process with no live page open receives no log line: the hub's subscription ends
    with its last socket and comes back with the next one (it stayed for the life of the
    process and received every line of every run)."""
    from conftest import wait_for
    logger = AutomationLogger(app.config["LOG_DIR"], setup["run"], get_redis())
    url = f"ws://{server}/ws/runs/{setup['run_id']}/logs"
    auth = [f"Authorization: Bearer {setup['token']}"]
    wait_for(lambda: _hub_subscriptions() == 0, timeout=10, message="no subscription before a socket")
    for round_ in range(2):
        ws = websocket.create_connection(url, header=auth)
        wait_for(lambda: _hub_subscriptions() == 1, timeout=10, message="the hub subscribed")
        logger.log(f"while open {round_}", stage=4)
        ws.settimeout(10)
        seen = []
        while not (seen and seen[-1].endswith(f"while open {round_}")):
            seen.append(ws.recv())  # the replayed lines first, then the new one
        ws.close()
        if round_ == 0:  # then a new socket subscribes it again
            wait_for(lambda: _hub_subscriptions() == 0, timeout=10, message="the hub's subscription closed")


def test_session_cookie_and_processing_state(app, server, setup):
    cookie = session_cookie(server)
    run_id = setup["run_id"]
    ws = websocket.create_connection(f"ws://{server}/ws/runs/{run_id}/processing", cookie=cookie)
    ws.settimeout(5)
    assert json.loads(ws.recv()) is None
    state = build_state(4, "Tasks → Content", 10, 3, ["Guide to tents"], ["Next one"], 6)
    publish_state(get_redis(), run_id, state)
    assert json.loads(ws.recv()) == state
    ws.close()


@pytest.mark.parametrize("path", ["logs", "processing"])
def test_refused_connections(server, setup, path):
    for headers, run_id, code in (([], setup["run_id"], 4401),
                                  ([f"Authorization: Bearer {setup['token']}"], setup["other_run"], 4404),
                                  ([f"Authorization: Bearer {setup['token']}"], 999999, 4404),
                                  (["Authorization: Bearer revoked-or-wrong"], setup["run_id"], 4401)):
        ws = websocket.create_connection(f"ws://{server}/ws/runs/{run_id}/{path}", header=headers)
        ws.settimeout(5)
        opcode, data = ws.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE
        assert int.from_bytes(data[:2], "big") == code, (headers, run_id)
        try:
            ws.close()
        except Exception:
            pass


@pytest.mark.processes
def test_sigterm_to_gunicorn_closes_websockets_cleanly(app, app_env, setup):
    """A web restart: open sockets get a 1001 close frame promptly, not a cut connection."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    from pathlib import Path
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, **app_env}
    web = subprocess.Popen([str(Path(sys.executable).parent / "gunicorn"), "--bind", f"127.0.0.1:{port}", "wsgi:app"],
                           cwd=root, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                ws = websocket.create_connection(f"ws://127.0.0.1:{port}/ws/runs/{setup['run_id']}/logs",
                                                 header=[f"Authorization: Bearer {setup['token']}"])
                break
            except (ConnectionRefusedError, websocket.WebSocketException, OSError):
                time.sleep(0.2)
        assert "Run started" in ws.recv()
        os.killpg(web.pid, signal.SIGTERM)
        ws.settimeout(10)
        opcode, data = ws.recv_data(control_frame=True)
        # A close frame at all means it came before gunicorn's graceful timeout: a worker
        # killed at that timeout cuts the connection without one.
        assert opcode == websocket.ABNF.OPCODE_CLOSE and int.from_bytes(data[:2], "big") == 1001
        assert web.wait(15) == 0
    finally:
        if web.poll() is None:
            os.killpg(web.pid, signal.SIGKILL)
