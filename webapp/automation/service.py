"""AutomationService: the one owner of the run lifecycle, for the API, the UI, the CLI and
the scheduler alike. Every lookup is scoped by the caller's account: another account's
site or run is a NotFound, indistinguishable from a missing one."""
import json
import uuid

import redis
from flask import current_app
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from .. import audit
from ..errors import BadRequest, NotFound, Unavailable
from ..extensions import db
from ..models import (ACTIVE_STATUSES, Account, AutomationConfig, AutomationRun, Cluster, Keyword, RunEvent,
                      RunItemFailure, Site)
from ..models.base import iso, utcnow
from ..redis_conn import get_redis
from ..storage import StoreError
from ..writer.review import awaiting_review
from . import billing, costs, hooks, insights, jobs, limits, schedule
from .closing import end_values
from .config_schema import validate_update
from .locks import site_lock, site_lock_ttl
from .logger import AutomationLogger, check_log_kept, run_log
from .scope import ALL, RetryScope, scope_for
from .stages import STAGES
from .stages import pending_counts as stage_pending_counts
from .state import publish_state, read_state, reconcile
from . import budgets  # monthly budgets: the start and resume checks

HISTORY_LIMIT = 20
FAILED_PER_PAGE = 50
ETA_HISTORY_RUNS = 10
ETA_INPUTS_TTL = 2.0
OVERVIEW_TTL = 1.0
PAST = {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}


def run_logger(run):
    try:
        client = get_redis()
    except RuntimeError:
        client = None
    return AutomationLogger(current_app.config["LOG_DIR"], run, client)


