"""The engine's control code under real `worker.py` processes, with assertions that fail when
it is broken: a pause lands at the next item boundary of a batch in flight, a stale job chain
does nothing, two workers never run one run at once, a resume during a slow item continues
as soon as it ends, and a cancelled run's leftover site lock never blocks the next start.

Each test names the mutant of the engine it kills (docs/TESTING.md)."""
import contextlib
import threading
import time
from http.server import ThreadingHTTPServer

import pytest
from rq import Queue
from rq.registry import StartedJobRegistry
from sqlalchemy import func, select

from webapp.automation.jobs import enqueue_step
from webapp.automation.locks import site_lock_key
from webapp.automation.service import AutomationService
from webapp.extensions import db
from webapp.models import AITaskLog, AutomationConfig
from webapp.redis_conn import get_redis

from conftest import drain, start_worker, wait_for
from test_engine import _credits, _step_until, _twin_sites, outputs
from test_logs_and_providers import StubAI


from conftest import fresh_run as _run, stop_process as _stop  # noqa: E402


def serial(site_id):
    """One AI call in flight per run, where the engine supports more (`ai_concurrency`):
    these tests count item boundaries and calls in flight exactly."""
    if hasattr(AutomationConfig, "ai_concurrency"):
        cfg = db.session.execute(select(AutomationConfig).where(AutomationConfig.site_id == site_id)).scalar_one()
        cfg.ai_concurrency = 1
        db.session.commit()


def workers_idle(app):
    """No pipeline job queued or executing (RQ's own registries, whatever the engine does)."""
    q = Queue(app.config["RQ_QUEUE"], connection=get_redis())
    return q.count == 0 and StartedJobRegistry(queue=q).count == 0


def _processed(run_id, n):
    return (_run(run_id).stage_result(n) or {}).get("items_processed", 0)


def _ai_calls(run_id, stage=None):
    q = select(func.count()).select_from(AITaskLog).where(AITaskLog.run_id == run_id)
    if stage:
        q = q.where(AITaskLog.stage == stage)
    n = db.session.execute(q).scalar()
    db.session.remove()
    return n


# -- a pause lands inside a batch, at the next item boundary --------------------------------------

@pytest.mark.processes
def test_pause_mid_batch_stops_at_next_item_boundary(app, app_env, factory):
    """Kills: the between-items check ignoring the run's state (`if _shutdown_requested:`).
    Stages 1-5 run here; the whole of stage 6 is then one batch (one job) on a real worker,
    and the pause arrives while that job is mid-way: only the item in flight may finish.
    (Stage 6 makes its AI call before it writes, so on SQLite too the pause is not held up
    behind the worker's write transaction.)"""
    (ref_acc, ref_site), (acc_id, site_id) = _twin_sites(factory, n_keywords=12, stage_6_batch_size=100)
    serial(site_id)
    ref = AutomationService(ref_acc).start(ref_site).id
    drain(app)
    svc = AutomationService(acc_id, actor="user:t")
    run_id = svc.start(site_id).id
    _step_until(app, run_id, lambda r: r.current_stage == 6)
    w = start_worker(app_env, extra_env={"AI_LOCAL_LATENCY_MS": "300"})
    try:
        wait_for(lambda: _processed(run_id, 6) >= 1, timeout=60, interval=0.03, message="stage 6 under way")
        svc.pause(run_id, reason="mid-batch")
        at_pause = _processed(run_id, 6)
        wait_for(lambda: workers_idle(app), timeout=60, message="the batch's job ended")
    finally:
        _stop(w)
    run = _run(run_id)
    images = run.stage_6_result["items_total"]
    assert images - at_pause >= 3, "too few items left to tell a boundary stop from a finished batch"
    # The item in flight when the pause landed may complete; no item after it is started.
    assert at_pause <= run.stage_6_result["items_processed"] <= at_pause + 1
    assert _ai_calls(run_id, stage=6) == run.stage_6_result["items_processed"]
    assert run.status == "paused" and run.current_stage == 6
    # Resumed (in this process, no latency): the same outputs and credits as the twin.
    svc.resume(run_id)
    drain(app)
    assert _run(run_id).status == "completed"
    assert outputs(site_id) == outputs(ref_site)
    assert _credits(run_id) == _credits(ref) == _run(run_id).total_credits_used


