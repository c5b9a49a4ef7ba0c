"""/api/v1/costs/: the account's cost report for a month (webapp/automation/cost_report.py),
as JSON or, with `format=csv`, as a streamed text/csv file. Readable by every role."""
import csv
import io

from flask import Response, g, request, stream_with_context

from ..automation import cost_report
from ..automation.budgets import budgets_for
from . import bp
from . import schemas as s
from .context import authenticate
from .errors import ApiError, ok
from .spec import endpoint

CSV_DOC = {"responses": {"200": {"content": {"text/csv": {"schema": {
    "type": "string", "description": "key,label,credits,calls,tokens: one line per row, streamed"}}}}}}


def _params(args):
    fmt = args.get("format") or "json"
    if fmt not in ("json", "csv"):
        raise ApiError(errors={"format": "must be json or csv"})
    try:
        return cost_report.parse_month(args.get("month")), cost_report.parse_group(args.get("group_by")), fmt
    except cost_report.FieldError as e:
        raise ApiError(e.message, 400, e.errors)


@endpoint("/costs", ["GET"], query=s.CostQuery, ok=s.ok("CostReportResponse", s.CostReport), doc=CSV_DOC,
          tags=["costs"])
def cost_report_view():
    """Credits, calls and tokens of the account's AI calls in a month (calendar month, UTC),
    grouped by site, stage, model, day or run, with the month's ledger (the rows add up to its
    debits; debits and top-ups to the balance change) and a month-end forecast. `format=csv`
    streams the rows as text/csv."""
    month, group_by, _fmt = _params(request.args)
    ledger = cost_report.ledger_figures(g.account_id, month)
    rows = cost_report.rows(g.account_id, month, group_by, ledger)
    totals = cost_report.totals(g.account_id, month, rows, ledger)  # from the rows: one scan of the month
    budget = next((b["budget"] for b in budgets_for(g.account_id) if b["scope"] == "account"), None)
    return ok({"month": month, "group_by": group_by, "rows": rows, "totals": totals,
               "forecast": cost_report.forecast(month, totals["credits"]), "monthly_budget": budget})


@bp.before_request
def _csv_stream():
    """`format=csv`: answered here, before the JSON view (whose response checking would read
    the whole body into memory): the same auth, the same parameters, rows streamed."""
    if request.endpoint != "api.cost_report_view" or request.args.get("format") != "csv":
        return None
    authenticate()
    month, group_by, _fmt = _params(request.args)
    account_id = g.account_id

    def lines():
        buf = io.StringIO()
        out = csv.writer(buf)
        out.writerow(["key", "label", "credits", "calls", "tokens"])
        for row in cost_report.iter_rows(account_id, month, group_by):
            out.writerow([row["key"] if row["key"] is not None else "", _safe(row["label"]), row["credits"],
                          row["calls"], row["tokens"]])
            if buf.tell() > 8192:
                yield buf.getvalue()
                buf.seek(0)
                buf.truncate()
        yield buf.getvalue()

    resp = Response(stream_with_context(lines()), mimetype="text/csv")
    resp.headers["Content-Disposition"] = f'attachment; filename="costs-{month}-{group_by}.csv"'
    return resp


def _safe(text):
    # A site name starting with = + - @ would be a formula in a spreadsheet: quote it.
    return "'" + text if text and text[0] in "=+-@\t\r" else text
