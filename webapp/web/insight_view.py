"""What the pages show of a run's insights, for the live snapshot (webapp/web/snapshot.py).

Values are anchors rather than running totals, so the snapshot (and its version) changes only
when the run does: a running run's working time is "since `active_since`" and its ETA is
"until `eta_at`", and static/js/insights.js counts them every second in the browser. The
numbers themselves come from AutomationService.run_insights (webapp/automation/insights.py).
"""
import math
from datetime import datetime, timedelta

from ..automation import insights
from ..automation.stages import STAGES
from ..models.base import utcnow

FAILED_PER_PAGE = 20
ETA_GRAIN = 10  # seconds: an ETA moving by less does not count as a change
EPOCH = datetime(1970, 1, 1)


def iso(dt):
    """Whole seconds: the browser parses these anchors, and a jitter below a second is no change."""
    return None if dt is None else dt.replace(microsecond=0).isoformat() + "Z"


def insight_view(svc, run, events=None, now=None):
    now = now or utcnow()
    events = svc.events(run) if events is None else events
    ins = svc.run_insights(run, events, now)
    running, paused = run.status == "running", run.status == "paused"
    closed_pauses = [(a, b) for a, b in ins["intervals"] if not (paused and b == now)]
    # Interruptions that ended are not working time either (one going on now: the counter runs on).
    gone = insights.interrupted_within([(a, b) for a, b in ins["interrupts"] if b != now], closed_pauses,
                                       run.started_at, now)
    view = {
        "running": running,
        "active_seconds": None if running else ins["active_seconds"],
        "active_since": iso(run.started_at + timedelta(seconds=insights.paused_within(
            closed_pauses, run.started_at, now) + gone)) if running else None,
        "interrupted_seconds": ins["interrupted_seconds"],
        "paused_seconds": None if paused else ins["paused_seconds"],
        "paused_since": iso(run.paused_at) if paused else None,
        "eta_at": None, "durations": {}, "stage_since": {},
        "failed_count": svc.failure_count(run),
    }
    # What a retry would take now: a retry run that fixed some leaves only the others.
    view["retry_count"] = svc.still_failed_count(run) if view["failed_count"] and not run.is_active else 0
    if running and ins["eta_seconds"] is not None:
        # The expected end, on a ETA_GRAIN-second grid: the same until the estimate moves.
        end = (now + timedelta(seconds=ins["eta_seconds"]) - EPOCH).total_seconds()
        view["eta_at"] = iso(EPOCH + timedelta(seconds=math.ceil(end / ETA_GRAIN) * ETA_GRAIN))
    for n, r in ins["results"].items():
        if running and r.get("status") == "running" and not r.get("finished_at"):
            start = insights.parse_time(r["started_at"])
            view["stage_since"][n] = iso(start + timedelta(seconds=insights.paused_within(closed_pauses, start, now)))
        else:
            view["durations"][n] = r.get("duration_seconds")
    view["can_retry"] = bool(view["retry_count"]) and not run.is_active and svc.active_run(run.site_id) is None
    return view, ins


def timeline(run, ins, events, now=None):
    names = {n: s.name for n, s in STAGES.items()}
    return str(insights.timeline_svg(run, ins["results"], ins["intervals"], events, names, now))
