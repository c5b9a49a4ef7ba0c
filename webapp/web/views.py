"""Server-rendered pages (SPEC §8). Views are thin: AutomationService does the work.

Every form works without JavaScript (POST, then redirect); htmx swaps panels in place and
polls them (`hx-trigger="every …"`); websockets (webapp/web/live.py) stream the log tail
and the processing state.
"""
from pathlib import Path

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, send_file, url_for
from flask_login import current_user, login_required
from sqlalchemy import func, select

from ..automation.config_schema import field_errors
from ..automation.logger import line_count, run_log_path, tail
from ..automation.service import AutomationService, overview_rows
from ..errors import AppError, NotFound
from ..extensions import db
from ..models import (AutomationConfig, Cluster, Content, ContentIdea, Image, Keyword, RunEvent, Site, Task)
from ..planner import import_rows, parse_csv

bp = Blueprint("web", __name__)
CONFIG_INT_FIELDS = [f"stage_{n}_batch_size" for n in range(1, 7)] + ["within_stage_delay", "between_stage_delay"]
TABS = {
    "keywords": (Keyword, "Keywords"), "clusters": (Cluster, "Clusters"), "ideas": (ContentIdea, "Ideas"),
    "tasks": (Task, "Tasks"), "content": (Content, "Content"), "images": (Image, "Images"),
}
PER_PAGE = 50


def service():
    return AutomationService(current_user.account_id, actor=f"user:{current_user.email}")


def owned_site(svc, site_id):
    try:
        return svc.site(site_id)
    except NotFound:
        abort(404)


def owned_run(svc, run_id):
    try:
        return svc.run(run_id)
    except NotFound:
        abort(404)


def is_htmx():
    return request.headers.get("HX-Request") == "true"


@bp.get("/")
@login_required
def dashboard():
    svc = service()
    sites = db.session.execute(select(Site).where(Site.account_id == current_user.account_id)
                               .order_by(Site.name)).scalars().all()
    rows = []
    for s in sites:
        cfg = db.session.execute(select(AutomationConfig).where(AutomationConfig.site_id == s.id)).scalar_one_or_none()
        counts = svc.stage_counts(s.id)
        rows.append({"site": s, "run": svc.active_run(s.id), "config": cfg, "pending": sum(counts.values()),
                     "keywords_pending": counts[1]})
    return render_template("dashboard.html", rows=rows)


# -- site automation page ----------------------------------------------------------------------
def automation_context(svc, site, errors=None, form_values=None):
    cfg = svc.config(site.id)
    run = svc.active_run(site.id)
    # One read of the pending counts serves the estimate and the overview; fresh (not the
    # cached overview) because it decides whether "Run now" is offered.
    counts, inputs = svc.pending_counts(site.id)
    estimate = svc.estimate_from(inputs)
    overview = overview_rows(counts)
    skips = db.session.execute(select(RunEvent).where(RunEvent.site_id == site.id, RunEvent.action == "scheduled_skip")
                               .order_by(RunEvent.id.desc()).limit(3)).scalars().all()
    start_block = None
    if run:
        start_block = f"Run {run.id} is {run.status}."
    elif not any(s["pending"] for s in overview):
        start_block = "Nothing to process: import keywords first."
    elif not estimate["sufficient"]:
        start_block = (f"Not enough credits: this run needs {estimate['required_credits']:,} "
                       f"(estimate × 1.2), you have {estimate['current_balance']:,}.")
    processing = svc.current_processing(site.id, run.id) if run and run.status == "running" else None
    log_lines, log_next = [], 0
    if run:
        path = run_log_path(current_app.config["LOG_DIR"], run.account_id, run.site_id, run.id)
        log_next = line_count(path)
        log_lines = tail(path, 30)
    return dict(site=site, config=svc.config_dict(cfg), run=run, estimate=estimate, overview=overview,
                history=svc.history(site.id), errors=errors or {}, form=form_values or {}, start_block=start_block,
                processing=processing, skips=skips, log_lines=log_lines, log_next=log_next,
                chart_max=max([s["pending"] for s in overview] + [1]))


@bp.get("/sites/<int:site_id>/automation")
@login_required
def site_automation(site_id):
    svc = service()
    site = owned_site(svc, site_id)
    return render_template("automation.html", **automation_context(svc, site))


@bp.get("/sites/<int:site_id>/automation/panel/<name>")
@login_required
def automation_panel(site_id, name):
    if name not in ("run", "overview", "history", "estimate"):
        abort(404)
    svc = service()
    site = owned_site(svc, site_id)
    return render_template(f"partials/{name}.html", **automation_context(svc, site))


@bp.post("/sites/<int:site_id>/automation/config")
@login_required
def save_config(site_id):
    svc = service()
    site = owned_site(svc, site_id)
    raw = request.form
    data, errors = {}, {}
    for name in CONFIG_INT_FIELDS:
        value = (raw.get(name) or "").strip()
        try:
            data[name] = int(value)
        except ValueError:
            errors[name] = "must be a whole number"
    data["is_enabled"] = raw.get("is_enabled") == "on"
    data["frequency"] = raw.get("frequency", "")
    data["scheduled_time"] = (raw.get("scheduled_time") or "").strip()
    day = (raw.get("scheduled_day") or "").strip()
    if day:
        try:
            data["scheduled_day"] = int(day)
        except ValueError:
            errors["scheduled_day"] = "must be a whole number"
    else:
        data["scheduled_day"] = None
    if not errors:
        _, errors = field_errors(data)
    if not errors:
        try:
            svc.update_config(site.id, data)
        except AppError as e:
            errors.update(e.errors or {"form": e.message})
    if errors:
        db.session.rollback()
        ctx = automation_context(svc, site, errors=errors, form_values=raw)
        return render_template("automation.html", **ctx), 400
    flash("Configuration saved.", "success")
    return redirect(url_for("web.site_automation", site_id=site.id) + "#config")


