"""Browser login/logout with CSRF; bearer tokens; 401 JSON for the API."""
from webapp.extensions import db
from webapp.models import ApiToken
from webapp.models.base import utcnow

from conftest import csrf_from


def test_login_page_and_redirect_when_anonymous(client):
    assert client.get("/login").status_code == 200
    r = client.get("/")
    assert r.status_code == 302 and "/login" in r.headers["Location"]


def test_login_logout(client, auth, factory):
    factory.account()
    r = auth.login()
    assert r.status_code == 302 and r.headers["Location"] == "/"
    page = client.get("/").get_data(as_text=True)
    assert "acme@example.com" in page and "credits" in page
    assert auth.logout().status_code == 302
    assert client.get("/").status_code == 302


def test_login_wrong_password_shows_error_next_to_field(client, auth, factory):
    factory.account()
    r = auth.login(password="wrong-password")
    assert r.status_code == 401
    assert "Invalid email or password." in r.get_data(as_text=True)


def test_login_without_csrf_is_rejected(client, factory):
    factory.account()
    r = client.post("/login", data={"email": "acme@example.com", "password": "password123"})
    assert r.status_code == 400
    assert client.get("/").status_code == 302  # not logged in


def test_logout_needs_post_with_csrf(client, auth, factory):
    factory.account()
    auth.login()
    page = client.get("/logout")  # asks, does not log out
    assert page.status_code == 200 and "Log out?" in page.get_data(as_text=True)
    assert client.post("/logout").status_code == 400
    assert client.get("/").status_code == 200  # still logged in


def test_open_redirect_refused(client, factory):
    factory.account()
    token = csrf_from(client.get("/login").get_data(as_text=True))
    r = client.post("/login?next=//evil.example/x", data={"email": "acme@example.com", "password": "password123",
                                                          "csrf_token": token})
    assert r.headers["Location"] == "/"


def test_api_without_auth_is_401_json(client):
    r = client.get("/api/v1/sites/")
    assert r.status_code == 401
    assert r.json["success"] is False and "Authentication required" in r.json["error"]


def test_token_endpoint_and_bearer(client, factory):
    acc, user = factory.account()
    r = client.post("/api/v1/auth/token", json={"email": "acme@example.com", "password": "password123"})
    assert r.status_code == 201
    token = r.json["data"]["token"]
    stored = db.session.execute(db.select(ApiToken)).scalar_one()
    assert token not in stored.token_hash and len(stored.token_hash) == 64
    r = client.get("/api/v1/sites/", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.json == {"success": True, "data": {"sites": []}}


def test_wrong_password_and_unknown_email_same_401(client, factory):
    factory.account()
    a = client.post("/api/v1/auth/token", json={"email": "acme@example.com", "password": "nope-nope"})
    b = client.post("/api/v1/auth/token", json={"email": "ghost@example.com", "password": "nope-nope"})
    assert a.status_code == b.status_code == 401
    assert a.json == b.json == {"success": False, "error": "Invalid email or password."}


def test_token_endpoint_missing_fields(client):
    r = client.post("/api/v1/auth/token", json={"email": "x@example.com"})
    assert r.status_code == 400 and "'password'" in r.json["error"]


def test_revoked_token_is_401(client, factory):
    acc, user = factory.account()
    raw = factory.token(user)
    h = {"Authorization": f"Bearer {raw}"}
    assert client.get("/api/v1/sites/", headers=h).status_code == 200
    tok = db.session.execute(db.select(ApiToken)).scalar_one()
    tok.revoked_at = utcnow()
    db.session.commit()
    r = client.get("/api/v1/sites/", headers=h)
    assert r.status_code == 401 and r.json["success"] is False


def test_bad_bearer_is_401_even_with_session(client, auth, factory):
    factory.account()
    auth.login()
    r = client.get("/api/v1/sites/", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401


def test_session_api_call_needs_csrf_for_state_change(client, auth, factory):
    factory.account()
    auth.login()
    assert client.get("/api/v1/sites/").status_code == 200  # safe method: no CSRF needed
    r = client.post("/api/v1/sites/", json={"name": "New"})
    assert r.status_code == 400 and "CSRF" in r.json["error"]
    r = client.post("/api/v1/sites/", json={"name": "New"}, headers={"X-CSRFToken": auth.csrf()})
    assert r.status_code == 201 and r.json["data"]["site"]["name"] == "New"


def test_inactive_user_cannot_get_token(client, factory):
    acc, user = factory.account()
    user.active = False
    db.session.commit()
    r = client.post("/api/v1/auth/token", json={"email": "acme@example.com", "password": "password123"})
    assert r.status_code == 401
