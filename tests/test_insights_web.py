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
    for field, label in (("scheduled_time", "Time"), ("stage_2_batch_size", "Stage 2 · Clusters → Ideas"),
                         ("stage_4_batch_size", "Stage 4 · Tasks → Content"),
                         ("between_stage_delay", "Delay between stages")):
        assert f'href="#{field}">{label}:' in summary, field
        assert f'id="err-{field}"' in html and f'aria-describedby="err-{field}"' in html
    assert 'value="25:00"' in html and 'value="abc"' in html  # the user's input is kept
    # The form posts to the page's own URL.
    assert f'action="/sites/{sid}/automation#config"' in html
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
