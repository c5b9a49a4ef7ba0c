"""Pages and forms through the Flask test client: rendering, validation next to the
field, CSRF, tenancy (another account's site/run is a 404 page), no-JS flows."""
import io

import pytest
from sqlalchemy import func, select

from webapp.extensions import db
from webapp.models import AutomationConfig, AutomationRun, Content, Keyword

from conftest import drain


@pytest.fixture
def logged_in(client, auth, factory):
    acc, user = factory.account(credits=100_000)
    site = factory.site(acc, keywords=10)
    factory.fast_config(site)
    auth.login()
    return {"account_id": acc.id, "site_id": site.id, "csrf": auth.csrf()}


def test_dashboard_lists_sites_with_state(client, logged_in):
    page = client.get("/").get_data(as_text=True)
    assert "Blog" in page and "idle" in page and "not scheduled" in page
    assert f'/sites/{logged_in["site_id"]}/automation' in page


def test_dashboard_pages_its_sites(app, client, logged_in, factory):
    """Kills: a dashboard that loads and counts every site of the account per load and poll
    (its cost was the account's size, not the page's). 52 sites: 50 on page 1, 2 on page 2,
    in name order; the page's live refresh stays on its page; a bad or too big page number
    is the first or the last page, never an error."""
    import re
    from webapp.models import Account
    acc = db.session.get(Account, logged_in["account_id"])
    for i in range(51):
        factory.site(acc, name=f"Site {i:02d}")
    html = client.get("/").get_data(as_text=True)
    rows = re.findall(r'id="site-row-(\d+)"', html)
    assert len(rows) == 50 and "sites 1–50 of 52" in html and "page=2" in html
    assert "Blog" in html and "Site 48" in html and "Site 49" not in html  # "Blog" sorts first
    page2 = client.get("/?page=2").get_data(as_text=True)
    rows2 = re.findall(r'id="site-row-(\d+)"', page2)
    assert len(rows2) == 2 and not set(rows) & set(rows2) and "Site 49" in page2 and "Site 50" in page2
    assert 'data-live-url="/live/dashboard?page=2"' in page2
    live = client.get("/live/dashboard?page=2").get_json()
    assert set(re.findall(r'id="site-row-(\d+)"', live["regions"]["dashboard-rows"])) == set(rows2)
    for bad, same_as in (("abc", rows), ("-1", rows), ("99", rows2), ("١", rows)):
        r = client.get(f"/?page={bad}")
        assert r.status_code == 200 and re.findall(r'id="site-row-(\d+)"', r.get_data(as_text=True)) == same_as, bad


def test_automation_page_sections(client, logged_in):
    r = client.get(f'/sites/{logged_in["site_id"]}/automation')
    html = r.get_data(as_text=True)
    assert r.status_code == 200
    for text in ("Current run", "Credits", "Pipeline", "Configuration", "History", "Run now", "Keywords → Clusters",
                 'data-live-url="/live/sites/', "stage_6_batch_size", "Enough credits"):
        assert text in html, text
    assert "htmx.min.js" in html and "cdn" not in html.lower()


def test_config_form_saves_and_redirects(client, logged_in):
    sid = logged_in["site_id"]
    form = {"csrf_token": logged_in["csrf"], "is_enabled": "on", "frequency": "weekly", "scheduled_time": "07:15",
            "scheduled_day": "2", **{f"stage_{n}_batch_size": "4" for n in range(1, 7)},
            "within_stage_delay": "1", "between_stage_delay": "2"}
    r = client.post(f"/sites/{sid}/automation/config", data=form)
    assert r.status_code == 302
    cfg = db.session.execute(select(AutomationConfig).where(AutomationConfig.site_id == sid)).scalar_one()
    assert (cfg.frequency, cfg.scheduled_time, cfg.scheduled_day, cfg.stage_3_batch_size) == ("weekly", "07:15", 2, 4)
    assert cfg.next_run_at is not None and cfg.next_run_at.weekday() in (1, 2)
    page = client.get(f"/sites/{sid}/automation").get_data(as_text=True)
    assert "Configuration saved." in page and "Next runs:" in page


