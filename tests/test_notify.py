"""Webhooks and email: real RQ jobs (drain or a worker.py subprocess), real rq-scheduler for
the retry, a real HTTP receiver and a real SMTP server (aiosmtpd) on 127.0.0.1."""
import hashlib
import hmac
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from rq_scheduler import Scheduler

from webapp.extensions import db
from webapp.models import Account, AutomationRun, MailDelivery, WebhookDelivery
from webapp.notify import targets
from webapp.notify.jobs import NOTIFY_QUEUE
from webapp.redis_conn import get_redis

from conftest import csrf_from, drain, start_worker, wait_for

RUN_FIELDS = {"run_id", "status", "trigger_type", "current_stage", "started_at", "paused_at", "resumed_at",
              "cancelled_at", "completed_at", "total_credits_used", "error_message",
              *(f"stage_{n}_result" for n in range(1, 8))}


class Receiver:
    """An HTTP server recording every POST; answers with the scripted codes, then 200."""

    def __init__(self, codes=()):
        self.codes = list(codes)
        self.calls = []
        recv = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                recv.calls.append({"headers": dict(self.headers), "body": body, "path": self.path})
                code = recv.codes.pop(0) if recv.codes else 200
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook?x=1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = []

    def make(codes=()):
        r = Receiver(codes)
        made.append(r)
        return r
    yield make
    for r in made:
        r.close()


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def verify(call, secret):
    sig = call["headers"]["X-Automation-Signature"]
    expected = "sha256=" + hmac.new(secret.encode(), call["body"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(sig, expected)
    data = json.loads(call["body"])
    assert call["headers"]["X-Automation-Event"] == data["event"]
    assert call["headers"]["X-Automation-Delivery"] == data["delivery_id"]
    assert data["sent_at"].endswith("Z")
    return data


def add_hook(client, token, site_id, url, events=None):
    body = {"url": url} if events is None else {"url": url, "events": events}
    resp = client.post(f"/api/v1/sites/{site_id}/webhooks/", json=body, headers=bearer(token))
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()["data"]["webhook"]


@pytest.mark.processes
def test_completed_run_signed_delivery_with_a_real_worker(app, app_env, client, factory, receiver):
    app.config["WEBHOOK_ALLOW_PRIVATE"] = True
    acc, user = factory.account(credits=100_000)
    site = factory.site(acc, keywords=6)
    sid = site.id
    factory.fast_config(site)
    token = factory.token(user)
    rec = receiver()
    hook = add_hook(client, token, sid, rec.url, ["run.completed"])
    assert hook["secret"].startswith("whsec_") and hook["events"] == ["run.completed"]
    listed = client.get(f"/api/v1/sites/{sid}/webhooks", headers=bearer(token)).get_json()["data"]["webhooks"]
    assert [w["id"] for w in listed] == [hook["id"]] and "secret" not in listed[0]  # shown once only

    run_id = client.post(f"/api/v1/automation/run_now/?site_id={sid}", headers=bearer(token)).get_json()["data"]["run_id"]
    # The pipeline and notifications on workers of their own, as `make run` starts them.
    worker = start_worker(app_env, extra_env={"WEBHOOK_ALLOW_PRIVATE": "1"})
    notifier = start_worker(app_env, "--notify", extra_env={"WEBHOOK_ALLOW_PRIVATE": "1"})
    try:
        wait_for(lambda: rec.calls, timeout=90, message="the run.completed delivery")
    finally:
        for w in (worker, notifier):
            w.terminate()
            w.wait(20)
    data = verify(rec.calls[0], hook["secret"])
    assert data["event"] == "run.completed" and rec.calls[0]["path"] == "/hook?x=1"
    assert data["run"]["run_id"] == run_id and data["run"]["status"] == "completed"
    assert RUN_FIELDS <= set(data["run"])
    # The same fields as current_run while it was active.
    assert data["run"]["completed_at"] and data["run"]["stage_7_result"]
    deliveries = client.get(f"/api/v1/sites/{sid}/webhooks/{hook['id']}/deliveries/", headers=bearer(token)).get_json()["data"]
    assert deliveries["total"] == 1
    d = deliveries["deliveries"][0]
    assert d["status"] == "delivered" and d["delivery_id"] == data["delivery_id"] and d["run_id"] == run_id
    assert [(a["number"], a["status_code"], a["ok"]) for a in d["attempts"]] == [(1, 200, True)]
    assert len(rec.calls) == 1


def test_credit_pause_delivers_run_paused(app, client, factory, receiver):
    app.config["WEBHOOK_ALLOW_PRIVATE"] = True
    acc, user = factory.account(credits=100_000)
    site = factory.site(acc, keywords=6)
    sid = site.id
    factory.fast_config(site)
    token = factory.token(user)
    rec = receiver()
    hook = add_hook(client, token, sid, rec.url, ["run.paused", "run.failed"])
    run_id = client.post(f"/api/v1/automation/run_now/?site_id={sid}", headers=bearer(token)).get_json()["data"]["run_id"]
    db.session.get(Account, acc.id).credits = 1  # gone before the first AI call is charged
    db.session.commit()
    drain(app)
    assert db.session.get(AutomationRun, run_id).status == "paused"
    assert len(rec.calls) == 1
    data = verify(rec.calls[0], hook["secret"])
    assert data["event"] == "run.paused" and data["run"]["run_id"] == run_id
    assert data["run"]["status"] == "paused" and "credits" in data["run"]["pause_reason"]


def test_500_then_200_is_retried_with_backoff_and_both_attempts_listed(app, client, factory, receiver):
    app.config.update(WEBHOOK_ALLOW_PRIVATE=True, NOTIFY_RETRY_BASE_SECONDS=1)
    acc, user = factory.account()
    site = factory.site(acc)
    sid = site.id
    token = factory.token(user)
    rec = receiver([500])
    hook = add_hook(client, token, sid, rec.url)
    resp = client.post(f"/api/v1/sites/{sid}/webhooks/{hook['id']}/test/", headers=bearer(token))
    assert resp.status_code == 202
    drain(app)
    assert len(rec.calls) == 1
    url = f"/api/v1/sites/{sid}/webhooks/{hook['id']}/deliveries/"
    d = client.get(url, headers=bearer(token)).get_json()["data"]["deliveries"][0]
    assert d["status"] == "retrying" and d["next_attempt_at"] and [a["status_code"] for a in d["attempts"]] == [500]
    # The retry waits in rq-scheduler; its own code moves it to the queue when due.
    sched = Scheduler(queue_name=NOTIFY_QUEUE, connection=get_redis())
    assert len(list(sched.get_jobs())) == 1
    from rq import Queue
    queue = Queue(NOTIFY_QUEUE, connection=get_redis())
    assert queue.count == 0  # not before it is due
    wait_for(lambda: (sched.enqueue_jobs(), queue.count)[1], timeout=10, message="the retry to fall due")
    drain(app)
    assert len(rec.calls) == 2
    first, second = (verify(c, hook["secret"]) for c in rec.calls)
    assert first["delivery_id"] == second["delivery_id"] and first["event"] == second["event"] == "test"
    d = client.get(url, headers=bearer(token)).get_json()["data"]["deliveries"][0]
    assert d["status"] == "delivered" and d["attempt_count"] == 2
    assert [(a["number"], a["status_code"], a["ok"]) for a in d["attempts"]] == [(1, 500, False), (2, 200, True)]
    # A job that runs again (a retried RQ job, the sweep) cannot send an attempt twice.
    from webapp.notify.jobs import deliver_webhook, sweep
    assert deliver_webhook(d["id"], 2).startswith("skipped") and sweep() == 0
    assert len(rec.calls) == 2


def test_retry_window_ends_in_failed(app, client, factory, receiver):
    app.config.update(WEBHOOK_ALLOW_PRIVATE=True, NOTIFY_RETRY_BASE_SECONDS=3600, NOTIFY_RETRY_WINDOW_SECONDS=60)
    acc, user = factory.account()
    site = factory.site(acc)
    sid = site.id
    token = factory.token(user)
    rec = receiver([503])
    hook = add_hook(client, token, sid, rec.url)
    client.post(f"/api/v1/sites/{sid}/webhooks/{hook['id']}/test", headers=bearer(token))
    drain(app)
    d = db.session.execute(db.select(WebhookDelivery)).scalar_one()
    assert d.status == "failed" and "HTTP 503" in d.last_error


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/x", "http://10.1.2.3/", "http://169.254.169.254/latest",
                                 "http://[::1]/", "http://localhost:8080/", "http://[::ffff:127.0.0.1]/",
                                 "http://100.64.0.1/", "ftp://example.com/", "example.com/hook",
                                 "http://user:pw@example.com/"])
