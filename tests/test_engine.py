"""The pipeline engine: full runs, control, credits, failures — real Redis, real DB, real RQ."""
import pytest
from sqlalchemy import func, select

from webapp.automation.service import AutomationService
from webapp.errors import BadRequest
from webapp.extensions import db
from webapp.models import (AITaskLog, Account, AutomationRun, Cluster, Content, ContentIdea, CreditTransaction,
                           Image, Keyword, RunEvent, Task)

from conftest import drain


def count(model, **filters):
    q = select(func.count()).select_from(model)
    for k, v in filters.items():
        q = q.where(getattr(model, k) == v)
    return db.session.execute(q).scalar()


def outputs(site_id):
    return {
        "clusters": count(Cluster, site_id=site_id), "ideas": count(ContentIdea, site_id=site_id),
        "tasks": count(Task, site_id=site_id), "content": count(Content, site_id=site_id),
        "images": count(Image, site_id=site_id),
        "review": count(Content, site_id=site_id, status="review"),
        "clustered": db.session.execute(select(func.count()).select_from(Keyword).where(
            Keyword.site_id == site_id, Keyword.cluster_id.is_not(None))).scalar(),
    }


@pytest.fixture
def seeded(factory):
    acc, user = factory.account(credits=100_000)
    site = factory.site(acc, keywords=60)
    factory.fast_config(site)
    # Plain ids: jobs run in this process end their DB session, detaching ORM objects.
    return acc.id, site.id


def test_full_run_completes_and_adds_up(app, seeded):
    acc_id, site_id = seeded
    svc = AutomationService(acc_id, actor="user:test")
    est = svc.estimate(site_id)["estimated_credits"]
    balance_before = db.session.get(Account, acc_id).credits
    run_id = svc.start(site_id).id
    drain(app)
    run = db.session.get(AutomationRun, run_id)
    assert run.status == "completed", run.error_message
    o = outputs(site_id)
    assert o["clustered"] == 60
    assert o["tasks"] == o["ideas"] == o["content"] == o["review"] > 0
    assert o["images"] == 3 * o["content"]
    assert count(Image, site_id=site_id, status="generated") == o["images"]
    # Stage results add up.
    r = {n: run.stage_result(n) for n in range(1, 8)}
    assert r[1]["items_processed"] == 60 and r[1]["items_created"] == o["clusters"]
    assert r[2]["items_processed"] == o["clusters"] and r[2]["items_created"] == o["ideas"]
    assert r[3]["items_created"] == o["tasks"] and r[4]["items_created"] == o["content"]
    assert r[5]["items_created"] == o["images"] and r[6]["items_processed"] == o["images"]
    assert r[7]["items_processed"] == o["content"]
    assert all(r[n]["status"] == "completed" and r[n]["finished_at"] for n in r)
    # Credits: balance change == ledger == AITaskLog == run total == sum of stage results.
    used = db.session.execute(select(func.sum(AITaskLog.credits)).where(AITaskLog.run_id == run.id)).scalar()
    ledger = db.session.execute(select(func.sum(CreditTransaction.amount)).where(
        CreditTransaction.run_id == run.id)).scalar()
    assert used == -ledger == run.total_credits_used == sum(r[n]["credits_used"] for n in r)
    assert balance_before - db.session.get(Account, acc_id).credits == used
    assert abs(est - used) <= 0.25 * used, (est, used, o)
    # Files exist for every image.
    from pathlib import Path
    for img in db.session.execute(select(Image)).scalars():
        p = Path(app.config["MEDIA_DIR"]) / img.file_path
        assert p.read_bytes().startswith(b"\x89PNG")
    # Audit and log.
    assert [e.action for e in db.session.execute(select(RunEvent).where(RunEvent.run_id == run.id)).scalars()] == ["start"]
    lines = svc.log_lines(run.id, 5000)
    assert "Run started" in lines[0] and "Run completed" in lines[-1]


def test_nothing_pending_is_refused(app, factory):
    acc, _ = factory.account()
    site = factory.site(acc)
    with pytest.raises(BadRequest, match="Nothing to process"):
        AutomationService(acc.id).start(site.id)
