from ..extensions import db
from .base import utcnow


class Site(db.Model):
    id = db.Column(db.Integer, primary_key=True)
    account_id = db.Column(db.Integer, db.ForeignKey("account.id", ondelete="CASCADE"), nullable=False, index=True)
    name = db.Column(db.String(120), nullable=False)
    domain = db.Column(db.String(255))
    timezone = db.Column(db.String(64), nullable=False, default="UTC")
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    # Credits this site may spend per calendar month (None = no budget).
    monthly_budget = db.Column(db.Integer)
    __table_args__ = (db.UniqueConstraint("account_id", "name", name="uq_site_account_name"),)

    def to_dict(self):
        return {"id": self.id, "name": self.name, "domain": self.domain, "timezone": self.timezone,
                "monthly_budget": self.monthly_budget}
