"""Notifications: webhooks per site with their deliveries and attempts, and per-user email
opt-in with the mails sent. Rows of a site carry account_id and site_id like every tenant row."""
from ..extensions import db
from .base import TenantMixin, iso, utcnow


class Webhook(TenantMixin, db.Model):
    __tablename__ = "webhook"
    id = db.Column(db.Integer, primary_key=True)
    url = db.Column(db.String(2000), nullable=False)
    events = db.Column(db.JSON, nullable=False)  # list of event names
    # Kept readable, not hashed: it is the HMAC key every delivery is signed with (the receiver
    # holds the same value). It is shown once, on creation, and never returned again.
    secret = db.Column(db.String(80), nullable=False)
    created_by = db.Column(db.String(255))
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    __table_args__ = (db.Index("ix_webhook_site", "site_id", "id"),)

    def to_dict(self, secret=False):
        d = {"id": self.id, "site_id": self.site_id, "url": self.url, "events": list(self.events or []),
             "secret_hint": "…" + self.secret[-4:], "created_by": self.created_by,
             "created_at": iso(self.created_at)}
        if secret:
            d["secret"] = self.secret
        return d


class WebhookDelivery(TenantMixin, db.Model):
    """One event for one webhook; its attempts are WebhookAttempt rows. `run_snapshot` is the
    run as it was when the event happened (retries send the same facts, a new sent_at)."""
    __tablename__ = "webhook_delivery"
    id = db.Column(db.Integer, primary_key=True)
    webhook_id = db.Column(db.Integer, db.ForeignKey("webhook.id", ondelete="CASCADE"), nullable=False)
    delivery_id = db.Column(db.String(36), nullable=False, unique=True)
    event = db.Column(db.String(32), nullable=False)
    run_id = db.Column(db.Integer, db.ForeignKey("automation_run.id", ondelete="SET NULL"))
    run_snapshot = db.Column(db.JSON)
    status = db.Column(db.String(16), nullable=False, default="pending")  # pending | retrying | delivered | failed
    attempts = db.Column(db.Integer, nullable=False, default=0)
    next_attempt_at = db.Column(db.DateTime)
    last_error = db.Column(db.String(500))
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    delivered_at = db.Column(db.DateTime)
    __table_args__ = (
        db.Index("ix_webhook_delivery_hook", "webhook_id", "id"),
        db.Index("ix_webhook_delivery_status_next", "status", "next_attempt_at"),
    )

    def to_dict(self, attempts=()):
        return {"id": self.id, "delivery_id": self.delivery_id, "webhook_id": self.webhook_id, "event": self.event,
                "run_id": self.run_id, "status": self.status, "attempt_count": self.attempts,
                "next_attempt_at": iso(self.next_attempt_at), "last_error": self.last_error,
                "created_at": iso(self.created_at), "delivered_at": iso(self.delivered_at),
                "attempts": [a.to_dict() for a in attempts]}


class WebhookAttempt(TenantMixin, db.Model):
    __tablename__ = "webhook_attempt"
    id = db.Column(db.Integer, primary_key=True)
    delivery_id = db.Column(db.Integer, db.ForeignKey("webhook_delivery.id", ondelete="CASCADE"), nullable=False,
                            index=True)
    number = db.Column(db.Integer, nullable=False)
    started_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    duration_ms = db.Column(db.Integer, nullable=False, default=0)
    status_code = db.Column(db.Integer)
    ok = db.Column(db.Boolean, nullable=False, default=False)
    error = db.Column(db.String(500))
    __table_args__ = (db.UniqueConstraint("delivery_id", "number", name="uq_webhook_attempt_delivery_number"),)

    def to_dict(self):
        return {"number": self.number, "at": iso(self.started_at), "duration_ms": self.duration_ms,
                "status_code": self.status_code, "ok": self.ok, "error": self.error}


class NotificationPreference(db.Model):
    """A user's email opt-in: the run events they want mailed, for every site of their account."""
    __tablename__ = "notification_preference"
    id = db.Column(db.Integer, primary_key=True)
    user_id = db.Column(db.Integer, db.ForeignKey("user.id", ondelete="CASCADE"), nullable=False, unique=True)
    account_id = db.Column(db.Integer, db.ForeignKey("account.id", ondelete="CASCADE"), nullable=False, index=True)
    email_events = db.Column(db.JSON, nullable=False, default=list)
    updated_at = db.Column(db.DateTime, nullable=False, default=utcnow, onupdate=utcnow)


class MailDelivery(TenantMixin, db.Model):
    __tablename__ = "mail_delivery"
    id = db.Column(db.Integer, primary_key=True)
    user_id = db.Column(db.Integer, db.ForeignKey("user.id", ondelete="CASCADE"), nullable=False, index=True)
    event_key = db.Column(db.String(36), nullable=False)
    event = db.Column(db.String(32), nullable=False)
    run_id = db.Column(db.Integer, db.ForeignKey("automation_run.id", ondelete="SET NULL"))
    to_addr = db.Column(db.String(255), nullable=False)
    subject = db.Column(db.String(255), nullable=False)
    body = db.Column(db.Text, nullable=False)
    status = db.Column(db.String(16), nullable=False, default="pending")  # pending | retrying | sent | failed
    attempts = db.Column(db.Integer, nullable=False, default=0)
    next_attempt_at = db.Column(db.DateTime)
    last_error = db.Column(db.String(500))
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    sent_at = db.Column(db.DateTime)
    __table_args__ = (
        db.UniqueConstraint("event_key", "user_id", name="uq_mail_delivery_event_user"),
        db.Index("ix_mail_delivery_status_next", "status", "next_attempt_at"),
    )
