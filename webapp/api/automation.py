"""/api/v1/automation/<action>/ (SPEC §6): thin views over AutomationService."""
from flask import g, request

from ..automation.service import AutomationService
from ..errors import AppError
from . import bp
from ..validation import REASON_MAX, InvalidInput, clean_text
from .context import api_auth, int_param, json_body
from .errors import ApiError, ok


def service():
    return AutomationService(g.account_id, actor=g.actor)


def action(name, methods):
    """Register /automation/<name> and /automation/<name>/ for `methods`."""
    def deco(fn):
        wrapped = api_auth(_translate(fn))
        bp.add_url_rule(f"/automation/{name}", f"automation_{name}", wrapped, methods=methods)
        bp.add_url_rule(f"/automation/{name}/", f"automation_{name}_slash", wrapped, methods=methods)
        return fn
    return deco


def _translate(fn):
    from functools import wraps

    @wraps(fn)
    def inner(*a, **kw):
        try:
            return fn(*a, **kw)
        except AppError as e:
            raise ApiError(e.message, e.status)
    return inner


def _reason():
    if request.mimetype == "application/json" and request.get_data():
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            raise ApiError("Malformed JSON body.", 400)
        reason = data.get("reason")
    else:
        reason = request.values.get("reason")
    try:
        return clean_text(reason, "reason", REASON_MAX)
    except InvalidInput as e:
        raise ApiError(e.message, 400)


@action("config", ["GET"])
def config():
    svc = service()
    return ok(svc.config_dict(svc.config(int_param("site_id"))))


@action("update_config", ["PUT"])
def update_config():
    site_id = int_param("site_id")
    data = json_body()
    svc = service()
    return ok(svc.config_dict(svc.update_config(site_id, data)))


@action("run_now", ["POST"])
def run_now():
    site_id = int_param("site_id")
    run = service().start(site_id, trigger_type="manual" if g.actor.startswith("user:") else "api", reason=_reason())
    return ok({"run_id": run.id, "status": run.status}, 201)


@action("current_run", ["GET"])
def current_run():
    svc = service()
    run = svc.current_run(int_param("site_id"))
    return ok({"run": svc.run_dict(run) if run else None})


@action("history", ["GET"])
def history():
    svc = service()
    return ok({"runs": svc.summaries(svc.history(int_param("site_id")))})


@action("logs", ["GET"])
def logs():
    run_id = int_param("run_id")
    lines = int_param("lines", required=False, maximum=5000, default=100)
    # `before=N`: the `lines` lines just above line N (page backwards through the file);
    # `after=N`: the lines following line N (poll the tail without a websocket).
    before = int_param("before", required=False)
    after = int_param("after", required=False, minimum=0)
    if before is not None and after is not None:
        raise ApiError("Give 'before' or 'after', not both.", 400)
    return ok({"run_id": run_id, **service().log_page(run_id, lines, before=before, after=after)})


@action("estimate", ["GET"])
def estimate():
    return ok(service().estimate(int_param("site_id")))


@action("pipeline_overview", ["GET"])
def pipeline_overview():
    stages = service().pipeline_overview(int_param("site_id"))
    return ok({"stages": stages, "awaiting_review": stages[-1].get("awaiting_review", 0)})


@action("current_processing", ["GET"])
def current_processing():
    site_id, run_id = int_param("site_id"), int_param("run_id")
    return ok({"state": service().current_processing(site_id, run_id)})


@action("pause", ["POST"])
def pause():
    run = service().pause(int_param("run_id"), reason=_reason())
    return ok({"run_id": run.id, "status": run.status})


@action("resume", ["POST"])
def resume():
    run = service().resume(int_param("run_id"), reason=_reason())
    return ok({"run_id": run.id, "status": run.status})


@action("cancel", ["POST"])
def cancel():
    run = service().cancel(int_param("run_id"), reason=_reason())
    return ok({"run_id": run.id, "status": run.status})


@action("run", ["GET"])
def run_detail():
    """One run by id with its audit trail (supporting route for run detail pages)."""
    svc = service()
    run = svc.run(int_param("run_id"))
    events = svc.events(run)
    d = svc.run_dict(run, events)
    d["events"] = [e.to_dict() for e in events]
    d["failed_items_count"] = svc.failure_count(run)
    return ok({"run": d})


@action("retry_failed", ["POST"])
def retry_failed():
    run = service().retry_failed(int_param("run_id"), reason=_reason())
    return ok({"run_id": run.id, "status": run.status, "trigger_type": run.trigger_type,
               "retry_of_run_id": run.retry_of_run_id}, 201)


@action("failed_items", ["GET"])
def failed_items():
    """A run's failed items, paged (supporting route for the run detail page)."""
    svc = service()
    run = svc.run(int_param("run_id"))
    page = int_param("page", required=False, maximum=100_000, default=1)
    limit = int_param("limit", required=False, maximum=200, default=50)
    return ok({"run_id": run.id, "page": page, "limit": limit, "total": svc.failure_count(run),
               "items": svc.failed_items(run, page, limit)})
