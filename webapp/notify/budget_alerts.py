"""`budget.threshold` notifications: a monthly budget reached 80 % or 100 %.

spend.py records one BudgetAlert per (scope, month, threshold) — that unique row is the
"once" — and calls `enqueue_alerts` after its transaction committed. `dispatch_alert` (a job
on the notify queue) then creates one delivery per subscribed webhook (an account alert goes
to the account's webhooks of every site that asked for the event, a site alert to that
site's) and one mail per opted-in owner, with ids derived from the alert (a job run twice
creates nothing twice), and marks the alert dispatched. The notify sweep re-queues alerts
whose job was lost. Attempts and retries are the common ones (jobs.py).
"""
import logging
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from ..extensions import db
from ..models import ACCOUNT_SCOPE, BudgetAlert, MailDelivery, Site, Webhook
from ..models.base import utcnow
from . import jobs, mail, queue
from .webhooks import BUDGET_EVENT, new_delivery

log = logging.getLogger(__name__)
SWEEP_AFTER = 120  # seconds an alert may wait for its dispatch job before the sweep re-queues it


def event_key(alert_id):
    return f"budget-alert-{alert_id}"


def enqueue_alerts(alert_ids):
    for alert_id in alert_ids:
        queue._enqueue("webapp.notify.budget_alerts.dispatch_alert", alert_id)


def dispatch_alert(alert_id):
    with jobs._app_context():
        try:
            return _dispatch(alert_id)
        finally:
            db.session.remove()


def _dispatch(alert_id):
    alert = db.session.get(BudgetAlert, alert_id)
    if alert is None:
        return "alert gone"
    snapshot = alert.payload()
    key = event_key(alert.id)
    where = [Webhook.account_id == alert.account_id]
    if alert.site_id != ACCOUNT_SCOPE:
        where.append(Webhook.site_id == alert.site_id)
    deliveries = []
    for wh in db.session.execute(select(Webhook).where(*where).order_by(Webhook.id)).scalars():
        if BUDGET_EVENT not in (wh.events or []):
            continue
        d = new_delivery(wh, BUDGET_EVENT, key, None, snapshot)
        try:
            with db.session.begin_nested():
                db.session.add(d)
        except IntegrityError:  # this dispatch already ran
            continue
        deliveries.append(d)
    mails = []
    site_id = alert.site_id if alert.site_id != ACCOUNT_SCOPE else (alert.trigger_site_id or _any_site(alert.account_id))
    if mail.mail_enabled() and site_id:
        subject, body = compose(alert)
        for user in mail.recipients(alert.account_id, BUDGET_EVENT):
            m = MailDelivery(account_id=alert.account_id, site_id=site_id, user_id=user.id, event_key=key,
                             event=BUDGET_EVENT, run_id=None, to_addr=user.email, subject=subject, body=body)
            try:
                with db.session.begin_nested():
                    db.session.add(m)
            except IntegrityError:
                continue
            mails.append(m)
    db.session.execute(update(BudgetAlert).where(BudgetAlert.id == alert.id).values(dispatched_at=utcnow()))
    db.session.commit()
    for d in deliveries:
        jobs.enqueue_delivery(d.id, 1)
    for m in mails:
        jobs.enqueue_mail(m.id, 1)
    return f"{len(deliveries)} webhook deliveries, {len(mails)} mails"


def _any_site(account_id):
    # MailDelivery rows belong to a site; an account alert raised by a budget change (no
    # charge, so no site behind it) files its mails under the account's first site.
    return db.session.execute(select(Site.id).where(Site.account_id == account_id).order_by(Site.id).limit(1)).scalar()


def compose(alert):
    if alert.site_id == ACCOUNT_SCOPE:
        what = "your account's monthly budget"
    else:
        site = db.session.get(Site, alert.site_id)
        what = f"the monthly budget of site {site.name if site else alert.site_id}"
    subject = f"[Automation] {alert.threshold} % of {what} used ({alert.month})"
    lines = [f"{alert.spent:,} of {alert.budget:,} credits of {what} are spent in {alert.month} (UTC): "
             f"{alert.threshold} % reached.", ""]
    if alert.threshold >= 100:
        lines.append("Runs pause at the next item until the budget is raised or removed, or the month ends.")
    else:
        lines.append("Runs go on; at 100 % they pause until the budget is raised or removed.")
    lines += ["", "You receive this because you are an owner and opted in to budget notifications."]
    return subject, "\n".join(lines) + "\n"


def sweep():
    """Alerts whose dispatch job never ran (Redis lost it, or was down at the commit)."""
    cutoff = utcnow() - timedelta(seconds=SWEEP_AFTER)
    ids = db.session.execute(select(BudgetAlert.id).where(BudgetAlert.dispatched_at.is_(None),
                                                          BudgetAlert.created_at < cutoff).limit(500)).scalars().all()
    if ids:
        enqueue_alerts(ids)
    return len(ids)


def sweep_task():
    with jobs._app_context():
        try:
            return sweep()
        finally:
            db.session.remove()
