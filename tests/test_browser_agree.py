"""Pages that agree, in a real headless Chromium: the dashboard's "Pending items" after an import
(on a full reload, not after a TTL), the Current run and Pipeline panels of one screen during a
run (one snapshot: the same remaining count at several moments), and every page with a table at
420 px without horizontal scrolling (document width <= viewport)."""
from selenium.webdriver.common.by import By

from conftest import start_worker, stop_process, wait_for
from test_browser import browser, wait  # noqa: F401  (the Chromium fixture)
from webapp.demo import demo_keywords


import pytest
pytestmark = pytest.mark.processes  # every test here starts processes of its own

def _login(d, live, email="acme@example.com"):
    d.get(f"{live}/login")
    d.find_element(By.ID, "email").send_keys(email)
    d.find_element(By.ID, "password").send_keys("password123")
    d.find_element(By.CSS_SELECTOR, "button.primary").click()
    wait(d, lambda: "/login" not in d.current_url, message="logged in")


def _pending_cell(d, site_name):
    row = d.find_element(By.XPATH, f"//tr[.//a[normalize-space()='{site_name}']]")
    cells = row.find_elements(By.CSS_SELECTOR, "td.num")
    return int(cells[0].text.replace(",", ""))


def test_dashboard_pending_is_fresh_after_an_import(app, factory, browser, live_server):  # noqa: F811
    d, live = browser, live_server
    acc, _ = factory.account(credits=100_000)
    site = factory.site(acc, name="Garden Journal", keywords=1)
    site_id = site.id
    _login(d, live)
    d.get(f"{live}/")
    assert _pending_cell(d, "Garden Journal") == 1  # now cached for this site
    d.get(f"{live}/sites/{site_id}/keywords")
    d.find_element(By.ID, "kw-paste").send_keys("\n".join(demo_keywords(41)[1:]))
    d.find_element(By.CSS_SELECTOR, "#import button.primary").click()
    wait(d, lambda: "40</strong> imported" in d.page_source, message="import report")
    d.get(f"{live}/")  # a full reload at once: the import made the cached count stale
    assert _pending_cell(d, "Garden Journal") == 41
    d.get(f"{live}/sites/{site_id}/automation")
    assert d.find_element(By.CSS_SELECTOR, "td[data-stage='1']").text == "41"


# Both panels read in one script: what one screen shows at one moment.
READ_PANELS = """
const p = document.getElementById('processing');
const m = p && p.textContent.match(/stage (\\d+) .*?\\((\\d+) remaining\\)/s);
if (!m) return null;
const cell = document.querySelector("td[data-stage='" + m[1] + "']");
return {stage: +m[1], remaining: +m[2], pending: cell ? +cell.textContent.replace(/,/g, '') : null,
        refreshes: +(document.documentElement.dataset.liveRefreshes || 0)};
"""


def test_current_run_and_pipeline_panels_agree_during_a_run(app, app_env, factory, browser, live_server):  # noqa: F811
    d, live = browser, live_server
    acc, _ = factory.account(credits=100_000)
    site = factory.site(acc, name="Garden Journal", keywords=30)
    factory.fast_config(site, stage_1_batch_size=2, stage_4_batch_size=1, stage_6_batch_size=1)
    site_id = site.id
    worker = start_worker(app_env, extra_env={"AI_LOCAL_LATENCY_MS": "150", "JOB_SLICE_SECONDS": "0"})
    try:
        _login(d, live)
        d.get(f"{live}/sites/{site_id}/automation")
        d.find_element(By.XPATH, "//button[normalize-space()='Run now']").click()
        wait(d, lambda: "started." in d.page_source, message="run started")
        moments, last = [], None
        while len(moments) < 5:
            # a new moment: the live refresh applied a new snapshot
            snap = wait_for(lambda: (lambda s: s if s and (last is None or s["refreshes"] > last["refreshes"]) and
                                     (s["stage"], s["remaining"]) != ((last or {}).get("stage"), (last or {}).get("remaining"))
                                     else None)(d.execute_script(READ_PANELS)),
                            timeout=90, interval=0.2, message=f"moment {len(moments) + 1} of the run")
            moments.append(snap)
            last = snap
        for snap in moments:
            assert snap["pending"] == snap["remaining"], moments
        assert len({(m["stage"], m["remaining"]) for m in moments}) == 5
    finally:
        stop_process(worker)


