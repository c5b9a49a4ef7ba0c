"""Run lifecycle events, for the rooms that react to them (notifications, metrics, audit).

The lifecycle (`AutomationService`, the worker's automatic pauses and completion, the stale-run
check) calls `emit` once a change is committed; listeners registered with `subscribe` are
called in order. A listener must be quick (queue an RQ job for anything slow, e.g. a webhook)
and its errors are logged, never raised: a notification can never break or stall a run.

Events: run.started, run.paused, run.resumed, run.cancelled, run.completed, run.failed,
run.recovered. `actor` is the user's email, "api:<email>", "scheduler" or "system" (automatic
pauses, completion, recovery); `reason` is the pause reason / cancel reason / failure message.
"""
import logging

log = logging.getLogger(__name__)

RUN_EVENTS = ("run.started", "run.paused", "run.resumed", "run.cancelled", "run.completed", "run.failed",
              "run.recovered")
_listeners = []


def subscribe(fn):
    """Register `fn(event, run, actor, reason)`; usable as a decorator. Idempotent."""
    if fn not in _listeners:
        _listeners.append(fn)
    return fn


def emit(event, run, actor="system", reason=None):
    assert event in RUN_EVENTS, event
    for fn in list(_listeners):
        try:
            fn(event, run, actor, reason)
        except Exception:  # a listener's failure must not affect the run
            log.exception("run event listener %r failed for %s on run %s", fn, event, getattr(run, "id", None))
