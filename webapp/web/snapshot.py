"""One snapshot of what a page shows about runs: every element that shows run state (site page
panels, run detail page, dashboard rows, the header credit pill) is rendered from the plain
dict built here, first when the page loads and then by the live refresh (`/live/...` routes,
static/js/app.js), so no two numbers on one screen come from different reads.

Numbers come from the database rows (the run row's stage results are committed with each
item); the live processing state in Redis contributes only the names of the items in flight
(see automation.state.reconcile). A snapshot is a plain, JSON-able dict: `version(snapshot)`
fingerprints it so an unchanged page costs the client a 204 and no rendering. To show a new
field, add it in `run_view` / `site_snapshot` and read it in the template.
"""
import hashlib
import json

from sqlalchemy import func, select

from ..automation import insights
from ..automation.countcache import generation, marker, run_with_counts
from ..automation.logger import run_log
from ..automation.service import overview_rows
from ..automation.stages import STAGES
from ..automation.state import percent, read_state, reconcile
from ..extensions import db
from ..models import ACTIVE_STATUSES, AutomationConfig, AutomationRun, RunEvent, RunItemFailure, Site
from ..redis_conn import get_redis
from .insight_view import insight_view, timeline
from ..writer.review import awaiting_review
from ..automation import limits

# Pending counts cost up to ~45 ms on a very large site: a poll reuses them until what they
# depend on changes (automation.countcache: an import, a review, the run's next item) or, as a
# backstop for changes nobody announces, for this long.
COUNTS_TTL_ACTIVE = 3
COUNTS_TTL_IDLE = 10
ACTIONS = {"queued": ["cancel"], "running": ["pause", "cancel"], "paused": ["resume", "cancel"]}


def fmt(dt):
    return dt.strftime("%Y-%m-%d %H:%M:%S") if dt else None


def iso(dt):
    return dt.isoformat() + "Z" if dt else None


def duration(run):
    end = run.completed_at or run.cancelled_at
    if not end or not run.started_at:
        return ""
    secs = int((end - run.started_at).total_seconds())
    return f"{secs // 3600}h {secs % 3600 // 60}m" if secs >= 3600 else f"{secs // 60}m {secs % 60}s"


def stage_rows(run):
    """The seven stage rows of a run, as its run row records them."""
    active = run.status in ACTIVE_STATUSES
    rows = []
    for n, stage in STAGES.items():
        r = run.stage_result(n)
        current = active and n == run.current_stage
        row = {"number": n, "name": stage.name, "uses_ai": stage.function is not None, "current": current,
               "total": None, "processed": 0, "created": 0, "failed": 0, "credits": 0, "percentage": 0.0,
               "finished_at": None, "finished_at_iso": None, "failures": []}
        if not r:
            row["status"] = ("starting" if run.status == "running" else run.status) if current else "waiting"
        else:
            status = r.get("status") or "running"
            if status == "running" and run.status != "running":
                status = run.status  # paused, cancelled or failed in the middle of this stage
            total = r.get("items_total") or 0
            done = (r.get("items_processed") or 0) + (r.get("items_failed") or 0)
            row.update(status=status, total=total, processed=r.get("items_processed") or 0,
                       created=r.get("items_created") or 0, failed=r.get("items_failed") or 0,
                       credits=r.get("credits_used") or 0,
                       percentage=100.0 if status in ("completed", "skipped") else percent(done, total),
                       finished_at=(r.get("finished_at") or "")[:19].replace("T", " ") or None,
                       finished_at_iso=r.get("finished_at"),
                       failures=list(r.get("failures") or []))
        rows.append(row)
    return rows


