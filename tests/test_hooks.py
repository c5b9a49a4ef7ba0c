"""Run lifecycle events reach subscribers once each, in order, after the change is committed."""
from webapp.automation import hooks
from webapp.automation.service import AutomationService
from webapp.extensions import db
from webapp.models import Account, AutomationRun

from conftest import drain


def test_lifecycle_events_in_order(app, factory):
    seen = []

    def listener(event, run, actor, reason):
        # Committed before the call: a fresh read in another session sees the new state.
        with db.engine.connect() as c:
            status = c.execute(db.select(AutomationRun.status).where(AutomationRun.id == run.id)).scalar()
        seen.append((event, run.id, actor, reason, status))

    def broken(*_):
        raise RuntimeError("a listener failing must not affect the run")

    hooks.subscribe(broken)
    hooks.subscribe(listener)
    try:
        acc, _ = factory.account(credits=100_000)
        site = factory.site(acc, keywords=10)
        factory.fast_config(site)
        acc_id, site_id = acc.id, site.id
        svc = AutomationService(acc_id, actor="user:a@example.com")
        run_id = svc.start(site_id).id
        svc.pause(run_id, reason="lunch")
        svc.resume(run_id)
        drain(app)
        assert seen[:3] == [("run.started", run_id, "user:a@example.com", None, "running"),
                            ("run.paused", run_id, "user:a@example.com", "lunch", "paused"),
                            ("run.resumed", run_id, "user:a@example.com", None, "running")]
        assert seen[3] == ("run.completed", run_id, "system", None, "completed")
        assert len(seen) == 4

        # An automatic pause: the credits are gone before the first item is charged.
        site2 = factory.site(db.session.get(Account, acc_id), name="Two", keywords=10)
        factory.fast_config(site2)
        run_b = svc.start(site2.id).id
        db.session.get(Account, acc_id).credits = 1
        db.session.commit()
        drain(app)
        assert seen[-1] == ("run.paused", run_b, "system", "insufficient credits", "paused")
        svc.cancel(run_b, reason="enough")
        assert seen[-1] == ("run.cancelled", run_b, "user:a@example.com", "enough", "cancelled")
    finally:
        hooks._listeners.remove(broken)
        hooks._listeners.remove(listener)
