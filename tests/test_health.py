"""/healthz and /status against the real services, and with Redis unreachable."""
import os
import signal
import socket
import threading

import pytest
import redis as redis_lib

from webapp.automation.service import AutomationService

from conftest import start_worker, wait_for


def test_healthz_ok(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json == {"status": "ok", "database": "ok", "redis": "ok"}


def test_healthz_503_when_redis_unreachable(app, client):
    app.extensions["redis_client"] = redis_lib.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    r = client.get("/healthz")
    assert r.status_code == 503 and r.json["redis"].startswith("error") and r.json["database"] == "ok"
    assert client.get("/status").status_code == 503


def test_healthz_tries_redis_once_per_probe(app, client):
    """A Redis that takes the connection and hangs up (a restarting server, a proxy with no
    backend): the probe tries once and answers 503. The app's own client retries with backoff
    (3 retries, ~3.5 s to the answer), longer than a load balancer waits for its probe."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    accepted = []

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            accepted.append(c)
            c.close()
    threading.Thread(target=serve, daemon=True).start()
    try:
        app.extensions["redis_client"] = redis_lib.Redis(host="127.0.0.1", port=srv.getsockname()[1])
        r = client.get("/healthz")
        assert r.status_code == 503 and r.json["redis"].startswith("error") and r.json["database"] == "ok"
        assert len(accepted) == 1, f"{len(accepted)} connections for one probe"
        assert client.get("/status").status_code == 503
        assert len(accepted) == 2
    finally:
        srv.shutdown(socket.SHUT_RDWR)
        srv.close()


@pytest.mark.processes
def test_status_counts_queues_workers_and_runs(app, app_env, client, factory):
    acc, _ = factory.account(credits=100_000)
    site = factory.site(acc, keywords=4)
    factory.fast_config(site)
    AutomationService(acc.id).start(site.id)
    app.config["STATUS_TOKEN"] = "operator-secret"
    op = {"Authorization": "Bearer operator-secret"}  # worker details are for operators only
    s = client.get("/status", headers=op).json
    assert s["queues"]["automation"] == 1 and s["runs"] == {"running": 1, "paused": 0, "stale": 0}
    assert s["workers"] == [] and s["worker_count"] == 0
    w = start_worker(app_env)
    try:
        wait_for(lambda: client.get("/status").json["runs"]["running"] == 0, timeout=60, message="run done")
        s = client.get("/status", headers=op).json
        assert s["queues"]["automation"] == 0 and [x["pid"] for x in s["workers"]] == [w.pid]
    finally:
        os.killpg(w.pid, signal.SIGTERM)
        w.wait(30)
