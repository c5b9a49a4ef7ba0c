"""The invitation link in a real browser (headless Chromium): the one-time token travels in the
fragment (never sent, so in no access log), the page's script moves it into the form and out
of the address bar, and the password is set by POST."""
from selenium.webdriver.common.by import By

from webapp.extensions import db
from webapp.models import User

from test_browser import browser, csp_violations, wait  # noqa: F401  (the Chromium fixture)


import pytest
pytestmark = pytest.mark.processes  # every test here starts processes of its own

def test_invitation_link_with_the_token_in_the_fragment(app, factory, browser, live_server):  # noqa: F811
    from webapp.links import public_url
    from webapp.team import invite
    d, live = browser, live_server
    _acc, owner = factory.account()
    _user, raw = invite(owner, "invited@example.com", "viewer")
    link = public_url("team_web.accept_invite", _fragment=raw)
    assert link.endswith(f"/invite#{raw}")
    d.get(f"{live}/invite#{raw}")  # the link, on the test's server
    field = d.find_element(By.ID, "invite-token")
    wait(d, lambda: field.get_attribute("value") == raw, message="token moved into the form")
    assert not d.find_element(By.ID, "invite-token-box").is_displayed()
    assert "#" not in d.current_url and raw not in d.current_url  # out of the address bar (and history)
    d.find_element(By.ID, "password").send_keys("a-good-password")
    d.find_element(By.ID, "password_again").send_keys("a-good-password")
    d.find_element(By.CSS_SELECTOR, "button.primary").click()
    wait(d, lambda: "Password set. Welcome!" in d.page_source, message="welcome page")
    assert csp_violations(d) == []
    db.session.remove()
    user = db.session.execute(db.select(User).where(User.email == "invited@example.com")).scalar_one()
    assert user.check_password("a-good-password") and user.invite_hash is None
