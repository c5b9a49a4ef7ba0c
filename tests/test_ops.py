"""Operations: /metrics (token, figures that move with a run across a real gunicorn web process
and a real worker process), JSON logs with one request id from web to worker, the request id
header, the metrics directory's start-up wipe, and the /ops page."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from webapp.extensions import db
from webapp.models import AITaskLog, AutomationRun

from conftest import ROOT, csrf_from, drain, start_worker, wait_for
from test_browser import browser  # noqa: F401  (the Chromium fixture)

TOKEN = "metrics-secret-token"
ISSUE_METRICS = [  # the names docs/OPERATIONS.md and the issue promise, exactly
    "automation_runs_total", "automation_runs_active", "automation_items_processed_total",
    "automation_items_failed_total", "automation_ai_call_seconds", "automation_ai_rate_limited_total",
    "automation_credits_charged_total", "automation_queue_depth", "automation_oldest_job_age_seconds",
    "automation_workers_alive", "automation_stale_runs_recovered_total", "automation_websockets_open",
    "automation_http_requests_total", "automation_http_request_duration_seconds",
]


def samples(text):
    """{(sample name, frozenset(labels)): value}"""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(snap, name, **labels):
    return snap.get((name, frozenset(labels.items())), 0.0)


def total(snap, name, **labels):
    """Sum over every label set that contains `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in snap.items() if n == name and want <= ls)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _json_lines(text):
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return [json.loads(ln) for ln in lines]  # every line must parse


# -- /metrics access ----------------------------------------------------------------------------
def test_metrics_is_off_without_a_token_and_needs_the_right_bearer(app, client):
    app.config["METRICS_TOKEN"] = None
    assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404
    app.config["METRICS_TOKEN"] = TOKEN
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": f"Bearer {TOKEN}x"}):
        resp = client.get("/metrics", headers=headers)
        assert resp.status_code == 401, headers
        assert "automation_" not in resp.get_data(as_text=True)
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    resp = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    snap = samples(resp.get_data(as_text=True))
    assert ("automation_queue_depth", frozenset({("queue", "automation")})) in snap


def test_http_metrics_are_labelled_by_url_rule_not_path(app, client):
    app.config["METRICS_TOKEN"] = TOKEN
    before = samples(client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).get_data(as_text=True))
    for run_id in (91001, 91002, 91003):
        assert client.get(f"/runs/{run_id}").status_code in (302, 404)
    client.get("/no/such/page/8f1c")
    text = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).get_data(as_text=True)
    after = samples(text)
    # Raw paths never become labels (looked for in the label sets only: a sample's value may
    # contain the same digits, e.g. 0.88297249100105).
    labels = " ".join(line.split("}")[0] for line in text.splitlines() if "{" in line and not line.startswith("#"))
    assert "91001" not in labels and "8f1c" not in labels
    assert total(after, "automation_http_requests_total", route="/runs/<int:run_id>") - \
        total(before, "automation_http_requests_total", route="/runs/<int:run_id>") == 3
    assert value(after, "automation_http_requests_total", route="<unmatched>", status="404") - \
        value(before, "automation_http_requests_total", route="<unmatched>", status="404") == 1
    assert total(after, "automation_http_request_duration_seconds_count", route="/runs/<int:run_id>") >= 3


# -- request ids ------------------------------------------------------------------------------------
def test_request_id_is_returned_and_taken_only_from_a_trusted_proxy(client):
    resp = client.get("/healthz", headers={"X-Request-ID": "proxy-abc.123"})
    assert resp.headers["X-Request-ID"] == "proxy-abc.123"  # 127.0.0.1 is a trusted proxy
    fresh = client.get("/healthz").headers["X-Request-ID"]
    assert len(fresh) == 32 and fresh != client.get("/healthz").headers["X-Request-ID"]
    untrusted = client.get("/healthz", headers={"X-Request-ID": "forged"}, environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert untrusted.headers["X-Request-ID"] not in ("forged", "")
    bad = client.get("/healthz", headers={"X-Request-ID": "has spaces {and} \"quotes\""})
    assert len(bad.headers["X-Request-ID"]) == 32


# -- the multiprocess directory -----------------------------------------------------------------------
@pytest.mark.processes
def test_metrics_dir_is_wiped_only_when_no_process_uses_it(tmp_path):
    from webapp.metrics import claim_dir
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    d = tmp_path / "prom"
    d.mkdir()
    (d / f"counter_{dead.pid}.db").write_bytes(b"x")
    (d / f"gauge_livesum_{dead.pid}.db").write_bytes(b"x")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import psutil
        (d / f"claim_{live.pid}.pid").write_text(repr(psutil.Process(live.pid).create_time()))
        # Another process of this machine is alive: a dead one's counters stay (totals never go
        # backwards when one process restarts), its live gauge goes.
        assert claim_dir(d) is False
        assert (d / f"counter_{dead.pid}.db").exists()
        assert not (d / f"gauge_livesum_{dead.pid}.db").exists()
    finally:
        live.kill()
        live.wait()
    # Nobody alive any more: the next process to start wipes what the last run left.
    (d / f"claim_{os.getpid()}.pid").unlink()
    assert claim_dir(d) is True
    assert not (d / f"counter_{dead.pid}.db").exists()
    assert not (d / f"claim_{live.pid}.pid").exists() and (d / f"claim_{os.getpid()}.pid").exists()


# -- a run across real processes ------------------------------------------------------------------------
@pytest.mark.processes
def test_metrics_and_json_logs_follow_a_run_from_web_to_worker(app, app_env, factory, tmp_path):
    acc, user = factory.account()
    site = factory.site(acc, keywords=6)
    factory.fast_config(site)
    api_token = factory.token(user)
    env = {**os.environ, **app_env, "METRICS_TOKEN": TOKEN, "LOG_FORMAT": "json"}
    port = _free_port()
    web_log = tmp_path / "web.log"
    with open(web_log, "wb") as out:
        web = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "gunicorn") if (ROOT / ".venv" / "bin" / "gunicorn").exists()
             else "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "2",
             "--access-logfile", "-", "wsgi:app"],
            cwd=str(ROOT), env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    worker = None
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def scrape():
        resp = requests.get(f"{base}/metrics", headers=auth, timeout=10)
        assert resp.status_code == 200
        return samples(resp.text)

    try:
        def up():
            try:
                return requests.get(f"{base}/healthz", timeout=2).status_code == 200
            except requests.RequestException:
                return False
        wait_for(up, timeout=60, message="gunicorn up")
        assert requests.get(f"{base}/metrics", timeout=5).status_code == 401
        before = scrape()

        trace = f"trace-{uuid.uuid4().hex[:12]}"
        resp = requests.post(f"{base}/api/v1/automation/run_now/?site_id={site.id}", timeout=30,
                             headers={"Authorization": f"Bearer {api_token}", "X-Request-ID": trace})
        assert resp.status_code == 201, resp.text
        assert resp.headers["X-Request-ID"] == trace
        run_id = resp.json()["data"]["run_id"]

        queued = scrape()  # read from Redis and the database at scrape time
        assert value(queued, "automation_queue_depth", queue="automation") == 1
        assert value(queued, "automation_oldest_job_age_seconds", queue="automation") >= 0
        assert value(queued, "automation_runs_active", status="running") == 1
        assert value(queued, "automation_runs_total", status="started", trigger_type="api") - \
            value(before, "automation_runs_total", status="started", trigger_type="api") == 1

        # JOB_LOG=1: RQ's per-job lines (off by default) show each follow-up job's id below.
        worker = start_worker(app_env, "--burst", extra_env={"LOG_FORMAT": "json", "JOB_LOG": "1"})
        worker_out, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0, worker_out.decode()[-2000:]
        db.session.remove()
        run = db.session.get(AutomationRun, run_id)
        assert run.status == "completed"
        after = scrape()

        # Run, item, credit and AI counters moved by exactly what the run did (in the worker).
        d = lambda name, **lb: total(after, name, **lb) - total(before, name, **lb)  # noqa: E731
        assert d("automation_runs_total", status="completed", trigger_type="api") == 1
        assert d("automation_runs_total", status="failed") == 0
        for n in range(1, 8):
            res = run.stage_result(n) or {}
            assert d("automation_items_processed_total", stage=str(n)) == res.get("items_processed", 0), n
            assert d("automation_items_failed_total", stage=str(n)) == res.get("items_failed", 0), n
        assert run.total_credits_used > 0
        assert d("automation_credits_charged_total") == run.total_credits_used
        calls = db.session.execute(select(func.count()).select_from(AITaskLog).where(AITaskLog.run_id == run_id)).scalar()
        assert calls > 0 and d("automation_ai_call_seconds_count", provider="local") == calls
        assert d("automation_ai_call_seconds_count", function="generate_content") == \
            run.stage_result(4)["items_processed"]
        assert d("automation_http_requests_total", route="/api/v1/automation/run_now/", status="201") == 1
        assert value(after, "automation_queue_depth", queue="automation") == 0
        assert value(after, "automation_runs_active", status="running") == 0
        assert value(after, "automation_workers_alive") == 0  # the burst worker left
        names = {fam.name for fam in text_string_to_metric_families(requests.get(f"{base}/metrics", headers=auth).text)}
        # the parser strips _total from counter families
        missing = [m for m in ISSUE_METRICS if m.removesuffix("_total") not in names]
        assert not missing, missing
        assert not any("account" in k for (_n, ls) in after for k, _v in ls)
    finally:
        if worker is not None and worker.poll() is None:
            _stop(worker)
        _stop(web)

    # Every line of both processes is one JSON object; the request id crosses from web to worker.
    web_lines = _json_lines(web_log.read_text())
    worker_lines = _json_lines(worker_out.decode())
    for line in web_lines + worker_lines:
        assert {"time", "level", "logger", "message"} <= line.keys(), line
    web_traced = [ln for ln in web_lines if ln.get("request_id") == trace]
    assert any(ln["logger"] == "automation.events" and ln["message"].startswith("run.started")
               and ln["run_id"] == run_id and ln["site_id"] == site.id for ln in web_traced), web_traced
    assert any(ln["logger"] == "gunicorn.access" for ln in web_traced)  # the access line too
    worker_traced = [ln for ln in worker_lines if ln.get("request_id") == trace]
    assert any(ln["logger"] == "automation.events" and ln["message"].startswith("run.completed")
               for ln in worker_traced), worker_lines[-20:]
    assert {ln["pid"] for ln in worker_traced}.isdisjoint({ln["pid"] for ln in web_traced})
    assert all(ln.get("job_id") for ln in worker_traced)
    run_lines = [ln for ln in worker_traced if ln["job_id"].startswith(f"automation-run-{run_id}-")]
    assert len({ln["job_id"] for ln in run_lines}) > 1  # the follow-up jobs the run queued carry it too
    assert all(ln.get("run_id") == run_id for ln in run_lines)
    assert any(ln.get("site_id") == site.id for ln in run_lines)


# -- the status page -------------------------------------------------------------------------------------
def _failed_job_for(app, run_id):
    """A job of `run_id` that fails in a real RQ worker (an unexpected keyword argument)."""
    from rq import Queue
    from webapp.redis_conn import get_redis
    job = Queue(app.config["RQ_QUEUE"], connection=get_redis()).enqueue(
        "webapp.automation.tasks.resume_automation_task", run_id, None, bogus=1,
        description=f"automation run {run_id}")
    return job.id


def test_ops_page_shows_details_scoped_and_requeues_with_csrf(app, client, auth, factory):
    from rq import Queue
    from rq.registry import FailedJobRegistry
    from webapp.automation.service import AutomationService
    from webapp.redis_conn import get_redis
    a_acc, _ = factory.account("Acme")
    b_acc, _ = factory.account("Other")
    a_site, b_site = factory.site(a_acc, keywords=2), factory.site(b_acc, keywords=2)
    factory.fast_config(a_site)
    factory.fast_config(b_site)
    for role in ("operator", "viewer"):
        factory.user(a_acc, f"{role}@example.com", role)
    a_run = AutomationService(a_acc.id).start(a_site.id).id
    b_run = AutomationService(b_acc.id).start(b_site.id).id
    drain(app)
    mine, theirs = _failed_job_for(app, a_run), _failed_job_for(app, b_run)
    drain(app)
    r = get_redis()
    failed = FailedJobRegistry(app.config["RQ_QUEUE"], connection=r)
    assert {mine, theirs} <= set(failed.get_job_ids())

    assert client.get("/ops").status_code == 302  # signed-in users only
    auth.login()
    html = client.get("/ops").get_data(as_text=True)
    assert 'id="queues"' in html and "automation-control" in html
    assert 'id="sum-failed">2<' in html
    assert mine in html and theirs not in html
    assert "1 failed job(s) of other accounts" in html

    assert client.post(f"/ops/failed/{mine}/requeue").status_code == 400  # no CSRF token
    token = csrf_from(html)
    assert client.post(f"/ops/failed/{theirs}/requeue", data={"csrf_token": token}).status_code == 404
    assert client.post("/ops/failed/no-such-job/requeue", data={"csrf_token": token}).status_code == 404
    resp = client.post(f"/ops/failed/{mine}/requeue", data={"csrf_token": token})
    assert resp.status_code == 302
    assert mine not in failed.get_job_ids() and theirs in failed.get_job_ids()
    assert mine in Queue(app.config["RQ_QUEUE"], connection=r).get_job_ids()

    # Operators and viewers of the same account see the aggregates only, and cannot requeue.
    drain(app)
    assert mine in failed.get_job_ids()
    auth.logout()
    for role in ("operator", "viewer"):
        auth.login(f"{role}@example.com")
        html = client.get("/ops").get_data(as_text=True)
        assert 'id="sum-failed">2<' in html and 'id="sum-workers">' in html
        assert 'id="queues"' not in html and 'id="failed-jobs"' not in html and mine not in html
        assert "for account owners" in html
        resp = client.post(f"/ops/failed/{mine}/requeue", data={"csrf_token": csrf_from(html)})
        assert resp.status_code == 403, role
        assert mine in failed.get_job_ids()
        auth.logout()


def test_ops_page_and_metrics_show_the_tick_stale_runs_and_recoveries(app, client, auth, factory):
    from datetime import timedelta
    from rq import Queue
    from sqlalchemy import update
    from webapp.automation.recovery import check_stale_runs
    from webapp.automation.scheduled import check_scheduled_automations
    from webapp.automation.service import AutomationService
    from webapp.metrics import ScrapeCollector
    from webapp.models.base import utcnow
    from webapp.redis_conn import get_redis
    app.config["METRICS_TOKEN"] = TOKEN

    def scrape():
        return samples(client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).get_data(as_text=True))

    a_acc, _ = factory.account("Acme")
    b_acc, _ = factory.account("Other")
    a_site, b_site = factory.site(a_acc, keywords=2), factory.site(b_acc, keywords=2)
    auth.login()
    assert "never" in client.get("/ops").get_data(as_text=True).split('id="last-tick"')[1].split("</dd>")[0]
    check_scheduled_automations()  # the real tick records itself
    html = client.get("/ops").get_data(as_text=True)
    assert "never" not in html.split('id="last-tick"')[1].split("</dd>")[0]
    assert abs(value(scrape(), "automation_scheduler_last_tick_timestamp_seconds") - time.time()) < 60

    # A run whose worker vanished: its job is gone and its heartbeat is old.
    a_run = AutomationService(a_acc.id).start(a_site.id).id
    b_run = AutomationService(b_acc.id).start(b_site.id).id
    # Redis lost their jobs: RQ's list and fair dispatch's ready lists alike.
    from webapp.automation.dispatch import waiting_jobs
    r = get_redis()
    for job_id in waiting_jobs(r, app.config["RQ_QUEUE"]):
        r.delete(f"rq:job:{job_id}")
    r.delete(*r.keys("automation:fair:*"))
    Queue(app.config["RQ_QUEUE"], connection=get_redis()).empty()
    db.session.execute(update(AutomationRun).values(heartbeat_at=utcnow() - timedelta(hours=1)))
    db.session.commit()
    before = scrape()
    assert value(before, "automation_runs_stale") == 2
    html = client.get("/ops").get_data(as_text=True)
    assert 'id="sum-stale">2<' in html
    stale_table = html.split('id="stale-runs"')[1].split("</table>")[0]
    assert f"#{a_run}<" in stale_table and f"#{b_run}<" not in stale_table  # another account's: a count only

    assert sorted(check_stale_runs()) == sorted([(a_run, "recovered"), (b_run, "recovered")])
    after = scrape()
    assert value(after, "automation_stale_runs_recovered_total") - value(before, "automation_stale_runs_recovered_total") == 2
    assert value(after, "automation_runs_stale") == 0
    html = client.get("/ops").get_data(as_text=True)
    recoveries = html.split('id="recoveries"')[1].split("</ul>")[0]
    assert f"run #{a_run}<" in recoveries and f"run #{b_run}<" not in recoveries
    assert list(ScrapeCollector().collect())  # also usable without a request


# -- the docs promise only what exists ---------------------------------------------------------------
def test_dashboard_and_alerts_use_documented_metrics_that_exist(app):
    import re
    import prometheus_client
    from webapp.metrics import ScrapeCollector, scheduler_ticked
    from webapp.redis_conn import get_redis
    scheduler_ticked(get_redis())  # the last-tick gauge exists once a tick ran
    docs = ROOT / "docs"
    table = set(re.findall(r"^\| `(automation_\w+)` \|", (docs / "OPERATIONS.md").read_text(), re.M))
    exposed = {fam.name for fam in ScrapeCollector().collect()}
    for collector in list(prometheus_client.REGISTRY._collector_to_names):
        for fam in getattr(collector, "describe", lambda: [])():
            if fam.name.startswith("automation_"):
                exposed.add(fam.name + ("_total" if fam.type == "counter" else ""))
    assert table == exposed, (table ^ exposed)
    assert set(ISSUE_METRICS) <= table
    dashboard = json.loads((docs / "grafana-dashboard.json").read_text())
    used = set(re.findall(r"automation_\w+", json.dumps(dashboard) + (docs / "prometheus-alerts.yml").read_text()))
    used = {re.sub(r"_(bucket|count|sum)$", "", name) for name in used}
    assert used and used <= table, used - table


@pytest.mark.processes
def test_scheduler_logs_json_line_by_line(app, app_env):
    from rq import Queue
    from webapp.ops import RQ_SCHEDULED_JOBS, TICK_JOB_ID
    from webapp.redis_conn import get_redis
    from webapp.scheduling import CONTROL_QUEUE
    proc = start_worker(app_env, "--scheduler", extra_env={"LOG_FORMAT": "json"})
    try:
        # Registered (and logged), then queued by the scheduler's first pass.
        wait_for(lambda: get_redis().zscore(RQ_SCHEDULED_JOBS, TICK_JOB_ID) is not None
                 and Queue(CONTROL_QUEUE, connection=get_redis()).count > 0, timeout=60,
                 message="periodic jobs registered and queued")
    finally:
        _stop(proc)
    lines = _json_lines(proc.stdout.read().decode())
    assert any(ln["logger"] == "webapp.scheduling" and "registered" in ln["message"] for ln in lines), lines
    assert all(ln["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL") for ln in lines)


def test_websockets_open_gauge_follows_sockets(app, client, factory, live_server):
    import websocket
    from webapp.automation.service import AutomationService
    app.config["METRICS_TOKEN"] = TOKEN
    acc, user = factory.account()
    site = factory.site(acc, keywords=2)
    run_id = AutomationService(acc.id).start(site.id).id
    api_token = factory.token(user)

    def gauge():
        text = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).get_data(as_text=True)
        return value(samples(text), "automation_websockets_open")

    base = gauge()
    url = f"{live_server.replace('http://', 'ws://')}/ws/runs/{run_id}/logs"
    sockets = [websocket.create_connection(url, header=[f"Authorization: Bearer {api_token}"]) for _ in range(2)]
    try:
        wait_for(lambda: gauge() == base + 2, timeout=20, message="two sockets counted")
    finally:
        for ws in sockets:
            ws.close()
    wait_for(lambda: gauge() == base, timeout=20, message="closed sockets no longer counted")


def test_operations_settings_are_checked_at_start(tmp_path):
    import pytest
    from webapp.config import load_config
    cfg = load_config(tmp_path, {"LOG_FORMAT": "JSON", "TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.5",
                                 "METRICS_TOKEN": "t"})
    assert cfg["LOG_FORMAT"] == "json" and cfg["METRICS_TOKEN"] == "t"
    assert [str(n) for n in cfg["TRUSTED_PROXIES"]] == ["10.0.0.0/8", "192.168.1.5/32"]
    assert load_config(tmp_path, {})["METRICS_TOKEN"] is None
    with pytest.raises(SystemExit, match="LOG_FORMAT"):
        load_config(tmp_path, {"LOG_FORMAT": "xml"})
    with pytest.raises(SystemExit, match="TRUSTED_PROXIES"):
        load_config(tmp_path, {"TRUSTED_PROXIES": "10.0.0.300"})


def test_job_owner_covers_pipeline_scheduler_and_notification_jobs(app, factory):
    from rq.job import Job
    from webapp.automation.service import AutomationService
    from webapp.ops import ORPHAN, job_owner
    from webapp.redis_conn import get_redis
    r = get_redis()
    acc, _ = factory.account()
    site = factory.site(acc, keywords=2)
    run_id = AutomationService(acc.id).start(site.id).id
    acc_id, site_id = acc.id, site.id

    def owner(func, *args):
        return job_owner(Job.create(func, args=args, connection=r))

    assert owner("webapp.automation.tasks.resume_automation_task", run_id, None) == acc_id
    assert owner("webapp.automation.scheduled.start_scheduled_run", site_id, "2026-01-01T00:00:00") == acc_id
    assert owner("webapp.notify.jobs.dispatch_event", "run.completed", run_id, {}, None, "k") == acc_id
    assert owner("webapp.notify.jobs.deliver_webhook", 424242, 1) == ORPHAN  # its delivery is gone
    assert owner("webapp.automation.tasks.run_automation_task", "x") == ORPHAN
    assert owner("webapp.automation.recovery.check_stale_runs_task") is None  # a system job


@pytest.mark.processes
def test_ops_page_in_a_browser_reads_well_at_any_width(app, factory, browser, live_server, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from test_browser import shot, wait
    from test_browser_insights import LOW_CONTRAST, OVERFLOWING, login, no_sideways_scroll
    from webapp.automation.scheduled import check_scheduled_automations
    from webapp.automation.service import AutomationService
    acc, _ = factory.account(credits=100_000)
    site = factory.site(acc, name="Garden Journal", keywords=3)
    factory.fast_config(site)
    run_id = AutomationService(acc.id).start(site.id).id
    drain(app)
    _failed_job_for(app, run_id)
    drain(app)
    check_scheduled_automations()
    d, live = browser, live_server
    login(d, live)
    d.find_element(By.LINK_TEXT, "Operations").click()
    wait(d, lambda: d.find_elements(By.ID, "failed-jobs"), message="ops page")
    assert d.execute_script(LOW_CONTRAST) == []
    shot(d, "operations", tmp_path)
    d.set_window_size(420, 900)
    d.get(f"{live}/ops")
    wait(d, lambda: d.find_elements(By.ID, "failed-jobs"), message="ops page at 420 px")
    width, inner = no_sideways_scroll(d)
    assert width <= inner, d.execute_script(OVERFLOWING)
    assert d.execute_script(LOW_CONTRAST) == []
    d.find_element(By.CSS_SELECTOR, "#failed-jobs button").click()  # Requeue, through the real form
    wait(d, lambda: "is back on its queue" in d.page_source, message="requeued")


def test_rate_limiter_waits_are_counted(app, client):
    import threading
    from webapp.ai.ratelimit import ProviderGate, SharedLimiter
    from webapp.redis_conn import get_redis
    app.config["METRICS_TOKEN"] = TOKEN

    def count():
        text = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).get_data(as_text=True)
        return value(samples(text), "automation_ai_rate_limited_total")

    before = count()
    # 20 requests a minute: one every 3 s, spaced on Redis's clock for every worker.
    gate = ProviderGate(SharedLimiter(get_redis(), rpm=20, scope=f"test-{uuid.uuid4().hex}"), threading.Event())
    # A fresh limiter lets two calls go back to back (a late caller keeps its slot, so a
    # binding limit is used whole); the third must wait for the next slot, and that counts.
    # (No other work between the calls: on a loaded machine it could outlast the slot.)
    t0 = time.monotonic()
    assert gate.call(lambda: "first") == "first"
    assert gate.call(lambda: "second") == "second"
    t1 = time.monotonic()
    assert gate.call(lambda: "third") == "third"
    t2 = time.monotonic()
    assert t1 - t0 < 1.5 < t2 - t0  # the first two went at once; the third waited for its slot
    assert count() > before
