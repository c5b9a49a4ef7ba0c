"""Pages of the insights issue without a browser: the config form (every error at once, day
pickers, stays at its URL), times, the run page's timeline, failed items and retry button."""
import re

import pytest
from sqlalchemy import select

from webapp.extensions import db
from webapp.models import AutomationConfig, AutomationRun

from conftest import csrf_from, drain


@pytest.fixture
def logged_in(client, factory, auth):
    acc, user = factory.account(credits=100_000)
    site = factory.site(acc, keywords=24, timezone="Europe/Berlin")
    factory.fast_config(site)
    auth.login()
    html = client.get(f"/sites/{site.id}/automation").get_data(as_text=True)
    return {"site_id": site.id, "account_id": acc.id, "csrf": csrf_from(html)}


def base_form(csrf, **over):
    form = {"csrf_token": csrf, "frequency": "daily", "scheduled_time": "02:00",
            **{f"stage_{n}_batch_size": "9" for n in range(1, 7)}, "within_stage_delay": "0",
            "between_stage_delay": "0"}
    form.update(over)
    return form


def config(site_id):
    db.session.expire_all()
    return db.session.execute(select(AutomationConfig).where(AutomationConfig.site_id == site_id)).scalar_one()


def test_every_invalid_field_named_at_once_with_a_summary(client, logged_in):
    sid = logged_in["site_id"]
    form = base_form(logged_in["csrf"], scheduled_time="25:00", stage_2_batch_size="abc", stage_4_batch_size="0",
                     between_stage_delay="99999")
    r = client.post(f"/sites/{sid}/automation", data=form)
    assert r.status_code == 400
    html = r.get_data(as_text=True)
    summary = re.search(r'<div class="error-summary" id="config-errors".*?</div>', html, re.S).group(0)
    assert "4 fields need attention" in summary
    assert re.findall(r'href="#(\w+)"', summary) == ["scheduled_time", "stage_2_batch_size", "stage_4_batch_size",
                                                    "between_stage_delay"]  # in the form's order
    for field, label in (("scheduled_time", "Time"), ("stage_2_batch_size", "Stage 2 · Clusters → Ideas"),
                         ("stage_4_batch_size", "Stage 4 · Tasks → Content"),
                         ("between_stage_delay", "Delay between stages")):
        assert f'href="#{field}">{label}:' in summary, field
        assert f'id="err-{field}"' in html and f'aria-describedby="err-{field}"' in html
    assert 'value="25:00"' in html and 'value="abc"' in html  # the user's input is kept
    # The form posts to the page's own URL.
    assert f'action="/sites/{sid}/automation"' in html
    assert config(sid).stage_1_batch_size == 20  # nothing half-applied


def test_day_pickers_weekly_and_monthly(client, logged_in):
    sid = logged_in["site_id"]
    html = client.get(f"/sites/{sid}/automation").get_data(as_text=True)
    assert "<option value=\"6\"" in html and ">Sunday</option>" in html and ">31</option>" in html
    assert 'for="stage_1_batch_size">Stage 1 · Keywords → Clusters</label>' in html
    assert "times in Europe/Berlin, the site&#39;s time zone" in html or "times in Europe/Berlin, the site's time zone" in html
    r = client.post(f"/sites/{sid}/automation", data=base_form(
        logged_in["csrf"], is_enabled="on", frequency="weekly", scheduled_weekday="6", scheduled_monthday="15"))
    assert r.status_code == 302 and r.headers["Location"].endswith(f"/sites/{sid}/automation#config")
    cfg = config(sid)
    assert (cfg.frequency, cfg.scheduled_day) == ("weekly", 6)
    r = client.post(f"/sites/{sid}/automation", data=base_form(
        logged_in["csrf"], is_enabled="on", frequency="monthly", scheduled_weekday="6", scheduled_monthday="15"))
    assert r.status_code == 302 and (config(sid).frequency, config(sid).scheduled_day) == ("monthly", 15)
    # The schedule is shown in the site's zone, saying so.
    html = client.get(f"/sites/{sid}/automation").get_data(as_text=True)
    assert re.search(r"Next runs: <time datetime=\"[^\"]+Z\" title=\"[^\"]+ UTC\">\w{3} 15 \w{3} 02:00 CE?S?T "
                     r"\(Europe/Berlin\)</time>", html), html[html.find("Next runs"):][:300]
    # A weekly schedule without a day is refused (the pickers make it impossible in the page).
    r = client.post(f"/sites/{sid}/automation", data=base_form(logged_in["csrf"], frequency="weekly"))
    assert r.status_code == 400 and 'id="err-scheduled_day">choose a day' in r.get_data(as_text=True)
    r = client.post(f"/sites/{sid}/automation", data=base_form(logged_in["csrf"], frequency="weekly",
                                                                scheduled_weekday="9"))
    assert r.status_code == 400 and "must be 0 (Monday) to 6 (Sunday)" in r.get_data(as_text=True)
    assert config(sid).frequency == "monthly"


