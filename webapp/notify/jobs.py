"""RQ jobs of notifications, on their own queue (never in a run's path: a slow receiver
delays only other notifications).

    dispatch_event   one per run event: creates a delivery per subscribed webhook and a mail
                     per opted-in user, then queues them
    deliver_webhook  one attempt of one delivery; a failure schedules the next attempt with
                     rq-scheduler's enqueue_in (exponential backoff, for up to 24 h)
    send_mail        the same for one email
    sweep_task       periodic: re-queues deliveries whose job was lost (Redis restart, killed
                     worker)

Each attempt first claims its number with a conditional UPDATE (attempts = n-1 → n), so a
job that runs twice, or a sweep racing a scheduled retry, never sends the same attempt twice.
"""
import logging
import time
from datetime import timedelta

from flask import current_app
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from .. import metrics
from ..automation.appctx import app_context as _app_context
from ..extensions import db
from ..models import AutomationRun, MailDelivery, Webhook, WebhookAttempt, WebhookDelivery
from ..models.base import utcnow
from ..redis_conn import get_redis
from ..automation.locks import TTLLock
from . import mail, targets
# The queue's name and the enqueue helpers live in queue.py (webhooks.py queues too); named
# here as well, for the callers that know them as notify.jobs'.
from .queue import NOTIFY_QUEUE, enqueue_delivery, enqueue_dispatch, enqueue_mail  # noqa: F401
from .webhooks import new_delivery, payload, sign

log = logging.getLogger(__name__)
SWEEP_GRACE = 120  # seconds a due delivery may wait in the queue before the sweep re-queues it
PENDING = ("pending", "retrying")


def backoff(attempt, cfg=None):
    """Seconds to wait after failed attempt number `attempt` (1-based): base, 2×base, 4×base… capped."""
    cfg = cfg or current_app.config
    return min(cfg["NOTIFY_RETRY_BASE_SECONDS"] * 2 ** (attempt - 1), cfg["NOTIFY_RETRY_MAX_DELAY_SECONDS"])


def _next_try(created_at, attempt):
    """(delay, when) of the next attempt, or None once the retry window is used up."""
    delay = backoff(attempt)
    when = utcnow() + timedelta(seconds=delay)
    if when > created_at + timedelta(seconds=current_app.config["NOTIFY_RETRY_WINDOW_SECONDS"]):
        return None
    return delay, when


def _claim(model, pk, attempt):
    lease = utcnow() + timedelta(seconds=current_app.config["WEBHOOK_TIMEOUT"] * 3 + SWEEP_GRACE)
    res = db.session.execute(update(model).where(model.id == pk, model.attempts == attempt - 1,
                                                 model.status.in_(PENDING))
                             .values(attempts=attempt, next_attempt_at=lease))
    db.session.commit()
    return res.rowcount == 1


# -- dispatch ------------------------------------------------------------------------------------
def dispatch_event(event, run_id, snapshot, reason, event_key):
    with _app_context():
        try:
            return _dispatch(event, run_id, snapshot, reason, event_key)
        finally:
            db.session.remove()


def _dispatch(event, run_id, snapshot, reason, event_key):
    run = db.session.get(AutomationRun, run_id)
    if run is None:
        return "run gone"
    hooks = [w for w in db.session.execute(select(Webhook).where(
        Webhook.site_id == run.site_id, Webhook.account_id == run.account_id)).scalars() if event in (w.events or [])]
    deliveries = []
    for wh in hooks:
        d = new_delivery(wh, event, event_key, run.id, snapshot)
        try:
            with db.session.begin_nested():
                db.session.add(d)
        except IntegrityError:  # this dispatch already ran (its job was retried)
            continue
        deliveries.append(d)
    mails = []
    if mail.mail_enabled():
        subject, body = None, None
        for user in mail.recipients(run.account_id, event):
            subject, body = (subject, body) if subject else mail.compose(event, snapshot, reason, run.site_id)
            m = MailDelivery(account_id=run.account_id, site_id=run.site_id, user_id=user.id, event_key=event_key,
                             event=event, run_id=run.id, to_addr=user.email, subject=subject, body=body)
            try:
                with db.session.begin_nested():
                    db.session.add(m)
            except IntegrityError:
                continue
            mails.append(m)
    db.session.commit()
    for d in deliveries:
        enqueue_delivery(d.id, 1)
    for m in mails:
        enqueue_mail(m.id, 1)
    return f"{len(deliveries)} webhook deliveries, {len(mails)} mails"


# -- webhook attempts -----------------------------------------------------------------------------
def deliver_webhook(pk, attempt):
    with _app_context():
        try:
            return _deliver(pk, attempt)
        finally:
            db.session.remove()


BUSY_RETRY = 2  # s before a delivery waiting for its webhook's attempt in flight tries again


