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


def _twin_sites(factory, n_keywords=40, **cfg):
    """Two accounts, each with a site holding the same keywords (the local provider is
    deterministic, so an interrupted and an uninterrupted run must produce the same)."""
    out = []
    for name in ("Alpha", "Beta"):
        acc, _ = factory.account(name=name, credits=100_000)
        site = factory.site(acc, keywords=n_keywords)
        factory.fast_config(site, **cfg)
        out.append((acc.id, site.id))
    return out


def _step_until(app, run_id, predicate, limit=500):
    for _ in range(limit):
        run = db.session.get(AutomationRun, run_id)
        db.session.refresh(run)
        if predicate(run):
            return run
        drain(app, max_jobs=1)
    raise AssertionError("run never reached the wanted point")


def _credits(run_id):
    return db.session.execute(select(func.coalesce(func.sum(AITaskLog.credits), 0)).where(
        AITaskLog.run_id == run_id)).scalar()


@pytest.mark.parametrize("slice_s, delay, per_job", [
    (300, 0, 16),  # no delay between batches: one job goes on through the whole stage
    (0, 0, 8),     # JOB_SLICE_SECONDS=0: one batch (4 keywords x ai_concurrency 2) per job
    (300, 1, 8),   # a delay between batches keeps one batch per job (the delay is between jobs)
])
def test_a_job_goes_on_into_the_next_batches_only_within_its_slice(app, factory, slice_s, delay, per_job):
    # 16 keywords: two batches of stage 1, enough to tell one batch from the whole stage (the
    # delay case sleeps between every two batches of every stage: 40 keywords took 20 s).
    (acc, site), = _twin_sites(factory, n_keywords=16, stage_1_batch_size=4, ai_concurrency=2,
                               within_stage_delay=delay)[1:]
    app.config["JOB_SLICE_SECONDS"] = slice_s
    run_id = AutomationService(acc).start(site).id
    drain(app, max_jobs=1)
    run = db.session.get(AutomationRun, run_id)
    assert run.current_stage == 1 and run.stage_1_result["items_processed"] == per_job
    assert run.stage_1_result["status"] == "running"
    drain(app)
    run = db.session.get(AutomationRun, run_id)
    assert run.status == "completed" and run.stage_1_result["items_processed"] == 16


def test_pause_mid_stage_then_resume_equals_uninterrupted(app, factory):
    (a_acc, a_site), (b_acc, b_site) = _twin_sites(factory, stage_4_batch_size=2, stage_2_batch_size=2)
    app.config["JOB_SLICE_SECONDS"] = 0  # one batch per job: the pause lands between two jobs
    ref = AutomationService(a_acc).start(a_site).id
    drain(app)
    svc = AutomationService(b_acc, actor="user:beta@example.com")
    run_id = svc.start(b_site).id
    run = _step_until(app, run_id, lambda r: r.current_stage == 4 and (r.stage_4_result or {}).get("items_processed", 0) >= 2)
    svc.pause(run_id, reason="checking drafts")
    drain(app)  # queued jobs see the pause and do nothing
    run = db.session.get(AutomationRun, run_id)
    assert run.status == "paused" and run.paused_at and run.current_stage == 4
    processed_at_pause = run.stage_4_result["items_processed"]
    assert 0 < processed_at_pause < count(Task, site_id=b_site)
    with pytest.raises(BadRequest, match="cannot be paused"):
        svc.pause(run_id)
    svc.resume(run_id)
    with pytest.raises(BadRequest, match="cannot be resumed"):
        svc.resume(run_id)
    drain(app)
    run = db.session.get(AutomationRun, run_id)
    assert run.status == "completed" and run.resumed_at
    a, b = outputs(a_site), outputs(b_site)
    assert a == b
    assert _credits(ref) == _credits(run_id) == run.total_credits_used
    actions = [(e.action, e.actor, e.reason) for e in svc.events(run)]
    assert actions == [("start", "user:beta@example.com", None), ("pause", "user:beta@example.com", "checking drafts"),
                       ("resume", "user:beta@example.com", None)]
    for n in range(1, 8):
        assert run.stage_result(n)["status"] == "completed"
    # Finished runs refuse every control.
    for action in (svc.pause, svc.resume, svc.cancel):
        with pytest.raises(BadRequest):
            action(run_id)