def run_view(run, with_events=False, svc=None):
    """Everything a page shows about one run (with `svc`: its insights too)."""
    processing = None
    if run.status == "running":
        try:
            state = read_state(get_redis(), run.id)
        except Exception:  # Redis away: numbers still come from the row, names are left out
            state = None
        processing = reconcile(run, STAGES[run.current_stage].name, state)
    view = {
        "id": run.id, "site_id": run.site_id, "status": run.status, "active": run.status in ACTIVE_STATUSES,
        "trigger_type": run.trigger_type, "started_by": run.started_by or "", "retry_of": run.retry_of_run_id,
        "started_at": fmt(run.started_at), "started_at_iso": iso(run.started_at),
        "times": {k: iso(getattr(run, f"{k}_at")) for k in ("paused", "resumed", "cancelled", "completed")},
        "paused_at": fmt(run.paused_at), "resumed_at": fmt(run.resumed_at),
        "cancelled_at": fmt(run.cancelled_at), "completed_at": fmt(run.completed_at),
        "duration": duration(run), "current_stage": run.current_stage,
        "credits_used": run.total_credits_used or 0, "error_message": run.error_message,
        "pause_reason": run.pause_reason, "actions": ACTIONS.get(run.status, []),
        "stages": stage_rows(run), "processing": processing,
    }
    # Why it waits: its account's limit (queued) or other accounts' runs ahead (fair dispatch).
    view["queue_position"], view["queued_reason"] = (
        limits.queue_info(run) if run.status in ACTIVE_STATUSES else (None, None))
    events = None
    if with_events or svc is not None:
        events = db.session.execute(select(RunEvent).where(RunEvent.run_id == run.id).order_by(RunEvent.id)).scalars().all()
    if with_events:
        view["events"] = [{"action": e.action, "actor": e.actor, "reason": e.reason, "at": fmt(e.created_at),
                           "at_iso": iso(e.created_at)} for e in events]
    if svc is not None:
        view["insights"], view["_insights"] = insight_view(svc, run, events)
        view["_events"] = events
    return view


def _counts(svc, site_id, run, fresh):
    """(stage counts, estimate inputs, run) for a site. Cached per (count generation, the latest
    run's progress marker): an import, a review or an item of the run makes the next read a
    miss (automation.countcache). An active run is re-read in the same statement as the counts,
    and that run row is returned: the caller draws the run's panels from it, so the pipeline and
    the run agree on one screen."""
    gen = generation(site_id)
    key = f"automation:snapshot:counts:{svc.account_id}:{int(site_id)}:{gen}:{marker(run)}"
    if not fresh:
        try:
            raw = get_redis().get(key)
            if raw:
                counts, inputs = json.loads(raw)
                return {int(k): v for k, v in counts.items()}, inputs, run
        except Exception:
            pass
    if run is not None and run.status in ACTIVE_STATUSES:
        run, counts = run_with_counts(run.id, site_id)
        key = f"automation:snapshot:counts:{svc.account_id}:{int(site_id)}:{gen}:{marker(run)}"
    else:
        counts = svc.stage_counts(site_id)
    inputs = svc.pending_inputs(site_id, counts)
    try:
        active = run is not None and run.status in ACTIVE_STATUSES
        get_redis().set(key, json.dumps([counts, inputs]), ex=COUNTS_TTL_ACTIVE if active else COUNTS_TTL_IDLE)
    except Exception:
        pass
    return counts, inputs, run


def latest_run(site_id):
    return db.session.execute(select(AutomationRun).where(AutomationRun.site_id == site_id)
                              .order_by(AutomationRun.id.desc()).limit(1)).scalar_one_or_none()


HISTORY_PER_PAGE = 20
RUN_STATUSES = ("queued", "running", "paused", "completed", "failed", "cancelled")
TRIGGERS = ("manual", "api", "scheduled", "retry")


class HistoryQuery:
    """The site page's history filters and page (`?status=&trigger=&page=`); bad values are
    ignored rather than refused: they come from links and selects."""

    def __init__(self, args=None):
        args = args or {}
        self.status = args.get("status") if args.get("status") in RUN_STATUSES else None
        self.trigger = args.get("trigger") if args.get("trigger") in TRIGGERS else None
        try:
            self.page = max(1, min(int(args.get("page", 1)), 100_000))
        except (TypeError, ValueError):
            self.page = 1

    def params(self, **over):
        p = {"status": self.status, "trigger": self.trigger, "page": self.page if self.page > 1 else None}
        p.update(over)
        return {k: v for k, v in p.items() if v}


