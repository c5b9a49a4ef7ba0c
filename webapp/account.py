"""The account as its users see it: balance, holds, limits, the monthly budget and what was
spent this month; and changing budgets (owners): the account's and a site's.

A budget change is taken under the account's lock (the lock every start and every charge
takes), then announces the thresholds the month's spend already reached, then resumes the
runs a budget had paused if the new budget leaves them room (a run still over stays paused).
"""
from flask import current_app
from sqlalchemy import select

from . import audit
from .access import check_role
from .automation import billing, budgets, cost_report, spend
from .automation.service import AutomationService
from .errors import AppError, BadRequest, NotFound
from .extensions import db
from .models import ACCOUNT_SCOPE, Account, AutomationRun, Site


class FieldErrors(BadRequest):
    def __init__(self, errors):
        self.errors = errors
        super().__init__("; ".join(f"'{k}' {v}" for k, v in errors.items()))


def summary(account_id):
    acc = db.session.get(Account, account_id)
    if acc is None:
        raise NotFound("Account not found.")
    balance, held, available = billing.credit_position(account_id)
    cfg = current_app.config
    month = spend.month_key()
    return {
        "id": acc.id, "name": acc.name, "balance": balance, "held": held, "available": available,
        "limits": {"max_active_runs": acc.max_active_runs, "max_keywords_per_site": acc.max_keywords_per_site,
                   "weight": acc.weight if acc.weight is not None else 1.0,
                   "effective_max_active_runs": acc.max_active_runs if acc.max_active_runs is not None
                   else cfg.get("ACCOUNT_MAX_ACTIVE_RUNS"),
                   "effective_max_keywords_per_site": acc.max_keywords_per_site if acc.max_keywords_per_site is not None
                   else cfg.get("MAX_KEYWORDS_PER_SITE", 100000)},
        "monthly_budget": acc.monthly_budget,
        "month": month,
        "spent_this_month": cost_report.spent_this_month(account_id, month),
        "budget_left": next((b["left"] for b in budgets.budgets_for(account_id) if b["scope"] == "account"), None),
    }


def update_account(user, data, actor):
    """PATCH /account: only `monthly_budget` (a whole number >= 0, or null for none)."""
    check_role(user, "owner")
    errors = {k: "is not a known field" for k in sorted(set(data) - {"monthly_budget"})}
    value, problem = budgets.parse_budget(data.get("monthly_budget"))
    if "monthly_budget" not in data:
        errors["monthly_budget"] = "is required (a number of credits, or null for no budget)"
    elif problem:
        errors["monthly_budget"] = problem
    if errors:
        raise FieldErrors(errors)
    set_budget(user.account_id, None, value, actor)
    return summary(user.account_id)


def set_budget(account_id, site_id, value, actor):
    """Set the account's (site_id None) or a site's monthly budget; audit, alerts, resumes."""
    db.session.commit()  # the lock must be the transaction's first statement (billing.lock_account)
    billing.lock_account(account_id)
    if site_id is None:
        target = db.session.get(Account, account_id)
    else:
        target = db.session.execute(select(Site).where(Site.id == site_id, Site.account_id == account_id)
                                    ).scalar_one_or_none()
        if target is None:
            db.session.rollback()
            raise NotFound(f"Site {site_id} not found.")
    old = target.monthly_budget
    target.monthly_budget = value
    if old != value:
        audit.record(account_id, actor, "budget.update", site_id=site_id, scope="account" if site_id is None else "site",
                     changes={"monthly_budget": [old, value]})
        spend.check_thresholds(account_id, ACCOUNT_SCOPE if site_id is None else site_id, value,
                               trigger_site_id=site_id)
    db.session.commit()
    if old != value:
        resume_budget_paused(account_id, site_id, actor)


def resume_budget_paused(account_id, site_id, actor):
    """Resume the runs a budget paused (of one site, or the whole account's) that now fit."""
    svc = AutomationService(account_id, actor=actor)
    where = [AutomationRun.account_id == account_id, AutomationRun.status == "paused",
             AutomationRun.pause_reason.like("%budget%")]
    if site_id is not None:
        where.append(AutomationRun.site_id == site_id)
    resumed = []
    for run_id in db.session.execute(select(AutomationRun.id).where(*where).order_by(AutomationRun.id)).scalars().all():
        try:
            svc.resume(run_id, reason="monthly budget raised")
            resumed.append(run_id)
        except AppError as e:  # still over, or it changed state meanwhile: it stays as it is
            db.session.rollback()
            current_app.logger.info("run %s stays paused after the budget change: %s", run_id, e.message)
    return resumed
