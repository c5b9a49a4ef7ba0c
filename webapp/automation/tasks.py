"""RQ tasks: `run_automation_task(run_id)` and `resume_automation_task(run_id)`.

Each job executes one batch of the run's current stage under the run's exec lock, then
queues the next batch, so any worker can continue any run and a killed worker loses at
most the item it was processing (every item commits on its own).
"""
import logging
import time
from contextlib import nullcontext

import redis
from flask import current_app, has_app_context
from rq import get_current_job
from sqlalchemy import func, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from ..ai import ItemError, ProviderUnavailable, get_provider
from .. import logging_setup, metrics
from ..extensions import db
from ..models import AITaskLog, AutomationConfig, AutomationRun, RunItemFailure
from ..models.base import iso, utcnow
from ..redis_conn import get_redis
from . import hooks, jobs
from .billing import InsufficientCredits, charge
from .closing import close_stage_if_ended, end_values, system_event
from .locks import TTLLock, exec_lock_key, site_lock
from .service import site_lock_ttl
from .scope import scope_for
from .stages import STAGES, AlreadyDone
from .state import build_state, publish_state

log = logging.getLogger(__name__)
UP_NEXT = 3
LOCK_WAIT = 10  # seconds a job waits for its run's exec lock before queuing itself again
STAGE_7_BATCH = 50
_APP = None
_shutdown_requested = False


def request_shutdown(*_):
    """SIGTERM in a worker: finish the item in flight, hand the rest of the batch back."""
    global _shutdown_requested
    _shutdown_requested = True


def _app_context():
    global _APP
    if has_app_context():
        return nullcontext()
    if _APP is None:
        from .. import create_app
        _APP = create_app()
    return _APP.app_context()


def run_automation_task(run_id, token=None):
    return _execute(run_id, token)


def resume_automation_task(run_id, token=None):
    return _execute(run_id, token)


def _execute(run_id, token):
    with _app_context():
        try:
            return RunExecutor(run_id, token).step()
        finally:
            db.session.remove()


class Stop(Exception):
    """The run left `running` (paused, cancelled, taken over): stop at this boundary."""


class StageContext:
    def __init__(self, run, provider, app):
        self.run, self.provider = run, provider
        self.media_dir = app.config["MEDIA_DIR"]
        self.article_words = app.config["AI_ARTICLE_WORDS"]
        self.unit_credits = 0

    def charge(self, stage, item_id, credits, result):
        charge(self.run, stage.number, stage.function, stage.item_type, item_id, credits, result.tokens, result.model)
        self.unit_credits += credits


