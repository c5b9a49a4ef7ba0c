"""Webhooks of a site: create (the secret is returned once), list, delete, deliveries with
their attempts, and a test event. Every lookup is scoped by the caller's account through
the site: another account's site or webhook is a NotFound, like a missing one."""
import hashlib
import hmac
import json
import secrets
import uuid

from flask import current_app
from sqlalchemy import func, select

from .. import audit
from ..automation.service import AutomationService
from ..errors import AppError, Conflict, NotFound
from ..extensions import db
from ..models import AutomationRun, Site, Webhook, WebhookAttempt, WebhookDelivery
from ..models.base import iso, utcnow
from .queue import enqueue_delivery
from .targets import check_url

RUN_EVENTS = ("run.completed", "run.failed", "run.cancelled", "run.paused")
BUDGET_EVENT = "budget.threshold"  # a monthly budget reached 80 % / 100 % (notify/budget_alerts.py)
WEBHOOK_EVENTS = RUN_EVENTS + (BUDGET_EVENT,)
TEST_EVENT = "test"
# delivery ids are derived from the event and the webhook, so a dispatch job that runs twice
# (a worker killed mid-job) cannot create a second delivery of the same event.
DELIVERY_NS = uuid.UUID("6c1f3e1e-7a0b-4c55-9a51-0c6c8e0f3b21")


class FieldErrors(AppError):
    """Bad input in named fields: {"field": "message"}."""

    def __init__(self, errors, status=400):
        self.errors = errors
        super().__init__("; ".join(f"'{k}' {v}" for k, v in errors.items()), status)


def new_secret():
    return "whsec_" + secrets.token_urlsafe(32)


def sign(secret, body):
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def delivery_uuid(event_key, webhook_id):
    return str(uuid.uuid5(DELIVERY_NS, f"{event_key}:{webhook_id}"))


def payload(delivery):
    """The raw body of one attempt (what the signature covers)."""
    if delivery.event == BUDGET_EVENT:  # the alert's fields at the top: threshold, spent, budget, scope…
        return json.dumps({**(delivery.run_snapshot or {}), "event": delivery.event,
                           "delivery_id": delivery.delivery_id, "sent_at": iso(utcnow())},
                          separators=(",", ":"), sort_keys=True).encode()
    return json.dumps({"event": delivery.event, "delivery_id": delivery.delivery_id, "sent_at": iso(utcnow()),
                       "run": delivery.run_snapshot}, separators=(",", ":"), sort_keys=True).encode()


def validate(data, allow_private):
    errors = {}
    unknown = sorted(set(data) - {"url", "events"})
    for k in unknown:
        errors[k] = "is not a known field"
    problem = check_url(data.get("url"), allow_private)
    if problem:
        errors["url"] = problem
    events = data.get("events", list(RUN_EVENTS))  # budget alerts are asked for by name
    if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
        errors["events"] = f"must be a non-empty list of: {', '.join(WEBHOOK_EVENTS)}"
    else:
        bad = [e for e in events if e not in WEBHOOK_EVENTS]
        if bad:
            errors["events"] = f"unknown event {bad[0]!r}; choose from {', '.join(WEBHOOK_EVENTS)}"
        events = [e for e in WEBHOOK_EVENTS if e in events]
    if errors:
        raise FieldErrors(errors)
    return data["url"].strip(), events


class WebhookService:
    def __init__(self, account_id, actor="system"):
        self.account_id = int(account_id)
        self.actor = actor

    def site(self, site_id):
        return AutomationService(self.account_id).site(site_id)

    def list(self, site_id):
        site = self.site(site_id)
        return db.session.execute(select(Webhook).where(Webhook.site_id == site.id, Webhook.account_id == self.account_id)
                                  .order_by(Webhook.id)).scalars().all()

    def get(self, site_id, webhook_id):
        site = self.site(site_id)
        wh = db.session.execute(select(Webhook).where(Webhook.id == webhook_id, Webhook.site_id == site.id,
                                                      Webhook.account_id == self.account_id)).scalar_one_or_none()
        if wh is None:
            raise NotFound(f"Webhook {webhook_id} not found.")
        return wh

    def create(self, site_id, data):
        site = self.site(site_id)
        url, events = validate(data, current_app.config["WEBHOOK_ALLOW_PRIVATE"])
        # The site's row locked (PostgreSQL; SQLite serialises writers): two clicks on "Add" at once
        # cannot both pass the duplicate check below.
        db.session.execute(select(Site.id).where(Site.id == site.id).with_for_update())
        from ..quotas import check_webhooks
        check_webhooks(site)  # MAX_WEBHOOKS_PER_SITE
        existing = db.session.execute(select(Webhook.url, Webhook.events).where(Webhook.site_id == site.id)).all()
        if any(u == url and sorted(e or []) == sorted(events) for u, e in existing):
            raise Conflict(errors={"url": "this site already has a webhook for this URL and these events"})
        wh = Webhook(account_id=self.account_id, site_id=site.id, url=url, events=events, secret=new_secret(),
                     created_by=self.actor)
        db.session.add(wh)
        db.session.flush()
        audit.record(self.account_id, self.actor, "webhook.create", site_id=site.id, webhook_id=wh.id, url=url,
                     events=events)
        db.session.commit()
        return wh

    def delete(self, site_id, webhook_id):
        wh = self.get(site_id, webhook_id)
        audit.record(self.account_id, self.actor, "webhook.delete", site_id=wh.site_id, webhook_id=wh.id, url=wh.url)
        db.session.delete(wh)
        db.session.commit()
        return webhook_id

    def deliveries(self, site_id, webhook_id, page=1, limit=20):
        """Newest first, each with its attempts (one query for the page, one for the attempts)."""
        wh = self.get(site_id, webhook_id)
        base = select(WebhookDelivery).where(WebhookDelivery.webhook_id == wh.id,
                                             WebhookDelivery.account_id == self.account_id)
        total = db.session.execute(select(func.count()).select_from(base.with_only_columns(WebhookDelivery.id)
                                                                     .subquery())).scalar()
        rows = db.session.execute(base.order_by(WebhookDelivery.id.desc()).offset((page - 1) * limit)
                                  .limit(limit)).scalars().all()
        attempts = {}
        if rows:
            for a in db.session.execute(select(WebhookAttempt).where(
                    WebhookAttempt.delivery_id.in_([d.id for d in rows])).order_by(WebhookAttempt.number)).scalars():
                attempts.setdefault(a.delivery_id, []).append(a)
        return [d.to_dict(attempts.get(d.id, ())) for d in rows], total

    def send_test(self, site_id, webhook_id):
        """A `test` event carrying the site's latest run (or null), delivered like any other."""
        wh = self.get(site_id, webhook_id)
        run = db.session.execute(select(AutomationRun).where(AutomationRun.site_id == wh.site_id)
                                 .order_by(AutomationRun.id.desc()).limit(1)).scalar_one_or_none()
        d = new_delivery(wh, TEST_EVENT, uuid.uuid4().hex, run.id if run else None, run.to_dict() if run else None)
        db.session.add(d)
        db.session.commit()
        enqueue_delivery(d.id, 1)
        return d


def new_delivery(wh, event, event_key, run_id, snapshot):
    return WebhookDelivery(account_id=wh.account_id, site_id=wh.site_id, webhook_id=wh.id,
                           delivery_id=delivery_uuid(event_key, wh.id), event=event, run_id=run_id,
                           run_snapshot=snapshot, status="pending", attempts=0, next_attempt_at=utcnow())
