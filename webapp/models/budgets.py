from ..extensions import db
from .base import iso, utcnow

# site_id 0 = the account's own scope (every site together): one unique key serves both
# scopes, where a NULL would not be unique on PostgreSQL.
ACCOUNT_SCOPE = 0


class MonthlySpend(db.Model):
    """Credits debited per account (site_id 0) and per site in one calendar month (UTC):
    written in the same transaction as each ledger debit (webapp/automation/spend.py), so it
    always equals the ledger's sum, and a budget check is one primary-key read."""
    __tablename__ = "monthly_spend"
    account_id = db.Column(db.Integer, db.ForeignKey("account.id", ondelete="CASCADE"), primary_key=True)
    # No foreign key: a deleted site's spend still counts against the account's month.
    site_id = db.Column(db.Integer, primary_key=True)
    month = db.Column(db.String(7), primary_key=True)  # "YYYY-MM"
    credits = db.Column(db.Integer, nullable=False, default=0)


class BudgetAlert(db.Model):
    """One row per (scope, month, threshold) ever reached: the unique key is what makes a
    `budget.threshold` notification go out once, whatever retries or races happen."""
    __tablename__ = "budget_alert"
    id = db.Column(db.Integer, primary_key=True)
    account_id = db.Column(db.Integer, db.ForeignKey("account.id", ondelete="CASCADE"), nullable=False)
    site_id = db.Column(db.Integer, nullable=False)  # ACCOUNT_SCOPE for the account's budget
    month = db.Column(db.String(7), nullable=False)
    threshold = db.Column(db.Integer, nullable=False)  # percent: 80 or 100
    spent = db.Column(db.Integer, nullable=False)
    budget = db.Column(db.Integer, nullable=False)
    # The site whose charge crossed it (an account alert's mail needs one), if any.
    trigger_site_id = db.Column(db.Integer)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    dispatched_at = db.Column(db.DateTime)
    __table_args__ = (db.UniqueConstraint("account_id", "site_id", "month", "threshold", name="uq_budget_alert_once"),)

    @property
    def scope(self):
        return "account" if self.site_id == ACCOUNT_SCOPE else "site"

    def payload(self):
        return {"threshold": self.threshold, "spent": self.spent, "budget": self.budget, "scope": self.scope,
                "site_id": None if self.site_id == ACCOUNT_SCOPE else self.site_id, "month": self.month,
                "account_id": self.account_id, "at": iso(self.created_at)}