def _deliver(pk, attempt):
    """One attempt, while no other attempt to the same webhook is in flight: a slow receiver
    holds one notify worker (for at most WEBHOOK_TIMEOUT), and its other deliveries wait for
    it instead of taking the other workers from every other webhook."""
    d = db.session.get(WebhookDelivery, pk)
    db.session.commit()
    if d is None:
        return "delivery deleted"
    flight = TTLLock(get_redis(), f"automation:notify:webhook:{int(d.webhook_id)}:in-flight",
                     current_app.config["WEBHOOK_TIMEOUT"] + 5)
    if not flight.acquire():
        enqueue_delivery(pk, attempt, delay=BUSY_RETRY)
        return "deferred: another attempt to this webhook is in flight"
    try:
        return _attempt(pk, attempt)
    finally:
        try:
            flight.release()
        except Exception:  # redis trouble: the lock expires by itself
            pass


def _attempt(pk, attempt):
    if not _claim(WebhookDelivery, pk, attempt):
        return "skipped: attempt already made or delivery finished"
    d = db.session.get(WebhookDelivery, pk)
    wh = db.session.get(Webhook, d.webhook_id) if d else None
    if wh is None:
        return "webhook deleted"
    cfg = current_app.config
    body = payload(d)
    headers = {"Content-Type": "application/json", "User-Agent": "AutomationConsole-Webhook/1",
               "X-Automation-Event": d.event, "X-Automation-Delivery": d.delivery_id,
               "X-Automation-Signature": sign(wh.secret, body)}
    url = wh.url
    db.session.commit()  # no transaction stays open while the receiver takes its time
    started, t0 = utcnow(), time.monotonic()
    status_code, error, permanent = None, None, False
    try:
        status_code, excerpt = targets.post(url, body, headers, cfg["WEBHOOK_TIMEOUT"], cfg["WEBHOOK_ALLOW_PRIVATE"])
        if not 200 <= status_code < 300:
            error = f"HTTP {status_code}: {excerpt[:200].decode('utf-8', 'replace')}".strip()
    except targets.UnsafeTarget as e:
        # Resolving to a private address is a property of the target, not a transient fault.
        error, permanent = str(e), True
    except targets.DeliveryError as e:  # timeouts, refused connections, TLS errors: all retried
        error = str(e)  # worded without the address connected to (targets.describe)
    except Exception as e:
        error = f"delivery failed ({e.__class__.__name__})"
    ok = error is None
    db.session.add(WebhookAttempt(account_id=d.account_id, site_id=d.site_id, delivery_id=d.id, number=attempt,
                                  started_at=started, duration_ms=int((time.monotonic() - t0) * 1000),
                                  status_code=status_code, ok=ok, error=error and error[:500]))
    retry = None
    if ok:
        d.status, d.delivered_at, d.next_attempt_at, d.last_error = "delivered", utcnow(), None, None
    else:
        d.last_error = error[:500]
        retry = None if permanent else _next_try(d.created_at, attempt)
        if retry:
            d.status, d.next_attempt_at = "retrying", retry[1]
        else:
            d.status, d.next_attempt_at = "failed", None
    db.session.commit()
    metrics.notification_attempt("webhook", d.status)
    if retry:
        enqueue_delivery(d.id, attempt + 1, delay=retry[0])
    log.info("webhook %s delivery %s attempt %s: %s", wh.id, d.delivery_id, attempt, d.status)
    return d.status


# -- mail -----------------------------------------------------------------------------------------
def send_mail(pk, attempt):
    with _app_context():
        try:
            return _send_mail(pk, attempt)
        finally:
            db.session.remove()


def _send_mail(pk, attempt):
    if not _claim(MailDelivery, pk, attempt):
        return "skipped"
    m = db.session.get(MailDelivery, pk)
    cfg = current_app.config
    to_addr, subject, body = m.to_addr, m.subject, m.body
    db.session.commit()  # no transaction stays open during the SMTP conversation
    try:
        mail.smtp_send(cfg["SMTP_URL"], cfg["MAIL_FROM"], to_addr, subject, body)
        m.status, m.sent_at, m.next_attempt_at, m.last_error = "sent", utcnow(), None, None
        retry = None
    except Exception as e:
        m.last_error = f"{e.__class__.__name__}: {e}"[:500]
        retry = _next_try(m.created_at, attempt)
        m.status, m.next_attempt_at = ("retrying", retry[1]) if retry else ("failed", None)
    db.session.commit()
    metrics.notification_attempt("email", "delivered" if m.status == "sent" else m.status)
    if retry:
        enqueue_mail(m.id, attempt + 1, delay=retry[0])
    return m.status


# -- sweep ----------------------------------------------------------------------------------------
def sweep():
    """Re-queue deliveries and mails that are due but whose job is gone (their claim or retry
    time passed long ago). Safe to run anywhere, any time: attempts are claimed."""
    cutoff = utcnow() - timedelta(seconds=SWEEP_GRACE)
    n = 0
    for model, enqueue in ((WebhookDelivery, enqueue_delivery), (MailDelivery, enqueue_mail)):
        rows = db.session.execute(select(model.id, model.attempts).where(
            model.status.in_(PENDING), model.next_attempt_at < cutoff).limit(500)).all()
        for pk, attempts in rows:
            enqueue(pk, attempts + 1)
            n += 1
    return n


def sweep_task():
    with _app_context():
        try:
            return sweep()
        finally:
            db.session.remove()