OFFENDERS = """
const w = window.innerWidth, out = [];
for (const el of document.querySelectorAll('body *')) {
  const r = el.getBoundingClientRect();
  if (r.right > w + 1 && ![...el.children].some(c => c.getBoundingClientRect().right > w + 1)) {
    out.push(el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') + (el.className && el.className.baseVal === undefined ?
             '.' + String(el.className).split(' ').join('.') : '') + ' ' + Math.round(r.right));
  }
}
return out.slice(0, 8);
"""


def _no_horizontal_scroll(d, url):
    d.get(url)
    wait(d, lambda: d.execute_script("return document.readyState") == "complete", message=url)
    widths = d.execute_script("return [document.documentElement.scrollWidth, window.innerWidth, "
                              "document.body.scrollWidth]")
    fits = widths[0] <= widths[1] and widths[2] <= widths[1]
    if not fits:  # name the elements sticking out, for whoever has to fix it
        widths.append(d.execute_script(OFFENDERS))
    return fits, widths


def test_every_page_with_a_table_fits_420_px(app, factory, browser, live_server):  # noqa: F811
    from webapp.automation.service import AutomationService
    from webapp.models import Webhook, WebhookAttempt, WebhookDelivery
    from webapp.extensions import db
    from webapp.models.base import utcnow
    from conftest import drain
    d, live = browser, live_server
    acc, user = factory.account(credits=100_000)
    factory.token(user)
    acc_id = acc.id
    site = factory.site(acc, name="A garden journal with a rather long name", keywords=6)
    factory.fast_config(site)
    site_id = site.id
    run_id = AutomationService(acc_id).start(site_id).id
    drain(app)
    long_url = "https://hooks.example.com/" + "a-very-long-path-segment/" * 6 + "endpoint?with=query&and=more"
    wh = Webhook(account_id=acc_id, site_id=site_id, url=long_url, events=["run.completed", "run.failed"],
                 secret="s" * 32, created_by="user:acme@example.com")
    db.session.add(wh)
    db.session.flush()
    dl = WebhookDelivery(account_id=acc_id, webhook_id=wh.id, site_id=site_id, event="run.completed", run_id=run_id,
                         delivery_id="d" * 36, status="failed", attempts=3,
                         last_error="connection refused by hooks.example.com:443 after 10 s", created_at=utcnow())
    db.session.add(dl)
    db.session.flush()
    for n in (1, 2, 3):
        db.session.add(WebhookAttempt(account_id=acc_id, site_id=site_id, delivery_id=dl.id, number=n,
                                      started_at=utcnow(), duration_ms=10_000, status_code=None, ok=False,
                                      error="connection refused by hooks.example.com:443"))
    db.session.commit()
    _login(d, live)
    d.set_window_size(420, 900)
    assert d.execute_script("return window.innerWidth") <= 420
    pages = ["/", f"/sites/{site_id}/automation", f"/runs/{run_id}", f"/sites/{site_id}/webhooks",
             f"/sites/{site_id}/review", "/users", "/tokens", "/audit", "/ops", "/settings/notifications",
             "/costs", "/account", "/account/password", f"/sites/{site_id}/edit", "/sites/new"]
    pages += [f"/sites/{site_id}/keywords?tab={t}" for t in ("keywords", "clusters", "ideas", "tasks", "content",
                                                            "images")]
    wide = {}
    for path in pages:
        fits, widths = _no_horizontal_scroll(d, live + path)
        if not fits:
            wide[path] = widths
    assert wide == {}, wide


def test_an_over_size_paste_keeps_the_form(app, factory, browser, live_server):  # noqa: F811
    """A 3 MB paste: nothing is sent, the text stays in the box, a message says what to do."""
    d, live = browser, live_server
    acc, _ = factory.account(credits=1000)
    site_id = factory.site(acc, name="Garden Journal").id
    _login(d, live)
    d.get(f"{live}/sites/{site_id}/keywords")
    d.execute_script("document.getElementById('kw-paste').value = 'coffee beans number x\\n'.repeat(140000);")
    d.find_element(By.CSS_SELECTOR, "#import button.primary").click()
    wait(d, lambda: d.find_elements(By.CSS_SELECTOR, "#import .js-size-error"), message="size message")
    msg = d.find_element(By.CSS_SELECTOR, "#import .js-size-error").text
    assert "at most 2.0 MB" in msg and "still here" in msg
    assert d.current_url.endswith(f"/sites/{site_id}/keywords")
    assert d.execute_script("return document.getElementById('kw-paste').value.length") == 22 * 140000