def test_unsafe_urls_refused_when_saved(client, factory, url):
    acc, user = factory.account()
    site = factory.site(acc)
    sid = site.id
    resp = client.post(f"/api/v1/sites/{sid}/webhooks/", json={"url": url}, headers=bearer(factory.token(user)))
    body = resp.get_json()
    assert resp.status_code == 400 and body["success"] is False and "url" in body["errors"], body


def test_private_target_refused_at_delivery_time(app, client, factory, receiver):
    """Saved while allowed (or a name that later resolves inward): the delivery checks again."""
    app.config["WEBHOOK_ALLOW_PRIVATE"] = True
    acc, user = factory.account()
    site = factory.site(acc)
    sid = site.id
    token = factory.token(user)
    rec = receiver()
    hook = add_hook(client, token, sid, rec.url)
    app.config["WEBHOOK_ALLOW_PRIVATE"] = False
    client.post(f"/api/v1/sites/{sid}/webhooks/{hook['id']}/test/", headers=bearer(token))
    drain(app)
    assert rec.calls == []
    d = client.get(f"/api/v1/sites/{sid}/webhooks/{hook['id']}/deliveries/", headers=bearer(token)).get_json()["data"]["deliveries"][0]
    assert d["status"] == "failed" and "loopback" in d["attempts"][0]["error"] and d["attempts"][0]["status_code"] is None


