"""A new user's rough edges, each fixed (issue 27): domains and invite emails are checked, the
same webhook cannot be added twice, messages use no internal names, /ops durations read like
durations, an over-size form says what to do, over-long URLs and headers get the JSON envelope,
a favicon, a quiet console, and read-only config fields for viewers."""
import logging
import re

import pytest

from conftest import csrf_from

V1 = "/api/v1"


@pytest.fixture
def owner(client, factory, auth):
    acc, user = factory.account(credits=10_000)
    site = factory.site(acc, name="Blog")
    token = factory.token(user)
    auth.login()

    class Owner:
        site_id, account = site.id, acc
        h = {"Authorization": f"Bearer {token}"}
    return Owner()


def test_site_domain_must_be_a_domain(client, owner, auth):
    r = client.post(f"{V1}/sites/", json={"name": "Shop", "domain": "not a domain!!"}, headers=owner.h)
    assert r.status_code == 400 and r.json["errors"] == {"domain": "must be a domain name such as blog.example.com"}
    assert client.post(f"{V1}/sites/", json={"name": "Shop", "domain": "shop.example.com"}, headers=owner.h).status_code == 201
    r = client.patch(f"{V1}/sites/{owner.site_id}/", json={"domain": "a..b"}, headers=owner.h)
    assert r.status_code == 400 and set(r.json["errors"]) == {"domain"}
    # the whole string must be a domain: `$` alone let a trailing newline through
    r = client.post(f"{V1}/sites/", json={"name": "Newline", "domain": "example.com\n"}, headers=owner.h)
    assert r.status_code == 400 and set(r.json["errors"]) == {"domain"}
    from webapp.validation import is_email
    assert not is_email("n@example.com\n") and is_email("n@example.com")  # the same rule for addresses
    # the form: the message next to the field, in words, and the typed value kept
    page = client.post("/sites/new", data={"csrf_token": auth.csrf(), "name": "Form site", "domain": "not a domain!!",
                                           "timezone": "UTC"})
    html = page.get_data(as_text=True)
    assert page.status_code == 400 and "must be a domain name such as blog.example.com" in html
    assert "'domain'" not in html
    # spaces around a typed domain are trimmed by the form
    ok = client.post("/sites/new", data={"csrf_token": auth.csrf(), "name": "Trimmed", "domain": " t.example.com ",
                                         "timezone": "UTC"})
    assert ok.status_code == 302


def test_invite_needs_a_real_email_address(client, owner, auth):
    page = client.post("/users/invite", data={"csrf_token": auth.csrf(), "email": "a@b", "role": "viewer"})
    html = page.get_data(as_text=True)
    assert page.status_code == 400 and "must be an email address such as name@example.com" in html
    assert "&#39;email&#39;" not in html and "'email'" not in html
    assert client.post("/users/invite", data={"csrf_token": auth.csrf(), "email": "new.person@example.org",
                                              "role": "viewer"}).status_code == 201


def test_token_expiry_message_uses_no_internal_name(client, owner, auth):
    page = client.post("/tokens", data={"csrf_token": auth.csrf(), "name": "ci", "expires_at": "next tuesday",
                                        "scope": "full"})
    html = page.get_data(as_text=True)
    assert page.status_code == 400 and "must be a date such as 2027-01-31" in html and "expires_at'" not in html
    r = client.post(f"{V1}/auth/tokens/", json={"name": "ci", "expires_at": "2001-01-01"}, headers=owner.h)
    assert r.status_code == 400 and r.json["errors"] == {"expires_at": "must be in the future"}
    assert "'expires_at'" in r.json["error"]  # the sentence names the field; the field's message does not


