"""Team, sites and access: roles enforced on every state-changing route (API and forms),
token scopes and expiry, deactivation, site edit/delete, the audit log — real DB, real Redis."""
import re
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, inspect, select, text

from webapp.access import RANK, required_role
from webapp.extensions import db
from webapp.models import ApiToken, AuditEntry, AutomationRun, Site, User
from webapp.models.base import utcnow

from conftest import csrf_from, drain

# Routes that take no authentication at all (they are how one gets it).
PUBLIC = {"api.issue_token"}


@pytest.fixture
def team(app, factory):
    acc, owner = factory.account(credits=100_000)
    site = factory.site(acc, keywords=12)
    factory.fast_config(site)
    op = factory.user(acc, "op@example.com", "operator")
    viewer = factory.user(acc, "viewer@example.com", "viewer")
    other_acc, other = factory.account(name="Other", credits=1000)
    other_site = factory.site(other_acc, name="Theirs", keywords=3)

    class T:
        account_id, site_id, other_site_id = acc.id, site.id, other_site.id
        tokens = {"owner": factory.token(owner), "operator": factory.token(op), "viewer": factory.token(viewer)}
        other_token = factory.token(other)
        ids = {"owner": owner.id, "operator": op.id, "viewer": viewer.id}

        @staticmethod
        def h(role):
            return {"Authorization": f"Bearer {T.tokens[role]}"}
    return T


def audit_count(account_id=None):
    q = select(func.count()).select_from(AuditEntry)
    if account_id:
        q = q.where(AuditEntry.account_id == account_id)
    return db.session.execute(q).scalar()


def _api_write_rules(app):
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/") or rule.endpoint in PUBLIC:
            continue
        for method in sorted(rule.methods - {"GET", "HEAD", "OPTIONS"}):
            yield rule, method


def _fill(rule, t):
    url = rule.rule
    for arg in rule.arguments:
        url = url.replace(f"<int:{arg}>", "1").replace(f"<int(max=2147483647):{arg}>", "1")
        url = re.sub(r"<[^>]*" + arg + ">", "1", url)
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}site_id={t.site_id}&run_id=1"


def test_role_matrix_over_every_state_changing_api_route(app, client, team):
    """Default-deny: every write route (including ones added later) is refused to a viewer, and
    owner-only routes to an operator, before anything is read or changed."""
    rules = list(_api_write_rules(app))
    assert len(rules) >= 10  # the matrix really covers the API
    before = audit_count()
    checked = {"viewer": 0, "operator": 0}
    for rule, method in rules:
        need = required_role(rule.endpoint, method)
        url = _fill(rule, team)
        for role in ("viewer", "operator"):
            r = client.open(url, method=method, headers=team.h(role), json={})
            if RANK[role] < RANK[need]:
                assert r.status_code == 403, (role, method, url, r.status_code, r.get_data(as_text=True))
                assert r.json["success"] is False and f"needs the {need} role" in r.json["error"]
                checked[role] += 1
            else:
                assert r.status_code != 403, (role, method, url, r.get_data(as_text=True))
    assert checked["viewer"] >= 8 and checked["operator"] >= 3
    # Nothing was started or changed by the refused attempts, and none of them is in the audit log.
    assert db.session.execute(select(func.count()).select_from(AutomationRun)).scalar() <= 1
    refused = db.session.execute(select(AuditEntry.action).where(AuditEntry.actor.contains("viewer@"))).scalars().all()
    assert set(refused) <= {"token.create", "token.revoke"}  # the viewer's own tokens: allowed
    assert audit_count() >= before


