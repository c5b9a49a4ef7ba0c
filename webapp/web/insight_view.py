"""What the pages show of a run's insights, as a plain JSON-able dict (the live snapshot can
carry it): figures, stage durations, the timeline SVG, the failed-items count and the
retry offer. Computed by AutomationService.run_insights / insights.py."""
from ..automation import insights
from ..automation.stages import STAGES
from ..models.base import iso, utcnow

FAILED_PER_PAGE = 20


def insight_view(svc, run, events=None, now=None):
    now = now or utcnow()
    events = svc.events(run) if events is None else events
    ins = svc.run_insights(run, events, now)
    names = {n: s.name for n, s in STAGES.items()}
    failed = svc.failure_count(run)
    return {
        "active_seconds": ins["active_seconds"], "paused_seconds": ins["paused_seconds"],
        "eta_seconds": ins["eta_seconds"], "ticking": run.status == "running", "measured_at": iso(now),
        "durations": {n: r.get("duration_seconds") for n, r in ins["results"].items()},
        "timeline": str(insights.timeline_svg(run, ins["results"], ins["intervals"], events, names, now)),
        "failed_count": failed,
        "can_retry": bool(failed) and not run.is_active and svc.active_run(run.site_id) is None,
    }
