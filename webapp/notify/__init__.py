"""Notifications: webhooks per site and email per user, fed by run lifecycle events.

The listener registered here only queues one `dispatch_event` job per event (one Redis call,
after the run's change is committed); everything that can be slow — DB rows for deliveries,
HTTP, SMTP, retries — happens in RQ jobs on the `automation-notify` queue (jobs.py).
"""
import logging
import uuid

from ..automation import hooks
from .webhooks import RUN_EVENTS

log = logging.getLogger(__name__)


def on_run_event(event, run, actor, reason):
    if event not in RUN_EVENTS:
        return
    from .queue import enqueue_dispatch
    enqueue_dispatch(event, run.id, run.to_dict(), reason, uuid.uuid4().hex)


def init_app(app):
    hooks.subscribe(on_run_event)
    from ..automation import spend
    from . import budget_alerts
    spend.on_alert(budget_alerts.enqueue_alerts)
    hooks.subscribe(spend.on_run_event)  # a budget pause is that budget's 100 %
    from . import views
    views.init_app(app)
