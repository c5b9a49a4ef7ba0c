"""Charging: one AI call = one AITaskLog row + one CreditTransaction + the balance debit,
all inside the caller's transaction (the same one that stores the call's output)."""
from sqlalchemy import update

from ..extensions import db
from ..models import Account, AITaskLog, CreditTransaction


class InsufficientCredits(Exception):
    def __init__(self, needed, available):
        super().__init__(f"insufficient credits: needed {needed}, available {available}")
        self.needed, self.available = needed, available


def charge(run, stage, function, item_type, item_id, credits, tokens, model):
    # Atomic conditional debit: the balance can never go negative, even with many workers.
    row = db.session.execute(
        update(Account).where(Account.id == run.account_id, Account.credits >= credits)
        .values(credits=Account.credits - credits).returning(Account.credits)
    ).first()
    if row is None:
        available = db.session.execute(db.select(Account.credits).where(Account.id == run.account_id)).scalar()
        raise InsufficientCredits(credits, available)
    log = AITaskLog(account_id=run.account_id, site_id=run.site_id, run_id=run.id, stage=stage,
                    function=function, item_type=item_type, item_id=item_id, credits=credits,
                    tokens=tokens, model=model)
    db.session.add(log)
    db.session.flush()
    db.session.add(CreditTransaction(account_id=run.account_id, amount=-credits, balance_after=row[0],
                                     reason=f"{function} run {run.id} stage {stage} {item_type} {item_id}",
                                     run_id=run.id, ai_task_log_id=log.id))
    return log


def top_up(account, amount, reason="top-up"):
    row = db.session.execute(
        update(Account).where(Account.id == account.id).values(credits=Account.credits + amount)
        .returning(Account.credits)
    ).first()
    db.session.add(CreditTransaction(account_id=account.id, amount=amount, balance_after=row[0], reason=reason))
    return row[0]