def test_role_matrix_over_every_web_form(app, client, auth, team):
    """The same rule for session forms and htmx posts: a viewer gets a 403 page on each."""
    auth.login("viewer@example.com")
    csrf = auth.csrf()
    posts = [r for r in app.url_map.iter_rules() if "POST" in r.methods and not r.rule.startswith("/api/")]
    refused = 0
    for rule in posts:
        if rule.endpoint in ("auth.login", "auth.logout", "team_web.set_password"):
            continue
        need = required_role(rule.endpoint, "POST")
        url = re.sub(r"<[^>]+>", "1", rule.rule).replace("/1/automation", f"/{team.site_id}/automation")
        if "<any(" in rule.rule or "action" in rule.arguments:
            url = rule.rule.replace("<int:run_id>", "1")
            url = re.sub(r"<any\(([a-z]+)[^>]*>", r"\1", url)
        r = client.post(url, data={"csrf_token": csrf})
        if need != "viewer":
            assert r.status_code == 403, (url, r.status_code)
            assert f"needs the {need} role" in r.get_data(as_text=True)
            refused += 1
    assert refused >= 5
    assert db.session.execute(select(func.count()).select_from(AutomationRun)).scalar() == 0


def test_viewer_reads_everything_and_sees_disabled_controls(client, auth, team):
    auth.login("viewer@example.com")
    assert client.get("/").status_code == 200
    page = client.get(f"/sites/{team.site_id}/automation").get_data(as_text=True)
    assert "Needs the operator role" in page
    assert client.get(f"/sites/{team.site_id}/keywords").status_code == 200
    assert client.get("/audit").status_code == 200
    assert client.get("/users").status_code == 403
    r = client.get(f"/api/v1/automation/current_run/?site_id={team.site_id}", headers=team.h("viewer"))
    assert r.status_code == 200


def test_read_scope_token_never_writes_and_expired_token_is_refused(client, team):
    r = client.post("/api/v1/auth/tokens/", headers=team.h("owner"), json={"name": "reporter", "scope": "read"})
    assert r.status_code == 201, r.json
    read = {"Authorization": f"Bearer {r.json['data']['token']}"}
    assert client.get(f"/api/v1/automation/estimate/?site_id={team.site_id}", headers=read).status_code == 200
    r = client.post(f"/api/v1/automation/run_now/?site_id={team.site_id}", headers=read)
    assert r.status_code == 403 and "read-only" in r.json["error"]
    assert client.patch(f"/api/v1/sites/{team.site_id}/", headers=read, json={"name": "x"}).status_code == 403
    # Expiry: a token past its expires_at is refused like a revoked one.
    tok = db.session.execute(select(ApiToken).where(ApiToken.name == "reporter")).scalar_one()
    tok.expires_at = utcnow() - timedelta(seconds=1)
    db.session.commit()
    assert client.get(f"/api/v1/automation/estimate/?site_id={team.site_id}", headers=read).status_code == 401


def test_token_api_create_list_revoke_and_tenancy(client, team):
    h = team.h("operator")
    r = client.post("/api/v1/auth/tokens/", headers=h, json={"name": "", "scope": "admin", "expires_at": "yesterday"})
    assert r.status_code == 400
    assert set(r.json["errors"]) == {"name", "scope", "expires_at"}  # every bad field at once
    r = client.post("/api/v1/auth/tokens/", headers=h, json={"name": "ci", "expires_at": "2099-01-31"})
    assert r.status_code == 201
    new = r.json["data"]
    assert new["token"].startswith("ac_") and new["expires_at"] == "2099-01-31T00:00:00Z" and new["scope"] == "full"
    stored = db.session.get(ApiToken, new["id"])
    assert stored.token_hash != new["token"] and new["token"] not in (stored.token_hash or "")
    listed = client.get("/api/v1/auth/tokens/", headers=h).json["data"]["tokens"]
    assert {t["name"] for t in listed} >= {"ci"} and all(t["user"] == "op@example.com" for t in listed)
    assert all("token" not in t for t in listed)  # never shown again
    # An operator cannot see or revoke the viewer's token; another account's id is a 404 too.
    viewer_tok = db.session.execute(select(ApiToken.id).where(ApiToken.user_id == team.ids["viewer"])).scalar()
    assert client.delete(f"/api/v1/auth/tokens/{viewer_tok}/", headers=h).status_code == 404
    other_tok = db.session.execute(select(ApiToken.id).join(User).where(User.email == "other@example.com")).scalar()
    assert client.delete(f"/api/v1/auth/tokens/{other_tok}/", headers=team.h("owner")).status_code == 404
    # The owner sees and revokes every token of the account.
    owner_list = client.get("/api/v1/auth/tokens/", headers=team.h("owner")).json["data"]["tokens"]
    assert {t["user"] for t in owner_list} >= {"op@example.com", "viewer@example.com", "acme@example.com"}
    assert client.delete(f"/api/v1/auth/tokens/{viewer_tok}/", headers=team.h("owner")).status_code == 200
    assert client.get("/api/v1/ping", headers=team.h("viewer")).status_code == 401
    assert client.delete(f"/api/v1/auth/tokens/{new['id']}/", headers=h).status_code == 200
    assert client.get("/api/v1/ping", headers={"Authorization": f"Bearer {new['token']}"}).status_code == 401
    actions = db.session.execute(select(AuditEntry.action).where(AuditEntry.account_id == team.account_id)
                                 .order_by(AuditEntry.id)).scalars().all()
    assert actions.count("token.create") == 1 and actions.count("token.revoke") == 2


