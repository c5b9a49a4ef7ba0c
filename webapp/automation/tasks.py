"""RQ tasks: `run_automation_task(run_id)` and `resume_automation_task(run_id)`.

Each job executes one batch of the run's current stage under the run's exec lock (or, when
the site has no delay between batches, the next batches too for up to JOB_SLICE_SECONDS, its
calls' window kept full), then queues the next job (a delay between batches or stages is
spent by that job waiting in fair dispatch, not by a worker), so any worker can continue any run and
a killed worker loses at most the items it was processing (every item commits on its own). Within a batch up to
`ai_concurrency` AI calls are in flight (concurrency.py); the job's own thread does every
database write, in the items' order. The heartbeat runs on its own thread (heartbeat.py),
and provider rate limits are shared through Redis (webapp/ai/ratelimit.py).
"""
import logging
import time

import redis
from flask import current_app
from rq import get_current_job
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from .. import logging_setup, metrics
from ..ai import ItemError, ProviderUnavailable, get_provider
from ..ai.ratelimit import Interrupted, ProviderGate, RateLimitExhausted, SharedLimiter, limiter_scope, window_for
from ..extensions import db
from ..models import AITaskLog, AutomationConfig, AutomationRun, RunEvent, RunItemFailure
from ..models.base import iso, utcnow
from ..redis_conn import get_redis
from . import concurrency, dispatch, hooks, jobs
from .appctx import app_context as _app_context  # the worker's app (worker.py hands it in)
from .billing import InsufficientCredits, charge
from .closing import close_stage_if_ended, end_values, outcome_note, system_event
from .heartbeat import Heartbeat, interval_for
from .locks import TTLLock, exec_lock_key, site_lock, site_lock_ttl
from .scope import scope_for
from .stages import STAGES, AlreadyDone, Stale
from .state import build_state, publish_state
from .spend import BudgetReached

log = logging.getLogger(__name__)
UP_NEXT = 3
LOCK_WAIT = 10  # seconds a job waits for its run's exec lock before queuing itself again
STAGE_7_BATCH = 50
MAX_CONCURRENCY = 32
STATUS_EVERY = 0.2    # s between reads of the run's status while starting items
PUBLISH_EVERY = 0.25  # s between live-state publications while items start
_shutdown_requested = False


def request_shutdown(*_):
    """SIGTERM in a worker: finish the items in flight, hand the rest of the batch back."""
    global _shutdown_requested
    _shutdown_requested = True


def run_automation_task(run_id, token=None):
    return _execute(run_id, token)


def resume_automation_task(run_id, token=None):
    return _execute(run_id, token)


def _execute(run_id, token):
    with _app_context():
        job = get_current_job()
        account_id = dispatch.account_of(job.id) if job is not None else None
        timer = None
        try:
            r = get_redis()
            # This worker is busy now: hand the next ready job to RQ's list for another one.
            dispatch.top_up(r, current_app.config["RQ_QUEUE"])
            timer = dispatch.Timer(r, account_id)
        except redis.RedisError:
            pass
        try:
            return RunExecutor(run_id, token, account_id).step()
        finally:
            db.session.remove()
            try:
                if timer is not None:
                    timer.done()
                dispatch.top_up(get_redis(), current_app.config["RQ_QUEUE"])
            except redis.RedisError as e:  # the next top-up (a start, another job, an idle worker) does it
                log.warning("fair dispatch: top-up after the job failed (%s)", e)


class Stop(Exception):
    """The run left `running` (paused, cancelled, taken over): stop at this boundary."""


class StageContext:
    """What a stage sees of the run for one unit (one per attempt: unit_credits is its charge)."""

    def __init__(self, run, provider, app):
        self.run, self.provider = run, provider
        self.media_dir = app.config["MEDIA_DIR"]
        self.article_words = app.config["AI_ARTICLE_WORDS"]
        self.unit_credits = 0
        self.accept_stale = False
        self.budget_reached = None  # a monthly budget this unit's charge went past (kept: it was billed)

    def charge(self, stage, item_id, credits, result):
        charge(self.run, stage.number, stage.function, stage.item_type, item_id, credits, result.tokens, result.model,
               on_budget_reached=self._budget_reached)
        self.unit_credits += credits

    def _budget_reached(self, e):
        self.budget_reached = e


