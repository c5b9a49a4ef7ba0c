"""Sites in the browser (headless Chromium): an owner creates, edits and deletes a site with a
typed confirmation; a viewer sees the controls disabled with the role they need."""
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from webapp.extensions import db
from webapp.models import Site

from test_browser import browser, wait  # noqa: F401  (the Chromium fixture)

pytestmark = pytest.mark.processes  # real processes (see pytest.ini)


def _login(d, live, email):
    d.get(f"{live}/login")
    d.find_element(By.ID, "email").send_keys(email)
    d.find_element(By.ID, "password").send_keys("password123")
    d.find_element(By.CSS_SELECTOR, "button.primary").click()


def test_owner_creates_edits_and_deletes_a_site(app, factory, browser, live_server):  # noqa: F811
    d, live = browser, live_server
    acc, _ = factory.account(credits=1000)
    _login(d, live, "acme@example.com")
    wait(d, lambda: "Create your first site" in d.page_source, message="empty sites page")
    d.find_element(By.LINK_TEXT, "Create your first site").click()
    wait(d, lambda: d.find_elements(By.ID, "name"), message="site form")
    d.find_element(By.CSS_SELECTOR, "button.primary").click()  # empty name: error next to the field
    wait(d, lambda: d.find_elements(By.CSS_SELECTOR, ".field-error"), message="name error")
    d.find_element(By.ID, "name").send_keys("Garden Journal")
    d.find_element(By.ID, "domain").send_keys("garden.example.com")
    Select(d.find_element(By.ID, "timezone")).select_by_value("Europe/Berlin")
    d.find_element(By.CSS_SELECTOR, "button.primary").click()
    wait(d, lambda: "/keywords" in d.current_url, message="keywords page after create")
    db.session.expire_all()
    site = db.session.execute(db.select(Site).where(Site.name == "Garden Journal")).scalar_one()
    assert site.timezone == "Europe/Berlin" and site.domain == "garden.example.com"
    site_id = site.id

    d.get(f"{live}/sites/{site_id}/automation")
    d.find_element(By.ID, "edit-site").click()
    wait(d, lambda: d.find_elements(By.ID, "name"), message="edit form")
    name = d.find_element(By.ID, "name")
    name.clear()
    name.send_keys("Garden Notes")
    d.find_element(By.CSS_SELECTOR, "button.primary").click()
    wait(d, lambda: "Garden Notes" in d.page_source and "/automation" in d.current_url, message="renamed")

    d.get(f"{live}/sites/{site_id}/delete")
    d.find_element(By.ID, "confirm").send_keys("Garden")  # not the name: refused
    d.find_element(By.CSS_SELECTOR, "button.danger").click()
    wait(d, lambda: "type the site" in d.page_source, message="confirmation error")
    d.find_element(By.ID, "confirm").send_keys("Garden Notes")
    d.find_element(By.CSS_SELECTOR, "button.danger").click()
    wait(d, lambda: "was deleted" in d.page_source, message="deleted")
    db.session.expire_all()
    assert db.session.get(Site, site_id) is None


def test_viewer_sees_disabled_controls_with_the_reason(app, factory, browser, live_server):  # noqa: F811
    d, live = browser, live_server
    acc, _ = factory.account(credits=100_000)
    site = factory.site(acc, keywords=5)
    factory.user(acc, "viewer@example.com", "viewer")
    _login(d, live, "viewer@example.com")
    wait(d, lambda: "Sites" in d.page_source and "viewer" in d.page_source, message="dashboard")
    assert not d.find_elements(By.LINK_TEXT, "New site")
    d.get(f"{live}/sites/{site.id}/automation")
    btn = d.find_element(By.ID, "run-now")
    assert not btn.is_enabled() and btn.get_attribute("title") == "Needs the operator role"
    assert not d.find_elements(By.ID, "edit-site")