def test_deactivation_cuts_sessions_and_tokens(app, client, auth, team):
    from flask.testing import FlaskClient
    viewer_client = app.test_client()
    tok = csrf_from(viewer_client.get("/login").get_data(as_text=True))
    viewer_client.post("/login", data={"email": "viewer@example.com", "password": "password123", "csrf_token": tok})
    assert viewer_client.get("/").status_code == 200
    _forget_user()
    auth.login()  # the owner
    r = client.post(f"/users/{team.ids['viewer']}/deactivate", data={"csrf_token": auth.csrf()})
    assert r.status_code == 302, r.get_data(as_text=True)
    _forget_user()
    assert viewer_client.get("/").status_code == 302  # back to the login page
    _forget_user()
    assert client.get("/api/v1/ping", headers=team.h("viewer")).status_code == 401
    assert isinstance(viewer_client, FlaskClient)
    # The last owner cannot be demoted or deactivated (the account would be unmanageable).
    r = client.post(f"/users/{team.ids['owner']}/role", data={"csrf_token": auth.csrf(), "role": "viewer"})
    assert db.session.get(User, team.ids["owner"]).role == "owner"


def _forget_user():
    # Two test clients share the test's app context: drop Flask-Login's per-context cache.
    from flask import g
    g.pop("_login_user", None)
    g.pop("csrf_token", None)  # Flask-WTF caches the (session-bound) token there too


def test_invite_link_sets_password_once(app, client, auth, team):
    auth.login()
    r = client.post("/users/invite", data={"csrf_token": auth.csrf(), "email": "new@example.com", "role": "viewer"})
    assert r.status_code == 201
    link = re.search(r'id="invite-link">([^<]+)<', r.get_data(as_text=True)).group(1)
    # PUBLIC_URL + /invite, the token in the fragment (never sent by a browser: no access log
    # records it); the page's script moves it into the form (tests/test_security_round2.py)
    assert link.startswith(app.config["PUBLIC_URL"] + "/invite#")
    token = link.split("#", 1)[1]
    auth.logout()
    page = client.get("/invite")
    assert page.status_code == 200 and 'name="token"' in page.get_data(as_text=True)
    csrf = csrf_from(page.get_data(as_text=True))
    r = client.post("/invite", data={"csrf_token": csrf, "token": token, "password": "short",
                                     "password_again": "short"})
    page = r.get_data(as_text=True)
    assert r.status_code == 400 and "8-255" in page and "new@example.com" in page
    r = client.post("/invite", data={"csrf_token": csrf, "token": token, "password": "a-good-password",
                                     "password_again": "a-good-password"})
    assert r.status_code == 302
    r = client.post("/invite", data={"csrf_token": csrf, "token": token, "password": "x" * 9,
                                     "password_again": "x" * 9})
    assert r.status_code == 404 and "invalid, used or expired" in r.get_data(as_text=True)  # one time
    user = db.session.execute(select(User).where(User.email == "new@example.com")).scalar_one()
    assert user.role == "viewer" and user.check_password("a-good-password") and user.account_id == team.account_id


