"""Run insights in a real headless Chromium at 1400 px and 420 px: the timeline and failed
items on the run page, the retry button (its run processes only the failed items), every
config error shown at once with focus on the summary, and no page scrolling sideways at
420 px. UPDATE_SCREENSHOTS=1 refreshes docs/screenshots/."""
import re

import pytest
from sqlalchemy import select

from webapp.extensions import db
from webapp.models import AutomationRun, Content, RunItemFailure

from conftest import drain
from test_browser import browser, shot, wait  # noqa: F401  (the Chromium fixture and helpers)

pytestmark = pytest.mark.processes  # real processes (see pytest.ini)


@pytest.fixture
def failed_run(app, factory):
    """A finished run with failed items (AI_LOCAL_FAIL_EVERY=3, one try per item)."""
    acc, user = factory.account(credits=100_000)
    site = factory.site(acc, name="Garden Journal", keywords=24, timezone="Europe/Berlin")
    factory.fast_config(site)
    site_id, acc_id = site.id, acc.id
    app.config.update(AI_LOCAL_FAIL_EVERY=3, ITEM_MAX_ATTEMPTS=1)
    from webapp.automation.service import AutomationService
    run_id = AutomationService(acc_id, actor="user:acme@example.com").start(site_id).id
    drain(app)
    app.config.update(AI_LOCAL_FAIL_EVERY=None)
    return {"site_id": site_id, "run_id": run_id}


def login(d, live):
    from selenium.webdriver.common.by import By
    d.get(f"{live}/login")
    d.find_element(By.ID, "email").send_keys("acme@example.com")
    d.find_element(By.ID, "password").send_keys("password123")
    d.find_element(By.CSS_SELECTOR, "button.primary").click()
    wait(d, lambda: "Garden Journal" in d.page_source, message="dashboard")


def no_sideways_scroll(d):
    return d.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")


OVERFLOWING = """
var w = window.innerWidth, out = [];
document.querySelectorAll('body *').forEach(function (el) {
  var r = el.getBoundingClientRect();
  if (r.right > w + 0.5 && !el.closest('.table-wrap, .log')) out.push(el.tagName + '#' + el.id + '.' + el.className + ' ' + Math.round(r.right));
});
return out.slice(0, 8);
"""


LOW_CONTRAST = """
function rgb(s) { var m = s.match(/[\\d.]+/g); return m ? m.map(Number) : [0, 0, 0, 0]; }
function lum(c) { var a = c.slice(0, 3).map(function (v) { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
  return 0.2126 * a[0] + 0.7152 * a[1] + 0.0722 * a[2]; }
function bg(el) { for (; el; el = el.parentElement) { var c = rgb(getComputedStyle(el).backgroundColor);
  if (c.length < 4 || c[3] > 0.5) return c; } return [255, 255, 255, 1]; }
var out = [];
document.querySelectorAll('body *').forEach(function (el) {
  var text = Array.prototype.some.call(el.childNodes, function (n) { return n.nodeType === 3 && n.textContent.trim(); });
  if (!text || !el.getClientRects().length || el.closest('[disabled], svg, .skip-link')) return;
  var st = getComputedStyle(el); if (st.visibility === 'hidden') return;
  var fg = rgb(st.color), b = bg(el), l1 = lum(fg), l2 = lum(b);
  var ratio = (Math.max(l1, l2) + 0.05) / (Math.min(l1, l2) + 0.05);
  var size = parseFloat(st.fontSize), bold = parseInt(st.fontWeight, 10) >= 700;
  var need = (size >= 24 || (bold && size >= 18.66)) ? 3 : 4.5;
  if (ratio < need) out.push(el.tagName + '.' + el.className + ' "' + el.textContent.trim().slice(0, 30) + '" ' + ratio.toFixed(2));
});
return out.slice(0, 12);
"""


