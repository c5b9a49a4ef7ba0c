"""Monthly spend: what each account and each site was debited in a calendar month, kept in
`monthly_spend` by every charge, and the monthly budgets enforced on it.

The month is the calendar month in UTC (one rule for the whole account, whatever the sites'
zones: a budget is the account's money, and a zone per site would make "this month" differ
between the account's budget and its sites'). Spent = the ledger's debits in that month; the
counter is written in the debit's own transaction, under the account's row lock that the
debit already holds (billing.charge), so it always equals the ledger's sum and two workers
charging the same account cannot both take the last of a budget.

A charge that would take a scope past its budget raises BudgetReached (the caller rolls the
whole item back: output, ledger, counter), except the charge of an AI answer that arrived
(`keep`): the provider billed it already, so it is kept and charged past the budget, and the
engine pauses the run ("… budget reached") before any call not yet sent. A budget can so be
exceeded by at most the calls that were in flight when it was reached.
Crossing 80 % or 100 % of a budget records a BudgetAlert (unique per scope, month and
threshold) in the same transaction; once it commits, the alert listeners (notifications) are
called with its id. This module sits below billing.py: it imports nothing of the engine.
"""
import logging
import math
from datetime import datetime

from sqlalchemy import event, insert, select, update
from sqlalchemy.orm import Session

from ..extensions import db
from ..models import ACCOUNT_SCOPE, Account, BudgetAlert, MonthlySpend, Site
from ..models.base import utcnow

log = logging.getLogger(__name__)
THRESHOLDS = (80, 100)
_PENDING = "budget_alerts"  # session.info key: alert ids to announce once the commit is done
_listeners = []


class BudgetReached(Exception):
    """A charge would take a monthly budget past its limit."""

    def __init__(self, scope, budget, spent, needed, site_name=None):
        self.scope, self.budget, self.spent, self.needed = scope, budget, spent, needed
        what = "the account's monthly budget" if scope == "account" else f"site {site_name!r}'s monthly budget"
        super().__init__(f"{what} of {budget} credits is used up ({spent} spent this month, "
                         f"{max(0, budget - spent)} left, {needed} needed)")
        self.reason = f"{scope} monthly budget reached"


def month_key(dt=None):
    dt = dt or utcnow()
    return f"{dt.year:04d}-{dt.month:02d}"


def month_bounds(key):
    """[start, end) of month "YYYY-MM" as naive UTC datetimes (the database's convention)."""
    year, month = int(key[:4]), int(key[5:7])
    start = datetime(year, month, 1)
    end = datetime(year + (month == 12), month % 12 + 1, 1)
    return start, end


def spent(account_id, site_id=ACCOUNT_SCOPE, month=None):
    """Credits debited to the account (site_id 0) or one site in `month` (default: this one)."""
    value = db.session.execute(select(MonthlySpend.credits).where(
        MonthlySpend.account_id == account_id, MonthlySpend.site_id == site_id,
        MonthlySpend.month == (month or month_key()))).scalar()
    return value or 0


def _add(account_id, site_id, month, credits):
    """Add `credits` to the account's counter and the site's; returns their new values
    (account, site). One statement (a two-row upsert) on PostgreSQL and SQLite."""
    dialect = db.session.get_bind().dialect.name
    rows = [dict(account_id=account_id, site_id=scope, month=month, credits=credits)
            for scope in (ACCOUNT_SCOPE, site_id)]
    if dialect in ("postgresql", "sqlite"):
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as upsert
        else:
            from sqlalchemy.dialects.sqlite import insert as upsert
        stmt = upsert(MonthlySpend).values(rows)
        stmt = stmt.on_conflict_do_update(
            index_elements=["account_id", "site_id", "month"],
            set_={"credits": MonthlySpend.credits + stmt.excluded.credits}
        ).returning(MonthlySpend.site_id, MonthlySpend.credits)
        after = dict(db.session.execute(stmt, execution_options={"synchronize_session": False}).all())
        return after[ACCOUNT_SCOPE], after[site_id]
    # Other databases: the account lock held by the caller makes update-then-insert safe.
    out = []
    for values in rows:
        row = db.session.execute(update(MonthlySpend).where(
            MonthlySpend.account_id == account_id, MonthlySpend.site_id == values["site_id"],
            MonthlySpend.month == month).values(credits=MonthlySpend.credits + credits)
            .returning(MonthlySpend.credits), execution_options={"synchronize_session": False}).first()
        if row is None:
            db.session.execute(insert(MonthlySpend).values(**values))
        out.append(credits if row is None else row[0])
    return tuple(out)


