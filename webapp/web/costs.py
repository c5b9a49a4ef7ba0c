"""Pages: /account (balance, limits, the monthly budget form for owners) and /costs (the
month's cost report: daily spend against the budget line with a month-end forecast, as an
inline SVG drawn here, and the top sites, stages and models). Thin: the figures come from
webapp/account.py and webapp/automation/cost_report.py."""
from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from markupsafe import Markup, escape

from .. import account
from ..access import has_role, needs
from ..automation import cost_report
from ..automation.budgets import budgets_for
from ..errors import AppError
from ..extensions import db

bp = Blueprint("costs_web", __name__)
TOP = 5


@bp.route("/account", methods=["GET", "POST"])
@login_required
@needs("owner")
def account_page():
    errors, form = {}, {}
    if request.method == "POST":
        if not has_role(current_user, "owner"):
            abort(403, "Setting the budget needs the owner role.")
        form = request.form
        try:
            account.update_account(current_user, {"monthly_budget": form.get("monthly_budget", "").strip() or None},
                                   f"user:{current_user.email}")
            flash("Monthly budget saved.", "success")
            return redirect(url_for("costs_web.account_page"))
        except AppError as e:
            db.session.rollback()
            errors = getattr(e, "errors", None) or {"monthly_budget": e.message}
    summary = account.summary(current_user.account_id)
    if not form:
        form = {"monthly_budget": "" if summary["monthly_budget"] is None else summary["monthly_budget"]}
    return render_template("account.html", summary=summary, form=form, errors=errors), 400 if errors else 200


@bp.get("/costs")
@login_required
def costs_page():
    errors = {}
    try:
        month = cost_report.parse_month(request.args.get("month"))
    except cost_report.FieldError as e:
        errors, month = e.errors, cost_report.month_key()
    acc_id = current_user.account_id
    ledger = cost_report.ledger_figures(acc_id, month)
    groups = {g: cost_report.rows(acc_id, month, g, ledger) for g in ("site", "stage", "model")}
    totals = cost_report.totals(acc_id, month, groups["stage"], ledger)
    days = cost_report.daily(acc_id, month)
    forecast = cost_report.forecast(month, totals["credits"])
    budget = next((b["budget"] for b in budgets_for(acc_id) if b["scope"] == "account"), None)
    tops = {g: sorted(r, key=lambda x: -x["credits"])[:TOP] for g, r in groups.items()}
    return render_template("costs.html", month=month, totals=totals, days=days, forecast=forecast, budget=budget,
                           tops=tops, chart=chart_svg(days, budget, forecast, totals["credits"]),
                           prev_month=_shift(month, -1), next_month=_shift(month, 1), errors=errors), \
        400 if errors else 200


def _shift(month, delta):
    y, m = int(month[:4]), int(month[5:7]) + delta
    y, m = y + (m - 1) // 12, (m - 1) % 12 + 1
    return f"{y:04d}-{m:02d}"


def chart_svg(days, budget, forecast, spent, width=720, height=220):
    """Cumulative spend per day (bars: that day's spend), the budget as a line, and the
    forecast as a dashed line from today's total to the month's end. Numbers only go into
    the SVG; the one text (the month's days) is escaped."""
    pad_l, pad_b, pad_t = 48, 24, 12
    w, h = width - pad_l - 8, height - pad_b - pad_t
    n = len(days)
    cumulative, total = [], 0
    for d in days:
        total += d["credits"]
        cumulative.append(total)
    top = max([forecast, spent, budget or 0, 1] + cumulative)
    top = int(top * 1.1) + 1

    def x(i):
        return pad_l + w * i / n

    def y(v):
        return pad_t + h - h * v / top

    parts = [f'<svg class="cost-chart" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="Daily spend, cumulative, against the monthly budget" xmlns="http://www.w3.org/2000/svg">']
    parts.append(f'<line x1="{pad_l}" y1="{y(0):.1f}" x2="{pad_l + w}" y2="{y(0):.1f}" stroke="#999"/>')
    for frac in (0.5, 1.0):
        v = int(top * frac)
        parts.append(f'<text x="{pad_l - 4}" y="{y(v) + 4:.1f}" font-size="10" text-anchor="end">{v:,}</text>')
    bw = max(1.0, w / n - 2)
    for i, d in enumerate(days):
        if d["credits"]:
            parts.append(f'<rect class="day" x="{x(i) + 1:.1f}" y="{y(d["credits"]):.1f}" width="{bw:.1f}" '
                         f'height="{y(0) - y(d["credits"]):.1f}" fill="#9ab"><title>{escape(d["day"])}: '
                         f'{d["credits"]:,} credits</title></rect>')
    # Cumulative spend up to the last day with data (or all days for a past month).
    last = max([i for i, d in enumerate(days) if d["credits"]] or [-1])
    if last >= 0:
        pts = " ".join(f"{x(i + 1):.1f},{y(c):.1f}" for i, c in enumerate(cumulative[:last + 1]))
        parts.append(f'<polyline class="cumulative" points="{x(0):.1f},{y(0):.1f} {pts}" fill="none" '
                     f'stroke="#246" stroke-width="2"/>')
        if forecast > spent:
            parts.append(f'<line class="forecast" x1="{x(last + 1):.1f}" y1="{y(spent):.1f}" x2="{x(n):.1f}" '
                         f'y2="{y(forecast):.1f}" stroke="#246" stroke-dasharray="5,4"/>')
    if budget is not None:
        parts.append(f'<line class="budget" x1="{pad_l}" y1="{y(budget):.1f}" x2="{pad_l + w}" y2="{y(budget):.1f}" '
                     f'stroke="#c33" stroke-width="1.5"><title>budget {budget:,}</title></line>')
        parts.append(f'<text x="{pad_l + w - 2}" y="{y(budget) - 4:.1f}" font-size="10" text-anchor="end" '
                     f'fill="#c33">budget {budget:,}</text>')
    for i in (0, n // 2, n - 1):
        parts.append(f'<text x="{x(i) + bw / 2:.1f}" y="{height - 6}" font-size="10" text-anchor="middle">'
                     f'{escape(days[i]["day"][5:])}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
