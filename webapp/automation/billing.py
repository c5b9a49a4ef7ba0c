"""Charging: one AI call = one AITaskLog row + one CreditTransaction + the balance debit,
all inside the caller's transaction (the same one that stores the call's output).

Holds: a run reserves its required credits when it starts (`credits_hold`); while it is
active it still holds what it has not yet been charged of that, and nothing once it ended.
New starts may only use `balance - held`, decided under the account's row lock so that two
starts racing for the same credits cannot both pass."""
from sqlalchemy import case, func, select, update

from ..extensions import db
from ..models import ACTIVE_STATUSES, Account, AITaskLog, AutomationRun, CreditTransaction, Site
from ..models.base import utcnow
from . import spend


class InsufficientCredits(Exception):
    def __init__(self, needed, available):
        super().__init__(f"insufficient credits: needed {needed}, available {available}")
        self.needed, self.available = needed, available


def charge(run, stage, function, item_type, item_id, credits, tokens, model, on_budget_reached=None):
    # Atomic conditional debit: the balance can never go negative, even with many workers.
    # It also returns the monthly budgets that apply (no extra round trip for spend.py).
    # With on_budget_reached (an AI answer already billed by the provider), a charge past a
    # monthly budget is kept and on_budget_reached(BudgetReached) called; else it raises.
    site_budget = select(Site.monthly_budget).where(Site.id == run.site_id).scalar_subquery()
    row = db.session.execute(
        update(Account).where(Account.id == run.account_id, Account.credits >= credits)
        .values(credits=Account.credits - credits).returning(Account.credits, Account.monthly_budget, site_budget),
        execution_options={"synchronize_session": False},  # the worker's hot path: see stages._guarded
    ).first()
    if row is None:
        available = db.session.execute(db.select(Account.credits).where(Account.id == run.account_id)).scalar()
        raise InsufficientCredits(credits, available)
    # Monthly budgets, under the row lock the debit just took (spend.BudgetReached refuses).
    # One timestamp for the counter's month and both rows: they fall in the same month.
    now = utcnow()
    reached = spend.record_charge(run.account_id, run.site_id, credits, now, budgets=(row[1], row[2]),
                                  keep=on_budget_reached is not None)
    log = AITaskLog(account_id=run.account_id, site_id=run.site_id, run_id=run.id, stage=stage,
                    function=function, item_type=item_type, item_id=item_id, credits=credits,
                    tokens=tokens, model=model, created_at=now)
    db.session.add(log)
    db.session.add(CreditTransaction(account_id=run.account_id, amount=-credits, balance_after=row[0],
                                     reason=f"{function} run {run.id} stage {stage} {item_type} {item_id}",
                                     run_id=run.id, ai_task_log=log, created_at=now))
    if reached is not None:
        on_budget_reached(reached)
    return log


def top_up(account, amount, reason="top-up"):
    row = db.session.execute(
        update(Account).where(Account.id == account.id).values(credits=Account.credits + amount)
        .returning(Account.credits)
    ).first()
    db.session.add(CreditTransaction(account_id=account.id, amount=amount, balance_after=row[0], reason=reason))
    return row[0]


def held_credits(account_id, site_id=None):
    """Credits reserved by the account's active runs (of one site, with site_id): each run's
    hold minus what it was charged."""
    left = case((AutomationRun.credits_hold > AutomationRun.total_credits_used,
                 AutomationRun.credits_hold - AutomationRun.total_credits_used), else_=0)
    where = [AutomationRun.account_id == account_id, AutomationRun.status.in_(ACTIVE_STATUSES)]
    if site_id is not None:
        where.append(AutomationRun.site_id == site_id)
    return db.session.execute(select(func.coalesce(func.sum(left), 0)).where(*where)).scalar()


def credit_position(account_id):
    """(balance, held, available) as of now."""
    balance = db.session.execute(select(Account.credits).where(Account.id == account_id)).scalar()
    held = held_credits(account_id)
    return balance, held, balance - held


def lock_account(account_id):
    """Serialise credit decisions of one account until the transaction ends: a no-op write
    takes the account's row lock (PostgreSQL) or the database write lock (SQLite). Must be
    the first statement of its transaction, so later reads see every committed hold."""
    db.session.execute(update(Account).where(Account.id == account_id).values(credits=Account.credits))
