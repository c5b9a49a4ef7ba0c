"""/healthz and /status against the real services, and with Redis unreachable."""
import os
import signal

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
