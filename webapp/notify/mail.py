"""Email notifications: a user's opt-in (run events, for every site of their account) and
sending through SMTP_URL with the standard library (smtplib + email), from RQ jobs.

SMTP_URL: smtp://[user:password@]host[:port] (plain, port 25), smtp+starttls://… (STARTTLS,
port 587) or smtps://… (TLS, port 465).
"""
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import make_msgid
from urllib.parse import unquote, urlsplit

from flask import current_app
from sqlalchemy import select

from ..extensions import db
from ..models import NotificationPreference, Site, User
from .webhooks import WEBHOOK_EVENTS

EMAIL_EVENTS = WEBHOOK_EVENTS
SMTP_TIMEOUT = 10
VERBS = {"run.completed": "completed", "run.failed": "failed", "run.cancelled": "was cancelled",
         "run.paused": "paused", "budget.threshold": "monthly budget at 80 % / 100 % (owners)"}


def mail_enabled(app=None):
    cfg = (app or current_app).config
    return bool(cfg.get("SMTP_URL") and cfg.get("MAIL_FROM"))


def preferences(user):
    pref = db.session.execute(select(NotificationPreference).where(
        NotificationPreference.user_id == user.id)).scalar_one_or_none()
    return list(pref.email_events) if pref else []


def set_preferences(user, events):
    bad = [e for e in events if e not in EMAIL_EVENTS]
    if bad:
        from .webhooks import FieldErrors
        raise FieldErrors({"email_events": f"unknown event {bad[0]!r}"})
    pref = db.session.execute(select(NotificationPreference).where(
        NotificationPreference.user_id == user.id)).scalar_one_or_none()
    if pref is None:
        pref = NotificationPreference(user_id=user.id, account_id=user.account_id, email_events=[])
        db.session.add(pref)
    pref.email_events = [e for e in EMAIL_EVENTS if e in events]
    db.session.commit()
    return pref.email_events


def recipients(account_id, event):
    """Active users of the account who opted in to `event` (JSON lists are filtered here:
    an account has few users)."""
    rows = db.session.execute(select(User, NotificationPreference.email_events)
                              .join(NotificationPreference, NotificationPreference.user_id == User.id)
                              .where(User.account_id == account_id, User.active.is_(True))).all()
    users = [u for u, events in rows if event in (events or [])]
    if event == "budget.threshold":  # money: the account's owners only
        users = [u for u in users if u.role == "owner"]
    return users


def compose(event, snapshot, reason, site_id):
    site = db.session.get(Site, site_id)
    run_id = (snapshot or {}).get("run_id")
    subject = f"[Automation] Run #{run_id} {VERBS.get(event, event)} · {site.name if site else site_id}"
    lines = [f"Run #{run_id} on site {site.name if site else site_id} {VERBS.get(event, event)}.", ""]
    s = snapshot or {}
    lines.append(f"Status: {s.get('status')}")
    if reason:
        lines.append(f"Reason: {reason}")
    if s.get("error_message"):
        lines.append(f"Error: {s['error_message']}")
    lines.append(f"Credits used: {s.get('total_credits_used')}")
    lines.append(f"Started: {s.get('started_at')}")
    for n in range(1, 8):
        r = s.get(f"stage_{n}_result")
        if r:
            lines.append(f"Stage {n}: {r.get('items_processed', 0)} processed, {r.get('items_created', 0)} created")
    if run_id:
        from ..links import public_url  # PUBLIC_URL: the worker has no request, and a Host is never trusted
        lines += ["", f"Run page: {public_url('web.run_detail', run_id=run_id)}"]
    lines += ["", "You receive this because you opted in to run notifications for your account."]
    return subject, "\n".join(lines) + "\n"


def smtp_send(url, sender, to_addr, subject, body):
    parts = urlsplit(url)
    scheme = parts.scheme
    host = parts.hostname or "localhost"
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to_addr, subject
    msg["Message-ID"] = make_msgid(domain=(sender.rsplit("@", 1)[-1] if "@" in sender else None))
    msg.set_content(body)
    if scheme == "smtps":
        client = smtplib.SMTP_SSL(host, parts.port or 465, timeout=SMTP_TIMEOUT, context=ssl.create_default_context())
    else:
        client = smtplib.SMTP(host, parts.port or (587 if scheme == "smtp+starttls" else 25), timeout=SMTP_TIMEOUT)
    with client:
        if scheme == "smtp+starttls":
            client.starttls(context=ssl.create_default_context())
        if parts.username:
            client.login(unquote(parts.username), unquote(parts.password or ""))
        client.send_message(msg)
