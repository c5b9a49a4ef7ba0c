"""The live layer end to end in headless Chromium (the Selenium setup of test_browser.py), with
runs started, cancelled and completed through the API and a real worker — never a reload:
the site page attaches to a run started elsewhere; keyboard focus stays on Pause across
refreshes; a log scrolled up stays put (with "Jump to latest"); over the socket cap the page
says so and polls; the run page follows a cancel and a completion (badge, buttons); the
panels at the end of a run agree with a reload."""
import time

import pytest
import requests
from selenium.webdriver.common.by import By
from sqlalchemy import update

from conftest import drain
from test_browser import browser, wait  # noqa: F401  (the fixture)
from webapp.automation.billing import top_up
from webapp.automation.logger import AutomationLogger
from webapp.extensions import db
from webapp.models import Account, AutomationRun
from webapp.redis_conn import get_redis
from webapp.web.sockets import claims_key

pytestmark = pytest.mark.processes  # real processes (see pytest.ini)


def refreshes(d):
    return int(d.execute_script("return document.documentElement.dataset.liveRefreshes || '0'"))


def text(d, css):
    return d.find_element(By.CSS_SELECTOR, css).text


def test_live_pages_follow_runs_made_elsewhere(app, app_env, factory, browser, gunicorn_web):  # noqa: F811
    # The web server as `make run` starts it (gunicorn, gevent worker): real close codes.
    d, live = browser, "http://" + gunicorn_web()
    acc, user = factory.account(credits=100_000)
    site = factory.site(acc, name="Live Blog", keywords=5)
    factory.fast_config(site)
    site_id, acc_id, user_id = site.id, acc.id, user.id
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {factory.token(user)}"
    A = f"{live}/api/v1/automation"

    d.get(f"{live}/login")
    d.find_element(By.ID, "email").send_keys("acme@example.com")
    d.find_element(By.ID, "password").send_keys("password123")
    d.find_element(By.CSS_SELECTOR, "button.primary").click()
    wait(d, lambda: "Live Blog" in d.page_source, message="dashboard")
    d.get(f"{live}/sites/{site_id}/automation")
    assert "No run is active." in text(d, "#run-panel")
    d.execute_script("window.__sameDocument = true")

    # A run started through the API (no worker yet: it stays at stage 1): the page attaches.
    run1 = api.post(f"{A}/run_now/?site_id={site_id}").json()["data"]["run_id"]
    t0 = time.time()
    wait(d, lambda: d.find_elements(By.ID, f"pause-{run1}"), timeout=15, message="run panel attached")
    attached = time.time() - t0
    wait(d, lambda: "Run started" in text(d, "#log-tail"), timeout=15, message="log attached")
    assert "starting" in text(d, "#run-panel") and "100%" not in text(d, "#processing")
    assert d.execute_script("return window.__sameDocument === true")

    # Focus stays on Pause across three refreshes of the run panel itself (credits used and the
    # balance change, as when the worker charges; the log line makes the page refresh at once
    # instead of at its next poll).
    run = db.session.get(AutomationRun, run1)
    logger = AutomationLogger(app.config["LOG_DIR"], run, get_redis())
    d.execute_script(f"document.getElementById('pause-{run1}').focus()")
    before = refreshes(d)
    for i in range(3):
        n = refreshes(d)
        top_up(db.session.get(Account, acc_id), 1000 + i)
        db.session.execute(update(AutomationRun).where(AutomationRun.id == run1).values(total_credits_used=7 * (i + 1)))
        db.session.commit()
        logger.log(f"credits topped up ({i})")
        wait(d, lambda: refreshes(d) > n, timeout=15, message=f"refresh {i + 1}")
        assert d.switch_to.active_element.get_attribute("id") == f"pause-{run1}", i
        assert f"{7 * (i + 1)} credits used" in text(d, "#run-panel")
    assert refreshes(d) >= before + 3
    balance = db.session.get(Account, acc_id).credits
    assert f"{balance:,}" in text(d, "#credit-balance")  # the header pill follows too

    # A reader who scrolled the log up keeps their place while lines arrive.
    for i in range(80):
        logger.log(f"filler line {i}", stage=1)
    wait(d, lambda: "filler line 79" in text(d, "#log-tail"), message="lines arrive")
    d.execute_script("var el = document.getElementById('log-tail'); el.scrollTop = 40;")
    top = d.execute_script("return document.getElementById('log-tail').scrollTop")
    for i in range(5):
        logger.log(f"new line {i} FAILED after 3 attempts" if i == 4 else f"new line {i}", stage=1)
    wait(d, lambda: d.find_element(By.ID, "log-jump").is_displayed(), message="jump to latest offered")
    assert "5 new" in text(d, "#log-jump")
    assert d.execute_script("return document.getElementById('log-tail').scrollTop") == top
    assert d.find_elements(By.CSS_SELECTOR, "#log-tail .ln-error")  # error lines stand out
    d.find_element(By.ID, "log-jump").click()
    wait(d, lambda: not d.find_element(By.ID, "log-jump").is_displayed(), message="jumped")
    assert d.execute_script("var el = document.getElementById('log-tail');"
                            "return el.scrollHeight - el.scrollTop - el.clientHeight < 8")

    # Over the per-user socket cap: the page says so and polls the log instead.
    r = get_redis()
    r.zadd(claims_key(user_id), {f"other-tab-{i}": time.time() + 60 for i in range(app.config["WS_MAX_PER_USER"])})
    d.get(f"{live}/sites/{site_id}/automation")
    wait(d, lambda: d.find_element(By.ID, "live-note").is_displayed(), message="cap note " + repr((text(d, "#log-status"), r.zcard(claims_key(user_id)), r.zrange(claims_key(user_id), 0, -1, withscores=True)[-3:], time.time())))
    assert "Too many live connections" in text(d, "#live-note")
    logger.log("polled line", stage=1)
    wait(d, lambda: "polled line" in text(d, "#log-tail"), timeout=15, message="log by polling")
    r.delete(claims_key(user_id))

    # The run page: Pause in the browser leaves a flash about it; a resume through the API
    # moves the run on and the flash goes away; then the page follows a cancel made through
    # the API: badge and buttons, no reload.
    d.get(f"{live}/runs/{run1}")
    d.find_element(By.ID, f"pause-{run1}").click()
    wait(d, lambda: d.find_elements(By.CSS_SELECTOR, f".flash[data-run-id='{run1}'][data-run-status='paused']"),
         message="pause flash")
    d.execute_script("window.__sameDocument = true")
    assert api.post(f"{A}/resume/?run_id={run1}").status_code == 200
    wait(d, lambda: not d.find_elements(By.CSS_SELECTOR, ".flash[data-run-id]"), timeout=15, message="flash gone")
    assert "running" in text(d, "#run-head .badge") and d.find_elements(By.ID, f"pause-{run1}")
    assert api.post(f"{A}/cancel/?run_id={run1}", json={"reason": "from the API"}).status_code == 200
    wait(d, lambda: "cancelled" in text(d, "#run-head .badge"), timeout=15, message="run page shows cancel")
    assert not d.find_elements(By.ID, f"pause-{run1}") and not d.find_elements(By.ID, f"cancel-{run1}")
    assert "from the API" in text(d, "#run-summary")
    assert d.execute_script("return window.__sameDocument === true")

    # A second run, completed by a real RQ worker while its run page (tab 1) and the site page
    # (tab 2) are open.
    run2 = api.post(f"{A}/run_now/?site_id={site_id}").json()["data"]["run_id"]
    d.get(f"{live}/runs/{run2}")
    d.execute_script("window.__sameDocument = true")
    run_tab = d.current_window_handle
    d.switch_to.new_window("tab")
    d.get(f"{live}/sites/{site_id}/automation")
    wait(d, lambda: d.find_elements(By.ID, f"pause-{run2}"), message="site page on run 2")
    drain(app)  # a real RQ worker (in this process) runs the whole pipeline
    wait(d, lambda: "No run is active." in text(d, "#run-panel"), timeout=90, message="site page sees the end")
    live_view = {css: text(d, css) for css in ("#overview-panel", "#estimate-panel", "#credit-balance")}
    history_badge = text(d, f"#history-panel [data-run-id='{run2}']")
    d.refresh()
    wait(d, lambda: "No run is active." in text(d, "#run-panel"), message="reloaded")
    for css, shown in live_view.items():
        assert text(d, css) == shown, css  # nothing a reload would change
    assert text(d, f"#history-panel [data-run-id='{run2}']") == history_badge == "completed"
    d.switch_to.window(run_tab)
    wait(d, lambda: "completed" in text(d, "#run-head .badge"), timeout=30, message="run page sees completion")
    assert not d.find_elements(By.ID, f"pause-{run2}") and not d.find_elements(By.ID, f"cancel-{run2}")
    assert d.execute_script("return window.__sameDocument === true")
    assert 'aria-valuenow="100.0"' in d.find_element(By.ID, "run-stages").get_attribute("innerHTML")
    assert attached < 10
