"""The cost report of an account's month: AI calls grouped by site, stage, model, day or run
(credits, calls, tokens), the month's ledger beside them, and a month-end forecast.

Every figure comes from the AI log and the ledger: each AI call is one AITaskLog row and one
ledger debit of the same credits, written together (billing.charge), so the rows add up to
the month's debits exactly, and debits + top-ups = the balance change. The month is the
calendar month in UTC (spend.py). Scoped by account in every query; the index
ix_ai_log_account_time covers every grouping (one index range scan per report).
"""
import calendar
import re
from datetime import datetime

from sqlalchemy import case, func, select

from ..errors import BadRequest
from ..extensions import db
from ..models import AITaskLog, CreditTransaction, Site
from ..models.base import utcnow
from .spend import month_bounds, month_key
from .stages import STAGES

GROUPS = ("site", "stage", "model", "day", "run")
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
STREAM_CHUNK = 1000


class FieldError(BadRequest):
    def __init__(self, field, message):
        self.errors = {field: message}
        super().__init__(f"'{field}' {message}")


def parse_month(value):
    """"YYYY-MM" (default: this month, UTC) or a FieldError naming `month`."""
    if value is None or value == "":
        return month_key()
    m = _MONTH.match(value) if isinstance(value, str) else None
    if not m or not 1 <= int(m.group(2)) <= 12 or not 2000 <= int(m.group(1)) <= 2999:
        raise FieldError("month", "must be a month as YYYY-MM (e.g. 2026-12)")
    return value


def parse_group(value, default="site"):
    if value is None or value == "":
        return default
    if value not in GROUPS:
        raise FieldError("group_by", f"must be one of: {', '.join(GROUPS)}")
    return value


def _key(group):
    if group == "day":
        return func.date(AITaskLog.created_at)
    return {"site": AITaskLog.site_id, "stage": AITaskLog.stage, "model": AITaskLog.model,
            "run": AITaskLog.run_id}[group]


def _where(account_id, month):
    start, end = month_bounds(month)
    return (AITaskLog.account_id == account_id, AITaskLog.created_at >= start, AITaskLog.created_at < end)


def grouped_query(account_id, month, group_by):
    key = _key(group_by).label("key")
    q = (select(key, func.sum(AITaskLog.credits).label("credits"), func.count().label("calls"),
                func.sum(AITaskLog.tokens).label("tokens"))
         .where(*_where(account_id, month)).group_by(key))
    if group_by in ("site", "model"):
        return q.order_by(func.sum(AITaskLog.credits).desc(), key)
    return q.order_by(key)


def _labeller(account_id, group_by):
    if group_by == "site":
        # An account has few sites: one query for all names; a deleted site keeps its id.
        names = dict(db.session.execute(select(Site.id, Site.name).where(Site.account_id == account_id)).all())
        return lambda k: names.get(k, f"site {k} (deleted)")
    if group_by == "stage":
        return lambda k: STAGES[k].name if k in STAGES else f"stage {k}"
    if group_by == "run":
        return lambda k: f"run {k}" if k is not None else "(deleted run)"
    return lambda k: str(k)


def _row(key, label, credits, calls, tokens):
    if isinstance(key, datetime):
        key = key.date().isoformat()
    elif key is not None and not isinstance(key, (int, str)):
        key = key.isoformat()  # a date from PostgreSQL
    return {"key": key, "label": label(key) if callable(label) else label, "credits": int(credits or 0),
            "calls": int(calls or 0), "tokens": int(tokens or 0)}


def iter_rows(account_id, month, group_by, ledger=None):
    """The report's rows, streamed from the database (a server-side cursor on PostgreSQL):
    memory stays bounded however many runs or days the month has. A deleted site takes its
    AI log with it, while the ledger keeps its debits: those come last as one row (key null,
    "deleted sites"), so the rows still add up to the month's debits. `ledger`: the month's
    ledger_figures if the caller has them already."""
    label = _labeller(account_id, group_by)
    result = db.session.execute(grouped_query(account_id, month, group_by)
                                .execution_options(stream_results=True, yield_per=STREAM_CHUNK))
    for key, credits, calls, tokens in result:
        yield _row(key, label, credits, calls, tokens)
    ledger = ledger or ledger_figures(account_id, month)
    if ledger["orphan_calls"]:
        yield _row(None, "deleted sites", ledger["orphan_credits"], ledger["orphan_calls"], 0)