class RunExecutor:
    def __init__(self, run_id, token):
        self.app = current_app._get_current_object()
        self.run_id, self.token = int(run_id), token
        self.r = get_redis()
        self.stale_seconds = self.app.config["STALE_RUN_SECONDS"]
        self.max_attempts = max(1, self.app.config["ITEM_MAX_ATTEMPTS"])
        self.renew_every = min(1.0, max(2, self.stale_seconds) / 3)
        self.last_renew = 0.0

    # -- control --------------------------------------------------------------------
    def _status(self):
        row = db.session.execute(select(AutomationRun.status, AutomationRun.job_token)
                                 .where(AutomationRun.id == self.run_id)).first()
        db.session.commit()  # end the read transaction: the next read sees other writers
        return row

    def ok_to_continue(self):
        row = self._status()
        return row is not None and row.status == "running" and (self.token is None or row.job_token == self.token)

    def sleep(self, seconds):
        """An interruptible delay: returns False as soon as the run is paused or cancelled."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
            if not self.ok_to_continue() or _shutdown_requested:
                return False
        return True

    def heartbeat(self):
        # Redis locks are renewed at most every `renew_every` seconds (well inside their TTL);
        # the DB heartbeat is written with every item's own transaction (see _save).
        now = time.monotonic()
        if now - self.last_renew < self.renew_every:
            return
        self.last_renew = now
        try:
            if not self.exec_lock.renew():
                # Our lock expired (e.g. Redis restarted): take it again or yield to whoever has it.
                if not self.exec_lock.acquire():
                    raise Stop("exec lock lost")
            site_lock(self.r, self.run.site_id, site_lock_ttl(self.app), run_id=self.run_id).claim()
        except redis.RedisError as e:
            # Redis is down: keep going on the database (the truth, with its guarded updates
            # and the job token); the lock is taken again once Redis answers.
            log.warning("run %s: heartbeat could not reach Redis (%s)", self.run_id, e.__class__.__name__)

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
        try:
            self.run = db.session.get(AutomationRun, self.run_id)
            logging_setup.bind(run_id=self.run_id, site_id=self.run.site_id)
            self.logger = run_logger(self.run)
            self.cfg = db.session.execute(select(AutomationConfig).where(
                AutomationConfig.site_id == self.run.site_id)).scalar_one()
            self.provider = get_provider(self.app.config)
            return self._step()
        except Stop:
            return "stopped"
        finally:
            try:  # a cancel may have raced with our last save of the stage result
                close_stage_if_ended(self.run_id)
            except Exception:  # the database is failing: recovery or the next job closes it
                db.session.rollback()
                log.warning("run %s: could not close its stage record", self.run_id)
            try:
                self.exec_lock.release()
            except Exception:  # redis down: the lock expires by itself
                pass

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

    def enqueue_next(self):
        try:
            jobs.enqueue_step(self.r, self.run_id, self.token)
            return True
        except redis.RedisError as e:
            # The chain breaks here; the stale-run check continues the run once Redis is back.
            log.warning("run %s: could not queue the next batch (%s)", self.run_id, e.__class__.__name__)
            return False

    def _step(self):
        run, n = self.run, self.run.current_stage
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
        items = db.session.execute(scope.pending(stage, run.site_id).where(stage.model.id.not_in(failed))
                                   .order_by(stage.model.id).limit(bs + UP_NEXT)).scalars().all()
        batch, upcoming = items[:bs], items[bs:]
        if not batch:
            return self._finish_stage(n, stage, self.res)
        res = self.res
        remaining = max(0, res["items_total"] - res["items_processed"] - res["items_failed"])
        up_next = [stage.label(i) for i in upcoming]
        for unit in stage.units(batch):
            if _shutdown_requested or not self.ok_to_continue():
                break
            labels = [stage.label(i) for i in unit]
            publish_state(self.r, run.id, build_state(n, stage.name, self.res["items_total"],
                                                      self.res["items_processed"], labels, up_next, remaining))
            outcome = self._process_unit(n, stage, unit)
            if outcome == "stop":
                publish_state(self.r, run.id, None)
                return "paused"
            remaining = max(0, remaining - len(unit))
            self.heartbeat()
        publish_state(self.r, run.id, build_state(n, stage.name, self.res["items_total"],
                                                  self.res["items_processed"], [], up_next, remaining))
        if not self.ok_to_continue():
            publish_state(self.r, run.id, None)
            return "stopped"
        if _shutdown_requested:
            self.enqueue_next()  # hand the rest back to another worker
            return "handed back"
        if upcoming and self.cfg.within_stage_delay and not self.sleep(self.cfg.within_stage_delay):
            return "stopped"
        self.enqueue_next()
        return "batch done"

    def _process_unit(self, n, stage, unit):
        ids = [i.id for i in unit]
        labels = [stage.label(i) for i in unit]
        last_error = None
        for attempt in range(1, self.max_attempts + 1):
            ctx = StageContext(self.run, self.provider, self.app)
            try:
                created = stage.process(ctx, unit)
                new = self._count(self.res, len(unit), created, ctx.unit_credits)
                self._save(n, new, credits=ctx.unit_credits)
                db.session.commit()
                metrics.items_processed(n, len(unit), ctx.unit_credits)
                self.res = new
                what = (f"{len(ids)} {stage.item_type}s from '{labels[0][:60]}'" if len(ids) > 1
                        else f"{stage.item_type} {ids[0]} '{labels[0][:80]}'")
                self.logger.log(f"{what}: ok, {created} created, {ctx.unit_credits} credits", stage=n)
                return "ok"
            except AlreadyDone:
                db.session.rollback()
                self.logger.log(f"{stage.item_type} {ids[0]}: already processed elsewhere, skipped", stage=n)
                return "ok"
            except InsufficientCredits as e:
                db.session.rollback()
                self._pause("insufficient credits", f"Paused: insufficient credits (needed {e.needed}, "
                            f"available {e.available}). Top up and resume.")
                return "stop"
            except ProviderUnavailable as e:
                db.session.rollback()
                last_error = str(e)
                if attempt == self.max_attempts:
                    self._pause("AI provider unavailable", f"Paused: AI provider unavailable ({e}). Resume when it is back.")
                    return "stop"
                self.logger.log(f"{stage.item_type} {ids[0]}: provider unavailable ({e}), retry {attempt}", stage=n)
                if not self.sleep(min(2 ** attempt * 0.5, 10)):
                    raise Stop()
            except DBAPIError as e:
                if isinstance(e, IntegrityError):
                    db.session.rollback()
                    last_error = f"conflict: {e.orig.__class__.__name__}"
                    continue
                raise  # the database itself is failing: let RQ record it; recovery continues the run
            except Exception as e:  # ItemError or a bad output for this item only
                db.session.rollback()
                last_error = f"{e.__class__.__name__}: {e}" if not isinstance(e, ItemError) else str(e)
                log.warning("run %s stage %s item %s attempt %s failed: %s", self.run_id, n, ids[0], attempt, last_error)
                self.logger.log(f"{stage.item_type} {ids[0]}: attempt {attempt} failed: {last_error[:200]}", stage=n)
        # Out of attempts: record the failure and go on with the next item.
        for item_id in ids:
            db.session.add(RunItemFailure(account_id=self.run.account_id, site_id=self.run.site_id,
                                          run_id=self.run_id, stage=n, item_id=item_id, reason=last_error[:1000],
                                          attempts=self.max_attempts))
        res = dict(self.res)
        res["items_failed"] += len(ids)
        res["failures"] = (res.get("failures") or [])[-19:] + [{"item_id": ids[0], "reason": last_error[:300]}]
        self._save(n, res)
        db.session.commit()
        metrics.items_failed(n, len(ids))
        self.res = res
        self.logger.log(f"{stage.item_type} {ids[0]}: FAILED after {self.max_attempts} attempts: {last_error[:200]}", stage=n)
        return "failed"

    def _count(self, res, processed, created, credits):
        res = dict(res)
        res["items_processed"] += processed
        res["items_created"] += created
        res["credits_used"] += credits
        return res

    def _save(self, n, res, credits=0, **extra):
        """Write stage n's result (and the heartbeat) inside the current transaction."""
        values = {f"stage_{n}_result": res, "heartbeat_at": utcnow(), "recovery_attempts": 0, **extra}
        if credits:
            values["total_credits_used"] = AutomationRun.total_credits_used + credits
        db.session.execute(update(AutomationRun).where(AutomationRun.id == self.run_id).values(**values))

    def _pause(self, reason, message):
        res = db.session.execute(update(AutomationRun).where(AutomationRun.id == self.run_id, AutomationRun.status == "running")
                                 .values(status="paused", paused_at=utcnow(), pause_reason=reason, error_message=message))
        if res.rowcount:  # the audit row commits with the pause itself
            system_event(self.run, "pause", reason)
        db.session.commit()
        self.logger.log(message)
        if res.rowcount:
            db.session.refresh(self.run)
            hooks.emit("run.paused", self.run, "system", reason)

    def _finish_stage(self, n, stage, res):
        res = dict(res)
        # Per-stage credits are the AITaskLog rows' sum: the ledger is the truth.
        res["credits_used"] = db.session.execute(select(func.coalesce(func.sum(AITaskLog.credits), 0)).where(
            AITaskLog.run_id == self.run_id, AITaskLog.stage == n)).scalar()
        res["status"] = "skipped" if res["items_processed"] == 0 and res["items_failed"] == 0 else "completed"
        res["finished_at"] = iso(utcnow())
        if n == 7:
            self._save(n, res)
            done = db.session.execute(update(AutomationRun).where(
                AutomationRun.id == self.run_id, AutomationRun.status == "running").values(
                **end_values(self.run, "completed", completed_at=utcnow())))
            db.session.commit()
            self.logger.log(f"Stage 7 ({stage.name}) {res['status']}: {res['items_processed']} processed", stage=n)
            if done.rowcount:
                from .service import finish_side_effects
                db.session.refresh(self.run)
                self.logger.log(f"Run completed: {self.run.total_credits_used} credits used")
                finish_side_effects(self.run)
                hooks.emit("run.completed", self.run, "system")
            return "completed"
        self._save(n, res, current_stage=n + 1)
        db.session.commit()
        self.logger.log(f"Stage {n} ({stage.name}) {res['status']}: {res['items_processed']} processed, "
                        f"{res['items_created']} created, {res['items_failed']} failed, "
                        f"{res['credits_used']} credits", stage=n)
        publish_state(self.r, self.run_id, build_state(n + 1, STAGES[n + 1].name, 0, 0, [], [], 0))
        if self.cfg.between_stage_delay and not self.sleep(self.cfg.between_stage_delay):
            return "stopped"
        self.enqueue_next()
        return "stage done"