def test_run_insights_retry_and_config_errors_at_1400(app, failed_run, browser, live_server, tmp_path):
    from selenium.webdriver.common.by import By
    d, live = browser, live_server
    login(d, live)
    run_id, site_id = failed_run["run_id"], failed_run["site_id"]
    failed = db.session.execute(select(RunItemFailure.stage, RunItemFailure.item_id)
                                .where(RunItemFailure.run_id == run_id)).all()
    assert failed
    d.get(f"{live}/runs/{run_id}")
    assert d.find_element(By.CSS_SELECTOR, "svg.timeline").is_displayed()
    assert len(d.find_elements(By.CSS_SELECTOR, "svg.timeline rect.tl-bar")) == 7
    assert d.execute_script(LOW_CONTRAST) == []
    rows = d.find_elements(By.CSS_SELECTOR, "#failed-card tbody tr")
    assert len(rows) == min(len(failed), 20)
    shot(d, "run-insights", tmp_path)
    d.find_element(By.ID, "retry-failed").click()
    wait(d, lambda: "retries the failed items of run" in d.page_source, message="retry started")
    new_id = int(re.search(r"/runs/(\d+)$", d.current_url).group(1))
    # While it runs, the working time counts up in the browser (no reload, no request).
    ticking = d.find_element(By.CSS_SELECTOR, "#timeline-card [data-since]")
    first_text = ticking.text
    wait(d, lambda: d.find_element(By.CSS_SELECTOR, "#timeline-card [data-since]").text != first_text,
         timeout=15, message="working time ticking")
    assert "ETA" in d.find_element(By.ID, "timeline-card").text
    drain(app)
    new = db.session.get(AutomationRun, new_id)
    assert new.status == "completed" and new.trigger_type == "retry"
    # Only the failed items: the first stage with failures processed exactly those.
    first = min(s for s, _ in failed)
    assert new.stage_result(first)["items_processed"] == sum(1 for s, _ in failed if s == first)
    for n in range(1, first):
        assert new.stage_result(n)["items_processed"] == 0 and new.stage_result(n)["status"] == "skipped"
    d.get(f"{live}/runs/{new_id}")
    skipped = sum(1 for n in range(1, 8) if new.stage_result(n)["status"] == "skipped")
    assert len(d.find_elements(By.CSS_SELECTOR, "svg.timeline rect.tl-skipped")) == skipped
    assert len(d.find_elements(By.CSS_SELECTOR, "svg.timeline rect.tl-completed")) == 7 - skipped
    assert "No item failed in this run." in d.page_source

    # Config: three bad fields, one submit, every one named, focus on the summary, same URL.
    d.get(f"{live}/sites/{site_id}/automation")
    for name, value in (("scheduled_time", "25:99"), ("stage_3_batch_size", "0"), ("between_stage_delay", "x")):
        el = d.find_element(By.ID, name)
        el.clear()
        el.send_keys(value)
    d.find_element(By.XPATH, "//button[normalize-space()='Save configuration']").click()
    wait(d, lambda: d.find_elements(By.ID, "config-errors"), message="error summary")
    summary = d.find_element(By.ID, "config-errors")
    assert "3 fields need attention" in summary.text
    for label in ("Time:", "Stage 3 · Ideas → Tasks:", "Delay between stages:"):
        assert label in summary.text, label
    wait(d, lambda: d.execute_script("return document.activeElement.id") == "config-errors", timeout=10,
         message="focus on the error summary")
    assert d.current_url.split("#")[0] == f"{live}/sites/{site_id}/automation"
    for name in ("scheduled_time", "stage_3_batch_size", "between_stage_delay"):
        assert d.find_element(By.ID, f"err-{name}").is_displayed()
    # The day pickers follow the frequency: only the matching one is shown.
    from selenium.webdriver.support.ui import Select
    Select(d.find_element(By.ID, "frequency")).select_by_value("weekly")
    assert d.find_element(By.ID, "scheduled_weekday").is_displayed()
    assert not d.find_element(By.ID, "scheduled_monthday").is_displayed()
    assert d.execute_script(LOW_CONTRAST) == []
    shot(d, "config-errors", tmp_path)
    d.get(f"{live}/")
    assert d.execute_script(LOW_CONTRAST) == []
    shot(d, "dashboard-runs", tmp_path)


def test_pages_at_420px_do_not_scroll_sideways(app, failed_run, browser, live_server, tmp_path):
    from selenium.webdriver.common.by import By
    d, live = browser, live_server
    d.set_window_size(420, 900)
    login(d, live)
    site_id, run_id = failed_run["site_id"], failed_run["run_id"]
    content_id = db.session.execute(select(Content.id).where(Content.site_id == site_id)).scalars().first()
    from webapp.models import Image
    image_id = db.session.execute(select(Image.id).where(Image.site_id == site_id, Image.status == "generated")).scalars().first()
    pages = ["/", f"/sites/{site_id}/automation", f"/runs/{run_id}", f"/sites/{site_id}/keywords",
             f"/sites/{site_id}/keywords?tab=images", f"/sites/{site_id}/content/{content_id}",
             f"/sites/{site_id}/images/{image_id}", f"/sites/{site_id}/review", f"/sites/{site_id}/webhooks",
             f"/sites/{site_id}/edit", "/sites/new", "/tokens", "/users", "/audit", "/ops", "/settings/notifications"]
    for path in pages:
        d.get(live + path)
        wait(d, lambda: d.find_elements(By.TAG_NAME, "h1"), message=path)
        width, inner = no_sideways_scroll(d)
        assert inner <= 420 and width <= inner, (path, width, inner, d.execute_script(OVERFLOWING))
        assert len(d.find_elements(By.TAG_NAME, "h1")) == 1, path
        assert d.execute_script(LOW_CONTRAST) == [], path
        assert d.find_element(By.CSS_SELECTOR, "a.skip-link").get_attribute("href").endswith("#main")
    # The contrast check itself catches grey-on-white text.
    d.execute_script("var p = document.createElement('p'); p.id = 'probe'; p.className = 'probe';"
                     "p.textContent = 'faint'; p.setAttribute('hidden', ''); document.body.appendChild(p);"
                     "p.removeAttribute('hidden'); p.style.color = '#bbbbbb'; p.style.background = '#ffffff';")
    assert any('"faint"' in x for x in d.execute_script(LOW_CONTRAST))
    d.get(f"{live}/runs/{run_id}")
    tl = d.find_element(By.CSS_SELECTOR, "svg.timeline")
    assert tl.is_displayed() and tl.size["width"] <= 420
    shot(d, "run-detail-420", tmp_path)
    d.get(f"{live}/sites/{site_id}/automation")
    shot(d, "automation-420", tmp_path)
