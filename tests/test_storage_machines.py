"""Web and workers on separate "machines": every process has its own INSTANCE_PATH, LOG_DIR and
MEDIA_DIR (nothing shared on disk) and they meet only in the database, Redis and the store —
an S3 endpoint (moto's server mode) or, for the file backend, one shared folder (what NFS gave).

Web A (gunicorn, as `make run`), workers B and C (`worker.py`), scheduler D: a run started on A
is worked by B, B is SIGKILLed mid-stage, D's stale check hands the run to C, C finishes it.
From A: the websocket tail, `logs?lines=`, `before` paging, the download and every image; the
log is complete and in order, and every line a worker published before the kill is in it.
Then prune → 410 with the records kept, and deleting the site removes its objects."""
import json
import os
import signal
import threading
from datetime import timedelta
from pathlib import Path

import pytest
import requests
import websocket
from sqlalchemy import select

from webapp.automation.locks import exec_lock_key
from webapp.automation.service import AutomationService
from webapp.extensions import db
from webapp.models import AITaskLog, AutomationRun, Image
from webapp.models.base import utcnow
from webapp.redis_conn import get_redis
from webapp.storage import get_store
from webapp.storage.keys import site_prefixes

from conftest import ROOT, fresh_run, start_worker, stop_process, wait_for


pytestmark = pytest.mark.processes  # every test here starts processes of its own

@pytest.fixture(params=["file", "s3"])
def backend(request):
    return request.param


@pytest.fixture
def app_env(app_env, backend, request, tmp_path):
    if backend == "s3":
        return {**app_env, **request.getfixturevalue("s3_env")}
    return {**app_env, "STORAGE_URL": f"file://{tmp_path / 'shared-store'}"}


def machine(tmp_path, name):
    base = tmp_path / f"machine-{name}"
    return {"INSTANCE_PATH": str(base / "instance"), "LOG_DIR": str(base / "logs"), "MEDIA_DIR": str(base / "media"),
            "STALE_RUN_SECONDS": "3", "STALE_CHECK_INTERVAL": "2", "AI_LOCAL_LATENCY_MS": "60"}


def files_under(path):
    return [p for p in Path(path).rglob("*") if p.is_file()] if Path(path).exists() else []


class Published:
    """Every line a writer published (the same atomic step that stores it, on the S3 layout)."""

    def __init__(self, run_id):
        self.lines, self.ps = [], get_redis().pubsub(ignore_subscribe_messages=True)
        from webapp.storage.logs import log_channel
        self.ps.subscribe(log_channel(run_id))
        self.thread = threading.Thread(target=self._listen, daemon=True)
        self.thread.start()

    def _listen(self):
        try:
            for msg in self.ps.listen():
                if msg["type"] == "message":
                    self.lines.append(json.loads(msg["data"]))
        except Exception:
            pass

    def close(self):
        try:
            self.ps.close()
        except Exception:
            pass


class SocketTail:
    def __init__(self, url, token):
        self.lines, self.closed = [], None
        self.ws = websocket.create_connection(url, header=[f"Authorization: Bearer {token}"], timeout=30)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            while True:
                self.lines.append(self.ws.recv())
        except Exception as e:
            self.closed = e

    def close(self):
        try:
            self.ws.close()
        except Exception:
            pass


