"""Crash and parallelism with real `worker.py` subprocesses."""
import os
import signal

import pytest
from sqlalchemy import func, select

from webapp.automation.service import AutomationService
from webapp.extensions import db
from webapp.models import AITaskLog, CreditTransaction, RunEvent

from conftest import drain, start_worker, wait_for
from test_engine import _credits, _twin_sites, outputs


from conftest import fresh_run as _run, stop_process as _stop  # noqa: E402

pytestmark = pytest.mark.processes  # real processes (see pytest.ini)


def test_sigkill_in_stage_4_is_recovered_with_same_outputs(app, app_env, factory):
    (a_acc, a_site), (b_acc, b_site) = _twin_sites(factory, n_keywords=30, stage_4_batch_size=3)
    ref = AutomationService(a_acc).start(a_site).id
    drain(app)
    env = {"STALE_RUN_SECONDS": "2", "AI_LOCAL_LATENCY_MS": "100"}
    run_id = AutomationService(b_acc).start(b_site).id
    w1 = start_worker(app_env, extra_env=env)
    try:
        from webapp.automation.locks import exec_lock_key
        from webapp.redis_conn import get_redis
        # Kill while a job is mid-item (holding the run's exec lock), not between two jobs
        # (then the next job is still queued and no recovery is needed).
        wait_for(lambda: (_run(run_id).stage_4_result or {}).get("items_processed", 0) >= 2
                 and get_redis().exists(exec_lock_key(run_id)), timeout=60, interval=0.02,
                 message="stage 4 in progress")
        os.killpg(w1.pid, signal.SIGKILL)
        w1.wait(5)
        killed_at = _run(run_id)
        assert killed_at.status == "running" and killed_at.current_stage == 4
        # The dead worker's exec lock (TTL = STALE_RUN_SECONDS) and heartbeat expire.
        from datetime import timedelta
        from webapp.models.base import utcnow
        wait_for(lambda: not get_redis().exists(exec_lock_key(run_id)), timeout=30, message="exec lock expired")
        wait_for(lambda: _run(run_id).heartbeat_at < utcnow() - timedelta(seconds=2.5), timeout=30,
                 message="heartbeat stale")
        w2 = start_worker(app_env, extra_env=env)  # its start-up stale check recovers the run
        try:
            wait_for(lambda: _run(run_id).status == "completed", timeout=90, message="run completed")
        finally:
            _stop(w2)
    finally:
        _stop(w1)
    run = _run(run_id)
    assert outputs(a_site) == outputs(b_site)
    assert _credits(ref) == _credits(run_id) == run.total_credits_used
    ledger = db.session.execute(select(func.sum(CreditTransaction.amount)).where(
        CreditTransaction.run_id == run_id)).scalar()
    assert -ledger == run.total_credits_used
    events = [e.action for e in db.session.execute(select(RunEvent).where(RunEvent.run_id == run_id)).scalars()]
    assert events.count("recover") == 1
    log = "\n".join(AutomationService(b_acc).log_lines(run_id, 5000))
    assert "Worker lost" in log


def _call_windows(run_id, latency_s):
    """When each AI call of the run was in flight: a call ends at its AITaskLog row's
    created_at (written right after it returns) and took at least the provider's latency."""
    from datetime import timedelta
    ends = db.session.execute(select(AITaskLog.created_at).where(AITaskLog.run_id == run_id)).scalars().all()
    return [(t - timedelta(seconds=latency_s), t) for t in ends]


def test_two_workers_run_two_sites_in_parallel(app, app_env, factory):
    """Two sites on two workers really run at the same time: some AI call of one run is in
    flight while one of the other is (with one worker, or a global lock, none would be)."""
    (a_acc, a_site), (b_acc, b_site) = _twin_sites(factory, n_keywords=20)
    latency_ms = 50
    env = {"AI_LOCAL_LATENCY_MS": str(latency_ms)}
    runs = [AutomationService(a_acc).start(a_site).id, AutomationService(b_acc).start(b_site).id]
    workers = [start_worker(app_env, extra_env=env) for _ in range(2)]
    try:
        wait_for(lambda: all(_run(r).status == "completed" for r in runs), timeout=120, message="both runs")
    finally:
        for w in workers:
            _stop(w)
    wa, wb = (_call_windows(r, latency_ms / 1000) for r in runs)
    overlapping = [(x, y) for x in wa for y in wb if x[0] < y[1] and y[0] < x[1]]
    assert len(overlapping) >= 3, "the two runs never had AI calls in flight at the same time"
    assert outputs(a_site) == outputs(b_site)
    assert _credits(runs[0]) == _credits(runs[1])


def test_sigterm_lets_worker_finish_item_and_hand_back(app, app_env, factory):
    (ref_acc, ref_site), (acc_id, site_id) = _twin_sites(factory, n_keywords=20, stage_1_batch_size=1,
                                                         stage_2_batch_size=50)
    ref = AutomationService(ref_acc).start(ref_site).id
    drain(app)
    env = {"AI_LOCAL_LATENCY_MS": "150"}
    run_id = AutomationService(acc_id).start(site_id).id
    w1 = start_worker(app_env, extra_env=env)
    wait_for(lambda: _run(run_id).current_stage == 2 and (_run(run_id).stage_2_result or {}).get("items_processed", 0) >= 1,
             timeout=60, message="stage 2 running")
    os.killpg(w1.pid, signal.SIGTERM)
    assert w1.wait(20) == 0
    out = w1.stdout.read().decode()
    mid = _run(run_id)
    assert mid.status == "running" and "Traceback" not in out
    w2 = start_worker(app_env, extra_env=env)  # no stale wait: the rest was handed back to the queue
    try:
        wait_for(lambda: _run(run_id).status == "completed", timeout=90, message="completed")
    finally:
        _stop(w2)
    assert db.session.execute(select(func.count()).select_from(AITaskLog).where(AITaskLog.run_id == run_id)).scalar() \
        == db.session.execute(select(func.count()).select_from(CreditTransaction).where(CreditTransaction.run_id == run_id)).scalar()
    assert outputs(site_id) == outputs(ref_site)
    assert _credits(run_id) == _credits(ref) == _run(run_id).total_credits_used
