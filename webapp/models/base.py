from datetime import datetime, timezone

from ..extensions import db


def utcnow():
    return datetime.now(timezone.utc).replace(tzinfo=None)


def iso(dt):
    """Naive-UTC datetimes from the DB as ISO 8601 with a Z."""
    return None if dt is None else dt.replace(microsecond=dt.microsecond).isoformat() + "Z"


class TenantMixin:
    """account_id + site_id on every tenant row; queries filter by both."""
    account_id = db.Column(db.Integer, db.ForeignKey("account.id", ondelete="CASCADE"), nullable=False)
    site_id = db.Column(db.Integer, db.ForeignKey("site.id", ondelete="CASCADE"), nullable=False)