class RunExecutor:
    def __init__(self, run_id, token, account_id=None):
        self.app = current_app._get_current_object()
        self.run_id, self.token = int(run_id), token
        self.account_id = account_id  # set for jobs that came through fair dispatch
        self.r = get_redis()
        self.stale_seconds = self.app.config["STALE_RUN_SECONDS"]
        self.max_attempts = max(1, self.app.config["ITEM_MAX_ATTEMPTS"])
        self.stop = None  # the job's stop event (set by a pause seen, a lost heartbeat, SIGTERM)
        self.began = time.monotonic()

    # -- control --------------------------------------------------------------------
    def _status(self):
        row = db.session.execute(select(AutomationRun.status, AutomationRun.job_token)
                                 .where(AutomationRun.id == self.run_id)).first()
        db.session.commit()  # end the read transaction: the next read sees other writers
        return row

    def ok_to_continue(self):
        if self.stop is not None and self.stop.is_set():
            return False
        row = self._status()
        return row is not None and row.status == "running" and (self.token is None or row.job_token == self.token)

    _checked_at = 0.0

    def may_start(self):
        """Asked before starting items: not after SIGTERM, nor once the run left `running`.
        The run's row is read at most every STATUS_EVERY s (a pause is seen well within the
        second the contract allows), not once per item started: at 16-32 calls in flight
        the job's own thread is the bottleneck, and every round trip counts."""
        if _shutdown_requested or (self.stop is not None and self.stop.is_set()):
            return False
        now = time.monotonic()
        if now - self._checked_at < STATUS_EVERY:
            return True
        self._checked_at = now
        if not self.holds_exec_lock():
            self._lost()
            return False
        return self.ok_to_continue()

    def holds_exec_lock(self, strict=False):
        """Renew the run's exec lock (or take it back if it lapsed and nobody took it): False
        when another job holds it. Asked with every status read before calls start, so a call
        is only ever started within STATUS_EVERY of a renewal that gave the lock a whole lease;
        the heartbeat alone would notice a lapsed lease (a job stalled for longer than its TTL
        before its heartbeat began, a stopped process) only at its next beat, and in between
        this job's calls could overlap the next job's.

        Not `strict`, an unreachable Redis (or a job without the lock) does not stop the job:
        its token-guarded writes still decide, as with the heartbeat. `strict` (before writing
        what only the lock's holder may write) answers True only when Redis confirms it."""
        lock = getattr(self, "exec_lock", None)
        if lock is None:
            return not strict
        try:
            if lock.hold():
                return True
        except redis.RedisError:
            return not strict
        if not strict:
            log.warning("run %s: exec lock held by another job; this job stops", self.run_id)
        return False

    def _lost(self):
        """The heartbeat found the run paused, cancelled or taken over: start nothing more."""
        if self.stop is not None:
            self.stop.set()

    # -- the step ----------------------------------------------------------------------
    def step(self):
        from .service import run_logger
        if not self.ok_to_continue():
            return "not running"
        self.exec_lock = TTLLock(self.r, exec_lock_key(self.run_id), max(2, self.stale_seconds))
        waited = self.wait_for_exec_lock()
        if waited is not True:
            return waited
        # Objects this job loaded stay usable after each item's commit: every write goes
        # through guarded SQL updates, so nothing relies on reloading them (one SELECT less
        # per attribute per item). The session is removed when the job ends.
        db.session().expire_on_commit = False
        beat = None
        try:
            self.run = db.session.get(AutomationRun, self.run_id)
            logging_setup.bind(run_id=self.run_id, site_id=self.run.site_id)
            self.logger = run_logger(self.run)
            self._continue_after_interrupt()
            self.cfg = db.session.execute(select(AutomationConfig).where(
                AutomationConfig.site_id == self.run.site_id)).scalar_one()
            self.provider = get_provider(self.app.config)
            self.pool = concurrency.CallPool(self.concurrency(), name=f"run{self.run_id}-ai")
            self.stop = self.pool.stop
            scope = limiter_scope(self.app.config)
            self.gate = ProviderGate(
                SharedLimiter(self.r, self.app.config.get("AI_MAX_RPM"), scope),
                self.stop, max_attempts=self.max_attempts,
                pause_after=self.app.config.get("AI_RATE_LIMIT_PAUSE_AFTER", 600),
                window=window_for(scope, MAX_CONCURRENCY) if self.app.config.get("AI_ADAPTIVE_CONCURRENCY", 1) else None,
                note=self._note)
            beat = Heartbeat(self.app, self.run_id, self.token, self.exec_lock,
                             site_lock(self.r, self.run.site_id, site_lock_ttl(self.app), run_id=self.run_id),
                             interval_for(self.stale_seconds), self._lost)
            beat.start()
            try:
                outcome = self._step()
            finally:
                self.pool.close()
                beat.stop()
            # Queued only now that this job's threads are done: the next job never overlaps
            # them, and a kill from here on leaves a queued job (no recovery needed).
            if self._queue_next:
                self.enqueue_next(delay=self._next_delay)
            return outcome
        except Stop:
            db.session.rollback()
            return "stopped"
        finally:
            if beat is not None:
                beat.stop()
            try:  # a cancel may have raced with our last save of the stage result
                close_stage_if_ended(self.run_id)
            except Exception:  # the database is failing: recovery or the next job closes it
                db.session.rollback()
                log.warning("run %s: could not close its stage record", self.run_id)
            try:
                self.exec_lock.release()
            except Exception:  # redis down: the lock expires by itself
                pass
            if getattr(self, "logger", None) is not None:
                self.logger.close()

    def contended(self):
        try:
            return dispatch.contended(self.r, self.app.config["RQ_QUEUE"], self.run.account_id)
        except redis.RedisError:
            return False

    def _note(self, message):
        """A wait or retry of an AI call (pool threads): one line in the run's log."""
        self.logger.log(message, stage=self._stage_n)

    def concurrency(self):
        return max(1, min(MAX_CONCURRENCY, int(getattr(self.cfg, "ai_concurrency", None) or 1)))

    _queue_next = False
    _next_delay = 0

    def queue_next_on_exit(self, delay=0):
        """The next batch is queued once this job's threads are done (see step); with a
        delay (the site's pause between batches or stages) it waits in fair dispatch, not in
        this worker, which is free for other runs meanwhile."""
        self._queue_next, self._next_delay = True, delay

    def wait_for_exec_lock(self):
        """True once this job holds the run's exec lock; else why it left.

        The lock is busy when the job before this one is still finishing its item (e.g. the
        run was paused and resumed while an AI call was in flight: that old job stops at the
        item's end, on the token). Giving up would strand the run until the stale check, so
        this job waits while it is still the run's current job; after LOCK_WAIT seconds it
        queues itself again (freeing this worker for other runs) rather than block it for a
        whole slow item. A duplicate job (not the run's latest) leaves: one chain per run."""
        # Shorter than the lock's TTL: a job never sits out a live holder's whole lease.
        deadline = time.monotonic() + min(LOCK_WAIT, max(1.0, self.stale_seconds / 2))
        next_check = 0.0
        while not self.exec_lock.acquire():
            now = time.monotonic()
            if now >= next_check:
                next_check = now + 1.0
                if not self.ok_to_continue():
                    return "not running"
                if self.superseded():
                    log.info("run %s: a newer job of this run is queued; leaving it", self.run_id)
                    return "superseded"
            if now > deadline:
                log.info("run %s: the previous job is still finishing its item; queued again", self.run_id)
                return "requeued" if self.enqueue_next() else "locked"
            time.sleep(0.05)
        return True

    def superseded(self):
        job = get_current_job()
        latest = self.r.get(jobs.job_key(self.run_id))
        return job is not None and latest is not None and latest.decode() != job.id

    def enqueue_next(self, delay=0):
        try:
            jobs.enqueue_step(self.r, self.run_id, self.token, delay=delay,
                              account_id=getattr(getattr(self, "run", None), "account_id", None) or self.account_id)
            return True
        except redis.RedisError as e:
            # The chain breaks here; the stale-run check continues the run once Redis is back.
            log.warning("run %s: could not queue the next batch (%s)", self.run_id, e.__class__.__name__)
            return False

    def _step(self):
        run, n = self.run, self.run.current_stage
        self._stage_n = n  # a plain int for the call threads' log lines (no ORM access there)
        stage = STAGES[n]
        res = self.res = dict(run.stage_result(n) or {})
        scope = scope_for(run)
        if not res:
            total = scope.count(stage, run.site_id)
            res = {"status": "running", "items_total": total, "items_processed": 0, "items_created": 0,
                   "items_failed": 0, "credits_used": 0, "started_at": iso(utcnow()), "finished_at": None,
                   "failures": []}
            self._save(n, res)
            db.session.commit()
            self.res = res
            self.logger.log(f"Stage {n} ({stage.name}) started: {total} pending", stage=n)
        failed = select(RunItemFailure.item_id).where(RunItemFailure.run_id == run.id, RunItemFailure.stage == n)
        bs = self.cfg.batch_size(n) if n <= 6 else STAGE_7_BATCH
        # With more calls allowed in flight than a batch holds, a job takes enough units to
        # fill them: `ai_concurrency` batches in stage 1 (one call per batch), else items.
        width = self.concurrency() if stage.function else 1
        take = bs * width if stage.batched else max(bs, width)
        pending = scope.pending(stage, run.site_id).where(stage.model.id.not_in(failed)).order_by(stage.model.id)
        items = db.session.execute(pending.limit(take + UP_NEXT)).scalars().all()
        batch, upcoming = items[:take], items[take:]
        if not batch:
            return self._finish_stage(n, stage, self.res)
        up_next = [stage.label(i) for i in upcoming]
        units = stage.units(batch, bs)
        taken = [batch[-1].id]
        # With no delay between batches, the job goes on with the next batches of the stage
        # for up to JOB_SLICE_SECONDS, its calls' window kept full across batch boundaries
        # (ending every batch by draining the window and starting a new job cost ~40 % of the
        # wall time at 16 calls in flight). The slice ends at a batch boundary; then the next
        # job is queued as after any batch, so runs sharing a worker still take turns.
        slice_end = self.began + self.app.config.get("JOB_SLICE_SECONDS", 0)

        def refill():
            if self.cfg.within_stage_delay or time.monotonic() >= slice_end or self.stop.is_set():
                return []
            if self.contended():  # another account waits for a worker: end the slice here
                return []
            found = db.session.execute(pending.where(stage.model.id > taken[0]).limit(take + UP_NEXT)).scalars().all()
            db.session.commit()  # no transaction stays open while calls are in flight
            more, later = found[:take], found[take:]
            if not more:
                return []
            taken[0] = more[-1].id
            up_next[:] = [stage.label(i) for i in later]
            return stage.units(more, bs)
        self._remaining = max(0, self.res["items_total"] - self.res["items_processed"] - self.res["items_failed"])

        published = [0.0]

        def on_started(active, _waiting):
            # One commit per round of starts: no transaction stays open while calls are in flight.
            db.session.commit()
            now = time.monotonic()
            if now - published[0] < PUBLISH_EVERY:
                return
            published[0] = now
            labels = [stage.label(i) for u in active for i in u][:50]
            publish_state(self.r, run.id, build_state(n, stage.name, self.res["items_total"],
                                                      self.res["items_processed"], labels, up_next, self._remaining))

        outcome = concurrency.run_in_order(
            units, width, start=lambda slot: self._start(stage, slot), finish=lambda slot: self._finish(n, stage, slot),
            may_start=self.may_start, still_running=self.may_start, on_started=on_started, stop=self.stop,
            refill=refill)
        if self._paused_here:
            publish_state(self.r, run.id, None)
            return "paused"
        publish_state(self.r, run.id, build_state(n, stage.name, self.res["items_total"],
                                                  self.res["items_processed"], [], up_next, self._remaining))
        if _shutdown_requested and self._status_running():
            self._interrupted()
            self.queue_next_on_exit()  # hand the rest back to another worker
            return "handed back"
        if outcome == "stopped" or not self.ok_to_continue():
            publish_state(self.r, run.id, None)
            return "stopped"
        self.queue_next_on_exit(delay=self.cfg.within_stage_delay if upcoming else 0)
        return "batch done"

    _paused_here = False
    _stage_n = None

    def _interrupted(self):
        """A clean stop (SIGTERM): recorded as such, and until a worker takes the run again it
        is not working time (insights.interrupt_intervals)."""
        system_event(self.run, "interrupt", "worker stopped (SIGTERM); the run continues on the next worker")
        db.session.commit()
        self.logger.log("Worker stopped (SIGTERM): the items in flight were finished, the rest waits for the next worker")

    def _continue_after_interrupt(self):
        """The first job after a clean stop closes the interruption (one indexed read per job)."""
        last = db.session.execute(select(RunEvent.action).where(RunEvent.run_id == self.run_id)
                                  .order_by(RunEvent.id.desc()).limit(1)).scalar()
        if last == "interrupt":
            system_event(self.run, "continue", "a worker took the run again")
            db.session.commit()
            self.logger.log("Run continued by a worker after a clean stop")
        else:
            db.session.commit()

    def _status_running(self):
        row = self._status()
        return row is not None and row.status == "running" and (self.token is None or row.job_token == self.token)

    # -- one unit: start (prepare + call) and finish (commit, retry or record) -------------
    def _start(self, stage, slot):
        slot.ctx = StageContext(self.run, self.provider, self.app)
        slot.request = stage.prepare(slot.ctx, slot.unit)
        if stage.function is None:
            slot.future = concurrency.done_future(None)
        else:
            slot.future = self.pool.submit(self.gate.call, lambda: stage.call(self.provider, slot.request))

    def _finish(self, n, stage, slot):
        unit, attempt = slot.unit, slot.attempt + 1
        ids = [i.id for i in unit]
        error = slot.future.exception()  # the future is done
        if error is not None:
            return self._call_failed(n, stage, slot, attempt, error)
        ctx = StageContext(self.run, self.provider, self.app)
        # Stopping: an answer that arrived is applied as it is (it was billed), never asked again.
        ctx.accept_stale = self.stop.is_set()
        verdict = self._apply(n, stage, slot, attempt, ids, unit, ctx, slot.future.result())
        if verdict == concurrency.NEXT and ctx.budget_reached is not None:
            # The answer was billed, so it was kept and charged past the budget; the pause
            # applies to the calls not yet sent (those in flight are still finished and kept).
            if not self._paused_here:
                e = ctx.budget_reached
                self._pause(e.reason, f"Paused: {e}. Raise or remove the budget to resume.")
            return concurrency.STOP
        return verdict

    def _call_failed(self, n, stage, slot, attempt, e):
        if isinstance(e, Interrupted):
            return concurrency.DROP
        if isinstance(e, ProviderUnavailable):
            if self.stop.is_set():  # stopping already (paused by an earlier call, ...): no answer, no trace
                return concurrency.DROP
            if isinstance(e, RateLimitExhausted):
                self._pause("AI provider rate limit", f"Paused: AI provider rate limit ({e}). "
                            f"Resume later, or lower AI_MAX_RPM / ai_concurrency.")
            else:
                self._pause("AI provider unavailable", f"Paused: AI provider unavailable ({e}). Resume when it is back.")
            return concurrency.STOP
        return self._attempt_failed(n, stage, slot, attempt, e)  # ItemError or a bad output for this item only

    def _apply(self, n, stage, slot, attempt, ids, unit, ctx, result):
        try:
            created = stage.apply(ctx, unit, slot.request, result)
            new = self._count(self.res, len(unit), created, ctx.unit_credits)
            if not self._save(n, new, credits=ctx.unit_credits, answer=True):
                db.session.rollback()  # the run was cancelled or taken over: no trace
                self.stop.set()
                return concurrency.DROP
            # The line before the commit: a worker killed between the two then leaves an item
            # not done with a line (it is redone and logged again), never a done item without one.
            labels = [stage.label(i) for i in unit]
            what = (f"{len(ids)} {stage.item_type}s from '{labels[0][:60]}'" if len(ids) > 1
                    else f"{stage.item_type} {ids[0]} '{labels[0][:80]}'")
            self.logger.log(f"{what}: ok, {created} created, {ctx.unit_credits} credits", stage=n)
            try:
                db.session.commit()
            except Exception as e:
                self.logger.log(f"{what}: not saved ({e.__class__.__name__}), the ok above does not count: "
                                f"it will be redone", stage=n)
                raise
            metrics.items_processed(n, len(unit), ctx.unit_credits)
        except AlreadyDone:
            db.session.rollback()
            self.logger.log(f"{stage.item_type} {ids[0]}: already processed elsewhere, skipped", stage=n)
            return concurrency.NEXT
        except Stale:
            db.session.rollback()
            return concurrency.REDO
        except BudgetReached as e:  # a charge made without on_budget_reached (StageContext always
            # passes it, keeping a billed answer past the budget): rolled back whole, redone on resume
            db.session.rollback()
            self._pause(e.reason, f"Paused: {e}. Raise or remove the budget to resume.")
            return concurrency.STOP
        except InsufficientCredits as e:
            db.session.rollback()
            self._pause("insufficient credits", f"Paused: insufficient credits (needed {e.needed}, "
                        f"available {e.available}). Top up and resume.")
            return concurrency.STOP
        except DBAPIError as e:
            db.session.rollback()
            if isinstance(e, IntegrityError):
                return self._attempt_failed(n, stage, slot, attempt, e, f"conflict: {e.orig.__class__.__name__}")
            raise  # the database itself is failing: let RQ record it; recovery continues the run
        except Exception as e:
            db.session.rollback()
            return self._attempt_failed(n, stage, slot, attempt, e)
        self.res = new
        self._remaining = max(0, self._remaining - len(unit))
        return concurrency.NEXT

    def _attempt_failed(self, n, stage, slot, attempt, e, reason=None):
        ids = [i.id for i in slot.unit]
        reason = reason or (str(e) if isinstance(e, ItemError) else f"{e.__class__.__name__}: {e}")
        log.warning("run %s stage %s item %s attempt %s failed: %s", self.run_id, n, ids[0], attempt, reason)
        if attempt < self.max_attempts:
            if not isinstance(e, IntegrityError):
                self.logger.log(f"{stage.item_type} {ids[0]}: attempt {attempt} failed: {reason[:200]}", stage=n)
            return concurrency.RETRY
        # Out of attempts: record the failure and go on with the next item.
        for item_id in ids:
            db.session.add(RunItemFailure(account_id=self.run.account_id, site_id=self.run.site_id,
                                          run_id=self.run_id, stage=n, item_id=item_id, reason=reason[:1000],
                                          attempts=self.max_attempts))
        res = dict(self.res)
        res["items_failed"] += len(ids)
        res["failures"] = (res.get("failures") or [])[-19:] + [{"item_id": ids[0], "reason": reason[:300]}]
        if not self._save(n, res):
            db.session.rollback()
            self.stop.set()
            return concurrency.DROP
        db.session.commit()
        metrics.items_failed(n, len(ids))
        self.res = res
        self._remaining = max(0, self._remaining - len(ids))
        self.logger.log(f"{stage.item_type} {ids[0]}: FAILED after {self.max_attempts} attempts: {reason[:200]}", stage=n)
        return concurrency.NEXT

    def _count(self, res, processed, created, credits):
        res = dict(res)
        res["items_processed"] += processed
        res["items_created"] += created
        res["credits_used"] += credits
        return res

    def _save(self, n, res, credits=0, answer=False, **extra):
        """Write stage n's result (and the heartbeat) inside the current transaction.
        Guarded by the job's token: False (nothing written) once the run was cancelled or
        taken over by another job, so that job's work is never overwritten; `answer` (an AI
        answer's output and charge) is still written to a cancelled run: it was billed.

        An answer is also written after a pause and resume gave the run a new token while its
        call was out, as long as this job still holds the run's exec lock and the run has not
        ended: the resumed job cannot start (it waits for that lock, and reads the pending
        items only once it holds it), so the item is done once, by this job, and the
        provider is not billed for it a second time."""
        values = {f"stage_{n}_result": res, "heartbeat_at": utcnow(), "recovery_attempts": 0, **extra}
        if credits:
            values["total_credits_used"] = AutomationRun.total_credits_used + credits
        q = update(AutomationRun).where(AutomationRun.id == self.run_id)
        if self.token is not None and not answer:
            q = q.where(AutomationRun.job_token == self.token)
        elif self.token is not None:
            # A cancel ends the run (token cleared) while answers may still arrive: those the
            # provider billed are kept and charged. Nothing else works on a cancelled run.
            q = q.where(or_(AutomationRun.job_token == self.token,
                            and_(AutomationRun.status == "cancelled", AutomationRun.job_token.is_(None))))
        saved = db.session.execute(q.values(**values), execution_options={"synchronize_session": False}).rowcount == 1
        if saved or not answer or self.token is None or not self.holds_exec_lock(strict=True):
            return saved
        # Paused and resumed (new token) while the call was out: the exec lock, renewed just
        # now with a whole lease (and kept by the heartbeat until this job's threads are
        # done), keeps the resumed job from starting until this answer is committed.
        q = update(AutomationRun).where(AutomationRun.id == self.run_id,
                                        AutomationRun.status.in_(("running", "paused")))
        return db.session.execute(q.values(**values), execution_options={"synchronize_session": False}).rowcount == 1

    def _pause(self, reason, message):
        self._paused_here = True
        if self.stop is not None:
            self.stop.set()
        res = db.session.execute(update(AutomationRun).where(AutomationRun.id == self.run_id, AutomationRun.status == "running")
                                 .values(status="paused", paused_at=utcnow(), pause_reason=reason, error_message=message))
        if res.rowcount:  # the audit row commits with the pause itself
            system_event(self.run, "pause", reason)
        db.session.commit()
        self.logger.log(message)
        if res.rowcount:
            db.session.refresh(self.run)
            hooks.emit("run.paused", self.run, "system", reason)
            if "budget" in reason:
                self._resume_if_budget_raised()

    def _resume_if_budget_raised(self):
        """An owner who raised the budget between the charge that reached it and the pause's
        commit found the run still running, so the raise resumed nothing: the budget is
        checked again now that the pause is committed (whichever of the two reads the other's
        commit resumes it; a second resume is refused as the run is no longer paused)."""
        from ..errors import AppError
        from .budgets import over_budget
        from .service import AutomationService
        try:
            db.session.refresh(self.run)
            if self.run.status != "paused" or over_budget(self.run):
                db.session.commit()
                return
            db.session.commit()
            AutomationService(self.run.account_id, actor="system").resume(self.run_id, reason="monthly budget raised")
        except AppError as e:  # resumed by the owner's raise meanwhile, or changed state
            db.session.rollback()
            log.info("run %s: not resumed after its budget pause: %s", self.run_id, e)

    def _finish_stage(self, n, stage, res):
        res = dict(res)
        # Per-stage credits are the AITaskLog rows' sum: the ledger is the truth.
        res["credits_used"] = db.session.execute(select(func.coalesce(func.sum(AITaskLog.credits), 0)).where(
            AITaskLog.run_id == self.run_id, AITaskLog.stage == n)).scalar()
        res["status"] = "skipped" if res["items_processed"] == 0 and res["items_failed"] == 0 else "completed"
        res["finished_at"] = iso(utcnow())
        if n == 7:
            if not self._save(n, res):
                db.session.rollback()
                raise Stop()
            ended = utcnow()
            db.session.refresh(self.run)
            note = outcome_note(self.run, res)  # charged but no article: the run says why
            done = db.session.execute(update(AutomationRun).where(
                AutomationRun.id == self.run_id, AutomationRun.status == "running").values(
                **end_values(self.run, "completed", ended, completed_at=ended),
                **({"error_message": note} if note else {})))
            db.session.commit()
            self.logger.log(f"Stage 7 ({stage.name}) {res['status']}: {res['items_processed']} processed", stage=n)
            if done.rowcount:
                from .service import finish_side_effects
                db.session.refresh(self.run)
                self.logger.log(f"Run completed: {self.run.total_credits_used} credits used")
                if note:
                    self.logger.log(note)
                finish_side_effects(self.run)
                hooks.emit("run.completed", self.run, "system")
            return "completed"
        if not self._save(n, res, current_stage=n + 1):
            db.session.rollback()
            raise Stop()
        db.session.commit()
        self.logger.log(f"Stage {n} ({stage.name}) {res['status']}: {res['items_processed']} processed, "
                        f"{res['items_created']} created, {res['items_failed']} failed, "
                        f"{res['credits_used']} credits", stage=n)
        publish_state(self.r, self.run_id, build_state(n + 1, STAGES[n + 1].name, 0, 0, [], [], 0))
        # The delay spaces out work: none after a stage that had nothing to do, nor before one
        # that has nothing (a retry run steps through several empty stages).
        delay = self.cfg.between_stage_delay
        if delay and res["status"] != "skipped" and scope_for(self.run).count(STAGES[n + 1], self.run.site_id):
            self.logger.log(f"Between-stage delay: {delay} s before stage {n + 1}", stage=n)
            self.queue_next_on_exit(delay=delay)
        else:
            self.queue_next_on_exit()
        return "stage done"
