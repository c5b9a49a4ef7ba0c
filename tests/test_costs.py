"""The cost report: every grouping equals the ledger and the AI log, adds up to the balance
change; CSV parses; viewers read; other accounts' data never shows; bad input is named."""
import csv
import io
from datetime import datetime, timedelta

from sqlalchemy import func, select

from webapp.automation import cost_report
from webapp.automation.service import AutomationService
from webapp.extensions import db
from webapp.models import AITaskLog, CreditTransaction
from webapp.models.base import utcnow

from conftest import AuthActions, drain


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def _two_runs(app, factory):
    from webapp.models import User
    acc, owner = factory.account(credits=100_000)
    acc_id, owner_id = acc.id, owner.id
    sites = [factory.site(acc, name=f"Site {i}", keywords=6 * (i + 1)) for i in range(2)]
    ids = [s.id for s in sites]
    for s in sites:
        factory.fast_config(s)
    for sid in ids:
        AutomationService(acc_id).start(sid)
    drain(app)
    return acc_id, db.session.get(User, owner_id), ids


def test_costs_by_every_grouping_equal_the_ledger(app, client, factory):
    acc_id, owner, site_ids = _two_runs(app, factory)
    from webapp.models import Account
    other, other_owner = factory.account(name="Other", credits=50_000)
    osite = factory.site(other, keywords=6)
    factory.fast_config(osite)
    other_id, osite_id = other.id, osite.id
    other_token = factory.token(other_owner)
    AutomationService(other_id).start(osite_id)
    drain(app)
    viewer = factory.user(db.session.get(Account, acc_id), "view@example.com", "viewer")
    token = factory.token(viewer)  # a viewer reads the report
    month = cost_report.month_key()
    debits = db.session.execute(select(func.sum(-CreditTransaction.amount)).where(
        CreditTransaction.account_id == acc_id, CreditTransaction.amount < 0)).scalar()
    assert debits > 0
    logs = db.session.execute(select(AITaskLog).where(AITaskLog.account_id == acc_id)).scalars().all()
    for group, attr in (("site", "site_id"), ("stage", "stage"), ("model", "model"), ("run", "run_id"),
                        ("day", None)):
        r = client.get(f"/api/v1/costs/?month={month}&group_by={group}", headers=bearer(token))
        assert r.status_code == 200, r.get_json()
        data = r.get_json()["data"]
        rows = data["rows"]
        assert sum(x["credits"] for x in rows) == debits == data["totals"]["credits"], group
        assert sum(x["calls"] for x in rows) == len(logs) == data["totals"]["calls"]
        assert sum(x["tokens"] for x in rows) == sum(lg.tokens for lg in logs)
        if attr:
            expected = {}
            for lg in logs:
                expected[getattr(lg, attr)] = expected.get(getattr(lg, attr), 0) + lg.credits
            assert {x["key"]: x["credits"] for x in rows} == expected, group
        else:
            assert [x["key"] for x in rows] == [utcnow().date().isoformat()]
    site_rows = client.get(f"/api/v1/costs/?group_by=site", headers=bearer(token)).get_json()["data"]["rows"]
    assert {x["label"] for x in site_rows} == {"Site 0", "Site 1"}  # never the other account's site
    stage_rows = client.get(f"/api/v1/costs/?group_by=stage", headers=bearer(token)).get_json()["data"]["rows"]
    assert stage_rows[0]["key"] == 1 and stage_rows[0]["label"]
    ledger = data["totals"]["ledger"]
    assert ledger["debits"] == debits and ledger["top_ups"] == 100_000
    assert ledger["balance_change"] == 100_000 - debits
    assert ledger["balance_end"] - ledger["balance_start"] == ledger["balance_change"]
    assert ledger["balance_end"] == db.session.get(Account, acc_id).credits
    # The account API agrees: spent this month is the ledger's debits.
    acct = client.get("/api/v1/account/", headers=bearer(token)).get_json()["data"]
    assert acct["spent_this_month"] == debits
    # Another month is empty; the forecast of a past month is what it was.
    prev = (datetime(int(month[:4]), int(month[5:]), 1) - timedelta(days=1)).strftime("%Y-%m")
    empty = client.get(f"/api/v1/costs/?month={prev}", headers=bearer(token)).get_json()["data"]
    assert empty["rows"] == [] and empty["totals"]["credits"] == 0 and empty["forecast"] == 0
    # The other account sees only its own.
    theirs = client.get("/api/v1/costs/?group_by=site", headers=bearer(other_token)).get_json()["data"]
    assert [x["key"] for x in theirs["rows"]] == [osite_id]