# -- a job of an old chain (stale token) does nothing --------------------------------------------

def test_stale_token_job_does_no_work(app, factory):
    """Kills: dropping the job-token comparison in the between-items / start-of-job check.
    Pause + resume gives the run a new token; the first chain's job is still queued in front
    of the new one and must neither process nor queue anything."""
    acc, _ = factory.account(credits=100_000)
    site = factory.site(acc, keywords=12)
    factory.fast_config(site)
    acc_id, site_id = acc.id, site.id
    svc = AutomationService(acc_id)
    run_id = svc.start(site_id).id
    svc.pause(run_id)
    svc.resume(run_id)
    from rq.job import Job
    from webapp.automation.dispatch import waiting_jobs
    q = Queue(app.config["RQ_QUEUE"], connection=get_redis())
    old_job, new_job = Job.fetch_many(waiting_jobs(get_redis(), app.config["RQ_QUEUE"]), connection=get_redis())
    assert old_job.args[1] != new_job.args[1] == _run(run_id).job_token
    heartbeat = _run(run_id).heartbeat_at
    lines = svc.log_lines(run_id, 500)
    # The old chain's job only (a worker on the pipeline queue alone: lifecycle hooks may
    # have queued control jobs of their own).
    from rq import SimpleWorker
    SimpleWorker([q], connection=get_redis()).work(burst=True, max_jobs=1, with_scheduler=False,
                                                   logging_level="WARNING")
    db.session.remove()
    run = _run(run_id)
    assert _ai_calls(run_id) == 0 and run.stage_1_result is None and run.heartbeat_at == heartbeat
    # It did not even start: no line in the run's log (its guarded writes would have hidden
    # everything else a job with a stale token does).
    assert svc.log_lines(run_id, 500) == lines
    assert [j.id for j in q.get_jobs()] == [new_job.id]  # it queued nothing after itself
    # A job carrying a made-up token, queued alone, does nothing either.
    q.empty()
    enqueue_step(get_redis(), run_id, "0" * 32)
    drain(app)
    assert _ai_calls(run_id) == 0 and _run(run_id).stage_1_result is None and q.count == 0
    # The current chain does the work.
    enqueue_step(get_redis(), run_id, _run(run_id).job_token)
    drain(app)
    assert _run(run_id).status == "completed" and _ai_calls(run_id) > 0


# -- two workers, one run: a resume during a slow AI call ------------------------------------------

class TimedStub(StubAI):
    """The OpenAI-compatible stub, timing every call: calls in flight, start/end times."""
    lock = threading.Lock()
    latency = 0.03
    slow = {}       # (path suffix, nth call to it) -> seconds
    started = {}    # (path suffix, nth call to it) -> event
    seen = {}       # path suffix -> calls so far
    slow_call = None  # the overall number of the slow call
    times = []      # (start, end) per call, in call order
    in_flight = max_in_flight = 0

    @classmethod
    def reset(cls):
        cls.slow, cls.started, cls.seen, cls.times, cls.in_flight, cls.max_in_flight = {}, {}, {}, [], 0, 0
        cls.slow_call = None

    def do_POST(self):
        cls = TimedStub
        kind = self.path.rsplit("/", 1)[-1]
        with cls.lock:
            n = len(cls.times)
            cls.times.append([time.monotonic(), None])
            cls.in_flight += 1
            cls.max_in_flight = max(cls.max_in_flight, cls.in_flight)
            nth = cls.seen[kind] = cls.seen.get(kind, 0) + 1
            delay = cls.slow.get((kind, nth), cls.latency)
            if (kind, nth) in cls.slow:
                cls.slow_call = n
            ev = cls.started.setdefault((kind, nth), threading.Event())
        ev.set()
        time.sleep(delay)
        self._n = n
        try:
            super().do_POST()
        finally:
            self._end()

    def _end(self):
        # A call ends when its answer is ready, before a byte of it is sent: the client cannot
        # start a call that follows this answer earlier, so counting the end after the write
        # (the handler thread waiting for the GIL on a loaded machine) made two calls in a row
        # look like two at once.
        cls = TimedStub
        with cls.lock:
            if cls.times[self._n][1] is None:
                cls.in_flight -= 1
                cls.times[self._n][1] = time.monotonic()

    def _json(self, obj):
        self._end()
        super()._json(obj)

    @classmethod
    def overlaps(cls):
        """(i, j) for every pair of calls whose [start, end] intersect: what the test names."""
        t = [(s, e if e is not None else float("inf")) for s, e in cls.times]
        return [(i, j, round(t[j][0] - t[i][1], 3)) for i in range(len(t)) for j in range(i + 1, len(t))
                if t[j][0] < t[i][1] and t[i][0] < t[j][1]]