def test_cancel_mid_stage_keeps_partial_results_and_frees_site(app, factory):
    (ref_acc, ref_site), (acc_id, site_id) = _twin_sites(factory, stage_4_batch_size=2)
    app.config["JOB_SLICE_SECONDS"] = 0  # one batch per job: the cancel lands between two jobs
    ref = AutomationService(ref_acc).start(ref_site).id
    drain(app)
    svc = AutomationService(acc_id, actor="user:x")
    run_id = svc.start(site_id).id
    _step_until(app, run_id, lambda r: r.current_stage == 4 and (r.stage_4_result or {}).get("items_processed", 0) >= 2)
    svc.cancel(run_id, reason="wrong keywords")
    drain(app)
    run = db.session.get(AutomationRun, run_id)
    assert run.status == "cancelled" and run.cancelled_at and run.completed_at is None
    drafts = count(Content, site_id=site_id)
    assert drafts == run.stage_4_result["items_processed"] >= 2   # partial results kept
    assert count(Task, site_id=site_id, status="queued") > 0        # the rest still pending
    from webapp.automation.locks import site_lock_key
    from webapp.redis_conn import get_redis
    assert not get_redis().exists(site_lock_key(site_id))
    # A new run can start and finishes the rest without redoing anything.
    run2 = svc.start(site_id).id
    drain(app)
    assert db.session.get(AutomationRun, run2).status == "completed"
    assert count(Content, site_id=site_id) == count(Task, site_id=site_id)
    # Cancelled + new run made exactly what one uninterrupted run makes, charged once.
    assert outputs(site_id) == outputs(ref_site)
    assert _credits(run_id) + _credits(run2) == _credits(ref)