def test_the_same_webhook_cannot_be_added_twice(app, client, owner, auth):
    app.config["WEBHOOK_ALLOW_PRIVATE"] = True
    url = f"{V1}/sites/{owner.site_id}/webhooks/"
    body = {"url": "https://hooks.example.com/a", "events": ["run.completed", "run.failed"]}
    assert client.post(url, json=body, headers=owner.h).status_code == 201
    again = client.post(url, json={**body, "events": ["run.failed", "run.completed"]}, headers=owner.h)
    assert again.status_code == 409 and set(again.json["errors"]) == {"url"}
    # other events, or another URL: a different webhook
    assert client.post(url, json={**body, "events": ["run.paused"]}, headers=owner.h).status_code == 201
    assert client.post(url, json={**body, "url": "https://hooks.example.com/b"}, headers=owner.h).status_code == 201
    hooks = client.get(url, headers=owner.h).json["data"]["webhooks"]
    assert len(hooks) == 3
    form = client.post(f"/sites/{owner.site_id}/webhooks", data={"csrf_token": auth.csrf(), "url": body["url"],
                                                                 "events": body["events"]})
    assert form.status_code == 409 and "already has a webhook for this URL" in form.get_data(as_text=True)
    assert len(client.get(url, headers=owner.h).json["data"]["webhooks"]) == 3


def test_durations_read_like_durations(app, client, owner):
    span = app.jinja_env.get_template("partials/durations.html").module.span
    assert [str(span(n)).strip() for n in (45, 600, 86326, 3 * 86400 + 7200)] == [
        "45 s", "10 min", "23 h 58 min", "3 d 2 h"]
    html = client.get("/ops").get_data(as_text=True)
    assert not re.search(r"\b\d{4,} s\b", html), re.findall(r".{40}\b\d{4,} s\b", html)


def test_an_over_size_form_says_what_to_do(app, client, owner, auth):
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    page = client.get(f"/sites/{owner.site_id}/keywords").get_data(as_text=True)
    assert 'data-max-bytes="65536"' in page  # the browser checks first and keeps the text (app.js)
    r = client.post(f"/sites/{owner.site_id}/keywords", data={"csrf_token": auth.csrf(), "keywords": "k\n" * 50_000},
                    headers={"Referer": f"http://localhost/sites/{owner.site_id}/keywords"})
    html = r.get_data(as_text=True)
    assert r.status_code == 413 and "split it into smaller parts" in html and "nothing changed" in html
    assert f'href="http://localhost/sites/{owner.site_id}/keywords"' in html  # back to the form


def test_over_long_urls_and_headers_get_the_json_envelope(client, owner):
    r = client.get(f"{V1}/ping/?x=" + "a" * 5000, headers=owner.h)
    assert r.status_code == 414 and r.json["success"] is False and "4096" in r.json["error"]
    r = client.get(f"{V1}/ping/", headers={**owner.h, "X-Big": "b" * 9000})
    assert r.status_code == 431 and r.json["success"] is False
    assert client.get("/?x=" + "a" * 5000).status_code == 414  # pages: the HTML error page
    assert client.get(f"{V1}/ping/?x=" + "a" * 3000, headers=owner.h).status_code == 200


def test_favicon_is_served_from_static(client):
    r = client.get("/favicon.ico")
    assert r.status_code == 200 and r.data[:4] == b"\x00\x00\x01\x00"  # an ICO file
    assert client.get("/static/favicon.svg").status_code == 200
    assert 'rel="icon"' in client.get("/login").get_data(as_text=True)


def test_quiet_console_by_default(monkeypatch):
    from webapp.logging_setup import JobLineFilter, is_polling
    assert is_polling({"REQUEST_METHOD": "GET", "PATH_INFO": "/live/sites/1", "QUERY_STRING": "v=abc"})
    assert is_polling({"REQUEST_METHOD": "GET", "PATH_INFO": "/ops", "HTTP_HX_REQUEST": "true"})
    assert is_polling({"REQUEST_METHOD": "GET", "PATH_INFO": "/api/v1/automation/logs/", "QUERY_STRING": "run_id=1&after=9"})
    assert not is_polling({"REQUEST_METHOD": "GET", "PATH_INFO": "/sites/1/automation", "QUERY_STRING": ""})
    assert not is_polling({"REQUEST_METHOD": "POST", "PATH_INFO": "/live/x"})
    f = JobLineFilter()

    def record(msg, level=logging.INFO):
        return logging.LogRecord("rq.worker", level, __file__, 1, msg, ("w", "q", "job"), None)
    monkeypatch.delenv("JOB_LOG", raising=False)
    assert not f.filter(record("Worker %s: %s: %s"))
    assert not f.filter(record("Successfully completed job %s in %ss on worker %s"))
    assert f.filter(record("Worker %s: started with PID %d, version %s"))
    assert f.filter(record("Worker %s: %s: %s", logging.WARNING))
    monkeypatch.setenv("JOB_LOG", "1")
    assert f.filter(record("Worker %s: %s: %s"))