def test_connection_goes_to_the_address_that_was_checked(monkeypatch, receiver):
    """DNS rebinding: the name is resolved once; a second answer is never used."""
    rec = receiver()
    port = rec.server.server_port
    answers = ["127.0.0.1", "192.0.2.1"]  # checked answer, then a different one
    real = socket.getaddrinfo

    def fake(host, *a, **kw):
        if host == "hooks.example.test":
            ip = answers.pop(0)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))]
        return real(host, *a, **kw)
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    status, _ = targets.post(f"http://hooks.example.test:{port}/in", b"{}", {"Content-Type": "application/json"},
                             5, allow_private=True)
    assert status == 200 and rec.calls[0]["headers"]["Host"] == f"hooks.example.test:{port}"
    assert answers == ["192.0.2.1"]  # resolved exactly once
    answers[:] = ["10.0.0.7"]
    with pytest.raises(targets.UnsafeTarget, match="private"):
        targets.post("http://hooks.example.test/in", b"{}", {}, 5, allow_private=False)


def test_webhook_validation_and_tenancy(app, client, factory):
    app.config["WEBHOOK_ALLOW_PRIVATE"] = True
    acc, user = factory.account("Acme")
    other, other_user = factory.account("Other")
    site = factory.site(acc)
    sid = site.id
    foreign = factory.site(other, name="Theirs")
    token, other_token = factory.token(user), factory.token(other_user)
    hook = add_hook(client, token, sid, "http://127.0.0.1:1/")
    theirs = add_hook(client, other_token, foreign.id, "http://127.0.0.1:2/")

    bad = client.post(f"/api/v1/sites/{sid}/webhooks/", json={"url": "https://e.example/", "events": ["run.started"],
                                                                  "colour": 1}, headers=bearer(token)).get_json()
    assert set(bad["errors"]) == {"events", "colour"}
    assert client.post(f"/api/v1/sites/{sid}/webhooks/", data="x", headers=bearer(token)).status_code == 415
    assert client.get(f"/api/v1/sites/{sid}/webhooks/").status_code == 401

    for method, url in [("get", f"/api/v1/sites/{foreign.id}/webhooks/"),
                        ("post", f"/api/v1/sites/{foreign.id}/webhooks/"),
                        ("delete", f"/api/v1/sites/{foreign.id}/webhooks/{theirs['id']}/"),
                        ("delete", f"/api/v1/sites/{sid}/webhooks/{theirs['id']}/"),
                        ("get", f"/api/v1/sites/{sid}/webhooks/{theirs['id']}/deliveries/"),
                        ("post", f"/api/v1/sites/{sid}/webhooks/{theirs['id']}/test/"),
                        ("get", f"/api/v1/sites/{sid}/webhooks/999999/deliveries/")]:
        resp = getattr(client, method)(url, json={"url": "http://127.0.0.1:3/"}, headers=bearer(token))
        assert resp.status_code == 404, (method, url, resp.get_json())
    assert client.delete(f"/api/v1/sites/{sid}/webhooks/{hook['id']}/", headers=bearer(token)).get_json()["data"] == {"deleted": hook["id"]}
    assert client.get(f"/api/v1/sites/{foreign.id}/webhooks/", headers=bearer(other_token)).get_json()["data"]["webhooks"][0]["id"] == theirs["id"]


