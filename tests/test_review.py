"""The review gate: the queue filter, approve / reject (note required) / bulk review over the
API with tenancy and all-or-nothing changes, the review page, and the overview count."""
import pytest

from webapp.automation.service import AutomationService
from webapp.extensions import db
from webapp.models import Content

from conftest import csrf_from, drain


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def reviewed_site(app, factory):
    """A site whose run finished: its articles wait in review."""
    acc, user = factory.account(credits=100_000)
    other, other_user = factory.account("Other", credits=100_000)
    site = factory.site(acc, keywords=8)
    theirs = factory.site(other, name="Theirs", keywords=4)
    factory.fast_config(site)
    factory.fast_config(theirs)
    ids = (acc.id, site.id, other.id, theirs.id)
    tokens = factory.token(user), factory.token(other_user)
    AutomationService(ids[0]).start(ids[1])
    AutomationService(ids[2]).start(ids[3])
    drain(app)
    mine = db.session.execute(db.select(Content.id).where(Content.site_id == ids[1]).order_by(Content.id)).scalars().all()
    foreign = db.session.execute(db.select(Content.id).where(Content.site_id == ids[3])).scalars().all()
    assert len(mine) >= 3 and foreign
    return {"site": ids[1], "mine": mine, "foreign": foreign, "token": tokens[0],
            "other_token": tokens[1]}


def statuses(ids):
    db.session.expire_all()
    return [db.session.get(Content, i).status for i in ids]


def test_review_api(client, reviewed_site):
    s = reviewed_site
    h, site, mine, foreign = bearer(s["token"]), s["site"], s["mine"], s["foreign"]
    queue = client.get(f"/api/v1/writer/content/?site_id={site}&status=review", headers=h).get_json()["data"]
    assert queue["total"] == len(mine) and all(i["status"] == "review" for i in queue["items"])
    overview = client.get(f"/api/v1/automation/pipeline_overview/?site_id={site}", headers=h).get_json()["data"]
    assert overview["awaiting_review"] == len(mine) == overview["stages"][6]["awaiting_review"]
    bad = client.get(f"/api/v1/writer/content/?site_id={site}&status=bogus", headers=h)
    assert bad.status_code == 400 and "status" in bad.get_json()["error"]

    a, b, c = mine[:3]
    resp = client.post(f"/api/v1/writer/content/{a}/approve/", headers=h)
    d = resp.get_json()["data"]["content"]
    assert resp.status_code == 200 and d["status"] == "approved" and d["reviewed_by"] == "acme@example.com"
    assert d["reviewed_at"] and d["review_note"] is None
    again = client.post(f"/api/v1/writer/content/{a}/reject/", json={"note": "no"}, headers=h)
    assert again.status_code == 400 and "not in review" in again.get_json()["errors"]["content"]

    for body in ({}, {"note": "   "}, None):
        r = client.post(f"/api/v1/writer/content/{b}/reject/", headers=h, **({"json": body} if body is not None else {}))
        assert r.status_code == 400 and "note" in r.get_json()["errors"], r.get_json()
    assert client.post(f"/api/v1/writer/content/{b}/reject/", json={"note": 5}, headers=h).get_json()["errors"]["note"]
    assert client.post(f"/api/v1/writer/content/{b}/reject/", json={"note": "x", "mood": 1}, headers=h).get_json()["errors"] == {"mood": "is not a known field"}
    r = client.post(f"/api/v1/writer/content/{b}/reject/", json={"note": "Too generic: add numbers"}, headers=h).get_json()["data"]["content"]
    assert r["status"] == "rejected" and r["review_note"] == "Too generic: add numbers"

    # Tenancy: another account's article is 404 (approve, reject, and inside a bulk request).
    assert client.post(f"/api/v1/writer/content/{foreign[0]}/approve/", headers=h).status_code == 404
    assert client.post(f"/api/v1/writer/content/{foreign[0]}/reject", json={"note": "x"}, headers=h).status_code == 404
    rest = mine[2:]
    r = client.post("/api/v1/writer/content/bulk_review/", json={"ids": rest + [foreign[0]], "action": "approve"}, headers=h)
    assert r.status_code == 404 and str(foreign[0]) in r.get_json()["errors"]["ids"]
    assert statuses(rest) == ["review"] * len(rest) and statuses(foreign) == ["review"] * len(foreign)
    # All or nothing: one already decided refuses the whole request.
    r = client.post("/api/v1/writer/content/bulk_review/", json={"ids": rest + [a], "action": "approve"}, headers=h)
    assert r.status_code == 400 and f"{a} (approved)" in r.get_json()["errors"]["ids"]
    assert statuses(rest) == ["review"] * len(rest)
    for body, field in [({"ids": rest, "action": "reject"}, "note"), ({"ids": rest, "action": "publish"}, "action"),
                        ({"ids": [], "action": "approve"}, "ids"), ({"ids": ["1"], "action": "approve"}, "ids"),
                        ({"action": "approve"}, "ids"), ({"ids": rest}, "action")]:
        r = client.post("/api/v1/writer/content/bulk_review", json=body, headers=h)
        assert r.status_code == 400 and field in r.get_json()["errors"], (body, r.get_json())
    r = client.post("/api/v1/writer/content/bulk_review/", json={"ids": rest, "action": "reject", "note": "redo"}, headers=h)
    assert r.status_code == 200 and r.get_json()["data"]["updated"] == len(rest)
    assert statuses(rest) == ["rejected"] * len(rest)
    assert client.get(f"/api/v1/writer/content/?site_id={site}&status=review", headers=h).get_json()["data"]["total"] == 0
    assert client.get(f"/api/v1/writer/content/?site_id={site}&status=rejected", headers=h).get_json()["data"]["total"] == len(rest) + 1
    # The other account's queue is untouched and theirs to decide.
    r = client.post("/api/v1/writer/content/bulk_review/", json={"ids": foreign, "action": "approve"},
                    headers=bearer(s["other_token"]))
    assert r.status_code == 200 and statuses(foreign) == ["approved"] * len(foreign)