def record_charge(account_id, site_id, credits, now, budgets=None, keep=False):
    """Count one debit against this month's budgets; called by billing.charge right after the
    balance debit (which holds the account's row lock, and returned `budgets`: the account's
    and the site's). Raises BudgetReached to refuse it; with `keep` (an AI answer the
    provider already billed) the debit is counted even past the budget and the
    BudgetReached is returned instead, for the caller to pause on. Else returns None."""
    if credits <= 0:
        return None
    month = month_key(now)
    if budgets is None:
        budgets = db.session.execute(select(Account.monthly_budget, Site.monthly_budget)
                                     .join(Site, Site.account_id == Account.id)
                                     .where(Account.id == account_id, Site.id == site_id)).one()
    acc_budget, site_budget = budgets
    acc_after, site_after = _add(account_id, site_id, month, credits)
    # Kept: "spent" includes this debit (the next item needs as much room as this one took).
    before = 0 if keep else credits
    reached = None
    if acc_budget is not None and acc_after > acc_budget:
        reached = BudgetReached("account", acc_budget, acc_after - before, credits)
    elif site_budget is not None and site_after > site_budget:
        site_name = db.session.execute(select(Site.name).where(Site.id == site_id)).scalar()
        reached = BudgetReached("site", site_budget, site_after - before, credits, site_name)
    if reached is not None and not keep:
        raise reached
    for scope_id, budget, after in ((ACCOUNT_SCOPE, acc_budget, acc_after), (site_id, site_budget, site_after)):
        if budget:
            for t in THRESHOLDS:
                if after - credits < math.ceil(budget * t / 100) <= after:
                    record_alert(account_id, scope_id, month, t, after, budget, trigger_site_id=site_id)
    return reached


def check_thresholds(account_id, site_id, budget, month=None, trigger_site_id=None):
    """After a budget changed: the thresholds the month's spend already reached, if not yet
    announced (a budget lowered below what was spent alerts at once). Caller holds the lock."""
    if not budget:
        return
    month = month or month_key()
    now_spent = spent(account_id, site_id, month)
    for t in THRESHOLDS:
        if now_spent >= math.ceil(budget * t / 100):
            record_alert(account_id, site_id, month, t, now_spent, budget, trigger_site_id)


def record_alert(account_id, site_id, month, threshold, spent_now, budget, trigger_site_id=None):
    """Insert the (scope, month, threshold) alert unless it exists. Race-free: every caller
    holds the account's lock (a charge, or a budget change through billing.lock_account)."""
    done = db.session.execute(select(BudgetAlert.id).where(
        BudgetAlert.account_id == account_id, BudgetAlert.site_id == site_id, BudgetAlert.month == month,
        BudgetAlert.threshold == threshold)).first()
    if done:
        return None
    alert_id = db.session.execute(insert(BudgetAlert).values(
        account_id=account_id, site_id=site_id, month=month, threshold=threshold, spent=spent_now, budget=budget,
        trigger_site_id=trigger_site_id, created_at=utcnow()).returning(BudgetAlert.id)).scalar()
    db.session.info.setdefault(_PENDING, []).append(alert_id)
    return alert_id


# -- announcing alerts once they are committed ----------------------------------------------------
def on_alert(fn):
    """Subscribe fn(alert_ids) to alerts after their transaction committed (notifications)."""
    if fn not in _listeners:
        _listeners.append(fn)


@event.listens_for(Session, "after_commit")
def _announce(session):
    ids = session.info.pop(_PENDING, None)
    for fn in list(_listeners) if ids else ():
        try:
            fn(list(ids))
        except Exception:  # e.g. Redis down: the notify sweep picks undispatched alerts up
            log.warning("could not announce budget alerts %s", ids, exc_info=True)


@event.listens_for(Session, "after_rollback")
def _forget(session):
    session.info.pop(_PENDING, None)


def on_run_event(event, run, actor, reason):
    """A run paused on a budget: that budget is used up (a charge was refused), which is its
    100 % even when the refused charge would have crossed it rather than landed on it. The
    alert is recorded now, under the account's lock, once per scope and month as always."""
    if event != "run.paused" or "budget" not in (reason or "") or actor != "system":
        return
    site_scope = reason.startswith("site")
    db.session.commit()
    db.session.execute(update(Account).where(Account.id == run.account_id).values(credits=Account.credits))
    if site_scope:
        budget = db.session.execute(select(Site.monthly_budget).where(Site.id == run.site_id)).scalar()
    else:
        budget = db.session.execute(select(Account.monthly_budget).where(Account.id == run.account_id)).scalar()
    if budget is not None:
        scope_id = run.site_id if site_scope else ACCOUNT_SCOPE
        record_alert(run.account_id, scope_id, month_key(), 100, spent(run.account_id, scope_id), budget,
                     trigger_site_id=run.site_id)
    db.session.commit()