@pytest.mark.processes
def test_webhook_settings_in_the_browser(app, client, auth, factory, receiver):
    app.config["WEBHOOK_ALLOW_PRIVATE"] = True
    acc, user = factory.account()
    site = factory.site(acc)
    sid = site.id
    auth.login()
    page = client.get(f"/sites/{sid}/automation").get_data(as_text=True)
    assert 'id="webhooks"' in page and "/static/js/title.js" in page and 'data-site-id="%d"' % site.id in page
    assert "<script>" not in page.split('id="webhooks"')[1].split("</section>")[0]
    csrf = csrf_from(page)
    rec = receiver()
    bad = client.post(f"/sites/{sid}/webhooks", data={"csrf_token": csrf, "url": "gopher://x", "events": ["run.failed"]})
    assert bad.status_code == 400 and 'id="err-webhook-url"' in bad.get_data(as_text=True)
    made = client.post(f"/sites/{sid}/webhooks", data={"csrf_token": csrf, "url": rec.url, "events": ["run.failed"]})
    html = made.get_data(as_text=True)
    assert made.status_code == 201 and 'id="webhook-secret"' in html
    from webapp.models import Webhook
    wh = db.session.execute(db.select(Webhook)).scalar_one()
    assert wh.secret in html and wh.events == ["run.failed"]
    again = client.get(f"/sites/{sid}/webhooks").get_data(as_text=True)
    assert wh.secret not in again and rec.url.replace("&", "&amp;") in again
    resp = client.post(f"/sites/{sid}/webhooks/{wh.id}/test", data={"csrf_token": csrf})
    assert resp.status_code == 302
    drain(app)
    assert len(rec.calls) == 1
    verify(rec.calls[0], wh.secret)
    listing = client.get(f"/sites/{sid}/webhooks").get_data(as_text=True)
    assert "delivered" in listing and "HTTP 200" in listing
    assert client.post(f"/sites/{sid}/webhooks/{wh.id}/test", data={}).status_code == 400  # CSRF
    assert client.post(f"/sites/{sid}/webhooks/{wh.id}/delete", data={"csrf_token": csrf}).status_code == 302
    assert db.session.execute(db.select(Webhook)).first() is None
    assert client.get("/static/js/title.js").status_code == 200


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_email_to_opted_in_users_through_smtp(app, client, auth, factory):
    from aiosmtpd.controller import Controller

    class Sink:
        def __init__(self):
            self.messages = []

        async def handle_DATA(self, server, session, envelope):
            self.messages.append((envelope.rcpt_tos, envelope.content.decode()))
            return "250 OK"

    sink = Sink()
    port = _free_port()
    smtp = Controller(sink, hostname="127.0.0.1", port=port)
    smtp.start()
    try:
        app.config.update(SMTP_URL=f"smtp://127.0.0.1:{port}", MAIL_FROM="automation@example.com")
        acc, user = factory.account(credits=100_000)
        from webapp.models import User
        quiet = User(email="quiet@example.com", account_id=acc.id)
        quiet.set_password("password123")
        db.session.add(quiet)
        db.session.commit()
        site = factory.site(acc, keywords=6)
        sid = site.id
        factory.fast_config(site)
        auth.login()
        page = client.get("/settings/notifications").get_data(as_text=True)
        assert 'value="run.completed"' in page
        resp = client.post("/settings/notifications", data={"csrf_token": csrf_from(page),
                                                            "email_events": ["run.completed", "run.failed"]})
        assert resp.status_code == 302
        assert 'value="run.completed" checked' in client.get("/settings/notifications").get_data(as_text=True)

        from webapp.automation.service import AutomationService
        run = AutomationService(acc.id, actor="user:acme@example.com").start(site.id)
        run_id = run.id
        drain(app)
        assert db.session.get(AutomationRun, run_id).status == "completed"
        wait_for(lambda: sink.messages, timeout=10, message="the mail")
        (rcpt, content), = sink.messages
        assert rcpt == ["acme@example.com"]
        assert f"Run #{run_id} completed" in content and "From: automation@example.com" in content
        m = db.session.execute(db.select(MailDelivery)).scalar_one()
        assert m.status == "sent" and m.attempts == 1
    finally:
        smtp.stop()


def test_mail_retried_when_smtp_is_down(app, factory):
    app.config.update(SMTP_URL=f"smtp://127.0.0.1:{_free_port()}", MAIL_FROM="a@example.com",
                      NOTIFY_RETRY_BASE_SECONDS=60)
    acc, user = factory.account(credits=100_000)
    site = factory.site(acc, keywords=3)
    sid = site.id
    factory.fast_config(site)
    from webapp.notify.mail import set_preferences
    set_preferences(user, ["run.cancelled"])
    from webapp.automation.service import AutomationService
    svc = AutomationService(acc.id)
    run = svc.start(site.id)
    svc.cancel(run.id)
    drain(app)
    m = db.session.execute(db.select(MailDelivery)).scalar_one()
    assert m.status == "retrying" and m.attempts == 1 and "Connection" in m.last_error
    assert len(list(Scheduler(queue_name=NOTIFY_QUEUE, connection=get_redis()).get_jobs())) == 1


