"""/api/v1/automation/<action>/ (SPEC §6): thin views over AutomationService, declared with
their request and response models (schemas.py) so the OpenAPI document is theirs."""
from flask import g, request

from ..automation.service import AutomationService
from ..validation import REASON_MAX, clean_text
from . import schemas as s
from .errors import ApiError, ok
from .idempotency import idempotent
from .spec import endpoint

RUN_ERRORS = {404: "Run not found, or another account's"}
SITE_ERRORS = {404: "Site not found, or another account's"}
STATE_ERRORS = {400: "Invalid input, or the run is not in a state that allows this (the message says which)",
                409: "A request with this Idempotency-Key is still being processed, or the key was used "
                     "for a different request"}
REASON = dict(json=s.ReasonBody, form=s.ReasonBody, headers=s.IdempotencyHeaders, body_required=False)
# Links from an answer to the routes it enables (for API clients and schemathesis' stateful phase).
RUN_ID = "$response.body#/data/run_id"
RUN_LINKS = {"pause": ("pause", {"run_id": RUN_ID}), "resume": ("resume", {"run_id": RUN_ID}),
             "cancel": ("cancel", {"run_id": RUN_ID}), "run": ("run_detail", {"run_id": RUN_ID}),
             "logs": ("logs", {"run_id": RUN_ID})}


def service():
    return AutomationService(g.account_id, actor=g.actor)


def _reason():
    ctx = getattr(request, "context", None)
    body = (ctx.json or ctx.form) if ctx else None
    # The model checked type and length; blank means none (the same rule as the form's).
    return clean_text(body.reason if body else None, "reason", REASON_MAX)


@endpoint("/automation/config", ["GET"], query=s.SiteQuery, ok=s.ok("ConfigResponse", s.ConfigOut),
          errors=SITE_ERRORS, tags=["automation"])
def config():
    """The site's automation config (created with defaults on first read)."""
    svc = service()
    return ok(svc.config_dict(svc.config(request.context.query.site_id)))


@endpoint("/automation/update_config", ["PUT"], query=s.SiteQuery, json=s.ConfigUpdate,
          ok=s.ok("UpdateConfigResponse", s.ConfigOut), errors=SITE_ERRORS, tags=["automation"])
def update_config():
    """Change config fields.

    Only the fields sent change; all are checked (each bad one is named in `errors`), and the
    result must be consistent: e.g. a weekly schedule needs `scheduled_day` 0-6, else the field
    that was sent is blamed. Read-only fields (`site_id`, `next_runs`, ...) are ignored."""
    svc = service()
    cfg = svc.update_config(request.context.query.site_id, request.get_json())
    return ok(svc.config_dict(cfg))


@endpoint("/automation/run_now", ["POST"], query=s.SiteQuery, status=201, ok=s.ok("RunNowResponse", s.RunStatusOut),
          errors={**SITE_ERRORS, **STATE_ERRORS, 400: "Invalid input, a run is already active, nothing to "
                  "process, or insufficient credits (the message says which)", 503: "Redis unavailable"},
          tags=["runs"], links={**RUN_LINKS, "processing": ("current_processing", {
              "site_id": "$request.query.site_id", "run_id": RUN_ID})}, **REASON)
@idempotent
def run_now():
    """Start a run now (`trigger_type` "api" with a token, "manual" from a browser session)."""
    run = service().start(request.context.query.site_id,
                          trigger_type="manual" if g.actor.startswith("user:") else "api", reason=_reason())
    return ok({"run_id": run.id, "status": run.status}, 201)


@endpoint("/automation/current_run", ["GET"], query=s.SiteQuery, ok=s.ok("CurrentRunResponse", s.CurrentRun),
          errors=SITE_ERRORS, tags=["runs"])
def current_run():
    """The site's active (running or paused) run, or null."""
    svc = service()
    run = svc.current_run(request.context.query.site_id)
    return ok({"run": svc.run_dict(run) if run else None})


@endpoint("/automation/history", ["GET"], query=s.HistoryQuery, ok=s.ok("HistoryResponse", s.History),
          errors=SITE_ERRORS, tags=["runs"])
def history():
    """The site's runs, newest first, a page at a time (`limit` 20 by default), with filters."""
    q, svc = request.context.query, service()
    runs, total = svc.history_page(q.site_id, page=q.page, limit=q.limit, status=q.status,
                                   trigger_type=q.trigger_type)
    return ok({"runs": svc.summaries(runs), "page": q.page, "limit": q.limit, "total": total})


@endpoint("/automation/logs", ["GET"], query=s.LogsQuery, ok=s.ok("LogsResponse", s.Logs),
          errors={**RUN_ERRORS, 410: "The run's log was deleted by the retention policy (RETENTION_DAYS, "
                                     "`flask prune`); the run's record stays",
                                 503: "Object storage (STORAGE_URL) unreachable: retry"}, tags=["runs"])