def test_concurrent_starts_one_run(app, factory):
    """20 simultaneous starts: exactly one run; every other thread gets the 'already' refusal
    (an unexpected exception in any thread fails the test, it does not vanish with it)."""
    import threading
    acc, _ = factory.account(credits=100_000)
    site = factory.site(acc, keywords=20)
    acc_id, site_id = acc.id, site.id
    n = 20
    barrier = threading.Barrier(n)
    outcomes = [None] * n

    def start(i):
        with app.app_context():
            try:
                barrier.wait()
                outcomes[i] = ("run", AutomationService(acc_id).start(site_id).id)
            except BadRequest as e:
                outcomes[i] = ("refused", e.message)
            except BaseException as e:  # recorded, asserted below
                outcomes[i] = ("error", repr(e))
            finally:
                db.session.remove()

    threads = [threading.Thread(target=start, args=(i,)) for i in range(n)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    assert all(o is not None for o in outcomes), outcomes  # every thread finished and reported
    kinds = [o[0] for o in outcomes]
    assert kinds.count("run") == 1 and kinds.count("refused") == n - 1, outcomes
    run_id = next(v for k, v in outcomes if k == "run")
    assert all(f"run {run_id} is running" in v or "already starting" in v for k, v in outcomes if k == "refused"), outcomes
    assert count(AutomationRun, site_id=site_id) == 1
    assert db.session.get(AutomationRun, run_id).status == "running"


def test_insufficient_credits_at_start(app, factory):
    acc, _ = factory.account(credits=10)
    site = factory.site(acc, keywords=20)
    svc = AutomationService(acc.id)
    est = svc.estimate(site.id)
    assert est["sufficient"] is False and est["current_balance"] == 10
    with pytest.raises(BadRequest) as e:
        svc.start(site.id)
    assert "Insufficient credits" in e.value.message and "available 10" in e.value.message
    assert f"required {est['required_credits']}" in e.value.message
    assert count(AutomationRun) == 0


def test_credits_run_out_mid_run_then_top_up_and_resume(app, factory):
    from webapp.automation.billing import top_up
    (ref_acc, ref_site), (acc_id, site_id) = _twin_sites(factory, n_keywords=30)
    ref = AutomationService(ref_acc).start(ref_site).id
    drain(app)
    svc = AutomationService(acc_id)
    run_id = svc.start(site_id).id
    # Spend the balance down after the start check: the run must pause, not go negative.
    _step_until(app, run_id, lambda r: r.current_stage >= 2)
    account = db.session.get(Account, acc_id)
    account.credits = 7
    db.session.commit()
    drain(app)
    run = db.session.get(AutomationRun, run_id)
    assert run.status == "paused" and run.pause_reason == "insufficient credits"
    assert "insufficient credits" in run.error_message.lower() and "Top up" in run.error_message
    balance_at_pause = db.session.get(Account, acc_id).credits
    assert 0 <= balance_at_pause <= 7
    paused_at_log = db.session.execute(select(func.coalesce(func.max(AITaskLog.id), 0))).scalar()
    top_up(db.session.get(Account, acc_id), 100_000)
    db.session.commit()
    svc.resume(run_id)
    drain(app)
    run = db.session.get(AutomationRun, run_id)
    assert run.status == "completed" and run.error_message is None
    assert count(Content, site_id=site_id, status="review") == count(Task, site_id=site_id) > 0
    assert outputs(site_id) == outputs(ref_site)
    assert _credits(run_id) == _credits(ref) == run.total_credits_used
    # The balance paid for exactly the calls made: 7 left when it paused (no call fitted), then
    # the top-up, minus what the rest of the run cost.
    spent_after = db.session.execute(select(func.sum(AITaskLog.credits)).where(
        AITaskLog.run_id == run_id, AITaskLog.id > paused_at_log)).scalar() or 0
    assert db.session.get(Account, acc_id).credits == balance_at_pause + 100_000 - spent_after


def test_failed_item_is_recorded_and_run_goes_on(app, factory):
    """A draft whose prompts cannot be generated fails after its retries; the rest complete."""
    from webapp.ai.local import LocalProvider
    acc, _ = factory.account(credits=100_000)
    site = factory.site(acc, keywords=12)
    factory.fast_config(site)
    acc_id, site_id = acc.id, site.id
    original = LocalProvider.generate_image_prompts
    calls = []

    def flaky(self, title, body):
        calls.append(title)
        if title == first_title[0]:
            from webapp.ai import ItemError
            raise ItemError("prompt model refused this article")
        return original(self, title, body)

    first_title = [None]
    run_id = AutomationService(acc_id).start(site_id).id
    run = _step_until(app, run_id, lambda r: r.current_stage == 5)
    first_title[0] = db.session.execute(select(Content.title).where(Content.site_id == site_id)
                                        .order_by(Content.id)).scalars().first()
    LocalProvider.generate_image_prompts = flaky
    try:
        drain(app)
    finally:
        LocalProvider.generate_image_prompts = original
    run = db.session.get(AutomationRun, run_id)
    assert run.status == "completed"
    r5 = run.stage_5_result
    assert r5["items_failed"] == 1 and "refused" in r5["failures"][0]["reason"]
    assert calls.count(first_title[0]) == app.config["ITEM_MAX_ATTEMPTS"]
    assert count(Content, site_id=site_id, status="review") == count(Content, site_id=site_id) - 1
    log = "\n".join(AutomationService(acc_id).log_lines(run_id, 5000))
    assert "FAILED after 3 attempts" in log


def test_stage_with_nothing_pending_is_skipped(app, factory):
    """Only tasks pending: stages 1-3 are skipped, not errors."""
    acc, _ = factory.account(credits=100_000)
    site = factory.site(acc, keywords=6)
    factory.fast_config(site)
    acc_id, site_id = acc.id, site.id
    run1 = AutomationService(acc_id).start(site_id).id
    _step_until(app, run1, lambda r: r.current_stage == 4)
    AutomationService(acc_id).cancel(run1)
    run2 = AutomationService(acc_id).start(site_id).id
    drain(app)
    run = db.session.get(AutomationRun, run2)
    assert run.status == "completed"
    assert [run.stage_result(n)["status"] for n in range(1, 8)] == ["skipped"] * 3 + ["completed"] * 4


def test_stale_run_is_recovered_then_failed_after_bounded_attempts(app, factory):
    """A running run with no heartbeat and no queued job: continued (new job, new token) until
    MAX_RECOVERY_ATTEMPTS tries without progress, then failed with a clear message."""
    from datetime import timedelta
    from webapp.automation.jobs import job_key
    from webapp.automation.recovery import check_stale_runs
    from webapp.models.base import utcnow
    from webapp.redis_conn import get_redis
    acc, _ = factory.account(credits=100_000)
    site = factory.site(acc, keywords=6)
    acc_id, site_id = acc.id, site.id
    run_id = AutomationService(acc_id).start(site_id).id
    r = get_redis()
    assert check_stale_runs() == []  # fresh heartbeat and a queued job: nothing to do
    attempts = app.config["MAX_RECOVERY_ATTEMPTS"]
    for attempt in range(attempts + 1):
        r.flushdb()  # the queued job is lost (e.g. Redis restarted without persistence)
        run = db.session.get(AutomationRun, run_id)
        run.heartbeat_at = utcnow() - timedelta(seconds=app.config["STALE_RUN_SECONDS"] + 5)
        db.session.commit()
        token_before = run.job_token
        done = check_stale_runs()
        db.session.remove()
        run = db.session.get(AutomationRun, run_id)
        if attempt < attempts:
            assert done == [(run_id, "recovered")] and run.status == "running"
            assert run.job_token != token_before and r.exists(job_key(run_id))
            assert run.recovery_attempts == attempt + 1
        else:
            assert done == [(run_id, "failed")]
            assert run.status == "failed" and "stopped responding" in run.error_message
    events = [e.action for e in AutomationService(acc_id).events(run)]
    assert events.count("recover") == attempts and events[-1] == "fail"
    # The site is free again.
    assert AutomationService(acc_id).start(site_id).status == "running"
