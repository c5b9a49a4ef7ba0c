"""End to end in a real headless Chromium (Debian's chromium + chromedriver, driven by
Selenium): log in, import keywords, Run now, watch progress and the live log, Pause,
Resume, Cancel, see the history row. UPDATE_SCREENSHOTS=1 refreshes docs/screenshots/."""
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from conftest import start_worker

pytestmark = pytest.mark.processes  # real processes (see pytest.ini)

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM and DRIVER):
        pytest.fail("chromium and chromedriver are required (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chrome'}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console: CSP violations
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    # Every browser test (this file's and those reusing this fixture) fails on a page that
    # broke the Content-Security-Policy: no inline script or style anywhere.
    try:
        violations = csp_violations(driver)
    finally:
        driver.quit()
    assert violations == [], violations




def shot(driver, name, tmp_path):
    out = tmp_path / f"{name}.png"
    driver.save_screenshot(str(out))
    if os.environ.get("UPDATE_SCREENSHOTS"):
        dest = ROOT / "docs" / "screenshots"
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(out, dest / f"{name}.png")


def wait(driver, predicate, timeout=30, message=""):
    end = time.time() + timeout
    while time.time() < end:
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out: {message}\n{driver.page_source[-3000:]}")


def csp_violations(driver):
    """Console messages about the Content-Security-Policy since the last call (the pages must
    work under it: no inline script or style, htmx configured not to inject any)."""
    return [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]
            or "Content-Security-Policy" in e["message"]]


def test_full_browser_flow(app, app_env, factory, browser, live_server, tmp_path):
    live = live_server
    from selenium.webdriver.common.by import By
    acc, user = factory.account(credits=100_000)
    site = factory.site(acc, name="Garden Journal")
    factory.fast_config(site, stage_4_batch_size=1, stage_6_batch_size=2)
    site_id = site.id
    worker = start_worker(app_env, extra_env={"AI_LOCAL_LATENCY_MS": "120"})
    d = browser
    try:
        d.get(f"{live}/login")
        d.find_element(By.ID, "email").send_keys("acme@example.com")
        d.find_element(By.ID, "password").send_keys("password123")
        d.find_element(By.CSS_SELECTOR, "button.primary").click()
        wait(d, lambda: "Garden Journal" in d.page_source, message="dashboard")
        shot(d, "dashboard-empty", tmp_path)

        d.get(f"{live}/sites/{site_id}/keywords")
        from webapp.demo import demo_keywords
        d.find_element(By.ID, "kw-paste").send_keys("\n".join(demo_keywords(24)))
        d.find_element(By.CSS_SELECTOR, "#import button.primary").click()
        wait(d, lambda: "24</strong> imported" in d.page_source, message="import report")
        shot(d, "keywords-import", tmp_path)

        d.get(f"{live}/sites/{site_id}/automation")
        d.find_element(By.XPATH, "//button[normalize-space()='Run now']").click()
        wait(d, lambda: "started." in d.page_source, message="run started")
        # The live log tail grows over the websocket without a reload.
        log = d.find_element(By.ID, "log-tail")
        n0 = len(log.text.splitlines())
        wait(d, lambda: len(d.find_element(By.ID, "log-tail").text.splitlines()) > n0 + 5, message="live log lines")
        wait(d, lambda: d.find_element(By.ID, "log-status").text == "live", message="ws live")
        # Progress bars and current processing update (htmx polling + websocket).
        wait(d, lambda: "stage 4" in d.find_element(By.ID, "processing").text.lower() or
             "Tasks → Content" in d.find_element(By.ID, "processing").text, timeout=60, message="stage 4 processing")
        # The htmx-polled panel fills the per-stage progress bars.
        wait(d, lambda: d.find_elements(By.XPATH, "//li[contains(@class,'stage')][1]//progress[@role='progressbar'][@aria-valuenow='100.0']"),
             timeout=20, message="stage 1 progress bar full")
        shot(d, "automation-running", tmp_path)
        assert csp_violations(d) == []

        d.find_element(By.XPATH, "//button[normalize-space()='Pause']").click()
        wait(d, lambda: "badge-paused" in d.page_source and ">Resume</button>" in d.page_source, message="paused")
        d.find_element(By.XPATH, "//button[normalize-space()='Resume']").click()
        wait(d, lambda: "resumed." in d.page_source and "badge-running" in d.page_source, message="resumed")
        d.execute_script("window.confirm = function () { return true; }")
        d.find_element(By.XPATH, "//button[normalize-space()='Cancel']").click()
        wait(d, lambda: "cancelled." in d.page_source, message="cancelled")
        wait(d, lambda: "badge-cancelled" in d.find_element(By.ID, "history-panel").get_attribute("innerHTML"),
             message="history row")
        shot(d, "automation-history", tmp_path)

        d.find_element(By.CSS_SELECTOR, "#history-panel a").click()
        wait(d, lambda: "Audit" in d.page_source and "cancel" in d.page_source, message="run detail")
        shot(d, "run-detail", tmp_path)

        d.get(f"{live}/sites/{site_id}/keywords?tab=content")
        links = d.find_elements(By.CSS_SELECTOR, "td a")
        assert links, "generated articles listed"
        links[0].click()
        wait(d, lambda: d.find_elements(By.CSS_SELECTOR, "article h2"), message="article")
        shot(d, "article", tmp_path)
        d.get(f"{live}/")
        shot(d, "dashboard", tmp_path)
        assert csp_violations(d) == []
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