@pytest.mark.parametrize("field,value,message", [
    ("scheduled_time", "7pm", "must be HH:MM"), ("stage_2_batch_size", "0", "must be &gt;= 1"),
    ("stage_5_batch_size", "abc", "must be a whole number"), ("between_stage_delay", "99999", "must be &lt;= 3600"),
    ("frequency", "hourly", "must be one of daily, weekly, monthly"),
])
def test_config_form_errors_next_to_field_and_nothing_saved(client, logged_in, field, value, message):
    sid = logged_in["site_id"]
    form = {"csrf_token": logged_in["csrf"], "frequency": "daily", "scheduled_time": "02:00",
            **{f"stage_{n}_batch_size": "9" for n in range(1, 7)}, "within_stage_delay": "0", "between_stage_delay": "0"}
    form[field] = value
    r = client.post(f"/sites/{sid}/automation/config", data=form)
    assert r.status_code == 400
    html = r.get_data(as_text=True)
    assert f'id="err-{field}">{message}' in html
    assert f'value="{value}"' in html or field == "frequency"  # the user's input is kept
    cfg = db.session.execute(select(AutomationConfig).where(AutomationConfig.site_id == sid)).scalar_one()
    assert cfg.stage_1_batch_size == 20  # nothing half-applied


def test_forms_need_csrf(client, logged_in):
    sid = logged_in["site_id"]
    assert client.post(f"/sites/{sid}/automation/config", data={"frequency": "daily"}).status_code == 400
    assert client.post(f"/sites/{sid}/automation/run").status_code == 400
    assert db.session.execute(select(func.count()).select_from(AutomationRun)).scalar() == 0


def test_run_controls_without_javascript(app, client, logged_in):
    sid, token = logged_in["site_id"], logged_in["csrf"]
    r = client.post(f"/sites/{sid}/automation/run", data={"csrf_token": token})
    assert r.status_code == 302
    run = db.session.execute(select(AutomationRun)).scalar_one()
    run_id = run.id
    page = client.get(f"/sites/{sid}/automation").get_data(as_text=True)
    assert f"Run {run_id} started." in page and ">Pause</button>" in page and ">Resume</button>" not in page
    assert f'data-log-ws="/ws/runs/{run_id}/logs"' in page
    client.post(f"/runs/{run_id}/pause", data={"csrf_token": token})
    page = client.get(f"/sites/{sid}/automation").get_data(as_text=True)
    assert ">Resume</button>" in page and ">Pause</button>" not in page
    r = client.post(f"/runs/{run_id}/pause", data={"csrf_token": token})
    assert "cannot be paused" in client.get(r.headers["Location"]).get_data(as_text=True)
    client.post(f"/runs/{run_id}/resume", data={"csrf_token": token})
    drain(app)
    page = client.get(f"/sites/{sid}/automation").get_data(as_text=True)
    assert "No run is active." in page and "badge-completed" in page
    assert "Nothing to process" in page  # why Run now is disabled
    detail = client.get(f"/runs/{run_id}").get_data(as_text=True)
    for text in ("Stages", "Audit", "pause", "resume", "Run completed", "Download log"):
        assert text in detail, text
    found = client.get(f"/runs/{run_id}?q=stage+7").get_data(as_text=True)
    assert "matching line(s)" in found and "[stage 7]" in found and "[stage 1]" not in found
    log = client.get(f"/runs/{run_id}/log.txt")
    assert log.status_code == 200 and "attachment" in log.headers["Content-Disposition"]
    assert log.get_data(as_text=True).count("\n") > 20


def test_start_refused_reason_is_shown(client, logged_in):
    from webapp.models import Account
    acc = db.session.get(Account, logged_in["account_id"])
    acc.credits = 5
    db.session.commit()
    html = client.get(f'/sites/{logged_in["site_id"]}/automation').get_data(as_text=True)
    assert "Not enough credits: this run needs" in html and "disabled" in html
    r = client.post(f'/sites/{logged_in["site_id"]}/automation/run', data={"csrf_token": logged_in["csrf"]})
    assert "Insufficient credits" in client.get(r.headers["Location"]).get_data(as_text=True)


def test_panels_render_for_htmx(client, logged_in):
    for name in ("run", "overview", "history", "estimate"):
        r = client.get(f'/sites/{logged_in["site_id"]}/automation/panel/{name}', headers={"HX-Request": "true"})
        assert r.status_code == 200 and "<html" not in r.get_data(as_text=True)
    assert client.get(f'/sites/{logged_in["site_id"]}/automation/panel/secrets').status_code == 404