def test_site_patch_and_delete_through_the_api(app, client, team):
    h = team.h("owner")
    r = client.patch(f"/api/v1/sites/{team.site_id}/", headers=h, json={"name": "", "timezone": "Mars/Base"})
    assert r.status_code == 400 and set(r.json["errors"]) == {"name", "timezone"}
    r = client.patch(f"/api/v1/sites/{team.site_id}/", headers=h,
                     json={"name": "Renamed", "domain": "r.example.com", "timezone": "Europe/Berlin"})
    assert r.status_code == 200 and r.json["data"]["site"] == {
        "id": team.site_id, "name": "Renamed", "domain": "r.example.com", "timezone": "Europe/Berlin",
        "monthly_budget": None}
    assert client.patch(f"/api/v1/sites/{team.other_site_id}/", headers=h, json={"name": "x"}).status_code == 404
    assert client.delete(f"/api/v1/sites/{team.other_site_id}/?confirm=Theirs", headers=h).status_code == 404

    # Refused while a run is active; nothing deleted.
    run_id = client.post(f"/api/v1/automation/run_now/?site_id={team.site_id}", headers=h).json["data"]["run_id"]
    r = client.delete(f"/api/v1/sites/{team.site_id}/?confirm=Renamed", headers=h)
    assert r.status_code == 400 and "active run" in r.json["error"]
    drain(app)  # the run completes: logs and images exist on disk
    assert db.session.get(AutomationRun, run_id).status == "completed"
    logs = Path(app.config["LOG_DIR"]) / str(team.account_id) / str(team.site_id)
    media = Path(app.config["MEDIA_DIR"]) / str(team.account_id) / str(team.site_id)
    assert any(logs.rglob("*.log")) and any(media.rglob("*.png"))
    r = client.delete(f"/api/v1/sites/{team.site_id}/?confirm=renamed", headers=h)
    assert r.status_code == 400 and "confirm" in r.json["errors"]
    r = client.delete(f"/api/v1/sites/{team.site_id}/?confirm=Renamed", headers=h)
    assert r.status_code == 200, r.json
    # No row with the site's id in any table, nothing on disk; the other account untouched.
    insp = inspect(db.engine)
    for table in insp.get_table_names():
        cols = {c["name"] for c in insp.get_columns(table)}
        if "site_id" in cols and table != "audit_entry":
            n = db.session.execute(text(f'SELECT count(*) FROM "{table}" WHERE site_id = :s'), {"s": team.site_id}).scalar()
            assert n == 0, table
    assert db.session.get(Site, team.site_id) is None
    assert not logs.exists() and not media.exists()
    assert db.session.get(Site, team.other_site_id) is not None
    entries = db.session.execute(select(AuditEntry.action).where(AuditEntry.site_id == team.site_id)
                                 .order_by(AuditEntry.id)).scalars().all()
    assert entries.index("site.update") < entries.index("run.start") < entries.index("site.delete") == len(entries) - 1


