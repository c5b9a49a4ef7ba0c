"""When a cached pending count is stale, and reading a run with counts of the same moment.

Pending counts are cached in Redis (every open page polls them; on a very large site they cost
~45 ms). A cached value is keyed by what it depends on, so the change that makes it stale makes
the next read miss instead of waiting out a TTL:
- imports and review decisions bump the site's *generation* (`changed(site_id)`, called after
  their commit);
- a run's progress is in its row (the worker commits each item with the stage result): the key
  carries the run's progress `marker`, so a poll after an item is a miss.

`run_with_counts` reads the run row and the seven counts in ONE statement: both come from the
same database snapshot, so the Current run panel and the Pipeline panel drawn from them cannot
disagree (two reads would straddle a commit of the worker).
"""
from sqlalchemy import select

from ..extensions import db
from ..models import ACTIVE_STATUSES, AutomationRun
from ..redis_conn import get_redis

# The per-site generation lives on a low floor (webapp/count_generation.py): the review and
# import rooms bump it without importing the engine.
from ..count_generation import GEN_KEY, changed, generation  # noqa: E402,F401


def marker(run):
    """What of the site's latest run the counts depend on (its progress while active)."""
    if run is None:
        return "idle:none"
    if run.status in ACTIVE_STATUSES:
        res = run.stage_result(run.current_stage) or {}
        progress = ":".join(str(res.get(k) or 0) for k in ("items_total", "items_processed", "items_failed",
                                                         "items_created"))
        return f"run:{run.id}:{run.status}:{run.current_stage}:{progress}"
    return f"idle:{run.id}:{run.status}"


def run_with_counts(run_id, site_id):
    """(the run, reloaded, {stage: pending}) read in one statement: one snapshot of both."""
    from .stages import STAGES, _count_query
    cols = [_count_query(s, site_id).scalar_subquery().label(f"s{n}") for n, s in STAGES.items()]
    row = db.session.execute(select(AutomationRun, *cols).where(AutomationRun.id == run_id)
                             .execution_options(populate_existing=True)).one()
    return row[0], dict(zip(STAGES, row[1:]))