def rows(account_id, month, group_by, ledger=None):
    return list(iter_rows(account_id, month, group_by, ledger))


def ledger_figures(account_id, month):
    """The month's ledger in one statement: debits, top-ups, and the debits whose AI log row is
    gone (its site was deleted: the ledger row's ai_task_log_id was set to null)."""
    start, end = month_bounds(month)
    amount = CreditTransaction.amount
    orphan = (amount < 0) & CreditTransaction.ai_task_log_id.is_(None)
    debits, added, orphan_credits, orphan_calls = db.session.execute(select(
        func.coalesce(func.sum(case((amount < 0, -amount), else_=0)), 0),
        func.coalesce(func.sum(case((amount > 0, amount), else_=0)), 0),
        func.coalesce(func.sum(case((orphan, -amount), else_=0)), 0),
        func.coalesce(func.sum(case((orphan, 1), else_=0)), 0))
        .where(CreditTransaction.account_id == account_id, CreditTransaction.created_at >= start,
               CreditTransaction.created_at < end)).one()
    return {"debits": int(debits), "top_ups": int(added), "orphan_credits": int(orphan_credits),
            "orphan_calls": int(orphan_calls)}


def totals(account_id, month, report_rows=None, ledger=None):
    """The month's AI calls (credits, calls, tokens) and its ledger: debits, top-ups, the
    balance change and the balances at both ends (credits == debits; start + change == end).
    From `report_rows` (any grouping of the month, deleted sites' row included) when given."""
    ledger = ledger or ledger_figures(account_id, month)
    if report_rows is None:
        report_rows = rows(account_id, month, "stage", ledger)
    start, _end = month_bounds(month)
    balance_start = _balance_before(account_id, start)
    change = ledger["top_ups"] - ledger["debits"]
    return {"month": month, "credits": sum(r["credits"] for r in report_rows),
            "calls": sum(r["calls"] for r in report_rows), "tokens": sum(r["tokens"] for r in report_rows),
            "ledger": {"debits": ledger["debits"], "top_ups": ledger["top_ups"], "balance_change": change,
                       "balance_start": balance_start, "balance_end": balance_start + change}}


def _balance_before(account_id, when):
    """The balance as of `when`: the last ledger row before it (rows carry balance_after)."""
    value = db.session.execute(select(CreditTransaction.balance_after).where(
        CreditTransaction.account_id == account_id, CreditTransaction.created_at < when)
        .order_by(CreditTransaction.created_at.desc(), CreditTransaction.id.desc()).limit(1)).scalar()
    return int(value or 0)


def spent_this_month(account_id, month=None):
    """Ledger debits of the account in `month` (default: this one): the definition of spent."""
    start, end = month_bounds(month or month_key())
    return int(db.session.execute(select(func.coalesce(func.sum(-CreditTransaction.amount), 0)).where(
        CreditTransaction.account_id == account_id, CreditTransaction.amount < 0,
        CreditTransaction.created_at >= start, CreditTransaction.created_at < end)).scalar())


def days_of(month):
    start, _ = month_bounds(month)
    return calendar.monthrange(start.year, start.month)[1]


def daily(account_id, month):
    """Credits per day of the month, every day present (0 when nothing was spent)."""
    by_day = {r["key"]: r["credits"] for r in iter_rows(account_id, month, "day")}
    return [{"day": f"{month}-{d:02d}", "credits": by_day.get(f"{month}-{d:02d}", 0)}
            for d in range(1, days_of(month) + 1)]


def forecast(month, spent, now=None):
    """Month-end spend at the pace of the month so far (a past month: what it was; a future
    one: 0). The pace counts the elapsed part of today, so a busy morning is not a full day."""
    now = now or utcnow()
    start, end = month_bounds(month)
    if now >= end:
        return spent
    if now < start:
        return 0
    elapsed = max((now - start).total_seconds(), 3600.0)  # an hour at least: no wild first-minute pace
    return int(round(spent * (end - start).total_seconds() / elapsed))