def test_run_page_timeline_failed_items_and_retry_button(app, client, logged_in):
    sid = logged_in["site_id"]
    app.config.update(AI_LOCAL_FAIL_EVERY=3, ITEM_MAX_ATTEMPTS=1)
    client.post(f"/sites/{sid}/automation/run", data={"csrf_token": logged_in["csrf"]})
    drain(app)
    run = db.session.execute(select(AutomationRun).where(AutomationRun.site_id == sid)).scalar_one()
    run_id = run.id
    html = client.get(f"/runs/{run_id}").get_data(as_text=True)
    assert html.count("<h1") == 1
    assert '<svg class="timeline"' in html and 'class="tl-bar tl-completed"' in html
    assert "Working time" in html and "ETA" not in html  # finished: no ETA
    m = re.search(r'<h2 id="failed-items">Failed items <span class="count">(\d+)</span>', html)
    failed = int(m.group(1))
    assert failed > 0 and html.count('<td class="num">1</td><td><time') == min(failed, 20)
    assert "AI_LOCAL_FAIL_EVERY=3" in html and 'id="retry-failed"' in html
    if failed > 20:
        assert "Page 1 of" in html and client.get(f"/runs/{run_id}?failed_page=2").status_code == 200
    app.config.update(AI_LOCAL_FAIL_EVERY=None)
    r = client.post(f"/runs/{run_id}/retry_failed", data={"csrf_token": logged_in["csrf"]})
    assert r.status_code == 302
    new_id = int(r.headers["Location"].rsplit("/", 1)[1])
    assert new_id != run_id
    html = client.get(f"/runs/{run_id}").get_data(as_text=True)
    assert 'id="retry-failed"' not in html  # a run is active now
    live = client.get(f"/runs/{new_id}").get_data(as_text=True)
    assert "ETA" in live and "data-since=" in live
    # The live refresh carries the timeline and the failed items with the rest of the page ...
    body = client.get(f"/live/runs/{new_id}").get_json()
    assert '<svg class="timeline"' in body["regions"]["timeline-card"]
    assert "No item failed in this run." in body["regions"]["failed-card"]
    # ... and a finished run's page is unchanged from one refresh to the next (no clock in it).
    v = client.get(f"/live/runs/{run_id}").get_json()["version"]
    assert client.get(f"/live/runs/{run_id}?v={v}").status_code == 204
    drain(app)
    new = db.session.get(AutomationRun, new_id)
    assert new.status == "completed" and new.trigger_type == "retry" and new.retry_of_run_id == run_id
    # Skipped stages (nothing pending) are drawn differently from completed ones.
    html = client.get(f"/runs/{new_id}").get_data(as_text=True)
    status = {n: new.stage_result(n)["status"] for n in range(1, 8)}
    skipped = [n for n, st in status.items() if st == "skipped"]
    assert html.count('class="tl-bar tl-skipped"') == len(skipped)
    assert html.count('class="tl-bar tl-completed"') == 7 - len(skipped)
    for n in range(1, 8):
        label = f'aria-label="Stage {n} skipped: nothing pending"' if n in skipped else f'aria-label="Stage {n} progress"'
        assert label in html, (n, status)
    assert client.post(f"/runs/{run_id}/retry_failed").status_code == 400  # CSRF