def test_cost_csv_streams_and_parses(app, client, factory):
    acc_id, owner, site_ids = _two_runs(app, factory)
    token = factory.token(owner)
    r = client.get("/api/v1/costs/?group_by=run&format=csv", headers=bearer(token))
    assert r.status_code == 200 and r.mimetype == "text/csv" and r.is_streamed
    rows = list(csv.DictReader(io.StringIO(r.get_data(as_text=True))))
    json_rows = client.get("/api/v1/costs/?group_by=run", headers=bearer(token)).get_json()["data"]["rows"]
    assert [int(x["key"]) for x in rows] == [x["key"] for x in json_rows] and len(rows) == 2
    assert sum(int(x["credits"]) for x in rows) == sum(x["credits"] for x in json_rows)
    assert set(rows[0]) == {"key", "label", "credits", "calls", "tokens"}
    # Unauthenticated and bad parameters: the same answers as the JSON route.
    assert client.get("/api/v1/costs/?format=csv").status_code == 401
    r = client.get("/api/v1/costs/?format=csv&group_by=nope", headers=bearer(token))
    assert r.status_code == 400 and "group_by" in r.get_json()["errors"]


def test_bad_month_or_group_names_the_field(app, client, factory):
    acc, owner = factory.account()
    token = factory.token(owner)
    for query, field in (("month=2026-13", "month"), ("month=26-1", "month"), ("month=abcd-ef", "month"),
                         ("group_by=week", "group_by"), ("format=xml", "format")):
        r = client.get(f"/api/v1/costs/?{query}", headers=bearer(token))
        assert r.status_code == 400 and field in r.get_json()["errors"], (query, r.get_json())


def test_costs_page_draws_the_chart_and_the_tops(app, client, factory):
    acc_id, owner, site_ids = _two_runs(app, factory)
    from webapp.models import Account
    db.session.get(Account, acc_id).monthly_budget = 1_000_000
    db.session.commit()
    AuthActions(client).login()
    html = client.get("/costs").get_data(as_text=True)
    assert '<svg class="cost-chart"' in html and 'class="budget"' in html and 'class="cumulative"' in html
    assert 'id="top-site"' in html and "Site 1" in html and 'id="top-model"' in html
    assert client.get("/costs?month=bad").status_code == 400


def test_forecast_extrapolates_the_month_so_far():
    assert cost_report.forecast("2026-12", 100, now=datetime(2026, 12, 11)) == 310  # 10 of 31 days
    assert cost_report.forecast("2026-11", 100, now=datetime(2026, 12, 11)) == 100
    assert cost_report.forecast("2027-01", 100, now=datetime(2026, 12, 11)) == 0


def test_a_deleted_sites_spend_stays_in_the_report(app, client, factory):
    acc_id, owner, site_ids = _two_runs(app, factory)
    token = factory.token(owner)
    before = client.get("/api/v1/costs/?group_by=site", headers=bearer(token)).get_json()["data"]
    gone = next(r for r in before["rows"] if r["key"] == site_ids[0])
    r = client.delete(f"/api/v1/sites/{site_ids[0]}/?confirm=Site 0", headers=bearer(token))
    assert r.status_code == 200, r.get_json()
    for group in ("site", "stage", "day"):
        after = client.get(f"/api/v1/costs/?group_by={group}", headers=bearer(token)).get_json()["data"]
        assert sum(x["credits"] for x in after["rows"]) == before["totals"]["credits"] == after["totals"]["ledger"]["debits"]
    assert after["totals"]["calls"] == before["totals"]["calls"]
    site_rows = client.get("/api/v1/costs/?group_by=site", headers=bearer(token)).get_json()["data"]["rows"]
    assert site_rows[-1]["key"] is None and site_rows[-1]["label"] == "deleted sites"
    assert site_rows[-1]["credits"] == gone["credits"] and site_rows[-1]["calls"] == gone["calls"]
    # The account's month still counts it; the site's own counter went with the site.
    acct = client.get("/api/v1/account/", headers=bearer(token)).get_json()["data"]
    assert acct["spent_this_month"] == before["totals"]["credits"]