def test_gunicorn_access_log_skips_polling_unless_asked(monkeypatch):
    from webapp.logging_setup import GunicornLogger
    lines = []
    logger = GunicornLogger.__new__(GunicornLogger)
    monkeypatch.setattr("gunicorn.glogging.Logger.access", lambda self, resp, req, environ, t: lines.append(environ["PATH_INFO"]))

    class Resp:
        headers = []
    poll = {"REQUEST_METHOD": "GET", "PATH_INFO": "/live/sites/1", "QUERY_STRING": "v=1"}
    page = {"REQUEST_METHOD": "GET", "PATH_INFO": "/sites/1/automation", "QUERY_STRING": ""}
    monkeypatch.delenv("ACCESS_LOG", raising=False)
    logger.access(Resp(), None, poll, 0.01)
    logger.access(Resp(), None, page, 0.01)
    assert lines == ["/sites/1/automation"]
    monkeypatch.setenv("ACCESS_LOG", "1")
    logger.access(Resp(), None, poll, 0.01)
    monkeypatch.setenv("ACCESS_LOG", "0")
    logger.access(Resp(), None, page, 0.01)
    assert lines == ["/sites/1/automation", "/live/sites/1"]


def test_viewer_sees_read_only_config_fields(client, factory, auth):
    acc, _ = factory.account(credits=1000)
    site = factory.site(acc)
    factory.user(acc, "viewer@example.com", "viewer")
    auth.login("viewer@example.com")
    html = client.get(f"/sites/{site.id}/automation").get_data(as_text=True)
    form = html[html.index('class="config-form"'):html.index("</form>", html.index('class="config-form"'))]
    assert form.count("<fieldset disabled") == form.count("<fieldset") >= 3
    assert "Read-only" in html
    auth.logout()
    auth.login()
    html = client.get(f"/sites/{site.id}/automation").get_data(as_text=True)
    assert "<fieldset disabled" not in html and csrf_from(html)


def test_viewer_cannot_type_into_the_import_and_webhook_fields(client, factory, auth):
    """As the config form: a viewer's disabled buttons come with disabled fields, not boxes that
    take typing which can never be sent."""
    import re
    acc, _ = factory.account(credits=1000)
    site = factory.site(acc)
    factory.user(acc, "viewer@example.com", "viewer")

    def fields(html):
        return re.findall(r'<textarea id="kw-paste"[^>]*>|<input type="file" id="kw-file"[^>]*>|'
                          r'<input id="webhook-url"[^>]*>|<input type="checkbox" name="events"[^>]*>', html)
    auth.login("viewer@example.com")
    pages = [f"/sites/{site.id}/keywords", f"/sites/{site.id}/webhooks", f"/sites/{site.id}/automation"]
    seen = [tag for page in pages for tag in fields(client.get(page).get_data(as_text=True))]
    assert len(seen) >= 6 and all(" disabled" in tag for tag in seen), seen
    auth.logout()
    auth.login()
    seen = [tag for page in pages for tag in fields(client.get(page).get_data(as_text=True))]
    assert len(seen) >= 6 and not any(" disabled" in tag for tag in seen), seen