def logs():
    """Log lines of a run with line numbers: the last `lines`; with `before=L` the `lines` lines
    above line L (page backwards); with `after=L` the lines following line L (poll the tail).

    `before` and `after` cannot be given together (a 400 naming both): OpenAPI cannot forbid a pair
    of query parameters, so the rule is stated here."""
    q = request.context.query
    if q.before is not None and q.after is not None:
        raise ApiError(errors={"before": "cannot be used with after", "after": "cannot be used with before"})
    return ok({"run_id": q.run_id, **service().log_page(q.run_id, q.lines, before=q.before, after=q.after)})


@endpoint("/automation/estimate", ["GET"], query=s.SiteQuery, ok=s.ok("EstimateResponse", s.Estimate),
          errors=SITE_ERRORS, tags=["automation"])
def estimate():
    """Credits a run of the pending items would use; a start needs 1.2 x the estimate."""
    return ok(service().estimate(request.context.query.site_id))


@endpoint("/automation/pipeline_overview", ["GET"], query=s.SiteQuery, ok=s.ok("OverviewResponse", s.Overview),
          errors=SITE_ERRORS, tags=["automation"])
def pipeline_overview():
    stages = service().pipeline_overview(request.context.query.site_id)
    return ok({"stages": stages, "awaiting_review": stages[-1].get("awaiting_review", 0)})


@endpoint("/automation/current_processing", ["GET"], query=s.SiteRunQuery,
          ok=s.ok("ProcessingResponse", s.ProcessingOut), errors={404: "Site or run not found, or another account's"},
          tags=["runs"])
def current_processing():
    """What the worker is processing now (null unless the run is running)."""
    q = request.context.query
    return ok({"state": service().current_processing(q.site_id, q.run_id)})


def _control(name, verb, doc):
    @idempotent
    def view():
        run = getattr(service(), verb)(request.context.query.run_id, reason=_reason())
        return ok({"run_id": run.id, "status": run.status})
    view.__name__ = name
    view.__doc__ = doc
    endpoint(f"/automation/{name}", ["POST"], query=s.RunQuery, ok=s.ok(f"{name.title()}Response", s.RunStatusOut),
             errors={**RUN_ERRORS, **STATE_ERRORS, **({503: "Redis unavailable"} if name == "resume" else {})},
             tags=["runs"], links={k: v for k, v in RUN_LINKS.items() if k != name}, **REASON)(view)


_control("pause", "pause", "Pause a running run at the next item boundary.")
_control("resume", "resume", "Resume a paused run.")
_control("cancel", "cancel", "Cancel a running or paused run (its current stage is marked cancelled).")


@endpoint("/automation/run", ["GET"], query=s.RunQuery, ok=s.ok("RunDetailResponse", s.RunDetail),
          errors=RUN_ERRORS, tags=["runs"])
def run_detail():
    """One run by id with its audit trail (who started, paused, resumed, cancelled it, and why)."""
    svc = service()
    run = svc.run(request.context.query.run_id)
    events = svc.events(run)
    d = svc.run_dict(run, events)
    d["events"] = [e.to_dict() for e in events]
    d["failed_items_count"] = svc.failure_count(run)
    return ok({"run": d})


@endpoint("/automation/retry_failed", ["POST"], query=s.RunQuery, status=201,
          ok=s.ok("RetryFailedResponse", s.RetryStarted),
          errors={**RUN_ERRORS, 400: "Invalid input, nothing to retry, a run is already active, or insufficient "
                  "credits (the message says which)", 503: "Redis unavailable"},
          tags=["runs"], links=RUN_LINKS, json=s.ReasonBody, form=s.ReasonBody, body_required=False)
def retry_failed():
    """Start a run (`trigger_type` "retry") that processes exactly this run's failed items again."""
    run = service().retry_failed(request.context.query.run_id, reason=_reason())
    return ok({"run_id": run.id, "status": run.status, "trigger_type": run.trigger_type,
               "retry_of_run_id": run.retry_of_run_id}, 201)


@endpoint("/automation/failed_items", ["GET"], query=s.FailedItemsQuery, ok=s.ok("FailedItemsResponse", s.FailedItems),
          errors=RUN_ERRORS, tags=["runs"])
def failed_items():
    """A run's failed items, paged (stage, item, label, reason, attempts)."""
    q, svc = request.context.query, service()
    run = svc.run(q.run_id)
    return ok({"run_id": run.id, "page": q.page, "limit": q.limit, "total": svc.failure_count(run),
               "items": svc.failed_items(run, q.page, q.limit)})