@bp.post("/sites/<int:site_id>/automation/run")
@login_required
def run_now(site_id):
    svc = service()
    site = owned_site(svc, site_id)
    try:
        run = svc.start(site.id, trigger_type="manual", reason=(request.form.get("reason") or None))
        flash(f"Run {run.id} started.", "success")
    except AppError as e:
        flash(e.message, "error")
    return redirect(url_for("web.site_automation", site_id=site.id))


@bp.post("/runs/<int:run_id>/<any(pause, resume, cancel):action>")
@login_required
def control(run_id, action):
    svc = service()
    run = owned_run(svc, run_id)
    try:
        getattr(svc, action)(run.id, reason=(request.form.get("reason") or None))
        flash(f"Run {run.id} {dict(pause='paused', resume='resumed', cancel='cancelled')[action]}.", "success")
    except AppError as e:
        flash(e.message, "error")
    target = request.form.get("next")
    if target == "run":
        return redirect(url_for("web.run_detail", run_id=run.id))
    return redirect(url_for("web.site_automation", site_id=run.site_id))


# -- runs -------------------------------------------------------------------------------------
@bp.get("/runs/<int:run_id>")
@login_required
def run_detail(run_id):
    svc = service()
    run = owned_run(svc, run_id)
    site = db.session.get(Site, run.site_id)
    path = run_log_path(current_app.config["LOG_DIR"], run.account_id, run.site_id, run.id)
    q = (request.args.get("q") or "").strip()[:200]
    if q:
        needle = q.lower()
        lines = [ln for ln in tail(path, 5000) if needle in ln.lower()]
    else:
        lines = tail(path, 500)
    return render_template("run.html", run=run, site=site, events=svc.events(run), lines=lines, q=q,
                           log_next=line_count(path), stages=svc.pipeline_overview(site.id))


@bp.get("/runs/<int:run_id>/log.txt")
@login_required
def run_log(run_id):
    svc = service()
    run = owned_run(svc, run_id)
    path = run_log_path(current_app.config["LOG_DIR"], run.account_id, run.site_id, run.id)
    if not Path(path).is_file():
        return "", 200, {"Content-Type": "text/plain; charset=utf-8",
                         "Content-Disposition": f'attachment; filename="run-{run.id}.log"'}
    return send_file(path, mimetype="text/plain", as_attachment=True, download_name=f"run-{run.id}.log",
                     max_age=0)


# -- keywords and what the pipeline made ------------------------------------------------------------
@bp.route("/sites/<int:site_id>/keywords", methods=["GET", "POST"])
@login_required
def keywords(site_id):
    svc = service()
    site = owned_site(svc, site_id)
    report, import_error = None, None
    status = 200
    if request.method == "POST":
        try:
            upload = request.files.get("file")
            if upload and upload.filename:
                try:
                    text = upload.read().decode("utf-8-sig")
                except UnicodeDecodeError:
                    raise AppError("The file must be UTF-8 CSV text.")
            else:
                text = request.form.get("keywords", "")
            if not text.strip():
                raise AppError("Paste keywords (one per line) or choose a CSV file.")
            report = import_rows(site, parse_csv(text))
            flash(f"Imported {report['created']} keywords ({report['duplicates']} duplicates skipped, "
                  f"{len(report['errors'])} invalid rows).", "success" if not report["errors"] else "warning")
        except AppError as e:
            import_error, status = e.message, 400
    tab = request.args.get("tab", "keywords")
    if tab not in TABS:
        tab = "keywords"
    model, _label = TABS[tab]
    try:
        page = max(1, min(int(request.args.get("page", 1)), 100_000))
    except ValueError:
        page = 1
    base = select(model).where(model.site_id == site.id, model.account_id == current_user.account_id)
    total = db.session.execute(select(func.count()).select_from(base.with_only_columns(model.id).subquery())).scalar()
    items = db.session.execute(base.order_by(model.id.desc()).offset((page - 1) * PER_PAGE).limit(PER_PAGE)).scalars().all()
    counts = {name: db.session.execute(select(func.count()).select_from(m).where(m.site_id == site.id)).scalar()
              for name, (m, _) in TABS.items()}
    return render_template("keywords.html", site=site, tab=tab, tabs=TABS, items=items, total=total, page=page,
                           pages=max(1, -(-total // PER_PAGE)), counts=counts, report=report,
                           import_error=import_error), status


@bp.get("/sites/<int:site_id>/content/<int(max=2147483647):content_id>")
@login_required
def article(site_id, content_id):
    svc = service()
    site = owned_site(svc, site_id)
    content = db.session.execute(select(Content).where(Content.id == content_id, Content.site_id == site.id,
                                                       Content.account_id == current_user.account_id)).scalar_one_or_none()
    if content is None:
        abort(404)
    return render_template("article.html", site=site, content=content)