def test_viewer_sets_own_email_choice_but_cannot_manage_webhooks(app, client, auth, factory):
    app.config["WEBHOOK_ALLOW_PRIVATE"] = True
    acc, user = factory.account()
    user.role = "viewer"
    db.session.commit()
    site = factory.site(acc)
    sid = site.id
    auth.login()
    page = client.get("/settings/notifications").get_data(as_text=True)
    resp = client.post("/settings/notifications", data={"csrf_token": csrf_from(page), "email_events": ["run.failed"]})
    assert resp.status_code == 302
    from webapp.models import NotificationPreference
    assert db.session.execute(db.select(NotificationPreference.email_events)).scalar_one() == ["run.failed"]
    html = client.get(f"/sites/{sid}/automation").get_data(as_text=True)
    assert 'title="Needs the operator role"' in html.split('id="webhooks"')[1]
    r = client.post(f"/sites/{sid}/webhooks", data={"csrf_token": csrf_from(page), "url": "http://127.0.0.1:1/"})
    assert r.status_code == 403


@pytest.mark.processes
def test_https_target_pinned_to_the_address_verifies_the_host_name(tmp_path, monkeypatch):
    """TLS to the checked address still proves the URL's host: SNI and the certificate name."""
    import ssl
    import subprocess
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=hooks.example.test", "-addext", "subjectAltName=DNS:hooks.example.test",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    rec = Receiver()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    rec.server.socket = ctx.wrap_socket(rec.server.socket, server_side=True)
    port = rec.server.server_port
    real = socket.getaddrinfo

    def fake(host, *a, **kw):
        if host in ("hooks.example.test", "other.example.test"):
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real(host, *a, **kw)
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    try:
        status, _ = targets.post(f"https://hooks.example.test:{port}/in", b"{}", {}, 5, allow_private=True,
                                 ca_certs=str(cert))
        assert status == 200 and rec.calls[0]["headers"]["Host"] == f"hooks.example.test:{port}"
        with pytest.raises(Exception, match="(?i)hostname|match|certificate"):
            targets.post(f"https://other.example.test:{port}/in", b"{}", {}, 5, allow_private=True, ca_certs=str(cert))
        assert len(rec.calls) == 1
    finally:
        rec.close()


def test_sweep_requeues_a_delivery_whose_job_was_lost(app, client, factory, receiver):
    from datetime import timedelta
    from webapp.models.base import utcnow
    from webapp.notify.jobs import sweep
    from rq import Queue
    app.config["WEBHOOK_ALLOW_PRIVATE"] = True
    acc, user = factory.account()
    site = factory.site(acc)
    sid = site.id
    token = factory.token(user)
    rec = receiver()
    hook = add_hook(client, token, sid, rec.url)
    client.post(f"/api/v1/sites/{sid}/webhooks/{hook['id']}/test/", headers=bearer(token))
    Queue(NOTIFY_QUEUE, connection=get_redis()).empty()  # Redis lost the job
    assert sweep() == 0  # not yet overdue: a busy queue is not a lost job
    d = db.session.execute(db.select(WebhookDelivery)).scalar_one()
    d.next_attempt_at = utcnow() - timedelta(minutes=10)
    db.session.commit()
    assert sweep() == 1
    drain(app)
    assert len(rec.calls) == 1 and db.session.execute(db.select(WebhookDelivery.status)).scalar_one() == "delivered"


def test_smtp_url_checked_at_start():
    from webapp.config import load_config
    with pytest.raises(SystemExit, match="SMTP_URL"):
        load_config("/nonexistent", {"SECRET_KEY": "x", "SMTP_URL": "http://mail.example.com"})
    cfg = load_config("/nonexistent", {"SECRET_KEY": "x", "SMTP_URL": "smtps://u:p@mail.example.com",
                                       "WEBHOOK_ALLOW_PRIVATE": "1", "NOTIFY_RETRY_BASE_SECONDS": "0.5"})
    assert cfg["WEBHOOK_ALLOW_PRIVATE"] is True and cfg["NOTIFY_RETRY_BASE_SECONDS"] == 0.5