def test_cached_counts_follow_imports_and_reviews_at_once(app, client, factory):
    """The change that makes a cached count stale makes the next read fresh (no TTL to wait out):
    an import (dashboard, site page, API overview) and a review decision (awaiting review)."""
    from conftest import drain
    from webapp.automation.service import AutomationService
    from webapp.web.snapshot import dashboard_snapshot, site_snapshot
    acc, user = factory.account(credits=100_000)
    h = {"Authorization": f"Bearer {factory.token(user)}"}
    acc_id = acc.id
    site = factory.site(acc, keywords=3)
    factory.fast_config(site)
    site_id = site.id
    AutomationService(acc_id).start(site_id)
    drain(app)
    from webapp.extensions import db
    from webapp.models import Site
    site = db.session.get(Site, site_id)
    svc = AutomationService(acc_id)
    overview = f"{V1}/automation/pipeline_overview/?site_id={site.id}"
    waiting = client.get(overview, headers=h).json["data"]["awaiting_review"]
    assert waiting >= 1
    before = dashboard_snapshot(svc)["rows"][0]["pending"]
    assert site_snapshot(svc, site)["pipeline"][0]["pending"] == 0  # cached now, as the dashboard's
    r = client.post(f"{V1}/planner/keywords/bulk/?site_id={site.id}", json={"keywords": ["fresh one", "fresh two"]},
                    headers=h)
    assert r.status_code == 201
    assert dashboard_snapshot(svc)["rows"][0]["pending"] == before + 2
    assert site_snapshot(svc, site)["pipeline"][0]["pending"] == 2
    assert client.get(overview, headers=h).json["data"]["stages"][0]["pending"] == 2
    # A background import (an RQ job on the import queue, run here by a real worker) too.
    from rq import Queue, SimpleWorker
    from webapp.imports import IMPORT_QUEUE
    from webapp.redis_conn import get_redis
    app.config["IMPORT_SYNC_MAX_ROWS"] = 2
    r = client.post(f"{V1}/planner/keywords/bulk/?site_id={site.id}", json={"keywords": ["bg a", "bg b", "bg c"]},
                    headers=h)
    assert r.status_code == 202
    assert dashboard_snapshot(svc)["rows"][0]["pending"] == before + 2  # cached again before the job runs
    SimpleWorker([Queue(IMPORT_QUEUE, connection=get_redis())], connection=get_redis()).work(
        burst=True, with_scheduler=False, logging_level="WARNING")
    db.session.remove()
    site = db.session.get(Site, site_id)
    svc = AutomationService(acc_id)
    assert dashboard_snapshot(svc)["rows"][0]["pending"] == before + 5
    assert site_snapshot(svc, site)["pipeline"][0]["pending"] == 5
    content = client.get(f"{V1}/writer/content/?site_id={site.id}&status=review", headers=h).json["data"]["items"]
    assert client.post(f"{V1}/writer/content/{content[0]['id']}/approve/", json={}, headers=h).status_code == 200
    assert client.get(overview, headers=h).json["data"]["awaiting_review"] == waiting - 1


@pytest.mark.parametrize("job_log", ["", "1"])
def test_a_worker_is_quiet_about_each_job_unless_asked(app, app_env, factory, job_log):
    """A real worker running a whole run: by default no line per job; JOB_LOG=1 brings them back."""
    from conftest import fresh_run, start_worker, stop_process, wait_for
    from webapp.automation.service import AutomationService
    acc, _ = factory.account(credits=100_000)
    site = factory.site(acc, keywords=3)
    factory.fast_config(site)
    run_id = AutomationService(acc.id).start(site.id).id
    worker = start_worker(app_env, extra_env={"JOB_LOG": job_log, "ACCESS_LOG": ""})
    try:
        wait_for(lambda: fresh_run(run_id).status == "completed", timeout=120, message="the run")
    finally:
        stop_process(worker)
    out = worker.stdout.read().decode(errors="replace")
    job_lines = [line for line in out.splitlines() if "Successfully completed" in line or "Job OK" in line]
    if job_log:
        assert len(job_lines) >= 3, out[-3000:]
    else:
        assert job_lines == [], job_lines[:5]
        assert "started with PID" in out or "Listening on" in out  # the worker still says it is up