def test_sites_in_the_ui_create_edit_delete(client, auth, team):
    auth.login()
    assert "New site" in client.get("/").get_data(as_text=True)
    r = client.post("/sites/new", data={"csrf_token": auth.csrf(), "name": "", "timezone": "UTC"})
    assert r.status_code == 400 and "field-error" in r.get_data(as_text=True)
    r = client.post("/sites/new", data={"csrf_token": auth.csrf(), "name": "Fresh", "domain": "f.example.com",
                                        "timezone": "America/New_York"})
    assert r.status_code == 302
    site = db.session.execute(select(Site).where(Site.name == "Fresh")).scalar_one()
    assert site.timezone == "America/New_York" and site.account_id == team.account_id
    r = client.post(f"/sites/{site.id}/edit", data={"csrf_token": auth.csrf(), "name": "Blog", "timezone": "UTC"})
    assert r.status_code == 400 and "already exists" in r.get_data(as_text=True)
    r = client.post(f"/sites/{site.id}/delete", data={"csrf_token": auth.csrf(), "confirm": "nope"})
    assert r.status_code == 400 and db.session.get(Site, site.id) is not None
    r = client.post(f"/sites/{site.id}/delete", data={"csrf_token": auth.csrf(), "confirm": "Fresh"})
    assert r.status_code == 302 and db.session.get(Site, site.id) is None
    assert client.get(f"/sites/{team.other_site_id}/edit").status_code == 404


def test_empty_sites_page_offers_the_first_site(client, auth, factory):
    factory.account(name="Empty", credits=0)
    auth.login("empty@example.com")
    page = client.get("/").get_data(as_text=True)
    assert "Create your first site" in page


def test_audit_log_records_changes_with_actor_and_filters(app, client, auth, team):
    h = team.h("operator")
    a = "/api/v1/automation"
    assert client.put(f"{a}/update_config/?site_id={team.site_id}", headers=h,
                      json={"stage_1_batch_size": 7}).status_code == 200
    client.post(f"/api/v1/planner/keywords/bulk/?site_id={team.site_id}", headers=h,
                json={"keywords": [{"keyword": "fresh audit keyword"}]})
    run_id = client.post(f"{a}/run_now/?site_id={team.site_id}", headers=h).json["data"]["run_id"]
    client.post(f"{a}/pause/?run_id={run_id}", headers=h, json={"reason": "lunch"})
    client.post(f"{a}/cancel/?run_id={run_id}", headers=team.h("owner"))
    # Refused attempts leave no trace.
    client.post(f"{a}/run_now/?site_id={team.site_id}", headers=team.h("viewer"))
    entries = client.get("/api/v1/audit/?limit=50", headers=team.h("viewer")).json["data"]
    acts = [(e["action"], e["actor"]) for e in reversed(entries["entries"])]
    assert ("config.update", "token:%d (op@example.com)" % _token_id("op@example.com")) in acts
    cfg = next(e for e in entries["entries"] if e["action"] == "config.update")
    assert cfg["details"]["changes"] == {"stage_1_batch_size": [20, 7]} and cfg["site_id"] == team.site_id
    assert [a for a, _ in acts if a.startswith("run.")] == ["run.start", "run.pause", "run.cancel"]
    assert any(a == "keywords.import" for a, _ in acts)
    assert not any("viewer@" in actor for _, actor in acts)
    # Filters and paging.
    only = client.get(f"/api/v1/audit/?action=run&limit=2&page=1", headers=h).json["data"]
    assert only["total"] == 3 and len(only["entries"]) == 2 and all(e["action"].startswith("run.") for e in only["entries"])
    page2 = client.get(f"/api/v1/audit/?action=run&limit=2&page=2", headers=h).json["data"]
    assert len(page2["entries"]) == 1
    assert client.get("/api/v1/audit/?actor=op@example.com", headers=h).json["data"]["total"] >= 3
    # Tenancy: the other account sees none of it, even asking by site id.
    other = client.get(f"/api/v1/audit/?site_id={team.site_id}",
                       headers={"Authorization": f"Bearer {team.other_token}"}).json["data"]
    assert other["total"] == 0
    auth.login("viewer@example.com")
    page = client.get("/audit?action=run").get_data(as_text=True)
    assert "run.pause" in page and "lunch" in page


def _token_id(email):
    return db.session.execute(select(ApiToken.id).join(User).where(User.email == email)).scalar()