def test_web_and_workers_on_separate_machines(app, app_env, factory, gunicorn_web, tmp_path, backend):
    acc, user = factory.account(credits=1_000_000)
    site = factory.site(acc, keywords=16)
    factory.fast_config(site, stage_4_batch_size=1, stage_6_batch_size=2)
    acc_id, site_id, site_name, token = acc.id, site.id, site.name, factory.token(user)
    h = {"Authorization": f"Bearer {token}"}
    A, B, C, D = (machine(tmp_path, m) for m in "ABCD")
    web = "http://" + gunicorn_web(**A)
    sched = start_worker(app_env, "--scheduler", extra_env=D)
    b = start_worker(app_env, extra_env=B)
    c = socket = published = None
    try:
        started = requests.post(f"{web}/api/v1/automation/run_now/?site_id={site_id}", headers=h, timeout=30)
        assert started.status_code == 201, started.text
        run_id = started.json()["data"]["run_id"]
        published = Published(run_id)
        socket = SocketTail(f"ws://{web.removeprefix('http://')}/ws/runs/{run_id}/logs?after=0", token)
        # Kill B mid-item in stage 4 (holding the run's exec lock), not between two jobs.
        wait_for(lambda: (fresh_run(run_id).stage_4_result or {}).get("items_processed", 0) >= 2
                 and get_redis().exists(exec_lock_key(run_id)), timeout=120, interval=0.02, message="stage 4 on B")
        # While the run is active, A reads what B wrote: tail and paging.
        live = requests.get(f"{web}/api/v1/automation/logs/?run_id={run_id}&lines=20", headers=h, timeout=30).json()
        assert len(live["data"]["lines"]) == 20 and live["data"]["total_lines"] >= 20
        os.killpg(b.pid, signal.SIGKILL)
        b.wait(10)
        before_kill = [p["n"] for p in published.lines]
        c = start_worker(app_env, extra_env=C)
        wait_for(lambda: fresh_run(run_id).status == "completed", timeout=240, message="run completed on C")

        data = requests.get(f"{web}/api/v1/automation/logs/?run_id={run_id}&lines=20", headers=h,
                            timeout=30).json()["data"]
        total = data["total_lines"]
        assert len(data["lines"]) == 20 and data["first_line"] == total - 19
        # The whole log through `before` paging, from the end back to line 1.
        pages, first = [], total + 1
        while first > 1:
            page = requests.get(f"{web}/api/v1/automation/logs/?run_id={run_id}&lines=97&before={first}",
                                headers=h, timeout=30).json()["data"]
            assert page["lines"] and page["first_line"] == max(1, first - 97)
            pages[:0] = page["lines"]
            first = page["first_line"]
        download = _session(web).get(f"{web}/runs/{run_id}/log.txt", timeout=30)  # a page route: log in on A
        assert download.status_code == 200 and "attachment" in download.headers["Content-Disposition"]
        lines = download.text.splitlines()
        assert lines == pages and len(lines) == total
        # In order: timestamps never go back, the recovery is logged once, the run ends last.
        stamps = [ln.split()[0] for ln in lines]
        assert stamps == sorted(stamps)
        assert sum("Worker lost" in ln for ln in lines) == 1 and lines[-1].split("] ", 1)[1].startswith("Run completed")
        # Nothing lost: every line published (by B before the kill, by C after) is the log's line n.
        wait_for(lambda: published.lines and published.lines[-1]["n"] == total, timeout=30, message="all published")
        for p in published.lines:
            assert lines[p["n"] - 1] == p["line"]
        assert before_kill and max(before_kill) < total
        # Every stage-4 item the database shows as done has its line, the one B was on included
        # (the line is written before the item's commit).
        db.session.remove()
        done = db.session.execute(select(AITaskLog.item_type, AITaskLog.item_id).where(
            AITaskLog.run_id == run_id, AITaskLog.stage == 4)).all()
        missing = [d for d in done if not any(f"{d.item_type} {d.item_id} " in ln and ": ok" in ln for ln in lines)]
        assert len(done) >= 3 and missing == [], missing
        # The socket on A followed the run across the kill, in order, to the last line (from
        # where it started: a socket asking from line 0 may be given only the recent end).
        wait_for(lambda: socket.lines and socket.lines[-1] == lines[-1], timeout=30, message="socket caught up")
        k = lines.index(socket.lines[0])
        assert socket.lines == lines[k:] and k < min(before_kill)

        # Images, generated on B and C, served by A.
        images = db.session.execute(select(Image.id).where(Image.site_id == site_id,
                                                          Image.status == "generated")).scalars().all()
        assert len(images) >= 4
        for image_id in images:
            got = requests.get(f"{web}/media/images/{image_id}.png", headers=h, timeout=30)
            assert got.status_code == 200 and got.content[:4] == b"\x89PNG", image_id
        # No machine kept run files on its own disk: they are in the store only.
        for m in (A, B, C, D):
            assert files_under(m["LOG_DIR"]) == [] and files_under(m["MEDIA_DIR"]) == []
        store = get_store()
        assert all(store.list(p) for p in site_prefixes(acc_id, site_id))
    finally:
        for closer in (socket, published):
            if closer is not None:
                closer.close()
        for proc in (b, c, sched):
            if proc is not None:
                stop_process(proc)

    # Retention: the run ended 40 days ago; prune; A answers 410 and the records stay.
    db.session.execute(db.update(AutomationRun).where(AutomationRun.id == run_id)
                       .values(ended_at=utcnow() - timedelta(days=40)))
    db.session.commit()
    import subprocess
    import sys
    env = {**os.environ, **app_env}
    out = subprocess.run([str(Path(sys.executable).parent / "flask"), "--app", "wsgi", "prune", "--older-than", "30"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "Runs ended more than 30 days ago: 1" in out.stdout, out.stderr
    gone = requests.get(f"{web}/api/v1/automation/logs/?run_id={run_id}&lines=20", headers=h, timeout=30)
    assert gone.status_code == 410 and "retention" in gone.json()["error"]
    run = fresh_run(run_id)
    assert run.status == "completed" and run.stage_4_result["items_processed"] >= 3
    assert requests.get(f"{web}/media/images/{images[0]}.png", headers=h, timeout=30).status_code == 404
    # Deleting the site on A removes every object it had.
    res = requests.delete(f"{web}/api/v1/sites/{site_id}/?confirm={site_name}", headers=h, timeout=30)
    assert res.status_code == 200, res.text
    assert all(get_store().list(p) == [] for p in site_prefixes(acc_id, site_id))


def _session(web):
    import re
    s = requests.Session()
    page = s.get(f"{web}/login", timeout=30)
    csrf = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page.text).group(1)
    s.post(f"{web}/login", data={"email": "acme@example.com", "password": "password123", "csrf_token": csrf},
           timeout=30)
    return s