class AutomationService:
    def __init__(self, account_id, actor="system"):
        self.account_id = int(account_id)
        self.actor = actor

    # -- lookups ------------------------------------------------------------------
    def site(self, site_id):
        site = db.session.execute(
            select(Site).where(Site.id == site_id, Site.account_id == self.account_id)).scalar_one_or_none()
        if site is None:
            raise NotFound(f"Site {site_id} not found.")
        return site

    def run(self, run_id):
        run = db.session.execute(select(AutomationRun).where(
            AutomationRun.id == run_id, AutomationRun.account_id == self.account_id)).scalar_one_or_none()
        if run is None:
            raise NotFound(f"Run {run_id} not found.")
        return run

    def account(self):
        return db.session.get(Account, self.account_id)

    # -- config -------------------------------------------------------------------
    def config(self, site_id):
        site = self.site(site_id)
        cfg = db.session.execute(select(AutomationConfig).where(AutomationConfig.site_id == site.id)).scalar_one_or_none()
        if cfg is None:
            cfg = AutomationConfig(account_id=site.account_id, site_id=site.id)
            db.session.add(cfg)
            try:
                db.session.commit()
            except IntegrityError:  # created by a concurrent first read
                db.session.rollback()
                cfg = db.session.execute(select(AutomationConfig).where(AutomationConfig.site_id == site.id)).scalar_one()
        return cfg

    def config_dict(self, cfg):
        d = cfg.to_dict()
        site = db.session.get(Site, cfg.site_id)
        d["timezone"] = site.timezone
        d["next_runs"] = [schedule_iso(t) for t in self.upcoming_slots(cfg, site)] if cfg.is_enabled else []
        return d

    def upcoming_slots(self, cfg, site, n=5):
        return schedule.next_slots(utcnow(), cfg.frequency, cfg.scheduled_time, site.timezone, cfg.scheduled_day, n)

    def update_config(self, site_id, data):
        cfg = self.config(site_id)
        site = db.session.get(Site, cfg.site_id)
        clean = validate_update(data, current=cfg.to_dict())
        schedule_changed = any(k in clean for k in ("is_enabled", "frequency", "scheduled_time", "scheduled_day"))
        old = {k: getattr(cfg, k) for k in clean}
        for k, v in clean.items():
            setattr(cfg, k, v)
        changed = {k: [old[k], v] for k, v in clean.items() if old[k] != v}
        if changed:
            audit.record(self.account_id, self.actor, "config.update", site_id=site.id, changes=changed)
        if schedule_changed:
            if cfg.is_enabled:
                if cfg.scheduled_day is None and cfg.frequency != "daily":
                    cfg.scheduled_day = schedule.default_day(cfg.frequency, utcnow(), site.timezone)
                cfg.next_run_at = schedule.next_slot(utcnow(), cfg.frequency, cfg.scheduled_time,
                                                     site.timezone, cfg.scheduled_day)
            else:
                cfg.next_run_at = None
        db.session.commit()
        return cfg

    # -- counts and estimate ------------------------------------------------------------
    def stage_counts(self, site_id):
        """Pending items per stage: one indexed COUNT each."""
        return stage_pending_counts(site_id)

    def pending_counts(self, site_id, scope=ALL):
        """Stage counts plus what the estimate needs (ideas the pending clusters will yield),
        for the items `scope` lets a run take (a retry run: only its source's failed items)."""
        counts = self.stage_counts(site_id) if scope is ALL else scope.counts(site_id)
        return counts, self.pending_inputs(site_id, counts, scope)

    def pending_inputs(self, site_id, counts, scope=ALL):
        """What the estimate needs beyond the stage `counts` already read."""
        pending_clusters = scope.pending(STAGES[2], site_id).with_only_columns(Cluster.id).subquery()
        sizes = db.session.execute(
            # Only the keywords without ideas: a cluster pending for its new keywords yields ideas for those.
            select(func.count(Keyword.id)).where(Keyword.cluster_id.in_(select(pending_clusters.c.id)),
                                                 Keyword.ideas_generated.is_(False))
            .group_by(Keyword.cluster_id)
        ).scalars().all()
        return {
            "keywords": counts[1], "clusters": counts[2],
            "ideas_from_clusters": sum(costs.ideas_for_cluster(n) for n in sizes),
            "ideas": counts[3], "tasks": counts[4], "drafts": counts[5], "images": counts[6], "review": counts[7],
        }

    def estimate(self, site_id):
        site = self.site(site_id)
        _, p = self.pending_counts(site.id)
        return self.estimate_from(p, site.id)

    def estimate_from(self, p, site_id=None):
        """The estimate for pending counts `p` already read (see pending_counts), with what is
        left of the monthly budgets that apply (the site's too, with site_id)."""
        est = costs.estimate(p)
        required = costs.required_for_start(est)
        balance, held, available = billing.credit_position(self.account_id)
        return {"estimated_credits": est, "required_credits": required, "current_balance": balance,
                "held": held, "available": available, "sufficient": available >= required,
                "stages": costs.estimate_stages(p), "budgets": (left := budgets.budgets_for(self.account_id, site_id)),
                "within_budgets": all(required <= b["left"] for b in left)}

    def pipeline_overview(self, site_id, fresh=False):
        """Pending items per stage. Cached for OVERVIEW_TTL seconds per (account, site): every
        open page polls it, and on a 1M-keyword site the counts cost ~45 ms of database time.
        `fresh=True` for decisions (may a run start?) rather than display."""
        from .countcache import generation  # an import or review makes the cached value a miss
        key = f"automation:overview:{self.account_id}:{int(site_id)}:{generation(site_id)}"
        try:
            cached = None if fresh else get_redis().get(key)
        except Exception:  # redis down: compute
            cached = None
        if cached:
            return json.loads(cached)
        counts = stage_pending_counts(site_id, account_id=self.account_id)
        if counts is None:
            raise NotFound(f"Site {site_id} not found.")
        overview = overview_rows(counts)
        overview[-1]["awaiting_review"] = awaiting_review(site_id, self.account_id)
        try:
            get_redis().set(key, json.dumps(overview), px=int(OVERVIEW_TTL * 1000))
        except Exception:
            pass
        return overview

    # -- runs ---------------------------------------------------------------------------
    def current_run(self, site_id):
        """The site's active run or None; one query on the common path (a status route
        polled by every open page), the site check only when there is no active run."""
        run = self.active_run(site_id)
        if run is None:
            self.site(site_id)
        return run

    def active_run(self, site_id):
        return db.session.execute(select(AutomationRun).where(
            AutomationRun.site_id == site_id, AutomationRun.account_id == self.account_id,
            AutomationRun.status.in_(ACTIVE_STATUSES))).scalar_one_or_none()

    def history(self, site_id, limit=HISTORY_LIMIT):
        return self.history_page(site_id, limit=limit)[0]

    def history_page(self, site_id, page=1, limit=HISTORY_LIMIT, status=None, trigger_type=None):
        """(runs newest first, total matching) for one page of the site's history."""
        site = self.site(site_id)
        where = [AutomationRun.site_id == site.id, AutomationRun.account_id == self.account_id]
        if status:
            where.append(AutomationRun.status == status)
        if trigger_type:
            where.append(AutomationRun.trigger_type == trigger_type)
        total = db.session.execute(select(func.count(AutomationRun.id)).where(*where)).scalar()
        runs = [] if (page - 1) * limit >= total else db.session.execute(  # past the end: no deep OFFSET
            select(AutomationRun).where(*where).order_by(AutomationRun.id.desc())
            .offset((page - 1) * limit).limit(limit)).scalars().all()
        return runs, total

    def events(self, run):
        return db.session.execute(select(RunEvent).where(RunEvent.run_id == run.id).order_by(RunEvent.id)).scalars().all()

    def start(self, site_id, trigger_type="manual", reason=None, scope=ALL):
        site = self.site(site_id)
        self.config(site.id)  # exists, with defaults, before any run reads it
        try:
            r = get_redis()
            lock = site_lock(r, site.id, site_lock_ttl())
            got = lock.acquire()
        except Exception as e:  # redis down: refuse cleanly rather than race
            raise Unavailable(f"Cannot start: Redis unavailable ({e.__class__.__name__}).")
        if not got:
            got = self._take_ended_runs_lock(lock)
        if not got:
            active = self.active_run(site.id)
            if active:
                raise BadRequest(f"A run is already active for this site (run {active.id} is {active.status}).")
            raise BadRequest("A run is already starting for this site; try again in a moment.")
        try:
            run = self._create_run(site, trigger_type, reason, scope)
        except BaseException:
            lock.release()
            raise
        lock.retoken(f"run:{run.id}")
        run_logger(run).log(f"Run started ({trigger_type}) by {self.actor}" + (f": {reason}" if reason else ""))
        if run.status == "queued":
            # No job yet: limits.promote queues its first one when a slot frees.
            run_logger(run).log(f"Run queued ({self._queued_reason}): it starts by itself when a slot frees")
        else:
            jobs.enqueue_step(r, run.id, run.job_token, first=True, account_id=run.account_id,
                              weight=self._weight)
        hooks.emit("run.started", run, self.actor, reason)
        return run

    def _take_ended_runs_lock(self, lock):
        """The site lock is held by a run the database says has ended (its worker was still
        finishing an item when the run was cancelled, and renewed the lock once more): that
        lock guards nothing, so a start takes it over. A lock held by another start in
        progress, or by an active run, is left alone."""
        try:
            holder = lock.holder()
            if holder is None:  # released meanwhile
                return lock.acquire()
        except redis.RedisError as e:
            raise Unavailable(f"Cannot start: Redis unavailable ({e.__class__.__name__}).")
        if not holder.startswith("run:") or not holder[4:].isdigit():
            return False  # another start holds it
        status = db.session.execute(select(AutomationRun.status).where(
            AutomationRun.id == int(holder[4:]))).scalar_one_or_none()
        db.session.commit()  # end the read: the create that follows must see fresh rows
        if status in ACTIVE_STATUSES:
            return False
        try:
            return lock.replace(holder)
        except redis.RedisError as e:
            raise Unavailable(f"Cannot start: Redis unavailable ({e.__class__.__name__}).")

    def _create_run(self, site, trigger_type, reason, scope):
        active = self.active_run(site.id)
        if active:
            raise BadRequest(f"A run is already active for this site (run {active.id} is {active.status}).")
        counts, p = self.pending_counts(site.id, scope)
        if not any(counts.values()):
            if scope.retry_of:
                raise BadRequest(f"Nothing to retry: the failed items of run {scope.retry_of} have been "
                                 "processed since.")
            raise BadRequest("Nothing to process: no stage has pending items (import keywords first).")
        est = costs.estimate(p)
        required = costs.required_for_start(est)
        # The hold decision and the new run's hold commit together under the account lock:
        # of two starts racing for the same credits, the second sees the first's hold.
        db.session.commit()
        try:
            billing.lock_account(self.account_id)
            budgets.check_start(self.account_id, site.id, required, est)  # monthly budgets, same lock
            balance, held, available = billing.credit_position(self.account_id)
            if available < required:
                detail = f" (balance {balance}, held by active runs {held})" if held else ""
                raise BadRequest(f"Insufficient credits: required {required} (estimate {est} x 1.2), "
                                 f"available {available}{detail}.")
            account = self.account()
            # Beyond the account's limit the run is created queued (its credits held all the
            # same): under the account lock, so two starts never both take the last slot.
            self._queued_reason = limits.must_queue(account)
            self._weight = account.weight
        except BaseException:
            db.session.rollback()
            raise
        now = utcnow()
        run = AutomationRun(account_id=site.account_id, site_id=site.id,
                            status="queued" if self._queued_reason else "running", trigger_type=trigger_type,
                            current_stage=1, started_at=now, heartbeat_at=now, started_by=self.actor,
                            job_token=uuid.uuid4().hex, retry_of_run_id=scope.retry_of, credits_hold=required,
                            queued_at=now if self._queued_reason else None)
        db.session.add(run)
        try:
            db.session.flush()
            db.session.add(RunEvent(account_id=site.account_id, site_id=site.id, run_id=run.id, action="start",
                                    actor=self.actor, reason=reason))
            db.session.commit()
        except IntegrityError:
            db.session.rollback()
            raise BadRequest("A run is already active for this site.")
        return run

    def retry_failed(self, run_id, reason=None):
        """Start a run (trigger_type "retry") that processes exactly run `run_id`'s failed items
        again, and what they produce; the same lock and credit rules as any start."""
        source = self.run(run_id)
        active = self.active_run(source.site_id)
        if active:
            raise BadRequest(f"A run is already active for this site (run {active.id} is {active.status}); "
                             "retry once it has finished.")
        if not self.failure_count(source):
            raise BadRequest(f"Run {source.id} has no failed items to retry.")
        if not self.still_failed_count(source):
            raise BadRequest(f"Nothing to retry: the failed items of run {source.id} have been processed since.")
        return self.start(source.site_id, trigger_type="retry", scope=RetryScope(source.id),
                          reason=reason or f"retry the failed items of run {source.id}")

    # -- insights ----------------------------------------------------------------------------
    def failure_count(self, run):
        return db.session.execute(select(func.count(RunItemFailure.id)).where(
            RunItemFailure.run_id == run.id, RunItemFailure.account_id == self.account_id)).scalar()

    def still_failed_count(self, run):
        """The run's failed items that are still pending at the stage where they failed: what a
        retry would take (a retry run that fixed some leaves only the others)."""
        total = 0
        stages = db.session.execute(select(RunItemFailure.stage).where(
            RunItemFailure.run_id == run.id, RunItemFailure.account_id == self.account_id).distinct()).scalars().all()
        for n in stages:
            stage = STAGES[n]
            pending = stage.pending(run.site_id).with_only_columns(stage.model.id)
            total += db.session.execute(select(func.count(RunItemFailure.id)).where(
                RunItemFailure.run_id == run.id, RunItemFailure.stage == n,
                RunItemFailure.item_id.in_(pending))).scalar()
        return total

    def failed_items(self, run, page=1, per_page=FAILED_PER_PAGE):
        """One page of the run's failed items: stage, item id, label, reason, attempts, time."""
        rows = db.session.execute(select(RunItemFailure).where(
            RunItemFailure.run_id == run.id, RunItemFailure.account_id == self.account_id)
            .order_by(RunItemFailure.stage, RunItemFailure.id).offset((page - 1) * per_page).limit(per_page)).scalars().all()
        labels = {}
        for n in {f.stage for f in rows}:  # one query per stage on the page
            stage = STAGES[n]
            ids = [f.item_id for f in rows if f.stage == n]
            for item in db.session.execute(select(stage.model).where(
                    stage.model.id.in_(ids), stage.model.account_id == self.account_id)).scalars():
                labels[(n, item.id)] = stage.label(item)
        return [{"stage": f.stage, "stage_name": STAGES[f.stage].name, "item_type": STAGES[f.stage].item_type,
                 "item_id": f.item_id, "label": labels.get((f.stage, f.item_id), "(deleted)"), "reason": f.reason,
                 "attempts": f.attempts, "failed_at": iso(f.created_at)} for f in rows]

    def run_insights(self, run, events=None, now=None):
        """active_seconds, paused_seconds, eta_seconds and the stage results with
        duration_seconds (see insights.py); `events` if the caller has read them already."""
        now = now or utcnow()
        events = self.events(run) if events is None else events
        intervals = insights.pause_intervals(run, events, now)
        results = insights.stage_results(run, intervals, now)
        out = insights.run_times(run, intervals, now, events)
        out["interrupts"] = insights.interrupt_intervals(run, events, now)
        out["eta_seconds"] = None
        if run.status == "running":
            projected, rates, cfg = self._eta_inputs(run)
            out["eta_seconds"] = insights.eta_seconds(run, results, projected, rates, cfg)
        out["results"] = results
        out["intervals"] = intervals
        return out

    def _eta_inputs(self, run):
        """Projected items per stage and the site's recent per-item rates: a few queries,
        cached ETA_INPUTS_TTL seconds per run since every open page polls the run."""
        cfg = db.session.execute(select(AutomationConfig).where(AutomationConfig.site_id == run.site_id)).scalar_one_or_none()
        key = f"automation:eta:{run.id}:{run.current_stage}"
        try:
            cached = get_redis().get(key)
        except Exception:
            cached = None
        if cached:
            data = json.loads(cached)
            return ({int(k): v for k, v in data["p"].items()}, {int(k): v for k, v in data["r"].items()}, cfg)
        _, p = self.pending_counts(run.site_id, scope_for(run))
        projected = insights.projected_items(p)
        recent = db.session.execute(select(AutomationRun).where(
            AutomationRun.site_id == run.site_id, AutomationRun.status == "completed", AutomationRun.id != run.id)
            .order_by(AutomationRun.id.desc()).limit(ETA_HISTORY_RUNS)).scalars().all()
        rates = insights.observed_rates(recent)
        try:
            get_redis().set(key, json.dumps({"p": projected, "r": rates}), px=int(ETA_INPUTS_TTL * 1000))
        except Exception:
            pass
        return projected, rates, cfg

    def run_dict(self, run, events=None):
        """The API's run: to_dict() plus the insights (durations, active/paused time, ETA)."""
        d = run.to_dict()
        ins = self.run_insights(run, events)
        for n, r in ins["results"].items():
            d[f"stage_{n}_result"] = r
        d.update(active_seconds=ins["active_seconds"], paused_seconds=ins["paused_seconds"],
                 interrupted_seconds=ins["interrupted_seconds"],
                 eta_seconds=ins["eta_seconds"], retry_of_run_id=run.retry_of_run_id)
        d["queue_position"], d["queued_reason"] = limits.queue_info(run)
        return d

    def summaries(self, runs, now=None):
        """History rows: summary() plus active/paused seconds (one events query for all)."""
        now = now or utcnow()
        by_run = {}
        if runs:
            for e in db.session.execute(select(RunEvent).where(RunEvent.run_id.in_([r.id for r in runs]))
                                        .order_by(RunEvent.id)).scalars():
                by_run.setdefault(e.run_id, []).append(e)
        out = []
        for run in runs:
            d = run.summary()
            events = by_run.get(run.id, [])
            d.update(insights.run_times(run, insights.pause_intervals(run, events, now), now, events))
            out.append(d)
        return out

    def _transition(self, run_id, action, allowed_from, values, reason=None):
        run = self.run(run_id)
        verb = PAST[action]
        if run.status not in allowed_from:
            raise BadRequest(f"Run {run.id} is {run.status} and cannot be {verb}.")
        if callable(values):
            values = values(run)
        # Conditional: a worker that finished the run a moment ago wins, and we report it.
        res = db.session.execute(update(AutomationRun).where(
            AutomationRun.id == run.id, AutomationRun.status == run.status).values(**values))
        if res.rowcount != 1:
            db.session.rollback()
            db.session.refresh(run)
            raise BadRequest(f"Run {run.id} changed state to {run.status} meanwhile; try again.")
        db.session.add(RunEvent(account_id=run.account_id, site_id=run.site_id, run_id=run.id, action=action,
                                actor=self.actor, reason=reason))
        db.session.commit()
        db.session.refresh(run)
        run_logger(run).log(f"Run {verb} by {self.actor}" + (f": {reason}" if reason else ""))
        if action != "resume":  # resume is emitted once its job is queued
            hooks.emit(f"run.{verb}", run, self.actor, reason)
        return run

    def pause(self, run_id, reason=None):
        now = utcnow()
        return self._transition(run_id, "pause", ("running",),
                                {"status": "paused", "paused_at": now,
                                 "pause_reason": (reason or "paused by user")[:255]},
                                reason)

    def resume(self, run_id, reason=None):
        paused = self.run(run_id)
        over = budgets.over_budget(paused) if paused.status == "paused" else None
        if over:
            raise BadRequest(f"Run {paused.id} cannot be resumed: {over}. Raise or remove the budget first.")
        token = uuid.uuid4().hex
        run = self._transition(run_id, "resume", ("paused",),
                               {"status": "running", "resumed_at": utcnow(), "heartbeat_at": utcnow(),
                                "pause_reason": None, "error_message": None, "job_token": token,
                                "recovery_attempts": 0}, reason)
        r = get_redis()
        site_lock(r, run.site_id, site_lock_ttl(), run_id=run.id).force()
        jobs.enqueue_step(r, run.id, token, account_id=run.account_id)
        hooks.emit("run.resumed", run, self.actor, reason)
        return run

    def cancel(self, run_id, reason=None):
        now = utcnow()
        run = self._transition(run_id, "cancel", ACTIVE_STATUSES,
                               lambda run: end_values(run, "cancelled", now, cancelled_at=now), reason)
        finish_side_effects(run)
        try:  # its job waiting for a worker is of no use now: out of the account's ready list
            jobs.withdraw(get_redis(), run.id, run.account_id)
        except redis.RedisError:  # the job finds its run cancelled and leaves
            current_app.logger.warning("could not withdraw the waiting job of cancelled run %s", run.id)
        return run

    # -- logs and live state ----------------------------------------------------------------
    def log_lines(self, run_id, lines):
        run = self.run(run_id)
        check_log_kept(run)
        return run_log(run).tail(lines)

    def log_page(self, run_id, lines, before=None, after=None):
        """A window of a run's log with line numbers: the last `lines`, the `lines` above line
        `before`, or those after line `after`. `first_line` numbers the first line returned.
        A log deleted by retention answers Gone (410)."""
        run = self.run(run_id)
        check_log_kept(run)
        try:
            return self._log_page(run, lines, before, after)
        except StoreError as e:  # the bucket is unreachable: say so, never a 500
            raise Unavailable(f"The run's log cannot be read right now: {e}")

    def _log_page(self, run, lines, before, after):
        rl = run_log(run)
        if before is not None:
            total = rl.count()
            first, out = rl.read_before(before, lines)
        elif after is not None:
            total = rl.count()
            first, out = rl.read_after(after, lines)
        else:
            total, out = rl.tail_with_total(lines)
            first = max(1, total - len(out) + 1)
        return {"lines": out, "first_line": first, "total_lines": total}

    def current_processing(self, site_id, run_id):
        run = db.session.execute(select(AutomationRun).where(
            AutomationRun.id == run_id, AutomationRun.site_id == site_id,
            AutomationRun.account_id == self.account_id)).scalar_one_or_none()
        if run is None:
            self.site(site_id)  # a missing site is reported as such
            raise NotFound(f"Run {run_id} not found.")
        if run.status != "running":
            return None
        return reconcile(run, STAGES[run.current_stage].name, read_state(get_redis(), run.id))


def overview_rows(counts):
    return [{"number": n, "name": s.name, "pending": counts[n], "uses_ai": s.function is not None,
             "item_type": s.item_type} for n, s in STAGES.items()]


def finish_side_effects(run):
    """A run ended (completed, failed, cancelled): free its site and clear its live state."""
    try:
        r = get_redis()
        site_lock(r, run.site_id, 1, run_id=run.id).release()
        publish_state(r, run.id, None)
    except Exception:  # redis down: the lock has a TTL and the state expires
        current_app.logger.warning("could not release live state for run %s", run.id)
    try:  # with object storage: every line into the store, the live copy left to expire
        run_log(run).finish()
    except Exception:
        current_app.logger.warning("could not finish the log of run %s", run.id)


def schedule_iso(dt):
    return dt.isoformat() + "Z"