def test_cli_roles(runner, team):
    from webapp.models import Account
    acc = db.session.get(Account, team.account_id)
    r = runner.invoke(args=["create-user", "cli@example.com", "--password", "password123", "--account", acc.name])
    assert r.exit_code == 0 and "(operator)" in r.output  # not the first user: operator
    r = runner.invoke(args=["create-account", "Solo"])
    r = runner.invoke(args=["create-user", "solo@example.com", "--password", "password123", "--account", "Solo"])
    assert "(owner)" in r.output  # first user of an account owns it
    r = runner.invoke(args=["create-user", "x@example.com", "--password", "password123", "--account", acc.name,
                            "--role", "admin"])
    assert r.exit_code == 1 and r.output.strip().startswith("Error:")
    r = runner.invoke(args=["set-role", "cli@example.com", "viewer"])
    assert r.exit_code == 0 and db.session.execute(select(User.role).where(User.email == "cli@example.com")).scalar() == "viewer"
    r = runner.invoke(args=["set-role", "solo@example.com", "viewer"])
    assert r.exit_code == 1 and "owner" in r.output
    r = runner.invoke(args=["set-role", "nobody@example.com", "viewer"])
    assert r.exit_code == 1


def test_reviews_and_webhooks_are_audited_and_follow_roles(app, client, team):
    from webapp.models import Content
    h = team.h("operator")
    client.post(f"/api/v1/automation/run_now/?site_id={team.site_id}", headers=h)
    drain(app)
    ids = db.session.execute(select(Content.id).where(Content.site_id == team.site_id, Content.status == "review")
                             .order_by(Content.id)).scalars().all()
    assert len(ids) >= 2
    r = client.post(f"/api/v1/writer/content/{ids[0]}/approve/", headers=team.h("viewer"))
    assert r.status_code == 403 and "needs the operator role" in r.json["error"]
    assert client.post(f"/api/v1/writer/content/{ids[0]}/approve/", headers=h).status_code == 200
    r = client.post("/api/v1/writer/content/bulk_review/", headers=h,
                    json={"ids": ids[1:], "action": "reject", "note": "too short"})
    assert r.status_code == 200, r.json
    r = client.post(f"/api/v1/sites/{team.site_id}/webhooks/", headers=h,
                    json={"url": "https://hooks.example.com/x", "events": ["run.completed"]})
    assert r.status_code == 201, r.json
    wid = r.json["data"]["id"] if "id" in r.json["data"] else r.json["data"]["webhook"]["id"]
    assert client.delete(f"/api/v1/sites/{team.site_id}/webhooks/{wid}/", headers=h).status_code == 200
    rows = db.session.execute(select(AuditEntry).where(AuditEntry.account_id == team.account_id,
                                                       AuditEntry.action.in_(["content.approve", "content.reject",
                                                                              "webhook.create", "webhook.delete"]))
                              .order_by(AuditEntry.id)).scalars().all()
    assert [r.action for r in rows] == ["content.approve", "content.reject", "webhook.create", "webhook.delete"]
    assert rows[0].details["content_ids"] == [ids[0]] and rows[1].details == {"content_ids": ids[1:], "note": "too short"}
    assert all(r.actor.endswith("op@example.com") or "op@example.com" in r.actor for r in rows)


def test_deactivation_closes_a_deactivated_viewers_open_socket(app, team, live_server):
    """A viewer may watch a run live; deactivating them closes that socket (4401) at once."""
    import time
    import websocket
    from webapp import team as team_service
    from webapp.automation.service import AutomationService
    run = AutomationService(team.account_id, actor="user:acme@example.com").start(team.site_id)
    server = live_server.replace("http://", "")
    ws = websocket.create_connection(f"ws://{server}/ws/runs/{run.id}/logs",
                                     header=[f"Authorization: Bearer {team.tokens['viewer']}"], timeout=10)
    ws.settimeout(10)
    assert "Run started" in ws.recv()  # viewers watch live views
    owner = db.session.get(User, team.ids["owner"])
    t0 = time.time()
    team_service.deactivate(owner, team.ids["viewer"])
    ws.settimeout(15)
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            break
    assert int.from_bytes(data[:2], "big") == 4401 and time.time() - t0 < 10