def test_review_page(client, auth, reviewed_site):
    s = reviewed_site
    site, mine, foreign = s["site"], s["mine"], s["foreign"]
    auth.login()
    page = client.get(f"/sites/{site}/review")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and f'id="content-{mine[0]}"' in html and "/media/images/" in html
    assert "/static/js/review.js" in html and "<script>" not in html and " style=" not in html
    assert "waiting for review" in client.get(f"/sites/{site}/automation").get_data(as_text=True)
    assert client.get(f"/sites/{s['foreign'] and 999999}/review").status_code == 404
    csrf = csrf_from(html)
    # Reject without a note: 400, the message beside that article's note, nothing changed.
    r = client.post(f"/sites/{site}/review", data={"csrf_token": csrf, "act": f"reject:{mine[0]}"})
    assert r.status_code == 400 and f'id="err-note-{mine[0]}"' in r.get_data(as_text=True)
    assert statuses([mine[0]]) == ["review"]
    r = client.post(f"/sites/{site}/review", data={"csrf_token": csrf, "act": f"reject:{mine[0]}",
                                                   f"note_{mine[0]}": "Needs sources"})
    assert r.status_code == 302 and statuses([mine[0]]) == ["rejected"]
    # Bulk approve of the selected; a foreign id in the form is refused as a whole.
    r = client.post(f"/sites/{site}/review", data={"csrf_token": csrf, "act": "approve:selected",
                                                   "ids": [str(mine[1]), str(foreign[0])]})
    assert r.status_code == 404 and statuses([mine[1], foreign[0]]) == ["review", "review"]
    r = client.post(f"/sites/{site}/review", data={"csrf_token": csrf, "act": "approve:selected",
                                                   "ids": [str(i) for i in mine[1:]]})
    assert r.status_code == 302 and statuses(mine[1:]) == ["approved"] * len(mine[1:])
    assert 'id="review-empty"' in client.get(f"/sites/{site}/review").get_data(as_text=True)
    assert client.post(f"/sites/{site}/review", data={"act": f"approve:{mine[0]}"}).status_code == 400  # CSRF