def test_keyword_import_paste_and_upload_with_report(client, logged_in):
    sid = logged_in["site_id"]
    r = client.post(f"/sites/{sid}/keywords", data={"csrf_token": logged_in["csrf"],
                                                   "keywords": "new keyword one\nnew keyword two\n\n" + "x" * 300})
    html = r.get_data(as_text=True)
    assert r.status_code == 200 and "<strong>2</strong> imported" in html and "Row 3: keyword is longer" in html
    data = {"csrf_token": logged_in["csrf"], "file": (io.BytesIO(b"keyword,volume\nnew keyword one,3\ncsv kw,abc\ncsv ok,5\n"), "k.csv")}
    html = client.post(f"/sites/{sid}/keywords", data=data, content_type="multipart/form-data").get_data(as_text=True)
    assert "<strong>1</strong> imported" in html and "1 duplicates skipped" in html and "Row 2: volume must be an integer" in html
    bad = client.post(f"/sites/{sid}/keywords", data={"csrf_token": logged_in["csrf"],
                                                     "file": (io.BytesIO(b"\xff\xfe\x00\x00"), "k.csv")},
                      content_type="multipart/form-data")
    assert bad.status_code == 400 and "must be UTF-8" in bad.get_data(as_text=True)
    assert db.session.execute(select(func.count()).select_from(Keyword).where(Keyword.site_id == sid)).scalar() == 13


def test_browse_generated_content_and_article(app, client, logged_in):
    sid = logged_in["site_id"]
    client.post(f"/sites/{sid}/automation/run", data={"csrf_token": logged_in["csrf"]})
    drain(app)
    for tab in ("keywords", "clusters", "ideas", "tasks", "content", "images"):
        r = client.get(f"/sites/{sid}/keywords?tab={tab}")
        assert r.status_code == 200, tab
    html = client.get(f"/sites/{sid}/keywords?tab=images").get_data(as_text=True)
    assert "/media/images/" in html
    cid = db.session.execute(select(Content.id)).scalars().first()
    art = client.get(f"/sites/{sid}/content/{cid}").get_data(as_text=True)
    assert art.count("<h1") == 1 and "<h2>" in art and 'class="hero"' in art


def test_image_whose_file_retention_deleted_is_not_shown_as_pending(app, client, logged_in):
    from webapp.models import Image
    sid = logged_in["site_id"]
    client.post(f"/sites/{sid}/automation/run", data={"csrf_token": logged_in["csrf"]})
    drain(app)
    img = db.session.execute(select(Image).where(Image.status == "generated")).scalars().first()
    img.file_path = None  # what retention leaves behind
    db.session.commit()
    html = client.get(f"/sites/{sid}/keywords?tab=images").get_data(as_text=True)
    assert html.count("deleted (retention)") == 1 and '<div class="thumb-pending">pending' not in html
    assert "deleted (retention)" in client.get(f"/sites/{sid}/images/{img.id}").get_data(as_text=True)


def test_other_accounts_pages_are_404(app, client, logged_in, factory):
    other, _ = factory.account(name="Other")
    other_site = factory.site(other, name="Secret", keywords=4)
    from webapp.automation.service import AutomationService
    run_id = AutomationService(other.id).start(other_site.id).id
    sid = other_site.id
    for url in (f"/sites/{sid}/automation", f"/sites/{sid}/keywords", f"/runs/{run_id}", f"/runs/{run_id}/log.txt",
                f"/sites/{sid}/automation/panel/run", f"/sites/{sid}/content/1"):
        r = client.get(url)
        assert r.status_code == 404, url
        assert "Secret" not in r.get_data(as_text=True)
    for url in (f"/sites/{sid}/automation/run", f"/runs/{run_id}/cancel", f"/sites/{sid}/automation/config"):
        assert client.post(url, data={"csrf_token": logged_in["csrf"]}).status_code == 404, url
    assert db.session.get(AutomationRun, run_id).status == "running"
    assert "Secret" not in client.get("/").get_data(as_text=True)


def test_pages_require_login(client, factory):
    acc, _ = factory.account()
    site = factory.site(acc)
    for url in ("/", f"/sites/{site.id}/automation", f"/sites/{site.id}/keywords", "/runs/1"):
        r = client.get(url)
        assert r.status_code == 302 and "/login" in r.headers["Location"], url