@pytest.fixture
def timed_stub(app):
    server = ThreadingHTTPServer(("127.0.0.1", 0), TimedStub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    TimedStub.mode, TimedStub.calls = "ok", []
    TimedStub.reset()
    url = f"http://127.0.0.1:{server.server_port}/v1"
    app.config.update(AI_PROVIDER="openai", OPENAI_BASE_URL=url, OPENAI_API_KEY="sk-test")
    yield {"AI_PROVIDER": "openai", "OPENAI_BASE_URL": url, "OPENAI_API_KEY": "sk-test"}
    server.shutdown()


@contextlib.contextmanager
def _paused_and_resumed_in_a_slow_call(app, app_env, factory, timed_stub, seconds, stale):
    """Twin sites, the first run to its end here as the reference; the second's run on two
    real workers (STALE_RUN_SECONDS `stale`), paused and resumed while its 2nd image's AI call
    takes `seconds` (stage 6, mid-batch; its AI call comes before its write, so on SQLite the
    pause is not queued behind the worker's transaction). Yields (reference run, reference
    site, site, run); the workers are stopped at the block's end."""
    (ref_acc, ref_site), (acc_id, site_id) = _twin_sites(factory, n_keywords=4, stage_6_batch_size=100)
    serial(site_id)
    ref = AutomationService(ref_acc).start(ref_site).id
    drain(app)
    TimedStub.reset()
    slow = ("generations", 2)
    TimedStub.slow = {slow: seconds}
    svc = AutomationService(acc_id, actor="user:t")
    run_id = svc.start(site_id).id
    workers = [start_worker(app_env, extra_env={**timed_stub, "STALE_RUN_SECONDS": str(stale)}) for _ in range(2)]
    try:
        ev = TimedStub.started.setdefault(slow, threading.Event())
        assert ev.wait(60), "the slow call never started"
        svc.pause(run_id)
        svc.resume(run_id)
        yield ref, ref_site, site_id, run_id
    finally:
        for w in workers:
            _stop(w)


@pytest.mark.processes
def test_resume_during_slow_item_continues_when_it_ends_and_never_overlaps(app, app_env, factory, timed_stub):
    """Kills: (a) the job giving up on a busy exec lock (the stalled resume: nothing queued,
    the run sits `running` until the stale check); (b) no exec lock at all (the resumed job
    starts AI calls while the old one is still in its item). Two workers; the call the pause
    and resume land in takes longer than a job waits for the lock."""
    # stale 6: a job waits stale/2 = 3 s for the lock; the exec lock's TTL (6 s) outlives the slow call
    with _paused_and_resumed_in_a_slow_call(app, app_env, factory, timed_stub, seconds=4.0, stale=6) as (
            ref, ref_site, site_id, run_id):
        slow_call = TimedStub.slow_call
        wait_for(lambda: len(TimedStub.times) > slow_call + 1, timeout=45, interval=0.05,
                 message="the resumed run's next AI call")
        assert TimedStub.max_in_flight == 1, f"two AI calls of one run in flight at once: {TimedStub.overlaps()}"
        wait_for(lambda: _run(run_id).status == "completed", timeout=90, message="run completed")
    slow_end = TimedStub.times[slow_call][1]
    next_start = TimedStub.times[slow_call + 1][0]
    assert TimedStub.max_in_flight == 1, \
        f"two AI calls of one run in flight at once (call i, call j, j's start - i's end): {TimedStub.overlaps()}"
    assert 0 <= next_start - slow_end < 5, f"resumed run continued {next_start - slow_end:.1f}s after the item"
    assert outputs(site_id) == outputs(ref_site)
    assert _credits(run_id) == _credits(ref) == _run(run_id).total_credits_used


def _debits(run_id):
    from webapp.models import CreditTransaction
    n = db.session.execute(select(func.count()).select_from(CreditTransaction).where(
        CreditTransaction.run_id == run_id, CreditTransaction.amount < 0)).scalar()
    db.session.remove()
    return n


@pytest.mark.processes
def test_an_answer_that_arrives_after_pause_and_resume_is_kept_not_asked_again(app, app_env, factory, timed_stub):
    """Kills: the old job's answer refused because the resume gave the run a new token (its
    item rolled back and asked again by the resumed job: the provider billed twice). The
    stub's answers must equal the run's AI log rows and its ledger debits, and the outputs
    an uninterrupted twin's."""
    with _paused_and_resumed_in_a_slow_call(app, app_env, factory, timed_stub, seconds=3.0, stale=8) as (
            ref, ref_site, site_id, run_id):
        wait_for(lambda: _run(run_id).status == "completed", timeout=90, message="run completed")
    answers = sum(1 for _s, e in TimedStub.times if e is not None)
    assert answers == _ai_calls(run_id) == _debits(run_id), \
        f"stub answers {answers}, AI log rows {_ai_calls(run_id)}, debits {_debits(run_id)}"
    assert outputs(site_id) == outputs(ref_site)
    assert _credits(run_id) == _credits(ref) == _run(run_id).total_credits_used


# -- cancel while an item is in flight, then start again ------------------------------------------

@pytest.mark.processes
def test_start_after_cancel_mid_item_is_never_refused(app, app_env, factory):
    """Kills: a start refused ("already starting") by the site lock a cancelled run's worker
    renewed while finishing its item; and that worker taking the lock back from the new run."""
    acc, _ = factory.account(credits=1_000_000)
    site = factory.site(acc, keywords=12)
    factory.fast_config(site, stage_6_batch_size=100)
    acc_id, site_id = acc.id, site.id
    serial(site_id)
    svc = AutomationService(acc_id, actor="user:t")
    first = svc.start(site_id).id  # stages 1-5 in this process: the worker starts in stage 6
    _step_until(app, first, lambda r: r.current_stage == 6)
    svc.cancel(first)
    r = get_redis()
    key = site_lock_key(site_id)

    def mid_item(run_id):
        start = _processed(run_id, 6)
        wait_for(lambda: _processed(run_id, 6) > start, timeout=60, interval=0.03, message="an item done")
        # An AI call takes 1 s and the check lands right after an item's commit: the worker
        # is inside the next item now.
        assert not workers_idle(app)

    w = start_worker(app_env, extra_env={"AI_LOCAL_LATENCY_MS": "1000"})
    try:
        a = svc.start(site_id).id
        mid_item(a)
        svc.cancel(a)
        wait_for(lambda: workers_idle(app), timeout=30, message="the cancelled run's job ended")
        # Its worker renewed the site lock after finishing the item: the lock outlives the run.
        b = svc.start(site_id).id  # not "already starting"
        assert _run(b).status == "running"
        mid_item(b)
        svc.cancel(b)
        c = svc.start(site_id).id  # at once, while b's item is still in flight
        holders = set()
        wait_for(lambda: holders.add(r.get(key)) or _processed(c, 6) >= 1, timeout=60, interval=0.02,
                 message="the new run under way")
        assert holders == {f"run:{c}".encode()}, holders  # b's worker never took it back
        svc.cancel(c)
    finally:
        _stop(w)
    assert [x.status for x in (_run(a), _run(b), _run(c))] == ["cancelled"] * 3


# -- a duplicate job of the same chain leaves; the latest one waits for the lock ----------------

def test_a_superseded_job_leaves_while_the_latest_waits_for_the_lock(app, factory):
    """Two jobs of one run's chain are queued (a recovery raced with a queued job). While a
    third party holds the run's exec lock, the older job sees it is no longer the latest and
    leaves; the latest one waits, takes the lock once it is free and does the batch."""
    from rq import SimpleWorker
    from rq.job import Job
    from webapp.automation.locks import TTLLock, exec_lock_key
    acc, _ = factory.account(credits=100_000)
    site = factory.site(acc, keywords=6)
    factory.fast_config(site)
    run_id = AutomationService(acc.id).start(site.id).id
    r = get_redis()
    q = Queue(app.config["RQ_QUEUE"], connection=r)
    token = _run(run_id).job_token
    first = q.get_jobs()[0]
    latest = enqueue_step(r, run_id, token)
    holder = TTLLock(r, exec_lock_key(run_id), 60)
    assert holder.acquire()
    worker = SimpleWorker([q], connection=r)
    worker.work(burst=True, max_jobs=1, with_scheduler=False, logging_level="WARNING")
    assert Job.fetch(first.id, connection=r).return_value() == "superseded"
    assert _ai_calls(run_id) == 0 and [j.id for j in q.get_jobs()] == [latest.id]
    # The latest job waits for the lock (not "superseded"); freed meanwhile, it does the batch.
    threading.Timer(1.5, holder.release).start()
    worker.work(burst=True, max_jobs=1, with_scheduler=False, logging_level="WARNING")
    db.session.remove()
    assert Job.fetch(latest.id, connection=r).return_value() in ("batch done", "stage done")
    assert _ai_calls(run_id) > 0


def test_a_told_job_starts_nothing_whatever_the_database_says(app, factory):
    """The job's stop event (set by a pause it saw, by its heartbeat finding the run lost, e.g.
    its exec lock taken by another job) and a worker's SIGTERM stop new starts at once, even
    though the run's row still says running with this job's token."""
    from webapp.automation import tasks
    acc, _ = factory.account(credits=100_000)
    site = factory.site(acc, keywords=4)
    run_id = AutomationService(acc.id).start(site.id).id
    ex = tasks.RunExecutor(run_id, _run(run_id).job_token)
    assert ex.ok_to_continue() and ex.may_start()
    ex.stop = threading.Event()
    assert ex.ok_to_continue() and ex.may_start()
    ex.stop.set()
    assert not ex.ok_to_continue() and not ex.may_start()
    ex.stop = threading.Event()
    ex._checked_at = 0.0
    tasks.request_shutdown()
    try:
        assert not ex.may_start()
    finally:
        tasks._shutdown_requested = False
    assert ex.may_start()


def test_a_job_whose_exec_lock_lapsed_to_another_starts_no_call(app, factory):
    """Kills: calls started on a lease that lapsed (a job stalled longer than the exec lock's
    TTL before its heartbeat's first beat, or a process stopped in between). The next job
    took the lock meanwhile; the stalled job must see that at its next status read and start
    nothing, while the run's row still says running with its token. A lease that lapsed with
    nobody taking it is simply taken back."""
    from webapp.automation import tasks
    from webapp.automation.locks import TTLLock, exec_lock_key
    acc, _ = factory.account(credits=100_000)
    site = factory.site(acc, keywords=4)
    run_id = AutomationService(acc.id).start(site.id).id
    r = get_redis()
    ex = tasks.RunExecutor(run_id, _run(run_id).job_token)
    ex.stop = threading.Event()
    ex.exec_lock = TTLLock(r, exec_lock_key(run_id), 5)
    assert ex.exec_lock.acquire() and ex.may_start()
    # The lease lapses with nobody waiting: taken back at the next status read.
    r.delete(exec_lock_key(run_id))
    ex._checked_at = 0.0
    assert ex.may_start() and r.get(exec_lock_key(run_id)).decode() == ex.exec_lock.token
    # The lease lapses and the next job takes it: this job stops, for good.
    r.delete(exec_lock_key(run_id))
    other = TTLLock(r, exec_lock_key(run_id), 5)
    assert other.acquire()
    ex._checked_at = 0.0
    assert not ex.may_start() and ex.stop.is_set()
    assert r.get(exec_lock_key(run_id)).decode() == other.token  # the other job's lock is left alone
    other.release()
    ex._checked_at = 0.0
    assert not ex.may_start()
    assert _run(run_id).status == "running"


def test_a_retry_is_asked_like_any_other_start():
    """Kills: a unit's retry sent without asking may_start (a retry is a new call): once the
    job is told to stop between the failed attempt and its retry, the unit is left pending."""
    from webapp.automation import concurrency
    calls, allowed = [], [True]

    def start(slot):
        calls.append(slot.unit)
        slot.future = concurrency.done_future(None)

    def finish(slot):
        if slot.attempt == 0:
            allowed[0] = False  # told to stop while the first attempt failed
            return concurrency.RETRY
        return concurrency.NEXT  # (the retry, had it been sent, succeeds: the loop ends either way)

    out = concurrency.run_in_order([1], 1, start=start, finish=finish, may_start=lambda: allowed[0])
    assert out == "stopped" and calls == [1]