def test_retry_route_is_tenant_scoped(app, client, logged_in, factory):
    acc2, _ = factory.account(name="Other", credits=10_000)
    site2 = factory.site(acc2, keywords=4)
    from webapp.automation.service import AutomationService
    other = AutomationService(acc2.id).start(site2.id).id
    assert client.get(f"/runs/{other}").status_code == 404
    assert client.post(f"/runs/{other}/retry_failed", data={"csrf_token": logged_in["csrf"]}).status_code == 404


def test_images_open_full_size_with_article_and_role(app, client, logged_in, factory):
    from webapp.models import Content, Image
    sid = logged_in["site_id"]
    client.post(f"/sites/{sid}/automation/run", data={"csrf_token": logged_in["csrf"]})
    drain(app)
    content = db.session.execute(select(Content).where(Content.site_id == sid)).scalars().first()
    featured = db.session.execute(select(Image).where(Image.content_id == content.id, Image.kind == "featured")).scalar_one()
    art = client.get(f"/sites/{sid}/content/{content.id}").get_data(as_text=True)
    assert f'href="/sites/{sid}/images/{featured.id}"' in art
    assert f"In-article image 1 · {content.title}" in art.replace("&#39;", "'")
    page = client.get(f"/sites/{sid}/images/{featured.id}").get_data(as_text=True).replace("&#39;", "'")
    assert f"<h1>Featured image · {content.title}</h1>" in page and f'src="/media/images/{featured.id}.png"' in page
    grid = client.get(f"/sites/{sid}/keywords?tab=images").get_data(as_text=True).replace("&#39;", "'")
    assert f"Featured image · {content.title}" in grid and "in_article · content" not in grid
    other, _ = factory.account(name="Other")
    other_site = factory.site(other, name="Secret")
    assert client.get(f"/sites/{other_site.id}/images/{featured.id}").status_code == 404
    assert client.get(f"/sites/{sid}/images/999999").status_code == 404


def test_dashboard_last_run_dots_eta_and_schedule_in_site_zone(app, client, logged_in):
    sid = logged_in["site_id"]
    client.post(f"/sites/{sid}/automation", data=base_form(logged_in["csrf"], is_enabled="on",
                                                          frequency="weekly", scheduled_weekday="2"))
    app.config.update(AI_LOCAL_FAIL_EVERY=3, ITEM_MAX_ATTEMPTS=1)
    client.post(f"/sites/{sid}/automation/run", data={"csrf_token": logged_in["csrf"]})
    drain(app)
    first = db.session.execute(select(AutomationRun.id).where(AutomationRun.site_id == sid)).scalar_one()
    app.config.update(AI_LOCAL_FAIL_EVERY=None)
    r = client.post(f"/runs/{first}/retry_failed", data={"csrf_token": logged_in["csrf"]})
    assert r.status_code == 302, r.get_data(as_text=True)
    html = client.get("/").get_data(as_text=True)
    row = re.search(r'<tr id="site-row-%d">.*?</tr>' % sid, html, re.S).group(0)
    # The active retry run: its progress and an ETA (estimating until an item is done).
    assert 'badge-running' in row and "ETA" in row and "stage 1/7" in row
    # The last finished run: result, failed count, duration and when.
    assert 'class="badge badge-completed"' in row and "failed</span>" in row and '<time class="rel"' in row
    dots = re.findall(r'class="dot dot-(\w+)( dot-failed-items)?" href="/runs/(\d+)"', row)
    assert [(d[0], bool(d[1]), int(d[2])) for d in dots] == [("running", False, first + 1), ("completed", True, first)]
    # The next slot in the site's zone, saying so (a Wednesday, Europe/Berlin).
    assert re.search(r"Wed \d\d \w{3} 02:00 CES?T \(Europe/Berlin\)</time>", row), row
    drain(app)
    html = client.get("/").get_data(as_text=True)
    row = re.search(r'<tr id="site-row-%d">.*?</tr>' % sid, html, re.S).group(0)
    assert "idle" in row and len(re.findall(r'class="dot dot-completed', row)) == 2
