"""Monthly budgets as a start sees them: what is left of each budget that applies to a site
(the account's and the site's), the start check, and the resume check.

Left = budget - spent this month (spend.py, UTC calendar month) - held by active runs (their
hold minus what they were charged: billing.held_credits). Holds count against a budget as
they count against the balance, and the start check runs where the balance check runs —
under the account's lock, in the transaction that commits the new run's hold — so of two
starts racing for the last of a budget the second sees the first's hold.
"""
import re

from sqlalchemy import select

from ..errors import BadRequest
from ..extensions import db
from ..models import ACCOUNT_SCOPE, Account, Site
from . import billing, costs, spend
from .stages import STAGES


def _fmt(n):
    return f"{n:,}"


def budgets_for(account_id, site_id=None, month=None):
    """Every budget that applies (only those set): [{scope, site_id, budget, spent, held, left}].
    With site_id, the account's budget and that site's; without, the account's only."""
    month = month or spend.month_key()
    acc_budget = db.session.execute(select(Account.monthly_budget).where(Account.id == account_id)).scalar()
    rows = []
    if acc_budget is not None:
        spent = spend.spent(account_id, ACCOUNT_SCOPE, month)
        held = billing.held_credits(account_id)
        rows.append({"scope": "account", "site_id": None, "name": "account", "budget": acc_budget, "spent": spent,
                     "held": held, "left": max(0, acc_budget - spent - held)})
    if site_id is not None:
        site = db.session.execute(select(Site.monthly_budget, Site.name).where(
            Site.id == site_id, Site.account_id == account_id)).first()
        if site is not None and site.monthly_budget is not None:
            spent = spend.spent(account_id, site_id, month)
            held = billing.held_credits(account_id, site_id)
            rows.append({"scope": "site", "site_id": site_id, "name": site.name, "budget": site.monthly_budget,
                         "spent": spent, "held": held, "left": max(0, site.monthly_budget - spent - held)})
    return rows


def describe(row):
    return "the account's monthly budget" if row["scope"] == "account" else f"site {row['name']!r}'s monthly budget"


def check_start(account_id, site_id, required, estimate=None):
    """Refuse a start whose required credits do not fit in what is left of a budget. The
    caller holds the account's lock (billing.lock_account) and commits the hold after it."""
    for row in budgets_for(account_id, site_id):
        if required > row["left"]:
            held = f", held by active runs {_fmt(row['held'])}" if row["held"] else ""
            est = f" (estimate {_fmt(estimate)} x 1.2)" if estimate is not None else ""
            raise BadRequest(f"Over {describe(row)}: this run requires {_fmt(required)}{est}, "
                             f"{_fmt(row['left'])} left of {_fmt(row['budget'])} this month "
                             f"(spent {_fmt(row['spent'])}{held}). Raise or remove the budget, or wait for next month.")


def over_budget(run):
    """Why `run` may not go on, or None: a budget that applies has no room for the charge it
    was paused on (spend.BudgetReached's "N needed", kept in the pause message), or for one
    item of its stage at the flat price when the pause was not a budget's."""
    need = _needed(run)
    for row in budgets_for(run.account_id, run.site_id):
        left = row["budget"] - row["spent"]
        if left < need:
            return (f"{describe(row)} of {_fmt(row['budget'])} credits has {_fmt(max(0, left))} left this month "
                    f"({_fmt(row['spent'])} spent), the next item needs {_fmt(need)}")
    return None


_NEEDED = re.compile(r"(\d+) needed\)")


def _needed(run):
    found = _NEEDED.search(run.error_message or "") if "budget" in (run.pause_reason or "") else None
    if found:
        return int(found.group(1))
    fn = STAGES[run.current_stage].function if run.current_stage in STAGES else None
    return costs.COSTS[fn].unit_credits if fn else 1


def parse_budget(value, field="monthly_budget"):
    """A budget from a request: a whole number of credits >= 0, or None (no budget).
    Returns (value, error)."""
    if value is None:
        return None, None
    if isinstance(value, str) and value.strip() == "":
        return None, None
    if isinstance(value, str) and value.strip().isdigit() and value.strip().isascii():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON's 5.0 is an integer to JSON Schema (and so to generated clients)
    if isinstance(value, bool) or not isinstance(value, int):
        return None, "must be a whole number of credits (0 or more), or null for no budget"
    if not 0 <= value <= 2**31 - 1:
        return None, "must be between 0 and 2147483647"
    return value, None
