"""In headless Chromium: a webhook added on the automation page receives the run's
run.completed (real worker), the tab title follows the run to its end, and the review queue is
worked with the keyboard alone (j, a, r + note, Ctrl+Enter)."""
import pytest

from webapp.extensions import db
from webapp.models import Content

from conftest import start_worker, wait_for
from test_notify import Receiver, verify
from test_browser import browser, shot, wait  # noqa: F401  (the browser fixture)

pytestmark = pytest.mark.processes  # real processes (see pytest.ini)


def test_tab_title_and_keyboard_review(app, app_env, factory, browser, live_server, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    live, d = live_server, browser
    acc, user = factory.account(credits=100_000)
    site = factory.site(acc, name="Garden Journal", keywords=8)
    factory.fast_config(site, stage_4_batch_size=1)
    site_id = site.id
    app.config["WEBHOOK_ALLOW_PRIVATE"] = True
    rec = Receiver()
    worker = start_worker(app_env, extra_env={"AI_LOCAL_LATENCY_MS": "60", "WEBHOOK_ALLOW_PRIVATE": "1"})
    notifier = start_worker(app_env, "--notify", extra_env={"WEBHOOK_ALLOW_PRIVATE": "1"})
    try:
        d.get(f"{live}/login")
        d.find_element(By.ID, "email").send_keys("acme@example.com")
        d.find_element(By.ID, "password").send_keys("password123")
        d.find_element(By.CSS_SELECTOR, "button.primary").click()
        wait(d, lambda: "Garden Journal" in d.page_source, message="dashboard")
        d.get(f"{live}/sites/{site_id}/automation")
        d.find_element(By.ID, "webhook-url").send_keys(rec.url)
        d.find_element(By.CSS_SELECTOR, ".webhook-form button.primary").click()
        wait(d, lambda: d.find_elements(By.CSS_SELECTOR, "#webhook-secret .secret"), message="the secret, once")
        secret = d.find_element(By.CSS_SELECTOR, "#webhook-secret .secret").text
        assert secret.startswith("whsec_")
        d.get(f"{live}/sites/{site_id}/automation")
        wait(d, lambda: d.find_element(By.CSS_SELECTOR, "#run-panel button.primary").is_enabled(), message="Run now")
        d.find_element(By.CSS_SELECTOR, "#run-panel button.primary").click()
        wait(d, lambda: d.title.startswith("▶ ") and "% · Run #" in d.title, timeout=30, message="running title")
        run_title = d.title
        wait(d, lambda: d.title.startswith("✓ Completed · Run #"), timeout=90, message="completed title")
        assert run_title.split("Run #")[1] == d.title.split("Run #")[1]
        wait_for(lambda: rec.calls, timeout=30, message="run.completed at the receiver")
        assert verify(rec.calls[0], secret)["event"] == "run.completed"
        d.get(f"{live}/sites/{site_id}/webhooks")
        wait(d, lambda: "HTTP 200" in d.page_source and "run.completed" in d.page_source, message="delivery listed")
        shot(d, "webhooks", tmp_path)
    finally:
        for w in (worker, notifier):
            w.terminate()
            w.wait(20)
        rec.close()

    ids = db.session.execute(db.select(Content.id).where(Content.site_id == site_id, Content.status == "review")
                             .order_by(Content.id)).scalars().all()
    assert len(ids) >= 2
    d.get(f"{live}/sites/{site_id}/review")
    wait(d, lambda: d.find_elements(By.CSS_SELECTOR, ".review-item img"), message="review page with images")
    shot(d, "review-queue", tmp_path)
    body = d.find_element(By.TAG_NAME, "body")
    body.send_keys("j")
    body = d.switch_to.active_element
    body.send_keys("a")  # approve the first
    wait(d, lambda: "1 article approved" in d.page_source, message="approved flash")
    d.switch_to.active_element.send_keys("j")
    d.switch_to.active_element.send_keys("r")  # empty note: the note gets the focus
    note = d.switch_to.active_element
    assert note.tag_name == "textarea"
    note.send_keys("Add sources")
    note.send_keys(Keys.CONTROL, Keys.ENTER)
    wait(d, lambda: "1 article rejected" in d.page_source, message="rejected flash")
    db.session.expire_all()
    first, second = (db.session.get(Content, i) for i in ids[:2])
    assert (first.status, second.status, second.review_note) == ("approved", "rejected", "Add sources")
    assert second.reviewed_by == "acme@example.com" and second.reviewed_at