def history_view(svc, site, q):
    runs, total = svc.history_page(site.id, page=q.page, limit=HISTORY_PER_PAGE, status=q.status,
                                   trigger_type=q.trigger)
    rows = []
    for r, d in zip(runs, svc.summaries(runs)):
        finished = r.status not in ACTIVE_STATUSES
        rows.append({"id": r.id, "status": r.status, "trigger_type": r.trigger_type, "started_by": r.started_by or "",
                     "started_at": iso(r.started_at), "active_seconds": d["active_seconds"] if finished else None,
                     "paused_seconds": d["paused_seconds"] if finished else None,
                     "current_stage": r.current_stage, "credits_used": r.total_credits_used or 0})
    return {"rows": rows, "total": total, "page": q.page, "pages": max(1, -(-total // HISTORY_PER_PAGE)),
            "status": q.status, "trigger": q.trigger, "statuses": RUN_STATUSES, "triggers": TRIGGERS,
            "query": q.params()}


def site_snapshot(svc, site, fresh=False, history=None):
    """The site automation page: current run, estimate and balance, pipeline, history, the
    live log's run. `fresh=True` (a full page load) reads the pending counts now."""
    last = latest_run(site.id)
    counts, inputs, last = _counts(svc, site.id, last, fresh)
    run = last if last is not None and last.status in ACTIVE_STATUSES else None
    estimate = svc.estimate_from(inputs, site.id)
    pipeline = overview_rows(counts)
    start_block = None
    if run:
        start_block = f"Run {run.id} is {run.status}."
    elif not any(s["pending"] for s in pipeline):
        start_block = "Nothing to process: import keywords first."
    elif not estimate["sufficient"]:
        start_block = (f"Not enough credits: this run needs {estimate['required_credits']:,} "
                       f"(estimate × 1.2), you have {estimate['available']:,} available"
                       + (f" ({estimate['held']:,} held by active runs)." if estimate["held"] else "."))
    elif not estimate["within_budgets"]:
        over = next(b for b in estimate["budgets"] if estimate["required_credits"] > b["left"])
        start_block = (f"Over the {'account' if over['scope'] == 'account' else 'site'}'s monthly budget: this run "
                       f"needs {estimate['required_credits']:,}, {over['left']:,} left of {over['budget']:,} this month.")
    skips = db.session.execute(select(RunEvent).where(RunEvent.site_id == site.id, RunEvent.action == "scheduled_skip")
                               .order_by(RunEvent.id.desc()).limit(3)).scalars().all()
    log = {"run_id": run.id, "ws": f"/ws/runs/{run.id}/logs"} if run else None
    return {
        "site": {"id": site.id, "name": site.name, "timezone": site.timezone},
        "run": public(run_view(run, svc=svc)) if run else None,
        "balance": estimate["current_balance"],
        "estimate": estimate,
        "pipeline": pipeline,
        "chart_max": max([s["pending"] for s in pipeline] + [1]),
        "start_block": start_block,
        "skips": [{"at": s.created_at.strftime("%Y-%m-%d %H:%M"), "at_iso": iso(s.created_at), "reason": s.reason}
                  for s in skips],
        "history": history_view(svc, site, history or HistoryQuery()),
        "log": log,
        "awaiting_review": awaiting_review(site.id, svc.account_id),
    }


def public(view):
    """A run view without the objects kept for the caller (not part of the snapshot)."""
    return {k: v for k, v in view.items() if not k.startswith("_")}


def run_snapshot(svc, run):
    """The run detail page: the run with its audit trail and insights, and the balance. The
    timeline SVG is drawn against the clock, so it is left out of the version (VOLATILE)."""
    db.session.refresh(run)
    view = run_view(run, with_events=True, svc=svc)
    svg = timeline(run, view.pop("_insights"), view.pop("_events"))
    return {"run": view, "balance": svc.account().credits, "timeline": svg,
            "site": {"id": run.site_id, "timezone": _timezone(run.site_id)}}


def _timezone(site_id):
    return db.session.execute(select(Site.timezone).where(Site.id == site_id)).scalar() or "UTC"


def log_window(run, lines, rl=None):
    """Where the lines shown on the run page sit in the whole log (for "lines hidden")."""
    total = (rl or run_log(run)).count()
    return {"total": total, "first": max(1, total - len(lines) + 1) if lines else total + 1}


DOTS = 10
DASHBOARD_PER_PAGE = 50


def recent_runs(svc, per_site=DOTS, site_ids=None):
    """{site_id: [the site's last `per_site` runs, newest first]} for the account (or for
    `site_ids` of it), one query."""
    rn = func.row_number().over(partition_by=AutomationRun.site_id, order_by=AutomationRun.id.desc()).label("rn")
    q = select(AutomationRun.id, rn).where(AutomationRun.account_id == svc.account_id)
    if site_ids is not None:
        q = q.where(AutomationRun.site_id.in_(site_ids))
    sub = q.subquery()
    runs = db.session.execute(select(AutomationRun).join(sub, sub.c.id == AutomationRun.id)
                              .where(sub.c.rn <= per_site).order_by(AutomationRun.id.desc())).scalars().all()
    out = {}
    for r in runs:
        out.setdefault(r.site_id, []).append(r)
    return out


def dashboard_snapshot(svc, page=1):
    """The sites dashboard, one row per site: the active run (progress, ETA, pause reason) or
    the last run's result, duration and time; the last ten runs as dots; next slot; pending.
    DASHBOARD_PER_PAGE sites a page: what a load or a poll costs is the page, not the account
    (403 sites whose counts were not cached held the process for ~2 s)."""
    per_page = DASHBOARD_PER_PAGE
    total = db.session.execute(select(func.count(Site.id)).where(Site.account_id == svc.account_id)).scalar()
    pages = max(1, -(-total // per_page))
    page = max(1, min(int(page or 1), pages))
    sites = db.session.execute(select(Site).where(Site.account_id == svc.account_id).order_by(Site.name, Site.id)
                               .limit(per_page).offset((page - 1) * per_page)).scalars().all()
    site_ids = [s.id for s in sites]
    recent = recent_runs(svc, site_ids=site_ids)
    configs = {c.site_id: c for c in db.session.execute(select(AutomationConfig).where(
        AutomationConfig.account_id == svc.account_id, AutomationConfig.site_id.in_(site_ids))).scalars()}
    last_finished = [next((r for r in runs if r.status not in ACTIVE_STATUSES), None) for runs in recent.values()]
    last_finished = [r for r in last_finished if r is not None]
    finished = {d["run_id"]: d for d in svc.summaries(last_finished)}
    shown = [r.id for runs in recent.values() for r in runs]
    failures = dict(db.session.execute(select(RunItemFailure.run_id, func.count(RunItemFailure.id)).where(
        RunItemFailure.run_id.in_(shown)).group_by(RunItemFailure.run_id)).all()) if shown else {}
    rows = []
    for s in sites:
        runs = recent.get(s.id, [])
        latest = runs[0] if runs else None
        counts, _, latest = _counts(svc, s.id, latest, fresh=False)
        run = latest if latest is not None and latest.status in ACTIVE_STATUSES else None
        cfg = configs.get(s.id)
        row = {"site": {"id": s.id, "name": s.name, "domain": s.domain or "", "timezone": s.timezone},
               "pending": sum(counts.values()),
               "next_run": iso(cfg.next_run_at) if cfg and cfg.is_enabled and cfg.next_run_at else None,
               "frequency": cfg.frequency if cfg else None, "run": None, "last": None,
               "dots": [{"id": r.id, "status": r.status, "trigger_type": r.trigger_type,
                         "started_at": r.started_at.strftime("%Y-%m-%d %H:%M"), "failed": failures.get(r.id, 0)}
                        for r in runs]}
        if run:
            view = run_view(run, svc=svc)
            cur = view["stages"][run.current_stage - 1]
            row["run"] = {"id": run.id, "status": run.status, "current_stage": run.current_stage,
                          "stage_name": cur["name"], "stage_status": cur["status"], "percentage": cur["percentage"],
                          "pause_reason": run.pause_reason, "insights": view["insights"],
                          "queue_position": view["queue_position"], "queued_reason": view["queued_reason"]}
        last = next((r for r in runs if r.status not in ACTIVE_STATUSES), None)
        if last is not None:
            d = finished.get(last.id, {})
            row["last"] = {"id": last.id, "status": last.status, "active_seconds": d.get("active_seconds"),
                           "ended_at": iso(insights.run_end(last)), "failed": failures.get(last.id, 0)}
        rows.append(row)
    return {"rows": rows, "balance": svc.account().credits, "page": page, "pages": pages, "total": total,
            "first": (page - 1) * per_page + 1 if rows else 0, "last": (page - 1) * per_page + len(rows)}


VOLATILE = ("timeline",)  # drawn against the clock: refreshed with the rest, not a change by itself


def version(snapshot):
    stable = {k: v for k, v in snapshot.items() if k not in VOLATILE}
    return hashlib.sha1(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()[:16]
